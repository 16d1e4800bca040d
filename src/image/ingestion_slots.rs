//! Slots for layer ingestions, shared fairly between registries: at most `global`
//! ingestions at a time, and at most `per_registry` of them from one registry (its host
//! as `normalize_host` writes it). A registry's slot is taken before a global one, so
//! that ingestions waiting for a registry over its budget (a slow or hostile one) hold
//! no global slot and ingestions from other registries go ahead.
//!
//! A registry is tracked only while an ingestion from it holds or waits for a slot, so
//! the number of registries tracked is bounded by the number of ingestions waiting.
//! `layer_ingests_in_progress{registry}` counts the ingestions holding both slots.

use super::metrics;
use crate::registry::configuration::normalize_host;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// A registry's semaphore and the ingestions holding or waiting for it.
struct Registry {
    slots: Arc<Semaphore>,
    users: usize,
}

type Registries = Mutex<HashMap<String, Registry>>;

/// Ingestion slots, global and per registry.
pub(crate) struct IngestionSlots {
    global: Arc<Semaphore>,
    per_registry: usize,
    registries: Arc<Registries>,
}

impl IngestionSlots {
    /// `global` ingestions at a time, `per_registry` from one registry (each at least 1).
    pub fn new(global: usize, per_registry: usize) -> Self {
        Self {
            global: Arc::new(Semaphore::new(global.max(1))),
            per_registry: per_registry.max(1),
            registries: Default::default(),
        }
    }

    /// Waits for a slot of `registry` and then for a global one. The slot is held until
    /// the returned value is dropped; a caller that goes away while waiting leaves
    /// nothing behind.
    pub async fn acquire(&self, registry: &str) -> Result<IngestionSlot, Status> {
        let host = normalize_host(registry);
        let user = RegistryUser::new(self.registries.clone(), host, self.per_registry);
        let closed = |_| Status::internal("Layer ingestion slots closed");
        let registry_slot = user.slots.clone().acquire_owned().await.map_err(closed)?;
        let global_slot = self.global.clone().acquire_owned().await.map_err(closed)?;
        metrics::layer_ingests_in_progress(&user.host, 1);
        Ok(IngestionSlot {
            _global: global_slot,
            _registry: registry_slot,
            user,
        })
    }

    /// Registries holding or waiting for slots.
    #[cfg(test)]
    pub fn registries_tracked(&self) -> usize {
        self.registries.lock().len()
    }
}

/// An ingestion's registry slot and global slot.
pub(crate) struct IngestionSlot {
    // Fields drop in order: the slots are released before the registry is let go of.
    _global: OwnedSemaphorePermit,
    _registry: OwnedSemaphorePermit,
    user: RegistryUser,
}

impl Drop for IngestionSlot {
    fn drop(&mut self) {
        metrics::layer_ingests_in_progress(&self.user.host, -1);
    }
}

/// An ingestion holding or waiting for a slot of its registry; the last one to go
/// stops tracking the registry.
struct RegistryUser {
    registries: Arc<Registries>,
    host: String,
    slots: Arc<Semaphore>,
}

impl RegistryUser {
    fn new(registries: Arc<Registries>, host: String, per_registry: usize) -> Self {
        let slots = {
            let mut tracked = registries.lock();
            let registry = tracked.entry(host.clone()).or_insert_with(|| Registry {
                slots: Arc::new(Semaphore::new(per_registry)),
                users: 0,
            });
            registry.users += 1;
            registry.slots.clone()
        };
        Self {
            registries,
            host,
            slots,
        }
    }
}

impl Drop for RegistryUser {
    fn drop(&mut self) {
        let mut tracked = self.registries.lock();
        if let Some(registry) = tracked.get_mut(&self.host) {
            registry.users -= 1;
            if registry.users == 0 {
                tracked.remove(&self.host);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_registry_over_its_budget_holds_no_global_slot() {
        let slots = Arc::new(IngestionSlots::new(2, 1));
        let _a1 = slots.acquire("a.example").await.unwrap();
        // Waits for a.example's only slot, not for a global one.
        let mut a2 = Box::pin(slots.acquire("a.example"));
        assert!(futures::poll!(&mut a2).is_pending());
        let b = slots.acquire("gauge-b.example").await.unwrap();
        assert_eq!(metrics::layer_ingests_in_progress_now("gauge-b.example"), 1);
        drop(b);
        assert_eq!(metrics::layer_ingests_in_progress_now("gauge-b.example"), 0);
    }

    #[tokio::test]
    async fn hosts_are_normalised() {
        let slots = IngestionSlots::new(2, 1);
        let _hub = slots.acquire("index.docker.io").await.unwrap();
        let mut alias = Box::pin(slots.acquire("Docker.IO"));
        assert!(futures::poll!(&mut alias).is_pending());
        assert_eq!(slots.registries_tracked(), 1);
    }

    #[tokio::test]
    async fn registries_are_forgotten_once_nobody_holds_or_waits_for_their_slots() {
        let slots = IngestionSlots::new(4, 1);
        let first = slots.acquire("a.example").await.unwrap();
        let mut waiting = Box::pin(slots.acquire("a.example"));
        assert!(futures::poll!(&mut waiting).is_pending());
        for n in 0..3 {
            drop(slots.acquire(&format!("r{n}.example")).await.unwrap());
        }
        assert_eq!(slots.registries_tracked(), 1);
        // A waiter that goes away lets go of the registry too.
        drop(waiting);
        assert_eq!(slots.registries_tracked(), 1);
        drop(first);
        assert_eq!(slots.registries_tracked(), 0);
    }
}
