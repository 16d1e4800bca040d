//! Issue 15, the fleet: three replicas of the built binary, as separate processes with a
//! `fleet` section listing each other, share one storage server, one fake scheduler +
//! worker and one real docker-registry.
//!
//! - 100 concurrent Executes of a new image, spread over the three, pull each layer blob
//!   from the registry once (counted in the registry's access log); the replicas call
//!   each other on servers of their own (`fleet.grpcServers`), where clients' servers
//!   do not serve the Fleet service.
//! - The replica that owns a new image is killed while it expands it: every Execute sent
//!   to the two others still succeeds.
//! - The same when the owner is frozen (SIGSTOP: the process no longer answers, but its
//!   connections stay open, as with a paused VM or a black-holed network path): the
//!   peer connections' keepalive notices it.

mod rewrite_support;
mod support;

use bb_container_expander::blobstore::Instance;
use bb_container_expander::config::DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES;
use bb_container_expander::digest::DigestFunction;
use bb_container_expander::fleet::ring;
use bb_container_expander::image::image_source::image_key;
use bb_container_expander::proto::fleet::fleet_client::FleetClient;
use bb_container_expander::proto::fleet::{
    expand_image_response, ExpandImageRequest, ForwardedRequest,
};
use bb_container_expander::registry::{Platform, Reference};
use futures::future::join_all;
use rewrite_support::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::fault_proxy::{Fault, FaultProxy, Rule};
use support::http_get;
use support::images::{Image, TarEntry};

const REPLICAS: usize = 3;
const CLIENTS: usize = 100;

/// One replica: the binary run on its own configuration file.
struct Replica {
    /// Taken by [`Replica::kill`]; killed on drop.
    child: Option<Child>,
    /// `127.0.0.1:port` of its gRPC server for the other replicas, as they know it.
    address: String,
    /// `127.0.0.1:port` of its gRPC server for clients (the same as `address`, unless
    /// the replicas have servers of their own).
    client_address: String,
    /// `127.0.0.1:port` of its diagnostics HTTP server.
    http: String,
    log: PathBuf,
}

impl Replica {
    /// Where clients send their calls.
    fn url(&self) -> String {
        format!("http://{}", self.client_address)
    }

    /// SIGKILL: the replica goes away mid-call, as a crashed or evicted pod does.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGSTOP: the replica stops answering, but the kernel keeps its connections open
    /// (as for a paused VM or a network path that drops packets). Drop kills it.
    fn freeze(&mut self) {
        let pid = self.child.as_ref().expect("a running replica").id();
        let status = Command::new("kill")
            .args(["-STOP", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sum of the samples of `name` whose labels contain every one of `labels`.
    fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        let metrics = http_get(&self.http, "/metrics").expect("metrics");
        metrics
            .lines()
            .filter(|line| line.starts_with(&format!("{name}{{")))
            .filter(|line| labels.iter().all(|l| line.contains(l)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `REPLICAS` replicas that know each other, pointed at the cluster's storage
/// and worker, allowed to pull from `registry_host`, with `fleet_fields` added to their
/// `fleet` section, and with `fleet.grpcServers` of their own if `peer_servers`;
/// returns once all are ready.
fn start_fleet(
    dir: &Path,
    cluster: &Cluster,
    registry_host: &str,
    fleet_fields: &str,
    peer_servers: bool,
) -> Vec<Replica> {
    // (client gRPC, diagnostics HTTP, peer gRPC) ports.
    let ports: Vec<(u16, u16, u16)> = (0..REPLICAS)
        .map(|_| {
            let grpc = support::free_port();
            let peer = if peer_servers {
                support::free_port()
            } else {
                grpc
            };
            (grpc, support::free_port(), peer)
        })
        .collect();
    let peers: Vec<String> = ports
        .iter()
        .map(|(_, _, peer)| format!("'127.0.0.1:{peer}'"))
        .collect();
    let storage = cluster.storage.address();
    let worker = cluster.worker.address();
    let replicas: Vec<Replica> = ports
        .iter()
        .enumerate()
        .map(|(i, (grpc, http, peer))| {
            let config = dir.join(format!("replica-{i}.jsonnet"));
            let peer_servers = if peer_servers {
                format!(
                    "grpcServers: [{{ listenAddresses: ['127.0.0.1:{peer}'], authenticationPolicy: {{ allow: {{}} }} }}],"
                )
            } else {
                String::new()
            };
            std::fs::write(
                &config,
                format!(
                    r#"{{
                      global: {{
                        diagnosticsHttpServer: {{
                          httpServers: [{{ listenAddresses: ['127.0.0.1:{http}'], authenticationPolicy: {{ allow: {{}} }} }}],
                          enablePrometheus: true,
                        }},
                      }},
                      grpcServers: [{{ listenAddresses: ['127.0.0.1:{grpc}'], authenticationPolicy: {{ allow: {{}} }} }}],
                      blobstore: {{
                        contentAddressableStorage: {{ grpc: {{ client: {{ address: '{storage}' }} }} }},
                        actionCache: {{ grpc: {{ client: {{ address: '{storage}' }} }} }},
                      }},
                      scheduler: {{ address: '{worker}' }},
                      containerImages: {{
                        registries: [{{ hosts: ['{registry_host}'] }}],
                        requestTimeout: '300s',
                        maximumRetries: 1,
                        initialRetryDelay: '0.05s',
                      }},
                      fleet: {{
                        selfAddress: '127.0.0.1:{peer}',
                        {peer_servers}
                        peers: [{peers}],
                        unreachablePeerBackoff: '600s',
                        {fleet_fields}
                      }},
                    }}"#,
                    peers = peers.join(", "),
                ),
            )
            .unwrap();
            let log = dir.join(format!("replica-{i}.log"));
            let child = Command::new(env!("CARGO_BIN_EXE_bb-container-expander"))
                .arg(&config)
                .env("RUST_LOG", "info")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap();
            Replica {
                child: Some(child),
                address: format!("127.0.0.1:{peer}"),
                client_address: format!("127.0.0.1:{grpc}"),
                http: format!("127.0.0.1:{http}"),
                log,
            }
        })
        .collect();
    let deadline = Instant::now() + PATIENCE;
    for replica in &replicas {
        while !http_get(&replica.http, "/-/healthy").is_some_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            assert!(
                Instant::now() < deadline,
                "replica {} did not become ready:\n{}",
                replica.address,
                replica.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    replicas
}

/// A runnable image (usr/bin/env) named `marker`, in three layers that no other image
/// has.
fn image(marker: &str) -> Image {
    let mut layers = marked_layers(marker);
    layers.push(vec![
        TarEntry::Dir("opt".into(), 0o755),
        TarEntry::file("opt/tool", format!("{marker} tool\n").as_bytes()),
    ]);
    image_of_layers(&layers)
}

/// Sends `CLIENTS` distinct Executes on `reference` at once, the n-th to
/// `targets[n % targets.len()]`; returns the failures, described.
async fn execute_all(cluster: &Cluster, targets: &[String], reference: &str) -> Vec<String> {
    let mut requests = Vec::new();
    for n in 0..CLIENTS {
        let stored = cluster.store(&distinct_action(reference, n)).await;
        requests.push((targets[n % targets.len()].clone(), stored.request()));
    }
    let outcomes = join_all(requests.iter().map(|(url, request)| async move {
        tokio::time::timeout(PATIENCE, execute_at(url, request.clone())).await
    }))
    .await;
    let mut failures = Vec::new();
    for ((url, _), outcome) in requests.iter().zip(outcomes) {
        let Ok(outcome) = outcome else {
            failures.push(format!("{url}: no end within {PATIENCE:?}"));
            continue;
        };
        if let Some(status) = &outcome.error {
            failures.push(format!("{url}: {status:?}"));
            continue;
        }
        let code = outcome.response().status.unwrap_or_default().code;
        if code != 0 {
            failures.push(format!("{url}: ExecuteResponse status {code}"));
        }
    }
    failures
}

fn all_logs(replicas: &[Replica]) -> String {
    replicas
        .iter()
        .map(|r| format!("--- replica {}\n{}", r.address, r.logs()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_pull_each_layer_of_a_new_image_once() {
    let cluster = Cluster::start().await;
    let pushed = image("fleet-once");
    let manifest_digest = cluster.push("test/fleet-once", "v1", &pushed).await;
    let dir = tempfile::tempdir().unwrap();
    let registry = cluster.registry.host();
    // The replicas call each other on servers of their own (fleet.grpcServers).
    let replicas = start_fleet(dir.path(), &cluster, &registry, "", true);
    let urls: Vec<String> = replicas.iter().map(Replica::url).collect();

    let reference = format!("docker://{registry}/test/fleet-once:v1");
    let failures = execute_all(&cluster, &urls, &reference).await;
    assert!(
        failures.is_empty(),
        "{failures:#?}\n{}",
        all_logs(&replicas)
    );

    for layer in &pushed.layers {
        assert_eq!(
            cluster.blob_fetches(&layer.digest),
            1,
            "layer {} was pulled more than once by the fleet\n{}",
            layer.digest,
            all_logs(&replicas)
        );
    }
    assert_eq!(cluster.blob_fetches(&pushed.config_digest), 1);
    // The work was shared: requests reached the image's owner from the other replicas,
    // and nobody had to do an owner's work for it.
    let served: f64 = replicas
        .iter()
        .map(|r| {
            r.metric(
                "buildbarn_container_expander_fleet_requests_total",
                &[r#"stage="image""#, r#"outcome="served""#],
            )
        })
        .sum();
    assert!(served >= 1.0, "no replica served another");

    // The owner's failure is every replica's answer, with its code and message, and
    // does not count as the owner being unreachable.
    let missing = format!(
        "docker://{registry}/test/fleet-once@sha256:{}",
        "0".repeat(64)
    );
    for (n, url) in urls.iter().enumerate() {
        let stored = cluster.store(&distinct_action(&missing, 1000 + n)).await;
        let outcome = execute_at(url, stored.request()).await;
        let status = outcome.refusal();
        // As when the replica works alone: a missing image is a failed precondition.
        assert_eq!(
            status.code(),
            tonic::Code::FailedPrecondition,
            "{url}: {status:?}"
        );
        assert!(
            status.message().contains(&missing) && status.message().contains("MANIFEST_UNKNOWN"),
            "{url}: {status:?}"
        );
    }
    let unreachable: f64 = replicas
        .iter()
        .map(|r| {
            r.metric(
                "buildbarn_container_expander_fleet_requests_total",
                &[r#"outcome="owner_unreachable""#],
            )
        })
        .sum();
    assert_eq!(unreachable, 0.0, "{}", all_logs(&replicas));
    assert_eq!(cluster.worker.log().execute_requests.len(), CLIENTS);

    // The Fleet service is served on the replicas' own servers, and not on the servers
    // that clients reach.
    let request = ExpandImageRequest {
        request: Some(ForwardedRequest {
            instance_name: INSTANCE.into(),
            digest_function: DigestFunction::Sha256.to_proto() as i32,
            bypass_cache: false,
        }),
        reference: Reference::parse(&format!(
            "docker://{registry}/test/fleet-once@{manifest_digest}"
        ))
        .unwrap()
        .to_string(),
        platform: Platform::new("linux", "amd64", "").to_string(),
    };
    for replica in &replicas {
        let mut peer = FleetClient::connect(format!("http://{}", replica.address))
            .await
            .unwrap();
        let answer = peer.expand_image(request.clone()).await.unwrap();
        assert!(
            matches!(
                answer.into_inner().result,
                Some(expand_image_response::Result::Record(_))
            ),
            "{}",
            replica.address
        );
        let mut client = FleetClient::connect(replica.url()).await.unwrap();
        let refused = client.expand_image(request.clone()).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_owner_mid_expansion_loses_no_request() {
    owner_failure_loses_no_request("fleet-kill", "", Replica::kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freezing_the_owner_mid_expansion_loses_no_request() {
    // Shorter than the default keepalive (10s + 10s), to keep the test short; the
    // default is the same mechanism.
    let keepalive = "peerClient: { keepalive: { time: '1s', timeout: '1s' } },";
    owner_failure_loses_no_request("fleet-freeze", keepalive, Replica::freeze).await;
}

/// The owner of a new image, `fail`ed as soon as it downloads a layer, loses no
/// Execute sent to the two other replicas, which notice and count its failure.
async fn owner_failure_loses_no_request(name: &str, fleet_fields: &str, fail: fn(&mut Replica)) {
    let cluster = Cluster::start().await;
    let pushed = image(name);
    let repository = format!("test/{name}");
    let manifest_digest = cluster.push(&repository, "v1", &pushed).await;
    // Layer downloads take a while, so that the owner is surely killed mid-way.
    let proxy = FaultProxy::start(&cluster.registry.host());
    for layer in &pushed.layers {
        proxy.add_rule(Rule::get(
            &format!("/blobs/{}", layer.digest),
            Fault::Delay(Duration::from_secs(2)),
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut replicas = start_fleet(dir.path(), &cluster, &proxy.host(), fleet_fields, false);

    // The owner of the image, as every replica computes it.
    let pinned = Reference::parse(&format!(
        "docker://{}/{repository}@{manifest_digest}",
        proxy.host()
    ))
    .unwrap();
    let key = image_key(
        &Instance::new(INSTANCE, DigestFunction::Sha256),
        &pinned,
        &Platform::new("linux", "amd64", ""),
        DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES as usize,
    );
    let addresses: Vec<String> = replicas.iter().map(|r| r.address.clone()).collect();
    let owner = ring::owner(addresses.iter().map(String::as_str), &key.digest.hash)
        .unwrap()
        .to_string();
    let victim = replicas.iter().position(|r| r.address == owner).unwrap();
    let survivors: Vec<String> = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, r)| r.url())
        .collect();

    let reference = format!("docker://{}/{repository}:v1", proxy.host());
    let executes = {
        let cluster = &cluster;
        let survivors = survivors.clone();
        let reference = reference.clone();
        async move { execute_all(cluster, &survivors, &reference).await }
    };
    let killer = async {
        // The owner expands the image as soon as a layer download has begun.
        let deadline = Instant::now() + PATIENCE;
        while proxy.count("GET", |path| path.contains("/blobs/")) == 0 {
            assert!(Instant::now() < deadline, "no layer download began");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        fail(&mut replicas[victim]);
    };
    let (failures, ()) = tokio::join!(executes, killer);
    assert!(
        failures.is_empty(),
        "{failures:#?}\n{}",
        all_logs(&replicas)
    );

    // The survivors noticed the owner's failure and did its work.
    let unreachable: f64 = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, r)| {
            r.metric(
                "buildbarn_container_expander_fleet_requests_total",
                &[r#"outcome="owner_unreachable""#],
            )
        })
        .sum();
    assert!(unreachable >= 1.0, "{}", all_logs(&replicas));
    assert!(
        all_logs(&replicas).contains(&format!("Failed to reach replica {owner}")),
        "{}",
        all_logs(&replicas)
    );
}
