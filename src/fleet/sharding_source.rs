//! Decorator that sends each cache miss of a stage to the replica that owns it, so that
//! the fleet does each expansion and each layer ingestion once (docs/design/fleet.md).
//!
//! It sits below the Action Cache decorator: a request reaches it only when no usable
//! record exists. The owner is chosen by `Fleet::owner` from the request's cache key.
//! - Owned here, or forwarded here by another replica: the source below does the work.
//! - Owned by another replica: that replica is asked (`forwarding.rs`). Its record is
//!   checked like one read from the Action Cache and answered as [`Origin::Peer`]; its
//!   error is this request's error.
//! - The owner cannot be reached (down, restarting, a network fault): it is left out of
//!   the owner choice for a while and the next owner is asked (every replica that sees
//!   the same replicas picks the same one), down to this replica, whose source below
//!   does the work: no request fails because a replica went away.
//! - The owner answers a record that does not answer the request: the work is done here.

use super::forwarding::Forwardable;
use super::membership::{Fleet, Owner};
use super::metrics;
use crate::image::record_validation::ValidatesRecord;
use crate::image::stage::{Origin, StageRequest, StageResponse};
use futures::future::BoxFuture;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::Status;
use tower::{Layer, Service, ServiceExt};

/// Adds forwarding to the owning replica to a stage.
#[derive(Clone)]
pub(crate) struct ShardingLayer {
    fleet: Arc<Fleet>,
}

impl ShardingLayer {
    pub fn new(fleet: Arc<Fleet>) -> Self {
        Self { fleet }
    }
}

impl<S> Layer<S> for ShardingLayer {
    type Service = ShardingSource<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShardingSource {
            inner,
            fleet: self.fleet.clone(),
        }
    }
}

/// A stage whose misses are answered by their owning replica.
#[derive(Clone)]
pub(crate) struct ShardingSource<S> {
    inner: S,
    fleet: Arc<Fleet>,
}

impl<S, P, R> Service<StageRequest<P>> for ShardingSource<S>
where
    S: Service<StageRequest<P>, Response = R, Error = Status> + Clone + Send + Sync + 'static,
    S::Future: Send,
    P: Forwardable<Record = R::Record> + ValidatesRecord<R::Record>,
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
        let inner = self.inner.clone();
        let fleet = self.fleet.clone();
        Box::pin(async move {
            if request.from_peer {
                return inner.oneshot(request).await;
            }
            // Each failed owner leaves the choice, so this ends within one attempt per
            // replica, at the latest with this replica as the owner.
            loop {
                let (address, client) = match fleet.owner(&request.key.digest.hash) {
                    Owner::Local => {
                        metrics::request(P::STAGE, "local");
                        return inner.oneshot(request).await;
                    }
                    Owner::Peer { address, client } => (address, client),
                };
                let what = || {
                    format!(
                        "{} {} of instance {:?}",
                        P::STAGE,
                        crate::digest::display(&request.key.digest),
                        request.instance.name
                    )
                };
                match P::forward(client, &request).await {
                    Ok(Ok(record)) => match request.payload.validate(&request.instance, &record) {
                        Ok(()) => {
                            metrics::request(P::STAGE, "forwarded");
                            return Ok(R::from_record(Arc::new(record), Origin::Peer));
                        }
                        Err(reason) => {
                            tracing::warn!(
                                "Replica {address} answered {} with a record that does not \
                                 answer it ({reason}); doing the work here",
                                what()
                            );
                            metrics::request(P::STAGE, "owner_invalid");
                            return inner.oneshot(request).await;
                        }
                    },
                    Ok(Err(status)) => {
                        metrics::request(P::STAGE, "owner_failed");
                        return Err(status);
                    }
                    Err(status) => {
                        tracing::warn!(
                            "Failed to reach replica {address} for {}: {}; asking the next \
                             owner",
                            what(),
                            status.message()
                        );
                        fleet.mark_unreachable(&address);
                        metrics::request(P::STAGE, "owner_unreachable");
                    }
                }
            }
        })
    }
}
