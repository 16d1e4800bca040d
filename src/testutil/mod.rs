//! Test support shared by unit and integration tests.
//!
//! Compiled only for this crate's unit tests (`cfg(test)`) and with the `testutil`
//! feature, which only the crate's self dev-dependency enables (integration tests,
//! benches): the release library and binary contain none of it.
//!
//! - [`BlobstoreServer`]: an in-process REAPI storage server (CAS, AC, ByteStream,
//!   Capabilities) on a loopback port, backed by any [`crate::blobstore`] stores, that
//!   counts the calls it receives and can be told to fail them;
//! - [`scheduler::SchedulerFake`]: the one scheduler fake (Execution and Capabilities,
//!   the instance names served and INVALID_ARGUMENT for others, operations kept by name,
//!   the log and waiting on it, an optional relay to kill connections), which hands
//!   each action to a [`scheduler::Runner`]:
//!   - [`fake_scheduler::FakeScheduler`]: answers with a script;
//!   - [`fake_worker::FakeWorker`]: materialises the input root of each action from the
//!     CAS in memory and records what it saw;
//!   - the chroot worker of `tests/support` runs it in a chroot (needs root);
//! - [`call_delay::CallDelayLayer`]: a fixed cost per call, for servers that stand for
//!   storage or a scheduler on another machine (benchmarks counting round trips);
//! - [`ManualClock`]: a clock that only moves when a test says so, for decorators that
//!   expire things (existence caching) without sleeping in tests.
//!
//! ```ignore
//! let server = BlobstoreServer::start_in_memory().await;
//! let cas = GrpcContentAddressableStorage::new(server.channel(), 4 << 20);
//! // ... exercise code that uploads through `cas` ...
//! assert_eq!(server.calls("BatchUpdateBlobs"), 1);
//! ```

mod blobstore_server;
pub mod call_delay;
mod clock;
pub mod fake_scheduler;
pub mod fake_worker;
pub mod scheduler;

pub use blobstore_server::{BlobstoreServer, BlobstoreServerBuilder, RecordedCall};
pub use clock::ManualClock;
