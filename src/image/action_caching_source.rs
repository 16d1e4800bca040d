//! Decorator that records a stage's answers in the Action Cache, so that every process
//! of the fleet computes each answer once. A request whose fake action has a record is
//! answered from it ([`Origin::ActionCache`]) without calling the source below. Otherwise
//! the source is called, and its record is stored in the CAS and the Action Cache entry
//! written only once the source succeeded (everything the entry points to is stored by
//! then): a failure leaves no record behind.
//!
//! A record whose message is gone from the CAS is treated as absent and rebuilt
//! ([`Origin::Rebuilt`]). This decorator does not check the blobs the record refers to:
//! `completeness_checking_source.rs` does, above it.

use super::fake_action::{read_record, write_record};
use super::stage::{Origin, StageRequest, StageResponse};
use crate::blobstore::{get_message, put_message, ActionCache, ContentAddressableStorage};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::{Code, Status};
use tower::{Layer, Service, ServiceExt};

/// Adds Action Cache records to a stage.
#[derive(Clone)]
pub struct ActionCachingLayer {
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
pub struct ActionCachingSource<S> {
    inner: S,
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Arc<dyn ActionCache>,
}

/// What the Action Cache holds for a request.
enum Lookup<T> {
    Found(T),
    Absent,
    /// An entry whose record message is gone from the CAS.
    Unusable,
}

impl<S> ActionCachingSource<S> {
    async fn lookup<P, R: StageResponse>(
        &self,
        request: &StageRequest<P>,
    ) -> Result<Lookup<R::Record>, Status> {
        let Some(entry) = read_record(&*self.ac, &request.instance, &request.key).await? else {
            return Ok(Lookup::Absent);
        };
        let Some(blob) = entry.output(R::OUTPUT) else {
            return Ok(Lookup::Absent);
        };
        match get_message(&*self.cas, &request.instance, blob).await {
            Ok(record) => Ok(Lookup::Found(record)),
            Err(s) if s.code() == Code::NotFound => Ok(Lookup::Unusable),
            Err(s) => Err(s),
        }
    }
}

impl<S, P, R> Service<StageRequest<P>> for ActionCachingSource<S>
where
    S: Service<StageRequest<P>, Response = R, Error = Status> + Clone + Send + Sync + 'static,
    S::Future: Send,
    P: Clone + Send + Sync + 'static,
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
            let (instance, key) = (request.instance.clone(), request.key.clone());
            let response = this.inner.oneshot(request).await?;
            let blob = put_message(&*this.cas, &instance, &**response.record()).await?;
            let outputs = vec![(R::OUTPUT.to_string(), blob)];
            write_record(&*this.cas, &*this.ac, &instance, &key, outputs).await?;
            Ok(match origin {
                Origin::Rebuilt => response.with_origin(Origin::Rebuilt),
                _ => response,
            })
        })
    }
}
