//! [`ImageExpander`]: an image reference as a client wrote it → the canonical Merkle
//! tree of the image's root filesystem in the CAS. A thin façade over the stages that
//! `configuration.rs` assembles:
//!
//! ```text
//! reference ─► parse, allow-list and instance name, tags refused?
//!   ─► tag_resolver.rs (local ─► AC ─► registry)
//!   ─► image source: deduplicating ─► metrics ─► completeness checking ─► action caching
//!        ─► registry_image_source.rs (metadata ─► size limit)
//!           ─► chain source: metrics ─► completeness checking ─► action caching
//!                ─► tree_builder.rs (changesets ─► apply in order ─► encode ─► upload)
//!                   ─► layer source: deduplicating ─► metrics ─► completeness checking
//!                        ─► action caching ─► registry_layer_source.rs (fetch + ingest)
//!   ─► a tag resolved at the registry is recorded last, once its image expanded
//! ```
//!
//! A failed expansion leaves no record of the image, its chain or its tag (not even in
//! this process's tag cache, so a tag fixed at the registry is seen at once). Records of
//! layers that were ingested successfully stay: a changeset is valid whatever image
//! it belongs to, and the next attempt need not download those layers again.

use super::completeness_checking_source::CheckedRecords;
use super::image_source::{ImageRequest, ImageSource, StepTimings};
use super::layer_source::LayerSource;
use super::stage::timed;
use super::tag_resolver::TagResolver;
use crate::blobstore::{ActionCache, ContentAddressableStorage, Instance};
use crate::layer::IngestOptions;
use crate::proto::cache::{ImageRecord, ImageRuntimeConfig, ImageStatistics};
use crate::proto::reapi;
use crate::registry::{Platform, Reference, Registry};
use crate::status::wrap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Status;
use tower::ServiceExt;

/// Settings of the expander (`containerImages` in the configuration).
#[derive(Clone, Debug)]
pub struct ExpanderOptions {
    /// How long a tag keeps resolving to the digest it resolved to.
    pub tag_ttl: Duration,
    /// Refuse references that name no digest.
    pub reject_tags: bool,
    /// How long a completeness check of a cached tree stays valid in this process.
    pub completeness_check_interval: Duration,
    /// Limit on the sum of the compressed layer sizes of one image.
    pub maximum_image_size_bytes: u64,
    /// Layers ingested at the same time, across all images.
    pub maximum_concurrent_layer_ingests: usize,
    /// Layers ingested at the same time from one registry.
    pub maximum_concurrent_layer_ingests_per_registry: usize,
    /// How long an expansion or ingestion nobody waits for any more goes on.
    pub abandon_grace_period: Duration,
    /// How long a tag keeps serving its last digest while its registry fails (zero: off).
    pub stale_tag_grace: Duration,
    /// Largest Directory message (the workers' `maximumMessageSizeBytes`).
    pub maximum_message_size_bytes: usize,
    /// How often a layer whose download failed transiently is fetched again.
    pub layer_retries: u32,
    pub ingest: IngestOptions,
    /// The replicas this expander shares its work with: each image expansion and layer
    /// ingestion that misses the caches is done by its owner among them
    /// (`fleet::sharding_source`). `None`: this process works alone.
    pub fleet: Option<Arc<crate::fleet::Fleet>>,
}

/// The result of expanding one image.
#[derive(Clone, Debug)]
pub struct ExpandedImage {
    /// The reference, normalised (`docker.io/library/debian:12`).
    pub reference: Reference,
    /// The digest the reference resolved to (an index or a manifest).
    pub resolved_digest: String,
    /// The platform-specific manifest.
    pub manifest_digest: String,
    pub root_directory_digest: reapi::Digest,
    pub statistics: ImageStatistics,
    /// The config's `Env`, `WorkingDir` and `User`.
    pub runtime_config: ImageRuntimeConfig,
    pub timings: StepTimings,
    /// Whether the tree came from a cache (no layer was ingested).
    pub from_cache: bool,
    /// Layers this call ingested (not found in any cache). A call that joined an
    /// expansion or ingestion already in flight does not count it, so that a sum over
    /// calls counts each ingestion once.
    pub layers_ingested: u64,
}

/// Expands image references into trees in the CAS.
pub struct ImageExpander {
    registry: Arc<dyn Registry>,
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Arc<dyn ActionCache>,
    options: ExpanderOptions,
    tags: TagResolver,
    images: ImageSource,
    /// The layer source below `images` (which other replicas of the fleet call).
    layers: LayerSource,
    /// The trees this process trusts to be complete (image and layer chain records).
    checked: Arc<CheckedRecords<ImageRecord>>,
}

/// What an [`ImageExpander`] is made of (see `configuration.rs`).
pub struct ExpanderParts {
    pub registry: Arc<dyn Registry>,
    pub cas: Arc<dyn ContentAddressableStorage>,
    pub ac: Arc<dyn ActionCache>,
    pub options: ExpanderOptions,
    pub tags: TagResolver,
    pub images: ImageSource,
    pub(crate) layers: LayerSource,
    pub checked: Arc<CheckedRecords<ImageRecord>>,
}

impl ImageExpander {
    pub(crate) fn from_parts(parts: ExpanderParts) -> Arc<Self> {
        Arc::new(Self {
            registry: parts.registry,
            cas: parts.cas,
            ac: parts.ac,
            options: parts.options,
            tags: parts.tags,
            images: parts.images,
            layers: parts.layers,
            checked: parts.checked,
        })
    }

    pub fn cas(&self) -> &Arc<dyn ContentAddressableStorage> {
        &self.cas
    }

    pub fn action_cache(&self) -> &Arc<dyn ActionCache> {
        &self.ac
    }

    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.registry
    }

    pub fn options(&self) -> &ExpanderOptions {
        &self.options
    }

    /// The image source stage, with its decorators.
    pub(crate) fn image_source(&self) -> &ImageSource {
        &self.images
    }

    /// The layer source stage, with its decorators.
    pub(crate) fn layer_source(&self) -> &LayerSource {
        &self.layers
    }

    /// Forgets what this process knows about tags and trees, so that the next use of
    /// each is checked against the Action Cache and the CAS again (after the
    /// scheduler reported blobs missing).
    pub fn forget_local_caches(&self) {
        self.tags.forget_all();
        self.checked.clear();
    }

    /// Refuses `reference` if its registry is not allowed, or not for `instance`'s
    /// name (PERMISSION_DENIED), without network access or any cache.
    pub fn check_allowed(&self, instance: &Instance, reference: &Reference) -> Result<(), Status> {
        self.registry.check_allowed(&instance.name, reference)
    }

    /// The digest `reference` names now at its registry (a HEAD request), past every
    /// cache; refused first as [`Self::check_allowed`] says. For the prewarmer, which
    /// then expands the digest and calls [`Self::refresh_tag`].
    pub async fn resolve_at_registry(
        &self,
        instance: &Instance,
        reference: &Reference,
    ) -> Result<String, Status> {
        self.check_allowed(instance, reference)?;
        self.registry.resolve(reference).await
    }

    /// Takes `digest`, just resolved at the registry and expanded, as `reference`'s
    /// fresh resolution, here and in the Action Cache (best-effort).
    pub async fn refresh_tag(&self, instance: &Instance, reference: &Reference, digest: &str) {
        self.tags.refresh(instance, reference, digest).await;
    }

    /// Expands `reference` (as written by the client) for `platform`.
    pub async fn expand(
        &self,
        instance: &Instance,
        reference: &str,
        platform: &Platform,
    ) -> Result<ExpandedImage, Status> {
        let expanded = match Reference::parse(reference) {
            Ok(parsed) => self.expand_reference(instance, &parsed, platform).await,
            Err(status) => Err(status),
        };
        expanded.map_err(|s| wrap(s, format!("Failed to expand image {reference}")))
    }

    /// Expands a parsed `reference` for `platform`. Errors carry no context: the caller
    /// names the image as its client wrote it.
    pub async fn expand_reference(
        &self,
        instance: &Instance,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ExpandedImage, Status> {
        let reference = reference.clone();
        // First of all: no cache below (tags, trees, the Action Cache) may serve an
        // image to an instance name that could not pull it (docs/design/tenants.md).
        self.check_allowed(instance, &reference)?;
        if self.options.reject_tags && reference.digest().is_none() {
            return Err(Status::invalid_argument(
                "Image references must name a digest (name@sha256:…): tags are not accepted by this service",
            ));
        }
        let started = Instant::now();
        let (resolved_digest, record_tag) =
            timed("resolve", self.tags.resolve(instance, &reference)).await?;
        let resolve_seconds = started.elapsed().as_secs_f64();
        let request = ImageRequest::for_image(
            instance,
            reference.with_digest(&resolved_digest)?,
            platform.clone(),
            self.options.maximum_message_size_bytes,
        );
        let tree = match self.images.clone().oneshot(request).await {
            Ok(tree) => tree,
            Err(status) => {
                // The next attempt asks the registry again (the tag may be fixed by then).
                self.tags.forget(instance, &reference, &resolved_digest);
                return Err(status);
            }
        };
        if record_tag {
            // Only now: a tag whose image cannot be expanded leaves no record.
            self.tags
                .record(instance, &reference, &resolved_digest)
                .await;
        }
        let mut timings = tree.timings.clone();
        timings.resolve = resolve_seconds;
        Ok(ExpandedImage {
            reference,
            resolved_digest,
            manifest_digest: tree.record.manifest_digest.clone(),
            root_directory_digest: tree.root_directory_digest(),
            statistics: tree.record.statistics.unwrap_or_default(),
            runtime_config: tree.record.runtime_config.clone().unwrap_or_default(),
            timings,
            from_cache: tree.from_cache,
            layers_ingested: tree.layers_ingested,
        })
    }
}
