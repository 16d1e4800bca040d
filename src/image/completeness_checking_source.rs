//! Decorator that uses a record from the cache below only if every blob it refers to is
//! still in the CAS, which evicts. A record found incomplete (FindMissingBlobs reports a
//! blob missing) is ignored: the request is sent down again, bypassing the cache, so
//! that the answer is rebuilt and recorded anew ([`Origin::Rebuilt`]).
//!
//! With a [`CheckedRecords`] memory, a record checked (or just built) is trusted for
//! `interval` within this process and answered from memory ([`Origin::Memory`]); only
//! then is it looked up and checked again. Without one, every use is checked.

use super::stage::{Origin, StageRequest, StageResponse};
use crate::blobstore::{ContentAddressableStorage, Instance};
use crate::proto::reapi;
use crate::status::wrap;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::Status;
use tower::{Layer, Service, ServiceExt};

/// Digests per FindMissingBlobs request.
const FIND_MISSING_BATCH: usize = 10_000;

/// A request's instance and cache key (`StageRequest::local_key`).
type LocalKey = (Instance, String);

/// Records this process found complete, and when.
pub struct CheckedRecords<T> {
    interval: Duration,
    entries: Mutex<HashMap<LocalKey, (Arc<T>, Instant)>>,
}

impl<T> CheckedRecords<T> {
    /// Records are trusted for `interval` after they were checked.
    pub fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            interval,
            entries: Default::default(),
        })
    }

    fn get(&self, key: &LocalKey) -> Option<Arc<T>> {
        let entries = self.entries.lock();
        let (record, checked) = entries.get(key)?;
        (checked.elapsed() < self.interval).then(|| record.clone())
    }

    fn insert(&self, key: LocalKey, record: Arc<T>) {
        self.entries.lock().insert(key, (record, Instant::now()));
    }

    /// Forgets every record, so that each is checked again on its next use.
    pub fn clear(&self) {
        self.entries.lock().clear();
    }
}

/// Adds completeness checks to a cached stage.
pub struct CompletenessCheckingLayer<T> {
    cas: Arc<dyn ContentAddressableStorage>,
    checked: Option<Arc<CheckedRecords<T>>>,
}

impl<T> CompletenessCheckingLayer<T> {
    /// Checks every use of a cached record.
    pub fn new(cas: Arc<dyn ContentAddressableStorage>) -> Self {
        Self { cas, checked: None }
    }

    /// Trusts records in `checked` (shared with whoever may clear it) until their
    /// interval runs out.
    pub fn remembering(self, checked: Arc<CheckedRecords<T>>) -> Self {
        Self {
            checked: Some(checked),
            ..self
        }
    }
}

impl<S, T> Layer<S> for CompletenessCheckingLayer<T> {
    type Service = CompletenessCheckingSource<S, T>;

    fn layer(&self, inner: S) -> Self::Service {
        CompletenessCheckingSource {
            inner,
            cas: self.cas.clone(),
            checked: self.checked.clone(),
        }
    }
}

/// A stage whose cached records are used only when complete.
pub struct CompletenessCheckingSource<S, T> {
    inner: S,
    cas: Arc<dyn ContentAddressableStorage>,
    checked: Option<Arc<CheckedRecords<T>>>,
}

impl<S: Clone, T> Clone for CompletenessCheckingSource<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            cas: self.cas.clone(),
            checked: self.checked.clone(),
        }
    }
}

impl<S, T> CompletenessCheckingSource<S, T> {
    /// Whether every digest is present in the CAS.
    async fn is_complete(
        &self,
        instance: &Instance,
        digests: Vec<reapi::Digest>,
    ) -> Result<bool, Status> {
        for chunk in digests.chunks(FIND_MISSING_BATCH) {
            let missing = self
                .cas
                .find_missing(instance, chunk.to_vec())
                .await
                .map_err(|s| wrap(s, "Failed to check completeness of a cached tree"))?;
            if !missing.is_empty() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl<S, T, P, R> Service<StageRequest<P>> for CompletenessCheckingSource<S, T>
where
    S: Service<StageRequest<P>, Response = R, Error = Status> + Clone + Send + Sync + 'static,
    S::Future: Send,
    P: Clone + Send + Sync + 'static,
    R: StageResponse<Record = T>,
    T: Send + Sync + 'static,
{
    type Response = R;
    type Error = Status;
    type Future = BoxFuture<'static, Result<R, Status>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        // The source below is made ready for each call (`oneshot`).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: StageRequest<P>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let local_key = request.local_key();
            if let (Some(checked), false) = (&this.checked, request.bypass_cache) {
                if let Some(record) = checked.get(&local_key) {
                    return Ok(R::from_record(record, Origin::Memory));
                }
            }
            let mut response = this.inner.clone().oneshot(request.clone()).await?;
            if response.origin() == Origin::ActionCache {
                let blobs = R::referenced_blobs(response.record());
                if !this.is_complete(&request.instance, blobs).await? {
                    tracing::info!(
                        "Cached {} record {} is incomplete in the CAS; rebuilding it",
                        request.key.step.name(),
                        request.key.digest.hash
                    );
                    let again = request.bypassing_cache();
                    response = this
                        .inner
                        .oneshot(again)
                        .await?
                        .with_origin(Origin::Rebuilt);
                }
            }
            if let Some(checked) = &this.checked {
                checked.insert(local_key, response.record().clone());
            }
            Ok(response)
        })
    }
}
