//! End to end with a real client: Bazel 4.2.3 (Debian `bazel-bootstrap`) →
//! bb-container-expander in proxy mode → a scheduler + worker that chroots into the
//! forwarded input root (`support::chroot_worker`, needs root).
//!
//! The image is a minimal userland copied from the host (bash, env, cat, tr and their
//! shared libraries, as `ldd` lists them, symlinks such as `lib64 -> usr/lib64` kept)
//! with an `/etc/os-release` carrying a random marker, pushed to a real docker-registry
//! on loopback. Bazel builds the genrules of `tests/bazel-ws` remotely with
//! `container-image=docker://…` as default exec property; the outputs must show the
//! image's os-release, the input file run through the image's `tr`, and a variable only
//! the image config's `Env` sets (the image's environment is the base of the action's;
//! Bazel 4.2.3 sets PATH for every genrule, `/bin:/usr/bin:/usr/local/bin` under
//! `--incompatible_strict_action_env`, so PATH itself is the Command's). After
//! `bazel clean`, a second build must be served entirely from the remote cache, through
//! the results the expander wrote back under Bazel's own action digests.
//!
//! Bazel, the registry and `ldd` must be installed (the test fails with the install
//! command otherwise); nothing is downloaded.

mod support;

use bb_container_expander::config::{self, ApplicationConfiguration};
use bb_container_expander::diagnostics::Readiness;
use bb_container_expander::program::Program;
use bb_container_expander::testutil::BlobstoreServer;
use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};
use support::chroot_worker::{running_as_root, ChrootWorker};
use support::images::{tar_bytes, Compression, Flavor, ImageBuilder, Layer, TarEntry};
use support::registry_server::RegistryServer;
use tokio::sync::watch;

/// Programs the genrules need: Bazel runs genrules with `/bin/bash -c`, the chroot
/// runner execs `/usr/bin/env`, and the commands use `cat` and `tr`.
const TOOLS: &[&str] = &["/bin/bash", "/usr/bin/env", "/bin/cat", "/usr/bin/tr"];
/// The instance name Bazel uses (and that travels through the expander to the worker).
const INSTANCE_NAME: &str = "e2e";
/// Generous limit on one Bazel command (its first start loads a JVM on a busy machine).
const BAZEL_TIMEOUT: Duration = Duration::from_secs(900);

/// Records `path` and everything needed to reach it on the host (parent directories,
/// symlinks on the way, followed) as image entries at the same paths.
fn add_host_path(entries: &mut BTreeMap<String, TarEntry>, path: &Path, depth: usize) {
    assert!(depth < 40, "too many symlinks resolving {}", path.display());
    let components: Vec<Component> = path.components().collect();
    let mut resolved = PathBuf::from("/");
    for (i, component) in components.iter().enumerate() {
        let name = match component {
            Component::Normal(name) => name,
            Component::ParentDir => {
                resolved.pop();
                continue;
            }
            _ => continue,
        };
        let host = resolved.join(name);
        let relative = host
            .strip_prefix("/")
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let metadata = std::fs::symlink_metadata(&host)
            .unwrap_or_else(|e| panic!("cannot inspect {}: {e}", host.display()));
        let mode = std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o7777;
        if metadata.file_type().is_symlink() {
            let target = std::fs::read_link(&host).unwrap();
            entries.insert(
                relative.clone(),
                TarEntry::Symlink(relative, target.to_string_lossy().into_owned()),
            );
            let mut next = if target.is_absolute() {
                target
            } else {
                resolved.join(target)
            };
            for rest in &components[i + 1..] {
                next.push(rest.as_os_str());
            }
            return add_host_path(entries, &next, depth + 1);
        }
        if metadata.is_dir() {
            entries
                .entry(relative.clone())
                .or_insert(TarEntry::Dir(relative, mode));
        } else {
            let contents = std::fs::read(&host)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", host.display()));
            entries.insert(relative.clone(), TarEntry::File(relative, contents, mode));
        }
        resolved = host;
    }
}

/// The shared libraries (and dynamic loader) `ldd` lists for `program`.
fn shared_libraries(program: &str) -> Vec<String> {
    let output = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .expect("run ldd");
    assert!(output.status.success(), "ldd {program} failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let first = words.next()?;
            match words.next() {
                Some("=>") => words.next().filter(|p| p.starts_with('/')),
                _ => Some(first).filter(|p| p.starts_with('/')),
            }
            .map(str::to_owned)
        })
        .collect()
}

/// The image's tar entries: the tools, their libraries and `/etc/os-release`.
fn userland(os_release: &str) -> Vec<TarEntry> {
    let mut entries = BTreeMap::new();
    for tool in TOOLS {
        add_host_path(&mut entries, Path::new(tool), 0);
        for library in shared_libraries(tool) {
            add_host_path(&mut entries, Path::new(&library), 0);
        }
    }
    entries.insert("etc".into(), TarEntry::Dir("etc".into(), 0o755));
    entries.insert(
        "etc/os-release".into(),
        TarEntry::file("etc/os-release", os_release.as_bytes()),
    );
    entries.into_values().collect()
}

/// Starts the expander in proxy mode on a free port; returns its port.
async fn start_expander(
    registry: &str,
    storage: &str,
    scheduler: &str,
) -> (
    u16,
    watch::Sender<bool>,
    tokio::task::JoinHandle<Result<(), String>>,
) {
    let port = support::free_port();
    let text = format!(
        r#"{{
          grpcServers: [{{ listenAddresses: ['127.0.0.1:{port}'], authenticationPolicy: {{ allow: {{}} }} }}],
          blobstore: {{
            contentAddressableStorage: {{ grpc: {{ client: {{ address: '{storage}' }} }} }},
            actionCache: {{ grpc: {{ client: {{ address: '{storage}' }} }} }},
          }},
          scheduler: {{ address: '{scheduler}' }},
          containerImages: {{
            registries: [{{ hosts: ['{registry}'] }}],
            inputRootDirectory: 'bazel_exec_root',
            addPlatformProperties: [{{ name: 'runner', value: 'chroot' }}],
          }},
        }}"#
    );
    let value = config::jsonnet::evaluate_snippet("bazel_e2e.jsonnet", &text).unwrap();
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
    (port, shutdown, task)
}

/// A Bazel client with its own output user root; its server is shut down on drop.
struct Bazel {
    workspace: PathBuf,
    output_user_root: PathBuf,
}

impl Bazel {
    fn command(&self, arguments: &[String]) -> std::process::Command {
        let mut command = std::process::Command::new("bazel");
        command
            .current_dir(&self.workspace)
            // The system bazelrc stays: Debian's points Bazel at its install base.
            .arg("--nohome_rc")
            .arg(format!(
                "--output_user_root={}",
                self.output_user_root.display()
            ))
            // A server left behind by a crashed test goes away by itself.
            .arg("--max_idle_secs=900")
            .args(arguments)
            .stdin(std::process::Stdio::null());
        command
    }

    /// Runs a Bazel command; returns whether it succeeded and its output.
    async fn run(&self, arguments: &[String]) -> (bool, String) {
        let started = Instant::now();
        let mut command = tokio::process::Command::from(self.command(arguments));
        command.kill_on_drop(true);
        let output = tokio::time::timeout(BAZEL_TIMEOUT, command.output())
            .await
            .unwrap_or_else(|_| panic!("bazel {arguments:?} did not finish in {BAZEL_TIMEOUT:?}"))
            .expect("run bazel");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        eprintln!(
            "--- bazel {} ({:.1} s, {}):\n{text}",
            arguments.first().map(String::as_str).unwrap_or(""),
            started.elapsed().as_secs_f64(),
            output.status
        );
        (output.status.success(), text)
    }
}

impl Drop for Bazel {
    fn drop(&mut self) {
        let _ = self.command(&["shutdown".into()]).output();
    }
}

/// The counts of Bazel's last "N processes: A internal, B remote cache hit, …" line,
/// by kind.
fn process_summary(output: &str) -> HashMap<String, u32> {
    let line = output
        .lines()
        .rev()
        .find(|l| l.contains(" processes: ") || l.contains(" process: "))
        .unwrap_or_else(|| panic!("no process summary in Bazel's output:\n{output}"));
    let counts = line
        .rsplit_once(" processes: ")
        .or_else(|| line.rsplit_once(" process: "))
        .unwrap()
        .1;
    counts
        .trim_end_matches('.')
        .split(", ")
        .filter_map(|item| {
            let (count, kind) = item.trim().split_once(' ')?;
            Some((kind.to_owned(), count.parse().ok()?))
        })
        .collect()
}

#[test]
fn parses_process_summaries() {
    let summary = process_summary(
        "INFO: Found 2 targets...\nINFO: 3 processes: 1 internal, 2 remote cache hit.\nINFO: Build completed",
    );
    assert_eq!(summary.get("remote cache hit"), Some(&2));
    assert_eq!(summary.get("internal"), Some(&1));
    let summary = process_summary("INFO: 1 process: 1 remote.");
    assert_eq!(summary.get("remote"), Some(&1));
}

/// The harness itself: an input root missing from the CAS is reported the way bb_worker
/// does, in the done operation, as FAILED_PRECONDITION naming the blob.
#[tokio::test]
async fn chroot_worker_reports_missing_inputs_as_bb_worker_does() {
    use bb_container_expander::blobstore::{put_message, Instance};
    use bb_container_expander::digest::{encode_message, DigestFunction};
    use bb_container_expander::proto::longrunning::operation;
    use bb_container_expander::proto::reapi;
    use futures::StreamExt;
    use prost::Message;

    let storage = BlobstoreServer::start_in_memory_serving(&["x"]).await;
    let worker = ChrootWorker::start(storage.cas(), storage.ac(), &["x"]).await;
    let instance = Instance::new("x", DigestFunction::Sha256);
    let command = reapi::Command {
        arguments: vec!["/bin/true".into()],
        ..Default::default()
    };
    let command_digest = put_message(&*storage.cas(), &instance, &command)
        .await
        .unwrap();
    let (missing_root, _) = encode_message(
        DigestFunction::Sha256,
        &reapi::Directory {
            symlinks: vec![reapi::SymlinkNode {
                name: "absent".into(),
                target: "nowhere".into(),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    let action = reapi::Action {
        command_digest: Some(command_digest),
        input_root_digest: Some(missing_root.clone()),
        ..Default::default()
    };
    let action_digest = put_message(&*storage.cas(), &instance, &action)
        .await
        .unwrap();
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", worker.address()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let operations: Vec<_> = reapi::execution_client::ExecutionClient::new(channel)
        .execute(reapi::ExecuteRequest {
            instance_name: "x".into(),
            action_digest: Some(action_digest.clone()),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .map(Result::unwrap)
        .collect()
        .await;
    let last = operations.last().unwrap();
    assert!(last.done);
    let Some(operation::Result::Response(any)) = &last.result else {
        panic!("no response in {last:?}");
    };
    let response = reapi::ExecuteResponse::decode(any.value.as_slice()).unwrap();
    let status = response.status.unwrap();
    assert_eq!(status.code, tonic::Code::FailedPrecondition as i32);
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
    assert_eq!(worker.executed()[0].action_digest, action_digest);
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bazel_builds_inside_the_image_and_hits_the_cache_after_clean() {
    let started = Instant::now();
    support::require_program("bazel", "bazel-bootstrap");
    support::require_program("ldd", "libc-bin");
    assert!(
        running_as_root(),
        "this test chroots into action input roots and must run as root (CI does)"
    );

    // The image: the host's tools, and an os-release no host has.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let marker = format!(
        "bb-container-expander test image {nanos:x}-{}",
        std::process::id()
    );
    let os_release = format!("PRETTY_NAME=\"{marker}\"\nID=bb-e2e\n");
    let registry = RegistryServer::start();
    let layer = Layer::new(
        tar_bytes(&userland(&os_release)),
        Compression::Gzip,
        Flavor::Oci,
    );
    eprintln!(
        "image layer: {} bytes compressed, {} bytes tar",
        layer.blob.len(),
        layer.tar.len()
    );
    let image = ImageBuilder::new(Flavor::Oci)
        .layer(layer)
        .config_field(
            "config",
            serde_json::json!({
                "Env": [
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    format!("E2E_IMAGE_GREETING=hello from {marker}"),
                ],
                "WorkingDir": "/root",
            }),
        )
        .build();
    registry
        .pusher()
        .push_image("test/e2e", Some("v1"), &image)
        .await;
    let image_reference = format!("docker://{}/test/e2e:v1", registry.host());

    // Storage shared by Bazel, the expander and the worker (serving only Bazel's
    // instance name, as a real server would); the worker; the expander.
    let storage = BlobstoreServer::start_in_memory_serving(&[INSTANCE_NAME]).await;
    let worker = ChrootWorker::start(storage.cas(), storage.ac(), &[INSTANCE_NAME]).await;
    let (expander_port, expander_shutdown, expander_task) = start_expander(
        &registry.host(),
        &storage.address().to_string(),
        &worker.address().to_string(),
    )
    .await;

    // The workspace, copied so that Bazel's symlinks and outputs stay out of the tree.
    let scratch = tempfile::tempdir().unwrap();
    let workspace = scratch.path().join("ws");
    std::fs::create_dir(&workspace).unwrap();
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/bazel-ws");
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), workspace.join(entry.file_name())).unwrap();
    }
    let bazel = Bazel {
        workspace: workspace.clone(),
        output_user_root: scratch.path().join("bazel-root"),
    };
    let build: Vec<String> = [
        "build".to_owned(),
        format!("--remote_executor=grpc://127.0.0.1:{expander_port}"),
        format!("--remote_cache=grpc://{}", storage.address()),
        format!("--remote_instance_name={INSTANCE_NAME}"),
        format!("--remote_default_exec_properties=container-image={image_reference}"),
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
        "//:image_env".into(),
    ]
    .into();
    let os_release_output = workspace.join("bazel-bin/os-release.txt");
    let upper_output = workspace.join("bazel-bin/input-upper.txt");
    let image_env_output = workspace.join("bazel-bin/image-env.txt");
    let greeting = format!("hello from {marker}\n");

    // First build: both genrules run on the worker, inside the image.
    let (ok, output) = bazel.run(&build).await;
    assert!(ok, "the first build failed:\n{output}");
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
    assert_eq!(
        read(&image_env_output),
        greeting,
        "the genrule did not get the variable of the image's Env"
    );
    let summary = process_summary(&output);
    assert_eq!(summary.get("remote"), Some(&3), "first build: {summary:?}");

    let executed = worker.executed();
    assert_eq!(executed.len(), 3, "the worker ran {executed:?}");
    for action in &executed {
        assert_eq!(action.outcome, Ok(0));
        // Bazel sets PATH itself, which wins over the image's; the image adds the rest.
        let environment: BTreeMap<&str, &str> = action
            .command
            .environment_variables
            .iter()
            .map(|v| (v.name.as_str(), v.value.as_str()))
            .collect();
        assert_eq!(
            environment.get("PATH"),
            Some(&"/bin:/usr/bin:/usr/local/bin"),
            "{environment:?}"
        );
        assert_eq!(
            environment.get("E2E_IMAGE_GREETING").copied(),
            Some(greeting.trim_end())
        );
        let names: Vec<&&str> = environment.keys().collect();
        assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted: {names:?}");
        assert_eq!(action.instance_name, INSTANCE_NAME);
        assert_eq!(action.command.working_directory, "bazel_exec_root");
        assert_eq!(action.command.arguments[0], "/bin/bash");
        #[allow(deprecated)]
        let platforms = [&action.action.platform, &action.command.platform];
        for platform in platforms.into_iter().flatten() {
            let names: Vec<&str> = platform
                .properties
                .iter()
                .map(|p| p.name.as_str())
                .collect();
            assert!(
                !names.contains(&"container-image"),
                "forwarded platform {platform:?}"
            );
            assert!(names.contains(&"runner"), "forwarded platform {platform:?}");
        }
    }

    // After `bazel clean`, everything comes from the remote cache: the expander wrote
    // the results back under Bazel's action digests.
    let (ok, output) = bazel.run(&["clean".into()]).await;
    assert!(ok, "bazel clean failed:\n{output}");
    assert!(!os_release_output.exists());
    let (ok, output) = bazel.run(&build).await;
    assert!(ok, "the second build failed:\n{output}");
    let summary = process_summary(&output);
    assert_eq!(
        summary.get("remote cache hit"),
        Some(&3),
        "second build: {summary:?}"
    );
    assert_eq!(
        worker.executed().len(),
        3,
        "the second build executed actions"
    );
    assert_eq!(read(&os_release_output), os_release);
    assert_eq!(read(&upper_output), "GRAFTED INPUT FILE\n");
    assert_eq!(read(&image_env_output), greeting);

    drop(bazel);
    expander_shutdown.send(true).unwrap();
    expander_task.await.unwrap().unwrap();
    eprintln!(
        "bazel end-to-end test: {:.1} s wall time",
        started.elapsed().as_secs_f64()
    );
}
