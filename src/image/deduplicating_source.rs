//! Decorator that lets concurrent requests for the same answer share one call of the
//! stage below (`single_flight.rs`): 500 actions arriving together for one cold image
//! cause one expansion, and each layer is ingested once. Requests are the same when they
//! name the same fake action in the same instance.
//!
//! The shared call runs as a task of its own: a caller that goes away does not cancel it
//! for the others. Once every caller went away it goes on for a grace period
//! (`abandonGracePeriod`), which a new caller may join it in, and is then aborted and
//! counted in `abandoned_work_total{stage}`: its slot is freed, the calls it waited for
//! in the stages below lose a caller in turn, and nothing is recorded (the Action Cache
//! decorator below records an answer only once the call succeeded). Only the caller that started it is answered with the work it did; the others get
//! [`StageResponse::joined`], so that a sum over callers counts each piece of work once.
//! An error is shared by the callers waiting for it, and not remembered.

use super::single_flight::SingleFlight;
use super::stage::{StageRequest, StageResponse};
use crate::blobstore::Instance;
use futures::future::BoxFuture;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::Status;
use tower::{Layer, Service, ServiceExt};

/// Adds in-flight deduplication to a stage answering `R`.
pub(crate) struct DeduplicatingLayer<R> {
    stage: &'static str,
    abandon_grace_period: Duration,
    response: PhantomData<fn() -> R>,
}

impl<R> DeduplicatingLayer<R> {
    /// Calls of `stage` (the label of `abandoned_work_total`) are abandoned once nobody
    /// waited for them for `abandon_grace_period`.
    pub fn new(stage: &'static str, abandon_grace_period: Duration) -> Self {
        Self {
            stage,
            abandon_grace_period,
            response: PhantomData,
        }
    }
}

impl<S, R: StageResponse> Layer<S> for DeduplicatingLayer<R> {
    type Service = DeduplicatingSource<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        DeduplicatingSource {
            inner,
            flights: Arc::new(SingleFlight::new(self.stage, self.abandon_grace_period)),
        }
    }
}

/// A stage whose concurrent identical requests share one call.
pub(crate) struct DeduplicatingSource<S, R: Clone> {
    inner: S,
    flights: Arc<SingleFlight<(Instance, String), R>>,
}

impl<S: Clone, R: Clone> Clone for DeduplicatingSource<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            flights: self.flights.clone(),
        }
    }
}

impl<S, P, R> Service<StageRequest<P>> for DeduplicatingSource<S, R>
where
    S: Service<StageRequest<P>, Response = R, Error = Status> + Clone + Send + 'static,
    S::Future: Send,
    P: Send + 'static,
    R: StageResponse,
{
    type Response = R;
    type Error = Status;
    type Future = BoxFuture<'static, Result<R, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // The source below is made ready for each call (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: StageRequest<P>) -> Self::Future {
        let flights = self.flights.clone();
        let key = request.local_key();
        // Dropped unpolled if a call for the same key is in flight.
        let work = self.inner.clone().oneshot(request);
        Box::pin(async move {
            let (response, started) = flights.run_and_tell(key, work).await?;
            Ok(if started { response } else { response.joined() })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::action_caching_source::ActionCachingLayer;
    use crate::image::fake_source::{CountingSource, Stores};
    use crate::image::image_source::ExpandedTree;

    fn deduplicating(source: &CountingSource) -> DeduplicatingSource<CountingSource, ExpandedTree> {
        DeduplicatingLayer::new("test", Duration::from_secs(3600)).layer(source.clone())
    }

    #[tokio::test]
    async fn concurrent_callers_share_one_call_and_one_of_them_counts_its_work() {
        let stores = Stores::new();
        let source = CountingSource::new(vec![]);
        source.hold();
        let images = deduplicating(&source);
        let callers: Vec<_> = (0..20)
            .map(|_| images.clone().oneshot(stores.request('1')))
            .collect();
        // Every caller joins on the first poll, while the source is held.
        let answers = tokio::spawn(futures::future::join_all(callers));
        source.started(1).await;
        source.release();
        let answers = answers.await.unwrap();
        assert_eq!(source.calls(), 1);
        let counted: u64 = answers
            .iter()
            .map(|a| a.as_ref().unwrap().layers_ingested)
            .sum();
        assert_eq!(counted, 1);
        // Another request is a call of its own.
        images.clone().oneshot(stores.request('2')).await.unwrap();
        assert_eq!(source.calls(), 2);
    }

    #[tokio::test]
    async fn a_caller_that_goes_away_does_not_cancel_the_call_others_wait_for() {
        let stores = Stores::new();
        let source = CountingSource::new(vec![]);
        source.hold();
        let images = deduplicating(&source);
        let first = tokio::spawn(images.clone().oneshot(stores.request('1')));
        source.started(1).await;
        let mut second = Box::pin(images.clone().oneshot(stores.request('1')));
        // Joins the call in flight.
        assert!(futures::poll!(&mut second).is_pending());
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        source.release();
        let answer = second.await.unwrap();
        assert_eq!(answer.record.manifest_digest, "built-1");
        assert_eq!((source.calls(), source.completed()), (1, 1));
    }

    #[tokio::test]
    async fn a_call_nobody_waits_for_is_abandoned_and_records_nothing() {
        let stores = Stores::new();
        let source = CountingSource::new(vec![]);
        source.hold();
        let caching = ActionCachingLayer::new(stores.cas.clone(), stores.ac.clone());
        let images: DeduplicatingSource<_, ExpandedTree> =
            DeduplicatingLayer::new("test_image", Duration::ZERO)
                .layer(caching.layer(source.clone()));
        let only = tokio::spawn(images.clone().oneshot(stores.request('1')));
        source.started(1).await;
        only.abort();
        while images.flights.in_flight() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(crate::image::metrics::abandoned_count("test_image"), 1);
        // Released too late: the abandoned call never ends, and left no record.
        source.release();
        assert!(stores.ac.is_empty());
        let answer = images.clone().oneshot(stores.request('1')).await.unwrap();
        assert_eq!(answer.record.manifest_digest, "built-2");
        assert_eq!((source.calls(), source.completed()), (2, 1));
    }

    #[tokio::test]
    async fn a_caller_arriving_within_the_grace_period_gets_the_call_in_flight() {
        let stores = Stores::new();
        let source = CountingSource::new(vec![]);
        source.hold();
        let images = deduplicating(&source);
        let first = tokio::spawn(images.clone().oneshot(stores.request('1')));
        source.started(1).await;
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        // Nobody waits, yet the call is in flight, and joined.
        let mut second = Box::pin(images.clone().oneshot(stores.request('1')));
        assert!(futures::poll!(&mut second).is_pending());
        source.release();
        let answer = second.await.unwrap();
        assert_eq!(answer.record.manifest_digest, "built-1");
        assert_eq!((source.calls(), source.completed()), (1, 1));
    }

    #[tokio::test]
    async fn errors_are_shared_and_not_remembered() {
        let stores = Stores::new();
        let source = CountingSource::new(vec![]);
        source.hold();
        source.fail(true);
        let images = deduplicating(&source);
        let callers: Vec<_> = (0..3)
            .map(|_| images.clone().oneshot(stores.request('1')))
            .collect();
        let answers = tokio::spawn(futures::future::join_all(callers));
        source.started(1).await;
        source.release();
        for answer in answers.await.unwrap() {
            assert_eq!(answer.unwrap_err().code(), tonic::Code::Unavailable);
        }
        source.fail(false);
        images.clone().oneshot(stores.request('1')).await.unwrap();
        assert_eq!(source.calls(), 2);
    }
}
