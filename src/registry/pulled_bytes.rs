//! Bytes pulled from each registry host (manifests, configs and blobs), for metrics.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// A counter per registry host, keyed by the host as contacted (a mirror counts for itself).
#[derive(Debug, Default)]
pub struct PulledBytes {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl PulledBytes {
    /// The counter of `host`, created on first use. Streams hold it to count as they go.
    pub fn counter(&self, host: &str) -> Arc<AtomicU64> {
        self.counters
            .lock()
            .entry(host.to_owned())
            .or_default()
            .clone()
    }

    /// Adds `bytes` to the counter of `host`.
    pub fn add(&self, host: &str, bytes: u64) {
        self.counter(host).fetch_add(bytes, Ordering::Relaxed);
    }

    /// The bytes pulled from `host` so far.
    pub fn get(&self, host: &str) -> u64 {
        self.counters
            .lock()
            .get(host)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// All counters, by host.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.counters
            .lock()
            .iter()
            .map(|(host, c)| (host.clone(), c.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_host() {
        let p = PulledBytes::default();
        p.add("a:1", 5);
        p.counter("a:1").fetch_add(2, Ordering::Relaxed);
        p.add("b", 1);
        assert_eq!(p.get("a:1"), 7);
        assert_eq!(p.get("c"), 0);
        assert_eq!(
            p.snapshot().into_iter().collect::<Vec<_>>(),
            vec![("a:1".into(), 7), ("b".into(), 1)]
        );
    }
}
