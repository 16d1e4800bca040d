//! [`graft`]: an action's input root grafted into an image tree at a mount path (the
//! `inputRootDirectory`), as step 4 of docs/how-it-works.md describes. The image is
//! walked down along the mount path, the input root is merged into the directory there
//! (a [`Merger`] with the caller's [`MergePolicy`]), and the directories on the way are
//! written again on the way up. Only those directories, and the ones where image and
//! input root overlap, are read and written.

use super::directory_source::DirectorySource;
use super::merger::{display, MergeOptions, MergedTree, Merger};
use super::remote_directory::{
    canonical, client_path_parts, directory_digest, entries, join, Entry,
};
use crate::proto::reapi;
use crate::tree::tree_error;
use futures::future::BoxFuture;
use futures::FutureExt;
use std::collections::BTreeMap;
use tonic::Status;

#[cfg(doc)]
use super::merger::MergePolicy;

/// Grafts the input root `input_root` into the image tree `image_root` at
/// `mount_path` (a relative path; "" = the root).
///
/// Each parent part of the mount path must be missing (it is created) or a directory
/// in the image: a symlink → `MountPathThroughSymlink`, a file →
/// `MountPathNotADirectory`. The mount path itself must be missing or a directory.
pub async fn graft(
    source: &dyn DirectorySource,
    image_root: &reapi::Digest,
    input_root: &reapi::Digest,
    mount_path: &str,
    options: &MergeOptions,
) -> Result<MergedTree, Status> {
    let parts = client_path_parts(mount_path, "mount path")?;
    let merger = Merger::new(source, options);
    let root = merger
        .graft_at(Some(image_root.clone()), &parts, 0, input_root)
        .await?;
    Ok(merger.finish(root))
}

impl Merger<'_> {
    /// Walks down the image along the mount path (`dir` is `None` where the image has
    /// nothing), grafts the input root at its end and writes the directories on the way
    /// up again.
    fn graft_at<'s>(
        &'s self,
        dir: Option<reapi::Digest>,
        parts: &'s [&'s str],
        depth: usize,
        input_root: &'s reapi::Digest,
    ) -> BoxFuture<'s, Result<reapi::Digest, Status>> {
        async move {
            let here = parts[..depth].join("/");
            if depth == parts.len() {
                return match dir {
                    None => Ok(input_root.clone()),
                    Some(image) => {
                        self.merge_directories(image, input_root.clone(), here)
                            .await
                    }
                };
            }
            let name = parts[depth];
            let (mut children, node_properties) = match &dir {
                None => (Default::default(), None),
                Some(digest) => {
                    let message = self.get(digest).await?;
                    (
                        entries(&message, &display(&here))?,
                        message.node_properties.clone(),
                    )
                }
            };
            let child = child_on_mount_path(&children, parts, depth)?;
            let grafted = self.graft_at(child, parts, depth + 1, input_root).await?;
            children.insert(
                name.to_owned(),
                Entry::Directory(reapi::DirectoryNode {
                    name: name.to_owned(),
                    digest: Some(grafted),
                }),
            );
            self.write(&canonical(children, node_properties), &here)
        }
        .boxed()
    }
}

/// The directory the image has at mount path part `depth` (`None`: nothing there, so it
/// is created), given the `children` of its parent. Anything but a directory there is
/// refused: `MountPathThroughSymlink` for a symlink above the mount point, else
/// `MountPathNotADirectory`.
fn child_on_mount_path(
    children: &BTreeMap<String, Entry>,
    parts: &[&str],
    depth: usize,
) -> Result<Option<reapi::Digest>, Status> {
    let here = parts[..depth].join("/");
    let name = parts[depth];
    match children.get(name) {
        None => Ok(None),
        Some(Entry::Directory(d)) => Ok(Some(directory_digest(d, &join(&here, name))?.clone())),
        Some(other) => {
            let last = depth + 1 == parts.len();
            let error = if !last && matches!(other, Entry::Symlink(_)) {
                "MountPathThroughSymlink"
            } else {
                "MountPathNotADirectory"
            };
            Err(tree_error(
                error,
                format!(
                    "mount path {:?}: {:?} is a {} in the image",
                    parts.join("/"),
                    join(&here, name),
                    other.kind()
                ),
            ))
        }
    }
}
