//! Why a rewrite failed, and whose mistake it is. Errors of the merge and of the checks
//! after it are attributed here: a Directory missing from the client's input root is
//! the client's to upload, one missing from an image means the image must be expanded
//! again, and a clash between inputs and image is the client's to fix.

use crate::blobstore::{get_message, ContentAddressableStorage, Instance};
use crate::proto::reapi;
use crate::status::wrap;
use std::collections::HashSet;
use tonic::{Code, Status};

/// Why a rewrite failed.
pub(crate) enum Failure {
    /// Reported to the client as it is.
    Status(Status),
    /// A Directory of an image is gone from the CAS: expand again.
    ImageIncomplete(Status),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Failure::Status(status)
    }
}

/// Errors of the merge and of the checks after it. A missing Directory of the
/// client's input root is the client's to upload (FAILED_PRECONDITION naming the
/// Directories that are missing); a missing Directory that is not the client's
/// belongs to an image (`Failure::ImageIncomplete`); anything else keeps its code.
pub(crate) async fn input_error(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    status: Status,
    input_root: &reapi::Digest,
    context: &str,
) -> Failure {
    if status.code() == Code::NotFound {
        let missing = match missing_input_directories(cas, instance, input_root).await {
            Ok(missing) => missing,
            Err(s) => return wrap(s, context).into(),
        };
        return if missing.is_empty() {
            Failure::ImageIncomplete(wrap(status, context))
        } else {
            crate::status::missing_blobs(format!("{context}: {}", status.message()), &missing)
                .into()
        };
    }
    if status.code() == Code::Internal || status.code() == Code::Unavailable {
        wrap(status, context).into()
    } else {
        // Conflicts and invalid paths are the client's inputs colliding with the image.
        Status::new(
            if status.code() == Code::FailedPrecondition {
                Code::FailedPrecondition
            } else {
                Code::InvalidArgument
            },
            format!("{context}: {}", status.message()),
        )
        .into()
    }
}

/// The Directories of the client's input tree that are not in the CAS (walked level
/// by level; only on the error path).
async fn missing_input_directories(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    input_root: &reapi::Digest,
) -> Result<Vec<reapi::Digest>, Status> {
    let mut missing = Vec::new();
    let mut seen = HashSet::new();
    let mut level = vec![input_root.clone()];
    while !level.is_empty() {
        level.retain(|d| d.size_bytes > 0 && seen.insert(d.clone()));
        let absent: HashSet<reapi::Digest> = cas
            .find_missing(instance, level.clone())
            .await?
            .into_iter()
            .collect();
        let mut next = Vec::new();
        for digest in level {
            if absent.contains(&digest) {
                missing.push(digest);
                continue;
            }
            match get_message::<reapi::Directory>(cas, instance, &digest).await {
                Ok(directory) => {
                    next.extend(directory.directories.into_iter().filter_map(|d| d.digest))
                }
                Err(s) if s.code() == Code::NotFound => missing.push(digest),
                Err(s) => return Err(s),
            }
        }
        level = next;
    }
    Ok(missing)
}
