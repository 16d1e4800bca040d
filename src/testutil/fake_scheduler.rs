//! An in-process stand-in for bb_scheduler: serves `Execution` and `Capabilities` on a
//! loopback port, records what it receives (requests and their metadata), answers
//! Execute with a scripted series of operations, and notices when a caller cancels.
//! Like a real scheduler it serves a fixed set of instance names ([`Script::instance_names`],
//! only `""` by default): Execute and GetCapabilities for any other fail with
//! INVALID_ARGUMENT.

use super::scheduler::{InstanceNames, Recorder};
use crate::proto::longrunning::Operation;
use crate::proto::reapi::capabilities_server::{Capabilities, CapabilitiesServer};
use crate::proto::reapi::execution_server::{Execution, ExecutionServer};
use crate::proto::reapi::{
    ExecuteRequest, GetCapabilitiesRequest, ServerCapabilities, WaitExecutionRequest,
};
use futures::stream::BoxStream;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

/// What the fake received.
#[derive(Default)]
pub struct FakeSchedulerLog {
    pub execute_requests: Vec<ExecuteRequest>,
    pub wait_execution_requests: Vec<WaitExecutionRequest>,
    /// Headers of every call, in arrival order.
    pub metadata: Vec<http::HeaderMap>,
    /// Number of operation streams whose receiver went away before the script ended.
    pub cancelled_streams: usize,
}

/// How the fake answers Execute and WaitExecution.
#[derive(Clone)]
pub struct Script {
    /// Operations sent, in order.
    pub operations: Vec<Operation>,
    /// Pause between two operations.
    pub interval: Duration,
    /// Keep the stream open after the last operation (until the caller goes away).
    pub hold_open: bool,
    /// The instance names served.
    pub instance_names: Vec<String>,
}

impl Default for Script {
    fn default() -> Self {
        Self {
            operations: (1..=3)
                .map(|i| Operation {
                    name: format!("operation-{i}"),
                    done: i == 3,
                    ..Default::default()
                })
                .collect(),
            interval: Duration::from_millis(10),
            hold_open: false,
            instance_names: vec![String::new()],
        }
    }
}

#[derive(Clone)]
struct Fake {
    log: Recorder<FakeSchedulerLog>,
    script: Arc<Mutex<Script>>,
    capabilities: ServerCapabilities,
}

impl Fake {
    fn check_instance_name(&self, instance_name: &str) -> Result<(), Status> {
        InstanceNames::new(&self.script.lock().instance_names).check(instance_name)
    }

    fn stream(&self) -> BoxStream<'static, Result<Operation, Status>> {
        let script = self.script.lock().clone();
        let (tx, rx) = mpsc::channel(1);
        let log = self.log.clone();
        tokio::spawn(async move {
            for op in script.operations {
                tokio::time::sleep(script.interval).await;
                if tx.send(Ok(op)).await.is_err() {
                    log.record(|l| l.cancelled_streams += 1);
                    return;
                }
            }
            if script.hold_open {
                tx.closed().await;
                log.record(|l| l.cancelled_streams += 1);
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    fn record(&self, f: impl FnOnce(&mut FakeSchedulerLog)) {
        self.log.record(f);
    }
}

#[tonic::async_trait]
impl Execution for Fake {
    type ExecuteStream = BoxStream<'static, Result<Operation, Status>>;
    type WaitExecutionStream = BoxStream<'static, Result<Operation, Status>>;

    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let headers = request.metadata().clone().into_headers();
        let request = request.into_inner();
        let instance_name = request.instance_name.clone();
        self.record(|l| {
            l.metadata.push(headers);
            l.execute_requests.push(request);
        });
        self.check_instance_name(&instance_name)?;
        Ok(Response::new(self.stream()))
    }

    async fn wait_execution(
        &self,
        request: Request<WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let headers = request.metadata().clone().into_headers();
        self.record(|l| {
            l.metadata.push(headers);
            l.wait_execution_requests.push(request.into_inner());
        });
        Ok(Response::new(self.stream()))
    }
}

#[tonic::async_trait]
impl Capabilities for Fake {
    async fn get_capabilities(
        &self,
        request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<ServerCapabilities>, Status> {
        let headers = request.metadata().clone().into_headers();
        self.record(|l| l.metadata.push(headers));
        self.check_instance_name(&request.get_ref().instance_name)?;
        Ok(Response::new(self.capabilities.clone()))
    }
}

/// A running fake scheduler; stops when dropped or when [`FakeScheduler::kill`] is called.
///
/// Callers reach it through a TCP relay owned by the fake, so that `kill` can cut every
/// connection at once, as when the scheduler process dies.
pub struct FakeScheduler {
    address: SocketAddr,
    fake: Fake,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    relay: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl FakeScheduler {
    pub async fn start(script: Script) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = listener.local_addr().unwrap();
        let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = front.local_addr().unwrap();
        let relay: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Default::default();
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
        let fake = Fake {
            log: Default::default(),
            script: Arc::new(Mutex::new(script)),
            capabilities: ServerCapabilities {
                execution_capabilities: Some(crate::proto::reapi::ExecutionCapabilities {
                    exec_enabled: true,
                    digest_function: crate::proto::reapi::digest_function::Value::Sha256 as i32,
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(ExecutionServer::new(fake.clone()))
            .add_service(CapabilitiesServer::new(fake.clone()));
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            // Abort-style stop: connections are dropped, as when the process dies.
            tokio::select! {
                _ = server.serve_with_incoming(incoming) => {}
                _ = stopped => {}
            }
        });
        Self {
            address,
            fake,
            stop: Some(stop),
            task: Some(task),
            relay,
        }
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    pub fn log(&self) -> parking_lot::MutexGuard<'_, FakeSchedulerLog> {
        self.fake.log.lock()
    }

    pub fn set_script(&self, script: Script) {
        *self.fake.script.lock() = script;
    }

    /// Waits until `condition` holds on the log (or panics after `limit`).
    pub async fn wait_until(&self, limit: Duration, condition: impl Fn(&FakeSchedulerLog) -> bool) {
        self.fake
            .log
            .wait_until("fake scheduler", limit, condition)
            .await
    }

    /// Stops serving abruptly, dropping every connection and stream.
    pub async fn kill(&mut self) {
        for handle in self.relay.lock().drain(..) {
            handle.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for FakeScheduler {
    fn drop(&mut self) {
        for handle in self.relay.lock().drain(..) {
            handle.abort();
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
