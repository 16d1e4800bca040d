//! A stand-in for bb_scheduler that answers with a script: the scheduler fake of
//! [`super::scheduler`] with a [`ScriptRunner`], behind a TCP relay so that
//! [`FakeScheduler::kill`] cuts every connection at once.
//!
//! Execute (for an instance name served, [`Script::instance_names`], only `""` by
//! default) and WaitExecution (for any name) stream the script's operations; the fake
//! notices when a caller goes away before the script ends. GetCapabilities for an
//! instance name not served fails with INVALID_ARGUMENT, as Execute does.

use super::scheduler::{
    Connections, Delivery, Job, OperationStream, Recorder, Runner, SchedulerFake, SchedulerLog,
};
use crate::proto::longrunning::Operation;
use parking_lot::{Mutex, MutexGuard};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::Status;

/// What the fake received ([`SchedulerLog::cancelled_streams`] counts the streams whose
/// receiver went away before the script ended).
pub type FakeSchedulerLog = SchedulerLog;

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

/// A runner that answers every Execute, and WaitExecution for any name, with the
/// script's operations (their names are the script's; nothing is kept by name).
pub struct ScriptRunner {
    script: Mutex<Script>,
}

impl ScriptRunner {
    pub fn new(script: Script) -> Self {
        Self {
            script: Mutex::new(script),
        }
    }

    fn stream(&self, log: &Recorder<SchedulerLog>) -> OperationStream {
        let script = self.script.lock().clone();
        let (tx, rx) = mpsc::channel(1);
        let log = log.clone();
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
}

#[tonic::async_trait]
impl Runner for ScriptRunner {
    fn name(&self) -> &'static str {
        "fake-scheduler"
    }

    async fn execute(&self, job: Job) -> Result<Delivery, Status> {
        Ok(Delivery::Stream(self.stream(&job.log)))
    }

    fn wait_unknown(
        &self,
        _name: &str,
        log: &Recorder<SchedulerLog>,
    ) -> Result<OperationStream, Status> {
        Ok(self.stream(log))
    }
}

/// A running fake scheduler; stops when dropped or when [`FakeScheduler::kill`] is called.
pub struct FakeScheduler(SchedulerFake<ScriptRunner>);

impl FakeScheduler {
    pub async fn start(script: Script) -> Self {
        let instance_names = script.instance_names.clone();
        Self(
            SchedulerFake::start(
                ScriptRunner::new(script),
                &instance_names,
                Connections::Relayed,
            )
            .await,
        )
    }

    pub fn address(&self) -> SocketAddr {
        self.0.address()
    }

    pub fn log(&self) -> MutexGuard<'_, FakeSchedulerLog> {
        self.0.log()
    }

    /// Answers with `script` from now on (its instance names included).
    pub fn set_script(&self, script: Script) {
        self.0.set_instance_names(&script.instance_names);
        *self.0.runner().script.lock() = script;
    }

    /// Waits until `condition` holds on the log (or panics after `limit`).
    pub async fn wait_until(&self, limit: Duration, condition: impl Fn(&FakeSchedulerLog) -> bool) {
        self.0.wait_until(limit, condition).await
    }

    /// Stops serving abruptly, dropping every connection and stream.
    pub async fn kill(&mut self) {
        self.0.kill().await
    }
}
