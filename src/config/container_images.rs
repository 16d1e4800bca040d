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

    pub fn validate(&self) -> Result<(), String> {
        self.registry_configuration().validate()?;
        if self.maximum_concurrent_layer_ingests == Some(0) {
            return Err("maximumConcurrentLayerIngests: must be at least 1".into());
        }
        Ok(())
    }
}
