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
use support::images::{ImageBuilder, Layer, TarEntry};
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

/// A runnable image (usr/bin/env) with a marker file, in two layers.
fn image(marker: &str) -> support::images::Image {
    // Both layers differ between images, so a rule on one image's blobs hits no other.
    let mut first = env_entries();
    first.push(TarEntry::Dir("etc".into(), 0o755));
    first.push(TarEntry::file("etc/image-name", marker.as_bytes()));
    let second = vec![TarEntry::file(
        "etc/os-release",
        format!("ID={marker}\n").as_bytes(),
    )];
    ImageBuilder::new(support::images::Flavor::Oci)
        .layer(Layer::new(
            support::images::tar_bytes(&first),
            support::images::Compression::Gzip,
            support::images::Flavor::Oci,
        ))
        .layer(Layer::new(
            support::images::tar_bytes(&second),
            support::images::Compression::Gzip,
            support::images::Flavor::Oci,
        ))
        .build()
}

/// A distinct action on `reference`.
fn action(reference: &str, n: usize) -> ClientAction {
    let mut action = ClientAction::with_images(&[reference]);
    action.arguments.push(format!("# action {n}"));
    action
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
        let stored = cluster.store(&action(&reference(name), n)).await;
        requests.push((name, is_healthy, stored.request()));
    }
    // Each Execute ends within 90 s, the trickled ones by failing (they are detected
    // within a few seconds; the bound only keeps a broken build from hanging).
    let outcomes = join_all(requests.iter().map(|(_, _, request)| {
        let expander = &expander;
        tokio::time::timeout(Duration::from_secs(90), expander.execute(request.clone()))
    }))
    .await;

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
    let stored = cluster.store(&action(&reference("fresh"), 1000)).await;
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
    assert!(
        grown < 300 << 20,
        "resident memory grew by {} MiB over the test",
        grown >> 20
    );
    expander.stop().await;
}
