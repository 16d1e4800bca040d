//! Loading a whole tree from the CAS into memory, to use a cached image tree as the
//! lower tree of the next layer. Each distinct `Directory` is read once, a level of the
//! tree at a time with several reads in flight; identical subtrees end up shared
//! (one `Arc`) in memory.

use super::directory_source::{CasDirectorySource, DirectorySource};
use super::remote_directory::{directory_digest, entries, join, Entry};
use crate::blobstore::{ContentAddressableStorage, Instance};
use crate::proto::reapi;
use crate::tree::tree_error;
use crate::tree::{Directory, Node};
use futures::{StreamExt, TryStreamExt};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tonic::Status;

/// How many `Directory` reads are in flight at once.
const CONCURRENT_READS: usize = 32;

/// Loads the tree with root `root` from the CAS of `instance`.
pub async fn load(
    cas: Arc<dyn ContentAddressableStorage>,
    instance: Instance,
    root: &reapi::Digest,
) -> Result<Directory, Status> {
    load_from(&CasDirectorySource::new(cas, instance), root).await
}

/// Loads the tree with root `root` from `source`. Fails if a `Directory` is missing, or
/// has invalid or duplicate names (the error names its path).
pub async fn load_from(
    source: &dyn DirectorySource,
    root: &reapi::Digest,
) -> Result<Directory, Status> {
    // The first path each digest was seen at, for error messages.
    let mut paths: HashMap<reapi::Digest, String> = HashMap::new();
    let mut messages: HashMap<reapi::Digest, Arc<reapi::Directory>> = HashMap::new();
    paths.insert(root.clone(), ".".to_owned());
    let mut level = vec![root.clone()];
    while !level.is_empty() {
        let fetched: Vec<(reapi::Digest, Arc<reapi::Directory>)> = futures::stream::iter(level)
            .map(|digest| async move {
                let message = source.get_directory(&digest).await?;
                Ok::<_, Status>((digest, message))
            })
            .buffer_unordered(CONCURRENT_READS)
            .try_collect()
            .await?;
        let mut next = Vec::new();
        for (digest, message) in fetched {
            let path = paths[&digest].clone();
            for child in &message.directories {
                let child_digest = directory_digest(child, &join(&path, &child.name))?;
                if !paths.contains_key(child_digest) {
                    paths.insert(child_digest.clone(), join(&path, &child.name));
                    next.push(child_digest.clone());
                }
            }
            messages.insert(digest, message);
        }
        level = next;
    }
    let root = build(root, &messages, &paths)?;
    Ok(Arc::try_unwrap(root).unwrap_or_else(|shared| (*shared).clone()))
}

/// Builds the in-memory directories, children first (an explicit stack, so that deep
/// trees cannot overflow the thread's stack).
fn build(
    root: &reapi::Digest,
    messages: &HashMap<reapi::Digest, Arc<reapi::Directory>>,
    paths: &HashMap<reapi::Digest, String>,
) -> Result<Arc<Directory>, Status> {
    let mut built: HashMap<&reapi::Digest, Arc<Directory>> = HashMap::new();
    let mut in_progress: HashSet<&reapi::Digest> = HashSet::new();
    let mut stack: Vec<(&reapi::Digest, usize)> = vec![(root, 0)];
    in_progress.insert(root);
    while let Some((digest, next_child)) = stack.last_mut() {
        let digest = *digest;
        let message = &messages[digest];
        if let Some(child) = message.directories.get(*next_child) {
            *next_child += 1;
            let child = child.digest.as_ref().expect("checked while reading");
            if !built.contains_key(child) {
                if !in_progress.insert(child) {
                    return Err(tree_error(
                        "InvalidDirectory",
                        format!("directory {:?} contains itself", paths[child]),
                    ));
                }
                stack.push((child, 0));
            }
            continue;
        }
        let path = &paths[digest];
        let mut directory = Directory::new();
        for (name, entry) in entries(message, path)? {
            let node = match entry {
                Entry::File(f) => Node::File {
                    digest: f.digest.ok_or_else(|| {
                        tree_error(
                            "InvalidDirectory",
                            format!("file {:?} has no digest", join(path, &name)),
                        )
                    })?,
                    is_executable: f.is_executable,
                },
                Entry::Symlink(s) => Node::Symlink { target: s.target },
                Entry::Directory(d) => Node::Directory(
                    built[d.digest.as_ref().expect("checked while reading")].clone(),
                ),
            };
            directory.children_mut().insert(name, node);
        }
        in_progress.remove(digest);
        built.insert(digest, Arc::new(directory));
        stack.pop();
    }
    Ok(built.remove(root).expect("the root was built"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobstore::MemoryContentAddressableStorage;
    use crate::digest::DigestFunction;
    use crate::tree::encode;

    const F: DigestFunction = DigestFunction::Sha256;

    async fn store(cas: &MemoryContentAddressableStorage, tree: &Directory) -> reapi::Digest {
        let inst = Instance::new("", F);
        let e = encode(tree, F, 1 << 20).unwrap();
        for (d, b) in e.directories {
            cas.put(&inst, &d, b).await.unwrap();
        }
        e.root
    }

    fn sample() -> Directory {
        let mut t = Directory::new();
        let f = |n: &[u8], x| Node::File {
            digest: F.digest_of(n),
            is_executable: x,
        };
        t.make_directories(&["usr", "bin"])
            .unwrap()
            .insert("env", f(b"env", true));
        t.make_directories(&["usr", "lib"])
            .unwrap()
            .insert("a", f(b"a", false));
        t.make_directories(&["opt", "lib"])
            .unwrap()
            .insert("a", f(b"a", false));
        t.make_directories(&["empty"]).unwrap();
        t.insert(
            "bin",
            Node::Symlink {
                target: "usr/bin".into(),
            },
        );
        t
    }

    #[tokio::test]
    async fn round_trips_and_shares_identical_subtrees() {
        let cas = Arc::new(MemoryContentAddressableStorage::new(1 << 20));
        let tree = sample();
        let root = store(&cas, &tree).await;
        let loaded = load(cas.clone(), Instance::new("", F), &root)
            .await
            .unwrap();
        assert_eq!(loaded, tree);
        assert_eq!(encode(&loaded, F, 1 << 20).unwrap().root, root);
        let (Some(Node::Directory(a)), Some(Node::Directory(b))) = (
            loaded.directory_at(&["usr"]).unwrap().get("lib"),
            loaded.directory_at(&["opt"]).unwrap().get("lib"),
        ) else {
            panic!("expected directories");
        };
        assert!(Arc::ptr_eq(a, b));
    }

    #[tokio::test]
    async fn missing_directory_is_not_found() {
        let cas = Arc::new(MemoryContentAddressableStorage::new(1 << 20));
        let tree = sample();
        let root = store(&cas, &tree).await;
        let usr = encode(tree.directory_at(&["usr"]).unwrap(), F, 1 << 20)
            .unwrap()
            .root;
        assert!(cas.remove(&Instance::new("", F), &usr));
        let err = load(cas, Instance::new("", F), &root).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
        assert!(err.message().starts_with("Failed to read Directory"));
    }

    #[tokio::test]
    async fn duplicate_names_are_rejected() {
        let cas = Arc::new(MemoryContentAddressableStorage::new(1 << 20));
        let inst = Instance::new("", F);
        let inner = reapi::Directory {
            files: vec![reapi::FileNode {
                name: "x".into(),
                digest: Some(F.empty_digest()),
                ..Default::default()
            }],
            symlinks: vec![reapi::SymlinkNode {
                name: "x".into(),
                target: "y".into(),
                node_properties: None,
            }],
            ..Default::default()
        };
        let inner_digest = crate::blobstore::put_message(cas.as_ref(), &inst, &inner)
            .await
            .unwrap();
        let outer = reapi::Directory {
            directories: vec![reapi::DirectoryNode {
                name: "d".into(),
                digest: Some(inner_digest),
            }],
            ..Default::default()
        };
        let root = crate::blobstore::put_message(cas.as_ref(), &inst, &outer)
            .await
            .unwrap();
        let err = load(cas, inst, &root).await.unwrap_err();
        assert_eq!(
            err.message(),
            "DuplicateName: directory \"d\" has more than one child named \"x\""
        );
    }
}
