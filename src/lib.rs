//! bb-container-expander: runs remote actions inside the container image they name.
//!
//! It sits between Buildbarn's frontend and `bb_scheduler` (or behind the scheduler's
//! remote action router hook). For every action whose platform names a
//! `container-image`, it fetches the image from its registry, turns its layers into
//! Merkle trees in the CAS, merges them with the action's input root and forwards the
//! rewritten action. See `../README.md` for the operator's view.
//!
//! Layout, data first:
//! - [`digest`], [`status`], [`proto`]: REAPI digests, error wrapping, generated code;
//! - [`config`]: Jsonnet loading with Buildbarn's semantics and the typed configuration;
//! - [`blobstore`]: CAS and AC traits, backends and decorators;
//! - [`registry`]: OCI distribution access (references, auth, platforms, blobs);
//! - [`layer`]: one layer blob → a verified, normalised changeset in the CAS;
//! - [`tree`]: in-memory Merkle trees, applying changesets, canonical encoding;
//! - [`merge`]: merging trees stored in the CAS (images stacked, input root grafted),
//!   and the checks on the result;
//! - [`fleet`]: several replicas sharing the expansions (one owner per image and layer);
//! - `util`: building blocks shared by several modules (the bounded cache);
//! - [`grpc`], [`service`], [`diagnostics`]: clients, servers and the front doors.

pub mod action;
pub mod blobstore;
pub mod cli;
pub mod config;
pub mod diagnostics;
pub mod digest;
pub mod fleet;
#[doc(hidden)]
pub mod fuzzing;
pub mod grpc;
pub mod image;
pub mod layer;
pub mod merge;
pub mod program;
pub mod proto;
pub mod registry;
pub mod service;
pub mod status;
#[cfg(any(test, feature = "testutil"))]
pub mod testutil;
pub mod tree;
pub(crate) mod util;
