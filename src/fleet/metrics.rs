//! Prometheus metrics of the fleet: where each stage's work was done, replicas that
//! could not be reached, and how many replicas this one knows.

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use std::sync::LazyLock;

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new(
            "fleet_requests_total",
            "Cache misses of a stage (image, layer) by where they were answered: local \
             (this replica owns them), forwarded (answered by the owner), owner_failed (the \
             owner's error), owner_unreachable (the next owner asked), owner_invalid (the \
             owner's record did not answer; done here), served (for another replica).",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
        &["stage", "outcome"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
});

static UNREACHABLE: LazyLock<IntCounter> = LazyLock::new(|| {
    let c = IntCounter::with_opts(
        prometheus::Opts::new(
            "fleet_peer_unreachable_total",
            "Times another replica could not be reached and was left out of the owner \
             choice for the backoff period.",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
    )
    .expect("valid metric");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
});

static REPLICAS: LazyLock<IntGauge> = LazyLock::new(|| {
    let g = IntGauge::with_opts(
        prometheus::Opts::new(
            "fleet_replicas",
            "Replicas known to this one (configured or resolved), itself included.",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
    )
    .expect("valid metric");
    prometheus::register(Box::new(g.clone())).expect("metric registered once");
    g
});

pub(crate) fn request(stage: &str, outcome: &str) {
    REQUESTS.with_label_values(&[stage, outcome]).inc();
}

pub(crate) fn peer_unreachable(_address: &str) {
    UNREACHABLE.inc();
}

pub(crate) fn replicas(count: usize) {
    REPLICAS.set(count as i64);
}
