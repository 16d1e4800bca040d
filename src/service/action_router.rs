//! Router mode: `buildbarn.remoteactionrouter.ActionRouter/RouteAction`, which
//! bb_scheduler calls when its `actionRouter` is `remote`. The same rewrite as in proxy
//! mode, but the scheduler hands over the Action itself and keeps the client's action
//! digest, so the worker caches the result under it: no mapping or write-back is needed.
//!
//! Invocation keys are derived from the RequestMetadata the way Buildbarn's simple
//! router does with `correlatedInvocationsId` then `toolInvocationId`: each key is a
//! RequestMetadata holding just that field, packed in an Any, coarsest first.

use crate::action::{ActionRewriter, Rewrite};
use crate::blobstore::Instance;
use crate::digest::DigestFunction;
use crate::proto::protobuf::Any;
use crate::proto::reapi;
use crate::proto::remoteactionrouter::action_router_server::ActionRouter;
use crate::proto::remoteactionrouter::{RouteActionRequest, RouteActionResponse};
use prost::Message;
use std::sync::Arc;
use tonic::{Request, Response, Status};

const REQUEST_METADATA: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.RequestMetadata";

pub(crate) struct ExpandingActionRouter {
    rewriter: Arc<ActionRewriter>,
}

impl ExpandingActionRouter {
    pub fn new(rewriter: Arc<ActionRewriter>) -> Self {
        Self { rewriter }
    }
}

/// The invocation keys of `metadata`, coarsest first.
pub fn invocation_keys(metadata: Option<&reapi::RequestMetadata>) -> Vec<Any> {
    let default = reapi::RequestMetadata::default();
    let metadata = metadata.unwrap_or(&default);
    [
        reapi::RequestMetadata {
            correlated_invocations_id: metadata.correlated_invocations_id.clone(),
            ..Default::default()
        },
        reapi::RequestMetadata {
            tool_invocation_id: metadata.tool_invocation_id.clone(),
            ..Default::default()
        },
    ]
    .into_iter()
    .map(|m| Any {
        type_url: REQUEST_METADATA.into(),
        value: m.encode_to_vec(),
    })
    .collect()
}

#[tonic::async_trait]
impl ActionRouter for ExpandingActionRouter {
    async fn route_action(
        &self,
        request: Request<RouteActionRequest>,
    ) -> Result<Response<RouteActionResponse>, Status> {
        let request = request.into_inner();
        let action = request
            .action
            .ok_or_else(|| Status::invalid_argument("No action provided"))?;
        let hash_hint = action
            .command_digest
            .as_ref()
            .map(|d| d.hash.clone())
            .unwrap_or_default();
        let function = DigestFunction::from_request(request.digest_function, &hash_hint)?;
        let instance = Instance::new(request.instance_name, function);
        let action = match self
            .rewriter
            .rewrite_action(&instance, action.clone(), None)
            .await?
        {
            Rewrite::PassThrough => {
                crate::image::metrics::action("route_action", "passed_through");
                action
            }
            Rewrite::Rewritten(rewritten) => {
                crate::image::metrics::action("route_action", "rewritten");
                rewritten.action
            }
        };
        Ok(Response::new(RouteActionResponse {
            action: Some(action),
            invocation_keys: invocation_keys(request.request_metadata.as_ref()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invocation_keys_coarsest_first() {
        let metadata = reapi::RequestMetadata {
            tool_invocation_id: "tool".into(),
            correlated_invocations_id: "build".into(),
            action_id: "a".into(),
            ..Default::default()
        };
        let keys = invocation_keys(Some(&metadata));
        assert_eq!(keys.len(), 2);
        let first = reapi::RequestMetadata::decode(keys[0].value.as_slice()).unwrap();
        let second = reapi::RequestMetadata::decode(keys[1].value.as_slice()).unwrap();
        assert_eq!(first.correlated_invocations_id, "build");
        assert!(first.tool_invocation_id.is_empty());
        assert_eq!(second.tool_invocation_id, "tool");
        assert!(second.action_id.is_empty());
    }
}
