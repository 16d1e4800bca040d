//! An in-process stand-in for bb_scheduler *and* a worker behind it, for tests of the
//! Execute rewrite: it serves `Execution` on a loopback port, and for each Execute it
//!
//! 1. reads the Action it was sent from the shared CAS, as bb_scheduler does (a missing
//!    Action fails the call with FAILED_PRECONDITION and a PreconditionFailure);
//! 2. reads the Command and materialises the whole input root in memory, walking the
//!    Directories and reading every file, as bb_worker does (missing blobs complete the
//!    operation with an ExecuteResponse whose status is FAILED_PRECONDITION with a
//!    PreconditionFailure, as bb_worker reports them);
//! 3. records what it saw ([`ObservedExecution`]: request, headers, Action, Command and
//!    every path of the input root);
//! 4. answers with QUEUED, EXECUTING and a final operation whose ExecuteResponse carries
//!    an ActionResult: the configured exit code, one output file per output path,
//!    execution metadata; `ExecuteOperationMetadata.action_digest` is always the digest
//!    it received, as bb_scheduler's;
//! 5. on success (exit code 0, `do_not_cache` false) writes the ActionResult to the
//!    Action Cache under the digest it received, as bb_worker does.
//!
//! Like a real scheduler it serves a fixed set of instance names (only `""` unless
//! started with [`FakeWorker::start_serving`]); Execute for any other fails with
//! INVALID_ARGUMENT before anything is read.
//!
//! Completed operations stay known by name, so `WaitExecution` returns their final
//! operation (an unknown name is NOT_FOUND, as for bb_scheduler).
//!
//! ```ignore
//! let worker = FakeWorker::start(storage.cas(), Some(storage.ac())).await;
//! worker.set_behaviour(WorkerBehaviour { exit_code: 1, ..Default::default() });
//! // point the expander's `scheduler` at worker.address() ...
//! worker.wait_until(Duration::from_secs(30), |log| log.executions.len() == 1).await;
//! assert_eq!(worker.log().executions[0].file("etc/os-release"), Some(&b"ID=test\n"[..]));
//! ```

use super::scheduler::{final_operation, stage_operation, InstanceNames, Recorder};
use crate::blobstore::{get_message, ActionCache, ContentAddressableStorage, Instance};
use crate::digest::DigestFunction;
use crate::proto::longrunning::Operation;
use crate::proto::reapi;
use crate::proto::reapi::execution_server::{Execution, ExecutionServer};
use crate::proto::reapi::{ExecuteRequest, WaitExecutionRequest};
use bytes::Bytes;
use futures::stream::BoxStream;
use parking_lot::Mutex;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Code, Request, Response, Status};

/// Name the worker puts in `ExecutedActionMetadata.worker`.
pub const WORKER_NAME: &str = "fake-worker";

/// One node of a materialised input root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InputNode {
    File { contents: Bytes, executable: bool },
    Directory,
    Symlink(String),
}

/// An action the worker ran (its input root was complete).
#[derive(Clone, Debug)]
pub struct ObservedExecution {
    pub request: ExecuteRequest,
    pub headers: http::HeaderMap,
    pub action: reapi::Action,
    pub command: reapi::Command,
    /// Every path of the input root ("a/b/c", no leading slash; the root itself is not
    /// listed).
    pub input_root: BTreeMap<String, InputNode>,
    pub operation_name: String,
}

impl ObservedExecution {
    /// The contents of the regular file at `path`.
    pub fn file(&self, path: &str) -> Option<&[u8]> {
        match self.input_root.get(path) {
            Some(InputNode::File { contents, .. }) => Some(contents),
            _ => None,
        }
    }

    /// Whether `path` is an executable regular file.
    pub fn is_executable(&self, path: &str) -> bool {
        matches!(
            self.input_root.get(path),
            Some(InputNode::File {
                executable: true,
                ..
            })
        )
    }

    /// Whether `path` is a directory ("" is the root).
    pub fn is_directory(&self, path: &str) -> bool {
        path.is_empty() || self.input_root.get(path) == Some(&InputNode::Directory)
    }

    /// The target of the symlink at `path`.
    pub fn symlink(&self, path: &str) -> Option<&str> {
        match self.input_root.get(path) {
            Some(InputNode::Symlink(target)) => Some(target),
            _ => None,
        }
    }

    /// The digest the worker received.
    pub fn action_digest(&self) -> &reapi::Digest {
        self.request
            .action_digest
            .as_ref()
            .expect("recorded requests have an action digest")
    }
}

/// What the worker received.
#[derive(Clone, Default)]
pub struct FakeWorkerLog {
    /// Every Execute request, in arrival order (also those that were refused).
    pub execute_requests: Vec<ExecuteRequest>,
    /// Actions whose input root was complete, in arrival order.
    pub executions: Vec<ObservedExecution>,
    /// Per Execute whose input root was incomplete: the blobs that were missing.
    pub incomplete_inputs: Vec<Vec<reapi::Digest>>,
    pub wait_execution_requests: Vec<WaitExecutionRequest>,
}

/// How the worker behaves.
#[derive(Clone, Debug, Default)]
pub struct WorkerBehaviour {
    /// Exit code of every action.
    pub exit_code: i32,
    /// Send only the first (QUEUED) operation, then end the stream; the final
    /// operation is available through WaitExecution (as when a connection breaks).
    pub stop_after_queued: bool,
    /// Refuse this many of the next Execute calls with FAILED_PRECONDITION and a
    /// PreconditionFailure naming the action digest, as bb_scheduler does when the
    /// Action is missing from the CAS.
    pub refuse_with_missing_action: usize,
    /// Do not write successful results to the Action Cache.
    pub skip_action_cache: bool,
}

#[derive(Clone)]
struct Worker {
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Option<Arc<dyn ActionCache>>,
    /// The instance names served.
    instance_names: Arc<InstanceNames>,
    log: Recorder<FakeWorkerLog>,
    behaviour: Arc<Mutex<WorkerBehaviour>>,
    /// Final operations by name, for WaitExecution.
    completed: Arc<Mutex<HashMap<String, Operation>>>,
}

/// A `google.rpc.Status` FAILED_PRECONDITION with a PreconditionFailure for `missing`.
fn missing_status(message: &str, missing: &[reapi::Digest]) -> crate::proto::rpc::Status {
    let status = crate::status::missing_blobs(message, missing);
    crate::proto::rpc::Status::decode(status.details()).expect("missing_blobs sets details")
}

impl Worker {
    fn record(&self, f: impl FnOnce(&mut FakeWorkerLog)) {
        self.log.record(f);
    }

    /// Walks the input root; returns the nodes, or the blobs that are missing.
    async fn materialise(
        &self,
        instance: &Instance,
        root: &reapi::Digest,
    ) -> Result<Result<BTreeMap<String, InputNode>, Vec<reapi::Digest>>, Status> {
        let mut nodes = BTreeMap::new();
        let mut missing = Vec::new();
        let mut pending = vec![(String::new(), root.clone())];
        while let Some((path, digest)) = pending.pop() {
            let directory: reapi::Directory = if digest.size_bytes == 0 {
                reapi::Directory::default()
            } else {
                match get_message(&*self.cas, instance, &digest).await {
                    Ok(d) => d,
                    Err(s) if s.code() == Code::NotFound => {
                        missing.push(digest);
                        continue;
                    }
                    Err(s) => return Err(s),
                }
            };
            let join = |name: &str| {
                if path.is_empty() {
                    name.to_string()
                } else {
                    format!("{path}/{name}")
                }
            };
            for file in &directory.files {
                let digest = file.digest.clone().unwrap_or_default();
                let contents = if digest.size_bytes == 0 {
                    Bytes::new()
                } else {
                    match self.cas.get(instance, &digest).await {
                        Ok(c) => c,
                        Err(s) if s.code() == Code::NotFound => {
                            missing.push(digest);
                            continue;
                        }
                        Err(s) => return Err(s),
                    }
                };
                nodes.insert(
                    join(&file.name),
                    InputNode::File {
                        contents,
                        executable: file.is_executable,
                    },
                );
            }
            for symlink in &directory.symlinks {
                nodes.insert(
                    join(&symlink.name),
                    InputNode::Symlink(symlink.target.clone()),
                );
            }
            for child in &directory.directories {
                let child_path = join(&child.name);
                nodes.insert(child_path.clone(), InputNode::Directory);
                pending.push((child_path, child.digest.clone().unwrap_or_default()));
            }
        }
        Ok(if missing.is_empty() {
            Ok(nodes)
        } else {
            Err(missing)
        })
    }

    /// Runs one action; returns the operations to send.
    async fn run(
        &self,
        request: ExecuteRequest,
        headers: http::HeaderMap,
    ) -> Result<Vec<Operation>, Status> {
        self.record(|l| l.execute_requests.push(request.clone()));
        let digest = request
            .action_digest
            .clone()
            .ok_or_else(|| Status::invalid_argument("No action digest provided"))?;
        self.instance_names.check(&request.instance_name)?;
        let function = DigestFunction::from_request(request.digest_function, &digest.hash)?;
        let instance = Instance::new(request.instance_name.clone(), function);
        let behaviour = {
            let mut b = self.behaviour.lock();
            let current = b.clone();
            b.refuse_with_missing_action = b.refuse_with_missing_action.saturating_sub(1);
            current
        };
        let missing_action = || {
            crate::status::missing_blobs(
                format!(
                    "Failed to obtain action {}",
                    crate::digest::display(&digest)
                ),
                std::slice::from_ref(&digest),
            )
        };
        if behaviour.refuse_with_missing_action > 0 {
            return Err(missing_action());
        }
        let action: reapi::Action = match get_message(&*self.cas, &instance, &digest).await {
            Ok(a) => a,
            Err(s) if s.code() == Code::NotFound => return Err(missing_action()),
            Err(s) => return Err(s),
        };
        let name = {
            let log = self.log.lock();
            format!("fake-worker-operation-{}", log.execute_requests.len())
        };
        let metadata = reapi::ExecutedActionMetadata {
            worker: WORKER_NAME.into(),
            ..Default::default()
        };
        let command_digest = action.command_digest.clone().unwrap_or_default();
        let command: reapi::Command =
            match get_message(&*self.cas, &instance, &command_digest).await {
                Ok(c) => c,
                Err(s) if s.code() == Code::NotFound => {
                    let response = reapi::ExecuteResponse {
                        result: Some(reapi::ActionResult {
                            execution_metadata: Some(metadata),
                            ..Default::default()
                        }),
                        status: Some(missing_status(
                            "Failed to obtain command",
                            std::slice::from_ref(&command_digest),
                        )),
                        ..Default::default()
                    };
                    self.record(|l| l.incomplete_inputs.push(vec![command_digest.clone()]));
                    return Ok(self.operations(&name, &digest, response, &behaviour));
                }
                Err(s) => return Err(s),
            };
        let root = action
            .input_root_digest
            .clone()
            .unwrap_or_else(|| function.empty_digest());
        let input_root = match self.materialise(&instance, &root).await? {
            Ok(nodes) => nodes,
            Err(missing) => {
                let response = reapi::ExecuteResponse {
                    result: Some(reapi::ActionResult {
                        execution_metadata: Some(metadata),
                        ..Default::default()
                    }),
                    status: Some(missing_status("Failed to obtain input root", &missing)),
                    ..Default::default()
                };
                self.record(|l| l.incomplete_inputs.push(missing));
                return Ok(self.operations(&name, &digest, response, &behaviour));
            }
        };

        #[allow(deprecated)]
        let output_paths: Vec<String> = if command.output_paths.is_empty() {
            command.output_files.clone()
        } else {
            command.output_paths.clone()
        };
        let mut output_files = Vec::new();
        if behaviour.exit_code == 0 {
            for path in &output_paths {
                let contents = Bytes::from(format!("output of {path}"));
                let output_digest = function.digest_of(&contents);
                self.cas.put(&instance, &output_digest, contents).await?;
                output_files.push(reapi::OutputFile {
                    path: path.clone(),
                    digest: Some(output_digest),
                    ..Default::default()
                });
            }
        }
        let result = reapi::ActionResult {
            output_files,
            exit_code: behaviour.exit_code,
            stdout_raw: b"hello from the fake worker\n".to_vec(),
            execution_metadata: Some(metadata),
            ..Default::default()
        };
        if behaviour.exit_code == 0 && !action.do_not_cache && !behaviour.skip_action_cache {
            if let Some(ac) = &self.ac {
                ac.put_action_result(&instance, &digest, result.clone())
                    .await?;
            }
        }
        self.record(|l| {
            l.executions.push(ObservedExecution {
                request: request.clone(),
                headers,
                action,
                command,
                input_root,
                operation_name: name.clone(),
            })
        });
        let response = reapi::ExecuteResponse {
            result: Some(result),
            status: Some(Default::default()),
            ..Default::default()
        };
        Ok(self.operations(&name, &digest, response, &behaviour))
    }

    fn operations(
        &self,
        name: &str,
        digest: &reapi::Digest,
        response: reapi::ExecuteResponse,
        behaviour: &WorkerBehaviour,
    ) -> Vec<Operation> {
        let done = final_operation(name, digest, response);
        self.completed.lock().insert(name.to_string(), done.clone());
        let queued = stage_operation(name, digest, reapi::execution_stage::Value::Queued);
        if behaviour.stop_after_queued {
            vec![queued]
        } else {
            vec![
                queued,
                stage_operation(name, digest, reapi::execution_stage::Value::Executing),
                done,
            ]
        }
    }
}

type OperationStream = BoxStream<'static, Result<Operation, Status>>;

#[tonic::async_trait]
impl Execution for Worker {
    type ExecuteStream = OperationStream;
    type WaitExecutionStream = OperationStream;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let headers = request.metadata().clone().into_headers();
        let operations = self.run(request.into_inner(), headers).await?;
        Ok(Response::new(Box::pin(futures::stream::iter(
            operations.into_iter().map(Ok),
        ))))
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let request = request.into_inner();
        self.record(|l| l.wait_execution_requests.push(request.clone()));
        let operation = self
            .completed
            .lock()
            .get(&request.name)
            .cloned()
            .ok_or_else(|| Status::not_found(format!("Operation {} not found", request.name)))?;
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(
            operation,
        )]))))
    }
}

/// A running fake scheduler + worker; stops when dropped.
pub struct FakeWorker {
    address: SocketAddr,
    worker: Worker,
    task: tokio::task::JoinHandle<()>,
}

impl FakeWorker {
    /// Starts serving on 127.0.0.1; blobs are read from `cas`, successful results
    /// written to `ac` (if any).
    /// Serves only the instance name `""`.
    pub async fn start(
        cas: Arc<dyn ContentAddressableStorage>,
        ac: Option<Arc<dyn ActionCache>>,
    ) -> Self {
        Self::start_serving(cas, ac, &[""]).await
    }

    /// Like [`FakeWorker::start`], serving `instance_names` only.
    pub async fn start_serving(
        cas: Arc<dyn ContentAddressableStorage>,
        ac: Option<Arc<dyn ActionCache>>,
        instance_names: &[&str],
    ) -> Self {
        let worker = Worker {
            cas,
            ac,
            instance_names: Arc::new(InstanceNames::new(instance_names)),
            log: Default::default(),
            behaviour: Default::default(),
            completed: Default::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder().add_service(
            ExecutionServer::new(worker.clone())
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
        );
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = server.serve_with_incoming(incoming).await;
        });
        Self {
            address,
            worker,
            task,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn log(&self) -> parking_lot::MutexGuard<'_, FakeWorkerLog> {
        self.worker.log.lock()
    }

    /// A copy of the log, to hold across awaits.
    pub fn snapshot(&self) -> FakeWorkerLog {
        self.worker.log.lock().clone()
    }

    pub fn set_behaviour(&self, behaviour: WorkerBehaviour) {
        *self.worker.behaviour.lock() = behaviour;
    }

    /// The final operation of a completed (or stopped) execution, by name.
    pub fn completed_operation(&self, name: &str) -> Option<Operation> {
        self.worker.completed.lock().get(name).cloned()
    }

    /// Waits until `condition` holds on the log (or panics after `limit`).
    pub async fn wait_until(&self, limit: Duration, condition: impl Fn(&FakeWorkerLog) -> bool) {
        self.worker
            .log
            .wait_until("fake worker", limit, condition)
            .await
    }
}

impl Drop for FakeWorker {
    fn drop(&mut self) {
        self.task.abort();
    }
}
