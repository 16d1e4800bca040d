//! The plain layer chain source: gets the changeset of every distinct layer from the
//! layer source (concurrently), applies them onto an empty tree in manifest order (a
//! layer that appears twice is applied twice), encodes the tree as canonical Directory
//! messages and uploads those the CAS lacks. Answers with the `ImageRecord` of the tree
//! (without a manifest digest: a chain may belong to several images).

use super::chain_source::ChainRequest;
use super::image_source::{ExpandedTree, StepTimings};
use super::layer_source::{LayerRequest, LayerSource};
use super::metrics;
use super::stage::Origin;
use crate::blobstore::{ContentAddressableStorage, Instance};
use crate::layer::LayerDescriptor;
use crate::proto::cache::{ImageRecord, ImageStatistics, LayerChangeset};
use crate::proto::reapi;
use crate::registry::Reference;
use crate::status::wrap;
use crate::tree::EncodedTree;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::StreamExt;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Status;
use tower::{Service, ServiceExt};

/// Builds trees from layer changesets.
#[derive(Clone)]
pub(crate) struct TreeBuilder {
    cas: Arc<dyn ContentAddressableStorage>,
    layers: LayerSource,
    maximum_message_size_bytes: usize,
    metadata_limits: crate::layer::MetadataLimits,
}

/// A tree applied and encoded, not yet uploaded.
struct AppliedTree {
    encoded: EncodedTree,
    skipped_special_files: u64,
    referenced_blobs: Vec<reapi::Digest>,
}

impl TreeBuilder {
    pub fn new(
        cas: Arc<dyn ContentAddressableStorage>,
        layers: LayerSource,
        maximum_message_size_bytes: usize,
    ) -> Self {
        Self {
            cas,
            layers,
            maximum_message_size_bytes,
            metadata_limits: Default::default(),
        }
    }

    /// Limits on the entries and names of an image's layers, checked before they are
    /// applied (the per-layer ones are the ingester's).
    pub fn with_metadata_limits(mut self, limits: crate::layer::MetadataLimits) -> Self {
        self.metadata_limits = limits;
        self
    }

    /// The changesets of `layers` in their order, and how many this call ingested.
    async fn changesets(
        &self,
        instance: &Instance,
        pinned: &Reference,
        layers: &[LayerDescriptor],
    ) -> Result<(Vec<Arc<LayerChangeset>>, u64), Status> {
        let mut distinct: Vec<LayerDescriptor> = Vec::new();
        for layer in layers {
            if !distinct.iter().any(|l| l.digest == layer.digest) {
                distinct.push(layer.clone());
            }
        }
        let count = distinct.len().max(1);
        let requests = distinct.into_iter().map(|layer| {
            let digest = layer.digest.clone();
            let request = LayerRequest::for_layer(instance, pinned.clone(), layer);
            let answer = self.layers.clone().oneshot(request);
            async move { (digest, answer.await) }
        });
        let results = futures::stream::iter(requests)
            .buffer_unordered(count)
            .collect::<Vec<_>>()
            .await;
        let mut changesets = HashMap::new();
        let mut ingested = 0;
        for (digest, result) in results {
            let layer = result?;
            ingested += u64::from(layer.ingested);
            changesets.insert(digest, layer.changeset);
        }
        let ordered = layers.iter().map(|l| changesets[&l.digest].clone());
        Ok((ordered.collect(), ingested))
    }

    /// Applies the changesets in order and encodes the tree: CPU work on a blocking
    /// thread.
    async fn apply(
        &self,
        instance: &Instance,
        layers: &[LayerDescriptor],
        changesets: Vec<Arc<LayerChangeset>>,
    ) -> Result<AppliedTree, Status> {
        let function = instance.digest_function;
        let maximum_message_size = self.maximum_message_size_bytes;
        let digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
        crate::layer::limits::check_image_totals(&changesets, &digests, &self.metadata_limits)?;
        tokio::task::spawn_blocking(move || {
            let mut tree = crate::tree::Directory::new();
            let mut skipped_special_files = 0;
            for (position, changeset) in changesets.iter().enumerate() {
                crate::tree::apply_layer(&mut tree, changeset).map_err(|s| {
                    let digest = &digests[position];
                    wrap(
                        s,
                        format!("Failed to apply layer {digest} (position {position})"),
                    )
                })?;
                skipped_special_files += changeset
                    .statistics
                    .as_ref()
                    .map(|s| s.skipped_special_files)
                    .unwrap_or(0);
            }
            Ok(AppliedTree {
                encoded: crate::tree::encode(&tree, function, maximum_message_size)?,
                skipped_special_files,
                referenced_blobs: crate::tree::referenced_blobs(&tree, function),
            })
        })
        .await
        .map_err(|e| Status::internal(format!("Tree builder failed: {e}")))?
    }

    /// Uploads the Directories the CAS lacks.
    async fn upload(
        &self,
        instance: &Instance,
        directories: Vec<(reapi::Digest, Bytes)>,
    ) -> Result<(), Status> {
        let digests = directories.iter().map(|(d, _)| d.clone()).collect();
        let missing: HashSet<reapi::Digest> = self
            .cas
            .find_missing(instance, digests)
            .await?
            .into_iter()
            .collect();
        let uploads = directories
            .into_iter()
            .filter(|(d, _)| missing.contains(d))
            .collect();
        self.cas
            .put_batch(instance, uploads)
            .await
            .map_err(|s| wrap(s, "Failed to upload the image's Directories"))
    }

    async fn build(self, request: ChainRequest) -> Result<ExpandedTree, Status> {
        let (instance, layers) = (&request.instance, &request.payload.layers);
        let mut timings = StepTimings::default();
        let started = Instant::now();
        let (changesets, layers_ingested) = self
            .changesets(instance, &request.payload.pinned, layers)
            .await?;
        timings.ingest = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let applied = self.apply(instance, layers, changesets).await?;
        timings.apply = started.elapsed().as_secs_f64();
        metrics::step("apply", true, timings.apply);

        let started = Instant::now();
        let encoded = applied.encoded;
        self.upload(instance, encoded.directories).await?;
        let statistics = ImageStatistics {
            files: encoded.statistics.files,
            directories: encoded.statistics.directories,
            symlinks: encoded.statistics.symlinks,
            file_bytes: encoded.statistics.file_bytes,
            layers: layers.len() as u64,
            skipped_special_files: applied.skipped_special_files,
        };
        timings.upload = started.elapsed().as_secs_f64();
        metrics::step("upload_tree", true, timings.upload);
        Ok(ExpandedTree {
            record: Arc::new(ImageRecord {
                manifest_digest: String::new(),
                root_directory_digest: Some(encoded.root),
                referenced_blobs: applied.referenced_blobs,
                statistics: Some(statistics),
                resolved_digest: String::new(),
                layer_digests: layers.iter().map(|l| l.digest.clone()).collect(),
                runtime_config: None,
            }),
            origin: Origin::Built,
            from_cache: false,
            layers_ingested,
            timings,
        })
    }
}

impl Service<ChainRequest> for TreeBuilder {
    type Response = ExpandedTree;
    type Error = Status;
    type Future = BoxFuture<'static, Result<ExpandedTree, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ChainRequest) -> Self::Future {
        Box::pin(self.clone().build(request))
    }
}
