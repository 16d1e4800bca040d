//! Several replicas of the expander as one: each image expansion and each layer
//! ingestion that misses the caches is done once across the fleet, by the replica that
//! owns it (docs/design/fleet.md).
//!
//! - `membership.rs`: the replicas (configured, or behind a DNS name) and which one owns
//!   a key, by rendezvous hashing (`ring.rs`);
//! - `sharding_source.rs`: the stage decorator that forwards a miss to its owner, or
//!   does the work here when the owner cannot be reached;
//! - `forwarding.rs`: stage requests and answers as `fleet.proto` messages;
//! - `peer_service.rs`: the owner's side, served to the other replicas;
//! - `configuration.rs`: the `fleet` section turned into a [`Fleet`];
//! - `metrics.rs`: where the work was done.

pub mod configuration;
pub(crate) mod forwarding;
pub mod membership;
mod metrics;
pub mod peer_service;
pub mod ring;
pub(crate) mod sharding_source;

pub use configuration::new_fleet_from_configuration;
pub use membership::Fleet;
pub use peer_service::FleetPeerService;
