//! Names of the operations handed to clients, and how WaitExecution reads them back.
//!
//! WaitExecution carries only an operation name, yet the expander needs the instance
//! name of the original Execute to find what it recorded for that action (the mapping
//! from the rewritten action back to the client's lives in the Action Cache of that
//! instance). So every operation relayed to a client is renamed
//! `{instance_name}/operations/{scheduler's name}`, the same scheme Buildbarn's frontend
//! uses when it spreads Execute calls over schedulers by instance name prefix (see
//! docs/design/operation-names.md). WaitExecution splits the name at the first
//! `/operations/`, forwards the scheduler's part and looks records up under the
//! instance part. That works after a restart and on any replica, because nothing but
//! the name is needed.
//!
//! The split is unambiguous: REAPI reserves the path segment `operations`, so no valid
//! instance name contains it (Execute refuses such names, see [`validate_instance_name`]),
//! while the scheduler's part may contain anything, `/operations/` included.

use tonic::Status;

/// What separates the instance name from the scheduler's operation name.
pub(crate) const SEPARATOR: &str = "/operations/";

/// Path segments REAPI reserves, which no instance name may contain.
const RESERVED_SEGMENTS: &[&str] = &[
    "blobs",
    "uploads",
    "actions",
    "actionResults",
    "operations",
    "capabilities",
    "compressed-blobs",
];

/// The name a client sees for the scheduler's operation `upstream` of a request for
/// `instance_name`.
pub fn external(instance_name: &str, upstream: &str) -> String {
    format!("{instance_name}{SEPARATOR}{upstream}")
}

/// Splits a name handed out by [`external`] into (instance name, scheduler's name). A
/// name without the separator (one handed out by an older version, or by the scheduler
/// directly) belongs to the empty instance name and is forwarded as it is.
pub fn parse(name: &str) -> (&str, &str) {
    match name.find(SEPARATOR) {
        Some(position) => (&name[..position], &name[position + SEPARATOR.len()..]),
        None => ("", name),
    }
}

/// Refuses instance names that REAPI does not allow: reserved path segments, empty
/// segments, and leading or trailing slashes.
pub(crate) fn validate_instance_name(instance_name: &str) -> Result<(), Status> {
    if instance_name.is_empty() {
        return Ok(());
    }
    for segment in instance_name.split('/') {
        if segment.is_empty() {
            return Err(Status::invalid_argument(format!(
                "Invalid instance name {instance_name:?}: empty path segment"
            )));
        }
        if RESERVED_SEGMENTS.contains(&segment) {
            return Err(Status::invalid_argument(format!(
                "Invalid instance name {instance_name:?}: path segment {segment:?} is reserved"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_for_every_instance_name() {
        for instance in ["", "main", "a/b", "x/y/z"] {
            for upstream in ["uuid-1", "", "frontend/operations/inner", "a/b"] {
                let name = external(instance, upstream);
                assert_eq!(parse(&name), (instance, upstream), "{name}");
            }
        }
    }

    #[test]
    fn names_without_the_separator_belong_to_the_empty_instance() {
        assert_eq!(parse("3f2a-uuid"), ("", "3f2a-uuid"));
        assert_eq!(parse("operations/x"), ("", "operations/x"));
    }

    #[test]
    fn reserved_or_malformed_instance_names_are_refused() {
        for good in ["", "main", "a/b", "blobsy", "my-operations"] {
            validate_instance_name(good).unwrap();
        }
        for bad in ["a/operations", "operations", "blobs/x", "/a", "a/", "a//b"] {
            let status = validate_instance_name(bad).unwrap_err();
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(status.message().contains(bad), "{}", status.message());
        }
    }
}
