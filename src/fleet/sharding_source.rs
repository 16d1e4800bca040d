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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::membership::PeerClientOptions;
    use crate::image::fake_source::{CountingSource, Stores};
    use crate::image::image_source::ImageRequest;
    use crate::proto::cache::ImageRecord;
    use crate::proto::fleet::fleet_server::{Fleet as FleetApi, FleetServer};
    use crate::proto::fleet::{
        expand_image_response, ExpandImageRequest, ExpandImageResponse, IngestLayerRequest,
        IngestLayerResponse, OwnerError,
    };
    use parking_lot::Mutex;
    use std::time::Duration;
    use tonic::{Code, Request, Response};

    /// A replica that answers every ExpandImage with `answer` and counts the calls.
    #[derive(Clone)]
    struct ScriptedOwner {
        answer: Arc<Mutex<expand_image_response::Result>>,
        calls: Arc<Mutex<Vec<ExpandImageRequest>>>,
    }

    #[tonic::async_trait]
    impl FleetApi for ScriptedOwner {
        async fn expand_image(
            &self,
            request: Request<ExpandImageRequest>,
        ) -> Result<Response<ExpandImageResponse>, Status> {
            self.calls.lock().push(request.into_inner());
            Ok(Response::new(ExpandImageResponse {
                result: Some(self.answer.lock().clone()),
            }))
        }

        async fn ingest_layer(
            &self,
            _: Request<IngestLayerRequest>,
        ) -> Result<Response<IngestLayerResponse>, Status> {
            Err(Status::unimplemented("not scripted"))
        }
    }

    /// Serves `owner` on a free loopback port; returns its address.
    async fn serve(owner: ScriptedOwner) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(FleetServer::new(owner))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        address
    }

    fn fleet_with(peer: &str) -> Arc<Fleet> {
        Arc::new(Fleet::new(
            "127.0.0.1:1".into(),
            vec![peer.to_string()],
            None,
            Duration::from_secs(600),
            PeerClientOptions {
                template: Default::default(),
                connect_timeout: Duration::from_secs(5),
                maximum_message_size_bytes: 4 << 20,
            },
        ))
    }

    /// A request that `peer` owns in `fleet`.
    fn owned_by_peer(stores: &Stores, fleet: &Fleet) -> ImageRequest {
        "0123456789abcdef"
            .chars()
            .map(|c| stores.request(c))
            .find(|r| matches!(fleet.owner(&r.key.digest.hash), Owner::Peer { .. }))
            .expect("the peer owns one of 16 requests")
    }

    fn record_for(request: &ImageRequest, manifest: &str) -> ImageRecord {
        ImageRecord {
            manifest_digest: manifest.into(),
            root_directory_digest: Some(crate::digest::DigestFunction::Sha256.empty_digest()),
            resolved_digest: request.payload.pinned.digest().unwrap().to_string(),
            runtime_config: Some(Default::default()),
            ..Default::default()
        }
    }

    async fn setup(
        answer: impl FnOnce(&ImageRequest) -> expand_image_response::Result,
    ) -> (
        ShardingSource<CountingSource>,
        ScriptedOwner,
        ImageRequest,
        Arc<Fleet>,
    ) {
        let stores = Stores::new();
        let owner = ScriptedOwner {
            answer: Arc::new(Mutex::new(expand_image_response::Result::Error(
                OwnerError::default(),
            ))),
            calls: Default::default(),
        };
        let fleet = fleet_with(&serve(owner.clone()).await);
        let request = owned_by_peer(&stores, &fleet);
        *owner.answer.lock() = answer(&request);
        let source = ShardingLayer::new(fleet.clone()).layer(CountingSource::new(vec![]));
        (source, owner, request, fleet)
    }

    #[tokio::test]
    async fn a_miss_the_peer_owns_is_answered_with_the_peers_record() {
        let (source, owner, request, _) =
            setup(|r| expand_image_response::Result::Record(record_for(r, "from-the-owner"))).await;
        let local = source.inner.clone();
        let answer = source.oneshot(request.clone()).await.unwrap();
        assert_eq!(answer.origin, Origin::Peer);
        assert_eq!(answer.record.manifest_digest, "from-the-owner");
        assert_eq!(local.calls(), 0);
        let calls = owner.calls.lock();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].reference, request.payload.pinned.to_string());
        assert_eq!(calls[0].platform, "linux/amd64");
    }

    #[tokio::test]
    async fn the_owners_error_is_the_answer_and_no_work_is_done_here() {
        let (source, _, request, fleet) = setup(|_| {
            expand_image_response::Result::Error(OwnerError {
                code: Code::NotFound as i32,
                message: "Failed to fetch manifest: not found".into(),
            })
        })
        .await;
        let local = source.inner.clone();
        let err = source.oneshot(request).await.unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (Code::NotFound, "Failed to fetch manifest: not found")
        );
        assert_eq!(local.calls(), 0);
        assert_eq!(fleet.replicas().len(), 2, "the owner stays in the choice");
    }

    #[tokio::test]
    async fn a_record_that_does_not_answer_the_request_is_rebuilt_here() {
        let (source, _, request, _) = setup(|r| {
            let mut record = record_for(r, "wrong");
            record.resolved_digest = format!("sha256:{}", "f".repeat(64));
            expand_image_response::Result::Record(record)
        })
        .await;
        let local = source.inner.clone();
        let answer = source.oneshot(request).await.unwrap();
        assert_eq!((answer.origin, local.calls()), (Origin::Built, 1));
    }

    #[tokio::test]
    async fn a_request_from_a_peer_is_never_forwarded_again() {
        let (source, owner, mut request, _) =
            setup(|r| expand_image_response::Result::Record(record_for(r, "from-the-owner"))).await;
        request.from_peer = true;
        let local = source.inner.clone();
        let answer = source.oneshot(request).await.unwrap();
        assert_eq!((answer.origin, local.calls()), (Origin::Built, 1));
        assert!(owner.calls.lock().is_empty());
    }

    #[tokio::test]
    async fn an_unreachable_owner_is_left_out_and_the_work_done_here() {
        // Nothing listens on the peer's port.
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = free.local_addr().unwrap().to_string();
        drop(free);
        let fleet = fleet_with(&peer);
        let stores = Stores::new();
        let request = owned_by_peer(&stores, &fleet);
        let local = CountingSource::new(vec![]);
        let answer = ShardingLayer::new(fleet.clone())
            .layer(local.clone())
            .oneshot(request.clone())
            .await
            .unwrap();
        assert_eq!((answer.origin, local.calls()), (Origin::Built, 1));
        assert_eq!(fleet.replicas(), vec!["127.0.0.1:1".to_string()]);
        // The next miss goes straight to the source, without trying the peer.
        assert!(matches!(
            fleet.owner(&request.key.digest.hash),
            Owner::Local
        ));
    }
}
