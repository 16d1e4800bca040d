//! Row l: the warm Execute path with storage and scheduler in another process, each of
//! whose calls costs a fixed delay (as a bb_storage frontend and bb_scheduler across a
//! LAN would). An in-process CAS makes round trips free; this row counts them.
//!
//! A child process (`BB_BENCH_CHILD=storage`) serves CAS, AC, ByteStream, Capabilities
//! and an Execution service that completes every action at once, all on one port behind
//! [`CallDelayLayer`]. The expander runs in this process from a configuration in the
//! shape the reference configuration recommends (gRPC CAS wrapped in existence caching,
//! gRPC AC, the scheduler), serving its own port. The same client sends distinct,
//! already stored actions on a warm image straight to the child ("direct") or through
//! the expander, one at a time and 32 in flight. The child counts the calls it receives
//! by method, which gives the expander's storage calls per action exactly.

use crate::execute::{connect, execute, prepare_actions, start_instant_upstream_routes};
use crate::report::{
    cpu_seconds_of, loadavg, percentile, process_cpu_seconds, Row, Table, Target, Unit,
};
use bb_container_expander::blobstore::Instance;
use bb_container_expander::digest::DigestFunction;
use bb_container_expander::program::Program;
use bb_container_expander::proto::reapi::execution_client::ExecutionClient;
use bb_container_expander::proto::reapi::ExecuteRequest;
use bb_container_expander::registry::Platform;
use bb_container_expander::testutil::call_delay::CallDelayLayer;
use bb_container_expander::testutil::BlobstoreServer;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The delay every call to the storage process costs before it is handled.
pub const CALL_DELAY: Duration = Duration::from_micros(250);
const IN_FLIGHT: usize = 32;
const THROUGHPUT_SECONDS: u64 = 5;
const COUNTED_ACTIONS: usize = 50;
const LATENCY_SAMPLES: usize = 1_000;
const WARMUP: usize = 50;
/// Distinct actions for the expander's throughput run (5 s at up to 6,000/s).
const THROUGHPUT_ACTIONS: usize = 30_000;

/// The child: serves storage and scheduler behind the delay until stdin closes;
/// answers `calls` with a JSON line of the calls by method since the last `reset`.
pub fn child_storage() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let layer = CallDelayLayer::new(CALL_DELAY);
        let record = layer.record();
        let server = BlobstoreServer::builder(
            Arc::new(
                bb_container_expander::blobstore::MemoryContentAddressableStorage::new(8 << 30),
            ),
            Arc::new(bb_container_expander::blobstore::MemoryActionCache::new(
                1 << 30,
            )),
        )
        .maximum_received_message_size_bytes(16 << 20)
        .call_delay(layer)
        .with_routes(start_instant_upstream_routes())
        .start()
        .await;
        println!("address {}", server.address());
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin());
        let mut line = String::new();
        use tokio::io::AsyncBufReadExt;
        while lines.read_line(&mut line).await.unwrap_or(0) > 0 {
            match line.trim() {
                "reset" => {
                    server.reset_calls();
                    println!("ok");
                }
                "calls" => {
                    let mut calls: BTreeMap<&str, usize> = BTreeMap::new();
                    for call in server.call_log() {
                        *calls.entry(call.method).or_default() += 1;
                    }
                    let (delayed, mean) = record.mean();
                    println!(
                        "{}",
                        serde_json::json!({
                            "calls": calls,
                            "delayedCalls": delayed,
                            "meanDelayMicros": mean.as_secs_f64() * 1e6,
                        })
                    );
                }
                other => panic!("storage child: unknown command {other:?}"),
            }
            line.clear();
        }
    });
}

/// The storage child, driven over its stdin and stdout.
struct StorageProcess {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    address: String,
}

impl StorageProcess {
    fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .env("BB_BENCH_CHILD", "storage")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the storage child");
        let input = child.stdin.take().unwrap();
        let mut output = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        output.read_line(&mut line).unwrap();
        let address = line
            .trim()
            .strip_prefix("address ")
            .expect("storage child address")
            .to_owned();
        Self {
            child,
            input,
            output,
            address,
        }
    }

    fn ask(&mut self, command: &str) -> String {
        writeln!(self.input, "{command}").unwrap();
        let mut line = String::new();
        self.output.read_line(&mut line).unwrap();
        line
    }

    fn reset(&mut self) {
        assert_eq!(self.ask("reset").trim(), "ok");
    }

    /// Calls by method since the last reset, and the mean delay applied so far.
    fn calls(&mut self) -> (BTreeMap<String, usize>, f64) {
        let answer: serde_json::Value = serde_json::from_str(&self.ask("calls")).unwrap();
        let calls = answer["calls"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap() as usize))
            .collect();
        (calls, answer["meanDelayMicros"].as_f64().unwrap())
    }
}

impl Drop for StorageProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Row l for the image `reference` on the registry `registry_host`.
pub fn rows(table: &mut Table, registry_host: &str, reference: &str) {
    let mut storage = StorageProcess::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(measure(table, &mut storage, registry_host, reference));
}

async fn measure(
    table: &mut Table,
    storage: &mut StorageProcess,
    registry_host: &str,
    reference: &str,
) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let remote = storage.address.clone();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("bench.jsonnet");
    std::fs::write(
        &path,
        format!(
            "local storage = {{ grpc: {{ client: {{ address: '{remote}' }} }} }};\n\
             {{ grpcServers: [{{ listenAddresses: ['127.0.0.1:{port}'], authenticationPolicy: {{ allow: {{}} }} }}],\n\
               maximumMessageSizeBytes: 16 * 1024 * 1024,\n\
               blobstore: {{ contentAddressableStorage: {{ existenceCaching: {{ backend: storage,\n\
                               existenceCache: {{ cacheSize: 1000000, cacheDuration: '60s' }} }} }},\n\
                             actionCache: storage }},\n\
               scheduler: {{ address: '{remote}' }},\n\
               containerImages: {{ registries: [{{ hosts: ['{registry_host}'] }}] }} }}\n"
        ),
    )
    .unwrap();
    let config = bb_container_expander::program::load_configuration(path.to_str().unwrap())
        .expect("bench configuration");
    let program = Program::from_configuration(config).expect("program");
    let expander = program.rewriter().expander().clone();
    let instance = Instance::new("", DigestFunction::Sha256);
    let started = Instant::now();
    expander
        .expand(&instance, reference, &Platform::new("linux", "amd64", ""))
        .await
        .expect("expand the image before the benchmark");
    let expand_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let latency_pool = 3 * (WARMUP + LATENCY_SAMPLES) + COUNTED_ACTIONS + 5;
    let requests = prepare_actions(
        &**expander.cas(),
        reference,
        "remote",
        latency_pool + THROUGHPUT_ACTIONS,
    )
    .await;
    eprintln!(
        "  image expanded into the remote storage in {expand_seconds:.1}s; {} actions stored in {:.1}s",
        requests.len(),
        started.elapsed().as_secs_f64()
    );
    let (shutdown, shutdown_receiver) = tokio::sync::watch::channel(false);
    let serving = tokio::spawn(program.serve(Default::default(), shutdown_receiver));
    let direct: std::net::SocketAddr = remote.parse().unwrap();
    let through: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut direct_client = ExecutionClient::new(connect(direct).await);
    let mut expander_client = ExecutionClient::new(connect(through).await);
    let pass_through = crate::pass_through::start(connect(direct).await).await;
    let mut pass_through_client = ExecutionClient::new(connect(pass_through).await);
    let (counted, rest) = requests.split_at(COUNTED_ACTIONS);
    let (latency_requests, throughput_requests) = rest.split_at(latency_pool - COUNTED_ACTIONS);

    // Storage calls per action, one action at a time, after a few warmed the
    // connections and the process's caches.
    for request in &latency_requests[..5] {
        execute(&mut expander_client, request.clone())
            .await
            .expect("Execute through the expander");
    }
    let latency_requests = &latency_requests[5..];
    tokio::time::sleep(Duration::from_millis(100)).await;
    storage.reset();
    for request in counted {
        execute(&mut expander_client, request.clone())
            .await
            .expect("Execute through the expander");
    }
    // The write-back is sent once the result is relayed: let the last ones land.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (calls, _) = storage.calls();
    let storage_calls: usize = calls.values().sum();
    let per_action = |n: usize| n as f64 / COUNTED_ACTIONS as f64;
    let by_method = calls
        .iter()
        .map(|(method, n)| format!("{method} {:.2}", per_action(*n)))
        .collect::<Vec<_>>()
        .join(", ");

    // Latency, one at a time, alternating blocks of 50 between the three paths.
    let steps_before = step_totals();
    let mut samples = [Vec::new(), Vec::new(), Vec::new()];
    let mut next = latency_requests.iter();
    for _ in 0..WARMUP {
        for client in [
            &mut direct_client,
            &mut expander_client,
            &mut pass_through_client,
        ] {
            let request = next.next().unwrap().clone();
            execute(client, request).await.unwrap();
        }
    }
    while samples[1].len() < LATENCY_SAMPLES {
        for (k, client) in [
            &mut direct_client,
            &mut expander_client,
            &mut pass_through_client,
        ]
        .into_iter()
        .enumerate()
        {
            for _ in 0..50 {
                let request = next.next().unwrap().clone();
                let started = Instant::now();
                execute(client, request).await.expect("Execute");
                samples[k].push(started.elapsed());
            }
        }
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let [mut direct_samples, mut expander_samples, mut pass_through_samples] = samples;
    let (d50, d99) = (
        ms(percentile(&mut direct_samples, 50.0)),
        ms(percentile(&mut direct_samples, 99.0)),
    );
    let (e50, e99) = (
        ms(percentile(&mut expander_samples, 50.0)),
        ms(percentile(&mut expander_samples, 99.0)),
    );
    let p50 = ms(percentile(&mut pass_through_samples, 50.0));
    let steps = step_means(&steps_before, &step_totals());
    let (_, mean_delay) = storage.calls();
    let delay_ms = mean_delay / 1e3;

    // Throughput, 32 in flight; direct first (it needs no distinct actions).
    let direct_channel = connect(direct).await;
    let expander_channel = connect(through).await;
    let child = storage.child.id();
    let cpu = (process_cpu_seconds(), cpu_seconds_of(child));
    let direct_rate = in_flight(&direct_channel, throughput_requests).await;
    let direct_cpu = (process_cpu_seconds() - cpu.0, cpu_seconds_of(child) - cpu.1);
    let cpu = (process_cpu_seconds(), cpu_seconds_of(child));
    let (expander_rate, issued) = in_flight(&expander_channel, throughput_requests).await;
    let expander_cpu = (process_cpu_seconds() - cpu.0, cpu_seconds_of(child) - cpu.1);
    let cpu = (process_cpu_seconds(), cpu_seconds_of(child));
    let pass_through_rate = in_flight(&connect(pass_through).await, throughput_requests).await;
    let pass_through_cpu = (process_cpu_seconds() - cpu.0, cpu_seconds_of(child) - cpu.1);
    let seconds = THROUGHPUT_SECONDS as f64;
    let micros_per_action = |cpu: f64, rate: f64| cpu / (rate * seconds) * 1e6;
    let load = loadavg();
    let reused = if issued > throughput_requests.len() {
        " (ran out of distinct actions: some reused)"
    } else {
        ""
    };
    table.push(
        Row::new(
            "l storage calls per warm action, remote storage",
            Unit::Count,
            per_action(storage_calls),
            None,
            Target::AtMost(5.0),
        )
        .note(format!(
            "by method per action: {by_method}; {COUNTED_ACTIONS} distinct actions, one at a time; \
             the last UpdateActionResult of each is the write-back after the result is relayed"
        )),
    );
    let bar = 3.0 * delay_ms + 0.25;
    table.push(
        Row::new(
            "l Execute p50, remote storage",
            Unit::Millis,
            e50,
            Some(d50),
            Target::DeltaAtMost(bar),
        )
        .note(format!(
            "every storage and scheduler call costs {:.3} ms (measured mean of the {} us asked); \
             bar 3 x delay + 0.25 ms; one at a time, {LATENCY_SAMPLES} samples per path; \
             the expander's mean step times: {steps}; load {load}",
            delay_ms,
            CALL_DELAY.as_micros()
        )),
    );
    table.push(Row::new(
        "l Execute p99, remote storage",
        Unit::Millis,
        e99,
        Some(d99),
        Target::Info,
    ));
    table.push(
        Row::new(
            "l Execute p50, pass-through proxy (ceiling)",
            Unit::Millis,
            p50,
            Some(d50),
            Target::Info,
        )
        .note(
            "a proxy that forwards each Execute untouched, with no storage call: \
             the latency of the extra hop alone",
        ),
    );
    table.push(
        Row::new(
            format!("l Execute/s, {IN_FLIGHT} in flight, remote storage"),
            Unit::PerSecond,
            expander_rate,
            Some(direct_rate.0),
            Target::RatioAtLeast(0.5),
        )
        .note(format!(
            "{THROUGHPUT_SECONDS}s per path; client, expander and storage share the 2 cores{reused}. \
             CPU per action: client+expander process {:.0} us (direct: client {:.0} us), \
             storage+scheduler process {:.0} us (direct {:.0} us)",
            micros_per_action(expander_cpu.0, expander_rate),
            micros_per_action(direct_cpu.0, direct_rate.0),
            micros_per_action(expander_cpu.1, expander_rate),
            micros_per_action(direct_cpu.1, direct_rate.0),
        )),
    );
    table.push(
        Row::new(
            format!("l Execute/s, {IN_FLIGHT} in flight, pass-through proxy (ceiling)"),
            Unit::PerSecond,
            pass_through_rate.0,
            Some(direct_rate.0),
            Target::Info,
        )
        .note(format!(
            "the most any proxy in front of the scheduler can deliver here: one more gRPC \
             server and client per Execute, no storage call. CPU per action: client+proxy \
             process {:.0} us, storage+scheduler process {:.0} us. The expander delivers \
             {:.2}x this",
            micros_per_action(pass_through_cpu.0, pass_through_rate.0),
            micros_per_action(pass_through_cpu.1, pass_through_rate.0),
            expander_rate / pass_through_rate.0,
        )),
    );
    let _ = shutdown.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), serving).await;
}

/// Actions per second with `IN_FLIGHT` Executes outstanding for a fixed time, and how
/// many actions were issued.
async fn in_flight(channel: &Channel, requests: &[ExecuteRequest]) -> (f64, usize) {
    let requests = Arc::new(requests.to_vec());
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(THROUGHPUT_SECONDS);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let mut client = ExecutionClient::new(channel.clone());
        let (next, requests) = (next.clone(), requests.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let request = requests[i % requests.len()].clone();
                execute(&mut client, request).await.expect("Execute");
                done += 1;
            }
            done
        }));
    }
    let mut completed = 0;
    for task in tasks {
        completed += task.await.unwrap();
    }
    (
        completed as f64 / started.elapsed().as_secs_f64(),
        next.load(Ordering::Relaxed),
    )
}

/// Count and sum of the expander's `step_duration_seconds` histogram, by step.
fn step_totals() -> BTreeMap<String, (u64, f64)> {
    let mut totals = BTreeMap::new();
    for family in prometheus::gather() {
        if !family.name().ends_with("step_duration_seconds") {
            continue;
        }
        for metric in family.get_metric() {
            let step = metric
                .get_label()
                .iter()
                .find(|l| l.name() == "step")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            let h = metric.get_histogram();
            let entry = totals.entry(step).or_insert((0, 0.0));
            entry.0 += h.get_sample_count();
            entry.1 += h.get_sample_sum();
        }
    }
    totals
}

/// Mean milliseconds per step between two [`step_totals`].
fn step_means(
    before: &BTreeMap<String, (u64, f64)>,
    after: &BTreeMap<String, (u64, f64)>,
) -> String {
    after
        .iter()
        .filter_map(|(step, (count, sum))| {
            let (c0, s0) = before.get(step).copied().unwrap_or((0, 0.0));
            let n = count - c0;
            (n > 0).then(|| format!("{step} {:.3} ms", (sum - s0) / n as f64 * 1e3))
        })
        .collect::<Vec<_>>()
        .join(", ")
}
