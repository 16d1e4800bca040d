//! A local, size-bounded cache of decoded `Directory` messages by digest, in front of the
//! CAS. Grafting an action's input root onto a cached image reads the same few image
//! directories (the root, the mount point's parents) for every action; with this cache
//! they are read from the CAS once per process, not once per action.

use super::directory_source::{CasDirectorySource, DirectorySource};
use crate::blobstore::{ContentAddressableStorage, Instance};
use crate::digest::DigestFunction;
use crate::proto::reapi;
use crate::util::bounded_cache::BoundedCache;
use async_trait::async_trait;
use parking_lot::Mutex;
use prost::Message;
use std::sync::Arc;
use tonic::Status;

type Key = (DigestFunction, String, i64);

/// The cache itself, shared by all instances: least recently read first, each
/// directory costing its encoded size plus 64 bytes.
pub struct DirectoryCache {
    entries: Mutex<BoundedCache<Key, Arc<reapi::Directory>>>,
}

impl DirectoryCache {
    pub fn new(maximum_size_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(BoundedCache::with_max_cost(maximum_size_bytes)),
        })
    }

    fn get(&self, key: &Key) -> Option<Arc<reapi::Directory>> {
        self.entries.lock().get(key).cloned()
    }

    /// Adds a directory (e.g. one just written by a merge). One already cached keeps its
    /// place in the eviction order.
    pub fn insert(
        &self,
        function: DigestFunction,
        digest: &reapi::Digest,
        directory: Arc<reapi::Directory>,
    ) {
        let key = (function, digest.hash.clone(), digest.size_bytes);
        let size = directory.encoded_len() as u64 + 64;
        let mut entries = self.entries.lock();
        if !entries.contains_key(&key) {
            entries.insert(key, directory, size);
        }
    }

    /// Drops every cached directory.
    pub fn clear(&self) {
        self.entries.lock().clear();
    }

    /// A directory source for one instance that reads through this cache.
    pub fn source(
        self: &Arc<Self>,
        cas: Arc<dyn ContentAddressableStorage>,
        instance: Instance,
    ) -> CachingDirectorySource {
        CachingDirectorySource {
            cache: self.clone(),
            backend: CasDirectorySource::new(cas, instance.clone()),
            function: instance.digest_function,
        }
    }
}

/// Reads Directories through a [`DirectoryCache`].
pub struct CachingDirectorySource {
    cache: Arc<DirectoryCache>,
    backend: CasDirectorySource,
    function: DigestFunction,
}

#[async_trait]
impl DirectorySource for CachingDirectorySource {
    async fn get_directory(&self, digest: &reapi::Digest) -> Result<Arc<reapi::Directory>, Status> {
        let key = (self.function, digest.hash.clone(), digest.size_bytes);
        if let Some(directory) = self.cache.get(&key) {
            crate::image::metrics::cache_lookup("directory", "hit");
            return Ok(directory);
        }
        crate::image::metrics::cache_lookup("directory", "miss");
        let directory = self.backend.get_directory(digest).await?;
        self.cache.insert(self.function, digest, directory.clone());
        Ok(directory)
    }

    fn digest_function(&self) -> DigestFunction {
        self.function
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobstore::{put_message, MemoryContentAddressableStorage};

    impl DirectoryCache {
        /// Number of cached directories.
        fn len(&self) -> usize {
            self.entries.lock().len()
        }

        fn is_empty(&self) -> bool {
            self.len() == 0
        }
    }

    #[tokio::test]
    async fn second_read_does_not_reach_the_cas() {
        let instance = Instance::new("", DigestFunction::Sha256);
        let cas = Arc::new(MemoryContentAddressableStorage::new(1 << 20));
        let directory = reapi::Directory {
            symlinks: vec![reapi::SymlinkNode {
                name: "lib".into(),
                target: "usr/lib".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let digest = put_message(&*cas, &instance, &directory).await.unwrap();
        let cache = DirectoryCache::new(1 << 20);
        let source = cache.source(cas.clone(), instance.clone());
        assert_eq!(*source.get_directory(&digest).await.unwrap(), directory);
        assert!(cas.remove(&instance, &digest));
        assert_eq!(*source.get_directory(&digest).await.unwrap(), directory);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn evicts_beyond_its_size() {
        let cache = DirectoryCache::new(200);
        let f = DigestFunction::Sha256;
        for i in 0..10 {
            let d = reapi::Directory {
                symlinks: vec![reapi::SymlinkNode {
                    name: format!("l{i}"),
                    target: "t".into(),
                    ..Default::default()
                }],
                ..Default::default()
            };
            let (digest, _) = crate::digest::encode_message(f, &d);
            cache.insert(f, &digest, Arc::new(d));
        }
        assert!(cache.len() < 10 && !cache.is_empty());
    }
}
