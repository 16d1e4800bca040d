//! Decorator that counts a stage's answers in `cache_lookups_total` (`metrics.rs`), by
//! where they came from: `<cache>_local` `hit` (remembered by this process), `<cache>`
//! `hit` (Action Cache), `miss` (built) or `incomplete` (rebuilt because a blob was
//! gone). Failed calls are not counted.

use super::metrics;
use super::stage::{Origin, StageRequest, StageResponse};
use futures::future::BoxFuture;
use std::task::{Context, Poll};
use tonic::Status;
use tower::{Layer, Service, ServiceExt};

/// Counts the answers of a stage under the cache name `cache`.
#[derive(Clone, Copy)]
pub struct MetricsLayer {
    cache: &'static str,
}

impl MetricsLayer {
    pub fn new(cache: &'static str) -> Self {
        Self { cache }
    }
}

impl<S> Layer<S> for MetricsLayer {
    type Service = MetricsSource<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MetricsSource {
            inner,
            cache: self.cache,
        }
    }
}

/// A stage whose answers are counted.
#[derive(Clone)]
pub struct MetricsSource<S> {
    inner: S,
    cache: &'static str,
}

/// The `cache` and `result` labels of an answer.
fn labels(cache: &str, origin: Origin) -> (String, &'static str) {
    match origin {
        Origin::Memory => (format!("{cache}_local"), "hit"),
        Origin::ActionCache => (cache.to_string(), "hit"),
        Origin::Built => (cache.to_string(), "miss"),
        Origin::Rebuilt => (cache.to_string(), "incomplete"),
    }
}

impl<S, P, R> Service<StageRequest<P>> for MetricsSource<S>
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
        let cache = self.cache;
        let answer = self.inner.clone().oneshot(request);
        Box::pin(async move {
            let response = answer.await?;
            let (cache, result) = labels(cache, response.origin());
            metrics::cache_lookup(&cache, result);
            Ok(response)
        })
    }
}
