//! The diagnostics HTTP server of `global.diagnosticsHttpServer`, as in every Buildbarn
//! binary: `/-/healthy` answers 200 once the process is serving (503 before, and again
//! while shutting down), and `/metrics` serves Prometheus metrics when
//! `enablePrometheus` is set: the service's own series (each once used) and, from the
//! first scrape on, the `process_*` series of [`process`]. [`logging`] sets up the logs.

use crate::config::global::DiagnosticsHttpServerConfiguration;
use crate::grpc::authentication;
use crate::grpc::server::{parse_listen_address, wait_for};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

pub mod logging;
pub mod process;

/// Whether the process is ready to serve; shared with `/-/healthy`.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst)
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Registers the `process_*` collector with the default registry, once per process.
pub(crate) fn register_process_metrics() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        if let Err(e) = prometheus::register(Box::new(process::ProcessCollector::new())) {
            tracing::warn!("Failed to register the process metrics: {e}");
        }
    });
}

/// Renders every registered metric in the Prometheus text format, the `process_*`
/// series included.
pub fn render_metrics() -> String {
    register_process_metrics();
    let families = prometheus::gather();
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .unwrap_or_default()
}

fn router(config: &DiagnosticsHttpServerConfiguration, readiness: Readiness) -> Router {
    let mut router = Router::new().route(
        "/-/healthy",
        get(move || {
            let ready = readiness.get();
            async move {
                if ready {
                    (StatusCode::OK, "")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "Not ready\n")
                }
            }
        }),
    );
    if config.enable_prometheus {
        router = router.route(
            "/metrics",
            get(|| async {
                (
                    [("content-type", "text/plain; version=0.0.4")],
                    render_metrics(),
                )
            }),
        );
    }
    router
}

/// Binds every configured HTTP listener and returns futures that serve until shutdown.
pub async fn bind(
    config: &DiagnosticsHttpServerConfiguration,
    readiness: Readiness,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<BoxFuture<'static, Result<(), String>>>, String> {
    if config.enable_prometheus {
        register_process_metrics();
    }
    let mut servers = Vec::new();
    for server in &config.http_servers {
        let mut app = router(config, readiness.clone());
        if let Err(message) = authentication::evaluate(&server.authentication_policy) {
            app = Router::new().fallback(move || {
                let message = message.clone();
                async move { (StatusCode::UNAUTHORIZED, message) }
            });
        }
        for address in &server.listen_addresses {
            let listener = tokio::net::TcpListener::bind(parse_listen_address(address)?)
                .await
                .map_err(|e| format!("Failed to listen on {address}: {e}"))?;
            tracing::info!(
                "Diagnostics HTTP server listening on {}",
                listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            );
            let app = app.clone();
            let signal = wait_for(shutdown.clone());
            let address = address.clone();
            servers.push(
                async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(signal)
                        .await
                        .map_err(|e| format!("Diagnostics HTTP server on {address} failed: {e}"))
                }
                .boxed(),
            );
        }
    }
    Ok(servers)
}
