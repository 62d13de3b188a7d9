//! Which Opus settings the link calls for, from the send estimate and the loss the far end
//! reports. Sans-IO: fed reports and the time, it returns the settings to apply when they
//! change.
//!
//! - **Bitrate** (6–64 kbit/s, never above what was configured): a share of the estimate
//!   (a quarter beside video, which needs the rest; most of it for audio alone), less the
//!   per-packet overhead, split between the frame and its [`RED_LEVELS`] RED copies.
//! - **In-band FEC** on from 1 % smoothed loss, its expected-loss input that loss rounded
//!   up; **RED** (RFC 2198, each packet carries the previous frame too) on from 3 %. Both
//!   go off again only after the loss stayed under half their threshold for
//!   [`HOLD`]: loss comes in spells, and protection that flaps off mid-spell costs frames.
//!   RED carries each frame again in the next two packets, so it takes three lost in a
//!   row to lose a frame (0.1 % at 10 % random loss, against 1 % with one copy;
//!   `media/tests/lossy_link.rs` measured 0.3–0.7 % with two copies and 0.9–1.0 % with
//!   one, the unprotected second before the first report included).
//! - **Packet time** 60 ms when the estimate is so low that 20 ms packets would spend most
//!   of it on headers (62 bytes each), 20 ms again once it recovers.
//! - **DTX** (no packets in silence) while the bitrate sits near the floor.

use std::time::{Duration, Instant};

pub const MIN_OPUS_BPS: i32 = 6_000;
pub const MAX_OPUS_BPS: i32 = 64_000;

/// IPv4, UDP, RTP with its header extensions (TWCC, abs-send-time, audio level) and the
/// SRTP tag: bytes on the wire around each audio packet.
pub const PACKET_OVERHEAD_BYTES: u32 = 62;
/// Each loss report moves the smoothed loss this far toward it (reports come once a
/// second: a spell of loss shows within one or two).
const LOSS_SMOOTHING: f64 = 0.5;
const FEC_ON: f64 = 0.01;
/// How many earlier frames each RED packet carries (str0m's distances 1 and 2).
pub const RED_LEVELS: u32 = 2;
const RED_ON: f64 = 0.03;
/// Protection goes off after the loss stayed under half its threshold this long.
pub const HOLD: Duration = Duration::from_secs(10);
/// Audio's share of the estimate beside video, and alone.
const SHARE_WITH_VIDEO: f64 = 0.25;
const SHARE_ALONE: f64 = 0.8;
/// 60 ms packets below this bitrate (as 20 ms packets would get), back to 20 ms from the
/// upper one.
const LONG_PTIME_BELOW_BPS: i32 = 10_000;
const SHORT_PTIME_FROM_BPS: i32 = 16_000;
/// DTX at or below this bitrate, off again from the upper one.
const DTX_AT_BPS: i32 = 12_000;
const NO_DTX_FROM_BPS: i32 = 20_000;
/// A bitrate change smaller than this fraction is not worth an encoder call.
const BITRATE_STEP: f64 = 0.1;

/// What the Opus encoder and the RTP packetizer are set to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AudioSettings {
    pub bitrate_bps: i32,
    pub fec: bool,
    /// libopus' OPUS_SET_PACKET_LOSS_PERC: how much of the bitrate goes to FEC.
    pub expected_loss_pct: u8,
    pub dtx: bool,
    pub red: bool,
    pub ptime_ms: u32,
}

impl AudioSettings {
    /// Fixed settings: what a call without adaptation sends.
    pub fn fixed(bitrate_bps: i32) -> AudioSettings {
        AudioSettings {
            bitrate_bps: bitrate_bps.clamp(MIN_OPUS_BPS, MAX_OPUS_BPS),
            fec: false,
            expected_loss_pct: 0,
            dtx: false,
            red: false,
            ptime_ms: 20,
        }
    }
}

#[derive(Debug)]
pub struct AudioPolicy {
    max_bps: i32,
    red_available: bool,
    with_video: bool,
    /// Smoothed fraction of packets lost toward the peer.
    loss: Option<f64>,
    estimate_kbps: Option<u64>,
    /// Since when the loss has been low enough for FEC, and for RED, to go off.
    fec_low_since: Option<Instant>,
    red_low_since: Option<Instant>,
    current: AudioSettings,
}

impl AudioPolicy {
    /// A policy for an Opus stream configured at `max_bps`; `red_available` when RED was
    /// negotiated; `with_video` when video shares the estimate.
    pub fn new(max_bps: i32, red_available: bool, with_video: bool) -> AudioPolicy {
        AudioPolicy {
            max_bps: max_bps.clamp(MIN_OPUS_BPS, MAX_OPUS_BPS),
            red_available,
            with_video,
            loss: None,
            estimate_kbps: None,
            fec_low_since: None,
            red_low_since: None,
            current: AudioSettings::fixed(max_bps),
        }
    }

    pub fn settings(&self) -> AudioSettings {
        self.current
    }

    /// The smoothed loss toward the peer, percent.
    pub fn loss_pct(&self) -> f64 {
        self.loss.unwrap_or(0.0) * 100.0
    }

    /// The far end's receiver report: `fraction` of the audio packets since the last one
    /// were lost. Returns the new settings if they changed.
    pub fn on_loss(&mut self, fraction: f32, now: Instant) -> Option<AudioSettings> {
        let l = f64::from(fraction).clamp(0.0, 1.0);
        self.loss = Some(match self.loss {
            None => l,
            Some(s) => s + (l - s) * LOSS_SMOOTHING,
        });
        self.update(now)
    }

    /// The send estimate moved. Returns the new settings if they changed.
    pub fn on_estimate(&mut self, kbps: u64, now: Instant) -> Option<AudioSettings> {
        self.estimate_kbps = Some(kbps);
        self.update(now)
    }

    fn update(&mut self, now: Instant) -> Option<AudioSettings> {
        let loss = self.loss.unwrap_or(0.0);
        let mut s = self.current;
        s.fec = protect(s.fec, loss, FEC_ON, &mut self.fec_low_since, now);
        s.red = self.red_available && protect(s.red, loss, RED_ON, &mut self.red_low_since, now);
        s.expected_loss_pct = if s.fec {
            // (Less a hair: a smoothed 6 % read from f32 reports is 6.00000005.)
            (loss * 100.0 - 1e-3).ceil().clamp(1.0, 30.0) as u8
        } else {
            0
        };
        // The ptime first (it sets the overhead), from what 20 ms packets would leave.
        let at_20 = self.bitrate_for(20, s.red);
        s.ptime_ms = match s.ptime_ms {
            20 if at_20 < LONG_PTIME_BELOW_BPS => 60,
            60 if at_20 >= SHORT_PTIME_FROM_BPS => 20,
            p => p,
        };
        let want = self.bitrate_for(s.ptime_ms, s.red);
        let moved = (want - s.bitrate_bps).abs() as f64 > s.bitrate_bps as f64 * BITRATE_STEP;
        if moved || want == self.max_bps || want == MIN_OPUS_BPS {
            s.bitrate_bps = want;
        }
        s.dtx = match s.dtx {
            false => s.bitrate_bps <= DTX_AT_BPS,
            true => s.bitrate_bps < NO_DTX_FROM_BPS,
        };
        (s != self.current).then(|| {
            self.current = s;
            s
        })
    }

    /// The Opus bitrate the estimate leaves for packets of `ptime_ms`, with or without
    /// RED copies in each; the configured bitrate until there is an estimate.
    fn bitrate_for(&self, ptime_ms: u32, red: bool) -> i32 {
        let Some(kbps) = self.estimate_kbps else {
            return self.max_bps;
        };
        let share = if self.with_video {
            SHARE_WITH_VIDEO
        } else {
            SHARE_ALONE
        };
        let overhead = f64::from(PACKET_OVERHEAD_BYTES * 8 * 1000 / ptime_ms);
        let payload = (kbps as f64 * 1000.0 * share - overhead)
            / if red { f64::from(1 + RED_LEVELS) } else { 1.0 };
        (payload as i32).clamp(MIN_OPUS_BPS, self.max_bps)
    }
}

/// Whether a protection that turns on at `threshold` of loss is on: at once when the loss
/// reaches it, off once the loss stayed under half of it for [`HOLD`].
fn protect(
    on: bool,
    loss: f64,
    threshold: f64,
    low_since: &mut Option<Instant>,
    now: Instant,
) -> bool {
    if loss >= threshold {
        *low_since = None;
        return true;
    }
    if !on {
        return false;
    }
    if loss >= threshold / 2.0 {
        *low_since = None;
        return true;
    }
    let since = *low_since.get_or_insert(now);
    now.duration_since(since) < HOLD
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, s: u64) -> Instant {
        t0 + Duration::from_secs(s)
    }

    #[test]
    fn a_clean_link_gets_the_configured_bitrate_unprotected() {
        let t0 = Instant::now();
        let mut p = AudioPolicy::new(32_000, true, true);
        assert_eq!(p.on_estimate(1000, t0), None);
        assert_eq!(p.on_loss(0.0, at(t0, 1)), None);
        assert_eq!(p.settings(), AudioSettings::fixed(32_000));
    }

    #[test]
    fn loss_turns_fec_then_red_on_and_they_stay_through_a_lull() {
        let t0 = Instant::now();
        let mut p = AudioPolicy::new(32_000, true, true);
        p.on_estimate(1000, t0);
        // 2 %: FEC (expected loss 2), no RED yet.
        let s = p.on_loss(0.02, at(t0, 1)).unwrap();
        assert!(s.fec && !s.red, "{s:?}");
        assert_eq!(s.expected_loss_pct, 2);
        // 10 %: smoothed 6 % -> RED on, expected loss 6. 250 kbit/s for audio, less
        // 24.8 kbit/s of headers, a third each for the frame and its two RED copies:
        // still above 32 kbit/s.
        let s = p.on_loss(0.10, at(t0, 2)).unwrap();
        assert!(s.fec && s.red, "{s:?}");
        assert_eq!(s.expected_loss_pct, 6);
        assert_eq!(s.bitrate_bps, 32_000);
        // No loss: 3 %, 1.5 %, 0.75 % (under half of RED's 3 % from t=5), ...
        for t in 3..=14 {
            p.on_loss(0.0, at(t0, t));
            assert!(p.settings().red, "RED held at t={t}");
        }
        // ... RED goes off 10 s after t=5; FEC (0.5 % reached at t=6) a second later.
        let s = p.on_loss(0.0, at(t0, 15)).unwrap();
        assert!(!s.red && s.fec, "{s:?}");
        let s = p.on_loss(0.0, at(t0, 16)).unwrap();
        assert!(!s.red && !s.fec && s.expected_loss_pct == 0, "{s:?}");
    }

    #[test]
    fn loss_back_within_the_hold_keeps_protection_on() {
        let t0 = Instant::now();
        let mut p = AudioPolicy::new(32_000, true, false);
        p.on_loss(0.08, t0);
        for t in 1..=8 {
            p.on_loss(0.0, at(t0, t));
        }
        // 8 % halved each second: under 1.5 % from t=3, so RED would go at t=13; loss
        // comes back at t=9 and the hold starts over.
        p.on_loss(0.06, at(t0, 9));
        for t in 10..=20 {
            p.on_loss(0.0, at(t0, t));
            assert!(p.settings().red, "t={t}");
        }
    }

    #[test]
    fn without_red_negotiated_only_fec_comes_on() {
        let t0 = Instant::now();
        let mut p = AudioPolicy::new(32_000, false, false);
        let s = p.on_loss(0.2, t0).unwrap();
        assert!(s.fec && !s.red);
        assert_eq!(s.expected_loss_pct, 20);
    }

    #[test]
    fn the_bitrate_follows_the_estimate_with_its_share_and_headers() {
        let t0 = Instant::now();
        let mut p = AudioPolicy::new(32_000, true, true);
        // Beside video at 100 kbit/s: 25 kbit/s less 24.8 for 20 ms headers leaves
        // nothing, so 6 kbit/s at 20 ms would be all headers: 60 ms packets (8.27 kbit/s
        // of headers) leave 16.7 kbit/s.
        let s = p.on_estimate(100, t0).unwrap();
        assert_eq!((s.ptime_ms, s.bitrate_bps), (60, 16_734));
        assert!(!s.dtx);
        // Alone at 100 kbit/s: 80 - 24.8 = 55.2, capped at the configured 32.
        let mut alone = AudioPolicy::new(32_000, true, false);
        assert_eq!(alone.on_estimate(100, t0), None);
        // At 30 kbit/s: 24 - 24.8 at 20 ms -> 60 ms, 24 - 8.27 = 15.7 kbit/s.
        let s = alone.on_estimate(30, t0).unwrap();
        assert_eq!((s.ptime_ms, s.bitrate_bps), (60, 15_734));
        // Back at 100: 20 ms leaves 55.2 >= 16 -> 20 ms at the configured 32.
        let s = alone.on_estimate(100, t0).unwrap();
        assert_eq!((s.ptime_ms, s.bitrate_bps), (20, 32_000));
    }

    #[test]
    fn red_splits_the_bitrate_three_ways_and_small_moves_are_ignored() {
        let t0 = Instant::now();
        let mut p = AudioPolicy::new(64_000, true, false);
        // Alone at 100 kbit/s: 55.2 kbit/s of payload.
        assert_eq!(p.on_estimate(100, t0).unwrap().bitrate_bps, 55_200);
        // 5 % loss: RED with two copies leaves a third, 18.4.
        let s = p.on_loss(0.05, t0).unwrap();
        assert_eq!((s.red, s.bitrate_bps), (true, 18_400));
        // 104 kbit/s would give 19.47: under a tenth more, unchanged.
        assert_eq!(p.on_estimate(104, t0), None);
        assert_eq!(p.settings().bitrate_bps, 18_400);
    }

    #[test]
    fn dtx_near_the_floor_with_hysteresis() {
        let t0 = Instant::now();
        let mut p = AudioPolicy::new(32_000, false, false);
        // 20 kbit/s alone: 16 - 8.27 = 7.7 kbit/s at 60 ms: DTX on.
        let s = p.on_estimate(20, t0).unwrap();
        assert_eq!((s.ptime_ms, s.bitrate_bps, s.dtx), (60, 7_734, true));
        // 30 kbit/s: 15.7 at 60 ms (20 ms would leave -0.8): DTX stays on below 20.
        let s = p.on_estimate(30, t0).unwrap();
        assert_eq!((s.ptime_ms, s.bitrate_bps, s.dtx), (60, 15_734, true));
        // 35 kbit/s: 20 ms leaves 3.2, 60 ms 19.7: still DTX.
        let s = p.on_estimate(35, t0).unwrap();
        assert_eq!((s.bitrate_bps, s.dtx), (19_734, true));
        // 40 kbit/s: 60 ms leaves 23.7: DTX off; 20 ms would leave 7.2, so 60 ms stays.
        let s = p.on_estimate(40, t0).unwrap();
        assert_eq!((s.ptime_ms, s.bitrate_bps, s.dtx), (60, 23_734, false));
    }
}
