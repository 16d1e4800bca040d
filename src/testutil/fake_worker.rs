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
//! It is the scheduler fake of [`super::scheduler`] with a [`MemoryRunner`]: like a real
//! scheduler it serves a fixed set of instance names (only `""` unless started with
//! [`FakeWorker::start_serving`]); Execute for any other fails with INVALID_ARGUMENT
//! before anything is read. Operations stay known by name, so `WaitExecution` returns
//! the final operation (the run is over before Execute answers; an unknown name is
//! NOT_FOUND, as for bb_scheduler).
//!
//! ```ignore
//! let worker = FakeWorker::start(storage.cas(), Some(storage.ac())).await;
//! worker.set_behaviour(WorkerBehaviour { exit_code: 1, ..Default::default() });
//! // point the expander's `scheduler` at worker.address() ...
//! worker.wait_until(Duration::from_secs(30), |log| log.executions.len() == 1).await;
//! assert_eq!(worker.log().executions[0].file("etc/os-release"), Some(&b"ID=test\n"[..]));
//! ```

use super::scheduler::{Connections, Delivery, Job, Runner, SchedulerFake, SchedulerLog};
use crate::blobstore::{get_message, ActionCache, ContentAddressableStorage, Instance};
use crate::digest::DigestFunction;
use crate::proto::longrunning::Operation;
use crate::proto::reapi;
use crate::proto::reapi::ExecuteRequest;
use bytes::Bytes;
use parking_lot::{Mutex, MutexGuard};
use prost::Message;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Code, Status};

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

/// What the worker received ([`SchedulerLog::executions`] and
/// [`SchedulerLog::incomplete_inputs`] are its records).
pub type FakeWorkerLog = SchedulerLog;

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

/// A runner that materialises the input root in memory and answers as configured
/// ([`WorkerBehaviour`]); the operation is done before Execute answers.
pub struct MemoryRunner {
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Option<Arc<dyn ActionCache>>,
    behaviour: Mutex<WorkerBehaviour>,
}

/// A `google.rpc.Status` FAILED_PRECONDITION with a PreconditionFailure for `missing`.
fn missing_status(message: &str, missing: &[reapi::Digest]) -> crate::proto::rpc::Status {
    let status = crate::status::missing_blobs(message, missing);
    crate::proto::rpc::Status::decode(status.details()).expect("missing_blobs sets details")
}

impl MemoryRunner {
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

    /// Runs one action to completion, reporting its states.
    async fn run(&self, job: Job) -> Result<Delivery, Status> {
        let Job {
            request,
            headers,
            action_digest: digest,
            operation,
            log,
        } = job;
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
        let delivery = if behaviour.stop_after_queued {
            Delivery::FirstStateOnly
        } else {
            Delivery::Follow
        };
        operation.stage(reapi::execution_stage::Value::Queued);
        operation.stage(reapi::execution_stage::Value::Executing);
        let metadata = reapi::ExecutedActionMetadata {
            worker: WORKER_NAME.into(),
            ..Default::default()
        };
        let incomplete = |missing: Vec<reapi::Digest>, message: &str| {
            let response = reapi::ExecuteResponse {
                result: Some(reapi::ActionResult {
                    execution_metadata: Some(metadata.clone()),
                    ..Default::default()
                }),
                status: Some(missing_status(message, &missing)),
                ..Default::default()
            };
            log.record(|l| l.incomplete_inputs.push(missing));
            operation.complete(response);
        };
        let command_digest = action.command_digest.clone().unwrap_or_default();
        let command: reapi::Command =
            match get_message(&*self.cas, &instance, &command_digest).await {
                Ok(c) => c,
                Err(s) if s.code() == Code::NotFound => {
                    incomplete(vec![command_digest], "Failed to obtain command");
                    return Ok(delivery);
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
                incomplete(missing, "Failed to obtain input root");
                return Ok(delivery);
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
        log.record(|l| {
            l.executions.push(ObservedExecution {
                request,
                headers,
                action,
                command,
                input_root,
                operation_name: operation.name().to_string(),
            })
        });
        operation.complete(reapi::ExecuteResponse {
            result: Some(result),
            status: Some(Default::default()),
            ..Default::default()
        });
        Ok(delivery)
    }
}

#[tonic::async_trait]
impl Runner for MemoryRunner {
    fn name(&self) -> &'static str {
        "fake-worker"
    }

    async fn execute(&self, job: Job) -> Result<Delivery, Status> {
        self.run(job).await
    }
}

/// A running fake scheduler + worker: the scheduler fake of [`super::scheduler`] with a
/// [`MemoryRunner`]; stops when dropped.
pub struct FakeWorker(SchedulerFake<MemoryRunner>);

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
        let runner = MemoryRunner {
            cas,
            ac,
            behaviour: Default::default(),
        };
        Self(SchedulerFake::start(runner, instance_names, Connections::Direct).await)
    }

    pub fn address(&self) -> SocketAddr {
        self.0.address()
    }

    pub fn log(&self) -> MutexGuard<'_, FakeWorkerLog> {
        self.0.log()
    }

    /// A copy of the log, to hold across awaits.
    pub fn snapshot(&self) -> FakeWorkerLog {
        self.0.snapshot()
    }

    pub fn set_behaviour(&self, behaviour: WorkerBehaviour) {
        *self.0.runner().behaviour.lock() = behaviour;
    }

    /// The final operation of a completed (or stopped) execution, by name.
    pub fn completed_operation(&self, name: &str) -> Option<Operation> {
        self.0.operation(name).filter(|op| op.done)
    }

    /// Waits until `condition` holds on the log (or panics after `limit`).
    pub async fn wait_until(&self, limit: Duration, condition: impl Fn(&FakeWorkerLog) -> bool) {
        self.0.wait_until(limit, condition).await
    }
}
