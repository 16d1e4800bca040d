//! One request to a registry, as the distribution protocol and the registry policies want
//! it (docs/design/registry-http.md):
//! 1. the entry's request budget (`registries[].requestBudget`) is waited for;
//! 2. the address policy is applied to the host ([`super::address_policy`]);
//! 3. the `Authorization` header comes from the cached handshake and token
//!    ([`super::authenticator`]); a 401 despite a token is retried once with fresh ones;
//! 4. redirects are followed here, at most [`MAXIMUM_REDIRECTS`], each target checked
//!    against the address policy and the entry's `redirectHosts`; credentials are sent
//!    only to the registry host itself;
//! 5. `RateLimit-*` headers are exported; a failure becomes a [`Failure`] carrying the wait
//!    `Retry-After` asks for, or a permanent one if that wait is longer than
//!    `maximumRetryAfter`.
//!
//! The response is returned with its body unread: the caller reads it with a size limit
//! ([`super::bounded_body`]) or as a stream held to transfer limits
//! ([`super::transfer_limits`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use oci_client::secrets::RegistryAuth;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, LOCATION};
use reqwest::{Method, StatusCode, Url};
use tonic::Status;

use super::address_policy::{host_name, AddressPolicy, PolicyResolver};
use super::authenticator::Authenticator;
use super::bounded_body::read_bounded;
use super::request_budget::RequestBudget;
use super::response_headers::{record_rate_limit, retry_after};
use crate::registry::configuration::{normalize_host, RegistryConfiguration};
use crate::registry::credentials::Secrets;
use crate::registry::errors::{from_response, from_transport, Failure};
use crate::registry::metrics;

/// Redirects followed for one request at most.
pub(crate) const MAXIMUM_REDIRECTS: usize = 5;
/// Error bodies are read up to this size for their message.
const MAXIMUM_ERROR_BODY_SIZE: u64 = 64 << 10;

const USER_AGENT: &str = concat!("bb-container-expander/", env!("CARGO_PKG_VERSION"));

/// Where a request goes: a repository on one host (a mirror or the registry itself).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target<'a> {
    /// The host contacted, normalised (`registry.example:5000`).
    pub host: &'a str,
    pub plain_http: bool,
    pub credentials: &'a RegistryAuth,
    /// The repository (`library/debian`).
    pub repository: &'a str,
    /// For a mirror: the registry the repository belongs to (`?ns=`).
    pub namespace: Option<&'a str>,
}

impl Target<'_> {
    fn base(&self) -> String {
        let scheme = if self.plain_http { "http" } else { "https" };
        format!("{scheme}://{}", self.host)
    }
}

/// Sends registry requests; one per process, shared by every image.
pub(crate) struct DistributionClient {
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
    authenticator: Authenticator,
    /// By normalised host: every host of an entry shares the entry's budget.
    budgets: Arc<Budgets>,
    /// By normalised host: where redirects from it may go, when the entry says.
    redirect_hosts: HashMap<String, Vec<String>>,
    maximum_retry_after: Duration,
    secrets: Secrets,
}

/// Request budgets by normalised host.
pub(crate) type Budgets = HashMap<String, Arc<RequestBudget>>;

/// Waits for `host`'s budget, if its entry has one.
pub(crate) async fn wait_for_budget(budgets: &Budgets, host: &str) {
    if let Some(budget) = budgets.get(&normalize_host(host)) {
        budget.acquire().await;
    }
}

/// `url`'s `host[:port]`, the port only when it is not the scheme's default.
fn authority(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host,
    }
}

impl DistributionClient {
    /// A client for `configuration`. Fails if `httpProxy` is not a URL or the TLS stack
    /// cannot be set up.
    pub(crate) fn new(
        configuration: &RegistryConfiguration,
        secrets: Secrets,
    ) -> Result<Self, Status> {
        let policy = Arc::new(AddressPolicy::new(configuration));
        // Proxies come from the configuration only (see `httpProxy`): one taken from the
        // environment would resolve names where the address policy cannot see them.
        let proxy = match &configuration.http_proxy {
            Some(url) => Some(reqwest::Proxy::all(url).map_err(|e| {
                Status::invalid_argument(format!("Invalid httpProxy {url:?}: {e}"))
            })?),
            None => None,
        };
        let builder = match proxy {
            Some(proxy) => reqwest::Client::builder().proxy(proxy),
            None => reqwest::Client::builder().no_proxy(),
        };
        let http = builder
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(configuration.request_timeout)
            .read_timeout(configuration.request_timeout)
            .tcp_nodelay(true)
            .dns_resolver(Arc::new(PolicyResolver(policy.clone())))
            .build()
            .map_err(|e| Status::internal(format!("Failed to create registry HTTP client: {e}")))?;
        let mut budgets = HashMap::new();
        let mut redirect_hosts = HashMap::new();
        for entry in &configuration.registries {
            let budget = entry.request_budget.as_ref().map(|b| {
                Arc::new(RequestBudget::new(
                    b.requests_per_second,
                    b.burst.unwrap_or(1),
                ))
            });
            for host in &entry.hosts {
                if let Some(budget) = &budget {
                    budgets.insert(normalize_host(host), budget.clone());
                }
                if let Some(hosts) = &entry.redirect_hosts {
                    redirect_hosts.insert(
                        normalize_host(host),
                        hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
                    );
                }
            }
        }
        let budgets = Arc::new(budgets);
        Ok(Self {
            authenticator: Authenticator::new(http.clone(), policy.clone(), budgets.clone()),
            http,
            policy,
            budgets,
            redirect_hosts,
            maximum_retry_after: configuration.maximum_retry_after,
            secrets,
        })
    }

    fn scrub(&self, status: Status) -> Status {
        Status::new(status.code(), self.secrets.scrub(status.message()))
    }

    fn scrubbed(&self, mut failure: Failure) -> Failure {
        failure.status = self.scrub(failure.status);
        failure
    }

    /// Sends `method` for `/v2/<repository>/<path>` to `target` and returns the final
    /// response (after redirects) if it succeeded. `kind` labels the request in metrics
    /// (`manifest`, `blob`).
    pub(crate) async fn send(
        &self,
        target: &Target<'_>,
        method: Method,
        path: &str,
        accept: Option<&str>,
        kind: &str,
    ) -> Result<reqwest::Response, Failure> {
        // Messages may quote what the registry sent back: configured secrets are
        // scrubbed from every failure.
        let sent: Result<reqwest::Response, Failure> = async {
            if let Err(refused) = self.policy.check_host(target.host) {
                metrics::refused(target.host, "address");
                return Err(Failure::permanent(Status::permission_denied(
                    refused.to_string(),
                )));
            }
            let base = target.base();
            let mut url =
                Url::parse(&format!("{base}/v2/{}/{path}", target.repository)).map_err(|e| {
                    Failure::permanent(Status::invalid_argument(format!("Bad URL: {e}")))
                })?;
            if let Some(namespace) = target.namespace {
                url.query_pairs_mut().append_pair("ns", namespace);
            }
            let scope = format!("repository:{}:pull", target.repository);
            let mut retried_authorization = false;
            loop {
                let authorization = self
                    .authenticator
                    .authorization(&base, target.host, target.credentials, &scope)
                    .await?;
                let response = self
                    .follow(
                        target,
                        &method,
                        url.clone(),
                        accept,
                        authorization.clone(),
                        kind,
                    )
                    .await?;
                if response.status() == StatusCode::UNAUTHORIZED
                    && authorization.is_some()
                    && !retried_authorization
                {
                    // The token expired early or was revoked: one more try with fresh ones.
                    self.authenticator.forget(&base, &scope);
                    retried_authorization = true;
                    continue;
                }
                return self.check(target.host, &method, response).await;
            }
        }
        .await;
        sent.map_err(|f| self.scrubbed(f))
    }

    /// Sends the request and follows redirects within the policies.
    async fn follow(
        &self,
        target: &Target<'_>,
        method: &Method,
        mut url: Url,
        accept: Option<&str>,
        mut authorization: Option<HeaderValue>,
        kind: &str,
    ) -> Result<reqwest::Response, Failure> {
        for _ in 0..=MAXIMUM_REDIRECTS {
            let mut request = self.http.request(method.clone(), url.clone());
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(authorization) = &authorization {
                request = request.header(AUTHORIZATION, authorization.clone());
            }
            self.budget(target.host).await;
            let response = request.send().await;
            metrics::request(
                target.host,
                kind,
                response.as_ref().ok().map(|r| r.status().as_u16()),
            );
            let response = response.map_err(|e| from_transport(&e, &format!("{method} {url}")))?;
            record_rate_limit(target.host, response.headers());
            if !response.status().is_redirection() {
                return Ok(response);
            }
            let Some(location) = response
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
            else {
                return Ok(response);
            };
            let next = url.join(location).map_err(|e| {
                Failure::permanent(Status::failed_precondition(format!(
                    "{method} {url} redirected to an invalid location: {e}"
                )))
            })?;
            self.check_redirect(target, &url, &next)?;
            if authority(&next) != target.host || next.scheme() != url.scheme() {
                // Credentials are for the registry only; object storage signs its URLs.
                authorization = None;
            }
            url = next;
        }
        Err(Failure::permanent(Status::failed_precondition(format!(
            "{method} of {} on {} was redirected more than {MAXIMUM_REDIRECTS} times",
            url.path(),
            target.host
        ))))
    }

    fn check_redirect(&self, target: &Target<'_>, from: &Url, to: &Url) -> Result<(), Failure> {
        if !matches!(to.scheme(), "http" | "https") {
            return Err(Failure::permanent(Status::permission_denied(format!(
                "Registry {} redirected {from} to {to}: only http and https are followed",
                target.host
            ))));
        }
        let to_authority = authority(to);
        if to_authority == target.host {
            return Ok(());
        }
        if let Some(allowed) = self.redirect_hosts.get(target.host) {
            let name = host_name(&to_authority);
            if !allowed
                .iter()
                .any(|a| *a == to_authority || host_name(a) == name && !a.contains(':'))
            {
                metrics::refused(target.host, "redirect_host");
                return Err(Failure::permanent(Status::permission_denied(format!(
                    "Registry {} redirected to {to_authority}, which is not allowed: the \
                     registry's redirectHosts do not list it",
                    target.host
                ))));
            }
        }
        self.policy.check_host(&to_authority).map_err(|refused| {
            metrics::refused(target.host, "address");
            Failure::permanent(Status::permission_denied(format!(
                "Registry {} redirected to {to_authority}, which is not allowed: {refused}",
                target.host
            )))
        })
    }

    async fn budget(&self, host: &str) {
        wait_for_budget(&self.budgets, host).await;
    }

    /// The response if it succeeded, else the failure it means.
    async fn check(
        &self,
        host: &str,
        method: &Method,
        response: reqwest::Response,
    ) -> Result<reqwest::Response, Failure> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let what = format!("{method} {}", response.url());
        let wait = matches!(status.as_u16(), 429 | 503)
            .then(|| retry_after(response.headers(), SystemTime::now()))
            .flatten();
        let body = if *method == Method::HEAD {
            Default::default()
        } else {
            read_bounded(response, MAXIMUM_ERROR_BODY_SIZE, &what)
                .await
                .unwrap_or_default()
        };
        let mut failure = from_response(status.as_u16(), &body, what);
        if let Some(wait) = wait {
            if wait > self.maximum_retry_after {
                metrics::retry_after(host, false);
                return Err(Failure::permanent(Status::unavailable(format!(
                    "{} (Retry-After asks for {}s, more than maximumRetryAfter of {:?})",
                    failure.status.message(),
                    wait.as_secs(),
                    self.maximum_retry_after
                ))));
            }
            metrics::retry_after(host, true);
            failure.retryable = true;
            failure.minimum_delay = wait;
        }
        Err(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        let a = |u: &str| authority(&Url::parse(u).unwrap());
        assert_eq!(a("http://127.0.0.1:5000/v2/"), "127.0.0.1:5000");
        assert_eq!(a("https://s3.example/x"), "s3.example");
        assert_eq!(a("https://s3.example:443/x"), "s3.example");
        assert_eq!(a("http://[::1]:80/x"), "[::1]");
        assert_eq!(a("http://[::1]:8080/x"), "[::1]:8080");
    }
}
