//! Authentication to registries, done once and reused (docs/design/registry-http.md#authentication).
//!
//! The first request to a registry host asks `GET /v2/` what it wants: nothing (200), HTTP
//! basic credentials, or a bearer token from a token server (`WWW-Authenticate: Bearer
//! realm=…,service=…`). The answer is kept for the life of the process, per host; callers
//! arriving together wait for one handshake. A bearer token is fetched per host and scope
//! (`repository:<name>:pull`), with the configured credentials if any, and reused until
//! shortly before it expires (`expires_in`, 60 s when absent, as the token protocol
//! says). A request answered 401 although it carried a token calls [`Authenticator::forget`],
//! and is sent once more with a fresh handshake and token.
//!
//! Token responses are read with a size limit ([`MAXIMUM_TOKEN_RESPONSE_SIZE`]). The token
//! server of a listed registry is trusted as the registry is; that of an unlisted one goes
//! through the address policy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use parking_lot::Mutex;
use reqwest::header::{HeaderValue, WWW_AUTHENTICATE};
use tokio::sync::OnceCell;
use tokio::time::Instant;
use tonic::Status;

use super::address_policy::{self, AddressPolicy};
use super::bounded_body::read_bounded;
use super::distribution_client::{wait_for_budget, Budgets};
use crate::registry::errors::{from_response, from_transport, Failure};
use crate::registry::metrics;

/// Token responses larger than this are refused.
pub(crate) const MAXIMUM_TOKEN_RESPONSE_SIZE: u64 = 1 << 20;
/// Lifetime of a token whose response gives none.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Tokens kept at most; expired ones are dropped first.
const MAXIMUM_TOKENS: usize = 10_000;

/// What a registry host asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    None,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Clone, Debug)]
struct Token {
    header: HeaderValue,
    renew_at: Instant,
}

type TokenSlot = Arc<tokio::sync::Mutex<Option<Token>>>;

/// Handshakes and tokens of every registry host this process talks to.
pub(crate) struct Authenticator {
    http: reqwest::Client,
    policy: Arc<AddressPolicy>,
    /// The handshake counts against the registry's request budget.
    budgets: Arc<Budgets>,
    /// By base URL (`https://host`).
    challenges: Mutex<HashMap<String, Arc<OnceCell<Challenge>>>>,
    /// By base URL and scope; one lock per slot, so that one token request serves all.
    tokens: Mutex<HashMap<(String, String), TokenSlot>>,
}

/// Parses `WWW-Authenticate`.
pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    let mut basic = false;
    for challenge in http_auth::parse_challenges(header).ok()? {
        if challenge.scheme.eq_ignore_ascii_case("bearer") {
            let mut realm = None;
            let mut service = None;
            for (name, value) in &challenge.params {
                if name.eq_ignore_ascii_case("realm") {
                    realm = Some(value.to_unescaped());
                } else if name.eq_ignore_ascii_case("service") {
                    service = Some(value.to_unescaped());
                }
            }
            return Some(Challenge::Bearer {
                realm: realm?,
                service,
            });
        }
        basic |= challenge.scheme.eq_ignore_ascii_case("basic");
    }
    basic.then_some(Challenge::Basic)
}

fn basic_header(username: &str, password: &str) -> HeaderValue {
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
    let mut value = HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is ASCII");
    value.set_sensitive(true);
    value
}

fn bearer_header(token: &str) -> Result<HeaderValue, Failure> {
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        Failure::permanent(Status::failed_precondition(
            "The token server sent a token that is not a valid header value",
        ))
    })?;
    value.set_sensitive(true);
    Ok(value)
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

impl Authenticator {
    pub(crate) fn new(
        http: reqwest::Client,
        policy: Arc<AddressPolicy>,
        budgets: Arc<Budgets>,
    ) -> Self {
        Self {
            http,
            policy,
            budgets,
            challenges: Default::default(),
            tokens: Default::default(),
        }
    }

    /// The `Authorization` header for a request to `base` (`https://host`) needing
    /// `scope`, if one is needed. `host` names the registry in metrics and errors.
    pub(crate) async fn authorization(
        &self,
        base: &str,
        host: &str,
        credentials: &RegistryAuth,
        scope: &str,
    ) -> Result<Option<HeaderValue>, Failure> {
        let cell = self
            .challenges
            .lock()
            .entry(base.to_owned())
            .or_default()
            .clone();
        let challenge = cell.get_or_try_init(|| self.handshake(base, host)).await?;
        match (challenge, credentials) {
            (Challenge::None, _) | (Challenge::Basic, RegistryAuth::Anonymous) => Ok(None),
            (_, RegistryAuth::Bearer(token)) => bearer_header(token).map(Some),
            (Challenge::Basic, RegistryAuth::Basic(u, p)) => Ok(Some(basic_header(u, p))),
            (Challenge::Bearer { realm, service }, _) => {
                let slot = {
                    let mut tokens = self.tokens.lock();
                    if tokens.len() >= MAXIMUM_TOKENS {
                        let now = Instant::now();
                        tokens.retain(|_, slot| {
                            slot.try_lock()
                                .map(|t| t.as_ref().is_some_and(|t| t.renew_at > now))
                                .unwrap_or(true)
                        });
                    }
                    tokens
                        .entry((base.to_owned(), scope.to_owned()))
                        .or_default()
                        .clone()
                };
                let mut token = slot.lock().await;
                if let Some(t) = token.as_ref() {
                    if t.renew_at > Instant::now() {
                        return Ok(Some(t.header.clone()));
                    }
                }
                let fresh = self
                    .fetch_token(host, realm, service.as_deref(), credentials, scope)
                    .await?;
                *token = Some(fresh.clone());
                Ok(Some(fresh.header))
            }
        }
    }

    /// Forgets the handshake and token of `base` and `scope` after they were refused.
    pub(crate) fn forget(&self, base: &str, scope: &str) {
        self.challenges.lock().remove(base);
        self.tokens
            .lock()
            .remove(&(base.to_owned(), scope.to_owned()));
    }

    async fn handshake(&self, base: &str, host: &str) -> Result<Challenge, Failure> {
        let url = format!("{base}/v2/");
        wait_for_budget(&self.budgets, host).await;
        let response = self.http.get(&url).send().await;
        metrics::request(
            host,
            "handshake",
            response.as_ref().ok().map(|r| r.status().as_u16()),
        );
        let response = response.map_err(|e| from_transport(&e, &format!("GET {url}")))?;
        let status = response.status().as_u16();
        if response.status().is_success() {
            return Ok(Challenge::None);
        }
        if status == 401 {
            let challenge = response
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .and_then(parse_challenge);
            return challenge.ok_or_else(|| {
                Failure::permanent(Status::failed_precondition(format!(
                    "GET {url} answered 401 without a Basic or Bearer challenge"
                )))
            });
        }
        let body = read_bounded(response, 64 << 10, &format!("GET {url}"))
            .await
            .unwrap_or_default();
        Err(from_response(status, &body, format!("GET {url}")))
    }

    async fn fetch_token(
        &self,
        host: &str,
        realm: &str,
        service: Option<&str>,
        credentials: &RegistryAuth,
        scope: &str,
    ) -> Result<Token, Failure> {
        let refused = |reason: String| {
            Failure::permanent(Status::permission_denied(format!(
                "Token server {realm} of registry {host}: {reason}"
            )))
        };
        let url = reqwest::Url::parse(realm)
            .map_err(|e| refused(format!("the realm is not a URL: {e}")))?;
        let authority = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_owned(),
            (None, _) => return Err(refused("the realm names no host".into())),
        };
        // The realm of a listed registry is trusted as the registry is.
        if self.policy.is_listed(&address_policy::host_name(host)) {
            self.policy.trust(&authority);
        }
        self.policy
            .check_host(&authority)
            .map_err(|e| refused(e.to_string()))?;
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.http.get(url.clone()).query(&query);
        if let RegistryAuth::Basic(u, p) = credentials {
            request = request.header(reqwest::header::AUTHORIZATION, basic_header(u, p));
        }
        let requested = Instant::now();
        let response = request.send().await;
        metrics::request(
            host,
            "token",
            response.as_ref().ok().map(|r| r.status().as_u16()),
        );
        let what = format!("Token response of {realm}");
        let response = response.map_err(|e| from_transport(&e, &format!("GET {realm}")))?;
        let status = response.status().as_u16();
        let body = read_bounded(response, MAXIMUM_TOKEN_RESPONSE_SIZE, &what).await?;
        if !(200..300).contains(&status) {
            let failure = from_response(status, &body, format!("GET {realm}"));
            if failure.retryable {
                return Err(failure);
            }
            return Err(Failure::permanent(Status::permission_denied(format!(
                "Registry token request failed; check the credentials configured for {host}: {}",
                failure.status.message()
            ))));
        }
        let parsed: TokenResponse = serde_json::from_slice(&body)
            .map_err(|e| refused(format!("the token response is not valid JSON: {e}")))?;
        let token = parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| refused("the token response holds no token".into()))?;
        let lifetime = parsed
            .expires_in
            .map(Duration::from_secs)
            .unwrap_or(DEFAULT_TOKEN_LIFETIME);
        // Renew a little early, so that a request does not leave with a token about to
        // expire.
        let renew_at = requested + lifetime.mul_f64(0.9);
        Ok(Token {
            header: bearer_header(&token)?,
            renew_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x", Bearer realm="https://t/""#),
            Some(Challenge::Bearer {
                realm: "https://t/".into(),
                service: None
            })
        );
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }
}
