//! Directories a chroot runner and common tools expect (`/dev`, `/proc`, `/sys`,
//! `/tmp`, …), added empty to a merged tree that lacks them
//! (docs/design/directories.md#required-directories).
//!
//! A path that resolves to a directory (through symlinks inside the tree, such as
//! `var/run -> ../run`) is left alone. A missing one is added, with any missing parents,
//! as an empty directory; only the Directories on its path are written again. A path
//! whose place is taken by a file, or by a symlink that does not lead to a directory,
//! is an error (`RequiredDirectoryBlocked`): the runner could not mount or use it.

use super::checks::{is_directory_following, DirectoryLookup};
use super::directory_source::DirectorySource;
use super::remote_directory::{canonical, client_path_parts, directory_digest, entries, Entry};
use crate::digest::DigestFunction;
use crate::proto::reapi;
use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::Status;

/// A tree with the required directories.
#[derive(Debug, Default)]
pub struct WithDirectories {
    /// The new root (the old one when nothing was added).
    pub root: reapi::Digest,
    /// Directories written, to be uploaded.
    pub directories: Vec<(reapi::Digest, Bytes)>,
    /// The paths added, as configured (e.g. "/tmp").
    pub added: Vec<String>,
}

/// `root` with every directory of `paths` (absolute or relative to the root) present.
pub async fn add_required_directories(
    source: &dyn DirectorySource,
    root: &reapi::Digest,
    paths: &[String],
) -> Result<WithDirectories, Status> {
    let source = &WrittenHere {
        inner: source,
        written: Mutex::new(HashMap::new()),
    };
    let mut result = WithDirectories {
        root: root.clone(),
        ..Default::default()
    };
    for path in paths {
        let parts = client_path_parts(path, "required directory")?;
        if parts.is_empty() {
            continue;
        }
        match is_directory_following(source, &result.root, &parts.join("/")).await? {
            DirectoryLookup::Directory => continue,
            DirectoryLookup::Missing => {}
            DirectoryLookup::Other(what) => {
                return Err(blocked(path, &format!("it {what}")));
            }
        }
        let mut written = Vec::new();
        let new_root = add(source, &result.root, &parts, path, &mut written).await?;
        source.remember(&written);
        result.root = new_root;
        result.directories.extend(written);
        result.added.push(path.clone());
    }
    Ok(result)
}

/// `inner`, with the Directories written by earlier paths readable.
struct WrittenHere<'a> {
    inner: &'a dyn DirectorySource,
    written: Mutex<HashMap<reapi::Digest, Arc<reapi::Directory>>>,
}

impl WrittenHere<'_> {
    fn remember(&self, directories: &[(reapi::Digest, Bytes)]) {
        let mut written = self.written.lock();
        for (digest, bytes) in directories {
            if let Ok(directory) = <reapi::Directory as prost::Message>::decode(bytes.clone()) {
                written.insert(digest.clone(), Arc::new(directory));
            }
        }
    }
}

#[async_trait]
impl DirectorySource for WrittenHere<'_> {
    async fn get_directory(&self, digest: &reapi::Digest) -> Result<Arc<reapi::Directory>, Status> {
        if let Some(directory) = self.written.lock().get(digest) {
            return Ok(directory.clone());
        }
        self.inner.get_directory(digest).await
    }

    fn digest_function(&self) -> DigestFunction {
        self.inner.digest_function()
    }
}

fn blocked(path: &str, why: &str) -> Status {
    Status::failed_precondition(format!(
        "RequiredDirectoryBlocked: required directory {path:?} cannot be added: {why}"
    ))
}

/// The Directory `digest` with `parts` added below it (the parts that exist must be
/// directories, not symlinks: a path through a symlink that exists was found above).
fn add<'a>(
    source: &'a dyn DirectorySource,
    digest: &'a reapi::Digest,
    parts: &'a [&'a str],
    path: &'a str,
    written: &'a mut Vec<(reapi::Digest, Bytes)>,
) -> BoxFuture<'a, Result<reapi::Digest, Status>> {
    Box::pin(async move {
        let function = source.digest_function();
        let directory = source.get_directory(digest).await?;
        let mut children = entries(&directory, path)?;
        let (first, rest) = parts.split_first().expect("a part to add");
        let child = match children.get(*first) {
            None => empty_chain(function, rest, written),
            Some(Entry::Directory(d)) => {
                let d = directory_digest(d, first)?.clone();
                if rest.is_empty() {
                    return Ok(digest.clone());
                }
                add(source, &d, rest, path, written).await?
            }
            Some(other) => {
                return Err(blocked(path, &format!("{first:?} is a {}", other.kind())));
            }
        };
        children.insert(
            first.to_string(),
            Entry::Directory(reapi::DirectoryNode {
                name: first.to_string(),
                digest: Some(child),
            }),
        );
        let message = canonical(children, directory.node_properties.clone());
        let (new, bytes) = crate::digest::encode_message(function, &message);
        written.push((new.clone(), bytes));
        Ok(new)
    })
}

/// Empty directories nested as `parts` (none: the empty Directory, which is not
/// written: it is the empty blob).
fn empty_chain(
    function: DigestFunction,
    parts: &[&str],
    written: &mut Vec<(reapi::Digest, Bytes)>,
) -> reapi::Digest {
    let mut digest = function.empty_digest();
    for part in parts.iter().rev() {
        let message = reapi::Directory {
            directories: vec![reapi::DirectoryNode {
                name: part.to_string(),
                digest: Some(digest),
            }],
            ..Default::default()
        };
        let (new, bytes) = crate::digest::encode_message(function, &message);
        written.push((new.clone(), bytes));
        digest = new;
    }
    digest
}
