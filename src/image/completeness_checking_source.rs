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
use crate::util::bounded_cache::BoundedCache;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tonic::Status;
use tower::{Layer, Service, ServiceExt};

/// Digests per FindMissingBlobs request.
const FIND_MISSING_BATCH: usize = 10_000;

/// A request's instance and cache key (`StageRequest::local_key`).
type LocalKey = (Instance, String);

/// Number of records a [`CheckedRecords`] keeps; each is one image's record, and a
/// deployment uses far fewer images within one interval.
pub(crate) const CHECKED_RECORDS: usize = 10_000;

/// Records this process found complete, each until `interval` after it was checked; at
/// most [`CHECKED_RECORDS`], the least recently used dropped first.
pub struct CheckedRecords<T> {
    interval: Duration,
    entries: Mutex<BoundedCache<LocalKey, Arc<T>>>,
}

impl<T> CheckedRecords<T> {
    /// Records are trusted for `interval` after they were checked.
    pub fn new(interval: Duration) -> Arc<Self> {
        Arc::new(Self {
            interval,
            entries: Mutex::new(BoundedCache::with_max_entries(CHECKED_RECORDS)),
        })
    }

    fn get(&self, key: &LocalKey) -> Option<Arc<T>> {
        self.entries
            .lock()
            .get_unexpired(key, Instant::now())
            .cloned()
    }

    fn insert(&self, key: LocalKey, record: Arc<T>) {
        // `None` (never expires): an interval beyond the clock's range.
        let expires_at = Instant::now().checked_add(self.interval);
        self.entries.lock().insert_until(key, record, 0, expires_at);
    }

    /// Forgets every record, so that each is checked again on its next use.
    pub fn clear(&self) {
        self.entries.lock().clear();
    }
}

/// Adds completeness checks to a cached stage.
pub(crate) struct CompletenessCheckingLayer<T> {
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
    pub(crate) fn remembering(self, checked: Arc<CheckedRecords<T>>) -> Self {
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
pub(crate) struct CompletenessCheckingSource<S, T> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::action_caching_source::ActionCachingLayer;
    use crate::image::fake_source::{CountingSource, Stores};
    use crate::image::image_source::ExpandedTree;
    use crate::proto::cache::ImageRecord;
    use tower::util::BoxCloneSyncService;

    type Stack =
        BoxCloneSyncService<crate::image::image_source::ImageRequest, ExpandedTree, Status>;

    /// Completeness checking over Action Cache records over `source`.
    fn stack(
        stores: &Stores,
        checked: Option<Arc<CheckedRecords<ImageRecord>>>,
        source: &CountingSource,
    ) -> Stack {
        let mut checking = CompletenessCheckingLayer::new(stores.cas.clone());
        if let Some(checked) = checked {
            checking = checking.remembering(checked);
        }
        BoxCloneSyncService::new(
            tower::ServiceBuilder::new()
                .layer(checking)
                .layer(ActionCachingLayer::new(
                    stores.cas.clone(),
                    stores.ac.clone(),
                ))
                .service(source.clone()),
        )
    }

    #[tokio::test]
    async fn a_complete_record_is_used() {
        let stores = Stores::new();
        let blob = stores.blob("file").await;
        let source = CountingSource::new(vec![blob]);
        let built = stack(&stores, None, &source)
            .oneshot(stores.request('1'))
            .await
            .unwrap();
        let cached = stack(&stores, None, &source)
            .oneshot(stores.request('1'))
            .await
            .unwrap();
        assert_eq!((cached.origin, source.calls()), (Origin::ActionCache, 1));
        assert_eq!(cached.record, built.record);
    }

    #[tokio::test]
    async fn a_record_whose_blobs_are_missing_is_ignored_and_rebuilt() {
        let stores = Stores::new();
        let gone = stores.blob("evicted").await;
        let first = CountingSource::new(vec![gone.clone()]);
        stack(&stores, None, &first)
            .oneshot(stores.request('1'))
            .await
            .unwrap();
        assert!(stores.cas.remove(&stores.instance, &gone));
        let kept = stores.blob("kept").await;
        let second = CountingSource::new(vec![kept]);
        let rebuilt = stack(&stores, None, &second)
            .oneshot(stores.request('1'))
            .await
            .unwrap();
        assert_eq!((rebuilt.origin, second.calls()), (Origin::Rebuilt, 1));
        // The rebuilt record replaced the incomplete one.
        let third = CountingSource::new(vec![]);
        let cached = stack(&stores, None, &third)
            .oneshot(stores.request('1'))
            .await
            .unwrap();
        assert_eq!((cached.origin, third.calls()), (Origin::ActionCache, 0));
        assert_eq!(cached.record, rebuilt.record);
    }

    #[tokio::test]
    async fn a_remembered_record_is_checked_again_only_after_the_interval() {
        let stores = Stores::new();
        let blob = stores.blob("file").await;
        let source = CountingSource::new(vec![blob.clone()]);
        let checked = CheckedRecords::new(Duration::from_millis(300));
        let images = stack(&stores, Some(checked), &source);
        images.clone().oneshot(stores.request('1')).await.unwrap();
        assert!(stores.cas.remove(&stores.instance, &blob));
        // Within the interval: trusted, neither looked up nor checked.
        let remembered = images.clone().oneshot(stores.request('1')).await.unwrap();
        assert_eq!((remembered.origin, source.calls()), (Origin::Memory, 1));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let rebuilt = images.clone().oneshot(stores.request('1')).await.unwrap();
        assert_eq!((rebuilt.origin, source.calls()), (Origin::Rebuilt, 2));
    }

    #[tokio::test]
    async fn without_a_memory_every_use_is_checked() {
        let stores = Stores::new();
        let blob = stores.blob("file").await;
        let source = CountingSource::new(vec![blob.clone()]);
        let images = stack(&stores, None, &source);
        images.clone().oneshot(stores.request('1')).await.unwrap();
        let cached = images.clone().oneshot(stores.request('1')).await.unwrap();
        assert_eq!(cached.origin, Origin::ActionCache);
        assert!(stores.cas.remove(&stores.instance, &blob));
        let rebuilt = images.clone().oneshot(stores.request('1')).await.unwrap();
        assert_eq!((rebuilt.origin, source.calls()), (Origin::Rebuilt, 2));
    }

    #[tokio::test]
    async fn a_cleared_memory_checks_again() {
        let stores = Stores::new();
        let blob = stores.blob("file").await;
        let source = CountingSource::new(vec![blob.clone()]);
        let checked = CheckedRecords::new(Duration::from_secs(3600));
        let images = stack(&stores, Some(checked.clone()), &source);
        images.clone().oneshot(stores.request('1')).await.unwrap();
        assert!(stores.cas.remove(&stores.instance, &blob));
        checked.clear();
        let rebuilt = images.clone().oneshot(stores.request('1')).await.unwrap();
        assert_eq!((rebuilt.origin, source.calls()), (Origin::Rebuilt, 2));
        // A rebuilt record is remembered.
        let remembered = images.oneshot(stores.request('1')).await.unwrap();
        assert_eq!((remembered.origin, source.calls()), (Origin::Memory, 2));
    }
}
