//! A CAS decorator that remembers, for a while, which blobs are known to exist, so that
//! `find_missing` only asks the backend about the others (bb-storage's
//! `existenceCaching`).
//!
//! Why it exists: the expander checks the same blobs over and over. Every action that
//! uses an image makes it verify that the image's merged tree (often tens of thousands
//! of Directories and files) is still in the CAS before forwarding the action, and the
//! answer is nearly always "all present". Caching positive answers for a short time
//! turns those FindMissingBlobs calls into memory lookups.
//!
//! Only presence is cached, never absence: a blob reported missing may be uploaded a
//! moment later by someone else. Entries come from `find_missing` answers and from
//! successful reads and writes, and expire `cache_duration` after they were learnt
//! (hits do not extend them), which must stay well below the time the CAS keeps blobs
//! after they were last touched. The cache holds at most `cache_size` digests and drops
//! the least recently used one first. Entries are per instance name and digest function,
//! because backends may keep instances apart.

use super::{ChunkStream, ContentAddressableStorage, Instance};
use crate::digest::DigestFunction;
use crate::proto::reapi;
use crate::util::bounded_cache::BoundedCache;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::Status;

/// A source of the current time, so that expiry can be tested without sleeping (see
/// `testutil::ManualClock`).
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

type Key = (String, DigestFunction, String, i64);

pub(crate) struct ExistenceCachingContentAddressableStorage {
    backend: Arc<dyn ContentAddressableStorage>,
    cache_duration: Duration,
    clock: Arc<dyn Clock>,
    /// Known to exist until each entry's deadline; a hit refreshes an entry's place in
    /// the eviction order, not its deadline.
    cache: Mutex<BoundedCache<Key, ()>>,
}

impl ExistenceCachingContentAddressableStorage {
    /// Caches up to `cache_size` digests for `cache_duration` each, on the system clock.
    pub fn new(
        backend: Arc<dyn ContentAddressableStorage>,
        cache_size: usize,
        cache_duration: Duration,
    ) -> Self {
        Self::with_clock(backend, cache_size, cache_duration, Arc::new(SystemClock))
    }

    pub(crate) fn with_clock(
        backend: Arc<dyn ContentAddressableStorage>,
        cache_size: usize,
        cache_duration: Duration,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            backend,
            cache_duration,
            clock,
            cache: Mutex::new(BoundedCache::with_max_entries(cache_size)),
        }
    }

    /// Number of digests currently remembered (expired ones included until looked up or
    /// evicted).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cache.lock().len()
    }

    /// Remembers that `digests` existed at `seen_at`.
    fn remember<'a>(
        &self,
        instance: &Instance,
        digests: impl IntoIterator<Item = &'a reapi::Digest>,
        seen_at: Instant,
    ) {
        let expiry = seen_at + self.cache_duration;
        let mut cache = self.cache.lock();
        for digest in digests {
            cache.insert_until(key(instance, digest), (), 0, Some(expiry));
        }
    }
}

fn key(instance: &Instance, digest: &reapi::Digest) -> Key {
    (
        instance.name.clone(),
        instance.digest_function,
        digest.hash.clone(),
        digest.size_bytes,
    )
}

#[async_trait]
impl ContentAddressableStorage for ExistenceCachingContentAddressableStorage {
    async fn find_missing(
        &self,
        instance: &Instance,
        digests: Vec<reapi::Digest>,
    ) -> Result<Vec<reapi::Digest>, Status> {
        // The time is taken before asking, so entries never outlive what the backend
        // actually said.
        let now = self.clock.now();
        let unknown = {
            let mut cache = self.cache.lock();
            digests
                .into_iter()
                .filter(|d| cache.get_unexpired(&key(instance, d), now).is_none())
                .collect::<Vec<_>>()
        };
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        let missing = self.backend.find_missing(instance, unknown.clone()).await?;
        let missing_set = missing
            .iter()
            .map(|d| (d.hash.as_str(), d.size_bytes))
            .collect::<HashSet<_>>();
        self.remember(
            instance,
            unknown
                .iter()
                .filter(|d| !missing_set.contains(&(d.hash.as_str(), d.size_bytes))),
            now,
        );
        Ok(missing)
    }

    async fn get(&self, instance: &Instance, digest: &reapi::Digest) -> Result<Bytes, Status> {
        let now = self.clock.now();
        let data = self.backend.get(instance, digest).await?;
        self.remember(instance, [digest], now);
        Ok(data)
    }

    async fn get_batch(
        &self,
        instance: &Instance,
        digests: Vec<reapi::Digest>,
    ) -> Vec<Result<Bytes, Status>> {
        let now = self.clock.now();
        let results = self.backend.get_batch(instance, digests.clone()).await;
        self.remember(
            instance,
            digests
                .iter()
                .zip(&results)
                .filter(|(_, r)| r.is_ok())
                .map(|(d, _)| d),
            now,
        );
        results
    }

    async fn put(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
        data: Bytes,
    ) -> Result<(), Status> {
        let now = self.clock.now();
        self.backend.put(instance, digest, data).await?;
        self.remember(instance, [digest], now);
        Ok(())
    }

    async fn put_batch(
        &self,
        instance: &Instance,
        blobs: Vec<(reapi::Digest, Bytes)>,
    ) -> Result<(), Status> {
        let now = self.clock.now();
        let digests = blobs.iter().map(|(d, _)| d.clone()).collect::<Vec<_>>();
        self.backend.put_batch(instance, blobs).await?;
        self.remember(instance, &digests, now);
        Ok(())
    }

    async fn get_stream(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
    ) -> Result<ChunkStream, Status> {
        // A stream that opened means the backend has the blob.
        let now = self.clock.now();
        let chunks = self.backend.get_stream(instance, digest).await?;
        self.remember(instance, [digest], now);
        Ok(chunks)
    }

    async fn put_stream(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
        chunks: ChunkStream,
    ) -> Result<(), Status> {
        let now = self.clock.now();
        self.backend.put_stream(instance, digest, chunks).await?;
        self.remember(instance, [digest], now);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobstore::GrpcContentAddressableStorage;
    use crate::testutil::{BlobstoreServer, ManualClock};
    use tonic::Code;

    const DURATION: Duration = Duration::from_secs(60);

    struct Fixture {
        server: BlobstoreServer,
        clock: Arc<ManualClock>,
        cas: ExistenceCachingContentAddressableStorage,
    }

    /// The decorator over a gRPC backend, so that backend calls can be counted.
    async fn fixture(cache_size: usize) -> Fixture {
        let server = BlobstoreServer::start_in_memory_serving(&["", "other"]).await;
        let clock = Arc::new(ManualClock::new());
        let backend = Arc::new(GrpcContentAddressableStorage::new(
            server.channel(),
            4 << 20,
        ));
        let cas = ExistenceCachingContentAddressableStorage::with_clock(
            backend,
            cache_size,
            DURATION,
            clock.clone(),
        );
        Fixture { server, clock, cas }
    }

    fn inst() -> Instance {
        Instance::new("", DigestFunction::Sha256)
    }

    async fn store(server: &BlobstoreServer, data: &'static [u8]) -> reapi::Digest {
        let digest = DigestFunction::Sha256.digest_of(data);
        server
            .cas()
            .put(&inst(), &digest, Bytes::from_static(data))
            .await
            .unwrap();
        digest
    }

    #[tokio::test]
    async fn find_missing_skips_recently_seen_blobs_until_they_expire() {
        let f = fixture(100).await;
        let present = store(&f.server, b"present").await;
        let absent = DigestFunction::Sha256.digest_of(b"absent");

        let missing = f
            .cas
            .find_missing(&inst(), vec![present.clone(), absent.clone()])
            .await
            .unwrap();
        assert_eq!(missing, vec![absent.clone()]);
        assert_eq!(f.server.calls("FindMissingBlobs"), 1);

        // Known to exist: the backend is not asked.
        f.clock.advance(DURATION - Duration::from_secs(1));
        assert!(f
            .cas
            .find_missing(&inst(), vec![present.clone()])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(f.server.calls("FindMissingBlobs"), 1);

        // Absence is never cached.
        assert_eq!(
            f.cas
                .find_missing(&inst(), vec![present.clone(), absent.clone()])
                .await
                .unwrap(),
            vec![absent]
        );
        assert_eq!(f.server.calls("FindMissingBlobs"), 2);

        // Expired: asked again (hits did not extend the entry).
        f.clock.advance(Duration::from_secs(1));
        assert!(f
            .cas
            .find_missing(&inst(), vec![present])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(f.server.calls("FindMissingBlobs"), 3);
    }

    #[tokio::test]
    async fn writes_and_reads_are_remembered() {
        let f = fixture(100).await;
        let written = DigestFunction::Sha256.digest_of(b"written");
        f.cas
            .put(&inst(), &written, Bytes::from_static(b"written"))
            .await
            .unwrap();
        let batched = DigestFunction::Sha256.digest_of(b"batched");
        f.cas
            .put_batch(
                &inst(),
                vec![(batched.clone(), Bytes::from_static(b"batched"))],
            )
            .await
            .unwrap();
        let read = store(&f.server, b"read").await;
        f.cas.get(&inst(), &read).await.unwrap();

        assert!(f
            .cas
            .find_missing(&inst(), vec![written, batched, read])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(f.server.calls("FindMissingBlobs"), 0);
    }

    #[tokio::test]
    async fn batch_reads_are_one_request_and_remember_what_was_found() {
        let f = fixture(100).await;
        let a = store(&f.server, b"a").await;
        let b = store(&f.server, b"b").await;
        let missing = DigestFunction::Sha256.digest_of(b"missing");
        let results = f
            .cas
            .get_batch(&inst(), vec![a.clone(), missing.clone(), b.clone()])
            .await;
        assert_eq!(f.server.calls("BatchReadBlobs"), 1);
        assert_eq!(results[0].as_ref().unwrap(), &Bytes::from_static(b"a"));
        assert_eq!(results[2].as_ref().unwrap(), &Bytes::from_static(b"b"));
        let error = results[1].as_ref().unwrap_err();
        assert_eq!(error.code(), Code::NotFound);
        assert!(
            error.message().starts_with("Failed to read blob"),
            "{error:?}"
        );
        assert_eq!(
            f.cas
                .find_missing(&inst(), vec![a, missing.clone(), b])
                .await
                .unwrap(),
            vec![missing]
        );
    }

    #[tokio::test]
    async fn failed_writes_are_not_remembered() {
        let f = fixture(100).await;
        let digest = DigestFunction::Sha256.digest_of(b"data");
        let err = f
            .cas
            .put(&inst(), &digest, Bytes::from_static(b"DATA"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(
            f.cas
                .find_missing(&inst(), vec![digest.clone()])
                .await
                .unwrap(),
            vec![digest]
        );
        assert_eq!(f.server.calls("FindMissingBlobs"), 1);
    }

    #[tokio::test]
    async fn entries_are_per_instance_name_and_digest_function() {
        let f = fixture(100).await;
        let digest = store(&f.server, b"shared").await;
        f.cas
            .find_missing(&inst(), vec![digest.clone()])
            .await
            .unwrap();
        assert_eq!(f.server.calls("FindMissingBlobs"), 1);
        let other = Instance::new("other", DigestFunction::Sha256);
        f.cas.find_missing(&other, vec![digest]).await.unwrap();
        assert_eq!(f.server.calls("FindMissingBlobs"), 2);
    }

    #[tokio::test]
    async fn least_recently_used_entry_is_evicted() {
        let f = fixture(2).await;
        let a = store(&f.server, b"a").await;
        let b = store(&f.server, b"b").await;
        let c = store(&f.server, b"c").await;
        f.cas
            .find_missing(&inst(), vec![a.clone(), b.clone()])
            .await
            .unwrap();
        // Touch a, so that b is the least recently used when c arrives.
        f.cas.find_missing(&inst(), vec![a.clone()]).await.unwrap();
        f.cas.find_missing(&inst(), vec![c.clone()]).await.unwrap();
        assert_eq!(f.server.calls("FindMissingBlobs"), 2);
        assert_eq!(f.cas.len(), 2);

        f.cas
            .find_missing(&inst(), vec![a.clone(), c.clone()])
            .await
            .unwrap();
        assert_eq!(f.server.calls("FindMissingBlobs"), 2);
        f.cas.find_missing(&inst(), vec![b]).await.unwrap();
        assert_eq!(f.server.calls("FindMissingBlobs"), 3);
    }

    #[tokio::test]
    async fn backend_errors_are_returned() {
        let f = fixture(100).await;
        f.server
            .fail_next("FindMissingBlobs", Status::unavailable("Storage is down"));
        let err = f
            .cas
            .find_missing(&inst(), vec![DigestFunction::Sha256.digest_of(b"x")])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(
            err.message(),
            "Failed to find missing blobs: Storage is down"
        );
    }
}
