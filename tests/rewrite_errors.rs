//! Bad input to the Execute rewrite: each refusal has the code that tells the client
//! whose mistake it is, a message naming the image or the cause, and nothing reaches
//! the scheduler. See `rewrite_support` for the harness.

mod rewrite_support;
mod support;

use bb_container_expander::blobstore::Instance;
use bb_container_expander::digest::DigestFunction;
use bb_container_expander::proto::reapi;
use bb_container_expander::status::missing_blobs_of;
use rewrite_support::*;
use support::images::TarEntry;
use support::registry_server::RegistryServer;
use tonic::Code;

fn subject(digest: &reapi::Digest) -> String {
    format!("blobs/{}/{}", digest.hash, digest.size_bytes)
}

/// Executes `action`, expects a refusal and that nothing was forwarded.
async fn refused(cluster: &Cluster, expander: &Expander, action: &ClientAction) -> tonic::Status {
    let stored = cluster.store(action).await;
    refused_request(cluster, expander, stored.request()).await
}

async fn refused_request(
    cluster: &Cluster,
    expander: &Expander,
    request: reapi::ExecuteRequest,
) -> tonic::Status {
    let outcome = expander.execute(request).await;
    let status = outcome.refusal().clone();
    assert!(
        cluster.worker.log().execute_requests.is_empty(),
        "nothing may be forwarded on failure ({status:?})"
    );
    status
}

/// Asserts that `status` has `code`, a message that starts with `prefix` and contains
/// every one of `parts`.
fn assert_refusal(status: &tonic::Status, code: Code, prefix: &str, parts: &[&str]) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().starts_with(prefix), "{status:?}");
    for part in parts {
        assert!(status.message().contains(part), "{status:?}");
    }
}

/// The prefix of every refusal to expand `reference`.
fn expand_failure(reference: &str) -> String {
    format!("Failed to expand image {reference}: ")
}

/// Executes an action that names `reference` only; expects a refusal.
async fn refused_image(cluster: &Cluster, expander: &Expander, reference: &str) -> tonic::Status {
    refused(cluster, expander, &ClientAction::with_images(&[reference])).await
}

#[tokio::test]
async fn images_that_cannot_be_expanded_are_refused_with_the_code_of_the_cause() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    // (configuration, reference, code, what the message names)
    let cases = [
        // A malformed reference is the client's mistake.
        (
            "{}",
            format!("docker://{}/test/x@sha256:1234", cluster.registry.host()),
            Code::InvalidArgument,
            "Invalid image reference",
        ),
        // So is a registry that is not allowed.
        (
            "{}",
            "docker://registry.example.com/test/x:v1".to_string(),
            Code::PermissionDenied,
            "registry.example.com",
        ),
        // An image larger than the limit.
        (
            "{ maximumImageSizeBytes: '100' }",
            cluster.reference("test/base:v1"),
            Code::ResourceExhausted,
            "exceeds the maximum image size of 100 bytes",
        ),
    ];
    for (configuration, reference, code, cause) in cases {
        let expander = cluster.expander(configuration).await;
        let status = refused_image(&cluster, &expander, &reference).await;
        assert_refusal(&status, code, &expand_failure(&reference), &[cause]);
        expander.stop().await;
    }
}

#[tokio::test]
async fn missing_image_is_failed_precondition() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    for reference in [
        cluster.reference("test/missing:v1"),
        cluster.reference("test/base:no-such-tag"),
    ] {
        let status = refused_image(&cluster, &expander, &reference).await;
        // Not NOT_FOUND: on an Execute stream that reads as "operation not found".
        assert_refusal(
            &status,
            Code::FailedPrecondition,
            &expand_failure(&reference),
            &[],
        );
        assert!(
            missing_blobs_of(&status).is_empty(),
            "not a missing blob of the client's"
        );
    }
    expander.stop().await;
}

#[tokio::test]
async fn wrong_registry_credentials_are_permission_denied() {
    let cluster = Cluster::start().await;
    let private =
        tokio::task::spawn_blocking(|| RegistryServer::start_with_basic_auth("puller", "right"))
            .await
            .unwrap();
    private
        .pusher()
        .push_image("test/private", Some("v1"), &base_image())
        .await;
    let expander = cluster
        .expander_with(ExpanderSettings {
            scheduler: true,
            registry_hosts: vec![],
            container_images: format!(
                "{{ registries: [{{ hosts: ['{}'], credentials: {{ basic: {{ username: 'puller', password: 'wrong' }} }} }}] }}",
                private.host()
            ),
        })
        .await;
    let reference = format!("docker://{}/test/private:v1", private.host());
    let status = refused_image(&cluster, &expander, &reference).await;
    assert_refusal(
        &status,
        Code::PermissionDenied,
        &expand_failure(&reference),
        &[],
    );
    assert!(
        !status.message().contains("wrong"),
        "no secrets in messages: {status:?}"
    );
    expander.stop().await;
}

#[tokio::test]
async fn image_without_usr_bin_env_is_failed_precondition() {
    let cluster = Cluster::start().await;
    let scratch = image_of(&[
        TarEntry::Dir("etc".into(), 0o755),
        TarEntry::file("etc/os-release", b"ID=scratch\n"),
    ]);
    let not_executable = image_of(&[
        TarEntry::Dir("usr".into(), 0o755),
        TarEntry::Dir("usr/bin".into(), 0o755),
        TarEntry::file("usr/bin/env", b"not executable\n"),
    ]);
    cluster.push("test/scratch", "v1", &scratch).await;
    cluster.push("test/noexec", "v1", &not_executable).await;
    let expander = cluster.expander("{}").await;
    for (name, problem) in [
        ("test/scratch:v1", "does not exist"),
        ("test/noexec:v1", "is a file that is not executable"),
    ] {
        let reference = cluster.reference(name);
        let status = refused_image(&cluster, &expander, &reference).await;
        assert_refusal(
            &status,
            Code::FailedPrecondition,
            "",
            &[&format!("Image {reference} "), "MissingUsrBinEnv", problem],
        );
        assert!(missing_blobs_of(&status).is_empty());
    }
    expander.stop().await;

    // The check can be turned off (for workers that do not chroot); so can the check
    // of the program, which this image lacks too.
    let lenient = cluster
        .expander("{ requireUsrBinEnv: false, checkProgramExists: false }")
        .await;
    let stored = cluster
        .store(&ClientAction::with_images(&[
            &cluster.reference("test/scratch:v1")
        ]))
        .await;
    lenient.execute(stored.request()).await.result();
    assert_eq!(
        cluster.worker.log().executions[0].file("etc/os-release"),
        Some(&b"ID=scratch\n"[..])
    );
    lenient.stop().await;
}

#[tokio::test]
async fn input_clashing_with_the_image_is_invalid_argument_under_strict_policy() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");
    let cases = [
        // An input directory must never silently replace the image's `lib -> usr/lib`.
        (
            InputTree::new().file("lib/libfoo.so", b"foo\n"),
            r#"InputRootConflict: "lib": the image has a symlink and the input root has a directory"#,
        ),
        (
            InputTree::new().file("etc/os-release", b"ID=mine\n"),
            r#"InputRootConflict: "etc/os-release": the image has a regular file and the input root has a different regular file"#,
        ),
        (
            InputTree::new().file("usr/bin/env/x", b"x\n"),
            r#"InputRootConflict: "usr/bin/env": the image has a regular file and the input root has a directory"#,
        ),
    ];
    for (inputs, cause) in cases {
        let action = ClientAction {
            inputs: inputs.dir("src"),
            ..ClientAction::with_images(&[&reference])
        };
        let status = refused(&cluster, &expander, &action).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(
            status.message(),
            format!("Failed to merge the input root with the image: {cause}")
        );
    }
    expander.stop().await;
}

#[tokio::test]
async fn paths_the_image_blocks_are_invalid_argument() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let reference = cluster.reference("test/base:v1");
    // (configuration, action, message prefix, what the message names)
    let cases = [
        // A working directory that exists nowhere.
        (
            "{}",
            ClientAction {
                working_directory: "nowhere".into(),
                ..ClientAction::with_images(&[&reference])
            },
            "Invalid working directory: WorkingDirectoryNotFound",
            "\"nowhere\"",
        ),
        // An output whose parent is the image's `lib` symlink.
        (
            "{}",
            ClientAction {
                working_directory: String::new(),
                output_paths: vec!["lib/out.so".into()],
                ..ClientAction::with_images(&[&reference])
            },
            "Invalid output path: OutputPathBlockedByImage",
            "\"lib\"",
        ),
        // A graft directory that goes through the image's `lib` symlink.
        (
            "{ inputRootDirectory: 'lib/exec' }",
            ClientAction::with_images(&[&reference]),
            "Failed to merge the input root with the image: MountPathThroughSymlink",
            "",
        ),
    ];
    for (configuration, action, prefix, names) in cases {
        let expander = cluster.expander(configuration).await;
        let status = refused(&cluster, &expander, &action).await;
        assert_refusal(&status, Code::InvalidArgument, prefix, &[names]);
        expander.stop().await;
    }
}

#[tokio::test]
async fn missing_action_command_or_input_root_is_failed_precondition_with_the_digest() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");
    let instance = Instance::new(INSTANCE, DigestFunction::Sha256);

    // The Action (an action with or without image: the digest is all there is).
    let stored = ClientAction::with_images(&[&reference])
        .store(&*cluster.cas())
        .await;
    assert!(cluster.memory_cas.remove(&instance, &stored.digest));
    let status = refused_request(&cluster, &expander, stored.request()).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(missing_blobs_of(&status), vec![subject(&stored.digest)]);
    assert!(status.message().starts_with("Action "), "{status:?}");

    // The Command.
    let action = ClientAction {
        arguments: vec!["no-command".into()],
        ..ClientAction::with_images(&[&reference])
    };
    let stored = action.store(&*cluster.cas()).await;
    assert!(cluster.memory_cas.remove(&instance, &stored.command_digest));
    let status = refused_request(&cluster, &expander, stored.request()).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        missing_blobs_of(&status),
        vec![subject(&stored.command_digest)]
    );
    assert!(status.message().starts_with("Command "), "{status:?}");

    // The input root.
    let action = ClientAction {
        inputs: InputTree::new().file("src/only-here.c", b"1\n"),
        ..ClientAction::with_images(&[&reference])
    };
    let stored = action.store(&*cluster.cas()).await;
    assert!(cluster.memory_cas.remove(&instance, &stored.inputs.root));
    let status = refused_request(&cluster, &expander, stored.request()).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        missing_blobs_of(&status),
        vec![subject(&stored.inputs.root)]
    );

    // An input Directory where the inputs overlap the image (read by the merge).
    let action = ClientAction {
        inputs: InputTree::new()
            .file("src/main.c", b"2\n")
            .file("usr/lib/libmine.so", b"mine\n"),
        ..ClientAction::with_images(&[&reference])
    };
    let stored = action.store(&*cluster.cas()).await;
    let (usr_lib, _) = stored.inputs.directories["usr/lib"].clone();
    assert!(cluster.memory_cas.remove(&instance, &usr_lib));
    let status = refused_request(&cluster, &expander, stored.request()).await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        missing_blobs_of(&status),
        vec![subject(&usr_lib)],
        "the Directory that is missing, not the root"
    );
    expander.stop().await;
}

#[tokio::test]
async fn missing_input_blobs_the_merge_does_not_read_are_reported_by_the_worker() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");
    let instance = Instance::new(INSTANCE, DigestFunction::Sha256);
    let action = ClientAction {
        inputs: InputTree::new().file("src/main.c", b"lost\n"),
        ..ClientAction::with_images(&[&reference])
    };
    let stored = action.store(&*cluster.cas()).await;
    let lost = DigestFunction::Sha256.digest_of(b"lost\n");
    assert!(cluster.memory_cas.remove(&instance, &lost));
    let outcome = expander.execute(stored.request()).await;
    assert!(outcome.error.is_none(), "{outcome:?}");
    let response = outcome.response();
    let status = response.status.unwrap();
    assert_eq!(status.code, Code::FailedPrecondition as i32);
    let status = tonic::Status::with_details(
        Code::FailedPrecondition,
        status.message.clone(),
        prost::Message::encode_to_vec(&status).into(),
    );
    assert_eq!(missing_blobs_of(&status), vec![subject(&lost)]);
    let last = outcome.operations.last().unwrap();
    assert_eq!(
        operation_metadata(last).action_digest.as_ref(),
        Some(&stored.digest)
    );
    assert_eq!(
        cluster
            .get_action_result(&stored.digest)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "no write-back of a failure"
    );
    // The expander cannot tell the client's blobs from the image's: it expanded again
    // and retried once, then relayed the worker's verdict.
    let log = cluster.worker.snapshot();
    assert_eq!(log.execute_requests.len(), 2);
    assert_eq!(log.incomplete_inputs, vec![vec![lost.clone()], vec![lost]]);
    let finals: Vec<_> = outcome
        .real_operations()
        .into_iter()
        .filter(|op| op.done)
        .collect();
    assert_eq!(
        finals.len(),
        1,
        "only the second attempt's verdict is relayed"
    );
    expander.stop().await;
}
