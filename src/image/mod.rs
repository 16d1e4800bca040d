//! Image references → canonical image trees in the CAS (steps 1-3 of
//! docs/how-it-works.md), with every step cached in the Action Cache under fake actions.
//!
//! The engine is a chain of stages, each a tower `Service` (`stage.rs`): the image
//! source (`image_source.rs`), the layer chain source (`chain_source.rs`) and the layer
//! source (`layer_source.rs`). Each has a plain implementation that does the work:
//!
//! - `registry_image_source.rs`: metadata from the registry, then the layer chain, the
//!   config's runtime settings read by `runtime_config.rs`;
//! - `tree_builder.rs`: changesets applied in order, encoded and uploaded;
//! - `registry_layer_source.rs`: a layer downloaded and ingested, within the slots of
//!   `ingestion_slots.rs`.
//!
//! One decorator per concern wraps any stage:
//!
//! - `action_caching_source.rs`: records in the Action Cache (`fake_action.rs`), each
//!   checked against its request before use (`record_validation.rs`);
//! - `completeness_checking_source.rs`: cached records used only when complete;
//! - `deduplicating_source.rs`: one call per answer in flight (`single_flight.rs`);
//! - `metrics_source.rs`: cache hits and misses (`metrics.rs`).
//!
//! `configuration.rs` stacks them; `expander.rs` is the façade ([`ImageExpander`]) that
//! parses references and resolves tags (`tag_resolver.rs`) in front of the image source.
//! `prewarmer.rs` keeps the images of `containerImages.prewarm` expanded through it.

pub mod action_caching_source;
pub mod chain_source;
pub mod completeness_checking_source;
pub mod configuration;
pub mod deduplicating_source;
pub mod expander;
pub mod fake_action;
#[cfg(test)]
mod fake_registry;
#[cfg(test)]
pub(crate) mod fake_source;
pub mod image_source;
pub mod ingestion_slots;
pub mod layer_source;
pub mod metrics;
pub mod metrics_source;
pub mod prewarmer;
pub mod record_validation;
pub mod registry_image_source;
pub mod registry_layer_source;
pub mod runtime_config;
pub mod single_flight;
pub mod stage;
pub mod tag_resolver;
pub mod tree_builder;

pub use configuration::{
    new_image_expander, new_image_expander_from_configuration, new_prewarmer_from_configuration,
};
pub use expander::{ExpandedImage, ExpanderOptions, ImageExpander};
pub use fake_action::{FakeAction, Step};
pub use image_source::StepTimings;
pub use prewarmer::{PrewarmedImage, Prewarmer};
