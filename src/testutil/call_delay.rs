//! A tower layer that makes every call to a server cost a fixed time before it is
//! handled, as a storage frontend or scheduler on another machine of the LAN would
//! (benchmarks that count round trips need calls that are not free).
//!
//! `tokio::time::sleep` rounds up to whole milliseconds, far above the sub-millisecond
//! delays wanted here, so the delay is slept with `std::thread::sleep` on Tokio's
//! blocking pool; the time actually slept is recorded, so that a report gives the delay
//! the calls really had.

use futures::future::BoxFuture;
use parking_lot::Mutex;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What [`CallDelayLayer`] has delayed so far.
#[derive(Clone, Debug, Default)]
pub struct DelayRecord(Arc<Mutex<(u64, Duration)>>);

impl DelayRecord {
    /// Calls delayed, and their mean delay.
    pub fn mean(&self) -> (u64, Duration) {
        let (calls, total) = *self.0.lock();
        (
            calls,
            total.checked_div(calls.max(1) as u32).unwrap_or_default(),
        )
    }
}

/// Delays each call by `delay` before passing it on.
#[derive(Clone, Debug)]
pub struct CallDelayLayer {
    delay: Duration,
    record: DelayRecord,
}

impl CallDelayLayer {
    pub fn new(delay: Duration) -> Self {
        Self {
            delay,
            record: DelayRecord::default(),
        }
    }

    /// Where the delays applied are recorded.
    pub fn record(&self) -> DelayRecord {
        self.record.clone()
    }
}

impl<S> tower::Layer<S> for CallDelayLayer {
    type Service = CallDelay<S>;
    fn layer(&self, inner: S) -> CallDelay<S> {
        CallDelay {
            inner,
            delay: self.delay,
            record: self.record.clone(),
        }
    }
}

/// The service of [`CallDelayLayer`].
#[derive(Clone, Debug)]
pub struct CallDelay<S> {
    inner: S,
    delay: Duration,
    record: DelayRecord,
}

impl<S, R> tower::Service<R> for CallDelay<S>
where
    S: tower::Service<R> + Clone + Send + 'static,
    S::Future: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        // The clone is the one that was polled ready; a fresh clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let (delay, record) = (self.delay, self.record.clone());
        Box::pin(async move {
            if !delay.is_zero() {
                let started = Instant::now();
                let _ = tokio::task::spawn_blocking(move || std::thread::sleep(delay)).await;
                let mut slot = record.0.lock();
                slot.0 += 1;
                slot.1 += started.elapsed();
            }
            inner.call(request).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[tokio::test]
    async fn calls_wait_at_least_the_delay_and_the_delay_is_recorded() {
        let layer = CallDelayLayer::new(Duration::from_micros(300));
        let record = layer.record();
        let mut service = layer.layer(tower::service_fn(|x: u32| async move {
            Ok::<_, std::convert::Infallible>(x + 1)
        }));
        for k in 0..3 {
            let answer = service.ready().await.unwrap().call(k).await.unwrap();
            assert_eq!(answer, k + 1);
        }
        let (calls, mean) = record.mean();
        assert_eq!(calls, 3);
        assert!(mean >= Duration::from_micros(300));
    }
}
