//! The retransmission timeout of STUN requests: RFC 8489 §6.2.1 asks a client to cache an
//! RTO computed as TCP does (RFC 6298), so that after the first answer a lost request is
//! resent after about one round trip plus its variation, not after a fixed 500 ms — on a
//! lossy link every lost request of a call's setup waited that long.

use std::time::Duration;

/// The RTO never goes below this: a few scheduler ticks and a busy server's answer time,
/// so a request on a fast link is not resent before its answer could be back.
pub const MIN_RTO: Duration = Duration::from_millis(100);
/// Nor above this (the first wait, before any sample, is the configured initial RTO).
pub const MAX_RTO: Duration = Duration::from_secs(3);

/// Smoothed round trip and its variation (RFC 6298 §2, α = 1/8, β = 1/4).
#[derive(Debug, Clone)]
pub struct RtoEstimator {
    initial: Duration,
    srtt: Option<Duration>,
    rttvar: Duration,
}

impl RtoEstimator {
    pub fn new(initial: Duration) -> RtoEstimator {
        RtoEstimator {
            initial,
            srtt: None,
            rttvar: Duration::ZERO,
        }
    }

    /// One round trip, from a request answered after its only transmission (Karn's rule:
    /// an answer to a resent request could belong to either send).
    pub fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
    }

    /// The wait before the first retransmission of a new request.
    pub fn rto(&self) -> Duration {
        match self.srtt {
            None => self.initial,
            Some(srtt) => (srtt + self.rttvar * 4).clamp(MIN_RTO, MAX_RTO),
        }
    }

    /// The smoothed round trip, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_initial_rto_holds_until_a_round_trip_is_measured() {
        let e = RtoEstimator::new(ms(500));
        assert_eq!(e.rto(), ms(500));
        assert_eq!(e.srtt(), None);
    }

    #[test]
    fn follows_rfc_6298_by_hand() {
        let mut e = RtoEstimator::new(ms(500));
        // First sample R: SRTT = R, RTTVAR = R/2, RTO = R + 4·R/2 = 3R.
        e.sample(ms(80));
        assert_eq!(e.srtt(), Some(ms(80)));
        assert_eq!(e.rto(), ms(240));
        // R' = 120: RTTVAR = 3/4·40 + 1/4·|80−120| = 40, SRTT = 7/8·80 + 1/8·120 = 85,
        // RTO = 85 + 160 = 245.
        e.sample(ms(120));
        assert_eq!(e.srtt(), Some(ms(85)));
        assert_eq!(e.rto(), ms(245));
    }

    #[test]
    fn is_clamped_on_fast_and_slow_links() {
        let mut fast = RtoEstimator::new(ms(500));
        for _ in 0..20 {
            fast.sample(Duration::from_micros(300));
        }
        assert_eq!(fast.rto(), MIN_RTO);
        let mut slow = RtoEstimator::new(ms(500));
        slow.sample(ms(2_000));
        assert_eq!(slow.rto(), MAX_RTO);
    }
}
