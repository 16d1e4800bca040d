//! The one place where blob store configuration becomes objects (bb-storage's
//! `new_blob_access.go`): a match over the oneof, recursing into nested backends.

use super::{
    ActionCache, ContentAddressableStorage, ExistenceCachingContentAddressableStorage,
    GrpcActionCache, GrpcContentAddressableStorage, MemoryActionCache,
    MemoryContentAddressableStorage, ReadCachingContentAddressableStorage,
};
use crate::config::blobstore::BlobAccessConfiguration;
use crate::grpc::client::new_channel_from_configuration;
use std::sync::Arc;

/// Creates the CAS described by `config`. Must be called within a Tokio runtime.
pub(crate) fn new_content_addressable_storage_from_configuration(
    config: &BlobAccessConfiguration,
    maximum_message_size_bytes: usize,
) -> Result<Arc<dyn ContentAddressableStorage>, String> {
    Ok(match config {
        BlobAccessConfiguration::Grpc(grpc) => Arc::new(GrpcContentAddressableStorage::new(
            new_channel_from_configuration(&grpc.client)?,
            maximum_message_size_bytes,
        )),
        BlobAccessConfiguration::Memory(memory) => Arc::new(MemoryContentAddressableStorage::new(
            memory.maximum_size_bytes,
        )),
        BlobAccessConfiguration::ReadCaching(rc) => {
            Arc::new(ReadCachingContentAddressableStorage::new(
                new_content_addressable_storage_from_configuration(
                    &rc.slow,
                    maximum_message_size_bytes,
                )
                .map_err(|e| format!("readCaching.slow: {e}"))?,
                new_content_addressable_storage_from_configuration(
                    &rc.fast,
                    maximum_message_size_bytes,
                )
                .map_err(|e| format!("readCaching.fast: {e}"))?,
            ))
        }
        BlobAccessConfiguration::ExistenceCaching(ec) => {
            Arc::new(ExistenceCachingContentAddressableStorage::new(
                new_content_addressable_storage_from_configuration(
                    &ec.backend,
                    maximum_message_size_bytes,
                )
                .map_err(|e| format!("existenceCaching.backend: {e}"))?,
                ec.existence_cache.cache_size as usize,
                ec.existence_cache.cache_duration,
            ))
        }
    })
}

/// Creates the Action Cache described by `config`.
pub(crate) fn new_action_cache_from_configuration(
    config: &BlobAccessConfiguration,
) -> Result<Arc<dyn ActionCache>, String> {
    Ok(match config {
        BlobAccessConfiguration::Grpc(grpc) => Arc::new(GrpcActionCache::new(
            new_channel_from_configuration(&grpc.client)?,
        )),
        BlobAccessConfiguration::Memory(memory) => {
            Arc::new(MemoryActionCache::new(memory.maximum_size_bytes))
        }
        BlobAccessConfiguration::ReadCaching(_) | BlobAccessConfiguration::ExistenceCaching(_) => {
            return Err(
                "readCaching and existenceCaching apply to the Content Addressable Storage only"
                    .into(),
            )
        }
    })
}
