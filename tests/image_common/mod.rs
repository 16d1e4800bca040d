//! Helpers shared by the image engine's integration tests (`tests/image_*.rs`):
//!
//! - [`Env`]: an [`ImageExpander`] over in-memory CAS and AC that the test can inspect
//!   (`remove` a blob, count AC entries), for the registry under test;
//! - [`Node`] / [`read_tree`] / [`read_directory`]: a tree as a map from path to node,
//!   read node by node from the CAS (checking that every Directory is canonical) or from
//!   a directory on disk, so trees from different sources compare with `assert_eq!`;
//! - [`OciLayout`]: an OCI image layout directory written by hand, for `umoci`.
//!
//! Layer tars are built with `support::images` ([`TarEntry`](crate::support::images::TarEntry),
//! [`tar_bytes`](crate::support::images::tar_bytes)). Use with `mod support; mod image_common;`.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use bb_container_expander::blobstore::{
    get_message, ContentAddressableStorage, Instance, MemoryActionCache,
    MemoryContentAddressableStorage,
};
use bb_container_expander::digest::DigestFunction;
use bb_container_expander::image::{
    new_image_expander, ExpandedImage, ExpanderOptions, ImageExpander,
};
use bb_container_expander::proto::reapi;
use bb_container_expander::registry::configuration::new_registry_configuration_from_configuration;
use bb_container_expander::registry::{OciRegistry, Platform, Registry, RegistryConfiguration};
use serde_json::{json, Value};
use tonic::Status;

/// A node of a tree, as a test compares it.
#[derive(Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { data: Vec<u8>, exec: bool },
    Symlink(String),
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Node::Dir => write!(f, "Dir"),
            Node::File { data, exec } => match std::str::from_utf8(data) {
                Ok(text) if data.len() <= 64 => write!(f, "File({text:?}, exec={exec})"),
                _ => write!(
                    f,
                    "File({} bytes {}, exec={exec})",
                    data.len(),
                    DigestFunction::Sha256.digest_of(data).hash
                ),
            },
            Node::Symlink(target) => write!(f, "Symlink({target:?})"),
        }
    }
}

/// Path → node, every directory listed (the root is not).
pub type Tree = BTreeMap<String, Node>;

/// Builds an expected tree: `("d", D)`, `("f", F("text"))`, `("x", X("text"))`,
/// `("l", L("target"))`.
pub fn tree(nodes: &[(&str, Node)]) -> Tree {
    nodes
        .iter()
        .map(|(p, n)| (p.to_string(), n.clone()))
        .collect()
}

pub const D: Node = Node::Dir;

#[allow(non_snake_case)]
pub fn F(text: &str) -> Node {
    Node::File {
        data: text.as_bytes().to_vec(),
        exec: false,
    }
}

#[allow(non_snake_case)]
pub fn X(text: &str) -> Node {
    Node::File {
        data: text.as_bytes().to_vec(),
        exec: true,
    }
}

#[allow(non_snake_case)]
pub fn L(target: &str) -> Node {
    Node::Symlink(target.into())
}

/// Reads the tree whose root Directory is `root` from the CAS, node by node, and checks
/// that every Directory is canonical (docs/design/directories.md): names valid, sorted and unique across
/// files, directories and symlinks; no node properties; every blob present.
pub async fn read_tree(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    root: &reapi::Digest,
) -> Tree {
    let mut out = Tree::new();
    let mut pending = vec![(String::new(), root.clone())];
    while let Some((path, digest)) = pending.pop() {
        let data = cas
            .get(instance, &digest)
            .await
            .unwrap_or_else(|e| panic!("Directory {path:?} ({}) missing: {e}", digest.hash));
        let directory: reapi::Directory = prost::Message::decode(data.as_ref()).unwrap();
        let (canonical, _) =
            bb_container_expander::digest::encode_message(instance.digest_function, &directory);
        assert_eq!(
            canonical, digest,
            "Directory {path:?} is not canonically encoded"
        );
        assert!(
            directory.node_properties.is_none(),
            "{path:?} has node properties"
        );
        let join = |name: &str| {
            assert!(
                !name.is_empty()
                    && name != "."
                    && name != ".."
                    && !name.contains('/')
                    && !name.contains('\0'),
                "invalid name {name:?} in {path:?}"
            );
            assert!(!name.starts_with(".wh."), "whiteout {name:?} in {path:?}");
            if path.is_empty() {
                name.to_string()
            } else {
                format!("{path}/{name}")
            }
        };
        let mut names: Vec<&str> = Vec::new();
        for list in [
            directory
                .files
                .iter()
                .map(|f| f.name.as_str())
                .collect::<Vec<_>>(),
            directory
                .directories
                .iter()
                .map(|d| d.name.as_str())
                .collect(),
            directory.symlinks.iter().map(|s| s.name.as_str()).collect(),
        ] {
            assert!(
                list.windows(2).all(|w| w[0] < w[1]),
                "names in {path:?} not sorted/unique: {list:?}"
            );
            names.extend(list);
        }
        let count = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), count, "duplicate names in {path:?}");
        for f in &directory.files {
            assert!(f.node_properties.is_none());
            let digest = f.digest.clone().unwrap();
            let data = if digest.size_bytes == 0 {
                Vec::new()
            } else {
                cas.get(instance, &digest)
                    .await
                    .unwrap_or_else(|e| panic!("file {} missing from the CAS: {e}", join(&f.name)))
                    .to_vec()
            };
            assert_eq!(instance.digest_function.digest_of(&data), digest);
            out.insert(
                join(&f.name),
                Node::File {
                    data,
                    exec: f.is_executable,
                },
            );
        }
        for s in &directory.symlinks {
            assert!(s.node_properties.is_none());
            out.insert(join(&s.name), Node::Symlink(s.target.clone()));
        }
        for d in &directory.directories {
            let child = join(&d.name);
            out.insert(child.clone(), Node::Dir);
            pending.push((child, d.digest.clone().unwrap()));
        }
    }
    out
}

/// Reads a directory on disk as a [`Tree`]: files with "any x bit" as exec, symlinks
/// with their targets (never followed). Other file types panic unless `specials` is
/// given, which then collects their paths.
pub fn read_directory(root: &Path, mut specials: Option<&mut Vec<String>>) -> Tree {
    let mut out = Tree::new();
    let mut pending = vec![(String::new(), root.to_path_buf())];
    while let Some((path, dir)) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().into_string().expect("UTF-8 name");
            let full = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            let metadata = std::fs::symlink_metadata(entry.path()).unwrap();
            let kind = metadata.file_type();
            if kind.is_dir() {
                out.insert(full.clone(), Node::Dir);
                pending.push((full, entry.path()));
            } else if kind.is_symlink() {
                let target = std::fs::read_link(entry.path()).unwrap();
                out.insert(full, Node::Symlink(target.to_str().unwrap().to_string()));
            } else if kind.is_file() {
                out.insert(
                    full,
                    Node::File {
                        data: std::fs::read(entry.path()).unwrap(),
                        exec: metadata.permissions().mode() & 0o111 != 0,
                    },
                );
            } else {
                match specials.as_deref_mut() {
                    Some(list) => list.push(full),
                    None => panic!("unexpected special file {full} ({:o})", metadata.mode()),
                }
            }
        }
    }
    out
}

/// Differences between two trees, as readable lines (empty if equal).
pub fn diff_trees(left_name: &str, left: &Tree, right_name: &str, right: &Tree) -> Vec<String> {
    let mut lines = Vec::new();
    for (path, node) in left {
        match right.get(path) {
            None => lines.push(format!("{path}: only in {left_name}: {node:?}")),
            Some(other) if other != node => lines.push(format!(
                "{path}: {left_name} {node:?} != {right_name} {other:?}"
            )),
            _ => {}
        }
    }
    for (path, node) in right {
        if !left.contains_key(path) {
            lines.push(format!("{path}: only in {right_name}: {node:?}"));
        }
    }
    lines
}

/// Asserts two trees are equal, listing every difference.
pub fn assert_trees_eq(actual: &Tree, expected: &Tree) {
    let lines = diff_trees("actual", actual, "expected", expected);
    assert!(lines.is_empty(), "trees differ:\n  {}", lines.join("\n  "));
}

/// A registry configuration with short timeouts and fast retries, listing `entries`.
pub fn registry_configuration(entries: Value) -> RegistryConfiguration {
    new_registry_configuration_from_configuration(
        &serde_json::from_value(json!({
            "registries": entries,
            "requestTimeout": "5s",
            "maximumRetries": 1,
            "initialRetryDelay": "0.05s",
        }))
        .expect("valid registry configuration"),
    )
}

/// An `OciRegistry` allowed to contact `host` anonymously.
pub fn registry_for(host: &str) -> Arc<dyn Registry> {
    Arc::new(OciRegistry::new(registry_configuration(json!([{"hosts": [host]}]))).unwrap())
}

/// Stores the expander under test shares, kept concrete so that tests can inspect them.
#[derive(Clone)]
pub struct Env {
    pub cas: Arc<MemoryContentAddressableStorage>,
    pub ac: Arc<MemoryActionCache>,
    pub instance: Instance,
}

impl Env {
    pub fn new() -> Self {
        Self {
            cas: Arc::new(MemoryContentAddressableStorage::new(4 << 30)),
            ac: Arc::new(MemoryActionCache::new(256 << 20)),
            instance: Instance::new("", DigestFunction::Sha256),
        }
    }

    /// A fresh expander (fresh process state) over these stores.
    pub fn expander(
        &self,
        registry: Arc<dyn Registry>,
        options: ExpanderOptions,
    ) -> Arc<ImageExpander> {
        new_image_expander(registry, self.cas.clone(), self.ac.clone(), options)
    }

    pub async fn expand(
        &self,
        expander: &Arc<ImageExpander>,
        reference: &str,
    ) -> Result<ExpandedImage, Status> {
        expander.expand(&self.instance, reference, &amd64()).await
    }

    /// The image's tree read from the CAS.
    pub async fn tree(&self, expanded: &ExpandedImage) -> Tree {
        read_tree(&*self.cas, &self.instance, &expanded.root_directory_digest).await
    }

    /// Number of Action Cache entries.
    pub fn ac_entries(&self) -> usize {
        self.ac.len()
    }
}

pub fn amd64() -> Platform {
    Platform::new("linux", "amd64", "")
}

/// Options with fast settings for tests.
pub fn options() -> ExpanderOptions {
    ExpanderOptions::default()
}

/// Reads a Directory message (for tests that look at one node).
pub async fn directory(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    digest: &reapi::Digest,
) -> reapi::Directory {
    get_message(cas, instance, digest).await.unwrap()
}

/// An OCI image layout directory written by hand: `oci-layout`, `index.json` and
/// `blobs/sha256/…`, for `umoci`.
pub struct OciLayout {
    pub directory: tempfile::TempDir,
}

impl OciLayout {
    /// Writes a layout holding `image` (OCI media types) under `tag`.
    pub fn write(image: &crate::support::images::Image, tag: &str) -> Self {
        let directory = tempfile::tempdir().unwrap();
        let root = directory.path();
        std::fs::write(
            root.join("oci-layout"),
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .unwrap();
        let blobs = root.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |digest: &str, data: &[u8]| {
            let hex = digest.strip_prefix("sha256:").unwrap();
            std::fs::write(blobs.join(hex), data).unwrap();
        };
        for layer in &image.layers {
            put(&layer.digest, &layer.blob);
        }
        put(&image.config_digest, &image.config);
        put(&image.manifest_digest, &image.manifest);
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": image.media_type(),
                "digest": image.manifest_digest,
                "size": image.manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        });
        std::fs::write(root.join("index.json"), index.to_string()).unwrap();
        Self { directory }
    }

    /// `umoci raw unpack --rootless --image LAYOUT:tag TARGET`.
    pub fn umoci_unpack(&self, tag: &str, target: &Path) {
        crate::support::require_program("umoci", "umoci");
        let output = std::process::Command::new("umoci")
            .args(["raw", "unpack", "--rootless", "--image"])
            .arg(format!("{}:{tag}", self.directory.path().display()))
            .arg(target)
            .output()
            .expect("run umoci");
        assert!(
            output.status.success(),
            "umoci raw unpack failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
