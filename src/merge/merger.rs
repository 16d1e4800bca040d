//! [`Merger`]: the merge of one stored directory into another, which grafting
//! (`graft.rs`) and stacking (`stack.rs`) are made of. It is a final overlay: no
//! whiteouts, no symlink following. Two directories at the same path merge
//! recursively; for any other clash (leaf/leaf, directory/leaf either way) the
//! [`MergePolicy`] decides (docs/design/directories.md#merging-the-input-root).
//! `Directory` messages are read lazily: a subtree only one side has, or both have
//! with the same digest, is kept by digest without being read, so the work grows with
//! where the trees overlap, not with their size.
//!
//! What a merge writes is kept in the [`Merger`] (readable by its later merges before
//! anything is in the CAS) and handed out, children before parents, as a
//! [`MergedTree`].

use super::directory_source::DirectorySource;
use super::remote_directory::{canonical, directory_digest, entries, join, Entry};
use crate::digest::DigestFunction;
use crate::proto::reapi;
use crate::tree::tree_error;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use tonic::Status;

/// What to do when the two trees have different nodes at the same path (other than
/// two directories, which always merge).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MergePolicy {
    /// Identical leaves (same kind, content and exec bit, or symlink target) are
    /// accepted; any other clash is an `InputRootConflict` error. The default.
    #[default]
    Strict,
    /// The input's (upper tree's) node replaces the image's (lower tree's) node.
    InputWins,
}

#[derive(Clone, Debug)]
pub struct MergeOptions {
    pub policy: MergePolicy,
    /// Largest permitted `Directory` message (the CAS's and the workers' limit); larger
    /// → `DirectoryTooLarge`.
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

/// One merge (or a sequence of merges, as in stacking) over one source.
pub(super) struct Merger<'a> {
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
    pub(super) fn new(source: &'a dyn DirectorySource, options: &MergeOptions) -> Self {
        Self {
            source,
            policy: options.policy,
            max_message_size: options.max_message_size,
            function: source.digest_function(),
            written: Mutex::new(Default::default()),
        }
    }

    pub(super) fn finish(self, root: reapi::Digest) -> MergedTree {
        MergedTree {
            root,
            directories: self.written.into_inner().in_order,
        }
    }

    /// Encodes a new `Directory` (at `path`, for messages) and records it.
    pub(super) fn write(
        &self,
        directory: &reapi::Directory,
        path: &str,
    ) -> Result<reapi::Digest, Status> {
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
    pub(super) async fn get(
        &self,
        digest: &reapi::Digest,
    ) -> Result<Arc<reapi::Directory>, Status> {
        let written = self.written.lock().by_digest.get(digest).cloned();
        match written {
            Some(directory) => Ok(directory),
            None => self.source.get_directory(digest).await,
        }
    }

    /// Merges directory `upper` into directory `lower` (at `path`).
    ///
    /// Iterative, so that deep trees cannot overflow the stack: first the pairs of
    /// directories to merge are found a level at a time (reads of one level run
    /// concurrently), then the merged directories are written, deepest first.
    pub(super) async fn merge_directories(
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
                (l, u) => return Err(conflict(&join(&path, &name), l, u)),
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

/// The error for a clash [`MergePolicy::Strict`] refuses, at `path`.
fn conflict(path: &str, lower: &Entry, upper: &Entry) -> Status {
    let different = if lower.kind() == upper.kind() {
        "different "
    } else {
        ""
    };
    tree_error(
        "InputRootConflict",
        format!(
            "{path:?}: the image has a {} and the input root has a {different}{}",
            lower.kind(),
            upper.kind()
        ),
    )
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
pub(super) fn display(path: &str) -> String {
    if path.is_empty() {
        ".".to_owned()
    } else {
        path.to_owned()
    }
}
