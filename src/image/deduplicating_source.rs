//! Decorator that lets concurrent requests for the same answer share one call of the
//! stage below (`single_flight.rs`): 500 actions arriving together for one cold image
//! cause one expansion, and each layer is ingested once. Requests are the same when they
//! name the same fake action in the same instance.
//!
//! The shared call runs as a task of its own: a caller that goes away does not cancel it
//! for the others, and it completes (filling the caches) even if every caller went away.
//! Only the caller that started it is answered with the work it did; the others get
//! [`StageResponse::joined`], so that a sum over callers counts each piece of work once.
//! An error is shared by the callers waiting for it, and not remembered.

use super::single_flight::SingleFlight;
use super::stage::{StageRequest, StageResponse};
use crate::blobstore::Instance;
use futures::future::BoxFuture;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tower::{Layer, Service, ServiceExt};

/// Adds in-flight deduplication to a stage answering `R`.
pub struct DeduplicatingLayer<R> {
    response: PhantomData<fn() -> R>,
}

impl<R> DeduplicatingLayer<R> {
    pub fn new() -> Self {
        Self {
            response: PhantomData,
        }
    }
}

impl<R> Default for DeduplicatingLayer<R> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S, R: StageResponse> Layer<S> for DeduplicatingLayer<R> {
    type Service = DeduplicatingSource<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        DeduplicatingSource {
            inner,
            flights: Default::default(),
        }
    }
}

/// A stage whose concurrent identical requests share one call.
pub struct DeduplicatingSource<S, R: Clone> {
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
