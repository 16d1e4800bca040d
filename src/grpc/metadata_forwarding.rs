//! Forwarding of request metadata from the calls the expander serves to the calls it
//! makes, as bb-storage's `addMetadata` and `addMetadataJmespathExpression` client
//! options do.
//!
//! Two tower layers cooperate: [`IncomingMetadataLayer`] on the servers keeps the
//! headers of the call being handled in a task-local for as long as its handler runs,
//! and [`AddMetadataLayer`] on a client adds the configured static headers plus the
//! result of the JMESPath expression evaluated against
//! `{"incomingGRPCMetadata": {name: [values…]}, "authenticationMetadata": {}}`.
//!
//! Binary (`-bin`) headers appear in the JMESPath input in their base64 wire form, and
//! are sent on in that same form, so bb-deployments' expression that forwards
//! `build.bazel.remote.execution.v2.requestmetadata-bin` works unchanged.

use crate::config::grpc::{ClientConfiguration, HeaderValues};
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

tokio::task_local! {
    static INCOMING_METADATA: Arc<HeaderMap>;
}

/// Wraps `future` so that it runs with the incoming metadata of the current call, for
/// work spawned as a task of its own while a call is handled.
pub fn propagate<F: std::future::Future>(
    future: F,
) -> impl std::future::Future<Output = F::Output> {
    let headers = INCOMING_METADATA
        .try_with(|h| h.clone())
        .unwrap_or_default();
    INCOMING_METADATA.scope(headers, future)
}

/// Server layer: makes the incoming call's headers available to clients.
#[derive(Clone, Default)]
pub struct IncomingMetadataLayer;

impl<S> Layer<S> for IncomingMetadataLayer {
    type Service = IncomingMetadata<S>;
    fn layer(&self, inner: S) -> Self::Service {
        IncomingMetadata { inner }
    }
}

#[derive(Clone)]
pub struct IncomingMetadata<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for IncomingMetadata<S>
where
    S: Service<Request<B>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let headers = Arc::new(request.headers().clone());
        let future = self.inner.call(request);
        Box::pin(INCOMING_METADATA.scope(headers, future))
    }
}

/// What a client adds to each call.
#[derive(Clone, Debug, Default)]
pub(crate) struct MetadataAdder {
    static_headers: Vec<(HeaderName, HeaderValue)>,
    expression: Option<Arc<jmespath::Expression<'static>>>,
}

impl MetadataAdder {
    pub fn from_configuration(config: &ClientConfiguration) -> Result<Self, String> {
        let mut static_headers = Vec::new();
        for HeaderValues { header, values } in &config.add_metadata {
            let name = HeaderName::from_bytes(header.as_bytes())
                .map_err(|e| format!("addMetadata: invalid header name {header:?}: {e}"))?;
            if header.to_ascii_lowercase() != *header {
                return Err(format!(
                    "addMetadata: header name {header:?} must be lower case"
                ));
            }
            for value in values {
                let value = HeaderValue::from_str(value).map_err(|e| {
                    format!("addMetadata: invalid value for header {header:?}: {e}")
                })?;
                static_headers.push((name.clone(), value));
            }
        }
        let expression = match &config.add_metadata_jmespath_expression {
            Some(e) => Some(Arc::new(jmespath::compile(&e.expression).map_err(
                |err| format!("addMetadataJmespathExpression: failed to compile: {err}"),
            )?)),
            None => None,
        };
        Ok(Self {
            static_headers,
            expression,
        })
    }

    /// Whether this adder does anything.
    pub fn is_empty(&self) -> bool {
        self.static_headers.is_empty() && self.expression.is_none()
    }

    /// Adds the configured metadata, given the incoming call's headers.
    pub fn add(&self, incoming: &HeaderMap, outgoing: &mut HeaderMap) -> Result<(), String> {
        for (name, value) in &self.static_headers {
            outgoing.append(name.clone(), value.clone());
        }
        let Some(expression) = &self.expression else {
            return Ok(());
        };
        let mut incoming_json = serde_json::Map::new();
        for name in incoming.keys() {
            let values: Vec<serde_json::Value> = incoming
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| serde_json::Value::String(v.to_string()))
                .collect();
            incoming_json.insert(name.as_str().to_string(), serde_json::Value::Array(values));
        }
        let input = serde_json::json!({
            "incomingGRPCMetadata": incoming_json,
            "authenticationMetadata": {},
        });
        let variable = jmespath::Variable::from_serializable(&input)
            .map_err(|e| format!("Failed to convert metadata for JMESPath: {e}"))?;
        let result = expression
            .search(variable)
            .map_err(|e| format!("Failed to evaluate JMESPath expression: {e}"))?;
        let result = serde_json::to_value(&*result)
            .map_err(|e| format!("Failed to convert JMESPath result: {e}"))?;
        let map = match result {
            serde_json::Value::Object(map) => map,
            other => {
                return Err(format!(
                    "JMESPath expression yielded {other}, while a map of header names to lists of values was expected"
                ))
            }
        };
        for (header, values) in map {
            let name = HeaderName::from_bytes(header.as_bytes()).map_err(|e| {
                format!("JMESPath expression yielded invalid header {header:?}: {e}")
            })?;
            let values = match values {
                // A header that the incoming call lacks: nothing to forward.
                serde_json::Value::Null => continue,
                serde_json::Value::Array(values) => values,
                other => {
                    return Err(format!(
                        "JMESPath expression yielded {other} for header {header:?}, while a list of strings was expected"
                    ))
                }
            };
            for value in values {
                let serde_json::Value::String(value) = value else {
                    return Err(format!(
                        "JMESPath expression yielded a non-string value for header {header:?}"
                    ));
                };
                let value = HeaderValue::from_str(&value).map_err(|e| {
                    format!(
                        "JMESPath expression yielded an invalid value for header {header:?}: {e}"
                    )
                })?;
                outgoing.append(name.clone(), value);
            }
        }
        Ok(())
    }
}

/// Client layer: adds metadata to every outgoing call.
#[derive(Clone)]
pub(crate) struct AddMetadataLayer {
    adder: Arc<MetadataAdder>,
}

impl AddMetadataLayer {
    pub fn new(adder: MetadataAdder) -> Self {
        Self {
            adder: Arc::new(adder),
        }
    }
}

impl<S> Layer<S> for AddMetadataLayer {
    type Service = AddMetadata<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AddMetadata {
            inner,
            adder: self.adder.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct AddMetadata<S> {
    inner: S,
    adder: Arc<MetadataAdder>,
}

impl<S, B> Service<Request<B>> for AddMetadata<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<B>) -> Self::Future {
        let empty = Arc::new(HeaderMap::new());
        let incoming = INCOMING_METADATA.try_with(|h| h.clone()).unwrap_or(empty);
        if let Err(e) = self.adder.add(&incoming, request.headers_mut()) {
            // The call still goes out; the scheduler decides what missing metadata means.
            tracing::warn!("Not forwarding metadata: {e}");
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::grpc::JmespathExpression;

    const REQUEST_METADATA: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

    fn bb_deployments_client() -> ClientConfiguration {
        ClientConfiguration {
            address: "scheduler:8982".into(),
            add_metadata: vec![HeaderValues {
                header: "x-static".into(),
                values: vec!["a".into(), "b".into()],
            }],
            add_metadata_jmespath_expression: Some(JmespathExpression {
                expression: format!(
                    r#"{{"{REQUEST_METADATA}": incomingGRPCMetadata."{REQUEST_METADATA}"}}"#
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn forwards_request_metadata_with_bb_deployments_expression() {
        let adder = MetadataAdder::from_configuration(&bb_deployments_client()).unwrap();
        let mut incoming = HeaderMap::new();
        incoming.insert(REQUEST_METADATA, HeaderValue::from_static("CgRiYXplbA"));
        incoming.insert("authorization", HeaderValue::from_static("Bearer secret"));
        let mut outgoing = HeaderMap::new();
        adder.add(&incoming, &mut outgoing).unwrap();
        assert_eq!(outgoing.get(REQUEST_METADATA).unwrap(), "CgRiYXplbA");
        assert_eq!(
            outgoing.get_all("x-static").iter().collect::<Vec<_>>(),
            vec!["a", "b"]
        );
        assert!(outgoing.get("authorization").is_none());
    }

    #[test]
    fn absent_incoming_header_is_not_forwarded() {
        let adder = MetadataAdder::from_configuration(&bb_deployments_client()).unwrap();
        let mut outgoing = HeaderMap::new();
        adder.add(&HeaderMap::new(), &mut outgoing).unwrap();
        assert!(outgoing.get(REQUEST_METADATA).is_none());
    }

    #[test]
    fn expression_yielding_a_non_map_is_an_error() {
        let config = ClientConfiguration {
            add_metadata_jmespath_expression: Some(JmespathExpression {
                expression: "'x'".into(),
            }),
            ..Default::default()
        };
        let adder = MetadataAdder::from_configuration(&config).unwrap();
        let err = adder
            .add(&HeaderMap::new(), &mut HeaderMap::new())
            .unwrap_err();
        assert!(err.contains("while a map of header names"), "{err}");
    }

    #[test]
    fn invalid_expression_is_a_configuration_error() {
        let config = ClientConfiguration {
            add_metadata_jmespath_expression: Some(JmespathExpression {
                expression: "{".into(),
            }),
            ..Default::default()
        };
        assert!(MetadataAdder::from_configuration(&config)
            .unwrap_err()
            .starts_with("addMetadataJmespathExpression: failed to compile"));
    }
}
