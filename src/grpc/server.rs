//! Serves a set of gRPC services on every address and UNIX socket of each
//! `grpcServers[]` entry (bb-storage's `NewServersFromConfigurationAndServe`), with the
//! tower layers every call goes through: metrics, the authentication policy, and the
//! capture of incoming metadata for forwarding. Stops gracefully when `shutdown` fires.

use super::authentication::AuthenticationLayer;
use super::metadata_forwarding::IncomingMetadataLayer;
use super::metrics::MetricsLayer;
use crate::config::grpc::ServerConfiguration;
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::sync::watch;
use tonic::service::Routes;
use tower::ServiceBuilder;

/// Builds the routes of one server; called once per configured server, with that
/// server's configuration (message size limits, health check service name).
pub(crate) type RoutesFactory<'a> = dyn Fn(&ServerConfiguration) -> Routes + Send + Sync + 'a;

/// Binds every listener (failing fast if one cannot be bound) and returns futures that
/// serve until `shutdown` becomes true.
pub(crate) async fn bind_servers(
    configs: &[ServerConfiguration],
    routes: &RoutesFactory<'_>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<BoxFuture<'static, Result<(), String>>>, String> {
    let mut servers = Vec::new();
    for config in configs {
        let layers = ServiceBuilder::new()
            .layer(MetricsLayer)
            .layer(AuthenticationLayer::new(
                config.authentication_policy.clone(),
            ))
            .layer(IncomingMetadataLayer)
            .into_inner();
        for address in &config.listen_addresses {
            let socket_address = parse_listen_address(address)?;
            let listener = tokio::net::TcpListener::bind(socket_address)
                .await
                .map_err(|e| format!("Failed to listen on {address}: {e}"))?;
            tracing::info!(
                "gRPC server listening on {}",
                listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            );
            // Without TCP_NODELAY, response frames written separately wait for the
            // client's delayed ACK: a 40 ms stall per streamed call.
            let incoming =
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
            let server = tonic::transport::Server::builder()
                .layer(layers.clone())
                .add_routes(routes(config));
            let signal = wait_for(shutdown.clone());
            let address = address.clone();
            servers.push(
                async move {
                    server
                        .serve_with_incoming_shutdown(incoming, signal)
                        .await
                        .map_err(|e| format!("gRPC server on {address} failed: {e}"))
                }
                .boxed(),
            );
        }
        for path in &config.listen_paths {
            // A socket left behind by an earlier process would make bind fail.
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    let _ = std::fs::remove_file(path);
                }
            }
            let listener = tokio::net::UnixListener::bind(path)
                .map_err(|e| format!("Failed to listen on {path}: {e}"))?;
            tracing::info!("gRPC server listening on unix:{path}");
            let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
            let server = tonic::transport::Server::builder()
                .layer(layers.clone())
                .add_routes(routes(config));
            let signal = wait_for(shutdown.clone());
            let path = path.clone();
            servers.push(
                async move {
                    server
                        .serve_with_incoming_shutdown(incoming, signal)
                        .await
                        .map_err(|e| format!("gRPC server on {path} failed: {e}"))
                }
                .boxed(),
            );
        }
    }
    Ok(servers)
}

/// `':8980'` (all interfaces), `'127.0.0.1:8980'`, `'[::1]:8980'`.
pub(crate) fn parse_listen_address(address: &str) -> Result<std::net::SocketAddr, String> {
    let full = if address.starts_with(':') {
        format!("[::]{address}")
    } else {
        address.to_string()
    };
    full.parse()
        .map_err(|e| format!("Invalid listen address {address:?}: {e}"))
}

/// Resolves when the watched value becomes true (or its sender is gone).
pub async fn wait_for(mut shutdown: watch::Receiver<bool>) {
    while !*shutdown.borrow_and_update() {
        if shutdown.changed().await.is_err() {
            return;
        }
    }
}
