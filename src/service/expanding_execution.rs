//! `Execution` for proxy mode: actions that name a container image are rewritten
//! (see `action::rewriter`) and the rewritten action is forwarded; all others pass
//! through untouched. Operations are relayed as they arrive, mapped back to the client's
//! action (see `action::results`), and named `{instance_name}/operations/{scheduler's
//! name}` so that WaitExecution finds the instance again (see `operation_names`).
//!
//! While an image is being expanded (a cold pull can take minutes), the client's stream
//! is kept alive with an operation update every `keepalive_interval` (stage
//! CACHE_CHECK, the client's action digest), so that neither the client nor a proxy in
//! between gives up. The action's own timeout is not touched: expansion time is not
//! counted against it.
//!
//! If the scheduler reports blobs missing for a rewritten action (image content evicted
//! since expansion), the local caches are dropped, the action is rewritten again
//! (re-ingesting what is gone) and forwarded once more. Missing blobs are reported in two
//! ways, and both are handled: bb_scheduler fails the Execute call itself when the Action
//! is missing, and bb_worker completes the operation with an ExecuteResponse whose status
//! is FAILED_PRECONDITION with a PreconditionFailure when input blobs are missing. In the
//! second case the operations of the first attempt that came before the final one have
//! been relayed already; the final one is not, and the client sees the operations of the
//! second attempt next.

use super::execution_proxy::{grpc_timeout, ExecutionProxy, OperationStream};
use super::operation_names;
use crate::action::results::ResultMapper;
use crate::action::{ActionRewriter, Rewrite, RewrittenAction};
use crate::blobstore::Instance;
use crate::digest::DigestFunction;
use crate::proto::longrunning::{operation, Operation};
use crate::proto::protobuf::Any;
use crate::proto::reapi;
use crate::proto::reapi::execution_server::Execution;
use crate::proto::reapi::{ExecuteRequest, WaitExecutionRequest};
use futures::StreamExt;
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status};

/// How the scheduler's part of a keepalive operation's name starts.
const KEEPALIVE_PREFIX: &str = "bb-container-expander/expanding/";

#[derive(Clone)]
pub struct ExpandingExecution {
    upstream: ExecutionProxy,
    rewriter: Arc<ActionRewriter>,
    results: Arc<ResultMapper>,
    keepalive_interval: Duration,
}

impl ExpandingExecution {
    pub fn new(
        upstream: ExecutionProxy,
        rewriter: Arc<ActionRewriter>,
        results: Arc<ResultMapper>,
        keepalive_interval: Duration,
    ) -> Self {
        Self {
            upstream,
            rewriter,
            results,
            keepalive_interval,
        }
    }

    fn keepalive_operation(name: &str, action_digest: &reapi::Digest) -> Operation {
        let metadata = reapi::ExecuteOperationMetadata {
            stage: reapi::execution_stage::Value::CacheCheck as i32,
            action_digest: Some(action_digest.clone()),
            ..Default::default()
        };
        Operation {
            name: name.to_string(),
            metadata: Some(Any {
                type_url:
                    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata"
                        .into(),
                value: metadata.encode_to_vec(),
            }),
            done: false,
            result: None,
        }
    }

    /// Rewrites, sending keepalive operations while that takes time. `None` when the
    /// client went away.
    async fn rewrite_with_keepalive(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
        sender: &mpsc::Sender<Result<Operation, Status>>,
    ) -> Option<Result<Rewrite, Status>> {
        let rewrite = self.rewriter.rewrite_digest(instance, action_digest);
        tokio::pin!(rewrite);
        let name = operation_names::external(
            &instance.name,
            &format!(
                "{KEEPALIVE_PREFIX}{}",
                crate::blobstore::grpc_content_addressable_storage::new_upload_uuid()
            ),
        );
        let mut ticker = tokio::time::interval_at(
            tokio::time::Instant::now() + self.keepalive_interval,
            self.keepalive_interval,
        );
        loop {
            tokio::select! {
                result = &mut rewrite => return Some(result),
                // The client cancelled or its deadline passed: stop waiting at once, so
                // that an expansion nobody else waits for is abandoned (abandonGracePeriod).
                () = sender.closed() => return None,
                _ = ticker.tick() => {
                    if sender.send(Ok(Self::keepalive_operation(&name, action_digest))).await.is_err() {
                        return None;
                    }
                }
            }
        }
    }

    /// Forwards the rewritten action while its mapping is recorded (bookkeeping that
    /// cannot fail the action, so it runs beside the forwarding, not before it).
    async fn forward_rewritten(
        &self,
        request: &ExecuteRequest,
        rewritten: &RewrittenAction,
        timeout: Option<Duration>,
    ) -> Result<OperationStream, Status> {
        let forwarded = ExecuteRequest {
            action_digest: Some(rewritten.action_digest.clone()),
            ..request.clone()
        };
        let record = async {
            if rewritten.mapping_blobs_uploaded {
                self.results.record_entry(&rewritten.provenance).await
            } else {
                self.results.record(&rewritten.provenance).await
            }
        };
        let ((), stream) = tokio::join!(record, self.forward(forwarded, timeout));
        stream
    }

    /// Forwards an ExecuteRequest, timing the step until the scheduler accepted it.
    async fn forward(
        &self,
        request: ExecuteRequest,
        timeout: Option<Duration>,
    ) -> Result<OperationStream, Status> {
        let started = std::time::Instant::now();
        let result = self.upstream.forward_execute(request, timeout).await;
        crate::image::metrics::step("forward", result.is_ok(), started.elapsed().as_secs_f64());
        result
    }

    /// Relays `stream` into `sender`, naming each operation for `instance_name` and
    /// mapping it back when `provenance` is set. With `retry_on_missing_blobs`, a final
    /// operation (or an error) reporting blobs missing is not relayed but returned.
    async fn relay(
        &self,
        mut stream: OperationStream,
        instance_name: &str,
        provenance: Option<Arc<crate::proto::cache::ExpansionProvenance>>,
        retry_on_missing_blobs: bool,
        sender: &mpsc::Sender<Result<Operation, Status>>,
    ) -> Relayed {
        while let Some(item) = stream.next().await {
            if retry_on_missing_blobs {
                if let Some(message) = missing_blobs_reported(&item) {
                    return Relayed::MissingBlobs(message);
                }
            }
            let item = match (item, &provenance) {
                (Ok(op), Some(p)) => Ok(self.results.map_back(op, p)),
                (other, _) => other,
            }
            .map(|mut op| {
                op.name = operation_names::external(instance_name, &op.name);
                op
            });
            // The write-back under the client's digest follows the relayed result, off
            // the path of the client's response.
            let write_back = match (&item, &provenance) {
                (Ok(op), Some(p)) if op.done => Some((op.clone(), p.clone())),
                _ => None,
            };
            if sender.send(item).await.is_err() {
                // The client went away: dropping `stream` cancels the upstream call.
                return Relayed::Done;
            }
            if let Some((op, p)) = write_back {
                self.results.write_back_result(&op, &p).await;
            }
        }
        Relayed::Done
    }

    async fn execute_task(
        self,
        request: ExecuteRequest,
        timeout: Option<Duration>,
        sender: mpsc::Sender<Result<Operation, Status>>,
    ) {
        let result: Result<(), Status> = async {
            let action_digest = request
                .action_digest
                .clone()
                .ok_or_else(|| Status::invalid_argument("No action digest provided"))?;
            operation_names::validate_instance_name(&request.instance_name)?;
            let function = DigestFunction::from_request(request.digest_function, &action_digest.hash)?;
            let instance = Instance::new(request.instance_name.clone(), function);
            let mut retried = false;
            loop {
                let Some(rewrite) = self.rewrite_with_keepalive(&instance, &action_digest, &sender).await else {
                    return Ok(());
                };
                match rewrite? {
                    Rewrite::PassThrough => {
                        crate::image::metrics::action("execute", "passed_through");
                        let stream = self.forward(request.clone(), timeout).await?;
                        self.relay(stream, &instance.name, None, false, &sender).await;
                        return Ok(());
                    }
                    Rewrite::Rewritten(rewritten) => {
                        crate::image::metrics::action("execute", "rewritten");
                        let missing = match self.forward_rewritten(&request, &rewritten, timeout).await {
                            Ok(stream) => {
                                let provenance = Some(Arc::new(rewritten.provenance));
                                match self.relay(stream, &instance.name, provenance, !retried, &sender).await {
                                    Relayed::Done => return Ok(()),
                                    Relayed::MissingBlobs(message) => message,
                                }
                            }
                            Err(status)
                                if !retried && !crate::status::missing_blobs_of(&status).is_empty() =>
                            {
                                status.message().to_string()
                            }
                            Err(status) => return Err(status),
                        };
                        tracing::warn!(
                            "Scheduler reports missing blobs for a rewritten action; expanding again: {missing}"
                        );
                        self.rewriter.forget_local_caches();
                        retried = true;
                    }
                }
            }
        }
        .await;
        if let Err(status) = result {
            let _ = sender.send(Err(status)).await;
        }
    }
}

/// How relaying an operation stream ended.
enum Relayed {
    /// The stream ended (an error included, which was relayed), or the client went away.
    Done,
    /// The scheduler reported blobs missing (not relayed); the message says which.
    MissingBlobs(String),
}

/// The message of an error, or of a final operation, that reports blobs missing with
/// REAPI's PreconditionFailure, if `item` is one.
fn missing_blobs_reported(item: &Result<Operation, Status>) -> Option<String> {
    let status = match item {
        Err(status) => status.clone(),
        Ok(op) if op.done => {
            let status = match &op.result {
                Some(operation::Result::Response(any)) => {
                    reapi::ExecuteResponse::decode(any.value.as_slice())
                        .ok()?
                        .status?
                }
                Some(operation::Result::Error(status)) => status.clone(),
                None => return None,
            };
            if status.code != Code::FailedPrecondition as i32 {
                return None;
            }
            Status::with_details(
                Code::FailedPrecondition,
                status.message.clone(),
                status.encode_to_vec().into(),
            )
        }
        Ok(_) => return None,
    };
    if crate::status::missing_blobs_of(&status).is_empty() {
        None
    } else {
        Some(status.message().to_string())
    }
}

#[tonic::async_trait]
impl Execution for ExpandingExecution {
    type ExecuteStream = OperationStream;
    type WaitExecutionStream = OperationStream;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let (sender, receiver) = mpsc::channel(4);
        let this = self.clone();
        let request = request.into_inner();
        // Runs in the scope of the incoming call, so metadata forwarding still sees its
        // headers.
        tokio::spawn(crate::grpc::metadata_forwarding::propagate(
            this.execute_task(request, timeout, sender),
        ));
        Ok(Response::new(
            tokio_stream::wrappers::ReceiverStream::new(receiver).boxed(),
        ))
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let name = request.into_inner().name;
        let (instance_name, upstream) = operation_names::parse(&name);
        if upstream.starts_with(KEEPALIVE_PREFIX) {
            return Err(Status::not_found(format!(
                "Operation {name} was an image expansion that is no longer running; call Execute again"
            )));
        }
        let instance_name = instance_name.to_string();
        let stream = self
            .upstream
            .forward_wait_execution(
                WaitExecutionRequest {
                    name: upstream.to_string(),
                },
                timeout,
            )
            .await?;
        let results = self.results.clone();
        // Each operation names the rewritten action; map it back when it is one of ours.
        let mapped = stream.then(move |item| {
            let results = results.clone();
            let instance_name = instance_name.clone();
            async move {
                let mut op = item?;
                op.name = operation_names::external(&instance_name, &op.name);
                let Some(digest) = ResultMapper::action_digest_of(&op) else {
                    return Ok(op);
                };
                match results.lookup(&instance_name, &digest).await {
                    Ok(Some(provenance)) => Ok(results.map_operation(op, &provenance).await),
                    Ok(None) => Ok(op),
                    Err(s) => {
                        tracing::warn!(
                            "Failed to look up rewritten action {} of instance {instance_name:?}: {}",
                            crate::digest::display(&digest),
                            s.message()
                        );
                        Ok(op)
                    }
                }
            }
        });
        Ok(Response::new(mapped.boxed()))
    }
}
