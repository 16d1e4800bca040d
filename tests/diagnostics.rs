//! The built binary, run as a deployment runs it, on the embedded default
//! (`memory: {}`): its first `/metrics` already has the `process_*` series, and its
//! logs, on a piped standard error and in `global.logPaths`, carry no ANSI codes.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::{free_port, http_get};

/// The value of an unlabelled series in the Prometheus text format.
fn value(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("{name} missing from\n{metrics}"))
}

struct Service {
    /// Taken by [`Service::stop`]; killed on drop if a test fails first.
    child: Option<Child>,
    http: String,
    grpc: String,
}

impl Service {
    fn start(dir: &std::path::Path, log: &std::path::Path) -> Self {
        Self::start_with(dir, log, "{}")
    }

    /// The service on the embedded default with `extra` (a Jsonnet object) added to its
    /// configuration.
    fn start_with(dir: &std::path::Path, log: &std::path::Path, extra: &str) -> Self {
        let (grpc_port, http_port) = (free_port(), free_port());
        let config = dir.join("expander.jsonnet");
        std::fs::write(
            &config,
            format!(
                r#"{{
                  global: {{
                    diagnosticsHttpServer: {{
                      httpServers: [{{ listenAddresses: ['127.0.0.1:{http_port}'], authenticationPolicy: {{ allow: {{}} }} }}],
                      enablePrometheus: true,
                    }},
                    logPaths: ['{log}'],
                  }},
                  grpcServers: [{{ listenAddresses: ['127.0.0.1:{grpc_port}'], authenticationPolicy: {{ allow: {{}} }} }}],
                  blobstore: {{
                    contentAddressableStorage: {{ memory: {{}} }},
                    actionCache: {{ memory: {{}} }},
                  }},
                }} + {extra}"#,
                log = log.display()
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_bb-container-expander"))
            .arg(&config)
            .env_remove("RUST_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            http: format!("127.0.0.1:{http_port}"),
            grpc: format!("http://127.0.0.1:{grpc_port}"),
        }
    }

    /// Stops the service with SIGTERM; returns its standard error.
    fn stop(mut self) -> Vec<u8> {
        let child = self.child.take().unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{output:?}");
        output.stderr
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn fresh_service_exports_process_metrics_and_plain_logs() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("expander.log");
    let service = Service::start(dir.path(), &log);

    // The very first request the service answers is this scrape.
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        if let Some(response) = http_get(&service.http, "/metrics") {
            break response;
        }
        assert!(Instant::now() < deadline, "the service did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics.contains("# TYPE process_cpu_seconds_total counter"),
        "{metrics}"
    );
    let resident = value(&metrics, "process_resident_memory_bytes");
    assert!(resident > 1024.0 * 1024.0, "{resident}");
    assert!(value(&metrics, "process_virtual_memory_bytes") >= resident);
    assert!(value(&metrics, "process_cpu_seconds_total") >= 0.0);
    // At least the two listeners.
    let open = value(&metrics, "process_open_fds");
    assert!(open >= 2.0, "{open}");
    assert!(value(&metrics, "process_max_fds") >= open);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = value(&metrics, "process_start_time_seconds");
    assert!(
        started > now - 3600.0 && started <= now + 1.0,
        "start time {started}, now {now}"
    );
    let healthy = http_get(&service.http, "/-/healthy").unwrap();
    assert!(healthy.starts_with("HTTP/1.1 200"), "{healthy}");

    let stderr = service.stop();
    let stderr_text = String::from_utf8_lossy(&stderr);
    assert!(
        stderr_text.contains("Diagnostics HTTP server listening on"),
        "{stderr_text}"
    );
    assert!(
        !stderr.contains(&0x1b),
        "ANSI codes on a piped stderr: {stderr_text:?}"
    );
    let file = std::fs::read(&log).unwrap();
    let file_text = String::from_utf8_lossy(&file);
    assert!(
        file_text.contains("Diagnostics HTTP server listening on"),
        "{file_text}"
    );
    assert!(
        !file.contains(&0x1b),
        "ANSI codes in a log file: {file_text:?}"
    );
}

/// With `allowAnyRegistry`, clients choose the hosts contacted: a host the configuration
/// does not list is labelled `other` in every metric, so that they cannot grow the
/// number of series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_clients_choose_share_one_registry_label() {
    use bb_container_expander::proto::asset::fetch_client::FetchClient;
    use bb_container_expander::proto::asset::FetchDirectoryRequest;
    use support::images::{Compression, Flavor, ImageBuilder, Layer};

    let registry = tokio::task::spawn_blocking(support::registry_server::RegistryServer::start)
        .await
        .unwrap();
    let layer = Layer::from_files(&[("etc/label", b"other")], Compression::Gzip, Flavor::Oci);
    let image = ImageBuilder::new(Flavor::Oci).layer(layer).build();
    registry
        .pusher()
        .push_image("test/unlisted", Some("v1"), &image)
        .await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("expander.log");
    let service = Service::start_with(
        dir.path(),
        &log,
        "{ serveRemoteAsset: true, containerImages: { allowAnyRegistry: true, \
           allowPrivateAddresses: true, registries: [{ hosts: ['listed.example'] }] } }",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http_get(&service.http, "/-/healthy").is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "the service did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut client = FetchClient::connect(service.grpc.clone()).await.unwrap();
    client
        .fetch_directory(FetchDirectoryRequest {
            uris: vec![format!("docker://{}/test/unlisted:v1", registry.host())],
            ..Default::default()
        })
        .await
        .expect("the image is expanded from the unlisted registry");

    let metrics = http_get(&service.http, "/metrics").unwrap();
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("buildbarn_container_expander_registry_"))
        .collect();
    assert!(
        series.iter().any(|l| l
            .starts_with("buildbarn_container_expander_registry_requests_total{")
            && l.contains(r#"registry="other""#)),
        "{series:#?}"
    );
    assert!(
        series.iter().any(|l| l
            .starts_with("buildbarn_container_expander_registry_pulled_bytes_total{")
            && l.contains(r#"registry="other""#)),
        "{series:#?}"
    );
    assert!(!metrics.contains(&registry.host()), "{series:#?}");
}
