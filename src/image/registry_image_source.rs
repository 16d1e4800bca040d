//! The plain image source: fetches the image's metadata from its registry (index,
//! manifest for the platform, config), refuses images whose layers together exceed
//! `maximum_image_size_bytes`, and asks the layer chain source for the tree of its
//! layers. Answers with that tree's record, naming the manifest and carrying the
//! config's runtime settings (`Env`, `WorkingDir`, `User`).

use super::chain_source::{ChainRequest, ChainSource};
use super::image_source::{ExpandedTree, ImageRequest};
use super::runtime_config::parse_runtime_config;
use super::stage::{timed, Origin};
use crate::proto::cache::ImageRecord;
use crate::registry::Registry;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Status;
use tower::{Service, ServiceExt};

/// Expands images fetched from registries.
#[derive(Clone)]
pub(crate) struct RegistryImageSource {
    registry: Arc<dyn Registry>,
    chains: ChainSource,
    maximum_image_size_bytes: u64,
    maximum_message_size_bytes: usize,
}

impl RegistryImageSource {
    pub fn new(
        registry: Arc<dyn Registry>,
        chains: ChainSource,
        maximum_image_size_bytes: u64,
        maximum_message_size_bytes: usize,
    ) -> Self {
        Self {
            registry,
            chains,
            maximum_image_size_bytes,
            maximum_message_size_bytes,
        }
    }

    async fn expand(self, request: ImageRequest) -> Result<ExpandedTree, Status> {
        let (pinned, platform) = (&request.payload.pinned, &request.payload.platform);
        let started = Instant::now();
        let metadata = timed(
            "fetch_metadata",
            self.registry.fetch_image(pinned, platform),
        )
        .await?;
        let fetch_seconds = started.elapsed().as_secs_f64();
        let total: u64 = metadata.layers.iter().map(|l| l.size.max(0) as u64).sum();
        if total > self.maximum_image_size_bytes {
            return Err(Status::resource_exhausted(format!(
                "Image layers are {total} bytes in size, which exceeds the maximum image size of {} bytes",
                self.maximum_image_size_bytes
            )));
        }
        let runtime_config = parse_runtime_config(&metadata.config)?;
        let chain = ChainRequest::for_layers(
            &request.instance,
            pinned.clone(),
            metadata.layers,
            self.maximum_message_size_bytes,
        );
        let tree = self.chains.oneshot(chain).await?;
        let mut timings = tree.timings;
        timings.fetch_metadata = fetch_seconds;
        Ok(ExpandedTree {
            record: Arc::new(ImageRecord {
                manifest_digest: metadata.manifest_digest,
                resolved_digest: pinned.digest().unwrap_or_default().to_string(),
                runtime_config: Some(runtime_config),
                ..(*tree.record).clone()
            }),
            origin: Origin::Built,
            from_cache: tree.from_cache,
            layers_ingested: tree.layers_ingested,
            timings,
        })
    }
}

impl Service<ImageRequest> for RegistryImageSource {
    type Response = ExpandedTree;
    type Error = Status;
    type Future = BoxFuture<'static, Result<ExpandedTree, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ImageRequest) -> Self::Future {
        Box::pin(self.clone().expand(request))
    }
}
