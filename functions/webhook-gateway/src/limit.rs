//! Per-source rate limiting: a token bucket per webhook source (Buildkite, GitHub), so a flood
//! from one does not starve the other. Checked before anything else (authentication included),
//! and answered with 429 and `Retry-After`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sources::Origin;

/// A bucket's size and refill rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed at once above the sustained rate.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_second: 2000.0,
            burst: 4000,
        }
    }
}

/// One bucket per source.
pub struct Limiter {
    limit: RateLimit,
    buckets: [Mutex<(f64, Instant)>; 2],
}

impl Limiter {
    /// Full buckets.
    pub fn new(limit: RateLimit) -> Self {
        let full = || Mutex::new((f64::from(limit.burst), Instant::now()));
        Self {
            limit,
            buckets: [full(), full()],
        }
    }

    /// Takes a token for `origin`, or says how long until one is there.
    pub fn take(&self, origin: Origin) -> Result<(), Duration> {
        let index = match origin {
            Origin::Buildkite => 0,
            Origin::GitHub => 1,
        };
        let Ok(mut bucket) = self.buckets[index].lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let (tokens, last) = *bucket;
        let refilled = (tokens + now.duration_since(last).as_secs_f64() * self.limit.per_second)
            .min(f64::from(self.limit.burst));
        if refilled >= 1.0 {
            *bucket = (refilled - 1.0, now);
            Ok(())
        } else {
            *bucket = (refilled, now);
            let wait = (1.0 - refilled) / self.limit.per_second.max(f64::MIN_POSITIVE);
            Err(Duration::from_secs_f64(wait.min(3600.0)))
        }
    }
}
