//! The embedded in-memory Action Cache. Unlike the CAS, entries are keyed by instance
//! name too: the same action may have different results on different instances.
//! Entries are evicted oldest first (by when they were last written; reads do not
//! count) once the encoded results together exceed `maximumSizeBytes`.

use super::{ActionCache, Instance};
use crate::digest::DigestFunction;
use crate::proto::reapi;
use crate::util::bounded_cache::BoundedCache;
use async_trait::async_trait;
use parking_lot::Mutex;
use prost::Message;
use tonic::Status;

type Key = (String, DigestFunction, String, i64);

pub struct MemoryActionCache {
    /// Results costing their encoded size, read with `peek` so that the least recently
    /// written goes first.
    results: Mutex<BoundedCache<Key, reapi::ActionResult>>,
}

impl MemoryActionCache {
    pub fn new(maximum_size_bytes: u64) -> Self {
        Self {
            results: Mutex::new(BoundedCache::with_max_cost(maximum_size_bytes)),
        }
    }

    /// Number of entries (for tests).
    pub fn len(&self) -> usize {
        self.results.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
impl ActionCache for MemoryActionCache {
    async fn get_action_result(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
    ) -> Result<reapi::ActionResult, Status> {
        self.results
            .lock()
            .peek(&key(instance, action_digest))
            .cloned()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "Action result {} not found",
                    crate::digest::display(action_digest)
                ))
            })
    }

    async fn put_action_result(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
        result: reapi::ActionResult,
    ) -> Result<(), Status> {
        let size = result.encoded_len() as u64;
        self.results
            .lock()
            .insert(key(instance, action_digest), result, size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keyed_by_instance_name() {
        let ac = MemoryActionCache::new(1 << 20);
        let d = DigestFunction::Sha256.digest_of(b"action");
        let a = Instance::new("a", DigestFunction::Sha256);
        let b = Instance::new("b", DigestFunction::Sha256);
        let r = reapi::ActionResult {
            exit_code: 3,
            ..Default::default()
        };
        ac.put_action_result(&a, &d, r.clone()).await.unwrap();
        assert_eq!(ac.get_action_result(&a, &d).await.unwrap(), r);
        assert_eq!(
            ac.get_action_result(&b, &d).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
    }

    #[tokio::test]
    async fn evicts_the_least_recently_written_first() {
        let i = Instance::new("", DigestFunction::Sha256);
        let result = |exit_code| reapi::ActionResult {
            exit_code,
            ..Default::default()
        };
        let size = result(1).encoded_len() as u64;
        let ac = MemoryActionCache::new(2 * size);
        let [a, b, c] = [b"a", b"b", b"c"].map(|d| DigestFunction::Sha256.digest_of(d));
        ac.put_action_result(&i, &a, result(1)).await.unwrap();
        ac.put_action_result(&i, &b, result(2)).await.unwrap();
        // Reading a does not keep it; rewriting b makes it the newest, once.
        ac.get_action_result(&i, &a).await.unwrap();
        ac.put_action_result(&i, &b, result(3)).await.unwrap();
        assert_eq!(ac.len(), 2);
        ac.put_action_result(&i, &c, result(4)).await.unwrap();
        assert!(ac.get_action_result(&i, &a).await.is_err());
        assert_eq!(ac.get_action_result(&i, &b).await.unwrap(), result(3));
        assert_eq!(ac.get_action_result(&i, &c).await.unwrap(), result(4));
    }
}
