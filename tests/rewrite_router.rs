//! Router mode: bb_scheduler (`actionRouter: { remote: ... }`) calls
//! `buildbarn.remoteactionrouter.ActionRouter/RouteAction` on the expander with the
//! client's Action and gets the rewritten Action back, plus invocation keys derived from
//! the RequestMetadata as Buildbarn's simple router derives them. The scheduler keeps the
//! client's action digest. See `rewrite_support` for the harness.

// Command.platform is deprecated in REAPI; the rewrite must still mirror it.
#![allow(deprecated)]

mod rewrite_support;
mod support;

use bb_container_expander::blobstore::get_message;
use bb_container_expander::proto::protobuf::Any;
use bb_container_expander::proto::reapi;
use bb_container_expander::proto::remoteactionrouter::action_router_client::ActionRouterClient;
use bb_container_expander::proto::remoteactionrouter::{RouteActionRequest, RouteActionResponse};
use bb_container_expander::status::missing_blobs_of;
use prost::Message;
use rewrite_support::*;
use tonic::Code;

const REQUEST_METADATA: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.RequestMetadata";

fn metadata() -> reapi::RequestMetadata {
    reapi::RequestMetadata {
        tool_details: Some(reapi::ToolDetails {
            tool_name: "bazel".into(),
            tool_version: "4.2.3".into(),
        }),
        action_id: "action-1".into(),
        tool_invocation_id: "tool-invocation-1".into(),
        correlated_invocations_id: "build-1".into(),
        action_mnemonic: "Genrule".into(),
        target_id: "//pkg:target".into(),
        ..Default::default()
    }
}

fn key(metadata: reapi::RequestMetadata) -> Any {
    Any {
        type_url: REQUEST_METADATA.into(),
        value: metadata.encode_to_vec(),
    }
}

async fn route(
    expander: &Expander,
    action: Option<reapi::Action>,
    request_metadata: Option<reapi::RequestMetadata>,
) -> Result<RouteActionResponse, tonic::Status> {
    ActionRouterClient::new(expander.channel().await)
        .route_action(RouteActionRequest {
            instance_name: INSTANCE.into(),
            digest_function: reapi::digest_function::Value::Sha256 as i32,
            action,
            request_metadata,
        })
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn route_action_returns_the_rewritten_action_and_invocation_keys() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster
        .router(
        "{ inputRootDirectory: 'b', addPlatformProperties: [{ name: 'chroot', value: 'true' }] }",
    )
    .await;
    let reference = cluster.reference("test/base:v1");
    let stored = cluster
        .store(&ClientAction::with_images(&[&reference]))
        .await;

    let response = route(&expander, Some(stored.action.clone()), Some(metadata()))
        .await
        .expect("routed");
    assert_eq!(
        response.invocation_keys,
        vec![
            key(reapi::RequestMetadata {
                correlated_invocations_id: "build-1".into(),
                ..Default::default()
            }),
            key(reapi::RequestMetadata {
                tool_invocation_id: "tool-invocation-1".into(),
                ..Default::default()
            }),
        ]
    );
    let routed = response.action.expect("an action");
    let expected_platform = vec![
        ("OSFamily".to_string(), "linux".to_string()),
        ("chroot".into(), "true".into()),
    ];
    assert_eq!(pairs(routed.platform.as_ref()), expected_platform);
    assert_eq!(routed.timeout, stored.action.timeout);
    assert_eq!(routed.do_not_cache, stored.action.do_not_cache);
    assert_ne!(routed.input_root_digest, stored.action.input_root_digest);
    let command: reapi::Command = get_message(
        &*cluster.cas(),
        &instance(),
        routed.command_digest.as_ref().unwrap(),
    )
    .await
    .expect("the rewritten Command is in the CAS");
    assert_eq!(command.working_directory, "b/src");
    assert_eq!(pairs(command.platform.as_ref()), expected_platform);
    assert_eq!(command.arguments, stored.command.arguments);

    // Everything the routed action names is in the CAS: a worker handed it (as
    // bb_scheduler hands the routed Action) finds the image and the inputs.
    let (digest, bytes) =
        bb_container_expander::digest::encode_message(instance().digest_function, &routed);
    cluster
        .cas()
        .put(&instance(), &digest, bytes)
        .await
        .unwrap();
    let worker = reapi::execution_client::ExecutionClient::connect(format!(
        "http://{}",
        cluster.worker.address()
    ))
    .await
    .unwrap();
    let mut stream = worker
        .clone()
        .execute(reapi::ExecuteRequest {
            instance_name: INSTANCE.into(),
            action_digest: Some(digest),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    while stream.message().await.unwrap().is_some() {}
    let log = cluster.worker.snapshot();
    let seen = &log.executions[0];
    assert!(seen.is_executable("usr/bin/env"));
    assert_eq!(
        seen.file("b/src/main.c"),
        Some(&b"int main() { return 0; }\n"[..])
    );
    assert!(seen.is_directory("b/src"));

    // Without a scheduler the expander serves the router only.
    let status = expander
        .client()
        .await
        .execute(stored.request())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    expander.stop().await;
}

#[tokio::test]
async fn route_action_passes_through_actions_without_image() {
    let cluster = Cluster::start().await;
    let expander = cluster.router("{}").await;
    let stored = cluster.store(&ClientAction::with_images(&[])).await;
    let response = route(&expander, Some(stored.action.clone()), Some(metadata()))
        .await
        .unwrap();
    assert_eq!(response.action.as_ref(), Some(&stored.action));
    assert_eq!(response.invocation_keys.len(), 2);
    // Without RequestMetadata the keys are those of empty identifiers.
    let response = route(&expander, Some(stored.action.clone()), None)
        .await
        .unwrap();
    assert_eq!(response.action.as_ref(), Some(&stored.action));
    assert_eq!(
        response.invocation_keys,
        vec![
            key(reapi::RequestMetadata::default()),
            key(reapi::RequestMetadata::default())
        ]
    );
    expander.stop().await;
}

#[tokio::test]
async fn route_action_refuses_bad_input_with_the_right_code() {
    let cluster = Cluster::start().await;
    cluster.push("test/base", "v1", &base_image()).await;
    let expander = cluster.router("{}").await;
    let reference = cluster.reference("test/base:v1");

    let status = route(&expander, None, None).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(status.message(), "No action provided");

    // The Command is not in the CAS.
    let stored = ClientAction::with_images(&[&reference]);
    let mut action = cluster.store(&stored).await.action;
    let missing = bb_container_expander::digest::DigestFunction::Sha256.digest_of(b"no command");
    action.command_digest = Some(missing.clone());
    let status = route(&expander, Some(action), None).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        missing_blobs_of(&status),
        vec![format!("blobs/{}/{}", missing.hash, missing.size_bytes)]
    );

    // A registry that is not allowed, and a missing image.
    for (image, code) in [
        (
            "docker://registry.example.com/x:1".to_string(),
            Code::PermissionDenied,
        ),
        (
            cluster.reference("test/missing:v1"),
            Code::FailedPrecondition,
        ),
    ] {
        let stored = cluster.store(&ClientAction::with_images(&[&image])).await;
        let status = route(&expander, Some(stored.action), None)
            .await
            .unwrap_err();
        assert_eq!(status.code(), code, "{status:?}");
        assert!(
            status
                .message()
                .starts_with(&format!("Failed to expand image {image}: ")),
            "{status:?}"
        );
    }
    expander.stop().await;
}
