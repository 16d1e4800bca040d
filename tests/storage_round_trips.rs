//! Storage calls per warm rewritten action (proxy mode, image expanded already), by
//! method, counted exactly from the storage server's call log (the fake worker reads
//! the shared CAS directly, so every call in the log is the expander's).
//!
//! Per distinct action: BatchReadBlobs of the Action; BatchReadBlobs of the Command and
//! the input root together; one BatchUpdateBlobs with the new Directories, the Command,
//! the Action and the blobs of the mapping record; then, beside the forwarding, the
//! mapping record's UpdateActionResult, and after the result is relayed the write-back
//! under the client's digest (UpdateActionResult). No FindMissingBlobs. An action with
//! its own input root also reads the input Directories the checks look into (below).

mod rewrite_support;
mod support;

use rewrite_support::*;
use std::collections::BTreeMap;

/// The calls the storage received since the last reset, by method.
fn calls_by_method(cluster: &Cluster) -> BTreeMap<&'static str, usize> {
    let mut calls = BTreeMap::new();
    for call in cluster.storage.call_log() {
        *calls.entry(call.method).or_insert(0) += 1;
    }
    calls
}

fn expected(pairs: &[(&'static str, usize)]) -> BTreeMap<&'static str, usize> {
    pairs.iter().copied().collect()
}

/// A distinct action (its own Command) on the image; with `own_inputs`, its own input
/// root too (different contents at every level).
fn action(reference: &str, n: usize, own_inputs: bool) -> ClientAction {
    let mut action = ClientAction::with_images(&[reference]);
    action.arguments.push(format!("# action {n}"));
    if own_inputs {
        action.inputs = InputTree::new()
            .file(
                "src/main.c",
                format!("int main() {{ return {n}; }}\n").as_bytes(),
            )
            .executable("src/build.sh", b"#!/bin/sh\n")
            .file("src/lib/util.h", format!("#define N {n}\n").as_bytes())
            .file("data/input.txt", format!("input {n}\n").as_bytes());
    }
    action
}

/// Runs one action to warm the caches, then `count` more, and returns the calls of
/// each of those.
async fn calls_per_warm_action(
    own_inputs: bool,
    count: usize,
) -> Vec<BTreeMap<&'static str, usize>> {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");
    let first = cluster.store(&action(&reference, 0, own_inputs)).await;
    assert_eq!(
        expander.execute(first.request()).await.result().exit_code,
        0
    );

    let mut per_action = Vec::new();
    for n in 1..=count {
        let stored = cluster.store(&action(&reference, n, own_inputs)).await;
        cluster.storage.reset_calls();
        let result = expander.execute(stored.request()).await.result();
        assert_eq!(result.exit_code, 0);
        let calls = calls_by_method(&cluster);
        println!("warm rewritten action {n} (own input root: {own_inputs}): {calls:?}");
        per_action.push(calls);
        assert!(cluster.get_action_result(&stored.digest).await.is_ok());
    }
    expander.stop().await;
    per_action
}

#[tokio::test]
async fn warm_action_with_shared_inputs_makes_five_storage_calls() {
    for calls in calls_per_warm_action(false, 3).await {
        assert_eq!(
            calls,
            expected(&[
                ("BatchReadBlobs", 2),
                ("BatchUpdateBlobs", 1),
                ("UpdateActionResult", 2),
            ])
        );
    }
}

/// The input root is read with the Command; only the image's root overlaps the inputs
/// (every other image Directory comes from the local cache). One more BatchReadBlobs
/// reads `src`, the input Directory the output path `out/result.txt` (in working
/// directory `src`) lies in, which the output-path check looks into: one call per
/// input Directory looked into below the root, here one.
#[tokio::test]
async fn warm_action_with_its_own_input_root_reads_input_directories_in_batches() {
    for calls in calls_per_warm_action(true, 3).await {
        assert_eq!(
            calls,
            expected(&[
                ("BatchReadBlobs", 3),
                ("BatchUpdateBlobs", 1),
                ("UpdateActionResult", 2),
            ])
        );
    }
}
