//! Prometheus metrics of the gRPC servers, as a tower layer:
//! `buildbarn_grpc_server_started_total{grpc_service, grpc_method}` counts calls, and
//! `buildbarn_grpc_server_handling_seconds{grpc_service, grpc_method, grpc_code}`
//! measures the time until the response headers are sent. For streaming calls
//! (Execute, WaitExecution) this is the time to the start of the stream, and the code
//! is that of a trailers-only response, or "OK" when the stream started.

use http::{Request, Response};
use prometheus::{HistogramVec, IntCounterVec};
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Instant;
use tower::{Layer, Service};

static STARTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new("started_total", "Number of gRPC calls started.")
            .namespace("buildbarn")
            .subsystem("grpc_server"),
        &["grpc_service", "grpc_method"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
});

static HANDLING: LazyLock<HistogramVec> = LazyLock::new(|| {
    let h = HistogramVec::new(
        prometheus::HistogramOpts::new(
            "handling_seconds",
            "Time until gRPC response headers were sent.",
        )
        .namespace("buildbarn")
        .subsystem("grpc_server")
        .buckets(prometheus::exponential_buckets(0.0001, 4.0, 12).expect("valid buckets")),
        &["grpc_service", "grpc_method", "grpc_code"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(h.clone())).expect("metric registered once");
    h
});

#[derive(Clone, Default)]
pub struct MetricsLayer;

impl<S> Layer<S> for MetricsLayer {
    type Service = Metrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Metrics { inner }
    }
}

#[derive(Clone)]
pub struct Metrics<S> {
    inner: S,
}

fn split_path(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or("").to_string();
    let method = parts.next().unwrap_or("").to_string();
    (service, method)
}

impl<S, B, RB> Service<Request<B>> for Metrics<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let (service, method) = split_path(request.uri().path());
        STARTED.with_label_values(&[&service, &method]).inc();
        let start = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            let result = future.await;
            let code = match &result {
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(|c| format!("{:?}", tonic::Code::from_i32(c)))
                    .unwrap_or_else(|| "Ok".into()),
                Err(_) => "Unavailable".into(),
            };
            HANDLING
                .with_label_values(&[&service, &method, &code])
                .observe(start.elapsed().as_secs_f64());
            result
        })
    }
}
