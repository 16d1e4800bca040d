//! Issue 10 at service level: the whole expander (real configuration, fake scheduler +
//! worker, in-memory CAS) pulling from a real docker-registry behind a
//! `support::fault_proxy::FaultProxy` that drops a fifth of the requests and trickles the
//! layers of two images, while 50 Execute requests run at once.

mod rewrite_support;
mod support;

use std::time::Duration;

use futures::future::join_all;
use rewrite_support::*;
use support::fault_proxy::{Fault, FaultProxy, Rule};
use tonic::Code;

const CLIENTS: usize = 50;

/// Resident memory of this process, from /proc/self/status.
fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in kB");
    kib << 10
}

/// A runnable image (usr/bin/env) with a marker file, in two layers that no other
/// image has.
fn image(marker: &str) -> support::images::Image {
    image_of_layers(&marked_layers(marker))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_executes_through_a_dropping_and_trickling_registry() {
    let resident_before = resident_bytes();
    let cluster = Cluster::start().await;
    let healthy = ["alpha", "beta", "gamma"];
    let trickled = ["slow-one", "slow-two"];
    // "fresh" is asked for only after the storm, when it is in no cache.
    for name in healthy.iter().chain(&trickled).chain(&["fresh"]) {
        cluster
            .push(&format!("test/{name}"), "v1", &image(name))
            .await;
    }
    let proxy = FaultProxy::start(&cluster.registry.host());
    proxy.seed(10);
    // The trickled images' layers: 1 byte every 1.5 s.
    for name in trickled {
        for layer in &image(name).layers {
            proxy.add_rule(Rule::get(
                &format!("/blobs/{}", layer.digest),
                Fault::trickle(1, Duration::from_millis(1500)),
            ));
        }
    }
    // Every other request: a fifth of the connections close before an answer.
    proxy.add_rule(Rule::any(
        "",
        Fault::DropConnection {
            probability: 0.2,
            after_bytes: None,
        },
    ));
    let expander = cluster
        .expander_with(ExpanderSettings {
            scheduler: true,
            registry_hosts: vec![proxy.host()],
            container_images: "{ maximumRetries: 4, initialRetryDelay: '0.05s', \
                 requestTimeout: '5s', minimumTransferBytesPerSecond: 1024, \
                 transferRateWindow: '1s', keepaliveInterval: '1s' }"
                .into(),
        })
        .await;
    let reference = |name: &str| format!("docker://{}/test/{name}:v1", proxy.host());

    let mut requests = Vec::new();
    for n in 0..CLIENTS {
        // Four in five on a healthy image, the rest on a trickled one.
        let (name, is_healthy) = if n % 5 == 4 {
            (trickled[n % 2], false)
        } else {
            (healthy[n % 3], true)
        };
        let stored = cluster.store(&distinct_action(&reference(name), n)).await;
        requests.push((name, is_healthy, stored.request()));
    }
    // Each Execute ends within 90 s, the trickled ones by failing (they are detected
    // within a few seconds; the bound only keeps a broken build from hanging).
    let started = std::time::Instant::now();
    let outcomes = join_all(requests.iter().map(|(_, _, request)| {
        let expander = &expander;
        async move {
            let outcome =
                tokio::time::timeout(Duration::from_secs(90), expander.execute(request.clone()))
                    .await;
            (outcome, started.elapsed())
        }
    }))
    .await;
    let slowest = |healthy: bool| {
        requests
            .iter()
            .zip(&outcomes)
            .filter(|((_, h, _), _)| *h == healthy)
            .map(|(_, (_, took))| *took)
            .max()
            .unwrap_or_default()
    };
    let (healthy_took, trickled_took) = (slowest(true), slowest(false));
    let outcomes: Vec<_> = outcomes.into_iter().map(|(o, _)| o).collect();

    let mut failures = Vec::new();
    for ((name, is_healthy, _), outcome) in requests.iter().zip(&outcomes) {
        let Ok(outcome) = outcome else {
            failures.push(format!("{name}: no end within 90 s"));
            continue;
        };
        if *is_healthy {
            match &outcome.error {
                Some(status) => failures.push(format!("{name}: {status:?}")),
                None => {
                    let code = outcome.response().status.unwrap_or_default().code;
                    if code != 0 {
                        failures.push(format!("{name}: ExecuteResponse status {code}"));
                    }
                }
            }
        } else {
            match &outcome.error {
                Some(status) if status.code() == Code::Unavailable => {}
                other => failures.push(format!(
                    "{name} (trickled) should fail UNAVAILABLE, got {other:?} after {} operations",
                    outcome.operations.len()
                )),
            }
        }
    }
    let log = proxy.log();
    assert!(
        failures.is_empty(),
        "{failures:#?}\n{} requests reached the proxy, {} dropped",
        log.len(),
        log.iter().filter(|e| e.status.is_none()).count()
    );
    let dropped = log.iter().filter(|e| e.status.is_none()).count();
    assert!(
        dropped > 0,
        "the proxy dropped no connection: the test tests nothing"
    );

    // The service still answers: an action on an image not pulled yet, faults off.
    proxy.clear_rules();
    let stored = cluster
        .store(&distinct_action(&reference("fresh"), 1000))
        .await;
    let fresh = tokio::time::timeout(Duration::from_secs(60), expander.execute(stored.request()))
        .await
        .expect("a fresh Execute is answered");
    assert_eq!(fresh.result().exit_code, 0);
    let executed = cluster.worker.log().execute_requests.len();
    assert!(
        executed > requests.iter().filter(|(_, healthy, _)| *healthy).count(),
        "{executed} actions reached the worker, want every healthy one and the fresh one"
    );

    let grown = resident_bytes().saturating_sub(resident_before);
    // For the record (not asserted: timings depend on the machine).
    eprintln!(
        "{CLIENTS} Executes: last healthy one ended after {healthy_took:?}, last trickled one \
         failed after {trickled_took:?}; {} registry requests, {dropped} dropped; resident \
         memory grew by {} MiB",
        log.len(),
        grown >> 20
    );
    assert!(
        grown < 300 << 20,
        "resident memory grew by {} MiB over the test",
        grown >> 20
    );
    expander.stop().await;
}

/// A client that gives up on an image whose layers hang frees the ingestion slot it held
/// once `abandonGracePeriod` has passed: with one slot in all, another image from the same
/// registry then expands, long before the hanging request would have timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_execute_frees_its_ingestion_slot() {
    let cluster = Cluster::start().await;
    for name in ["hanging", "waiting"] {
        cluster
            .push(&format!("test/{name}"), "v1", &image(name))
            .await;
    }
    let proxy = FaultProxy::start(&cluster.registry.host());
    // The hanging image's layers answer after 10 minutes; the request timeout is longer.
    for layer in &image("hanging").layers {
        proxy.add_rule(Rule::get(
            &format!("/blobs/{}", layer.digest),
            Fault::Delay(Duration::from_secs(600)),
        ));
    }
    let expander = cluster
        .expander_with(ExpanderSettings {
            scheduler: true,
            registry_hosts: vec![proxy.host()],
            container_images: "{ maximumConcurrentLayerIngests: 1, \
                 maximumConcurrentLayerIngestsPerRegistry: 1, requestTimeout: '900s', \
                 maximumRetries: 0, abandonGracePeriod: '0.2s', keepaliveInterval: '0.1s' }"
                .into(),
        })
        .await;
    let reference = |name: &str| format!("docker://{}/test/{name}:v1", proxy.host());

    // The first client waits until its layer download is under way, then goes away.
    let stored = cluster
        .store(&distinct_action(&reference("hanging"), 0))
        .await;
    let mut stream = expander
        .client()
        .await
        .execute(stored.request())
        .await
        .expect("Execute starts")
        .into_inner();
    // Its layers are fetched one at a time (one slot): wait for whichever comes first.
    let hanging_blobs: Vec<String> = image("hanging")
        .layers
        .iter()
        .map(|l| format!("/blobs/{}", l.digest))
        .collect();
    while proxy.count("GET", |p| {
        hanging_blobs.iter().any(|b| p.ends_with(b.as_str()))
    }) == 0
    {
        let keepalive = tokio::time::timeout(
            Duration::from_secs(60),
            futures::StreamExt::next(&mut stream),
        )
        .await
        .expect("keepalives while the layer hangs");
        assert!(
            keepalive.is_some_and(|k| k.is_ok()),
            "the stream stays open"
        );
    }
    drop(stream);

    // The second image needs the only slot.
    let stored = cluster
        .store(&distinct_action(&reference("waiting"), 1))
        .await;
    let outcome =
        tokio::time::timeout(Duration::from_secs(120), expander.execute(stored.request()))
            .await
            .expect("the slot was freed: the hanging download holds it for 600 s otherwise");
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    assert_eq!(outcome.result().exit_code, 0);
    expander.stop().await;
}

/// A registry outage does not stop builds that need no new layers: a tag resolved
/// before keeps serving its last digest for `staleTagGrace` while the registry answers
/// 503, and without the grace the same outage fails the action with UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_keeps_its_last_digest_through_a_registry_outage() {
    let cluster = Cluster::start().await;
    cluster.push("test/stale", "v1", &image("stale")).await;
    let proxy = FaultProxy::start(&cluster.registry.host());
    let reference = format!("docker://{}/test/stale:v1", proxy.host());
    for (grace, survives) in [("3600s", true), ("0s", false)] {
        let expander = cluster
            .expander_with(ExpanderSettings {
                scheduler: true,
                registry_hosts: vec![proxy.host()],
                container_images: format!(
                    "{{ tagTtl: '0.2s', staleTagGrace: '{grace}', maximumRetries: 0 }}"
                ),
            })
            .await;
        proxy.clear_rules();
        let stored = cluster.store(&distinct_action(&reference, 0)).await;
        let first = expander.execute(stored.request()).await;
        assert!(first.error.is_none(), "{:?}", first.error);

        // The resolution expires; then the registry is down for manifests.
        tokio::time::sleep(Duration::from_millis(400)).await;
        proxy.add_rule(Rule::any("/manifests/", Fault::status(503)));
        let stored = cluster.store(&distinct_action(&reference, 1)).await;
        let second = expander.execute(stored.request()).await;
        if survives {
            assert!(second.error.is_none(), "served stale: {:?}", second.error);
            assert_eq!(second.result().exit_code, 0);
        } else {
            let error = second.error.expect("no stale digest without the grace");
            assert_eq!(error.code(), Code::Unavailable, "{}", error.message());
        }
        assert!(
            proxy.count("HEAD", |p| p.contains("/manifests/")) > 0,
            "the expired tag was asked of the registry"
        );
        expander.stop().await;
    }
}
