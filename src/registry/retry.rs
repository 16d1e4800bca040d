//! Retries with exponential backoff and a deadline per attempt.
//!
//! Each attempt gets `request_timeout`; an attempt that overruns it counts as a transient
//! failure. Transient failures are retried up to `maximum_retries` times, waiting
//! `initial_delay`, then twice as long each time (at most [`MAXIMUM_DELAY`]), each wait
//! scaled by a random factor in [0.5, 1) so that many callers do not retry in lockstep.
//! The last error is returned with the number of attempts appended.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tonic::Status;
use tracing::debug;

use super::errors::Failure;

/// The longest wait between two attempts.
pub(crate) const MAXIMUM_DELAY: Duration = Duration::from_secs(30);

/// How requests are retried.
#[derive(Clone, Debug)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt.
    pub maximum_retries: u32,
    /// Wait before the first retry.
    pub initial_delay: Duration,
    /// Deadline of each attempt.
    pub request_timeout: Duration,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (0-based), before jitter.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(20)).unwrap_or(u32::MAX);
        self.initial_delay.saturating_mul(factor).min(MAXIMUM_DELAY)
    }

    /// Runs `attempt` until it succeeds, fails permanently or runs out of retries.
    pub async fn run<T, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut retry = 0;
        loop {
            let failure = match tokio::time::timeout(self.request_timeout, attempt()).await {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(failure)) => failure,
                Err(_) => Failure::transient(Status::unavailable(format!(
                    "No answer within the request timeout of {:?}",
                    self.request_timeout
                ))),
            };
            if !failure.retryable || retry >= self.maximum_retries {
                let status = failure.status;
                return Err(if retry == 0 {
                    status
                } else {
                    Status::new(
                        status.code(),
                        format!("{} (after {} attempts)", status.message(), retry + 1),
                    )
                });
            }
            let delay = jitter(self.delay(retry)).max(failure.minimum_delay);
            debug!(
                what,
                retry,
                ?delay,
                error = failure.status.message(),
                "Retrying registry request"
            );
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }
}

/// `delay` scaled by a random factor in [0.5, 1).
fn jitter(delay: Duration) -> Duration {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let fraction = (hasher.finish() % 1000) as f64 / 2000.0;
    delay.mul_f64(0.5 + fraction)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tonic::Code;

    fn policy(retries: u32) -> RetryPolicy {
        RetryPolicy {
            maximum_retries: retries,
            initial_delay: Duration::from_millis(1),
            request_timeout: Duration::from_millis(200),
        }
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            maximum_retries: 10,
            initial_delay: Duration::from_millis(500),
            request_timeout: Duration::from_secs(1),
        };
        assert_eq!(p.delay(0), Duration::from_millis(500));
        assert_eq!(p.delay(1), Duration::from_secs(1));
        assert_eq!(p.delay(3), Duration::from_secs(4));
        assert_eq!(p.delay(40), MAXIMUM_DELAY);
        for _ in 0..100 {
            let d = jitter(Duration::from_secs(1));
            assert!(d >= Duration::from_millis(500) && d < Duration::from_secs(1));
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried() {
        let calls = AtomicU32::new(0);
        let result = policy(3)
            .run("test", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Err(Failure::transient(Status::unavailable("down")))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_the_last_retry() {
        let calls = AtomicU32::new(0);
        let err = policy(2)
            .run("test", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Failure::transient(Status::unavailable("down")))
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(err.message(), "down (after 3 attempts)");
    }

    #[tokio::test]
    async fn permanent_failures_are_not_retried() {
        let calls = AtomicU32::new(0);
        let err = policy(5)
            .run("test", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Failure::permanent(Status::not_found("gone")))
            })
            .await
            .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!((err.code(), err.message()), (Code::NotFound, "gone"));
    }

    #[tokio::test]
    async fn slow_attempts_time_out() {
        let err = policy(1)
            .run("test", || async {
                tokio::time::sleep(Duration::from_secs(10)).await;
                Ok::<(), Failure>(())
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unavailable);
        assert!(
            err.message().contains("request timeout"),
            "{}",
            err.message()
        );
    }
}
