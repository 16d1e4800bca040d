//! Generated code of the project's own .proto files (see build.rs), and short aliases for
//! the REAPI packages of the `bazel-remote-apis` crate.

pub use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
pub use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
pub use bazel_remote_apis::google::bytestream;
pub use bazel_remote_apis::google::longrunning;
pub use bazel_remote_apis::google::protobuf;
pub use bazel_remote_apis::google::rpc;

/// Records kept in the CAS and referenced from the Action Cache.
pub mod cache {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/bb_container_expander.cache.rs"));
}

/// Calls between replicas of the expander (docs/design/fleet.md).
pub mod fleet {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/bb_container_expander.fleet.rs"));
}

/// Buildbarn's remote action router hook (bb_scheduler `actionRouter: { remote: ... }`).
pub mod remoteactionrouter {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/buildbarn.remoteactionrouter.rs"));
}

/// google.rpc error details REAPI uses (PreconditionFailure for missing blobs, BadRequest
/// for unsupported Remote Asset qualifiers).
pub mod error_details {
    #![allow(clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/google.rpc.rs"));
}
