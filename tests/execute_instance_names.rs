//! The Execute flows under each instance name a client may use: `""`, `main` and `a/b`.
//!
//! Storage and scheduler of each cluster serve exactly one instance name and refuse
//! every other with INVALID_ARGUMENT, as a real REAPI server does (BuildGrid serving
//! only `main`, say). So whatever the expander wrote for a request under another
//! instance name would fail; and because bookkeeping records no longer fail the action,
//! every test also reads the storage's call log: every call the expander made carries
//! the request's instance name.
//!
//! Each flow runs once per instance name, as three tests (see `for_each_instance_name!`).

mod rewrite_support;
mod support;

use bb_container_expander::proto::reapi;
use bb_container_expander::testutil::fake_worker::WorkerBehaviour;
use rewrite_support::*;
use tonic::{Code, Status};

/// Runs `flow(instance_name)` as one test per instance name of [`INSTANCE_NAMES`].
macro_rules! for_each_instance_name {
    ($flow:ident) => {
        mod $flow {
            #[tokio::test]
            async fn empty() {
                super::$flow(super::INSTANCE_NAMES[0]).await;
            }
            #[tokio::test]
            async fn main() {
                super::$flow(super::INSTANCE_NAMES[1]).await;
            }
            #[tokio::test]
            async fn a_b() {
                super::$flow(super::INSTANCE_NAMES[2]).await;
            }
        }
    };
}

/// Every storage call so far named `instance_name` (none was refused for another).
fn assert_storage_used_only(cluster: &Cluster, instance_name: &str) {
    let calls = cluster.storage.call_log();
    assert!(!calls.is_empty());
    for call in calls {
        assert_eq!(call.instance_name, instance_name, "{call:?}");
    }
}

/// The name the expander hands out for an operation of `instance_name`.
fn assert_named_for(operation_name: &str, instance_name: &str) {
    assert!(
        operation_name.starts_with(&format!("{instance_name}/operations/")),
        "{operation_name:?} does not carry instance name {instance_name:?}"
    );
}

/// Rewrite, forward, relay, map back and write back, all under the request's instance.
async fn rewritten_action_runs_and_is_written_back(instance_name: &str) {
    let cluster = Cluster::start_serving(instance_name).await;
    let manifest = cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");
    let stored = cluster
        .store(&ClientAction::with_images(&[&reference]))
        .await;

    let outcome = expander.execute(stored.request()).await;
    let result = outcome.result();
    assert_eq!(result.exit_code, 0);
    for op in &outcome.operations {
        assert_named_for(&op.name, instance_name);
        assert_eq!(
            operation_metadata(op).action_digest.as_ref(),
            Some(&stored.digest)
        );
    }
    let log = cluster.worker.snapshot();
    assert_eq!(log.executions.len(), 1);
    let seen = &log.executions[0];
    assert_eq!(seen.request.instance_name, instance_name);
    assert_eq!(seen.file("etc/os-release"), Some(&b"ID=base\n"[..]));
    let provenance = provenance_of(&result);
    assert_eq!(provenance.len(), 1);
    assert_eq!(provenance[0].instance_name, instance_name);
    assert_eq!(provenance[0].images[0].manifest_digest, manifest);

    let cached = cluster
        .get_action_result(&stored.digest)
        .await
        .expect("written back under the client's digest in the request's instance");
    assert_eq!(cached, result);
    assert_storage_used_only(&cluster, instance_name);
    expander.stop().await;
}
for_each_instance_name!(rewritten_action_runs_and_is_written_back);

/// WaitExecution on a fresh process (nothing in memory) still finds the mapping, through
/// the instance name carried in the operation name.
async fn wait_execution_after_a_restart_maps_back(instance_name: &str) {
    let cluster = Cluster::start_serving(instance_name).await;
    cluster.push("test/base", "v1", &base_image()).await;
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
    let operations = outcome.real_operations();
    assert_eq!(operations.len(), 1, "{outcome:?}");
    let name = operations[0].name.clone();
    assert_named_for(&name, instance_name);
    first.stop().await;

    let second = cluster.expander("{}").await;
    let outcome = second.wait_execution(&name).await;
    let result = outcome.result();
    let last = outcome.operations.last().unwrap();
    assert_eq!(last.name, name);
    assert_eq!(
        operation_metadata(last).action_digest.as_ref(),
        Some(&stored.digest)
    );
    assert_eq!(provenance_of(&result).len(), 1);
    assert_eq!(
        cluster.get_action_result(&stored.digest).await.unwrap(),
        result
    );
    // The scheduler saw its own name, without the instance part.
    let waits = cluster.worker.log().wait_execution_requests.clone();
    assert_eq!(waits.len(), 1);
    assert_eq!(
        format!("{instance_name}/operations/{}", waits[0].name),
        name
    );
    assert_storage_used_only(&cluster, instance_name);
    second.stop().await;
}
for_each_instance_name!(wait_execution_after_a_restart_maps_back);

/// Actions without an image pass through, and their operations are named (and can be
/// waited for) the same way.
async fn action_without_image_passes_through(instance_name: &str) {
    let cluster = Cluster::start_serving(instance_name).await;
    cluster.worker.set_behaviour(WorkerBehaviour {
        stop_after_queued: true,
        ..Default::default()
    });
    let expander = cluster.expander("{}").await;
    let plain = cluster.store(&ClientAction::with_images(&[])).await;
    let outcome = expander.execute(plain.request()).await;
    let name = outcome.real_operations()[0].name.clone();
    assert_named_for(&name, instance_name);
    let outcome = expander.wait_execution(&name).await;
    let result = outcome.result();
    assert!(provenance_of(&result).is_empty());
    assert_eq!(
        cluster.worker.log().executions[0].action_digest(),
        &plain.digest
    );
    assert_storage_used_only(&cluster, instance_name);
    expander.stop().await;
}
for_each_instance_name!(action_without_image_passes_through);

/// Every Action Cache write the expander makes is best-effort for the action: the
/// engine's records, the mapping record and the write-back. With the Action Cache
/// refusing every write from a cold start, the image is still expanded, the action
/// still runs and its result still reaches the client.
async fn failed_bookkeeping_writes_do_not_fail_the_action(instance_name: &str) {
    let cluster = Cluster::start_serving(instance_name).await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");
    let stored = cluster
        .store(&ClientAction::with_images(&[&reference]))
        .await;
    for _ in 0..100 {
        cluster.storage.fail_next(
            "UpdateActionResult",
            Status::unavailable("Injected: the Action Cache is down"),
        );
    }
    let outcome = expander.execute(stored.request()).await;
    let result = outcome.result();
    assert_eq!(result.exit_code, 0);
    assert_eq!(provenance_of(&result).len(), 1);
    assert_eq!(cluster.worker.snapshot().executions.len(), 1);
    // Engine records (tag, image, chain, layer), mapping and write-back were all tried.
    assert!(cluster.storage.calls("UpdateActionResult") >= 6);
    assert_eq!(
        cluster
            .get_action_result(&stored.digest)
            .await
            .unwrap_err()
            .code(),
        Code::NotFound,
        "the write-back was refused"
    );
    assert_storage_used_only(&cluster, instance_name);
    expander.stop().await;
}
for_each_instance_name!(failed_bookkeeping_writes_do_not_fail_the_action);

/// A request for an instance name the servers do not serve fails with the servers' own
/// INVALID_ARGUMENT, and one that REAPI does not allow is refused before anything else.
#[tokio::test]
async fn instance_names_the_servers_refuse_are_refused() {
    let cluster = Cluster::start_serving("main").await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");
    let stored = cluster
        .store(&ClientAction::with_images(&[&reference]))
        .await;
    let other = reapi::ExecuteRequest {
        instance_name: "other".into(),
        ..stored.request()
    };
    let status = expander.execute(other).await.refusal().clone();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("Invalid instance name"),
        "{status:?}"
    );

    let reserved = reapi::ExecuteRequest {
        instance_name: "main/operations".into(),
        ..stored.request()
    };
    let status = expander.execute(reserved).await.refusal().clone();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("reserved"), "{status:?}");
    assert!(cluster.worker.snapshot().executions.is_empty());
    expander.stop().await;
}
