//! `fleet`: the replicas of one deployment, which share the work of expanding images
//! (docs/design/fleet.md). Unset: the process works alone.

use super::grpc::{
    ClientKeepaliveConfiguration, ClientTlsConfiguration, HeaderValues, ServerConfiguration,
};
use super::protojson;
use serde::Deserialize;
use std::time::Duration;

/// `peersRefreshInterval` when unset.
pub const DEFAULT_PEERS_REFRESH_INTERVAL: Duration = Duration::from_secs(10);
/// `unreachablePeerBackoff` when unset.
pub const DEFAULT_UNREACHABLE_PEER_BACKOFF: Duration = Duration::from_secs(10);
/// `connectTimeout` when unset.
pub const DEFAULT_PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `peerClient.keepalive.time` when `peerClient.keepalive` is unset: an owner that
/// stops answering (a frozen process or VM, a black-holed network path) is noticed
/// within `time + timeout` of the last frame it sent, while a call to it is in flight.
pub const DEFAULT_PEER_KEEPALIVE_TIME: Duration = Duration::from_secs(10);
/// `peerClient.keepalive.timeout` when `peerClient.keepalive` is unset.
pub const DEFAULT_PEER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetConfiguration {
    /// `host:port` at which the other replicas reach this one: the same spelling as in
    /// `peers`, or the `ip:port` that `peersDnsName` resolves to for this replica (in
    /// Kubernetes: `std.extVar('POD_IP') + ':8983'`). Required.
    pub self_address: String,
    /// Every replica's `host:port`, this one included (spelled as `selfAddress`).
    #[serde(default)]
    pub peers: Vec<String>,
    /// `host:port` whose name resolves to every replica's address (a headless
    /// Kubernetes Service). Resolved at start and every `peersRefreshInterval`; the
    /// replicas found are added to `peers`.
    #[serde(default)]
    pub peers_dns_name: String,
    /// Default: [`DEFAULT_PEERS_REFRESH_INTERVAL`].
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub peers_refresh_interval: Option<Duration>,
    /// How long a replica that could not be reached is left out of the owner choice.
    /// Default: [`DEFAULT_UNREACHABLE_PEER_BACKOFF`].
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub unreachable_peer_backoff: Option<Duration>,
    /// Limit on connecting to a replica. Default: [`DEFAULT_PEER_CONNECT_TIMEOUT`].
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub connect_timeout: Option<Duration>,
    /// TLS, keepalive and static headers of calls to other replicas (the fields of a
    /// gRPC client, without `address`).
    #[serde(default)]
    pub peer_client: PeerClientConfiguration,
    /// gRPC servers on which the other replicas' calls are served, and only those (as
    /// bb_scheduler serves workers apart from clients). Empty: they are served on the
    /// top-level `grpcServers`, beside Execution. `selfAddress` and the peers must then
    /// name these servers' port.
    #[serde(default)]
    pub grpc_servers: Vec<ServerConfiguration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerClientConfiguration {
    #[serde(default)]
    pub tls: Option<ClientTlsConfiguration>,
    /// HTTP/2 keepalive pings on the connections to other replicas. Default: pings
    /// after [`DEFAULT_PEER_KEEPALIVE_TIME`] without a frame, answered within
    /// [`DEFAULT_PEER_KEEPALIVE_TIMEOUT`], while calls are in flight.
    #[serde(default)]
    pub keepalive: Option<ClientKeepaliveConfiguration>,
    #[serde(default)]
    pub add_metadata: Vec<HeaderValues>,
}

impl FleetConfiguration {
    /// Checks what the types cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.self_address.is_empty() {
            return Err("selfAddress: required".into());
        }
        let host_port = |what: &str, value: &str| -> Result<(), String> {
            match value.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
                _ => Err(format!("{what}: {value:?} is not host:port")),
            }
        };
        host_port("selfAddress", &self.self_address)?;
        for (i, peer) in self.peers.iter().enumerate() {
            host_port(&format!("peers[{i}]"), peer)?;
        }
        if !self.peers_dns_name.is_empty() {
            host_port("peersDnsName", &self.peers_dns_name)?;
        }
        if self.peers.is_empty() && self.peers_dns_name.is_empty() {
            return Err("peers, peersDnsName: at least one is required".into());
        }
        if self.peers_refresh_interval == Some(Duration::ZERO) {
            return Err("peersRefreshInterval: must be positive".into());
        }
        Ok(())
    }
}
