//! End to end against a real REAPI scheduler: Bazel 4.2.3 → bb-container-expander
//! in proxy mode (in process) → BuildGrid 0.9.1, which serves only the instance `main`
//! and hands the actions to a chroot worker of its Bots API (`support::buildgrid`).
//!
//! The expander's CAS, Action Cache and scheduler are BuildGrid; Bazel executes through
//! the expander and reads and writes blobs and results straight at BuildGrid, with
//! `--remote_instance_name=main`. The image is a userland copied from the host with an
//! `/etc/os-release` carrying a random marker, pushed to a real docker-registry on
//! loopback. The test checks that:
//!
//! - both genrules of `tests/bazel-ws` run on BuildGrid's worker, chrooted into the
//!   image: one prints the image's os-release, the other runs the image's `tr` on an
//!   input grafted into it; the worker received `runner=chroot` and no
//!   `container-image`, on instance `main`;
//! - after `bazel clean`, the rebuild is served entirely from BuildGrid's Action Cache
//!   under Bazel's own action digests (the expander's write-back), running nothing;
//! - an image that does not exist fails the build with FAILED_PRECONDITION naming the
//!   image ("Not found"), and nothing reaches the worker;
//! - (the harness) the worker reports an input blob missing from the CAS as bb_worker
//!   does, and BuildGrid passes that on to the client.
//!
//! Needs root (chroot), Bazel, `ldd`, docker-registry, and what
//! `scripts/buildgrid.sh install` sets up (PostgreSQL, BuildGrid's venv).

mod support;

use bb_container_expander::config::{self, ApplicationConfiguration};
use bb_container_expander::diagnostics::Readiness;
use bb_container_expander::program::Program;
use std::time::{Duration, Instant};
use support::bazel::{process_summary, BazelClient};
use support::buildgrid::{BuildGrid, INSTANCE_NAME};
use support::chroot_worker::running_as_root;
use support::host_userland::host_userland;
use support::images::{tar_bytes, Compression, Flavor, ImageBuilder, Layer, TarEntry};
use support::registry_server::RegistryServer;
use tokio::sync::watch;

/// What the genrules need: Bazel runs them with `/bin/bash -c`, the worker execs
/// `/usr/bin/env`, the commands use `cat` and `tr`.
const TOOLS: &[&str] = &["/bin/bash", "/usr/bin/env", "/bin/cat", "/usr/bin/tr"];

/// The expander in proxy mode on a free port, with BuildGrid as its CAS, Action Cache
/// and scheduler.
struct Expander {
    port: u16,
    shutdown: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), String>>,
}

impl Expander {
    async fn start(registry: &str, buildgrid: &str) -> Self {
        let port = support::free_port();
        let text = format!(
            r#"{{
              grpcServers: [{{ listenAddresses: ['127.0.0.1:{port}'], authenticationPolicy: {{ allow: {{}} }} }}],
              blobstore: {{
                contentAddressableStorage: {{ grpc: {{ client: {{ address: '{buildgrid}' }} }} }},
                actionCache: {{ grpc: {{ client: {{ address: '{buildgrid}' }} }} }},
              }},
              scheduler: {{ address: '{buildgrid}' }},
              containerImages: {{
                registries: [{{ hosts: ['{registry}'] }}],
                inputRootDirectory: 'bazel_exec_root',
                addPlatformProperties: [{{ name: 'runner', value: 'chroot' }}],
              }},
            }}"#
        );
        let value = config::jsonnet::evaluate_snippet("buildgrid_e2e.jsonnet", &text).unwrap();
        let configuration: ApplicationConfiguration = config::jsonnet::decode(value).unwrap();
        configuration.validate().unwrap();
        let program = Program::from_configuration(configuration).unwrap();
        let (shutdown, receiver) = watch::channel(false);
        let readiness = Readiness::default();
        let task = tokio::spawn(program.serve(readiness.clone(), receiver));
        while !readiness.get() {
            assert!(!task.is_finished(), "the expander stopped while starting");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Self {
            port,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

/// Harness check: the worker reports an input root missing from BuildGrid's CAS as
/// bb_worker does (FAILED_PRECONDITION with a PreconditionFailure naming the blob), and
/// BuildGrid passes it on in the ExecuteResponse: the expander re-uploads an image whose
/// blobs a worker reports missing this way.
async fn assert_missing_input_root_is_reported(buildgrid: &BuildGrid) {
    use bb_container_expander::digest::{encode_message, DigestFunction};
    use bb_container_expander::proto::longrunning::operation;
    use bb_container_expander::proto::reapi;
    use futures::StreamExt;
    use prost::Message;

    let sha256 = DigestFunction::Sha256;
    let (command_digest, command) = encode_message(
        sha256,
        &reapi::Command {
            arguments: vec!["/bin/true".into()],
            ..Default::default()
        },
    );
    let (missing_root, _) = encode_message(
        sha256,
        &reapi::Directory {
            symlinks: vec![reapi::SymlinkNode {
                name: "never-uploaded".into(),
                target: "nowhere".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let (action_digest, action) = encode_message(
        sha256,
        &reapi::Action {
            command_digest: Some(command_digest.clone()),
            input_root_digest: Some(missing_root.clone()),
            do_not_cache: true,
            platform: Some(reapi::Platform {
                properties: vec![reapi::platform::Property {
                    name: "runner".into(),
                    value: "chroot".into(),
                }],
            }),
            ..Default::default()
        },
    );
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", buildgrid.address()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let upload =
        |digest: reapi::Digest, data: bytes::Bytes| reapi::batch_update_blobs_request::Request {
            digest: Some(digest),
            data: data.to_vec(),
            ..Default::default()
        };
    let uploaded = reapi::content_addressable_storage_client::ContentAddressableStorageClient::new(
        channel.clone(),
    )
    .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
        instance_name: INSTANCE_NAME.into(),
        requests: vec![
            upload(command_digest, command),
            upload(action_digest.clone(), action),
        ],
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    for response in uploaded.responses {
        assert_eq!(response.status.unwrap_or_default().code, 0);
    }
    let operations: Vec<_> = reapi::execution_client::ExecutionClient::new(channel)
        .execute(reapi::ExecuteRequest {
            instance_name: INSTANCE_NAME.into(),
            action_digest: Some(action_digest),
            skip_cache_lookup: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    let last = operations.last().expect("no operation");
    assert!(last.done, "{last:?}");
    let Some(operation::Result::Response(any)) = &last.result else {
        panic!("no response in {last:?}");
    };
    let status = reapi::ExecuteResponse::decode(any.value.as_slice())
        .unwrap()
        .status
        .unwrap_or_default();
    assert_eq!(
        status.code,
        tonic::Code::FailedPrecondition as i32,
        "{status:?}"
    );
    let status = tonic::Status::with_details(
        tonic::Code::FailedPrecondition,
        status.message.clone(),
        status.encode_to_vec().into(),
    );
    assert_eq!(
        bb_container_expander::status::missing_blobs_of(&status),
        vec![format!(
            "blobs/{}/{}",
            missing_root.hash, missing_root.size_bytes
        )]
    );
}

fn read(path: &std::path::Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[test]
fn process_summaries_are_parsed() {
    let summary = process_summary("INFO: 3 processes: 1 internal, 2 remote cache hit.\n");
    assert_eq!(summary.get("remote cache hit"), Some(&2));
    assert_eq!(summary.get("internal"), Some(&1));
    assert_eq!(
        process_summary("INFO: 1 process: 1 remote.").get("remote"),
        Some(&1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_through_buildgrid_runs_in_the_image_and_hits_the_cache_after_clean() {
    let started = Instant::now();
    support::require_program("bazel", "bazel-bootstrap");
    support::require_program("ldd", "libc-bin");
    assert!(
        running_as_root(),
        "BuildGrid's worker chroots into input roots and PostgreSQL runs as user postgres: \
         this test must run as root (CI does)"
    );

    // The image: the host's tools, and an os-release no host has.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let os_release = format!(
        "PRETTY_NAME=\"bb-container-expander BuildGrid test image {nanos:x}-{}\"\nID=bb-buildgrid-e2e\n",
        std::process::id()
    );
    let mut entries = host_userland(TOOLS);
    entries.push(TarEntry::Dir("etc".into(), 0o755));
    entries.push(TarEntry::file("etc/os-release", os_release.as_bytes()));
    let registry = RegistryServer::start();
    let layer = Layer::new(tar_bytes(&entries), Compression::Gzip, Flavor::Oci);
    let image = ImageBuilder::new(Flavor::Oci).layer(layer).build();
    registry
        .pusher()
        .push_image("test/buildgrid-e2e", Some("v1"), &image)
        .await;
    let image_reference = format!("docker://{}/test/buildgrid-e2e:v1", registry.host());

    let mut buildgrid = BuildGrid::start();
    let expander = Expander::start(&registry.host(), buildgrid.address()).await;
    let bazel = BazelClient::new("tests/bazel-ws");
    let build = |image: &str| -> Vec<String> {
        [
            "build".to_owned(),
            format!("--remote_executor=grpc://127.0.0.1:{}", expander.port),
            format!("--remote_cache=grpc://{}", buildgrid.address()),
            format!("--remote_instance_name={INSTANCE_NAME}"),
            format!("--remote_default_exec_properties=container-image={image}"),
            "--spawn_strategy=remote".into(),
            "--genrule_strategy=remote".into(),
            "--noremote_local_fallback".into(),
            "--incompatible_strict_action_env".into(),
            "--remote_timeout=600".into(),
            "--verbose_failures".into(),
            "--color=no".into(),
            "--curses=no".into(),
            "//:os_release".into(),
            "//:uses_input".into(),
        ]
        .into()
    };
    let os_release_output = bazel.output("os-release.txt");
    let upper_output = bazel.output("input-upper.txt");

    // First build: both genrules run on BuildGrid's worker, inside the image.
    let (ok, output) = bazel.run(&build(&image_reference)).await;
    assert!(
        ok,
        "the first build failed:\n{output}\n{}",
        buildgrid.logs()
    );
    eprint!("{}", buildgrid.logs());
    let seen = read(&os_release_output);
    assert_eq!(
        seen, os_release,
        "the genrule did not see the image's /etc/os-release"
    );
    assert_ne!(
        seen,
        std::fs::read_to_string("/etc/os-release").unwrap_or_default()
    );
    assert_eq!(read(&upper_output), "GRAFTED INPUT FILE\n");
    let summary = process_summary(&output);
    assert_eq!(summary.get("remote"), Some(&2), "first build: {summary:?}");

    let actions = buildgrid.actions();
    assert_eq!(actions.len(), 2, "the worker ran {actions:?}");
    for action in &actions {
        assert_eq!(action.status, "OK", "{action:?}");
        assert_eq!(action.exit_code, Some(0), "{action:?}");
        assert_eq!(action.instance, INSTANCE_NAME);
        assert!(
            action.lease.starts_with(&format!("{INSTANCE_NAME}/")),
            "{action:?}"
        );
        assert_eq!(
            action.platform,
            vec![("runner".to_owned(), "chroot".to_owned())],
            "the platform BuildGrid scheduled on"
        );
        assert_eq!(action.working_directory, "bazel_exec_root");
        assert_eq!(action.argv[0], "/bin/bash");
        // The root the worker chrooted into: the image, with Bazel's inputs grafted in.
        for name in ["bazel_exec_root", "bin", "etc", "usr"] {
            assert!(
                action.input_root.iter().any(|n| n == name),
                "input root {:?} lacks {name}",
                action.input_root
            );
        }
    }

    // After `bazel clean`, everything comes from BuildGrid's Action Cache: the expander
    // wrote the results back under Bazel's action digests.
    let (ok, output) = bazel.run(&["clean".into()]).await;
    assert!(ok, "bazel clean failed:\n{output}");
    assert!(!os_release_output.exists());
    let (ok, output) = bazel.run(&build(&image_reference)).await;
    assert!(
        ok,
        "the second build failed:\n{output}\n{}",
        buildgrid.logs()
    );
    let summary = process_summary(&output);
    assert_eq!(
        summary.get("remote cache hit"),
        Some(&2),
        "second build: {summary:?}"
    );
    assert_eq!(summary.get("remote"), None, "second build: {summary:?}");
    assert_eq!(read(&os_release_output), os_release);
    assert_eq!(read(&upper_output), "GRAFTED INPUT FILE\n");
    assert_eq!(buildgrid.actions().len(), 2, "the second build ran actions");

    // An image that does not exist: a clear error, and nothing runs.
    let absent = format!("docker://{}/test/buildgrid-e2e:absent", registry.host());
    let (ok, output) = bazel.run(&build(&absent)).await;
    assert!(!ok, "a build with a missing image succeeded:\n{output}");
    // FAILED_PRECONDITION, not NOT_FOUND: the missing image is the client's to fix
    // (`image_error` in src/action/images.rs).
    let error = output
        .lines()
        .find(|line| line.contains("FAILED_PRECONDITION: "))
        .unwrap_or_else(|| panic!("no FAILED_PRECONDITION in Bazel's output:\n{output}"));
    assert!(
        error.contains(&absent) && error.contains("Not found"),
        "the error does not say that the image is missing:\n{output}"
    );
    assert_eq!(buildgrid.actions().len(), 2, "actions ran without an image");

    assert_missing_input_root_is_reported(&buildgrid).await;
    let last = buildgrid.actions().pop().unwrap();
    assert_eq!(last.status, "FAILED_PRECONDITION", "{last:?}");

    drop(bazel);
    expander.stop().await;
    buildgrid.stop();
    eprintln!(
        "BuildGrid end-to-end test: {:.1} s wall time",
        started.elapsed().as_secs_f64()
    );
}
