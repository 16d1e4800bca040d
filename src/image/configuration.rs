//! The one place where the image engine is assembled: each stage is its plain source
//! with the decorators of `containerImages` stacked on it, read top to bottom (the
//! outermost first). The service, the `expand` command, the benchmarks and the tests all
//! build their [`ImageExpander`] here.

use super::action_caching_source::ActionCachingLayer;
use super::chain_source::ChainSource;
use super::completeness_checking_source::{CheckedRecords, CompletenessCheckingLayer};
use super::deduplicating_source::DeduplicatingLayer;
use super::expander::{ExpanderOptions, ExpanderParts, ImageExpander};
use super::image_source::ImageSource;
use super::layer_source::LayerSource;
use super::metrics_source::MetricsLayer;
use super::prewarmer::{PrewarmedImage, Prewarmer};
use super::registry_image_source::RegistryImageSource;
use super::registry_layer_source::RegistryLayerSource;
use super::tag_resolver::TagResolver;
use super::tree_builder::TreeBuilder;
use crate::blobstore::{ActionCache, ContentAddressableStorage, Instance};
use crate::config::container_images::{
    ContainerImagesConfiguration, DEFAULT_ABANDON_GRACE_PERIOD,
    DEFAULT_COMPLETENESS_CHECK_INTERVAL, DEFAULT_MAXIMUM_CONCURRENT_LAYER_INGESTS,
    DEFAULT_MAXIMUM_CONCURRENT_LAYER_INGESTS_PER_REGISTRY, DEFAULT_MAXIMUM_IMAGE_SIZE_BYTES,
    DEFAULT_MAXIMUM_LAYER_SIZE_BYTES, DEFAULT_PREWARM_INTERVAL, DEFAULT_STALE_TAG_GRACE,
    DEFAULT_TAG_TTL,
};
use crate::config::DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES;
use crate::digest::DigestFunction;
use crate::fleet::sharding_source::ShardingLayer;
use crate::fleet::Fleet;
use crate::layer::{IngestOptions, LayerIngester};
use crate::proto::cache::ImageRecord;
use crate::registry::configuration::{
    new_platform_from_configuration, new_registry_configuration_from_configuration,
};
use crate::registry::{OciRegistry, Reference, Registry};
use crate::service::operation_names::validate_instance_name;
use std::sync::Arc;
use tower::ServiceBuilder;

/// The expander of `containerImages`, over the given stores, contacting registries as
/// configured, sharing its work with the replicas of `fleet` if any.
pub fn new_image_expander_from_configuration(
    configuration: &ContainerImagesConfiguration,
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Arc<dyn ActionCache>,
    maximum_message_size_bytes: usize,
    fleet: Option<Arc<Fleet>>,
) -> Result<Arc<ImageExpander>, String> {
    let registry = OciRegistry::new(new_registry_configuration_from_configuration(configuration))
        .map_err(|s| format!("Failed to create registry client: {}", s.message()))?;
    let options = ExpanderOptions {
        fleet,
        ..new_expander_options_from_configuration(configuration, maximum_message_size_bytes)
    };
    Ok(new_image_expander(Arc::new(registry), cas, ac, options))
}

/// The prewarmer of `containerImages.prewarm` over `expander`, or none when no image
/// is listed. Each image is checked here, without network access: its reference, its
/// instance name, its platform, and that its registry allows that instance name
/// (docs/design/tenants.md), so that a mistake stops the service at start-up rather
/// than failing every interval. Messages name the field (`prewarm.images[0]…`).
pub fn new_prewarmer_from_configuration(
    configuration: &ContainerImagesConfiguration,
    expander: &Arc<ImageExpander>,
) -> Result<Option<Arc<Prewarmer>>, String> {
    let Some(prewarm) = &configuration.prewarm else {
        return Ok(None);
    };
    if prewarm.images.is_empty() {
        return Ok(None);
    }
    let mut images = Vec::with_capacity(prewarm.images.len());
    for (i, entry) in prewarm.images.iter().enumerate() {
        let field = |e: &str| format!("prewarm.images[{i}]{e}");
        let reference = Reference::parse(&entry.reference)
            .map_err(|s| field(&format!(".reference: {}", s.message())))?;
        validate_instance_name(&entry.instance_name)
            .map_err(|s| field(&format!(".instanceName: {}", s.message())))?;
        let platform = new_platform_from_configuration(
            entry
                .platform
                .as_ref()
                .unwrap_or(&configuration.default_platform),
        );
        platform
            .check_supported()
            .map_err(|s| field(&format!(".platform: {}", s.message())))?;
        let instance = Instance::new(entry.instance_name.clone(), DigestFunction::Sha256);
        expander
            .check_allowed(&instance, &reference)
            .map_err(|s| field(&format!(": {}: {}", entry.reference, s.message())))?;
        images.push(PrewarmedImage {
            text: entry.reference.clone(),
            reference,
            instance,
            platform,
        });
    }
    let interval = prewarm.interval.unwrap_or(DEFAULT_PREWARM_INTERVAL);
    Ok(Some(Arc::new(Prewarmer::new(
        expander.clone(),
        images,
        interval,
    ))))
}

/// How often a layer whose download failed transiently is fetched again. Not
/// configurable.
const LAYER_RETRIES: u32 = 1;

impl Default for ExpanderOptions {
    /// The defaults of `containerImages`, with messages of
    /// [`DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES`].
    fn default() -> Self {
        new_expander_options_from_configuration(
            &ContainerImagesConfiguration::default(),
            DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES as usize,
        )
    }
}

/// The expansion settings of `containerImages`, with their defaults applied. Layer
/// ingestion batches are capped at half a message, so that a batch fits in one CAS
/// request.
pub fn new_expander_options_from_configuration(
    configuration: &ContainerImagesConfiguration,
    maximum_message_size_bytes: usize,
) -> ExpanderOptions {
    let ingest_defaults = IngestOptions::default();
    ExpanderOptions {
        tag_ttl: configuration.tag_ttl.unwrap_or(DEFAULT_TAG_TTL),
        reject_tags: configuration.reject_tags,
        completeness_check_interval: configuration
            .completeness_check_interval
            .unwrap_or(DEFAULT_COMPLETENESS_CHECK_INTERVAL),
        maximum_image_size_bytes: configuration
            .maximum_image_size_bytes
            .unwrap_or(DEFAULT_MAXIMUM_IMAGE_SIZE_BYTES),
        maximum_concurrent_layer_ingests: configuration
            .maximum_concurrent_layer_ingests
            .unwrap_or(DEFAULT_MAXIMUM_CONCURRENT_LAYER_INGESTS),
        maximum_concurrent_layer_ingests_per_registry: configuration
            .maximum_concurrent_layer_ingests_per_registry
            .unwrap_or(DEFAULT_MAXIMUM_CONCURRENT_LAYER_INGESTS_PER_REGISTRY),
        abandon_grace_period: configuration
            .abandon_grace_period
            .unwrap_or(DEFAULT_ABANDON_GRACE_PERIOD),
        stale_tag_grace: configuration
            .stale_tag_grace
            .unwrap_or(DEFAULT_STALE_TAG_GRACE),
        maximum_message_size_bytes,
        layer_retries: LAYER_RETRIES,
        fleet: None,
        ingest: IngestOptions {
            maximum_layer_size_bytes: configuration
                .maximum_layer_size_bytes
                .unwrap_or(DEFAULT_MAXIMUM_LAYER_SIZE_BYTES),
            spool_directory: configuration.spool_directory.clone().map(Into::into),
            metadata_limits: crate::layer::MetadataLimits {
                maximum_layer_entries: configuration
                    .maximum_layer_entries
                    .unwrap_or(ingest_defaults.metadata_limits.maximum_layer_entries),
                maximum_layer_name_bytes: configuration
                    .maximum_layer_name_bytes
                    .unwrap_or(ingest_defaults.metadata_limits.maximum_layer_name_bytes),
                maximum_image_entries: configuration
                    .maximum_image_entries
                    .unwrap_or(ingest_defaults.metadata_limits.maximum_image_entries),
                maximum_image_name_bytes: configuration
                    .maximum_image_name_bytes
                    .unwrap_or(ingest_defaults.metadata_limits.maximum_image_name_bytes),
            },
            batch_size_bytes: ingest_defaults
                .batch_size_bytes
                .min(maximum_message_size_bytes as u64 / 2),
            ..ingest_defaults
        },
    }
}

/// An expander over `registry` and the given stores.
pub fn new_image_expander(
    registry: Arc<dyn Registry>,
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Arc<dyn ActionCache>,
    options: ExpanderOptions,
) -> Arc<ImageExpander> {
    let checked = CheckedRecords::new(options.completeness_check_interval);
    let layers = new_layer_source(&registry, &cas, &ac, &options);
    let chains = new_chain_source(&cas, &ac, &checked, layers.clone(), &options);
    let images = new_image_source(&registry, &cas, &ac, &checked, chains, &options);
    let tags = TagResolver::new(registry.clone(), cas.clone(), ac.clone(), options.tag_ttl)
        .abandoning_after(options.abandon_grace_period)
        .serving_stale_for(options.stale_tag_grace);
    ImageExpander::from_parts(ExpanderParts {
        registry,
        cas,
        ac,
        options,
        tags,
        images,
        layers,
        checked,
    })
}

/// Pinned image and platform → tree: one expansion per image at a time, recorded under
/// `expand-image`, trusted for the completeness check interval; a miss is expanded by
/// the image's owner in the fleet.
fn new_image_source(
    registry: &Arc<dyn Registry>,
    cas: &Arc<dyn ContentAddressableStorage>,
    ac: &Arc<dyn ActionCache>,
    checked: &Arc<CheckedRecords<ImageRecord>>,
    chains: ChainSource,
    options: &ExpanderOptions,
) -> ImageSource {
    ImageSource::new(
        ServiceBuilder::new()
            .layer(DeduplicatingLayer::new(
                "image",
                options.abandon_grace_period,
            ))
            .layer(MetricsLayer::new("image"))
            .layer(CompletenessCheckingLayer::new(cas.clone()).remembering(checked.clone()))
            .layer(ActionCachingLayer::new(cas.clone(), ac.clone()))
            .option_layer(options.fleet.clone().map(ShardingLayer::new))
            .service(RegistryImageSource::new(
                registry.clone(),
                chains,
                options.maximum_image_size_bytes,
                options.maximum_message_size_bytes,
            )),
    )
}

/// Layers in order → tree, recorded under `apply-layers`, trusted for the completeness
/// check interval. Runs within an image's expansion, which is deduplicated already.
fn new_chain_source(
    cas: &Arc<dyn ContentAddressableStorage>,
    ac: &Arc<dyn ActionCache>,
    checked: &Arc<CheckedRecords<ImageRecord>>,
    layers: LayerSource,
    options: &ExpanderOptions,
) -> ChainSource {
    ChainSource::new(
        ServiceBuilder::new()
            .layer(MetricsLayer::new("chain"))
            .layer(CompletenessCheckingLayer::new(cas.clone()).remembering(checked.clone()))
            .layer(ActionCachingLayer::new(cas.clone(), ac.clone()))
            .service(
                TreeBuilder::new(cas.clone(), layers, options.maximum_message_size_bytes)
                    .with_metadata_limits(options.ingest.metadata_limits.clone()),
            ),
    )
}

/// Layer → changeset: one ingestion per layer at a time, recorded under `ingest-layer`,
/// checked for completeness on every use (changesets are not kept in memory); a miss is
/// ingested by the layer's owner in the fleet.
fn new_layer_source(
    registry: &Arc<dyn Registry>,
    cas: &Arc<dyn ContentAddressableStorage>,
    ac: &Arc<dyn ActionCache>,
    options: &ExpanderOptions,
) -> LayerSource {
    let ingester = Arc::new(LayerIngester::new(cas.clone(), options.ingest.clone()));
    LayerSource::new(
        ServiceBuilder::new()
            .layer(DeduplicatingLayer::new(
                "layer",
                options.abandon_grace_period,
            ))
            .layer(MetricsLayer::new("layer"))
            .layer(CompletenessCheckingLayer::new(cas.clone()))
            .layer(ActionCachingLayer::new(cas.clone(), ac.clone()))
            .option_layer(options.fleet.clone().map(ShardingLayer::new))
            .service(RegistryLayerSource::new(
                registry.clone(),
                ingester,
                options.maximum_concurrent_layer_ingests,
                options.maximum_concurrent_layer_ingests_per_registry,
                options.layer_retries,
            )),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobstore::{MemoryActionCache, MemoryContentAddressableStorage};

    fn prewarmer(json: serde_json::Value) -> Result<Option<Arc<Prewarmer>>, String> {
        let configuration: ContainerImagesConfiguration = serde_json::from_value(json).unwrap();
        let expander = new_image_expander_from_configuration(
            &configuration,
            Arc::new(MemoryContentAddressableStorage::new(1 << 20)),
            Arc::new(MemoryActionCache::new(1 << 20)),
            2 << 20,
            None,
        )
        .unwrap();
        new_prewarmer_from_configuration(&configuration, &expander)
    }

    fn with_images(images: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "registries": [{"hosts": ["a.example"], "instanceNamePrefixes": ["team-a"]}],
            "prewarm": {"images": images},
        })
    }

    #[test]
    fn no_prewarmer_without_images() {
        assert!(prewarmer(serde_json::json!({})).unwrap().is_none());
        assert!(prewarmer(with_images(serde_json::json!([])))
            .unwrap()
            .is_none());
        let images = serde_json::json!([
            {"reference": "docker://a.example/x:v1", "instanceName": "team-a/ci"},
            {"reference": "a.example/y@sha256:1111111111111111111111111111111111111111111111111111111111111111",
             "instanceName": "team-a", "platform": {"os": "linux", "architecture": "arm64"}},
        ]);
        assert!(prewarmer(with_images(images)).unwrap().is_some());
    }

    #[test]
    fn images_are_checked_at_start_up() {
        for (image, message) in [
            (
                serde_json::json!({"reference": "docker://a.example/x@sha256:12", "instanceName": "team-a"}),
                "prewarm.images[0].reference: Invalid",
            ),
            (
                serde_json::json!({"reference": "a.example/x:v1", "instanceName": "team-a/operations"}),
                "prewarm.images[0].instanceName: Invalid instance name",
            ),
            (
                serde_json::json!({"reference": "a.example/x:v1", "instanceName": "team-a",
                                   "platform": {"os": "windows", "architecture": "amd64"}}),
                "prewarm.images[0].platform: ",
            ),
            (
                serde_json::json!({"reference": "a.example/x:v1", "instanceName": "team-b"}),
                "prewarm.images[0]: a.example/x:v1: Registry a.example is not allowed for \
                 instance name \"team-b\"",
            ),
            (
                serde_json::json!({"reference": "a.example/x:v1"}),
                "prewarm.images[0]: a.example/x:v1: Registry a.example is not allowed for \
                 instance name \"\"",
            ),
            (
                serde_json::json!({"reference": "other.example/x:v1", "instanceName": "team-a"}),
                "prewarm.images[0]: other.example/x:v1: Registry other.example is not allowed",
            ),
        ] {
            let Err(err) = prewarmer(with_images(serde_json::json!([image]))) else {
                panic!("{image}: accepted");
            };
            assert!(err.starts_with(message), "{image}: {err}");
        }
    }

    #[test]
    fn unknown_fields_and_a_zero_interval_are_refused() {
        for (json, message) in [
            (
                serde_json::json!({"prewarm": {"images": [{"reference": "a/b", "instance": ""}]}}),
                "unknown field",
            ),
            (
                serde_json::json!({"prewarm": {"intervall": "1s"}}),
                "unknown field",
            ),
            (
                serde_json::json!({"prewarm": {"interval": "300"}}),
                "duration",
            ),
        ] {
            let err = serde_json::from_value::<ContainerImagesConfiguration>(json.clone())
                .unwrap_err()
                .to_string();
            assert!(err.contains(message), "{json}: {err}");
        }
        let zero: ContainerImagesConfiguration =
            serde_json::from_value(serde_json::json!({"prewarm": {"interval": "0s"}})).unwrap();
        assert_eq!(
            zero.validate().unwrap_err(),
            "prewarm.interval: must be positive"
        );
    }
}
