//! [`DirectorySource`]: where lazily loaded trees read their `Directory` messages from.
//! [`CasDirectorySource`] reads them from the CAS of one instance; a caching decorator
//! (a local LRU of decoded messages) can wrap any source without the tree code knowing.

use crate::blobstore::{get_message, ContentAddressableStorage, Instance};
use crate::digest::DigestFunction;
use crate::proto::reapi;
use crate::status::StatusContext;
use async_trait::async_trait;
use std::sync::Arc;
use tonic::Status;

/// Reads `Directory` messages by digest.
#[async_trait]
pub trait DirectorySource: Send + Sync {
    /// The `Directory` with `digest`. A missing one is NOT_FOUND.
    async fn get_directory(&self, digest: &reapi::Digest) -> Result<Arc<reapi::Directory>, Status>;

    /// The digest function of the digests this source is asked for (and of the
    /// `Directory` messages made from what it returns).
    fn digest_function(&self) -> DigestFunction;
}

/// Reads `Directory` messages from the CAS of one instance.
#[derive(Clone)]
pub struct CasDirectorySource {
    cas: Arc<dyn ContentAddressableStorage>,
    instance: Instance,
}

impl CasDirectorySource {
    pub fn new(cas: Arc<dyn ContentAddressableStorage>, instance: Instance) -> Self {
        Self { cas, instance }
    }
}

#[async_trait]
impl DirectorySource for CasDirectorySource {
    async fn get_directory(&self, digest: &reapi::Digest) -> Result<Arc<reapi::Directory>, Status> {
        if digest.size_bytes == 0 {
            // The empty Directory encodes to the empty blob, which always exists.
            return Ok(Arc::new(reapi::Directory::default()));
        }
        let directory: reapi::Directory = get_message(self.cas.as_ref(), &self.instance, digest)
            .await
            .context_with(|| {
                format!(
                    "Failed to read Directory {}",
                    crate::digest::display(digest)
                )
            })?;
        Ok(Arc::new(directory))
    }

    fn digest_function(&self) -> DigestFunction {
        self.instance.digest_function
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobstore::MemoryContentAddressableStorage;

    const F: DigestFunction = DigestFunction::Sha256;

    #[tokio::test]
    async fn cas_source_reads_the_empty_directory_without_a_request() {
        let cas: Arc<dyn ContentAddressableStorage> =
            Arc::new(MemoryContentAddressableStorage::new(1024));
        let source = CasDirectorySource::new(cas, Instance::new("", F));
        let empty = source.get_directory(&F.empty_digest()).await.unwrap();
        assert_eq!(*empty, reapi::Directory::default());
        let missing = source
            .get_directory(&F.digest_of(b"not there"))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
    }
}
