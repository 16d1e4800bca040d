//! Test support for the decorators' unit tests: a fake image source that counts its
//! calls, can be held until released and made to fail, and answers with a record
//! naming the blobs it was told to; and the stores and requests those tests share.

use super::image_source::{ExpandedTree, ImageRequest, StepTimings};
use super::stage::Origin;
use crate::blobstore::{Instance, MemoryActionCache, MemoryContentAddressableStorage};
use crate::digest::DigestFunction;
use crate::proto::cache::ImageRecord;
use crate::proto::reapi;
use crate::registry::{Platform, Reference};
use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::watch;
use tonic::Status;
use tower::Service;

struct State {
    calls: AtomicUsize,
    completed: AtomicUsize,
    fail: AtomicBool,
    referenced: Mutex<Vec<reapi::Digest>>,
    open: watch::Sender<bool>,
}

/// A fake image source. Its answers are new on every call: the n-th call's record has
/// manifest digest `built-n`.
#[derive(Clone)]
pub(crate) struct CountingSource {
    state: Arc<State>,
}

impl CountingSource {
    /// A source that answers at once, with a record referring to `referenced`.
    pub fn new(referenced: Vec<reapi::Digest>) -> Self {
        Self {
            state: Arc::new(State {
                calls: AtomicUsize::new(0),
                completed: AtomicUsize::new(0),
                fail: AtomicBool::new(false),
                referenced: Mutex::new(referenced),
                open: watch::channel(true).0,
            }),
        }
    }

    /// Calls made so far (counted when they start).
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// Calls that ran to their end.
    pub fn completed(&self) -> usize {
        self.state.completed.load(Ordering::SeqCst)
    }

    /// Holds every call until [`CountingSource::release`].
    pub fn hold(&self) {
        self.state.open.send_replace(false);
    }

    pub fn release(&self) {
        self.state.open.send_replace(true);
    }

    pub fn fail(&self, fail: bool) {
        self.state.fail.store(fail, Ordering::SeqCst);
    }

    /// Waits until `n` calls have started.
    pub async fn started(&self, n: usize) {
        while self.calls() < n {
            tokio::task::yield_now().await;
        }
    }
}

impl Service<ImageRequest> for CountingSource {
    type Response = ExpandedTree;
    type Error = Status;
    type Future = BoxFuture<'static, Result<ExpandedTree, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ImageRequest) -> Self::Future {
        let state = self.state.clone();
        let resolved = request
            .payload
            .pinned
            .digest()
            .unwrap_or_default()
            .to_string();
        Box::pin(async move {
            let call = state.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let mut open = state.open.subscribe();
            let _ = open.wait_for(|open| *open).await;
            state.completed.fetch_add(1, Ordering::SeqCst);
            if state.fail.load(Ordering::SeqCst) {
                return Err(Status::unavailable("Registry down"));
            }
            Ok(ExpandedTree {
                record: Arc::new(record(call, &resolved, state.referenced.lock().clone())),
                origin: Origin::Built,
                from_cache: false,
                layers_ingested: 1,
                timings: StepTimings::default(),
            })
        })
    }
}

/// The `call`-th record of the fake: manifest digest `built-{call}`, made for `resolved`,
/// its root the first of `referenced` (the empty Directory when there is none), so that
/// it passes the checks of `record_validation.rs`.
fn record(call: usize, resolved: &str, referenced: Vec<reapi::Digest>) -> ImageRecord {
    let root = referenced
        .first()
        .cloned()
        .unwrap_or_else(|| DigestFunction::Sha256.empty_digest());
    ImageRecord {
        manifest_digest: format!("built-{call}"),
        root_directory_digest: Some(root),
        referenced_blobs: referenced,
        resolved_digest: resolved.to_string(),
        runtime_config: Some(Default::default()),
        ..Default::default()
    }
}

/// In-memory stores and the instance the tests use.
pub struct Stores {
    pub cas: Arc<MemoryContentAddressableStorage>,
    pub ac: Arc<MemoryActionCache>,
    pub instance: Instance,
}

impl Stores {
    pub fn new() -> Self {
        Self {
            cas: Arc::new(MemoryContentAddressableStorage::new(64 << 20)),
            ac: Arc::new(MemoryActionCache::new(64 << 20)),
            instance: Instance::new("", DigestFunction::Sha256),
        }
    }

    /// Stores `content` in the CAS; returns its digest.
    pub async fn blob(&self, content: &str) -> reapi::Digest {
        use crate::blobstore::ContentAddressableStorage;
        let data = Bytes::from(content.to_owned());
        let digest = self.instance.digest_function.digest_of(&data);
        self.cas.put(&self.instance, &digest, data).await.unwrap();
        digest
    }

    /// A request for an image whose digest ends in `last`.
    pub fn request(&self, last: char) -> ImageRequest {
        let digest = format!("sha256:{}{last}", "0".repeat(63));
        let pinned = Reference::parse(&format!("registry.example/app@{digest}")).unwrap();
        let platform = Platform::new("linux", "amd64", "");
        ImageRequest::for_image(&self.instance, pinned, platform, 2 << 20)
    }
}
