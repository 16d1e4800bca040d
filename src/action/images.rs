//! The images an action names: the values of the image properties of its platform,
//! parsed into typed references right where they are collected, then expanded in order
//! (step 3 of docs/how-it-works.md).
//!
//! A value that is not a valid reference is not refused on the spot: it is kept as a
//! parse error naming its property and reported in its place in the list, as if its
//! expansion had failed. A missing Command, a bad `ISA` and the errors of the images
//! before it are therefore reported first, whatever kind of error each image has.

use crate::blobstore::Instance;
use crate::image::{ExpandedImage, ImageExpander};
use crate::proto::reapi;
use crate::registry::{Platform, Reference};
use crate::status::wrap;
use tonic::{Code, Status};

/// One image property of an action's platform.
#[derive(Clone, Debug)]
pub(crate) struct ImageProperty {
    /// The reference as the client wrote it (named in errors and in the provenance).
    pub text: String,
    /// The parsed reference, or why the value is not one (naming the property).
    pub reference: Result<Reference, Status>,
}

/// The image properties of `platform` named in `names`, in the order they appear.
pub(crate) fn collect(platform: Option<&reapi::Platform>, names: &[String]) -> Vec<ImageProperty> {
    let Some(platform) = platform else {
        return Vec::new();
    };
    platform
        .properties
        .iter()
        .filter(|property| names.contains(&property.name))
        .map(|property| ImageProperty {
            text: property.value.clone(),
            reference: Reference::parse(&property.value).map_err(|status| {
                Status::new(
                    status.code(),
                    format!("Platform property {}: {}", property.name, status.message()),
                )
            }),
        })
        .collect()
}

/// The references of `images` as the client wrote them, for messages.
pub(crate) fn texts(images: &[ImageProperty]) -> String {
    images
        .iter()
        .map(|image| image.text.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Expands every image for `platform`, concurrently; the first error in the order of
/// the properties is the one reported.
pub(crate) async fn expand_in_order(
    expander: &ImageExpander,
    instance: &Instance,
    images: &[ImageProperty],
    platform: &Platform,
) -> Result<Vec<ExpandedImage>, Status> {
    let expansions = futures::future::join_all(images.iter().map(|image| async move {
        let expanded = match &image.reference {
            Ok(reference) => {
                expander
                    .expand_reference(instance, reference, platform)
                    .await
            }
            Err(status) => Err(status.clone()),
        };
        expanded.map_err(|s| image_error(wrap(s, format!("Failed to expand image {}", image.text))))
    }))
    .await;
    expansions.into_iter().collect()
}

/// Errors of image expansion as the client sees them: a missing image is
/// FAILED_PRECONDITION (the client's to fix), not NOT_FOUND, which on an Execute stream
/// means "operation not found" and makes clients execute again; other codes are kept.
fn image_error(status: Status) -> Status {
    if status.code() == Code::NotFound {
        Status::failed_precondition(status.message())
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn platform(pairs: &[(&str, &str)]) -> reapi::Platform {
        reapi::Platform {
            properties: pairs
                .iter()
                .map(|(name, value)| reapi::platform::Property {
                    name: name.to_string(),
                    value: value.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn collects_images_in_order_for_every_configured_name() {
        let platform = platform(&[
            ("OSFamily", "linux"),
            ("container-image", "docker://a/b:1"),
            ("container-image", "docker://a/c:2"),
            ("image", "docker://x/y:3"),
        ]);
        let names = vec!["container-image".to_string(), "image".to_string()];
        let images = collect(Some(&platform), &names);
        assert_eq!(
            images.iter().map(|i| i.text.as_str()).collect::<Vec<_>>(),
            vec!["docker://a/b:1", "docker://a/c:2", "docker://x/y:3"]
        );
        assert!(collect(None, &names).is_empty());
    }

    #[test]
    fn collects_parsed_references_in_order() {
        let platform = platform(&[
            ("OSFamily", "linux"),
            ("container-image", "docker://a.example/b:1"),
            ("image", "docker://x.example/y:3"),
        ]);
        let names = vec!["container-image".to_string(), "image".to_string()];
        let images = collect(Some(&platform), &names);
        assert_eq!(
            texts(&images),
            "docker://a.example/b:1, docker://x.example/y:3"
        );
        let reference = images[0].reference.as_ref().unwrap();
        assert_eq!(reference.registry(), "a.example");
        assert_eq!(reference.tag(), Some("1"));
        assert!(collect(None, &names).is_empty());
    }

    #[test]
    fn malformed_reference_names_its_property() {
        let platform = platform(&[("container-image", "docker://a.example/b@sha256:12")]);
        let images = collect(Some(&platform), &["container-image".to_string()]);
        let status = images[0].reference.as_ref().unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status
                .message()
                .starts_with("Platform property container-image: Invalid image reference"),
            "{status:?}"
        );
    }
}
