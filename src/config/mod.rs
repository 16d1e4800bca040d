//! Configuration: Jsonnet evaluated with Buildbarn's semantics ([`jsonnet`]) and decoded
//! into the typed [`ApplicationConfiguration`]. Field names are lowerCamelCase, unknown
//! fields are errors, durations are protobuf JSON strings and int64 values may be
//! numbers or strings ([`protojson`]), and a oneof is an object with exactly one key.
//!
//! The reference configuration with every field documented is
//! `configs/bb_container_expander.jsonnet`.

pub mod blobstore;
pub mod container_images;
pub mod fleet;
pub mod global;
pub mod grpc;
pub mod jsonnet;
pub mod protojson;

use serde::Deserialize;

/// The whole configuration file of `bb-container-expander`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ApplicationConfiguration {
    /// Diagnostics HTTP server and logging.
    #[serde(default)]
    pub global: global::GlobalConfiguration,
    /// Servers on which the expander offers Execution, Capabilities and Health.
    pub grpc_servers: Vec<grpc::ServerConfiguration>,
    /// Largest protobuf message read from or written to the CAS (Directories, Actions).
    /// Must match bb_worker's setting. Default: [`DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES`].
    /// Recommended value: 2 MiB, as bb-deployments.
    #[serde(
        default = "default_maximum_message_size_bytes",
        deserialize_with = "protojson::uint64"
    )]
    pub maximum_message_size_bytes: u64,
    /// The CAS and Action Cache shared with the scheduler and workers.
    pub blobstore: blobstore::BlobstoreConfiguration,
    /// Proxy mode: the bb_scheduler that rewritten and passed-through actions are
    /// forwarded to. When unset, only router mode (ActionRouter) is served.
    #[serde(default)]
    pub scheduler: Option<grpc::ClientConfiguration>,
    /// Registries, image expansion and its caches.
    #[serde(default)]
    pub container_images: container_images::ContainerImagesConfiguration,
    /// Serve `build.bazel.remote.asset.v1.Fetch` on every gRPC server: `FetchDirectory` of
    /// a `docker://` URI expands the image and answers its root Directory digest
    /// (docs/remote-asset.md). Default: false.
    #[serde(default)]
    pub serve_remote_asset: bool,
    /// The other replicas of this deployment: each image and layer is expanded by one
    /// owner among them (docs/design/fleet.md). Unset: this process works alone.
    #[serde(default)]
    pub fleet: Option<fleet::FleetConfiguration>,
}

/// `maximumMessageSizeBytes` when unset: 2 MiB.
pub const DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES: u64 = 2 * 1024 * 1024;

fn default_maximum_message_size_bytes() -> u64 {
    DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES
}

impl ApplicationConfiguration {
    /// Checks what the types cannot express and needs no other module; the modules
    /// configured check the rest when their objects are created from it.
    pub fn validate(&self) -> Result<(), String> {
        if self.grpc_servers.is_empty() {
            return Err("grpcServers: at least one server is required".into());
        }
        for (i, server) in self.grpc_servers.iter().enumerate() {
            if server.listen_addresses.is_empty() && server.listen_paths.is_empty() {
                return Err(format!(
                    "grpcServers[{i}]: no listenAddresses or listenPaths given"
                ));
            }
        }
        if let Some(scheduler) = &self.scheduler {
            if scheduler.address.is_empty() {
                return Err("scheduler.address: must not be empty".into());
            }
        }
        self.container_images
            .validate()
            .map_err(|e| format!("containerImages.{e}"))?;
        if let Some(fleet) = &self.fleet {
            fleet.validate().map_err(|e| format!("fleet.{e}"))?;
        }
        if self.maximum_message_size_bytes < 64 * 1024 {
            return Err(format!(
                "maximumMessageSizeBytes: {} is too small (at least 65536)",
                self.maximum_message_size_bytes
            ));
        }
        Ok(())
    }
}

/// Loads and validates the configuration file at `path` (`-` for standard input).
pub fn load(path: &str) -> Result<ApplicationConfiguration, String> {
    let config: ApplicationConfiguration = jsonnet::load_file(path)?;
    config
        .validate()
        .map_err(|e| format!("Invalid configuration in {}: {e}", display_path(path)))?;
    Ok(config)
}

/// How messages name the configuration file at `path`.
pub fn display_path(path: &str) -> &str {
    if path == "-" {
        "standard input"
    } else {
        path
    }
}

#[cfg(test)]
mod tests;
