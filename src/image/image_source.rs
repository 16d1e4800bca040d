//! The image source stage: a pinned image reference and a platform → the image's tree in
//! the CAS, described by an `ImageRecord` (recorded under the `expand-image` fake
//! action). The plain source is `registry_image_source.rs`; `configuration.rs` stacks the
//! cache decorators on it.

use super::fake_action::{FakeAction, Step};
use super::stage::{Origin, Source, StageRequest, StageResponse};
use crate::blobstore::Instance;
use crate::proto::cache::ImageRecord;
use crate::proto::reapi;
use crate::registry::{Platform, Reference};
use std::sync::Arc;

/// What an image request asks for.
#[derive(Clone, Debug)]
pub struct PinnedImage {
    /// The reference, with the digest it resolved to.
    pub pinned: Reference,
    pub platform: Platform,
}

pub(crate) type ImageRequest = StageRequest<PinnedImage>;

impl ImageRequest {
    /// A request for `pinned` (which names a digest), for trees whose Directory messages
    /// are at most `maximum_message_size_bytes` large.
    pub(crate) fn for_image(
        instance: &Instance,
        pinned: Reference,
        platform: Platform,
        maximum_message_size_bytes: usize,
    ) -> Self {
        let key = image_key(instance, &pinned, &platform, maximum_message_size_bytes);
        Self::new(instance.clone(), key, PinnedImage { pinned, platform })
    }
}

/// The fake action an image's tree is recorded under: its pinned reference (which
/// names a digest), platform and Directory size limit, in `instance`. Its hash is also
/// the key that chooses the image's owner in a fleet (docs/design/fleet.md).
pub fn image_key(
    instance: &Instance,
    pinned: &Reference,
    platform: &Platform,
    maximum_message_size_bytes: usize,
) -> FakeAction {
    FakeAction::new(
        instance,
        Step::ExpandImage,
        &[
            &format!("{}@{}", pinned.name(), pinned.digest().unwrap_or_default()),
            &platform.to_string(),
            &maximum_message_size_bytes.to_string(),
        ],
    )
}

/// An image source: the plain one with its decorators.
pub(crate) type ImageSource = Source<ImageRequest, ExpandedTree>;

/// Seconds spent per step of one expansion.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepTimings {
    pub resolve: f64,
    pub fetch_metadata: f64,
    pub ingest: f64,
    pub apply: f64,
    pub upload: f64,
}

/// A tree in the CAS, the answer of the image source and of the layer chain source.
#[derive(Clone, Debug)]
pub struct ExpandedTree {
    pub record: Arc<ImageRecord>,
    /// Where this stage's record came from.
    pub origin: Origin,
    /// Whether the tree came from a cache, at this stage or at one below it (no layer
    /// was ingested or applied).
    pub from_cache: bool,
    /// Layers ingested for this answer by this caller.
    pub layers_ingested: u64,
    pub timings: StepTimings,
}

impl ExpandedTree {
    pub fn root_directory_digest(&self) -> reapi::Digest {
        self.record
            .root_directory_digest
            .clone()
            .unwrap_or_default()
    }
}

impl StageResponse for ExpandedTree {
    type Record = ImageRecord;
    const OUTPUT: &'static str = "image-record";

    fn record(&self) -> &Arc<ImageRecord> {
        &self.record
    }

    fn referenced_blobs(record: &ImageRecord) -> Vec<reapi::Digest> {
        record.referenced_blobs.clone()
    }

    fn from_record(record: Arc<ImageRecord>, origin: Origin) -> Self {
        Self {
            record,
            origin,
            from_cache: true,
            layers_ingested: 0,
            timings: StepTimings::default(),
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
            layers_ingested: 0,
            ..self
        }
    }
}
