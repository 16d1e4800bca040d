//! The replicas of the deployment as this one sees them: the configured `peers`, those
//! the `peersDnsName` resolves to (refreshed in the background), minus the ones that
//! could not be reached recently. Answers which replica owns a key (`ring.rs`) and holds
//! one lazily connected client per other replica.

use super::metrics;
use super::ring;
use crate::grpc::client::new_channel_with_connect_timeout;
use crate::grpc::GrpcChannel;
use crate::proto::fleet::fleet_client::FleetClient;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How calls to other replicas are made.
#[derive(Clone, Debug)]
pub struct PeerClientOptions {
    /// A client configuration whose `address` is replaced by each replica's.
    pub template: crate::config::grpc::ClientConfiguration,
    pub connect_timeout: Duration,
    /// Largest message received from a replica (records can be large).
    pub maximum_message_size_bytes: usize,
}

/// The replicas, as seen by this one.
pub struct Fleet {
    self_address: String,
    static_peers: Vec<String>,
    dns_name: Option<String>,
    unreachable_backoff: Duration,
    client_options: PeerClientOptions,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Replicas found through `dns_name` at the last successful resolution.
    resolved: BTreeSet<String>,
    /// Replicas left out of the owner choice until the given time.
    unreachable_until: HashMap<String, Instant>,
    clients: HashMap<String, FleetClient<GrpcChannel>>,
}

/// Who does the work for a key.
pub(crate) enum Owner {
    /// This replica.
    Local,
    /// Another replica, reached through `client`.
    Peer {
        address: String,
        client: FleetClient<GrpcChannel>,
    },
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("self_address", &self.self_address)
            .field("replicas", &self.replicas())
            .finish()
    }
}

impl Fleet {
    pub fn new(
        self_address: String,
        static_peers: Vec<String>,
        dns_name: Option<String>,
        unreachable_backoff: Duration,
        client_options: PeerClientOptions,
    ) -> Self {
        Self {
            self_address: canonical_address(&self_address),
            static_peers: static_peers.iter().map(|p| canonical_address(p)).collect(),
            dns_name,
            unreachable_backoff,
            client_options,
            state: Mutex::new(State::default()),
        }
    }

    pub fn self_address(&self) -> &str {
        &self.self_address
    }

    /// Every replica currently eligible to own keys, this one included, sorted.
    pub fn replicas(&self) -> Vec<String> {
        let now = Instant::now();
        let state = self.state.lock();
        let mut all: BTreeSet<String> = self.static_peers.iter().cloned().collect();
        all.extend(state.resolved.iter().cloned());
        all.insert(self.self_address.clone());
        all.into_iter()
            .filter(|r| {
                *r == self.self_address
                    || state
                        .unreachable_until
                        .get(r)
                        .is_none_or(|until| *until <= now)
            })
            .collect()
    }

    /// The replica that owns `key`.
    pub(crate) fn owner(&self, key: &str) -> Owner {
        let replicas = self.replicas();
        let owner = ring::owner(replicas.iter().map(String::as_str), key)
            .expect("this replica is always eligible");
        if owner == self.self_address {
            return Owner::Local;
        }
        match self.client(owner) {
            Ok(client) => Owner::Peer {
                address: owner.to_string(),
                client,
            },
            Err(e) => {
                tracing::warn!("Failed to create a client for replica {owner}: {e}");
                self.mark_unreachable(owner);
                Owner::Local
            }
        }
    }

    fn client(&self, address: &str) -> Result<FleetClient<GrpcChannel>, String> {
        let mut state = self.state.lock();
        if let Some(client) = state.clients.get(address) {
            return Ok(client.clone());
        }
        let options = &self.client_options;
        let config = crate::config::grpc::ClientConfiguration {
            address: address.to_string(),
            ..options.template.clone()
        };
        let channel = new_channel_with_connect_timeout(&config, Some(options.connect_timeout))?;
        let client = FleetClient::new(channel)
            .max_decoding_message_size(options.maximum_message_size_bytes.max(4 << 20))
            .max_encoding_message_size(options.maximum_message_size_bytes.max(4 << 20));
        state.clients.insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// Leaves `address` out of the owner choice for the backoff period: the keys it
    /// owns go to the replicas that score next for them.
    pub(crate) fn mark_unreachable(&self, address: &str) {
        let mut state = self.state.lock();
        state.unreachable_until.insert(
            address.to_string(),
            Instant::now() + self.unreachable_backoff,
        );
        // A new connection is made when the replica is tried again.
        state.clients.remove(address);
        metrics::peer_unreachable(address);
    }

    /// Resolves `peersDnsName` once. A failure keeps the replicas found before.
    pub async fn refresh_peers(&self) -> Result<(), String> {
        let Some(name) = &self.dns_name else {
            return Ok(());
        };
        let found: BTreeSet<String> = tokio::net::lookup_host(name.as_str())
            .await
            .map_err(|e| format!("Failed to resolve {name:?}: {e}"))?
            .map(|address| address.to_string())
            .collect();
        if found.is_empty() {
            return Err(format!("Failed to resolve {name:?}: no addresses"));
        }
        let mut state = self.state.lock();
        if state.resolved != found {
            tracing::info!(
                "Replicas behind {name:?}: {}",
                found.iter().cloned().collect::<Vec<_>>().join(", ")
            );
            state
                .clients
                .retain(|a, _| found.contains(a) || self.static_peers.contains(a));
            state.resolved = found;
        }
        metrics::replicas(state.resolved.len().max(self.static_peers.len()));
        Ok(())
    }

    /// Resolves `peersDnsName` now and every `interval`, for as long as the fleet is in
    /// use. Must be called within a Tokio runtime.
    pub fn spawn_refreshing(self: &Arc<Self>, interval: Duration) {
        if self.dns_name.is_none() {
            metrics::replicas(self.replicas().len());
            return;
        }
        let fleet: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(fleet) = fleet.upgrade() else {
                    return;
                };
                if let Err(e) = fleet.refresh_peers().await {
                    tracing::warn!("{e} (the replicas found before are kept)");
                }
            }
        });
    }
}

/// `address` as the resolver spells it when its host is an IP address (IPv6 in
/// brackets: `POD_IP + ':8985'` gives `fd00::1:8985` where resolving gives
/// `[fd00::1]:8985`), so that this replica recognises itself among the resolved ones.
fn canonical_address(address: &str) -> String {
    address
        .rsplit_once(':')
        .and_then(|(host, port)| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let ip: std::net::IpAddr = host.parse().ok()?;
            Some(std::net::SocketAddr::new(ip, port.parse().ok()?).to_string())
        })
        .unwrap_or_else(|| address.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(peers: &[&str]) -> Fleet {
        Fleet::new(
            "127.0.0.1:1".into(),
            peers.iter().map(|p| p.to_string()).collect(),
            None,
            Duration::from_secs(60),
            PeerClientOptions {
                template: Default::default(),
                connect_timeout: Duration::from_secs(1),
                maximum_message_size_bytes: 4 << 20,
            },
        )
    }

    #[test]
    fn addresses_are_compared_as_the_resolver_spells_them() {
        assert_eq!(canonical_address("10.0.0.1:8985"), "10.0.0.1:8985");
        assert_eq!(canonical_address("fd00::1:8985"), "[fd00::1]:8985");
        assert_eq!(canonical_address("[fd00::1]:8985"), "[fd00::1]:8985");
        assert_eq!(
            canonical_address("expander-0.peers:8985"),
            "expander-0.peers:8985"
        );
    }

    #[tokio::test]
    async fn this_replica_is_always_a_replica() {
        assert_eq!(fleet(&[]).replicas(), vec!["127.0.0.1:1".to_string()]);
        assert_eq!(
            fleet(&["127.0.0.1:2", "127.0.0.1:1"]).replicas(),
            vec!["127.0.0.1:1".to_string(), "127.0.0.1:2".to_string()]
        );
    }

    #[tokio::test]
    async fn an_unreachable_replica_owns_nothing_until_its_backoff_ends() {
        let fleet = fleet(&["127.0.0.1:1", "127.0.0.1:2"]);
        let key = (0..100)
            .map(|i| format!("k{i}"))
            .find(|k| matches!(fleet.owner(k), Owner::Peer { .. }))
            .expect("the other replica owns some key");
        fleet.mark_unreachable("127.0.0.1:2");
        assert_eq!(fleet.replicas(), vec!["127.0.0.1:1".to_string()]);
        assert!(matches!(fleet.owner(&key), Owner::Local));
        fleet.state.lock().unreachable_until.insert(
            "127.0.0.1:2".into(),
            Instant::now() - Duration::from_secs(1),
        );
        assert!(matches!(fleet.owner(&key), Owner::Peer { .. }));
    }

    #[tokio::test]
    async fn replicas_behind_a_dns_name_join_the_configured_ones() {
        let fleet = Fleet::new(
            "127.0.0.1:8983".into(),
            vec![],
            Some("localhost:8983".into()),
            Duration::from_secs(60),
            fleet(&[]).client_options,
        );
        fleet.refresh_peers().await.unwrap();
        assert!(fleet.replicas().contains(&"127.0.0.1:8983".to_string()));
        assert!(!fleet.state.lock().resolved.is_empty());
    }
}
