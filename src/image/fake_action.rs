//! The Action Cache as a key-value store (docs/how-it-works.md, "Caching"): each cached
//! step is keyed by the digest of a "fake" Action whose Command can never be a client's:
//! `bb-container-expander <step> <format version> <arguments…>`, run nowhere. The step
//! names and the format version are part of the key, so a change of record format
//! simply stops old entries from being found.
//!
//! Values are ActionResults whose `output_files` point at blobs in the CAS (records of
//! ours, see proto/bb_container_expander/cache.proto). An entry is written only after
//! everything it points to is in the CAS. The fake Action and Command are stored in the
//! CAS as well, so that tools like bb_browser can show what an entry is.

use crate::blobstore::{put_message, ActionCache, ContentAddressableStorage, Instance};
use crate::proto::protobuf::Timestamp;
use crate::proto::reapi;
use bytes::Bytes;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::{Code, Status};

/// Version of the record formats. Bump it whenever a record's meaning changes.
pub(crate) const FORMAT_VERSION: &str = "v1";

/// First argument of every fake Command.
pub(crate) const PROGRAM: &str = "bb-container-expander";

/// The cached steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A tag → the manifest (or index) digest it named, with the time of resolution.
    ResolveTag,
    /// A layer blob → its changeset.
    IngestLayer,
    /// A chain of layers → the merged tree.
    ApplyLayers,
    /// A pinned image reference and platform → the merged tree.
    ExpandImage,
    /// A rewritten action → the client's action (for results written back later).
    RewrittenAction,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::ResolveTag => "resolve-tag",
            Step::IngestLayer => "ingest-layer",
            Step::ApplyLayers => "apply-layers",
            Step::ExpandImage => "expand-image",
            Step::RewrittenAction => "rewritten-action",
        }
    }
}

/// A cache key: the fake Action of one step with its arguments.
#[derive(Clone, Debug)]
pub struct FakeAction {
    pub step: Step,
    pub command: reapi::Command,
    pub action: reapi::Action,
    pub digest: reapi::Digest,
}

impl FakeAction {
    pub fn new(instance: &Instance, step: Step, arguments: &[&str]) -> Self {
        let mut argv = vec![
            PROGRAM.to_string(),
            step.name().to_string(),
            FORMAT_VERSION.to_string(),
        ];
        argv.extend(arguments.iter().map(|a| a.to_string()));
        let command = reapi::Command {
            arguments: argv,
            ..Default::default()
        };
        let function = instance.digest_function;
        let (command_digest, _) = crate::digest::encode_message(function, &command);
        let action = reapi::Action {
            command_digest: Some(command_digest),
            input_root_digest: Some(function.empty_digest()),
            // A platform no worker advertises, in case anyone ever tries to run it.
            platform: Some(reapi::Platform {
                properties: vec![reapi::platform::Property {
                    name: PROGRAM.to_string(),
                    value: FORMAT_VERSION.to_string(),
                }],
            }),
            do_not_cache: false,
            ..Default::default()
        };
        let (digest, _) = crate::digest::encode_message(function, &action);
        Self {
            step,
            command,
            action,
            digest,
        }
    }
}

/// A record read back from the Action Cache.
#[derive(Clone, Debug)]
pub(crate) struct CachedRecord {
    /// The named outputs and their digests.
    pub outputs: Vec<(String, reapi::Digest)>,
    /// When the entry was written.
    pub written: Option<SystemTime>,
}

impl CachedRecord {
    pub fn output(&self, name: &str) -> Option<&reapi::Digest> {
        self.outputs.iter().find(|(n, _)| n == name).map(|(_, d)| d)
    }

    /// Age of the entry; `None` when it carries no time.
    pub(crate) fn age(&self) -> Option<Duration> {
        self.written
            .and_then(|w| SystemTime::now().duration_since(w).ok())
    }
}

/// Reads the record of `key`; `Ok(None)` when there is none.
pub(crate) async fn read_record(
    ac: &dyn ActionCache,
    instance: &Instance,
    key: &FakeAction,
) -> Result<Option<CachedRecord>, Status> {
    let result = match ac.get_action_result(instance, &key.digest).await {
        Ok(r) => r,
        Err(s) if s.code() == Code::NotFound => return Ok(None),
        Err(s) => {
            return Err(crate::status::wrap(
                s,
                format!(
                    "Failed to read {} record from the Action Cache",
                    key.step.name()
                ),
            ))
        }
    };
    let written = result
        .execution_metadata
        .as_ref()
        .and_then(|m| m.worker_completed_timestamp.as_ref())
        .map(|t| UNIX_EPOCH + Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32));
    Ok(Some(CachedRecord {
        outputs: result
            .output_files
            .into_iter()
            .filter_map(|f| f.digest.map(|d| (f.path, d)))
            .collect(),
        written,
    }))
}

/// Writes the record of `key`, whose outputs must already be in the CAS.
pub(crate) async fn write_record(
    cas: &dyn ContentAddressableStorage,
    ac: &dyn ActionCache,
    instance: &Instance,
    key: &FakeAction,
    outputs: Vec<(String, reapi::Digest)>,
) -> Result<(), Status> {
    let context = || format!("Failed to write {} record", key.step.name());
    put_message(cas, instance, &key.command)
        .await
        .map_err(|s| crate::status::wrap(s, context()))?;
    put_message(cas, instance, &key.action)
        .await
        .map_err(|s| crate::status::wrap(s, context()))?;
    write_record_entry(ac, instance, key, outputs).await
}

/// The fake Command and Action of `key`, encoded: what [`write_record`] stores in the
/// CAS before the entry, for a caller that uploads them with other blobs.
pub(crate) fn record_blobs(instance: &Instance, key: &FakeAction) -> Vec<(reapi::Digest, Bytes)> {
    let function = instance.digest_function;
    vec![
        crate::digest::encode_message(function, &key.command),
        crate::digest::encode_message(function, &key.action),
    ]
}

/// Writes the Action Cache entry of `key` only: its outputs and the blobs of
/// [`record_blobs`] must already be in the CAS.
pub(crate) async fn write_record_entry(
    ac: &dyn ActionCache,
    instance: &Instance,
    key: &FakeAction,
    outputs: Vec<(String, reapi::Digest)>,
) -> Result<(), Status> {
    let context = || format!("Failed to write {} record", key.step.name());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let timestamp = Timestamp {
        seconds: now.as_secs() as i64,
        nanos: now.subsec_nanos() as i32,
    };
    let result = reapi::ActionResult {
        output_files: outputs
            .into_iter()
            .map(|(path, digest)| reapi::OutputFile {
                path,
                digest: Some(digest),
                ..Default::default()
            })
            .collect(),
        execution_metadata: Some(reapi::ExecutedActionMetadata {
            worker: PROGRAM.to_string(),
            worker_completed_timestamp: Some(timestamp),
            ..Default::default()
        }),
        ..Default::default()
    };
    ac.put_action_result(instance, &key.digest, result)
        .await
        .map_err(|s| crate::status::wrap(s, context()))
}

/// Stores `data` in the CAS and returns its digest.
pub(crate) async fn put_blob(
    cas: &dyn ContentAddressableStorage,
    instance: &Instance,
    data: Bytes,
) -> Result<reapi::Digest, Status> {
    let digest = instance.digest_function.digest_of(&data);
    cas.put(instance, &digest, data).await?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobstore::{MemoryActionCache, MemoryContentAddressableStorage};
    use crate::digest::DigestFunction;

    #[test]
    fn keys_depend_on_step_arguments_and_instance_digest_function() {
        let sha256 = Instance::new("", DigestFunction::Sha256);
        let a = FakeAction::new(&sha256, Step::IngestLayer, &["sha256:aa"]);
        let b = FakeAction::new(&sha256, Step::IngestLayer, &["sha256:bb"]);
        let c = FakeAction::new(&sha256, Step::ApplyLayers, &["sha256:aa"]);
        let d = FakeAction::new(
            &Instance::new("", DigestFunction::Sha512),
            Step::IngestLayer,
            &["sha256:aa"],
        );
        assert_ne!(a.digest, b.digest);
        assert_ne!(a.digest, c.digest);
        assert_ne!(a.digest.hash.len(), d.digest.hash.len());
        assert_eq!(
            a.command.arguments,
            vec!["bb-container-expander", "ingest-layer", "v1", "sha256:aa"]
        );
    }

    #[tokio::test]
    async fn records_round_trip_with_their_time() {
        let instance = Instance::new("x", DigestFunction::Sha256);
        let cas = MemoryContentAddressableStorage::new(1 << 20);
        let ac = MemoryActionCache::new(1 << 20);
        let key = FakeAction::new(
            &instance,
            Step::ResolveTag,
            &["docker.io/library/debian:12"],
        );
        assert!(read_record(&ac, &instance, &key).await.unwrap().is_none());
        let blob = put_blob(&cas, &instance, Bytes::from_static(b"sha256:1234"))
            .await
            .unwrap();
        write_record(
            &cas,
            &ac,
            &instance,
            &key,
            vec![("manifest-digest".into(), blob.clone())],
        )
        .await
        .unwrap();
        let record = read_record(&ac, &instance, &key).await.unwrap().unwrap();
        assert_eq!(record.output("manifest-digest"), Some(&blob));
        assert!(record.age().unwrap() < Duration::from_secs(60));
        // The fake Command is in the CAS for inspection.
        assert!(cas
            .find_missing(&instance, vec![key.action.command_digest.clone().unwrap()])
            .await
            .unwrap()
            .is_empty());
    }
}
