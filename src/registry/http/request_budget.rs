//! A token bucket: `registries[].requestBudget`, shared by every request this process
//! sends to the hosts of one entry, so that a fleet sharing one pull quota (Docker Hub's)
//! can spread it over its replicas. A request waits for a token; tokens come back at
//! `requestsPerSecond`, up to `burst` of them saved.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// One entry's budget.
#[derive(Debug)]
pub(crate) struct RequestBudget {
    per_second: f64,
    burst: f64,
    /// Tokens available at the instant.
    state: Mutex<(f64, Instant)>,
}

impl RequestBudget {
    pub(crate) fn new(requests_per_second: f64, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: requests_per_second,
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Waits until a request may be sent, and takes its token. Each caller reserves its
    /// token at once (the count may go negative), so waiting callers are served in order.
    pub(crate) async fn acquire(&self) {
        let wait = {
            let mut state = self.state.lock();
            let now = Instant::now();
            let (tokens, since) = *state;
            let refilled = (tokens + now.duration_since(since).as_secs_f64() * self.per_second)
                .min(self.burst);
            *state = (refilled - 1.0, now);
            if refilled >= 1.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64((1.0 - refilled) / self.per_second)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_beyond_the_burst_wait_for_tokens() {
        let budget = RequestBudget::new(2.0, 3);
        let started = Instant::now();
        for _ in 0..3 {
            budget.acquire().await;
        }
        assert_eq!(started.elapsed(), Duration::ZERO);
        for _ in 0..4 {
            budget.acquire().await;
        }
        // Four more at two per second.
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        // A quiet period refills up to the burst, no more.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let again = Instant::now();
        for _ in 0..4 {
            budget.acquire().await;
        }
        assert_eq!(again.elapsed(), Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_rate() {
        let budget = std::sync::Arc::new(RequestBudget::new(10.0, 1));
        let started = Instant::now();
        let tasks: Vec<_> = (0..11)
            .map(|_| {
                let b = budget.clone();
                tokio::spawn(async move { b.acquire().await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }
}
