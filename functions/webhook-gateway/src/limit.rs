//! Rate limiting in two kinds of bucket, so that no flood starves genuine webhooks:
//!
//! - authenticated deliveries take from a bucket per source (Buildkite, GitHub), so a burst
//!   from one does not starve the other;
//! - deliveries that fail authentication take from a much smaller bucket per client address,
//!   and are answered 429 once theirs is empty: they are checked after authentication (an HMAC
//!   over a body already size-limited costs microseconds), so they never take a genuine
//!   sender's tokens.
//!
//! Both answer 429 with `Retry-After`.

use std::collections::HashMap;
use std::net::IpAddr;
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

impl RateLimit {
    /// The default for deliveries that fail authentication, per client address.
    pub const UNAUTHENTICATED: RateLimit = RateLimit {
        per_second: 5.0,
        burst: 20,
    };
}

/// Client addresses tracked at once; past it the table starts over (every address with a full
/// bucket), so an attack from many addresses costs memory bounded by this.
const MAX_CLIENTS: usize = 10_000;

/// The client key of a request whose address is unknown (served without `ConnectInfo`).
const UNKNOWN: IpAddr = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);

/// Tokens left and when they were counted.
type Bucket = (f64, Instant);

/// The gateway's buckets.
pub struct Limiter {
    limit: RateLimit,
    buckets: [Mutex<Bucket>; 2],
    unauthenticated: RateLimit,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Limiter {
    /// Full buckets: `limit` per source for authenticated deliveries, `unauthenticated` per
    /// client address for the rest.
    pub fn new(limit: RateLimit, unauthenticated: RateLimit) -> Self {
        let full = || Mutex::new((f64::from(limit.burst), Instant::now()));
        Self {
            limit,
            buckets: [full(), full()],
            unauthenticated,
            clients: Mutex::new(HashMap::new()),
        }
    }

    /// Takes a token for an authenticated delivery from `origin`, or says how long until one
    /// is there.
    pub fn take(&self, origin: Origin) -> Result<(), Duration> {
        let index = match origin {
            Origin::Buildkite => 0,
            Origin::GitHub => 1,
        };
        let Ok(mut bucket) = self.buckets[index].lock() else {
            return Ok(());
        };
        take_from(&mut bucket, self.limit)
    }

    /// Takes a token for a delivery that failed authentication from `client` (`None`: address
    /// unknown), or says how long until one is there.
    pub fn take_unauthenticated(&self, client: Option<IpAddr>) -> Result<(), Duration> {
        let Ok(mut clients) = self.clients.lock() else {
            return Ok(());
        };
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let bucket = clients
            .entry(client.unwrap_or(UNKNOWN))
            .or_insert_with(|| (f64::from(self.unauthenticated.burst), Instant::now()));
        take_from(bucket, self.unauthenticated)
    }
}

/// Takes one token from `bucket` refilled at `limit`, or says how long until one is there.
fn take_from(bucket: &mut Bucket, limit: RateLimit) -> Result<(), Duration> {
    let now = Instant::now();
    let (tokens, last) = *bucket;
    let refilled = (tokens + now.duration_since(last).as_secs_f64() * limit.per_second)
        .min(f64::from(limit.burst));
    if refilled >= 1.0 {
        *bucket = (refilled - 1.0, now);
        Ok(())
    } else {
        *bucket = (refilled, now);
        let wait = (1.0 - refilled) / limit.per_second.max(f64::MIN_POSITIVE);
        Err(Duration::from_secs_f64(wait.min(3600.0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_clients_have_buckets_of_their_own() {
        let limiter = Limiter::new(
            RateLimit::default(),
            RateLimit {
                per_second: 0.001,
                burst: 2,
            },
        );
        let flooder = Some(IpAddr::from([10, 0, 0, 1]));
        assert!(limiter.take_unauthenticated(flooder).is_ok());
        assert!(limiter.take_unauthenticated(flooder).is_ok());
        assert!(limiter.take_unauthenticated(flooder).is_err());
        // Another address, and every genuine delivery, are untouched.
        assert!(
            limiter
                .take_unauthenticated(Some(IpAddr::from([10, 0, 0, 2])))
                .is_ok()
        );
        assert!(limiter.take(Origin::Buildkite).is_ok());
    }
}
