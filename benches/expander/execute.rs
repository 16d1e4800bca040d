//! Issue 4 rows (g–i): the warm Execute path. The expander runs as the service does
//! (`Program` from a configuration: in-memory CAS and AC, its own gRPC server stack) in
//! this process, in front of an upstream that answers every Execute at once with one
//! done operation (a successful ActionResult, so results are mapped and written back).
//! The same client code sends the same ExecuteRequests either through the expander or
//! straight to the upstream; both are measured in the same run, alternated.

use crate::report::{percentile, process_cpu_seconds, Row, Table, Target, Unit};
use bb_container_expander::action::results::ResultMapper;
use bb_container_expander::action::ActionRewriter;
use bb_container_expander::blobstore::{ContentAddressableStorage, Instance};
use bb_container_expander::config::ApplicationConfiguration;
use bb_container_expander::digest::DigestFunction;
use bb_container_expander::grpc::authentication::AuthenticationLayer;
use bb_container_expander::grpc::client::new_channel_from_configuration;
use bb_container_expander::grpc::metadata_forwarding::IncomingMetadataLayer;
use bb_container_expander::grpc::metrics::MetricsLayer;
use bb_container_expander::program::Program;
use bb_container_expander::proto::longrunning::{operation, Operation};
use bb_container_expander::proto::protobuf::Any;
use bb_container_expander::proto::reapi::execution_client::ExecutionClient;
use bb_container_expander::proto::reapi::execution_server::{Execution, ExecutionServer};
use bb_container_expander::proto::reapi::{self, ExecuteRequest, WaitExecutionRequest};
use bb_container_expander::proto::rpc;
use bb_container_expander::registry::Platform;
use bb_container_expander::service::execution_proxy::ExecutionProxy;
use bb_container_expander::service::ExpandingExecution;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use prost::Message;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

const LATENCY_WARMUP: usize = 200;
const LATENCY_BLOCK: usize = 100;
/// Latency samples per path, and for the shipped server (slow: see the report).
const LATENCY_SAMPLES: usize = 2_000;
const SHIPPED_LATENCY_SAMPLES: usize = 300;
const THROUGHPUT_CLIENTS: usize = 64;
const THROUGHPUT_CONNECTIONS: usize = 8;
const THROUGHPUT_SECONDS: u64 = 5;
/// Distinct actions per image for the throughput runs (5 s at up to 16,000/s), and for
/// the shipped server (limited by TCP_NODELAY, see `serve_with_nodelay`).
const THROUGHPUT_ACTIONS: usize = 80_000;
const SHIPPED_THROUGHPUT_ACTIONS: usize = 12_000;

/// An upstream that completes every Execute at once.
#[derive(Clone, Default)]
struct InstantUpstream {
    executed: Arc<AtomicU64>,
}

fn any<M: Message>(type_name: &str, message: &M) -> Any {
    Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: message.encode_to_vec(),
    }
}

#[tonic::async_trait]
impl Execution for InstantUpstream {
    type ExecuteStream = BoxStream<'static, Result<Operation, Status>>;
    type WaitExecutionStream = BoxStream<'static, Result<Operation, Status>>;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let n = self.executed.fetch_add(1, Ordering::Relaxed);
        let request = request.into_inner();
        let metadata = reapi::ExecuteOperationMetadata {
            stage: reapi::execution_stage::Value::Completed as i32,
            action_digest: request.action_digest.clone(),
            ..Default::default()
        };
        let response = reapi::ExecuteResponse {
            result: Some(reapi::ActionResult {
                exit_code: 0,
                execution_metadata: Some(reapi::ExecutedActionMetadata {
                    worker: "bench-upstream".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(rpc::Status::default()),
            ..Default::default()
        };
        let operation = Operation {
            name: format!("bench-operation-{n}"),
            metadata: Some(any(
                "build.bazel.remote.execution.v2.ExecuteOperationMetadata",
                &metadata,
            )),
            done: true,
            result: Some(operation::Result::Response(any(
                "build.bazel.remote.execution.v2.ExecuteResponse",
                &response,
            ))),
        };
        Ok(Response::new(
            futures::stream::once(async move { Ok(operation) }).boxed(),
        ))
    }

    async fn wait_execution(
        &self,
        _request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        Err(Status::unimplemented("not in this benchmark"))
    }
}

/// The instant upstream as routes, to share a port with other services.
pub(crate) fn start_instant_upstream_routes() -> tonic::service::Routes {
    tonic::service::Routes::new(ExecutionServer::new(InstantUpstream::default()))
}

async fn start_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ExecutionServer::new(InstantUpstream::default()))
            // As grpc-go (bb_scheduler) does on every connection.
            .serve_with_incoming(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            ),
    );
    address
}

pub(crate) async fn connect(address: SocketAddr) -> Channel {
    let endpoint = Channel::from_shared(format!("http://{address}")).unwrap();
    for _ in 0..200 {
        if let Ok(channel) = endpoint.connect().await {
            return channel;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listens on {address}");
}

/// Sends one Execute and reads its stream up to the done operation, which it returns.
/// Like Bazel's remote executor, the client takes the result from the done operation;
/// the rest of the stream (its end: the expander closes it once it has written the
/// result back under the client's digest) is read by a task of its own, so the call
/// ends normally instead of being cancelled.
pub(crate) async fn execute(
    client: &mut ExecutionClient<Channel>,
    request: ExecuteRequest,
) -> Result<Operation, Status> {
    let mut stream = client.execute(request).await?.into_inner();
    while let Some(op) = stream.message().await? {
        if op.done {
            tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });
            return Ok(op);
        }
    }
    Err(Status::internal("stream ended without a done operation"))
}

/// Checks that a relayed operation succeeded and names the client's action.
fn check(op: &Operation, request: &ExecuteRequest) {
    let metadata = op.metadata.as_ref().expect("metadata");
    let metadata = reapi::ExecuteOperationMetadata::decode(metadata.value.as_slice()).unwrap();
    assert_eq!(
        metadata.action_digest, request.action_digest,
        "operation not mapped back to the client's action"
    );
    let Some(operation::Result::Response(any)) = &op.result else {
        panic!("operation without response: {op:?}")
    };
    let response = reapi::ExecuteResponse::decode(any.value.as_slice()).unwrap();
    assert_eq!(
        response.status.as_ref().map(|s| s.code).unwrap_or(0),
        0,
        "Execute failed: {response:?}"
    );
}

/// `count` distinct actions naming `image`, each with a small input root of its own,
/// stored in `cas`.
pub(crate) async fn prepare_actions(
    cas: &dyn ContentAddressableStorage,
    image: &str,
    salt: &str,
    count: usize,
) -> Vec<ExecuteRequest> {
    let function = DigestFunction::Sha256;
    let instance = Instance::new("", function);
    let mut requests = Vec::with_capacity(count);
    let mut blobs: Vec<(reapi::Digest, Bytes)> = Vec::new();
    let store = |data: Vec<u8>, blobs: &mut Vec<(reapi::Digest, Bytes)>| {
        let digest = function.digest_of(&data);
        blobs.push((digest.clone(), Bytes::from(data)));
        digest
    };
    for i in 0..count {
        let source = store(
            format!("int main(void) {{ return {i}; }} /* {salt} */\n").into_bytes(),
            &mut blobs,
        );
        let build = store(
            format!("cc_binary(name = \"b{i}\", srcs = [\"src/main.c\"])\n").into_bytes(),
            &mut blobs,
        );
        let src = reapi::Directory {
            files: vec![reapi::FileNode {
                name: "main.c".into(),
                digest: Some(source),
                ..Default::default()
            }],
            ..Default::default()
        };
        let src_digest = store(src.encode_to_vec(), &mut blobs);
        let root = reapi::Directory {
            files: vec![reapi::FileNode {
                name: "BUILD".into(),
                digest: Some(build),
                ..Default::default()
            }],
            directories: vec![reapi::DirectoryNode {
                name: "src".into(),
                digest: Some(src_digest),
            }],
            ..Default::default()
        };
        let root_digest = store(root.encode_to_vec(), &mut blobs);
        let platform = reapi::Platform {
            properties: vec![reapi::platform::Property {
                name: "container-image".into(),
                value: image.into(),
            }],
        };
        let command = reapi::Command {
            // The program must exist in every benchmark image (the expander checks).
            arguments: vec![
                "/usr/bin/env".into(),
                "cc".into(),
                "-o".into(),
                "out/b".into(),
                "src/main.c".into(),
            ],
            output_paths: vec!["out/b".into()],
            ..Default::default()
        };
        let command_digest = store(command.encode_to_vec(), &mut blobs);
        let action = reapi::Action {
            command_digest: Some(command_digest),
            input_root_digest: Some(root_digest),
            platform: Some(platform),
            ..Default::default()
        };
        let action_digest = store(action.encode_to_vec(), &mut blobs);
        requests.push(ExecuteRequest {
            instance_name: String::new(),
            action_digest: Some(action_digest),
            digest_function: reapi::digest_function::Value::Sha256 as i32,
            ..Default::default()
        });
        if blobs.len() > 5000 {
            cas.put_batch(&instance, std::mem::take(&mut blobs))
                .await
                .expect("store actions");
        }
    }
    cas.put_batch(&instance, blobs)
        .await
        .expect("store actions");
    requests
}

/// A way to send an Execute: straight to the upstream, or through an expander.
struct Path {
    name: &'static str,
    client: ExecutionClient<Channel>,
    /// Connections shared by the throughput clients.
    channels: Vec<Channel>,
    /// Latency samples wanted.
    samples: usize,
    through_expander: bool,
}

impl Path {
    async fn new(
        name: &'static str,
        address: SocketAddr,
        samples: usize,
        through_expander: bool,
    ) -> Self {
        let client = ExecutionClient::new(connect(address).await);
        let mut channels = Vec::new();
        for _ in 0..THROUGHPUT_CONNECTIONS {
            channels.push(connect(address).await);
        }
        Self {
            name,
            client,
            channels,
            samples,
            through_expander,
        }
    }
}

/// Sequential latencies of every path (one client each), alternated in blocks, each
/// path until it has its samples.
async fn latencies(paths: &mut [Path], requests: &[ExecuteRequest]) -> Vec<Vec<Duration>> {
    let mut samples: Vec<Vec<Duration>> = paths.iter().map(|_| Vec::new()).collect();
    let (warmup, measured) = requests.split_at(LATENCY_WARMUP);
    for path in paths.iter_mut() {
        for request in &warmup[..LATENCY_WARMUP.min(path.samples / 3)] {
            let op = execute(&mut path.client, request.clone())
                .await
                .expect("Execute");
            if path.through_expander {
                check(&op, request);
            }
        }
    }
    let mut next = 0;
    for round in 0.. {
        let mut busy = false;
        for k in 0..paths.len() {
            // Rotate the order from one round to the next.
            let p = (k + round) % paths.len();
            if samples[p].len() >= paths[p].samples {
                continue;
            }
            busy = true;
            for _ in 0..LATENCY_BLOCK {
                let request = measured[next % measured.len()].clone();
                next += 1;
                let started = Instant::now();
                execute(&mut paths[p].client, request)
                    .await
                    .expect("Execute");
                samples[p].push(started.elapsed());
            }
        }
        if !busy {
            break;
        }
    }
    samples
}

/// Actions completed per second by 64 concurrent clients in a fixed time, and the
/// process CPU seconds used per action.
async fn throughput(channels: &[Channel], requests: Arc<Vec<ExecuteRequest>>) -> (f64, f64, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(THROUGHPUT_SECONDS);
    let cpu = process_cpu_seconds();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..THROUGHPUT_CLIENTS {
        let mut client = ExecutionClient::new(channels[c % channels.len()].clone());
        let (next, requests) = (next.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let request = requests[i % requests.len()].clone();
                let op = execute(&mut client, request.clone())
                    .await
                    .expect("Execute");
                if i < 64 {
                    check(&op, &request);
                }
                done += 1;
            }
            done
        }));
    }
    let mut completed = 0;
    for task in tasks {
        completed += task.await.unwrap();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu_seconds() - cpu;
    let issued = next.load(Ordering::Relaxed);
    (
        completed as f64 / elapsed,
        cpu / completed.max(1) as f64,
        issued,
    )
}

pub struct ExecuteImage {
    /// Short label for the rows ("tiny", "6k", "25k").
    pub label: String,
    pub reference: String,
    /// Row name prefix ("g/h", "i").
    pub rows: String,
}

/// The expander's Execution service as `Program` assembles it (same rewriter, result
/// mapper, upstream client and tower layers), but on a listener whose connections have
/// TCP_NODELAY set: what the shipped server would measure with that one change.
async fn serve_with_nodelay(
    config: &ApplicationConfiguration,
    rewriter: Arc<ActionRewriter>,
) -> (
    SocketAddr,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let maximum_message_size = config.maximum_message_size_bytes as usize;
    let scheduler = config.scheduler.as_ref().expect("scheduler");
    let channel = new_channel_from_configuration(scheduler).expect("upstream channel");
    let expander = rewriter.expander().clone();
    let results = Arc::new(ResultMapper::new(
        expander.cas().clone(),
        expander.action_cache().clone(),
        true,
    ));
    let execution = ExpandingExecution::new(
        ExecutionProxy::new(channel, maximum_message_size),
        rewriter,
        results,
        Duration::from_secs(5),
    );
    let layers = tower::ServiceBuilder::new()
        .layer(MetricsLayer)
        .layer(AuthenticationLayer::new(
            config.grpc_servers[0].authentication_policy.clone(),
        ))
        .layer(IncomingMetadataLayer)
        .into_inner();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tonic::transport::Server::builder()
        .layer(layers)
        .add_service(
            ExecutionServer::new(execution)
                .max_encoding_message_size(maximum_message_size.max(4 << 20)),
        );
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    (address, tokio::spawn(server.serve_with_incoming(incoming)))
}

/// Rows g, h (and i): per image, latency p50/p99 and throughput, through the expander
/// vs straight to the upstream. Each image is measured in a child process of its own, so
/// that it starts from a fresh expander process state (its own `Program`, CAS, AC,
/// caches, and heap) and pays for no other image's actions.
pub fn execute_rows(table: &mut Table, registry_host: &str, images: &[ExecuteImage]) {
    use std::io::BufRead;
    for image in images {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .env("BB_BENCH_CHILD", "execute")
            .env("RUST_LOG", "warn")
            .args([registry_host, &image.label, &image.reference, &image.rows])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the Execute benchmark child");
        let stdout = child.stdout.take().unwrap();
        for line in std::io::BufReader::new(stdout).lines() {
            let line = line.unwrap();
            match line.strip_prefix(crate::report::ROW_PREFIX) {
                Some(json) => table.push(serde_json::from_str(json).expect("row from the child")),
                None => println!("{line}"),
            }
        }
        assert!(
            child.wait().unwrap().success(),
            "Execute benchmark child for {} failed",
            image.label
        );
    }
}

/// The child process of [`execute_rows`]: `HOST LABEL REFERENCE ROWS`.
pub fn child_rows(args: &[String]) {
    let [host, label, reference, rows] = args else {
        panic!("expected HOST LABEL REFERENCE ROWS, got {args:?}")
    };
    let image = ExecuteImage {
        label: label.clone(),
        reference: reference.clone(),
        rows: rows.clone(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let upstream = start_upstream().await;
        let mut table = Table {
            child: true,
            ..Table::default()
        };
        image_rows(&mut table, host, upstream, &image).await;
    });
}

async fn image_rows(
    table: &mut Table,
    registry_host: &str,
    upstream: SocketAddr,
    image: &ExecuteImage,
) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("bench.jsonnet");
    std::fs::write(
        &path,
        format!(
            "{{ grpcServers: [{{ listenAddresses: ['127.0.0.1:{port}'], authenticationPolicy: {{ allow: {{}} }} }}],\n\
               blobstore: {{ contentAddressableStorage: {{ memory: {{ maximumSizeBytes: 8 * 1024 * 1024 * 1024 }} }},\n\
                             actionCache: {{ memory: {{ maximumSizeBytes: 1024 * 1024 * 1024 }} }} }},\n\
               scheduler: {{ address: '{upstream}' }},\n\
               containerImages: {{ registries: [{{ hosts: ['{registry_host}'] }}] }} }}\n"
        ),
    )
    .unwrap();
    let config = bb_container_expander::program::load_configuration(path.to_str().unwrap())
        .expect("bench configuration");
    let program = Program::from_configuration(config.clone()).expect("program");
    let rewriter = program.rewriter().clone();
    let expander = rewriter.expander().clone();
    let instance = Instance::new("", DigestFunction::Sha256);
    let started = Instant::now();
    let expanded = expander
        .expand(
            &instance,
            &image.reference,
            &Platform::new("linux", "amd64", ""),
        )
        .await
        .expect("expand the image before the benchmark");
    let s = &expanded.statistics;
    let entries = s.files + s.directories + s.symlinks;
    let expand_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let latency_pool = LATENCY_WARMUP + 2 * LATENCY_SAMPLES + SHIPPED_LATENCY_SAMPLES;
    let count = latency_pool + SHIPPED_THROUGHPUT_ACTIONS + THROUGHPUT_ACTIONS;
    let requests = prepare_actions(&**expander.cas(), &image.reference, &image.label, count).await;
    eprintln!(
        "  image {} ({} files, {} dirs, {} symlinks) expanded in {expand_seconds:.1}s; {count} actions stored in {:.1}s",
        image.label,
        s.files,
        s.directories,
        s.symlinks,
        started.elapsed().as_secs_f64()
    );
    let (shutdown, shutdown_receiver) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(program.serve(Default::default(), shutdown_receiver));
    let (nodelay, nodelay_server) = serve_with_nodelay(&config, rewriter.clone()).await;
    let shipped: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut paths = vec![
        Path::new("direct", upstream, LATENCY_SAMPLES, false).await,
        Path::new("expander", shipped, SHIPPED_LATENCY_SAMPLES, true).await,
        Path::new("expander+nodelay", nodelay, LATENCY_SAMPLES, true).await,
    ];

    let label = &image.label;
    let mut samples = latencies(&mut paths, &requests[..latency_pool]).await;
    let ms = |x: Duration| x.as_secs_f64() * 1000.0;
    let mut p = |i: usize, q: f64| ms(percentile(&mut samples[i], q));
    let (d50, d99) = (p(0, 50.0), p(0, 99.0));
    let (s50, s99) = (p(1, 50.0), p(1, 99.0));
    let (n50, n99) = (p(2, 50.0), p(2, 99.0));
    let load = crate::report::loadavg();
    let rows = &image.rows;
    table.push(
        Row::new(
            format!("{rows} Execute p50, {label} image"),
            Unit::Millis,
            s50,
            Some(d50),
            Target::DeltaAtMost(0.5),
        )
        .note(format!(
            "{entries} image entries; sequential, one client, {} samples ({} direct); load {load}",
            samples[1].len(),
            samples[0].len()
        )),
    );
    table.push(Row::new(
        format!("{rows} Execute p99, {label} image"),
        Unit::Millis,
        s99,
        Some(d99),
        Target::DeltaAtMost(2.0),
    ));
    table.push(
        Row::new(format!("{rows}* Execute p50, {label}, TCP_NODELAY"), Unit::Millis, n50, Some(d50), Target::DeltaAtMost(0.5))
            .note("* = the same service objects on a listener with TCP_NODELAY (what the shipped server lacks)"),
    );
    table.push(Row::new(
        format!("{rows}* Execute p99, {label}, TCP_NODELAY"),
        Unit::Millis,
        n99,
        Some(d99),
        Target::DeltaAtMost(2.0),
    ));
    // Each path rewrites actions of its own (the direct one does not rewrite).
    let (shipped_requests, nodelay_requests) =
        requests[latency_pool..].split_at(SHIPPED_THROUGHPUT_ACTIONS);
    let nodelay_requests = Arc::new(nodelay_requests.to_vec());
    let mut rates = vec![
        throughput(&paths[0].channels, nodelay_requests.clone()).await,
        throughput(&paths[1].channels, Arc::new(shipped_requests.to_vec())).await,
        throughput(&paths[2].channels, nodelay_requests.clone()).await,
    ];
    let (direct_rate, direct_cpu, _) = rates[0];
    for (k, star, available) in [
        (1, "", SHIPPED_THROUGHPUT_ACTIONS),
        (2, "*", THROUGHPUT_ACTIONS),
    ] {
        let (rate, cpu, issued) = rates[k];
        let reused = if issued > available {
            " (ran out of distinct actions: some reused)"
        } else {
            ""
        };
        table.push(
            Row::new(format!("{rows}{star} Execute/s, 64 clients, {label}"), Unit::PerSecond, rate, Some(direct_rate), Target::AtLeast(3000.0))
                .note(format!(
                    "{} path; {THROUGHPUT_SECONDS}s; whole-process CPU per action {:.0} us vs {:.0} us direct \
                     (client and upstream run in this process too){reused}",
                    paths[k].name,
                    cpu * 1e6,
                    direct_cpu * 1e6,
                )),
        );
    }
    rates.clear();
    drop(paths);
    nodelay_server.abort();
    let _ = shutdown.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
}
