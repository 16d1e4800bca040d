//! `containerImages`: where images may come from and how they are expanded and cached.
//! The registry fields are those of [`RegistryConfiguration`] (documented there), kept at
//! this level so that operators write `containerImages.registries[]`.

use super::protojson;
use crate::image::ExpanderOptions;
use crate::layer::IngestOptions;
use crate::registry::configuration::{RegistryConfiguration, RegistryHostsConfiguration};
use crate::registry::Platform;
use serde::Deserialize;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerImagesConfiguration {
    /// Registries that may be contacted, with their credentials and mirrors. Images on
    /// any other host are refused (PERMISSION_DENIED) unless `allowAnyRegistry`.
    #[serde(default)]
    pub registries: Vec<RegistryHostsConfiguration>,
    /// Contact registries that are not listed. Default: false. Recommended: false.
    #[serde(default)]
    pub allow_any_registry: bool,
    /// Platform chosen from multi-platform images when an action has no `ISA`.
    /// Default: linux/amd64.
    #[serde(default)]
    pub default_platform: Platform,
    /// Deadline of one registry request. Default: '30s'.
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub request_timeout: Option<Duration>,
    /// Retries of a failed registry request. Default: 4.
    #[serde(default)]
    pub maximum_retries: Option<u32>,
    /// Delay before the first retry, doubled for each further one. Default: '0.5s'.
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub initial_retry_delay: Option<Duration>,

    /// How long a tag keeps resolving to the same digest, fleet-wide (the record is in
    /// the Action Cache). Digest-pinned references never expire. Default: '300s'.
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub tag_ttl: Option<Duration>,
    /// Refuse references without a digest. Default: false.
    #[serde(default)]
    pub reject_tags: bool,
    /// How long a process trusts that a cached tree is complete in the CAS before it
    /// checks again with FindMissingBlobs. Default: '3600s'. Keep it well below the time
    /// your CAS keeps blobs.
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub completeness_check_interval: Option<Duration>,
    /// Limit on the compressed size of all layers of one image. Default: 16 GiB.
    #[serde(default, deserialize_with = "protojson::optional_uint64")]
    pub maximum_image_size_bytes: Option<u64>,
    /// Limit on one layer, compressed and decompressed. Default: 16 GiB.
    #[serde(default, deserialize_with = "protojson::optional_uint64")]
    pub maximum_layer_size_bytes: Option<u64>,
    /// Layers downloaded and ingested at the same time. Default: 2 (one per core is a
    /// good value: ingestion is CPU bound).
    #[serde(default)]
    pub maximum_concurrent_layer_ingests: Option<usize>,
    /// Directory where large files of a layer are spooled while they are hashed.
    /// Default: the system's temporary directory.
    #[serde(default)]
    pub spool_directory: Option<String>,
    /// Size of the local cache of decoded Directory messages. Default: 256 MiB.
    #[serde(default, deserialize_with = "protojson::optional_uint64")]
    pub directory_cache_size_bytes: Option<u64>,

    /// Platform property whose values are image references: a name, or a list of
    /// names. Default: 'container-image'.
    #[serde(default, deserialize_with = "one_or_many")]
    pub platform_property_name: Option<Vec<String>>,
    /// Where the client's input root goes inside the image: '' (the image root) or a
    /// relative path such as 'bazel_exec_root', which the working directory is then
    /// prefixed with. Default: ''. Recommended: a path the images do not use, which
    /// avoids every clash between inputs and image content.
    #[serde(default)]
    pub input_root_directory: String,
    /// What a clash between an input and the image at one path does: 'STRICT' (an
    /// error naming the path; identical files are accepted) or 'INPUT_WINS' (the input
    /// replaces the image's node). Directories always merge. Default: 'STRICT'.
    #[serde(default)]
    pub conflict_policy: ConflictPolicy,
    /// Properties added to rewritten actions, e.g. a marker that the chroot workers
    /// advertise. The result is sorted as bb_scheduler requires. Default: none.
    #[serde(default)]
    pub add_platform_properties: Vec<PlatformProperty>,
    /// Refuse images without an executable /usr/bin/env, which bb_runner's
    /// chrootIntoInputRoot mode executes commands through. Default: true.
    #[serde(default = "default_true")]
    pub require_usr_bin_env: bool,
    /// Write successful results of rewritten actions to the Action Cache under the
    /// client's action digest too, so the client's next GetActionResult hits.
    /// Default: true.
    #[serde(default = "default_true")]
    pub write_back_results: bool,
    /// Interval of the operation updates sent to a client while its image is being
    /// expanded. Default: '5s'.
    #[serde(default, deserialize_with = "protojson::optional_duration")]
    pub keepalive_interval: Option<Duration>,
}

fn default_true() -> bool {
    true
}

/// `{ name, value }`, as in REAPI's Platform.Property.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlatformProperty {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConflictPolicy {
    #[default]
    Strict,
    InputWins,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(Some(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }))
}

impl Default for ContainerImagesConfiguration {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

impl ContainerImagesConfiguration {
    /// The registry access part.
    pub fn registry_configuration(&self) -> RegistryConfiguration {
        let defaults = RegistryConfiguration::default();
        RegistryConfiguration {
            registries: self.registries.clone(),
            allow_any_registry: self.allow_any_registry,
            default_platform: self.default_platform.clone(),
            request_timeout: self.request_timeout.unwrap_or(defaults.request_timeout),
            maximum_retries: self.maximum_retries.unwrap_or(defaults.maximum_retries),
            initial_retry_delay: self
                .initial_retry_delay
                .unwrap_or(defaults.initial_retry_delay),
        }
    }

    /// The expansion part.
    pub fn expander_options(&self, maximum_message_size_bytes: usize) -> ExpanderOptions {
        let defaults = ExpanderOptions::default();
        let ingest_defaults = IngestOptions::default();
        ExpanderOptions {
            tag_ttl: self.tag_ttl.unwrap_or(defaults.tag_ttl),
            reject_tags: self.reject_tags,
            completeness_check_interval: self
                .completeness_check_interval
                .unwrap_or(defaults.completeness_check_interval),
            maximum_image_size_bytes: self
                .maximum_image_size_bytes
                .unwrap_or(defaults.maximum_image_size_bytes),
            maximum_concurrent_layer_ingests: self
                .maximum_concurrent_layer_ingests
                .unwrap_or(defaults.maximum_concurrent_layer_ingests),
            maximum_message_size_bytes,
            layer_retries: defaults.layer_retries,
            ingest: IngestOptions {
                maximum_layer_size_bytes: self
                    .maximum_layer_size_bytes
                    .unwrap_or(ingest_defaults.maximum_layer_size_bytes),
                spool_directory: self.spool_directory.clone().map(Into::into),
                // Batches must fit in one CAS message.
                batch_size_bytes: ingest_defaults
                    .batch_size_bytes
                    .min(maximum_message_size_bytes as u64 / 2),
                ..ingest_defaults
            },
        }
    }

    /// How actions are rewritten.
    pub fn rewrite_options(
        &self,
        maximum_message_size_bytes: usize,
    ) -> crate::action::RewriteOptions {
        crate::action::RewriteOptions {
            property_names: self
                .platform_property_name
                .clone()
                .unwrap_or_else(|| vec!["container-image".into()]),
            input_root_directory: self.input_root_directory.clone(),
            conflict_policy: match self.conflict_policy {
                ConflictPolicy::Strict => crate::merge::MergePolicy::Strict,
                ConflictPolicy::InputWins => crate::merge::MergePolicy::InputWins,
            },
            add_platform_properties: self
                .add_platform_properties
                .iter()
                .map(|p| crate::proto::reapi::platform::Property {
                    name: p.name.clone(),
                    value: p.value.clone(),
                })
                .collect(),
            require_usr_bin_env: self.require_usr_bin_env,
            maximum_message_size_bytes,
            default_platform: self.default_platform.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        self.registry_configuration().validate()?;
        if let Some(names) = &self.platform_property_name {
            if names.is_empty() || names.iter().any(|n| n.is_empty()) {
                return Err("platformPropertyName: names must not be empty".into());
            }
        }
        let p = self.input_root_directory.trim_matches('/');
        if p.split('/').any(|part| part == ".." || part == ".") {
            return Err(format!(
                "inputRootDirectory: {:?} must be a plain relative path",
                self.input_root_directory
            ));
        }
        if self.maximum_concurrent_layer_ingests == Some(0) {
            return Err("maximumConcurrentLayerIngests: must be at least 1".into());
        }
        Ok(())
    }
}
