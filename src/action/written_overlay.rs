//! The Directories one rewrite wrote, readable before they are uploaded. New
//! Directories (of stacked images and of the merge) go to the CAS in one batch at the
//! end of the rewrite; until then the steps that follow read them from here, whatever
//! the bounded local Directory cache keeps. They are also offered to that cache, for
//! later actions. The input root, read beside the Command, is served from here too.

use crate::digest::DigestFunction;
use crate::merge::DirectoryCache;
use crate::merge::DirectorySource;
use crate::proto::reapi;
use bytes::Bytes;
use prost::Message;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::Status;

/// A [`DirectorySource`] that serves the Directories one rewrite wrote (not yet in
/// the CAS) and reads all others from `inner`.
pub(crate) struct WrittenOverlay<'a> {
    written: HashMap<reapi::Digest, Arc<reapi::Directory>>,
    inner: &'a dyn DirectorySource,
    cache: &'a DirectoryCache,
}

impl<'a> WrittenOverlay<'a> {
    pub(crate) fn new(inner: &'a dyn DirectorySource, cache: &'a DirectoryCache) -> Self {
        Self {
            written: HashMap::new(),
            inner,
            cache,
        }
    }

    /// Serves `directory`, read already (the input root, read beside the Command),
    /// without reading it again.
    pub(crate) fn add_read(&mut self, digest: reapi::Digest, directory: Arc<reapi::Directory>) {
        self.written.insert(digest, directory);
    }

    /// Makes Directories written by a merge readable by the steps that follow and
    /// keeps them in the local cache for later actions.
    pub(crate) fn remember(
        &mut self,
        function: DigestFunction,
        directories: &[(reapi::Digest, Bytes)],
    ) {
        for (digest, bytes) in directories {
            if let Ok(directory) = reapi::Directory::decode(bytes.clone()) {
                let directory = Arc::new(directory);
                self.cache.insert(function, digest, directory.clone());
                self.written.insert(digest.clone(), directory);
            }
        }
    }
}

#[async_trait::async_trait]
impl DirectorySource for WrittenOverlay<'_> {
    async fn get_directory(&self, digest: &reapi::Digest) -> Result<Arc<reapi::Directory>, Status> {
        match self.written.get(digest) {
            Some(directory) => Ok(directory.clone()),
            None => self.inner.get_directory(digest).await,
        }
    }

    fn digest_function(&self) -> DigestFunction {
        self.inner.digest_function()
    }
}
