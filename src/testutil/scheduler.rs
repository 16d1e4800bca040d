//! The one scheduler fake, whatever it does with an action: [`SchedulerFake`] serves
//! `Execution` and `Capabilities` on a loopback port and hands each action it accepts to
//! a [`Runner`] — a script ([`super::fake_scheduler`]), a worker that materialises the
//! input root in memory ([`super::fake_worker`]), or one that runs it in a chroot
//! (`tests/support/chroot_worker.rs`).
//!
//! What the server does for every runner:
//!
//! - serves a fixed set of [`InstanceNames`]: Execute and GetCapabilities for any other
//!   fail with INVALID_ARGUMENT, as from a real scheduler;
//! - records every call in a [`SchedulerLog`] (runners add their own records), on which
//!   tests wait with [`Recorder::wait_until`];
//! - keeps operations by name: the Execute stream follows the operation from its first
//!   state, WaitExecution follows it from its current state (a finished operation gives
//!   just its done operation), an unknown name is NOT_FOUND as from bb_scheduler (unless
//!   the runner answers for unknown names, see [`Runner::wait_unknown`]);
//! - optionally sits behind a TCP relay ([`Connections::Relayed`]) so that
//!   [`SchedulerFake::kill`] cuts every connection at once, as when the process dies.
//!
//! Operations are those bb_scheduler streams ([`stage_operation`], [`final_operation`]),
//! with `ExecuteOperationMetadata` naming the action digest received.

use super::fake_worker::ObservedExecution;
use crate::proto::longrunning::{operation, Operation};
use crate::proto::protobuf::Any;
use crate::proto::reapi;
use crate::proto::reapi::capabilities_server::{Capabilities, CapabilitiesServer};
use crate::proto::reapi::execution_server::{Execution, ExecutionServer};
use crate::proto::reapi::{ExecuteRequest, WaitExecutionRequest};
use futures::stream::{BoxStream, StreamExt};
use parking_lot::{Mutex, MutexGuard};
use prost::Message;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

const EXECUTE_OPERATION_METADATA: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata";
const EXECUTE_RESPONSE: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse";
/// Largest message the fake accepts or sends (input roots of real images are large).
const MAX_MESSAGE_SIZE: usize = 64 << 20;

/// A stream of operations, as Execute and WaitExecution answer.
pub type OperationStream = BoxStream<'static, Result<Operation, Status>>;

/// What a scheduler fake does with the actions it accepts.
#[tonic::async_trait]
pub trait Runner: Send + Sync + 'static {
    /// Names the fake, in its operation names and in the panics of `wait_until`.
    fn name(&self) -> &'static str;

    /// Runs the action of an Execute the fake accepted (an action digest, an instance
    /// name served). An error fails the call as it is (as bb_scheduler does when the
    /// Action is missing). Otherwise the runner reports the states of `job.operation`,
    /// before returning or later from a task of its own, and says how the Execute stream
    /// delivers them.
    async fn execute(&self, job: Job) -> Result<Delivery, Status>;

    /// WaitExecution for a name the fake does not know: NOT_FOUND, as from bb_scheduler,
    /// unless the runner answers for such names.
    fn wait_unknown(
        &self,
        name: &str,
        _log: &Recorder<SchedulerLog>,
    ) -> Result<OperationStream, Status> {
        Err(Status::not_found(format!("Operation {name:?} not found")))
    }
}

/// One Execute handed to a [`Runner`].
pub struct Job {
    pub request: ExecuteRequest,
    pub headers: http::HeaderMap,
    /// The digest received (present: the server refuses requests without one).
    pub action_digest: reapi::Digest,
    /// The operation of this action, kept by name by the server.
    pub operation: OperationHandle,
    pub log: Recorder<SchedulerLog>,
}

/// How the Execute stream delivers an operation.
pub enum Delivery {
    /// Every state of the operation, until it is done.
    Follow,
    /// Only its first state, then the stream ends (as when a connection breaks); the
    /// operation lives on for WaitExecution.
    FirstStateOnly,
    /// A stream of the runner's own; the operation is not kept by name.
    Stream(OperationStream),
}

/// The states of one operation, as its runner reports them.
pub struct OperationHandle {
    name: String,
    action_digest: reapi::Digest,
    states: Arc<watch::Sender<Vec<Operation>>>,
}

impl OperationHandle {
    /// The operation's name (what WaitExecution asks for).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The operation is now at `stage` (QUEUED, EXECUTING).
    pub fn stage(&self, stage: reapi::execution_stage::Value) {
        let operation = stage_operation(&self.name, &self.action_digest, stage);
        self.states.send_modify(|states| states.push(operation));
    }

    /// The operation is done with `response`.
    pub fn complete(&self, response: reapi::ExecuteResponse) {
        let operation = final_operation(&self.name, &self.action_digest, response);
        self.states.send_modify(|states| states.push(operation));
    }

    fn is_done(&self) -> bool {
        self.states.borrow().last().is_some_and(|op| op.done)
    }
}

impl Drop for OperationHandle {
    /// A runner that gives up on an operation (a task that panicked) leaves it done with
    /// INTERNAL, so that nobody follows it forever.
    fn drop(&mut self) {
        if !self.is_done() {
            self.complete(reapi::ExecuteResponse {
                status: Some(crate::proto::rpc::Status {
                    code: tonic::Code::Internal as i32,
                    message: format!("The runner dropped operation {:?}", self.name),
                    details: vec![],
                }),
                ..Default::default()
            });
        }
    }
}

/// The states of an operation from the first (`from_start`) or the current one, until
/// it is done.
fn follow(states: &watch::Sender<Vec<Operation>>, from_start: bool) -> OperationStream {
    let mut receiver = states.subscribe();
    let mut next = if from_start {
        0
    } else {
        receiver.borrow().len().saturating_sub(1)
    };
    async_stream::stream! {
        loop {
            let (pending, done) = {
                let states = receiver.borrow_and_update();
                (states[next..].to_vec(), states.last().is_some_and(|op| op.done))
            };
            next += pending.len();
            for operation in pending {
                yield Ok(operation);
            }
            if done {
                break;
            }
            if receiver.changed().await.is_err() {
                yield Err(Status::internal("The scheduler fake dropped the operation"));
                break;
            }
        }
    }
    .boxed()
}

/// What a scheduler fake received, and what its runner recorded.
#[derive(Clone, Default)]
pub struct SchedulerLog {
    /// Every Execute request, in arrival order (also those that were refused).
    pub execute_requests: Vec<ExecuteRequest>,
    pub wait_execution_requests: Vec<WaitExecutionRequest>,
    /// Headers of every call (Execute, WaitExecution, GetCapabilities), in arrival order.
    pub metadata: Vec<http::HeaderMap>,
    /// Scripted runner: operation streams whose receiver went away before the script
    /// ended.
    pub cancelled_streams: usize,
    /// In-memory worker: actions whose input root was complete, in arrival order.
    pub executions: Vec<ObservedExecution>,
    /// In-memory worker: per Execute whose input root was incomplete, the blobs missing.
    pub incomplete_inputs: Vec<Vec<reapi::Digest>>,
}

/// How callers reach a [`SchedulerFake`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Connections {
    /// Straight to the server.
    Direct,
    /// Through a TCP relay owned by the fake, so that [`SchedulerFake::kill`] can cut
    /// every connection at once.
    Relayed,
}

struct Shared<R> {
    runner: R,
    instance_names: Mutex<InstanceNames>,
    log: Recorder<SchedulerLog>,
    /// Every operation kept by name, with its states so far.
    operations: Mutex<HashMap<String, Arc<watch::Sender<Vec<Operation>>>>>,
    next_id: AtomicU64,
}

struct Service<R>(Arc<Shared<R>>);

impl<R> Clone for Service<R> {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

#[tonic::async_trait]
impl<R: Runner> Execution for Service<R> {
    type ExecuteStream = OperationStream;
    type WaitExecutionStream = OperationStream;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let shared = &self.0;
        let headers = request.metadata().clone().into_headers();
        let request = request.into_inner();
        shared.log.record(|l| {
            l.metadata.push(headers.clone());
            l.execute_requests.push(request.clone());
        });
        let action_digest = request
            .action_digest
            .clone()
            .ok_or_else(|| Status::invalid_argument("No action digest provided"))?;
        shared.instance_names.lock().check(&request.instance_name)?;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!("{}-operation-{id}", shared.runner.name());
        let states = Arc::new(watch::channel(Vec::new()).0);
        let operation = OperationHandle {
            name: name.clone(),
            action_digest: action_digest.clone(),
            states: states.clone(),
        };
        let job = Job {
            request,
            headers,
            action_digest,
            operation,
            log: shared.log.clone(),
        };
        let stream = match shared.runner.execute(job).await? {
            Delivery::Stream(stream) => return Ok(Response::new(stream)),
            Delivery::Follow => follow(&states, true),
            Delivery::FirstStateOnly => follow(&states, true).take(1).boxed(),
        };
        shared.operations.lock().insert(name, states);
        Ok(Response::new(stream))
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<OperationStream>, Status> {
        let shared = &self.0;
        let headers = request.metadata().clone().into_headers();
        let request = request.into_inner();
        shared.log.record(|l| {
            l.metadata.push(headers);
            l.wait_execution_requests.push(request.clone());
        });
        let states = shared.operations.lock().get(&request.name).cloned();
        Ok(Response::new(match states {
            Some(states) => follow(&states, false),
            None => shared.runner.wait_unknown(&request.name, &shared.log)?,
        }))
    }
}

#[tonic::async_trait]
impl<R: Runner> Capabilities for Service<R> {
    async fn get_capabilities(
        &self,
        request: Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<Response<reapi::ServerCapabilities>, Status> {
        let headers = request.metadata().clone().into_headers();
        self.0.log.record(|l| l.metadata.push(headers));
        self.0
            .instance_names
            .lock()
            .check(&request.get_ref().instance_name)?;
        Ok(Response::new(capabilities()))
    }
}

/// What the fake announces: REAPI 2.0–2.11, SHA-256, execution enabled, no Action Cache
/// updates by clients.
fn capabilities() -> reapi::ServerCapabilities {
    let version = |minor| bazel_remote_apis::build::bazel::semver::SemVer {
        major: 2,
        minor,
        patch: 0,
        prerelease: String::new(),
    };
    let sha256 = reapi::digest_function::Value::Sha256 as i32;
    reapi::ServerCapabilities {
        cache_capabilities: Some(reapi::CacheCapabilities {
            digest_functions: vec![sha256],
            action_cache_update_capabilities: Some(reapi::ActionCacheUpdateCapabilities {
                update_enabled: false,
            }),
            max_batch_total_size_bytes: 4 << 20,
            symlink_absolute_path_strategy: reapi::symlink_absolute_path_strategy::Value::Allowed
                as i32,
            ..Default::default()
        }),
        execution_capabilities: Some(reapi::ExecutionCapabilities {
            digest_function: sha256,
            exec_enabled: true,
            digest_functions: vec![sha256],
            ..Default::default()
        }),
        deprecated_api_version: Some(version(0)),
        low_api_version: Some(version(0)),
        high_api_version: Some(version(11)),
    }
}

/// A running scheduler fake; stops when dropped or when [`SchedulerFake::kill`] is called.
pub struct SchedulerFake<R> {
    address: SocketAddr,
    service: Service<R>,
    server: Option<JoinHandle<()>>,
    /// The relay's accept loop and connections ([`Connections::Relayed`]).
    relay: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl<R: Runner> SchedulerFake<R> {
    /// Serves `instance_names` on a free 127.0.0.1 port, handing actions to `runner`.
    pub async fn start<S: AsRef<str>>(
        runner: R,
        instance_names: &[S],
        connections: Connections,
    ) -> Self {
        let service = Service(Arc::new(Shared {
            runner,
            instance_names: Mutex::new(InstanceNames::new(instance_names)),
            log: Default::default(),
            operations: Default::default(),
            next_id: AtomicU64::new(0),
        }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut address = listener.local_addr().unwrap();
        let relay: Arc<Mutex<Vec<JoinHandle<()>>>> = Default::default();
        if connections == Connections::Relayed {
            address = start_relay(address, &relay).await;
        }
        let server = tonic::transport::Server::builder()
            .add_service(
                ExecutionServer::new(service.clone())
                    .max_decoding_message_size(MAX_MESSAGE_SIZE)
                    .max_encoding_message_size(MAX_MESSAGE_SIZE),
            )
            .add_service(CapabilitiesServer::new(service.clone()));
        let server = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            if let Err(e) = server.serve_with_incoming(incoming).await {
                eprintln!("scheduler fake: server failed: {e}");
            }
        });
        Self {
            address,
            service,
            server: Some(server),
            relay,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn runner(&self) -> &R {
        &self.service.0.runner
    }

    /// Serves `instance_names` from now on instead.
    pub fn set_instance_names<S: AsRef<str>>(&self, instance_names: &[S]) {
        *self.service.0.instance_names.lock() = InstanceNames::new(instance_names);
    }

    pub fn log(&self) -> MutexGuard<'_, SchedulerLog> {
        self.service.0.log.lock()
    }

    /// A copy of the log, to hold across awaits.
    pub fn snapshot(&self) -> SchedulerLog {
        self.log().clone()
    }

    /// The current state of the operation `name`, if the fake keeps it.
    pub fn operation(&self, name: &str) -> Option<Operation> {
        let states = self.service.0.operations.lock().get(name).cloned()?;
        let current = states.borrow().last().cloned();
        current
    }

    /// Waits until `condition` holds on the log (or panics after `limit`).
    pub async fn wait_until(&self, limit: Duration, condition: impl Fn(&SchedulerLog) -> bool) {
        let fake = self.runner().name();
        self.service.0.log.wait_until(fake, limit, condition).await
    }

    /// Stops serving abruptly, dropping every relayed connection and stream, as when the
    /// process dies.
    pub async fn kill(&mut self) {
        for handle in self.relay.lock().drain(..) {
            handle.abort();
        }
        if let Some(server) = self.server.take() {
            server.abort();
            let _ = server.await;
        }
    }
}

impl<R> Drop for SchedulerFake<R> {
    fn drop(&mut self) {
        for handle in self.relay.lock().drain(..) {
            handle.abort();
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

/// Listens on a free 127.0.0.1 port and relays every connection to `backend`; returns
/// the port's address. The tasks go to `relay`, for `kill`.
async fn start_relay(backend: SocketAddr, relay: &Arc<Mutex<Vec<JoinHandle<()>>>>) -> SocketAddr {
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = front.local_addr().unwrap();
    let connections = relay.clone();
    let accept = tokio::spawn(async move {
        while let Ok((mut inbound, _)) = front.accept().await {
            let handle = tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
            connections.lock().push(handle);
        }
    });
    relay.lock().push(accept);
    address
}

/// The instance names a fake scheduler serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceNames(Vec<String>);

impl InstanceNames {
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        Self(names.iter().map(|n| n.as_ref().to_string()).collect())
    }

    /// INVALID_ARGUMENT for a name that is not served, as a real scheduler answers.
    pub fn check(&self, instance_name: &str) -> Result<(), Status> {
        if self.0.iter().any(|name| name == instance_name) {
            Ok(())
        } else {
            Err(Status::invalid_argument(format!(
                "Invalid instance name: {instance_name:?} (this scheduler serves {:?})",
                self.0
            )))
        }
    }
}

/// An operation that is not done, at `stage`, for the action `digest`.
pub fn stage_operation(
    name: &str,
    digest: &reapi::Digest,
    stage: reapi::execution_stage::Value,
) -> Operation {
    let metadata = reapi::ExecuteOperationMetadata {
        stage: stage as i32,
        action_digest: Some(digest.clone()),
        ..Default::default()
    };
    Operation {
        name: name.to_string(),
        metadata: Some(Any {
            type_url: EXECUTE_OPERATION_METADATA.into(),
            value: metadata.encode_to_vec(),
        }),
        done: false,
        result: None,
    }
}

/// The done (COMPLETED) operation carrying `response`.
pub fn final_operation(
    name: &str,
    digest: &reapi::Digest,
    response: reapi::ExecuteResponse,
) -> Operation {
    Operation {
        done: true,
        result: Some(operation::Result::Response(Any {
            type_url: EXECUTE_RESPONSE.into(),
            value: response.encode_to_vec(),
        })),
        ..stage_operation(name, digest, reapi::execution_stage::Value::Completed)
    }
}

/// The log of a fake (any `L`), and a notification on every change.
pub struct Recorder<L> {
    log: Arc<Mutex<L>>,
    changed: Arc<Notify>,
}

impl<L> Clone for Recorder<L> {
    fn clone(&self) -> Self {
        Self {
            log: self.log.clone(),
            changed: self.changed.clone(),
        }
    }
}

impl<L: Default> Default for Recorder<L> {
    fn default() -> Self {
        Self {
            log: Default::default(),
            changed: Default::default(),
        }
    }
}

impl<L> Recorder<L> {
    /// Changes the log and wakes up whoever waits on it.
    pub fn record(&self, f: impl FnOnce(&mut L)) {
        f(&mut self.log.lock());
        self.changed.notify_waiters();
    }

    pub fn lock(&self) -> MutexGuard<'_, L> {
        self.log.lock()
    }

    /// Waits until `condition` holds on the log; panics after `limit`, naming `fake`.
    pub async fn wait_until(&self, fake: &str, limit: Duration, condition: impl Fn(&L) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if condition(&self.log.lock()) {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err()
                && !condition(&self.log.lock())
            {
                panic!("condition on the {fake} not met within {limit:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::reapi::capabilities_client::CapabilitiesClient;
    use crate::proto::reapi::execution_client::ExecutionClient;
    use reapi::execution_stage::Value;
    use tokio::sync::oneshot;

    /// Queues each action, then runs it when the test says so.
    #[derive(Default)]
    struct GatedRunner {
        gates: Mutex<Vec<oneshot::Sender<()>>>,
    }

    #[tonic::async_trait]
    impl Runner for GatedRunner {
        fn name(&self) -> &'static str {
            "gated"
        }

        async fn execute(&self, job: Job) -> Result<Delivery, Status> {
            let (open, opened) = oneshot::channel();
            self.gates.lock().push(open);
            job.operation.stage(Value::Queued);
            let operation = job.operation;
            tokio::spawn(async move {
                let _ = opened.await;
                operation.stage(Value::Executing);
                operation.complete(Default::default());
            });
            Ok(if job.request.skip_cache_lookup {
                Delivery::FirstStateOnly
            } else {
                Delivery::Follow
            })
        }
    }

    fn request(instance_name: &str, first_state_only: bool) -> ExecuteRequest {
        ExecuteRequest {
            instance_name: instance_name.into(),
            action_digest: Some(reapi::Digest {
                hash: "a".repeat(64),
                size_bytes: 1,
            }),
            skip_cache_lookup: first_state_only,
            ..Default::default()
        }
    }

    fn stage(operation: &Operation) -> i32 {
        let metadata = operation.metadata.as_ref().unwrap();
        reapi::ExecuteOperationMetadata::decode(metadata.value.as_slice())
            .unwrap()
            .stage
    }

    async fn client(
        fake: &SchedulerFake<GatedRunner>,
    ) -> ExecutionClient<tonic::transport::Channel> {
        ExecutionClient::connect(format!("http://{}", fake.address()))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn execute_follows_from_the_first_state_and_wait_execution_from_the_current() {
        let fake =
            SchedulerFake::start(GatedRunner::default(), &["main"], Connections::Direct).await;
        let mut client = client(&fake).await;
        let mut execute = client
            .execute(request("main", false))
            .await
            .unwrap()
            .into_inner();
        let queued = execute.next().await.unwrap().unwrap();
        assert_eq!(queued.name, "gated-operation-1");
        assert_eq!(stage(&queued), Value::Queued as i32);

        let mut wait = client
            .wait_execution(WaitExecutionRequest {
                name: queued.name.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            stage(&wait.next().await.unwrap().unwrap()),
            Value::Queued as i32
        );
        let gate = fake.runner().gates.lock().pop().unwrap();
        gate.send(()).unwrap();
        for stream in [&mut execute, &mut wait] {
            let stages: Vec<i32> = stream.map(|op| stage(&op.unwrap())).collect().await;
            assert_eq!(stages, [Value::Executing as i32, Value::Completed as i32]);
        }

        // Once done, WaitExecution gives the done operation only.
        let finished: Vec<Operation> = client
            .wait_execution(WaitExecutionRequest { name: queued.name })
            .await
            .unwrap()
            .into_inner()
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(finished.len(), 1);
        assert!(finished[0].done);
        assert_eq!(fake.log().wait_execution_requests.len(), 2);
    }

    #[tokio::test]
    async fn first_state_only_ends_the_stream_and_the_operation_lives_on() {
        let fake = SchedulerFake::start(GatedRunner::default(), &[""], Connections::Direct).await;
        let mut client = client(&fake).await;
        let operations: Vec<Operation> = client
            .execute(request("", true))
            .await
            .unwrap()
            .into_inner()
            .map(Result::unwrap)
            .collect()
            .await;
        assert_eq!(operations.len(), 1);
        fake.runner().gates.lock().pop().unwrap().send(()).unwrap();
        let last = client
            .wait_execution(WaitExecutionRequest {
                name: operations[0].name.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .map(Result::unwrap)
            .collect::<Vec<_>>()
            .await
            .pop()
            .unwrap();
        assert!(last.done);
        assert_eq!(fake.operation(&last.name), Some(last));
    }

    #[tokio::test]
    async fn unknown_operations_and_instance_names_are_refused() {
        let fake =
            SchedulerFake::start(GatedRunner::default(), &["main"], Connections::Relayed).await;
        let mut client = client(&fake).await;
        let status = client
            .wait_execution(WaitExecutionRequest {
                name: "nope".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        let status = client.execute(request("other", false)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        let mut capabilities = CapabilitiesClient::connect(format!("http://{}", fake.address()))
            .await
            .unwrap();
        let status = capabilities
            .get_capabilities(reapi::GetCapabilitiesRequest {
                instance_name: "other".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        let served = capabilities
            .get_capabilities(reapi::GetCapabilitiesRequest {
                instance_name: "main".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(served.execution_capabilities.unwrap().exec_enabled);
        assert_eq!(fake.log().execute_requests.len(), 1);
        assert_eq!(fake.log().metadata.len(), 4);
        assert!(fake.runner().gates.lock().is_empty());
    }
}
