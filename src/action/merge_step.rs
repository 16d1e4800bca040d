//! The merge (steps 3 and 4 of docs/how-it-works.md): the image trees stacked in order,
//! the first at the bottom, then the client's input root grafted into the result at
//! `inputRootDirectory`. Only the Directories where trees overlap are rewritten; they
//! are made readable through the [`WrittenOverlay`] and collected for the upload.

use super::failure::{input_error, Failure};
use super::written_overlay::WrittenOverlay;
use super::RewriteOptions;
use crate::blobstore::{ContentAddressableStorage, Instance};
use crate::image::ExpandedImage;
use crate::merge::{DirectorySource, MergeOptions};
use crate::proto::reapi;
use crate::status::wrap;
use bytes::Bytes;
use std::time::Instant;
use tonic::Code;

/// The merged tree of one rewrite.
pub(crate) struct Merged {
    /// The images stacked, before the inputs were grafted.
    pub image_root: reapi::Digest,
    /// The client's input root.
    pub input_root: reapi::Digest,
    /// The images with the input root grafted in.
    pub root: reapi::Digest,
    /// Directories written by stacking and grafting, to be uploaded.
    pub new_directories: Vec<(reapi::Digest, Bytes)>,
}

/// Stacks `images` and grafts `input_root` (the Action's; none is the empty tree).
pub(crate) async fn merge(
    source: &mut WrittenOverlay<'_>,
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    images: &[ExpandedImage],
    input_root: Option<&reapi::Digest>,
    options: &RewriteOptions,
) -> Result<Merged, Failure> {
    let function = instance.digest_function;
    let mut new_directories = Vec::new();
    let image_root = stack(source, images, options, &mut new_directories).await?;
    let input_root = input_root
        .cloned()
        .unwrap_or_else(|| function.empty_digest());
    function.validate(&input_root)?;
    let merge_options = MergeOptions {
        policy: options.conflict_policy,
        max_message_size: options.maximum_message_size_bytes,
    };
    let started = Instant::now();
    let merged = crate::merge::graft(
        &*source,
        &image_root,
        &input_root,
        &options.input_root_directory,
        &merge_options,
    )
    .await;
    crate::image::metrics::step("graft", merged.is_ok(), started.elapsed().as_secs_f64());
    let merged = match merged {
        Ok(merged) => merged,
        Err(s) => {
            let context = "Failed to merge the input root with the image";
            return Err(input_error(cas, instance, s, &input_root, context).await);
        }
    };
    source.remember(function, &merged.directories);
    new_directories.extend(merged.directories);
    Ok(Merged {
        image_root,
        input_root,
        root: merged.root,
        new_directories,
    })
}

/// The root of `images` stacked in order (one image is its own root). A Directory of
/// an image missing from the CAS means the image must be expanded again.
async fn stack(
    source: &mut WrittenOverlay<'_>,
    images: &[ExpandedImage],
    options: &RewriteOptions,
    new_directories: &mut Vec<(reapi::Digest, Bytes)>,
) -> Result<reapi::Digest, Failure> {
    if let [image] = images {
        return Ok(image.root_directory_digest.clone());
    }
    let roots: Vec<reapi::Digest> = images
        .iter()
        .map(|i| i.root_directory_digest.clone())
        .collect();
    let stacked = crate::merge::stack_images(&*source, &roots, options.maximum_message_size_bytes)
        .await
        .map_err(|s| {
            let s = wrap(s, "Failed to stack images");
            if s.code() == Code::NotFound {
                Failure::ImageIncomplete(s)
            } else {
                Failure::Status(s)
            }
        })?;
    let function = source.digest_function();
    source.remember(function, &stacked.directories);
    new_directories.extend(stacked.directories);
    Ok(stacked.root)
}
