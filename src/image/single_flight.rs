//! In-flight deduplication: while a computation for a key runs, later callers asking
//! for the same key wait for its result instead of starting their own. 500 actions
//! arriving together for one cold image thus cause one expansion, and every layer is
//! ingested once.

use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use tonic::Status;

type Flight<V> = Shared<BoxFuture<'static, Result<V, Arc<Status>>>>;

pub(crate) struct SingleFlight<K, V: Clone> {
    flights: Arc<Mutex<HashMap<K, Flight<V>>>>,
}

impl<K, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        Self {
            flights: Default::default(),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Eq + Hash + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `work` for `key` unless a run for it is in flight, whose result is then
    /// shared. The work runs as a task of its own, so it completes (and fills caches)
    /// even if every caller goes away.
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
        let (flight, started) = {
            let mut flights = self.flights.lock();
            if let Some(flight) = flights.get(&key) {
                (flight.clone(), false)
            } else {
                let flights_for_cleanup = self.flights.clone();
                let key_for_cleanup = key.clone();
                let task = tokio::spawn(work);
                let flight = async move {
                    let result = match task.await {
                        Ok(r) => r.map_err(Arc::new),
                        Err(e) => Err(Arc::new(Status::internal(format!(
                            "Background task failed: {e}"
                        )))),
                    };
                    flights_for_cleanup.lock().remove(&key_for_cleanup);
                    result
                }
                .boxed()
                .shared();
                flights.insert(key, flight.clone());
                (flight, true)
            }
        };
        flight
            .await
            .map(|value| (value, started))
            .map_err(|s| Status::new(s.code(), s.message()))
    }

    /// Number of computations in flight.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.flights.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights: Arc<SingleFlight<&'static str, u32>> = Default::default();
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let mut callers = Vec::new();
        for _ in 0..50 {
            let flights = flights.clone();
            let runs = runs.clone();
            let mut released = released.clone();
            callers.push(tokio::spawn(async move {
                flights
                    .run("image", async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        let _ = released.wait_for(|r| *r).await;
                        Ok(7)
                    })
                    .await
            }));
        }
        while flights.in_flight() == 0 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        for c in callers {
            assert_eq!(c.await.unwrap().unwrap(), 7);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0);
    }

    #[tokio::test]
    async fn only_the_first_caller_is_told_it_started_the_run() {
        let flights: Arc<SingleFlight<u8, u8>> = Default::default();
        let (release, released) = tokio::sync::watch::channel(false);
        let arrived = Arc::new(AtomicUsize::new(0));
        let mut callers = Vec::new();
        for _ in 0..10 {
            let flights = flights.clone();
            let mut released = released.clone();
            let arrived = arrived.clone();
            callers.push(tokio::spawn(async move {
                // Joins the flight in the same poll (no await in between).
                arrived.fetch_add(1, Ordering::SeqCst);
                flights
                    .run_and_tell(1, async move {
                        let _ = released.wait_for(|r| *r).await;
                        Ok(5)
                    })
                    .await
            }));
        }
        while arrived.load(Ordering::SeqCst) < 10 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
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
    async fn errors_are_shared_and_not_remembered() {
        let flights: SingleFlight<u8, u8> = Default::default();
        let err = flights
            .run(1, async { Err(Status::unavailable("Registry down")) })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
        assert_eq!(flights.run(1, async { Ok(3) }).await.unwrap(), 3);
    }
}
