//! Which replica owns a key: rendezvous (highest random weight) hashing over the
//! replicas that are up. Every replica that sees the same set of replicas picks the same
//! owner, with no coordination; when a replica leaves, only the keys it owned move, each
//! to the replica that scored second for it (docs/design/fleet.md#choosing-the-owner).

use sha2::{Digest, Sha256};

/// The score of `replica` for `key`: the first 8 bytes of SHA-256 over both, with a
/// separator so that no two (replica, key) pairs hash the same input.
pub fn score(replica: &str, key: &str) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update((replica.len() as u64).to_be_bytes());
    hasher.update(replica.as_bytes());
    hasher.update(key.as_bytes());
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The owner of `key` among `replicas`: the highest score, ties broken by the smaller
/// address. `None` when there are no replicas.
pub fn owner<'a>(replicas: impl IntoIterator<Item = &'a str>, key: &str) -> Option<&'a str> {
    replicas
        .into_iter()
        .map(|r| (score(r, key), std::cmp::Reverse(r), r))
        .max()
        .map(|(_, _, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const REPLICAS: [&str; 3] = ["10.0.0.1:8983", "10.0.0.2:8983", "10.0.0.3:8983"];

    fn keys() -> impl Iterator<Item = String> {
        (0..3000).map(|i| format!("key-{i}"))
    }

    #[test]
    fn the_owner_does_not_depend_on_the_order_replicas_are_listed_in() {
        let mut reversed = REPLICAS;
        reversed.reverse();
        for key in keys() {
            assert_eq!(owner(REPLICAS, &key), owner(reversed, &key));
        }
    }

    #[test]
    fn keys_are_spread_over_all_replicas() {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for key in keys() {
            *counts.entry(owner(REPLICAS, &key).unwrap()).or_default() += 1;
        }
        // 1000 each on average; binomial standard deviation ≈ 26.
        for replica in REPLICAS {
            let n = counts[replica];
            assert!((850..=1150).contains(&n), "{replica} owns {n} of 3000 keys");
        }
    }

    #[test]
    fn when_a_replica_leaves_only_its_keys_move() {
        let remaining = &REPLICAS[..2];
        for key in keys() {
            let before = owner(REPLICAS, &key).unwrap();
            let after = owner(remaining.iter().copied(), &key).unwrap();
            if before != REPLICAS[2] {
                assert_eq!(before, after, "{key} moved although its owner stayed");
            }
        }
    }

    #[test]
    fn no_replicas_no_owner() {
        assert_eq!(owner([], "key"), None);
        assert_eq!(owner(["a:1"], "key"), Some("a:1"));
    }
}
