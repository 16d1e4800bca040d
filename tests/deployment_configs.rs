//! The deployments the project ships (configs/ and examples/) are what an operator
//! copies, so each is checked here the way it will be used:
//!
//! - every `.jsonnet` and `.libsonnet` file evaluates with the project's real loader
//!   (Buildbarn semantics: environment variables are external variables, imports are
//!   relative), with the variables the Kubernetes example takes from its pod;
//! - every expander configuration passes the real validator and builds the service's
//!   objects, as `check-config` does;
//! - the Buildbarn configurations of the docker-compose example have the shapes the
//!   docs promise: the frontend sends Execute to the expander, the expander to the
//!   scheduler with the RequestMetadata, the worker advertises exactly the platform the
//!   expander produces (sorted, without `container-image`), the runner chroots, and
//!   the router variant wires the scheduler's `actionRouter.remote` to the expander;
//! - the compose files name only configuration files that exist and, where the Debian
//!   package `docker-compose` is installed (CI installs it), pass `docker-compose config`;
//! - the Kubernetes manifests mount the ConfigMap and set the variables the
//!   configuration reads, and the Kubernetes chroot workers advertise what the
//!   Kubernetes expander produces and share their FUSE mount with the runner.
//!
//! Whether the Buildbarn binaries accept their configurations (schemas, start-up
//! checks, block sizes, image tags) is `tests/buildbarn_configs.rs`'s job.

use bb_container_expander::action::configuration::new_rewrite_options_from_configuration;
use bb_container_expander::action::platform_properties;
use bb_container_expander::config::{self, jsonnet};
use bb_container_expander::proto::reapi;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

/// What the Kubernetes example reads with std.extVar, as its pod sets it.
const EXAMPLE_ENVIRONMENT: &[(&str, &str)] = &[
    ("POD_NAME", "expander-5d8f7c9b4-x2x7q"),
    ("POD_IP", "10.1.2.3"),
    ("REGISTRY_USERNAME", "puller"),
    ("REGISTRY_PASSWORD", "example-password"),
];

fn set_example_environment() {
    static ONCE: Once = Once::new();
    // Every test calls this before it evaluates anything, and Once makes the others
    // wait until the variables are set, so no thread reads the environment meanwhile.
    ONCE.call_once(|| {
        for (name, value) in EXAMPLE_ENVIRONMENT {
            std::env::set_var(name, value);
        }
    });
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn files_with_extensions(dir: &Path, extensions: &[&str], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == "volumes") {
                continue;
            }
            files_with_extensions(&path, extensions, out);
        } else if path
            .extension()
            .is_some_and(|e| extensions.iter().any(|x| e == *x))
        {
            out.push(path);
        }
    }
}

fn shipped_jsonnet() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["configs", "examples"] {
        files_with_extensions(&root().join(dir), &["jsonnet", "libsonnet"], &mut files);
    }
    files.sort();
    files
}

/// Expander configurations: the references in configs/ and, in examples/, the files
/// named after the service.
fn expander_configurations() -> Vec<PathBuf> {
    shipped_jsonnet()
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "jsonnet"))
        .filter(|p| {
            p.starts_with(root().join("configs"))
                || p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .contains("expander")
        })
        .collect()
}

fn evaluate(relative: &str) -> Value {
    set_example_environment();
    let path = root().join(relative);
    jsonnet::evaluate_file(path.to_str().unwrap())
        .unwrap_or_else(|e| panic!("{relative} does not evaluate: {e}"))
}

/// `value` at a path of object keys and array indices, e.g. `"schedulers/''/endpoint"`
/// is written as `&["schedulers", "", "endpoint"]`.
fn at<'a>(value: &'a Value, path: &[&str]) -> &'a Value {
    let mut current = value;
    for (i, key) in path.iter().enumerate() {
        current = match current {
            Value::Array(items) => key.parse::<usize>().ok().and_then(|n| items.get(n)),
            Value::Object(fields) => fields.get(*key),
            _ => None,
        }
        .unwrap_or_else(|| panic!("no {:?} in {value:#}", &path[..=i]));
    }
    current
}

fn string_at<'a>(value: &'a Value, path: &[&str]) -> &'a str {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string"))
}

fn properties(platform: &Value) -> Vec<(String, String)> {
    at(platform, &["properties"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                string_at(p, &["name"]).to_owned(),
                string_at(p, &["value"]).to_owned(),
            )
        })
        .collect()
}

const REQUEST_METADATA: &str = "build.bazel.remote.execution.v2.requestmetadata-bin";

fn assert_forwards_request_metadata(endpoint: &Value, what: &str) {
    let expression = string_at(endpoint, &["addMetadataJmespathExpression", "expression"]);
    assert!(
        expression.contains(REQUEST_METADATA) && expression.contains("incomingGRPCMetadata"),
        "{what} does not forward {REQUEST_METADATA}: {expression}"
    );
}

#[test]
fn every_shipped_jsonnet_file_evaluates() {
    set_example_environment();
    let files = shipped_jsonnet();
    assert!(files.len() >= 15, "too few files found: {files:?}");
    for file in files {
        if let Err(e) = jsonnet::evaluate_file(file.to_str().unwrap()) {
            panic!("{} does not evaluate: {e}", file.display());
        }
    }
}

#[test]
fn every_expander_configuration_is_valid() {
    set_example_environment();
    let files = expander_configurations();
    assert!(
        files.len() >= 6,
        "too few expander configurations: {files:?}"
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    for file in files {
        let path = file.to_str().unwrap();
        let configuration = bb_container_expander::program::load_configuration(path)
            .unwrap_or_else(|e| panic!("{e}"));
        // As check-config: building the objects catches what the types cannot.
        runtime
            .block_on(async move {
                bb_container_expander::program::Program::from_configuration(configuration)
                    .map(|_| ())
            })
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

#[test]
fn reference_configurations_cover_both_modes() {
    let proxy = evaluate("configs/bb_container_expander.jsonnet");
    assert_eq!(
        string_at(&proxy, &["scheduler", "address"]),
        "scheduler:8982"
    );
    assert_forwards_request_metadata(at(&proxy, &["scheduler"]), "the proxy reference");
    let router = evaluate("configs/bb_container_expander_router.jsonnet");
    assert!(
        router.get("scheduler").is_none(),
        "router mode must not forward"
    );
    assert_eq!(
        at(&router, &["containerImages"]),
        at(&proxy, &["containerImages"])
    );
}

#[test]
fn reference_configuration_documents_every_field() {
    // Every field the reference sets is preceded by a comment, and every field of
    // containerImages, the part that is the expander's own, is set in it.
    let text =
        std::fs::read_to_string(root().join("configs/bb_container_expander.jsonnet")).unwrap();
    let reference = evaluate("configs/bb_container_expander.jsonnet");
    let images = at(&reference, &["containerImages"]).as_object().unwrap();
    for field in [
        "registries",
        "allowAnyRegistry",
        "defaultPlatform",
        "requestTimeout",
        "maximumRetries",
        "initialRetryDelay",
        "credentialHelpers",
        "blobTransferTimeout",
        "minimumTransferBytesPerSecond",
        "transferRateWindow",
        "maximumRetryAfter",
        "allowPrivateAddresses",
        "httpProxy",
        "abandonGracePeriod",
        "staleTagGrace",
        "tagTtl",
        "rejectTags",
        "completenessCheckInterval",
        "maximumImageSizeBytes",
        "maximumLayerSizeBytes",
        "maximumConcurrentLayerIngests",
        "maximumConcurrentLayerIngestsPerRegistry",
        "spoolDirectory",
        "directoryCacheSizeBytes",
        "platformPropertyName",
        "inputRootDirectory",
        "conflictPolicy",
        "addPlatformProperties",
        "requireUsrBinEnv",
        "platformPropertyRules",
        "imageEnvironment",
        "checkProgramExists",
        "requiredDirectories",
        "writeBackResults",
        "keepaliveInterval",
        "prewarm",
    ] {
        assert!(
            images.contains_key(field),
            "containerImages.{field} is not in the reference"
        );
        let line = text
            .lines()
            .position(|l| l.trim_start().starts_with(&format!("{field}:")))
            .unwrap_or_else(|| panic!("{field} is not set on a line of its own"));
        let above = text.lines().nth(line - 1).unwrap().trim_start();
        assert!(above.starts_with("//"), "{field} has no comment above it");
    }
    for top in [
        "global",
        "grpcServers",
        "maximumMessageSizeBytes",
        "blobstore",
        "scheduler",
        "containerImages",
        "serveRemoteAsset",
    ] {
        assert!(
            reference.get(top).is_some(),
            "{top} is not in the reference"
        );
    }
    // `fleet` is for deployments of several replicas: documented, with an example,
    // but left unset in the reference.
    assert!(reference.get("fleet").is_none());
    for field in [
        "selfAddress",
        "peers",
        "peersDnsName",
        "peersRefreshInterval",
        "unreachablePeerBackoff",
        "connectTimeout",
        "peerClient",
    ] {
        assert!(
            text.contains(&format!("//   {field}:")),
            "fleet.{field} is not documented in the reference"
        );
    }
    assert!(text.matches("Default:").count() >= 20);
    assert!(text.matches("Recommended value:").count() >= 10);
}

/// The docker-compose example, proxy mode.
#[test]
fn docker_compose_proxy_mode_is_wired_as_documented() {
    let dir = "examples/docker-compose/config";
    let frontend = evaluate(&format!("{dir}/frontend.jsonnet"));
    let expander = evaluate(&format!("{dir}/expander.jsonnet"));
    let scheduler = evaluate(&format!("{dir}/scheduler.jsonnet"));
    let storage = evaluate(&format!("{dir}/storage.jsonnet"));
    let browser = evaluate(&format!("{dir}/browser.jsonnet"));

    // Frontend → expander, RequestMetadata forwarded.
    let endpoint = at(&frontend, &["schedulers", "", "endpoint"]);
    assert_eq!(string_at(endpoint, &["address"]), "expander:8985");
    assert_forwards_request_metadata(endpoint, "the frontend");
    assert_eq!(
        at(&frontend, &["grpcServers", "0", "listenAddresses"]),
        &serde_json::json!([":8980"])
    );
    let shards = at(
        &frontend,
        &["contentAddressableStorage", "backend", "sharding", "shards"],
    );
    for (shard, address) in [("0", "storage-0:8981"), ("1", "storage-1:8981")] {
        assert_eq!(
            string_at(shards, &[shard, "backend", "grpc", "client", "address"]),
            address
        );
    }
    at(
        &frontend,
        &[
            "actionCache",
            "backend",
            "completenessChecking",
            "maximumTotalTreeSizeBytes",
        ],
    );
    at(&frontend, &["executeAuthorizer", "allow"]);

    // Expander → scheduler's client port, RequestMetadata forwarded; same storage,
    // through the frontend.
    assert_eq!(
        at(&expander, &["grpcServers", "0", "listenAddresses"]),
        &serde_json::json!([":8985"])
    );
    assert_eq!(
        string_at(&expander, &["scheduler", "address"]),
        "scheduler:8982"
    );
    assert_forwards_request_metadata(at(&expander, &["scheduler"]), "the expander");
    for store in ["contentAddressableStorage", "actionCache"] {
        assert_eq!(
            string_at(
                &expander,
                &["blobstore", store, "grpc", "client", "address"]
            ),
            "frontend:8980"
        );
    }

    // The scheduler serves the expander on 8982 and the worker on 8983, and reads the
    // same CAS as the frontend.
    assert_eq!(
        at(&scheduler, &["clientGrpcServers", "0", "listenAddresses"]),
        &serde_json::json!([":8982"])
    );
    assert_eq!(
        at(&scheduler, &["workerGrpcServers", "0", "listenAddresses"]),
        &serde_json::json!([":8983"])
    );
    assert_eq!(
        at(&scheduler, &["contentAddressableStorage"]),
        at(&frontend, &["contentAddressableStorage", "backend"])
    );
    at(
        &scheduler,
        &["actionRouter", "simple", "platformKeyExtractor", "action"],
    );

    assert_eq!(
        at(&storage, &["grpcServers", "0", "listenAddresses"]),
        &serde_json::json!([":8981"])
    );
    for store in ["contentAddressableStorage", "actionCache"] {
        at(
            &storage,
            &[store, "backend", "local", "blocksOnBlockDevice"],
        );
        at(
            &storage,
            &[
                store,
                "backend",
                "local",
                "persistent",
                "stateDirectoryPath",
            ],
        );
    }
    at(
        &browser,
        &["blobstore", "contentAddressableStorage", "sharding"],
    );

    // One message size limit everywhere: the expander must not write a Directory the
    // workers refuse.
    let worker = evaluate(&format!("{dir}/worker.jsonnet"));
    let limit = at(&expander, &["maximumMessageSizeBytes"]);
    for (name, config) in [
        ("frontend", &frontend),
        ("scheduler", &scheduler),
        ("storage", &storage),
        ("worker", &worker),
        ("browser", &browser),
    ] {
        assert_eq!(at(config, &["maximumMessageSizeBytes"]), limit, "{name}");
    }
}

/// The chroot worker advertises exactly what the expander makes of a client's
/// platform, sorted as bb_scheduler requires, and the runner chroots.
#[test]
fn docker_compose_chroot_worker_matches_the_rewritten_platform() {
    assert_chroot_worker_matches_the_expander(
        "examples/docker-compose/config",
        "worker.jsonnet",
        "runner.jsonnet",
    );
}

/// The same for the Kubernetes example's chroot workers and its expander.
#[test]
fn kubernetes_chroot_worker_matches_the_rewritten_platform() {
    assert_chroot_worker_matches_the_expander(
        "examples/kubernetes/config",
        "worker-chroot.jsonnet",
        "runner-chroot.jsonnet",
    );
}

fn assert_chroot_worker_matches_the_expander(dir: &str, worker: &str, runner: &str) {
    let worker = evaluate(&format!("{dir}/{worker}"));
    let runner = evaluate(&format!("{dir}/{runner}"));

    assert_eq!(
        string_at(&worker, &["scheduler", "address"]),
        "scheduler:8983"
    );
    let build_directory = at(&worker, &["buildDirectories", "0"]);
    assert_eq!(
        string_at(build_directory, &["virtual", "mount", "mountPath"]),
        "/worker/build"
    );
    let runner_entry = at(build_directory, &["runners", "0"]);
    assert_eq!(
        string_at(runner_entry, &["endpoint", "address"]),
        "unix:///worker/runner"
    );
    let devices: Vec<&str> = at(runner_entry, &["inputRootCharacterDeviceNodes"])
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    for device in ["null", "zero", "urandom"] {
        assert!(
            devices.contains(&device),
            "{device} missing from {devices:?}"
        );
    }

    let advertised = properties(at(runner_entry, &["platform"]));
    assert!(
        advertised.iter().all(|(name, _)| name != "container-image"),
        "the chroot worker must not advertise container-image: {advertised:?}"
    );
    let sorted = advertised
        .windows(2)
        .all(|w| (w[0].0.as_bytes(), w[0].1.as_bytes()) < (w[1].0.as_bytes(), w[1].1.as_bytes()));
    assert!(
        sorted,
        "not strictly sorted by name, then value: {advertised:?}"
    );

    // What the expander forwards for a client that sends OSFamily=linux and an image,
    // computed by the expander's own code from its own configuration.
    let expander =
        config::load(root().join(dir).join("expander.jsonnet").to_str().unwrap()).unwrap();
    let options = new_rewrite_options_from_configuration(&expander.container_images, 2 << 20);
    let client = reapi::Platform {
        properties: vec![
            reapi::platform::Property { name: "OSFamily".into(), value: "linux".into() },
            reapi::platform::Property {
                name: "container-image".into(),
                value: "docker://registry:5000/debian@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
            },
        ],
    };
    let rewritten = platform_properties::rewrite(
        Some(&client),
        &options.property_names,
        &options.property_rules,
        &options.add_platform_properties,
    )
    .unwrap();
    let rewritten: Vec<(String, String)> = rewritten
        .properties
        .into_iter()
        .map(|p| (p.name, p.value))
        .collect();
    assert_eq!(
        rewritten, advertised,
        "the worker would never receive rewritten actions"
    );

    assert_eq!(at(&runner, &["chrootIntoInputRoot"]), &Value::Bool(true));
    assert_eq!(string_at(&runner, &["buildDirectoryPath"]), "/worker/build");
    assert_eq!(
        at(&runner, &["grpcServers", "0", "listenPaths"]),
        &serde_json::json!(["/worker/runner"])
    );
}

/// The router variant: the frontend talks to the scheduler, the scheduler's action
/// router is the expander, and the expander forwards nothing.
#[test]
fn docker_compose_router_mode_is_wired_as_documented() {
    let dir = "examples/docker-compose/config/router";
    let frontend = evaluate(&format!("{dir}/frontend.jsonnet"));
    let scheduler = evaluate(&format!("{dir}/scheduler.jsonnet"));
    let expander = evaluate(&format!("{dir}/expander.jsonnet"));

    let endpoint = at(&frontend, &["schedulers", "", "endpoint"]);
    assert_eq!(string_at(endpoint, &["address"]), "scheduler:8982");
    assert_forwards_request_metadata(endpoint, "the router-mode frontend");

    let remote = at(&scheduler, &["actionRouter", "remote"]);
    assert_eq!(
        string_at(remote, &["grpcClient", "address"]),
        "expander:8985"
    );
    at(
        remote,
        &["initialSizeClassAnalyzer", "defaultExecutionTimeout"],
    );
    assert_eq!(
        at(&scheduler, &["actionRouter"]).as_object().unwrap().len(),
        1
    );
    at(&scheduler, &["clientGrpcServers", "0", "listenAddresses"]);

    assert!(
        expander.get("scheduler").is_none(),
        "the router-mode expander must not forward"
    );
    assert_eq!(
        at(&expander, &["grpcServers", "0", "listenAddresses"]),
        &serde_json::json!([":8985"])
    );
}

/// `/config/<name>.jsonnet` paths a compose file names, outside comments.
fn referenced_configurations(text: &str) -> Vec<String> {
    let text = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    text.split(|c: char| {
        c.is_whitespace() || c == '\'' || c == '"' || c == ',' || c == '[' || c == ']' || c == ';'
    })
    .filter(|word| word.starts_with("/config/") && word.ends_with(".jsonnet"))
    .map(|word| word.trim_start_matches("/config/").to_owned())
    .collect()
}

#[test]
fn docker_compose_files_name_existing_configurations_and_pass_docker_compose_config() {
    let dir = root().join("examples/docker-compose");
    let base = std::fs::read_to_string(dir.join("docker-compose.yml")).unwrap();
    let router = std::fs::read_to_string(dir.join("docker-compose.router.yml")).unwrap();
    let mut referenced = referenced_configurations(&base);
    referenced.extend(referenced_configurations(&router));
    for name in [
        "frontend.jsonnet",
        "storage.jsonnet",
        "scheduler.jsonnet",
        "browser.jsonnet",
        "worker.jsonnet",
        "runner.jsonnet",
        "expander.jsonnet",
        "router/frontend.jsonnet",
        "router/scheduler.jsonnet",
        "router/expander.jsonnet",
    ] {
        assert!(
            referenced.contains(&name.to_owned()),
            "no service runs /config/{name}"
        );
    }
    for name in &referenced {
        assert!(
            dir.join("config").join(name).is_file(),
            "/config/{name} does not exist in config/"
        );
    }

    let Some(docker_compose) = find_program("docker-compose") else {
        eprintln!(
            "NOTE: docker-compose is not installed (Debian package docker-compose); \
             the compose files were not validated with `docker-compose config`"
        );
        return;
    };
    for files in [
        &["docker-compose.yml"][..],
        &["docker-compose.yml", "docker-compose.router.yml"][..],
    ] {
        let mut command = Command::new(&docker_compose);
        command.current_dir(&dir);
        for file in files {
            command.args(["-f", file]);
        }
        let output = command.arg("config").output().unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "docker-compose {files:?} config failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        for service in [
            "frontend:",
            "storage-0:",
            "storage-1:",
            "scheduler:",
            "browser:",
            "registry:",
            "runner-installer:",
            "worker:",
            "runner:",
            "expander:",
        ] {
            assert!(
                stdout.contains(&format!("\n  {service}\n")),
                "{files:?}: no service {service}\n{stdout}"
            );
        }
        if files.len() == 2 {
            for name in ["frontend", "scheduler", "expander"] {
                assert!(
                    stdout.contains(&format!("/config/router/{name}.jsonnet")),
                    "{stdout}"
                );
            }
        }
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|path| path.is_file())
    })
}

#[test]
fn kubernetes_manifests_mount_the_configuration_and_set_its_variables() {
    let dir = root().join("examples/kubernetes");
    let deployment = std::fs::read_to_string(dir.join("expander.yaml")).unwrap();
    let generator = std::fs::read_to_string(dir.join("config/kustomization.yaml")).unwrap();
    let configuration = std::fs::read_to_string(dir.join("config/expander.jsonnet")).unwrap();

    assert!(
        generator.contains("configMapGenerator:") && generator.contains("name: buildbarn-config")
    );
    for file in ["common.libsonnet", "expander.jsonnet"] {
        assert!(
            generator.contains(&format!("- {file}")),
            "{file} is not in the ConfigMap"
        );
        assert!(dir.join("config").join(file).is_file());
        assert!(
            deployment.contains(&format!("key: {file}")),
            "{file} is not mounted"
        );
    }
    assert!(deployment.contains("args:\n            - /config/expander.jsonnet"));
    assert!(
        deployment.contains("mountPath: /config/") && deployment.contains("name: buildbarn-config")
    );

    // Every variable the configuration reads is set by the Deployment; POD_NAME from
    // the pod's name.
    for (name, _) in EXAMPLE_ENVIRONMENT {
        assert!(
            configuration.contains(&format!("std.extVar('{name}')")),
            "{name} is not used"
        );
        assert!(
            deployment.contains(&format!("- name: {name}")),
            "{name} is not set"
        );
    }
    assert!(deployment.contains("fieldRef:\n                  fieldPath: metadata.name"));

    // The variables are really read: a pod without them cannot start.
    let output = Command::new(env!("CARGO_BIN_EXE_bb-container-expander"))
        .arg("check-config")
        .arg(dir.join("config/expander.jsonnet"))
        .env_remove("POD_NAME")
        .env_remove("POD_IP")
        .env_remove("REGISTRY_USERNAME")
        .env_remove("REGISTRY_PASSWORD")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("external variable is not defined"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // And with them, the log path names the pod.
    let evaluated = evaluate("examples/kubernetes/config/expander.jsonnet");
    assert_eq!(
        string_at(&evaluated, &["global", "logPaths", "0"]),
        "/logs/bb-container-expander-expander-5d8f7c9b4-x2x7q.log"
    );

    // The replicas form a fleet: each reachable at its pod IP on the gRPC port, found
    // through a headless Service that selects them and exposes that port.
    assert!(deployment.contains("fieldRef:\n                  fieldPath: status.podIP"));
    assert_eq!(
        string_at(&evaluated, &["fleet", "selfAddress"]),
        "10.1.2.3:8985"
    );
    let dns_name = string_at(&evaluated, &["fleet", "peersDnsName"]);
    let (host, port) = dns_name.rsplit_once(':').unwrap();
    assert_eq!(port, "8985");
    assert!(deployment.contains("containerPort: 8985"));
    let service = host.split('.').next().unwrap();
    let headless = deployment
        .split("---")
        .find(|doc| doc.contains("kind: Service") && doc.contains(&format!("name: {service}\n")))
        .unwrap_or_else(|| panic!("no Service {service}"));
    assert!(headless.contains("clusterIP: None"), "{headless}");
    assert!(headless.contains("app.kubernetes.io/name: expander"));
    assert!(headless.contains("port: 8985"));
    assert!(host.ends_with(".buildbarn.svc.cluster.local"), "{host}");
    let replicas: u32 = deployment
        .lines()
        .find_map(|l| l.trim().strip_prefix("replicas: "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(replicas > 1);
}

/// The chroot worker's pod: its configurations come from the ConfigMap, the worker
/// mounts FUSE in a volume whose mounts propagate to the runner, bb_runner is
/// installed before either starts, and the variable the worker reads is set.
#[test]
fn kubernetes_chroot_worker_pod_shares_the_build_directory() {
    let dir = root().join("examples/kubernetes");
    let pod = std::fs::read_to_string(dir.join("worker-chroot.yaml")).unwrap();
    let generator = std::fs::read_to_string(dir.join("config/kustomization.yaml")).unwrap();
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap();
    assert!(kustomization.contains("- worker-chroot.yaml"));
    for file in [
        "common.libsonnet",
        "worker-chroot.jsonnet",
        "runner-chroot.jsonnet",
    ] {
        assert!(
            generator.contains(&format!("- {file}")),
            "{file} is not in the ConfigMap"
        );
        assert!(
            pod.contains(&format!("key: {file}")),
            "{file} is not mounted"
        );
    }
    assert!(pod.contains("initContainers:\n        # Copies bb_runner"));
    assert!(pod.contains("- /config/worker-chroot.jsonnet"));
    assert!(pod.contains("- /config/runner-chroot.jsonnet"));
    assert!(pod.contains("privileged: true"));
    assert!(pod.contains("mountPropagation: Bidirectional"));
    assert!(pod.contains("mountPropagation: HostToContainer"));
    assert!(pod.contains("- name: POD_NAME"));
    let worker = std::fs::read_to_string(dir.join("config/worker-chroot.jsonnet")).unwrap();
    assert!(worker.contains("std.extVar('POD_NAME')"));
    // The runner reads bb_runner from the installer's volume and runs as root.
    assert!(pod.contains("- /bb/bb_runner"));
    assert!(pod.contains("runAsUser: 0"));
}

/// Directories a Buildbarn process writes into but does not create: the parents of
/// its block-device files, persistent state directories, build directories and mount
/// points.
fn directories_written(config: &Value) -> std::collections::BTreeSet<String> {
    fn walk(value: &Value, out: &mut std::collections::BTreeSet<String>) {
        match value {
            Value::Object(fields) => {
                for (key, child) in fields {
                    match (key.as_str(), child) {
                        ("file", Value::Object(file)) if file.contains_key("sizeBytes") => {
                            let path = file["path"].as_str().unwrap();
                            out.insert(path.rsplit_once('/').unwrap().0.to_owned());
                        }
                        (
                            "stateDirectoryPath" | "mountPath" | "buildDirectoryPath"
                            | "cacheDirectoryPath",
                            Value::String(path),
                        ) => {
                            out.insert(path.clone());
                        }
                        _ => walk(child, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            _ => {}
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(config, &mut out);
    out
}

/// `host:container` bind mounts of a compose service, in either syntax.
fn compose_binds(compose: &str, service: &str) -> Vec<(String, String)> {
    let mut binds = Vec::new();
    let mut in_service = false;
    let mut source = None;
    for line in compose.lines() {
        let indent = line.len() - line.trim_start().len();
        let content = line.trim();
        if indent == 2 && !content.is_empty() && !content.starts_with('#') {
            in_service = content == format!("{service}:");
            continue;
        }
        if !in_service {
            continue;
        }
        if let Some(short) = content.strip_prefix("- ./") {
            let mut parts = short.split(':');
            binds.push((
                parts.next().unwrap().to_owned(),
                parts.next().unwrap().to_owned(),
            ));
        } else if let Some(s) = content.strip_prefix("source: ./") {
            source = Some(s.to_owned());
        } else if let Some(target) = content.strip_prefix("target: ") {
            binds.push((source.take().unwrap(), target.to_owned()));
        }
    }
    binds
}

/// Every directory the Buildbarn processes write into exists when they start: run.sh
/// creates those of the compose example on the host, an init container those of the
/// Kubernetes worker in its volume. bb_storage and bb_worker create files, not their
/// directories, and a FUSE mount needs its mount point.
#[test]
fn the_directories_the_buildbarn_processes_write_into_are_created() {
    let compose_dir = root().join("examples/docker-compose");
    let compose = std::fs::read_to_string(compose_dir.join("docker-compose.yml")).unwrap();
    let run = std::fs::read_to_string(compose_dir.join("run.sh")).unwrap();
    // What run.sh creates, for both storage shards.
    let created: Vec<String> = run
        .lines()
        .filter(|l| l.contains("mkdir"))
        .flat_map(|l| ["0", "1"].map(|shard| l.replace("$shard", shard).replace('"', "")))
        .flat_map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    for (service, file) in [
        ("worker", "worker.jsonnet"),
        ("storage-0", "storage.jsonnet"),
        ("storage-1", "storage.jsonnet"),
    ] {
        let config = evaluate(&format!("examples/docker-compose/config/{file}"));
        let binds = compose_binds(&compose, service);
        assert!(!binds.is_empty(), "{service} has no bind mounts");
        for directory in directories_written(&config) {
            let (source, target) = binds
                .iter()
                .find(|(_, target)| {
                    directory == *target || directory.starts_with(&format!("{target}/"))
                })
                .unwrap_or_else(|| panic!("{service}: {directory} is in no volume"));
            let host = format!("{source}{}", &directory[target.len()..]);
            assert!(
                created
                    .iter()
                    .any(|c| *c == host || c.starts_with(&format!("{host}/")))
                    || directory == *target,
                "{service} ({file}) writes into {directory}, which is {host} on the host: \
                 run.sh does not create it"
            );
        }
    }

    let pod =
        std::fs::read_to_string(root().join("examples/kubernetes/worker-chroot.yaml")).unwrap();
    let worker = evaluate("examples/kubernetes/config/worker-chroot.jsonnet");
    for directory in directories_written(&worker) {
        assert!(directory.starts_with("/worker"), "{directory}");
        assert!(
            directory == "/worker" || pod.contains(&format!("- {directory}\n")),
            "the worker writes into {directory}, which no init container creates"
        );
    }
}

#[test]
fn dockerfile_builds_the_locked_release_binary_and_runs_it_unprivileged() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(text.contains("cargo build --release --locked"));
    assert_eq!(
        text.matches("\nFROM ").count() + usize::from(text.starts_with("FROM ")),
        2,
        "two stages"
    );
    assert!(text.contains("ca-certificates"));
    assert!(text.contains("\nUSER 65532:65532\n"));
    assert!(text.contains("ENTRYPOINT [\"/usr/local/bin/bb-container-expander\"]"));
    assert!(text.contains("CMD [\"/config/expander.jsonnet\"]"));
    let ignore = std::fs::read_to_string(root().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "target/"));
}
