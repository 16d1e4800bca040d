//! The embedded in-memory CAS (`memory: { maximumSizeBytes }`), the default for local use
//! and for tests. It evicts the least recently used blobs once `maximumSizeBytes` is
//! exceeded, like a Buildbarn `local` store that fits in memory. Blobs are keyed by
//! digest function and digest only: as in bb_storage, the CAS is shared between instance
//! names.

use super::{verify_blob, ContentAddressableStorage, Instance};
use crate::digest::DigestFunction;
use crate::proto::reapi;
use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use tonic::Status;

type Key = (DigestFunction, String, i64);

struct Lru {
    blobs: HashMap<Key, (Bytes, u64)>,
    order: BTreeMap<u64, Key>,
    tick: u64,
    size: u64,
}

pub struct MemoryContentAddressableStorage {
    maximum_size_bytes: u64,
    state: Mutex<Lru>,
}

impl MemoryContentAddressableStorage {
    pub fn new(maximum_size_bytes: u64) -> Self {
        Self {
            maximum_size_bytes,
            state: Mutex::new(Lru {
                blobs: HashMap::new(),
                order: BTreeMap::new(),
                tick: 0,
                size: 0,
            }),
        }
    }

    /// Number of blobs held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.state.lock().blobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes a blob, as an eviction would (for tests).
    pub fn remove(&self, instance: &Instance, digest: &reapi::Digest) -> bool {
        let mut s = self.state.lock();
        let key = key(instance, digest);
        if let Some((data, tick)) = s.blobs.remove(&key) {
            s.order.remove(&tick);
            s.size -= data.len() as u64;
            true
        } else {
            false
        }
    }
}

fn key(instance: &Instance, digest: &reapi::Digest) -> Key {
    (
        instance.digest_function,
        digest.hash.clone(),
        digest.size_bytes,
    )
}

impl Lru {
    fn touch(&mut self, key: &Key) -> Option<Bytes> {
        self.tick += 1;
        let tick = self.tick;
        let (data, old) = self.blobs.get_mut(key)?;
        let data = data.clone();
        let old = std::mem::replace(old, tick);
        self.order.remove(&old);
        self.order.insert(tick, key.clone());
        Some(data)
    }
}

#[async_trait]
impl ContentAddressableStorage for MemoryContentAddressableStorage {
    async fn find_missing(
        &self,
        instance: &Instance,
        digests: Vec<reapi::Digest>,
    ) -> Result<Vec<reapi::Digest>, Status> {
        let mut s = self.state.lock();
        let empty = instance.digest_function.empty_digest();
        Ok(digests
            .into_iter()
            .filter(|d| *d != empty && s.touch(&key(instance, d)).is_none())
            .collect())
    }

    async fn get(&self, instance: &Instance, digest: &reapi::Digest) -> Result<Bytes, Status> {
        if digest.size_bytes == 0 {
            return Ok(Bytes::new());
        }
        self.state
            .lock()
            .touch(&key(instance, digest))
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
        verify_blob(instance.digest_function, digest, &data)?;
        let len = data.len() as u64;
        if len > self.maximum_size_bytes {
            return Err(Status::resource_exhausted(format!(
                "Blob {} is larger than the in-memory CAS ({} bytes)",
                crate::digest::display(digest),
                self.maximum_size_bytes
            )));
        }
        let mut s = self.state.lock();
        let k = key(instance, digest);
        if s.touch(&k).is_some() {
            return Ok(());
        }
        while s.size + len > self.maximum_size_bytes {
            let Some((_, oldest)) = s.order.pop_first() else {
                break;
            };
            if let Some((d, _)) = s.blobs.remove(&oldest) {
                s.size -= d.len() as u64;
            }
        }
        s.tick += 1;
        let tick = s.tick;
        s.order.insert(tick, k.clone());
        s.blobs.insert(k, (data, tick));
        s.size += len;
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
    async fn rejects_content_not_matching_digest() {
        let cas = MemoryContentAddressableStorage::new(1 << 20);
        let d = DigestFunction::Sha256.digest_of(b"hello");
        let err = cas
            .put(&inst(), &d, Bytes::from_static(b"hellO"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().starts_with("Buffer has checksum"));
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
