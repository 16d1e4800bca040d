//! A CAS that keeps nothing, kept for benchmarks (`benches/expander`): writes are
//! accepted and dropped without being hashed or buffered, FindMissingBlobs reports every
//! (non-empty) blob missing so that every file of a layer is uploaded, and reads fail
//! with NOT_FOUND. With it, the memory a layer ingestion needs can be measured without a
//! store in the same process holding the layer's contents.
//!
//! It counts what it was given, so a benchmark can check that the contents really went
//! through the upload path. It is not offered in the configuration: nothing that reads
//! its own writes back (the service, `expand --materialize`) can work on top of it.

use super::{ChunkStream, ContentAddressableStorage, Instance};
use crate::proto::reapi;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::sync::atomic::{AtomicU64, Ordering};
use tonic::Status;

#[derive(Default)]
pub struct DiscardingContentAddressableStorage {
    blobs: AtomicU64,
    bytes: AtomicU64,
}

impl DiscardingContentAddressableStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of blobs written (and dropped) so far.
    pub fn blobs_written(&self) -> u64 {
        self.blobs.load(Ordering::Relaxed)
    }

    /// Number of bytes written (and dropped) so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn count(&self, bytes: u64) {
        self.blobs.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
}

#[async_trait]
impl ContentAddressableStorage for DiscardingContentAddressableStorage {
    async fn find_missing(
        &self,
        instance: &Instance,
        digests: Vec<reapi::Digest>,
    ) -> Result<Vec<reapi::Digest>, Status> {
        // The empty blob is always present, as in every REAPI CAS.
        let empty = instance.digest_function.empty_digest();
        Ok(digests.into_iter().filter(|d| *d != empty).collect())
    }

    async fn get(&self, _instance: &Instance, digest: &reapi::Digest) -> Result<Bytes, Status> {
        if digest.size_bytes == 0 {
            return Ok(Bytes::new());
        }
        Err(Status::not_found(format!(
            "Blob {} not found: this CAS discards everything written to it",
            crate::digest::display(digest)
        )))
    }

    async fn put(
        &self,
        _instance: &Instance,
        _digest: &reapi::Digest,
        data: Bytes,
    ) -> Result<(), Status> {
        self.count(data.len() as u64);
        Ok(())
    }

    async fn put_batch(
        &self,
        _instance: &Instance,
        blobs: Vec<(reapi::Digest, Bytes)>,
    ) -> Result<(), Status> {
        for (_, data) in blobs {
            self.count(data.len() as u64);
        }
        Ok(())
    }

    async fn put_stream(
        &self,
        _instance: &Instance,
        _digest: &reapi::Digest,
        mut chunks: ChunkStream,
    ) -> Result<(), Status> {
        // Drained chunk by chunk: nothing is held beyond the chunk in hand.
        let mut bytes = 0u64;
        while let Some(chunk) = chunks.next().await {
            bytes += chunk?.len() as u64;
        }
        self.count(bytes);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use tonic::Code;

    fn instance() -> Instance {
        Instance::new("", DigestFunction::Sha256)
    }

    #[tokio::test]
    async fn drops_writes_and_reports_everything_missing() {
        let cas = DiscardingContentAddressableStorage::new();
        let f = DigestFunction::Sha256;
        let (a, b) = (f.digest_of(b"aaaa"), f.digest_of(b"bb"));
        cas.put(&instance(), &a, Bytes::from_static(b"aaaa"))
            .await
            .unwrap();
        let chunks = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"b")),
            Ok(Bytes::from_static(b"b")),
        ])
        .boxed();
        cas.put_stream(&instance(), &b, chunks).await.unwrap();
        assert_eq!((cas.blobs_written(), cas.bytes_written()), (2, 6));
        let empty = f.empty_digest();
        assert_eq!(
            cas.find_missing(&instance(), vec![a.clone(), empty.clone(), b.clone()])
                .await
                .unwrap(),
            vec![a.clone(), b]
        );
        assert_eq!(
            cas.get(&instance(), &a).await.unwrap_err().code(),
            Code::NotFound
        );
        assert!(cas.get(&instance(), &empty).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failing_stream_fails_the_write() {
        let cas = DiscardingContentAddressableStorage::new();
        let d = DigestFunction::Sha256.digest_of(b"x");
        let chunks = futures::stream::iter(vec![Err(Status::unavailable("gone"))]).boxed();
        let error = cas.put_stream(&instance(), &d, chunks).await.unwrap_err();
        assert_eq!(error.code(), Code::Unavailable);
        assert_eq!(cas.blobs_written(), 0);
    }
}
