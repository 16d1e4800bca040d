//! Compiles the project's own .proto files with protox (no system protoc needed).
//! Messages of REAPI and google.protobuf resolve to the `bazel-remote-apis` crate.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/buildbarn/remoteactionrouter/remoteactionrouter.proto",
        "proto/bb_container_expander/cache.proto",
        "proto/bb_container_expander/fleet.proto",
        "proto/google/rpc/error_details.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-changed=proto/third_party");
    let fds = protox::compile(protos, ["proto", "proto/third_party"])?;
    tonic_prost_build::configure()
        .compile_well_known_types(true)
        .extern_path(
            ".build.bazel.remote.execution.v2",
            "::bazel_remote_apis::build::bazel::remote::execution::v2",
        )
        .extern_path(".google.protobuf", "::bazel_remote_apis::google::protobuf")
        .compile_fds(fds)?;
    Ok(())
}
