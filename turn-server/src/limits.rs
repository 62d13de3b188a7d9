//! Token buckets: the per-allocation byte-rate cap, and the per-source limit on answers to
//! unauthenticated requests.

use std::collections::HashMap;
use std::net::IpAddr;

pub(crate) struct Bucket {
    pub(crate) tokens: f64,
    pub(crate) last_ms: u64,
}

pub(crate) fn take(b: &mut Bucket, cap: u64, len: usize, now_ms: u64) -> bool {
    if cap == 0 {
        return true;
    }
    let cap = cap as f64;
    let elapsed = now_ms.saturating_sub(b.last_ms) as f64 / 1000.0;
    b.last_ms = now_ms;
    // A one-second burst.
    b.tokens = (b.tokens + elapsed * cap).min(cap);
    if b.tokens >= len as f64 {
        b.tokens -= len as f64;
        true
    } else {
        false
    }
}

/// Sources tracked at once (~50 bytes each). Entries go once their bucket is full again
/// (a second after their last answer), so only a flood from more forged addresses than
/// this within a second or two fills the table.
pub(crate) const MAX_SOURCES: usize = 16_384;
/// Answers a second shared by the sources that find the table full: new clients are still
/// answered during such a flood, and what is reflected stays bounded (~70 kB/s in all).
pub(crate) const OVERFLOW_ANSWERS_PER_S: u64 = 1000;

/// Answers a second per source address to requests that did not authenticate. Over UDP
/// the source can be forged, and those answers are what a reflection attack gets sent to
/// its victim; past the rate they are dropped.
pub(crate) struct SourceLimiter {
    per_s: u64,
    sources: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
}

/// The address a source is counted under: an IPv6 /64 (one subscriber's prefix holds 2^64
/// addresses), IPv4 as IPv4 even when it arrives IPv4-mapped on a dual-stack socket.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
        v4 => v4,
    }
}

impl SourceLimiter {
    /// `per_s` answers a second per source, with a one-second burst; 0 = no limit.
    pub(crate) fn new(per_s: u32) -> SourceLimiter {
        SourceLimiter {
            per_s: u64::from(per_s),
            sources: HashMap::new(),
            overflow: Bucket {
                tokens: OVERFLOW_ANSWERS_PER_S as f64,
                last_ms: 0,
            },
        }
    }

    /// Whether `ip` may be answered now (and counts the answer).
    pub(crate) fn admit(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        if self.per_s == 0 {
            return true;
        }
        let key = source_key(ip);
        let full = self.sources.len() >= MAX_SOURCES;
        match self.sources.get_mut(&key) {
            Some(b) => take(b, self.per_s, 1, now_ms),
            None if full => take(&mut self.overflow, OVERFLOW_ANSWERS_PER_S, 1, now_ms),
            None => {
                let mut b = Bucket {
                    tokens: self.per_s as f64,
                    last_ms: now_ms,
                };
                let ok = take(&mut b, self.per_s, 1, now_ms);
                self.sources.insert(key, b);
                ok
            }
        }
    }

    /// Forgets sources whose bucket has refilled: a fresh entry would be the same.
    pub(crate) fn prune(&mut self, now_ms: u64) {
        self.sources
            .retain(|_, b| now_ms.saturating_sub(b.last_ms) < 1000);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.sources.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_table_is_bounded_and_overflow_is_shared() {
        let mut l = SourceLimiter::new(5);
        let v4 = |i: u32| IpAddr::V4((0xC633_6400 + i).into());
        for i in 0..MAX_SOURCES as u32 + 5000 {
            l.admit(v4(i), 0);
        }
        assert_eq!(l.len(), MAX_SOURCES);
        // Sources beyond the table share the overflow bucket: 1000 answers in that second,
        // of which the 5000 above took theirs already.
        let more = (0..2000)
            .filter(|i| l.admit(v4(MAX_SOURCES as u32 + 10_000 + i), 0))
            .count();
        assert_eq!(more, 0);
        let later = (0..2000)
            .filter(|i| l.admit(v4(MAX_SOURCES as u32 + 10_000 + i), 1000))
            .count();
        assert_eq!(later, OVERFLOW_ANSWERS_PER_S as usize);
        // A tracked source keeps its own bucket.
        assert!(l.admit(v4(0), 500));
        // Sources go once their bucket is full again (a second after their last answer).
        l.prune(999);
        assert_eq!(l.len(), MAX_SOURCES);
        l.prune(1000);
        assert_eq!(l.len(), 1);
        l.prune(1500);
        assert_eq!(l.len(), 0);
        assert!(l.admit(v4(MAX_SOURCES as u32 + 20_000), 1500), "room again");
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn zero_means_no_limit() {
        let mut l = SourceLimiter::new(0);
        let ip: IpAddr = "198.51.100.1".parse().unwrap();
        assert!((0..10_000).all(|_| l.admit(ip, 0)));
        assert_eq!(l.len(), 0);
    }
}
