//! Forwards `Capabilities.GetCapabilities` to bb_scheduler. Buildbarn's frontend asks
//! the scheduler endpoint (here: the expander) for the execution capabilities and merges
//! them with its own cache capabilities, so the scheduler's answer is relayed unchanged.

use super::upstream_status::from_upstream;
use crate::grpc::GrpcChannel;
use crate::proto::reapi::capabilities_client::CapabilitiesClient;
use crate::proto::reapi::capabilities_server::Capabilities;
use crate::proto::reapi::{GetCapabilitiesRequest, ServerCapabilities};
use tonic::{Request, Response, Status};

#[derive(Clone)]
pub(crate) struct CapabilitiesProxy {
    scheduler: CapabilitiesClient<GrpcChannel>,
}

impl CapabilitiesProxy {
    pub fn new(scheduler: GrpcChannel) -> Self {
        Self {
            scheduler: CapabilitiesClient::new(scheduler),
        }
    }
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesProxy {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        let timeout = super::execution_proxy::grpc_timeout(request.metadata());
        let out = super::execution_proxy::with_timeout(request.into_inner(), timeout);
        self.scheduler
            .clone()
            .get_capabilities(out)
            .await
            .map_err(|s| from_upstream(s, "Failed to forward GetCapabilities to the scheduler"))
    }
}
