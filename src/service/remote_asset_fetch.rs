//! `build.bazel.remote.asset.v1.Fetch` for container images: `FetchDirectory` of a
//! `docker://` URI answers the root Directory digest of the image's file system, expanded
//! into the CAS of the request's instance if it was not already (the tree `Execute` would
//! put under an action's input root). Lets tools and CI prewarm or inspect images with a
//! standard Remote Asset client.
//!
//! - URIs: `docker://host/repository:tag`, `…@sha256:…`, in the forms a `container-image`
//!   property accepts (`registry::reference`). The first URI that is a `docker://` URI and
//!   expands wins; URIs of other schemes are skipped. A request with no `docker://` URI
//!   answers NOT_FOUND (an RPC error), so that a client or proxy can go on to another
//!   Remote Asset server.
//! - Qualifiers: `platform` = `os/architecture[/variant]` (`linux/amd64`, `linux/arm64/v8`):
//!   the image chosen from a multi-platform index; default `containerImages.defaultPlatform`.
//!   Any other qualifier, or one given twice, is refused with INVALID_ARGUMENT and a
//!   `google.rpc.BadRequest` whose violations have field `qualifiers.name` and description
//!   `"{qualifier}" not supported`, as the Remote Asset API asks of servers without `Push`.
//!   A platform asked for is checked (an image with a single manifest for another
//!   platform is FAILED_PRECONDITION, where `Execute` would use it as Docker does) and
//!   returned in the answer's qualifiers.
//! - Errors: failures outside the server's control (image missing, access refused by the
//!   registry or not allowed, an image this service cannot use, `timeout` passed) are
//!   answered in the response's `status` (NOT_FOUND, PERMISSION_DENIED,
//!   FAILED_PRECONDITION, DEADLINE_EXCEEDED, …),
//!   with the URI tried; the others (malformed reference, registry unavailable, CAS
//!   failures) are RPC errors, as the API lists them.
//! - `timeout` bounds the expansion (DEADLINE_EXCEEDED in `status`); an expansion cut short
//!   goes on for `abandonGracePeriod`. `oldest_content_accepted` is not needed: a tree is
//!   addressed by the image's digest, and tags are re-resolved after `tagTtl`.
//! - `FetchBlob` answers NOT_FOUND: this server fetches no single blobs.
//! - `digest_function`: SHA256 when unset; SHA384 and SHA512 as REAPI's.

use crate::blobstore::Instance;
use crate::digest::DigestFunction;
use crate::image::{ExpandedImage, ImageExpander};
use crate::proto::asset::fetch_server::Fetch;
use crate::proto::asset::{
    FetchBlobRequest, FetchBlobResponse, FetchDirectoryRequest, FetchDirectoryResponse, Qualifier,
};
use crate::proto::rpc;
use crate::registry::Platform;
use crate::service::operation_names::validate_instance_name;
use std::sync::Arc;
use tonic::{Code, Request, Response, Status};

/// The URI scheme this server fetches.
const DOCKER_SCHEME: &str = "docker://";
/// The qualifier naming the platform.
pub const PLATFORM_QUALIFIER: &str = "platform";

/// Remote Asset `Fetch` over an [`ImageExpander`].
#[derive(Clone)]
pub struct RemoteAssetFetch {
    expander: Arc<ImageExpander>,
    default_platform: Platform,
}

impl RemoteAssetFetch {
    /// Expands with `expander`; images of multi-platform indexes for `default_platform`
    /// unless a request names one.
    pub fn new(expander: Arc<ImageExpander>, default_platform: Platform) -> Self {
        Self {
            expander,
            default_platform,
        }
    }
}

impl RemoteAssetFetch {
    /// Refuses `image` if it is not for `platform`. A platform chosen from an index
    /// matches by construction; a single manifest is used by the expander whatever its
    /// platform (as Docker does), so its config is read again (by digest) and compared.
    async fn check_platform(
        &self,
        image: ExpandedImage,
        platform: &Platform,
    ) -> Result<ExpandedImage, Status> {
        if image.resolved_digest != image.manifest_digest {
            return Ok(image);
        }
        let pinned = image.reference.with_digest(&image.manifest_digest)?;
        let metadata = self
            .expander
            .registry()
            .fetch_image(&pinned, platform)
            .await?;
        if platform.matches(&metadata.platform) {
            Ok(image)
        } else {
            Err(Status::failed_precondition(format!(
                "Image {} is for platform {}, not {platform}",
                image.reference, metadata.platform
            )))
        }
    }
}

/// `os/architecture[/variant]`.
fn parse_platform(value: &str) -> Result<Platform, String> {
    let parts: Vec<&str> = value.split('/').collect();
    let platform = match parts.as_slice() {
        [os, architecture] if !os.is_empty() && !architecture.is_empty() => {
            Platform::new(os, architecture, "")
        }
        [os, architecture, variant]
            if !os.is_empty() && !architecture.is_empty() && !variant.is_empty() =>
        {
            Platform::new(os, architecture, variant)
        }
        _ => {
            return Err(format!(
                "{value:?} is not of the form os/architecture[/variant]"
            ))
        }
    };
    platform
        .check_supported()
        .map_err(|e| e.message().to_owned())?;
    Ok(platform)
}

/// The platform the qualifiers ask for; INVALID_ARGUMENT for qualifiers not supported.
fn platform_of(qualifiers: &[Qualifier], default: &Platform) -> Result<Platform, Status> {
    let unsupported: Vec<(String, String)> = qualifiers
        .iter()
        .filter(|q| q.name != PLATFORM_QUALIFIER)
        .map(|q| {
            (
                "qualifiers.name".to_owned(),
                format!("\"{}\" not supported", q.name),
            )
        })
        .collect();
    if !unsupported.is_empty() {
        let names: Vec<&str> = qualifiers
            .iter()
            .filter(|q| q.name != PLATFORM_QUALIFIER)
            .map(|q| q.name.as_str())
            .collect();
        return Err(crate::status::bad_request(
            format!(
                "Qualifiers not supported: {names:?} (this server supports only \
                 {PLATFORM_QUALIFIER:?})"
            ),
            &unsupported,
        ));
    }
    match qualifiers {
        [] => Ok(default.clone()),
        [q] => parse_platform(&q.value).map_err(|e| {
            Status::invalid_argument(format!("Invalid qualifier {PLATFORM_QUALIFIER:?}: {e}"))
        }),
        _ => Err(Status::invalid_argument(format!(
            "Qualifier {PLATFORM_QUALIFIER:?} is given more than once"
        ))),
    }
}

/// Codes the API answers in a response's `status` rather than as RPC errors: failures
/// outside the server's control.
fn is_fetch_failure(code: Code) -> bool {
    matches!(
        code,
        Code::NotFound
            | Code::PermissionDenied
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
            | Code::FailedPrecondition
    )
}

fn rpc_status(status: &Status) -> rpc::Status {
    rpc::Status {
        code: status.code() as i32,
        message: status.message().to_owned(),
        details: vec![],
    }
}

#[tonic::async_trait]
impl Fetch for RemoteAssetFetch {
    async fn fetch_blob(
        &self,
        _request: Request<FetchBlobRequest>,
    ) -> Result<Response<FetchBlobResponse>, Status> {
        Err(Status::not_found(
            "This server fetches no blobs: it answers FetchDirectory for docker:// URIs only",
        ))
    }

    async fn fetch_directory(
        &self,
        request: Request<FetchDirectoryRequest>,
    ) -> Result<Response<FetchDirectoryResponse>, Status> {
        let request = request.into_inner();
        validate_instance_name(&request.instance_name)?;
        if request.uris.is_empty() {
            return Err(Status::invalid_argument("No URIs provided"));
        }
        let platform = platform_of(&request.qualifiers, &self.default_platform)?;
        let function = match request.digest_function {
            0 => DigestFunction::Sha256,
            value => DigestFunction::from_request(value, "")?,
        };
        let timeout = request.timeout.as_ref().map(duration_of).transpose()?;
        let instance = Instance::new(request.instance_name.clone(), function);
        // Only a platform asked for is answered (and checked): without one, a
        // single-platform image is used whatever its platform, as for Execute.
        let explicit = !request.qualifiers.is_empty();
        let answered_qualifiers = request.qualifiers.clone();
        let mut failure: Option<(String, Status)> = None;
        for uri in request.uris.iter().filter(|u| u.starts_with(DOCKER_SCHEME)) {
            let expansion = self.expander.expand(&instance, uri, &platform);
            let expanded = match timeout {
                Some(t) => match tokio::time::timeout(t, expansion).await {
                    Ok(result) => result,
                    Err(_) => Err(Status::deadline_exceeded(format!(
                        "Failed to expand image {uri}: not done within the request's timeout of {t:?}"
                    ))),
                },
                None => expansion.await,
            };
            let expanded = match expanded {
                Ok(image) if explicit => self.check_platform(image, &platform).await,
                other => other,
            };
            match expanded {
                Ok(image) => {
                    return Ok(Response::new(FetchDirectoryResponse {
                        status: None,
                        uri: uri.clone(),
                        qualifiers: answered_qualifiers,
                        expires_at: None,
                        root_directory_digest: Some(image.root_directory_digest),
                        digest_function: function.to_proto() as i32,
                    }));
                }
                Err(status) => failure = Some((uri.clone(), status)),
            }
        }
        match failure {
            None => Err(Status::not_found(format!(
                "None of the URIs is a {DOCKER_SCHEME} URI, the only scheme this server fetches"
            ))),
            Some((uri, status)) if is_fetch_failure(status.code()) => {
                Ok(Response::new(FetchDirectoryResponse {
                    status: Some(rpc_status(&status)),
                    uri,
                    qualifiers: answered_qualifiers,
                    expires_at: None,
                    root_directory_digest: None,
                    digest_function: function.to_proto() as i32,
                }))
            }
            Some((_, status)) => Err(status),
        }
    }
}

/// A request's `timeout`; negative ones are refused.
fn duration_of(d: &crate::proto::protobuf::Duration) -> Result<std::time::Duration, Status> {
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Status::invalid_argument(
            "timeout: must be a non-negative duration",
        ));
    }
    Ok(std::time::Duration::new(d.seconds as u64, d.nanos as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, value: &str) -> Qualifier {
        Qualifier {
            name: name.into(),
            value: value.into(),
        }
    }

    #[test]
    fn platform_qualifier() {
        let default = Platform::new("linux", "amd64", "");
        assert_eq!(platform_of(&[], &default).unwrap(), default);
        assert_eq!(
            platform_of(&[q("platform", "linux/arm64/v8")], &default).unwrap(),
            Platform::new("linux", "arm64", "v8")
        );
        for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "windows/amd64"] {
            let err = platform_of(&[q("platform", bad)], &default).unwrap_err();
            assert_eq!(err.code(), Code::InvalidArgument, "{bad}");
        }
        let twice = [q("platform", "linux/amd64"), q("platform", "linux/arm64")];
        assert_eq!(
            platform_of(&twice, &default).unwrap_err().code(),
            Code::InvalidArgument
        );
    }

    #[test]
    fn unknown_qualifiers_are_refused_with_bad_request() {
        use crate::proto::error_details::BadRequest;
        use prost::Message;
        let default = Platform::new("linux", "amd64", "");
        let err = platform_of(
            &[q("checksum.sri", "sha256-x"), q("platform", "linux/amd64")],
            &default,
        )
        .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("checksum.sri"), "{err:?}");
        let details = rpc::Status::decode(err.details()).unwrap();
        let request = BadRequest::decode(details.details[0].value.as_slice()).unwrap();
        assert_eq!(request.field_violations.len(), 1);
        assert_eq!(request.field_violations[0].field, "qualifiers.name");
        assert_eq!(
            request.field_violations[0].description,
            "\"checksum.sri\" not supported"
        );
    }
}
