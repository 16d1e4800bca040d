//! gRPC server and client configuration, in the shapes of bb-storage's
//! `buildbarn.configuration.grpc` (`ServerConfiguration`, `ClientConfiguration`), so that
//! blocks can be copied between a Buildbarn deployment and this service.
//!
//! Supported subset: what a deployment in front of or behind bb_scheduler needs. Fields
//! of Buildbarn's protos that are not modelled here are rejected as unknown, rather than
//! silently ignored.

use super::protojson;
use serde::Deserialize;
use std::time::Duration;

/// `grpcServers[]`: where and how the expander accepts calls.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerConfiguration {
    /// TCP addresses, e.g. `':8985'` or `'127.0.0.1:8985'`.
    #[serde(default)]
    pub listen_addresses: Vec<String>,
    /// UNIX socket paths. A stale socket file is removed first.
    #[serde(default)]
    pub listen_paths: Vec<String>,
    /// Who may call. Required, as in Buildbarn.
    pub authentication_policy: AuthenticationPolicy,
    /// Largest request accepted. 0 means the gRPC default of 4 MiB.
    #[serde(default, deserialize_with = "protojson::uint64")]
    pub maximum_received_message_size_bytes: u64,
    /// Service name that `grpc.health.v1.Health` reports as SERVING, besides "".
    #[serde(default)]
    pub health_check_service: String,
}

/// `authenticationPolicy`: exactly one key.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum AuthenticationPolicy {
    /// Accept every call. The value is the authentication metadata attached to calls
    /// (`{ allow: {} }` in practice).
    Allow(serde_json::Value),
    /// Accept a call if any policy accepts it.
    Any(PolicyList),
    /// Accept a call only if all policies accept it.
    All(PolicyList),
    /// Refuse every call with this message.
    Deny(String),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyList {
    pub policies: Vec<AuthenticationPolicy>,
}

/// A gRPC client: `scheduler`, `grpc: { client }` blob stores.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientConfiguration {
    /// `host:port`, `dns:///host:port`, or `unix:///path/to/socket`.
    pub address: String,
    /// TLS; plaintext when unset.
    #[serde(default)]
    pub tls: Option<ClientTlsConfiguration>,
    /// HTTP/2 keepalive pings.
    #[serde(default)]
    pub keepalive: Option<ClientKeepaliveConfiguration>,
    /// Static headers added to every call.
    #[serde(default)]
    pub add_metadata: Vec<HeaderValues>,
    /// A JMESPath expression evaluated per call against
    /// `{"incomingGRPCMetadata": {header: [values]}, "authenticationMetadata": …}`; it
    /// must yield `{header: [values]}`, which is added to the outgoing call. bb-deployments
    /// uses it to forward `build.bazel.remote.execution.v2.requestmetadata-bin`.
    #[serde(default)]
    pub add_metadata_jmespath_expression: Option<JmespathExpression>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderValues {
    pub header: String,
    pub values: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JmespathExpression {
    pub expression: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientKeepaliveConfiguration {
    #[serde(deserialize_with = "protojson::duration")]
    pub time: Duration,
    #[serde(deserialize_with = "protojson::duration")]
    pub timeout: Duration,
    #[serde(default)]
    pub permit_without_stream: bool,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTlsConfiguration {
    /// PEM certificates of the CAs to trust; the system roots when empty.
    #[serde(default)]
    pub server_certificate_authorities: String,
    /// Client certificate for mutual TLS.
    #[serde(default)]
    pub client_key_pair: Option<KeyPair>,
    /// Overrides the name checked against the server's certificate.
    #[serde(default)]
    pub server_name: String,
}

/// `serverKeyPair` / `clientKeyPair`: exactly one key.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum KeyPair {
    Inline(InlineKeyPair),
    Files(FilesKeyPair),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InlineKeyPair {
    pub certificate: String,
    pub private_key: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilesKeyPair {
    pub certificate_path: String,
    pub private_key_path: String,
    /// Accepted for compatibility; files are read once at start-up.
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub refresh_interval: Option<Duration>,
}
