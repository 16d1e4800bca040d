//! The digests of a layer's small files, computed on a thread of their own
//! (docs/design/layers.md#hashing-on-two-cores), which also hands each distinct content
//! to the uploader.
//!
//! The parser queues each small file's contents and gets back its position in the queue;
//! the changeset entry waits for its digest until the layer has been read to its end,
//! when [`SmallFileHashing::finish`] returns every digest in queuing order. Files go over
//! in groups of at most [`GROUP_BYTES`] or [`GROUP_FILES`], through a channel of at most
//! [`GROUPS_IN_FLIGHT`] groups, so that little more than a few MiB wait to be hashed and
//! a slow hashing thread slows the parser down. If no thread can be started, files are
//! hashed inline and the outcome is the same.

use super::uploader::{FileContent, FileUpload};
use crate::digest::DigestFunction;
use crate::proto::reapi;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;
use tokio::sync::mpsc;

/// A group is sent once it holds this many bytes…
pub(crate) const GROUP_BYTES: usize = 1 << 20;
/// …or this many files.
pub(crate) const GROUP_FILES: usize = 64;
/// Groups waiting for the hashing thread before the parser waits.
pub(crate) const GROUPS_IN_FLIGHT: usize = 2;

/// The uploader stopped; its own error is the one to report.
#[derive(Debug)]
pub(crate) struct UploaderGone;

/// Hashes and uploads one file: its digest, after handing a content not handed over
/// before to the uploader.
pub(crate) struct Hasher {
    function: DigestFunction,
    uploads: mpsc::Sender<FileUpload>,
    uploaded: HashSet<(String, i64)>,
    digests: Vec<reapi::Digest>,
}

impl Hasher {
    fn add(&mut self, data: Bytes) -> Result<(), UploaderGone> {
        let digest = self.function.digest_of(&data);
        if !data.is_empty()
            && self
                .uploaded
                .insert((digest.hash.clone(), digest.size_bytes))
        {
            self.uploads
                .blocking_send(FileUpload {
                    digest: digest.clone(),
                    content: FileContent::Small(data),
                })
                .map_err(|_| UploaderGone)?;
        }
        self.digests.push(digest);
        Ok(())
    }
}

/// Small files' digests, on a helper thread or inline.
pub(crate) enum SmallFileHashing {
    Inline(Hasher),
    Threaded {
        group: Vec<Bytes>,
        group_bytes: usize,
        queued: usize,
        sender: SyncSender<Vec<Bytes>>,
        thread: JoinHandle<Result<Vec<reapi::Digest>, UploaderGone>>,
    },
}

impl SmallFileHashing {
    pub(crate) fn start(function: DigestFunction, uploads: mpsc::Sender<FileUpload>) -> Self {
        let (sender, receiver) = sync_channel::<Vec<Bytes>>(GROUPS_IN_FLIGHT);
        let theirs = uploads.clone();
        let started = std::thread::Builder::new()
            .name("layer-hash".into())
            .spawn(move || {
                let mut hasher = Hasher {
                    function,
                    uploads: theirs,
                    uploaded: HashSet::new(),
                    digests: Vec::new(),
                };
                for group in receiver {
                    for data in group {
                        hasher.add(data)?;
                    }
                }
                Ok(hasher.digests)
            });
        match started {
            Ok(thread) => Self::Threaded {
                group: Vec::with_capacity(GROUP_FILES),
                group_bytes: 0,
                queued: 0,
                sender,
                thread,
            },
            Err(e) => {
                tracing::warn!("Hashing small files inline, as no thread could be started: {e}");
                Self::Inline(Hasher {
                    function,
                    uploads,
                    uploaded: HashSet::new(),
                    digests: Vec::new(),
                })
            }
        }
    }

    /// Queues a file's contents; returns its position, the index of its digest in what
    /// [`Self::finish`] returns.
    pub(crate) fn add(&mut self, data: Bytes) -> Result<usize, UploaderGone> {
        match self {
            Self::Inline(hasher) => {
                hasher.add(data)?;
                Ok(hasher.digests.len() - 1)
            }
            Self::Threaded {
                group,
                group_bytes,
                queued,
                sender,
                ..
            } => {
                *group_bytes += data.len();
                group.push(data);
                if *group_bytes >= GROUP_BYTES || group.len() >= GROUP_FILES {
                    send(sender, group, group_bytes)?;
                }
                *queued += 1;
                Ok(*queued - 1)
            }
        }
    }

    /// Every digest, in the order the files were queued, once all were handed to the
    /// uploader.
    pub(crate) fn finish(self) -> Result<Vec<reapi::Digest>, UploaderGone> {
        match self {
            Self::Inline(hasher) => Ok(hasher.digests),
            Self::Threaded {
                mut group,
                mut group_bytes,
                sender,
                thread,
                ..
            } => {
                let sent = send(&sender, &mut group, &mut group_bytes);
                drop(sender);
                let digests = thread
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                sent.and(digests)
            }
        }
    }
}

/// Sends the group, if it holds anything, and starts a new one. Fails if the thread
/// stopped, which it does only when the uploader is gone.
fn send(
    sender: &SyncSender<Vec<Bytes>>,
    group: &mut Vec<Bytes>,
    group_bytes: &mut usize,
) -> Result<(), UploaderGone> {
    if group.is_empty() {
        return Ok(());
    }
    *group_bytes = 0;
    let full = std::mem::replace(group, Vec::with_capacity(GROUP_FILES));
    sender.send(full).map_err(|_| UploaderGone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contents(n: usize) -> Vec<Bytes> {
        (0..n)
            .map(|i| Bytes::from(format!("file {} {}", i % 150, "x".repeat(i % 150 * 30))))
            .collect()
    }

    #[test]
    fn digests_come_back_in_order_and_each_content_is_uploaded_once() {
        let (uploads, mut received) = mpsc::channel(10_000);
        let mut hashing = SmallFileHashing::start(DigestFunction::Sha256, uploads);
        assert!(matches!(hashing, SmallFileHashing::Threaded { .. }));
        let files = contents(1000);
        let mut empty = Bytes::new();
        for (i, data) in files.iter().enumerate() {
            assert_eq!(hashing.add(data.clone()).unwrap(), i);
        }
        assert_eq!(hashing.add(std::mem::take(&mut empty)).unwrap(), 1000);
        let digests = hashing.finish().unwrap();
        let expected: Vec<_> = files
            .iter()
            .chain([&Bytes::new()])
            .map(|d| DigestFunction::Sha256.digest_of(d))
            .collect();
        assert_eq!(digests, expected);
        // 150 distinct contents among the 1000 files, each sent once; the empty file
        // never.
        let mut sent = HashSet::new();
        while let Ok(upload) = received.try_recv() {
            assert!(sent.insert(upload.digest.hash.clone()), "sent twice");
            assert!(upload.digest.size_bytes > 0);
        }
        assert_eq!(sent.len(), 150);
    }

    #[test]
    fn a_gone_uploader_stops_the_hashing() {
        let (uploads, received) = mpsc::channel(1);
        drop(received);
        let mut hashing = SmallFileHashing::start(DigestFunction::Sha256, uploads);
        let mut failed = false;
        for data in contents(10_000) {
            if hashing.add(data).is_err() {
                failed = true;
                break;
            }
        }
        assert!(failed || hashing.finish().is_err());
    }
}
