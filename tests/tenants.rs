//! Tenants (`registries[].instanceNamePrefixes`, docs/design/tenants.md): a registry
//! limited to instance names under `team-a` serves `team-a` and `team-a/…`, and refuses
//! every other instance name with PERMISSION_DENIED naming image, registry and instance
//! name, on every way into the engine (Execute, Remote Asset, the image expander
//! itself), however warm the caches are: the image is expanded for `team-a` first, so
//! that its tag, its trees and its records are all cached when `team-b` asks.

mod rewrite_support;
mod support;

use async_trait::async_trait;
use bb_container_expander::blobstore::{
    ActionCache, ContentAddressableStorage, Instance, MemoryActionCache,
};
use bb_container_expander::digest::DigestFunction;
use bb_container_expander::image::new_image_expander_from_configuration;
use bb_container_expander::proto::asset::fetch_client::FetchClient;
use bb_container_expander::proto::asset::FetchDirectoryRequest;
use bb_container_expander::proto::reapi;
use bb_container_expander::registry::Platform;
use rewrite_support::*;
use std::sync::Arc;
use tonic::{Code, Status};

const TEAM_A: &str = "team-a";
const TEAM_A_CI: &str = "team-a/ci";
const TEAM_B: &str = "team-b";
const TEAM_AB: &str = "team-ab";

/// An Action Cache shared by every instance name (a deployment whose storage ignores
/// them): every record of one instance name is visible to all.
struct SharedActionCache(MemoryActionCache);

fn shared(instance: &Instance) -> Instance {
    Instance::new("", instance.digest_function)
}

#[async_trait]
impl ActionCache for SharedActionCache {
    async fn get_action_result(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
    ) -> Result<reapi::ActionResult, Status> {
        self.0
            .get_action_result(&shared(instance), action_digest)
            .await
    }

    async fn put_action_result(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
        result: reapi::ActionResult,
    ) -> Result<(), Status> {
        self.0
            .put_action_result(&shared(instance), action_digest, result)
            .await
    }
}

/// `containerImages` with the cluster's registry limited to `team-a`.
fn limited_to_team_a(cluster: &Cluster) -> String {
    format!(
        "{{ registries: [{{ hosts: ['{}'], instanceNamePrefixes: ['{TEAM_A}'] }}] }}",
        cluster.registry.host()
    )
}

/// Asserts that `message` refuses `reference` to `instance_name`, naming all three.
fn assert_refused_to(code: Code, message: &str, reference: &str, cluster: &Cluster, name: &str) {
    assert_eq!(code, Code::PermissionDenied, "{message}");
    assert!(
        message.starts_with(&format!("Failed to expand image {reference}: ")),
        "{message}"
    );
    assert!(
        message.contains(&format!(
            "Registry {} is not allowed for instance name {name:?}",
            cluster.registry.host()
        )),
        "{message}"
    );
}

/// Registry requests for the repository `test/base` so far.
fn registry_requests(cluster: &Cluster) -> usize {
    cluster
        .registry
        .log()
        .lines()
        .filter(|line| line.contains("/v2/test/base/"))
        .count()
}

/// The image expander itself, with a warm process and an Action Cache shared by every
/// instance name: `team-a` and `team-a/ci` are served (from the caches), `team-b` and
/// `team-ab` refused before any cache or registry request.
#[tokio::test]
async fn a_warm_expander_refuses_an_image_to_instance_names_its_registry_does_not_allow() {
    let cluster = Cluster::start_serving_all(&[TEAM_A]).await;
    cluster.push("test/base", "v1", &base_image()).await;
    let images = serde_json::from_value(serde_json::json!({
        "registries": [{"hosts": [cluster.registry.host()], "instanceNamePrefixes": [TEAM_A]}],
    }))
    .unwrap();
    let cas: Arc<dyn ContentAddressableStorage> = cluster.memory_cas.clone();
    let ac: Arc<dyn ActionCache> = Arc::new(SharedActionCache(MemoryActionCache::new(1 << 30)));
    let expander = new_image_expander_from_configuration(&images, cas, ac, 2 << 20, None).unwrap();
    let instance = |name: &str| Instance::new(name, DigestFunction::Sha256);
    let amd64 = Platform::new("linux", "amd64", "");
    let reference = cluster.reference("test/base:v1");

    let cold = expander
        .expand(&instance(TEAM_A), &reference, &amd64)
        .await
        .unwrap();
    assert!(!cold.from_cache);
    let warm = expander
        .expand(&instance(TEAM_A), &reference, &amd64)
        .await
        .unwrap();
    assert!(warm.from_cache);
    // A sub-instance of team-a is allowed, and served from the shared records.
    let sub = expander
        .expand(&instance(TEAM_A_CI), &reference, &amd64)
        .await
        .unwrap();
    assert!(sub.from_cache);
    assert_eq!(sub.root_directory_digest, cold.root_directory_digest);

    let requests = registry_requests(&cluster);
    let pinned = format!("{}@{}", reference, cold.resolved_digest);
    for name in [TEAM_B, TEAM_AB, ""] {
        for image in [&reference, &pinned] {
            let err = expander
                .expand(&instance(name), image, &amd64)
                .await
                .unwrap_err();
            assert_refused_to(err.code(), err.message(), image, &cluster, name);
        }
    }
    assert_eq!(registry_requests(&cluster), requests, "no registry request");
    // team-a is still served.
    expander
        .expand(&instance(TEAM_A), &reference, &amd64)
        .await
        .unwrap();
}

/// Execute and Remote Asset FetchDirectory of the running service: team-a runs an
/// action in the image (so the service's caches are warm), team-b is refused on both
/// paths, and nothing is forwarded or pulled for it.
#[tokio::test]
async fn execute_and_fetch_directory_refuse_an_image_to_instance_names_not_allowed() {
    let cluster = Cluster::start_serving_all(&[TEAM_A, TEAM_B]).await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander(&limited_to_team_a(&cluster)).await;
    let reference = cluster.reference("test/base:v1");
    let action = ClientAction::with_images(&[&reference]);

    let stored = action.store_in(&*cluster.cas(), TEAM_A).await;
    expander.execute(stored.request()).await.result();
    let forwarded = cluster.worker.log().execute_requests.len();
    assert_eq!(forwarded, 1);
    let mut client = FetchClient::new(expander.channel().await);
    let request = |instance_name: &str| FetchDirectoryRequest {
        instance_name: instance_name.into(),
        uris: vec![reference.clone()],
        ..Default::default()
    };
    let answer = client
        .fetch_directory(request(TEAM_A))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, None);
    assert!(answer.root_directory_digest.is_some());

    let requests = registry_requests(&cluster);
    let stored = action.store_in(&*cluster.cas(), TEAM_B).await;
    let outcome = expander.execute(stored.request()).await;
    let status = outcome.refusal();
    assert_refused_to(
        status.code(),
        status.message(),
        &reference,
        &cluster,
        TEAM_B,
    );
    assert_eq!(cluster.worker.log().execute_requests.len(), forwarded);

    let answer = client
        .fetch_directory(request(TEAM_B))
        .await
        .unwrap()
        .into_inner();
    let status = answer.status.expect("a refusal in the status");
    assert_refused_to(
        Code::from_i32(status.code),
        &status.message,
        &reference,
        &cluster,
        TEAM_B,
    );
    assert_eq!(answer.root_directory_digest, None);
    assert_eq!(registry_requests(&cluster), requests, "no registry request");
    expander.stop().await;
}
