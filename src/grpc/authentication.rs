//! The `authenticationPolicy` of a server as a tower layer. `allow` accepts, `deny`
//! refuses with its message (UNAUTHENTICATED, as Buildbarn's deny authenticator), `any`
//! accepts when one of its policies does, `all` when every one does.
//!
//! Buildbarn's credential-checking policies (TLS client certificates, JWT, remote) are
//! not implemented: such a configuration is rejected when it is loaded, rather than
//! accepted and ignored.

use crate::config::grpc::AuthenticationPolicy;
use http::{Request, Response};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

/// Decides whether a call may proceed; `Err` carries the refusal message.
pub fn evaluate(policy: &AuthenticationPolicy) -> Result<(), String> {
    match policy {
        AuthenticationPolicy::Allow(_) => Ok(()),
        AuthenticationPolicy::Deny(message) => Err(message.clone()),
        AuthenticationPolicy::Any(list) => {
            let mut errors = Vec::new();
            for p in &list.policies {
                match evaluate(p) {
                    Ok(()) => return Ok(()),
                    Err(e) => errors.push(e),
                }
            }
            if errors.is_empty() {
                Err("No authentication policies configured".into())
            } else {
                Err(errors.join(", "))
            }
        }
        AuthenticationPolicy::All(list) => list.policies.iter().try_for_each(evaluate),
    }
}

#[derive(Clone)]
pub struct AuthenticationLayer {
    policy: Arc<AuthenticationPolicy>,
}

impl AuthenticationLayer {
    pub fn new(policy: AuthenticationPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
        }
    }
}

impl<S> Layer<S> for AuthenticationLayer {
    type Service = Authentication<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Authentication {
            inner,
            policy: self.policy.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Authentication<S> {
    inner: S,
    policy: Arc<AuthenticationPolicy>,
}

impl<S, B> Service<Request<B>> for Authentication<S>
where
    S: Service<Request<B>, Response = Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match evaluate(&self.policy) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(message) => {
                let status =
                    tonic::Status::unauthenticated(format!("Authentication failed: {message}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::grpc::PolicyList;

    fn allow() -> AuthenticationPolicy {
        AuthenticationPolicy::Allow(serde_json::json!({}))
    }
    fn deny(m: &str) -> AuthenticationPolicy {
        AuthenticationPolicy::Deny(m.into())
    }

    #[test]
    fn any_and_all() {
        assert!(evaluate(&allow()).is_ok());
        assert_eq!(evaluate(&deny("Go away")).unwrap_err(), "Go away");
        let any = AuthenticationPolicy::Any(PolicyList {
            policies: vec![deny("a"), allow()],
        });
        assert!(evaluate(&any).is_ok());
        let any = AuthenticationPolicy::Any(PolicyList {
            policies: vec![deny("a"), deny("b")],
        });
        assert_eq!(evaluate(&any).unwrap_err(), "a, b");
        let all = AuthenticationPolicy::All(PolicyList {
            policies: vec![allow(), deny("c")],
        });
        assert_eq!(evaluate(&all).unwrap_err(), "c");
    }
}
