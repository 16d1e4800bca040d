//! The registry client's own HTTP layer (docs/design/registry-http.md).
//!
//! `oci-client` 0.18 hides what a registry client shared by a cluster must act on: the
//! response headers (`Retry-After`, `RateLimit-*`, `Content-Length` before the body is
//! read), redirects (followed by its HTTP client, to any address), and its handshake
//! (`GET /v2/` before each operation). So requests are sent here, on `reqwest` (the HTTP
//! client `oci-client` itself uses, with the same TLS stack), and `oci-client` is kept for
//! what it models well: credentials (`RegistryAuth`) and the registry error envelope.
//!
//! - [`distribution_client`]: one request, with budget, policy, authentication, redirects
//!   and the failure it means;
//! - [`authenticator`]: the `/v2/` handshake and bearer tokens, once per host and scope;
//! - [`address_policy`]: which addresses may be connected to (references, redirects, token
//!   servers);
//! - [`bounded_body`]: whole bodies read with a size limit;
//! - [`transfer_limits`]: a deadline and a minimum rate for a whole blob transfer;
//! - [`request_budget`]: a per-registry token bucket;
//! - [`response_headers`]: `Retry-After` and `RateLimit-*`.

pub(crate) mod address_policy;
pub(crate) mod authenticator;
pub(crate) mod bounded_body;
pub(crate) mod distribution_client;
pub(crate) mod request_budget;
pub(crate) mod response_headers;
pub(crate) mod transfer_limits;
