//! The blocking half of ingestion, run on `spawn_blocking`: builds the reader pipeline
//! (blob → decompressor → tar), reads the entries, drains the stream after the
//! end-of-archive marker, and checks blob size, blob digest and DiffID (docs/design/layers.md#verification).
//!
//! Any mismatch is an error and no changeset is returned. File contents may already have
//! been uploaded by then, which is harmless in a content-addressed store.

use super::gzip_members::GzipMembers;
use super::hashing_thread::OffThreadHasher;
use super::media_type::{self, Compression, DecompressionPlan};
use super::oci_digest::OciDigest;
use super::readers::{BlobReader, Failure, MetadataBudget, TarStreamReader};
use super::tar_entries::{EntryReader, EntryReaderOptions, ReadError};
use super::uploader::FileUpload;
use crate::proto::cache::{LayerEntry, LayerStatistics};
use bytes::Bytes;
use std::io::{self, Read};
use tokio::sync::mpsc;
use tonic::Status;

/// Everything the blocking half needs.
pub(crate) struct Job {
    pub(crate) chunks: mpsc::Receiver<Result<Bytes, Status>>,
    pub(crate) uploads: mpsc::Sender<FileUpload>,
    pub(crate) plan: DecompressionPlan,
    pub(crate) blob_digest: OciDigest,
    pub(crate) blob_size: u64,
    pub(crate) diff_id: OciDigest,
    pub(crate) maximum_uncompressed_bytes: u64,
    pub(crate) entry_options: EntryReaderOptions,
}

/// A verified layer.
pub(crate) struct ParsedLayer {
    pub(crate) entries: Vec<LayerEntry>,
    pub(crate) statistics: LayerStatistics,
    pub(crate) diff_id: String,
}

impl Job {
    pub(crate) fn run(self) -> Result<ParsedLayer, ReadError> {
        let failure = Failure::default();
        let fail = |context: &str, e: io::Error| {
            ReadError::Failed(
                failure.take_or(|| Status::invalid_argument(format!("{context}: {e}"))),
            )
        };
        let mut blob = BlobReader::new(
            self.chunks,
            self.blob_digest,
            self.blob_size,
            failure.clone(),
        );
        let compression = match self.plan {
            DecompressionPlan::Uncompressed => Compression::None,
            DecompressionPlan::Detect => media_type::sniff(
                blob.peek(media_type::SNIFF_LENGTH)
                    .map_err(|e| fail("Failed to read blob", e))?,
            ),
        };

        let budget = MetadataBudget::default();
        let mut entry_reader = EntryReader::new(self.entry_options, self.uploads, failure.clone());
        let parsed = {
            let decoder: Box<dyn Read + '_> = match compression {
                Compression::None => Box::new(&mut blob),
                Compression::Gzip => Box::new(GzipMembers::new(&mut blob)),
                Compression::Zstd => Box::new(
                    zstd::stream::read::Decoder::with_buffer(&mut blob).map_err(|e| {
                        ReadError::Failed(crate::status::from_io(
                            e,
                            "Failed to create zstd decoder",
                        ))
                    })?,
                ),
            };
            let mut stream = TarStreamReader::new(
                decoder,
                compression,
                // A layer's tar is at least as long as its compressed blob, give or take.
                OffThreadHasher::new(self.diff_id.hasher(), self.blob_size),
                self.maximum_uncompressed_bytes,
                budget.clone(),
                failure.clone(),
            );
            let position = stream.position();
            entry_reader
                .read_archive(&mut stream, &budget, &position)
                .and_then(|()| {
                    // The DiffID covers everything after the end-of-archive marker too.
                    io::copy(&mut stream, &mut io::sink())
                        .map_err(|e| fail("Failed to read past the end of the tar archive", e))
                })
                .map(|_| stream.finish())
        };
        let (diff_id, uncompressed_bytes) = match parsed {
            Ok(parsed) => parsed,
            Err(ReadError::Failed(status)) => {
                // Corrupt bytes make the decompressor or the tar parser fail before the
                // end of the blob; a blob that does not match its digest is the cause to
                // report, so read the rest of it (its size is known and within limits).
                if !failure.is_set() && io::copy(&mut blob, &mut io::sink()).is_err() {
                    if let Some(cause) = failure.take() {
                        return Err(ReadError::Failed(cause));
                    }
                }
                return Err(ReadError::Failed(status));
            }
            Err(other) => return Err(other),
        };
        // Every small file's digest, now that all were read and handed to the uploader.
        entry_reader.finish()?;
        // The decompressor has seen the end of its input, but make sure nothing follows.
        let trailing =
            io::copy(&mut blob, &mut io::sink()).map_err(|e| fail("Failed to read blob", e))?;
        if trailing != 0 {
            return Err(ReadError::Failed(Status::invalid_argument(format!(
                "Blob has {trailing} bytes after the end of its {} stream",
                compression.name()
            ))));
        }
        if diff_id != self.diff_id {
            return Err(ReadError::Failed(Status::invalid_argument(format!(
                "Layer has DiffID {diff_id}, while the image config says {}",
                self.diff_id
            ))));
        }
        let mut statistics = entry_reader.statistics;
        statistics.compressed_bytes = blob.received();
        statistics.uncompressed_bytes = uncompressed_bytes;
        Ok(ParsedLayer {
            entries: entry_reader.entries,
            statistics,
            diff_id: diff_id.to_string(),
        })
    }
}
