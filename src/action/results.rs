//! Results of rewritten actions, as the client must see them.
//!
//! The scheduler and worker know only the rewritten action. Each operation relayed to
//! the client gets `ExecuteOperationMetadata.action_digest` mapped back to the client's
//! digest; the final ActionResult gets the expansion's provenance in
//! `ExecutedActionMetadata.auxiliary_metadata`; and a successful, cacheable result is
//! written to the Action Cache under the client's digest too, so that its next
//! GetActionResult hits (the worker wrote it under the rewritten digest only).
//!
//! The mapping rewritten → original is kept in memory and as an Action Cache record (a
//! fake action of step `rewritten-action`) under the request's own instance name, so
//! that an operation that completes through WaitExecution on another replica, or after
//! a restart, is mapped all the same: the operation name handed to the client carries
//! the instance name (see `service::operation_names`).
//!
//! Both the mapping record and the write-back are bookkeeping: they never decide the
//! outcome of the client's action. A failed write is logged and counted in
//! `buildbarn_container_expander_bookkeeping_writes_total`, and the action goes on.

use crate::blobstore::{
    get_message, put_message, ActionCache, ContentAddressableStorage, Instance,
};
use crate::digest::DigestFunction;
use crate::image::fake_action::{
    read_record, record_blobs, write_record, write_record_entry, FakeAction, Step,
};
use crate::proto::cache::ExpansionProvenance;
use crate::proto::longrunning::{operation, Operation};
use crate::proto::protobuf::Any;
use crate::proto::reapi;
use crate::util::bounded_cache::BoundedCache;
use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message;
use std::sync::Arc;
use tonic::{Code, Status};

const EXECUTE_OPERATION_METADATA: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteOperationMetadata";
const EXECUTE_RESPONSE: &str =
    "type.googleapis.com/build.bazel.remote.execution.v2.ExecuteResponse";
const PROVENANCE: &str = "type.googleapis.com/bb_container_expander.cache.ExpansionProvenance";

/// Number of mappings kept in memory.
const LOCAL_MAPPINGS: usize = 100_000;

/// Provenance by rewritten action digest, the first recorded evicted first: lookups
/// peek, and recording a digest again replaces its provenance in place.
type LocalMappings = BoundedCache<String, Arc<ExpansionProvenance>>;

pub struct ResultMapper {
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Arc<dyn ActionCache>,
    write_back: bool,
    local: Mutex<LocalMappings>,
}

fn mapping_key(
    instance_name: &str,
    rewritten: &reapi::Digest,
) -> Result<(Instance, FakeAction), Status> {
    let function = DigestFunction::from_request(0, &rewritten.hash)?;
    let instance = Instance::new(instance_name, function);
    let key = FakeAction::new(
        &instance,
        Step::RewrittenAction,
        &[&crate::digest::display(rewritten)],
    );
    Ok((instance, key))
}

impl ResultMapper {
    pub fn new(
        cas: Arc<dyn ContentAddressableStorage>,
        ac: Arc<dyn ActionCache>,
        write_back: bool,
    ) -> Self {
        Self {
            cas,
            ac,
            write_back,
            local: Mutex::new(BoundedCache::with_max_entries(LOCAL_MAPPINGS)),
        }
    }

    fn remember(&self, rewritten: &reapi::Digest, provenance: Arc<ExpansionProvenance>) {
        let mut local = self.local.lock();
        let key = crate::digest::display(rewritten);
        if let Some(known) = local.peek_mut(&key) {
            *known = provenance;
        } else {
            local.insert(key, provenance, 0);
        }
    }

    /// Records that `provenance.rewritten_action_digest` stands for the client's action,
    /// in memory and in the Action Cache of `provenance.instance_name`. Never fails: a
    /// failed write is logged and counted, and only WaitExecution on another replica (or
    /// after a restart) loses the mapping.
    pub async fn record(&self, provenance: &ExpansionProvenance) {
        let Some(rewritten) = provenance.rewritten_action_digest.clone() else {
            tracing::error!("Provenance without rewritten action digest: not recorded");
            return;
        };
        self.remember(&rewritten, Arc::new(provenance.clone()));
        let result = async {
            let (instance, key) = mapping_key(&provenance.instance_name, &rewritten)?;
            let blob = put_message(&*self.cas, &instance, provenance).await?;
            write_record(
                &*self.cas,
                &*self.ac,
                &instance,
                &key,
                vec![("provenance".into(), blob)],
            )
            .await
        }
        .await;
        self.counted_mapping_write(&rewritten, provenance, result);
    }

    /// Counts a write of the mapping record, and logs a failed one.
    fn counted_mapping_write(
        &self,
        rewritten: &reapi::Digest,
        provenance: &ExpansionProvenance,
        result: Result<(), Status>,
    ) {
        crate::image::metrics::bookkeeping_write("mapping", result.is_ok());
        if let Err(status) = result {
            tracing::warn!(
                "Failed to record rewritten action {} of instance {:?} (WaitExecution on \
                 another replica will not map its result back): {}",
                crate::digest::display(rewritten),
                provenance.instance_name,
                status.message()
            );
        }
    }

    /// The blobs of the mapping record of `provenance` (the provenance message, the
    /// fake action's Command and Action), for the rewrite to upload with the rewritten
    /// action's own blobs, so that [`Self::record_entry`] has only the Action Cache
    /// entry left to write.
    pub(crate) fn mapping_blobs(
        provenance: &ExpansionProvenance,
    ) -> Result<Vec<(reapi::Digest, Bytes)>, Status> {
        let rewritten = provenance
            .rewritten_action_digest
            .as_ref()
            .ok_or_else(|| Status::internal("Provenance without rewritten action digest"))?;
        let (instance, key) = mapping_key(&provenance.instance_name, rewritten)?;
        let mut blobs = vec![crate::digest::encode_message(
            instance.digest_function,
            provenance,
        )];
        blobs.extend(record_blobs(&instance, &key));
        Ok(blobs)
    }

    /// As [`Self::record`], when the blobs of [`Self::mapping_blobs`] are in the CAS
    /// already: one UpdateActionResult.
    pub async fn record_entry(&self, provenance: &ExpansionProvenance) {
        let Some(rewritten) = provenance.rewritten_action_digest.clone() else {
            tracing::error!("Provenance without rewritten action digest: not recorded");
            return;
        };
        self.remember(&rewritten, Arc::new(provenance.clone()));
        let result = async {
            let (instance, key) = mapping_key(&provenance.instance_name, &rewritten)?;
            let (blob, _) = crate::digest::encode_message(instance.digest_function, provenance);
            write_record_entry(
                &*self.ac,
                &instance,
                &key,
                vec![("provenance".into(), blob)],
            )
            .await
        }
        .await;
        self.counted_mapping_write(&rewritten, provenance, result);
    }

    /// The provenance of a rewritten action of `instance_name`, if it was rewritten by
    /// any replica.
    pub(crate) async fn lookup(
        &self,
        instance_name: &str,
        rewritten: &reapi::Digest,
    ) -> Result<Option<Arc<ExpansionProvenance>>, Status> {
        if let Some(p) = self.local.lock().peek(&crate::digest::display(rewritten)) {
            if p.instance_name == instance_name {
                return Ok(Some(p.clone()));
            }
        }
        let Ok((instance, key)) = mapping_key(instance_name, rewritten) else {
            return Ok(None);
        };
        let Some(record) = read_record(&*self.ac, &instance, &key).await? else {
            return Ok(None);
        };
        let Some(blob) = record.output("provenance") else {
            return Ok(None);
        };
        match get_message::<ExpansionProvenance>(&*self.cas, &instance, blob).await {
            Ok(p) => {
                let p = Arc::new(p);
                self.remember(rewritten, p.clone());
                Ok(Some(p))
            }
            Err(s) if s.code() == Code::NotFound => Ok(None),
            Err(s) => Err(s),
        }
    }

    /// The rewritten action digest an operation's metadata names, if any.
    pub(crate) fn action_digest_of(operation: &Operation) -> Option<reapi::Digest> {
        let metadata = operation.metadata.as_ref()?;
        if metadata.type_url != EXECUTE_OPERATION_METADATA {
            return None;
        }
        reapi::ExecuteOperationMetadata::decode(metadata.value.as_slice())
            .ok()?
            .action_digest
    }

    /// Maps one operation of a rewritten action back to the client's action, and
    /// writes a final successful result back under the client's digest.
    pub(crate) async fn map_operation(
        &self,
        operation: Operation,
        provenance: &ExpansionProvenance,
    ) -> Operation {
        let operation = self.map_back(operation, provenance);
        self.write_back_result(&operation, provenance).await;
        operation
    }

    /// Maps one operation of a rewritten action back to the client's action: the
    /// client's digest in its metadata, the provenance in a final result's metadata.
    pub(crate) fn map_back(
        &self,
        mut operation: Operation,
        provenance: &ExpansionProvenance,
    ) -> Operation {
        let original = provenance.original_action_digest.clone();
        if let Some(metadata) = operation.metadata.as_mut() {
            if metadata.type_url == EXECUTE_OPERATION_METADATA {
                if let Ok(mut m) =
                    reapi::ExecuteOperationMetadata::decode(metadata.value.as_slice())
                {
                    if original.is_some() {
                        m.action_digest = original.clone();
                    }
                    metadata.value = m.encode_to_vec();
                }
            }
        }
        if let Some(operation::Result::Response(any)) = operation.result.as_mut() {
            if any.type_url == EXECUTE_RESPONSE {
                if let Ok(mut response) = reapi::ExecuteResponse::decode(any.value.as_slice()) {
                    if let Some(result) = response.result.as_mut() {
                        let metadata = result
                            .execution_metadata
                            .get_or_insert_with(Default::default);
                        metadata.auxiliary_metadata.push(Any {
                            type_url: PROVENANCE.into(),
                            value: provenance.encode_to_vec(),
                        });
                    }
                    any.value = response.encode_to_vec();
                }
            }
        }
        operation
    }

    /// Writes the result of `operation` (mapped back by [`Self::map_back`]) under the
    /// client's digest, if it is a final, successful, cacheable one.
    pub(crate) async fn write_back_result(
        &self,
        operation: &Operation,
        provenance: &ExpansionProvenance,
    ) {
        if let Some(operation::Result::Response(any)) = &operation.result {
            if any.type_url == EXECUTE_RESPONSE {
                if let Ok(response) = reapi::ExecuteResponse::decode(any.value.as_slice()) {
                    self.write_back(&response, provenance).await;
                }
            }
        }
    }

    async fn write_back(
        &self,
        response: &reapi::ExecuteResponse,
        provenance: &ExpansionProvenance,
    ) {
        let succeeded = response.status.as_ref().is_none_or(|s| s.code == 0);
        let Some(result) = &response.result else {
            return;
        };
        let Some(original) = &provenance.original_action_digest else {
            return;
        };
        if !self.write_back || !succeeded || result.exit_code != 0 || provenance.do_not_cache {
            return;
        }
        let Ok(function) = DigestFunction::from_request(0, &original.hash) else {
            return;
        };
        let instance = Instance::new(provenance.instance_name.clone(), function);
        match self
            .ac
            .put_action_result(&instance, original, result.clone())
            .await
        {
            Ok(()) => crate::image::metrics::bookkeeping_write("write_back", true),
            Err(s) => {
                crate::image::metrics::bookkeeping_write("write_back", false);
                tracing::warn!(
                    "Failed to write the result of action {} back under the client's digest \
                     in instance {:?}: {}",
                    crate::digest::display(original),
                    provenance.instance_name,
                    s.message()
                )
            }
        }
    }
}
