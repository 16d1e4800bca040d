//! The checks on the merged tree before anything is forwarded (step 5 of
//! docs/how-it-works.md): the working directory exists, no output path is blocked by
//! the image, and `/usr/bin/env` is an executable file when `requireUsrBinEnv` is set
//! (bb_runner's chroot mode executes every command through it).

// Command.output_files and output_directories are deprecated in REAPI, but older
// clients still use them; they are read on purpose.
#![allow(deprecated)]

use super::failure::{input_error, Failure};
use super::merge_step::Merged;
use crate::blobstore::{ContentAddressableStorage, Instance};
use crate::merge::DirectorySource;
use crate::proto::reapi;
use tonic::{Code, Status};

/// What the checks look at.
pub(crate) struct Checked<'a> {
    pub merged: &'a Merged,
    /// The Command's working directory, moved with the input root.
    pub working_directory: &'a str,
    pub command: &'a reapi::Command,
    pub require_usr_bin_env: bool,
    /// The images, as the client wrote them (for messages).
    pub images: &'a str,
}

/// Runs every check on `checked.merged`, reading Directories from `source`.
pub(crate) async fn check(
    source: &dyn DirectorySource,
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    checked: Checked<'_>,
) -> Result<(), Failure> {
    let merged = checked.merged;
    let blame = |status: Status, context: &'static str| {
        input_error(cas, instance, status, &merged.input_root, context)
    };
    let working_directory = checked.working_directory;
    if let Err(s) =
        crate::merge::check_working_directory(source, &merged.root, working_directory).await
    {
        return Err(blame(s, "Invalid working directory").await);
    }
    let output_paths = output_paths(checked.command);
    if let Err(s) = crate::merge::check_output_paths(
        source,
        &merged.image_root,
        &merged.root,
        working_directory,
        &output_paths,
    )
    .await
    {
        return Err(blame(s, "Invalid output path").await);
    }
    if !checked.require_usr_bin_env {
        return Ok(());
    }
    match crate::merge::check_usr_bin_env(source, &merged.root).await {
        Ok(()) => Ok(()),
        Err(s) if s.code() == Code::NotFound => {
            Err(blame(s, "Failed to look for /usr/bin/env").await)
        }
        Err(s) => Err(Status::failed_precondition(format!(
            "Image {} cannot run on chroot workers, which execute commands through /usr/bin/env: {}",
            checked.images,
            s.message()
        ))
        .into()),
    }
}

/// The Command's output paths: `output_paths`, or for older clients `output_files`
/// and `output_directories`.
fn output_paths(command: &reapi::Command) -> Vec<String> {
    if command.output_paths.is_empty() {
        command
            .output_files
            .iter()
            .chain(command.output_directories.iter())
            .cloned()
            .collect()
    } else {
        command.output_paths.clone()
    }
}
