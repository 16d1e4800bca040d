//! The expander's connections to its backends (storage, scheduler, other replicas) as
//! built from a client configuration: calls cancelled while the backend is still sending
//! must not wear the connection out.
//!
//! The expander cancels a call to the scheduler whenever its own client cancels the
//! Execute (Bazel does, on every interrupted build), and the scheduler may have sent
//! updates on that stream already. HTTP/2 remembers only the last few streams it reset;
//! frames for older ones count against a per-connection limit that is never decremented
//! (h2's default: 1,024), after which the connection is closed with
//! GOAWAY(ENHANCE_YOUR_CALM) and every call on it fails. Here a backend streams without
//! end, 6,400 calls read one message each and cancel, and one call stays open throughout:
//! nothing may fail. With h2's default limit the calls failed after 400 to 450
//! cancellations.

use bb_container_expander::config::grpc::ClientConfiguration;
use bb_container_expander::grpc::client::new_channel_from_configuration;
use bb_container_expander::proto::longrunning::Operation;
use bb_container_expander::proto::reapi::execution_client::ExecutionClient;
use bb_container_expander::proto::reapi::execution_server::{Execution, ExecutionServer};
use bb_container_expander::proto::reapi::{ExecuteRequest, WaitExecutionRequest};
use futures::stream::BoxStream;
use futures::StreamExt;
use tonic::{Request, Response, Status};

const ROUNDS: usize = 200;
const CONCURRENT: usize = 32;

/// A scheduler that sends operation updates on every Execute as fast as flow control
/// lets it, until the call is cancelled.
struct EndlessUpdates;

#[tonic::async_trait]
impl Execution for EndlessUpdates {
    type ExecuteStream = BoxStream<'static, Result<Operation, Status>>;
    type WaitExecutionStream = BoxStream<'static, Result<Operation, Status>>;

    async fn execute(
        &self,
        _request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let update = Operation {
            name: "operations/".to_string() + &"x".repeat(2000),
            ..Default::default()
        };
        Ok(Response::new(
            futures::stream::iter(std::iter::repeat(Ok(update))).boxed(),
        ))
    }

    async fn wait_execution(
        &self,
        _request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        Err(Status::unimplemented("not in this test"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_calls_do_not_close_the_connection() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExecutionServer::new(EndlessUpdates))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let config: ClientConfiguration =
        serde_json::from_value(serde_json::json!({ "address": address.to_string() })).unwrap();
    let channel = new_channel_from_configuration(&config).unwrap();

    let mut open = ExecutionClient::new(channel.clone())
        .execute(ExecuteRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let calls = (0..CONCURRENT).map(|_| {
            let channel = channel.clone();
            async move {
                let mut updates = ExecutionClient::new(channel)
                    .execute(ExecuteRequest::default())
                    .await?
                    .into_inner();
                updates.message().await?;
                // Dropping `updates` cancels the call while updates are in flight.
                Ok::<(), Status>(())
            }
        });
        for result in futures::future::join_all(calls).await {
            if let Err(status) = result {
                failures.push(format!("round {round}: {status:?}"));
            }
        }
        let update = open.message().await;
        assert!(
            matches!(update, Ok(Some(_))),
            "the call left open failed in round {round}: {update:?}"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {} cancelled calls failed, the first: {}",
        failures.len(),
        ROUNDS * CONCURRENT,
        failures[0]
    );
}
