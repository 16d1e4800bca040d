//! A map with a capacity and an eviction order, for the process-local caches in front of
//! the CAS, the Action Cache and the registry.
//!
//! The contract:
//! - **Capacity.** At most `max_entries` entries and at most `max_cost` in total cost,
//!   where each entry's cost (bytes, typically) is given when it is inserted. Either
//!   limit may be left unbounded (`usize::MAX`, `u64::MAX`). Caches bounded by count only
//!   insert with cost 0.
//! - **Eviction order.** Least recently used first, where "used" means inserted (a new
//!   key or a replacement) or read with [`get`](BoundedCache::get) or
//!   [`get_unexpired`](BoundedCache::get_unexpired). [`peek`](BoundedCache::peek),
//!   [`peek_mut`](BoundedCache::peek_mut) and [`contains_key`](BoundedCache::contains_key)
//!   leave the order alone, so a cache read only through them evicts in insertion order
//!   (first in, first out).
//! - **Insertion.** Inserting evicts as many least recently used entries as needed for the
//!   new one to fit within both limits. Replacing an existing key replaces its value, cost
//!   and expiry and makes it most recently used. An entry that cannot fit even in an empty
//!   cache (cost above `max_cost`, or `max_entries` 0) is not stored, any entry already
//!   held under its key is removed, and the rest of the cache is left as it was.
//! - **Expiry (optional).** An entry inserted with [`insert_until`](BoundedCache::insert_until)
//!   carries a deadline: [`get_unexpired`](BoundedCache::get_unexpired) at or after it
//!   removes the entry and answers `None`; reading does not extend it. Expired entries not
//!   read again stay (and count against the limits) until evicted, removed or cleared.
//!   Other reads ignore deadlines. Time is passed in by the caller, so that expiry can be
//!   tested on a manual clock.
//! - **Thread-safety** is left to the caller: every method that changes the order takes
//!   `&mut self`; shared caches wrap it in a mutex, usually together with state of their
//!   own.
//!
//! Every operation is O(log n) in the number of entries.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::time::Instant;

struct Entry<V> {
    value: V,
    cost: u64,
    /// Position in `BoundedCache::order`.
    tick: u64,
    expires_at: Option<Instant>,
}

/// A bounded map evicting the least recently used entry first (see the module doc).
pub(crate) struct BoundedCache<K, V> {
    max_entries: usize,
    max_cost: u64,
    entries: HashMap<K, Entry<V>>,
    /// Keys by the tick of their last use, least recently used first.
    order: BTreeMap<u64, K>,
    tick: u64,
    cost: u64,
}

impl<K: Eq + Hash + Clone, V> BoundedCache<K, V> {
    /// A cache of at most `max_entries` entries costing at most `max_cost` together.
    pub(crate) fn new(max_entries: usize, max_cost: u64) -> Self {
        Self {
            max_entries,
            max_cost,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            cost: 0,
        }
    }

    /// A cache bounded by count only.
    pub(crate) fn with_max_entries(max_entries: usize) -> Self {
        Self::new(max_entries, u64::MAX)
    }

    /// A cache bounded by total cost only.
    pub(crate) fn with_max_cost(max_cost: u64) -> Self {
        Self::new(usize::MAX, max_cost)
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Makes the entry under `key`, if any, the most recently used one.
    fn touch<Q>(&mut self, key: &Q) -> Option<&mut Entry<V>>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let tick = self.next_tick();
        let entry = self.entries.get_mut(key)?;
        let old = std::mem::replace(&mut entry.tick, tick);
        let owned = self
            .order
            .remove(&old)
            .expect("every entry is in the order");
        self.order.insert(tick, owned);
        Some(entry)
    }

    /// The value under `key`, made most recently used. Ignores deadlines.
    pub(crate) fn get<Q>(&mut self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.touch(key).map(|e| &e.value)
    }

    /// The value under `key` if its deadline is after `now`, made most recently used; an
    /// expired entry is removed.
    pub(crate) fn get_unexpired<Q>(&mut self, key: &Q, now: Instant) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let expired = self
            .entries
            .get(key)?
            .expires_at
            .is_some_and(|at| now >= at);
        if expired {
            self.remove(key);
            return None;
        }
        self.get(key)
    }

    /// The value under `key`, leaving the order alone. Ignores deadlines.
    pub(crate) fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries.get(key).map(|e| &e.value)
    }

    /// The value under `key` to change in place (its cost and expiry stay), leaving the
    /// order alone. Ignores deadlines.
    pub(crate) fn peek_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries.get_mut(key).map(|e| &mut e.value)
    }

    /// Whether an entry is held under `key`, leaving the order alone. Ignores deadlines.
    pub(crate) fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries.contains_key(key)
    }

    /// Inserts or replaces the entry under `key`, without a deadline. Returns whether it
    /// was stored (it is not if it cannot fit even in an empty cache).
    pub(crate) fn insert(&mut self, key: K, value: V, cost: u64) -> bool {
        self.insert_until(key, value, cost, None)
    }

    /// Inserts or replaces the entry under `key`, expiring at `expires_at` (never if
    /// `None`). Returns whether it was stored.
    pub(crate) fn insert_until(
        &mut self,
        key: K,
        value: V,
        cost: u64,
        expires_at: Option<Instant>,
    ) -> bool {
        self.remove(&key);
        if self.max_entries == 0 || cost > self.max_cost {
            return false;
        }
        while self.entries.len() >= self.max_entries || self.cost + cost > self.max_cost {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(evicted) = self.entries.remove(&oldest) {
                self.cost -= evicted.cost;
            }
        }
        let tick = self.next_tick();
        self.order.insert(tick, key.clone());
        self.entries.insert(
            key,
            Entry {
                value,
                cost,
                tick,
                expires_at,
            },
        );
        self.cost += cost;
        true
    }

    /// Removes and returns the value under `key`.
    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let entry = self.entries.remove(key)?;
        self.order.remove(&entry.tick);
        self.cost -= entry.cost;
        Some(entry.value)
    }

    /// Removes every entry.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.cost = 0;
    }

    /// Number of entries held, expired ones included.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Total cost of the entries held.
    #[cfg(test)]
    pub(crate) fn cost(&self) -> u64 {
        self.cost
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn keys<V>(cache: &BoundedCache<&'static str, V>) -> Vec<&'static str> {
        cache.order.values().copied().collect()
    }

    #[test]
    fn evicts_the_least_recently_inserted_by_count() {
        let mut cache = BoundedCache::with_max_entries(2);
        assert!(cache.insert("a", 1, 0));
        assert!(cache.insert("b", 2, 0));
        assert!(cache.insert("c", 3, 0));
        assert_eq!(keys(&cache), ["b", "c"]);
        assert_eq!(cache.peek("a"), None);
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn get_refreshes_an_entry() {
        let mut cache = BoundedCache::with_max_entries(2);
        cache.insert("a", 1, 0);
        cache.insert("b", 2, 0);
        assert_eq!(cache.get("a"), Some(&1));
        cache.insert("c", 3, 0);
        assert_eq!(keys(&cache), ["a", "c"]);
        assert_eq!(cache.get("b"), None);
    }

    #[test]
    fn peek_peek_mut_and_contains_key_leave_the_order_alone() {
        let mut cache = BoundedCache::with_max_entries(2);
        cache.insert("a", 1, 0);
        cache.insert("b", 2, 0);
        assert_eq!(cache.peek("a"), Some(&1));
        assert!(cache.contains_key("a"));
        *cache.peek_mut("a").unwrap() = 10;
        cache.insert("c", 3, 0);
        assert_eq!(keys(&cache), ["b", "c"]);
        assert!(!cache.contains_key("a"));
    }

    #[test]
    fn cost_is_accounted_and_bounds_the_cache() {
        let mut cache = BoundedCache::with_max_cost(10);
        cache.insert("a", (), 4);
        cache.insert("b", (), 4);
        assert_eq!(cache.cost(), 8);
        // 8 + 3 > 10: a goes.
        cache.insert("c", (), 3);
        assert_eq!(keys(&cache), ["b", "c"]);
        assert_eq!(cache.cost(), 7);
        // Exactly the limit fits, after evicting both.
        cache.insert("d", (), 10);
        assert_eq!(keys(&cache), ["d"]);
        assert_eq!(cache.cost(), 10);
        assert_eq!(cache.remove("d"), Some(()));
        assert_eq!(cache.cost(), 0);
        assert!(cache.is_empty());
    }

    #[test]
    fn both_limits_apply() {
        let mut cache = BoundedCache::new(2, 100);
        cache.insert("a", (), 10);
        cache.insert("b", (), 10);
        cache.insert("c", (), 10);
        assert_eq!(keys(&cache), ["b", "c"]);
        cache.insert("d", (), 95);
        assert_eq!(keys(&cache), ["d"]);
        assert_eq!(cache.cost(), 95);
    }

    #[test]
    fn replacing_a_key_replaces_value_and_cost_and_refreshes_it() {
        let mut cache = BoundedCache::with_max_cost(10);
        cache.insert("a", 1, 4);
        cache.insert("b", 2, 4);
        cache.insert("a", 3, 2);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.cost(), 6);
        assert_eq!(keys(&cache), ["b", "a"]);
        assert_eq!(cache.peek("a"), Some(&3));
        // Replacing does not evict on account of the entry it replaces.
        cache.insert("a", 4, 6);
        assert_eq!(keys(&cache), ["b", "a"]);
        assert_eq!(cache.cost(), 10);
    }

    #[test]
    fn an_entry_that_cannot_fit_is_not_stored_and_drops_its_key() {
        let mut cache = BoundedCache::with_max_cost(10);
        cache.insert("a", 1, 4);
        cache.insert("b", 2, 4);
        assert!(!cache.insert("b", 3, 11));
        assert_eq!(keys(&cache), ["a"]);
        assert_eq!(cache.cost(), 4);

        let mut none = BoundedCache::with_max_entries(0);
        assert!(!none.insert("a", 1, 0));
        assert!(none.is_empty());
    }

    #[test]
    fn clear_empties_the_cache() {
        let mut cache = BoundedCache::new(10, 100);
        cache.insert("a", 1, 5);
        cache.insert("b", 2, 5);
        cache.clear();
        assert!(cache.is_empty());
        assert_eq!(cache.cost(), 0);
        assert!(keys(&cache).is_empty());
        cache.insert("c", 3, 100);
        assert_eq!(cache.get("c"), Some(&3));
    }

    #[test]
    fn expired_entries_are_dropped_when_read_and_reads_do_not_extend_them() {
        let t0 = Instant::now();
        let mut cache = BoundedCache::with_max_entries(10);
        cache.insert_until("a", 1, 0, Some(t0 + Duration::from_secs(10)));
        cache.insert("forever", 2, 0);
        assert_eq!(cache.get_unexpired("a", t0), Some(&1));
        assert_eq!(
            cache.get_unexpired("a", t0 + Duration::from_secs(9)),
            Some(&1)
        );
        // Other reads ignore deadlines.
        assert_eq!(cache.peek("a"), Some(&1));
        assert_eq!(cache.get_unexpired("a", t0 + Duration::from_secs(10)), None);
        assert!(!cache.contains_key("a"));
        assert_eq!(
            cache.get_unexpired("forever", t0 + Duration::from_secs(1 << 30)),
            Some(&2)
        );
    }

    #[test]
    fn expired_entries_count_until_evicted_and_replacement_renews_the_deadline() {
        let t0 = Instant::now();
        let later = t0 + Duration::from_secs(10);
        let mut cache = BoundedCache::with_max_entries(2);
        cache.insert_until("a", 1, 0, Some(t0));
        cache.insert_until("b", 2, 0, Some(t0));
        assert_eq!(cache.len(), 2);
        cache.insert_until("a", 3, 0, Some(later));
        assert_eq!(cache.get_unexpired("a", t0), Some(&3));
        cache.insert("c", 4, 0);
        assert_eq!(keys(&cache), ["a", "c"]);
    }

    #[test]
    fn get_unexpired_refreshes_a_live_entry() {
        let t0 = Instant::now();
        let later = Some(t0 + Duration::from_secs(10));
        let mut cache = BoundedCache::with_max_entries(2);
        cache.insert_until("a", 1, 0, later);
        cache.insert_until("b", 2, 0, later);
        cache.get_unexpired("a", t0);
        cache.insert("c", 3, 0);
        assert_eq!(keys(&cache), ["a", "c"]);
    }

    #[test]
    fn borrowed_keys_are_accepted() {
        let mut cache: BoundedCache<String, u32> = BoundedCache::with_max_entries(4);
        cache.insert("a".to_string(), 1, 0);
        assert_eq!(cache.get("a"), Some(&1));
        assert_eq!(cache.remove("a"), Some(1));
        assert_eq!(cache.remove("a"), None);
    }
}
