//! The in-memory Merkle tree: a [`Directory`] maps names to [`Node`]s, and
//! subdirectories are shared through `Arc`, so that a tree cloned from a cached lower
//! tree shares every subtree a layer does not touch (copy-on-write with
//! `Arc::make_mut`).
//!
//! Each directory memoises its canonical encoding per digest function (see
//! `encode.rs`). Every way to get mutable access to a directory's children clears that
//! memo, so a memo can never be stale: mutating a deep node goes through `&mut` of every
//! ancestor, which clears theirs too, while untouched (shared) subtrees keep theirs.

use super::encode::Memo;
use crate::digest::DigestFunction;
use crate::proto::reapi;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

/// One child of a directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    /// A regular file: its content digest (instance digest function) and exec bit.
    File {
        digest: reapi::Digest,
        is_executable: bool,
    },
    /// A symbolic link, target kept verbatim (docs/design/layers.md#symlink-targets).
    Symlink { target: String },
    /// A subdirectory, shared between trees until one of them changes it.
    Directory(Arc<Directory>),
}

/// What kind of node a path names, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeKind {
    File,
    Symlink,
    Directory,
}

impl fmt::Display for NodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeKind::File => "regular file",
            NodeKind::Symlink => "symlink",
            NodeKind::Directory => "directory",
        })
    }
}

impl Node {
    pub fn kind(&self) -> NodeKind {
        match self {
            Node::File { .. } => NodeKind::File,
            Node::Symlink { .. } => NodeKind::Symlink,
            Node::Directory(_) => NodeKind::Directory,
        }
    }

    /// A new, empty subdirectory.
    pub fn empty_directory() -> Self {
        Node::Directory(Arc::new(Directory::new()))
    }
}

/// Memoised encodings, one slot per digest function.
#[derive(Clone, Default)]
pub(crate) struct Memos([OnceLock<Box<Memo>>; 3]);

impl Memos {
    fn slot(&self, function: DigestFunction) -> &OnceLock<Box<Memo>> {
        &self.0[match function {
            DigestFunction::Sha256 => 0,
            DigestFunction::Sha384 => 1,
            DigestFunction::Sha512 => 2,
        }]
    }
}

/// A directory of the in-memory tree. The root of a tree is a plain `Directory`.
#[derive(Clone, Default)]
pub struct Directory {
    children: BTreeMap<String, Node>,
    memos: Memos,
}

impl Directory {
    pub fn new() -> Self {
        Self::default()
    }

    /// The children, sorted by name bytes (the order REAPI wants, docs/design/directories.md#canonical-form).
    pub fn children(&self) -> &BTreeMap<String, Node> {
        &self.children
    }

    /// Mutable access to the children; forgets the memoised encodings.
    pub fn children_mut(&mut self) -> &mut BTreeMap<String, Node> {
        self.memos = Memos::default();
        &mut self.children
    }

    pub fn get(&self, name: &str) -> Option<&Node> {
        self.children.get(name)
    }

    /// Adds or replaces a child and returns the old one.
    pub fn insert(&mut self, name: impl Into<String>, node: Node) -> Option<Node> {
        self.children_mut().insert(name.into(), node)
    }

    /// Removes a child (with its subtree) and returns it.
    pub fn remove(&mut self, name: &str) -> Option<Node> {
        if !self.children.contains_key(name) {
            return None;
        }
        self.children_mut().remove(name)
    }

    pub fn len(&self) -> usize {
        self.children.len()
    }

    pub fn is_empty(&self) -> bool {
        self.children.is_empty()
    }

    /// The directory at the real (symlink-free) path `parts`, if every part exists as a
    /// directory.
    pub(crate) fn directory_at<S: AsRef<str>>(&self, parts: &[S]) -> Option<&Directory> {
        let mut dir = self;
        for part in parts {
            match dir.children.get(part.as_ref())? {
                Node::Directory(d) => dir = d,
                _ => return None,
            }
        }
        Some(dir)
    }

    /// The directory at the real path `parts`, creating missing parts as empty
    /// directories (copying shared ones on the way). Returns `None` if a part exists
    /// as a non-directory.
    pub(crate) fn make_directories<S: AsRef<str>>(
        &mut self,
        parts: &[S],
    ) -> Option<&mut Directory> {
        let mut dir = self;
        for part in parts {
            let node = dir
                .children_mut()
                .entry(part.as_ref().to_owned())
                .or_insert_with(Node::empty_directory);
            match node {
                Node::Directory(d) => dir = Arc::make_mut(d),
                _ => return None,
            }
        }
        Some(dir)
    }

    pub(crate) fn memo_slot(&self, function: DigestFunction) -> &OnceLock<Box<Memo>> {
        self.memos.slot(function)
    }
}

/// Dismantles deep trees iteratively: the default, recursive drop would use stack space
/// in proportion to the depth of the tree.
impl Drop for Directory {
    fn drop(&mut self) {
        let mut unowned: Vec<Arc<Directory>> = Vec::new();
        take_subdirectories(&mut self.children, &mut unowned);
        while let Some(d) = unowned.pop() {
            // Subtrees still shared with another tree are left to their other owners.
            if let Ok(mut d) = Arc::try_unwrap(d) {
                take_subdirectories(&mut d.children, &mut unowned);
            }
        }
    }
}

fn take_subdirectories(children: &mut BTreeMap<String, Node>, into: &mut Vec<Arc<Directory>>) {
    for node in std::mem::take(children).into_values() {
        if let Node::Directory(d) = node {
            into.push(d);
        }
    }
}

impl PartialEq for Directory {
    fn eq(&self, other: &Self) -> bool {
        self.children == other.children
    }
}

impl Eq for Directory {}

impl fmt::Debug for Directory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.children.iter()).finish()
    }
}

/// Joins a real path for messages; the root is ".".
pub(crate) fn display_path<S: AsRef<str>>(parts: &[S]) -> String {
    if parts.is_empty() {
        return ".".to_owned();
    }
    let mut s = String::new();
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            s.push('/');
        }
        s.push_str(p.as_ref());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Directory {
        /// The node at `path` ('/'-separated, relative, "" = none), without following any
        /// symlink.
        fn lookup(&self, path: &str) -> Option<&Node> {
            let mut parts = path.split('/').filter(|p| !p.is_empty()).peekable();
            let mut dir = self;
            while let Some(part) = parts.next() {
                let node = dir.children.get(part)?;
                if parts.peek().is_none() {
                    return Some(node);
                }
                match node {
                    Node::Directory(d) => dir = d,
                    _ => return None,
                }
            }
            None
        }
    }

    fn file(n: u8) -> Node {
        Node::File {
            digest: DigestFunction::Sha256.digest_of(&[n]),
            is_executable: false,
        }
    }

    #[test]
    fn copy_on_write_shares_untouched_subtrees() {
        let mut base = Directory::new();
        base.make_directories(&["a", "b"])
            .unwrap()
            .insert("f", file(1));
        base.make_directories(&["c"]).unwrap().insert("g", file(2));
        let mut copy = base.clone();
        copy.make_directories(&["a"])
            .unwrap()
            .insert("new", file(3));

        let (Some(Node::Directory(base_c)), Some(Node::Directory(copy_c))) =
            (base.get("c"), copy.get("c"))
        else {
            panic!("c should be a directory");
        };
        assert!(Arc::ptr_eq(base_c, copy_c));
        assert!(base.lookup("a/new").is_none());
        assert_eq!(copy.lookup("a/new"), Some(&file(3)));
        assert_eq!(copy.lookup("a/b/f"), Some(&file(1)));
    }

    #[test]
    fn lookup_does_not_follow_symlinks() {
        let mut root = Directory::new();
        root.make_directories(&["d"]).unwrap().insert("f", file(1));
        root.insert("l", Node::Symlink { target: "d".into() });
        assert!(root.lookup("l/f").is_none());
        assert_eq!(root.lookup("l").unwrap().kind(), NodeKind::Symlink);
        assert!(root.lookup("").is_none());
    }

    #[test]
    fn make_directories_stops_at_non_directories() {
        let mut root = Directory::new();
        root.insert("f", file(1));
        assert!(root.make_directories(&["f", "x"]).is_none());
        assert!(root.directory_at(&["f"]).is_none());
        assert!(root.directory_at::<&str>(&[]).is_some());
    }
}
