//! The `bb-container-expander expand` command, run as the built binary against a real
//! registry (`docker-registry` on 127.0.0.1): its JSON lines, `--materialize`, `--platform`,
//! `--config` with credentials, and failures (non-zero exit, an `error` line, no password
//! anywhere in the output).

mod image_common;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use serde_json::Value;

use image_common::*;
use support::images::{
    dir, exe, file, symlink, tar_bytes, whiteout, Compression, Flavor, Image, ImageBuilder,
    IndexBuilder, Layer, TarEntry,
};
use support::registry_server::RegistryServer;

const BINARY: &str = env!("CARGO_BIN_EXE_bb-container-expander");

/// Runs the binary with `args`, off the async runtime's threads.
async fn run(args: Vec<String>) -> Output {
    run_with_env(args, &[]).await
}

/// [`run`] with environment variables set.
async fn run_with_env(args: Vec<String>, env: &[(&str, &str)]) -> Output {
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(BINARY)
            .args(&args)
            .env("RUST_LOG", "info")
            .envs(env)
            .output()
            .expect("run bb-container-expander")
    })
    .await
    .unwrap()
}

/// The JSON lines on standard output.
fn json_lines(output: &Output) -> Vec<Value> {
    String::from_utf8(output.stdout.clone())
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
        })
        .collect()
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn app_image(flavor: Flavor, arch: &str) -> Image {
    ImageBuilder::new(flavor)
        .platform("linux", arch, "")
        .layer(Layer::new(
            tar_bytes(&[
                dir("usr/bin"),
                exe("usr/bin/hello", &format!("#!/bin/sh\necho {arch}\n")),
                file("etc/hello.conf", "greeting=hi\n"),
                symlink("bin", "usr/bin"),
                symlink("etc/alias", "/etc/hello.conf"),
                dir("var/empty"),
            ]),
            Compression::Gzip,
            flavor,
        ))
        .layer(Layer::new(
            tar_bytes(&[
                whiteout("etc/.wh.alias"),
                TarEntry::Link("usr/bin/hi".into(), "usr/bin/hello".into(), 0o755),
                file("usr/share/doc/README", "docs\n"),
            ]),
            Compression::Zstd,
            flavor,
        ))
        .build()
}

fn app_tree(arch: &str) -> Tree {
    let script = format!("#!/bin/sh\necho {arch}\n");
    tree(&[
        ("bin", L("usr/bin")),
        ("etc", D),
        ("etc/hello.conf", F("greeting=hi\n")),
        ("usr", D),
        ("usr/bin", D),
        ("usr/bin/hello", X(&script)),
        ("usr/bin/hi", X(&script)),
        ("usr/share", D),
        ("usr/share/doc", D),
        ("usr/share/doc/README", F("docs\n")),
        ("var", D),
        ("var/empty", D),
    ])
}

#[tokio::test]
async fn expand_prints_one_json_line_per_image() {
    let server = RegistryServer::start();
    let image = app_image(Flavor::Oci, "amd64");
    server
        .pusher()
        .push_image("test/app", Some("v1"), &image)
        .await;
    let reference = format!("docker://{}/test/app:v1", server.host());
    let output = run(args(&["expand", &reference])).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let line = &lines[0];
    assert_eq!(line["image"], reference.as_str());
    assert_eq!(line["manifestDigest"], image.manifest_digest.as_str());
    assert!(line.get("error").is_none());

    // The same tree as the library computes in this process.
    let env = Env::new();
    let expander = env.expander(registry_for(&server.host()), options());
    let expanded = env.expand(&expander, &reference).await.unwrap();
    assert_eq!(
        line["rootDirectoryDigest"]["hash"],
        expanded.root_directory_digest.hash.as_str()
    );
    assert_eq!(
        line["rootDirectoryDigest"]["sizeBytes"],
        expanded.root_directory_digest.size_bytes
    );
    assert_trees_eq(&env.tree(&expanded).await, &app_tree("amd64"));
    let stats = &line["stats"];
    assert_eq!(stats["files"], 4);
    assert_eq!(stats["directories"], 7);
    assert_eq!(stats["symlinks"], 1);
    assert_eq!(stats["layers"], 2);
    assert_eq!(stats["skippedSpecialFiles"], 0);
    assert_eq!(stats["layersIngested"], 2);
    assert_eq!(stats["fromCache"], false);
    let seconds = line["seconds"].as_object().expect("seconds");
    for step in [
        "resolve",
        "fetchMetadata",
        "ingest",
        "apply",
        "upload",
        "total",
    ] {
        let value = seconds[step]
            .as_f64()
            .unwrap_or_else(|| panic!("seconds.{step}"));
        assert!((0.0..60.0).contains(&value), "seconds.{step} = {value}");
    }
    assert!(seconds["total"].as_f64() >= seconds["ingest"].as_f64());
    // Progress on stderr: one line per layer ingested.
    let stderr = String::from_utf8_lossy(&output.stderr);
    for layer in &image.layers {
        assert!(
            stderr.contains(&format!("Ingested layer {}", layer.digest)),
            "{stderr}"
        );
    }
}

#[tokio::test]
async fn materialize_writes_the_tree_with_modes_and_symlinks() {
    let server = RegistryServer::start();
    let image = app_image(Flavor::Docker, "amd64");
    server
        .pusher()
        .push_image("test/app", Some("v1"), &image)
        .await;
    let target = tempfile::tempdir().unwrap();
    let root = target.path().join("rootfs");
    let reference = format!("{}/test/app:v1", server.host());
    let output = run(args(&[
        "expand",
        "--materialize",
        root.to_str().unwrap(),
        &reference,
    ]))
    .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(json_lines(&output).len(), 1);
    assert_trees_eq(&read_directory(&root, None), &app_tree("amd64"));
    let mode = |path: &str| {
        std::fs::symlink_metadata(root.join(path))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("usr/bin/hello"), 0o755);
    assert_eq!(mode("usr/bin/hi"), 0o755);
    assert_eq!(mode("etc/hello.conf"), 0o644);
    assert_eq!(mode("usr/share/doc/README"), 0o644);
    assert_eq!(
        std::fs::read_link(root.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
    assert!(root.join("var/empty").is_dir());
    // The symlink resolves inside the materialized tree as it would in a chroot.
    assert_eq!(
        std::fs::read(root.join("bin/hello")).unwrap(),
        b"#!/bin/sh\necho amd64\n"
    );

    // A non-empty target is refused, with an error line.
    let output = run(args(&[
        "expand",
        "--materialize",
        root.to_str().unwrap(),
        &reference,
    ]))
    .await;
    assert!(!output.status.success());
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        lines[0]["error"]["code"], "FailedPrecondition",
        "{}",
        lines[0]
    );
    let message = lines[0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&reference) && message.contains("is not empty"),
        "{message}"
    );
}

#[tokio::test]
async fn platform_flag_picks_from_an_index() {
    let server = RegistryServer::start();
    let amd64 = app_image(Flavor::Oci, "amd64");
    let arm64 = app_image(Flavor::Oci, "arm64");
    let index = IndexBuilder::new(Flavor::Oci)
        .image(&amd64)
        .image(&arm64)
        .build();
    server
        .pusher()
        .push_index("test/multi", Some("v1"), &index, &[&amd64, &arm64])
        .await;
    let reference = format!("{}/test/multi:v1", server.host());
    for (platform, image) in [(None, &amd64), (Some("linux/arm64"), &arm64)] {
        let target = tempfile::tempdir().unwrap();
        let mut command = args(&["expand", "--materialize", target.path().to_str().unwrap()]);
        if let Some(platform) = platform {
            command.extend(args(&["--platform", platform]));
        }
        command.push(reference.clone());
        let output = run(command).await;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = &json_lines(&output)[0];
        assert_eq!(line["manifestDigest"], image.manifest_digest.as_str());
        assert_eq!(line["resolvedDigest"], index.digest.as_str());
        assert_trees_eq(
            &read_directory(target.path(), None),
            &app_tree(&image.platform.1),
        );
    }
}

#[tokio::test]
async fn a_failing_image_gives_an_error_line_and_a_non_zero_exit() {
    let server = RegistryServer::start();
    let image = app_image(Flavor::Oci, "amd64");
    server
        .pusher()
        .push_image("test/app", Some("v1"), &image)
        .await;
    let good = format!("{}/test/app:v1", server.host());
    let missing = format!("{}/test/app:nope", server.host());
    let output = run(args(&["expand", &missing, &good])).await;
    assert!(!output.status.success());
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["image"], missing.as_str());
    assert_eq!(lines[0]["error"]["code"], "NotFound");
    let message = lines[0]["error"]["message"].as_str().unwrap();
    assert!(message.contains(&missing), "{message}");
    assert!(lines[0].get("rootDirectoryDigest").is_none());
    // The other image is still expanded.
    assert_eq!(lines[1]["manifestDigest"], image.manifest_digest.as_str());

    // Bad usage is an error too.
    let output = run(args(&["expand"])).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Usage"));
}

fn write_config(directory: &Path, registries: &str) -> String {
    write_config_with(directory, registries, "")
}

/// [`write_config`] with more `containerImages` fields (`extra`, ending in a comma).
fn write_config_with(directory: &Path, registries: &str, extra: &str) -> String {
    let path = directory.join("expand.jsonnet");
    std::fs::write(
        &path,
        format!(
            "{{\n\
             grpcServers: [{{ listenAddresses: ['127.0.0.1:0'], authenticationPolicy: {{ allow: {{}} }} }}],\n\
             blobstore: {{\n\
               contentAddressableStorage: {{ memory: {{ maximumSizeBytes: 1024 * 1024 * 1024 }} }},\n\
               actionCache: {{ memory: {{ maximumSizeBytes: 64 * 1024 * 1024 }} }},\n\
             }},\n\
             containerImages: {{ registries: {registries}, {extra} maximumRetries: 1, initialRetryDelay: '0.05s' }},\n\
             }}\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn config_supplies_credentials_and_the_allow_list() {
    let server = RegistryServer::start_with_basic_auth("cli-user", "cli-Pa55word");
    let image = app_image(Flavor::Oci, "amd64");
    server
        .pusher()
        .push_image("private/app", Some("v1"), &image)
        .await;
    let reference = format!("{}/private/app:v1", server.host());
    let directory = tempfile::tempdir().unwrap();

    let good = write_config(
        directory.path(),
        &format!(
            "[{{ hosts: ['{}'], credentials: {{ basic: {{ username: 'cli-user', password: 'cli-Pa55word' }} }} }}]",
            server.host()
        ),
    );
    let output = run(args(&["expand", "--config", &good, &reference])).await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        json_lines(&output)[0]["manifestDigest"],
        image.manifest_digest.as_str()
    );

    let wrong = write_config(
        directory.path(),
        &format!(
            "[{{ hosts: ['{}'], credentials: {{ basic: {{ username: 'cli-user', password: 'Wr0ng-cli-pass' }} }} }}]",
            server.host()
        ),
    );
    let output = run(args(&["expand", "--config", &wrong, &reference])).await;
    assert!(!output.status.success());
    let line = &json_lines(&output)[0];
    assert_eq!(line["error"]["code"], "PermissionDenied", "{line}");
    let everything = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        !everything.contains("Wr0ng-cli-pass"),
        "the password leaked: {everything}"
    );

    // A registry the configuration does not list is refused.
    let other = write_config(directory.path(), "[{ hosts: ['registry.example'] }]");
    let output = run(args(&["expand", "--config", &other, &reference])).await;
    assert!(!output.status.success());
    let line = &json_lines(&output)[0];
    assert_eq!(line["error"]["code"], "PermissionDenied", "{line}");
    assert!(
        line["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not allowed"),
        "{line}"
    );
}

/// Registry requests go through `httpProxy` and never through a proxy named by the
/// environment (which would resolve names out of reach of the private-address rule).
#[tokio::test]
async fn proxies_come_from_the_configuration_not_the_environment() {
    let server = RegistryServer::start();
    let image = app_image(Flavor::Oci, "amd64");
    server
        .pusher()
        .push_image("test/proxied", Some("v1"), &image)
        .await;
    let reference = format!("{}/test/proxied:v1", server.host());
    let directory = tempfile::tempdir().unwrap();
    // A port nothing listens on: any request sent to it fails.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_proxy = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let registries = format!("[{{ hosts: ['{}'] }}]", server.host());

    let direct = write_config(directory.path(), &registries);
    let env = [
        ("HTTP_PROXY", dead_proxy.as_str()),
        ("HTTPS_PROXY", dead_proxy.as_str()),
        ("ALL_PROXY", dead_proxy.as_str()),
        ("http_proxy", dead_proxy.as_str()),
        ("https_proxy", dead_proxy.as_str()),
        ("all_proxy", dead_proxy.as_str()),
    ];
    let output = run_with_env(args(&["expand", "--config", &direct, &reference]), &env).await;
    assert!(
        output.status.success(),
        "an environment proxy was used: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        json_lines(&output)[0]["manifestDigest"],
        image.manifest_digest.as_str()
    );

    let proxied = write_config_with(
        directory.path(),
        &registries,
        &format!("httpProxy: '{dead_proxy}',"),
    );
    let output = run(args(&["expand", "--config", &proxied, &reference])).await;
    assert!(!output.status.success(), "httpProxy was not used");
    let line = &json_lines(&output)[0];
    assert_eq!(line["error"]["code"], "Unavailable", "{line}");
}
