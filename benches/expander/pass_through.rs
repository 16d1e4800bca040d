//! Row l's ceiling: an Execution service that forwards every Execute, untouched, to the
//! scheduler over one channel, with no storage call and no rewrite. Whatever a proxy in
//! front of the scheduler does, it pays at least this: one more gRPC server and one more
//! gRPC client per call, on the same cores as everything else. Measured next to the
//! expander, it shows which part of row l's gap is the extra hop itself.

use bb_container_expander::proto::longrunning::Operation;
use bb_container_expander::proto::reapi::execution_client::ExecutionClient;
use bb_container_expander::proto::reapi::execution_server::{Execution, ExecutionServer};
use bb_container_expander::proto::reapi::{ExecuteRequest, WaitExecutionRequest};
use std::net::SocketAddr;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

struct PassThrough {
    upstream: ExecutionClient<Channel>,
}

#[tonic::async_trait]
impl Execution for PassThrough {
    type ExecuteStream = Streaming<Operation>;
    type WaitExecutionStream = Streaming<Operation>;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let stream = self
            .upstream
            .clone()
            .execute(request.into_inner())
            .await?
            .into_inner();
        Ok(Response::new(stream))
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let stream = self
            .upstream
            .clone()
            .wait_execution(request.into_inner())
            .await?
            .into_inner();
        Ok(Response::new(stream))
    }
}

/// Serves the pass-through on a free loopback port (TCP_NODELAY, as the expander's
/// server in this row) and returns its address.
pub async fn start(upstream: Channel) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let service = ExecutionServer::new(PassThrough {
        upstream: ExecutionClient::new(upstream),
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    address
}
