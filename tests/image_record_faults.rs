//! Storage faults cannot produce a wrong tree: records read back from the Action Cache
//! are checked against what they claim, and writing them is best-effort.
//!
//! A real docker-registry on loopback serves a two-layer image. The expander's Action
//! Cache is [`FaultyActionCache`], a fake of our own over the in-memory one that
//! remembers every record written (so a test can corrupt, swap or empty it afterwards)
//! and can refuse every write. Each test first expands the image on healthy storage to
//! learn the exact root digest, damages the records, and expands again with a fresh
//! expander (nothing in process memory): the root must be the clean one, nothing may
//! fail, and after that one healthy run the records must be usable again (a third fresh
//! expander answers from the Action Cache without touching the registry's blobs).

mod support;

use async_trait::async_trait;
use bb_container_expander::blobstore::{
    put_message, ActionCache, ContentAddressableStorage, Instance, MemoryActionCache,
    MemoryContentAddressableStorage,
};
use bb_container_expander::digest::DigestFunction;
use bb_container_expander::image::{new_image_expander, ExpandedImage, ExpanderOptions};
use bb_container_expander::proto::cache::{ImageRecord, LayerChangeset};
use bb_container_expander::proto::reapi;
use bb_container_expander::registry::configuration::new_registry_configuration_from_configuration;
use bb_container_expander::registry::{OciRegistry, Platform, Registry};
use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use support::images::{Compression, Flavor, ImageBuilder, Layer};
use support::registry_server::RegistryServer;
use tonic::Status;

/// One record the engine wrote: its key and entry.
#[derive(Clone)]
struct Written {
    key: reapi::Digest,
    entry: reapi::ActionResult,
}

impl Written {
    /// Name of the record's single output (`image-record`, `changeset`,
    /// `manifest-digest`).
    fn output(&self) -> &str {
        &self.entry.output_files[0].path
    }
}

/// An Action Cache over the in-memory one that remembers what was written, lets a test
/// replace entries behind the engine's back, and can refuse every write.
struct FaultyActionCache {
    inner: MemoryActionCache,
    written: Mutex<Vec<Written>>,
    refuse_writes: AtomicBool,
}

impl FaultyActionCache {
    fn new() -> Self {
        Self {
            inner: MemoryActionCache::new(256 << 20),
            written: Mutex::new(Vec::new()),
            refuse_writes: AtomicBool::new(false),
        }
    }

    fn written(&self) -> Vec<Written> {
        self.written.lock().clone()
    }

    /// Replaces the entry of `key` (behind the engine's back: not remembered).
    async fn replace(&self, key: &reapi::Digest, entry: reapi::ActionResult) {
        self.inner
            .put_action_result(&instance(), key, entry)
            .await
            .unwrap();
    }
}

#[async_trait]
impl ActionCache for FaultyActionCache {
    async fn get_action_result(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
    ) -> Result<reapi::ActionResult, Status> {
        self.inner.get_action_result(instance, action_digest).await
    }

    async fn put_action_result(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
        result: reapi::ActionResult,
    ) -> Result<(), Status> {
        if self.refuse_writes.load(Ordering::SeqCst) {
            return Err(Status::unavailable(
                "Injected: the Action Cache refuses writes",
            ));
        }
        self.written.lock().push(Written {
            key: action_digest.clone(),
            entry: result.clone(),
        });
        self.inner
            .put_action_result(instance, action_digest, result)
            .await
    }
}

fn instance() -> Instance {
    Instance::new("main", DigestFunction::Sha256)
}

/// A registry, a pushed two-layer image, and storage shared by the expanders.
struct World {
    registry: RegistryServer,
    reference: String,
    /// Digests of the image's layer blobs.
    layers: Vec<String>,
    cas: Arc<MemoryContentAddressableStorage>,
    ac: Arc<FaultyActionCache>,
}

impl World {
    async fn start(tag: &str) -> Self {
        let registry = tokio::task::spawn_blocking(RegistryServer::start)
            .await
            .unwrap();
        let image = ImageBuilder::new(Flavor::Oci)
            .layer(Layer::from_files(
                &[("etc/os-release", b"ID=base\n"), ("usr/bin/tool", b"v1")],
                Compression::Gzip,
                Flavor::Oci,
            ))
            .layer(Layer::from_files(
                &[("usr/bin/tool", b"v2"), ("opt/app/data", b"data")],
                Compression::Gzip,
                Flavor::Oci,
            ))
            .build();
        registry
            .pusher()
            .push_image("test/faults", Some(tag), &image)
            .await;
        let reference = format!("docker://{}/test/faults:{tag}", registry.host());
        Self {
            registry,
            reference,
            layers: image.layers.iter().map(|l| l.digest.clone()).collect(),
            cas: Arc::new(MemoryContentAddressableStorage::new(1 << 30)),
            ac: Arc::new(FaultyActionCache::new()),
        }
    }

    /// Expands the image with a fresh expander (no process memory), over the shared
    /// storage.
    async fn expand(&self) -> Result<ExpandedImage, Status> {
        let configuration = new_registry_configuration_from_configuration(
            &serde_json::from_value(json!({
                "registries": [{"hosts": [self.registry.host()]}],
                "requestTimeout": "5s",
                "maximumRetries": 1,
                "initialRetryDelay": "0.05s",
            }))
            .unwrap(),
        );
        let registry: Arc<dyn Registry> = Arc::new(OciRegistry::new(configuration).unwrap());
        let expander = new_image_expander(
            registry,
            self.cas.clone(),
            self.ac.clone(),
            ExpanderOptions::default(),
        );
        expander
            .expand(
                &instance(),
                &self.reference,
                &Platform::new("linux", "amd64", ""),
            )
            .await
    }

    /// GETs of the image's layer blobs the registry served so far.
    fn layer_fetches(&self) -> usize {
        self.registry
            .log()
            .lines()
            .filter(|l| {
                l.contains("\"GET /v2/")
                    && self
                        .layers
                        .iter()
                        .any(|d| l.contains(&format!("/blobs/{d} ")))
            })
            .count()
    }

    /// Stores `data` in the CAS; its digest.
    async fn blob(&self, data: &[u8]) -> reapi::Digest {
        let digest = DigestFunction::Sha256.digest_of(data);
        self.cas
            .put(&instance(), &digest, Bytes::copy_from_slice(data))
            .await
            .unwrap();
        digest
    }

    /// The records written, by output name and (for image records) kind.
    fn records(&self, output: &str) -> Vec<Written> {
        self.ac
            .written()
            .into_iter()
            .filter(|w| w.output() == output)
            .collect()
    }

    /// Image records (they name a manifest), as opposed to chain records.
    async fn image_records(&self) -> Vec<Written> {
        let mut found = Vec::new();
        for written in self.records("image-record") {
            if !self
                .record::<ImageRecord>(&written)
                .await
                .manifest_digest
                .is_empty()
            {
                found.push(written);
            }
        }
        found
    }

    async fn chain_records(&self) -> Vec<Written> {
        let mut found = Vec::new();
        for written in self.records("image-record") {
            if self
                .record::<ImageRecord>(&written)
                .await
                .manifest_digest
                .is_empty()
            {
                found.push(written);
            }
        }
        found
    }

    async fn record<M: Message + Default>(&self, written: &Written) -> M {
        let digest = written.entry.output_files[0].digest.clone().unwrap();
        let data = self.cas.get(&instance(), &digest).await.unwrap();
        M::decode(data).unwrap()
    }

    /// Points the entry of `written` at `blob` instead of its record.
    async fn point_at(&self, written: &Written, blob: reapi::Digest) {
        let mut entry = written.entry.clone();
        entry.output_files[0].digest = Some(blob);
        self.ac.replace(&written.key, entry).await;
    }

    /// After one healthy run: a fresh expander answers from the Action Cache, without
    /// downloading a layer, with the clean root.
    async fn assert_records_usable_again(&self, clean: &reapi::Digest) {
        let fetches = self.layer_fetches();
        let again = self
            .expand()
            .await
            .expect("expands from the repaired records");
        assert_eq!(&again.root_directory_digest, clean);
        assert!(again.from_cache, "{again:?}");
        assert_eq!(self.layer_fetches(), fetches, "no layer downloaded again");
    }
}

/// Healthy storage: the root every damaged run must reproduce.
async fn clean_run(world: &World) -> reapi::Digest {
    let clean = world.expand().await.expect("clean expansion");
    assert!(!clean.from_cache);
    assert_eq!(world.image_records().await.len(), 1);
    assert_eq!(world.chain_records().await.len(), 1);
    assert_eq!(world.records("changeset").len(), 2);
    assert_eq!(world.records("manifest-digest").len(), 1);
    clean.root_directory_digest
}

#[tokio::test]
async fn image_records_without_a_root_are_rebuilt() {
    let world = World::start("v1").await;
    let clean = clean_run(&world).await;
    let image = world.image_records().await.remove(0);
    // An empty blob decodes as a record with no root; so does the client's Command.
    let command = reapi::Command {
        arguments: vec!["/bin/true".into()],
        ..Default::default()
    };
    for blob in [
        world.blob(b"").await,
        put_message(&*world.cas, &instance(), &command)
            .await
            .unwrap(),
    ] {
        world.point_at(&image, blob).await;
        let expanded = world.expand().await.expect("rebuilt, not an error");
        assert_eq!(expanded.root_directory_digest, clean);
        assert_ne!(expanded.root_directory_digest.hash, "");
    }
    world.assert_records_usable_again(&clean).await;
    let metrics = bb_container_expander::diagnostics::render_metrics();
    assert!(
        metrics.contains(
            r#"buildbarn_container_expander_cache_records_rejected_total{reason="invalid",step="expand-image"}"#
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn layer_changesets_of_other_layers_or_empty_are_rebuilt() {
    let world = World::start("v1").await;
    let clean = clean_run(&world).await;
    let changesets = world.records("changeset");
    // Force the layers to be used: drop the image and chain records.
    let empty = world.blob(b"").await;
    for written in world.records("image-record") {
        world.point_at(&written, empty.clone()).await;
    }
    // The first layer's entry points at the second layer's changeset; the second's at
    // an empty changeset.
    let second: LayerChangeset = world.record(&changesets[1]).await;
    let second_blob = put_message(&*world.cas, &instance(), &second)
        .await
        .unwrap();
    world.point_at(&changesets[0], second_blob).await;
    world.point_at(&changesets[1], empty.clone()).await;

    let fetches = world.layer_fetches();
    let expanded = world.expand().await.expect("rebuilt, not an error");
    assert_eq!(expanded.root_directory_digest, clean);
    assert_eq!(
        world.layer_fetches(),
        fetches + 2,
        "both layers ingested again"
    );
    world.assert_records_usable_again(&clean).await;
    // The rewritten changesets are the layers' own again.
    let rewritten = world.records("changeset");
    assert_eq!(rewritten.len(), 4);
    let mut before = Vec::new();
    for written in &changesets {
        before.push(
            world
                .record::<LayerChangeset>(written)
                .await
                .encode_to_vec(),
        );
    }
    let mut after = Vec::new();
    for written in &rewritten[2..] {
        after.push(
            world
                .record::<LayerChangeset>(written)
                .await
                .encode_to_vec(),
        );
    }
    before.sort();
    after.sort();
    assert_eq!(before, after);
}

#[tokio::test]
async fn undecodable_records_are_rebuilt_and_overwritten() {
    let world = World::start("v1").await;
    let clean = clean_run(&world).await;
    let garbage = world.blob(b"\xff\xff\xff\xff not a protobuf").await;
    for written in world.ac.written() {
        world.point_at(&written, garbage.clone()).await;
    }
    let expanded = world.expand().await.expect("rebuilt, not INVALID_ARGUMENT");
    assert_eq!(expanded.root_directory_digest, clean);
    world.assert_records_usable_again(&clean).await;
}

#[tokio::test]
async fn a_record_of_another_image_is_not_used() {
    let world = World::start("v1").await;
    let clean = clean_run(&world).await;
    let image = world.image_records().await.remove(0);
    let mut other: ImageRecord = world.record(&image).await;
    other.resolved_digest = format!("sha256:{}", "5".repeat(64));
    other.manifest_digest = other.resolved_digest.clone();
    other.root_directory_digest = Some(DigestFunction::Sha256.empty_digest());
    let blob = put_message(&*world.cas, &instance(), &other).await.unwrap();
    world.point_at(&image, blob).await;

    let expanded = world.expand().await.unwrap();
    assert_eq!(expanded.root_directory_digest, clean);
    assert_ne!(expanded.manifest_digest, other.manifest_digest);
    world.assert_records_usable_again(&clean).await;
}

#[tokio::test]
async fn a_tag_record_of_another_reference_is_not_used() {
    let world = World::start("v1").await;
    let clean = clean_run(&world).await;
    let tag = world.records("manifest-digest").remove(0);
    let swapped = world
        .blob(format!("docker://elsewhere.example/x:v1@sha256:{}", "6".repeat(64)).as_bytes())
        .await;
    world.point_at(&tag, swapped).await;
    let expanded = world.expand().await.unwrap();
    assert_eq!(expanded.root_directory_digest, clean);
    assert_eq!(world.records("manifest-digest").len(), 2, "recorded anew");
    world.assert_records_usable_again(&clean).await;
}

#[tokio::test]
async fn failed_record_writes_do_not_fail_the_expansion() {
    let world = World::start("v1").await;
    world.ac.refuse_writes.store(true, Ordering::SeqCst);
    let cold = world.expand().await.expect("the tree was built and stored");
    assert!(world.ac.written().is_empty());
    // The tree is complete in the CAS even though nothing was recorded.
    let root = cold.root_directory_digest.clone();
    let missing = world
        .cas
        .find_missing(&instance(), vec![root.clone()])
        .await
        .unwrap();
    assert!(missing.is_empty());

    // Writes work again: the next request records everything, and the one after it is
    // served from those records.
    world.ac.refuse_writes.store(false, Ordering::SeqCst);
    let second = world.expand().await.unwrap();
    assert_eq!(second.root_directory_digest, root);
    assert_eq!(world.image_records().await.len(), 1);
    assert_eq!(world.records("changeset").len(), 2);
    world.assert_records_usable_again(&root).await;
}
