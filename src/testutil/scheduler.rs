//! What every scheduler fake shares, whatever it does with an action (answer with a
//! script, materialise the input root in memory — [`super::fake_scheduler`],
//! [`super::fake_worker`] — or run it in a chroot, `tests/support/chroot_worker.rs`):
//!
//! - [`InstanceNames`]: the fixed set of instance names served, and the INVALID_ARGUMENT
//!   a real scheduler answers for any other;
//! - [`stage_operation`] / [`final_operation`]: operations as bb_scheduler streams them,
//!   with `ExecuteOperationMetadata` naming the action digest received;
//! - [`Recorder`]: the log of what the fake received, and waiting until it says
//!   something.

use crate::proto::longrunning::{operation, Operation};
use crate::proto::protobuf::Any;
use crate::proto::reapi;
use parking_lot::{Mutex, MutexGuard};
use prost::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tonic::Status;

const EXECUTE_OPERATION_METADATA: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata";
const EXECUTE_RESPONSE: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse";

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
