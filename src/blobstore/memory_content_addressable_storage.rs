//! The embedded in-memory CAS (`memory: { maximumSizeBytes }`), the default for local use
//! and for tests. It evicts the least recently used blobs once `maximumSizeBytes` is
//! exceeded, like a Buildbarn `local` store that fits in memory. Blobs are keyed by
//! digest function and digest only: as in bb_storage, the CAS is shared between instance
//! names.

use super::{ContentAddressableStorage, Instance};
use crate::digest::DigestFunction;
use crate::proto::reapi;
use crate::util::bounded_cache::BoundedCache;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use tonic::Status;

type Key = (DigestFunction, String, i64);

pub struct MemoryContentAddressableStorage {
    maximum_size_bytes: u64,
    /// Blobs costing their size; reads, existence checks and writes of a blob held
    /// make it most recently used.
    blobs: Mutex<BoundedCache<Key, Bytes>>,
}

impl MemoryContentAddressableStorage {
    pub fn new(maximum_size_bytes: u64) -> Self {
        Self {
            maximum_size_bytes,
            blobs: Mutex::new(BoundedCache::with_max_cost(maximum_size_bytes)),
        }
    }

    /// Number of blobs held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.blobs.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes a blob, as an eviction would (for tests).
    pub fn remove(&self, instance: &Instance, digest: &reapi::Digest) -> bool {
        self.blobs.lock().remove(&key(instance, digest)).is_some()
    }
}

fn key(instance: &Instance, digest: &reapi::Digest) -> Key {
    (
        instance.digest_function,
        digest.hash.clone(),
        digest.size_bytes,
    )
}

#[async_trait]
impl ContentAddressableStorage for MemoryContentAddressableStorage {
    async fn find_missing(
        &self,
        instance: &Instance,
        digests: Vec<reapi::Digest>,
    ) -> Result<Vec<reapi::Digest>, Status> {
        let mut blobs = self.blobs.lock();
        let empty = instance.digest_function.empty_digest();
        Ok(digests
            .into_iter()
            .filter(|d| *d != empty && blobs.get(&key(instance, d)).is_none())
            .collect())
    }

    async fn get(&self, instance: &Instance, digest: &reapi::Digest) -> Result<Bytes, Status> {
        if digest.size_bytes == 0 {
            return Ok(Bytes::new());
        }
        self.blobs
            .lock()
            .get(&key(instance, digest))
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!("Blob {} not found", crate::digest::display(digest)))
            })
    }

    async fn put(
        &self,
        instance: &Instance,
        digest: &reapi::Digest,
        data: Bytes,
    ) -> Result<(), Status> {
        // Only the size is checked: the writers are this process's own code, which
        // computed each digest from the data it writes, and hashing every blob once more
        // would cost as much as ingesting it (a server, such as the test fake, checks
        // what its clients upload before it stores it).
        super::verify_size(digest, data.len() as i64)?;
        let len = data.len() as u64;
        if len > self.maximum_size_bytes {
            return Err(Status::resource_exhausted(format!(
                "Blob {} is larger than the in-memory CAS ({} bytes)",
                crate::digest::display(digest),
                self.maximum_size_bytes
            )));
        }
        let mut blobs = self.blobs.lock();
        let k = key(instance, digest);
        if blobs.get(&k).is_none() {
            blobs.insert(k, data, len);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst() -> Instance {
        Instance::new("", DigestFunction::Sha256)
    }

    #[tokio::test]
    async fn put_get_find_missing() {
        let cas = MemoryContentAddressableStorage::new(1 << 20);
        let d = DigestFunction::Sha256.digest_of(b"hello");
        assert_eq!(
            cas.find_missing(&inst(), vec![d.clone()]).await.unwrap(),
            vec![d.clone()]
        );
        cas.put(&inst(), &d, Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert!(cas
            .find_missing(&inst(), vec![d.clone()])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(&cas.get(&inst(), &d).await.unwrap()[..], b"hello");
    }

    #[tokio::test]
    async fn rejects_content_not_matching_the_digest_size() {
        let cas = MemoryContentAddressableStorage::new(1 << 20);
        let d = DigestFunction::Sha256.digest_of(b"hello");
        let err = cas
            .put(&inst(), &d, Bytes::from_static(b"hello!"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.message(),
            "Buffer is 6 bytes in size, while 5 bytes were expected"
        );
        assert!(cas.get(&inst(), &d).await.is_err());
    }

    #[tokio::test]
    async fn missing_blob_is_not_found_and_empty_blob_always_exists() {
        let cas = MemoryContentAddressableStorage::new(1 << 20);
        let d = DigestFunction::Sha256.digest_of(b"x");
        assert_eq!(
            cas.get(&inst(), &d).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        let e = DigestFunction::Sha256.empty_digest();
        assert!(cas
            .find_missing(&inst(), vec![e.clone()])
            .await
            .unwrap()
            .is_empty());
        assert!(cas.get(&inst(), &e).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn evicts_least_recently_used() {
        let cas = MemoryContentAddressableStorage::new(10);
        let f = DigestFunction::Sha256;
        let (a, b, c) = (
            f.digest_of(b"aaaa"),
            f.digest_of(b"bbbb"),
            f.digest_of(b"cccc"),
        );
        cas.put(&inst(), &a, Bytes::from_static(b"aaaa"))
            .await
            .unwrap();
        cas.put(&inst(), &b, Bytes::from_static(b"bbbb"))
            .await
            .unwrap();
        cas.get(&inst(), &a).await.unwrap(); // a is now more recent than b
        cas.put(&inst(), &c, Bytes::from_static(b"cccc"))
            .await
            .unwrap();
        assert_eq!(
            cas.find_missing(&inst(), vec![a.clone(), b.clone(), c.clone()])
                .await
                .unwrap(),
            vec![b]
        );
    }
}
