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
    /// Least recently used blobs are evicted beyond this size. Unset or 0 (protobuf's
    /// "unset", as elsewhere in Buildbarn configurations) means
    /// [`DEFAULT_MEMORY_MAXIMUM_SIZE_BYTES`], so `memory: {}` is a complete backend.
    #[serde(
        default = "default_memory_maximum_size_bytes",
        deserialize_with = "memory_maximum_size_bytes"
    )]
    pub maximum_size_bytes: u64,
}

/// The size of a `memory` backend whose `maximumSizeBytes` is unset: 4 GiB.
///
/// The memory backend is the embedded default (`configs/local.jsonnet` and `expand`
/// without `--config` use it) on a developer's machine or a small pod, where 16 GiB of
/// RAM is typical: a quarter of that holds the files of a few toolchain images
/// (docs/operations.md counts about 1 GiB per 1 GiB uncompressed image) while leaving
/// the rest to the build. The bound is not reserved: memory is taken only as blobs
/// arrive. Beyond it the least recently used blobs are evicted, and the completeness
/// checks of the image caches re-ingest what an eviction removed. The same default
/// serves the Action Cache, whose records are kilobytes and never come near it.
pub const DEFAULT_MEMORY_MAXIMUM_SIZE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

fn default_memory_maximum_size_bytes() -> u64 {
    DEFAULT_MEMORY_MAXIMUM_SIZE_BYTES
}

fn memory_maximum_size_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Ok(match protojson::uint64(d)? {
        0 => DEFAULT_MEMORY_MAXIMUM_SIZE_BYTES,
        n => n,
    })
}

impl Default for MemoryBlobAccessConfiguration {
    /// `memory: {}`.
    fn default() -> Self {
        Self {
            maximum_size_bytes: DEFAULT_MEMORY_MAXIMUM_SIZE_BYTES,
        }
    }
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
