//! Rewriting actions that name container images (steps 1-5 of docs/how-it-works.md):
//!
//! - `rewriter.rs`: [`ActionRewriter`], the orchestration of one rewrite, which calls
//!   the steps below in order and retries once when an image's content is gone;
//! - `inputs.rs`: the client's Action and Command, and whether they name images;
//! - `images.rs`: image references collected (parsed) from the platform, and expanded;
//! - `merge_step.rs`: image trees stacked and the input root grafted onto them, with
//!   `written_overlay.rs` serving the Directories written before they are uploaded;
//! - `checks_step.rs`: the checks on the merged tree, and the directories added to it;
//! - `environment.rs`: the Command's environment over the images' `Env`;
//! - `new_action.rs`: the new Command and Action, uploaded, with their provenance;
//! - `failure.rs`: whose mistake a failed merge or check is;
//! - `platform_properties.rs`: wanted platform, rewritten property list, with
//!   `property_rules.rs` applying `platformPropertyRules`;
//! - `configuration.rs`: the rewriter assembled from `containerImages`;
//! - `results.rs`: mapping results of rewritten actions back to the client's action.

mod checks_step;
pub mod configuration;
mod environment;
mod failure;
mod images;
mod inputs;
mod merge_step;
mod new_action;
pub mod platform_properties;
pub mod property_rules;
pub mod results;
pub mod rewriter;
mod written_overlay;

pub(crate) use configuration::{new_action_rewriter_from_configuration, RewriteOptions};
pub(crate) use rewriter::RewrittenAction;
pub use rewriter::{ActionRewriter, Rewrite};
