//! The `registry` label of the expander's metrics. With `allowAnyRegistry`, clients
//! choose which hosts are contacted, and a label per host would let them grow the set of
//! series without bound. Once [`limit_to_listed`] was called (by the service, when it
//! allows any registry), a host the configuration lists keeps its name and every other
//! host is labelled [`OTHER`]. Until then, and in a service that contacts listed hosts
//! only, every host keeps its name.

use super::configuration::{host_name, normalize_host};
use parking_lot::RwLock;
use std::collections::HashSet;

/// The label of hosts that the configuration does not list.
pub const OTHER: &str = "other";

/// Names (`registry.example`) and hosts (`registry.example:5000`) that keep their label.
static LISTED: RwLock<Option<HashSet<String>>> = RwLock::new(None);

/// From now on, hosts other than `hosts` (as written in `registries[].hosts` and
/// mirrors) are labelled [`OTHER`]. Process-wide: the service calls it once, at start.
pub fn limit_to_listed<'a>(hosts: impl IntoIterator<Item = &'a str>) {
    *LISTED.write() = Some(listed_set(hosts));
}

fn listed_set<'a>(hosts: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
    hosts
        .into_iter()
        .flat_map(|h| [normalize_host(h), host_name(h)])
        .collect()
}

/// The label of `host` (`name[:port]`).
pub(crate) fn label(host: &str) -> String {
    label_in(LISTED.read().as_ref(), host)
}

fn label_in(listed: Option<&HashSet<String>>, host: &str) -> String {
    match listed {
        None => host.to_string(),
        Some(listed) if listed.contains(&normalize_host(host)) => host.to_string(),
        // A host listed without a port keeps its name on the default port.
        Some(listed) if !host.contains(':') && listed.contains(&host_name(host)) => {
            host.to_string()
        }
        Some(_) => OTHER.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlisted_hosts_share_one_label_once_limited() {
        assert_eq!(label_in(None, "anything.example"), "anything.example");
        let listed = listed_set(["Registry.Example:5000", "docker.io", "127.0.0.1"]);
        let label = |host| label_in(Some(&listed), host);
        assert_eq!(label("registry.example:5000"), "registry.example:5000");
        assert_eq!(label("index.docker.io"), "index.docker.io");
        assert_eq!(label("docker.io"), "docker.io");
        assert_eq!(label("127.0.0.1"), "127.0.0.1");
        assert_eq!(label("registry.example:5001"), OTHER);
        assert_eq!(label("attacker.example"), OTHER);
        assert_eq!(label("attacker.example:443"), OTHER);
    }
}
