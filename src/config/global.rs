//! `global`: process-wide settings, as bb-storage's `buildbarn.configuration.global`.

use super::grpc::AuthenticationPolicy;
use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GlobalConfiguration {
    /// The diagnostics HTTP server: `/-/healthy` and, if enabled, `/metrics`.
    #[serde(default)]
    pub diagnostics_http_server: Option<DiagnosticsHttpServerConfiguration>,
    /// Files that logs are appended to (created if missing), in addition to standard
    /// error; never with ANSI colour codes. See `diagnostics::logging`.
    #[serde(default)]
    pub log_paths: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiagnosticsHttpServerConfiguration {
    pub http_servers: Vec<HttpServerConfiguration>,
    /// Serve Prometheus metrics at `/metrics`. Recommended value: true.
    #[serde(default)]
    pub enable_prometheus: bool,
    /// Accepted so that Buildbarn's `common.libsonnet` can be reused; Go's pprof has no
    /// equivalent here and the flag has no effect.
    #[serde(default)]
    pub enable_pprof: bool,
    /// Accepted for the same reason; no effect.
    #[serde(default)]
    pub enable_active_spans: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpServerConfiguration {
    pub listen_addresses: Vec<String>,
    /// `allow`, `deny`, `any` and `all` are supported, as for gRPC servers.
    pub authentication_policy: AuthenticationPolicy,
}
