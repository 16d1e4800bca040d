//! Merging trees that are in the CAS, loading `Directory` messages lazily (layers.md
//! §6, L-90…L-95): only directories where both trees have content, and those on the
//! path to the mount point, are read and written again; every other subtree keeps its
//! digest, so the work does not grow with the size of the image.
//!
//! - [`graft`]: an action's input root `R` into an image tree `I` at a mount path `P`.
//!   The merge is a final overlay: no whiteouts, no symlink following. Directories
//!   merge recursively; for any other clash the [`MergePolicy`] decides.
//! - [`merge`]: the same at the root, for any two trees (`lower`, `upper`).
//! - [`stack_images`]: several whole image trees, each later one over the earlier
//!   ones, with [`MergePolicy::InputWins`]: directories merge, and for every other clash
//!   (leaf/leaf, directory/leaf either way) the later image's node replaces the
//!   earlier one's. Unlike a layer, a later image cannot remove anything, and its
//!   paths are not resolved through the earlier image's symlinks.

use super::directory_source::DirectorySource;
use super::remote_directory::{
    canonical, client_path_parts, directory_digest, entries, join, Entry,
};
use crate::digest::DigestFunction;
use crate::proto::reapi;
use crate::tree::tree_error;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use parking_lot::Mutex;
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tonic::Status;

/// What to do when the two trees have different nodes at the same path (other than
/// two directories, which always merge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MergePolicy {
    /// Identical leaves (same kind, content and exec bit, or symlink target) are
    /// accepted; any other clash is an `InputRootConflict` error (L-90 default).
    #[default]
    Strict,
    /// The input's (upper tree's) node replaces the image's (lower tree's) node.
    InputWins,
}

#[derive(Clone, Debug)]
pub struct MergeOptions {
    pub policy: MergePolicy,
    /// Largest permitted `Directory` message (L-85); larger → `DirectoryTooLarge`.
    pub max_message_size: usize,
}

/// The result of a merge.
#[derive(Clone, Debug)]
pub struct MergedTree {
    pub root: reapi::Digest,
    /// The `Directory` messages the merge wrote (distinct, non-empty, children before
    /// parents). Everything else the new root refers to was already in the trees.
    pub directories: Vec<(reapi::Digest, Bytes)>,
}

/// Grafts the input root `input_root` into the image tree `image_root` at
/// `mount_path` (a relative path; "" = the root), per L-90…L-92 and L-95.
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

/// Merges `upper` over `lower` at the root, per `options.policy`.
pub async fn merge(
    source: &dyn DirectorySource,
    lower: &reapi::Digest,
    upper: &reapi::Digest,
    options: &MergeOptions,
) -> Result<MergedTree, Status> {
    graft(source, lower, upper, "", options).await
}

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
    // Drop what intermediate results wrote and the final tree no longer uses (the
    // order, children before parents, is kept).
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
    Ok(merged)
}

struct Merger<'a> {
    source: &'a dyn DirectorySource,
    policy: MergePolicy,
    max_message_size: usize,
    function: DigestFunction,
    /// What this merge wrote: by digest (a later merge of the same `Merger` may read
    /// it back before it is in the CAS) and in writing order.
    written: Mutex<Written>,
}

#[derive(Default)]
struct Written {
    by_digest: HashMap<reapi::Digest, Arc<reapi::Directory>>,
    in_order: Vec<(reapi::Digest, Bytes)>,
}

impl<'a> Merger<'a> {
    fn new(source: &'a dyn DirectorySource, options: &MergeOptions) -> Self {
        Self {
            source,
            policy: options.policy,
            max_message_size: options.max_message_size,
            function: source.digest_function(),
            written: Mutex::new(Default::default()),
        }
    }

    fn finish(self, root: reapi::Digest) -> MergedTree {
        MergedTree {
            root,
            directories: self.written.into_inner().in_order,
        }
    }

    /// Encodes a new `Directory` (at `path`, for messages) and records it.
    fn write(&self, directory: &reapi::Directory, path: &str) -> Result<reapi::Digest, Status> {
        let bytes = Bytes::from(directory.encode_to_vec());
        if bytes.len() > self.max_message_size {
            return Err(tree_error(
                "DirectoryTooLarge",
                format!(
                    "merged directory {:?} with {} children encodes to {} bytes, more than the maximum message size of {} bytes",
                    display(path),
                    directory.files.len() + directory.directories.len() + directory.symlinks.len(),
                    bytes.len(),
                    self.max_message_size
                ),
            ));
        }
        let digest = self.function.digest_of(&bytes);
        if !bytes.is_empty() {
            let mut written = self.written.lock();
            if !written.by_digest.contains_key(&digest) {
                written
                    .by_digest
                    .insert(digest.clone(), Arc::new(directory.clone()));
                written.in_order.push((digest.clone(), bytes));
            }
        }
        Ok(digest)
    }

    /// A `Directory` this merge wrote, or else one from the source.
    async fn get(&self, digest: &reapi::Digest) -> Result<Arc<reapi::Directory>, Status> {
        let written = self.written.lock().by_digest.get(digest).cloned();
        match written {
            Some(directory) => Ok(directory),
            None => self.source.get_directory(digest).await,
        }
    }

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
            let child = match children.get(name) {
                None => None,
                Some(Entry::Directory(d)) => Some(directory_digest(d, &join(&here, name))?.clone()),
                Some(other) => {
                    let last = depth + 1 == parts.len();
                    let error = if !last && matches!(other, Entry::Symlink(_)) {
                        "MountPathThroughSymlink"
                    } else {
                        "MountPathNotADirectory"
                    };
                    return Err(tree_error(
                        error,
                        format!(
                            "mount path {:?}: {:?} is a {} in the image",
                            parts.join("/"),
                            join(&here, name),
                            other.kind()
                        ),
                    ));
                }
            };
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

    /// Merges directory `upper` into directory `lower` (at `path`).
    ///
    /// Iterative, so that deep trees cannot overflow the stack: first the pairs of
    /// directories to merge are found a level at a time (reads of one level run
    /// concurrently), then the merged directories are written, deepest first.
    async fn merge_directories(
        &self,
        lower: reapi::Digest,
        upper: reapi::Digest,
        path: String,
    ) -> Result<reapi::Digest, Status> {
        let mut frames: Vec<Option<Frame>> = Vec::new();
        let mut root = None;
        let mut level = vec![Pair {
            lower,
            upper,
            path,
            parent: None,
        }];
        while !level.is_empty() {
            // In order, so that the first error reported does not depend on timing.
            let expanded: Vec<Result<Expanded, Status>> = futures::stream::iter(level)
                .map(|pair| self.expand(pair))
                .buffered(CONCURRENT_READS)
                .collect()
                .await;
            let mut next = Vec::new();
            for expansion in expanded {
                match expansion? {
                    Expanded::Done { digest, parent } => {
                        deliver(&mut frames, &mut root, parent, digest)
                    }
                    Expanded::Frame { frame, pairs } => {
                        let index = frames.len();
                        let parent_path = frame.path.clone();
                        frames.push(Some(frame));
                        next.extend(pairs.into_iter().map(|(name, lower, upper)| Pair {
                            lower,
                            upper,
                            path: join(&parent_path, &name),
                            parent: Some((index, name)),
                        }));
                    }
                }
            }
            level = next;
        }
        // A frame's children were found after it, so going backwards writes children
        // before their parents.
        for index in (0..frames.len()).rev() {
            let frame = frames[index].take().expect("each frame is written once");
            let digest = self.write(
                &canonical(frame.children, frame.node_properties),
                &frame.path,
            )?;
            deliver(&mut frames, &mut root, frame.parent, digest);
        }
        Ok(root.expect("the first pair delivers the root"))
    }

    /// Reads one pair of directories and sorts their children: kept as they are,
    /// replaced (per policy), or pairs of subdirectories to merge next.
    async fn expand(&self, pair: Pair) -> Result<Expanded, Status> {
        let Pair {
            lower,
            upper,
            path,
            parent,
        } = pair;
        if lower == upper || upper.size_bytes == 0 {
            return Ok(Expanded::Done {
                digest: lower,
                parent,
            });
        }
        if lower.size_bytes == 0 {
            return Ok(Expanded::Done {
                digest: upper,
                parent,
            });
        }
        let (lower_message, upper_message) =
            futures::try_join!(self.get(&lower), self.get(&upper))?;
        let mut children = entries(&lower_message, &display(&path))?;
        let mut pairs = Vec::new();
        for (name, upper_entry) in entries(&upper_message, &display(&path))? {
            let Some(lower_entry) = children.get(&name) else {
                children.insert(name, upper_entry);
                continue;
            };
            match (lower_entry, &upper_entry) {
                (Entry::Directory(l), Entry::Directory(u)) => {
                    let child_path = join(&path, &name);
                    let l = directory_digest(l, &child_path)?.clone();
                    let u = directory_digest(u, &child_path)?.clone();
                    pairs.push((name, l, u));
                }
                (l, u) if l.same_leaf(u) || self.policy == MergePolicy::InputWins => {
                    children.insert(name, upper_entry);
                }
                (l, u) => {
                    let different = if l.kind() == u.kind() {
                        "different "
                    } else {
                        ""
                    };
                    return Err(tree_error(
                        "InputRootConflict",
                        format!(
                            "{:?}: the image has a {} and the input root has a {different}{}",
                            join(&path, &name),
                            l.kind(),
                            u.kind()
                        ),
                    ));
                }
            }
        }
        let node_properties = upper_message
            .node_properties
            .clone()
            .or_else(|| lower_message.node_properties.clone());
        Ok(Expanded::Frame {
            frame: Frame {
                path,
                children,
                node_properties,
                parent,
            },
            pairs,
        })
    }
}

/// How many `Directory` reads one merge keeps in flight.
const CONCURRENT_READS: usize = 32;

/// Where a merged directory goes: the child `name` of frame `index`, or (`None`) it is
/// the result.
type Parent = Option<(usize, String)>;

/// Two directories to merge.
struct Pair {
    lower: reapi::Digest,
    upper: reapi::Digest,
    path: String,
    parent: Parent,
}

/// A merged directory waiting for its merged subdirectories.
struct Frame {
    path: String,
    children: BTreeMap<String, Entry>,
    node_properties: Option<reapi::NodeProperties>,
    parent: Parent,
}

enum Expanded {
    /// Nothing to merge: the result is one of the two.
    Done {
        digest: reapi::Digest,
        parent: Parent,
    },
    Frame {
        frame: Frame,
        pairs: Vec<(String, reapi::Digest, reapi::Digest)>,
    },
}

fn deliver(
    frames: &mut [Option<Frame>],
    root: &mut Option<reapi::Digest>,
    parent: Parent,
    digest: reapi::Digest,
) {
    match parent {
        None => *root = Some(digest),
        Some((index, name)) => {
            let frame = frames[index]
                .as_mut()
                .expect("parents are written after children");
            frame.children.insert(
                name.clone(),
                Entry::Directory(reapi::DirectoryNode {
                    name,
                    digest: Some(digest),
                }),
            );
        }
    }
}

/// A path for messages; the root is ".".
fn display(path: &str) -> String {
    if path.is_empty() {
        ".".to_owned()
    } else {
        path.to_owned()
    }
}
