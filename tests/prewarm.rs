//! Prewarming (`containerImages.prewarm`, `src/image/prewarmer.rs`) against a real
//! docker-registry: a tag pushed again is expanded, and recorded as the tag's fresh
//! resolution, before anything else asks for it; failures are counted, logged and
//! retried, never fatal.
//!
//! Nothing here waits for a time to pass: each test polls what the prewarmer leaves
//! behind (the tag's `resolve-tag` record in the Action Cache, which is written only
//! once the digest's tree is expanded, and the Prometheus metrics) with a deadline.

mod rewrite_support;
mod support;

use bb_container_expander::blobstore::{
    ActionCache, ContentAddressableStorage, Instance, MemoryActionCache,
    MemoryContentAddressableStorage,
};
use bb_container_expander::config::container_images::ContainerImagesConfiguration;
use bb_container_expander::digest::DigestFunction;
use bb_container_expander::image::{
    new_image_expander_from_configuration, new_prewarmer_from_configuration, FakeAction,
    ImageExpander, Step,
};
use bb_container_expander::registry::{Platform, Reference};
use serde_json::{json, Value};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::images::{Compression, Flavor, Image, ImageBuilder, Layer};
use support::registry_server::RegistryServer;
use tokio::sync::watch;

const INSTANCE: &str = "team-a";
const PATIENCE: Duration = Duration::from_secs(120);

fn instance() -> Instance {
    Instance::new(INSTANCE, DigestFunction::Sha256)
}

fn image(content: &[u8]) -> Image {
    let layer = Layer::from_files(&[("etc/content", content)], Compression::Gzip, Flavor::Oci);
    ImageBuilder::new(Flavor::Oci).layer(layer).build()
}

/// A prewarmer running until [`Running::stop`].
struct Running {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

/// The in-memory stores a fleet would share.
struct Stores {
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Arc<dyn ActionCache>,
}

impl Stores {
    fn new() -> Self {
        Self {
            cas: Arc::new(MemoryContentAddressableStorage::new(1 << 30)),
            ac: Arc::new(MemoryActionCache::new(1 << 30)),
        }
    }

    /// The prewarmer of `configuration` over a fresh expander, running.
    fn prewarm(&self, configuration: &ContainerImagesConfiguration) -> Running {
        let expander = self.expander(configuration);
        let prewarmer = new_prewarmer_from_configuration(configuration, &expander)
            .unwrap()
            .expect("a prewarmer");
        let (stop, shutdown) = watch::channel(false);
        Running {
            stop,
            task: tokio::spawn(prewarmer.run(shutdown)),
        }
    }

    /// A fresh expander (a process of its own) over these stores.
    fn expander(&self, configuration: &ContainerImagesConfiguration) -> Arc<ImageExpander> {
        new_image_expander_from_configuration(
            configuration,
            self.cas.clone(),
            self.ac.clone(),
            2 << 20,
            None,
        )
        .unwrap()
    }

    /// The digest the `resolve-tag` record of `reference` names, if any: read straight
    /// from the Action Cache and the CAS, so that nothing is resolved or expanded.
    async fn recorded_tag(&self, reference: &str) -> Option<String> {
        let reference = Reference::parse(reference).unwrap().to_string();
        let key = FakeAction::new(&instance(), Step::ResolveTag, &[&reference]);
        let result = self
            .ac
            .get_action_result(&instance(), &key.digest)
            .await
            .ok()?;
        let blob = result
            .output_files
            .iter()
            .find(|f| f.path == "manifest-digest")?
            .digest
            .clone()?;
        let text = self.cas.get(&instance(), &blob).await.ok()?;
        let text = String::from_utf8(text.to_vec()).unwrap();
        let (named, digest) = text.rsplit_once('@').unwrap();
        assert_eq!(named, reference);
        Some(digest.to_string())
    }
}

fn configuration(value: Value) -> ContainerImagesConfiguration {
    let configuration: ContainerImagesConfiguration = serde_json::from_value(value).unwrap();
    configuration.validate().unwrap();
    configuration
}

/// Polls `check` until it holds, failing after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of the series `name{image, instance_name}` as `/metrics` shows it (0 when
/// absent): a counter's or gauge's value; `…_count` is a histogram's sample count.
fn metric(name: &str, image: &str) -> f64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&prometheus::gather())
        .unwrap();
    let series = format!("buildbarn_container_expander_{name}{{");
    text.lines()
        .find(|line| {
            line.starts_with(&series)
                && line.contains(&format!("image=\"{image}\""))
                && line.contains(&format!("instance_name=\"{INSTANCE}\""))
        })
        .map(|line| line.rsplit(' ').next().unwrap().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_moved_tag_is_expanded_and_recorded_before_anyone_asks() {
    let registry = tokio::task::spawn_blocking(RegistryServer::start)
        .await
        .unwrap();
    let reference = format!("docker://{}/test/app:v1", registry.host());
    let first = registry
        .pusher()
        .push_image("test/app", Some("v1"), &image(b"one\n"))
        .await;
    let configuration = configuration(json!({
        "registries": [{"hosts": [registry.host()], "instanceNamePrefixes": [INSTANCE]}],
        "requestTimeout": "5s",
        "maximumRetries": 1,
        "initialRetryDelay": "0.05s",
        "prewarm": {
            "interval": "0.05s",
            "images": [{"reference": reference, "instanceName": INSTANCE}],
        },
    }));
    let stores = Stores::new();
    let running = stores.prewarm(&configuration);

    eventually("the first digest recorded", || async {
        stores.recorded_tag(&reference).await.as_deref() == Some(first.as_str())
    })
    .await;
    assert_eq!(metric("prewarm_ready_lag_seconds_count", &reference), 0.0);

    // The tag moves.
    let second = registry
        .pusher()
        .push_image("test/app", Some("v1"), &image(b"two\n"))
        .await;
    assert_ne!(first, second);
    eventually("the moved tag's tree ready", || async {
        metric("prewarm_ready_lag_seconds_count", &reference) == 1.0
    })
    .await;
    assert_eq!(
        stores.recorded_tag(&reference).await.as_deref(),
        Some(second.as_str())
    );
    assert!(metric("prewarm_tag_moved_timestamp_seconds", &reference) > 0.0);
    running.stop().await;

    // With the registry gone, another process serves the tag's new image from the
    // caches alone: the tag's record and the image's tree were both there.
    drop(registry);
    let other = stores.expander(&configuration);
    let expanded = other
        .expand(
            &instance(),
            &reference,
            &Platform::new("linux", "amd64", ""),
        )
        .await
        .unwrap();
    assert_eq!(expanded.manifest_digest, second);
    assert!(expanded.from_cache);
    assert_eq!(expanded.layers_ingested, 0);
    assert_eq!(metric("prewarm_failures_total", &reference), 0.0);
}

/// Log lines written while a test runs on this thread.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test]
async fn failures_are_logged_counted_and_retried_without_stopping_the_others() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The test runtime runs every task on this thread.
    let _guard = tracing::subscriber::set_default(subscriber);

    let registry = tokio::task::spawn_blocking(RegistryServer::start)
        .await
        .unwrap();
    let dead = format!("127.0.0.1:{}", support::free_port());
    let missing = format!("docker://{}/test/later:v1", registry.host());
    let unreachable = format!("docker://{dead}/test/app:v1");
    let configuration = configuration(json!({
        "registries": [{"hosts": [registry.host(), dead]}],
        "requestTimeout": "5s",
        "maximumRetries": 1,
        "initialRetryDelay": "0.05s",
        "prewarm": {
            "interval": "0.05s",
            "images": [
                {"reference": missing, "instanceName": INSTANCE},
                {"reference": unreachable, "instanceName": INSTANCE},
            ],
        },
    }));
    let stores = Stores::new();
    let running = stores.prewarm(&configuration);

    // Both fail, round after round.
    eventually("failures counted in several rounds", || async {
        metric("prewarm_failures_total", &missing) >= 2.0
            && metric("prewarm_failures_total", &unreachable) >= 2.0
    })
    .await;
    let text = logs.text();
    for image in [&missing, &unreachable] {
        let line = text
            .lines()
            .find(|l| {
                l.contains(&format!(
                    "Failed to prewarm image {image} for instance name"
                ))
            })
            .unwrap_or_else(|| panic!("no failure logged for {image}:\n{text}"));
        assert!(line.contains("\"team-a\""), "{line}");
        assert!(line.contains("Failed to resolve image"), "{line}");
    }
    assert!(
        text.contains("test/later") && text.contains("ot found"),
        "{text}"
    );

    // The missing image appears: the next round expands it, the other still failing.
    let pushed = registry
        .pusher()
        .push_image("test/later", Some("v1"), &image(b"later\n"))
        .await;
    eventually("the image pushed later recorded", || async {
        stores.recorded_tag(&missing).await.as_deref() == Some(pushed.as_str())
    })
    .await;
    let failures = metric("prewarm_failures_total", &unreachable);
    eventually("the unreachable registry still retried", || async {
        metric("prewarm_failures_total", &unreachable) > failures
    })
    .await;
    assert!(!running.task.is_finished());
    running.stop().await;
}

/// The service itself (a `Program` from a Jsonnet configuration, as in production)
/// starts prewarming once it serves, without any request, and stops it on shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_prewarms_from_start_up_until_shutdown() {
    let cluster = rewrite_support::Cluster::start().await;
    let mut entries = rewrite_support::env_entries();
    entries.push(support::images::TarEntry::file(
        "etc/prewarmed",
        b"by the service\n",
    ));
    let pushed = rewrite_support::image_of(&entries);
    cluster.push("test/prewarmed", "v1", &pushed).await;
    let reference = format!("docker://{}/test/prewarmed:v1", cluster.registry.host());
    let expander = cluster
        .expander(&format!(
            "{{ prewarm: {{ interval: '1s', images: [{{ reference: '{reference}', \
             instanceName: '{}' }}] }} }}",
            cluster.instance
        ))
        .await;
    let deadline = std::time::Instant::now() + PATIENCE;
    while pushed
        .layers
        .iter()
        .any(|layer| cluster.blob_fetches(&layer.digest) == 0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the service did not prewarm {reference}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An action on the tag finds the image expanded: nothing more is pulled.
    let stored = cluster
        .store(&rewrite_support::ClientAction::with_images(&[&reference]))
        .await;
    let outcome = expander.execute(stored.request()).await;
    assert_eq!(outcome.result().exit_code, 0);
    for layer in &pushed.layers {
        assert_eq!(cluster.blob_fetches(&layer.digest), 1, "{}", layer.digest);
    }
    // Shutdown ends the prewarmer with the servers.
    tokio::time::timeout(PATIENCE, expander.stop())
        .await
        .expect("the service stops while prewarming");
}
