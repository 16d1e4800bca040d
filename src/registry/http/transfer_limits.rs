//! Limits on a whole blob transfer, not on each wait for bytes.
//!
//! The HTTP client's read timeout bounds one wait: a registry sending a byte every second
//! never trips it, and would hold a layer-ingest slot for ever. [`LimitedStream`] wraps a
//! blob body and ends it with `UNAVAILABLE` when either limit is passed
//! (docs/design/registry-http.md#transfers):
//! - the whole transfer took longer than `blobTransferTimeout`;
//! - fewer than `minimumTransferBytesPerSecond` × `transferRateWindow` bytes arrived in a
//!   window of `transferRateWindow` (windows follow each other from the moment the response
//!   headers arrived; the last, partial window of a finished transfer is not judged).
//!
//! Both come from tokio's clock, so tests can pause it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::time::{Instant, Sleep};
use tonic::Status;

use crate::registry::metrics;

/// The limits of one transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TransferLimits {
    /// Deadline of the whole transfer.
    pub timeout: Duration,
    /// Slowest average rate accepted over a window; 0 turns the check off.
    pub minimum_bytes_per_second: u64,
    /// The window the rate is averaged over.
    pub window: Duration,
}

/// A blob body held to [`TransferLimits`].
pub(crate) struct LimitedStream<S> {
    inner: S,
    limits: TransferLimits,
    /// Names the transfer in errors: "blob sha256:… from registry.example".
    what: String,
    /// The registry refusals are counted for, in `registry_policy_refusals_total`.
    registry: Option<String>,
    started: Instant,
    deadline: Pin<Box<Sleep>>,
    window_end: Pin<Box<Sleep>>,
    in_window: u64,
    received: u64,
    finished: bool,
}

impl<S> LimitedStream<S> {
    pub(crate) fn new(inner: S, limits: TransferLimits, what: String) -> Self {
        let started = Instant::now();
        let window = limits.window.max(Duration::from_millis(1));
        Self {
            inner,
            what,
            registry: None,
            started,
            deadline: Box::pin(tokio::time::sleep_until(started + limits.timeout)),
            window_end: Box::pin(tokio::time::sleep_until(started + window)),
            limits,
            in_window: 0,
            received: 0,
            finished: false,
        }
    }

    /// Counts the transfers this stream ends in `registry_policy_refusals_total`.
    pub(crate) fn counting_refusals_for(mut self, registry: &str) -> Self {
        self.registry = Some(registry.to_owned());
        self
    }

    fn fail(&mut self, reason: &str, status: Status) -> Poll<Option<Result<Bytes, Status>>> {
        if let Some(registry) = &self.registry {
            metrics::refused(registry, reason);
        }
        self.finished = true;
        Poll::Ready(Some(Err(status)))
    }
}

impl<S> Stream for LimitedStream<S>
where
    S: Stream<Item = Result<Bytes, Status>> + Unpin,
{
    type Item = Result<Bytes, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        // Bytes already waiting are taken first: a limit passed while they arrived is seen
        // on the next poll.
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.in_window += chunk.len() as u64;
                this.received += chunk.len() as u64;
                return Poll::Ready(Some(Ok(chunk)));
            }
            Poll::Ready(Some(Err(status))) => {
                this.finished = true;
                return Poll::Ready(Some(Err(status)));
            }
            Poll::Ready(None) => {
                this.finished = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {}
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            let status = Status::unavailable(format!(
                "Transfer of {} did not finish within blobTransferTimeout ({:?}): {} bytes \
                 arrived",
                this.what, this.limits.timeout, this.received
            ));
            return this.fail("transfer_timeout", status);
        }
        if this.limits.minimum_bytes_per_second > 0 {
            while this.window_end.as_mut().poll(cx).is_ready() {
                let window = this.limits.window.max(Duration::from_millis(1));
                let wanted = (this.limits.minimum_bytes_per_second as f64 * window.as_secs_f64())
                    .ceil() as u64;
                if this.in_window < wanted {
                    let status = Status::unavailable(format!(
                        "Transfer of {} is too slow: {} bytes arrived in {:?}, less than \
                         minimumTransferBytesPerSecond ({}) allows ({} bytes after {:.1}s)",
                        this.what,
                        this.in_window,
                        window,
                        this.limits.minimum_bytes_per_second,
                        this.received,
                        this.started.elapsed().as_secs_f64()
                    ));
                    return this.fail("transfer_rate", status);
                }
                this.in_window = 0;
                let next = this.window_end.deadline() + window;
                this.window_end.as_mut().reset(next);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use tonic::Code;

    /// A body sending `chunk` bytes every `every`, `count` times.
    fn paced(
        chunk: usize,
        every: Duration,
        count: usize,
    ) -> futures::stream::BoxStream<'static, Result<Bytes, Status>> {
        futures::stream::unfold(0, move |i| async move {
            if i == count {
                return None;
            }
            tokio::time::sleep(every).await;
            Some((Ok(Bytes::from(vec![0u8; chunk])), i + 1))
        })
        .boxed()
    }

    fn limits(timeout: u64, rate: u64, window: u64) -> TransferLimits {
        TransferLimits {
            timeout: Duration::from_secs(timeout),
            minimum_bytes_per_second: rate,
            window: Duration::from_secs(window),
        }
    }

    async fn drain(
        stream: LimitedStream<futures::stream::BoxStream<'static, Result<Bytes, Status>>>,
    ) -> Result<u64, Status> {
        let mut stream = stream;
        let mut total = 0;
        while let Some(chunk) = stream.next().await {
            total += chunk?.len() as u64;
        }
        Ok(total)
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fails_after_one_window() {
        // One byte every 1.5 s against 1 KiB/s over 2 s windows.
        let started = Instant::now();
        let err = drain(LimitedStream::new(
            paced(1, Duration::from_millis(1500), 1000),
            limits(3600, 1024, 2),
            "blob sha256:ab from r.example".into(),
        ))
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            err.message()
                .contains("blob sha256:ab from r.example is too slow"),
            "{}",
            err.message()
        );
        assert!(
            err.message().contains("1 bytes arrived in 2s"),
            "{}",
            err.message()
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_transfer_passes_and_a_long_one_hits_the_deadline() {
        // 64 KiB every second: above 16 KiB/s in every 10 s window.
        let total = drain(LimitedStream::new(
            paced(64 << 10, Duration::from_secs(1), 100),
            limits(3600, 16 << 10, 10),
            "blob".into(),
        ))
        .await
        .unwrap();
        assert_eq!(total, 100 * (64 << 10));
        let started = Instant::now();
        let err = drain(LimitedStream::new(
            paced(64 << 10, Duration::from_secs(1), 100),
            limits(30, 0, 10),
            "blob sha256:cd from r.example".into(),
        ))
        .await
        .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            err.message()
                .contains("did not finish within blobTransferTimeout (30s)"),
            "{}",
            err.message()
        );
        assert_eq!(started.elapsed(), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn errors_and_the_end_pass_through() {
        let body = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"ab")),
            Err(Status::data_loss("corrupt")),
        ])
        .boxed();
        let mut s = LimitedStream::new(body, limits(1, 1, 1), "blob".into());
        assert_eq!(s.next().await.unwrap().unwrap(), Bytes::from_static(b"ab"));
        assert_eq!(s.next().await.unwrap().unwrap_err().code(), Code::DataLoss);
        assert!(s.next().await.is_none());
    }
}
