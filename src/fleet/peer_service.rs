//! The owner's side of the fleet: `bb_container_expander.fleet.Fleet`, served to the
//! other replicas. A forwarded request runs through this replica's own stage, with all
//! its caches and its deduplication (so that concurrent requests from every replica
//! share one expansion or ingestion), and is never forwarded again. The answer is the
//! record the stage produced, or its error in the response, so that the caller can
//! tell the owner's failure from a failure to reach the owner.

use super::forwarding::{instance_of, parse_platform, to_owner_error};
use super::metrics;
use crate::blobstore::Instance;
use crate::image::image_source::ImageRequest;
use crate::image::layer_source::LayerRequest;
use crate::image::ImageExpander;
use crate::layer::LayerDescriptor;
use crate::proto::cache::{ImageRecord, LayerChangeset};
use crate::proto::fleet::fleet_server::Fleet as FleetApi;
use crate::proto::fleet::{
    expand_image_response, ingest_layer_response, ExpandImageRequest, ExpandImageResponse,
    IngestLayerRequest, IngestLayerResponse,
};
use crate::registry::Reference;
use std::sync::Arc;
use tonic::{Request, Response, Status};
use tower::ServiceExt;

/// Answers other replicas from this replica's stages.
#[derive(Clone)]
pub struct FleetPeerService {
    expander: Arc<ImageExpander>,
}

impl FleetPeerService {
    pub fn new(expander: Arc<ImageExpander>) -> Self {
        Self { expander }
    }

    /// A pinned reference this replica may fetch for `instance` (the allow-list and
    /// the tenant rule are checked again here: the owner answers only what the asking
    /// replica's request could have pulled).
    fn pinned(&self, instance: &Instance, text: &str) -> Result<Reference, Status> {
        let reference = Reference::parse(text)?;
        if reference.digest().is_none() {
            return Err(Status::invalid_argument(format!(
                "Forwarded reference {text} names no digest"
            )));
        }
        self.expander
            .registry()
            .check_allowed(&instance.name, &reference)?;
        Ok(reference)
    }

    async fn expand_image(&self, request: ExpandImageRequest) -> Result<ImageRecord, Status> {
        let forwarded = request.request.as_ref();
        let instance = instance_of(forwarded)?;
        let pinned = self.pinned(&instance, &request.reference)?;
        let platform = parse_platform(&request.platform)?;
        let mut stage_request = ImageRequest::for_image(
            &instance,
            pinned,
            platform,
            self.expander.options().maximum_message_size_bytes,
        );
        stage_request.from_peer = true;
        stage_request.bypass_cache = forwarded.is_some_and(|f| f.bypass_cache);
        let tree = self
            .expander
            .image_source()
            .clone()
            .oneshot(stage_request)
            .await?;
        Ok((*tree.record).clone())
    }

    async fn ingest_layer(&self, request: IngestLayerRequest) -> Result<LayerChangeset, Status> {
        let forwarded = request.request.as_ref();
        let instance = instance_of(forwarded)?;
        let pinned = self.pinned(&instance, &request.reference)?;
        let layer = LayerDescriptor {
            media_type: request.media_type,
            digest: request.digest,
            size: request.size,
            diff_id: request.diff_id,
        };
        let mut stage_request = LayerRequest::for_layer(&instance, pinned, layer);
        stage_request.from_peer = true;
        stage_request.bypass_cache = forwarded.is_some_and(|f| f.bypass_cache);
        let layer = self
            .expander
            .layer_source()
            .clone()
            .oneshot(stage_request)
            .await?;
        Ok((*layer.changeset).clone())
    }
}

#[tonic::async_trait]
impl FleetApi for FleetPeerService {
    async fn expand_image(
        &self,
        request: Request<ExpandImageRequest>,
    ) -> Result<Response<ExpandImageResponse>, Status> {
        // Every failure is answered in the response: an error of the call itself
        // means that this replica could not be reached.
        metrics::request("image", "served");
        let result = match self.expand_image(request.into_inner()).await {
            Ok(record) => expand_image_response::Result::Record(record),
            Err(status) => expand_image_response::Result::Error(to_owner_error(&status)),
        };
        Ok(Response::new(ExpandImageResponse {
            result: Some(result),
        }))
    }

    async fn ingest_layer(
        &self,
        request: Request<IngestLayerRequest>,
    ) -> Result<Response<IngestLayerResponse>, Status> {
        metrics::request("layer", "served");
        let result = match self.ingest_layer(request.into_inner()).await {
            Ok(changeset) => ingest_layer_response::Result::Changeset(changeset),
            Err(status) => ingest_layer_response::Result::Error(to_owner_error(&status)),
        };
        Ok(Response::new(IngestLayerResponse {
            result: Some(result),
        }))
    }
}
