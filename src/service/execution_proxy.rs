//! Forwards `Execution.Execute` and `Execution.WaitExecution` to bb_scheduler
//! (bb-storage's `forwarding_build_queue.go`, as a stream proxy).
//!
//! Operations are relayed one by one as the scheduler sends them; operation names pass
//! unchanged (Buildbarn's frontend adds and strips its own prefix). A client that goes
//! away drops the relayed stream, which cancels the upstream call. The client's deadline
//! (`grpc-timeout`) is passed on, and the configured metadata is added by the client
//! channel's layers. A scheduler that is unreachable, or that dies mid-stream, yields
//! UNAVAILABLE.

use super::upstream_status::from_upstream;
use crate::grpc::GrpcChannel;
use crate::proto::longrunning::Operation;
use crate::proto::reapi::execution_client::ExecutionClient;
use crate::proto::reapi::execution_server::Execution;
use crate::proto::reapi::{ExecuteRequest, WaitExecutionRequest};
use futures::stream::BoxStream;
use futures::StreamExt;
use std::time::Duration;
use tonic::{Request, Response, Status};

pub type OperationStream = BoxStream<'static, Result<Operation, Status>>;

#[derive(Clone)]
pub struct ExecutionProxy {
    scheduler: ExecutionClient<GrpcChannel>,
}

impl ExecutionProxy {
    pub fn new(scheduler: GrpcChannel, maximum_message_size_bytes: usize) -> Self {
        Self {
            scheduler: ExecutionClient::new(scheduler)
                .max_decoding_message_size(maximum_message_size_bytes)
                .max_encoding_message_size(maximum_message_size_bytes),
        }
    }

    /// Sends an ExecuteRequest upstream and relays its operations.
    pub(crate) async fn forward_execute(
        &self,
        request: ExecuteRequest,
        timeout: Option<Duration>,
    ) -> Result<OperationStream, Status> {
        let stream = self
            .scheduler
            .clone()
            .execute(with_timeout(request, timeout))
            .await
            .map_err(|s| from_upstream(s, "Failed to forward Execute to the scheduler"))?
            .into_inner();
        Ok(relay(stream, "Scheduler failed during Execute"))
    }

    /// Sends a WaitExecutionRequest upstream and relays its operations.
    pub(crate) async fn forward_wait_execution(
        &self,
        request: WaitExecutionRequest,
        timeout: Option<Duration>,
    ) -> Result<OperationStream, Status> {
        let stream = self
            .scheduler
            .clone()
            .wait_execution(with_timeout(request, timeout))
            .await
            .map_err(|s| from_upstream(s, "Failed to forward WaitExecution to the scheduler"))?
            .into_inner();
        Ok(relay(stream, "Scheduler failed during WaitExecution"))
    }
}

/// An outgoing request carrying the client's deadline, if it gave one.
pub(crate) fn with_timeout<T>(message: T, timeout: Option<Duration>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(t) = timeout {
        request.set_timeout(t);
    }
    request
}

fn relay(stream: tonic::Streaming<Operation>, context: &'static str) -> OperationStream {
    stream
        .map(move |r| r.map_err(|s| from_upstream(s, context)))
        .boxed()
}

/// The deadline the client gave, from its `grpc-timeout` header.
pub(crate) fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = value.split_at(value.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[tonic::async_trait]
impl Execution for ExecutionProxy {
    type ExecuteStream = OperationStream;
    type WaitExecutionStream = OperationStream;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let timeout = grpc_timeout(request.metadata());
        self.forward_execute(request.into_inner(), timeout)
            .await
            .map(Response::new)
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let timeout = grpc_timeout(request.metadata());
        self.forward_wait_execution(request.into_inner(), timeout)
            .await
            .map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_grpc_timeout() {
        let mut m = tonic::metadata::MetadataMap::new();
        m.insert("grpc-timeout", "1500m".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(1500)));
        m.insert("grpc-timeout", "2H".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(7200)));
        m.insert("grpc-timeout", "x".parse().unwrap());
        assert_eq!(grpc_timeout(&m), None);
    }
}
