//! Decorator that records a stage's answers in the Action Cache, so that every process
//! of the fleet computes each answer once. A request whose fake action has a record is
//! answered from it ([`Origin::ActionCache`]) without calling the source below. Otherwise
//! the source is called, and its record is stored in the CAS and the Action Cache entry
//! written only once the source succeeded (everything the entry points to is stored by
//! then): a failure leaves no record behind.
//!
//! A record is never trusted: one whose message is gone from the CAS, does not decode,
//! or does not answer the request (`record_validation.rs`) is treated as absent, logged
//! with its key and the reason, counted in `cache_records_rejected_total`, rebuilt
//! ([`Origin::Rebuilt`]) and overwritten. This decorator does not check that the blobs
//! the record refers to are present: `completeness_checking_source.rs` does, above it.
//!
//! An answer another replica of the fleet produced ([`Origin::Peer`]) was recorded by
//! that replica and is not recorded again.
//!
//! Recording is best-effort for the answer: the answer was built and stored by the
//! source, so a failure to write its record is logged and counted
//! (`cache_record_writes_total{result="failed"}`) and the answer returned all the same;
//! the next request that misses tries to write the record again.

use super::fake_action::{read_record, write_record};
use super::metrics;
use super::record_validation::ValidatesRecord;
use super::stage::{Origin, StageRequest, StageResponse};
use crate::blobstore::{put_message, ActionCache, ContentAddressableStorage};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::{Code, Status};
use tower::{Layer, Service, ServiceExt};

/// Adds Action Cache records to a stage.
#[derive(Clone)]
pub(crate) struct ActionCachingLayer {
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Arc<dyn ActionCache>,
}

impl ActionCachingLayer {
    pub fn new(cas: Arc<dyn ContentAddressableStorage>, ac: Arc<dyn ActionCache>) -> Self {
        Self { cas, ac }
    }
}

impl<S> Layer<S> for ActionCachingLayer {
    type Service = ActionCachingSource<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ActionCachingSource {
            inner,
            cas: self.cas.clone(),
            ac: self.ac.clone(),
        }
    }
}

/// A stage whose answers are recorded in the Action Cache.
#[derive(Clone)]
pub(crate) struct ActionCachingSource<S> {
    inner: S,
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Arc<dyn ActionCache>,
}

/// What the Action Cache holds for a request.
enum Lookup<T> {
    Found(T),
    Absent,
    /// An entry that cannot be used: its record message is gone from the CAS, or it
    /// does not decode, or does not answer the request.
    Unusable,
}

impl<S> ActionCachingSource<S> {
    async fn lookup<P, R>(&self, request: &StageRequest<P>) -> Result<Lookup<R::Record>, Status>
    where
        P: ValidatesRecord<R::Record>,
        R: StageResponse,
    {
        let Some(entry) = read_record(&*self.ac, &request.instance, &request.key).await? else {
            return Ok(Lookup::Absent);
        };
        let Some(blob) = entry.output(R::OUTPUT) else {
            return Ok(reject(request, "unusable", "it has no record output"));
        };
        if let Err(s) = request.instance.digest_function.validate(blob) {
            let reason = format!("its record digest is malformed: {}", s.message());
            return Ok(reject(request, "unusable", &reason));
        }
        let data = match self.cas.get(&request.instance, blob).await {
            Ok(data) => data,
            Err(s) if s.code() == Code::NotFound => return Ok(Lookup::Unusable),
            Err(s) => return Err(s),
        };
        let record = match <R::Record as prost::Message>::decode(data) {
            Ok(record) => record,
            Err(e) => {
                let reason = format!("its record does not decode: {e}");
                return Ok(reject(request, "undecodable", &reason));
            }
        };
        match request.payload.validate(&request.instance, &record) {
            Ok(()) => Ok(Lookup::Found(record)),
            Err(reason) => Ok(reject(request, "invalid", &reason)),
        }
    }

    /// Writes the record of an answer; failures are logged and counted, not returned.
    async fn record<P, R: StageResponse>(&self, request: &StageRequest<P>, response: &R) {
        let (instance, key) = (&request.instance, &request.key);
        let result = async {
            let blob = put_message(&*self.cas, instance, &**response.record()).await?;
            let outputs = vec![(R::OUTPUT.to_string(), blob)];
            write_record(&*self.cas, &*self.ac, instance, key, outputs).await
        }
        .await;
        metrics::record_write(key.step.name(), result.is_ok());
        if let Err(s) = result {
            tracing::warn!(
                "Failed to record {} {} in instance {:?} (the answer is used all the same; \
                 the next miss records it again): {}",
                key.step.name(),
                crate::digest::display(&key.digest),
                instance.name,
                s.message()
            );
        }
    }
}

/// A record found but not usable: logged with its key and the reason, counted, and
/// treated as a miss.
fn reject<P, T>(request: &StageRequest<P>, reason_label: &str, reason: &str) -> Lookup<T> {
    metrics::record_rejected(request.key.step.name(), reason_label);
    tracing::warn!(
        "Ignoring {} record {} of instance {:?}, which will be rebuilt: {reason}",
        request.key.step.name(),
        crate::digest::display(&request.key.digest),
        request.instance.name
    );
    Lookup::Unusable
}

impl<S, P, R> Service<StageRequest<P>> for ActionCachingSource<S>
where
    S: Service<StageRequest<P>, Response = R, Error = Status> + Clone + Send + Sync + 'static,
    S::Future: Send,
    P: ValidatesRecord<R::Record> + Clone + Send + Sync + 'static,
    R: StageResponse,
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
            let mut origin = Origin::Built;
            if !request.bypass_cache {
                match this.lookup::<P, R>(&request).await? {
                    Lookup::Found(record) => {
                        return Ok(R::from_record(Arc::new(record), Origin::ActionCache))
                    }
                    Lookup::Absent => {}
                    Lookup::Unusable => origin = Origin::Rebuilt,
                }
            }
            let response = this.inner.clone().oneshot(request.clone()).await?;
            if response.origin() != Origin::Peer {
                // The owning replica recorded what it answered.
                this.record(&request, &response).await;
            }
            Ok(match origin {
                Origin::Rebuilt => response.with_origin(Origin::Rebuilt),
                _ => response,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::fake_source::{CountingSource, Stores};

    fn caching(stores: &Stores, source: &CountingSource) -> ActionCachingSource<CountingSource> {
        ActionCachingLayer::new(stores.cas.clone(), stores.ac.clone()).layer(source.clone())
    }

    #[tokio::test]
    async fn a_miss_calls_the_source_once_and_records_the_answer_after_it_succeeded() {
        let stores = Stores::new();
        let source = CountingSource::new(vec![]);
        source.hold();
        let call = tokio::spawn(caching(&stores, &source).oneshot(stores.request('1')));
        source.started(1).await;
        assert!(
            stores.ac.is_empty(),
            "nothing is recorded before the source answered"
        );
        source.release();
        let answer = call.await.unwrap().unwrap();
        assert_eq!(answer.origin, Origin::Built);
        assert_eq!(source.calls(), 1);
        assert_eq!(stores.ac.len(), 1);
    }

    #[tokio::test]
    async fn a_recorded_answer_skips_the_source() {
        let stores = Stores::new();
        let first = CountingSource::new(vec![]);
        let built = caching(&stores, &first)
            .oneshot(stores.request('1'))
            .await
            .unwrap();
        let second = CountingSource::new(vec![]);
        let cached = caching(&stores, &second)
            .oneshot(stores.request('1'))
            .await
            .unwrap();
        assert_eq!(second.calls(), 0);
        assert_eq!(cached.origin, Origin::ActionCache);
        assert!(cached.from_cache);
        assert_eq!(cached.record, built.record);
        // Another request is another record.
        let other = caching(&stores, &second)
            .oneshot(stores.request('2'))
            .await
            .unwrap();
        assert_eq!((other.origin, second.calls()), (Origin::Built, 1));
    }

    #[tokio::test]
    async fn a_failure_records_nothing() {
        let stores = Stores::new();
        let source = CountingSource::new(vec![]);
        source.fail(true);
        let err = caching(&stores, &source)
            .oneshot(stores.request('1'))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(stores.ac.is_empty());
        source.fail(false);
        let answer = caching(&stores, &source)
            .oneshot(stores.request('1'))
            .await
            .unwrap();
        assert_eq!((answer.origin, source.calls()), (Origin::Built, 2));
    }

    #[tokio::test]
    async fn a_record_whose_message_is_gone_from_the_cas_is_rebuilt() {
        let stores = Stores::new();
        let source = CountingSource::new(vec![]);
        let built = caching(&stores, &source)
            .oneshot(stores.request('1'))
            .await
            .unwrap();
        let function = stores.instance.digest_function;
        let (message, _) = crate::digest::encode_message(function, &*built.record);
        assert!(stores.cas.remove(&stores.instance, &message));
        let rebuilt = caching(&stores, &source)
            .oneshot(stores.request('1'))
            .await
            .unwrap();
        assert_eq!((rebuilt.origin, source.calls()), (Origin::Rebuilt, 2));
        // Recorded anew.
        let cached = caching(&stores, &source)
            .oneshot(stores.request('1'))
            .await
            .unwrap();
        assert_eq!(cached.origin, Origin::ActionCache);
        assert_eq!(cached.record, rebuilt.record);
    }

    #[tokio::test]
    async fn a_request_bypassing_the_cache_calls_the_source_and_records_its_answer() {
        let stores = Stores::new();
        let source = CountingSource::new(vec![]);
        caching(&stores, &source)
            .oneshot(stores.request('1'))
            .await
            .unwrap();
        let again = caching(&stores, &source)
            .oneshot(stores.request('1').bypassing_cache())
            .await
            .unwrap();
        assert_eq!((again.origin, source.calls()), (Origin::Built, 2));
        let cached = caching(&stores, &source)
            .oneshot(stores.request('1'))
            .await
            .unwrap();
        assert_eq!(cached.record.manifest_digest, "built-2");
    }
}
