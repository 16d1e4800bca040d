//! Applying one layer changeset to the tree of the layers below it (docs/design/layers.md#two-passes, #implied-parents, #parent-resolution, #replacing-entries, #whiteouts, #opaque-directories, #hard-links,
//! docs/design/layers.md#devices-and-fifos), exactly as docker/containerd would extract it, except where docs/design/layers.md decides
//! otherwise.
//!
//! - **Pass W** (docs/design/layers.md#two-passes, #implied-parents, #whiteouts, #opaque-directories): every whiteout and opaque entry is resolved
//!   against the *unchanged* lower tree, then all removals are made, then the implied
//!   parent directories of those entries are created (so this layer's whiteouts never
//!   remove them).
//! - **Pass A**: every other entry, in tar order. The parent part is resolved with
//!   chroot semantics (docs/design/layers.md#parent-resolution, `path_resolution.rs`), missing parts are created,
//!   and the last part is never followed. Directory over directory keeps the children
//!   (docs/design/layers.md#replacing-entries); anything else replaces what is there (docs/design/layers.md#replacing-entries). Hard links copy the
//!   target node as it is at that moment (docs/design/layers.md#hard-links). Devices and FIFOs remove what is
//!   there and leave nothing (docs/design/layers.md#devices-and-fifos).
//!
//! The tree is changed only if the whole layer applies: the work is done on a clone
//! (cheap, subtrees are shared).

use super::directory::{display_path, Directory, Node};
use super::error::entry_error;
use super::path_resolution::{resolve_directory, RealPath, ResolveError, MAX_SYMLINK_HOPS};
use crate::proto::cache::{layer_entry::Kind, HardLink, LayerChangeset, LayerEntry};
use std::collections::HashSet;
use tonic::Status;

/// The deepest a node may be, in path parts (docs/design/layers.md#depth-limit): a guard so that a
/// crafted layer cannot build a tree deep enough to overflow the stack when it is
/// dropped or grafted. Linux cannot create such paths either (`PATH_MAX` is 4096
/// bytes, so at most 2048 parts).
pub const MAX_DEPTH: usize = 2048;

/// What applying a layer skipped, for warnings and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Hard links whose target is a device or FIFO of the same layer, which is not in
    /// the tree (docs/design/layers.md#hard-links, last case).
    pub skipped_hard_links: u64,
}

/// Applies `changeset` to `tree`. On error, `tree` is left unchanged; the error message
/// starts with the rule's error name and names the entry's path.
pub fn apply_layer(
    tree: &mut Directory,
    changeset: &LayerChangeset,
) -> Result<ApplyReport, Status> {
    let mut work = tree.clone();
    pass_w(tree, &mut work, &changeset.entries)?;
    let report = pass_a(&mut work, &changeset.entries)?;
    *tree = work;
    Ok(report)
}

/// Splits a normalised path into its parts, refusing `.` and `..` (the producer
/// normalises them away, docs/design/layers.md#path-normalisation).
fn normalised_parts<'a>(path: &'a str, entry_path: &str) -> Result<Vec<&'a str>, Status> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(entry_error(
            "InvalidLayer",
            entry_path,
            format!("the path {path:?} is not normalised"),
        ));
    }
    Ok(parts)
}

fn resolve_error(entry: &LayerEntry, err: ResolveError) -> Status {
    match err {
        ResolveError::NotADirectory { path, kind } => entry_error(
            "NotADirectory",
            &entry.path,
            format!(
                "its parent resolves through {:?}, which is a {kind}, not a directory",
                display_path(&path)
            ),
        ),
        ResolveError::TooManySymlinks => too_many_symlinks(&entry.path, "its parent"),
    }
}

fn too_many_symlinks(entry_path: &str, what: &str) -> Status {
    entry_error(
        "TooManySymlinks",
        entry_path,
        format!("resolving {what} follows more than {MAX_SYMLINK_HOPS} symlinks"),
    )
}

fn check_depth(entry: &LayerEntry, depth: usize) -> Result<(), Status> {
    if depth > MAX_DEPTH {
        return Err(entry_error(
            "PathTooDeep",
            &entry.path,
            format!("it resolves to a path of {depth} parts, more than {MAX_DEPTH}"),
        ));
    }
    Ok(())
}

/// Pass W: whiteouts and opaque markers act on the lower tree `snapshot` only.
fn pass_w(
    snapshot: &Directory,
    work: &mut Directory,
    entries: &[LayerEntry],
) -> Result<(), Status> {
    // (directory, Some(child)) removes one child; (directory, None) all of them.
    let mut removals: Vec<(Vec<String>, Option<String>)> = Vec::new();
    let mut implied_parents: Vec<Vec<String>> = Vec::new();
    for entry in entries {
        let (directory, child) = match &entry.kind {
            Some(Kind::Whiteout(_)) => {
                let parts = normalised_parts(&entry.path, &entry.path)?;
                let Some((name, parent)) = parts.split_last() else {
                    return Err(entry_error(
                        "InvalidWhiteout",
                        &entry.path,
                        "a whiteout cannot remove the root",
                    ));
                };
                (parent.to_vec(), Some(*name))
            }
            // An empty path is an opaque marker at the root.
            Some(Kind::Opaque(_)) => (normalised_parts(&entry.path, &entry.path)?, None),
            _ => continue,
        };
        match resolve_directory(snapshot, &directory) {
            Ok(real) => {
                if real.exists() {
                    removals.push((real.parts.clone(), child.map(str::to_owned)));
                }
                check_depth(entry, real.parts.len())?;
                implied_parents.push(real.parts);
            }
            // A parent that is not a directory: no effect and no error (docs/design/layers.md#implied-parents, #whiteouts).
            Err(ResolveError::NotADirectory { .. }) => {}
            Err(ResolveError::TooManySymlinks) => {
                return Err(too_many_symlinks(
                    &entry.path,
                    "the directory it applies to",
                ))
            }
        }
    }
    for (directory, child) in removals {
        // An earlier removal may have taken the directory already.
        let Some(existing) = work.directory_at(&directory) else {
            continue;
        };
        let changes = match &child {
            Some(name) => existing.get(name).is_some(),
            None => !existing.is_empty(),
        };
        if changes {
            let d = work
                .make_directories(&directory)
                .expect("the directory exists");
            match child {
                Some(name) => {
                    d.remove(&name);
                }
                None => d.children_mut().clear(),
            }
        }
    }
    for parents in implied_parents {
        if work.directory_at(&parents).is_none() {
            // Parts of a real path are directories or missing, and removals only
            // remove: creating them cannot meet a non-directory.
            work.make_directories(&parents)
                .expect("real paths hold no non-directories");
        }
    }
    Ok(())
}

/// Pass A: all other entries, in tar order.
fn pass_a(work: &mut Directory, entries: &[LayerEntry]) -> Result<ApplyReport, Status> {
    let mut report = ApplyReport::default();
    // Real paths of this layer's devices and FIFOs, for hard links to them.
    let mut specials: HashSet<Vec<String>> = HashSet::new();
    for entry in entries {
        let kind = entry
            .kind
            .as_ref()
            .ok_or_else(|| entry_error("InvalidLayer", &entry.path, "the entry has no kind"))?;
        if matches!(kind, Kind::Whiteout(_) | Kind::Opaque(_)) {
            continue;
        }
        let parts = normalised_parts(&entry.path, &entry.path)?;
        let Some((name, parent)) = parts.split_last() else {
            continue; // The root entry is skipped, whatever its type (docs/design/layers.md#path-normalisation).
        };
        let parent = resolve_directory(work, parent).map_err(|e| resolve_error(entry, e))?;
        check_depth(entry, parent.parts.len() + 1)?;
        let existing = existing_child(work, &parent, name);
        if !specials.is_empty() {
            specials.remove(&parent.child(name));
        }
        let node = match kind {
            Kind::Directory(_) => {
                if matches!(existing, Some(Node::Directory(_))) {
                    continue; // docs/design/layers.md#replacing-entries: keep the directory and its children.
                }
                Node::empty_directory()
            }
            Kind::File(file) => Node::File {
                digest: file.digest.clone().ok_or_else(|| {
                    entry_error("InvalidLayer", &entry.path, "the file has no digest")
                })?,
                is_executable: file.is_executable,
            },
            Kind::Symlink(symlink) => {
                if symlink.target.is_empty() || symlink.target.contains('\0') {
                    return Err(entry_error(
                        "InvalidLayer",
                        &entry.path,
                        format!("invalid symlink target {:?}", symlink.target),
                    ));
                }
                Node::Symlink {
                    target: symlink.target.clone(),
                }
            }
            Kind::Special(_) => {
                // docs/design/layers.md#devices-and-fifos: unlink what is there and leave nothing.
                parent_directory(work, &parent).remove(name);
                specials.insert(parent.child(name));
                continue;
            }
            Kind::HardLink(link) => {
                // The runtimes unlink the name before linking, so a link to itself (or
                // to something below it) is dangling.
                if existing.is_some() {
                    parent_directory(work, &parent).remove(name);
                }
                match hard_link_copy(work, entry, link, &specials)? {
                    Some(node) => node,
                    None => {
                        report.skipped_hard_links += 1;
                        tracing::warn!(
                            path = %entry.path,
                            target = %link.target,
                            "Skipping a hard link to a device or FIFO"
                        );
                        parent_directory(work, &parent);
                        continue;
                    }
                }
            }
            Kind::Whiteout(_) | Kind::Opaque(_) => unreachable!("handled in pass W"),
        };
        parent_directory(work, &parent).insert(*name, node);
    }
    Ok(report)
}

/// The child `name` of the directory at `parent`, if both exist.
fn existing_child<'a>(work: &'a Directory, parent: &RealPath, name: &str) -> Option<&'a Node> {
    if !parent.exists() {
        return None;
    }
    work.directory_at(&parent.parts)?.get(name)
}

/// The directory at `parent`, created with its missing parts (docs/design/layers.md#implied-parents).
fn parent_directory<'a>(work: &'a mut Directory, parent: &RealPath) -> &'a mut Directory {
    work.make_directories(&parent.parts)
        .expect("a resolved path holds directories or missing parts only")
}

/// The node a hard link copies (docs/design/layers.md#hard-links): the target's parent part is resolved in the
/// current tree, its last part is not followed. `None`: the target is a device or FIFO
/// of this layer, so the link is skipped.
fn hard_link_copy(
    work: &Directory,
    entry: &LayerEntry,
    link: &HardLink,
    specials: &HashSet<Vec<String>>,
) -> Result<Option<Node>, Status> {
    let parts = normalised_parts(&link.target, &entry.path)?;
    let dangling = |why: &str| {
        entry_error(
            "DanglingHardlink",
            &entry.path,
            format!("the link target {:?} {why}", link.target),
        )
    };
    let Some((name, parent)) = parts.split_last() else {
        return Err(dangling("is the root"));
    };
    let parent = match resolve_directory(work, parent) {
        Ok(parent) => parent,
        Err(ResolveError::NotADirectory { path, kind }) => {
            return Err(dangling(&format!(
                "does not exist: its parent resolves through {:?}, which is a {kind}",
                display_path(&path)
            )))
        }
        Err(ResolveError::TooManySymlinks) => {
            return Err(too_many_symlinks(&entry.path, "the link target"))
        }
    };
    match existing_child(work, &parent, name) {
        Some(Node::File { digest, .. }) => Ok(Some(Node::File {
            digest: digest.clone(),
            // From the link entry's own mode (docs/design/layers.md#hard-links, DECISION).
            is_executable: link.is_executable,
        })),
        Some(symlink @ Node::Symlink { .. }) => Ok(Some(symlink.clone())),
        Some(Node::Directory(_)) => Err(entry_error(
            "HardlinkToDirectory",
            &entry.path,
            format!("the link target {:?} is a directory", link.target),
        )),
        None if specials.contains(&parent.child(name)) => Ok(None),
        None => Err(dangling("does not exist")),
    }
}
