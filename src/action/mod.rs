//! Rewriting actions that name container images (ADR #8 steps 4-5):
//!
//! - `platform_properties.rs`: image references, wanted platform, rewritten property list;
//! - `rewriter.rs`: [`ActionRewriter`], image trees + input root → a new Action in the CAS;
//! - `results.rs`: mapping results of rewritten actions back to the client's action.

pub mod platform_properties;
pub mod results;
pub mod rewriter;

pub use rewriter::{ActionRewriter, Rewrite, RewriteOptions, RewrittenAction};
