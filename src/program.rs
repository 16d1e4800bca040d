//! The service's main routine (bb-storage's `cmd/bb_storage/main.go` skeleton):
//! configuration → blob stores → registry, expander and rewriter → clients → gRPC
//! servers and the diagnostics HTTP server → ready, until SIGTERM or SIGINT, then a
//! graceful stop. This is the one place where the tower stack of each server is
//! assembled (see `grpc::server`) and where the services are chosen:
//!
//! - proxy mode (`scheduler` set): `Execution` (rewriting actions that name an image)
//!   and `Capabilities`, forwarded to bb_scheduler;
//! - router mode (always): `buildbarn.remoteactionrouter.ActionRouter`;
//! - `serveRemoteAsset`: `build.bazel.remote.asset.v1.Fetch` over the same expander;
//! - `fleet`: `bb_container_expander.fleet.Fleet`, the other replicas' calls;
//! - `grpc.health.v1.Health`.
//!
//! Beside the servers, `containerImages.prewarm` runs a prewarmer over the same
//! expander, from when the servers are bound until shutdown.

use crate::action::results::ResultMapper;
use crate::action::{new_action_rewriter_from_configuration, ActionRewriter};
use crate::blobstore::configuration::{
    new_action_cache_from_configuration, new_content_addressable_storage_from_configuration,
};
use crate::config::container_images::DEFAULT_KEEPALIVE_INTERVAL;
use crate::config::grpc::ServerConfiguration;
use crate::config::{self, ApplicationConfiguration};
use crate::diagnostics::{self, Readiness};
use crate::fleet::{new_fleet_from_configuration, FleetPeerService};
use crate::grpc::client::new_channel_from_configuration;
use crate::grpc::server::bind_servers;
use crate::image::{
    new_image_expander_from_configuration, new_prewarmer_from_configuration, Prewarmer,
};
use crate::proto::asset::fetch_server::FetchServer;
use crate::proto::fleet::fleet_server::FleetServer;
use crate::proto::reapi::capabilities_server::CapabilitiesServer;
use crate::proto::reapi::execution_server::ExecutionServer;
use crate::proto::remoteactionrouter::action_router_server::ActionRouterServer;
use crate::registry::configuration::{
    new_platform_from_configuration, new_registry_configuration_from_configuration,
};
use crate::service::{
    CapabilitiesProxy, ExecutionProxy, ExpandingActionRouter, ExpandingExecution, RemoteAssetFetch,
};
use futures::future::BoxFuture;
use std::sync::Arc;
use tokio::sync::watch;
use tonic::service::Routes;

/// Loads the configuration file at `path` (`-` for standard input) and checks all of
/// it: [`config::load`] what is about the configuration alone, then the modules
/// configured what only they know (registry hosts, supported platforms), with the
/// same messages (`Invalid configuration in FILE: containerImages.registries[0]…`).
pub fn load_configuration(path: &str) -> Result<ApplicationConfiguration, String> {
    let configuration = config::load(path)?;
    new_registry_configuration_from_configuration(&configuration.container_images)
        .validate()
        .map_err(|e| {
            format!(
                "Invalid configuration in {}: containerImages.{e}",
                config::display_path(path)
            )
        })?;
    Ok(configuration)
}

/// Everything the process serves, built from the configuration but not yet listening.
pub struct Program {
    config: ApplicationConfiguration,
    execution: Option<(ExpandingExecution, CapabilitiesProxy)>,
    router: Arc<ExpandingActionRouter>,
    remote_asset: Option<RemoteAssetFetch>,
    /// The owner's side of the fleet, when `fleet` is configured.
    fleet_peers: Option<FleetPeerService>,
    rewriter: Arc<ActionRewriter>,
    prewarmer: Option<Arc<Prewarmer>>,
}

impl Program {
    /// Creates the backends and clients. Connections are made lazily.
    pub fn from_configuration(config: ApplicationConfiguration) -> Result<Self, String> {
        let maximum_message_size = config.maximum_message_size_bytes as usize;
        let cas = new_content_addressable_storage_from_configuration(
            &config.blobstore.content_addressable_storage,
            maximum_message_size,
        )
        .map_err(|e| format!("Failed to create Content Addressable Storage: {e}"))?;
        let ac = new_action_cache_from_configuration(&config.blobstore.action_cache)
            .map_err(|e| format!("Failed to create Action Cache: {e}"))?;
        let images = &config.container_images;
        if images.allow_any_registry {
            // Hosts that clients choose share one metric label.
            crate::registry::metric_labels::limit_to_listed(
                images
                    .registries
                    .iter()
                    .flat_map(|r| r.hosts.iter().chain(&r.mirrors))
                    .map(String::as_str),
            );
        }
        let fleet = config
            .fleet
            .as_ref()
            .map(|f| new_fleet_from_configuration(f, maximum_message_size))
            .transpose()?;
        let expander = new_image_expander_from_configuration(
            images,
            cas.clone(),
            ac.clone(),
            maximum_message_size,
            fleet.clone(),
        )?;
        let fleet_peers = fleet.map(|_| FleetPeerService::new(expander.clone()));
        let prewarmer = new_prewarmer_from_configuration(images, &expander)
            .map_err(|e| format!("Invalid configuration: containerImages.{e}"))?;
        let rewriter = new_action_rewriter_from_configuration(
            images,
            expander,
            cas.clone(),
            maximum_message_size,
        );
        let execution = match &config.scheduler {
            Some(scheduler) => {
                let channel = new_channel_from_configuration(scheduler)
                    .map_err(|e| format!("Failed to create scheduler client: {e}"))?;
                let results = Arc::new(ResultMapper::new(cas, ac, images.write_back_results));
                Some((
                    ExpandingExecution::new(
                        ExecutionProxy::new(channel.clone(), maximum_message_size),
                        rewriter.clone(),
                        results,
                        images
                            .keepalive_interval
                            .unwrap_or(DEFAULT_KEEPALIVE_INTERVAL),
                    ),
                    CapabilitiesProxy::new(channel),
                ))
            }
            None => None,
        };
        let remote_asset = config.serve_remote_asset.then(|| {
            RemoteAssetFetch::new(
                rewriter.expander().clone(),
                new_platform_from_configuration(&images.default_platform),
            )
        });
        Ok(Self {
            router: Arc::new(ExpandingActionRouter::new(rewriter.clone())),
            remote_asset,
            fleet_peers,
            rewriter,
            execution,
            prewarmer,
            config,
        })
    }

    /// The rewriter (for jobs that run beside the servers, and tests).
    pub fn rewriter(&self) -> &Arc<ActionRewriter> {
        &self.rewriter
    }

    /// Binds every listener, then serves until `shutdown` becomes true.
    pub async fn serve(
        self,
        readiness: Readiness,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let maximum_message_size = self.config.maximum_message_size_bytes as usize;
        // The other replicas' calls: on servers of their own when `fleet.grpcServers`
        // lists any, otherwise beside Execution.
        let peer_servers: &[ServerConfiguration] = match (&self.fleet_peers, &self.config.fleet) {
            (Some(_), Some(fleet)) => &fleet.grpc_servers,
            _ => &[],
        };
        let fleet_server = |peers: &FleetPeerService, max_received: usize| {
            FleetServer::new(peers.clone())
                .max_decoding_message_size(max_received)
                .max_encoding_message_size(maximum_message_size.max(4 << 20))
        };
        let routes = |server: &ServerConfiguration| {
            let max_received = received_message_limit(server);
            let mut routes = Routes::new(health_service.clone()).add_service(
                ActionRouterServer::from_arc(self.router.clone())
                    .max_decoding_message_size(max_received)
                    .max_encoding_message_size(maximum_message_size.max(4 << 20)),
            );
            if let Some(fetch) = &self.remote_asset {
                routes = routes.add_service(
                    FetchServer::new(fetch.clone())
                        .max_decoding_message_size(max_received)
                        .max_encoding_message_size(maximum_message_size.max(4 << 20)),
                );
            }
            if let (Some(peers), true) = (&self.fleet_peers, peer_servers.is_empty()) {
                routes = routes.add_service(fleet_server(peers, max_received));
            }
            if let Some((execution, capabilities)) = &self.execution {
                routes = routes
                    .add_service(
                        ExecutionServer::new(execution.clone())
                            .max_decoding_message_size(max_received)
                            .max_encoding_message_size(maximum_message_size.max(4 << 20)),
                    )
                    .add_service(
                        CapabilitiesServer::new(capabilities.clone())
                            .max_decoding_message_size(max_received),
                    );
            }
            routes
        };
        let mut servers: Vec<BoxFuture<'static, Result<(), String>>> =
            bind_servers(&self.config.grpc_servers, &routes, shutdown.clone()).await?;
        if let Some(peers) = &self.fleet_peers {
            let peer_routes = |server: &ServerConfiguration| {
                Routes::new(health_service.clone())
                    .add_service(fleet_server(peers, received_message_limit(server)))
            };
            servers.extend(bind_servers(peer_servers, &peer_routes, shutdown.clone()).await?);
        }
        if let Some(diagnostics) = &self.config.global.diagnostics_http_server {
            servers
                .extend(diagnostics::bind(diagnostics, readiness.clone(), shutdown.clone()).await?);
        }
        for server in self.config.grpc_servers.iter().chain(peer_servers) {
            if !server.health_check_service.is_empty() {
                health_reporter
                    .set_service_status(
                        server.health_check_service.clone(),
                        tonic_health::ServingStatus::Serving,
                    )
                    .await;
            }
        }
        health_reporter
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let prewarming = self
            .prewarmer
            .clone()
            .map(|prewarmer| tokio::spawn(prewarmer.run(shutdown.clone())));
        readiness.set(true);
        tracing::info!("bb-container-expander is ready");
        let results = futures::future::join_all(servers).await;
        readiness.set(false);
        if let Some(prewarming) = prewarming {
            // It stops on the shutdown signal; servers that ended with an error did not
            // send one.
            prewarming.abort();
            let _ = prewarming.await;
        }
        results.into_iter().collect::<Result<Vec<()>, String>>()?;
        Ok(())
    }
}

/// A server's `maximumReceivedMessageSizeBytes`, 4 MiB when unset.
fn received_message_limit(server: &ServerConfiguration) -> usize {
    match server.maximum_received_message_size_bytes {
        0 => 4 * 1024 * 1024,
        n => n as usize,
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("Received SIGTERM, shutting down"),
        _ = int.recv() => tracing::info!("Received SIGINT, shutting down"),
    }
}

#[cfg(test)]
mod tests {
    use super::load_configuration;

    /// The registry settings are checked where they are used, with the message
    /// docs/troubleshooting.md shows.
    #[test]
    fn registry_settings_are_checked_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonnet");
        std::fs::write(
            &path,
            "{ grpcServers: [{ listenAddresses: [':8985'], authenticationPolicy: { allow: {} } }],
               blobstore: { contentAddressableStorage: { memory: {} }, actionCache: { memory: {} } },
               containerImages: { registries: [{ hosts: ['a.example'] }, { hosts: ['A.example'] }] } }",
        )
        .unwrap();
        let path = path.to_str().unwrap();
        let err = load_configuration(path).unwrap_err();
        assert_eq!(
            err,
            format!(
                "Invalid configuration in {path}: containerImages.registries[1].hosts[0]: \
                 host \"A.example\" is listed more than once"
            )
        );
        assert!(crate::config::load(path).is_ok());
    }
}
