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
use super::registry_image_source::RegistryImageSource;
use super::registry_layer_source::RegistryLayerSource;
use super::tag_resolver::TagResolver;
use super::tree_builder::TreeBuilder;
use crate::blobstore::{ActionCache, ContentAddressableStorage};
use crate::config::container_images::{
    ContainerImagesConfiguration, DEFAULT_ABANDON_GRACE_PERIOD,
    DEFAULT_COMPLETENESS_CHECK_INTERVAL, DEFAULT_MAXIMUM_CONCURRENT_LAYER_INGESTS,
    DEFAULT_MAXIMUM_CONCURRENT_LAYER_INGESTS_PER_REGISTRY, DEFAULT_MAXIMUM_IMAGE_SIZE_BYTES,
    DEFAULT_MAXIMUM_LAYER_SIZE_BYTES, DEFAULT_STALE_TAG_GRACE, DEFAULT_TAG_TTL,
};
use crate::config::DEFAULT_MAXIMUM_MESSAGE_SIZE_BYTES;
use crate::fleet::sharding_source::ShardingLayer;
use crate::fleet::Fleet;
use crate::layer::{IngestOptions, LayerIngester};
use crate::proto::cache::ImageRecord;
use crate::registry::configuration::new_registry_configuration_from_configuration;
use crate::registry::{OciRegistry, Registry};
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
