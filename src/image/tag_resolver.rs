//! Tags → the digest they name now, cached fleet-wide for `tag_ttl` under the
//! `resolve-tag` fake action and in this process. A tag resolved at the registry is kept
//! in this process at once (concurrent callers share one registry request), but recorded
//! in the Action Cache only by [`TagResolver::record`], which the caller invokes once the
//! image the tag names expanded: a tag whose image cannot be expanded leaves no record.
//! [`TagResolver::forget`] drops this process's resolution after such a failure, so that
//! a tag fixed at the registry is seen at once. [`TagResolver::refresh`] takes a
//! resolution made elsewhere (by the prewarmer) as fresh. This process keeps at most
//! [`LOCAL_TAGS`] resolutions, dropping the least recently used first.
//!
//! The record's blob is the text `{reference}@{digest}`, so that a record read back is
//! used only if it names the very reference it was looked up for and a well-formed
//! digest; any other record (corrupt, swapped, or written by an older version holding
//! the digest alone) is ignored, counted in `cache_records_rejected_total` and replaced
//! once the tag is resolved at the registry again. Recording is best-effort: a failed
//! write is logged and counted and does not fail the expansion.
//!
//! When the registry fails to resolve a tag transiently (`UNAVAILABLE`: down, 5xx,
//! timeouts, dropped connections; `RESOURCE_EXHAUSTED`: rate limited), the tag may be
//! served stale: with `stale_tag_grace` above zero, the last digest it was seen to name
//! (resolved at the registry by this process, or read from a resolve-tag record, fresh
//! or expired, that passes the checks above) is returned if that resolution is younger
//! than the grace, counted from when it was made (the record's write time). Such an
//! answer is logged, counted in `tag_resolutions_served_stale_total{registry}`, and
//! neither recorded nor kept as a fresh resolution: the next caller asks the registry
//! again. Other errors (`NOT_FOUND`, `PERMISSION_DENIED`, …) are never answered stale.
//! This process remembers at most [`LOCAL_TAGS`] last digests, apart from its fresh
//! resolutions; [`TagResolver::forget`] leaves them alone (they say what the tag named,
//! not whether its image is usable).

use super::fake_action::{put_blob, read_record, write_record, FakeAction, Step};
use super::metrics;
use super::single_flight::SingleFlight;
use crate::blobstore::{ActionCache, ContentAddressableStorage, Instance};
use crate::config::container_images::DEFAULT_ABANDON_GRACE_PERIOD;
use crate::registry::configuration::normalize_host;
use crate::registry::{Reference, Registry};
use crate::util::bounded_cache::BoundedCache;
use bytes::Bytes;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tonic::{Code, Status};

type Key = (Instance, Reference);

/// Number of tag resolutions kept in this process; far more tags than a fleet uses at
/// once, and each is a few hundred bytes.
pub(crate) const LOCAL_TAGS: usize = 10_000;

/// Digests by tag, each until its resolution is `ttl` old.
type LocalTags = BoundedCache<Key, String>;

/// The last digest a tag was seen to name, and when that resolution was made.
#[derive(Clone, Debug)]
struct LastDigest {
    digest: String,
    resolved_at: SystemTime,
}

/// Last digests by tag, for serving stale ones; at most [`LOCAL_TAGS`] of them.
type LastDigests = BoundedCache<Key, LastDigest>;

/// A tag's digest as a flight answers it.
#[derive(Clone)]
struct Resolution {
    digest: String,
    /// Served stale because the registry failed: not to be recorded.
    stale: bool,
}

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
    flights: SingleFlight<Key, Resolution>,
    /// How long a resolution may be served stale; zero: never.
    stale_tag_grace: Duration,
    last: Arc<Mutex<LastDigests>>,
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
            stale_tag_grace: Duration::ZERO,
            last: Arc::new(Mutex::new(BoundedCache::with_max_entries(LOCAL_TAGS))),
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

    /// Serves a tag's last digest for `grace` after its resolution when the registry
    /// fails transiently (the default, zero: never).
    pub fn serving_stale_for(self, grace: Duration) -> Self {
        Self {
            stale_tag_grace: grace,
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
        let (registry, local, last) =
            (self.registry.clone(), self.local.clone(), self.last.clone());
        let (ttl, stale_tag_grace) = (self.ttl, self.stale_tag_grace);
        let flight_key = key.clone();
        // Only the caller that asked the registry records the tag, unless it was
        // answered stale.
        let (resolution, started) = self
            .flights
            .run_and_tell(key, async move {
                // A flight that ended just before this one started may have answered.
                if let Some(digest) = local.lock().get_unexpired(&flight_key, Instant::now()) {
                    return Ok(Resolution {
                        digest: digest.clone(),
                        stale: false,
                    });
                }
                let error = match registry.resolve(&flight_key.1).await {
                    Ok(digest) => {
                        remember(&last, &flight_key, &digest, SystemTime::now());
                        local.lock().insert_until(
                            flight_key,
                            digest.clone(),
                            0,
                            expiry(ttl, Duration::ZERO),
                        );
                        return Ok(Resolution {
                            digest,
                            stale: false,
                        });
                    }
                    Err(error) => error,
                };
                match serve_stale(&last, &flight_key, stale_tag_grace, &error) {
                    Some(digest) => Ok(Resolution {
                        digest,
                        stale: true,
                    }),
                    None => Err(error),
                }
            })
            .await?;
        Ok((resolution.digest, started && !resolution.stale))
    }

    /// This process's resolution, if still fresh.
    fn known(&self, key: &Key) -> Option<String> {
        self.local
            .lock()
            .get_unexpired(key, Instant::now())
            .cloned()
    }

    /// A fresh resolution recorded in the Action Cache, also kept locally until the
    /// record expires. A record that expired but is younger than the stale tag grace
    /// is only remembered as the tag's last digest.
    async fn recorded(&self, key: &Key) -> Result<Option<String>, Status> {
        let (instance, reference) = key;
        let action = FakeAction::new(instance, Step::ResolveTag, &[&reference.to_string()]);
        let Some(record) = read_record(&*self.ac, instance, &action).await? else {
            return Ok(None);
        };
        // A record without its write time is neither fresh nor stale.
        let age = record
            .age()
            .filter(|age| *age < self.ttl.max(self.stale_tag_grace));
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
        if let Some(resolved_at) = SystemTime::now().checked_sub(age) {
            remember(&self.last, key, &digest, resolved_at);
        }
        if age >= self.ttl {
            return Ok(None);
        }
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

    /// Takes `digest` as `reference`'s resolution made now at the registry by someone
    /// else (the prewarmer, once the image expanded): kept in this process for the tag
    /// TTL and recorded in the Action Cache, so that the fleet's next resolutions of the
    /// tag name `digest` without asking the registry.
    pub async fn refresh(&self, instance: &Instance, reference: &Reference, digest: &str) {
        if reference.digest().is_some() {
            return;
        }
        let key = (instance.clone(), reference.clone());
        remember(&self.last, &key, digest, SystemTime::now());
        self.local.lock().insert_until(
            key,
            digest.to_string(),
            0,
            expiry(self.ttl, Duration::ZERO),
        );
        self.record(instance, reference, digest).await;
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

/// Remembers that `key` named `digest` at `resolved_at`, unless a later resolution is
/// remembered already.
fn remember(last: &Mutex<LastDigests>, key: &Key, digest: &str, resolved_at: SystemTime) {
    let mut last = last.lock();
    if last
        .peek(key)
        .is_some_and(|known| known.resolved_at > resolved_at)
    {
        return;
    }
    let value = LastDigest {
        digest: digest.to_string(),
        resolved_at,
    };
    last.insert(key.clone(), value, 0);
}

/// The last digest of `key` if the registry's `error` is transient and that digest was
/// resolved less than `grace` ago; logged and counted.
fn serve_stale(
    last: &Mutex<LastDigests>,
    key: &Key,
    grace: Duration,
    error: &Status,
) -> Option<String> {
    if grace.is_zero() || !matches!(error.code(), Code::Unavailable | Code::ResourceExhausted) {
        return None;
    }
    let known = last.lock().get(key).cloned()?;
    let age = SystemTime::now()
        .duration_since(known.resolved_at)
        .unwrap_or_default();
    if age >= grace {
        return None;
    }
    let (instance, reference) = key;
    metrics::tag_served_stale(&normalize_host(reference.registry()));
    tracing::warn!(
        "Serving {reference} in instance {:?} as {}, resolved {:.0}s ago, because its \
         registry failed: {}",
        instance.name,
        known.digest,
        age.as_secs_f64(),
        error.message()
    );
    Some(known.digest)
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

    mod stale {
        use super::super::*;
        use super::DIGEST;
        use crate::image::fake_registry::FakeRegistry;
        use crate::image::fake_source::Stores;

        const HOUR: Duration = Duration::from_secs(3600);

        /// A resolver whose resolutions are never fresh (no tag TTL), so that each asks
        /// the registry.
        fn resolver(stores: &Stores, registry: &Arc<FakeRegistry>, grace: Duration) -> TagResolver {
            TagResolver::new(
                registry.clone(),
                stores.cas.clone(),
                stores.ac.clone(),
                Duration::ZERO,
            )
            .serving_stale_for(grace)
        }

        /// A tag of `host`, a registry of its own for each test's metrics.
        fn tag(host: &str) -> Reference {
            Reference::parse(&format!("{host}/team/app:v1")).unwrap()
        }

        #[tokio::test]
        async fn without_a_grace_a_failing_registry_fails_the_resolution() {
            let (stores, registry) = (Stores::new(), Arc::new(FakeRegistry::new()));
            let tags = resolver(&stores, &registry, Duration::ZERO);
            let reference = tag("no-grace.example");
            registry.resolve_to(Ok(DIGEST.into()));
            tags.resolve(&stores.instance, &reference).await.unwrap();
            registry.resolve_to(Err(Status::unavailable("Registry down")));
            let err = tags
                .resolve(&stores.instance, &reference)
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unavailable);
            assert_eq!(metrics::tags_served_stale("no-grace.example"), 0);
        }

        #[tokio::test]
        async fn within_the_grace_a_transient_failure_serves_the_last_digest_unrecorded() {
            let (stores, registry) = (Stores::new(), Arc::new(FakeRegistry::new()));
            let tags = resolver(&stores, &registry, HOUR);
            let reference = tag("stale.example");
            registry.resolve_to(Ok(DIGEST.into()));
            assert_eq!(
                tags.resolve(&stores.instance, &reference).await.unwrap(),
                (DIGEST.to_string(), true)
            );
            for error in [
                Status::unavailable("Registry down"),
                Status::resource_exhausted("Too many requests"),
            ] {
                registry.resolve_to(Err(error));
                // Served, and not to be recorded by the caller.
                assert_eq!(
                    tags.resolve(&stores.instance, &reference).await.unwrap(),
                    (DIGEST.to_string(), false)
                );
            }
            assert_eq!(registry.resolves(), 3);
            assert_eq!(metrics::tags_served_stale("stale.example"), 2);
        }

        #[tokio::test]
        async fn other_failures_are_not_served_stale() {
            let (stores, registry) = (Stores::new(), Arc::new(FakeRegistry::new()));
            let tags = resolver(&stores, &registry, HOUR);
            let reference = tag("not-stale.example");
            registry.resolve_to(Ok(DIGEST.into()));
            tags.resolve(&stores.instance, &reference).await.unwrap();
            for error in [
                Status::not_found("Tag unknown"),
                Status::permission_denied("Credentials refused"),
                Status::invalid_argument("Bad reference"),
            ] {
                let code = error.code();
                registry.resolve_to(Err(error));
                let err = tags
                    .resolve(&stores.instance, &reference)
                    .await
                    .unwrap_err();
                assert_eq!(err.code(), code);
            }
            assert_eq!(metrics::tags_served_stale("not-stale.example"), 0);
        }

        #[tokio::test]
        async fn a_digest_older_than_the_grace_is_not_served() {
            let (stores, registry) = (Stores::new(), Arc::new(FakeRegistry::new()));
            let tags = resolver(&stores, &registry, HOUR);
            let reference = tag("too-old.example");
            let key = (stores.instance.clone(), reference.clone());
            let long_ago = SystemTime::now() - 2 * HOUR;
            remember(&tags.last, &key, DIGEST, long_ago);
            registry.resolve_to(Err(Status::unavailable("Registry down")));
            let err = tags
                .resolve(&stores.instance, &reference)
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unavailable);
        }

        #[tokio::test]
        async fn an_expired_record_serves_another_process_within_the_grace() {
            let (stores, registry) = (Stores::new(), Arc::new(FakeRegistry::new()));
            let reference = tag("expired-record.example");
            resolver(&stores, &registry, Duration::ZERO)
                .record(&stores.instance, &reference, DIGEST)
                .await;
            registry.resolve_to(Err(Status::unavailable("Registry down")));
            // Expired (no tag TTL), so only usable stale.
            let err = resolver(&stores, &registry, Duration::ZERO)
                .resolve(&stores.instance, &reference)
                .await
                .unwrap_err();
            assert_eq!(err.code(), Code::Unavailable);
            assert_eq!(
                resolver(&stores, &registry, HOUR)
                    .resolve(&stores.instance, &reference)
                    .await
                    .unwrap(),
                (DIGEST.to_string(), false)
            );
            assert_eq!(metrics::tags_served_stale("expired-record.example"), 1);
        }
    }
}
