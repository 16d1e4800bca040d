//! The one place where the rewriter is assembled from `containerImages`: the image
//! expander it expands with, the CAS it reads the client's inputs from and writes the
//! rewritten action to, and a local Directory cache of `directoryCacheSizeBytes`; and
//! [`RewriteOptions`], the settings of `containerImages` that decide how actions are
//! rewritten.

use super::ActionRewriter;
use crate::blobstore::ContentAddressableStorage;
use crate::config::container_images::ContainerImagesConfiguration;
use crate::image::ImageExpander;
use crate::merge::{DirectoryCache, MergePolicy};
use crate::proto::reapi;
use crate::registry::Platform;
use std::sync::Arc;

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
    /// executes commands through it).
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

/// The local Directory cache's size when `directoryCacheSizeBytes` is not set.
const DEFAULT_DIRECTORY_CACHE_SIZE_BYTES: u64 = 256 << 20;

/// The rewriter of `containerImages`, expanding with `expander` over `cas`.
pub fn new_action_rewriter_from_configuration(
    configuration: &ContainerImagesConfiguration,
    expander: Arc<ImageExpander>,
    cas: Arc<dyn ContentAddressableStorage>,
    maximum_message_size_bytes: usize,
) -> Arc<ActionRewriter> {
    let directories = DirectoryCache::new(
        configuration
            .directory_cache_size_bytes
            .unwrap_or(DEFAULT_DIRECTORY_CACHE_SIZE_BYTES),
    );
    Arc::new(ActionRewriter::new(
        expander,
        cas,
        directories,
        configuration.rewrite_options(maximum_message_size_bytes),
    ))
}
