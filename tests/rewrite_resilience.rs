//! The Execute rewrite under slow registries, evictions and load: keepalive operations
//! during a long expansion, one retry when the scheduler or the worker reports blobs
//! missing, image content evicted from the CAS, and 100 concurrent Executes on one cold
//! image. Slowness is made with a gate (the registry answers when the test says so),
//! never with timing assumptions. See `rewrite_support` for the harness.

mod rewrite_support;
mod support;

use bb_container_expander::blobstore::get_message;
use bb_container_expander::digest::DigestFunction;
use bb_container_expander::proto::reapi;
use bb_container_expander::status::missing_blobs_of;
use bb_container_expander::testutil::fake_worker::WorkerBehaviour;
use futures::StreamExt;
use rewrite_support::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tonic::Code;

fn subject(digest: &reapi::Digest) -> String {
    format!("blobs/{}/{}", digest.hash, digest.size_bytes)
}

/// An expander that reaches the cluster's registry only through `proxy`.
async fn expander_behind(
    cluster: &Cluster,
    proxy: &GatedProxy,
    container_images: &str,
) -> Expander {
    cluster
        .expander_with(ExpanderSettings {
            scheduler: true,
            registry_hosts: vec![proxy.host()],
            container_images: container_images.into(),
        })
        .await
}

#[tokio::test]
async fn keepalive_operations_precede_the_real_ones_during_a_slow_expansion() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let proxy = GatedProxy::start(cluster.registry.host()).await;
    let expander = expander_behind(&cluster, &proxy, "{ keepaliveInterval: '0.05s' }").await;
    let reference = format!("docker://{}/test/base:v1", proxy.host());
    let stored = cluster
        .store(&ClientAction::with_images(&[&reference]))
        .await;

    let mut stream = expander
        .client()
        .await
        .execute(stored.request())
        .await
        .unwrap()
        .into_inner();
    // The registry holds every connection: whatever arrives now is a keepalive. Keep
    // reading until the expansion is seen waiting for the registry.
    let mut keepalives = Vec::new();
    while keepalives.len() < 3 || proxy.connections() == 0 {
        let op = tokio::time::timeout(PATIENCE, stream.next())
            .await
            .expect("a keepalive")
            .unwrap()
            .unwrap();
        keepalives.push(op);
    }
    assert!(cluster.worker.log().execute_requests.is_empty());
    for op in &keepalives {
        assert!(is_keepalive(op), "{op:?}");
        assert_eq!(
            op.name, keepalives[0].name,
            "one name for the whole expansion"
        );
        assert!(!op.done);
        assert!(op.result.is_none());
        let metadata = operation_metadata(op);
        assert_eq!(
            metadata.stage,
            reapi::execution_stage::Value::CacheCheck as i32
        );
        assert_eq!(metadata.action_digest.as_ref(), Some(&stored.digest));
    }

    proxy.open();
    let mut rest = Vec::new();
    while let Some(item) = tokio::time::timeout(PATIENCE, stream.next())
        .await
        .expect("the stream went silent")
    {
        rest.push(item.expect("no error"));
    }
    // Keepalives (any number, until the expansion finished), then the real operations.
    let first_real = rest
        .iter()
        .position(|op| !is_keepalive(op))
        .expect("real operations");
    assert!(
        rest[first_real..].iter().all(|op| !is_keepalive(op)),
        "{rest:?}"
    );
    let real = &rest[first_real..];
    assert_eq!(real.len(), 3, "{real:?}");
    assert!(real[2].done);
    for op in real {
        assert_eq!(
            operation_metadata(op).action_digest.as_ref(),
            Some(&stored.digest)
        );
    }
    let response = execute_response(&real[2]).unwrap();
    assert_eq!(response.result.unwrap().exit_code, 0);
    assert_eq!(cluster.worker.log().executions.len(), 1);

    // WaitExecution on a keepalive's name tells the client to call Execute again.
    let outcome = expander.wait_execution(&keepalives[0].name).await;
    assert_eq!(outcome.refusal().code(), Code::NotFound);
    assert!(outcome.refusal().message().contains("call Execute again"));
    expander.stop().await;
}

#[tokio::test]
async fn scheduler_refusing_with_missing_blobs_once_gets_the_action_again() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");

    // Once: the expander expands again and forwards the same rewritten action again.
    cluster.worker.set_behaviour(WorkerBehaviour {
        refuse_with_missing_action: 1,
        ..Default::default()
    });
    let stored = cluster
        .store(&ClientAction::with_images(&[&reference]))
        .await;
    let outcome = expander.execute(stored.request()).await;
    assert_eq!(outcome.result().exit_code, 0);
    let log = cluster.worker.snapshot();
    assert_eq!(log.execute_requests.len(), 2);
    assert_eq!(log.execute_requests[0], log.execute_requests[1]);
    assert_eq!(log.executions.len(), 1);
    assert!(cluster.get_action_result(&stored.digest).await.is_ok());

    // Twice: the second refusal reaches the client, with its PreconditionFailure.
    cluster.worker.set_behaviour(WorkerBehaviour {
        refuse_with_missing_action: 2,
        ..Default::default()
    });
    let other = cluster
        .store(&ClientAction {
            arguments: vec!["true".into()],
            ..ClientAction::with_images(&[&reference])
        })
        .await;
    let outcome = expander.execute(other.request()).await;
    let status = outcome.refusal();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let rewritten = cluster.worker.log().execute_requests[3]
        .action_digest
        .clone()
        .unwrap();
    assert_eq!(missing_blobs_of(status), vec![subject(&rewritten)]);
    assert_eq!(cluster.worker.log().execute_requests.len(), 4);

    // An action the expander did not rewrite is not retried, and the scheduler's
    // PreconditionFailure reaches the client, so that it uploads the blob again.
    cluster.worker.set_behaviour(WorkerBehaviour {
        refuse_with_missing_action: 1,
        ..Default::default()
    });
    let plain = cluster.store(&ClientAction::with_images(&[])).await;
    let outcome = expander.execute(plain.request()).await;
    let status = outcome.refusal();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(missing_blobs_of(status), vec![subject(&plain.digest)]);
    assert_eq!(cluster.worker.log().execute_requests.len(), 5);
    expander.stop().await;
}

#[tokio::test]
async fn image_file_evicted_from_the_cas_is_ingested_again_and_the_action_retried() {
    let cluster = Cluster::start().await;
    let image = base_image();
    cluster.push("test/base", "v1", &image).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");
    let first = cluster
        .store(&ClientAction::with_images(&[&reference]))
        .await;
    expander.execute(first.request()).await.result();
    assert_eq!(cluster.blob_fetches(&image.layers[0].digest), 1);
    assert_eq!(cluster.blob_fetches(&image.layers[1].digest), 1);

    // The CAS loses a file of the first layer; the expander still trusts its caches.
    let libc = DigestFunction::Sha256.digest_of(b"not really libc\n");
    assert!(cluster.memory_cas.remove(&instance(), &libc));
    let second = cluster
        .store(&ClientAction {
            arguments: vec!["true".into()],
            ..ClientAction::with_images(&[&reference])
        })
        .await;
    let outcome = expander.execute(second.request()).await;
    assert_eq!(outcome.result().exit_code, 0);

    let log = cluster.worker.snapshot();
    assert_eq!(
        log.incomplete_inputs,
        vec![vec![libc.clone()]],
        "the worker missed it once"
    );
    assert_eq!(log.executions.len(), 2);
    assert_eq!(
        log.executions[1].file("usr/lib/libc.so.6"),
        Some(&b"not really libc\n"[..])
    );
    let finals = outcome
        .real_operations()
        .into_iter()
        .filter(|op| op.done)
        .count();
    assert_eq!(finals, 1, "the failed attempt's verdict is not relayed");
    // Only the layer that lost content was pulled again.
    assert_eq!(cluster.blob_fetches(&image.layers[0].digest), 2);
    assert_eq!(cluster.blob_fetches(&image.layers[1].digest), 1);
    assert!(cluster.get_action_result(&second.digest).await.is_ok());
    expander.stop().await;
}

/// The digest of the Directory at `path` under `root`.
async fn directory_at(cluster: &Cluster, root: &reapi::Digest, path: &str) -> reapi::Digest {
    let mut digest = root.clone();
    for part in path.split('/') {
        let directory: reapi::Directory = get_message(&*cluster.cas(), &instance(), &digest)
            .await
            .unwrap();
        digest = directory
            .directories
            .iter()
            .find(|d| d.name == part)
            .and_then(|d| d.digest.clone())
            .unwrap_or_else(|| panic!("no directory {part} in {path}"));
    }
    digest
}

#[tokio::test]
async fn image_directory_evicted_from_the_cas_is_expanded_again_not_blamed_on_the_client() {
    let cluster = Cluster::start().await;
    let image = base_image();
    cluster.push("test/base", "v1", &image).await;
    // No local Directory cache: every merge reads image Directories from the CAS.
    let expander = cluster.expander("{ directoryCacheSizeBytes: '1' }").await;
    let reference = cluster.reference("test/base:v1");
    let first = cluster
        .store(&ClientAction::with_images(&[&reference]))
        .await;
    expander.execute(first.request()).await.result();
    let merged_root = cluster.worker.log().executions[0]
        .action
        .input_root_digest
        .clone()
        .unwrap();
    let image_usr_lib = directory_at(&cluster, &merged_root, "usr/lib").await;
    assert!(cluster.memory_cas.remove(&instance(), &image_usr_lib));

    // Inputs that overlap `usr/lib`: the merge needs the image's Directory.
    let second = cluster
        .store(&ClientAction {
            inputs: InputTree::new()
                .file("src/main.c", b"int main() { return 0; }\n")
                .file("usr/lib/libmine.so", b"mine\n"),
            ..ClientAction::with_images(&[&reference])
        })
        .await;
    let outcome = expander.execute(second.request()).await;
    assert_eq!(outcome.result().exit_code, 0);
    let log = cluster.worker.snapshot();
    let seen = &log.executions[1];
    assert_eq!(seen.file("usr/lib/libmine.so"), Some(&b"mine\n"[..]));
    assert_eq!(
        seen.file("usr/lib/libc.so.6"),
        Some(&b"not really libc\n"[..])
    );
    assert!(
        log.incomplete_inputs.is_empty(),
        "nothing was forwarded incomplete"
    );
    assert_eq!(log.execute_requests.len(), 2, "nothing was forwarded twice");
    let missing = cluster
        .cas()
        .find_missing(&instance(), vec![image_usr_lib])
        .await
        .unwrap();
    assert!(missing.is_empty(), "the image Directory was stored again");
    expander.stop().await;
}

#[tokio::test]
async fn hundred_concurrent_executes_on_one_cold_image_pull_each_layer_once() {
    const CLIENTS: usize = 100;
    let cluster = Cluster::start().await;
    let image = base_image();
    cluster.push("test/base", "v1", &image).await;
    let proxy = GatedProxy::start(cluster.registry.host()).await;
    let expander = expander_behind(&cluster, &proxy, "{ keepaliveInterval: '0.05s' }").await;
    let reference = format!("docker://{}/test/base:v1", proxy.host());
    let channel = expander.channel().await;

    let waiting = Arc::new(AtomicUsize::new(0));
    let (opened_tx, opened_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..CLIENTS {
        let action = ClientAction {
            inputs: InputTree::new().file(
                "src/main.c",
                format!("int main() {{ return {i}; }}\n").as_bytes(),
            ),
            ..ClientAction::with_images(&[&reference])
        };
        let stored = cluster.store(&action).await;
        let mut client = reapi::execution_client::ExecutionClient::new(channel.clone());
        let waiting = waiting.clone();
        let opened = opened_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = client.execute(stored.request()).await.unwrap().into_inner();
            let mut operations = Vec::new();
            let mut counted = false;
            while let Some(item) = tokio::time::timeout(PATIENCE, stream.next())
                .await
                .expect("the stream went silent")
            {
                let op = item.expect("no error");
                if !counted {
                    assert!(
                        is_keepalive(&op),
                        "nothing but keepalives before the gate opens"
                    );
                    assert!(!*opened.borrow(), "the gate opened too early");
                    waiting.fetch_add(1, Ordering::SeqCst);
                    counted = true;
                }
                operations.push(op);
            }
            (stored.digest, operations)
        }));
    }
    // Every client is inside the expansion before the registry answers anything.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while waiting.load(Ordering::SeqCst) < CLIENTS {
        assert!(
            tokio::time::Instant::now() < deadline,
            "clients did not all start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(cluster.worker.log().execute_requests.is_empty());
    opened_tx.send_replace(true);
    proxy.open();

    let mut rewritten = std::collections::HashSet::new();
    for task in tasks {
        let (digest, operations) = task.await.unwrap();
        let last = operations.last().expect("operations");
        assert!(last.done);
        assert_eq!(
            operation_metadata(last).action_digest.as_ref(),
            Some(&digest)
        );
        let response = execute_response(last).unwrap();
        assert_eq!(response.status.unwrap_or_default().code, 0);
        let result = response.result.unwrap();
        assert_eq!(result.exit_code, 0);
        assert_eq!(
            provenance_of(&result)[0].images[0].manifest_digest,
            image.manifest_digest
        );
        rewritten.insert(provenance_of(&result)[0].rewritten_action_digest.clone());
    }
    assert_eq!(
        rewritten.len(),
        CLIENTS,
        "one rewritten action per client action"
    );
    assert_eq!(cluster.worker.log().executions.len(), CLIENTS);
    for layer in &image.layers {
        assert_eq!(
            cluster.blob_fetches(&layer.digest),
            1,
            "layer {} pulled once",
            layer.digest
        );
    }
    expander.stop().await;
}
