//! Token-bucket rate limits per client (API key, session, or login address): a burst
//! is allowed, then requests flow at the sustained rate; beyond it, 429 with
//! `Retry-After`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Buckets beyond this many are swept of idle (full) ones, so that a stream of
/// one-off clients cannot grow the map without bound.
const SWEEP_ABOVE: usize = 10_000;

struct Bucket {
    tokens: f64,
    last: Instant,
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one token from `key`'s bucket (`per_second` sustained, `burst` at most).
    /// `Err(wait)`: over the limit; a token is available again after `wait`.
    pub fn check(&self, key: &str, per_second: f64, burst: u32) -> Result<(), Duration> {
        if per_second <= 0.0 {
            return Ok(());
        }
        let burst = f64::from(burst.max(1));
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() > SWEEP_ABOVE {
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.last).as_secs_f64() * per_second < burst
            });
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: burst,
            last: now,
        });
        let refill = now.duration_since(bucket.last).as_secs_f64() * per_second;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let limiter = RateLimiter::default();
        for _ in 0..5 {
            assert!(limiter.check("k", 1.0, 5).is_ok());
        }
        let wait = limiter.check("k", 1.0, 5).expect_err("over the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Other clients have their own buckets.
        assert!(limiter.check("other", 1.0, 5).is_ok());
    }

    #[test]
    fn tokens_come_back_over_time() {
        let limiter = RateLimiter::default();
        assert!(limiter.check("k", 1000.0, 1).is_ok());
        assert!(limiter.check("k", 1000.0, 1).is_err());
        std::thread::sleep(Duration::from_millis(5));
        assert!(limiter.check("k", 1000.0, 1).is_ok());
    }

    #[test]
    fn zero_rate_means_unlimited() {
        let limiter = RateLimiter::default();
        for _ in 0..1000 {
            assert!(limiter.check("k", 0.0, 1).is_ok());
        }
    }
}
