//! A hash computed on a thread of its own (docs/design/layers.md#hashing-on-two-cores).
//!
//! Ingesting a layer hashes its bytes up to three times: the compressed blob (its
//! digest), the decompressed stream (its DiffID) and each file's contents (its CAS
//! digest). Done on the parser's thread, hashing costs more than inflating, and the
//! other core idles. [`OffThreadHasher`] moves one such hash to a helper thread: the
//! bytes are copied into batches of [`BATCH_BYTES`] and sent over a channel bounded to
//! [`BATCHES_IN_FLIGHT`], so a hash holds at most about 1.25 MiB and a slow hash slows
//! the parser down instead of piling up memory. Streams shorter than
//! [`MINIMUM_THREADED_BYTES`] are hashed inline: a thread is not worth it for them.
//!
//! The result is the same as hashing inline; only the thread that does it differs.

use bytes::{Bytes, BytesMut};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

/// Bytes sent to the hashing thread at a time.
pub(crate) const BATCH_BYTES: usize = 256 << 10;
/// Batches waiting for the hashing thread before the sender blocks.
pub(crate) const BATCHES_IN_FLIGHT: usize = 4;
/// Streams expected to be shorter than this are hashed on the caller's thread.
pub(crate) const MINIMUM_THREADED_BYTES: u64 = 1 << 20;

/// A streaming hash whose state can move to another thread.
pub(crate) trait StreamHasher: Send + 'static {
    type Output: Send + 'static;
    fn update(&mut self, data: &[u8]);
    fn finish(self) -> Self::Output;
}

impl StreamHasher for super::oci_digest::OciHasher {
    type Output = super::oci_digest::OciDigest;
    fn update(&mut self, data: &[u8]) {
        super::oci_digest::OciHasher::update(self, data)
    }
    fn finish(self) -> Self::Output {
        super::oci_digest::OciHasher::finish(self)
    }
}

impl StreamHasher for crate::digest::Hasher {
    type Output = crate::proto::reapi::Digest;
    fn update(&mut self, data: &[u8]) {
        crate::digest::Hasher::update(self, data)
    }
    fn finish(self) -> Self::Output {
        crate::digest::Hasher::finish(self)
    }
}

/// A hasher that runs on a helper thread for long streams, inline for short ones.
pub(crate) enum OffThreadHasher<H: StreamHasher> {
    Inline(H),
    Threaded {
        batch: BytesMut,
        sender: SyncSender<Bytes>,
        thread: JoinHandle<H::Output>,
    },
}

impl<H: StreamHasher> OffThreadHasher<H> {
    /// Hashes on a helper thread if about `expected_bytes` will be hashed (at least
    /// [`MINIMUM_THREADED_BYTES`]) and a thread can be started; inline otherwise.
    pub(crate) fn new(hasher: H, expected_bytes: u64) -> Self {
        if expected_bytes < MINIMUM_THREADED_BYTES {
            return Self::Inline(hasher);
        }
        let (sender, receiver) = sync_channel::<Bytes>(BATCHES_IN_FLIGHT);
        // The hasher moves into the thread; if the thread cannot be started, it comes
        // back through this slot and the hash is done inline.
        let slot = std::sync::Arc::new(parking_lot::Mutex::new(Some(hasher)));
        let theirs = slot.clone();
        let started = std::thread::Builder::new()
            .name("layer-hash".into())
            .spawn(move || {
                let mut hasher = theirs.lock().take().expect("hasher handed over once");
                drop(theirs);
                for batch in receiver {
                    hasher.update(&batch);
                }
                hasher.finish()
            });
        match started {
            Ok(thread) => Self::Threaded {
                batch: BytesMut::with_capacity(BATCH_BYTES),
                sender,
                thread,
            },
            Err(e) => {
                tracing::warn!("Hashing inline, as no hashing thread could be started: {e}");
                let hasher = slot.lock().take().expect("thread never started");
                Self::Inline(hasher)
            }
        }
    }

    /// Adds `data` to the hash.
    pub(crate) fn update(&mut self, mut data: &[u8]) {
        match self {
            Self::Inline(hasher) => hasher.update(data),
            Self::Threaded { batch, sender, .. } => {
                while !data.is_empty() {
                    let take = (BATCH_BYTES - batch.len()).min(data.len());
                    batch.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if batch.len() == BATCH_BYTES {
                        send(sender, batch);
                    }
                }
            }
        }
    }

    /// Adds `data` to the hash, without copying it when it is large enough to be a
    /// batch of its own.
    pub(crate) fn update_shared(&mut self, data: &Bytes) {
        match self {
            Self::Threaded { batch, sender, .. } if data.len() >= BATCH_BYTES / 4 => {
                send(sender, batch);
                // A send fails only if the thread is gone, which `finish` reports.
                let _ = sender.send(data.clone());
            }
            _ => self.update(data),
        }
    }

    /// The hash of everything added.
    pub(crate) fn finish(self) -> H::Output {
        match self {
            Self::Inline(hasher) => hasher.finish(),
            Self::Threaded {
                mut batch,
                sender,
                thread,
            } => {
                send(&sender, &mut batch);
                drop(sender);
                thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }
        }
    }
}

/// Sends what `batch` holds, if anything, and starts a new batch.
fn send(sender: &SyncSender<Bytes>, batch: &mut BytesMut) {
    if batch.is_empty() {
        return;
    }
    let full = std::mem::replace(batch, BytesMut::with_capacity(BATCH_BYTES)).freeze();
    // A send fails only if the thread is gone (it panicked), which `finish` reports.
    let _ = sender.send(full);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    fn inline_digest(data: &[u8]) -> crate::proto::reapi::Digest {
        DigestFunction::Sha256.digest_of(data)
    }

    #[test]
    fn short_streams_are_hashed_inline() {
        let hasher = OffThreadHasher::new(DigestFunction::Sha256.hasher(), 1000);
        assert!(matches!(hasher, OffThreadHasher::Inline(_)));
        let mut hasher = hasher;
        hasher.update(b"abc");
        assert_eq!(hasher.finish(), inline_digest(b"abc"));
    }

    #[test]
    fn threaded_hash_equals_inline_hash_for_any_chunking() {
        let bytes = data(3 * BATCH_BYTES + 12_345);
        let expected = inline_digest(&bytes);
        for chunk in [
            1,
            4095,
            BATCH_BYTES / 4,
            BATCH_BYTES,
            BATCH_BYTES + 1,
            bytes.len(),
        ] {
            let mut hasher =
                OffThreadHasher::new(DigestFunction::Sha256.hasher(), MINIMUM_THREADED_BYTES);
            assert!(matches!(hasher, OffThreadHasher::Threaded { .. }));
            for (k, piece) in bytes.chunks(chunk).enumerate() {
                // Alternate copied and shared chunks: order must be kept across both.
                if k % 2 == 0 {
                    hasher.update(piece);
                } else {
                    hasher.update_shared(&Bytes::copy_from_slice(piece));
                }
            }
            assert_eq!(hasher.finish(), expected, "chunks of {chunk} bytes");
        }
    }

    #[test]
    fn oci_hashes_move_to_the_thread_too() {
        let digest = super::super::oci_digest::OciDigest::parse(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        .unwrap();
        let bytes = data(2 << 20);
        let mut inline = digest.hasher();
        inline.update(&bytes);
        let mut threaded = OffThreadHasher::new(digest.hasher(), bytes.len() as u64);
        threaded.update_shared(&Bytes::from(bytes.clone()));
        assert_eq!(threaded.finish(), inline.finish());
    }

    #[test]
    fn dropping_an_unfinished_hash_stops_its_thread() {
        let mut hasher =
            OffThreadHasher::new(DigestFunction::Sha256.hasher(), MINIMUM_THREADED_BYTES);
        hasher.update(&data(BATCH_BYTES * 2));
        let OffThreadHasher::Threaded { thread, sender, .. } = hasher else {
            panic!("expected a hashing thread");
        };
        drop(sender);
        // Ends once the channel is closed: joining returns instead of hanging.
        let digest = thread.join().unwrap();
        assert_eq!(digest, inline_digest(&data(BATCH_BYTES * 2)));
    }
}
