//! Canonical REAPI encoding of an in-memory tree (docs/design/directories.md#canonical-form, #message-size, docs/design/layers.md#what-is-lost, docs/design/directories.md
//! docs/design/directories.md#canonical-form, #digests): each `Directory` message holds three lists sorted by name bytes, no node
//! properties, and is hashed with the instance's digest function, leaves first.
//!
//! The encoding of each directory is memoised inside it (per digest function), so
//! encoding a tree that shares most subtrees with an already encoded one only hashes
//! the directories that changed. Memoisation is infallible; the checks that can fail
//! (names, message size) are made by [`encode`] as it walks the tree.

use super::directory::{display_path, Directory, Node};
use super::error::tree_error;
use crate::digest::DigestFunction;
use crate::proto::reapi;
use bytes::Bytes;
use prost::Message;
use std::collections::HashSet;
use tonic::Status;

/// Counts over a tree. Hard-linked files count once per name; `directories` does not
/// count the root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStatistics {
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// Sum of the sizes of all files.
    pub file_bytes: u64,
}

impl TreeStatistics {
    fn add(&mut self, other: &TreeStatistics) {
        self.files += other.files;
        self.directories += other.directories;
        self.symlinks += other.symlinks;
        self.file_bytes += other.file_bytes;
    }
}

/// The memoised canonical encoding of one directory.
#[derive(Clone, Debug)]
pub(crate) struct Memo {
    pub digest: reapi::Digest,
    pub bytes: Bytes,
    /// Statistics of the subtree below this directory.
    pub statistics: TreeStatistics,
}

/// A tree in canonical form.
#[derive(Clone, Debug)]
pub struct EncodedTree {
    /// Digest of the root `Directory`.
    pub root: reapi::Digest,
    /// Every distinct non-empty `Directory` message of the tree, children before their
    /// parents. The empty `Directory` (0 bytes) is left out: servers treat the empty
    /// blob as always present (docs/design/directories.md#digests).
    pub directories: Vec<(reapi::Digest, Bytes)>,
    pub statistics: TreeStatistics,
}

/// Encodes `tree` canonically. Fails with `InvalidName` if a name is not one valid path
/// part (docs/design/directories.md#canonical-form) or a symlink target is empty or holds a NUL (docs/design/layers.md#symlink-targets), and with
/// `DirectoryTooLarge` if a `Directory` message is larger than `max_message_size` bytes
/// (docs/design/directories.md#message-size); both name the directory's path.
pub fn encode(
    tree: &Directory,
    function: DigestFunction,
    max_message_size: usize,
) -> Result<EncodedTree, Status> {
    let root_memo = memo(tree, function);
    let mut seen = HashSet::new();
    let mut directories = Vec::new();
    let mut stack: Vec<(&Directory, Vec<&str>)> = vec![(tree, Vec::new())];
    while let Some((dir, path)) = stack.pop() {
        let m = memo(dir, function);
        if !seen.insert(&m.digest) {
            continue; // An identical subtree was checked and listed already.
        }
        check_directory(dir, &path, m, max_message_size)?;
        if !m.bytes.is_empty() {
            directories.push((m.digest.clone(), m.bytes.clone()));
        }
        for (name, node) in dir.children() {
            if let Node::Directory(child) = node {
                let mut child_path = path.clone();
                child_path.push(name);
                stack.push((child, child_path));
            }
        }
    }
    directories.reverse();
    Ok(EncodedTree {
        root: root_memo.digest.clone(),
        directories,
        statistics: root_memo.statistics,
    })
}

/// Every blob `tree` refers to: the digests of its `Directory` messages and of its
/// files, each once, for completeness checks with FindMissingBlobs (docs/design/directories.md#completeness).
/// Empty blobs are left out, as servers treat them as always present.
pub fn referenced_blobs(tree: &Directory, function: DigestFunction) -> Vec<reapi::Digest> {
    let mut seen: HashSet<reapi::Digest> = HashSet::new();
    let mut out = Vec::new();
    let mut stack = vec![tree];
    while let Some(dir) = stack.pop() {
        let m = memo(dir, function);
        if !seen.insert(m.digest.clone()) {
            continue;
        }
        if m.digest.size_bytes > 0 {
            out.push(m.digest.clone());
        }
        for node in dir.children().values() {
            match node {
                Node::Directory(child) => stack.push(child),
                Node::File { digest, .. } => {
                    if digest.size_bytes > 0 && seen.insert(digest.clone()) {
                        out.push(digest.clone());
                    }
                }
                Node::Symlink { .. } => {}
            }
        }
    }
    out
}

/// Why `name` cannot be a REAPI path part, if it cannot (docs/design/directories.md#canonical-form, #what-buildbarn-rejects).
pub(crate) fn invalid_name_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("is empty")
    } else if name == "." || name == ".." {
        Some("is a relative path reference")
    } else if name.contains('/') {
        Some("contains a slash")
    } else if name.contains('\0') {
        Some("contains a NUL byte")
    } else {
        None
    }
}

fn check_directory(
    dir: &Directory,
    path: &[&str],
    m: &Memo,
    max_message_size: usize,
) -> Result<(), Status> {
    for (name, node) in dir.children() {
        if let Some(reason) = invalid_name_reason(name) {
            return Err(tree_error(
                "InvalidName",
                format!(
                    "directory {:?} has a child named {:?}, which {reason}",
                    display_path(path),
                    name
                ),
            ));
        }
        if let Node::Symlink { target } = node {
            if target.is_empty() || target.contains('\0') {
                let mut p = path.to_vec();
                p.push(name);
                return Err(tree_error(
                    "InvalidName",
                    format!(
                        "symlink {:?} has the target {:?}, which is empty or contains a NUL byte",
                        display_path(&p),
                        target
                    ),
                ));
            }
        }
    }
    if m.bytes.len() > max_message_size {
        return Err(tree_error(
            "DirectoryTooLarge",
            format!(
                "directory {:?} with {} children encodes to {} bytes, more than the maximum message size of {} bytes",
                display_path(path),
                dir.len(),
                m.bytes.len(),
                max_message_size
            ),
        ));
    }
    Ok(())
}

/// The memoised encoding of `dir`, computing those of its subdirectories first. It is
/// iterative, so that very deep trees cannot overflow the stack.
pub(crate) fn memo(dir: &Directory, function: DigestFunction) -> &Memo {
    if let Some(m) = dir.memo_slot(function).get() {
        return m;
    }
    let mut stack = vec![(dir, dir.children().values())];
    while let Some((current, children)) = stack.last_mut() {
        let current = *current;
        let pending = children.find_map(|node| match node {
            Node::Directory(child) if child.memo_slot(function).get().is_none() => Some(&**child),
            _ => None,
        });
        match pending {
            Some(child) => stack.push((child, child.children().values())),
            None => {
                let computed = compute_memo(current, function);
                // Another thread may have won the race; both computed the same value.
                let _ = current.memo_slot(function).set(Box::new(computed));
                stack.pop();
            }
        }
    }
    dir.memo_slot(function).get().expect("memo was just set")
}

/// Encodes one directory whose subdirectories all have memos.
fn compute_memo(dir: &Directory, function: DigestFunction) -> Memo {
    let mut message = reapi::Directory::default();
    let mut statistics = TreeStatistics::default();
    // BTreeMap order is byte order, so each filtered list is sorted (docs/design/directories.md#canonical-form).
    for (name, node) in dir.children() {
        match node {
            Node::File {
                digest,
                is_executable,
            } => {
                statistics.files += 1;
                statistics.file_bytes += digest.size_bytes.max(0) as u64;
                message.files.push(reapi::FileNode {
                    name: name.clone(),
                    digest: Some(digest.clone()),
                    is_executable: *is_executable,
                    node_properties: None,
                });
            }
            Node::Directory(child) => {
                let child_memo = child
                    .memo_slot(function)
                    .get()
                    .expect("subdirectories are encoded first");
                statistics.directories += 1;
                statistics.add(&child_memo.statistics);
                message.directories.push(reapi::DirectoryNode {
                    name: name.clone(),
                    digest: Some(child_memo.digest.clone()),
                });
            }
            Node::Symlink { target } => {
                statistics.symlinks += 1;
                message.symlinks.push(reapi::SymlinkNode {
                    name: name.clone(),
                    target: target.clone(),
                    node_properties: None,
                });
            }
        }
    }
    let bytes = Bytes::from(message.encode_to_vec());
    Memo {
        digest: function.digest_of(&bytes),
        bytes,
        statistics,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const HELLO: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const F: DigestFunction = DigestFunction::Sha256;
    const MAX: usize = 2 * 1024 * 1024;

    fn hello() -> reapi::Digest {
        F.digest_of(b"hello")
    }

    fn dir_of(children: Vec<(&str, Node)>) -> Directory {
        let mut d = Directory::new();
        for (name, node) in children {
            d.insert(name, node);
        }
        d
    }

    fn file(digest: reapi::Digest, is_executable: bool) -> Node {
        Node::File {
            digest,
            is_executable,
        }
    }

    fn hex_with_hash(prefix: &str, hash: &str, suffix: &str) -> Vec<u8> {
        let mut v = hex::decode(prefix).unwrap();
        v.extend_from_slice(hash.as_bytes());
        v.extend_from_slice(&hex::decode(suffix).unwrap());
        v
    }

    #[test]
    fn v0_empty_directory() {
        let e = encode(&Directory::new(), F, MAX).unwrap();
        assert_eq!(e.root.hash, EMPTY);
        assert_eq!(e.root.size_bytes, 0);
        assert!(e.directories.is_empty());
        assert_eq!(e.statistics, TreeStatistics::default());
    }

    #[test]
    fn v1_one_file() {
        assert_eq!(hello().hash, HELLO);
        let tree = dir_of(vec![("hello.txt", file(hello(), false))]);
        let e = encode(&tree, F, MAX).unwrap();
        assert_eq!(
            e.root.hash,
            "27b56e362a98e98687491a4ccf45eb213df1f8ecc9c1ace7d38c5a07bd352e25"
        );
        assert_eq!(e.root.size_bytes, 83);
        assert_eq!(
            &e.directories[0].1[..],
            &hex_with_hash("0a510a0968656c6c6f2e74787412440a40", HELLO, "1005")[..]
        );
    }

    #[test]
    fn v2_executable_file() {
        let tree = dir_of(vec![("run", file(hello(), true))]);
        let e = encode(&tree, F, MAX).unwrap();
        assert_eq!(
            e.root.hash,
            "f066d2aada5a1187ec64d096c07fb187c218bd03766daf5861deddd20995ebb9"
        );
        assert_eq!(e.root.size_bytes, 79);
        assert_eq!(
            &e.directories[0].1[..],
            &hex_with_hash("0a4d0a0372756e12440a40", HELLO, "10052001")[..]
        );
    }

    #[test]
    fn v3_empty_node_properties_would_change_the_digest() {
        // We never emit V-3: node_properties stay unset (docs/design/directories.md#canonical-form). Check that V-1 differs
        // from the V-3 encoding, which prost produces with Some(default).
        let v3 = reapi::Directory {
            files: vec![reapi::FileNode {
                name: "hello.txt".into(),
                digest: Some(hello()),
                is_executable: false,
                node_properties: Some(Default::default()),
            }],
            ..Default::default()
        };
        let v3_digest = F.digest_of(&v3.encode_to_vec());
        assert_eq!(
            v3_digest.hash,
            "a25ab99ea7253ecec36a8ff98786cae79e66b271e17fcdf50c536220dcf21b4a"
        );
        assert_eq!(v3_digest.size_bytes, 85);
        let tree = dir_of(vec![("hello.txt", file(hello(), false))]);
        assert_ne!(encode(&tree, F, MAX).unwrap().root, v3_digest);
    }

    #[test]
    fn v4_all_three_lists() {
        let tree = dir_of(vec![
            (
                "lib",
                Node::Symlink {
                    target: "usr/lib".into(),
                },
            ),
            ("empty", Node::empty_directory()),
            ("e", file(F.empty_digest(), false)),
        ]);
        let e = encode(&tree, F, MAX).unwrap();
        assert_eq!(
            e.root.hash,
            "c63d89332ad6931fdc0e4f223c813b47c6fe9730d0bd7cae3f5cdb8788c773f4"
        );
        assert_eq!(e.root.size_bytes, 166);
        let mut expected = hex_with_hash("0a470a016512420a40", EMPTY, "");
        expected.extend(hex_with_hash("124b0a05656d70747912420a40", EMPTY, ""));
        expected.extend(hex::decode("1a0e0a036c696212077573722f6c6962").unwrap());
        // The empty subdirectory is not listed; only the root is.
        assert_eq!(e.directories.len(), 1);
        assert_eq!(&e.directories[0].1[..], &expected[..]);
        assert_eq!(
            e.statistics,
            TreeStatistics {
                files: 1,
                directories: 1,
                symlinks: 1,
                file_bytes: 0
            }
        );
    }

    #[test]
    fn v5_nested_directory() {
        let etc = dir_of(vec![("hello.txt", file(hello(), false))]);
        let tree = dir_of(vec![("etc", Node::Directory(Arc::new(etc)))]);
        let e = encode(&tree, F, MAX).unwrap();
        assert_eq!(
            e.root.hash,
            "1823f732b22ad30b7f5fc499cd13c6d289207f5ff164ea0185c9c4497c0b59a9"
        );
        assert_eq!(e.root.size_bytes, 77);
        assert_eq!(
            &e.directories[1].1[..],
            &hex_with_hash(
                "124b0a0365746312440a40",
                "27b56e362a98e98687491a4ccf45eb213df1f8ecc9c1ace7d38c5a07bd352e25",
                "1053"
            )[..]
        );
        // Children come before their parents.
        assert_eq!(e.directories[0].0.size_bytes, 83);
        assert_eq!(e.directories[1].0, e.root);
    }

    #[test]
    fn names_sort_by_bytes_in_each_list() {
        let tree = dir_of(vec![
            ("b", file(hello(), false)),
            ("\u{e000}", file(hello(), false)),
            ("\u{10000}", file(hello(), false)),
            ("B", file(hello(), false)),
            ("a", Node::empty_directory()),
        ]);
        let e = encode(&tree, F, MAX).unwrap();
        let message = reapi::Directory::decode(e.directories[0].1.clone()).unwrap();
        let names: Vec<_> = message.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["B", "b", "\u{e000}", "\u{10000}"]);
        assert_eq!(message.directories[0].name, "a");
    }

    #[test]
    fn identical_subtrees_are_listed_once() {
        let sub = dir_of(vec![("x", file(hello(), false))]);
        let tree = dir_of(vec![
            ("a", Node::Directory(Arc::new(sub.clone()))),
            ("b", Node::Directory(Arc::new(sub))),
        ]);
        let e = encode(&tree, F, MAX).unwrap();
        assert_eq!(e.directories.len(), 2);
        assert_eq!(e.statistics.files, 2);
        assert_eq!(e.statistics.file_bytes, 10);
        assert_eq!(e.statistics.directories, 2);
    }

    #[test]
    fn directory_too_large_names_the_path() {
        let mut big = Directory::new();
        for i in 0..100 {
            big.insert(format!("file{i:03}"), file(hello(), false));
        }
        let mut tree = Directory::new();
        tree.make_directories(&["usr"])
            .unwrap()
            .insert("lib", Node::Directory(Arc::new(big)));
        let err = encode(&tree, F, 1000).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            err.message(),
            "DirectoryTooLarge: directory \"usr/lib\" with 100 children encodes to 8100 bytes, \
             more than the maximum message size of 1000 bytes"
        );
        assert!(encode(&tree, F, 8100).is_ok());
        assert!(encode(&tree, F, 8099).is_err());
    }

    #[test]
    fn invalid_names_are_rejected() {
        let mut tree = Directory::new();
        tree.make_directories(&["a"])
            .unwrap()
            .insert("..", file(hello(), false));
        assert_eq!(
            encode(&tree, F, MAX).unwrap_err().message(),
            "InvalidName: directory \"a\" has a child named \"..\", which is a relative path reference"
        );
        let tree = dir_of(vec![("x/y", file(hello(), false))]);
        assert!(encode(&tree, F, MAX)
            .unwrap_err()
            .message()
            .starts_with("InvalidName: directory \".\""));
        let tree = dir_of(vec![(
            "s",
            Node::Symlink {
                target: String::new(),
            },
        )]);
        assert!(encode(&tree, F, MAX)
            .unwrap_err()
            .message()
            .starts_with("InvalidName: symlink \"s\""));
    }

    #[test]
    fn memo_is_forgotten_on_change_and_kept_by_shared_subtrees() {
        let mut tree = Directory::new();
        tree.make_directories(&["a", "b"])
            .unwrap()
            .insert("f", file(hello(), false));
        tree.make_directories(&["c"])
            .unwrap()
            .insert("g", file(hello(), true));
        let before = encode(&tree, F, MAX).unwrap().root;
        let mut copy = tree.clone();
        copy.make_directories(&["a", "b"])
            .unwrap()
            .insert("f", file(F.digest_of(b"x"), false));
        let changed = encode(&copy, F, MAX).unwrap().root;
        assert_ne!(before, changed);
        // The shared subtree kept its memo; the original tree is unchanged.
        assert!(copy
            .directory_at(&["c"])
            .unwrap()
            .memo_slot(F)
            .get()
            .is_some());
        assert_eq!(encode(&tree, F, MAX).unwrap().root, before);
        // Changing it back gives the original digest again.
        copy.make_directories(&["a", "b"])
            .unwrap()
            .insert("f", file(hello(), false));
        assert_eq!(encode(&copy, F, MAX).unwrap().root, before);
    }

    /// The canonical digest of the root `Directory` of `tree`, without the checks of
    /// [`encode`].
    fn root_digest(tree: &Directory, function: DigestFunction) -> reapi::Digest {
        memo(tree, function).digest.clone()
    }

    #[test]
    fn other_digest_functions() {
        let tree = dir_of(vec![("hello.txt", file(hello(), false))]);
        let a = root_digest(&tree, DigestFunction::Sha512);
        assert_eq!(a.hash.len(), 128);
        assert_ne!(root_digest(&tree, F).hash.len(), 128);
    }

    #[test]
    fn referenced_blobs_lists_directories_and_files_once() {
        let sub = dir_of(vec![
            ("x", file(hello(), false)),
            ("y", file(hello(), true)),
            ("z", file(F.empty_digest(), false)),
        ]);
        let tree = dir_of(vec![
            ("a", Node::Directory(Arc::new(sub.clone()))),
            ("b", Node::Directory(Arc::new(sub))),
            ("e", Node::empty_directory()),
        ]);
        let blobs = referenced_blobs(&tree, F);
        let e = encode(&tree, F, MAX).unwrap();
        assert_eq!(blobs.len(), 3);
        assert!(blobs.contains(&hello()));
        assert!(blobs.contains(&e.root));
        for (d, _) in &e.directories {
            assert!(blobs.contains(d));
        }
    }
}
