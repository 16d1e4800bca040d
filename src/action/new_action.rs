//! The new action (step 5 of docs/how-it-works.md): a Command whose working directory
//! moved with the input root and whose environment has the images' `Env` as its base
//! (`environment.rs`), an Action naming the merged root and the new Command, and a
//! platform without the image properties, the others passed through
//! `platformPropertyRules`, with `addPlatformProperties` added. Every other field
//! (timeout, `do_not_cache`, salt, …) is kept. The new Directories, the
//! Command and the Action are uploaded in one batch (with the blobs of the mapping
//! record in proxy mode), without asking first what the CAS lacks.

// Command.platform is deprecated in REAPI, but older clients still send it; the
// rewritten platform is mirrored there on purpose.
#![allow(deprecated)]

use super::images::ImageProperty;
use super::{RewriteOptions, RewrittenAction};
use crate::blobstore::{ContentAddressableStorage, Instance};
use crate::digest::DigestFunction;
use crate::image::ExpandedImage;
use crate::proto::cache::{expansion_provenance, ExpansionProvenance};
use crate::proto::reapi;
use crate::status::wrap;
use bytes::Bytes;
use std::collections::HashSet;
use std::time::Duration;
use tonic::Status;

/// The platform whose properties decide: the Action's, else (older clients) the
/// Command's.
pub(crate) fn deciding_platform<'a>(
    action: &'a reapi::Action,
    command: &'a reapi::Command,
) -> Option<&'a reapi::Platform> {
    if action
        .platform
        .as_ref()
        .is_some_and(|p| !p.properties.is_empty())
    {
        action.platform.as_ref()
    } else {
        command.platform.as_ref()
    }
}

/// The Command's working directory under `inputRootDirectory`.
pub(crate) fn working_directory(options: &RewriteOptions, command: &reapi::Command) -> String {
    join(&options.input_root_directory, &command.working_directory)
}

/// The rewritten Command and Action, encoded.
pub(crate) struct NewAction {
    pub action: reapi::Action,
    pub action_digest: reapi::Digest,
    /// The encoded Command and Action, to be uploaded.
    pub blobs: Vec<(reapi::Digest, Bytes)>,
}

/// What the new Command and Action are made of besides the client's.
pub(crate) struct Changes {
    pub working_directory: String,
    /// The environment, sorted by name.
    pub environment_variables: Vec<reapi::command::EnvironmentVariable>,
    /// The rewritten platform (`platform_properties::rewrite`).
    pub platform: reapi::Platform,
    pub merged_root: reapi::Digest,
}

/// The client's `action` and `command` rewritten to run in `changes.merged_root`.
pub(crate) fn build(
    function: DigestFunction,
    action: &reapi::Action,
    command: &reapi::Command,
    changes: Changes,
) -> NewAction {
    let new_platform = changes.platform;
    let new_command = reapi::Command {
        working_directory: changes.working_directory,
        environment_variables: changes.environment_variables,
        // Command.platform mirrors the Action's when the client set it, so that a
        // server reading either sees the same platform.
        platform: command.platform.as_ref().map(|_| new_platform.clone()),
        ..command.clone()
    };
    let (command_digest, command_bytes) = crate::digest::encode_message(function, &new_command);
    let new_action = reapi::Action {
        command_digest: Some(command_digest.clone()),
        input_root_digest: Some(changes.merged_root),
        platform: Some(new_platform),
        ..action.clone()
    };
    let (action_digest, action_bytes) = crate::digest::encode_message(function, &new_action);
    NewAction {
        action: new_action,
        action_digest: action_digest.clone(),
        blobs: vec![
            (command_digest, command_bytes),
            (action_digest, action_bytes),
        ],
    }
}

/// Uploads `blobs`, each once, in as few BatchUpdateBlobs as the message size allows.
/// Nothing is asked first: these are small messages, and writing one the CAS has
/// already costs less than the round trip of a FindMissingBlobs.
pub(crate) async fn upload(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    blobs: Vec<(reapi::Digest, Bytes)>,
) -> Result<(), Status> {
    let mut seen = HashSet::new();
    let uploads: Vec<_> = blobs
        .into_iter()
        .filter(|(d, _)| seen.insert(d.clone()))
        .collect();
    cas.put_batch(instance, uploads)
        .await
        .map_err(|s| wrap(s, "Failed to upload the rewritten action"))
}

/// How a rewrite came about, beyond the images and the new action.
pub(crate) struct Record {
    pub merged_root: reapi::Digest,
    /// Variables taken from the images' `Env`.
    pub added_environment_variables: Vec<reapi::command::EnvironmentVariable>,
    /// `requiredDirectories` added to the merged tree.
    pub added_directories: Vec<String>,
    pub expand_duration: Duration,
    pub rewrite_duration: Duration,
}

/// The rewritten action with the record of how it came about (returned to the client
/// with the result).
pub(crate) fn rewritten(
    instance: &Instance,
    original: &reapi::Action,
    original_digest: Option<&reapi::Digest>,
    images: &[ImageProperty],
    expanded: &[ExpandedImage],
    record: Record,
    new: NewAction,
) -> RewrittenAction {
    let provenance = ExpansionProvenance {
        images: images
            .iter()
            .zip(expanded)
            .map(|(image, expanded)| expansion_provenance::Image {
                reference: image.text.clone(),
                manifest_digest: expanded.manifest_digest.clone(),
                root_directory_digest: Some(expanded.root_directory_digest.clone()),
                from_cache: expanded.from_cache,
                working_dir: expanded.runtime_config.working_dir.clone(),
                user: expanded.runtime_config.user.clone(),
            })
            .collect(),
        merged_input_root_digest: Some(record.merged_root),
        original_action_digest: original_digest.cloned(),
        instance_name: instance.name.clone(),
        do_not_cache: original.do_not_cache,
        rewritten_action_digest: Some(new.action_digest.clone()),
        added_environment_variables: record.added_environment_variables,
        added_directories: record.added_directories,
        expand_duration: Some(duration(record.expand_duration)),
        rewrite_duration: Some(duration(record.rewrite_duration)),
    };
    RewrittenAction {
        action: new.action,
        action_digest: new.action_digest,
        provenance,
        mapping_blobs_uploaded: false,
    }
}

fn duration(d: Duration) -> crate::proto::protobuf::Duration {
    crate::proto::protobuf::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// `a/b` joined with `c` ("" on either side is nothing).
fn join(prefix: &str, path: &str) -> String {
    let prefix = prefix.trim_matches('/');
    let path = path.trim_start_matches("./").trim_matches('/');
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) => format!("{prefix}/{path}"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn join_paths() {
        assert_eq!(super::join("", "a/b"), "a/b");
        assert_eq!(super::join("bazel_exec_root", ""), "bazel_exec_root");
        assert_eq!(super::join("bazel_exec_root", "pkg"), "bazel_exec_root/pkg");
    }
}
