//! Test support: a fake [`Registry`] for the engine's unit tests. Tags resolve to what
//! the test said last (a digest or an error), and layer blobs of the hosts the test
//! named hang forever while those of other hosts are missing (`NOT_FOUND`); it records
//! which blob fetches started. Image metadata is not served.

use crate::blobstore::ChunkStream;
use crate::layer::LayerDescriptor;
use crate::registry::{ImageMetadata, Platform, Reference, Registry};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use tonic::Status;

pub(crate) struct FakeRegistry {
    resolution: Mutex<Result<String, Status>>,
    resolves: AtomicUsize,
    hanging_hosts: Mutex<HashSet<String>>,
    fetches: Mutex<Vec<String>>,
}

impl FakeRegistry {
    pub fn new() -> Self {
        Self {
            resolution: Mutex::new(Err(Status::not_found("No tag set by the test"))),
            resolves: AtomicUsize::new(0),
            hanging_hosts: Mutex::new(HashSet::new()),
            fetches: Mutex::new(Vec::new()),
        }
    }

    /// What every tag resolves to from now on.
    pub fn resolve_to(&self, resolution: Result<String, Status>) {
        *self.resolution.lock() = resolution;
    }

    /// Tag resolutions asked for so far.
    pub fn resolves(&self) -> usize {
        self.resolves.load(Ordering::SeqCst)
    }

    /// Blob fetches from `host` never answer.
    pub fn hang_blobs_of(&self, host: &str) {
        self.hanging_hosts.lock().insert(host.to_string());
    }

    /// Digests of the layers whose fetch started, in order.
    pub fn fetches(&self) -> Vec<String> {
        self.fetches.lock().clone()
    }

    /// Waits until `n` blob fetches have started.
    pub async fn fetched(&self, n: usize) {
        while self.fetches.lock().len() < n {
            tokio::task::yield_now().await;
        }
    }
}

#[async_trait]
impl Registry for FakeRegistry {
    fn check_allowed(&self, _: &str, _: &Reference) -> Result<(), Status> {
        Ok(())
    }

    async fn resolve(&self, _: &Reference) -> Result<String, Status> {
        self.resolves.fetch_add(1, Ordering::SeqCst);
        self.resolution.lock().clone()
    }

    async fn fetch_image(&self, _: &Reference, _: &Platform) -> Result<ImageMetadata, Status> {
        Err(Status::unimplemented("The fake registry serves no images"))
    }

    async fn fetch_blob(
        &self,
        reference: &Reference,
        layer: &LayerDescriptor,
    ) -> Result<ChunkStream, Status> {
        self.fetches.lock().push(layer.digest.clone());
        if self.hanging_hosts.lock().contains(reference.registry()) {
            std::future::pending::<()>().await;
        }
        Err(Status::not_found(format!("Blob {} unknown", layer.digest)))
    }
}
