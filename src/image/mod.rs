//! Image references → canonical image trees in the CAS (ADR #8 steps 1-3), with every
//! step cached in the Action Cache under fake actions:
//!
//! - `fake_action.rs`: the Action Cache as a key-value store ([`FakeAction`], records);
//! - `directory_cache.rs`: decoded Directories by digest, in front of the CAS;
//! - `single_flight.rs`: in-flight deduplication of expansions and layer ingestions;
//! - `expander.rs`: [`ImageExpander`], the whole pipeline with its caches;
//! - `metrics.rs`: cache and step metrics.

pub mod directory_cache;
pub mod expander;
pub mod fake_action;
pub mod metrics;
pub mod single_flight;

pub use directory_cache::{CachingDirectorySource, DirectoryCache};
pub use expander::{ExpandedImage, ExpanderOptions, ImageExpander, StepTimings};
pub use fake_action::{FakeAction, Step};
