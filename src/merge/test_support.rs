//! For the tests of this module: trees built in memory (with `crate::tree`'s test
//! builders), stored in an in-memory CAS and read back through [`Recording`], a source
//! that records what it reads, so tests can assert what a merge did not read.

use super::directory_source::{CasDirectorySource, DirectorySource};
use super::load::load_from;
use super::merger::{MergeOptions, MergePolicy, MergedTree};
use crate::blobstore::{ContentAddressableStorage, Instance, MemoryContentAddressableStorage};
use crate::digest::DigestFunction;
use crate::proto::cache::LayerEntry;
use crate::proto::reapi;
use crate::tree::test_support::*;
use crate::tree::{encode, Directory};
use async_trait::async_trait;
use parking_lot::Mutex;
use std::sync::Arc;
use tonic::Status;

pub(super) const MAX: usize = 1 << 20;

/// A CAS-backed source that records every digest it is asked for.
pub(super) struct Recording {
    inner: CasDirectorySource,
    pub(super) cas: Arc<MemoryContentAddressableStorage>,
    pub(super) reads: Mutex<Vec<reapi::Digest>>,
}

#[async_trait]
impl DirectorySource for Recording {
    async fn get_directory(&self, digest: &reapi::Digest) -> Result<Arc<reapi::Directory>, Status> {
        self.reads.lock().push(digest.clone());
        self.inner.get_directory(digest).await
    }

    fn digest_function(&self) -> DigestFunction {
        F
    }
}

impl Recording {
    pub(super) fn new() -> Self {
        let cas = Arc::new(MemoryContentAddressableStorage::new(1 << 24));
        Self {
            inner: CasDirectorySource::new(cas.clone(), instance()),
            cas,
            reads: Mutex::new(Vec::new()),
        }
    }

    /// Stores the tree the entries make (one layer) and returns its root digest.
    pub(super) async fn store(&self, entries: Vec<LayerEntry>) -> reapi::Digest {
        self.store_tree(&apply_all(vec![entries]).unwrap()).await
    }

    pub(super) async fn store_tree(&self, tree: &Directory) -> reapi::Digest {
        let encoded = encode(tree, F, MAX).unwrap();
        self.upload(encoded.directories).await;
        encoded.root
    }

    pub(super) async fn upload(&self, directories: Vec<(reapi::Digest, bytes::Bytes)>) {
        for (d, b) in directories {
            self.cas.put(&instance(), &d, b).await.unwrap();
        }
    }

    /// Uploads what a merge wrote and lists the merged tree.
    pub(super) async fn listing_of(&self, merged: &MergedTree) -> Vec<String> {
        self.upload(merged.directories.clone()).await;
        listing(&load_from(self, &merged.root).await.unwrap())
    }

    pub(super) fn forget_reads(&self) {
        self.reads.lock().clear();
    }

    pub(super) fn was_read(&self, digest: &reapi::Digest) -> bool {
        self.reads.lock().contains(digest)
    }
}

pub(super) fn instance() -> Instance {
    Instance::new("", F)
}

pub(super) fn strict() -> MergeOptions {
    MergeOptions {
        policy: MergePolicy::Strict,
        max_message_size: MAX,
    }
}

pub(super) fn input_wins() -> MergeOptions {
    MergeOptions {
        policy: MergePolicy::InputWins,
        max_message_size: MAX,
    }
}

pub(super) fn lines(expected: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

/// The digest of the directory at `path` in the in-memory tree the entries make.
pub(super) fn subtree_digest(entries: Vec<LayerEntry>, path: &str) -> reapi::Digest {
    let tree = apply_all(vec![entries]).unwrap();
    let parts: Vec<&str> = path.split('/').collect();
    encode(tree.directory_at(&parts).unwrap(), F, MAX)
        .unwrap()
        .root
}

pub(super) fn image() -> Vec<LayerEntry> {
    vec![
        exe("usr/bin/env", "env"),
        file("usr/lib/libc.so", "libc"),
        symlink("bin", "usr/bin"),
        file("etc/passwd", "root"),
        dir("workspace"),
    ]
}
