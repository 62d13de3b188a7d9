//! Token buckets, fed the current time by the caller (sans-IO).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Rate;

/// Relative rounding slack when comparing tokens with a cost.
const SLACK: f64 = 1e-9;

/// One token bucket.
#[derive(Debug, Clone, Copy)]
pub struct TokenBucket {
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(rate: Rate, now: Instant) -> Self {
        TokenBucket {
            tokens: rate.burst,
            updated: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.per_s).min(rate.burst);
        self.updated = now;
    }

    /// Takes `cost` tokens, or says how long until they would be there. A cost above the
    /// burst can never be paid and waits for a full bucket.
    /// The wait is rounded up to whole milliseconds (what clients are told), and a bucket a
    /// few ulps short of the cost counts as full enough: refills in `f64` add up a hair
    /// short, and a client that waited as told must get its token.
    pub fn take(&mut self, rate: Rate, cost: f64, now: Instant) -> Result<(), Duration> {
        self.refill(rate, now);
        if self.tokens + SLACK * cost.max(1.0) >= cost {
            self.tokens = (self.tokens - cost).max(0.0);
            return Ok(());
        }
        let missing = cost.min(rate.burst) - self.tokens;
        let ms = (missing / rate.per_s * 1000.0).ceil().max(1.0);
        Err(Duration::from_millis(ms as u64))
    }

    /// True when the bucket has refilled completely (it can be forgotten).
    pub fn is_full(&self, rate: Rate, now: Instant) -> bool {
        let mut b = *self;
        b.refill(rate, now);
        b.tokens >= rate.burst
    }
}

/// Buckets of one rate, keyed by device, phone number or address.
#[derive(Debug)]
pub struct RateLimiter<K> {
    rate: Rate,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(rate: Rate) -> Self {
        RateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn rate(&self) -> Rate {
        self.rate
    }

    /// Takes `cost` tokens from `key`'s bucket at `now`.
    pub fn take(&self, key: &K, cost: f64, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap();
        let rate = self.rate;
        buckets
            .entry(key.clone())
            .or_insert_with(|| TokenBucket::full(rate, now))
            .take(rate, cost, now)
    }

    /// Forgets full buckets, so memory follows active keys only.
    pub fn prune(&self, now: Instant) {
        let rate = self.rate;
        self.buckets
            .lock()
            .unwrap()
            .retain(|_, b| !b.is_full(rate, now));
    }

    pub fn len(&self) -> usize {
        self.buckets.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refusal_then_refill() {
        let rate = Rate::new(3.0, 1.0);
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        for _ in 0..3 {
            b.take(rate, 1.0, t0).unwrap();
        }
        let wait = b.take(rate, 1.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 1.0).abs() < 1e-6, "{wait:?}");
        // Half a second later still not enough; a full second later there is one token.
        assert!(b.take(rate, 1.0, t0 + Duration::from_millis(500)).is_err());
        b.take(rate, 1.0, t0 + Duration::from_millis(1000)).unwrap();
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let rate = Rate::new(2.0, 10.0);
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        b.take(rate, 2.0, t0).unwrap();
        let later = t0 + Duration::from_secs(3600);
        b.take(rate, 2.0, later).unwrap();
        assert!(b.take(rate, 1.0, later).is_err());
    }

    #[test]
    fn limiter_keys_are_independent_and_pruned() {
        let rate = Rate::new(1.0, 1.0);
        let t0 = Instant::now();
        let l = RateLimiter::new(rate);
        l.take(&"a", 1.0, t0).unwrap();
        assert!(l.take(&"a", 1.0, t0).is_err());
        l.take(&"b", 1.0, t0).unwrap();
        assert_eq!(l.len(), 2);
        l.prune(t0 + Duration::from_secs(5));
        assert!(l.is_empty());
    }

    #[test]
    fn oversized_cost_waits_for_a_full_bucket() {
        let rate = Rate::new(10.0, 5.0);
        let t0 = Instant::now();
        let mut b = TokenBucket::full(rate, t0);
        b.take(rate, 10.0, t0).unwrap();
        let wait = b.take(rate, 50.0, t0).unwrap_err();
        assert!((wait.as_secs_f64() - 2.0).abs() < 1e-6);
    }
}
