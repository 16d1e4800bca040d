//! In-memory Merkle trees of container images, and what is done with them:
//!
//! - `directory.rs`: the tree itself ([`Directory`], [`Node`]), copy-on-write through
//!   `Arc`, with memoised encodings;
//! - `path_resolution.rs`: chroot-style resolution of parent paths (layers.md L-42);
//! - `apply.rs`: [`apply_layer`], one layer changeset onto the tree below it (L-40…L-74);
//! - `encode.rs`: canonical REAPI `Directory` messages and digests ([`encode`], L-80…L-86);
//! - `directory_source.rs`: [`DirectorySource`], reading `Directory` messages by digest;
//! - `load.rs`: [`load`], a tree from the CAS, to reuse a cached tree as a lower tree;
//! - `remote_directory.rs`: name lookups in REAPI `Directory` messages;
//! - `graft.rs`: [`graft`] and [`stack_images`], merging trees in the CAS lazily (L-90…L-95);
//! - `checks.rs`: checks over a merged tree: working directory, output paths,
//!   `usr/bin/env` (L-93, L-94, reapi.md R-31).
//!
//! Every error message starts with the name of the rule's error (see [`error_name`]).

mod apply;
mod checks;
mod directory;
mod directory_source;
mod encode;
mod error;
mod graft;
mod load;
mod path_resolution;
mod remote_directory;

#[cfg(test)]
mod apply_tests;
#[cfg(test)]
mod graft_tests;
#[cfg(test)]
mod model_proptest;
#[cfg(test)]
mod test_support;

pub use apply::{apply_layer, ApplyReport, MAX_DEPTH};
pub use checks::{check_output_paths, check_usr_bin_env, check_working_directory};
pub use directory::{Directory, Node, NodeKind};
pub use directory_source::{CasDirectorySource, DirectorySource};
pub use encode::{encode, referenced_blobs, root_digest, EncodedTree, TreeStatistics};
pub use error::error_name;
pub use graft::{graft, merge, stack_images, MergeOptions, MergePolicy, MergedTree};
pub use load::{load, load_from};
pub use path_resolution::MAX_SYMLINK_HOPS;
