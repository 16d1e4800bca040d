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
        // A miss here, answered by the owning replica (`fleet_requests_total`).
        Origin::Peer => (cache.to_string(), "miss"),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::action_caching_source::ActionCachingLayer;
    use crate::image::completeness_checking_source::{CheckedRecords, CompletenessCheckingLayer};
    use crate::image::fake_source::{CountingSource, Stores};
    use crate::image::image_source::{ExpandedTree, ImageRequest};
    use std::time::Duration;
    use tower::util::BoxCloneSyncService;

    /// The value of `cache_lookups_total{cache, result}`.
    fn lookups(cache: &str, result: &str) -> u64 {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&prometheus::gather())
            .unwrap();
        let labels = [format!("cache=\"{cache}\""), format!("result=\"{result}\"")];
        text.lines()
            .filter(|l| l.starts_with("buildbarn_container_expander_cache_lookups_total{"))
            .filter(|l| labels.iter().all(|label| l.contains(label.as_str())))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    fn stack(
        stores: &Stores,
        cache: &'static str,
        source: &CountingSource,
    ) -> BoxCloneSyncService<ImageRequest, ExpandedTree, Status> {
        BoxCloneSyncService::new(
            tower::ServiceBuilder::new()
                .layer(MetricsLayer::new(cache))
                .layer(
                    CompletenessCheckingLayer::new(stores.cas.clone())
                        .remembering(CheckedRecords::new(Duration::from_secs(3600))),
                )
                .layer(ActionCachingLayer::new(
                    stores.cas.clone(),
                    stores.ac.clone(),
                ))
                .service(source.clone()),
        )
    }

    #[tokio::test]
    async fn answers_are_counted_by_where_they_came_from() {
        // A cache name of this test's own: other tests count in parallel.
        let cache = "metrics_source_test";
        let stores = Stores::new();
        let blob = stores.blob("file").await;
        let source = CountingSource::new(vec![blob.clone()]);
        let images = stack(&stores, cache, &source);
        images.clone().oneshot(stores.request('1')).await.unwrap();
        assert_eq!(lookups(cache, "miss"), 1);
        images.clone().oneshot(stores.request('1')).await.unwrap();
        assert_eq!(lookups("metrics_source_test_local", "hit"), 1);
        // A new process finds the record in the Action Cache.
        let restarted = stack(&stores, cache, &source);
        restarted.oneshot(stores.request('1')).await.unwrap();
        assert_eq!(lookups(cache, "hit"), 1);
        assert!(stores.cas.remove(&stores.instance, &blob));
        let restarted = stack(&stores, cache, &source);
        restarted.oneshot(stores.request('1')).await.unwrap();
        assert_eq!(lookups(cache, "incomplete"), 1);
        // A failure is not counted.
        source.fail(true);
        stack(&stores, cache, &source)
            .oneshot(stores.request('2'))
            .await
            .unwrap_err();
        assert_eq!(lookups(cache, "miss"), 1);
        assert_eq!(source.calls(), 3);
    }
}
