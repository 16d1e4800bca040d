//! Which network addresses the registry client may connect to.
//!
//! A registry reference (with `allowAnyRegistry`), a redirect or a token realm names a host
//! chosen by someone else: a client of the service, or a registry. Without a rule, such a
//! host could make the service connect to its own loopback interface, the cloud metadata
//! endpoint (link-local) or a private network that is not meant to be reachable through it.
//! The rule (docs/design/registry-http.md#addresses): a loopback, link-local, private,
//! shared (CGNAT) or unspecified address is contacted only if the host naming it is listed
//! in the configuration (`registries[].hosts`, `mirrors` or `redirectHosts`), or if
//! `allowPrivateAddresses` is set.
//!
//! The token server a listed registry names (its `realm`) is trusted as the registry is:
//! it is added to the listed hosts when the registry's challenge names it
//! ([`AddressPolicy::trust`]). The realm of an unlisted registry is not.
//!
//! Two checks enforce it: [`AddressPolicy::check_host`] refuses an IP literal before a
//! request is sent, and [`PolicyResolver`], the HTTP client's DNS resolver, drops restricted
//! addresses from the answer for a name that is not listed, so that a name resolving to a
//! private address (or rebinding to one) is never connected to.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

pub(crate) use crate::registry::configuration::host_name;
use crate::registry::configuration::RegistryConfiguration;

/// The connection this module refused, found in an error's source chain by the error
/// classification (it becomes `PERMISSION_DENIED`, not a retried `UNAVAILABLE`).
#[derive(Debug)]
pub(crate) struct AddressRefused(pub String);

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AddressRefused {}

/// The hosts the configuration lists, and whether unlisted private addresses are allowed.
#[derive(Debug, Default)]
pub(crate) struct AddressPolicy {
    /// Host names without port, lower case, IPv6 without brackets: a listed name may be
    /// resolved to any address.
    listed: HashSet<String>,
    /// Hosts as listed, with their port (`127.0.0.1:5000`), lower case: an IP literal is
    /// listed only with its port.
    listed_hosts: HashSet<String>,
    /// Token servers of listed registries, as `listed` and `listed_hosts` hold them.
    trusted: parking_lot::RwLock<(HashSet<String>, HashSet<String>)>,
    allow_private_addresses: bool,
}

/// Whether `ip` is an address a service must not be made to reach by others' choice.
pub(crate) fn is_restricted(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_restricted_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_restricted_v4(v4);
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1)
        }
    }
}

fn is_restricted_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64.0.0/10
        || a == 0
}

impl AddressPolicy {
    /// The policy of `configuration`: every host, mirror and redirect host of every entry is
    /// listed.
    pub(crate) fn new(configuration: &RegistryConfiguration) -> Self {
        let mut listed = HashSet::new();
        let mut listed_hosts = HashSet::new();
        for entry in &configuration.registries {
            let hosts = entry
                .hosts
                .iter()
                .chain(&entry.mirrors)
                .chain(entry.redirect_hosts.iter().flatten());
            for host in hosts {
                listed.insert(host_name(host));
                listed_hosts.insert(host.to_ascii_lowercase());
            }
        }
        Self {
            listed,
            listed_hosts,
            trusted: Default::default(),
            allow_private_addresses: configuration.allow_private_addresses,
        }
    }

    /// Whether `name` (a host name without port) is listed in the configuration.
    pub(crate) fn is_listed(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        self.listed.contains(&name) || self.trusted.read().0.contains(&name)
    }

    /// Whether `host` (`name[:port]`) is listed with its port.
    fn is_listed_host(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.listed_hosts.contains(&host) || self.trusted.read().1.contains(&host)
    }

    /// Trusts `host` (`name[:port]`), the token server of a listed registry, as if it were
    /// listed. The set grows only with the realms listed registries name.
    pub(crate) fn trust(&self, host: &str) {
        if self.is_listed_host(host) {
            return;
        }
        let mut trusted = self.trusted.write();
        trusted.0.insert(host_name(host));
        trusted.1.insert(host.to_ascii_lowercase());
    }

    /// Refuses `host` (`name[:port]`, the port omitted when it is the scheme's default) if
    /// it is an IP literal the policy forbids: a restricted address must be listed with the
    /// same port. Names are checked when they are resolved ([`PolicyResolver`]).
    pub(crate) fn check_host(&self, host: &str) -> Result<(), AddressRefused> {
        let name = host_name(host);
        let Ok(ip) = name.parse::<IpAddr>() else {
            return Ok(());
        };
        if self.allow_private_addresses || !is_restricted(ip) || self.is_listed_host(host) {
            return Ok(());
        }
        Err(AddressRefused(format!(
            "{host} is a loopback, link-local or private address that no registries[] entry \
             lists (and allowPrivateAddresses is false)"
        )))
    }

    /// The addresses of `name` that may be connected to.
    fn filter(&self, name: &str, addresses: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
        if self.allow_private_addresses || self.is_listed(name) {
            return Ok(addresses);
        }
        let allowed: Vec<SocketAddr> = addresses
            .iter()
            .copied()
            .filter(|a| !is_restricted(a.ip()))
            .collect();
        if allowed.is_empty() && !addresses.is_empty() {
            return Err(format!(
                "{name} resolves only to loopback, link-local or private addresses, and no \
                 registries[] entry lists it (and allowPrivateAddresses is false)"
            ));
        }
        Ok(allowed)
    }
}

/// The HTTP client's resolver: the system's, with [`AddressPolicy`] applied.
pub(crate) struct PolicyResolver(pub Arc<AddressPolicy>);

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        let name = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            let allowed = policy
                .filter(&name, found)
                .map_err(|reason| Box::new(AddressRefused(reason)) as Box<_>)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::configuration::new_registry_configuration_from_configuration;

    fn policy(json: &str) -> AddressPolicy {
        AddressPolicy::new(&new_registry_configuration_from_configuration(
            &serde_json::from_str(json).unwrap(),
        ))
    }

    #[test]
    fn restricted_ranges() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_restricted(a.parse().unwrap()), "{a}");
        }
        for a in ["8.8.8.8", "172.32.0.1", "100.128.0.1", "2001:db8::1"] {
            assert!(!is_restricted(a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn literals_are_refused_unless_listed() {
        let p = policy(
            r#"{"registries": [{"hosts": ["127.0.0.1:5000"], "redirectHosts": ["10.0.0.7"]}]}"#,
        );
        assert!(p.check_host("127.0.0.1:5000").is_ok());
        // An IP literal is listed with its port only.
        assert!(p.check_host("127.0.0.1:6000").is_err());
        assert!(p.check_host("10.0.0.7").is_ok());
        let refused = p.check_host("127.0.0.2:5000").unwrap_err();
        assert!(refused.0.contains("127.0.0.2:5000"), "{refused}");
        assert!(p.check_host("[::1]:5000").is_err());
        assert!(p.check_host("169.254.169.254").is_err());
        assert!(p.check_host("8.8.8.8:443").is_ok());
        assert!(p.check_host("registry.example").is_ok());
        p.trust("127.0.0.1:7000");
        assert!(p.check_host("127.0.0.1:7000").is_ok());
        let open = policy(r#"{"allowPrivateAddresses": true}"#);
        assert!(open.check_host("127.0.0.2:5000").is_ok());
    }

    #[test]
    fn names_keep_only_public_addresses_unless_listed() {
        let p = policy(r#"{"registries": [{"hosts": ["localhost:5000"]}]}"#);
        let loopback: Vec<SocketAddr> = vec!["127.0.0.1:0".parse().unwrap()];
        assert_eq!(p.filter("localhost", loopback.clone()).unwrap(), loopback);
        let err = p.filter("evil.example", loopback).unwrap_err();
        assert!(err.contains("evil.example resolves only to"), "{err}");
        let mixed: Vec<SocketAddr> =
            vec!["10.0.0.1:0".parse().unwrap(), "8.8.8.8:0".parse().unwrap()];
        assert_eq!(
            p.filter("mixed.example", mixed).unwrap(),
            vec!["8.8.8.8:0".parse::<SocketAddr>().unwrap()]
        );
    }

    #[test]
    fn host_names() {
        assert_eq!(host_name("Registry.Example:5000"), "registry.example");
        assert_eq!(host_name("[::1]:5000"), "::1");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
    }
}
