//! [`Prewarmer`]: keeps a configured list of images (`containerImages.prewarm`) expanded,
//! so that a tag pushed again is ready before any action asks for it.
//!
//! Every `interval`, for each image at once: its tag is resolved at the registry (a HEAD
//! request, [`ImageExpander::resolve_at_registry`], past every cache and after the
//! allow-list and tenant check of docs/design/tenants.md), the digest is expanded
//! under the image's instance name and platform ([`ImageExpander::expand_reference`],
//! so an unchanged image costs a look at the caches), and the resolution is then taken
//! as the tag's fresh one, in this process and in the Action Cache
//! ([`ImageExpander::refresh_tag`]): actions of the whole fleet that name the tag get
//! the new digest without asking the registry, once their own resolution expires
//! (`tagTtl`). A reference pinned by digest is only kept expanded.
//!
//! A digest other than the one last seen is a move: it is logged and
//! `prewarm_tag_moved_timestamp_seconds` set; once its tree is expanded, the time since
//! it was first seen goes to `prewarm_ready_lag_seconds` (the first digest seen after
//! start-up is not a move). A failure (registry, expansion) is logged with the image,
//! instance name and cause, counted in `prewarm_failures_total`, and retried after the
//! next interval; it never stops the prewarmer or the service.
//!
//! [`Prewarmer::run`] runs rounds until shutdown; a round in progress then is dropped
//! (an expansion nobody waits for is abandoned after `abandonGracePeriod`). The
//! configuration is turned into a prewarmer by `configuration.rs`.

use super::expander::ImageExpander;
use super::metrics;
use crate::blobstore::Instance;
use crate::registry::{Platform, Reference};
use crate::status::wrap;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tonic::Status;

/// One image to keep expanded.
#[derive(Clone, Debug)]
pub struct PrewarmedImage {
    /// The reference as configured (named in logs and metric labels).
    pub text: String,
    pub reference: Reference,
    pub instance: Instance,
    pub platform: Platform,
}

/// A digest seen but not expanded yet.
#[derive(Debug)]
struct Pending {
    digest: String,
    since: Instant,
    /// Whether the tag named another digest before (not the first one seen).
    moved: bool,
}

/// What the prewarmer knows of one image's tag.
#[derive(Debug, Default)]
struct TagState {
    /// The digest last resolved.
    seen: Option<String>,
    /// The digest last expanded.
    ready: Option<String>,
    pending: Option<Pending>,
}

struct Tracked {
    image: PrewarmedImage,
    state: Mutex<TagState>,
}

/// Keeps images expanded; see the module documentation.
pub struct Prewarmer {
    expander: Arc<ImageExpander>,
    images: Vec<Tracked>,
    interval: Duration,
}

impl Prewarmer {
    pub fn new(
        expander: Arc<ImageExpander>,
        images: Vec<PrewarmedImage>,
        interval: Duration,
    ) -> Self {
        let images = images
            .into_iter()
            .map(|image| Tracked {
                image,
                state: Mutex::new(TagState::default()),
            })
            .collect();
        Self {
            expander,
            images,
            interval,
        }
    }

    /// Runs a round at once and then every interval until `shutdown` becomes true (or
    /// its sender is dropped).
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(
            "Prewarming {} images every {:?}",
            self.images.len(),
            self.interval
        );
        loop {
            tokio::select! {
                _ = self.run_once() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// One round: every image resolved and expanded, concurrently. Failures are logged
    /// and counted, never returned.
    pub async fn run_once(&self) {
        futures::future::join_all(self.images.iter().map(|tracked| self.warm(tracked))).await;
    }

    async fn warm(&self, tracked: &Tracked) {
        let image = &tracked.image;
        if let Err(status) = self.try_warm(tracked).await {
            metrics::prewarm_failure(&image.text, &image.instance.name);
            tracing::warn!(
                "Failed to prewarm image {} for instance name {:?}, trying again in {:?}: {}",
                image.text,
                image.instance.name,
                self.interval,
                status.message()
            );
        }
    }

    async fn try_warm(&self, tracked: &Tracked) -> Result<(), Status> {
        let image = &tracked.image;
        let digest = match image.reference.digest() {
            Some(digest) => digest.to_string(),
            None => self
                .expander
                .resolve_at_registry(&image.instance, &image.reference)
                .await
                .map_err(|s| wrap(s, format!("Failed to resolve image {}", image.text)))?,
        };
        tracked.seen(&digest);
        let expanded = self
            .expander
            .expand_reference(
                &image.instance,
                &image.reference.with_digest(&digest)?,
                &image.platform,
            )
            .await
            .map_err(|s| wrap(s, format!("Failed to expand image {}", image.text)))?;
        if image.reference.digest().is_none() {
            self.expander
                .refresh_tag(&image.instance, &image.reference, &digest)
                .await;
        }
        if tracked.ready(&digest) {
            tracing::info!(
                "Prewarmed image {} ({digest}) for instance name {:?}: root Directory {}{}",
                image.text,
                image.instance.name,
                crate::digest::display(&expanded.root_directory_digest),
                if expanded.from_cache {
                    ", from the caches"
                } else {
                    ""
                }
            );
        }
        Ok(())
    }
}

impl Tracked {
    /// Notes that the tag names `digest` now; a digest other than the last one seen is
    /// pending until expanded, and a move if there was one before.
    fn seen(&self, digest: &str) {
        let mut state = self.state.lock();
        if state.seen.as_deref() == Some(digest) {
            return;
        }
        let previous = state.seen.replace(digest.to_string());
        if state.ready.as_deref() == Some(digest) {
            // Back to the digest already expanded (the tag was moved back).
            state.pending = None;
            return;
        }
        let moved = previous.is_some();
        if let Some(previous) = previous {
            let image = &self.image;
            metrics::prewarm_tag_moved(&image.text, &image.instance.name, unix_now());
            tracing::info!(
                "Prewarmed image {} for instance name {:?} moved from {previous} to {digest}",
                image.text,
                image.instance.name
            );
        }
        state.pending = Some(Pending {
            digest: digest.to_string(),
            since: Instant::now(),
            moved,
        });
    }

    /// Notes that `digest` is expanded; whether it was not before. The lag of a move
    /// is recorded.
    fn ready(&self, digest: &str) -> bool {
        let mut state = self.state.lock();
        if state.ready.as_deref() == Some(digest) {
            return false;
        }
        state.ready = Some(digest.to_string());
        if let Some(pending) = state.pending.take_if(|p| p.digest == digest) {
            if pending.moved {
                let image = &self.image;
                metrics::prewarm_ready_lag(
                    &image.text,
                    &image.instance.name,
                    pending.since.elapsed().as_secs_f64(),
                );
            }
        }
        true
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::image::fake_registry::FakeRegistry;
    use crate::image::fake_source::Stores;
    use crate::image::new_image_expander;

    const DIGEST_1: &str =
        "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const DIGEST_2: &str =
        "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn prewarmer(host: &str) -> (Arc<FakeRegistry>, Prewarmer, String) {
        let stores = Stores::new();
        let registry = Arc::new(FakeRegistry::new());
        let expander = new_image_expander(
            registry.clone(),
            stores.cas.clone(),
            stores.ac.clone(),
            Default::default(),
        );
        let text = format!("docker://{host}/team/app:v1");
        let image = PrewarmedImage {
            reference: Reference::parse(&text).unwrap(),
            text: text.clone(),
            instance: Instance::new("team-a", DigestFunction::Sha256),
            platform: Platform::new("linux", "amd64", ""),
        };
        let prewarmer = Prewarmer::new(expander, vec![image], Duration::from_secs(3600));
        (registry, prewarmer, text)
    }

    /// The fake registry serves no images: every round fails at the registry or at the
    /// expansion, is counted, and the next round tries again.
    #[tokio::test]
    async fn failures_are_counted_and_every_round_tries_again() {
        let (registry, prewarmer, text) = prewarmer("failing.example");
        registry.resolve_to(Err(Status::unavailable("Registry down")));
        prewarmer.run_once().await;
        prewarmer.run_once().await;
        assert_eq!(registry.resolves(), 2);
        assert_eq!(metrics::prewarm_failures(&text, "team-a"), 2);
        // The registry answers, the expansion fails (no image served): still counted.
        registry.resolve_to(Ok(DIGEST_1.into()));
        prewarmer.run_once().await;
        assert_eq!(registry.resolves(), 3);
        assert_eq!(metrics::prewarm_failures(&text, "team-a"), 3);
        let state = prewarmer.images[0].state.lock();
        assert_eq!(state.seen.as_deref(), Some(DIGEST_1));
        assert_eq!(state.ready, None);
    }

    #[tokio::test]
    async fn a_new_digest_is_a_move_only_after_a_first_one() {
        let (registry, prewarmer, text) = prewarmer("moving.example");
        let tracked = &prewarmer.images[0];
        registry.resolve_to(Ok(DIGEST_1.into()));
        prewarmer.run_once().await;
        assert_eq!(metrics::prewarm_tag_moved_at(&text, "team-a"), 0.0);
        assert!(!tracked.state.lock().pending.as_ref().unwrap().moved);
        // Expanded (as the expansion would): ready once, not a move.
        assert!(tracked.ready(DIGEST_1));
        assert!(!tracked.ready(DIGEST_1));
        registry.resolve_to(Ok(DIGEST_2.into()));
        prewarmer.run_once().await;
        assert!(metrics::prewarm_tag_moved_at(&text, "team-a") > 0.0);
        let pending = tracked
            .state
            .lock()
            .pending
            .as_ref()
            .unwrap()
            .digest
            .clone();
        assert_eq!(pending, DIGEST_2);
        assert!(tracked.state.lock().pending.as_ref().unwrap().moved);
        // Moved back to the digest already expanded: nothing pending.
        tracked.seen(DIGEST_1);
        assert!(tracked.state.lock().pending.is_none());
    }

    #[tokio::test]
    async fn run_stops_on_shutdown() {
        let (registry, prewarmer, _) = prewarmer("stopping.example");
        registry.resolve_to(Err(Status::unavailable("Registry down")));
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(Arc::new(prewarmer).run(shutdown));
        while registry.resolves() == 0 {
            tokio::task::yield_now().await;
        }
        stop.send(true).unwrap();
        task.await.unwrap();
    }
}
