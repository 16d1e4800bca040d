//! The plain layer source: downloads a layer blob from its registry and ingests it
//! (`layer/`): verified, decompressed, untarred, every file uploaded to the CAS. At most
//! `maximum_concurrent_layer_ingests` layers are ingested at a time across all images
//! (ingestion is CPU bound), and a download that fails transiently (`UNAVAILABLE`) is
//! started again up to `layer_retries` times. Caching is the decorators' business.

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
use tokio::sync::Semaphore;
use tonic::{Code, Status};
use tower::Service;

/// Ingests layers from registries.
#[derive(Clone)]
pub(crate) struct RegistryLayerSource {
    registry: Arc<dyn Registry>,
    ingester: Arc<LayerIngester>,
    slots: Arc<Semaphore>,
    retries: u32,
}

impl RegistryLayerSource {
    /// `concurrency` layers at a time, each download started at most `1 + retries` times.
    pub fn new(
        registry: Arc<dyn Registry>,
        ingester: Arc<LayerIngester>,
        concurrency: usize,
        retries: u32,
    ) -> Self {
        Self {
            registry,
            ingester,
            slots: Arc::new(Semaphore::new(concurrency.max(1))),
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
            let _slot = this
                .slots
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| Status::internal("Ingestion slots closed"))?;
            let (pinned, layer) = (&request.payload.pinned, &request.payload.layer);
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
