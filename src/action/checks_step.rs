//! The checks on the merged tree before anything is forwarded (step 5 of
//! docs/how-it-works.md): the working directory exists, no output path is blocked by
//! the image, `/usr/bin/env` is an executable file when `requireUsrBinEnv` is set
//! (bb_runner's chroot mode executes every command through it), and the program the
//! Command runs is an executable file of the tree when `checkProgramExists` is set.
//! Before them, [`add_required_directories`] adds the `requiredDirectories` the tree
//! lacks.
//!
//! A missing path of the image is FAILED_PRECONDITION naming the image and the path:
//! the action never reaches a worker. The Directories looked into come from the
//! overlay of what the merge wrote and the local Directory cache, so on the warm path
//! the image's Directories are not read from the CAS again.

// Command.output_files and output_directories are deprecated in REAPI, but older
// clients still use them; they are read on purpose.
#![allow(deprecated)]

use super::failure::{input_error, Failure};
use super::merge_step::Merged;
use super::written_overlay::WrittenOverlay;
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
    /// Check that `arguments[0]` is an executable file of the tree.
    pub check_program: bool,
    /// `PATH` of the rewritten Command (with the images' `Env` applied), if set.
    pub path_variable: Option<&'a str>,
    /// The images, as the client wrote them (for messages).
    pub images: &'a str,
}

/// Adds the directories of `paths` that `merged.root` lacks, empty; `merged` then
/// names the new root and holds the Directories written. Returns the paths added.
pub(crate) async fn add_required_directories(
    source: &mut WrittenOverlay<'_>,
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    merged: &mut Merged,
    paths: &[String],
    images: &str,
) -> Result<Vec<String>, Failure> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let added = match crate::merge::add_required_directories(&*source, &merged.root, paths).await {
        Ok(added) => added,
        Err(s) if s.code() == Code::FailedPrecondition => {
            return Err(
                Status::failed_precondition(format!("Image {images}: {}", s.message())).into(),
            )
        }
        Err(s) => {
            let context = "Failed to add the required directories";
            return Err(input_error(cas, instance, s, &merged.input_root, context).await);
        }
    };
    source.remember(instance.digest_function, &added.directories);
    merged.root = added.root;
    merged.new_directories.extend(added.directories);
    Ok(added.added)
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
    if checked.require_usr_bin_env {
        match crate::merge::check_usr_bin_env(source, &merged.root).await {
            Ok(()) => {}
            Err(s) if s.code() == Code::NotFound => {
                return Err(blame(s, "Failed to look for /usr/bin/env").await)
            }
            Err(s) => return Err(Status::failed_precondition(format!(
                "Image {} cannot run on chroot workers, which execute commands through /usr/bin/env: {}",
                checked.images,
                s.message()
            ))
            .into()),
        }
    }
    if !checked.check_program {
        return Ok(());
    }
    let Some(program) = checked.command.arguments.first() else {
        return Ok(());
    };
    let found = crate::merge::check_program(
        source,
        &merged.root,
        working_directory,
        program,
        checked.path_variable,
    )
    .await;
    match found {
        Ok(()) => Ok(()),
        Err(s) if s.code() == Code::NotFound => {
            Err(blame(s, "Failed to look for the program").await)
        }
        Err(s) => Err(Status::failed_precondition(format!(
            "Image {}: the action's program cannot be run: {}",
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
