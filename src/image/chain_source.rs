//! The layer chain source stage: the layers of an image, in manifest order → the tree
//! they make when applied one onto the other (recorded under the `apply-layers` fake
//! action). Images that share all their layers share this record. The plain source is
//! `tree_builder.rs`.

use super::fake_action::{FakeAction, Step};
use super::image_source::ExpandedTree;
use super::stage::{Source, StageRequest};
use crate::blobstore::Instance;
use crate::layer::LayerDescriptor;
use crate::registry::Reference;

/// What a chain request asks for.
#[derive(Clone, Debug)]
pub(crate) struct LayerChain {
    /// The image the layers are downloaded from.
    pub pinned: Reference,
    pub layers: Vec<LayerDescriptor>,
}

pub(crate) type ChainRequest = StageRequest<LayerChain>;

impl ChainRequest {
    /// A request for `layers` (of `pinned`), for trees whose Directory messages are at
    /// most `maximum_message_size_bytes` large.
    pub(crate) fn for_layers(
        instance: &Instance,
        pinned: Reference,
        layers: Vec<LayerDescriptor>,
        maximum_message_size_bytes: usize,
    ) -> Self {
        let mut arguments = vec![maximum_message_size_bytes.to_string()];
        for layer in &layers {
            arguments.push(format!(
                "{} {} {}",
                layer.digest, layer.diff_id, layer.media_type
            ));
        }
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        let key = FakeAction::new(instance, Step::ApplyLayers, &arguments);
        Self::new(instance.clone(), key, LayerChain { pinned, layers })
    }
}

/// A layer chain source: the plain one with its decorators.
pub(crate) type ChainSource = Source<ChainRequest, ExpandedTree>;
