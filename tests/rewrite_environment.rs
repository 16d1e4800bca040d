//! What a rewritten action finds besides the image's files, in proxy and router mode:
//! the images' `Env` as the base of its environment (`imageEnvironment`), the
//! `platformPropertyRules` applied to its other platform properties, and the early
//! checks (`checkProgramExists`, `requiredDirectories`) that refuse an action with
//! FAILED_PRECONDITION before it reaches a worker. See `rewrite_support` for the
//! harness.

// Command.platform is deprecated in REAPI; the rewrite must still mirror it.
#![allow(deprecated)]

mod rewrite_support;
mod support;

use bb_container_expander::blobstore::get_message;
use bb_container_expander::proto::reapi;
use bb_container_expander::proto::remoteactionrouter::action_router_client::ActionRouterClient;
use bb_container_expander::proto::remoteactionrouter::RouteActionRequest;
use rewrite_support::*;
use serde_json::json;
use support::images::{tar_bytes, Compression, Flavor, Image, ImageBuilder, Layer, TarEntry};
use tonic::Code;

/// A one-layer image of `entries` (plus what chroot workers need) whose config has
/// `config` as its `config` object (`Env`, `WorkingDir`, `User`).
fn image_with_config(entries: &[TarEntry], config: serde_json::Value) -> Image {
    let mut all = env_entries();
    all.extend(entries.iter().cloned());
    ImageBuilder::new(Flavor::Oci)
        .layer(Layer::new(tar_bytes(&all), Compression::Gzip, Flavor::Oci))
        .config_field("config", config)
        .build()
}

fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

fn environment_of(command: &reapi::Command) -> Vec<(String, String)> {
    command
        .environment_variables
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect()
}

/// An action on `images` running `program` with `environment`.
fn action(images: &[&str], program: &str, environment: &[(&str, &str)]) -> ClientAction {
    ClientAction {
        arguments: vec![program.into(), "--version".into()],
        environment: vars(environment),
        ..ClientAction::with_images(images)
    }
}

/// `status` is FAILED_PRECONDITION, and its message contains each of `parts`.
fn assert_refused_with(status: &tonic::Status, parts: &[&str]) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    for part in parts {
        assert!(
            status.message().contains(part),
            "{part:?} not in {status:?}"
        );
    }
}

/// The rewritten Action and Command router mode answers for `stored`.
async fn route(
    cluster: &Cluster,
    expander: &Expander,
    stored: &StoredAction,
) -> Result<(reapi::Action, reapi::Command), tonic::Status> {
    let response = ActionRouterClient::new(expander.channel().await)
        .route_action(RouteActionRequest {
            instance_name: INSTANCE.into(),
            digest_function: reapi::digest_function::Value::Sha256 as i32,
            action: Some(stored.action.clone()),
            request_metadata: None,
        })
        .await?
        .into_inner();
    let action = response.action.expect("an action");
    let command = get_message(
        &*cluster.cas(),
        &instance(),
        action.command_digest.as_ref().unwrap(),
    )
    .await
    .expect("the rewritten Command is in the CAS");
    Ok((action, command))
}

/// Two images with an `Env` each: the first sets PATH, LANG and SHARED, the second
/// SHARED and EXTRA, with a WorkingDir and User no chroot runner honours.
async fn two_images(cluster: &Cluster) -> (String, String) {
    let first = image_with_config(
        &[],
        json!({"Env": ["PATH=/first/bin:/usr/bin", "LANG=C.UTF-8", "SHARED=first"]}),
    );
    let second = image_with_config(
        &[TarEntry::Dir("app".into(), 0o755)],
        json!({"Env": ["SHARED=second", "EXTRA=a=b"], "WorkingDir": "/app", "User": "1000:1000"}),
    );
    cluster.push("test/first", "v1", &first).await;
    cluster.push("test/second", "v1", &second).await;
    (
        cluster.reference("test/first:v1"),
        cluster.reference("test/second:v1"),
    )
}

#[tokio::test]
async fn the_images_env_is_the_base_of_the_environment_in_proxy_mode() {
    let cluster = Cluster::start().await;
    let (first, second) = two_images(&cluster).await;
    let expander = cluster.expander("{}").await;
    let client = action(
        &[&first, &second],
        "/bin/sh",
        &[("TZ", "UTC"), ("PATH", "/bin:/usr/bin")],
    );
    let stored = cluster.store(&client).await;
    let result = expander.execute(stored.request()).await.result();
    assert_eq!(result.exit_code, 0);

    let log = cluster.worker.snapshot();
    let seen = &log.executions[0];
    // Sorted by name; the later image wins over the earlier, the Command over both.
    assert_eq!(
        environment_of(&seen.command),
        vars(&[
            ("EXTRA", "a=b"),
            ("LANG", "C.UTF-8"),
            ("PATH", "/bin:/usr/bin"),
            ("SHARED", "second"),
            ("TZ", "UTC"),
        ])
    );
    // Runs where the Command says, not in the image's WorkingDir.
    assert_eq!(seen.command.working_directory, "src");

    let provenance = &provenance_of(&result)[0];
    let added: Vec<(String, String)> = provenance
        .added_environment_variables
        .iter()
        .map(|v| (v.name.clone(), v.value.clone()))
        .collect();
    assert_eq!(
        added,
        vars(&[("EXTRA", "a=b"), ("LANG", "C.UTF-8"), ("SHARED", "second")])
    );
    let images = &provenance.images;
    assert_eq!(
        (images[0].working_dir.as_str(), images[0].user.as_str()),
        ("", "")
    );
    assert_eq!(
        (images[1].working_dir.as_str(), images[1].user.as_str()),
        ("/app", "1000:1000")
    );
    assert!(images.iter().all(|i| !i.from_cache));

    // A second action on the same images: the trees come from the cache, and the
    // environment from the image records.
    let again = cluster
        .store(&action(&[&first, &second], "/bin/sh", &[("TZ", "CET")]))
        .await;
    let result = expander.execute(again.request()).await.result();
    let provenance = &provenance_of(&result)[0];
    assert!(provenance.images.iter().all(|i| i.from_cache));
    let seen = &cluster.worker.snapshot().executions[1];
    assert_eq!(
        environment_of(&seen.command),
        vars(&[
            ("EXTRA", "a=b"),
            ("LANG", "C.UTF-8"),
            ("PATH", "/first/bin:/usr/bin"),
            ("SHARED", "second"),
            ("TZ", "CET"),
        ])
    );
    expander.stop().await;

    // Switched off, the Command's environment is forwarded as it is.
    let plain = cluster.expander("{ imageEnvironment: false }").await;
    let result = plain.execute(stored.request()).await.result();
    let seen = cluster
        .worker
        .snapshot()
        .executions
        .last()
        .cloned()
        .unwrap();
    assert_eq!(
        environment_of(&seen.command),
        vars(&[("TZ", "UTC"), ("PATH", "/bin:/usr/bin")])
    );
    assert!(provenance_of(&result)[0]
        .added_environment_variables
        .is_empty());
    plain.stop().await;
}

#[tokio::test]
async fn the_images_env_is_the_base_of_the_environment_in_router_mode() {
    let cluster = Cluster::start().await;
    let (first, second) = two_images(&cluster).await;
    let expander = cluster.router("{}").await;
    let stored = cluster
        .store(&action(
            &[&first, &second],
            "/bin/sh",
            &[("SHARED", "command")],
        ))
        .await;
    let (_, command) = route(&cluster, &expander, &stored).await.unwrap();
    assert_eq!(
        environment_of(&command),
        vars(&[
            ("EXTRA", "a=b"),
            ("LANG", "C.UTF-8"),
            ("PATH", "/first/bin:/usr/bin"),
            ("SHARED", "command"),
        ])
    );
    expander.stop().await;
}

/// An image whose tool is found only through the PATH its `Env` sets.
async fn tool_image(cluster: &Cluster) -> String {
    let image = image_with_config(
        &[
            TarEntry::Dir("opt".into(), 0o755),
            TarEntry::Dir("opt/tools".into(), 0o755),
            TarEntry::Dir("opt/tools/bin".into(), 0o755),
            TarEntry::File("opt/tools/bin/mytool".into(), b"#!tool\n".to_vec(), 0o755),
        ],
        json!({"Env": ["PATH=/opt/tools/bin:/usr/bin"]}),
    );
    cluster.push("test/tool", "v1", &image).await;
    cluster.reference("test/tool:v1")
}

#[tokio::test]
async fn the_program_is_checked_on_the_path_the_image_sets_in_proxy_mode() {
    let cluster = Cluster::start().await;
    let reference = tool_image(&cluster).await;
    let expander = cluster.expander("{}").await;

    // A bare name the Command's PATH does not find, but the image's does: forwarded.
    let on_image_path = cluster.store(&action(&[&reference], "mytool", &[])).await;
    let result = expander.execute(on_image_path.request()).await.result();
    assert_eq!(result.exit_code, 0);
    let seen = cluster.worker.snapshot().executions[0].clone();
    assert_eq!(
        environment_of(&seen.command),
        vars(&[("PATH", "/opt/tools/bin:/usr/bin")])
    );

    // The Command's own PATH wins, and misses it: refused, naming image and program.
    let own_path = cluster
        .store(&action(
            &[&reference],
            "mytool",
            &[("PATH", "/bin:/usr/bin")],
        ))
        .await;
    let outcome = expander.execute(own_path.request()).await;
    assert_refused_with(
        outcome.refusal(),
        &[
            &reference,
            "program \"mytool\" is not an executable file in any directory of PATH \"/bin:/usr/bin\"",
        ],
    );

    // An absolute path that is not there.
    let missing = cluster
        .store(&action(&[&reference], "/usr/local/bin/python3", &[]))
        .await;
    assert_refused_with(
        expander.execute(missing.request()).await.refusal(),
        &[
            &reference,
            "program \"/usr/local/bin/python3\" does not exist",
        ],
    );

    // A relative path with a '/' is an input, from the working directory (`src`).
    let input_tool = cluster
        .store(&action(&[&reference], "./build.sh", &[]))
        .await;
    assert_eq!(
        expander
            .execute(input_tool.request())
            .await
            .result()
            .exit_code,
        0
    );
    let missing_input = cluster
        .store(&action(&[&reference], "bazel-out/bin/gen", &[]))
        .await;
    assert_refused_with(
        expander.execute(missing_input.request()).await.refusal(),
        &["program \"bazel-out/bin/gen\" (from working directory \"src\") does not exist"],
    );
    // Only the two actions that passed reached the worker.
    assert_eq!(cluster.worker.snapshot().executions.len(), 2);
    expander.stop().await;

    // Switched off, the action is forwarded and left to the worker.
    let unchecked = cluster.expander("{ checkProgramExists: false }").await;
    assert_eq!(
        unchecked
            .execute(missing.request())
            .await
            .result()
            .exit_code,
        0
    );
    unchecked.stop().await;
}

#[tokio::test]
async fn the_program_is_checked_in_router_mode() {
    let cluster = Cluster::start().await;
    let reference = tool_image(&cluster).await;
    let expander = cluster.router("{}").await;
    let found = cluster.store(&action(&[&reference], "mytool", &[])).await;
    route(&cluster, &expander, &found).await.unwrap();
    let missing = cluster
        .store(&action(&[&reference], "othertool", &[]))
        .await;
    assert_refused_with(
        &route(&cluster, &expander, &missing).await.unwrap_err(),
        &[&reference, "program \"othertool\""],
    );
    expander.stop().await;
}

#[tokio::test]
async fn required_directories_are_added_or_refused_in_proxy_and_router_mode() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let base = cluster.reference("test/base:v1");
    let blocked = image_with_config(&[TarEntry::file("tmp", b"not a directory\n")], json!({}));
    cluster.push("test/blocked", "v1", &blocked).await;
    let blocked = cluster.reference("test/blocked:v1");

    // A configured list, nested paths included.
    let expander = cluster
        .expander("{ requiredDirectories: ['/tmp', '/var/cache/build'] }")
        .await;
    let stored = cluster.store(&ClientAction::with_images(&[&base])).await;
    let result = expander.execute(stored.request()).await.result();
    let seen = cluster.worker.snapshot().executions[0].clone();
    assert!(seen.is_directory("tmp") && seen.is_directory("var/cache/build"));
    assert!(!seen.input_root.contains_key("dev"));
    assert_eq!(
        provenance_of(&result)[0].added_directories,
        vec!["/tmp", "/var/cache/build"]
    );
    // A file where a directory must be: refused before any worker sees it.
    let on_blocked = cluster.store(&ClientAction::with_images(&[&blocked])).await;
    let status = expander
        .execute(on_blocked.request())
        .await
        .refusal()
        .clone();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        format!(
            "Image {blocked}: RequiredDirectoryBlocked: required directory \"/tmp\" cannot be \
             added: it is a regular file"
        )
    );
    assert_eq!(cluster.worker.snapshot().executions.len(), 1);
    expander.stop().await;

    // None configured: nothing added.
    let none = cluster.expander("{ requiredDirectories: [] }").await;
    none.execute(stored.request()).await.result();
    let seen = cluster
        .worker
        .snapshot()
        .executions
        .last()
        .cloned()
        .unwrap();
    assert!(!seen.input_root.contains_key("tmp"));
    none.stop().await;

    // Router mode: the defaults, and the same refusal.
    let routing = cluster.router("{}").await;
    let (routed, _) = route(&cluster, &routing, &stored).await.unwrap();
    let root: reapi::Directory = get_message(
        &*cluster.cas(),
        &instance(),
        routed.input_root_digest.as_ref().unwrap(),
    )
    .await
    .unwrap();
    let names: Vec<&str> = root.directories.iter().map(|d| d.name.as_str()).collect();
    for name in ["dev", "proc", "sys", "tmp"] {
        assert!(names.contains(&name), "{name} not in {names:?}");
    }
    assert_refused_with(
        &route(&cluster, &routing, &on_blocked).await.unwrap_err(),
        &["RequiredDirectoryBlocked"],
    );
    routing.stop().await;
}

/// Rules for the keys of other services, one of each kind.
const RULES: &str = r#"{
  addPlatformProperties: [{ name: 'runner', value: 'chroot' }],
  platformPropertyRules: [
    { name: 'dockerNetwork', action: 'DROP' },
    { name: 'dockerRunAsRoot', value: 'false', action: 'DROP' },
    { name: 'Pool', action: 'RENAME', newName: 'pool' },
    { name: 'size', value: 'xl', action: 'RENAME', newValue: 'large' },
    { name: 'pool', action: 'SET_WHEN_ABSENT', newValue: 'default' },
    { name: 'dockerPrivileged', value: 'true', action: 'REJECT',
      message: 'privileged actions are not offered' },
  ],
}"#;

fn with_properties(reference: &str, extra: &[(&str, &str)]) -> ClientAction {
    let mut properties = vec![("OSFamily", "linux"), ("container-image", reference)];
    properties.extend_from_slice(extra);
    let platform = platform(&properties);
    ClientAction {
        action_platform: Some(platform.clone()),
        command_platform: Some(platform),
        ..ClientAction::with_images(&[reference])
    }
}

fn expected(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    vars(pairs)
}

#[tokio::test]
async fn platform_property_rules_apply_in_proxy_and_router_mode() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let base = cluster.reference("test/base:v1");
    let from_rbe = cluster
        .store(&with_properties(
            &base,
            &[
                ("dockerNetwork", "standard"),
                ("dockerRunAsRoot", "false"),
                ("size", "xl"),
            ],
        ))
        .await;
    let with_pool = cluster
        .store(&with_properties(
            &base,
            &[("Pool", "fast"), ("dockerRunAsRoot", "true")],
        ))
        .await;
    let privileged = cluster
        .store(&with_properties(&base, &[("dockerPrivileged", "true")]))
        .await;
    let first_expected = expected(&[
        ("OSFamily", "linux"),
        ("pool", "default"),
        ("runner", "chroot"),
        ("size", "large"),
    ]);
    let second_expected = expected(&[
        ("OSFamily", "linux"),
        ("dockerRunAsRoot", "true"),
        ("pool", "fast"),
        ("runner", "chroot"),
    ]);

    let expander = cluster.expander(RULES).await;
    expander.execute(from_rbe.request()).await.result();
    expander.execute(with_pool.request()).await.result();
    let log = cluster.worker.snapshot();
    for (seen, expected) in log
        .executions
        .iter()
        .zip([&first_expected, &second_expected])
    {
        assert_eq!(&pairs(seen.action.platform.as_ref()), expected);
        assert_eq!(&pairs(seen.command.platform.as_ref()), expected);
    }
    let status = expander
        .execute(privileged.request())
        .await
        .refusal()
        .clone();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.message(),
        "Platform property dockerPrivileged=true is refused by platformPropertyRules[5] \
         (REJECT dockerPrivileged=true): privileged actions are not offered"
    );
    assert_eq!(cluster.worker.snapshot().executions.len(), 2);
    expander.stop().await;

    let routing = cluster.router(RULES).await;
    for (stored, expected) in [(&from_rbe, &first_expected), (&with_pool, &second_expected)] {
        let (action, command) = route(&cluster, &routing, stored).await.unwrap();
        assert_eq!(&pairs(action.platform.as_ref()), expected);
        assert_eq!(&pairs(command.platform.as_ref()), expected);
    }
    assert_refused_with(
        &route(&cluster, &routing, &privileged).await.unwrap_err(),
        &["platformPropertyRules[5]"],
    );
    routing.stop().await;
}
