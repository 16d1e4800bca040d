//! Blob stores: the Content Addressable Storage and the Action Cache the expander shares
//! with the scheduler and workers.
//!
//! As in Buildbarn's `pkg/blobstore`, each store is a small trait with one implementation
//! per file (`grpc_*` talks to bb_storage, `memory_*` is the embedded default) and
//! decorators that wrap the trait (`existence_caching_*`, `read_caching_*`). Turning
//! configuration into these objects happens in `configuration.rs` only.
//!
//! Every call carries an [`Instance`]: the REAPI instance name and digest function of the
//! request, so that blobs are addressed exactly as the client addressed them.

use crate::digest::DigestFunction;
use crate::proto::reapi;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::Status;

pub mod configuration;
pub(crate) mod discarding_content_addressable_storage;
pub mod existence_caching_content_addressable_storage;
pub(crate) mod grpc_action_cache;
pub(crate) mod grpc_content_addressable_storage;
pub(crate) mod memory_action_cache;
pub(crate) mod memory_content_addressable_storage;
pub(crate) mod read_caching_content_addressable_storage;

// Kept for benchmarks (benches/expander): a CAS that drops what it is given.
pub use discarding_content_addressable_storage::DiscardingContentAddressableStorage;
pub(crate) use existence_caching_content_addressable_storage::ExistenceCachingContentAddressableStorage;
pub(crate) use grpc_action_cache::GrpcActionCache;
pub use grpc_content_addressable_storage::GrpcContentAddressableStorage;
pub use memory_action_cache::MemoryActionCache;
pub use memory_content_addressable_storage::MemoryContentAddressableStorage;
pub(crate) use read_caching_content_addressable_storage::ReadCachingContentAddressableStorage;

/// The REAPI instance name and digest function a request is made for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    pub name: String,
    pub digest_function: DigestFunction,
}

impl Instance {
    pub fn new(name: impl Into<String>, digest_function: DigestFunction) -> Self {
        Self {
            name: name.into(),
            digest_function,
        }
    }
}

/// A blob's content as a stream of chunks.
pub type ChunkStream = BoxStream<'static, Result<Bytes, Status>>;

/// The Content Addressable Storage.
///
/// `get`/`put` move whole blobs and suit small ones (Directories, Commands, records);
/// `get_stream`/`put_stream` move large blobs without holding them in memory. A
/// missing blob is reported as NOT_FOUND.
#[async_trait]
pub trait ContentAddressableStorage: Send + Sync + 'static {
    /// Returns the digests of `digests` that are not present.
    async fn find_missing(
        &self,
        instance: &Instance,
        digests: Vec<reapi::Digest>,
    ) -> Result<Vec<reapi::Digest>, Status>;

    /// Reads a whole blob.
    async fn get(&self, instance: &Instance, digest: &reapi::Digest) -> Result<Bytes, Status>;

    /// Writes a whole blob. The store checks the content against the digest.
    async fn put(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
        data: Bytes,
    ) -> Result<(), Status>;

    /// Writes several (small) blobs; implementations may batch them in one request.
    async fn put_batch(
        &self,
        instance: &Instance,
        blobs: Vec<(reapi::Digest, Bytes)>,
    ) -> Result<(), Status> {
        for (digest, data) in blobs {
            self.put(instance, &digest, data).await?;
        }
        Ok(())
    }

    /// Reads several (small) blobs; implementations may batch them in one request.
    /// One result per digest, in the order of `digests`, each as [`Self::get`] would
    /// return it (a missing blob is NOT_FOUND).
    async fn get_batch(
        &self,
        instance: &Instance,
        digests: Vec<reapi::Digest>,
    ) -> Vec<Result<Bytes, Status>> {
        futures::future::join_all(digests.iter().map(|digest| self.get(instance, digest))).await
    }

    /// Reads a blob as a stream of chunks.
    async fn get_stream(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
    ) -> Result<ChunkStream, Status> {
        let data = self.get(instance, digest).await?;
        Ok(futures::stream::once(async move { Ok(data) }).boxed())
    }

    /// Writes a blob from a stream of chunks whose concatenation has `digest`.
    async fn put_stream(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
        mut chunks: ChunkStream,
    ) -> Result<(), Status> {
        let mut buf = Vec::with_capacity(digest.size_bytes.max(0) as usize);
        while let Some(chunk) = chunks.next().await {
            buf.extend_from_slice(&chunk?);
        }
        self.put(instance, digest, Bytes::from(buf)).await
    }
}

/// The Action Cache. A missing entry is reported as NOT_FOUND.
#[async_trait]
pub trait ActionCache: Send + Sync + 'static {
    async fn get_action_result(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
    ) -> Result<reapi::ActionResult, Status>;

    async fn put_action_result(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
        result: reapi::ActionResult,
    ) -> Result<(), Status>;
}

/// Checks that `data` has `digest`, with Buildbarn's wording (bb-storage buffer/source.go).
pub(crate) fn verify_blob(
    function: DigestFunction,
    digest: &reapi::Digest,
    data: &[u8],
) -> Result<(), Status> {
    verify_size(digest, data.len() as i64)?;
    verify_digest(digest, &function.digest_of(data))
}

/// Checks a blob's size against `digest` (the cheap half of [`verify_blob`]).
pub(crate) fn verify_size(digest: &reapi::Digest, size: i64) -> Result<(), Status> {
    if size != digest.size_bytes {
        return Err(Status::invalid_argument(format!(
            "Buffer is {size} bytes in size, while {} bytes were expected",
            digest.size_bytes
        )));
    }
    Ok(())
}

/// Checks the digest computed from a blob (`actual`) against `expected`.
pub(crate) fn verify_digest(
    expected: &reapi::Digest,
    actual: &reapi::Digest,
) -> Result<(), Status> {
    verify_size(expected, actual.size_bytes)?;
    if actual.hash != expected.hash {
        return Err(Status::invalid_argument(format!(
            "Buffer has checksum {}, while {} was expected",
            actual.hash, expected.hash
        )));
    }
    Ok(())
}

/// Reads a blob and decodes it as a protobuf message.
pub async fn get_message<M: prost::Message + Default>(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    digest: &reapi::Digest,
) -> Result<M, Status> {
    let data = cas.get(instance, digest).await?;
    decode_message(digest, data)
}

/// Decodes the blob `data` with `digest` as a protobuf message, with the error
/// [`get_message`] gives.
pub fn decode_message<M: prost::Message + Default>(
    digest: &reapi::Digest,
    data: Bytes,
) -> Result<M, Status> {
    M::decode(data).map_err(|e| {
        Status::invalid_argument(format!(
            "Failed to unmarshal message {}: {e}",
            crate::digest::display(digest)
        ))
    })
}

/// Encodes a message, stores it, and returns its digest.
pub async fn put_message<M: prost::Message>(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    message: &M,
) -> Result<reapi::Digest, Status> {
    let (digest, data) = crate::digest::encode_message(instance.digest_function, message);
    cas.put(instance, &digest, data).await?;
    Ok(digest)
}
