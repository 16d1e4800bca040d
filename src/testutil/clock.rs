//! A hand-driven clock for deterministic tests of time-dependent code.

use crate::blobstore::existence_caching_content_addressable_storage::Clock;
use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// Starts at the moment it is created and only moves through [`ManualClock::advance`].
pub struct ManualClock {
    now: Mutex<Instant>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self {
            now: Mutex::new(Instant::now()),
        }
    }

    /// Moves the clock forward by `duration`.
    pub fn advance(&self, duration: Duration) {
        *self.now.lock() += duration;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.now.lock()
    }
}
