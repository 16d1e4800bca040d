//! The Remote Asset API (`build.bazel.remote.asset.v1.Fetch`, `serveRemoteAsset`) against
//! a running expander with a real docker-registry and the in-process storage of
//! `rewrite_support`: `FetchDirectory` of a `docker://` URI answers the root Directory
//! digest that the image expander computes, under the request's instance name.

mod rewrite_support;
mod support;

use bb_container_expander::blobstore::{
    ActionCache, ContentAddressableStorage, Instance, MemoryActionCache,
};
use bb_container_expander::digest::DigestFunction;
use bb_container_expander::image::new_image_expander_from_configuration;
use bb_container_expander::proto::asset::fetch_client::FetchClient;
use bb_container_expander::proto::asset::{
    FetchBlobRequest, FetchDirectoryRequest, FetchDirectoryResponse, Qualifier,
};
use bb_container_expander::proto::error_details::BadRequest;
use bb_container_expander::proto::{reapi, rpc};
use bb_container_expander::registry::Platform;
use prost::Message;
use rewrite_support::*;
use std::sync::Arc;
use tonic::transport::Channel;
use tonic::{Code, Status};

fn qualifier(name: &str, value: &str) -> Qualifier {
    Qualifier {
        name: name.into(),
        value: value.into(),
    }
}

async fn fetch(
    expander: &Expander,
    instance_name: &str,
    uris: &[&str],
    qualifiers: Vec<Qualifier>,
) -> Result<FetchDirectoryResponse, Status> {
    let mut client: FetchClient<Channel> = FetchClient::new(expander.channel().await);
    client
        .fetch_directory(FetchDirectoryRequest {
            instance_name: instance_name.into(),
            uris: uris.iter().map(|u| u.to_string()).collect(),
            qualifiers,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// The root digest the image expander itself gives `reference`, over the cluster's CAS.
async fn expanded_root(cluster: &Cluster, reference: &str) -> reapi::Digest {
    expanded_root_for(cluster, reference, "amd64").await
}

async fn expanded_root_for(cluster: &Cluster, reference: &str, arch: &str) -> reapi::Digest {
    let images = serde_json::from_value(serde_json::json!({
        "registries": [{"hosts": [cluster.registry.host()]}],
    }))
    .unwrap();
    let cas: Arc<dyn ContentAddressableStorage> = cluster.memory_cas.clone();
    let ac: Arc<dyn ActionCache> = Arc::new(MemoryActionCache::new(1 << 30));
    let expander = new_image_expander_from_configuration(&images, cas, ac, 2 << 20, None).unwrap();
    expander
        .expand(
            &Instance::new(cluster.instance.clone(), DigestFunction::Sha256),
            reference,
            &Platform::new("linux", arch, ""),
        )
        .await
        .unwrap()
        .root_directory_digest
}

#[tokio::test]
async fn fetch_directory_answers_the_digest_expand_gives() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");

    let response = fetch(&expander, &cluster.instance, &[&reference], vec![])
        .await
        .unwrap();
    assert_eq!(response.status, None);
    assert_eq!(response.uri, reference);
    assert_eq!(response.qualifiers, vec![]);
    assert_eq!(
        response.digest_function,
        reapi::digest_function::Value::Sha256 as i32
    );
    let root = response.root_directory_digest.unwrap();
    assert_eq!(root, expanded_root(&cluster, &reference).await);
    // The tree is in the instance's CAS.
    let missing = cluster
        .cas()
        .find_missing(&rewrite_support::instance(), vec![root.clone()])
        .await
        .unwrap();
    assert!(missing.is_empty(), "{missing:?}");

    // The platform qualifier, and URIs of other schemes skipped.
    let response = fetch(
        &expander,
        &cluster.instance,
        &["https://example.com/rootfs.tar.gz", &reference],
        vec![qualifier("platform", "linux/amd64")],
    )
    .await
    .unwrap();
    assert_eq!(response.uri, reference);
    assert_eq!(
        response.qualifiers,
        vec![qualifier("platform", "linux/amd64")]
    );
    assert_eq!(response.root_directory_digest, Some(root));
    expander.stop().await;
}

/// One image per platform in an index: the qualifier chooses.
#[tokio::test]
async fn the_platform_qualifier_chooses_from_an_index() {
    use support::images::{Compression, Flavor, ImageBuilder, IndexBuilder, Layer};
    let cluster = Cluster::start().await;
    let image_for = |arch: &str| {
        ImageBuilder::new(Flavor::Oci)
            .platform("linux", arch, "")
            .layer(Layer::from_files(
                &[("etc/arch", arch.as_bytes())],
                Compression::Gzip,
                Flavor::Oci,
            ))
            .build()
    };
    let (amd64, arm64) = (image_for("amd64"), image_for("arm64"));
    let index = IndexBuilder::new(Flavor::Oci)
        .image(&amd64)
        .image(&arm64)
        .build();
    cluster
        .registry
        .pusher()
        .push_index("test/multi", Some("v1"), &index, &[&amd64, &arm64])
        .await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/multi:v1");
    let mut roots = vec![];
    for (arch, qualifiers) in [
        ("amd64", vec![]),
        ("amd64", vec![qualifier("platform", "linux/amd64")]),
        ("arm64", vec![qualifier("platform", "linux/arm64")]),
    ] {
        let response = fetch(&expander, &cluster.instance, &[&reference], qualifiers)
            .await
            .unwrap();
        let root = response.root_directory_digest.unwrap();
        assert_eq!(root, expanded_root_for(&cluster, &reference, arch).await);
        roots.push(root);
    }
    assert_eq!(roots[0], roots[1]);
    assert_ne!(roots[0], roots[2]);
    expander.stop().await;
}

#[tokio::test]
async fn the_request_instance_name_is_used() {
    let cluster = Cluster::start_serving("a/b").await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");
    let response = fetch(&expander, "a/b", &[&reference], vec![])
        .await
        .unwrap();
    let root = response.root_directory_digest.unwrap();
    assert_eq!(root, expanded_root(&cluster, &reference).await);
    // Storage serves "a/b" only: another instance name reaches it and is refused there.
    let err = fetch(&expander, "main", &[&reference], vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("\"main\""), "{err:?}");
    // Names the REAPI refuses are refused before any work.
    let err = fetch(&expander, "a//b", &[&reference], vec![])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    expander.stop().await;
}

#[tokio::test]
async fn other_schemes_and_blobs_are_not_found() {
    let cluster = Cluster::start().await;
    let expander = cluster.expander("{}").await;
    let err = fetch(
        &expander,
        &cluster.instance,
        &[
            "https://example.com/rootfs.tar.gz",
            "git://example.com/repo",
        ],
        vec![],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let reference = cluster.reference("test/base:v1");
    let err = FetchClient::new(expander.channel().await)
        .fetch_blob(FetchBlobRequest {
            instance_name: cluster.instance.clone(),
            uris: vec![reference],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    expander.stop().await;
}

#[tokio::test]
async fn unsupported_qualifiers_are_invalid_arguments() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let reference = cluster.reference("test/base:v1");
    let err = fetch(
        &expander,
        &cluster.instance,
        &[&reference],
        vec![
            qualifier("platform", "linux/amd64"),
            qualifier("resource_type", "application/x-tar"),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let details = rpc::Status::decode(err.details()).unwrap();
    assert_eq!(
        details.details[0].type_url,
        "type.googleapis.com/google.rpc.BadRequest"
    );
    let request = BadRequest::decode(details.details[0].value.as_slice()).unwrap();
    assert_eq!(request.field_violations.len(), 1);
    assert_eq!(request.field_violations[0].field, "qualifiers.name");
    assert_eq!(
        request.field_violations[0].description,
        "\"resource_type\" not supported"
    );
    // A malformed platform.
    let err = fetch(
        &expander,
        &cluster.instance,
        &[&reference],
        vec![qualifier("platform", "amd64")],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    // Nothing was pulled for refused requests.
    assert!(!cluster
        .registry
        .log()
        .contains("GET /v2/test/base/manifests"));
    expander.stop().await;
}

#[tokio::test]
async fn missing_images_are_answered_in_the_status() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.expander("{}").await;
    let missing = cluster.reference("test/missing:v1");
    let response = fetch(&expander, &cluster.instance, &[&missing], vec![])
        .await
        .unwrap();
    let status = response.status.unwrap();
    assert_eq!(status.code, Code::NotFound as i32, "{status:?}");
    assert!(status.message.contains("test/missing"), "{status:?}");
    assert_eq!(response.uri, missing);
    assert_eq!(response.root_directory_digest, None);
    // A single-platform image for another platform than the one asked for (Execute
    // would use it, as Docker does; a Remote Asset answer must match its qualifiers).
    let reference = cluster.reference("test/base:v1");
    let response = fetch(
        &expander,
        &cluster.instance,
        &[&reference],
        vec![qualifier("platform", "linux/arm64")],
    )
    .await
    .unwrap();
    let status = response.status.unwrap();
    assert_eq!(status.code, Code::FailedPrecondition as i32, "{status:?}");
    assert!(status.message.contains("linux/amd64"), "{status:?}");
    assert_eq!(response.root_directory_digest, None);
    expander.stop().await;
}
