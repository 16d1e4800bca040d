//! Every configuration the project ships must pass `check-config`, through the real
//! binary; and a misspelled field must be refused with its name.

use std::path::{Path, PathBuf};
use std::process::Command;

fn jsonnet_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            jsonnet_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "jsonnet") {
            out.push(path);
        }
    }
}

fn check_config(path: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bb-container-expander"))
        // What the Kubernetes example takes from its pod (fieldRef and a Secret) as
        // std.extVar values; tests/deployment_configs.rs checks it in detail.
        .env("POD_NAME", "expander-0")
        .env("POD_IP", "10.0.0.5")
        .env("REGISTRY_USERNAME", "puller")
        .env("REGISTRY_PASSWORD", "example-password")
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap()
}

#[test]
fn every_shipped_expander_configuration_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    jsonnet_files(&root.join("configs"), &mut files);
    // Expander configurations in the examples are named after the binary.
    let mut examples = Vec::new();
    jsonnet_files(&root.join("examples"), &mut examples);
    files.extend(examples.into_iter().filter(|p| {
        p.file_name()
            .unwrap()
            .to_string_lossy()
            .contains("expander")
    }));
    assert!(!files.is_empty());
    for file in files {
        let output = check_config(&file);
        assert!(
            output.status.success(),
            "{} failed check-config: {}",
            file.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn misspelled_field_is_refused_and_named() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(root.join("configs/bb_container_expander.jsonnet"))
        .unwrap()
        .replace("listenAddresses: [':8985']", "listenAdresses: [':8985']");
    std::fs::copy(
        root.join("configs/common.libsonnet"),
        dir.path().join("common.libsonnet"),
    )
    .unwrap();
    let path = dir.path().join("typo.jsonnet");
    std::fs::write(&path, text).unwrap();
    let output = check_config(&path);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("grpcServers[0].listenAdresses: unknown field `listenAdresses`"),
        "{stderr}"
    );
}

#[test]
fn configuration_from_standard_input() {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bb-container-expander"))
        .args(["check-config", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            br#"{
              grpcServers: [{ listenAddresses: [':8985'], authenticationPolicy: { allow: {} } }],
              blobstore: {
                contentAddressableStorage: { memory: { maximumSizeBytes: 1024 } },
                actionCache: { memory: { maximumSizeBytes: 1024 } },
              },
              scheduler: { address: 'scheduler:8982' },
            }"#,
        )
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
