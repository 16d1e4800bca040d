//! Prometheus metrics of registry access: requests by registry and outcome, what a
//! registry says of its rate limit (Docker Hub's `RateLimit-*` headers), waits it asked
//! for (`Retry-After`), and transfers and connections the policies refused. Registry
//! labels are bounded by `metric_labels.rs`.

use super::metric_labels::label;
use prometheus::{IntCounterVec, IntGaugeVec};
use std::sync::LazyLock;

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(
        prometheus::Opts::new(name, help)
            .namespace("buildbarn")
            .subsystem("container_expander"),
        labels,
    )
    .expect("valid metric");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
}

fn gauge(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(
        prometheus::Opts::new(name, help)
            .namespace("buildbarn")
            .subsystem("container_expander"),
        labels,
    )
    .expect("valid metric");
    prometheus::register(Box::new(g.clone())).expect("metric registered once");
    g
}

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "registry_requests_total",
        "HTTP requests sent to registries, by host contacted, kind (handshake, token, \
         manifest, blob) and HTTP status class (2xx, 3xx, 4xx, 5xx, error).",
        &["registry", "kind", "result"],
    )
});

static RATE_LIMIT: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge(
        "registry_rate_limit",
        "The last RateLimit-Limit and RateLimit-Remaining a registry announced (requests \
         per its window), by registry and header (limit, remaining).",
        &["registry", "header"],
    )
});

static RETRY_AFTER: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "registry_retry_after_total",
        "429/503 answers carrying Retry-After, by registry and whether the wait was \
         honoured or longer than maximumRetryAfter (refused).",
        &["registry", "result"],
    )
});

static REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter(
        "registry_policy_refusals_total",
        "Requests the registry policies stopped, by registry and reason (address, \
         redirect_host, transfer_rate, transfer_timeout, too_large).",
        &["registry", "reason"],
    )
});

/// Counts a request's outcome: an HTTP status, or `None` for a transport error.
pub(crate) fn request(registry: &str, kind: &str, status: Option<u16>) {
    let result = match status {
        Some(s) => match s / 100 {
            2 => "2xx",
            3 => "3xx",
            4 => "4xx",
            5 => "5xx",
            _ => "other",
        },
        None => "error",
    };
    REQUESTS
        .with_label_values(&[&label(registry), kind, result])
        .inc();
}

/// Records a registry's `RateLimit-Limit` or `RateLimit-Remaining`.
pub(crate) fn rate_limit(registry: &str, header: &str, value: i64) {
    RATE_LIMIT
        .with_label_values(&[&label(registry), header])
        .set(value);
}

/// Counts a `Retry-After`, honoured or not.
pub(crate) fn retry_after(registry: &str, honoured: bool) {
    let result = if honoured { "honoured" } else { "refused" };
    RETRY_AFTER
        .with_label_values(&[&label(registry), result])
        .inc();
}

/// Counts a request a policy stopped.
pub(crate) fn refused(registry: &str, reason: &str) {
    REFUSED.with_label_values(&[&label(registry), reason]).inc();
}
