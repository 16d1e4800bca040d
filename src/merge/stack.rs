//! [`stack_images`]: several whole image trees stacked, each later one over the
//! earlier ones, as an action naming several images gets them (step 3 of
//! docs/how-it-works.md). Each is merged with [`MergePolicy::InputWins`]: directories
//! merge, and for every other clash (leaf/leaf, directory/leaf either way) the later
//! image's node replaces the earlier one's. Unlike a layer, a later image cannot remove
//! anything, and its paths are not resolved through the earlier image's symlinks.

use super::directory_source::DirectorySource;
use super::merger::{MergeOptions, MergePolicy, MergedTree, Merger};
use crate::proto::reapi;
use bytes::Bytes;
use prost::Message;
use std::collections::{HashMap, HashSet};
use tonic::Status;

/// Stacks image trees, the first one lowest, with [`MergePolicy::InputWins`] (see the
/// module documentation). No trees give the empty tree.
pub async fn stack_images(
    source: &dyn DirectorySource,
    images: &[reapi::Digest],
    max_message_size: usize,
) -> Result<MergedTree, Status> {
    let options = MergeOptions {
        policy: MergePolicy::InputWins,
        max_message_size,
    };
    let merger = Merger::new(source, &options);
    let Some((first, rest)) = images.split_first() else {
        return Ok(MergedTree {
            root: source.digest_function().empty_digest(),
            directories: Vec::new(),
        });
    };
    let mut root = first.clone();
    for upper in rest {
        root = merger
            .merge_directories(root, upper.clone(), String::new())
            .await?;
    }
    let mut merged = merger.finish(root);
    drop_unreachable(&mut merged)?;
    Ok(merged)
}

/// Drops the Directories that intermediate results wrote and the final tree no longer
/// uses, keeping the order (children before parents).
fn drop_unreachable(merged: &mut MergedTree) -> Result<(), Status> {
    let written: HashMap<&reapi::Digest, &Bytes> =
        merged.directories.iter().map(|(d, b)| (d, b)).collect();
    let mut reachable: HashSet<reapi::Digest> = HashSet::new();
    let mut stack = vec![merged.root.clone()];
    while let Some(digest) = stack.pop() {
        if let Some(bytes) = written.get(&digest) {
            if reachable.insert(digest.clone()) {
                let message = reapi::Directory::decode((*bytes).clone()).map_err(|e| {
                    Status::internal(format!("Failed to decode a merged Directory: {e}"))
                })?;
                stack.extend(message.directories.into_iter().filter_map(|d| d.digest));
            }
        }
    }
    merged.directories.retain(|(d, _)| reachable.contains(d));
    Ok(())
}
