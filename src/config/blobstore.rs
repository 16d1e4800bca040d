//! `blobstore`: where the CAS and the Action Cache live, in the shapes of bb-storage's
//! `BlobAccessConfiguration` (a oneof: exactly one key per backend).
//!
//! There is no `sharding` backend: the expander must place blobs exactly where the
//! workers will look for them, so in a sharded deployment point `grpc` at a bb_storage
//! frontend, which shards with Buildbarn's own algorithm.

use super::grpc::ClientConfiguration;
use super::protojson;
use serde::Deserialize;
use std::time::Duration;

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BlobstoreConfiguration {
    /// Must be the CAS the scheduler and workers use: the rewritten Action, Command and
    /// Directories are uploaded there.
    pub content_addressable_storage: BlobAccessConfiguration,
    /// Holds the expander's cache entries and the results written back under clients'
    /// action digests.
    pub action_cache: BlobAccessConfiguration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum BlobAccessConfiguration {
    /// A bb_storage (or any REAPI) server.
    Grpc(GrpcBlobAccessConfiguration),
    /// Embedded, in process, lost at exit. The default for local use and tests.
    Memory(MemoryBlobAccessConfiguration),
    /// Reads from `fast`, falling back to `slow` and copying what it read into `fast`;
    /// writes go to `slow`.
    ReadCaching(ReadCachingBlobAccessConfiguration),
    /// Remembers for `cacheDuration` which blobs exist, to skip FindMissingBlobs calls.
    ExistenceCaching(ExistenceCachingBlobAccessConfiguration),
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcBlobAccessConfiguration {
    pub client: ClientConfiguration,
    /// Accepted for compatibility; compression is not used.
    #[serde(default)]
    pub enable_compression: bool,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryBlobAccessConfiguration {
    /// Least recently used blobs are evicted beyond this size.
    #[serde(deserialize_with = "protojson::uint64")]
    pub maximum_size_bytes: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReadCachingBlobAccessConfiguration {
    pub slow: Box<BlobAccessConfiguration>,
    pub fast: Box<BlobAccessConfiguration>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExistenceCachingBlobAccessConfiguration {
    pub backend: Box<BlobAccessConfiguration>,
    pub existence_cache: CacheConfiguration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CacheConfiguration {
    #[serde(deserialize_with = "protojson::uint64")]
    pub cache_size: u64,
    #[serde(deserialize_with = "protojson::duration")]
    pub cache_duration: Duration,
    /// Accepted for compatibility; eviction is least recently used.
    #[serde(default)]
    pub cache_replacement_policy: Option<String>,
}
