//! The layer source stage: one layer blob → its changeset (recorded under the
//! `ingest-layer` fake action). A changeset holds the layer's tree and the whiteouts,
//! opaque directories and hard links to apply against the layers below; it is valid
//! whatever image the layer belongs to. The plain source is `registry_layer_source.rs`.

use super::fake_action::{FakeAction, Step};
use super::stage::{Origin, Source, StageRequest, StageResponse};
use crate::blobstore::Instance;
use crate::layer::{referenced_digests, LayerDescriptor};
use crate::proto::cache::LayerChangeset;
use crate::proto::reapi;
use crate::registry::Reference;
use std::sync::Arc;

/// What a layer request asks for.
#[derive(Clone, Debug)]
pub(crate) struct LayerBlob {
    /// The image the layer is downloaded from.
    pub pinned: Reference,
    pub layer: LayerDescriptor,
}

pub(crate) type LayerRequest = StageRequest<LayerBlob>;

impl LayerRequest {
    pub(crate) fn for_layer(
        instance: &Instance,
        pinned: Reference,
        layer: LayerDescriptor,
    ) -> Self {
        let key = FakeAction::new(
            instance,
            Step::IngestLayer,
            &[&layer.digest, &layer.diff_id, &layer.media_type],
        );
        Self::new(instance.clone(), key, LayerBlob { pinned, layer })
    }
}

/// A layer source: the plain one with its decorators.
pub(crate) type LayerSource = Source<LayerRequest, IngestedLayer>;

/// The changeset of a layer.
#[derive(Clone, Debug)]
pub(crate) struct IngestedLayer {
    pub changeset: Arc<LayerChangeset>,
    pub origin: Origin,
    /// Whether this caller ingested the layer (it was in no cache).
    pub ingested: bool,
}

impl StageResponse for IngestedLayer {
    type Record = LayerChangeset;
    const OUTPUT: &'static str = "changeset";

    fn record(&self) -> &Arc<LayerChangeset> {
        &self.changeset
    }

    fn referenced_blobs(record: &LayerChangeset) -> Vec<reapi::Digest> {
        referenced_digests(record)
    }

    fn from_record(changeset: Arc<LayerChangeset>, origin: Origin) -> Self {
        Self {
            changeset,
            origin,
            ingested: false,
        }
    }

    fn origin(&self) -> Origin {
        self.origin
    }

    fn with_origin(self, origin: Origin) -> Self {
        Self { origin, ..self }
    }

    fn joined(self) -> Self {
        Self {
            ingested: false,
            ..self
        }
    }
}
