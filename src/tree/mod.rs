//! The in-memory build of an image tree: the image's layer changesets applied in
//! order onto an empty tree, then encoded as canonical REAPI `Directory` messages
//! (what `image/tree_builder.rs` does with it):
//!
//! - `directory.rs`: the tree itself ([`Directory`], [`Node`]), copy-on-write through
//!   `Arc`, with memoised encodings;
//! - `path_resolution.rs`: chroot-style resolution of the parent part of an entry's path;
//! - `apply.rs`: [`apply_layer`], one layer changeset onto the tree below it
//!   (the layer rules of docs/design/layers.md);
//! - `encode.rs`: canonical `Directory` messages and digests ([`encode()`]; the canonical
//!   form of docs/design/directories.md);
//! - `error.rs`: the errors, each message starting with the name of the rule broken.
//!
//! Trees already in the CAS are merged without loading them: that is `crate::merge`.

mod apply;
mod directory;
mod encode;
mod error;
mod path_resolution;

#[cfg(test)]
mod apply_tests;
#[cfg(test)]
mod model_proptest;
#[cfg(test)]
pub(crate) mod test_support;

pub use apply::{apply_layer, ApplyReport, MAX_DEPTH};
pub use directory::{Directory, Node, NodeKind};
pub(crate) use encode::invalid_name_reason;
pub use encode::{encode, referenced_blobs, EncodedTree, TreeStatistics};
#[cfg(test)]
pub(crate) use error::error_name;
pub(crate) use error::tree_error;
