//! The gRPC front doors: `Execution` and `Capabilities` served to Buildbarn's frontend
//! (proxy mode) and forwarded to bb_scheduler, and `grpc.health.v1.Health`.

pub mod capabilities_proxy;
pub mod execution_proxy;
pub mod upstream_status;

pub use capabilities_proxy::CapabilitiesProxy;
pub use execution_proxy::ExecutionProxy;
