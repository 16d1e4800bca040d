//! Turns a Buildbarn `ClientConfiguration` into a channel (bb-storage's
//! `base_client_factory.go`): the address (`host:port`, `dns:///host:port`,
//! `unix:///path`), TLS, keepalive, and the metadata-forwarding layer.
//!
//! Connections are made lazily: a peer that is down at start-up does not stop the
//! expander from starting; calls fail with UNAVAILABLE until it is reachable.

use super::metadata_forwarding::{AddMetadataLayer, MetadataAdder};
use super::GrpcChannel;
use crate::config::grpc::{ClientConfiguration, KeyPair};
use hyper_util::rt::TokioIo;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tower::ServiceBuilder;

/// Creates a channel from the configuration. Must be called within a Tokio runtime.
pub fn new_channel_from_configuration(config: &ClientConfiguration) -> Result<GrpcChannel, String> {
    new_channel_with_connect_timeout(config, None)
}

/// A channel from the configuration whose connection attempts give up after
/// `connect_timeout` (for peers that may be gone, such as other replicas).
pub fn new_channel_with_connect_timeout(
    config: &ClientConfiguration,
    connect_timeout: Option<std::time::Duration>,
) -> Result<GrpcChannel, String> {
    let context = |e: String| format!("Failed to create client for {:?}: {e}", config.address);
    let adder = MetadataAdder::from_configuration(config).map_err(context)?;
    let (mut endpoint, unix_path) = endpoint(config).map_err(context)?;
    if let Some(timeout) = connect_timeout {
        endpoint = endpoint.connect_timeout(timeout);
    }
    let channel = match unix_path {
        Some(path) => {
            endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }))
        }
        None => endpoint.connect_lazy(),
    };
    if adder.is_empty() {
        return Ok(super::boxed(channel));
    }
    Ok(tower::util::BoxCloneSyncService::new(
        ServiceBuilder::new()
            .layer(AddMetadataLayer::new(adder))
            .service(channel),
    ))
}

fn endpoint(config: &ClientConfiguration) -> Result<(Endpoint, Option<String>), String> {
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let (uri, unix_path) = if let Some(path) = config.address.strip_prefix("unix://") {
        if path.is_empty() {
            return Err("UNIX socket path is empty".into());
        }
        // The URI is not used for connecting, only for the :authority of requests.
        ("http://localhost".to_string(), Some(path.to_string()))
    } else if let Some(path) = config.address.strip_prefix("unix:") {
        ("http://localhost".to_string(), Some(path.to_string()))
    } else {
        let host_port = config
            .address
            .strip_prefix("dns:///")
            .unwrap_or(&config.address);
        if host_port.is_empty() || host_port.contains("://") {
            return Err("address must be host:port, dns:///host:port or unix:///path".into());
        }
        (format!("{scheme}://{host_port}"), None)
    };
    // The backends configured here (storage, scheduler, the other replicas) are trusted,
    // and the expander cancels its calls to them whenever its own clients cancel. Frames
    // that a backend had already sent on a stream cancelled a little earlier count, once
    // HTTP/2 has forgotten the stream, as "local error resets", and h2's default limit
    // of 1,024 of them per connection, never decremented, would eventually close a busy
    // long-lived connection with GOAWAY(ENHANCE_YOUR_CALM) and fail every call on it
    // (tests/backend_connections.rs). The limit guards against misbehaving peers; the
    // expander's own gRPC servers keep it.
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| format!("invalid address: {e}"))?
        .http2_max_local_error_reset_streams(None);
    if let Some(tls) = &config.tls {
        let mut tls_config = ClientTlsConfig::new().with_enabled_roots();
        if !tls.server_certificate_authorities.is_empty() {
            tls_config = tls_config
                .ca_certificate(Certificate::from_pem(&tls.server_certificate_authorities));
        }
        if !tls.server_name.is_empty() {
            tls_config = tls_config.domain_name(tls.server_name.clone());
        }
        if let Some(key_pair) = &tls.client_key_pair {
            let (cert, key) = match key_pair {
                KeyPair::Inline(k) => (k.certificate.clone(), k.private_key.clone()),
                KeyPair::Files(f) => (
                    std::fs::read_to_string(&f.certificate_path)
                        .map_err(|e| format!("Failed to read {}: {e}", f.certificate_path))?,
                    std::fs::read_to_string(&f.private_key_path)
                        .map_err(|e| format!("Failed to read {}: {e}", f.private_key_path))?,
                ),
            };
            tls_config = tls_config.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint
            .tls_config(tls_config)
            .map_err(|e| format!("invalid TLS configuration: {e}"))?;
    }
    if let Some(keepalive) = &config.keepalive {
        endpoint = endpoint
            .http2_keep_alive_interval(keepalive.time)
            .keep_alive_timeout(keepalive.timeout)
            .keep_alive_while_idle(keepalive.permit_without_stream);
    }
    Ok((endpoint, unix_path))
}
