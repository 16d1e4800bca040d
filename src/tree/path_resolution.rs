//! Resolving the parent part of a layer entry's path in the in-memory tree with chroot
//! semantics (docs/design/layers.md#parent-resolution): symlinks are followed inside the image root, an
//! absolute target starts again at the root, `..` at the root stays at the root, and
//! parts that do not exist (also below a dangling symlink) are treated as directories
//! still to be created. More than [`MAX_SYMLINK_HOPS`] symlinks → `TooManySymlinks`.
//!
//! Resolution does not change the tree. It yields the *real* path (no symlinks in it),
//! which callers then create (`Directory::make_directories`) or look up.

use super::directory::{Directory, Node, NodeKind};

/// The most symlinks one resolution may follow (containerd's `RootPath` limit).
pub const MAX_SYMLINK_HOPS: usize = 255;

/// Where a directory path resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RealPath {
    /// The symlink-free path of the directory, relative to the root.
    pub parts: Vec<String>,
    /// How many leading parts exist (as directories); the others are missing.
    pub existing: usize,
}

impl RealPath {
    pub fn exists(&self) -> bool {
        self.existing == self.parts.len()
    }

    /// The real path of `name` inside this directory.
    pub fn child(&self, name: &str) -> Vec<String> {
        let mut p = self.parts.clone();
        p.push(name.to_owned());
        p
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResolveError {
    /// The walk met a file (never a directory) at this real path.
    NotADirectory {
        path: Vec<String>,
        kind: NodeKind,
    },
    TooManySymlinks,
}

/// Resolves `parts` (already normalised, every part a directory to enter) starting at
/// `root`, following every symlink met, including one in the last part.
pub(crate) fn resolve_directory<'a>(
    root: &'a Directory,
    parts: &[&'a str],
) -> Result<RealPath, ResolveError> {
    // Existing directories on the way (dirs[0] is the root) and the real path; parts of
    // `names` beyond `dirs.len() - 1` do not exist.
    let mut dirs: Vec<&'a Directory> = vec![root];
    let mut names: Vec<&'a str> = Vec::new();
    let mut pending: Vec<&'a str> = parts.iter().rev().copied().collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        match part {
            "" | "." => {}
            ".." => {
                if names.len() >= dirs.len() {
                    names.pop(); // a missing part
                } else if names.pop().is_some() {
                    dirs.pop();
                } // `..` at the root stays at the root.
            }
            _ if names.len() >= dirs.len() => names.push(part), // below a missing part
            _ => match current(&dirs).get(part) {
                None => names.push(part),
                Some(Node::Directory(d)) => {
                    dirs.push(d);
                    names.push(part);
                }
                Some(Node::Symlink { target }) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(ResolveError::TooManySymlinks);
                    }
                    if target.starts_with('/') {
                        dirs.truncate(1);
                        names.clear();
                    }
                    pending.extend(target.split('/').rev());
                }
                Some(node @ Node::File { .. }) => {
                    let mut path: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
                    path.push(part.to_owned());
                    return Err(ResolveError::NotADirectory {
                        path,
                        kind: node.kind(),
                    });
                }
            },
        }
    }
    Ok(RealPath {
        existing: dirs.len() - 1,
        parts: names.into_iter().map(str::to_owned).collect(),
    })
}

fn current<'a>(dirs: &[&'a Directory]) -> &'a Directory {
    dirs.last().expect("the root is never popped")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    fn symlink(target: &str) -> Node {
        Node::Symlink {
            target: target.into(),
        }
    }

    fn tree() -> Directory {
        let mut root = Directory::new();
        root.make_directories(&["usr", "lib"]).unwrap();
        root.make_directories(&["etc"]).unwrap();
        root.insert("lib", symlink("usr/lib"));
        root.insert("abs", symlink("/etc"));
        root.insert("escape", symlink("../../../etc"));
        root.insert("dangling", symlink("/x/y"));
        root.insert("loop", symlink("loop"));
        root.make_directories(&["usr"])
            .unwrap()
            .insert("up", symlink("../etc/"));
        root.insert(
            "f",
            Node::File {
                digest: DigestFunction::Sha256.empty_digest(),
                is_executable: false,
            },
        );
        root
    }

    fn real(parts: &[&str], existing: usize) -> RealPath {
        RealPath {
            parts: parts.iter().map(|s| s.to_string()).collect(),
            existing,
        }
    }

    #[test]
    fn follows_relative_absolute_and_escaping_symlinks() {
        let t = tree();
        assert_eq!(
            resolve_directory(&t, &["lib"]).unwrap(),
            real(&["usr", "lib"], 2)
        );
        assert_eq!(resolve_directory(&t, &["abs"]).unwrap(), real(&["etc"], 1));
        assert_eq!(
            resolve_directory(&t, &["escape"]).unwrap(),
            real(&["etc"], 1)
        );
        assert_eq!(
            resolve_directory(&t, &["usr", "up"]).unwrap(),
            real(&["etc"], 1)
        );
        assert_eq!(resolve_directory(&t, &[]).unwrap(), real(&[], 0));
    }

    #[test]
    fn missing_parts_and_dangling_symlinks_become_directories_to_create() {
        let t = tree();
        assert_eq!(
            resolve_directory(&t, &["dangling", "z"]).unwrap(),
            real(&["x", "y", "z"], 0)
        );
        assert_eq!(
            resolve_directory(&t, &["usr", "new", "deeper"]).unwrap(),
            real(&["usr", "new", "deeper"], 1)
        );
        // `..` after a missing part goes back to where it was.
        assert_eq!(
            resolve_directory(&t, &["usr", "new", "..", "lib"]).unwrap(),
            real(&["usr", "lib"], 2)
        );
    }

    #[test]
    fn files_and_loops_are_errors() {
        let t = tree();
        assert_eq!(
            resolve_directory(&t, &["f", "x"]).unwrap_err(),
            ResolveError::NotADirectory {
                path: vec!["f".into()],
                kind: NodeKind::File
            }
        );
        assert_eq!(
            resolve_directory(&t, &["loop"]).unwrap_err(),
            ResolveError::TooManySymlinks
        );
    }

    #[test]
    fn hop_limit_is_exactly_255() {
        let mut root = Directory::new();
        root.make_directories(&["end"]).unwrap();
        // s0 -> s1 -> ... -> s{n-1} -> end: resolving s0 takes n hops.
        let chain = |root: &mut Directory, n: usize| {
            for i in 0..n {
                let target = if i + 1 == n {
                    "end".to_string()
                } else {
                    format!("s{}", i + 1)
                };
                root.insert(format!("s{i}"), symlink(&target));
            }
        };
        chain(&mut root, 255);
        assert_eq!(
            resolve_directory(&root, &["s0"]).unwrap(),
            real(&["end"], 1)
        );
        chain(&mut root, 256);
        assert_eq!(
            resolve_directory(&root, &["s0"]).unwrap_err(),
            ResolveError::TooManySymlinks
        );
    }
}
