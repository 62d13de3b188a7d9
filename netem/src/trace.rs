//! Synthetic Mahimahi traces, for scenarios that need a varying capacity when no recorded
//! trace is at hand. Deterministic under a seed.

use crate::capacity::OPPORTUNITY_BYTES;
use crate::rng::Rng;

/// Kinds of synthetic trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TraceKind {
    /// LTE while driving: capacity wanders (log-space, mean-reverting around 4 Mbit/s,
    /// between 0.3 and 12 Mbit/s) with deep fades of 0.5–2 s now and then.
    LteDrive,
    /// A constant rate (for checking a trace against `rate_kbps`).
    Constant,
}

/// Generates `seconds` of trace: one line per 1500-byte delivery opportunity, in ms.
pub fn generate(kind: TraceKind, seconds: u32, seed: u64, constant_kbps: f64) -> String {
    let mut rng = Rng::new(seed);
    let mut out = String::new();
    let mut carry = 0.0f64; // bytes accumulated toward the next opportunity
    let mut log_rate = (4.0f64).ln(); // Mbit/s
    let mut fade_left_ms = 0u32;
    let mut fade_rate = 0.0;
    let mut lines = 0usize;
    for ms in 1..=(seconds as u64 * 1000) {
        let mbps = match kind {
            TraceKind::Constant => constant_kbps / 1000.0,
            TraceKind::LteDrive => {
                if ms % 100 == 0 {
                    // Every 100 ms: drift back toward 4 Mbit/s plus noise.
                    log_rate += 0.08 * ((4.0f64).ln() - log_rate) + 0.25 * rng.normal();
                    log_rate = log_rate.clamp((0.3f64).ln(), (12.0f64).ln());
                    if fade_left_ms == 0 && rng.chance(0.01) {
                        fade_left_ms = 500 + (rng.unit() * 1500.0) as u32;
                        fade_rate = 0.05 + rng.unit() * 0.25;
                    }
                }
                if fade_left_ms > 0 {
                    fade_left_ms -= 1;
                    fade_rate
                } else {
                    log_rate.exp()
                }
            }
        };
        carry += mbps * 1e6 / 8.0 / 1000.0;
        while carry >= OPPORTUNITY_BYTES as f64 {
            carry -= OPPORTUNITY_BYTES as f64;
            out.push_str(&ms.to_string());
            out.push('\n');
            lines += 1;
        }
    }
    if lines == 0 {
        // A trace needs at least one opportunity; its last line is the loop period.
        out.push_str(&(seconds as u64 * 1000).max(1).to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::Capacity;

    #[test]
    fn constant_trace_has_the_rate_and_lte_is_repeatable() {
        let t = generate(TraceKind::Constant, 10, 1, 1200.0);
        // 1.2 Mbit/s = 100 opportunities of 1500 bytes per second.
        assert_eq!(t.lines().count(), 1000);
        assert!(Capacity::mahimahi(&t).is_ok());
        let a = generate(TraceKind::LteDrive, 30, 5, 0.0);
        assert_eq!(a, generate(TraceKind::LteDrive, 30, 5, 0.0));
        let mbps = a.lines().count() as f64 * 1500.0 * 8.0 / 30.0 / 1e6;
        assert!((0.3..12.0).contains(&mbps), "{mbps}");
    }
}
