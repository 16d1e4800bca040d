//! The lazy merge over trees stored in the CAS, what `crate::action` does per action
//! (steps 3 to 5 of docs/how-it-works.md): only the `Directory` messages where trees
//! overlap are read and written again, so the work does not grow with the image.
//!
//! - `directory_source.rs`: [`DirectorySource`], `Directory` messages by digest, and
//!   [`CasDirectorySource`], which reads them from one instance's CAS;
//! - `directory_cache.rs`: [`DirectoryCache`], decoded Directories kept in front of the
//!   CAS across actions, and [`CachingDirectorySource`], which reads through it;
//! - `remote_directory.rs`: a stored `Directory` message as a map of its children, and
//!   back;
//! - `merger.rs`: one stored directory merged into another, per [`MergePolicy`];
//! - `graft.rs`: [`graft()`], the input root into the image at a mount path;
//! - `stack.rs`: [`stack_images`], several images, each later one over the earlier;
//! - `checks.rs`: the checks on the merged tree: working directory, output paths,
//!   `usr/bin/env`, the program the Command runs;
//! - `required_directories.rs`: [`add_required_directories`], directories such as
//!   `/tmp` added empty where the merged tree lacks them.
//!
//! Errors are made as in `crate::tree`: each message starts with the name of the rule
//! broken.

mod checks;
mod directory_cache;
mod directory_source;
mod graft;
mod merger;
mod remote_directory;
mod required_directories;
mod stack;

#[cfg(test)]
mod checks_tests;
#[cfg(test)]
mod graft_tests;
#[cfg(test)]
mod load;
#[cfg(test)]
mod test_support;

pub use checks::{
    check_output_paths, check_program, check_usr_bin_env, check_working_directory,
    DEFAULT_SEARCH_PATH,
};
pub use directory_cache::{CachingDirectorySource, DirectoryCache};
pub use directory_source::{CasDirectorySource, DirectorySource};
pub use graft::graft;
pub use merger::{MergeOptions, MergePolicy, MergedTree};
pub use required_directories::{add_required_directories, WithDirectories};
pub use stack::stack_images;
