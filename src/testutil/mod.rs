//! Test support shared by unit and integration tests.
//!
//! Compiled only for this crate's unit tests (`cfg(test)`) and with the `testutil`
//! feature, which only the crate's self dev-dependency enables (integration tests,
//! benches): the release library and binary contain none of it.
//!
//! - [`BlobstoreServer`]: an in-process REAPI storage server (CAS, AC, ByteStream,
//!   Capabilities) on a loopback port, backed by any [`crate::blobstore`] stores, that
//!   counts the calls it receives and can be told to fail them;
//! - [`fake_scheduler::FakeScheduler`]: a fake bb_scheduler that answers with a script;
//! - [`fake_worker::FakeWorker`]: a fake bb_scheduler + worker that materialises the
//!   input root of each action it is sent from the CAS and records what it saw;
//! - [`scheduler`]: what every scheduler fake shares (the instance names served and the
//!   INVALID_ARGUMENT for others, operations as bb_scheduler streams them, the log and
//!   waiting on it), also used by the chroot worker of `tests/support`;
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
mod clock;
pub mod fake_scheduler;
pub mod fake_worker;
pub mod scheduler;

pub use blobstore_server::{BlobstoreServer, BlobstoreServerBuilder, RecordedCall};
pub use clock::ManualClock;
