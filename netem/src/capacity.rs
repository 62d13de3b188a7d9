//! The bottleneck's service: when does a packet that starts waiting at `t` finish being sent?
//!
//! The capacity is known in advance (a schedule or a trace), so each packet's departure is
//! computed exactly when it arrives; a FIFO with drop-tail needs nothing more.

use std::time::Duration;

/// Bytes one Mahimahi delivery opportunity carries.
pub const OPPORTUNITY_BYTES: u32 = 1500;
/// Longest trace accepted (lines).
pub const MAX_TRACE_LINES: usize = 10_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub at: Duration,
    pub bits_per_s: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Capacity {
    Unlimited,
    /// Piecewise-constant rate; sorted, the first at zero, the last holds forever.
    Steps(Vec<Step>),
    /// Delivery opportunities at these offsets (ms), repeating every `period_ms`.
    Trace {
        opportunities_ms: Vec<u64>,
        period_ms: u64,
    },
}

/// Where the server is: the end of the last packet's service, and for traces the
/// opportunity in use and the bytes left in it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServiceState {
    busy_until: Duration,
    opportunity: u64,
    left: u32,
}

impl Capacity {
    pub fn steps(mut steps: Vec<Step>) -> Capacity {
        steps.sort_by_key(|s| s.at);
        if let Some(first) = steps.first_mut() {
            first.at = Duration::ZERO;
        }
        Capacity::Steps(steps)
    }

    /// Parses a Mahimahi trace: one non-decreasing millisecond timestamp per line.
    pub fn mahimahi(text: &str) -> Result<Capacity, String> {
        let mut v = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if v.len() >= MAX_TRACE_LINES {
                return Err(format!("more than {MAX_TRACE_LINES} lines"));
            }
            let t: u64 = line
                .parse()
                .map_err(|_| format!("line {}: not a millisecond count: {line:?}", i + 1))?;
            if v.last().is_some_and(|&l| t < l) {
                return Err(format!("line {}: timestamps must not decrease", i + 1));
            }
            v.push(t);
        }
        let Some(&period) = v.last() else {
            return Err("the trace has no delivery opportunities".into());
        };
        if period == 0 {
            return Err("the trace's last timestamp must be > 0 (it is the loop period)".into());
        }
        Ok(Capacity::Trace {
            opportunities_ms: v,
            period_ms: period,
        })
    }

    /// Rate in force at `t`, bits per second (traces: opportunities in the surrounding
    /// second × 1500 bytes), for plots.
    pub fn rate_at(&self, t: Duration) -> Option<u64> {
        match self {
            Capacity::Unlimited => None,
            Capacity::Steps(s) => Some(step_at(s, t).bits_per_s),
            Capacity::Trace {
                opportunities_ms,
                period_ms,
            } => {
                let from = t.as_millis() as u64;
                let n = count_opportunities(opportunities_ms, *period_ms, from, from + 1000);
                Some(n * OPPORTUNITY_BYTES as u64 * 8)
            }
        }
    }

    /// When a packet of `bytes` arriving at `arrival` finishes service, and the server's
    /// state after it; `None` when the capacity never serves it (a rate of zero forever).
    pub fn serve(
        &self,
        st: ServiceState,
        arrival: Duration,
        bytes: u32,
    ) -> Option<(Duration, ServiceState)> {
        match self {
            Capacity::Unlimited => Some((arrival, st)),
            Capacity::Steps(steps) => {
                let start = arrival.max(st.busy_until);
                let done = finish_on_steps(steps, start, bytes as u128 * 8)?;
                Some((
                    done,
                    ServiceState {
                        busy_until: done,
                        ..st
                    },
                ))
            }
            Capacity::Trace {
                opportunities_ms,
                period_ms,
            } => {
                let n = opportunities_ms.len() as u64;
                let time_of = |k: u64| {
                    Duration::from_millis((k / n) * period_ms + opportunities_ms[(k % n) as usize])
                };
                let mut k = st.opportunity;
                let mut left = st.left;
                // The opportunity in hand is lost if the packet came after it.
                if left == 0 || time_of(k) < arrival {
                    k = first_opportunity_at_or_after(opportunities_ms, *period_ms, arrival);
                    left = OPPORTUNITY_BYTES;
                }
                let mut rest = bytes;
                while rest > left {
                    rest -= left;
                    k += 1;
                    left = OPPORTUNITY_BYTES;
                }
                left -= rest;
                let done = time_of(k);
                // An exhausted opportunity moves on to the next one.
                let (k, left) = if left == 0 {
                    (k + 1, OPPORTUNITY_BYTES)
                } else {
                    (k, left)
                };
                Some((
                    done,
                    ServiceState {
                        busy_until: done,
                        opportunity: k,
                        left,
                    },
                ))
            }
        }
    }
}

fn step_at(steps: &[Step], t: Duration) -> Step {
    let i = steps.partition_point(|s| s.at <= t);
    steps[i.saturating_sub(1)]
}

fn finish_on_steps(steps: &[Step], start: Duration, mut bits: u128) -> Option<Duration> {
    let mut i = steps.partition_point(|s| s.at <= start).saturating_sub(1);
    let mut cur = start;
    loop {
        let rate = steps[i].bits_per_s as u128;
        let end = steps.get(i + 1).map(|s| s.at);
        if rate > 0 {
            // Nanoseconds needed at this rate, rounded up.
            let need = (bits * 1_000_000_000).div_ceil(rate);
            match end {
                Some(e) => {
                    let have = (e - cur).as_nanos();
                    if need <= have {
                        return Some(cur + Duration::from_nanos(need as u64));
                    }
                    bits -= have * rate / 1_000_000_000;
                }
                None => return Some(cur + Duration::from_nanos(need as u64)),
            }
        }
        match end {
            Some(e) => {
                cur = e;
                i += 1;
            }
            None => return None,
        }
    }
}

fn first_opportunity_at_or_after(opps: &[u64], period: u64, t: Duration) -> u64 {
    let n = opps.len() as u64;
    let ms = t.as_nanos().div_ceil(1_000_000) as u64;
    let lap = ms / period;
    let off = ms % period;
    if off == 0 && lap > 0 {
        // The previous lap's last opportunity sits exactly at the period.
        let j = opps.partition_point(|&o| o < period) as u64;
        return (lap - 1) * n + j;
    }
    lap * n + opps.partition_point(|&o| o < off) as u64
}

fn count_opportunities(opps: &[u64], period: u64, from: u64, to: u64) -> u64 {
    let n = opps.len() as u64;
    let idx = |ms: u64| (ms / period) * n + opps.partition_point(|&o| o < ms % period) as u64;
    idx(to) - idx(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn constant_rate_serialises_back_to_back() {
        let c = Capacity::steps(vec![Step {
            at: ms(0),
            bits_per_s: 1_000_000,
        }]);
        let st = ServiceState::default();
        // 1250 bytes at 1 Mbit/s = 10 ms.
        let (d1, st) = c.serve(st, ms(0), 1250).unwrap();
        assert_eq!(d1, ms(10));
        let (d2, st) = c.serve(st, ms(1), 1250).unwrap();
        assert_eq!(d2, ms(20));
        let (d3, _) = c.serve(st, ms(100), 1250).unwrap();
        assert_eq!(d3, ms(110));
    }

    #[test]
    fn steps_integrate_across_a_change_and_an_outage() {
        let c = Capacity::steps(vec![
            Step {
                at: ms(0),
                bits_per_s: 1_000_000,
            },
            Step {
                at: ms(5),
                bits_per_s: 0,
            },
            Step {
                at: ms(50),
                bits_per_s: 2_000_000,
            },
        ]);
        // 5 ms of the 10 at 1 Mbit/s, nothing during the outage, the other 5000 bits at 2 Mbit/s.
        let (d, _) = c.serve(ServiceState::default(), ms(0), 1250).unwrap();
        assert_eq!(d, Duration::from_micros(52_500));
        let dead = Capacity::steps(vec![Step {
            at: ms(0),
            bits_per_s: 0,
        }]);
        assert!(dead.serve(ServiceState::default(), ms(0), 1).is_none());
    }

    #[test]
    fn trace_opportunities_carry_1500_bytes_and_loop() {
        let c = Capacity::mahimahi("1\n1\n4\n10\n").unwrap();
        let st = ServiceState::default();
        // Two 1500-byte packets at t=0 take the two opportunities at 1 ms.
        let (d1, st) = c.serve(st, ms(0), 1500).unwrap();
        let (d2, st) = c.serve(st, ms(0), 1500).unwrap();
        assert_eq!((d1, d2), (ms(1), ms(1)));
        // Small packets share one opportunity.
        let (d3, st) = c.serve(st, ms(0), 700).unwrap();
        let (d4, st) = c.serve(st, ms(0), 700).unwrap();
        assert_eq!((d3, d4), (ms(4), ms(4)));
        // 100 bytes left at 4 ms; a packet arriving at 5 ms cannot use them.
        let (d5, st) = c.serve(st, ms(5), 100).unwrap();
        assert_eq!(d5, ms(10));
        // The trace repeats with period 10: next opportunities at 11, 11, 14, 20.
        let (d6, _) = c.serve(st, ms(12), 3000).unwrap();
        assert_eq!(d6, ms(20));
        assert_eq!(c.rate_at(ms(0)), Some(4 * 100 * 1500 * 8));
    }

    #[test]
    fn bad_traces_are_refused_with_the_line() {
        assert!(Capacity::mahimahi("").is_err());
        assert!(Capacity::mahimahi("5\n3\n").unwrap_err().contains("line 2"));
        assert!(Capacity::mahimahi("1\nx\n").unwrap_err().contains("line 2"));
        assert!(Capacity::mahimahi("0\n0\n").is_err());
    }
}
