//! A CAS decorator that serves reads from a `fast` store when it can and fills it from
//! the `slow` one when it cannot (bb-storage's `readCaching`).
//!
//! Why it exists: the expander reads the same blobs again and again (image layers'
//! Directories while merging trees, its own cache records), and the authoritative CAS is
//! remote. A local store in front of it saves the round trips and bandwidth.
//!
//! Semantics, as in Buildbarn:
//! - reads try `fast`; on NOT_FOUND they read `slow` and copy the blob into `fast`
//!   (other errors of `fast` are returned, so that a broken cache is noticed);
//! - writes and `find_missing` go to `slow` only: `slow` is the source of truth, and a
//!   blob that exists only in `fast` must not make a caller skip an upload the scheduler
//!   and workers depend on.
//!
//! A failure to fill `fast` is logged and does not fail the read.

use super::{ChunkStream, ContentAddressableStorage, Instance};
use crate::proto::reapi;
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use tonic::{Code, Status};

/// How many chunks of a streamed read may wait for `fast` before the reader waits too.
const FILL_QUEUE_CHUNKS: usize = 16;

pub(crate) struct ReadCachingContentAddressableStorage {
    slow: Arc<dyn ContentAddressableStorage>,
    fast: Arc<dyn ContentAddressableStorage>,
}

impl ReadCachingContentAddressableStorage {
    pub fn new(
        slow: Arc<dyn ContentAddressableStorage>,
        fast: Arc<dyn ContentAddressableStorage>,
    ) -> Self {
        Self { slow, fast }
    }
}

#[async_trait]
impl ContentAddressableStorage for ReadCachingContentAddressableStorage {
    async fn find_missing(
        &self,
        instance: &Instance,
        digests: Vec<reapi::Digest>,
    ) -> Result<Vec<reapi::Digest>, Status> {
        self.slow.find_missing(instance, digests).await
    }

    async fn get(&self, instance: &Instance, digest: &reapi::Digest) -> Result<Bytes, Status> {
        match self.fast.get(instance, digest).await {
            Err(e) if e.code() == Code::NotFound => {}
            result => return result,
        }
        let data = self.slow.get(instance, digest).await?;
        if let Err(e) = self.fast.put(instance, digest, data.clone()).await {
            tracing::warn!(
                "Failed to copy blob {} into the read cache: {}",
                crate::digest::display(digest),
                e.message()
            );
        }
        Ok(data)
    }

    async fn get_batch(
        &self,
        instance: &Instance,
        digests: Vec<reapi::Digest>,
    ) -> Vec<Result<Bytes, Status>> {
        let mut results = self.fast.get_batch(instance, digests.clone()).await;
        let absent: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(e) if e.code() == Code::NotFound))
            .map(|(i, _)| i)
            .collect();
        if absent.is_empty() {
            return results;
        }
        let wanted: Vec<reapi::Digest> = absent.iter().map(|&i| digests[i].clone()).collect();
        let read = self.slow.get_batch(instance, wanted.clone()).await;
        let fill: Vec<(reapi::Digest, Bytes)> = wanted
            .into_iter()
            .zip(&read)
            .filter_map(|(digest, r)| r.as_ref().ok().map(|data| (digest, data.clone())))
            .collect();
        if !fill.is_empty() {
            if let Err(e) = self.fast.put_batch(instance, fill).await {
                tracing::warn!("Failed to copy blobs into the read cache: {}", e.message());
            }
        }
        for (index, result) in absent.into_iter().zip(read) {
            results[index] = result;
        }
        results
    }

    async fn put(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
        data: Bytes,
    ) -> Result<(), Status> {
        self.slow.put(instance, digest, data).await
    }

    async fn put_batch(
        &self,
        instance: &Instance,
        blobs: Vec<(reapi::Digest, Bytes)>,
    ) -> Result<(), Status> {
        self.slow.put_batch(instance, blobs).await
    }

    async fn get_stream(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
    ) -> Result<ChunkStream, Status> {
        match self.fast.get_stream(instance, digest).await {
            Err(e) if e.code() == Code::NotFound => {}
            result => return result,
        }
        let slow_chunks = self.slow.get_stream(instance, digest).await?;

        // Hand the chunks to the caller and, through a bounded queue, to an upload into
        // `fast` running beside it. If the caller stops early, the queue closes short
        // and `fast` rejects the incomplete blob.
        let (sender, receiver) =
            tokio::sync::mpsc::channel::<Result<Bytes, Status>>(FILL_QUEUE_CHUNKS);
        let fast = self.fast.clone();
        let (fill_instance, fill_digest) = (instance.clone(), digest.clone());
        tokio::spawn(async move {
            let chunks = tokio_stream::wrappers::ReceiverStream::new(receiver).boxed();
            if let Err(e) = fast.put_stream(&fill_instance, &fill_digest, chunks).await {
                tracing::warn!(
                    "Failed to copy blob {} into the read cache: {}",
                    crate::digest::display(&fill_digest),
                    e.message()
                );
            }
        });
        let teed = async_stream::stream! {
            let mut slow_chunks = slow_chunks;
            let mut sender = Some(sender);
            while let Some(chunk) = slow_chunks.next().await {
                if let Some(s) = &sender {
                    let copy = match &chunk {
                        Ok(data) => Ok(data.clone()),
                        Err(e) => Err(Status::new(e.code(), e.message().to_string())),
                    };
                    if s.send(copy).await.is_err() {
                        // `fast` gave up; keep serving the caller.
                        sender = None;
                    }
                }
                let failed = chunk.is_err();
                yield chunk;
                if failed {
                    return;
                }
            }
        };
        Ok(teed.boxed())
    }

    async fn put_stream(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
        chunks: ChunkStream,
    ) -> Result<(), Status> {
        self.slow.put_stream(instance, digest, chunks).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobstore::{GrpcContentAddressableStorage, MemoryContentAddressableStorage};
    use crate::digest::DigestFunction;
    use crate::testutil::BlobstoreServer;
    use futures::TryStreamExt;

    struct Fixture {
        slow: Arc<MemoryContentAddressableStorage>,
        fast: Arc<MemoryContentAddressableStorage>,
        cas: ReadCachingContentAddressableStorage,
    }

    fn fixture() -> Fixture {
        let slow = Arc::new(MemoryContentAddressableStorage::new(1 << 30));
        let fast = Arc::new(MemoryContentAddressableStorage::new(1 << 30));
        let cas = ReadCachingContentAddressableStorage::new(slow.clone(), fast.clone());
        Fixture { slow, fast, cas }
    }

    fn inst() -> Instance {
        Instance::new("", DigestFunction::Sha256)
    }

    #[tokio::test]
    async fn read_from_slow_fills_fast() {
        let f = fixture();
        let data = Bytes::from_static(b"blob");
        let digest = DigestFunction::Sha256.digest_of(&data);
        f.slow.put(&inst(), &digest, data.clone()).await.unwrap();

        assert_eq!(f.cas.get(&inst(), &digest).await.unwrap(), data);
        assert_eq!(f.fast.get(&inst(), &digest).await.unwrap(), data);

        // Served by fast from now on, even once slow lost it.
        assert!(f.slow.remove(&inst(), &digest));
        assert_eq!(f.cas.get(&inst(), &digest).await.unwrap(), data);
    }

    #[tokio::test]
    async fn streamed_read_from_slow_fills_fast() {
        let f = fixture();
        let data = Bytes::from(vec![7u8; 100_000]);
        let digest = DigestFunction::Sha256.digest_of(&data);
        f.slow.put(&inst(), &digest, data.clone()).await.unwrap();

        let chunks = f
            .cas
            .get_stream(&inst(), &digest)
            .await
            .unwrap()
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
        assert_eq!(chunks.concat(), data);
        // The copy into fast runs beside the reader; let it finish.
        for _ in 0..1000 {
            if !f.fast.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(f.fast.get(&inst(), &digest).await.unwrap(), data);
    }

    #[tokio::test]
    async fn writes_go_to_slow_only() {
        let f = fixture();
        let data = Bytes::from_static(b"written");
        let digest = DigestFunction::Sha256.digest_of(&data);
        f.cas.put(&inst(), &digest, data.clone()).await.unwrap();
        let batched = Bytes::from_static(b"batched");
        let batched_digest = DigestFunction::Sha256.digest_of(&batched);
        f.cas
            .put_batch(&inst(), vec![(batched_digest.clone(), batched)])
            .await
            .unwrap();
        let streamed = Bytes::from_static(b"streamed");
        let streamed_digest = DigestFunction::Sha256.digest_of(&streamed);
        f.cas
            .put_stream(
                &inst(),
                &streamed_digest,
                futures::stream::iter([Ok(streamed)]).boxed(),
            )
            .await
            .unwrap();
        assert!(f.fast.is_empty());
        assert_eq!(f.slow.len(), 3);
    }

    #[tokio::test]
    async fn find_missing_asks_slow() {
        let f = fixture();
        let data = Bytes::from_static(b"only in fast");
        let digest = DigestFunction::Sha256.digest_of(&data);
        f.fast.put(&inst(), &digest, data).await.unwrap();
        assert_eq!(
            f.cas
                .find_missing(&inst(), vec![digest.clone()])
                .await
                .unwrap(),
            vec![digest]
        );
    }

    #[tokio::test]
    async fn missing_everywhere_is_not_found() {
        let f = fixture();
        let digest = DigestFunction::Sha256.digest_of(b"nowhere");
        let err = f.cas.get(&inst(), &digest).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        let err = f.cas.get_stream(&inst(), &digest).await.err().unwrap();
        assert_eq!(err.code(), Code::NotFound);
        assert!(f.fast.is_empty());
    }

    #[tokio::test]
    async fn other_errors_of_fast_are_returned() {
        let server = BlobstoreServer::start_in_memory().await;
        let fast = Arc::new(GrpcContentAddressableStorage::new(
            server.channel(),
            4 << 20,
        ));
        let slow = Arc::new(MemoryContentAddressableStorage::new(1 << 20));
        let cas = ReadCachingContentAddressableStorage::new(slow.clone(), fast);
        let data = Bytes::from_static(b"blob");
        let digest = DigestFunction::Sha256.digest_of(&data);
        slow.put(&inst(), &digest, data).await.unwrap();
        server.fail_next("BatchReadBlobs", Status::unavailable("Cache is down"));
        let err = cas.get(&inst(), &digest).await.unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(
            err.message(),
            format!(
                "Failed to read blob {}: Cache is down",
                crate::digest::display(&digest)
            )
        );
    }
}
