//! The rewrite of one action (steps 1-5 of docs/how-it-works.md), as named steps: the
//! platform's other properties pass `platformPropertyRules` (`platform_properties.rs`),
//! the images its platform names are expanded (`images.rs`), stacked and the client's
//! input root is grafted onto them (`merge_step.rs`), the environment gets the images'
//! `Env` as its base (`environment.rs`), the required directories are added and the
//! merged tree is checked (`checks_step.rs`), and a new Command and Action are written
//! (`new_action.rs`).
//!
//! Everything on this path is proportional to the client's inputs and to the directories
//! where image and inputs overlap, not to the image: the image trees come from the
//! expander's caches and image Directories from the local Directory cache.
//!
//! Nothing is forwarded on failure. Errors say whose mistake it is: INVALID_ARGUMENT for
//! a malformed reference or a clash between inputs and image, FAILED_PRECONDITION (with
//! REAPI's PreconditionFailure naming the missing digests) for a missing Action, Command
//! or input Directory, FAILED_PRECONDITION (without one) for a missing image or an image
//! without `usr/bin/env` or without the program the Command runs, or a property a rule
//! rejects, PERMISSION_DENIED for a registry that is not allowed or
//! rejected credentials, UNAVAILABLE for transient faults. A missing image is never
//! NOT_FOUND: on an Execute stream that code means "operation not found", which clients
//! answer by executing again.
//!
//! When a Directory of an image turns out to be gone from the CAS while the inputs are
//! merged (evicted since the expansion was cached), the local caches are dropped and the
//! rewrite is done once more, which re-expands what is missing; the client is not blamed.

use super::checks_step::{self, Checked};
use super::environment::{self, Environment};
use super::failure::Failure;
use super::images::{self, ImageProperty};
use super::new_action::{Changes, Record};
use super::results::ResultMapper;
use super::written_overlay::WrittenOverlay;
use super::{inputs, merge_step, new_action, platform_properties, RewriteOptions};
use crate::blobstore::{ContentAddressableStorage, Instance};
use crate::image::ImageExpander;
use crate::merge::DirectoryCache;
use crate::proto::cache::ExpansionProvenance;
use crate::proto::reapi;
use std::sync::Arc;
use std::time::Instant;
use tonic::Status;

/// A rewritten action, stored in the CAS.
#[derive(Clone, Debug)]
pub struct RewrittenAction {
    pub action: reapi::Action,
    pub action_digest: reapi::Digest,
    pub provenance: ExpansionProvenance,
    /// Whether the blobs of the mapping record (`ResultMapper::mapping_blobs`) were
    /// uploaded with the action's, so that only its Action Cache entry is left to write.
    pub mapping_blobs_uploaded: bool,
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
    /// Where the client's Action, Command and inputs are read and the rewritten ones
    /// written.
    cas: Arc<dyn ContentAddressableStorage>,
    directories: Arc<DirectoryCache>,
    options: RewriteOptions,
}

impl ActionRewriter {
    pub fn new(
        expander: Arc<ImageExpander>,
        cas: Arc<dyn ContentAddressableStorage>,
        directories: Arc<DirectoryCache>,
        options: RewriteOptions,
    ) -> Self {
        Self {
            expander,
            cas,
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

    /// Forgets what this process knows about images (the expander's tags and trees)
    /// and their Directories, so that the next rewrite checks them against the Action
    /// Cache and the CAS again: what is done before a rewrite is retried because
    /// content of an image turned out to be gone from the CAS.
    pub fn forget_local_caches(&self) {
        self.expander.forget_local_caches();
        self.directories.clear();
    }

    /// Rewrites the action stored in the CAS under `action_digest`.
    pub async fn rewrite_digest(
        &self,
        instance: &Instance,
        action_digest: &reapi::Digest,
    ) -> Result<Rewrite, Status> {
        instance.digest_function.validate(action_digest)?;
        let action = inputs::read(&*self.cas, instance, action_digest, "Action").await?;
        self.rewrite(instance, action, Some(action_digest.clone()), true)
            .await
    }

    /// Rewrites `action` (router mode hands the Action itself); once more after
    /// forgetting the local caches if content of an image is gone from the CAS.
    pub async fn rewrite_action(
        &self,
        instance: &Instance,
        action: reapi::Action,
        original_digest: Option<reapi::Digest>,
    ) -> Result<Rewrite, Status> {
        self.rewrite(instance, action, original_digest, false).await
    }

    /// [`Self::rewrite_action`]; with `mapping`, the blobs of the mapping record are
    /// uploaded with the rewritten action's (proxy mode).
    async fn rewrite(
        &self,
        instance: &Instance,
        action: reapi::Action,
        original_digest: Option<reapi::Digest>,
        mapping: bool,
    ) -> Result<Rewrite, Status> {
        let names = &self.options.property_names;
        let naming = inputs::images_named(&*self.cas, instance, &action, names).await?;
        let Some(naming) = naming else {
            return Ok(Rewrite::PassThrough);
        };
        let (command, images) = (&naming.command, &naming.images);
        let attempt = Attempt {
            original_digest: original_digest.as_ref(),
            input_root: naming.input_root.as_ref(),
            mapping,
        };
        let started = Instant::now();
        let mut result = self
            .rewrite_once(instance, &action, command, images, &attempt)
            .await;
        if let Err(Failure::ImageIncomplete(status)) = &result {
            tracing::warn!(
                "Content of image {} is gone from the CAS; expanding again: {}",
                images::texts(images),
                status.message()
            );
            self.forget_local_caches();
            result = self
                .rewrite_once(instance, &action, command, images, &attempt)
                .await;
        }
        crate::image::metrics::step("rewrite", result.is_ok(), started.elapsed().as_secs_f64());
        match result {
            Ok(rewritten) => Ok(Rewrite::Rewritten(Box::new(rewritten))),
            Err(Failure::Status(status)) => Err(status),
            Err(Failure::ImageIncomplete(status)) => Err(Status::unavailable(format!(
                "Content of image {} is missing from the Content Addressable Storage even after expanding it again: {}",
                images::texts(images),
                status.message()
            ))),
        }
    }

    /// One attempt: platform rules, images, merge, environment, required directories,
    /// checks, new action.
    async fn rewrite_once(
        &self,
        instance: &Instance,
        action: &reapi::Action,
        command: &reapi::Command,
        images: &[ImageProperty],
        attempt: &Attempt<'_>,
    ) -> Result<RewrittenAction, Failure> {
        let options = &self.options;
        let platform = new_action::deciding_platform(action, command);
        // Before anything is expanded: a rejected property fails the action at once.
        let new_platform = platform_properties::rewrite(
            platform,
            &options.property_names,
            &options.property_rules,
            &options.add_platform_properties,
        )?;
        let wanted = platform_properties::wanted_platform(platform, &options.default_platform)?;
        let expand_started = Instant::now();
        let expanded = images::expand_in_order(&self.expander, instance, images, &wanted).await?;
        let expand_duration = expand_started.elapsed();
        let rewrite_started = Instant::now();

        let cached = self.directories.source(self.cas.clone(), instance.clone());
        let mut source = WrittenOverlay::new(&cached, &self.directories);
        if let Some((digest, directory)) = attempt.input_root {
            source.add_read(digest.clone(), directory.clone());
        }
        let input_root = action.input_root_digest.as_ref();
        let mut merged = merge_step::merge(
            &mut source,
            &*self.cas,
            instance,
            &expanded,
            input_root,
            options,
        )
        .await?;

        let environment = if options.image_environment {
            let configs: Vec<_> = expanded.iter().map(|e| &e.runtime_config).collect();
            environment::with_images(&command.environment_variables, &configs)
        } else {
            Environment {
                variables: command.environment_variables.clone(),
                added: Vec::new(),
            }
        };
        let texts = images::texts(images);
        let added_directories = checks_step::add_required_directories(
            &mut source,
            &*self.cas,
            instance,
            &mut merged,
            &options.required_directories,
            &texts,
        )
        .await?;
        let working_directory = new_action::working_directory(options, command);
        let checked = Checked {
            merged: &merged,
            working_directory: &working_directory,
            command,
            require_usr_bin_env: options.require_usr_bin_env,
            check_program: options.check_program_exists,
            path_variable: environment::value(&environment.variables, "PATH"),
            images: &texts,
        };
        checks_step::check(&source, &*self.cas, instance, checked).await?;

        let function = instance.digest_function;
        let changes = Changes {
            working_directory,
            environment_variables: environment.variables,
            platform: new_platform,
            merged_root: merged.root.clone(),
        };
        let new = new_action::build(function, action, command, changes);
        let mut uploads = merged.new_directories;
        uploads.extend(new.blobs.iter().cloned());
        let record = Record {
            merged_root: merged.root,
            added_environment_variables: environment.added,
            added_directories,
            expand_duration,
            rewrite_duration: rewrite_started.elapsed(),
        };
        let mut rewritten = new_action::rewritten(
            instance,
            action,
            attempt.original_digest,
            images,
            &expanded,
            record,
            new,
        );
        if attempt.mapping {
            uploads.extend(ResultMapper::mapping_blobs(&rewritten.provenance)?);
            rewritten.mapping_blobs_uploaded = true;
        }
        new_action::upload(&*self.cas, instance, uploads).await?;
        Ok(rewritten)
    }
}

/// What one attempt at a rewrite is given besides the action.
struct Attempt<'a> {
    original_digest: Option<&'a reapi::Digest>,
    /// The input root, if it was read beside the Command.
    input_root: Option<&'a (reapi::Digest, Arc<reapi::Directory>)>,
    /// Whether to upload the blobs of the mapping record too.
    mapping: bool,
}
