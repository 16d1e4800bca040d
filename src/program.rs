//! The service's main routine (bb-storage's `cmd/bb_storage/main.go` skeleton):
//! configuration → blob stores → clients → gRPC servers and the diagnostics HTTP server
//! → ready, until SIGTERM or SIGINT, then a graceful stop.

use crate::blobstore::configuration::{
    new_action_cache_from_configuration, new_content_addressable_storage_from_configuration,
};
use crate::config::ApplicationConfiguration;
use crate::diagnostics::{self, Readiness};
use crate::grpc::client::new_channel_from_configuration;
use crate::grpc::server::bind_servers;
use crate::proto::reapi::capabilities_server::CapabilitiesServer;
use crate::proto::reapi::execution_server::ExecutionServer;
use crate::service::{CapabilitiesProxy, ExecutionProxy};
use futures::future::BoxFuture;
use tokio::sync::watch;
use tonic::service::Routes;

/// Everything the process serves, built from the configuration but not yet listening.
pub struct Program {
    config: ApplicationConfiguration,
    execution: ExecutionProxy,
    capabilities: CapabilitiesProxy,
}

impl Program {
    /// Creates the backends and clients. Connections are made lazily.
    pub fn from_configuration(config: ApplicationConfiguration) -> Result<Self, String> {
        let maximum_message_size = config.maximum_message_size_bytes as usize;
        let _cas = new_content_addressable_storage_from_configuration(
            &config.blobstore.content_addressable_storage,
            maximum_message_size,
        )
        .map_err(|e| format!("Failed to create Content Addressable Storage: {e}"))?;
        let _ac = new_action_cache_from_configuration(&config.blobstore.action_cache)
            .map_err(|e| format!("Failed to create Action Cache: {e}"))?;
        let scheduler = new_channel_from_configuration(&config.scheduler)
            .map_err(|e| format!("Failed to create scheduler client: {e}"))?;
        Ok(Self {
            execution: ExecutionProxy::new(scheduler.clone(), maximum_message_size),
            capabilities: CapabilitiesProxy::new(scheduler),
            config,
        })
    }

    /// Binds every listener, then serves until `shutdown` becomes true.
    pub async fn serve(
        self,
        readiness: Readiness,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), String> {
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let maximum_message_size = self.config.maximum_message_size_bytes as usize;
        let routes = |server: &crate::config::grpc::ServerConfiguration| {
            let max_received = match server.maximum_received_message_size_bytes {
                0 => 4 * 1024 * 1024,
                n => n as usize,
            };
            Routes::new(health_service.clone())
                .add_service(
                    ExecutionServer::new(self.execution.clone())
                        .max_decoding_message_size(max_received)
                        .max_encoding_message_size(maximum_message_size.max(4 << 20)),
                )
                .add_service(
                    CapabilitiesServer::new(self.capabilities.clone())
                        .max_decoding_message_size(max_received),
                )
        };
        let mut servers: Vec<BoxFuture<'static, Result<(), String>>> =
            bind_servers(&self.config.grpc_servers, &routes, shutdown.clone()).await?;
        if let Some(diagnostics) = &self.config.global.diagnostics_http_server {
            servers.extend(diagnostics::bind(diagnostics, readiness.clone(), shutdown.clone()).await?);
        }
        for server in &self.config.grpc_servers {
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
        readiness.set(true);
        tracing::info!("bb-container-expander is ready");
        let results = futures::future::join_all(servers).await;
        readiness.set(false);
        results.into_iter().collect::<Result<Vec<()>, String>>()?;
        Ok(())
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
