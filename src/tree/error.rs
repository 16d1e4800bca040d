//! Error construction for the tree module, and for `crate::merge`, whose errors follow
//! the same form. Every message starts with the name of the rule's error
//! (`NotADirectory`, `DanglingHardlink`, `InputRootConflict`, …) so that callers, tests
//! and operators can match on it, followed by the path concerned.
//!
//! Problems in an image or an action are INVALID_ARGUMENT, as Buildbarn answers for
//! malformed inputs; a missing `usr/bin/env` is FAILED_PRECONDITION.

use tonic::Status;

/// `"{name}: {detail}"` as INVALID_ARGUMENT.
pub(crate) fn tree_error(name: &str, detail: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{name}: {detail}"))
}

/// An error while applying one layer entry: `"{name}: layer entry {path:?}: {detail}"`.
pub(crate) fn entry_error(name: &str, entry_path: &str, detail: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{name}: layer entry {entry_path:?}: {detail}"))
}

/// The error name at the start of a message produced here, for tests to match on.
#[cfg(test)]
pub(crate) fn error_name(status: &Status) -> &str {
    status
        .message()
        .split_once(':')
        .map_or(status.message(), |(name, _)| name)
}
