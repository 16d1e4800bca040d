//! What the image manifest and config say about one layer: the input of ingestion.

/// One layer of an image, as listed by its manifest, with the DiffID its config gives
/// for the same position.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LayerDescriptor {
    /// Media type from the manifest (decides the decompressor, docs/design/layers.md#compression).
    pub media_type: String,
    /// Digest of the blob as stored, e.g. "sha256:…".
    pub digest: String,
    /// Size of the blob as stored, in bytes.
    pub size: i64,
    /// Digest of the decompressed tar stream, from the config's `rootfs.diff_ids`.
    pub diff_id: String,
}
