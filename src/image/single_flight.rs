//! In-flight deduplication: while a computation for a key runs, later callers asking
//! for the same key wait for its result instead of starting their own. 500 actions
//! arriving together for one cold image thus cause one expansion, and every layer is
//! ingested once.
//!
//! The computation runs as a task of its own, so that a caller that goes away does not
//! cancel it for the others. Work nobody waits for stops, though: when the last caller
//! waiting for a computation has gone (its future dropped: cancelled, deadline passed),
//! the computation goes on for a grace period, and a caller arriving within it joins it
//! as if nothing happened. Once the grace period passed without one, the task is
//! aborted, which drops whatever it held (an ingestion slot, a caller's place in the
//! flights of the stage below), and counted in `abandoned_work_total{stage}`. An aborted
//! computation records nothing: the caches are written by the computation itself, once
//! it succeeded.
//!
//! Results, errors included (with their details and metadata), are shared by the callers
//! waiting for them and not remembered: a call after the computation ended starts anew.

use super::metrics;
use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::AbortHandle;
use tonic::Status;

type Outcome<V> = Shared<BoxFuture<'static, Result<V, Status>>>;

/// One computation in flight.
struct Flight<V: Clone> {
    /// Tells this computation from a later one for the same key.
    id: u64,
    outcome: Outcome<V>,
    task: AbortHandle,
    /// Callers whose futures wait for the outcome.
    waiters: usize,
    /// Bumped each time `waiters` drops to zero: a grace timer abandons the computation
    /// only if no caller came and went since the timer started.
    idle_epoch: u64,
}

struct Flights<K, V: Clone> {
    next_id: u64,
    by_key: HashMap<K, Flight<V>>,
}

/// Shares computations between concurrent callers of the same key.
pub(crate) struct SingleFlight<K, V: Clone> {
    /// The `stage` label of `abandoned_work_total`: `image`, `layer`, `tag`.
    stage: &'static str,
    /// How long a computation nobody waits for goes on.
    grace: Duration,
    flights: Arc<Mutex<Flights<K, V>>>,
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Flights of `stage`, each abandoned once nobody waited for it for `grace`.
    pub(crate) fn new(stage: &'static str, grace: Duration) -> Self {
        Self {
            stage,
            grace,
            flights: Arc::new(Mutex::new(Flights {
                next_id: 0,
                by_key: HashMap::new(),
            })),
        }
    }

    /// Runs `work` for `key` unless a run for it is in flight, whose result is then
    /// shared.
    #[cfg(test)]
    pub(crate) async fn run<F>(&self, key: K, work: F) -> Result<V, Status>
    where
        F: std::future::Future<Output = Result<V, Status>> + Send + 'static,
    {
        self.run_and_tell(key, work).await.map(|(value, _)| value)
    }

    /// Like [`SingleFlight::run`], and also says whether this caller started the run
    /// (`true`) or joined one in flight (`false`, `work` is dropped unpolled). Callers
    /// use it to account for work once: 100 callers sharing one ingestion must not
    /// report 100 ingestions.
    pub(crate) async fn run_and_tell<F>(&self, key: K, work: F) -> Result<(V, bool), Status>
    where
        F: std::future::Future<Output = Result<V, Status>> + Send + 'static,
    {
        let (outcome, started, _waiter) = {
            let mut flights = self.flights.lock();
            let (outcome, started, id) = match flights.by_key.get_mut(&key) {
                Some(flight) => {
                    flight.waiters += 1;
                    (flight.outcome.clone(), false, flight.id)
                }
                None => {
                    let id = flights.next_id;
                    flights.next_id += 1;
                    let leaving = Leaving {
                        flights: self.flights.clone(),
                        key: key.clone(),
                        id,
                    };
                    let task = tokio::spawn(async move {
                        // Removed however the task ends: done, panicked or aborted.
                        let _leaving = leaving;
                        work.await
                    });
                    let abort = task.abort_handle();
                    let outcome = task
                        .map(|joined| match joined {
                            Ok(result) => result,
                            Err(e) => Err(Status::internal(format!("Shared task failed: {e}"))),
                        })
                        .boxed()
                        .shared();
                    flights.by_key.insert(
                        key.clone(),
                        Flight {
                            id,
                            outcome: outcome.clone(),
                            task: abort,
                            waiters: 1,
                            idle_epoch: 0,
                        },
                    );
                    (outcome, true, id)
                }
            };
            let waiter = Waiter {
                flights: self.flights.clone(),
                key,
                id,
                stage: self.stage,
                grace: self.grace,
            };
            (outcome, started, waiter)
        };
        outcome.await.map(|value| (value, started))
    }

    /// Number of computations in flight.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.flights.lock().by_key.len()
    }
}

/// Removes a computation from the flights when its task ends, so that the next caller
/// starts anew.
struct Leaving<K: Eq + Hash, V: Clone> {
    flights: Arc<Mutex<Flights<K, V>>>,
    key: K,
    id: u64,
}

impl<K: Eq + Hash, V: Clone> Drop for Leaving<K, V> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock();
        if flights
            .by_key
            .get(&self.key)
            .is_some_and(|f| f.id == self.id)
        {
            flights.by_key.remove(&self.key);
        }
    }
}

/// A caller's wait for a computation. Dropped when the caller got its result or went
/// away; the last one to go starts the grace period.
struct Waiter<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    flights: Arc<Mutex<Flights<K, V>>>,
    key: K,
    id: u64,
    stage: &'static str,
    grace: Duration,
}

impl<K, V> Drop for Waiter<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn drop(&mut self) {
        let epoch = {
            let mut flights = self.flights.lock();
            let Some(flight) = flights.by_key.get_mut(&self.key) else {
                return;
            };
            if flight.id != self.id {
                return;
            }
            flight.waiters -= 1;
            if flight.waiters > 0 {
                return;
            }
            flight.idle_epoch += 1;
            flight.idle_epoch
        };
        let (flights, key, id, stage) =
            (self.flights.clone(), self.key.clone(), self.id, self.stage);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !self.grace.is_zero() => {
                let grace = self.grace;
                runtime.spawn(async move {
                    tokio::time::sleep(grace).await;
                    abandon_if_idle(&flights, &key, id, epoch, stage);
                });
            }
            // No grace (or no runtime left to wait in): abandoned at once.
            _ => abandon_if_idle(&flights, &key, id, epoch, stage),
        }
    }
}

/// Aborts computation `id` of `key` if nobody waited for it since it became idle at
/// `epoch`.
fn abandon_if_idle<K: Eq + Hash, V: Clone>(
    flights: &Mutex<Flights<K, V>>,
    key: &K,
    id: u64,
    epoch: u64,
    stage: &str,
) {
    let task = {
        let mut flights = flights.lock();
        let idle = flights
            .by_key
            .get(key)
            .is_some_and(|f| f.id == id && f.waiters == 0 && f.idle_epoch == epoch);
        if !idle {
            return;
        }
        flights.by_key.remove(key).map(|f| f.task)
    };
    // Outside the lock: an aborted task may be dropped right here, and its `Leaving`
    // takes the lock.
    if let Some(task) = task {
        task.abort();
        metrics::abandoned(stage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const HOUR: Duration = Duration::from_secs(3600);

    fn flights<K, V>(grace: Duration) -> Arc<SingleFlight<K, V>>
    where
        K: Eq + Hash + Clone + Send + Sync + 'static,
        V: Clone + Send + Sync + 'static,
    {
        Arc::new(SingleFlight::new("test", grace))
    }

    /// Work that counts its starts and drops, and answers `value` once released.
    struct Probe {
        started: AtomicUsize,
        dropped: AtomicUsize,
        release: tokio::sync::watch::Sender<bool>,
    }

    impl Probe {
        fn new() -> Arc<Self> {
            Arc::new(Self {
                started: AtomicUsize::new(0),
                dropped: AtomicUsize::new(0),
                release: tokio::sync::watch::channel(false).0,
            })
        }

        fn work(
            self: &Arc<Self>,
            value: u32,
        ) -> impl std::future::Future<Output = Result<u32, Status>> {
            let probe = self.clone();
            async move {
                probe.started.fetch_add(1, Ordering::SeqCst);
                let _drop = DropCounter(probe.clone());
                let _ = probe.release.subscribe().wait_for(|r| *r).await;
                Ok(value)
            }
        }

        async fn wait_started(&self, n: usize) {
            while self.started.load(Ordering::SeqCst) < n {
                tokio::task::yield_now().await;
            }
        }

        async fn wait_dropped(&self, n: usize) {
            while self.dropped.load(Ordering::SeqCst) < n {
                tokio::task::yield_now().await;
            }
        }
    }

    struct DropCounter(Arc<Probe>);

    impl Drop for DropCounter {
        fn drop(&mut self) {
            self.0.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights: Arc<SingleFlight<&'static str, u32>> = flights(HOUR);
        let probe = Probe::new();
        let mut callers = Vec::new();
        for _ in 0..50 {
            let flights = flights.clone();
            let work = probe.work(7);
            callers.push(tokio::spawn(
                async move { flights.run("image", work).await },
            ));
        }
        probe.wait_started(1).await;
        probe.release.send_replace(true);
        for c in callers {
            assert_eq!(c.await.unwrap().unwrap(), 7);
        }
        assert_eq!(probe.started.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn only_the_first_caller_is_told_it_started_the_run() {
        let flights: Arc<SingleFlight<u8, u32>> = flights(HOUR);
        let probe = Probe::new();
        let arrived = Arc::new(AtomicUsize::new(0));
        let mut callers = Vec::new();
        for _ in 0..10 {
            let flights = flights.clone();
            let work = probe.work(5);
            let arrived = arrived.clone();
            callers.push(tokio::spawn(async move {
                // Joins the flight in the same poll (no await in between).
                arrived.fetch_add(1, Ordering::SeqCst);
                flights.run_and_tell(1, work).await
            }));
        }
        while arrived.load(Ordering::SeqCst) < 10 {
            tokio::task::yield_now().await;
        }
        probe.release.send_replace(true);
        let mut started = 0;
        for c in callers {
            let (value, first) = c.await.unwrap().unwrap();
            assert_eq!(value, 5);
            started += usize::from(first);
        }
        assert_eq!(started, 1);
        // A later run is a run of its own.
        assert_eq!(
            flights.run_and_tell(1, async { Ok(6) }).await.unwrap(),
            (6, true)
        );
    }

    #[tokio::test]
    async fn errors_are_shared_with_their_details_and_not_remembered() {
        let flights: Arc<SingleFlight<u8, u8>> = flights(HOUR);
        let details = bytes::Bytes::from_static(b"details");
        let failing = Status::with_details(tonic::Code::Unavailable, "Registry down", details);
        let err = flights
            .run(1, async move { Err(failing) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!(err.message(), "Registry down");
        assert_eq!(err.details(), b"details");
        assert_eq!(flights.run(1, async { Ok(3) }).await.unwrap(), 3);
    }

    #[tokio::test]
    async fn work_nobody_waits_for_is_abandoned_after_the_grace_period() {
        let flights: Arc<SingleFlight<u8, u32>> = flights(Duration::ZERO);
        let probe = Probe::new();
        let only = tokio::spawn({
            let (flights, work) = (flights.clone(), probe.work(1));
            async move { flights.run(1, work).await }
        });
        probe.wait_started(1).await;
        only.abort();
        // The work is dropped unfinished, and forgotten.
        probe.wait_dropped(1).await;
        assert_eq!(flights.in_flight(), 0);
        // The next caller starts anew.
        probe.release.send_replace(true);
        assert_eq!(flights.run(1, probe.work(2)).await.unwrap(), 2);
        assert_eq!(probe.started.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_caller_joining_within_the_grace_period_keeps_the_work_alive() {
        let flights: Arc<SingleFlight<u8, u32>> = flights(HOUR);
        let probe = Probe::new();
        let first = tokio::spawn({
            let (flights, work) = (flights.clone(), probe.work(1));
            async move { flights.run(1, work).await }
        });
        probe.wait_started(1).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        // Nobody waits, but within the grace period the work goes on.
        assert_eq!(flights.in_flight(), 1);
        let mut second = Box::pin(flights.run(1, probe.work(2)));
        assert!(futures::poll!(&mut second).is_pending());
        probe.release.send_replace(true);
        assert_eq!(second.await.unwrap(), 1);
        assert_eq!(probe.started.load(Ordering::SeqCst), 1);
        assert_eq!(probe.dropped.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_does_not_cancel_the_work_others_wait_for() {
        let flights: Arc<SingleFlight<u8, u32>> = flights(Duration::ZERO);
        let probe = Probe::new();
        let first = tokio::spawn({
            let (flights, work) = (flights.clone(), probe.work(1));
            async move { flights.run(1, work).await }
        });
        probe.wait_started(1).await;
        let mut second = Box::pin(flights.run(1, probe.work(2)));
        assert!(futures::poll!(&mut second).is_pending());
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        probe.release.send_replace(true);
        assert_eq!(second.await.unwrap(), 1);
    }

    #[tokio::test]
    async fn abandoning_work_abandons_the_work_it_waited_for() {
        // An image's expansion waits for its layers' ingestions as a caller.
        let images: Arc<SingleFlight<u8, u32>> = flights(Duration::ZERO);
        let layers: Arc<SingleFlight<u8, u32>> = flights(Duration::ZERO);
        let probe = Probe::new();
        let image = tokio::spawn({
            let (images, layers, work) = (images.clone(), layers.clone(), probe.work(1));
            async move {
                images
                    .run(1, async move { layers.run(1, work).await })
                    .await
            }
        });
        probe.wait_started(1).await;
        assert_eq!((images.in_flight(), layers.in_flight()), (1, 1));
        image.abort();
        probe.wait_dropped(1).await;
        assert_eq!((images.in_flight(), layers.in_flight()), (0, 0));
    }

    #[tokio::test]
    async fn finished_work_is_not_counted_as_abandoned() {
        let flights: Arc<SingleFlight<u8, u32>> =
            Arc::new(SingleFlight::new("test_finished", Duration::ZERO));
        assert_eq!(flights.run(1, async { Ok(1) }).await.unwrap(), 1);
        assert_eq!(metrics::abandoned_count("test_finished"), 0);
        let probe = Probe::new();
        let only = tokio::spawn({
            let (flights, work) = (flights.clone(), probe.work(1));
            async move { flights.run(1, work).await }
        });
        probe.wait_started(1).await;
        only.abort();
        probe.wait_dropped(1).await;
        assert_eq!(metrics::abandoned_count("test_finished"), 1);
    }
}
