//! Small container images built in memory and pushed byte-exact.
//!
//! ```ignore
//! let layer = Layer::from_files(&[("etc/hello", b"hi\n")], Compression::Gzip, Flavor::Oci);
//! let image = ImageBuilder::new(Flavor::Oci).platform("linux", "arm64", "v8").layer(layer).build();
//! let pusher = registry.pusher();
//! pusher.push_image("test/x", Some("v1"), &image).await;
//! let index = IndexBuilder::new(Flavor::Oci).image(&amd64).image(&arm64).build();
//! pusher.push_index("test/x", Some("multi"), &index, &[&amd64, &arm64]).await;
//! ```
//!
//! Tar entries are deterministic (mtime 0, uid/gid 0). Manifests are serialised once and
//! pushed as those bytes, so their digests are known before the push.

use bytes::Bytes;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use serde_json::{json, Value};

use super::sha256;

/// OCI or Docker media types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    /// OCI image spec media types.
    Oci,
    /// Docker image manifest v2 schema 2 media types.
    Docker,
}

impl Flavor {
    /// The image manifest media type.
    pub fn manifest_media_type(self) -> &'static str {
        match self {
            Flavor::Oci => "application/vnd.oci.image.manifest.v1+json",
            Flavor::Docker => "application/vnd.docker.distribution.manifest.v2+json",
        }
    }

    /// The index / manifest list media type.
    pub fn index_media_type(self) -> &'static str {
        match self {
            Flavor::Oci => "application/vnd.oci.image.index.v1+json",
            Flavor::Docker => "application/vnd.docker.distribution.manifest.list.v2+json",
        }
    }

    /// The config media type.
    pub fn config_media_type(self) -> &'static str {
        match self {
            Flavor::Oci => "application/vnd.oci.image.config.v1+json",
            Flavor::Docker => "application/vnd.docker.container.image.v1+json",
        }
    }

    /// The layer media type for `compression`.
    pub fn layer_media_type(self, compression: Compression) -> &'static str {
        match (self, compression) {
            (Flavor::Oci, Compression::None) => "application/vnd.oci.image.layer.v1.tar",
            (Flavor::Oci, Compression::Gzip) => "application/vnd.oci.image.layer.v1.tar+gzip",
            (Flavor::Oci, Compression::Zstd) => "application/vnd.oci.image.layer.v1.tar+zstd",
            (Flavor::Docker, Compression::None) => "application/vnd.docker.image.rootfs.diff.tar",
            (Flavor::Docker, Compression::Gzip) => {
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            }
            (Flavor::Docker, Compression::Zstd) => {
                "application/vnd.docker.image.rootfs.diff.tar.zstd"
            }
        }
    }
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// One entry of a layer tar. Besides what the `tar` crate's builder writes, it covers what
/// that builder refuses to (`..` in names, names that are not UTF-8), hard links with their
/// own header mode, devices and FIFOs.
#[derive(Clone, Debug)]
pub enum TarEntry {
    /// A regular file with contents and mode.
    File(String, Vec<u8>, u32),
    /// A directory with mode.
    Dir(String, u32),
    /// A symbolic link to a target.
    Symlink(String, String),
    /// A hard link to an earlier entry, with the mode of the link header.
    Link(String, String, u32),
    /// A character device (1, 3), like /dev/null.
    CharDevice(String),
    /// A FIFO.
    Fifo(String),
    /// A regular file (mode 0644) whose name bytes are written into the header as they
    /// are, unchecked: `../x`, names that are not UTF-8.
    RawName(Vec<u8>, Vec<u8>),
}

impl TarEntry {
    /// A regular file, mode 0644.
    pub fn file(path: &str, contents: &[u8]) -> Self {
        TarEntry::File(path.into(), contents.into(), 0o644)
    }
}

/// A regular file with text contents, mode 0644.
pub fn file(path: &str, contents: &str) -> TarEntry {
    TarEntry::File(path.into(), contents.as_bytes().to_vec(), 0o644)
}

/// A regular file with text contents, mode 0755.
pub fn exe(path: &str, contents: &str) -> TarEntry {
    TarEntry::File(path.into(), contents.as_bytes().to_vec(), 0o755)
}

/// A directory, mode 0755.
pub fn dir(path: &str) -> TarEntry {
    TarEntry::Dir(path.into(), 0o755)
}

pub fn symlink(path: &str, target: &str) -> TarEntry {
    TarEntry::Symlink(path.into(), target.into())
}

/// A hard link whose header mode is 0644.
pub fn link(path: &str, target: &str) -> TarEntry {
    TarEntry::Link(path.into(), target.into(), 0o644)
}

/// A whiteout file `.wh.NAME` (what overlay-based producers write), as an empty file.
pub fn whiteout(path: &str) -> TarEntry {
    TarEntry::File(path.into(), Vec::new(), 0o644)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// A tar archive of `entries`, in order, deterministic, with the end-of-archive blocks.
pub fn tar_bytes(entries: &[TarEntry]) -> Vec<u8> {
    use tar::EntryType;
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        match entry {
            TarEntry::File(path, contents, mode) => {
                let mut h = header(EntryType::Regular, *mode, contents.len() as u64);
                builder
                    .append_data(&mut h, path, contents.as_slice())
                    .unwrap();
            }
            TarEntry::Dir(path, mode) => {
                let mut h = header(EntryType::Directory, *mode, 0);
                builder.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            TarEntry::Symlink(path, target) => {
                let mut h = header(EntryType::Symlink, 0o777, 0);
                builder.append_link(&mut h, path, target).unwrap();
            }
            TarEntry::Link(path, target, mode) => {
                let mut h = header(EntryType::Link, *mode, 0);
                builder.append_link(&mut h, path, target).unwrap();
            }
            TarEntry::CharDevice(path) => {
                let mut h = header(EntryType::Char, 0o666, 0);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                builder.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            TarEntry::Fifo(path) => {
                let mut h = header(EntryType::Fifo, 0o644, 0);
                builder.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            TarEntry::RawName(name, data) => {
                assert!(name.len() < 100, "raw names must fit the header");
                let mut h = header(EntryType::Regular, 0o644, data.len() as u64);
                let field = &mut h.as_old_mut().name;
                field.fill(0);
                field[..name.len()].copy_from_slice(name);
                h.set_cksum();
                builder.append(&h, data.as_slice()).unwrap();
            }
        }
    }
    builder.into_inner().unwrap()
}

/// Compresses `data`.
pub fn compress(data: &[u8], compression: Compression) -> Vec<u8> {
    use std::io::Write;
    match compression {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        }
        Compression::Zstd => zstd::encode_all(data, 3).unwrap(),
    }
}

/// A layer blob with what its manifest and config say about it.
#[derive(Clone, Debug)]
pub struct Layer {
    /// Media type in the manifest.
    pub media_type: String,
    /// The blob as pushed.
    pub blob: Bytes,
    /// Digest of `blob`.
    pub digest: String,
    /// Digest of the uncompressed tar (the config's DiffID).
    pub diff_id: String,
    /// The uncompressed tar.
    pub tar: Vec<u8>,
}

impl Layer {
    /// A layer from a tar archive.
    pub fn new(tar: Vec<u8>, compression: Compression, flavor: Flavor) -> Self {
        let blob = Bytes::from(compress(&tar, compression));
        Self {
            media_type: flavor.layer_media_type(compression).to_owned(),
            digest: sha256(&blob),
            diff_id: sha256(&tar),
            blob,
            tar,
        }
    }

    /// A layer holding regular files (mode 0644).
    pub fn from_files(files: &[(&str, &[u8])], compression: Compression, flavor: Flavor) -> Self {
        let entries: Vec<TarEntry> = files.iter().map(|(p, c)| TarEntry::file(p, c)).collect();
        Self::new(tar_bytes(&entries), compression, flavor)
    }

    /// The same blob under another media type.
    pub fn with_media_type(mut self, media_type: &str) -> Self {
        self.media_type = media_type.to_owned();
        self
    }

    /// The descriptor as it appears in a manifest.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.blob.len()})
    }
}

/// A built image: manifest, config and layers, as bytes.
#[derive(Clone, Debug)]
pub struct Image {
    /// OCI or Docker.
    pub flavor: Flavor,
    /// `os`, `architecture`, `variant` ("" for none).
    pub platform: (String, String, String),
    /// The manifest as pushed.
    pub manifest: Bytes,
    /// Digest of `manifest`.
    pub manifest_digest: String,
    /// The config as pushed.
    pub config: Bytes,
    /// Digest of `config`.
    pub config_digest: String,
    /// The layers in manifest order.
    pub layers: Vec<Layer>,
}

impl Image {
    /// The manifest media type.
    pub fn media_type(&self) -> &'static str {
        self.flavor.manifest_media_type()
    }
}

/// Builds an [`Image`].
#[derive(Clone, Debug)]
pub struct ImageBuilder {
    flavor: Flavor,
    platform: (String, String, String),
    layers: Vec<Layer>,
    config_fields: serde_json::Map<String, Value>,
    config_media_type: Option<String>,
    diff_ids: Option<Vec<String>>,
}

impl ImageBuilder {
    /// An empty linux/amd64 image.
    pub fn new(flavor: Flavor) -> Self {
        Self {
            flavor,
            platform: ("linux".into(), "amd64".into(), String::new()),
            layers: Vec::new(),
            config_fields: serde_json::Map::new(),
            config_media_type: None,
            diff_ids: None,
        }
    }

    /// Sets the platform written in the config.
    pub fn platform(mut self, os: &str, architecture: &str, variant: &str) -> Self {
        self.platform = (os.into(), architecture.into(), variant.into());
        self
    }

    /// Appends a layer.
    pub fn layer(mut self, layer: Layer) -> Self {
        self.layers.push(layer);
        self
    }

    /// Sets a top-level config field (e.g. `"config"` with `Env`, `WorkingDir`).
    pub fn config_field(mut self, name: &str, value: Value) -> Self {
        self.config_fields.insert(name.into(), value);
        self
    }

    /// Overrides the config media type in the manifest.
    pub fn config_media_type(mut self, media_type: &str) -> Self {
        self.config_media_type = Some(media_type.into());
        self
    }

    /// Overrides `rootfs.diff_ids` (to build inconsistent images).
    pub fn diff_ids(mut self, diff_ids: Vec<String>) -> Self {
        self.diff_ids = Some(diff_ids);
        self
    }

    /// Serialises config and manifest.
    pub fn build(self) -> Image {
        let (os, architecture, variant) = self.platform.clone();
        let diff_ids = self
            .diff_ids
            .clone()
            .unwrap_or_else(|| self.layers.iter().map(|l| l.diff_id.clone()).collect());
        let mut config = json!({
            "architecture": architecture,
            "os": os,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
            "history": self.layers.iter().map(|_| json!({"created_by": "bb-container-expander tests"})).collect::<Vec<_>>(),
        });
        if !variant.is_empty() {
            config["variant"] = json!(variant);
        }
        for (k, v) in self.config_fields {
            config[k.as_str()] = v;
        }
        let config = Bytes::from(serde_json::to_vec(&config).unwrap());
        let config_digest = sha256(&config);
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": self.flavor.manifest_media_type(),
            "config": {
                "mediaType": self.config_media_type.as_deref().unwrap_or(self.flavor.config_media_type()),
                "digest": config_digest,
                "size": config.len(),
            },
            "layers": self.layers.iter().map(Layer::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Bytes::from(serde_json::to_vec(&manifest).unwrap());
        Image {
            flavor: self.flavor,
            platform: self.platform,
            manifest_digest: sha256(&manifest),
            manifest,
            config,
            config_digest,
            layers: self.layers,
        }
    }
}

/// A built index or manifest list.
#[derive(Clone, Debug)]
pub struct Index {
    /// Its media type.
    pub media_type: String,
    /// The document as pushed.
    pub bytes: Bytes,
    /// Digest of `bytes`.
    pub digest: String,
}

/// Builds an [`Index`] entry by entry, in order.
#[derive(Clone, Debug)]
pub struct IndexBuilder {
    flavor: Flavor,
    entries: Vec<Value>,
}

impl IndexBuilder {
    /// An empty index.
    pub fn new(flavor: Flavor) -> Self {
        Self {
            flavor,
            entries: Vec::new(),
        }
    }

    /// An entry for `image` with its platform.
    pub fn image(self, image: &Image) -> Self {
        let (os, architecture, variant) = &image.platform;
        let mut platform = json!({"os": os, "architecture": architecture});
        if !variant.is_empty() {
            platform["variant"] = json!(variant);
        }
        self.entry(json!({
            "mediaType": image.media_type(),
            "digest": image.manifest_digest,
            "size": image.manifest.len(),
            "platform": platform,
        }))
    }

    /// A BuildKit-style attestation entry (platform unknown/unknown) pointing at `manifest`.
    pub fn attestation(self, manifest: &Image, subject: &Image) -> Self {
        self.entry(json!({
            "mediaType": manifest.media_type(),
            "digest": manifest.manifest_digest,
            "size": manifest.manifest.len(),
            "platform": {"os": "unknown", "architecture": "unknown"},
            "annotations": {
                "vnd.docker.reference.type": "attestation-manifest",
                "vnd.docker.reference.digest": subject.manifest_digest,
            },
        }))
    }

    /// An entry for a nested index.
    pub fn nested(self, index: &Index) -> Self {
        self.entry(json!({
            "mediaType": index.media_type,
            "digest": index.digest,
            "size": index.bytes.len(),
        }))
    }

    /// Any entry, as JSON.
    pub fn entry(mut self, entry: Value) -> Self {
        self.entries.push(entry);
        self
    }

    /// Serialises the index.
    pub fn build(self) -> Index {
        let media_type = self.flavor.index_media_type();
        let document = json!({
            "schemaVersion": 2,
            "mediaType": media_type,
            "manifests": self.entries,
        });
        let bytes = Bytes::from(serde_json::to_vec(&document).unwrap());
        Index {
            media_type: media_type.to_owned(),
            digest: sha256(&bytes),
            bytes,
        }
    }
}

/// Pushes blobs and manifests to one registry over plain HTTP with `oci-client`.
pub struct Pusher {
    host: String,
    auth: RegistryAuth,
    client: Client,
}

impl Pusher {
    /// A pusher for `host` (`127.0.0.1:PORT`).
    pub fn new(host: &str, auth: RegistryAuth) -> Self {
        let client = Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            platform_resolver: None,
            ..ClientConfig::default()
        });
        Self {
            host: host.to_owned(),
            auth,
            client,
        }
    }

    fn reference(&self, repository: &str, tag: Option<&str>) -> Reference {
        Reference::with_tag(
            self.host.clone(),
            repository.to_owned(),
            tag.unwrap_or("latest").to_owned(),
        )
    }

    async fn authenticate(&self, reference: &Reference) {
        self.client
            .auth(reference, &self.auth, RegistryOperation::Push)
            .await
            .expect("authenticate for push");
    }

    /// Pushes one blob (skipped if present).
    pub async fn push_blob(&self, repository: &str, data: &Bytes, digest: &str) {
        let reference = self.reference(repository, None);
        self.authenticate(&reference).await;
        if self
            .client
            .blob_exists(&reference, digest)
            .await
            .unwrap_or(false)
        {
            return;
        }
        self.client
            .push_blob(&reference, data.clone(), digest)
            .await
            .unwrap_or_else(|e| panic!("push blob {digest} to {}/{repository}: {e}", self.host));
    }

    /// Pushes a manifest or index under `tag`, or by digest when `tag` is `None`; returns
    /// its digest.
    pub async fn push_manifest(
        &self,
        repository: &str,
        tag: Option<&str>,
        body: &Bytes,
        media_type: &str,
    ) -> String {
        let digest = sha256(body);
        let reference = match tag {
            Some(tag) => self.reference(repository, Some(tag)),
            None => {
                Reference::with_digest(self.host.clone(), repository.to_owned(), digest.clone())
            }
        };
        self.authenticate(&reference).await;
        self.client
            .push_manifest_raw(&reference, body.clone(), media_type.parse().unwrap())
            .await
            .unwrap_or_else(|e| panic!("push manifest to {}/{repository}: {e}", self.host));
        digest
    }

    /// Pushes layers, config and manifest of `image`; returns the manifest digest.
    pub async fn push_image(&self, repository: &str, tag: Option<&str>, image: &Image) -> String {
        for layer in &image.layers {
            self.push_blob(repository, &layer.blob, &layer.digest).await;
        }
        self.push_blob(repository, &image.config, &image.config_digest)
            .await;
        self.push_manifest(repository, tag, &image.manifest, image.media_type())
            .await
    }

    /// Pushes `images` (by digest), then `index` under `tag`; returns the index digest.
    pub async fn push_index(
        &self,
        repository: &str,
        tag: Option<&str>,
        index: &Index,
        images: &[&Image],
    ) -> String {
        for image in images {
            self.push_image(repository, None, image).await;
        }
        self.push_manifest(repository, tag, &index.bytes, &index.media_type)
            .await
    }
}
