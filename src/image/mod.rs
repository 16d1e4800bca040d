//! Image references → canonical image trees in the CAS (ADR #8 steps 1-3), with every
//! step cached in the Action Cache under fake actions:
//!
//! - `fake_action.rs`: the Action Cache as a key-value store ([`FakeAction`], records);
//! - `single_flight.rs`: in-flight deduplication of expansions and layer ingestions;
//! - `expander.rs`: [`ImageExpander`], the whole pipeline with its caches;
//! - `metrics.rs`: cache and step metrics.

pub mod expander;
pub mod fake_action;
pub mod metrics;
pub mod single_flight;

pub use expander::{ExpandedImage, ExpanderOptions, ImageExpander, StepTimings};
pub use fake_action::{FakeAction, Step};
