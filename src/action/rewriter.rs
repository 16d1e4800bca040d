//! The rewrite of one action (ADR #8 steps 4-5): the images its platform names are
//! expanded and stacked, the client's input root is grafted onto them (at the root or
//! under `inputRootDirectory`), and a new Command and Action are written that name the
//! merged root, a working directory moved with the input root, and a platform without
//! `container-image`.
//!
//! Everything on this path is proportional to the client's inputs and to the directories
//! where image and inputs overlap, not to the image: the image trees come from the
//! expander's caches and image Directories from the local Directory cache.
//!
//! Nothing is forwarded on failure. Errors say whose mistake it is: INVALID_ARGUMENT for
//! a malformed reference or a clash between inputs and image, FAILED_PRECONDITION (with
//! REAPI's PreconditionFailure naming the missing digests) for a missing Action, Command
//! or input Directory, FAILED_PRECONDITION (without one) for a missing image or an image
//! without `usr/bin/env`, PERMISSION_DENIED for a registry that is not allowed or
//! rejected credentials, UNAVAILABLE for transient faults. A missing image is never
//! NOT_FOUND: on an Execute stream that code means "operation not found", which clients
//! answer by executing again.
//!
//! When a Directory of an image turns out to be gone from the CAS while the inputs are
//! merged (evicted since the expansion was cached), the local caches are dropped and the
//! rewrite is done once more, which re-expands what is missing; the client is not blamed.

// Command.platform, output_files and output_directories are deprecated in REAPI, but
// older clients still use them; they are read (and the platform mirrored) on purpose.
#![allow(deprecated)]

use super::platform_properties;
use crate::blobstore::{get_message, Instance};
use crate::image::{DirectoryCache, ImageExpander};
use crate::proto::cache::{expansion_provenance, ExpansionProvenance};
use crate::proto::reapi;
use crate::registry::Platform;
use crate::status::wrap;
use crate::tree::{DirectorySource, MergeOptions, MergePolicy};
use bytes::Bytes;
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Code, Status};

/// How actions are rewritten (`containerImages` in the configuration).
#[derive(Clone, Debug)]
pub struct RewriteOptions {
    /// Platform property names whose values are image references.
    pub property_names: Vec<String>,
    /// Where the client's input root goes in the image ("" = the image root).
    pub input_root_directory: String,
    /// What happens when an input and the image have different nodes at one path.
    pub conflict_policy: MergePolicy,
    /// Properties added to the rewritten platform (e.g. what the chroot workers
    /// advertise instead of `container-image`).
    pub add_platform_properties: Vec<reapi::platform::Property>,
    /// Refuse images without an executable `/usr/bin/env` (bb_runner's chroot mode
    /// executes commands through it, reapi.md R-31).
    pub require_usr_bin_env: bool,
    pub maximum_message_size_bytes: usize,
    /// The platform chosen when an action has no `ISA`.
    pub default_platform: Platform,
}

impl Default for RewriteOptions {
    fn default() -> Self {
        Self {
            property_names: vec!["container-image".into()],
            input_root_directory: String::new(),
            conflict_policy: MergePolicy::Strict,
            add_platform_properties: Vec::new(),
            require_usr_bin_env: true,
            maximum_message_size_bytes: 2 << 20,
            default_platform: Platform::default(),
        }
    }
}

/// A rewritten action, stored in the CAS.
#[derive(Clone, Debug)]
pub struct RewrittenAction {
    pub action: reapi::Action,
    pub action_digest: reapi::Digest,
    pub provenance: ExpansionProvenance,
}

/// What became of an action.
#[derive(Clone, Debug)]
pub enum Rewrite {
    /// The action names no image: forward it as it is.
    PassThrough,
    Rewritten(Box<RewrittenAction>),
}

pub struct ActionRewriter {
    expander: Arc<ImageExpander>,
    directories: Arc<DirectoryCache>,
    options: RewriteOptions,
}

impl ActionRewriter {
    pub fn new(
        expander: Arc<ImageExpander>,
        directories: Arc<DirectoryCache>,
        options: RewriteOptions,
    ) -> Self {
        Self {
            expander,
            directories,
            options,
        }
    }

    pub fn expander(&self) -> &Arc<ImageExpander> {
        &self.expander
    }

    pub fn options(&self) -> &RewriteOptions {
        &self.options
    }

    /// Drops the local Directory cache (see `ImageExpander::forget_local_caches`).
    pub fn forget_local_caches(&self) {
        self.directories.clear();
    }

    /// Rewrites the action stored in the CAS under `action_digest`.
    pub async fn rewrite_digest(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
    ) -> Result<Rewrite, Status> {
        instance.digest_function.validate(action_digest)?;
        let action: reapi::Action =
            read_input(instance, &self.expander, action_digest, "Action").await?;
        self.rewrite_action(instance, action, Some(action_digest.clone()))
            .await
    }

    /// Rewrites `action` (router mode hands the Action itself).
    pub async fn rewrite_action(
        &self,
        instance: &Instance,
        action: reapi::Action,
        original_digest: Option<reapi::Digest>,
    ) -> Result<Rewrite, Status> {
        let names = &self.options.property_names;
        let mut references = platform_properties::image_references(action.platform.as_ref(), names);
        let command_digest = action
            .command_digest
            .clone()
            .ok_or_else(|| Status::invalid_argument("Action has no command digest"))?;
        // Older clients name the image only in Command.platform; reading the Command is
        // needed then, and in any case for a rewrite.
        let command: Option<reapi::Command> = if references.is_empty() {
            None
        } else {
            Some(read_input(instance, &self.expander, &command_digest, "Command").await?)
        };
        let command = match command {
            Some(c) => c,
            None => {
                let action_has_platform = action
                    .platform
                    .as_ref()
                    .is_some_and(|p| !p.properties.is_empty());
                if action_has_platform {
                    return Ok(Rewrite::PassThrough);
                }
                // No platform in the Action: look at the (deprecated) Command platform.
                let command: reapi::Command =
                    read_input(instance, &self.expander, &command_digest, "Command").await?;
                references =
                    platform_properties::image_references(command.platform.as_ref(), names);
                if references.is_empty() {
                    return Ok(Rewrite::PassThrough);
                }
                command
            }
        };
        let started = Instant::now();
        let mut result = self
            .rewrite_with_command(instance, &action, &command, &references, &original_digest)
            .await;
        if let Err(Failure::ImageIncomplete(status)) = &result {
            tracing::warn!(
                "Content of image {} is gone from the CAS; expanding again: {}",
                references.join(", "),
                status.message()
            );
            self.expander.forget_local_caches();
            self.forget_local_caches();
            result = self
                .rewrite_with_command(instance, &action, &command, &references, &original_digest)
                .await;
        }
        crate::image::metrics::step("rewrite", result.is_ok(), started.elapsed().as_secs_f64());
        match result {
            Ok(rewritten) => Ok(Rewrite::Rewritten(Box::new(rewritten))),
            Err(Failure::Status(status)) => Err(status),
            Err(Failure::ImageIncomplete(status)) => Err(Status::unavailable(format!(
                "Content of image {} is missing from the Content Addressable Storage even after expanding it again: {}",
                references.join(", "),
                status.message()
            ))),
        }
    }

    async fn rewrite_with_command(
        &self,
        instance: &Instance,
        action: &reapi::Action,
        command: &reapi::Command,
        references: &[String],
        original_digest: &Option<reapi::Digest>,
    ) -> Result<RewrittenAction, Failure> {
        let function = instance.digest_function;
        // The platform whose properties decide: the Action's, else the Command's.
        let deciding_platform = if action
            .platform
            .as_ref()
            .is_some_and(|p| !p.properties.is_empty())
        {
            action.platform.as_ref()
        } else {
            command.platform.as_ref()
        };
        let wanted = platform_properties::wanted_platform(
            deciding_platform,
            &self.options.default_platform,
        )?;
        let expansions = futures::future::join_all(
            references
                .iter()
                .map(|r| self.expander.expand(instance, r, &wanted)),
        )
        .await;
        let mut images = Vec::new();
        for expansion in expansions {
            images.push(expansion.map_err(image_error)?);
        }
        let cached = self
            .directories
            .source(self.expander.cas().clone(), instance.clone());
        // Directories written by this rewrite are uploaded only at the end; until then
        // the steps that follow read them from here, whatever the bounded local cache
        // keeps.
        let mut source = WrittenOverlay {
            written: HashMap::new(),
            inner: &cached,
        };
        let merge_options = MergeOptions {
            policy: self.options.conflict_policy,
            max_message_size: self.options.maximum_message_size_bytes,
        };
        let mut new_directories: Vec<(reapi::Digest, Bytes)> = Vec::new();
        let image_root = if images.len() == 1 {
            images[0].root_directory_digest.clone()
        } else {
            let roots: Vec<reapi::Digest> = images
                .iter()
                .map(|i| i.root_directory_digest.clone())
                .collect();
            let stacked =
                crate::tree::stack_images(&source, &roots, self.options.maximum_message_size_bytes)
                    .await
                    .map_err(|s| {
                        let s = wrap(s, "Failed to stack images");
                        if s.code() == Code::NotFound {
                            Failure::ImageIncomplete(s)
                        } else {
                            Failure::Status(s)
                        }
                    })?;
            self.remember(function, &stacked.directories, &mut source);
            new_directories.extend(stacked.directories);
            stacked.root
        };
        let input_root = action
            .input_root_digest
            .clone()
            .unwrap_or_else(|| function.empty_digest());
        function.validate(&input_root)?;
        let graft_started = Instant::now();
        let merged = crate::tree::graft(
            &source,
            &image_root,
            &input_root,
            &self.options.input_root_directory,
            &merge_options,
        )
        .await;
        crate::image::metrics::step(
            "graft",
            merged.is_ok(),
            graft_started.elapsed().as_secs_f64(),
        );
        let merged = match merged {
            Ok(m) => m,
            Err(s) => {
                return Err(self
                    .input_error(
                        instance,
                        s,
                        &input_root,
                        "Failed to merge the input root with the image",
                    )
                    .await)
            }
        };
        self.remember(function, &merged.directories, &mut source);
        new_directories.extend(merged.directories.iter().cloned());

        let working_directory = join(
            &self.options.input_root_directory,
            &command.working_directory,
        );
        if let Err(s) =
            crate::tree::check_working_directory(&source, &merged.root, &working_directory).await
        {
            return Err(self
                .input_error(instance, s, &input_root, "Invalid working directory")
                .await);
        }
        let output_paths: Vec<String> = if command.output_paths.is_empty() {
            command
                .output_files
                .iter()
                .chain(command.output_directories.iter())
                .cloned()
                .collect()
        } else {
            command.output_paths.clone()
        };
        if let Err(s) = crate::tree::check_output_paths(
            &source,
            &image_root,
            &merged.root,
            &working_directory,
            &output_paths,
        )
        .await
        {
            return Err(self
                .input_error(instance, s, &input_root, "Invalid output path")
                .await);
        }
        if self.options.require_usr_bin_env {
            match crate::tree::check_usr_bin_env(&source, &merged.root).await {
                Ok(()) => {}
                Err(s) if s.code() == Code::NotFound => {
                    return Err(self
                        .input_error(instance, s, &input_root, "Failed to look for /usr/bin/env")
                        .await)
                }
                Err(s) => {
                    return Err(Status::failed_precondition(format!(
                        "Image {} cannot run on chroot workers, which execute commands through /usr/bin/env: {}",
                        references.join(", "),
                        s.message()
                    ))
                    .into())
                }
            }
        }

        let property_names = &self.options.property_names;
        let add = &self.options.add_platform_properties;
        let new_platform = platform_properties::rewrite(deciding_platform, property_names, add);
        let new_command = reapi::Command {
            working_directory,
            // Command.platform mirrors the Action's (reapi.md R-10), when the client set it.
            platform: command.platform.as_ref().map(|_| new_platform.clone()),
            ..command.clone()
        };
        let (command_digest, command_bytes) = crate::digest::encode_message(function, &new_command);
        let new_action = reapi::Action {
            command_digest: Some(command_digest.clone()),
            input_root_digest: Some(merged.root.clone()),
            platform: Some(new_platform),
            ..action.clone()
        };
        let (action_digest, action_bytes) = crate::digest::encode_message(function, &new_action);
        new_directories.push((command_digest, command_bytes));
        new_directories.push((action_digest.clone(), action_bytes));
        self.upload(instance, new_directories).await?;

        let provenance = ExpansionProvenance {
            images: references
                .iter()
                .zip(images.iter())
                .map(|(reference, image)| expansion_provenance::Image {
                    reference: reference.clone(),
                    manifest_digest: image.manifest_digest.clone(),
                    root_directory_digest: Some(image.root_directory_digest.clone()),
                })
                .collect(),
            merged_input_root_digest: Some(merged.root),
            original_action_digest: original_digest.clone(),
            instance_name: instance.name.clone(),
            do_not_cache: action.do_not_cache,
            rewritten_action_digest: Some(action_digest.clone()),
        };
        Ok(RewrittenAction {
            action: new_action,
            action_digest,
            provenance,
        })
    }

    /// Makes Directories written by a merge readable by the steps that follow (through
    /// `overlay`) and keeps them in the local cache for later actions.
    fn remember(
        &self,
        function: crate::digest::DigestFunction,
        directories: &[(reapi::Digest, Bytes)],
        overlay: &mut WrittenOverlay<'_>,
    ) {
        for (digest, bytes) in directories {
            if let Ok(directory) = reapi::Directory::decode(bytes.clone()) {
                let directory = Arc::new(directory);
                self.directories.insert(function, digest, directory.clone());
                overlay.written.insert(digest.clone(), directory);
            }
        }
    }

    async fn upload(
        &self,
        instance: &Instance,
        blobs: Vec<(reapi::Digest, Bytes)>,
    ) -> Result<(), Status> {
        let cas = self.expander.cas();
        let digests: Vec<reapi::Digest> = blobs.iter().map(|(d, _)| d.clone()).collect();
        let missing: std::collections::HashSet<reapi::Digest> = cas
            .find_missing(instance, digests)
            .await
            .map_err(|s| wrap(s, "Failed to upload the rewritten action"))?
            .into_iter()
            .collect();
        let mut seen = std::collections::HashSet::new();
        let uploads: Vec<_> = blobs
            .into_iter()
            .filter(|(d, _)| missing.contains(d) && seen.insert(d.clone()))
            .collect();
        cas.put_batch(instance, uploads)
            .await
            .map_err(|s| wrap(s, "Failed to upload the rewritten action"))
    }

    /// Errors of the merge and of the checks after it. A missing Directory of the
    /// client's input root is the client's to upload (FAILED_PRECONDITION naming the
    /// Directories that are missing); a missing Directory that is not the client's
    /// belongs to an image (`Failure::ImageIncomplete`); anything else keeps its code.
    async fn input_error(
        &self,
        instance: &Instance,
        status: Status,
        input_root: &reapi::Digest,
        context: &str,
    ) -> Failure {
        if status.code() == Code::NotFound {
            let missing = match self.missing_input_directories(instance, input_root).await {
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
        &self,
        instance: &Instance,
        input_root: &reapi::Digest,
    ) -> Result<Vec<reapi::Digest>, Status> {
        let cas = self.expander.cas();
        let mut missing = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut level = vec![input_root.clone()];
        while !level.is_empty() {
            level.retain(|d| d.size_bytes > 0 && seen.insert(d.clone()));
            let absent: std::collections::HashSet<reapi::Digest> = cas
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
                match get_message::<reapi::Directory>(&**cas, instance, &digest).await {
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
}

/// A [`DirectorySource`] that serves the Directories one rewrite wrote (not yet in
/// the CAS) and reads all others from `inner`.
struct WrittenOverlay<'a> {
    written: HashMap<reapi::Digest, Arc<reapi::Directory>>,
    inner: &'a dyn DirectorySource,
}

#[async_trait::async_trait]
impl DirectorySource for WrittenOverlay<'_> {
    async fn get_directory(&self, digest: &reapi::Digest) -> Result<Arc<reapi::Directory>, Status> {
        match self.written.get(digest) {
            Some(directory) => Ok(directory.clone()),
            None => self.inner.get_directory(digest).await,
        }
    }

    fn digest_function(&self) -> crate::digest::DigestFunction {
        self.inner.digest_function()
    }
}

/// Why a rewrite failed.
enum Failure {
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

/// Errors of image expansion as the client sees them: a missing image is
/// FAILED_PRECONDITION (the client's to fix), not NOT_FOUND (see the module
/// documentation); other codes are kept.
fn image_error(status: Status) -> Status {
    if status.code() == Code::NotFound {
        Status::failed_precondition(status.message())
    } else {
        status
    }
}

/// Reads the client's Action or Command; a missing one is FAILED_PRECONDITION with a
/// PreconditionFailure naming it, as REAPI's Execute prescribes.
async fn read_input<M: Message + Default>(
    instance: &Instance,
    expander: &ImageExpander,
    digest: &reapi::Digest,
    what: &str,
) -> Result<M, Status> {
    instance.digest_function.validate(digest)?;
    match get_message::<M>(&**expander.cas(), instance, digest).await {
        Ok(m) => Ok(m),
        Err(s) if s.code() == Code::NotFound => Err(crate::status::missing_blobs(
            format!(
                "{what} {} is not in the Content Addressable Storage",
                crate::digest::display(digest)
            ),
            std::slice::from_ref(digest),
        )),
        Err(s) => Err(wrap(s, format!("Failed to read {what}"))),
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
