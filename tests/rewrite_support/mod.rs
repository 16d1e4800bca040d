//! Harness of the Execute rewrite tests (`tests/execute_rewrite.rs`, `tests/rewrite_*.rs`):
//!
//! - [`Cluster`]: a real docker-registry (see `support::registry_server`), an in-process
//!   CAS + AC ([`BlobstoreServer`] over in-memory stores, so tests can evict blobs) and
//!   the fake scheduler + worker ([`FakeWorker`]) reading that CAS;
//! - [`Expander`]: a [`Program`] built from a Jsonnet configuration as in production,
//!   serving on a loopback port, pointed at the cluster (several may share it, as
//!   replicas or a restarted process do);
//! - [`ClientAction`] and [`InputTree`]: what a client uploads before Execute;
//! - [`GatedProxy`]: a TCP relay in front of the registry that holds every connection
//!   until the test opens it (a registry that is slow exactly as long as a test wants);
//! - images with and without `usr/bin/env`, and decoders for operations.
//!
//! Use from a test crate with `mod support; mod rewrite_support;`.

#![allow(dead_code)]

use crate::support::images::{
    tar_bytes, Compression, Flavor, Image, ImageBuilder, Layer, TarEntry,
};
use crate::support::registry_server::RegistryServer;
use bb_container_expander::blobstore::{
    ActionCache, ContentAddressableStorage, Instance, MemoryActionCache,
    MemoryContentAddressableStorage,
};
use bb_container_expander::config::{self, ApplicationConfiguration};
use bb_container_expander::diagnostics::Readiness;
use bb_container_expander::digest::{encode_message, DigestFunction};
use bb_container_expander::program::Program;
use bb_container_expander::proto::cache::ExpansionProvenance;
use bb_container_expander::proto::longrunning::{operation, Operation};
use bb_container_expander::proto::reapi;
use bb_container_expander::testutil::fake_worker::FakeWorker;
use bb_container_expander::testutil::BlobstoreServer;
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::Status;

/// Instance name of the client's requests, unless a test starts its cluster with
/// [`Cluster::start_serving`].
pub const INSTANCE: &str = "main";

/// Instance names the Execute tests run with: the empty one, a plain one, and one with
/// several path segments.
pub const INSTANCE_NAMES: &[&str] = &["", "main", "a/b"];

/// Generous bound for anything a test waits for.
pub const PATIENCE: Duration = Duration::from_secs(120);

pub const KEEPALIVE_PREFIX: &str = "bb-container-expander/expanding/";
pub const PROVENANCE_TYPE: &str =
    "type.googleapis.com/bb_container_expander.cache.ExpansionProvenance";

pub fn instance() -> Instance {
    Instance::new(INSTANCE, DigestFunction::Sha256)
}

fn free_port() -> u16 {
    crate::support::free_port()
}

/// Registry, storage and the fake scheduler + worker. Storage and scheduler serve one
/// instance name, [`Cluster::instance`], and refuse every other, as real servers do.
pub struct Cluster {
    /// The one instance name served, and used by the client's requests.
    pub instance: String,
    pub registry: RegistryServer,
    pub memory_cas: Arc<MemoryContentAddressableStorage>,
    pub storage: BlobstoreServer,
    pub worker: FakeWorker,
}

/// How an [`Expander`] is configured beyond the defaults of [`Cluster::expander`].
pub struct ExpanderSettings {
    /// Forward to the fake worker (proxy mode); without it only the router is served.
    pub scheduler: bool,
    /// Registry hosts listed in `containerImages.registries`.
    pub registry_hosts: Vec<String>,
    /// A Jsonnet object added to `containerImages`.
    pub container_images: String,
}

impl Cluster {
    /// A cluster serving [`INSTANCE`].
    pub async fn start() -> Self {
        Self::start_serving(INSTANCE).await
    }

    /// A cluster whose storage and scheduler serve `instance_name` only.
    pub async fn start_serving(instance_name: &str) -> Self {
        Self::start_serving_all(&[instance_name]).await
    }

    /// A cluster whose storage and scheduler serve `instance_names` (the first is
    /// [`Cluster::instance`]).
    pub async fn start_serving_all(instance_names: &[&str]) -> Self {
        let instance_name = instance_names[0];
        let registry = tokio::task::spawn_blocking(RegistryServer::start)
            .await
            .expect("registry start-up");
        let memory_cas = Arc::new(MemoryContentAddressableStorage::new(1 << 30));
        let ac: Arc<dyn ActionCache> = Arc::new(MemoryActionCache::new(1 << 30));
        let storage = BlobstoreServer::builder(memory_cas.clone(), ac.clone())
            .instance_names(instance_names.iter().copied())
            .start()
            .await;
        let worker = FakeWorker::start_serving(memory_cas.clone(), Some(ac), instance_names).await;
        Self {
            instance: instance_name.to_string(),
            registry,
            memory_cas,
            storage,
            worker,
        }
    }

    pub fn cas(&self) -> Arc<dyn ContentAddressableStorage> {
        self.storage.cas()
    }

    /// `docker://HOST/name` on the cluster's registry.
    pub fn reference(&self, name: &str) -> String {
        format!("docker://{}/{name}", self.registry.host())
    }

    /// Pushes `image` as `repository:tag`; returns its manifest digest.
    pub async fn push(&self, repository: &str, tag: &str, image: &Image) -> String {
        self.registry
            .pusher()
            .push_image(repository, Some(tag), image)
            .await
    }

    /// An expander in proxy mode in front of the fake worker, allowed to pull from the
    /// cluster's registry, with `container_images` (a Jsonnet object, e.g. `{}`) added.
    pub async fn expander(&self, container_images: &str) -> Expander {
        self.expander_with(ExpanderSettings {
            scheduler: true,
            registry_hosts: vec![self.registry.host()],
            container_images: container_images.into(),
        })
        .await
    }

    /// An expander that serves the router only (no scheduler configured).
    pub async fn router(&self, container_images: &str) -> Expander {
        self.expander_with(ExpanderSettings {
            scheduler: false,
            registry_hosts: vec![self.registry.host()],
            container_images: container_images.into(),
        })
        .await
    }

    pub async fn expander_with(&self, settings: ExpanderSettings) -> Expander {
        // A port that was free a moment ago may be taken before the expander binds it:
        // try a few.
        for _ in 0..5 {
            if let Some(expander) = self.try_expander(&settings).await {
                return expander;
            }
        }
        panic!("the expander could not bind a free port after 5 attempts");
    }

    async fn try_expander(&self, settings: &ExpanderSettings) -> Option<Expander> {
        let grpc_port = free_port();
        let storage = self.storage.address();
        let scheduler = if settings.scheduler {
            format!("scheduler: {{ address: '{}' }},", self.worker.address())
        } else {
            String::new()
        };
        let hosts: Vec<String> = settings
            .registry_hosts
            .iter()
            .map(|h| format!("'{h}'"))
            .collect();
        let text = format!(
            r#"{{
              grpcServers: [{{ listenAddresses: ['127.0.0.1:{grpc_port}'], authenticationPolicy: {{ allow: {{}} }} }}],
              blobstore: {{
                contentAddressableStorage: {{ grpc: {{ client: {{ address: '{storage}' }} }} }},
                actionCache: {{ grpc: {{ client: {{ address: '{storage}' }} }} }},
              }},
              {scheduler}
              serveRemoteAsset: true,
              containerImages: {{
                registries: [{{ hosts: [{hosts}] }}],
                requestTimeout: '300s',
                maximumRetries: 1,
                initialRetryDelay: '0.05s',
              }} + {extra},
            }}"#,
            hosts = hosts.join(", "),
            extra = settings.container_images,
        );
        let value = config::jsonnet::evaluate_snippet("rewrite-test.jsonnet", &text)
            .unwrap_or_else(|e| panic!("configuration does not evaluate: {e}\n{text}"));
        let configuration: ApplicationConfiguration =
            config::jsonnet::decode(value).expect("configuration decodes");
        configuration.validate().expect("configuration is valid");
        let program = Program::from_configuration(configuration).expect("program");
        let (shutdown, stop) = watch::channel(false);
        let readiness = Readiness::default();
        let task = tokio::spawn(program.serve(readiness.clone(), stop));
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !readiness.get() {
            if task.is_finished() {
                let error = task
                    .await
                    .expect("expander task")
                    .expect_err("stopped early");
                assert!(
                    error.contains("ddress already in use"),
                    "the expander failed to start: {error}"
                );
                return None;
            }
            assert!(tokio::time::Instant::now() < deadline, "expander not ready");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Some(Expander {
            url: format!("http://127.0.0.1:{grpc_port}"),
            shutdown,
            task,
        })
    }

    /// Uploads the client's Command, input root and Action.
    pub async fn store(&self, action: &ClientAction) -> StoredAction {
        action.store_in(&*self.cas(), &self.instance).await
    }

    /// GetActionResult through the storage server, as a client would call it.
    pub async fn get_action_result(
        &self,
        digest: &reapi::Digest,
    ) -> Result<reapi::ActionResult, Status> {
        let channel = Channel::from_shared(self.storage.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        reapi::action_cache_client::ActionCacheClient::new(channel)
            .get_action_result(reapi::GetActionResultRequest {
                instance_name: self.instance.clone(),
                action_digest: Some(digest.clone()),
                ..Default::default()
            })
            .await
            .map(|r| r.into_inner())
    }

    /// How many times the registry served GET of `digest` (a blob) so far, from its
    /// access log.
    pub fn blob_fetches(&self, digest: &str) -> usize {
        self.registry
            .log()
            .lines()
            .filter(|line| {
                line.contains("\"GET /v2/") && line.contains(&format!("/blobs/{digest} "))
            })
            .count()
    }
}

/// A running expander; stopped by [`Expander::stop`] (or aborted when dropped).
pub struct Expander {
    pub url: String,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

/// What an Execute or WaitExecution call produced.
#[derive(Debug)]
pub struct Outcome {
    /// Operations, in the order received.
    pub operations: Vec<Operation>,
    /// The error the call or the stream ended with.
    pub error: Option<Status>,
}

impl Outcome {
    /// Operations that are not keepalives sent during expansion.
    pub fn real_operations(&self) -> Vec<&Operation> {
        self.operations
            .iter()
            .filter(|op| !is_keepalive(op))
            .collect()
    }

    /// The final operation's ExecuteResponse (panics with the outcome if there is none).
    pub fn response(&self) -> reapi::ExecuteResponse {
        let last = self
            .operations
            .last()
            .unwrap_or_else(|| panic!("no operations: {self:?}"));
        assert!(last.done, "the last operation is not done: {self:?}");
        execute_response(last).unwrap_or_else(|| panic!("no ExecuteResponse: {self:?}"))
    }

    /// The ActionResult of a successful final operation.
    pub fn result(&self) -> reapi::ActionResult {
        assert!(self.error.is_none(), "unexpected error: {self:?}");
        let response = self.response();
        assert_eq!(
            response.status.clone().unwrap_or_default().code,
            0,
            "{response:?}"
        );
        response.result.expect("an ActionResult")
    }

    /// The error, with no operation other than keepalives before it.
    pub fn refusal(&self) -> &Status {
        assert!(
            self.real_operations().is_empty(),
            "operations before the error: {self:?}"
        );
        self.error
            .as_ref()
            .unwrap_or_else(|| panic!("no error: {self:?}"))
    }
}

impl Expander {
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url.clone())
            .unwrap()
            .connect()
            .await
            .expect("connect to the expander")
    }

    pub async fn client(&self) -> reapi::execution_client::ExecutionClient<Channel> {
        reapi::execution_client::ExecutionClient::new(self.channel().await)
    }

    /// Execute, collecting every operation until the stream ends.
    pub async fn execute(&self, request: reapi::ExecuteRequest) -> Outcome {
        collect(self.client().await.execute(request).await).await
    }

    /// WaitExecution, collecting every operation until the stream ends.
    pub async fn wait_execution(&self, name: &str) -> Outcome {
        collect(
            self.client()
                .await
                .wait_execution(reapi::WaitExecutionRequest { name: name.into() })
                .await,
        )
        .await
    }

    pub async fn stop(self) {
        self.shutdown.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// Execute on the expander at `url` (e.g. one run as a separate process), collecting
/// every operation until the stream ends.
pub async fn execute_at(url: &str, request: reapi::ExecuteRequest) -> Outcome {
    let channel = match Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
    {
        Ok(channel) => channel,
        Err(e) => {
            return Outcome {
                operations: Vec::new(),
                error: Some(Status::unavailable(format!("connect to {url}: {e}"))),
            }
        }
    };
    collect(
        reapi::execution_client::ExecutionClient::new(channel)
            .execute(request)
            .await,
    )
    .await
}

async fn collect(result: Result<tonic::Response<tonic::Streaming<Operation>>, Status>) -> Outcome {
    let mut outcome = Outcome {
        operations: Vec::new(),
        error: None,
    };
    let mut stream = match result {
        Ok(response) => response.into_inner(),
        Err(status) => {
            outcome.error = Some(status);
            return outcome;
        }
    };
    while let Some(item) = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the stream went silent")
    {
        match item {
            Ok(op) => outcome.operations.push(op),
            Err(status) => {
                outcome.error = Some(status);
                break;
            }
        }
    }
    outcome
}

/// Whether `op` is a keepalive sent during expansion: its name is
/// `{instance}/operations/bb-container-expander/expanding/{uuid}`.
pub fn is_keepalive(op: &Operation) -> bool {
    op.name.contains(&format!("/operations/{KEEPALIVE_PREFIX}"))
}

pub fn operation_metadata(op: &Operation) -> reapi::ExecuteOperationMetadata {
    let any = op.metadata.as_ref().expect("operation metadata");
    assert_eq!(
        any.type_url,
        "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata"
    );
    reapi::ExecuteOperationMetadata::decode(any.value.as_slice()).unwrap()
}

pub fn execute_response(op: &Operation) -> Option<reapi::ExecuteResponse> {
    match &op.result {
        Some(operation::Result::Response(any)) => {
            assert_eq!(
                any.type_url,
                "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse"
            );
            Some(reapi::ExecuteResponse::decode(any.value.as_slice()).unwrap())
        }
        _ => None,
    }
}

/// Every ExpansionProvenance in a result's auxiliary metadata.
pub fn provenance_of(result: &reapi::ActionResult) -> Vec<ExpansionProvenance> {
    result
        .execution_metadata
        .as_ref()
        .map(|m| {
            m.auxiliary_metadata
                .iter()
                .filter(|any| any.type_url == PROVENANCE_TYPE)
                .map(|any| ExpansionProvenance::decode(any.value.as_slice()).unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// Platform properties as (name, value) pairs.
pub fn pairs(platform: Option<&reapi::Platform>) -> Vec<(String, String)> {
    platform
        .map(|p| {
            p.properties
                .iter()
                .map(|p| (p.name.clone(), p.value.clone()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn platform(pairs: &[(&str, &str)]) -> reapi::Platform {
    reapi::Platform {
        properties: pairs
            .iter()
            .map(|(n, v)| reapi::platform::Property {
                name: n.to_string(),
                value: v.to_string(),
            })
            .collect(),
    }
}

// ---------------------------------------------------------------------------------
// Images.

/// Entries that make an image runnable on chroot workers: an executable usr/bin/env,
/// and the programs the test actions run (`/bin/sh`, `true`), usrmerge style
/// (`bin -> usr/bin`), for the expander's program check.
pub fn env_entries() -> Vec<TarEntry> {
    vec![
        TarEntry::Dir("usr".into(), 0o755),
        TarEntry::Dir("usr/bin".into(), 0o755),
        TarEntry::File("usr/bin/env".into(), b"#!fake env\n".to_vec(), 0o755),
        TarEntry::File("usr/bin/sh".into(), b"#!fake sh\n".to_vec(), 0o755),
        TarEntry::File("usr/bin/true".into(), b"#!fake true\n".to_vec(), 0o755),
        TarEntry::Symlink("bin".into(), "usr/bin".into()),
    ]
}

/// The two layers of a runnable image that no image with another `marker` shares, so
/// that a rule on one image's blobs hits no other: `env_entries` and etc/image-name,
/// then etc/os-release.
pub fn marked_layers(marker: &str) -> Vec<Vec<TarEntry>> {
    let mut first = env_entries();
    first.push(TarEntry::Dir("etc".into(), 0o755));
    first.push(TarEntry::file("etc/image-name", marker.as_bytes()));
    let second = vec![TarEntry::file(
        "etc/os-release",
        format!("ID={marker}\n").as_bytes(),
    )];
    vec![first, second]
}

/// An image (gzip, OCI) with one layer per element of `layers`.
pub fn image_of_layers(layers: &[Vec<TarEntry>]) -> Image {
    layers
        .iter()
        .fold(ImageBuilder::new(Flavor::Oci), |builder, entries| {
            builder.layer(Layer::new(
                tar_bytes(entries),
                Compression::Gzip,
                Flavor::Oci,
            ))
        })
        .build()
}

/// The `n`-th of a series of distinct actions on `reference`.
pub fn distinct_action(reference: &str, n: usize) -> ClientAction {
    let mut action = ClientAction::with_images(&[reference]);
    action.arguments.push(format!("# action {n}"));
    action
}

/// A one-layer image (gzip, OCI) of `entries`.
pub fn image_of(entries: &[TarEntry]) -> Image {
    ImageBuilder::new(Flavor::Oci)
        .layer(Layer::new(
            tar_bytes(entries),
            Compression::Gzip,
            Flavor::Oci,
        ))
        .build()
}

/// A usrmerge-style base image in two layers: usr/bin/env, usr/lib/libc.so.6,
/// `lib -> usr/lib`, an empty `workspace` directory, then etc/os-release.
pub fn base_image() -> Image {
    let mut first = env_entries();
    first.extend([
        TarEntry::Dir("usr/lib".into(), 0o755),
        TarEntry::file("usr/lib/libc.so.6", b"not really libc\n"),
        TarEntry::Symlink("lib".into(), "usr/lib".into()),
        TarEntry::Dir("workspace".into(), 0o755),
    ]);
    let second = vec![
        TarEntry::Dir("etc".into(), 0o755),
        TarEntry::file("etc/os-release", b"ID=base\n"),
    ];
    ImageBuilder::new(Flavor::Oci)
        .layer(Layer::new(
            tar_bytes(&first),
            Compression::Gzip,
            Flavor::Oci,
        ))
        .layer(Layer::new(
            tar_bytes(&second),
            Compression::Zstd,
            Flavor::Oci,
        ))
        .build()
}

// ---------------------------------------------------------------------------------
// What a client uploads.

#[derive(Clone, Debug)]
enum Node {
    File(Bytes, bool),
    Symlink(String),
    Directory(BTreeMap<String, Node>),
}

/// A client's input root, built path by path (parents are created as needed).
#[derive(Clone, Debug)]
pub struct InputTree {
    root: BTreeMap<String, Node>,
}

impl Default for InputTree {
    fn default() -> Self {
        Self::new()
    }
}

impl InputTree {
    pub fn new() -> Self {
        Self {
            root: BTreeMap::new(),
        }
    }

    fn insert(mut self, path: &str, node: Node) -> Self {
        let parts: Vec<&str> = path.split('/').collect();
        let (last, parents) = parts.split_last().unwrap();
        let mut dir = &mut self.root;
        for part in parents {
            let entry = dir
                .entry(part.to_string())
                .or_insert_with(|| Node::Directory(BTreeMap::new()));
            dir = match entry {
                Node::Directory(children) => children,
                _ => panic!("{part} in {path} is not a directory"),
            };
        }
        match (dir.get(*last), &node) {
            (Some(Node::Directory(_)), Node::Directory(_)) => {}
            _ => {
                dir.insert(last.to_string(), node);
            }
        }
        self
    }

    pub fn file(self, path: &str, contents: &[u8]) -> Self {
        self.insert(path, Node::File(Bytes::copy_from_slice(contents), false))
    }

    pub fn executable(self, path: &str, contents: &[u8]) -> Self {
        self.insert(path, Node::File(Bytes::copy_from_slice(contents), true))
    }

    pub fn dir(self, path: &str) -> Self {
        self.insert(path, Node::Directory(BTreeMap::new()))
    }

    pub fn symlink(self, path: &str, target: &str) -> Self {
        self.insert(path, Node::Symlink(target.into()))
    }

    /// Every Directory (by path, "" = root) and file blob, canonical, and the root.
    pub fn encode(&self) -> EncodedInputs {
        let mut encoded = EncodedInputs {
            root: Default::default(),
            directories: BTreeMap::new(),
            files: Vec::new(),
        };
        encoded.root = encode_directory(&self.root, "", &mut encoded);
        encoded
    }
}

pub struct EncodedInputs {
    pub root: reapi::Digest,
    /// Directory digest and bytes by path ("" = root).
    pub directories: BTreeMap<String, (reapi::Digest, Bytes)>,
    pub files: Vec<(reapi::Digest, Bytes)>,
}

fn encode_directory(
    children: &BTreeMap<String, Node>,
    path: &str,
    out: &mut EncodedInputs,
) -> reapi::Digest {
    let mut directory = reapi::Directory::default();
    for (name, node) in children {
        match node {
            Node::File(contents, executable) => {
                let digest = DigestFunction::Sha256.digest_of(contents);
                out.files.push((digest.clone(), contents.clone()));
                directory.files.push(reapi::FileNode {
                    name: name.clone(),
                    digest: Some(digest),
                    is_executable: *executable,
                    ..Default::default()
                });
            }
            Node::Symlink(target) => directory.symlinks.push(reapi::SymlinkNode {
                name: name.clone(),
                target: target.clone(),
                ..Default::default()
            }),
            Node::Directory(grandchildren) => {
                let child_path = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}/{name}")
                };
                let digest = encode_directory(grandchildren, &child_path, out);
                directory.directories.push(reapi::DirectoryNode {
                    name: name.clone(),
                    digest: Some(digest),
                });
            }
        }
    }
    let (digest, bytes) = encode_message(DigestFunction::Sha256, &directory);
    out.directories
        .insert(path.to_string(), (digest.clone(), bytes));
    digest
}

/// The Action and Command a client sends.
#[derive(Clone, Debug)]
pub struct ClientAction {
    /// `Action.platform`, in this order (None: no platform).
    pub action_platform: Option<reapi::Platform>,
    /// `Command.platform` (deprecated, older clients).
    pub command_platform: Option<reapi::Platform>,
    pub arguments: Vec<String>,
    /// `Command.environment_variables`, as (name, value), in this order.
    pub environment: Vec<(String, String)>,
    pub working_directory: String,
    pub output_paths: Vec<String>,
    pub inputs: InputTree,
    pub do_not_cache: bool,
    pub timeout: Option<Duration>,
}

impl ClientAction {
    /// An action naming `images` (in this order) after `OSFamily=linux`, with its
    /// platform in both Action and Command, some inputs in `src/`, run in `src`, with
    /// one output file.
    pub fn with_images(images: &[&str]) -> Self {
        let mut properties = vec![("OSFamily", "linux")];
        properties.extend(images.iter().map(|i| ("container-image", *i)));
        let platform = platform(&properties);
        Self {
            action_platform: Some(platform.clone()),
            command_platform: Some(platform),
            arguments: vec![
                "/bin/sh".into(),
                "-c".into(),
                "cat /etc/os-release > out/result.txt".into(),
            ],
            environment: vec![("PATH".into(), "/bin:/usr/bin".into())],
            working_directory: "src".into(),
            output_paths: vec!["out/result.txt".into()],
            inputs: InputTree::new()
                .file("src/main.c", b"int main() { return 0; }\n")
                .executable("src/build.sh", b"#!/bin/sh\n")
                .file("data/input.txt", b"input data\n"),
            do_not_cache: false,
            timeout: Some(Duration::from_secs(600)),
        }
    }

    pub fn command(&self) -> reapi::Command {
        #[allow(deprecated)]
        reapi::Command {
            arguments: self.arguments.clone(),
            working_directory: self.working_directory.clone(),
            output_paths: self.output_paths.clone(),
            platform: self.command_platform.clone(),
            environment_variables: self
                .environment
                .iter()
                .map(|(name, value)| reapi::command::EnvironmentVariable {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            ..Default::default()
        }
    }

    /// Uploads every blob under [`INSTANCE`] and returns what was stored.
    pub async fn store(&self, cas: &dyn ContentAddressableStorage) -> StoredAction {
        self.store_in(cas, INSTANCE).await
    }

    /// Uploads every blob under `instance_name` and returns what was stored.
    pub async fn store_in(
        &self,
        cas: &dyn ContentAddressableStorage,
        instance_name: &str,
    ) -> StoredAction {
        let instance = Instance::new(instance_name, DigestFunction::Sha256);
        let command = self.command();
        let (command_digest, command_bytes) = encode_message(DigestFunction::Sha256, &command);
        let inputs = self.inputs.encode();
        let action = reapi::Action {
            command_digest: Some(command_digest.clone()),
            input_root_digest: Some(inputs.root.clone()),
            platform: self.action_platform.clone(),
            do_not_cache: self.do_not_cache,
            timeout: self.timeout.map(prost_types_duration),
            ..Default::default()
        };
        let (digest, action_bytes) = encode_message(DigestFunction::Sha256, &action);
        let mut blobs = vec![
            (command_digest.clone(), command_bytes),
            (digest.clone(), action_bytes),
        ];
        blobs.extend(inputs.directories.values().cloned());
        blobs.extend(inputs.files.iter().cloned());
        for (d, bytes) in blobs {
            cas.put(&instance, &d, bytes).await.unwrap();
        }
        StoredAction {
            instance_name: instance_name.to_string(),
            digest,
            action,
            command,
            command_digest,
            inputs,
        }
    }
}

fn prost_types_duration(d: Duration) -> bb_container_expander::proto::protobuf::Duration {
    bb_container_expander::proto::protobuf::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// What [`ClientAction::store`] uploaded.
pub struct StoredAction {
    /// The instance name it was stored under, which its ExecuteRequest names.
    pub instance_name: String,
    pub digest: reapi::Digest,
    pub action: reapi::Action,
    pub command: reapi::Command,
    pub command_digest: reapi::Digest,
    pub inputs: EncodedInputs,
}

impl StoredAction {
    /// The ExecuteRequest a client sends for this action.
    pub fn request(&self) -> reapi::ExecuteRequest {
        reapi::ExecuteRequest {
            instance_name: self.instance_name.clone(),
            action_digest: Some(self.digest.clone()),
            skip_cache_lookup: true,
            execution_policy: Some(reapi::ExecutionPolicy { priority: 7 }),
            results_cache_policy: Some(reapi::ResultsCachePolicy { priority: 3 }),
            digest_function: reapi::digest_function::Value::Sha256 as i32,
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------------------------
// A registry that answers only when the test says so.

/// A TCP relay to `target` that holds every connection until [`GatedProxy::open`].
pub struct GatedProxy {
    address: std::net::SocketAddr,
    gate: watch::Sender<bool>,
    connections: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl GatedProxy {
    pub async fn start(target: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (gate, opened) = watch::channel(false);
        let connections: Arc<std::sync::atomic::AtomicUsize> = Default::default();
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut opened = opened.clone();
                let target = target.clone();
                tokio::spawn(async move {
                    if opened.wait_for(|open| *open).await.is_err() {
                        return;
                    }
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            address,
            gate,
            connections,
            task,
        }
    }

    /// `127.0.0.1:PORT` (loopback: the expander speaks plain HTTP to it).
    pub fn host(&self) -> String {
        self.address.to_string()
    }

    /// Connections accepted so far (each waits for the gate).
    pub fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn open(&self) {
        self.gate.send_replace(true);
    }
}

impl Drop for GatedProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
