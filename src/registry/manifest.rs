//! Manifests, indexes and image configs as registries serve them, and the checks that make an
//! image runnable here (docs/design/layers.md#manifests-and-configs, #repeated-layers).
//!
//! Documents are parsed leniently (unknown fields are ignored: registries and builders add
//! their own), but what we rely on is checked strictly:
//! - manifest media types: OCI manifest and index, Docker schema 2 manifest and manifest list
//!   (docs/design/layers.md#manifests-and-configs); Docker schema 1 is refused with `UnsupportedSchema1` (docs/design/layers.md#manifests-and-configs);
//! - a document without `mediaType` (umoci writes none) is classified by the media type its
//!   referrer declared, else by its shape (`manifests` → index, `config` → manifest), because
//!   `oci-client`'s raw pull does not return the `Content-Type` header;
//! - config media type OCI or Docker (docs/design/layers.md#manifests-and-configs), `rootfs.type == "layers"`, as many `diff_ids` as
//!   layers, each layer position kept even when digests repeat (docs/design/layers.md#repeated-layers).
//!
//! Errors are `FAILED_PRECONDITION`: the image exists but cannot be run by this service.

use std::collections::BTreeMap;

use serde::Deserialize;
use tonic::Status;

use super::reference::validate_digest;
use crate::layer::LayerDescriptor;

/// OCI image manifest.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub(crate) const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (schema 2).
pub(crate) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest, schema 1 (refused, docs/design/layers.md#manifests-and-configs).
pub(crate) const DOCKER_SCHEMA1: &str = "application/vnd.docker.distribution.manifest.v1+json";
/// Signed Docker image manifest, schema 1 (refused, docs/design/layers.md#manifests-and-configs).
pub(crate) const DOCKER_SCHEMA1_SIGNED: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";
/// OCI image config.
pub(crate) const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub(crate) const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// The media types sent in `Accept` when fetching manifests. Schema 1 is listed so that a
/// registry holding only schema 1 returns it and we can say why it is refused.
pub(crate) const ACCEPTED_MANIFEST_MEDIA_TYPES: &[&str] = &[
    OCI_INDEX,
    OCI_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED,
    DOCKER_SCHEMA1,
];

/// Whether `media_type` is an image manifest we can use (docs/design/layers.md#manifests-and-configs).
pub(crate) fn is_manifest_media_type(media_type: &str) -> bool {
    media_type == OCI_MANIFEST || media_type == DOCKER_MANIFEST
}

/// Whether `media_type` is an index or manifest list (docs/design/layers.md#manifests-and-configs).
pub(crate) fn is_index_media_type(media_type: &str) -> bool {
    media_type == OCI_INDEX || media_type == DOCKER_MANIFEST_LIST
}

/// A content descriptor (OCI descriptor.md), as found in manifests and indexes.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    #[serde(default)]
    pub media_type: Option<String>,
    /// Digest of the referenced content.
    pub digest: String,
    /// Size of the referenced content in bytes.
    pub size: i64,
    /// Alternative download locations (not used: see docs/design/layers.md#manifests-and-configs).
    #[serde(default)]
    pub urls: Option<Vec<String>>,
    /// Annotations.
    #[serde(default)]
    pub annotations: Option<BTreeMap<String, String>>,
    /// Platform, for index entries.
    #[serde(default)]
    pub platform: Option<DescriptorPlatform>,
}

/// The `platform` of an index entry.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct DescriptorPlatform {
    /// CPU architecture.
    #[serde(default)]
    pub architecture: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default)]
    pub variant: Option<String>,
    /// OS version (ignored for Linux, docs/design/layers.md#platforms).
    #[serde(default, rename = "os.version")]
    pub os_version: Option<String>,
}

/// An OCI image index or Docker manifest list.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Must be 2.
    #[serde(default)]
    pub schema_version: i64,
    /// The media type, when the document states it.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The entries, in order.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// An OCI image manifest or Docker schema 2 manifest.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ImageManifest {
    /// Must be 2.
    #[serde(default)]
    pub schema_version: i64,
    /// The media type, when the document states it.
    #[serde(default)]
    pub media_type: Option<String>,
    /// The image config.
    pub config: Descriptor,
    /// The layers, base first.
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// The parts of an image config (OCI config.md) that this service uses.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct ImageConfig {
    /// CPU architecture the image was built for.
    #[serde(default)]
    pub architecture: String,
    /// Operating system the image was built for.
    #[serde(default)]
    pub os: String,
    /// CPU variant.
    #[serde(default)]
    pub variant: Option<String>,
    /// The layers' DiffIDs.
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub(crate) struct RootFs {
    /// Must be `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Digests of the uncompressed layers, base first.
    #[serde(default)]
    pub diff_ids: Vec<String>,
}

/// A manifest document, classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Manifest {
    /// An index or manifest list, with its media type.
    Index(String, Index),
    /// An image manifest, with its media type.
    Image(String, Box<ImageManifest>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    schema_version: Option<i64>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    config: Option<serde::de::IgnoredAny>,
}

fn unusable(message: String) -> Status {
    Status::failed_precondition(message)
}

/// Parses a manifest or index. `declared` is the media type its referrer (an index entry)
/// gave, if any.
pub(crate) fn parse_manifest(body: &[u8], declared: Option<&str>) -> Result<Manifest, Status> {
    let probe: Probe = serde_json::from_slice(body)
        .map_err(|e| unusable(format!("Manifest is not valid JSON: {e}")))?;
    let media_type = probe
        .media_type
        .as_deref()
        .or(declared)
        .filter(|m| !m.is_empty());
    if probe.schema_version == Some(1)
        || matches!(
            media_type,
            Some(DOCKER_SCHEMA1) | Some(DOCKER_SCHEMA1_SIGNED)
        )
    {
        return Err(unusable(
            "UnsupportedSchema1: Docker image manifest schema 1 is not supported (Docker \
             removed it as well); push the image again with a current tool"
                .into(),
        ));
    }
    let media_type = match media_type {
        Some(m) => m.to_owned(),
        None if probe.manifests.is_some() => OCI_INDEX.to_owned(),
        None if probe.config.is_some() => OCI_MANIFEST.to_owned(),
        None => {
            return Err(unusable(
                "Manifest has no mediaType and is neither an index nor an image manifest".into(),
            ))
        }
    };
    if probe.schema_version != Some(2) {
        return Err(unusable(format!(
            "Manifest has schemaVersion {:?}, expected 2",
            probe.schema_version
        )));
    }
    if is_index_media_type(&media_type) {
        let index: Index = serde_json::from_slice(body)
            .map_err(|e| unusable(format!("Malformed image index ({media_type}): {e}")))?;
        Ok(Manifest::Index(media_type, index))
    } else if is_manifest_media_type(&media_type) {
        let manifest: ImageManifest = serde_json::from_slice(body)
            .map_err(|e| unusable(format!("Malformed image manifest ({media_type}): {e}")))?;
        Ok(Manifest::Image(media_type, Box::new(manifest)))
    } else {
        Err(unusable(format!(
            "Manifest media type {media_type:?} is not supported (expected an OCI or Docker \
             schema 2 image manifest or index)"
        )))
    }
}

/// Checks the config descriptor of `manifest` before the config is fetched (docs/design/layers.md#manifests-and-configs).
pub(crate) fn check_config_descriptor(manifest: &ImageManifest) -> Result<(), Status> {
    let config = &manifest.config;
    match config.media_type.as_deref() {
        Some(OCI_CONFIG) | Some(DOCKER_CONFIG) => {}
        other => {
            return Err(unusable(format!(
                "Config media type {:?} is not an image config (expected {OCI_CONFIG} or \
                 {DOCKER_CONFIG}): this is an artifact, not a runnable image",
                other.unwrap_or("")
            )))
        }
    }
    validate_descriptor(config, "Config")
}

fn validate_descriptor(descriptor: &Descriptor, what: &str) -> Result<(), Status> {
    validate_digest(&descriptor.digest)
        .map_err(|reason| unusable(format!("{what} descriptor: {reason}")))?;
    if descriptor.size < 0 {
        return Err(unusable(format!(
            "{what} descriptor {} has negative size {}",
            descriptor.digest, descriptor.size
        )));
    }
    Ok(())
}

/// Parses an image config and checks it against its manifest (docs/design/layers.md#platforms, #manifests-and-configs, #repeated-layers), returning
/// one [`LayerDescriptor`] per layer position, DiffIDs paired in order.
pub(crate) fn parse_config(
    manifest: &ImageManifest,
    body: &[u8],
) -> Result<(ImageConfig, Vec<LayerDescriptor>), Status> {
    let config: ImageConfig = serde_json::from_slice(body)
        .map_err(|e| unusable(format!("Malformed image config: {e}")))?;
    if config.os.eq_ignore_ascii_case("windows") {
        return Err(unusable(
            "Image config says os \"windows\": Windows images are not supported".into(),
        ));
    }
    if config.rootfs.kind != "layers" {
        return Err(unusable(format!(
            "Image config has rootfs.type {:?}, expected \"layers\"",
            config.rootfs.kind
        )));
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(unusable(format!(
            "Number of layers and diffIDs don't match: the manifest lists {} layers, the config \
             {} rootfs.diff_ids",
            manifest.layers.len(),
            config.rootfs.diff_ids.len()
        )));
    }
    let mut layers = Vec::with_capacity(manifest.layers.len());
    for (i, (layer, diff_id)) in manifest
        .layers
        .iter()
        .zip(&config.rootfs.diff_ids)
        .enumerate()
    {
        validate_descriptor(layer, &format!("Layer {i}"))?;
        validate_digest(diff_id)
            .map_err(|reason| unusable(format!("rootfs.diff_ids[{i}]: {reason}")))?;
        let media_type = layer.media_type.clone().unwrap_or_default();
        if media_type.is_empty() {
            return Err(unusable(format!(
                "Layer {i} ({}) has no mediaType",
                layer.digest
            )));
        }
        layers.push(LayerDescriptor {
            media_type,
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: diff_id.clone(),
        });
    }
    Ok((config, layers))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tonic::Code;

    fn digest(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn manifest_json(config_media_type: &str, layer_digests: &[u8]) -> serde_json::Value {
        json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": config_media_type, "digest": digest(99), "size": 100},
            "layers": layer_digests.iter().map(|&n| json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": digest(n), "size": 10 + n as i64
            })).collect::<Vec<_>>(),
        })
    }

    fn image(value: &serde_json::Value) -> ImageManifest {
        match parse_manifest(value.to_string().as_bytes(), None).unwrap() {
            Manifest::Image(_, m) => *m,
            other => panic!("not an image manifest: {other:?}"),
        }
    }

    #[test]
    fn classifies_by_media_type_and_shape() {
        let m = manifest_json(OCI_CONFIG, &[1]);
        assert!(
            matches!(parse_manifest(m.to_string().as_bytes(), None), Ok(Manifest::Image(t, _)) if t == OCI_MANIFEST)
        );
        // umoci writes no mediaType: the declared type, else the shape, decides.
        let mut bare = m.clone();
        bare.as_object_mut().unwrap().remove("mediaType");
        assert!(
            matches!(parse_manifest(bare.to_string().as_bytes(), Some(DOCKER_MANIFEST)), Ok(Manifest::Image(t, _)) if t == DOCKER_MANIFEST)
        );
        assert!(
            matches!(parse_manifest(bare.to_string().as_bytes(), None), Ok(Manifest::Image(t, _)) if t == OCI_MANIFEST)
        );
        let index = json!({"schemaVersion": 2, "manifests": []});
        assert!(
            matches!(parse_manifest(index.to_string().as_bytes(), None), Ok(Manifest::Index(t, _)) if t == OCI_INDEX)
        );
        let list = json!({"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": []});
        assert!(
            matches!(parse_manifest(list.to_string().as_bytes(), None), Ok(Manifest::Index(t, _)) if t == DOCKER_MANIFEST_LIST)
        );
    }

    #[test]
    fn schema1_is_refused() {
        let v1 =
            json!({"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": [], "history": []});
        let err = parse_manifest(v1.to_string().as_bytes(), None).unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().starts_with("UnsupportedSchema1"));
        let signed = json!({"schemaVersion": 2, "mediaType": DOCKER_SCHEMA1_SIGNED});
        assert!(parse_manifest(signed.to_string().as_bytes(), None)
            .unwrap_err()
            .message()
            .starts_with("UnsupportedSchema1"));
    }

    #[test]
    fn other_documents_are_refused() {
        for body in [
            json!({"schemaVersion": 2, "mediaType": "application/vnd.example+json", "config": {}})
                .to_string(),
            json!({"schemaVersion": 3, "mediaType": OCI_MANIFEST}).to_string(),
            json!({"schemaVersion": 2}).to_string(),
            "not json".to_owned(),
        ] {
            let err = parse_manifest(body.as_bytes(), None).unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition, "{body}");
        }
    }

    #[test]
    fn config_media_type_is_checked() {
        assert!(check_config_descriptor(&image(&manifest_json(OCI_CONFIG, &[1]))).is_ok());
        assert!(check_config_descriptor(&image(&manifest_json(DOCKER_CONFIG, &[1]))).is_ok());
        let err = check_config_descriptor(&image(&manifest_json(
            "application/vnd.cncf.helm.config.v1+json",
            &[1],
        )))
        .unwrap_err();
        assert!(err.message().contains("artifact"), "{}", err.message());
    }

    #[test]
    fn layers_pair_with_diff_ids_in_order_without_deduplication() {
        let manifest = image(&manifest_json(OCI_CONFIG, &[1, 2, 1]));
        let config = json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest(11), digest(12), digest(11)]},
            "history": [{"created_by": "x"}, {"empty_layer": true}, {}, {}],
        });
        let (parsed, layers) = parse_config(&manifest, config.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.architecture, "amd64");
        assert_eq!(layers.len(), 3);
        assert_eq!(layers[0].digest, digest(1));
        assert_eq!(layers[0].diff_id, digest(11));
        assert_eq!(layers[1].digest, digest(2));
        assert_eq!(layers[1].size, 12);
        assert_eq!(layers[2], layers[0]);
    }

    #[test]
    fn config_checks() {
        let manifest = image(&manifest_json(OCI_CONFIG, &[1, 2]));
        let cases = [
            (
                json!({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [digest(1)]}}),
                "don't match",
            ),
            (
                json!({"os": "linux", "rootfs": {"type": "other", "diff_ids": [digest(1), digest(2)]}}),
                "rootfs.type",
            ),
            (
                json!({"os": "windows", "rootfs": {"type": "layers", "diff_ids": [digest(1), digest(2)]}}),
                "Windows",
            ),
            (
                json!({"os": "linux", "rootfs": {"type": "layers", "diff_ids": [digest(1), "md5:00"]}}),
                "diff_ids[1]",
            ),
            (json!({"os": "linux"}), "Malformed"),
        ];
        for (config, needle) in cases {
            let err = parse_config(&manifest, config.to_string().as_bytes()).unwrap_err();
            assert_eq!(err.code(), Code::FailedPrecondition);
            assert!(
                err.message().contains(needle),
                "{needle}: {}",
                err.message()
            );
        }
    }
}
