//! Token buckets: the per-allocation byte-rate cap.

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
