//! The one place where the rewriter is assembled from `containerImages`: the image
//! expander it expands with, the CAS it reads the client's inputs from and writes the
//! rewritten action to, and a local Directory cache of `directoryCacheSizeBytes`; and
//! [`RewriteOptions`], the settings of `containerImages` that decide how actions are
//! rewritten.

use super::property_rules::{PropertyRule, RuleAction};
use super::ActionRewriter;
use crate::blobstore::ContentAddressableStorage;
use crate::config::container_images::{
    ConflictPolicy, ContainerImagesConfiguration, PlatformPropertyRule, PropertyRuleAction,
    DEFAULT_DIRECTORY_CACHE_SIZE_BYTES, DEFAULT_PLATFORM_PROPERTY_NAME,
    DEFAULT_REQUIRED_DIRECTORIES,
};
use crate::config::DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES;
use crate::image::ImageExpander;
use crate::merge::{DirectoryCache, MergePolicy};
use crate::proto::reapi;
use crate::registry::configuration::new_platform_from_configuration;
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
    /// What happens to the other platform properties (`platformPropertyRules`).
    pub property_rules: Vec<PropertyRule>,
    /// The images' `Env` is the base of the action's environment.
    pub image_environment: bool,
    /// Refuse actions whose program is not in the merged tree.
    pub check_program_exists: bool,
    /// Directories added empty where the merged tree lacks them.
    pub required_directories: Vec<String>,
    pub maximum_message_size_bytes: usize,
    /// The platform chosen when an action has no `ISA`.
    pub default_platform: Platform,
}

impl Default for RewriteOptions {
    /// The defaults of `containerImages`, with messages of
    /// [`DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES`].
    fn default() -> Self {
        new_rewrite_options_from_configuration(
            &ContainerImagesConfiguration::default(),
            DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES as usize,
        )
    }
}

/// How `containerImages` says actions are rewritten, with its defaults applied.
pub fn new_rewrite_options_from_configuration(
    configuration: &ContainerImagesConfiguration,
    maximum_message_size_bytes: usize,
) -> RewriteOptions {
    RewriteOptions {
        property_names: configuration
            .platform_property_name
            .clone()
            .unwrap_or_else(|| vec![DEFAULT_PLATFORM_PROPERTY_NAME.into()]),
        input_root_directory: configuration.input_root_directory.clone(),
        conflict_policy: match configuration.conflict_policy {
            ConflictPolicy::Strict => MergePolicy::Strict,
            ConflictPolicy::InputWins => MergePolicy::InputWins,
        },
        add_platform_properties: configuration
            .add_platform_properties
            .iter()
            .map(|p| reapi::platform::Property {
                name: p.name.clone(),
                value: p.value.clone(),
            })
            .collect(),
        require_usr_bin_env: configuration.require_usr_bin_env,
        property_rules: configuration
            .platform_property_rules
            .iter()
            .map(new_property_rule_from_configuration)
            .collect(),
        image_environment: configuration.image_environment,
        check_program_exists: configuration.check_program_exists,
        required_directories: configuration
            .required_directories
            .clone()
            .unwrap_or_else(|| {
                DEFAULT_REQUIRED_DIRECTORIES
                    .iter()
                    .map(|d| d.to_string())
                    .collect()
            }),
        maximum_message_size_bytes,
        default_platform: new_platform_from_configuration(&configuration.default_platform),
    }
}

/// One of `platformPropertyRules` (validated: the fields its action needs are set).
fn new_property_rule_from_configuration(rule: &PlatformPropertyRule) -> PropertyRule {
    let action = match rule.action {
        PropertyRuleAction::Drop => RuleAction::Drop,
        PropertyRuleAction::Rename => RuleAction::Rename {
            name: rule.new_name.clone(),
            value: rule.new_value.clone(),
        },
        PropertyRuleAction::SetWhenAbsent => RuleAction::SetWhenAbsent {
            value: rule.new_value.clone().unwrap_or_default(),
        },
        PropertyRuleAction::Reject => RuleAction::Reject {
            message: rule
                .message
                .clone()
                .unwrap_or_else(|| "this service does not offer it".into()),
        },
    };
    PropertyRule {
        name: rule.name.clone(),
        value: rule.value.clone(),
        action,
    }
}

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
        new_rewrite_options_from_configuration(configuration, maximum_message_size_bytes),
    ))
}
