//! Uploading file contents to the CAS while the layer is still being parsed.
//!
//! The parser thread sends each distinct non-empty file once. Small files are collected
//! into batches of up to `batch_size_bytes`, checked with `find_missing` and written with
//! `put_batch`. Large files were spooled to an anonymous temporary file; after
//! `find_missing` they are streamed with `put_stream` in chunks. At most
//! `maximum_concurrent_uploads` batches or files are in flight; meanwhile the bounded
//! channel makes the parser wait, so memory and spool space stay bounded. CAS errors keep
//! their own code.

use super::IngestOptions;
use crate::blobstore::{ContentAddressableStorage, Instance};
use crate::proto::reapi;
use crate::status::{from_io, StatusContext};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::mpsc;
use tonic::Status;

/// The content of one file, ready to be uploaded.
pub(crate) enum FileContent {
    /// A small file, held in memory.
    Small(Bytes),
    /// A large file, spooled to a temporary file positioned at its start.
    Spooled(std::fs::File),
}

pub(crate) struct FileUpload {
    pub(crate) digest: reapi::Digest,
    pub(crate) content: FileContent,
}

/// Uploads everything received on `uploads` until the channel closes. Returns the first
/// error; dropping the receiver then stops the parser at its next send.
pub(crate) async fn upload_files(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    options: &IngestOptions,
    mut uploads: mpsc::Receiver<FileUpload>,
) -> Result<(), Status> {
    let maximum_in_flight = options.maximum_concurrent_uploads.max(1);
    let mut in_flight: FuturesUnordered<BoxFuture<'_, Result<(), Status>>> =
        FuturesUnordered::new();
    let mut batch: Vec<(reapi::Digest, Bytes)> = Vec::new();
    let mut batch_bytes = 0u64;
    loop {
        tokio::select! {
            biased;
            Some(result) = in_flight.next(), if !in_flight.is_empty() => result?,
            upload = uploads.recv(), if in_flight.len() < maximum_in_flight => {
                let Some(upload) = upload else { break };
                match upload.content {
                    FileContent::Small(data) => {
                        let size = data.len() as u64;
                        if !batch.is_empty() && batch_bytes + size > options.batch_size_bytes {
                            in_flight.push(upload_batch(cas, instance, std::mem::take(&mut batch)).boxed());
                            batch_bytes = 0;
                        }
                        batch.push((upload.digest, data));
                        batch_bytes += size;
                    }
                    FileContent::Spooled(file) => in_flight.push(
                        upload_spooled(cas, instance, upload.digest, file, options.stream_chunk_size_bytes)
                            .boxed(),
                    ),
                }
            }
        }
    }
    if !batch.is_empty() {
        in_flight.push(upload_batch(cas, instance, batch).boxed());
    }
    while let Some(result) = in_flight.next().await {
        result?;
    }
    Ok(())
}

async fn upload_batch(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    blobs: Vec<(reapi::Digest, Bytes)>,
) -> Result<(), Status> {
    let digests = blobs.iter().map(|(d, _)| d.clone()).collect();
    let missing = cas
        .find_missing(instance, digests)
        .await
        .context("Failed to find missing file contents")?;
    if missing.is_empty() {
        return Ok(());
    }
    let blobs: Vec<_> = blobs
        .into_iter()
        .filter(|(digest, _)| missing.contains(digest))
        .collect();
    let count = blobs.len();
    cas.put_batch(instance, blobs)
        .await
        .context_with(|| format!("Failed to store a batch of {count} files"))
}

async fn upload_spooled(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    digest: reapi::Digest,
    file: std::fs::File,
    chunk_size: usize,
) -> Result<(), Status> {
    let name = crate::digest::display(&digest);
    let missing = cas
        .find_missing(instance, vec![digest.clone()])
        .await
        .context_with(|| format!("Failed to find out whether file {name} is missing"))?;
    if missing.is_empty() {
        return Ok(());
    }
    let reader = tokio::fs::File::from_std(file);
    let chunks = tokio_util::io::ReaderStream::with_capacity(reader, chunk_size.max(1))
        .map(|chunk| chunk.map_err(|e| from_io(e, "Failed to read spooled file")))
        .boxed();
    cas.put_stream(instance, &digest, chunks)
        .await
        .context_with(|| format!("Failed to store file {name}"))
}
