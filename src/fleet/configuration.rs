//! The `fleet` section turned into a [`Fleet`] that refreshes its replicas in the
//! background.

use super::membership::{Fleet, PeerClientOptions};
use crate::config::fleet::{
    FleetConfiguration, DEFAULT_PEERS_REFRESH_INTERVAL, DEFAULT_PEER_CONNECT_TIMEOUT,
    DEFAULT_UNREACHABLE_PEER_BACKOFF,
};
use crate::config::grpc::ClientConfiguration;
use std::sync::Arc;

/// The fleet of `configuration`. Must be called within a Tokio runtime (the replicas
/// behind `peersDnsName` are resolved by a background task).
pub fn new_fleet_from_configuration(
    configuration: &FleetConfiguration,
    maximum_message_size_bytes: usize,
) -> Result<Arc<Fleet>, String> {
    configuration.validate().map_err(|e| format!("fleet.{e}"))?;
    let client = &configuration.peer_client;
    let fleet = Arc::new(Fleet::new(
        configuration.self_address.clone(),
        configuration.peers.clone(),
        (!configuration.peers_dns_name.is_empty()).then(|| configuration.peers_dns_name.clone()),
        configuration
            .unreachable_peer_backoff
            .unwrap_or(DEFAULT_UNREACHABLE_PEER_BACKOFF),
        PeerClientOptions {
            template: ClientConfiguration {
                address: String::new(),
                tls: client.tls.clone(),
                keepalive: client.keepalive.clone(),
                add_metadata: client.add_metadata.clone(),
                add_metadata_jmespath_expression: None,
            },
            connect_timeout: configuration
                .connect_timeout
                .unwrap_or(DEFAULT_PEER_CONNECT_TIMEOUT),
            maximum_message_size_bytes,
        },
    ));
    fleet.spawn_refreshing(
        configuration
            .peers_refresh_interval
            .unwrap_or(DEFAULT_PEERS_REFRESH_INTERVAL),
    );
    Ok(fleet)
}
