//! A CAS that lives on the other side of a gRPC connection: bb_storage, or any other
//! server that speaks REAPI's `ContentAddressableStorage` and `google.bytestream`.
//!
//! Why it exists: the expander must put the Directories and Commands it generates into
//! the very CAS that the scheduler and workers read (docs/design/directories.md#completeness), and that CAS is
//! almost always remote. REAPI offers two ways to move blobs and this client picks
//! between them by size, as REAPI asks clients to do:
//!
//! - blobs that fit comfortably in one gRPC message go through `BatchReadBlobs` and
//!   `BatchUpdateBlobs` (and `put_batch` packs many of them into one request);
//! - larger blobs, and everything that is streamed (`get_stream`, `put_stream`), go
//!   through `ByteStream.Read`/`ByteStream.Write` in bounded chunks, so that no request
//!   or response exceeds `maximum_message_size_bytes` and streamed blobs are never held
//!   in memory as a whole.
//!
//! Data read back is checked against its digest, so a faulty backend cannot hand out
//! corrupt blobs unnoticed. Uploads are checked by the server.

use super::{ChunkStream, ContentAddressableStorage, Instance};
use crate::digest::{display, DigestFunction};
use crate::grpc::GrpcChannel;
use crate::proto::bytestream::byte_stream_client::ByteStreamClient;
use crate::proto::bytestream::{ReadRequest, WriteRequest};
use crate::proto::reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use crate::proto::{reapi, rpc};
use crate::status::{wrap, wrap_with_code, StatusContext};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::stream::{self, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tonic::{Code, Status};

/// Bytes set aside in every request for everything but blob contents: the instance name
/// (counted separately), field tags, the digest function, message framing.
const REQUEST_OVERHEAD_BYTES: usize = 1024;

/// Bytes set aside per blob in a batch: its digest and the tags around it.
const PER_BLOB_OVERHEAD_BYTES: usize = 64;

/// Upper bound of the data carried by one `ByteStream.Write` request.
const MAXIMUM_WRITE_CHUNK_BYTES: usize = 1 << 20;

/// Never refuse responses smaller than this, whatever the configured limit: servers
/// choose their ByteStream read chunk size themselves (grpc-go's default limit).
const MINIMUM_DECODING_LIMIT_BYTES: usize = 4 << 20;

/// How many batches or ByteStream uploads `put_batch` has in flight at once.
const PUT_BATCH_CONCURRENCY: usize = 4;

pub struct GrpcContentAddressableStorage {
    cas: ContentAddressableStorageClient<GrpcChannel>,
    byte_stream: ByteStreamClient<GrpcChannel>,
    maximum_message_size_bytes: usize,
}

impl GrpcContentAddressableStorage {
    /// `maximum_message_size_bytes` is the largest gRPC message the server accepts (and
    /// sends); batches and ByteStream chunks are sized to stay below it.
    pub fn new(channel: GrpcChannel, maximum_message_size_bytes: usize) -> Self {
        let decoding_limit =
            maximum_message_size_bytes.max(MINIMUM_DECODING_LIMIT_BYTES) + REQUEST_OVERHEAD_BYTES;
        Self {
            cas: ContentAddressableStorageClient::new(channel.clone())
                .max_decoding_message_size(decoding_limit),
            byte_stream: ByteStreamClient::new(channel).max_decoding_message_size(decoding_limit),
            maximum_message_size_bytes,
        }
    }

    /// Bytes of blob data one request for `instance` may carry.
    fn budget(&self, instance: &Instance) -> usize {
        self.maximum_message_size_bytes
            .saturating_sub(REQUEST_OVERHEAD_BYTES + instance.name.len())
    }

    /// Whether a blob of `size` bytes travels in a batch request rather than over
    /// ByteStream.
    fn fits_in_batch(&self, instance: &Instance, digest: &reapi::Digest, size: usize) -> bool {
        size.saturating_add(batch_cost_overhead(digest)) <= self.budget(instance)
    }

    fn write_chunk_size(&self, instance: &Instance) -> usize {
        self.budget(instance).clamp(1, MAXIMUM_WRITE_CHUNK_BYTES)
    }

    async fn batch_read(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
    ) -> Result<Bytes, Status> {
        self.batch_read_many(instance, std::slice::from_ref(digest))
            .await
            .pop()
            .expect("one result per digest")
    }

    /// Reads `digests` (small blobs) in one BatchReadBlobs request: one result per
    /// digest, in order. A failed request fails every blob with its error.
    async fn batch_read_many(
        &self,
        instance: &Instance,
        digests: &[reapi::Digest],
    ) -> Vec<Result<Bytes, Status>> {
        let response = self
            .cas
            .clone()
            .batch_read_blobs(reapi::BatchReadBlobsRequest {
                instance_name: instance.name.clone(),
                digests: digests.to_vec(),
                acceptable_compressors: vec![],
                digest_function: digest_function_field(instance),
            })
            .await;
        let response = match response {
            Ok(response) => response.into_inner(),
            Err(status) => return digests.iter().map(|_| Err(status.clone())).collect(),
        };
        let mut entries: HashMap<(String, i64), reapi::batch_read_blobs_response::Response> =
            HashMap::with_capacity(response.responses.len());
        for entry in response.responses {
            if let Some(digest) = &entry.digest {
                entries.insert((digest.hash.clone(), digest.size_bytes), entry);
            }
        }
        digests
            .iter()
            .map(|digest| {
                let entry = entries
                    .get(&(digest.hash.clone(), digest.size_bytes))
                    .ok_or_else(|| Status::internal("Server did not return the requested blob"))?;
                check_blob_status(entry.status.clone())?;
                if entry.compressor != reapi::compressor::Value::Identity as i32 {
                    return Err(Status::internal(format!(
                        "Server returned the blob with compressor {}, which was not requested",
                        entry.compressor
                    )));
                }
                let data = Bytes::from(entry.data.clone());
                super::verify_blob(instance.digest_function, digest, &data).map_err(|s| {
                    wrap_with_code(s, Code::Internal, "Server returned corrupt data")
                })?;
                Ok(data)
            })
            .collect()
    }

    /// Opens a ByteStream read and waits for its first response, so that a missing blob
    /// is reported by the call rather than later by the stream.
    async fn byte_stream_read(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
    ) -> Result<ChunkStream, Status> {
        let mut responses = self
            .byte_stream
            .clone()
            .read(ReadRequest {
                resource_name: read_resource_name(instance, digest),
                read_offset: 0,
                read_limit: 0,
            })
            .await?
            .into_inner();
        let first = responses.message().await?;
        let chunks = stream::iter(first.map(Ok))
            .chain(responses)
            .map_ok(|r| Bytes::from(r.data));
        Ok(verifying(
            instance.digest_function,
            digest.clone(),
            chunks.boxed(),
        ))
    }

    async fn batch_update(
        &self,
        instance: &Instance,
        blobs: Vec<(reapi::Digest, Bytes)>,
    ) -> Result<(), Status> {
        let requests = blobs
            .into_iter()
            .map(
                |(digest, data)| reapi::batch_update_blobs_request::Request {
                    digest: Some(digest),
                    data: data.into(),
                    compressor: reapi::compressor::Value::Identity as i32,
                },
            )
            .collect::<Vec<_>>();
        let expected = requests
            .iter()
            .filter_map(|r| r.digest.clone())
            .collect::<Vec<_>>();
        let response = self
            .cas
            .clone()
            .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
                instance_name: instance.name.clone(),
                requests,
                digest_function: digest_function_field(instance),
            })
            .await
            .map_err(|s| match expected.as_slice() {
                [digest] => wrap(s, format!("Failed to write blob {}", display(digest))),
                _ => wrap(s, format!("Failed to write {} blobs", expected.len())),
            })?
            .into_inner();
        let mut statuses = HashMap::with_capacity(response.responses.len());
        for entry in response.responses {
            if let Some(digest) = entry.digest {
                statuses.insert((digest.hash, digest.size_bytes), entry.status);
            }
        }
        for digest in &expected {
            let status = statuses
                .get(&(digest.hash.clone(), digest.size_bytes))
                .cloned()
                .ok_or_else(|| Status::internal("Server did not report on the blob"))
                .context_with(|| format!("Failed to write blob {}", display(digest)))?;
            check_blob_status(status)
                .context_with(|| format!("Failed to write blob {}", display(digest)))?;
        }
        Ok(())
    }

    /// Uploads a blob over ByteStream. An error of `chunks` ends the upload (without
    /// `finish_write`, so the server discards it) and is what the caller gets back.
    async fn byte_stream_write(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
        chunks: ChunkStream,
    ) -> Result<(), Status> {
        let source_error = Arc::new(Mutex::new(None::<Status>));
        let requests = write_requests(
            write_resource_name(instance, &new_upload_uuid(), digest),
            rechunk(chunks, self.write_chunk_size(instance)),
            source_error.clone(),
        );
        let result = self.byte_stream.clone().write(requests).await;
        if let Some(error) = source_error.lock().take() {
            return Err(error);
        }
        let committed = result?.into_inner().committed_size;
        if committed != digest.size_bytes {
            return Err(Status::internal(format!(
                "Server committed {committed} bytes, while {} bytes were sent",
                digest.size_bytes
            )));
        }
        Ok(())
    }

    async fn put_one(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
        data: Bytes,
    ) -> Result<(), Status> {
        if digest.size_bytes == 0 && data.is_empty() {
            // "Servers MUST behave as though empty blobs are always available."
            return Ok(());
        }
        if self.fits_in_batch(instance, digest, data.len()) {
            self.batch_update(instance, vec![(digest.clone(), data)])
                .await
        } else {
            let chunks = split(data, self.write_chunk_size(instance));
            self.byte_stream_write(instance, digest, stream::iter(chunks).map(Ok).boxed())
                .await
                .context_with(|| format!("Failed to write blob {}", display(digest)))
        }
    }
}

#[async_trait]
impl ContentAddressableStorage for GrpcContentAddressableStorage {
    async fn find_missing(
        &self,
        instance: &Instance,
        digests: Vec<reapi::Digest>,
    ) -> Result<Vec<reapi::Digest>, Status> {
        let per_request = (self.budget(instance)
            / (instance.digest_function.hash_length() + PER_BLOB_OVERHEAD_BYTES / 2))
            .max(1);
        let mut missing = Vec::new();
        for part in digests.chunks(per_request) {
            let response = self
                .cas
                .clone()
                .find_missing_blobs(reapi::FindMissingBlobsRequest {
                    instance_name: instance.name.clone(),
                    blob_digests: part.to_vec(),
                    digest_function: digest_function_field(instance),
                })
                .await
                .context("Failed to find missing blobs")?;
            missing.extend(response.into_inner().missing_blob_digests);
        }
        Ok(missing)
    }

    async fn get(&self, instance: &Instance, digest: &reapi::Digest) -> Result<Bytes, Status> {
        if digest.size_bytes == 0 {
            return Ok(Bytes::new());
        }
        let result = if self.fits_in_batch(instance, digest, digest.size_bytes as usize) {
            self.batch_read(instance, digest).await
        } else {
            match self.byte_stream_read(instance, digest).await {
                Ok(chunks) => chunks
                    .try_fold(
                        BytesMut::with_capacity(digest.size_bytes as usize),
                        |mut buffer, chunk| async move {
                            buffer.extend_from_slice(&chunk);
                            Ok(buffer)
                        },
                    )
                    .await
                    .map(BytesMut::freeze),
                Err(e) => Err(e),
            }
        };
        result.context_with(|| format!("Failed to read blob {}", display(digest)))
    }

    async fn put(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
        data: Bytes,
    ) -> Result<(), Status> {
        self.put_one(instance, digest, data).await
    }

    async fn put_batch(
        &self,
        instance: &Instance,
        blobs: Vec<(reapi::Digest, Bytes)>,
    ) -> Result<(), Status> {
        // Group small blobs into batches whose contents stay within one message; large
        // blobs are uploaded on their own.
        let budget = self.budget(instance);
        let mut batches: Vec<Vec<(reapi::Digest, Bytes)>> = Vec::new();
        let mut large = Vec::new();
        let mut current = Vec::new();
        let mut current_size = 0usize;
        for (digest, data) in blobs {
            if digest.size_bytes == 0 && data.is_empty() {
                continue;
            }
            if !self.fits_in_batch(instance, &digest, data.len()) {
                large.push((digest, data));
                continue;
            }
            let cost = data.len() + batch_cost_overhead(&digest);
            if current_size + cost > budget {
                batches.push(std::mem::take(&mut current));
                current_size = 0;
            }
            current_size += cost;
            current.push((digest, data));
        }
        if !current.is_empty() {
            batches.push(current);
        }

        let mut uploads: Vec<BoxFuture<'_, Result<(), Status>>> = Vec::new();
        for batch in batches {
            uploads.push(Box::pin(self.batch_update(instance, batch)));
        }
        for (digest, data) in large {
            uploads.push(Box::pin(async move {
                self.put_one(instance, &digest, data).await
            }));
        }
        stream::iter(uploads)
            .buffer_unordered(PUT_BATCH_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    async fn get_batch(
        &self,
        instance: &Instance,
        digests: Vec<reapi::Digest>,
    ) -> Vec<Result<Bytes, Status>> {
        // Small blobs are grouped into BatchReadBlobs requests whose responses stay
        // within one message; large ones are read on their own (as `get` does).
        let budget = self.budget(instance);
        let mut results: Vec<Option<Result<Bytes, Status>>> =
            (0..digests.len()).map(|_| None).collect();
        let mut batches: Vec<Vec<usize>> = Vec::new();
        let mut large = Vec::new();
        let mut current = Vec::new();
        let mut current_size = 0usize;
        for (index, digest) in digests.iter().enumerate() {
            if digest.size_bytes == 0 {
                results[index] = Some(Ok(Bytes::new()));
                continue;
            }
            let size = digest.size_bytes.max(0) as usize;
            if !self.fits_in_batch(instance, digest, size) {
                large.push(index);
                continue;
            }
            let cost = size + batch_cost_overhead(digest);
            if current_size + cost > budget {
                batches.push(std::mem::take(&mut current));
                current_size = 0;
            }
            current_size += cost;
            current.push(index);
        }
        if !current.is_empty() {
            batches.push(current);
        }

        let digests = &digests;
        let mut reads: Vec<BoxFuture<'_, Vec<(usize, Result<Bytes, Status>)>>> = Vec::new();
        for batch in batches {
            reads.push(Box::pin(async move {
                let wanted: Vec<reapi::Digest> =
                    batch.iter().map(|&i| digests[i].clone()).collect();
                let read = self.batch_read_many(instance, &wanted).await;
                batch
                    .into_iter()
                    .zip(read)
                    .map(|(index, result)| {
                        let context =
                            || format!("Failed to read blob {}", display(&digests[index]));
                        (index, result.context_with(context))
                    })
                    .collect()
            }));
        }
        for index in large {
            reads.push(Box::pin(async move {
                vec![(index, self.get(instance, &digests[index]).await)]
            }));
        }
        let done: Vec<Vec<(usize, Result<Bytes, Status>)>> = stream::iter(reads)
            .buffer_unordered(PUT_BATCH_CONCURRENCY)
            .collect()
            .await;
        for (index, result) in done.into_iter().flatten() {
            results[index] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.expect("every blob was read"))
            .collect()
    }

    async fn get_stream(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
    ) -> Result<ChunkStream, Status> {
        if digest.size_bytes == 0 {
            return Ok(stream::empty().boxed());
        }
        let context = format!("Failed to read blob {}", display(digest));
        let chunks = self
            .byte_stream_read(instance, digest)
            .await
            .context(&context)?;
        Ok(chunks.map_err(move |s| wrap(s, &context)).boxed())
    }

    async fn put_stream(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
        chunks: ChunkStream,
    ) -> Result<(), Status> {
        self.byte_stream_write(instance, digest, chunks)
            .await
            .context_with(|| format!("Failed to write blob {}", display(digest)))
    }
}

fn batch_cost_overhead(digest: &reapi::Digest) -> usize {
    digest.hash.len() + PER_BLOB_OVERHEAD_BYTES
}

fn digest_function_field(instance: &Instance) -> i32 {
    instance.digest_function.to_proto() as i32
}

/// The `{digest_function/}` part of ByteStream resource names. REAPI: "If the digest
/// function used is one of MD5, MURMUR3, SHA1, SHA256, SHA384, SHA512, or VSO, this
/// component MUST be omitted"; the server infers those from the hash length. Only newer
/// functions (BLAKE3, SHA256TREE, …) are spelled out, and none of them is supported yet.
fn digest_function_segment(function: DigestFunction) -> Option<&'static str> {
    match function {
        DigestFunction::Sha256 | DigestFunction::Sha384 | DigestFunction::Sha512 => None,
    }
}

/// `{instance_name}/` or nothing for the empty instance name, then
/// `blobs/{digest_function/}{hash}/{size}`.
fn blob_path(instance: &Instance, digest: &reapi::Digest, prefix: &str) -> String {
    let mut name = String::new();
    if !instance.name.is_empty() {
        name.push_str(&instance.name);
        name.push('/');
    }
    name.push_str(prefix);
    name.push_str("blobs/");
    if let Some(segment) = digest_function_segment(instance.digest_function) {
        name.push_str(segment);
        name.push('/');
    }
    name.push_str(&format!("{}/{}", digest.hash, digest.size_bytes));
    name
}

/// `ReadRequest.resource_name` of a blob: `{instance_name}/blobs/{digest_function/}{hash}/{size}`.
pub(crate) fn read_resource_name(instance: &Instance, digest: &reapi::Digest) -> String {
    blob_path(instance, digest, "")
}

/// `WriteRequest.resource_name` of an upload:
/// `{instance_name}/uploads/{uuid}/blobs/{digest_function/}{hash}/{size}`.
pub(crate) fn write_resource_name(
    instance: &Instance,
    uuid: &str,
    digest: &reapi::Digest,
) -> String {
    blob_path(instance, digest, &format!("uploads/{uuid}/"))
}

/// A version 4 UUID for an upload. Randomness comes from the standard library's
/// randomly keyed hasher, mixed with a counter and the time so that two uploads of one
/// process never share one.
pub(crate) fn new_upload_uuid() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut bytes = [0u8; 16];
    for (i, half) in bytes.chunks_mut(8).enumerate() {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(count);
        hasher.write_u128(nanos);
        hasher.write_usize(i);
        half.copy_from_slice(&hasher.finish().to_le_bytes());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Turns a per-blob `google.rpc.Status` of a batch response into a result.
fn check_blob_status(status: Option<rpc::Status>) -> Result<(), Status> {
    match status {
        Some(s) if s.code != Code::Ok as i32 => Err(status_from_proto(s)),
        _ => Ok(()),
    }
}

/// Converts a `google.rpc.Status` message to a tonic status (without details).
pub(crate) fn status_from_proto(status: rpc::Status) -> Status {
    Status::new(Code::from(status.code), status.message)
}

/// Splits `data` into pieces of at most `size` bytes without copying.
fn split(data: Bytes, size: usize) -> Vec<Bytes> {
    let mut pieces = Vec::with_capacity(data.len().div_ceil(size));
    let mut rest = data;
    while rest.len() > size {
        pieces.push(rest.split_to(size));
    }
    if !rest.is_empty() {
        pieces.push(rest);
    }
    pieces
}

/// Re-cuts a stream of chunks of any size into chunks of at most `size` bytes, merging
/// small ones, so that each fits in one ByteStream request.
fn rechunk(chunks: ChunkStream, size: usize) -> ChunkStream {
    async_stream::stream! {
        let mut chunks = chunks;
        let mut pending = BytesMut::new();
        while let Some(chunk) = chunks.next().await {
            let mut chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    yield Err(e);
                    return;
                }
            };
            while !chunk.is_empty() {
                if pending.is_empty() && chunk.len() >= size {
                    yield Ok(chunk.split_to(size));
                    continue;
                }
                let take = (size - pending.len()).min(chunk.len());
                pending.extend_from_slice(&chunk.split_to(take));
                if pending.len() == size {
                    yield Ok(pending.split().freeze());
                }
            }
        }
        if !pending.is_empty() {
            yield Ok(pending.freeze());
        }
    }
    .boxed()
}

/// The requests of one ByteStream upload. Each chunk is held back until the next one
/// (or the end) is known, so that the last request carries `finish_write`. An error of
/// the source is stored in `source_error` and ends the requests without finishing.
fn write_requests(
    resource_name: String,
    chunks: ChunkStream,
    source_error: Arc<Mutex<Option<Status>>>,
) -> impl futures::Stream<Item = WriteRequest> + Send + 'static {
    async_stream::stream! {
        let mut chunks = chunks;
        let mut resource_name = Some(resource_name);
        let mut offset = 0i64;
        let mut next = chunks.next().await;
        loop {
            let data = match next {
                None => {
                    if offset == 0 {
                        // An empty blob: one request that finishes at once.
                        yield WriteRequest {
                            resource_name: resource_name.take().unwrap_or_default(),
                            write_offset: 0,
                            finish_write: true,
                            data: vec![],
                        };
                    }
                    return;
                }
                Some(Err(e)) => {
                    *source_error.lock() = Some(e);
                    return;
                }
                Some(Ok(data)) => data,
            };
            next = chunks.next().await;
            let finish_write = next.is_none();
            let len = data.len() as i64;
            yield WriteRequest {
                resource_name: resource_name.take().unwrap_or_default(),
                write_offset: offset,
                finish_write,
                data: data.into(),
            };
            offset += len;
            if finish_write {
                return;
            }
        }
    }
}

/// Passes chunks through while hashing them; fails the stream if the blob turns out
/// longer or shorter than `digest`, or with another hash.
fn verifying(function: DigestFunction, digest: reapi::Digest, chunks: ChunkStream) -> ChunkStream {
    async_stream::stream! {
        let mut chunks = chunks;
        let mut hasher = function.hasher();
        let mut size = 0i64;
        while let Some(chunk) = chunks.next().await {
            match chunk {
                Ok(chunk) => {
                    size += chunk.len() as i64;
                    if size > digest.size_bytes {
                        yield Err(Status::internal(format!(
                            "Server returned corrupt data: Buffer is at least {} bytes in size, while {} bytes were expected",
                            size, digest.size_bytes
                        )));
                        return;
                    }
                    hasher.update(&chunk);
                    yield Ok(chunk);
                }
                Err(e) => {
                    yield Err(e);
                    return;
                }
            }
        }
        let actual = hasher.finish();
        if actual.size_bytes != digest.size_bytes {
            yield Err(Status::internal(format!(
                "Server returned corrupt data: Buffer is {} bytes in size, while {} bytes were expected",
                actual.size_bytes, digest.size_bytes
            )));
        } else if actual.hash != digest.hash {
            yield Err(Status::internal(format!(
                "Server returned corrupt data: Buffer has checksum {}, while {} was expected",
                actual.hash, digest.hash
            )));
        }
    }
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobstore::{MemoryActionCache, MemoryContentAddressableStorage};
    use crate::testutil::BlobstoreServer;

    /// Both ends limited to 64 KiB messages, so that blobs above that need ByteStream.
    const LIMIT: usize = 64 * 1024;

    async fn setup() -> (BlobstoreServer, GrpcContentAddressableStorage) {
        setup_with(Arc::new(MemoryContentAddressableStorage::new(1 << 30))).await
    }

    async fn setup_with(
        backend: Arc<dyn ContentAddressableStorage>,
    ) -> (BlobstoreServer, GrpcContentAddressableStorage) {
        let server = BlobstoreServer::builder(backend, Arc::new(MemoryActionCache::new(1 << 20)))
            .maximum_received_message_size_bytes(LIMIT)
            .instance_names(["", "foo/bar"])
            .start()
            .await;
        let cas = GrpcContentAddressableStorage::new(server.channel(), LIMIT);
        (server, cas)
    }

    fn sha256() -> Instance {
        Instance::new("", DigestFunction::Sha256)
    }

    fn blob(size: usize, seed: u8) -> Bytes {
        (0..size)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect::<Vec<_>>()
            .into()
    }

    #[test]
    fn resource_names_follow_reapi() {
        let d = DigestFunction::Sha256.digest_of(b"hello");
        assert_eq!(
            read_resource_name(&sha256(), &d),
            format!("blobs/{}/5", d.hash)
        );
        // SHA-384/512 are told apart by hash length: no digest function segment.
        let d512 = DigestFunction::Sha512.digest_of(b"hello");
        let instance = Instance::new("foo/bar", DigestFunction::Sha512);
        assert_eq!(
            read_resource_name(&instance, &d512),
            format!("foo/bar/blobs/{}/5", d512.hash)
        );
        assert_eq!(
            write_resource_name(&instance, "u-u-i-d", &d512),
            format!("foo/bar/uploads/u-u-i-d/blobs/{}/5", d512.hash)
        );
        assert_eq!(
            write_resource_name(&sha256(), "x", &d),
            format!("uploads/x/blobs/{}/5", d.hash)
        );
    }

    #[test]
    fn upload_uuids_are_distinct_version_4() {
        let a = new_upload_uuid();
        let b = new_upload_uuid();
        assert_ne!(a, b);
        let groups = a.split('-').map(str::len).collect::<Vec<_>>();
        assert_eq!(groups, vec![8, 4, 4, 4, 12]);
        assert_eq!(&a[14..15], "4");
        assert!(matches!(&a[19..20], "8" | "9" | "a" | "b"));
    }

    #[test]
    fn rechunk_splits_and_merges() {
        let chunks = vec![
            Ok(Bytes::from_static(b"ab")),
            Ok(Bytes::from_static(b"cdefghij")),
            Ok(Bytes::from_static(b"k")),
        ];
        let out = futures::executor::block_on(
            rechunk(stream::iter(chunks).boxed(), 3).try_collect::<Vec<_>>(),
        )
        .unwrap();
        assert_eq!(out, vec!["abc", "def", "ghi", "jk"]);
    }

    #[tokio::test]
    async fn small_blobs_use_batch_rpcs() {
        let (server, cas) = setup().await;
        let data = Bytes::from_static(b"hello");
        let d = DigestFunction::Sha256.digest_of(&data);
        assert_eq!(
            cas.find_missing(&sha256(), vec![d.clone()]).await.unwrap(),
            vec![d.clone()]
        );
        cas.put(&sha256(), &d, data.clone()).await.unwrap();
        assert!(cas
            .find_missing(&sha256(), vec![d.clone()])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(cas.get(&sha256(), &d).await.unwrap(), data);
        assert_eq!(server.calls("BatchUpdateBlobs"), 1);
        assert_eq!(server.calls("BatchReadBlobs"), 1);
        assert_eq!(server.calls("FindMissingBlobs"), 2);
        assert_eq!(server.calls("Write"), 0);
        assert_eq!(server.calls("Read"), 0);
    }

    #[tokio::test]
    async fn large_blobs_use_byte_stream() {
        let (server, cas) = setup().await;
        let data = blob(300 * 1024, 1);
        let d = DigestFunction::Sha256.digest_of(&data);
        cas.put(&sha256(), &d, data.clone()).await.unwrap();
        assert_eq!(server.calls("Write"), 1);
        assert_eq!(server.calls("BatchUpdateBlobs"), 0);
        assert_eq!(cas.get(&sha256(), &d).await.unwrap(), data);
        assert_eq!(server.calls("Read"), 1);
        assert_eq!(server.calls("BatchReadBlobs"), 0);

        let chunks = cas
            .get_stream(&sha256(), &d)
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        assert!(chunks.len() > 1);
        assert_eq!(chunks.concat(), data);
    }

    #[tokio::test]
    async fn put_stream_rechunks_to_the_message_limit() {
        let (server, cas) = setup().await;
        let data = blob(200 * 1024, 2);
        let d = DigestFunction::Sha256.digest_of(&data);
        // One chunk far above the 64 KiB limit, then many tiny ones.
        let mut chunks = vec![Ok(data.slice(..150 * 1024))];
        chunks.extend(
            (150 * 1024..data.len())
                .step_by(100)
                .map(|i| Ok(data.slice(i..(i + 100).min(data.len())))),
        );
        cas.put_stream(&sha256(), &d, stream::iter(chunks).boxed())
            .await
            .unwrap();
        assert_eq!(server.calls("Write"), 1);
        assert_eq!(server.cas().get(&sha256(), &d).await.unwrap(), data);
    }

    #[tokio::test]
    async fn put_stream_returns_the_error_of_its_source() {
        let (server, cas) = setup().await;
        let data = blob(100 * 1024, 3);
        let d = DigestFunction::Sha256.digest_of(&data);
        let chunks = vec![
            Ok(data.slice(..70 * 1024)),
            Err(Status::aborted("Source went away")),
        ];
        let err = cas
            .put_stream(&sha256(), &d, stream::iter(chunks).boxed())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Aborted);
        assert_eq!(
            err.message(),
            format!("Failed to write blob {}: Source went away", display(&d))
        );
        assert_eq!(
            server
                .cas()
                .find_missing(&sha256(), vec![d.clone()])
                .await
                .unwrap(),
            vec![d]
        );
    }

    #[tokio::test]
    async fn missing_blobs_are_not_found() {
        let (_server, cas) = setup().await;
        let small = DigestFunction::Sha256.digest_of(b"absent");
        let err = cas.get(&sha256(), &small).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(
            err.message(),
            format!(
                "Failed to read blob {0}: Blob {0} not found",
                display(&small)
            )
        );

        let large = DigestFunction::Sha256.digest_of(&blob(100 * 1024, 4));
        let err = cas.get(&sha256(), &large).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(
            err.message(),
            format!(
                "Failed to read blob {0}: Blob {0} not found",
                display(&large)
            )
        );
        let err = cas.get_stream(&sha256(), &small).await.err().unwrap();
        assert_eq!(err.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn corrupt_uploads_are_rejected_by_the_server() {
        let (_server, cas) = setup().await;
        let d = DigestFunction::Sha256.digest_of(b"hello");
        let err = cas
            .put(&sha256(), &d, Bytes::from_static(b"hellO"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            err.message(),
            format!(
                "Failed to write blob {}: Buffer has checksum {}, while {} was expected",
                display(&d),
                DigestFunction::Sha256.digest_of(b"hellO").hash,
                d.hash
            )
        );

        let data = blob(100 * 1024, 5);
        let d = DigestFunction::Sha256.digest_of(&data);
        let err = cas
            .put(&sha256(), &d, data.slice(..data.len() - 1))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            err.message(),
            format!(
                "Failed to write blob {}: Buffer is {} bytes in size, while {} bytes were expected",
                display(&d),
                data.len() - 1,
                data.len()
            )
        );
        // Same size, one byte changed, through ByteStream: refused, and nothing kept.
        let mut corrupt = data.to_vec();
        corrupt[50_000] ^= 1;
        let err = cas
            .put(&sha256(), &d, Bytes::from(corrupt.clone()))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            err.message(),
            format!(
                "Failed to write blob {}: Buffer has checksum {}, while {} was expected",
                display(&d),
                DigestFunction::Sha256.digest_of(&corrupt).hash,
                d.hash
            )
        );
        assert_eq!(
            cas.find_missing(&sha256(), vec![d.clone()]).await.unwrap(),
            vec![d]
        );
    }

    #[tokio::test]
    async fn carries_instance_name_and_digest_function() {
        let (server, cas) = setup().await;
        let instance = Instance::new("foo/bar", DigestFunction::Sha512);
        let small = Bytes::from_static(b"small");
        let large = blob(100 * 1024, 6);
        let (ds, dl) = (
            DigestFunction::Sha512.digest_of(&small),
            DigestFunction::Sha512.digest_of(&large),
        );
        cas.put(&instance, &ds, small.clone()).await.unwrap();
        cas.put(&instance, &dl, large.clone()).await.unwrap();
        assert!(cas
            .find_missing(&instance, vec![ds.clone(), dl.clone()])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(cas.get(&instance, &ds).await.unwrap(), small);
        assert_eq!(cas.get(&instance, &dl).await.unwrap(), large);
        let log = server.call_log();
        assert_eq!(log.len(), 5);
        for call in log {
            assert_eq!(call.instance_name, "foo/bar", "{call:?}");
            assert_eq!(
                call.digest_function,
                Some(DigestFunction::Sha512),
                "{call:?}"
            );
        }
        // The store itself keeps SHA-512 blobs apart from SHA-256 ones.
        assert_eq!(
            server
                .cas()
                .find_missing(
                    &Instance::new("foo/bar", DigestFunction::Sha512),
                    vec![ds.clone()]
                )
                .await
                .unwrap(),
            vec![]
        );
    }

    #[tokio::test]
    async fn put_batch_packs_small_blobs_and_streams_large_ones() {
        let (server, cas) = setup().await;
        let mut blobs = (0..20u8)
            .map(|i| {
                let data = blob(10 * 1024, i);
                (DigestFunction::Sha256.digest_of(&data), data)
            })
            .collect::<Vec<_>>();
        let large = blob(100 * 1024, 99);
        blobs.push((DigestFunction::Sha256.digest_of(&large), large));
        blobs.push((DigestFunction::Sha256.empty_digest(), Bytes::new()));
        let digests = blobs.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>();
        cas.put_batch(&sha256(), blobs).await.unwrap();
        // Six 10 KiB blobs fit under 64 KiB with room for overhead: 6 + 6 + 6 + 2.
        assert_eq!(server.calls("BatchUpdateBlobs"), 4);
        assert_eq!(server.calls("Write"), 1);
        assert!(server
            .cas()
            .find_missing(&sha256(), digests)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn put_batch_names_the_failing_blob() {
        let (_server, cas) = setup().await;
        let good = Bytes::from_static(b"good");
        let dg = DigestFunction::Sha256.digest_of(&good);
        let db = DigestFunction::Sha256.digest_of(b"bad");
        let err = cas
            .put_batch(
                &sha256(),
                vec![(dg, good), (db.clone(), Bytes::from_static(b"BAD"))],
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().starts_with(&format!(
                "Failed to write blob {}: Buffer has checksum",
                display(&db)
            )),
            "{}",
            err.message()
        );
    }

    #[tokio::test]
    async fn find_missing_splits_large_requests() {
        let (server, cas) = setup().await;
        let digests = (0..1500u32)
            .map(|i| DigestFunction::Sha256.digest_of(&i.to_le_bytes()))
            .collect::<Vec<_>>();
        let missing = cas.find_missing(&sha256(), digests.clone()).await.unwrap();
        assert_eq!(missing, digests);
        assert_eq!(server.calls("FindMissingBlobs"), 3);
    }

    #[tokio::test]
    async fn empty_blob_needs_no_request() {
        let (server, cas) = setup().await;
        let e = DigestFunction::Sha256.empty_digest();
        cas.put(&sha256(), &e, Bytes::new()).await.unwrap();
        assert!(cas.get(&sha256(), &e).await.unwrap().is_empty());
        assert!(server.call_log().is_empty());
    }

    #[tokio::test]
    async fn rpc_errors_keep_their_code() {
        let (server, cas) = setup().await;
        let d = DigestFunction::Sha256.digest_of(b"x");
        server.fail_next("BatchReadBlobs", Status::unavailable("Storage is down"));
        let err = cas.get(&sha256(), &d).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(
            err.message(),
            format!("Failed to read blob {}: Storage is down", display(&d))
        );
        server.fail_next("FindMissingBlobs", Status::unavailable("Storage is down"));
        let err = cas.find_missing(&sha256(), vec![d]).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(
            err.message(),
            "Failed to find missing blobs: Storage is down"
        );
    }

    /// Returns other data than what was asked for.
    struct CorruptingStorage;

    #[async_trait]
    impl ContentAddressableStorage for CorruptingStorage {
        async fn find_missing(
            &self,
            _instance: &Instance,
            _digests: Vec<reapi::Digest>,
        ) -> Result<Vec<reapi::Digest>, Status> {
            Ok(vec![])
        }
        async fn get(&self, _instance: &Instance, digest: &reapi::Digest) -> Result<Bytes, Status> {
            Ok(blob(digest.size_bytes as usize, 42))
        }
        async fn put(
            &self,
            _instance: &Instance,
            _digest: &reapi::Digest,
            _data: Bytes,
        ) -> Result<(), Status> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn corrupt_data_from_the_server_is_an_internal_error() {
        let (_server, cas) = setup_with(Arc::new(CorruptingStorage)).await;
        for size in [10, 100 * 1024] {
            let data = blob(size, 7);
            let d = DigestFunction::Sha256.digest_of(&data);
            let err = cas.get(&sha256(), &d).await.unwrap_err();
            assert_eq!(err.code(), Code::Internal);
            assert!(
                err.message().starts_with(&format!(
                    "Failed to read blob {}: Server returned corrupt data: Buffer has checksum",
                    display(&d)
                )),
                "{}",
                err.message()
            );
        }
    }
}
