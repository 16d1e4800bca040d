//! Tags → the digest they name now, cached fleet-wide for `tag_ttl` under the
//! `resolve-tag` fake action and in this process. A tag resolved at the registry is kept
//! in this process at once (concurrent callers share one registry request), but recorded
//! in the Action Cache only by [`TagResolver::record`], which the caller invokes once the
//! image the tag names expanded: a tag whose image cannot be expanded leaves no record.
//! [`TagResolver::forget`] drops this process's resolution after such a failure, so that
//! a tag fixed at the registry is seen at once. This process keeps at most
//! [`LOCAL_TAGS`] resolutions, dropping the least recently used first.
//!
//! The record's blob is the text `{reference}@{digest}`, so that a record read back is
//! used only if it names the very reference it was looked up for and a well-formed
//! digest; any other record (corrupt, swapped, or written by an older version holding
//! the digest alone) is ignored, counted in `cache_records_rejected_total` and replaced
//! once the tag is resolved at the registry again. Recording is best-effort: a failed
//! write is logged and counted and does not fail the expansion.

use super::fake_action::{put_blob, read_record, write_record, FakeAction, Step};
use super::metrics;
use super::single_flight::SingleFlight;
use crate::blobstore::{ActionCache, ContentAddressableStorage, Instance};
use crate::config::container_images::DEFAULT_ABANDON_GRACE_PERIOD;
use crate::registry::{Reference, Registry};
use crate::util::bounded_cache::BoundedCache;
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tonic::{Code, Status};

type Key = (Instance, Reference);

/// Number of tag resolutions kept in this process; far more tags than a fleet uses at
/// once, and each is a few hundred bytes.
pub(crate) const LOCAL_TAGS: usize = 10_000;

/// Digests by tag, each until its resolution is `ttl` old.
type LocalTags = BoundedCache<Key, String>;

/// When a resolution made now, of age `age`, is no longer fresh (`None`: never, for a
/// `ttl` beyond the clock's range).
fn expiry(ttl: Duration, age: Duration) -> Option<Instant> {
    Instant::now().checked_add(ttl.saturating_sub(age))
}

/// Resolves tags through this process's cache, the Action Cache and the registry.
pub struct TagResolver {
    registry: Arc<dyn Registry>,
    cas: Arc<dyn ContentAddressableStorage>,
    ac: Arc<dyn ActionCache>,
    ttl: Duration,
    local: Arc<Mutex<LocalTags>>,
    flights: SingleFlight<Key, String>,
}

impl TagResolver {
    pub fn new(
        registry: Arc<dyn Registry>,
        cas: Arc<dyn ContentAddressableStorage>,
        ac: Arc<dyn ActionCache>,
        ttl: Duration,
    ) -> Self {
        Self {
            registry,
            cas,
            ac,
            ttl,
            local: Arc::new(Mutex::new(BoundedCache::with_max_entries(LOCAL_TAGS))),
            flights: SingleFlight::new("tag", DEFAULT_ABANDON_GRACE_PERIOD),
        }
    }

    /// Abandons a registry resolution once nobody waited for it for `grace` (default:
    /// [`DEFAULT_ABANDON_GRACE_PERIOD`]).
    pub fn abandoning_after(self, grace: Duration) -> Self {
        Self {
            flights: SingleFlight::new("tag", grace),
            ..self
        }
    }

    /// The digest `reference` names now: its own digest, or its tag resolved through the
    /// local cache, the Action Cache, or the registry. Also says whether this call
    /// started the registry's resolution of the tag and must [`record`](Self::record) it.
    pub async fn resolve(
        &self,
        instance: &Instance,
        reference: &Reference,
    ) -> Result<(String, bool), Status> {
        if let Some(digest) = reference.digest() {
            return Ok((digest.to_string(), false));
        }
        let key = (instance.clone(), reference.clone());
        if let Some(digest) = self.known(&key) {
            metrics::cache_lookup("tag_local", "hit");
            return Ok((digest, false));
        }
        metrics::cache_lookup("tag_local", "miss");
        if let Some(digest) = self.recorded(&key).await? {
            metrics::cache_lookup("tag", "hit");
            return Ok((digest, false));
        }
        metrics::cache_lookup("tag", "miss");
        let (registry, local) = (self.registry.clone(), self.local.clone());
        let ttl = self.ttl;
        let flight_key = key.clone();
        // Only the caller that asked the registry records the tag.
        self.flights
            .run_and_tell(key, async move {
                // A flight that ended just before this one started may have answered.
                if let Some(digest) = local.lock().get_unexpired(&flight_key, Instant::now()) {
                    return Ok(digest.clone());
                }
                let digest = registry.resolve(&flight_key.1).await?;
                local.lock().insert_until(
                    flight_key,
                    digest.clone(),
                    0,
                    expiry(ttl, Duration::ZERO),
                );
                Ok(digest)
            })
            .await
    }

    /// This process's resolution, if still fresh.
    fn known(&self, key: &Key) -> Option<String> {
        self.local
            .lock()
            .get_unexpired(key, Instant::now())
            .cloned()
    }

    /// A fresh resolution recorded in the Action Cache, also kept locally until the
    /// record expires.
    async fn recorded(&self, key: &Key) -> Result<Option<String>, Status> {
        let (instance, reference) = key;
        let action = FakeAction::new(instance, Step::ResolveTag, &[&reference.to_string()]);
        let Some(record) = read_record(&*self.ac, instance, &action).await? else {
            return Ok(None);
        };
        let age = record.age().filter(|age| *age < self.ttl);
        let (Some(age), Some(blob)) = (age, record.output("manifest-digest")) else {
            return Ok(None);
        };
        let data = match self.cas.get(instance, blob).await {
            Ok(data) => data,
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(s),
        };
        let digest = match parse_record(reference, &data) {
            Ok(digest) => digest,
            Err(reason) => {
                metrics::record_rejected(Step::ResolveTag.name(), "invalid");
                tracing::warn!(
                    "Ignoring resolve-tag record {} of instance {:?} for {reference}, which \
                     will be resolved again: {reason}",
                    crate::digest::display(&action.digest),
                    instance.name
                );
                return Ok(None);
            }
        };
        // Expire locally when the shared record expires.
        self.local
            .lock()
            .insert_until(key.clone(), digest.clone(), 0, expiry(self.ttl, age));
        Ok(Some(digest))
    }

    /// Records a tag resolved at the registry in the Action Cache. Best-effort: a
    /// failure is logged and counted, and only means the next process asks the
    /// registry again.
    pub async fn record(&self, instance: &Instance, reference: &Reference, digest: &str) {
        let key = FakeAction::new(instance, Step::ResolveTag, &[&reference.to_string()]);
        let result = async {
            let text = format!("{reference}@{digest}");
            let blob = put_blob(&*self.cas, instance, Bytes::from(text)).await?;
            let outputs = vec![("manifest-digest".into(), blob)];
            write_record(&*self.cas, &*self.ac, instance, &key, outputs).await
        }
        .await;
        metrics::record_write(Step::ResolveTag.name(), result.is_ok());
        if let Err(s) = result {
            tracing::warn!(
                "Failed to record the resolution of {reference} in instance {:?}: {}",
                instance.name,
                s.message()
            );
        }
    }

    /// Drops the local resolution of `reference` if it still names `digest`.
    pub(crate) fn forget(&self, instance: &Instance, reference: &Reference, digest: &str) {
        if reference.digest().is_some() {
            return;
        }
        let mut local = self.local.lock();
        let key = (instance.clone(), reference.clone());
        if local.peek(&key).is_some_and(|known| known == digest) {
            local.remove(&key);
        }
    }

    /// Drops every local resolution.
    pub(crate) fn forget_all(&self) {
        self.local.lock().clear();
    }
}

/// The digest a resolve-tag record of `reference` holds, or why it cannot be used.
fn parse_record(reference: &Reference, data: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(data).map_err(|_| "it is not UTF-8".to_string())?;
    let (named, digest) = text
        .rsplit_once('@')
        .ok_or_else(|| format!("{text:?} names no digest"))?;
    if named != reference.to_string() {
        return Err(format!("it resolves {named}, not {reference}"));
    }
    reference
        .with_digest(digest)
        .map_err(|s| s.message().to_string())?;
    Ok(digest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:4444444444444444444444444444444444444444444444444444444444444444";

    fn reference() -> Reference {
        Reference::parse("registry.example/team/app:v1").unwrap()
    }

    #[test]
    fn a_record_of_the_reference_yields_its_digest() {
        let text = format!("{}@{DIGEST}", reference());
        assert_eq!(parse_record(&reference(), text.as_bytes()).unwrap(), DIGEST);
    }

    #[test]
    fn records_of_other_references_or_without_a_valid_digest_are_refused() {
        let other = Reference::parse("registry.example/other/app:v1").unwrap();
        let cases = [
            (DIGEST.to_string(), "names no digest"),
            (format!("{other}@{DIGEST}"), "not docker://"),
            (format!("{}@sha256:abc", reference()), "Invalid digest"),
            (format!("{}@", reference()), "Invalid digest"),
            (String::new(), "names no digest"),
        ];
        for (text, reason) in cases {
            let error = parse_record(&reference(), text.as_bytes()).unwrap_err();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
        let error = parse_record(&reference(), &[0xff, 0xfe]).unwrap_err();
        assert!(error.contains("UTF-8"), "{error}");
    }
}
