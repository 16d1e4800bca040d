//! The gRPC front doors: `Execution` and `Capabilities` served to Buildbarn's frontend
//! (proxy mode) and forwarded to bb_scheduler, `ActionRouter` served to bb_scheduler
//! (router mode), `build.bazel.remote.asset.v1.Fetch` (images as Remote Asset directories)
//! and `grpc.health.v1.Health`.

pub mod action_router;
pub(crate) mod capabilities_proxy;
pub mod execution_proxy;
pub(crate) mod expanding_execution;
pub(crate) mod operation_names;
pub mod remote_asset_fetch;
pub(crate) mod upstream_status;

pub(crate) use action_router::ExpandingActionRouter;
pub(crate) use capabilities_proxy::CapabilitiesProxy;
pub use execution_proxy::ExecutionProxy;
pub use expanding_execution::ExpandingExecution;
pub use remote_asset_fetch::RemoteAssetFetch;
