//! A layer blob → a verified, normalised changeset whose file contents are in the CAS.
//!
//! [`LayerIngester::ingest`] takes the compressed blob as fetched from the registry and
//! returns a [`LayerChangeset`]: the layer's entries in tar order, with normalised paths,
//! whiteouts and opaque markers recognised, and regular files replaced by their digests
//! under the REAPI instance's digest function. Applying the changeset to a tree is the
//! job of `crate::tree`; nothing here looks at lower layers. Entry paths are never empty,
//! except for an opaque marker at the image root (`.wh..wh..opq`), whose path is `""`.
//!
//! Pipeline (one concern per file):
//! - [`media_type`]: media type → decompressor, magic-byte sniffing (docs/design/layers.md#compression);
//! - [`gzip_members`]: every member of a gzip blob, inflated without the redundant CRC-32;
//! - [`oci_digest`]: `sha256:`/`sha512:` digests of the blob and the DiffID;
//! - [`readers`]: the blob as a blocking reader fed by a bounded channel, and the
//!   decompressed stream, both hashing and enforcing limits;
//! - [`tar_entries`]: tar entries → changeset entries (docs/design/layers.md#tar-parsing, #names, #path-normalisation, #symlink-targets, #whiteouts, #opaque-directories, #hard-links, #executable-bit,
//!   docs/design/layers.md#devices-and-fifos), file contents hashed while streaming;
//! - [`names`]: NUL, UTF-8, normalisation and whiteout names;
//! - [`limits`]: limits on names, extension records and entry counts, and the memory
//!   they bound;
//! - [`hashing_thread`]: the blob digest, the DiffID and large files' digests computed
//!   on helper threads, so that hashing and inflating share the cores;
//! - [`small_file_hashing`]: small files' digests computed (and their uploads handed
//!   over) on a helper thread, filled into the changeset at the end of the layer;
//! - [`worker`]: the blocking half: pipeline, drain to EOF, verification (docs/design/layers.md#verification);
//! - [`uploader`]: the async half: batched and streamed uploads, bounded in flight.
//!
//! The decompression and tar work runs on a blocking thread; the blob stream is pumped
//! into it through a bounded channel, and file contents come back through another one
//! while the async side uploads them. Memory stays bounded: small files (up to
//! `small_file_threshold_bytes`) are held until their batch is written, larger ones are
//! spooled to anonymous temporary files.
//!
//! Error codes: a layer that is corrupt, inconsistent with its descriptor, or uses
//! something we cannot apply (media type, digest algorithm, entry type, name) is
//! INVALID_ARGUMENT — "the image is bad", which retrying does not fix. Exceeding
//! `maximum_layer_size_bytes` is RESOURCE_EXHAUSTED; exceeding a metadata limit
//! ([`limits`]) is FAILED_PRECONDITION. Errors of the blob stream and of the
//! CAS keep their own codes (UNAVAILABLE, …); local spool failures are INTERNAL. Every
//! message starts with `Failed to ingest layer <digest>: `, and entry errors name the
//! entry as it appears in the tar (`Entry "etc/../../x": Path traversal`).

pub mod descriptor;
pub use descriptor::LayerDescriptor;
pub mod limits;
pub use limits::MetadataLimits;

mod gzip_members;
mod hashing_thread;
mod media_type;
mod names;
pub(crate) mod oci_digest;
mod readers;
mod small_file_hashing;
mod tar_entries;
mod uploader;
mod worker;

#[cfg(test)]
mod tests;

use crate::blobstore::{ChunkStream, ContentAddressableStorage, Instance};
use crate::config::container_images::DEFAULT_MAXIMUM_LAYER_SIZE_BYTES;
use crate::proto::cache::{layer_entry::Kind, LayerChangeset};
use crate::proto::reapi::Digest;
use futures::StreamExt;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::mpsc;
use tonic::Status;

/// Settings of [`LayerIngester`].
#[derive(Clone, Debug)]
pub struct IngestOptions {
    /// Limit on the compressed blob size and, separately, on the decompressed size.
    pub maximum_layer_size_bytes: u64,
    /// Files up to this size are kept in memory and uploaded in batches; larger files
    /// are spooled to disk and streamed.
    pub small_file_threshold_bytes: u64,
    /// A batch of small files is written once adding a file would exceed this size.
    /// Keep it below the CAS's maximum gRPC message size.
    pub batch_size_bytes: u64,
    /// Batches and large files uploaded at the same time.
    pub maximum_concurrent_uploads: usize,
    /// Chunk size of streamed uploads.
    pub stream_chunk_size_bytes: usize,
    /// Where large files are spooled; the system's temporary directory if `None`.
    pub spool_directory: Option<PathBuf>,
    /// Totals of entries and names per layer and per image ([`limits`]).
    pub metadata_limits: MetadataLimits,
}

impl Default for IngestOptions {
    /// `maximumLayerSizeBytes` as `containerImages` defaults it; the rest are not
    /// configurable.
    fn default() -> Self {
        Self {
            maximum_layer_size_bytes: DEFAULT_MAXIMUM_LAYER_SIZE_BYTES,
            small_file_threshold_bytes: 256 << 10,
            batch_size_bytes: 1 << 20,
            maximum_concurrent_uploads: 4,
            stream_chunk_size_bytes: 64 << 10,
            spool_directory: None,
            metadata_limits: MetadataLimits::default(),
        }
    }
}

/// Number of blob chunks buffered between the registry stream and the parser.
const CHUNK_CHANNEL_CAPACITY: usize = 8;
/// Number of files buffered between the parser and the uploader.
const UPLOAD_CHANNEL_CAPACITY: usize = 8;

/// Turns layer blobs into changesets, storing file contents in `cas`.
pub struct LayerIngester {
    cas: Arc<dyn ContentAddressableStorage>,
    options: IngestOptions,
}

impl LayerIngester {
    pub fn new(cas: Arc<dyn ContentAddressableStorage>, options: IngestOptions) -> Self {
        Self { cas, options }
    }

    /// Verifies and parses one layer blob (`blob`: the bytes as stored in the registry)
    /// and uploads its file contents for `instance`. Nothing is returned unless size,
    /// digest and DiffID all match `layer`.
    pub async fn ingest(
        &self,
        instance: &Instance,
        layer: &LayerDescriptor,
        blob: ChunkStream,
    ) -> Result<LayerChangeset, Status> {
        let result = self.ingest_unwrapped(instance, layer, blob).await;
        if let Ok(changeset) = &result {
            tracing::debug!(
                layer = %layer.digest,
                entries = changeset.entries.len(),
                "Ingested layer"
            );
        }
        result
            .map_err(|e| crate::status::wrap(e, format!("Failed to ingest layer {}", layer.digest)))
    }

    async fn ingest_unwrapped(
        &self,
        instance: &Instance,
        layer: &LayerDescriptor,
        blob: ChunkStream,
    ) -> Result<LayerChangeset, Status> {
        let plan = media_type::plan_for_media_type(&layer.media_type)?;
        let blob_digest = oci_digest::OciDigest::parse(&layer.digest)?;
        let diff_id = oci_digest::OciDigest::parse(&layer.diff_id)
            .map_err(|e| crate::status::wrap(e, "Invalid DiffID"))?;
        let limit = self.options.maximum_layer_size_bytes;
        let blob_size = u64::try_from(layer.size).map_err(|_| {
            Status::invalid_argument(format!("Invalid layer size: {} bytes", layer.size))
        })?;
        if blob_size > limit {
            return Err(Status::resource_exhausted(format!(
                "Layer blob is {blob_size} bytes in size, which exceeds the maximum layer \
                 size of {limit} bytes"
            )));
        }

        let (chunk_sender, chunk_receiver) = mpsc::channel(CHUNK_CHANNEL_CAPACITY);
        let (upload_sender, upload_receiver) = mpsc::channel(UPLOAD_CHANNEL_CAPACITY);
        let job = worker::Job {
            chunks: chunk_receiver,
            uploads: upload_sender,
            plan,
            blob_digest,
            blob_size,
            diff_id,
            maximum_uncompressed_bytes: limit,
            entry_options: tar_entries::EntryReaderOptions {
                digest_function: instance.digest_function,
                small_file_threshold_bytes: self.options.small_file_threshold_bytes,
                spool_directory: self.options.spool_directory.clone(),
                metadata_limits: self.options.metadata_limits.clone(),
            },
        };
        let parser = tokio::task::spawn_blocking(move || job.run());
        let uploads = uploader::upload_files(&*self.cas, instance, &self.options, upload_receiver);
        // The feeder runs as a task of its own, so that uploads (which may hash and
        // copy whole files) never hold up the bytes the parser is waiting for.
        // Aborted on drop too: an ingestion abandoned by its callers (dropped) must not
        // leave the download running, nor the parser thread waiting for its bytes.
        let feeder = AbortOnDrop(tokio::spawn(feed_chunks(blob, chunk_sender)).abort_handle());
        let uploads = async {
            let result = uploads.await;
            // Done, or failed: either way the parser needs no more bytes; ending the
            // blob stream makes a parser still running stop quickly.
            feeder.0.abort();
            result
        };
        let (upload_result, parse_result) = tokio::join!(uploads, parser);
        let parse_result = parse_result
            .map_err(|e| Status::internal(format!("Layer parser thread failed: {e}")))?;
        // A failed upload stops the feeder, after which the parser fails too; the
        // upload error is the one that explains what happened.
        upload_result?;
        match parse_result {
            Ok(parsed) => Ok(LayerChangeset {
                entries: parsed.entries,
                diff_id: parsed.diff_id,
                statistics: Some(parsed.statistics),
                compressed_digest: layer.digest.clone(),
            }),
            Err(tar_entries::ReadError::Failed(status)) => Err(status),
            Err(tar_entries::ReadError::UploaderGone) => Err(Status::internal(
                "Uploader stopped before the layer was parsed",
            )),
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Pumps the blob stream into the parser's channel, stopping at the first error or as
/// soon as the parser no longer listens.
async fn feed_chunks(mut blob: ChunkStream, sender: mpsc::Sender<Result<bytes::Bytes, Status>>) {
    loop {
        let chunk = tokio::select! {
            _ = sender.closed() => return,
            chunk = blob.next() => chunk,
        };
        let Some(chunk) = chunk else { return };
        let is_error = chunk.is_err();
        if sender.send(chunk).await.is_err() || is_error {
            return;
        }
    }
}

/// The digests of the file contents a changeset refers to, each once, in order of first
/// appearance. Empty blobs are left out: servers treat them as always present.
pub fn referenced_digests(changeset: &LayerChangeset) -> Vec<Digest> {
    let mut seen = HashSet::new();
    changeset
        .entries
        .iter()
        .filter_map(|entry| match &entry.kind {
            Some(Kind::File(file)) => file.digest.as_ref(),
            _ => None,
        })
        .filter(|digest| digest.size_bytes != 0 && seen.insert((&digest.hash, digest.size_bytes)))
        .cloned()
        .collect()
}
