//! The `fleet` section turned into a [`Fleet`] that refreshes its replicas in the
//! background.

use super::membership::{Fleet, PeerClientOptions};
use crate::config::fleet::{
    FleetConfiguration, PeerClientConfiguration, DEFAULT_PEERS_REFRESH_INTERVAL,
    DEFAULT_PEER_CONNECT_TIMEOUT, DEFAULT_PEER_KEEPALIVE_TIME, DEFAULT_PEER_KEEPALIVE_TIMEOUT,
    DEFAULT_UNREACHABLE_PEER_BACKOFF,
};
use crate::config::grpc::{ClientConfiguration, ClientKeepaliveConfiguration};
use std::sync::Arc;

/// The fleet of `configuration`. Must be called within a Tokio runtime (the replicas
/// behind `peersDnsName` are resolved by a background task).
pub fn new_fleet_from_configuration(
    configuration: &FleetConfiguration,
    maximum_message_size_bytes: usize,
) -> Result<Arc<Fleet>, String> {
    configuration.validate().map_err(|e| format!("fleet.{e}"))?;
    let fleet = Arc::new(Fleet::new(
        configuration.self_address.clone(),
        configuration.peers.clone(),
        (!configuration.peers_dns_name.is_empty()).then(|| configuration.peers_dns_name.clone()),
        configuration
            .unreachable_peer_backoff
            .unwrap_or(DEFAULT_UNREACHABLE_PEER_BACKOFF),
        PeerClientOptions {
            template: peer_client_template(&configuration.peer_client),
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

/// The client configuration of calls to other replicas, without the address. A call to
/// an owner has no deadline (an expansion takes as long as the registry needs), so an
/// owner that stops answering is noticed by its connection's keepalive, which is on by
/// default, and the call fails over to the next owner.
fn peer_client_template(client: &PeerClientConfiguration) -> ClientConfiguration {
    ClientConfiguration {
        address: String::new(),
        tls: client.tls.clone(),
        keepalive: Some(
            client
                .keepalive
                .clone()
                .unwrap_or(ClientKeepaliveConfiguration {
                    time: DEFAULT_PEER_KEEPALIVE_TIME,
                    timeout: DEFAULT_PEER_KEEPALIVE_TIMEOUT,
                    permit_without_stream: false,
                }),
        ),
        add_metadata: client.add_metadata.clone(),
        add_metadata_jmespath_expression: None,
    }
}

#[cfg(test)]
mod tests {
    use super::peer_client_template;
    use crate::config::fleet::PeerClientConfiguration;
    use crate::config::grpc::ClientKeepaliveConfiguration;
    use std::time::Duration;

    #[test]
    fn peer_connections_have_keepalive_by_default() {
        let keepalive = peer_client_template(&PeerClientConfiguration::default())
            .keepalive
            .unwrap();
        assert_eq!(
            (
                keepalive.time,
                keepalive.timeout,
                keepalive.permit_without_stream
            ),
            (Duration::from_secs(10), Duration::from_secs(10), false)
        );
    }

    #[test]
    fn configured_peer_keepalive_is_kept() {
        let configured = PeerClientConfiguration {
            keepalive: Some(ClientKeepaliveConfiguration {
                time: Duration::from_secs(1),
                timeout: Duration::from_secs(2),
                permit_without_stream: true,
            }),
            ..Default::default()
        };
        let keepalive = peer_client_template(&configured).keepalive.unwrap();
        assert_eq!(
            (
                keepalive.time,
                keepalive.timeout,
                keepalive.permit_without_stream
            ),
            (Duration::from_secs(1), Duration::from_secs(2), true)
        );
    }
}
