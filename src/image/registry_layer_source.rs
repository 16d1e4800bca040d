//! The plain layer source: downloads a layer blob from its registry and ingests it
//! (`layer/`): verified, decompressed, untarred, every file uploaded to the CAS. At most
//! `maximum_concurrent_layer_ingests` layers are ingested at a time across all images
//! (ingestion is CPU bound), and at most `maximum_concurrent_layer_ingests_per_registry`
//! from one registry, so that a slow registry cannot take every slot
//! (`ingestion_slots.rs`). A download that fails transiently (`UNAVAILABLE`) is started
//! again up to `layer_retries` times. The slots are held by the call, so an ingestion
//! abandoned by the deduplicating decorator above frees them. Caching is the
//! decorators' business.

use super::ingestion_slots::IngestionSlots;
use super::layer_source::{IngestedLayer, LayerRequest};
use super::metrics;
use super::stage::{timed, Origin};
use crate::blobstore::Instance;
use crate::layer::{LayerDescriptor, LayerIngester};
use crate::proto::cache::LayerChangeset;
use crate::registry::{Reference, Registry};
use crate::status::wrap;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::{Code, Status};
use tower::Service;

/// Ingests layers from registries.
#[derive(Clone)]
pub(crate) struct RegistryLayerSource {
    registry: Arc<dyn Registry>,
    ingester: Arc<LayerIngester>,
    slots: Arc<IngestionSlots>,
    retries: u32,
}

impl RegistryLayerSource {
    /// `concurrency` layers at a time, `per_registry` of them from one registry, each
    /// download started at most `1 + retries` times.
    pub fn new(
        registry: Arc<dyn Registry>,
        ingester: Arc<LayerIngester>,
        concurrency: usize,
        per_registry: usize,
        retries: u32,
    ) -> Self {
        Self {
            registry,
            ingester,
            slots: Arc::new(IngestionSlots::new(concurrency, per_registry)),
            retries,
        }
    }

    async fn ingest_with_retries(
        &self,
        instance: &Instance,
        pinned: &Reference,
        layer: &LayerDescriptor,
    ) -> Result<LayerChangeset, Status> {
        let mut attempt = 0;
        loop {
            let started = Instant::now();
            match self.ingest(instance, pinned, layer).await {
                Ok(changeset) => {
                    metrics::pulled(pinned.registry(), layer.size.max(0) as u64);
                    tracing::info!(
                        "Ingested layer {} of {} ({} bytes, {} entries) in {:.1}s",
                        layer.digest,
                        pinned.name(),
                        layer.size,
                        changeset.entries.len(),
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(changeset);
                }
                Err(s) if s.code() == Code::Unavailable && attempt < self.retries => {
                    attempt += 1;
                    tracing::warn!("Retrying layer {}: {}", layer.digest, s.message());
                }
                Err(s) => return Err(s),
            }
        }
    }

    async fn ingest(
        &self,
        instance: &Instance,
        pinned: &Reference,
        layer: &LayerDescriptor,
    ) -> Result<LayerChangeset, Status> {
        let blob = self
            .registry
            .fetch_blob(pinned, layer)
            .await
            .map_err(|s| wrap(s, format!("Failed to fetch layer {}", layer.digest)))?;
        self.ingester.ingest(instance, layer, blob).await
    }
}

impl Service<LayerRequest> for RegistryLayerSource {
    type Response = IngestedLayer;
    type Error = Status;
    type Future = BoxFuture<'static, Result<IngestedLayer, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: LayerRequest) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let (pinned, layer) = (&request.payload.pinned, &request.payload.layer);
            let _slot = this.slots.acquire(pinned.registry()).await?;
            let ingesting = this.ingest_with_retries(&request.instance, pinned, layer);
            let changeset = timed("ingest_layer", ingesting).await?;
            Ok(IngestedLayer {
                changeset: Arc::new(changeset),
                origin: Origin::Built,
                ingested: true,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::deduplicating_source::DeduplicatingLayer;
    use crate::image::fake_registry::FakeRegistry;
    use crate::image::fake_source::Stores;
    use crate::layer::IngestOptions;
    use std::time::Duration;
    use tower::{Layer, ServiceExt};

    fn layer_source(
        stores: &Stores,
        registry: &Arc<FakeRegistry>,
        concurrency: usize,
        per_registry: usize,
    ) -> RegistryLayerSource {
        let ingester = LayerIngester::new(stores.cas.clone(), IngestOptions::default());
        RegistryLayerSource::new(
            registry.clone(),
            Arc::new(ingester),
            concurrency,
            per_registry,
            0,
        )
    }

    fn digest(last: char) -> String {
        format!("sha256:{}{last}", "0".repeat(63))
    }

    /// A request for the layer whose digest ends in `last`, of an image of `host`.
    fn request(stores: &Stores, host: &str, last: char) -> LayerRequest {
        let pinned = Reference::parse(&format!("{host}/app@{}", digest('f'))).unwrap();
        let layer = LayerDescriptor {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: digest(last),
            size: 1,
            diff_id: digest(last),
        };
        LayerRequest::for_layer(&stores.instance, pinned, layer)
    }

    #[tokio::test]
    async fn a_registry_that_never_answers_does_not_stop_layers_of_another() {
        let stores = Stores::new();
        let registry = Arc::new(FakeRegistry::new());
        registry.hang_blobs_of("hangs.example");
        let source = layer_source(&stores, &registry, 2, 1);
        let hanging: Vec<_> = ['1', '2']
            .map(|n| tokio::spawn(source.clone().oneshot(request(&stores, "hangs.example", n))))
            .into();
        registry.fetched(1).await;
        // The other layer of the hanging registry waits for its registry's slot, holding
        // no global one.
        let other = source
            .clone()
            .oneshot(request(&stores, "answers.example", '3'))
            .await
            .unwrap_err();
        assert_eq!(other.code(), Code::NotFound, "{other:?}");
        assert!(
            other.message().contains("Failed to fetch layer"),
            "{other:?}"
        );
        let fetches = registry.fetches();
        assert_eq!(fetches.len(), 2, "{fetches:?}");
        assert_eq!(fetches[1], digest('3'));
        for call in hanging {
            call.abort();
        }
    }

    #[tokio::test]
    async fn an_abandoned_ingestion_frees_its_slots() {
        let stores = Stores::new();
        let registry = Arc::new(FakeRegistry::new());
        registry.hang_blobs_of("abandoned.example");
        let layers = DeduplicatingLayer::new("test_layer", Duration::ZERO)
            .layer(layer_source(&stores, &registry, 1, 1));
        let hanging = tokio::spawn(layers.clone().oneshot(request(
            &stores,
            "abandoned.example",
            '1',
        )));
        registry.fetched(1).await;
        assert_eq!(
            metrics::layer_ingests_in_progress_now("abandoned.example"),
            1
        );
        // The only global slot is taken.
        let mut other = Box::pin(
            layers
                .clone()
                .oneshot(request(&stores, "other.example", '2')),
        );
        assert!(futures::poll!(&mut other).is_pending());
        assert_eq!(registry.fetches().len(), 1);
        // Its only caller goes away: after the grace period (none here), the ingestion
        // is abandoned and its slot goes to the other layer.
        hanging.abort();
        assert_eq!(other.await.unwrap_err().code(), Code::NotFound);
        assert_eq!(registry.fetches(), vec![digest('1'), digest('2')]);
        assert_eq!(
            metrics::layer_ingests_in_progress_now("abandoned.example"),
            0
        );
        assert_eq!(metrics::abandoned_count("test_layer"), 1);
    }
}
