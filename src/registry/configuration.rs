//! Registry access as the registry module uses it: which registries may be contacted,
//! how (plain HTTP or TLS, mirrors), with which credentials, and the request policy
//! (timeout, retries), made from `containerImages` by
//! [`new_registry_configuration_from_configuration`].
//!
//! The settings, their documentation and their defaults are in
//! [`crate::config::container_images`], at the level operators write them:
//!
//! ```json
//! {
//!   "registries": [
//!     { "hosts": ["registry.example.com", "registry.example.com:5000"],
//!       "credentials": { "basic": { "username": "puller", "password": "…" } },
//!       "mirrors": ["mirror.example.com"] },
//!     { "hosts": ["docker.io"], "credentials": { "dockerConfigPath": "/secrets/config.json" } },
//!     { "hosts": ["build-cache.internal:5000"], "insecure": true,
//!       "credentials": { "anonymous": {} } }
//!   ],
//!   "allowAnyRegistry": false,
//!   "defaultPlatform": { "os": "linux", "architecture": "amd64" },
//!   "requestTimeout": "30s",
//!   "maximumRetries": 4,
//!   "initialRetryDelay": "0.5s"
//! }
//! ```
//!
//! Hosts are compared case-insensitively, with the port (`host:5000` is not `host`); Docker
//! Hub is `docker.io` (`index.docker.io` and `registry-1.docker.io` mean the same). Loopback
//! hosts (`localhost`, `127.0.0.0/8`, `[::1]`) always speak plain HTTP, as Docker does.

use std::net::IpAddr;
use std::time::Duration;

use super::credential_helper::CredentialHelperOptions;
use super::instance_name_prefixes;
use super::platform::Platform;
use super::reference::validate_host;
pub use crate::config::container_images::RequestBudget;
pub use crate::config::container_images::{
    BasicCredentials, Credentials, RegistryHostsConfiguration,
};
use crate::config::container_images::{
    ContainerImagesConfiguration, PlatformConfiguration, DEFAULT_BLOB_TRANSFER_TIMEOUT,
    DEFAULT_CREDENTIAL_HELPER_CACHE_TTL, DEFAULT_CREDENTIAL_HELPER_TIMEOUT,
    DEFAULT_INITIAL_RETRY_DELAY, DEFAULT_MAXIMUM_RETRIES, DEFAULT_MAXIMUM_RETRY_AFTER,
    DEFAULT_MINIMUM_TRANSFER_BYTES_PER_SECOND, DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_TRANSFER_RATE_WINDOW,
};

/// Registry access: the registry settings of `containerImages` with their defaults
/// applied.
#[derive(Clone, Debug)]
pub struct RegistryConfiguration {
    /// Registries that may be contacted, with their settings.
    pub registries: Vec<RegistryHostsConfiguration>,
    /// Contact hosts that are not listed (anonymously, TLS except loopback).
    pub allow_any_registry: bool,
    /// The platform chosen from multi-platform images when an action names no `ISA`.
    pub default_platform: Platform,
    /// Deadline of one request (and, while a blob streams, the longest wait for more
    /// bytes).
    pub request_timeout: Duration,
    /// How often a failed request is retried, with exponential backoff.
    pub maximum_retries: u32,
    /// Delay before the first retry; each further retry waits twice as long.
    pub initial_retry_delay: Duration,
    /// Deadline of a whole blob transfer.
    pub blob_transfer_timeout: Duration,
    /// Slowest average transfer rate accepted over `transfer_rate_window` (0: any).
    pub minimum_transfer_bytes_per_second: u64,
    /// The window the transfer rate is averaged over.
    pub transfer_rate_window: Duration,
    /// Longest `Retry-After` honoured.
    pub maximum_retry_after: Duration,
    /// Connect to loopback, link-local and private addresses no entry lists.
    pub allow_private_addresses: bool,
    /// The proxy of every registry request (`httpProxy`); none: direct connections.
    pub http_proxy: Option<String>,
    /// How credential helpers are run.
    pub credential_helpers: CredentialHelperOptions,
}

impl Default for RegistryConfiguration {
    /// The defaults of `containerImages`: no registry listed, none other allowed.
    fn default() -> Self {
        new_registry_configuration_from_configuration(&ContainerImagesConfiguration::default())
    }
}

/// The registry access `containerImages` configures. Not validated here:
/// [`RegistryConfiguration::validate`] (called by `OciRegistry::new`) does that.
pub fn new_registry_configuration_from_configuration(
    configuration: &ContainerImagesConfiguration,
) -> RegistryConfiguration {
    RegistryConfiguration {
        registries: configuration.registries.clone(),
        allow_any_registry: configuration.allow_any_registry,
        default_platform: new_platform_from_configuration(&configuration.default_platform),
        request_timeout: configuration
            .request_timeout
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT),
        maximum_retries: configuration
            .maximum_retries
            .unwrap_or(DEFAULT_MAXIMUM_RETRIES),
        initial_retry_delay: configuration
            .initial_retry_delay
            .unwrap_or(DEFAULT_INITIAL_RETRY_DELAY),
        blob_transfer_timeout: configuration
            .blob_transfer_timeout
            .unwrap_or(DEFAULT_BLOB_TRANSFER_TIMEOUT),
        minimum_transfer_bytes_per_second: configuration
            .minimum_transfer_bytes_per_second
            .unwrap_or(DEFAULT_MINIMUM_TRANSFER_BYTES_PER_SECOND),
        transfer_rate_window: configuration
            .transfer_rate_window
            .unwrap_or(DEFAULT_TRANSFER_RATE_WINDOW),
        maximum_retry_after: configuration
            .maximum_retry_after
            .unwrap_or(DEFAULT_MAXIMUM_RETRY_AFTER),
        allow_private_addresses: configuration.allow_private_addresses,
        http_proxy: configuration.http_proxy.clone(),
        credential_helpers: CredentialHelperOptions {
            timeout: configuration
                .credential_helpers
                .timeout
                .unwrap_or(DEFAULT_CREDENTIAL_HELPER_TIMEOUT),
            cache_ttl: configuration
                .credential_helpers
                .cache_ttl
                .unwrap_or(DEFAULT_CREDENTIAL_HELPER_CACHE_TTL),
            search_directories: configuration
                .credential_helpers
                .search_directories
                .iter()
                .map(std::path::PathBuf::from)
                .collect(),
        },
    }
}

/// The platform `defaultPlatform` names.
pub fn new_platform_from_configuration(configuration: &PlatformConfiguration) -> Platform {
    Platform::new(
        &configuration.os,
        &configuration.architecture,
        &configuration.variant,
    )
}

impl RegistryConfiguration {
    /// Checks what the types cannot express. Messages name the offending field.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for (i, entry) in self.registries.iter().enumerate() {
            if entry.hosts.is_empty() {
                return Err(format!(
                    "registries[{i}].hosts: at least one host is required"
                ));
            }
            for (j, host) in entry.hosts.iter().enumerate() {
                validate_host(host).map_err(|e| format!("registries[{i}].hosts[{j}]: {e}"))?;
                if !seen.insert(normalize_host(host)) {
                    return Err(format!(
                        "registries[{i}].hosts[{j}]: host {host:?} is listed more than once"
                    ));
                }
            }
            for (j, host) in entry.mirrors.iter().enumerate() {
                validate_host(host).map_err(|e| format!("registries[{i}].mirrors[{j}]: {e}"))?;
            }
            if let Some(Credentials::Basic(b)) = &entry.credentials {
                if b.username.is_empty() {
                    return Err(format!(
                        "registries[{i}].credentials.basic.username: must not be empty"
                    ));
                }
            }
            if let Some(Credentials::DockerConfigPath(p)) = &entry.credentials {
                if p.is_empty() {
                    return Err(format!(
                        "registries[{i}].credentials.dockerConfigPath: must not be empty"
                    ));
                }
            }
        }
        if self.request_timeout.is_zero() {
            return Err("requestTimeout: must be positive".into());
        }
        if self.credential_helpers.timeout.is_zero() {
            return Err("credentialHelpers.timeout: must be positive".into());
        }
        if self.credential_helpers.cache_ttl.is_zero() {
            return Err("credentialHelpers.cacheTtl: must be positive".into());
        }
        for (i, d) in self
            .credential_helpers
            .search_directories
            .iter()
            .enumerate()
        {
            if !d.is_absolute() {
                return Err(format!(
                    "credentialHelpers.searchDirectories[{i}]: {d:?} must be an absolute path"
                ));
            }
        }
        if self.blob_transfer_timeout.is_zero() {
            return Err("blobTransferTimeout: must be positive".into());
        }
        if self.minimum_transfer_bytes_per_second > 0 && self.transfer_rate_window.is_zero() {
            return Err("transferRateWindow: must be positive".into());
        }
        for (i, entry) in self.registries.iter().enumerate() {
            if let Some(budget) = &entry.request_budget {
                if !(budget.requests_per_second > 0.0 && budget.requests_per_second.is_finite()) {
                    return Err(format!(
                        "registries[{i}].requestBudget.requestsPerSecond: must be positive"
                    ));
                }
                if budget.burst == Some(0) {
                    return Err(format!(
                        "registries[{i}].requestBudget.burst: must be at least 1"
                    ));
                }
            }
            for (j, host) in entry.redirect_hosts.iter().flatten().enumerate() {
                validate_host(host)
                    .map_err(|e| format!("registries[{i}].redirectHosts[{j}]: {e}"))?;
            }
            if let Some(prefixes) = &entry.instance_name_prefixes {
                instance_name_prefixes::validate(prefixes)
                    .map_err(|e| format!("registries[{i}].instanceNamePrefixes{e}"))?;
            }
            self.validate_mirror_tenants(i, entry)?;
        }
        if self.maximum_retries > 20 {
            return Err(format!(
                "maximumRetries: {} is more than 20",
                self.maximum_retries
            ));
        }
        let p = &self.default_platform;
        if p.os.is_empty() || p.architecture.is_empty() {
            return Err("defaultPlatform: os and architecture are required".into());
        }
        p.check_supported()
            .map_err(|e| format!("defaultPlatform: {}", e.message()))?;
        Ok(())
    }

    /// A mirror is contacted with the credentials of its own entry for every request of
    /// `entry`'s hosts, so its entry must allow at least the instance names `entry`
    /// allows: otherwise a tenant could pull through credentials it may not use.
    fn validate_mirror_tenants(
        &self,
        i: usize,
        entry: &RegistryHostsConfiguration,
    ) -> Result<(), String> {
        for (j, mirror) in entry.mirrors.iter().enumerate() {
            let Some(mirror_entry) = self.entry_for(mirror) else {
                continue;
            };
            if !instance_name_prefixes::covers(
                mirror_entry.instance_name_prefixes.as_deref(),
                entry.instance_name_prefixes.as_deref(),
            ) {
                return Err(format!(
                    "registries[{i}].mirrors[{j}]: the entry of mirror {mirror:?} allows \
                     fewer instance names (instanceNamePrefixes) than this entry, whose \
                     requests would use its credentials"
                ));
            }
        }
        Ok(())
    }

    /// The entry listing `host`, if any.
    pub fn entry_for(&self, host: &str) -> Option<&RegistryHostsConfiguration> {
        let host = normalize_host(host);
        self.registries
            .iter()
            .find(|e| e.hosts.iter().any(|h| normalize_host(h) == host))
    }
}

/// Lowercase; Docker Hub's aliases become `docker.io`.
pub fn normalize_host(host: &str) -> String {
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        _ => host,
    }
}

/// `host[:port]` or `[v6]:port` → the name alone, lower case, IPv6 without brackets.
pub fn host_name(host: &str) -> String {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else if host.matches(':').count() > 1 {
        host // a bare IPv6 address
    } else {
        host.split(':').next().unwrap_or("")
    };
    name.to_ascii_lowercase()
}

/// Whether `host` (`name[:port]`) is a loopback address or `localhost`.
pub fn is_loopback_host(host: &str) -> bool {
    let name = host_name(host);
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<RegistryConfiguration, String> {
        let c: ContainerImagesConfiguration =
            serde_json::from_str(json).map_err(|e| e.to_string())?;
        let c = new_registry_configuration_from_configuration(&c);
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn credential_helpers_settings() {
        let c = parse("{}").unwrap();
        assert_eq!(
            c.credential_helpers,
            CredentialHelperOptions {
                timeout: DEFAULT_CREDENTIAL_HELPER_TIMEOUT,
                cache_ttl: DEFAULT_CREDENTIAL_HELPER_CACHE_TTL,
                search_directories: vec![],
            }
        );
        let c = parse(
            r#"{"credentialHelpers": {"timeout": "2.5s", "cacheTtl": "3600s",
                "searchDirectories": ["/helpers", "/usr/local/bin"]}}"#,
        )
        .unwrap();
        assert_eq!(c.credential_helpers.timeout, Duration::from_millis(2500));
        assert_eq!(c.credential_helpers.cache_ttl, Duration::from_secs(3600));
        assert_eq!(c.credential_helpers.search_directories.len(), 2);
        for (json, message) in [
            (
                r#"{"credentialHelpers": {"timeout": "0s"}}"#,
                "credentialHelpers.timeout: must be positive",
            ),
            (
                r#"{"credentialHelpers": {"cacheTtl": "0s"}}"#,
                "credentialHelpers.cacheTtl: must be positive",
            ),
            (
                r#"{"credentialHelpers": {"searchDirectories": ["bin"]}}"#,
                "credentialHelpers.searchDirectories[0]",
            ),
            (r#"{"credentialHelpers": {"ttl": "1s"}}"#, "unknown field"),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(message), "{json}: {err}");
        }
    }

    #[test]
    fn defaults() {
        let c = parse("{}").unwrap();
        assert!(c.registries.is_empty());
        assert!(!c.allow_any_registry);
        assert_eq!(c.default_platform, Platform::new("linux", "amd64", ""));
        assert_eq!(c.request_timeout, Duration::from_secs(30));
        assert_eq!(c.maximum_retries, 4);
        assert_eq!(c.initial_retry_delay, Duration::from_millis(500));
    }

    #[test]
    fn full_example() {
        let c = parse(
            r#"{
              "registries": [
                {"hosts": ["Registry.Example.com", "registry.example.com:5000"],
                 "credentials": {"basic": {"username": "puller", "password": "hunter2"}},
                 "mirrors": ["mirror.example.com"]},
                {"hosts": ["index.docker.io"], "credentials": {"dockerConfigPath": "/secrets/config.json"}},
                {"hosts": ["cache.internal:5000"], "insecure": true, "credentials": {"anonymous": {}}}
              ],
              "allowAnyRegistry": true,
              "defaultPlatform": {"os": "linux", "architecture": "arm64", "variant": "v8"},
              "requestTimeout": "1.5s",
              "maximumRetries": 2,
              "initialRetryDelay": "0.1s"
            }"#,
        )
        .unwrap();
        assert!(c.allow_any_registry);
        assert_eq!(c.request_timeout, Duration::from_millis(1500));
        assert_eq!(c.maximum_retries, 2);
        assert_eq!(c.default_platform.variant, "v8");
        let e = c.entry_for("registry.example.com").unwrap();
        assert_eq!(e.mirrors, vec!["mirror.example.com"]);
        assert_eq!(
            e.credentials,
            Some(Credentials::Basic(BasicCredentials {
                username: "puller".into(),
                password: "hunter2".into()
            }))
        );
        assert!(c.entry_for("docker.io").is_some());
        assert!(c.entry_for("registry-1.docker.io").is_some());
        assert!(c.entry_for("cache.internal:5000").unwrap().insecure);
        assert!(c.entry_for("cache.internal").is_none());
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn unknown_fields_are_rejected() {
        for json in [
            r#"{"registry": []}"#,
            r#"{"registries": [{"hosts": ["a.b"], "tls": true}]}"#,
            r#"{"registries": [{"hosts": ["a.b"], "credentials": {"basic": {"username": "u", "password": "p", "x": 1}}}]}"#,
            r#"{"registries": [{"hosts": ["a.b"], "credentials": {"anonymous": {"x": 1}}}]}"#,
            r#"{"defaultPlatform": {"os": "linux", "architecture": "amd64", "osVersion": "1"}}"#,
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains("unknown"), "{json}: {err}");
        }
    }

    #[test]
    fn credentials_oneof_has_exactly_one_key() {
        for json in [
            r#"{"registries": [{"hosts": ["a.b"], "credentials": {}}]}"#,
            r#"{"registries": [{"hosts": ["a.b"], "credentials": {"anonymous": {}, "dockerConfigPath": "/x"}}]}"#,
            r#"{"registries": [{"hosts": ["a.b"], "credentials": {"kerberos": {}}}]}"#,
        ] {
            assert!(parse(json).is_err(), "{json}");
        }
        let c = parse(r#"{"registries": [{"hosts": ["a.b"]}]}"#).unwrap();
        assert_eq!(c.registries[0].credentials, None);
    }

    #[test]
    fn validation() {
        for (json, needle) in [
            (r#"{"registries": [{"hosts": []}]}"#, "at least one host"),
            (
                r#"{"registries": [{"hosts": ["bad host"]}]}"#,
                "registries[0].hosts[0]",
            ),
            (
                r#"{"registries": [{"hosts": ["a.b"]}, {"hosts": ["A.B"]}]}"#,
                "more than once",
            ),
            (
                r#"{"registries": [{"hosts": ["a.b"], "mirrors": ["x:y"]}]}"#,
                "mirrors[0]",
            ),
            (r#"{"requestTimeout": "0s"}"#, "requestTimeout"),
            (r#"{"requestTimeout": "30"}"#, "duration"),
            (r#"{"maximumRetries": 99}"#, "maximumRetries"),
            (
                r#"{"defaultPlatform": {"os": "windows", "architecture": "amd64"}}"#,
                "Windows",
            ),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(needle), "{json}: {err}");
        }
    }

    #[test]
    fn instance_name_prefixes_are_validated() {
        let c = parse(r#"{"registries": [{"hosts": ["a.b"]}]}"#).unwrap();
        assert_eq!(c.registries[0].instance_name_prefixes, None);
        let c = parse(
            r#"{"registries": [{"hosts": ["a.b"], "instanceNamePrefixes": ["team-a", "team-b/ci"]}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.registries[0].instance_name_prefixes,
            Some(vec!["team-a".to_string(), "team-b/ci".to_string()])
        );
        // A mirror whose entry allows at least as much as the registry's.
        parse(
            r#"{"registries": [
                {"hosts": ["a.b"], "mirrors": ["m.b"], "instanceNamePrefixes": ["team-a/ci"]},
                {"hosts": ["m.b"], "instanceNamePrefixes": ["team-a", "team-b"]},
                {"hosts": ["c.d"], "mirrors": ["unlisted.b"], "instanceNamePrefixes": ["x"]}
            ]}"#,
        )
        .unwrap();
        for (json, message) in [
            (
                r#"{"registries": [{"hosts": ["a.b"], "instanceNamePrefixes": []}]}"#,
                "registries[0].instanceNamePrefixes: at least one prefix",
            ),
            (
                r#"{"registries": [{"hosts": ["a.b"], "instanceNamePrefixes": ["a", "/b"]}]}"#,
                "registries[0].instanceNamePrefixes[1]: \"/b\" has an empty path component",
            ),
            (
                r#"{"registries": [{"hosts": ["a.b"], "instanceNamePrefix": ["a"]}]}"#,
                "unknown field",
            ),
            (
                r#"{"registries": [
                    {"hosts": ["a.b"], "mirrors": ["m.b"]},
                    {"hosts": ["m.b"], "instanceNamePrefixes": ["team-a"]}
                ]}"#,
                "registries[0].mirrors[0]: the entry of mirror \"m.b\" allows fewer",
            ),
            (
                r#"{"registries": [
                    {"hosts": ["a.b"], "mirrors": ["m.b"], "instanceNamePrefixes": ["team-a", "team-b"]},
                    {"hosts": ["m.b"], "instanceNamePrefixes": ["team-a"]}
                ]}"#,
                "registries[0].mirrors[0]",
            ),
        ] {
            let err = parse(json).unwrap_err();
            assert!(err.contains(message), "{json}: {err}");
        }
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.1.2.3:80",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "example.com",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[::2]:5000",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }
}
