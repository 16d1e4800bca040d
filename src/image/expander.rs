//! [`ImageExpander`]: an image reference → the canonical Merkle tree of the image's root
//! filesystem in the CAS, every step cached in the Action Cache (ADR #8) with local
//! caches and in-flight deduplication in front.
//!
//! ```text
//! reference ─► resolve tag (local TTL cache ─► AC "resolve-tag" record ─► registry)
//!   ─► "expand-image" record for (repository@digest, platform)? ─► completeness check ─► done
//!   ─► registry: index ─► manifest ─► config
//!   ─► "apply-layers" record for the chain of layers? ─► completeness check ─► done
//!   ─► per layer, concurrently, deduplicated: "ingest-layer" record (changeset, checked
//!      for completeness) or fetch + ingest (retried once if the registry fails)
//!   ─► apply the changesets in manifest order ─► encode ─► upload Directories
//!   ─► ImageRecord in the CAS ─► AC records (only now, after everything is stored)
//!   ─► a tag resolved at the registry is recorded last, once its image expanded
//! ```
//!
//! A failed expansion leaves no record of the image, its chain or its tag (not even in
//! this process's tag cache, so a tag fixed at the registry is seen at once). Records of
//! layers that were ingested successfully stay: a changeset is valid whatever image
//! it belongs to, and the next attempt need not download those layers again.
//!
//! Concurrent callers share work: one tag resolution, one expansion per image and one
//! ingestion per layer run at a time, and only the caller that started a piece of work
//! counts it in [`ExpandedImage::layers_ingested`].
//!
//! A cached tree is used only after FindMissingBlobs says every blob it refers to is
//! still there: on first use in this process, then again after
//! `completeness_check_interval`. If anything is gone, the entry is ignored and rebuilt.

use super::fake_action::{put_blob, read_record, write_record, FakeAction, Step};
use super::metrics;
use super::single_flight::SingleFlight;
use crate::blobstore::{
    get_message, put_message, ActionCache, ContentAddressableStorage, Instance,
};
use crate::layer::{referenced_digests, IngestOptions, LayerDescriptor, LayerIngester};
use crate::proto::cache::{ImageRecord, ImageStatistics, LayerChangeset};
use crate::proto::reapi;
use crate::registry::{Platform, Reference, Registry};
use crate::status::wrap;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Code, Status};

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
    /// Largest Directory message (the workers' `maximumMessageSizeBytes`).
    pub maximum_message_size_bytes: usize,
    /// How often a layer whose download failed transiently is fetched again.
    pub layer_retries: u32,
    pub ingest: IngestOptions,
}

impl Default for ExpanderOptions {
    fn default() -> Self {
        Self {
            tag_ttl: Duration::from_secs(300),
            reject_tags: false,
            completeness_check_interval: Duration::from_secs(3600),
            maximum_image_size_bytes: 16 << 30,
            maximum_concurrent_layer_ingests: 2,
            maximum_message_size_bytes: 2 << 20,
            layer_retries: 1,
            ingest: IngestOptions::default(),
        }
    }
}

/// Seconds spent per step of one expansion.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepTimings {
    pub resolve: f64,
    pub fetch_metadata: f64,
    pub ingest: f64,
    pub apply: f64,
    pub upload: f64,
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
    pub timings: StepTimings,
    /// Whether the tree came from a cache (no layer was ingested).
    pub from_cache: bool,
    /// Layers this call ingested (not found in any cache). A call that joined an
    /// expansion or ingestion already in flight does not count it, so that a sum over
    /// calls counts each ingestion once.
    pub layers_ingested: u64,
}

/// What one expansion flight yields: the record, whether it came from a cache, the
/// number of layers ingested, and the time per step.
type Expansion = (Arc<ImageRecord>, bool, u64, StepTimings);

#[derive(Clone)]
struct CachedTree {
    record: Arc<ImageRecord>,
    checked: Instant,
}

/// Expands image references into trees in the CAS.
pub struct ImageExpander {
    registry: Arc<dyn Registry>,
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Arc<dyn ActionCache>,
    ingester: Arc<LayerIngester>,
    options: ExpanderOptions,
    tags: Mutex<HashMap<(Instance, Reference), (String, Instant)>>,
    tag_flights: SingleFlight<(Instance, Reference), String>,
    trees: Mutex<HashMap<(Instance, String), CachedTree>>,
    image_flights: SingleFlight<(Instance, String), Expansion>,
    layer_flights: SingleFlight<(Instance, String), (Arc<LayerChangeset>, bool)>,
    ingest_slots: Arc<tokio::sync::Semaphore>,
}

impl ImageExpander {
    pub fn new(
        registry: Arc<dyn Registry>,
        cas: Arc<dyn ContentAddressableStorage>,
        ac: Arc<dyn ActionCache>,
        options: ExpanderOptions,
    ) -> Arc<Self> {
        Arc::new(Self {
            ingester: Arc::new(LayerIngester::new(cas.clone(), options.ingest.clone())),
            ingest_slots: Arc::new(tokio::sync::Semaphore::new(
                options.maximum_concurrent_layer_ingests.max(1),
            )),
            registry,
            cas,
            ac,
            options,
            tags: Default::default(),
            tag_flights: Default::default(),
            trees: Default::default(),
            image_flights: Default::default(),
            layer_flights: Default::default(),
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

    /// Forgets what this process knows about tags and trees, so that the next use of
    /// each is checked against the Action Cache and the CAS again (after the
    /// scheduler reported blobs missing).
    pub fn forget_local_caches(&self) {
        self.tags.lock().clear();
        self.trees.lock().clear();
    }

    /// Expands `reference` (as written by the client) for `platform`.
    pub async fn expand(
        self: &Arc<Self>,
        instance: &Instance,
        reference: &str,
        platform: &Platform,
    ) -> Result<ExpandedImage, Status> {
        self.expand_unwrapped(instance, reference, platform)
            .await
            .map_err(|s| wrap(s, format!("Failed to expand image {reference}")))
    }

    async fn expand_unwrapped(
        self: &Arc<Self>,
        instance: &Instance,
        text: &str,
        platform: &Platform,
    ) -> Result<ExpandedImage, Status> {
        let reference = Reference::parse(text)?;
        self.registry.check_allowed(&reference)?;
        if self.options.reject_tags && reference.digest().is_none() {
            return Err(Status::invalid_argument(
                "Image references must name a digest (name@sha256:…): tags are not accepted by this service",
            ));
        }
        let started = Instant::now();
        let (resolved_digest, record_tag) =
            timed("resolve", self.resolve(instance, &reference)).await?;
        let resolve_seconds = started.elapsed().as_secs_f64();
        let pinned = reference.with_digest(&resolved_digest)?;
        let key = FakeAction::new(
            instance,
            Step::ExpandImage,
            &[
                &format!("{}@{}", pinned.name(), resolved_digest),
                &platform.to_string(),
                &self.options.maximum_message_size_bytes.to_string(),
            ],
        );
        let this = self.clone();
        let flight_instance = instance.clone();
        let platform = platform.clone();
        let flight_key = (instance.clone(), key.digest.hash.clone());
        let flight = self
            .image_flights
            .run_and_tell(flight_key, async move {
                this.expand_pinned(&flight_instance, &pinned, &platform, key)
                    .await
            })
            .await;
        let ((record, from_cache, layers_ingested, mut timings), started_flight) = match flight {
            Ok(done) => done,
            Err(status) => {
                // Forget the tag's resolution too, so that the next attempt asks the
                // registry again (the tag may be fixed by then).
                self.forget_tag(instance, &reference, &resolved_digest);
                return Err(status);
            }
        };
        // A caller that joined an expansion in flight ingested nothing itself.
        let layers_ingested = if started_flight { layers_ingested } else { 0 };
        if record_tag {
            // Only now: a tag whose image cannot be expanded leaves no record.
            self.record_tag(instance, &reference, &resolved_digest)
                .await?;
        }
        timings.resolve = resolve_seconds;
        Ok(ExpandedImage {
            reference,
            resolved_digest,
            manifest_digest: record.manifest_digest.clone(),
            root_directory_digest: record.root_directory_digest.clone().unwrap_or_default(),
            statistics: record.statistics.unwrap_or_default(),
            timings,
            from_cache,
            layers_ingested,
        })
    }

    /// The digest a reference names now: its own digest, or its tag resolved through the
    /// local cache, the Action Cache, or the registry. Also says whether this call
    /// resolved the tag at the registry and must record it in the Action Cache
    /// ([`Self::record_tag`]) once the image expanded. Concurrent callers share one
    /// registry request, whose answer is kept in the local cache at once.
    async fn resolve(
        self: &Arc<Self>,
        instance: &Instance,
        reference: &Reference,
    ) -> Result<(String, bool), Status> {
        if let Some(digest) = reference.digest() {
            return Ok((digest.to_string(), false));
        }
        let local_key = (instance.clone(), reference.clone());
        if let Some((digest, at)) = self.tags.lock().get(&local_key) {
            if at.elapsed() < self.options.tag_ttl {
                metrics::cache_lookup("tag_local", "hit");
                return Ok((digest.clone(), false));
            }
        }
        metrics::cache_lookup("tag_local", "miss");
        let key = FakeAction::new(instance, Step::ResolveTag, &[&reference.to_string()]);
        if let Some(record) = read_record(&*self.ac, instance, &key).await? {
            let fresh = record.age().is_some_and(|age| age < self.options.tag_ttl);
            if let (true, Some(blob)) = (fresh, record.output("manifest-digest")) {
                match self.cas.get(instance, blob).await {
                    Ok(data) => {
                        if let Ok(digest) = String::from_utf8(data.to_vec()) {
                            metrics::cache_lookup("tag", "hit");
                            let remaining = self.options.tag_ttl - record.age().unwrap_or_default();
                            // Expire locally when the shared record expires.
                            let at = Instant::now()
                                .checked_sub(self.options.tag_ttl - remaining)
                                .unwrap_or_else(Instant::now);
                            self.tags.lock().insert(local_key, (digest.clone(), at));
                            return Ok((digest, false));
                        }
                    }
                    Err(s) if s.code() == Code::NotFound => {}
                    Err(s) => return Err(s),
                }
            }
        }
        metrics::cache_lookup("tag", "miss");
        let this = self.clone();
        let flight_key = local_key.clone();
        self.tag_flights
            .run_and_tell(local_key, async move {
                // A flight that ended just before this one started may have answered.
                let known = this.tags.lock().get(&flight_key).cloned();
                if let Some((digest, at)) = known {
                    if at.elapsed() < this.options.tag_ttl {
                        return Ok(digest);
                    }
                }
                let digest = this.registry.resolve(&flight_key.1).await?;
                this.tags
                    .lock()
                    .insert(flight_key, (digest.clone(), Instant::now()));
                Ok(digest)
            })
            .await
    }

    /// Drops the local resolution of `reference` if it still names `digest`.
    fn forget_tag(&self, instance: &Instance, reference: &Reference, digest: &str) {
        if reference.digest().is_some() {
            return;
        }
        let mut tags = self.tags.lock();
        let key = (instance.clone(), reference.clone());
        if tags.get(&key).is_some_and(|(known, _)| known == digest) {
            tags.remove(&key);
        }
    }

    /// Records a tag resolved at the registry in the Action Cache.
    async fn record_tag(
        &self,
        instance: &Instance,
        reference: &Reference,
        digest: &str,
    ) -> Result<(), Status> {
        let key = FakeAction::new(instance, Step::ResolveTag, &[&reference.to_string()]);
        let blob = put_blob(&*self.cas, instance, Bytes::from(digest.to_owned())).await?;
        write_record(
            &*self.cas,
            &*self.ac,
            instance,
            &key,
            vec![("manifest-digest".into(), blob)],
        )
        .await
    }

    async fn expand_pinned(
        self: Arc<Self>,
        instance: &Instance,
        pinned: &Reference,
        platform: &Platform,
        key: FakeAction,
    ) -> Result<Expansion, Status> {
        let mut timings = StepTimings::default();
        if let Some(record) = self.cached_tree(instance, &key, "image").await? {
            return Ok((record, true, 0, timings));
        }
        let started = Instant::now();
        let metadata = timed(
            "fetch_metadata",
            self.registry.fetch_image(pinned, platform),
        )
        .await?;
        timings.fetch_metadata = started.elapsed().as_secs_f64();
        let total: u64 = metadata.layers.iter().map(|l| l.size.max(0) as u64).sum();
        if total > self.options.maximum_image_size_bytes {
            return Err(Status::resource_exhausted(format!(
                "Image layers are {total} bytes in size, which exceeds the maximum image size of {} bytes",
                self.options.maximum_image_size_bytes
            )));
        }
        let mut chain_arguments = vec![self.options.maximum_message_size_bytes.to_string()];
        for layer in &metadata.layers {
            chain_arguments.push(format!(
                "{} {} {}",
                layer.digest, layer.diff_id, layer.media_type
            ));
        }
        let chain_key = FakeAction::new(
            instance,
            Step::ApplyLayers,
            &chain_arguments
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        let (record, from_cache, layers_ingested) =
            match self.cached_tree(instance, &chain_key, "chain").await? {
                Some(chain) => (chain, true, 0),
                None => {
                    let (record, ingested) = self
                        .build_tree(instance, pinned, &metadata.layers, &chain_key, &mut timings)
                        .await?;
                    (record, false, ingested)
                }
            };
        let record = Arc::new(ImageRecord {
            manifest_digest: metadata.manifest_digest.clone(),
            ..(*record).clone()
        });
        let record_blob = put_message(&*self.cas, instance, &*record).await?;
        write_record(
            &*self.cas,
            &*self.ac,
            instance,
            &key,
            vec![("image-record".into(), record_blob)],
        )
        .await?;
        self.trees.lock().insert(
            (instance.clone(), key.digest.hash.clone()),
            CachedTree {
                record: record.clone(),
                checked: Instant::now(),
            },
        );
        Ok((record, from_cache, layers_ingested, timings))
    }

    /// A tree recorded under `key`, if every blob it refers to is still in the CAS.
    async fn cached_tree(
        &self,
        instance: &Instance,
        key: &FakeAction,
        cache: &str,
    ) -> Result<Option<Arc<ImageRecord>>, Status> {
        let local_key = (instance.clone(), key.digest.hash.clone());
        if let Some(cached) = self.trees.lock().get(&local_key).cloned() {
            if cached.checked.elapsed() < self.options.completeness_check_interval {
                metrics::cache_lookup(&format!("{cache}_local"), "hit");
                return Ok(Some(cached.record));
            }
        }
        let Some(entry) = read_record(&*self.ac, instance, key).await? else {
            metrics::cache_lookup(cache, "miss");
            return Ok(None);
        };
        let Some(blob) = entry.output("image-record") else {
            metrics::cache_lookup(cache, "miss");
            return Ok(None);
        };
        let record: ImageRecord = match get_message(&*self.cas, instance, blob).await {
            Ok(r) => r,
            Err(s) if s.code() == Code::NotFound => {
                metrics::cache_lookup(cache, "incomplete");
                return Ok(None);
            }
            Err(s) => return Err(s),
        };
        if !self
            .is_complete(instance, record.referenced_blobs.clone())
            .await?
        {
            tracing::info!(
                "Cached {cache} tree {} is incomplete in the CAS; rebuilding it",
                crate::digest::display(&record.root_directory_digest.clone().unwrap_or_default())
            );
            metrics::cache_lookup(cache, "incomplete");
            return Ok(None);
        }
        metrics::cache_lookup(cache, "hit");
        let record = Arc::new(record);
        self.trees.lock().insert(
            local_key,
            CachedTree {
                record: record.clone(),
                checked: Instant::now(),
            },
        );
        Ok(Some(record))
    }

    /// Whether every digest is present in the CAS.
    async fn is_complete(
        &self,
        instance: &Instance,
        digests: Vec<reapi::Digest>,
    ) -> Result<bool, Status> {
        for chunk in digests.chunks(10_000) {
            let missing = self
                .cas
                .find_missing(instance, chunk.to_vec())
                .await
                .map_err(|s| wrap(s, "Failed to check completeness of a cached tree"))?;
            if !missing.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Ingests (or finds) every layer and applies them in order.
    async fn build_tree(
        self: &Arc<Self>,
        instance: &Instance,
        pinned: &Reference,
        layers: &[LayerDescriptor],
        chain_key: &FakeAction,
        timings: &mut StepTimings,
    ) -> Result<(Arc<ImageRecord>, u64), Status> {
        let started = Instant::now();
        // Every distinct layer once, concurrently; applied below in manifest order (L-17).
        let mut distinct: Vec<LayerDescriptor> = Vec::new();
        for layer in layers {
            if !distinct.iter().any(|l| l.digest == layer.digest) {
                distinct.push(layer.clone());
            }
        }
        let count = distinct.len().max(1);
        let futures: Vec<_> = distinct
            .into_iter()
            .map(|layer| {
                let this = self.clone();
                let instance = instance.clone();
                let pinned = pinned.clone();
                async move {
                    let changeset = this.layer_changeset(&instance, &pinned, &layer).await;
                    (layer.digest.clone(), changeset)
                }
            })
            .collect();
        let results = futures::stream::iter(futures)
            .buffer_unordered(count)
            .collect::<Vec<_>>()
            .await;
        let mut changesets = HashMap::new();
        let mut ingested = 0;
        for (digest, result) in results {
            let (changeset, was_ingested) = result?;
            ingested += u64::from(was_ingested);
            changesets.insert(digest, changeset);
        }
        timings.ingest = started.elapsed().as_secs_f64();

        let started = Instant::now();
        let maximum_message_size = self.options.maximum_message_size_bytes;
        let function = instance.digest_function;
        let ordered: Vec<(LayerDescriptor, Arc<LayerChangeset>)> = layers
            .iter()
            .map(|l| (l.clone(), changesets[&l.digest].clone()))
            .collect();
        // Applying and encoding are CPU work on in-memory trees.
        let (encoded, skipped, referenced) = tokio::task::spawn_blocking(move || {
            let mut tree = crate::tree::Directory::new();
            let mut skipped = 0;
            for (position, (layer, changeset)) in ordered.iter().enumerate() {
                crate::tree::apply_layer(&mut tree, changeset).map_err(|s| {
                    wrap(
                        s,
                        format!(
                            "Failed to apply layer {} (position {position})",
                            layer.digest
                        ),
                    )
                })?;
                skipped += changeset
                    .statistics
                    .as_ref()
                    .map(|s| s.skipped_special_files)
                    .unwrap_or(0);
            }
            let encoded = crate::tree::encode(&tree, function, maximum_message_size)?;
            let referenced = crate::tree::referenced_blobs(&tree, function);
            Ok::<_, Status>((encoded, skipped, referenced))
        })
        .await
        .map_err(|e| Status::internal(format!("Tree builder failed: {e}")))??;
        let seconds = started.elapsed().as_secs_f64();
        metrics::step("apply", true, seconds);
        timings.apply = seconds;

        let started = Instant::now();
        let directory_digests: Vec<reapi::Digest> =
            encoded.directories.iter().map(|(d, _)| d.clone()).collect();
        let missing: std::collections::HashSet<reapi::Digest> = self
            .cas
            .find_missing(instance, directory_digests)
            .await?
            .into_iter()
            .collect();
        let uploads: Vec<(reapi::Digest, Bytes)> = encoded
            .directories
            .into_iter()
            .filter(|(d, _)| missing.contains(d))
            .collect();
        self.cas
            .put_batch(instance, uploads)
            .await
            .map_err(|s| wrap(s, "Failed to upload the image's Directories"))?;
        let statistics = ImageStatistics {
            files: encoded.statistics.files,
            directories: encoded.statistics.directories,
            symlinks: encoded.statistics.symlinks,
            file_bytes: encoded.statistics.file_bytes,
            layers: layers.len() as u64,
            skipped_special_files: skipped,
        };
        let record = Arc::new(ImageRecord {
            manifest_digest: String::new(),
            root_directory_digest: Some(encoded.root),
            referenced_blobs: referenced,
            statistics: Some(statistics),
        });
        let record_blob = put_message(&*self.cas, instance, &*record).await?;
        write_record(
            &*self.cas,
            &*self.ac,
            instance,
            chain_key,
            vec![("image-record".into(), record_blob)],
        )
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        metrics::step("upload_tree", true, seconds);
        timings.upload = seconds;
        Ok((record, ingested))
    }

    /// The changeset of one layer, from the Action Cache if complete, else ingested.
    /// Returns whether this call ingested it.
    async fn layer_changeset(
        self: &Arc<Self>,
        instance: &Instance,
        pinned: &Reference,
        layer: &LayerDescriptor,
    ) -> Result<(Arc<LayerChangeset>, bool), Status> {
        let key = FakeAction::new(
            instance,
            Step::IngestLayer,
            &[&layer.digest, &layer.diff_id, &layer.media_type],
        );
        let this = self.clone();
        let flight_instance = instance.clone();
        let pinned = pinned.clone();
        let layer = layer.clone();
        let ((changeset, ingested), started) = self
            .layer_flights
            .run_and_tell((instance.clone(), key.digest.hash.clone()), async move {
                if let Some(changeset) = this.cached_changeset(&flight_instance, &key).await? {
                    return Ok((changeset, false));
                }
                let _slot = this
                    .ingest_slots
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| Status::internal("Ingestion slots closed"))?;
                let changeset = timed(
                    "ingest_layer",
                    this.ingest_with_retries(&flight_instance, &pinned, &layer),
                )
                .await?;
                let blob = put_message(&*this.cas, &flight_instance, &changeset).await?;
                write_record(
                    &*this.cas,
                    &*this.ac,
                    &flight_instance,
                    &key,
                    vec![("changeset".into(), blob)],
                )
                .await?;
                Ok((Arc::new(changeset), true))
            })
            .await?;
        // Another image's expansion that started this ingestion counts it.
        Ok((changeset, ingested && started))
    }

    async fn cached_changeset(
        &self,
        instance: &Instance,
        key: &FakeAction,
    ) -> Result<Option<Arc<LayerChangeset>>, Status> {
        let Some(entry) = read_record(&*self.ac, instance, key).await? else {
            metrics::cache_lookup("layer", "miss");
            return Ok(None);
        };
        let Some(blob) = entry.output("changeset") else {
            metrics::cache_lookup("layer", "miss");
            return Ok(None);
        };
        let changeset: LayerChangeset = match get_message(&*self.cas, instance, blob).await {
            Ok(c) => c,
            Err(s) if s.code() == Code::NotFound => {
                metrics::cache_lookup("layer", "incomplete");
                return Ok(None);
            }
            Err(s) => return Err(s),
        };
        if !self
            .is_complete(instance, referenced_digests(&changeset))
            .await?
        {
            metrics::cache_lookup("layer", "incomplete");
            return Ok(None);
        }
        metrics::cache_lookup("layer", "hit");
        Ok(Some(Arc::new(changeset)))
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
            let result = async {
                let blob = self
                    .registry
                    .fetch_blob(pinned, layer)
                    .await
                    .map_err(|s| wrap(s, format!("Failed to fetch layer {}", layer.digest)))?;
                self.ingester.ingest(instance, layer, blob).await
            }
            .await;
            match result {
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
                Err(s) if s.code() == Code::Unavailable && attempt < self.options.layer_retries => {
                    attempt += 1;
                    tracing::warn!("Retrying layer {}: {}", layer.digest, s.message());
                }
                Err(s) => return Err(s),
            }
        }
    }
}

async fn timed<T>(
    step: &str,
    future: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = future.await;
    metrics::step(step, result.is_ok(), started.elapsed().as_secs_f64());
    result
}
