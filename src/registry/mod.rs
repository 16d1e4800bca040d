//! OCI distribution access: image references, which registries may be contacted and with
//! which credentials, platform choice in multi-platform images, manifest and config checks,
//! and layer blob streams.
//!
//! - [`reference`]: parse and normalise `docker://host/repo:tag@digest` (Docker Hub defaults);
//! - [`configuration`]: the `registries` configuration and its allow-list;
//! - [`instance_name_prefixes`]: registries limited to instance names (tenants);
//! - [`platform`]: platform normalisation, the REAPI `OSFamily`/`ISA` mapping, index walking;
//! - [`manifest`]: manifest/index/config documents and the checks of docs/design/layers.md#manifests-and-configs, #platforms, #repeated-layers;
//! - [`credentials`], [`credential_helper`], [`errors`], [`retry`]: the pieces [`OciRegistry`] uses;
//! - [`oci_registry`]: the [`Registry`] implementation on the `oci-client` crate.
//!
//! Errors are `tonic::Status` whose message names the image, e.g. `Failed to fetch image
//! docker://127.0.0.1:5000/test/x:v1: Not found: …`. Codes: a malformed reference is
//! `INVALID_ARGUMENT`; a registry that is not allowed, or not for the request's instance
//! name, is `PERMISSION_DENIED` (refused before any network access); a missing repository, tag, manifest or blob is `NOT_FOUND`; rejected
//! credentials are `PERMISSION_DENIED`; an image this service cannot run (schema 1, Windows, an
//! artifact, no matching platform, inconsistent config) is `FAILED_PRECONDITION`; content that
//! does not match its digest is `DATA_LOSS`; a registry that is down, overloaded (5xx, 429),
//! slow, or drops the connection is `UNAVAILABLE` (after the configured retries).
//!
//! Tag resolution is not cached here: caching is the image module's concern, one decorator
//! per cache.

pub mod configuration;
pub mod credential_helper;
pub mod credentials;
pub mod errors;
pub(crate) mod http;
pub mod instance_name_prefixes;
pub mod manifest;
pub mod metric_labels;
pub(crate) mod metrics;
pub(crate) mod oci_registry;
pub mod platform;
pub mod reference;
pub mod retry;

use async_trait::async_trait;
use bytes::Bytes;
use tonic::Status;

use crate::blobstore::ChunkStream;
use crate::layer::LayerDescriptor;

pub use configuration::RegistryConfiguration;
pub use oci_registry::OciRegistry;
pub use platform::Platform;
pub use reference::Reference;

/// What the image module needs to know about one image, for one platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageMetadata {
    /// Digest of the index (or manifest list) the platform was chosen from, if the
    /// reference named one; the outermost index when indexes nest.
    pub index_digest: Option<String>,
    /// Digest of the platform-specific image manifest.
    pub manifest_digest: String,
    /// Media type of that manifest (OCI or Docker schema 2).
    pub manifest_media_type: String,
    /// Digest of the image config.
    pub config_digest: String,
    /// The image config as fetched (verified against `config_digest`): `Env`,
    /// `WorkingDir`, … for whoever needs them.
    pub config: Bytes,
    /// The platform the config declares (`os`, `architecture`, `variant`).
    pub platform: Platform,
    /// The layers, base first, one entry per position (never de-duplicated, docs/design/layers.md#repeated-layers), each
    /// with the DiffID the config gives for that position.
    pub layers: Vec<LayerDescriptor>,
}

/// Access to container image registries.
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Refuses a reference whose registry the configuration does not allow, or does not
    /// allow for `instance_name` (`instanceNamePrefixes`), without any network access
    /// (`PERMISSION_DENIED`). The other methods do not check the instance name: callers
    /// check it first, before any cache (docs/design/tenants.md).
    fn check_allowed(&self, instance_name: &str, reference: &Reference) -> Result<(), Status>;

    /// The digest of the manifest (or index) `reference` names now. A reference pinned by
    /// digest returns its digest without network access. Not cached.
    async fn resolve(&self, reference: &Reference) -> Result<String, Status>;

    /// Fetches the manifest for `platform` (walking indexes) and the config, checks them
    /// (docs/design/layers.md#manifests-and-configs, #platforms, #repeated-layers) and pairs layers with DiffIDs.
    async fn fetch_image(
        &self,
        reference: &Reference,
        platform: &Platform,
    ) -> Result<ImageMetadata, Status>;

    /// Streams the blob of `layer` from the repository of `reference`, as stored
    /// (compressed). The stream ends with an error if the blob is longer than the
    /// descriptor's size (`DATA_LOSS`), ends short or the connection drops, or the
    /// transfer limits are passed (`UNAVAILABLE`; the caller retries the whole layer).
    /// The digest is not checked here: the consumer (the layer ingester) hashes the blob
    /// anyway and must report a mismatch as `DATA_LOSS` (docs/design/layers.md#verification).
    async fn fetch_blob(
        &self,
        reference: &Reference,
        layer: &LayerDescriptor,
    ) -> Result<ChunkStream, Status>;
}
