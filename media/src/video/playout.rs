//! When a decoded frame is shown. Frames are shown on the sender's timeline (RTP time) plus
//! a target delay, not the moment they complete: a frame repaired by a retransmission comes
//! a round trip late, and showing it on arrival, with the frames queued behind it all at
//! once, is a freeze followed by a jump. The target follows the lateness of recent frames,
//! as libwebrtc's receiver adds a round trip to its playout delay when NACK is on: it covers
//! 95 % of the last 10 s of frames, comes within [`STUTTER`] of the latest frame of the last
//! 20 s, so the rare frame that needed several retransmission rounds stutters rather than
//! freezes, and covers a whole repair round while repairs are happening. A frame later than
//! the target is shown on arrival.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::percentiles;
use super::vpx::RTP_CLOCK;

/// Frames the 95th percentile is taken over (10 s at 30 fps).
const WINDOW: usize = 300;
/// Frames the latest is remembered over (20 s at 30 fps).
const LONG_WINDOW: usize = 600;
/// How much later than the target the latest frame may come: its gap then stays under a
/// freeze (150 ms) at 30 fps.
pub const STUTTER: Duration = Duration::from_millis(100);
/// A frame this late was waiting for something: a retransmission, most likely.
const LATE: Duration = Duration::from_millis(20);
/// str0m checks for NACKs to send every 33 ms: a request waits up to that long, twice when
/// the first retransmission was lost as well.
const NACK_TICK: Duration = Duration::from_millis(33);
/// The round trip assumed until one is measured (str0m's own default for NACK retries).
const DEFAULT_RTT: Duration = Duration::from_millis(100);
/// The target falls at most this much a frame (5 ms a frame is 150 ms a second at 30 fps),
/// so shown frames speed up gently instead of jumping ahead.
const DECAY: Duration = Duration::from_millis(5);
/// Never hold frames longer than this, however late the stream runs.
pub const MAX_TARGET: Duration = Duration::from_millis(300);

#[derive(Debug)]
pub struct Playout {
    /// The earliest-arriving frame's (arrival - media time): the link at its fastest.
    base: Option<(Instant, u64)>,
    lateness: VecDeque<Duration>,
    /// (frame count, lateness) of frames each later than any after them: the running
    /// maximum over the long window, oldest first.
    latest: VecDeque<(u64, Duration)>,
    frames: u64,
    /// Frames in the short window that came later than [`LATE`]: repairs are happening.
    late_in_window: usize,
    /// The round trip to the sender, once measured: sizes retransmission rounds.
    rtt: Option<Duration>,
    target: Duration,
    last_shown: Option<Instant>,
}

impl Default for Playout {
    /// Until the stream has shown how late its frames come, they are held for one stutter
    /// allowance: a repair in the first second (before the round trip is even known, so
    /// str0m's NACK retries are slow) then stutters instead of freezing. On a clean link
    /// the hold decays to nothing in 20 frames.
    fn default() -> Playout {
        Playout {
            base: None,
            lateness: VecDeque::new(),
            latest: VecDeque::new(),
            frames: 0,
            late_in_window: 0,
            rtt: None,
            target: STUTTER,
            last_shown: None,
        }
    }
}

impl Playout {
    /// The frame with RTP time `rtp` (90 kHz ticks, extended) completed at `now`: when it
    /// is shown (never before an earlier frame, never before `now`).
    pub fn schedule(&mut self, rtp: u64, now: Instant) -> Instant {
        // Lateness against the fastest frame seen: a frame arriving earlier than that
        // becomes the new reference.
        let expected = match self.base {
            Some((at, base_rtp)) if rtp >= base_rtp => {
                at + Duration::from_micros((rtp - base_rtp) * 1_000_000 / u64::from(RTP_CLOCK))
            }
            _ => now,
        };
        if now <= expected {
            self.base = Some((now, rtp));
        }
        let late = now.saturating_duration_since(expected);
        if self.lateness.len() == WINDOW && self.lateness.pop_front().is_some_and(|l| l > LATE) {
            self.late_in_window -= 1;
        }
        self.lateness.push_back(late);
        self.late_in_window += usize::from(late > LATE);
        self.frames += 1;
        while self.latest.back().is_some_and(|(_, l)| *l <= late) {
            self.latest.pop_back();
        }
        self.latest.push_back((self.frames, late));
        while self
            .latest
            .front()
            .is_some_and(|(n, _)| self.frames - n >= LONG_WINDOW as u64)
        {
            self.latest.pop_front();
        }
        let latest = self.latest.front().map_or(Duration::ZERO, |(_, l)| *l);
        let [p95] = percentiles(self.lateness.iter().copied(), [0.95]).unwrap_or_default();
        let mut target = p95;
        if latest > LATE {
            // A retransmission is as likely to be lost as the packet was, so a repair that
            // took k rounds says k + 1 will come: cover one round past the latest, less the
            // stutter a viewer does not see as a freeze.
            target = target.max((latest + self.retry_round()).saturating_sub(STUTTER));
        }
        if self.late_in_window > 0 {
            // Repairs are happening: cover one whole round (request, then the resend a
            // round trip later), so it takes two lost in a row to stutter.
            target = target.max(self.repair_round());
        }
        self.target = target
            .max(self.target.saturating_sub(DECAY))
            .min(MAX_TARGET);
        let mut show = (expected.min(now) + self.target).max(now);
        if let Some(prev) = self.last_shown {
            show = show.max(prev);
        }
        self.last_shown = Some(show);
        show
    }

    /// The round-trip time to the sender, as measured: sizes a retransmission round.
    pub fn set_rtt(&mut self, rtt: Duration) {
        self.rtt = Some(rtt);
    }

    /// A first repair: the loss is noticed, the request waits for str0m's NACK tick, and
    /// the resend comes a round trip later.
    fn repair_round(&self) -> Duration {
        self.rtt.unwrap_or(DEFAULT_RTT) + 2 * NACK_TICK
    }

    /// Each further repair: str0m asks again one round trip (plus 5 ms) after the last
    /// request, on its next NACK tick.
    fn retry_round(&self) -> Duration {
        let wait = self.rtt.unwrap_or(DEFAULT_RTT) + Duration::from_millis(5);
        NACK_TICK * wait.as_micros().div_ceil(NACK_TICK.as_micros()) as u32
    }

    /// The delay frames are held for now.
    pub fn target(&self) -> Duration {
        self.target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: u64 = 3000; // 30 fps

    #[test]
    fn an_on_time_stream_is_shown_as_it_arrives() {
        let t0 = Instant::now();
        let mut p = Playout::default();
        let at = |i: u64| t0 + Duration::from_micros(i * 33_333);
        // The start-up hold, falling a step a frame.
        assert_eq!(p.schedule(0, at(0)), at(0) + STUTTER - DECAY);
        for i in 1..200u64 {
            let held = STUTTER.saturating_sub(DECAY * (i as u32 + 1));
            assert_eq!(p.schedule(i * FRAME, at(i)), at(i) + held, "frame {i}");
        }
        assert_eq!(p.target(), Duration::ZERO);
    }

    /// One late frame (a repair) raises the target to a whole repair round: by the default
    /// round trip until one is measured, then by the measured one.
    #[test]
    fn a_repair_holds_frames_for_a_round() {
        let t0 = Instant::now();
        let mut p = Playout::default();
        let at = |i: u64| t0 + Duration::from_micros(i * 33_333);
        p.schedule(0, at(0));
        p.schedule(FRAME, at(1) + Duration::from_millis(50));
        assert_eq!(p.target(), DEFAULT_RTT + 2 * NACK_TICK);
        p.set_rtt(Duration::from_millis(40));
        for i in 2..40u64 {
            p.schedule(i * FRAME, at(i));
        }
        assert_eq!(p.target(), Duration::from_millis(106));
    }

    /// One frame in ten comes 100 ms late (a retransmission): the target grows to cover it,
    /// and then frames are shown at an even pace although their arrivals are not.
    #[test]
    fn regular_late_frames_raise_the_target_and_are_shown_on_time() {
        let t0 = Instant::now();
        let mut p = Playout::default();
        p.set_rtt(Duration::from_millis(10));
        let mut shown = Vec::new();
        for i in 0..300u64 {
            let on_time = t0 + Duration::from_micros(i * 33_333);
            let now = if i % 10 == 5 {
                on_time + Duration::from_millis(100)
            } else {
                on_time
            };
            shown.push(p.schedule(i * FRAME, now));
        }
        assert_eq!(p.target(), Duration::from_millis(100));
        // Once the target has settled, no gap between shown frames exceeds 40 ms.
        let worst = shown[100..].windows(2).map(|w| w[1] - w[0]).max().unwrap();
        assert!(worst < Duration::from_millis(40), "{worst:?}");
    }

    #[test]
    fn the_target_is_capped_and_frames_never_go_backwards() {
        let t0 = Instant::now();
        let mut p = Playout::default();
        let mut last = t0;
        for i in 0..50u64 {
            // Each frame a further 30 ms late: a queue building up.
            let now = t0 + Duration::from_micros(i * 33_333 + i * 30_000);
            let at = p.schedule(i * FRAME, now);
            assert!(at >= now && at >= last);
            last = at;
        }
        assert_eq!(p.target(), MAX_TARGET);
    }

    /// One frame 250 ms late: for the 20 s after it, the target covers one retransmission
    /// round (33 ms at a 10 ms round trip) past it, less the stutter allowance; then it is
    /// forgotten.
    #[test]
    fn a_rare_very_late_frame_is_remembered_for_20_s() {
        let t0 = Instant::now();
        let mut p = Playout::default();
        p.set_rtt(Duration::from_millis(10));
        let at = |i: u64| t0 + Duration::from_micros(i * 33_333);
        for i in 0..100u64 {
            p.schedule(i * FRAME, at(i));
        }
        p.schedule(100 * FRAME, at(100) + Duration::from_millis(250));
        for i in 101..(100 + LONG_WINDOW as u64) {
            p.schedule(i * FRAME, at(i));
            assert_eq!(p.target(), Duration::from_millis(183), "frame {i}");
        }
        for i in (100 + LONG_WINDOW as u64)..(200 + LONG_WINDOW as u64) {
            p.schedule(i * FRAME, at(i));
        }
        assert_eq!(p.target(), Duration::ZERO);
    }
}
