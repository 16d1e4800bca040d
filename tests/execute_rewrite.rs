//! The Execute rewrite end to end in one process: a client → the expander (real
//! configuration, real servers) → a fake scheduler + worker that materialises the
//! forwarded input root from the shared CAS; images come from a real docker-registry.
//! See `rewrite_support` for the harness.

// Command.platform is deprecated in REAPI; the rewrite must still mirror it.
#![allow(deprecated)]

mod rewrite_support;
mod support;

use bb_container_expander::proto::reapi;
use bb_container_expander::testutil::fake_worker::{InputNode, WorkerBehaviour};
use rewrite_support::*;
use support::images::TarEntry;
use tonic::Code;

#[tokio::test]
async fn image_files_inputs_and_working_directory_reach_the_worker() {
    let cluster = Cluster::start().await;
    let manifest = cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");
    let stored = cluster
        .store(&ClientAction::with_images(&[&reference]))
        .await;

    let outcome = expander.execute(stored.request()).await;
    let result = outcome.result();
    assert_eq!(result.exit_code, 0);

    let log = cluster.worker.snapshot();
    assert_eq!(log.executions.len(), 1);
    let seen = &log.executions[0];
    // The image.
    assert!(seen.is_executable("usr/bin/env"));
    assert_eq!(
        seen.file("usr/lib/libc.so.6"),
        Some(&b"not really libc\n"[..])
    );
    assert_eq!(seen.file("etc/os-release"), Some(&b"ID=base\n"[..]));
    assert_eq!(seen.symlink("lib"), Some("usr/lib"));
    assert!(seen.is_directory("workspace"));
    // The client's inputs, at the root.
    assert_eq!(
        seen.file("src/main.c"),
        Some(&b"int main() { return 0; }\n"[..])
    );
    assert!(seen.is_executable("src/build.sh"));
    assert_eq!(seen.file("data/input.txt"), Some(&b"input data\n"[..]));
    // The directories a chroot runner needs, added empty (requiredDirectories).
    for added in ["dev", "proc", "sys", "tmp"] {
        assert!(seen.is_directory(added), "{added}");
    }
    // Nothing else.
    let paths: Vec<&str> = seen.input_root.keys().map(String::as_str).collect();
    assert_eq!(
        paths,
        vec![
            "bin",
            "data",
            "data/input.txt",
            "dev",
            "etc",
            "etc/os-release",
            "lib",
            "proc",
            "src",
            "src/build.sh",
            "src/main.c",
            "sys",
            "tmp",
            "usr",
            "usr/bin",
            "usr/bin/env",
            "usr/bin/sh",
            "usr/bin/true",
            "usr/lib",
            "usr/lib/libc.so.6",
            "workspace",
        ]
    );
    // The Command: only working directory (unchanged here), platform and the
    // variables of the image's Env the Command does not set (here none: the test
    // image's Env has only PATH, which the Command sets) may differ.
    assert_eq!(seen.command.working_directory, "src");
    assert!(seen.is_directory(&seen.command.working_directory));
    assert_eq!(seen.command.arguments, stored.command.arguments);
    assert_eq!(seen.command.output_paths, stored.command.output_paths);
    assert_eq!(
        seen.command.environment_variables,
        stored.command.environment_variables
    );
    // The Action: a new digest, the merged root, the client's timeout and flags.
    assert_ne!(seen.action_digest(), &stored.digest);
    assert_eq!(seen.action.timeout, stored.action.timeout);
    assert_eq!(seen.action.do_not_cache, stored.action.do_not_cache);
    // The result carries the provenance of the expansion.
    let provenance = provenance_of(&result);
    assert_eq!(provenance.len(), 1, "{result:?}");
    assert_eq!(provenance[0].images.len(), 1);
    assert_eq!(provenance[0].images[0].reference, reference);
    assert_eq!(provenance[0].images[0].manifest_digest, manifest);
    assert_eq!(
        provenance[0].merged_input_root_digest,
        seen.action.input_root_digest
    );
    assert_eq!(
        provenance[0].original_action_digest.as_ref(),
        Some(&stored.digest)
    );
    assert_eq!(
        provenance[0].rewritten_action_digest.as_ref(),
        Some(seen.action_digest())
    );
    assert_eq!(provenance[0].instance_name, INSTANCE);
    assert_eq!(
        provenance[0].added_directories,
        vec!["/dev", "/proc", "/sys", "/tmp"]
    );
    assert!(provenance[0].added_environment_variables.is_empty());
    assert!(
        !provenance[0].images[0].from_cache,
        "expanded for this action"
    );
    assert!(provenance[0].expand_duration.is_some());
    assert!(provenance[0].rewrite_duration.is_some());
    expander.stop().await;
}

#[tokio::test]
async fn action_without_image_passes_through_untouched() {
    let cluster = Cluster::start().await;
    let expander = cluster.expander("{}").await;
    // One action with a platform but no image, one (an older client) with the
    // platform only in the Command.
    let plain = ClientAction::with_images(&[]);
    let old_client = ClientAction {
        action_platform: None,
        ..ClientAction::with_images(&[])
    };
    for (i, action) in [plain, old_client].iter().enumerate() {
        let stored = cluster.store(action).await;
        let request = stored.request();
        let outcome = expander.execute(request.clone()).await;
        let result = outcome.result();
        assert!(provenance_of(&result).is_empty(), "{result:?}");
        for op in &outcome.operations {
            assert_eq!(
                operation_metadata(op).action_digest.as_ref(),
                Some(&stored.digest)
            );
        }
        let log = cluster.worker.snapshot();
        assert_eq!(log.execute_requests[i], request, "forwarded as it came");
        let seen = &log.executions[i];
        assert_eq!(seen.action, stored.action);
        assert_eq!(seen.command, stored.command);
        assert_eq!(
            seen.input_root.len(),
            5,
            "only the client's inputs: {:?}",
            seen.input_root
        );
    }
    expander.stop().await;
}

#[tokio::test]
async fn operations_are_relayed_with_the_clients_action_digest() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let stored = cluster
        .store(&ClientAction::with_images(&[
            &cluster.reference("test/base:v1")
        ]))
        .await;
    let request = stored.request();
    let outcome = expander.execute(request.clone()).await;
    outcome.result();

    let log = cluster.worker.snapshot();
    let seen = &log.executions[0];
    // The forwarded request differs in the action digest only.
    assert_eq!(
        log.execute_requests,
        vec![reapi::ExecuteRequest {
            action_digest: Some(seen.action_digest().clone()),
            ..request
        }]
    );
    let operations = outcome.real_operations();
    let stages: Vec<i32> = operations
        .iter()
        .map(|op| operation_metadata(op).stage)
        .collect();
    use reapi::execution_stage::Value;
    assert_eq!(
        stages,
        vec![
            Value::Queued as i32,
            Value::Executing as i32,
            Value::Completed as i32
        ]
    );
    for op in &operations {
        assert_eq!(
            op.name,
            format!("{INSTANCE}/operations/{}", seen.operation_name),
            "the scheduler's operation name, behind the instance name"
        );
        assert_eq!(
            operation_metadata(op).action_digest.as_ref(),
            Some(&stored.digest),
            "mapped back to the client's digest"
        );
    }
    assert!(operations[2].done);
    expander.stop().await;
}

#[tokio::test]
async fn platform_is_rewritten_in_action_and_command_strictly_sorted() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster
        .expander(
            "{ addPlatformProperties: [{ name: 'chroot', value: 'true' }, \
             { name: 'OSFamily', value: 'linux' }, { name: 'Arch', value: 'x86' }] }",
        )
        .await;
    let reference = cluster.reference("test/base:v1");
    let client_platform = platform(&[
        ("ISA", "x86-64"),
        ("OSFamily", "linux"),
        ("container-image", &reference),
        ("pool", "default"),
    ]);
    let expected = vec![
        ("Arch".to_string(), "x86".to_string()),
        ("ISA".into(), "x86-64".into()),
        ("OSFamily".into(), "linux".into()),
        ("chroot".into(), "true".into()),
        ("pool".into(), "default".into()),
    ];
    // A current client (both fields) and an older one (the Command only).
    let current = ClientAction {
        action_platform: Some(client_platform.clone()),
        command_platform: Some(client_platform.clone()),
        ..ClientAction::with_images(&[])
    };
    let old_client = ClientAction {
        action_platform: None,
        command_platform: Some(client_platform),
        ..ClientAction::with_images(&[])
    };
    for (i, action) in [current, old_client].iter().enumerate() {
        let stored = cluster.store(action).await;
        expander.execute(stored.request()).await.result();
        let log = cluster.worker.snapshot();
        let seen = &log.executions[i];
        assert!(seen.is_executable("usr/bin/env"), "rewritten (client {i})");
        assert_eq!(pairs(seen.action.platform.as_ref()), expected, "client {i}");
        assert_eq!(
            pairs(seen.command.platform.as_ref()),
            expected,
            "client {i}"
        );
        let properties = pairs(seen.action.platform.as_ref());
        assert!(
            properties.windows(2).all(|w| w[0] < w[1]),
            "strictly increasing by (name, value): {properties:?}"
        );
    }
    expander.stop().await;
}

#[tokio::test]
async fn images_are_merged_in_their_order_in_the_action_later_wins() {
    let cluster = Cluster::start().await;
    let mut a = env_entries();
    a.extend([
        TarEntry::Dir("etc".into(), 0o755),
        TarEntry::file("etc/os-release", b"ID=a\n"),
        TarEntry::file("etc/only-a", b"a\n"),
    ]);
    let b = vec![
        TarEntry::Dir("etc".into(), 0o755),
        TarEntry::file("etc/os-release", b"ID=b\n"),
        TarEntry::file("etc/only-b", b"b\n"),
    ];
    let manifest_a = cluster.push("test/a", "v1", &image_of(&a)).await;
    let manifest_b = cluster.push("test/b", "v1", &image_of(&b)).await;
    let (ref_a, ref_b) = (
        cluster.reference("test/a:v1"),
        cluster.reference("test/b:v1"),
    );
    let expander = cluster.expander("{}").await;
    let cases = [
        (
            vec![ref_a.as_str(), ref_b.as_str()],
            "ID=b\n",
            vec![&manifest_a, &manifest_b],
        ),
        (
            vec![ref_b.as_str(), ref_a.as_str()],
            "ID=a\n",
            vec![&manifest_b, &manifest_a],
        ),
    ];
    for (i, (images, os_release, manifests)) in cases.iter().enumerate() {
        let stored = cluster.store(&ClientAction::with_images(images)).await;
        let result = expander.execute(stored.request()).await.result();
        let log = cluster.worker.snapshot();
        let seen = &log.executions[i];
        assert_eq!(
            seen.file("etc/os-release"),
            Some(os_release.as_bytes()),
            "{images:?}"
        );
        assert_eq!(seen.file("etc/only-a"), Some(&b"a\n"[..]));
        assert_eq!(seen.file("etc/only-b"), Some(&b"b\n"[..]));
        assert!(seen.is_executable("usr/bin/env"));
        assert_eq!(
            seen.file("src/main.c"),
            Some(&b"int main() { return 0; }\n"[..])
        );
        let provenance = provenance_of(&result);
        let got: Vec<(&str, &String)> = provenance[0]
            .images
            .iter()
            .map(|i| (i.reference.as_str(), &i.manifest_digest))
            .collect();
        let want: Vec<(&str, &String)> = images
            .iter()
            .copied()
            .zip(manifests.iter().copied())
            .collect();
        assert_eq!(got, want);
        assert!(pairs(seen.action.platform.as_ref())
            .iter()
            .all(|(name, _)| name != "container-image"));
    }
    expander.stop().await;
}

#[tokio::test]
async fn input_root_grafted_under_a_directory_moves_the_working_directory() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster
        .expander("{ inputRootDirectory: 'bazel_exec_root' }")
        .await;
    let reference = cluster.reference("test/base:v1");
    // Inputs that would collide with the image at its root: `lib` is a symlink there.
    let action = ClientAction {
        inputs: InputTree::new()
            .file("src/main.c", b"int main() { return 0; }\n")
            .file("lib/libfoo.so", b"foo\n")
            .file("etc/os-release", b"ID=mine\n"),
        ..ClientAction::with_images(&[&reference])
    };
    let stored = cluster.store(&action).await;
    let result = expander.execute(stored.request()).await.result();
    assert_eq!(result.output_files.len(), 1);
    assert_eq!(result.output_files[0].path, "out/result.txt");

    let log = cluster.worker.snapshot();
    let seen = &log.executions[0];
    assert_eq!(seen.command.working_directory, "bazel_exec_root/src");
    assert!(seen.is_directory("bazel_exec_root/src"));
    assert_eq!(
        seen.command.output_paths,
        vec!["out/result.txt"],
        "output paths unchanged"
    );
    assert_eq!(
        seen.file("bazel_exec_root/src/main.c"),
        Some(&b"int main() { return 0; }\n"[..])
    );
    assert_eq!(
        seen.file("bazel_exec_root/lib/libfoo.so"),
        Some(&b"foo\n"[..])
    );
    assert_eq!(
        seen.file("bazel_exec_root/etc/os-release"),
        Some(&b"ID=mine\n"[..])
    );
    // The image is untouched at the root.
    assert_eq!(seen.symlink("lib"), Some("usr/lib"));
    assert_eq!(seen.file("etc/os-release"), Some(&b"ID=base\n"[..]));
    assert!(seen.is_executable("usr/bin/env"));
    assert!(!seen.input_root.contains_key("src"));

    // An empty working directory becomes the graft directory itself.
    let at_root = ClientAction {
        working_directory: String::new(),
        ..action
    };
    let stored = cluster.store(&at_root).await;
    expander.execute(stored.request()).await.result();
    assert_eq!(
        cluster.worker.log().executions[1].command.working_directory,
        "bazel_exec_root"
    );
    expander.stop().await;
}

#[tokio::test]
async fn input_root_merged_at_the_image_root_under_both_conflict_policies() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let reference = cluster.reference("test/base:v1");
    // STRICT (the default): identical files and merged directories are fine.
    let expander = cluster.expander("{ conflictPolicy: 'STRICT' }").await;
    let identical = ClientAction {
        inputs: InputTree::new()
            .file("src/main.c", b"int main() { return 0; }\n")
            .file("etc/os-release", b"ID=base\n")
            .file("usr/lib/libmine.so", b"mine\n")
            .file("workspace/input", b"x\n"),
        ..ClientAction::with_images(&[&reference])
    };
    let stored = cluster.store(&identical).await;
    expander.execute(stored.request()).await.result();
    {
        let log = cluster.worker.snapshot();
        let seen = &log.executions[0];
        assert_eq!(seen.file("etc/os-release"), Some(&b"ID=base\n"[..]));
        assert_eq!(seen.file("usr/lib/libmine.so"), Some(&b"mine\n"[..]));
        assert_eq!(
            seen.file("usr/lib/libc.so.6"),
            Some(&b"not really libc\n"[..])
        );
        assert_eq!(seen.file("workspace/input"), Some(&b"x\n"[..]));
        assert_eq!(seen.symlink("lib"), Some("usr/lib"));
    }
    expander.stop().await;

    // INPUT_WINS: the input's node replaces the image's, a directory over the `lib`
    // symlink included (asked for explicitly).
    let expander = cluster.expander("{ conflictPolicy: 'INPUT_WINS' }").await;
    let clashing = ClientAction {
        inputs: InputTree::new()
            .file("src/main.c", b"int main() { return 0; }\n")
            .file("etc/os-release", b"ID=mine\n")
            .file("lib/libfoo.so", b"foo\n"),
        ..ClientAction::with_images(&[&reference])
    };
    let stored = cluster.store(&clashing).await;
    expander.execute(stored.request()).await.result();
    let log = cluster.worker.snapshot();
    let seen = &log.executions[1];
    assert_eq!(seen.file("etc/os-release"), Some(&b"ID=mine\n"[..]));
    assert!(seen.is_directory("lib"));
    assert_eq!(seen.file("lib/libfoo.so"), Some(&b"foo\n"[..]));
    assert_eq!(
        seen.file("usr/lib/libc.so.6"),
        Some(&b"not really libc\n"[..])
    );
    assert!(seen.is_executable("usr/bin/env"));
    expander.stop().await;
}

#[tokio::test]
async fn successful_result_is_written_back_under_the_clients_digest_with_provenance() {
    let cluster = Cluster::start().await;
    let manifest = cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");
    let stored = cluster
        .store(&ClientAction::with_images(&[&reference]))
        .await;
    assert_eq!(
        cluster
            .get_action_result(&stored.digest)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let relayed = expander.execute(stored.request()).await.result();

    let cached = cluster
        .get_action_result(&stored.digest)
        .await
        .expect("cache hit");
    assert_eq!(
        cached, relayed,
        "the client's next GetActionResult sees what Execute returned"
    );
    assert_eq!(cached.exit_code, 0);
    assert_eq!(cached.output_files[0].path, "out/result.txt");
    let provenance = provenance_of(&cached);
    assert_eq!(provenance.len(), 1);
    assert_eq!(provenance[0].images[0].manifest_digest, manifest);
    let log = cluster.worker.snapshot();
    let seen = &log.executions[0];
    assert_eq!(
        provenance[0].merged_input_root_digest,
        seen.action.input_root_digest
    );
    assert_eq!(
        provenance[0].original_action_digest.as_ref(),
        Some(&stored.digest)
    );
    // The worker cached its own result under the rewritten digest, without provenance.
    let rewritten = cluster
        .get_action_result(seen.action_digest())
        .await
        .unwrap();
    assert!(provenance_of(&rewritten).is_empty());
    expander.stop().await;
}

#[tokio::test]
async fn failed_or_uncacheable_results_are_not_written_back() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");

    cluster.worker.set_behaviour(WorkerBehaviour {
        exit_code: 1,
        ..Default::default()
    });
    let failing = cluster
        .store(&ClientAction::with_images(&[&reference]))
        .await;
    let result = expander.execute(failing.request()).await.result();
    assert_eq!(result.exit_code, 1);
    assert_eq!(
        provenance_of(&result).len(),
        1,
        "provenance is reported all the same"
    );
    let status = cluster
        .get_action_result(&failing.digest)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    cluster.worker.set_behaviour(WorkerBehaviour::default());
    let uncacheable = cluster
        .store(&ClientAction {
            do_not_cache: true,
            ..ClientAction::with_images(&[&reference])
        })
        .await;
    let result = expander.execute(uncacheable.request()).await.result();
    assert_eq!(result.exit_code, 0);
    assert!(cluster.worker.log().executions[1].action.do_not_cache);
    let status = cluster
        .get_action_result(&uncacheable.digest)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // Write-back off: nothing under the client's digest even for a success.
    let quiet = cluster.expander("{ writeBackResults: false }").await;
    let other = cluster
        .store(&ClientAction {
            arguments: vec!["true".into()],
            ..ClientAction::with_images(&[&reference])
        })
        .await;
    assert_eq!(quiet.execute(other.request()).await.result().exit_code, 0);
    let status = cluster.get_action_result(&other.digest).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    quiet.stop().await;
    expander.stop().await;
}

#[tokio::test]
async fn wait_execution_after_a_restart_maps_back_and_writes_back() {
    let cluster = Cluster::start().await;
    let manifest = cluster.push("test/base", "v1", &base_image()).await;
    let reference = cluster.reference("test/base:v1");
    cluster.worker.set_behaviour(WorkerBehaviour {
        stop_after_queued: true,
        ..Default::default()
    });
    let first = cluster.expander("{}").await;
    let stored = cluster
        .store(&ClientAction::with_images(&[&reference]))
        .await;
    let outcome = first.execute(stored.request()).await;
    assert!(outcome.error.is_none(), "{outcome:?}");
    let operations = outcome.real_operations();
    assert_eq!(operations.len(), 1, "{outcome:?}");
    assert!(!operations[0].done);
    let name = operations[0].name.clone();
    first.stop().await;
    assert_eq!(
        cluster
            .get_action_result(&stored.digest)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // A new process (or another replica) knows nothing in memory.
    let second = cluster.expander("{}").await;
    let outcome = second.wait_execution(&name).await;
    let result = outcome.result();
    let last = outcome.operations.last().unwrap();
    assert_eq!(last.name, name);
    assert_eq!(
        operation_metadata(last).action_digest.as_ref(),
        Some(&stored.digest)
    );
    let provenance = provenance_of(&result);
    assert_eq!(provenance.len(), 1);
    assert_eq!(provenance[0].images[0].manifest_digest, manifest);
    let cached = cluster
        .get_action_result(&stored.digest)
        .await
        .expect("written back");
    assert_eq!(cached, result);
    assert_eq!(cluster.worker.log().wait_execution_requests.len(), 1);

    // Operations of actions the expander never rewrote pass unchanged.
    cluster.worker.set_behaviour(WorkerBehaviour {
        stop_after_queued: true,
        ..Default::default()
    });
    let plain = cluster.store(&ClientAction::with_images(&[])).await;
    let outcome = second.execute(plain.request()).await;
    let name = outcome.real_operations()[0].name.clone();
    let outcome = second.wait_execution(&name).await;
    let result = outcome.result();
    assert!(provenance_of(&result).is_empty());
    assert_eq!(
        operation_metadata(outcome.operations.last().unwrap())
            .action_digest
            .as_ref(),
        Some(&plain.digest)
    );
    second.stop().await;
}

#[tokio::test]
async fn wait_execution_for_an_unknown_operation_is_not_found() {
    let cluster = Cluster::start().await;
    let expander = cluster.expander("{}").await;
    let outcome = expander.wait_execution("no-such-operation").await;
    let status = outcome.refusal();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert!(status.message().contains("no-such-operation"), "{status:?}");
    expander.stop().await;
}

#[tokio::test]
async fn worker_sees_every_node_kind_of_the_inputs() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{ inputRootDirectory: 'b' }").await;
    let action = ClientAction {
        inputs: InputTree::new()
            .file("src/main.c", b"int main() { return 0; }\n")
            .symlink("src/link", "main.c")
            .dir("src/empty")
            .executable("tools/run", b"#!/bin/sh\n"),
        ..ClientAction::with_images(&[&cluster.reference("test/base:v1")])
    };
    let stored = cluster.store(&action).await;
    expander.execute(stored.request()).await.result();
    let log = cluster.worker.snapshot();
    let seen = &log.executions[0];
    assert_eq!(seen.symlink("b/src/link"), Some("main.c"));
    assert_eq!(
        seen.input_root.get("b/src/empty"),
        Some(&InputNode::Directory)
    );
    assert!(seen.is_executable("b/tools/run"));
    expander.stop().await;
}

#[tokio::test]
async fn rewrite_does_not_depend_on_the_local_directory_cache_holding_what_it_wrote() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let overlay = image_of(&[
        TarEntry::Dir("etc".into(), 0o755),
        TarEntry::file("etc/overlay", b"o\n"),
    ]);
    cluster.push("test/overlay", "v1", &overlay).await;
    // A cache too small for any Directory: everything the stacking and the merge
    // wrote must still be readable by the steps after them.
    let expander = cluster
        .expander("{ directoryCacheSizeBytes: '1', inputRootDirectory: 'x/y' }")
        .await;
    let action = ClientAction {
        inputs: InputTree::new()
            .file("src/main.c", b"int main() { return 0; }\n")
            .file("src/sub/deeper.c", b"1\n"),
        working_directory: "src/sub".into(),
        ..ClientAction::with_images(&[
            &cluster.reference("test/base:v1"),
            &cluster.reference("test/overlay:v1"),
        ])
    };
    let stored = cluster.store(&action).await;
    let outcome = expander.execute(stored.request()).await;
    assert_eq!(outcome.result().exit_code, 0);
    let log = cluster.worker.snapshot();
    let seen = &log.executions[0];
    assert_eq!(seen.command.working_directory, "x/y/src/sub");
    assert_eq!(seen.file("x/y/src/sub/deeper.c"), Some(&b"1\n"[..]));
    assert_eq!(seen.file("etc/overlay"), Some(&b"o\n"[..]));
    assert_eq!(seen.file("etc/os-release"), Some(&b"ID=base\n"[..]));
    expander.stop().await;
}

/// The value of a metric line `name{labels}` in the Prometheus text output.
fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name_and_labels)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn steps_and_outcomes_are_counted_in_metrics() {
    use bb_container_expander::diagnostics::render_metrics;
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let rewritten = cluster
        .store(&ClientAction::with_images(&[
            &cluster.reference("test/base:v1")
        ]))
        .await;
    let plain = cluster.store(&ClientAction::with_images(&[])).await;
    expander.execute(rewritten.request()).await.result();
    expander.execute(plain.request()).await.result();
    // Other tests of this binary count too: only lower bounds are meaningful.
    let text = render_metrics();
    for (series, at_least) in [
        (
            r#"buildbarn_container_expander_actions_total{front_door="execute",outcome="rewritten"}"#,
            1.0,
        ),
        (
            r#"buildbarn_container_expander_actions_total{front_door="execute",outcome="passed_through"}"#,
            1.0,
        ),
        (
            r#"buildbarn_container_expander_bookkeeping_writes_total{record="write_back",result="ok"}"#,
            1.0,
        ),
        (
            r#"buildbarn_container_expander_bookkeeping_writes_total{record="mapping",result="ok"}"#,
            1.0,
        ),
        (
            r#"buildbarn_container_expander_step_duration_seconds_count{result="ok",step="graft"}"#,
            1.0,
        ),
        (
            r#"buildbarn_container_expander_step_duration_seconds_count{result="ok",step="forward"}"#,
            2.0,
        ),
        (
            r#"buildbarn_container_expander_step_duration_seconds_count{result="ok",step="rewrite"}"#,
            1.0,
        ),
    ] {
        assert!(metric(&text, series) >= at_least, "{series} in\n{text}");
    }
    expander.stop().await;
}

#[tokio::test]
async fn every_configured_property_name_names_images() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let extra = image_of(&[
        TarEntry::Dir("opt".into(), 0o755),
        TarEntry::file("opt/tool", b"tool\n"),
    ]);
    cluster.push("test/extra", "v1", &extra).await;
    let expander = cluster
        .expander("{ platformPropertyName: ['container-image', 'docker-image'] }")
        .await;
    let base = cluster.reference("test/base:v1");
    let tool = cluster.reference("test/extra:v1");
    let client_platform = platform(&[
        ("OSFamily", "linux"),
        ("container-image", &base),
        ("docker-image", &tool),
    ]);
    let stored = cluster
        .store(&ClientAction {
            action_platform: Some(client_platform.clone()),
            command_platform: Some(client_platform),
            ..ClientAction::with_images(&[])
        })
        .await;
    let result = expander.execute(stored.request()).await.result();
    let log = cluster.worker.snapshot();
    let seen = &log.executions[0];
    assert!(seen.is_executable("usr/bin/env"));
    assert_eq!(seen.file("opt/tool"), Some(&b"tool\n"[..]));
    assert_eq!(
        pairs(seen.action.platform.as_ref()),
        vec![("OSFamily".to_string(), "linux".to_string())]
    );
    let references: Vec<String> = provenance_of(&result)[0]
        .images
        .iter()
        .map(|i| i.reference.clone())
        .collect();
    assert_eq!(references, vec![base, tool]);
    expander.stop().await;
}
