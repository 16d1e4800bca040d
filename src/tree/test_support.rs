//! Builders for layer entries and a readable listing of trees, for the tests of this
//! module.

use super::apply::apply_layer;
use super::directory::{Directory, Node};
use crate::digest::DigestFunction;
use crate::proto::cache::{self, layer_entry::Kind, LayerChangeset, LayerEntry};
use std::cell::RefCell;
use std::collections::HashMap;
use tonic::Status;

pub(crate) const F: DigestFunction = DigestFunction::Sha256;

thread_local! {
    /// Contents of the files built here, by digest hash, to list trees readably.
    static CONTENTS: RefCell<HashMap<String, String>> = RefCell::new(HashMap::new());
}

fn entry(path: &str, kind: Kind) -> LayerEntry {
    LayerEntry {
        path: path.to_owned(),
        kind: Some(kind),
    }
}

pub(crate) fn content_digest(content: &str) -> crate::proto::reapi::Digest {
    let digest = F.digest_of(content.as_bytes());
    CONTENTS.with(|c| {
        c.borrow_mut()
            .insert(digest.hash.clone(), content.to_owned())
    });
    digest
}

pub(crate) fn file(path: &str, content: &str) -> LayerEntry {
    file_with_mode(path, content, false)
}

pub(crate) fn exe(path: &str, content: &str) -> LayerEntry {
    file_with_mode(path, content, true)
}

fn file_with_mode(path: &str, content: &str, is_executable: bool) -> LayerEntry {
    entry(
        path,
        Kind::File(cache::RegularFile {
            digest: Some(content_digest(content)),
            is_executable,
        }),
    )
}

pub(crate) fn dir(path: &str) -> LayerEntry {
    entry(path, Kind::Directory(cache::ExplicitDirectory {}))
}

pub(crate) fn symlink(path: &str, target: &str) -> LayerEntry {
    entry(
        path,
        Kind::Symlink(cache::Symlink {
            target: target.to_owned(),
        }),
    )
}

pub(crate) fn hardlink(path: &str, target: &str) -> LayerEntry {
    hardlink_with_mode(path, target, false)
}

pub(crate) fn hardlink_with_mode(path: &str, target: &str, is_executable: bool) -> LayerEntry {
    entry(
        path,
        Kind::HardLink(cache::HardLink {
            target: target.to_owned(),
            is_executable,
        }),
    )
}

pub(crate) fn whiteout(path: &str) -> LayerEntry {
    entry(path, Kind::Whiteout(cache::Whiteout {}))
}

pub(crate) fn opaque(path: &str) -> LayerEntry {
    entry(path, Kind::Opaque(cache::OpaqueDirectory {}))
}

pub(crate) fn special(path: &str) -> LayerEntry {
    entry(path, Kind::Special(cache::SpecialFile {}))
}

pub(crate) fn changeset(entries: Vec<LayerEntry>) -> LayerChangeset {
    LayerChangeset {
        entries,
        ..Default::default()
    }
}

/// Applies the layers in order onto an empty tree.
pub(crate) fn apply_all(layers: Vec<Vec<LayerEntry>>) -> Result<Directory, Status> {
    let mut tree = Directory::new();
    for entries in layers {
        apply_layer(&mut tree, &changeset(entries))?;
    }
    Ok(tree)
}

/// One line per node, sorted: `dir/`, `file=content` (`*` marks executables),
/// `link -> target`.
pub(crate) fn listing(tree: &Directory) -> Vec<String> {
    let mut lines = Vec::new();
    let mut stack = vec![(tree, String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        for (name, node) in dir.children() {
            let path = format!("{prefix}{name}");
            match node {
                Node::Directory(d) => {
                    lines.push(format!("{path}/"));
                    stack.push((d, format!("{path}/")));
                }
                Node::File {
                    digest,
                    is_executable,
                } => {
                    let content = CONTENTS
                        .with(|c| c.borrow().get(&digest.hash).cloned())
                        .unwrap_or_else(|| digest.hash.clone());
                    let mark = if *is_executable { "*" } else { "" };
                    lines.push(format!("{path}{mark}={content}"));
                }
                Node::Symlink { target } => lines.push(format!("{path} -> {target}")),
            }
        }
    }
    lines.sort();
    lines
}

/// `listing` of the layers applied in order; panics on error.
pub(crate) fn result_of(layers: Vec<Vec<LayerEntry>>) -> Vec<String> {
    listing(&apply_all(layers).unwrap())
}

/// The error message of applying the layers in order; panics on success.
pub(crate) fn error_of(layers: Vec<Vec<LayerEntry>>) -> String {
    apply_all(layers).unwrap_err().message().to_owned()
}
