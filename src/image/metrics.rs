//! Prometheus metrics of image expansion: cache lookups per cache and outcome, time per
//! step, bytes pulled from each registry, and how the engine copes with slow or failing
//! registries (work abandoned, ingestions in progress per registry, tags served stale),
//! and how prewarmed tags move and how soon their trees are ready.

use crate::registry::metric_labels::label;
use prometheus::{GaugeVec, HistogramVec, IntCounterVec, IntGaugeVec};
use std::sync::LazyLock;

static CACHE_LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new(
            "cache_lookups_total",
            "Lookups in the expander's caches, by cache and outcome (hit, miss, incomplete).",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
        &["cache", "result"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
});

static STEP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    let h = HistogramVec::new(
        prometheus::HistogramOpts::new(
            "step_duration_seconds",
            "Time spent per step: resolve, fetch_metadata, ingest_layer, apply, upload_tree, \
             graft, forward.",
        )
        .namespace("buildbarn")
        .subsystem("container_expander")
        .buckets(prometheus::exponential_buckets(0.0001, 4.0, 13).expect("valid buckets")),
        &["step", "result"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(h.clone())).expect("metric registered once");
    h
});

static PULLED_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new(
            "registry_pulled_bytes_total",
            "Layer bytes pulled from each registry (as stored, compressed).",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
        &["registry"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
});

static ACTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new(
            "actions_total",
            "Actions seen, by front door (execute, route_action) and outcome (rewritten, \
             passed_through).",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
        &["front_door", "outcome"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
});

static BOOKKEEPING_WRITES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new(
            "bookkeeping_writes_total",
            "Writes of records that never decide an action's outcome, by record (mapping: \
             rewritten action to the client's; write_back: a result stored under the \
             client's action digest) and result (ok, failed).",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
        &["record", "result"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
});

static RECORDS_REJECTED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new(
            "cache_records_rejected_total",
            "Records found in the Action Cache but not used, by step (ingest-layer, \
             apply-layers, expand-image, resolve-tag) and reason (unusable, undecodable, \
             invalid); each is rebuilt and overwritten.",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
        &["step", "reason"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
});

static RECORD_WRITES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new(
            "cache_record_writes_total",
            "Writes of the engine's Action Cache records, by step and result (ok, failed); \
             a failed write does not fail the expansion.",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
        &["step", "result"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
});

static ABANDONED_WORK: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new(
            "abandoned_work_total",
            "Shared computations aborted because nobody waited for them any more for \
             abandonGracePeriod, by stage (image, layer, tag).",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
        &["stage"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
});

static LAYER_INGESTS_IN_PROGRESS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let g = IntGaugeVec::new(
        prometheus::Opts::new(
            "layer_ingests_in_progress",
            "Layers being downloaded and ingested, by registry (holding both their \
             registry's and a global slot).",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
        &["registry"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(g.clone())).expect("metric registered once");
    g
});

static TAGS_SERVED_STALE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new(
            "tag_resolutions_served_stale_total",
            "Tags answered with the digest they resolved to before because their \
             registry failed (UNAVAILABLE, RESOURCE_EXHAUSTED), by registry.",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
        &["registry"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
});

static PREWARM_TAG_MOVED: LazyLock<GaugeVec> = LazyLock::new(|| {
    let g = GaugeVec::new(
        prometheus::Opts::new(
            "prewarm_tag_moved_timestamp_seconds",
            "When a prewarmed image's tag was last seen to name a new digest (Unix time), \
             by image (as configured) and instance name.",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
        &["image", "instance_name"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(g.clone())).expect("metric registered once");
    g
});

static PREWARM_READY_LAG: LazyLock<HistogramVec> = LazyLock::new(|| {
    let h = HistogramVec::new(
        prometheus::HistogramOpts::new(
            "prewarm_ready_lag_seconds",
            "Time from a prewarmed tag first seen to name a new digest to that digest's \
             tree being expanded, by image (as configured) and instance name.",
        )
        .namespace("buildbarn")
        .subsystem("container_expander")
        .buckets(prometheus::exponential_buckets(0.1, 2.0, 16).expect("valid buckets")),
        &["image", "instance_name"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(h.clone())).expect("metric registered once");
    h
});

static PREWARM_FAILURES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        prometheus::Opts::new(
            "prewarm_failures_total",
            "Prewarming rounds of an image that failed (resolving its tag or expanding \
             it), by image (as configured) and instance name; retried after the interval.",
        )
        .namespace("buildbarn")
        .subsystem("container_expander"),
        &["image", "instance_name"],
    )
    .expect("valid metric");
    prometheus::register(Box::new(c.clone())).expect("metric registered once");
    c
});

/// Records that the tag of prewarmed `image` moved at `unix_seconds`.
pub(crate) fn prewarm_tag_moved(image: &str, instance_name: &str, unix_seconds: f64) {
    PREWARM_TAG_MOVED
        .with_label_values(&[image, instance_name])
        .set(unix_seconds);
}

/// Records the time from a prewarmed tag moving to its new tree being ready.
pub(crate) fn prewarm_ready_lag(image: &str, instance_name: &str, seconds: f64) {
    PREWARM_READY_LAG
        .with_label_values(&[image, instance_name])
        .observe(seconds);
}

/// Counts a failed prewarming round of `image`.
pub(crate) fn prewarm_failure(image: &str, instance_name: &str) {
    PREWARM_FAILURES
        .with_label_values(&[image, instance_name])
        .inc();
}

#[cfg(test)]
pub(crate) fn prewarm_failures(image: &str, instance_name: &str) -> u64 {
    PREWARM_FAILURES
        .with_label_values(&[image, instance_name])
        .get()
}

#[cfg(test)]
pub(crate) fn prewarm_tag_moved_at(image: &str, instance_name: &str) -> f64 {
    PREWARM_TAG_MOVED
        .with_label_values(&[image, instance_name])
        .get()
}

/// Counts a shared computation of `stage` aborted because nobody waited for it.
pub(crate) fn abandoned(stage: &str) {
    ABANDONED_WORK.with_label_values(&[stage]).inc();
}

#[cfg(test)]
pub(crate) fn abandoned_count(stage: &str) -> u64 {
    ABANDONED_WORK.with_label_values(&[stage]).get()
}

/// Moves the number of layers being ingested from `registry` by `delta`.
pub(crate) fn layer_ingests_in_progress(registry: &str, delta: i64) {
    LAYER_INGESTS_IN_PROGRESS
        .with_label_values(&[&label(registry)])
        .add(delta);
}

#[cfg(test)]
pub(crate) fn layer_ingests_in_progress_now(registry: &str) -> i64 {
    LAYER_INGESTS_IN_PROGRESS
        .with_label_values(&[&label(registry)])
        .get()
}

/// Counts a tag of `registry` answered with a stale digest.
pub(crate) fn tag_served_stale(registry: &str) {
    TAGS_SERVED_STALE
        .with_label_values(&[&label(registry)])
        .inc();
}

#[cfg(test)]
pub(crate) fn tags_served_stale(registry: &str) -> u64 {
    TAGS_SERVED_STALE
        .with_label_values(&[&label(registry)])
        .get()
}

/// Counts a record found in the Action Cache but not used.
pub(crate) fn record_rejected(step: &str, reason: &str) {
    RECORDS_REJECTED.with_label_values(&[step, reason]).inc();
}

/// Counts a write of an engine record.
pub(crate) fn record_write(step: &str, ok: bool) {
    RECORD_WRITES
        .with_label_values(&[step, if ok { "ok" } else { "failed" }])
        .inc();
}

/// Counts a bookkeeping write: `record` is `mapping` or `write_back`.
pub(crate) fn bookkeeping_write(record: &str, ok: bool) {
    BOOKKEEPING_WRITES
        .with_label_values(&[record, if ok { "ok" } else { "failed" }])
        .inc();
}

/// Counts an action: `front_door` is `execute` or `route_action`, `outcome` is
/// `rewritten` or `passed_through`.
pub fn action(front_door: &str, outcome: &str) {
    ACTIONS.with_label_values(&[front_door, outcome]).inc();
}

/// Counts a cache lookup: `result` is `hit`, `miss` or `incomplete`.
pub(crate) fn cache_lookup(cache: &str, result: &str) {
    CACHE_LOOKUPS.with_label_values(&[cache, result]).inc();
}

/// Records the duration of a step.
pub fn step(step: &str, ok: bool, seconds: f64) {
    STEP_SECONDS
        .with_label_values(&[step, if ok { "ok" } else { "error" }])
        .observe(seconds);
}

pub fn pulled(registry: &str, bytes: u64) {
    PULLED_BYTES
        .with_label_values(&[&label(registry)])
        .inc_by(bytes);
}
