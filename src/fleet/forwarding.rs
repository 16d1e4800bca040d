//! How a stage request travels to its owner and back: for each forwardable stage (the
//! image source and the layer source), the request as a `fleet.proto` message, the call,
//! and the owner's answer: a record, or the owner's own error. The owner's side of the
//! same mapping is `peer_service.rs`.

use crate::blobstore::Instance;
use crate::digest::DigestFunction;
use crate::grpc::GrpcChannel;
use crate::image::image_source::PinnedImage;
use crate::image::layer_source::LayerBlob;
use crate::image::stage::StageRequest;
use crate::proto::cache::{ImageRecord, LayerChangeset};
use crate::proto::fleet::fleet_client::FleetClient;
use crate::proto::fleet::{
    expand_image_response, ingest_layer_response, ExpandImageRequest, ForwardedRequest,
    IngestLayerRequest, OwnerError,
};
use crate::registry::Platform;
use futures::future::BoxFuture;
use tonic::{Code, Status};

/// What a call to the owner gave: the owner's answer (its record, or its error), or
/// `Err` when the owner could not be asked (then this replica does the work).
pub(crate) type Forwarded<R> = Result<Result<R, Status>, Status>;

/// The payload of a stage whose work can be done by another replica.
pub(crate) trait Forwardable: Clone + Send + Sync + Sized + 'static {
    type Record: prost::Message + Default + Send + Sync + 'static;

    /// The stage's name in logs and metrics.
    const STAGE: &'static str;

    fn forward(
        client: FleetClient<GrpcChannel>,
        request: &StageRequest<Self>,
    ) -> BoxFuture<'static, Forwarded<Self::Record>>;
}

fn forwarded_request<P>(request: &StageRequest<P>) -> ForwardedRequest {
    ForwardedRequest {
        instance_name: request.instance.name.clone(),
        digest_function: request.instance.digest_function.to_proto() as i32,
        bypass_cache: request.bypass_cache,
    }
}

impl Forwardable for PinnedImage {
    type Record = ImageRecord;
    const STAGE: &'static str = "image";

    fn forward(
        mut client: FleetClient<GrpcChannel>,
        request: &StageRequest<Self>,
    ) -> BoxFuture<'static, Forwarded<ImageRecord>> {
        let message = ExpandImageRequest {
            request: Some(forwarded_request(request)),
            reference: request.payload.pinned.to_string(),
            platform: request.payload.platform.to_string(),
        };
        Box::pin(async move {
            let response = client.expand_image(message).await?.into_inner();
            match response.result {
                Some(expand_image_response::Result::Record(record)) => Ok(Ok(record)),
                Some(expand_image_response::Result::Error(error)) => Ok(Err(owner_error(error))),
                None => Err(Status::internal(
                    "The replica answered neither record nor error",
                )),
            }
        })
    }
}

impl Forwardable for LayerBlob {
    type Record = LayerChangeset;
    const STAGE: &'static str = "layer";

    fn forward(
        mut client: FleetClient<GrpcChannel>,
        request: &StageRequest<Self>,
    ) -> BoxFuture<'static, Forwarded<LayerChangeset>> {
        let layer = &request.payload.layer;
        let message = IngestLayerRequest {
            request: Some(forwarded_request(request)),
            reference: request.payload.pinned.to_string(),
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: layer.diff_id.clone(),
        };
        Box::pin(async move {
            let response = client.ingest_layer(message).await?.into_inner();
            match response.result {
                Some(ingest_layer_response::Result::Changeset(changeset)) => Ok(Ok(changeset)),
                Some(ingest_layer_response::Result::Error(error)) => Ok(Err(owner_error(error))),
                None => Err(Status::internal(
                    "The replica answered neither record nor error",
                )),
            }
        })
    }
}

/// The owner's error as this replica reports it: the same code and message.
fn owner_error(error: OwnerError) -> Status {
    Status::new(Code::from(error.code), error.message)
}

/// The owner's error as sent back.
pub(crate) fn to_owner_error(status: &Status) -> OwnerError {
    OwnerError {
        code: status.code() as i32,
        message: status.message().to_string(),
    }
}

/// The instance a forwarded request is for.
pub(crate) fn instance_of(request: Option<&ForwardedRequest>) -> Result<Instance, Status> {
    let request =
        request.ok_or_else(|| Status::invalid_argument("The forwarded request is missing"))?;
    let function = DigestFunction::from_request(request.digest_function, "")?;
    Ok(Instance::new(request.instance_name.clone(), function))
}

/// A platform as `Platform`'s `Display` spells it: `os/architecture[/variant]`.
pub(crate) fn parse_platform(text: &str) -> Result<Platform, Status> {
    let parts: Vec<&str> = text.split('/').collect();
    match parts[..] {
        [os, architecture] if !os.is_empty() && !architecture.is_empty() => {
            Ok(Platform::new(os, architecture, ""))
        }
        [os, architecture, variant] if !os.is_empty() && !architecture.is_empty() => {
            Ok(Platform::new(os, architecture, variant))
        }
        _ => Err(Status::invalid_argument(format!(
            "Invalid platform {text:?}: expected os/architecture[/variant]"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_survive_the_trip() {
        for platform in [
            Platform::new("linux", "amd64", ""),
            Platform::new("linux", "arm", "v7"),
        ] {
            assert_eq!(parse_platform(&platform.to_string()).unwrap(), platform);
        }
        for bad in ["", "linux", "linux/", "/amd64", "a/b/c/d"] {
            assert_eq!(
                parse_platform(bad).unwrap_err().code(),
                Code::InvalidArgument
            );
        }
    }

    #[test]
    fn owner_errors_keep_code_and_message() {
        let status = Status::not_found("Failed to fetch manifest of x: not found");
        let back = owner_error(to_owner_error(&status));
        assert_eq!(
            (back.code(), back.message()),
            (status.code(), status.message())
        );
    }
}
