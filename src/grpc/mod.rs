//! gRPC plumbing shared by clients and servers: channels built from Buildbarn's
//! `ClientConfiguration`, servers built from `ServerConfiguration`, and the tower layers
//! (authentication policy, metadata forwarding, metrics) between them.

/// A client connection as the generated tonic clients use it. The concrete
/// `tonic::transport::Channel` is boxed so that tower layers (metadata forwarding, …)
/// can be stacked on it according to the configuration.
pub type GrpcChannel = tower::util::BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    tonic::transport::Error,
>;

/// Boxes a plain channel.
pub fn boxed(channel: tonic::transport::Channel) -> GrpcChannel {
    tower::util::BoxCloneSyncService::new(channel)
}

pub mod authentication;
pub mod client;
pub mod metadata_forwarding;
pub mod metrics;
pub mod server;
