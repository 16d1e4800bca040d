//! The embedded in-memory Action Cache. Unlike the CAS, entries are keyed by instance
//! name too: the same action may have different results on different instances.
//! Entries are evicted oldest first once the encoded results together exceed
//! `maximumSizeBytes`.

use super::{ActionCache, Instance};
use crate::digest::DigestFunction;
use crate::proto::reapi;
use async_trait::async_trait;
use parking_lot::Mutex;
use prost::Message;
use std::collections::{HashMap, VecDeque};
use tonic::Status;

type Key = (String, DigestFunction, String, i64);

/// Entries, their insertion order (key and encoded size), and the total size.
type State = (HashMap<Key, reapi::ActionResult>, VecDeque<(Key, u64)>, u64);

pub struct MemoryActionCache {
    maximum_size_bytes: u64,
    state: Mutex<State>,
}

impl MemoryActionCache {
    pub fn new(maximum_size_bytes: u64) -> Self {
        Self {
            maximum_size_bytes,
            state: Mutex::new((HashMap::new(), VecDeque::new(), 0)),
        }
    }

    /// Number of entries (for tests).
    pub fn len(&self) -> usize {
        self.state.lock().0.len()
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
        self.state
            .lock()
            .0
            .get(&key(instance, action_digest))
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
        let mut s = self.state.lock();
        let k = key(instance, action_digest);
        s.0.insert(k.clone(), result);
        s.1.push_back((k, size));
        s.2 += size;
        while s.2 > self.maximum_size_bytes {
            let Some((old, sz)) = s.1.pop_front() else {
                break;
            };
            s.2 -= sz;
            // An overwritten entry appears twice in the queue; only its last
            // occurrence owns the map entry.
            if !s.1.iter().any(|(k, _)| *k == old) {
                s.0.remove(&old);
            }
        }
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
}
