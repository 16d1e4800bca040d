//! Working with REAPI `Directory` messages directly, for code that loads trees lazily
//! (grafting, checks): finding a child by name, turning a message into a map of its
//! children (refusing invalid and duplicate names), and building a canonical message
//! back from such a map.

use crate::proto::reapi;
use crate::tree::invalid_name_reason;
use crate::tree::tree_error;
use crate::tree::NodeKind;
use std::collections::BTreeMap;
use tonic::Status;

/// A child of a `Directory` message.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Entry {
    File(reapi::FileNode),
    Directory(reapi::DirectoryNode),
    Symlink(reapi::SymlinkNode),
}

impl Entry {
    pub fn kind(&self) -> NodeKind {
        match self {
            Entry::File(_) => NodeKind::File,
            Entry::Directory(_) => NodeKind::Directory,
            Entry::Symlink(_) => NodeKind::Symlink,
        }
    }

    /// Two leaves that mean the same thing: same kind, same content and exec bit, or
    /// the same symlink target (node properties are not compared).
    pub fn same_leaf(&self, other: &Entry) -> bool {
        match (self, other) {
            (Entry::File(a), Entry::File(b)) => {
                a.digest == b.digest && a.is_executable == b.is_executable
            }
            (Entry::Symlink(a), Entry::Symlink(b)) => a.target == b.target,
            _ => false,
        }
    }
}

/// The child `name` of `directory`, if any.
pub(crate) fn find(directory: &reapi::Directory, name: &str) -> Option<Entry> {
    if let Some(d) = directory.directories.iter().find(|n| n.name == name) {
        return Some(Entry::Directory(d.clone()));
    }
    if let Some(f) = directory.files.iter().find(|n| n.name == name) {
        return Some(Entry::File(f.clone()));
    }
    directory
        .symlinks
        .iter()
        .find(|n| n.name == name)
        .map(|s| Entry::Symlink(s.clone()))
}

/// The digest of a `DirectoryNode`, which must be set.
pub(crate) fn directory_digest<'a>(
    node: &'a reapi::DirectoryNode,
    path: &str,
) -> Result<&'a reapi::Digest, Status> {
    node.digest.as_ref().ok_or_else(|| {
        tree_error(
            "InvalidDirectory",
            format!("directory {path:?} has no digest"),
        )
    })
}

/// The children of `directory` (at `path`, for messages) by name. Names must be valid
/// path parts and unique across the three lists
/// (docs/design/directories.md#canonical-form).
pub(crate) fn entries(
    directory: &reapi::Directory,
    path: &str,
) -> Result<BTreeMap<String, Entry>, Status> {
    let mut map = BTreeMap::new();
    let all = directory
        .files
        .iter()
        .map(|f| (&f.name, Entry::File(f.clone())))
        .chain(
            directory
                .directories
                .iter()
                .map(|d| (&d.name, Entry::Directory(d.clone()))),
        )
        .chain(
            directory
                .symlinks
                .iter()
                .map(|s| (&s.name, Entry::Symlink(s.clone()))),
        );
    for (name, entry) in all {
        if let Some(reason) = invalid_name_reason(name) {
            return Err(tree_error(
                "InvalidName",
                format!("directory {path:?} has a child named {name:?}, which {reason}"),
            ));
        }
        if map.insert(name.clone(), entry).is_some() {
            return Err(tree_error(
                "DuplicateName",
                format!("directory {path:?} has more than one child named {name:?}"),
            ));
        }
    }
    Ok(map)
}

/// A canonical `Directory` (three lists sorted by name bytes) holding `entries`. The
/// nodes are kept as they are, node properties included.
pub(crate) fn canonical(
    entries: BTreeMap<String, Entry>,
    node_properties: Option<reapi::NodeProperties>,
) -> reapi::Directory {
    let mut directory = reapi::Directory {
        node_properties,
        ..Default::default()
    };
    for (name, entry) in entries {
        match entry {
            Entry::File(mut f) => {
                f.name = name;
                directory.files.push(f);
            }
            Entry::Directory(mut d) => {
                d.name = name;
                directory.directories.push(d);
            }
            Entry::Symlink(mut s) => {
                s.name = name;
                directory.symlinks.push(s);
            }
        }
    }
    directory
}

/// Joins a path for messages; the root is ".".
pub(crate) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() || parent == "." {
        name.to_owned()
    } else {
        format!("{parent}/{name}")
    }
}

/// Splits a relative path given by a client or the configuration ("" = the root),
/// dropping empty and `.` parts and resolving `..` lexically. Climbing above the root
/// is an error (`what` names the path in the message).
pub(crate) fn client_path_parts<'a>(path: &'a str, what: &str) -> Result<Vec<&'a str>, Status> {
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(tree_error(
                        "PathTraversal",
                        format!("{what} {path:?} climbs above the root"),
                    ));
                }
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}
