//! What the image engine's stages have in common, so that one decorator per concern
//! (caching, completeness checking, deduplication, metrics) serves all of them.
//!
//! A stage is a tower `Service` ([`Source`]) from a [`StageRequest`] to a response that
//! implements [`StageResponse`]. The request names the fake action its answer is
//! recorded under in the Action Cache (`fake_action.rs`); the response holds one record
//! message (an `ImageRecord`, a `LayerChangeset`) and says where it came from
//! ([`Origin`]). The stages are the image source (`image_source.rs`), the layer chain
//! source (`chain_source.rs`) and the layer source (`layer_source.rs`).

use super::fake_action::FakeAction;
use super::metrics;
use crate::blobstore::Instance;
use crate::proto::reapi;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tonic::Status;

/// A stage, boxed so that stacks of decorators compose and clone cheaply.
pub(crate) type Source<Request, Response> =
    tower::util::BoxCloneSyncService<Request, Response, Status>;

/// Where a response's record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Built by the plain source: no record existed.
    Built,
    /// Built by the plain source because the record found could not be used (a blob it
    /// refers to is gone from the CAS).
    Rebuilt,
    /// Read from the Action Cache.
    ActionCache,
    /// Remembered by this process, which checked it for completeness recently.
    Memory,
    /// Built or found by the replica of the fleet that owns the request, which
    /// recorded it (`fleet::sharding_source`).
    Peer,
}

/// A request to a cached stage: what to compute (`payload`), for which instance, and the
/// fake action its answer is recorded under.
#[derive(Clone, Debug)]
pub struct StageRequest<P> {
    pub instance: Instance,
    pub key: FakeAction,
    /// Set when a record found for `key` turned out unusable: the answer must be built
    /// again, not read from a cache.
    pub bypass_cache: bool,
    /// Set when another replica of the fleet forwarded the request to this one, its
    /// owner: it is answered here, never forwarded again.
    pub from_peer: bool,
    pub payload: P,
}

impl<P> StageRequest<P> {
    pub fn new(instance: Instance, key: FakeAction, payload: P) -> Self {
        Self {
            instance,
            key,
            bypass_cache: false,
            from_peer: false,
            payload,
        }
    }

    /// The same request, to be answered without any cached record.
    pub(crate) fn bypassing_cache(self) -> Self {
        Self {
            bypass_cache: true,
            ..self
        }
    }

    /// Identifies the answer within this process: instance and cache key.
    pub(crate) fn local_key(&self) -> (Instance, String) {
        (self.instance.clone(), self.key.digest.hash.clone())
    }
}

/// A response of a cached stage.
pub(crate) trait StageResponse: Clone + Send + Sync + 'static {
    /// The message recorded in the CAS and named by the Action Cache entry.
    type Record: prost::Message + Default + Send + Sync + 'static;

    /// Name of the record's output in the Action Cache entry.
    const OUTPUT: &'static str;

    fn record(&self) -> &Arc<Self::Record>;

    /// Every blob the record refers to: all must be in the CAS for the record to be used.
    fn referenced_blobs(record: &Self::Record) -> Vec<reapi::Digest>;

    /// A response made of a cached record.
    fn from_record(record: Arc<Self::Record>, origin: Origin) -> Self;

    fn origin(&self) -> Origin;

    fn with_origin(self, origin: Origin) -> Self;

    /// The response as seen by a caller that joined work another caller started: work
    /// done (layers ingested) is counted once, by the caller that started it.
    fn joined(self) -> Self;
}

/// Runs one step of the engine and records its duration and outcome.
pub async fn timed<T>(
    step: &str,
    future: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = future.await;
    metrics::step(step, result.is_ok(), started.elapsed().as_secs_f64());
    result
}
