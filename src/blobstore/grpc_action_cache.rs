//! An Action Cache on the other side of a gRPC connection (bb_storage, or any REAPI
//! `ActionCache` server).
//!
//! Why it exists: the expander keeps its own cache entries in the AC and writes results
//! back under the digests clients asked for (so that their next build hits the cache), and that AC is the one
//! the frontend serves, so it is remote. Every request carries the instance name and
//! the digest function, because the AC is keyed by both.

use super::{ActionCache, Instance};
use crate::digest::display;
use crate::grpc::GrpcChannel;
use crate::proto::reapi;
use crate::proto::reapi::action_cache_client::ActionCacheClient;
use crate::status::StatusContext;
use async_trait::async_trait;
use tonic::Status;

pub(crate) struct GrpcActionCache {
    client: ActionCacheClient<GrpcChannel>,
}

impl GrpcActionCache {
    pub fn new(channel: GrpcChannel) -> Self {
        Self {
            client: ActionCacheClient::new(channel),
        }
    }
}

#[async_trait]
impl ActionCache for GrpcActionCache {
    async fn get_action_result(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
    ) -> Result<reapi::ActionResult, Status> {
        self.client
            .clone()
            .get_action_result(reapi::GetActionResultRequest {
                instance_name: instance.name.clone(),
                action_digest: Some(action_digest.clone()),
                inline_stdout: false,
                inline_stderr: false,
                inline_output_files: vec![],
                digest_function: instance.digest_function.to_proto() as i32,
            })
            .await
            .map(tonic::Response::into_inner)
            .context_with(|| format!("Failed to obtain action result {}", display(action_digest)))
    }

    async fn put_action_result(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
        result: reapi::ActionResult,
    ) -> Result<(), Status> {
        self.client
            .clone()
            .update_action_result(reapi::UpdateActionResultRequest {
                instance_name: instance.name.clone(),
                action_digest: Some(action_digest.clone()),
                action_result: Some(result),
                results_cache_policy: None,
                digest_function: instance.digest_function.to_proto() as i32,
            })
            .await
            .map(|_| ())
            .context_with(|| format!("Failed to store action result {}", display(action_digest)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::testutil::BlobstoreServer;
    use tonic::Code;

    fn result(exit_code: i32) -> reapi::ActionResult {
        reapi::ActionResult {
            exit_code,
            stdout_raw: b"out".to_vec(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn round_trip_with_instance_name_and_digest_function() {
        let server = BlobstoreServer::start_in_memory_serving(&["", "foo", "foo/bar"]).await;
        let ac = GrpcActionCache::new(server.channel());
        let instance = Instance::new("foo/bar", DigestFunction::Sha512);
        let action = DigestFunction::Sha512.digest_of(b"action");
        ac.put_action_result(&instance, &action, result(7))
            .await
            .unwrap();
        assert_eq!(
            ac.get_action_result(&instance, &action).await.unwrap(),
            result(7)
        );
        for call in server.call_log() {
            assert_eq!(call.instance_name, "foo/bar");
            assert_eq!(call.digest_function, Some(DigestFunction::Sha512));
        }
        assert_eq!(server.calls("UpdateActionResult"), 1);
        assert_eq!(server.calls("GetActionResult"), 1);

        // The entry is specific to its instance name.
        let other = Instance::new("foo", DigestFunction::Sha512);
        let err = ac.get_action_result(&other, &action).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }

    #[tokio::test]
    async fn missing_entry_is_not_found() {
        let server = BlobstoreServer::start_in_memory_serving(&["", "foo", "foo/bar"]).await;
        let ac = GrpcActionCache::new(server.channel());
        let instance = Instance::new("", DigestFunction::Sha256);
        let action = DigestFunction::Sha256.digest_of(b"action");
        let err = ac.get_action_result(&instance, &action).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(
            err.message(),
            format!(
                "Failed to obtain action result {0}: Action result {0} not found",
                display(&action)
            )
        );
    }

    #[tokio::test]
    async fn update_errors_keep_their_code() {
        let server = BlobstoreServer::start_in_memory_serving(&["", "foo", "foo/bar"]).await;
        let ac = GrpcActionCache::new(server.channel());
        let instance = Instance::new("", DigestFunction::Sha256);
        let action = DigestFunction::Sha256.digest_of(b"action");
        server.fail_next(
            "UpdateActionResult",
            Status::permission_denied("Writes not permitted"),
        );
        let err = ac
            .put_action_result(&instance, &action, result(0))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert_eq!(
            err.message(),
            format!(
                "Failed to store action result {}: Writes not permitted",
                display(&action)
            )
        );
    }
}
