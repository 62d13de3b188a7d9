//! What the encoders get of the send estimate. str0m's GCC gives the estimate; on top of
//! it natter pushes the video encoder back while the bottleneck holds a standing queue.
//!
//! Why: GCC's delay detector reacts to a queue that grows, not to one that stays full.
//! After the capacity falls (RFC 8867 §5.1: 2.5 → 0.6 Mbit/s) the estimate drops within a
//! second, but to about what the link carries, so the queue that built up before it
//! dropped never drains: natter's sender kept a 300 ms queue for 6–8 s (p95 queuing delay
//! 275 ms against Chromium's 60–70 ms, docs/benchmarks.md). libwebrtc drains it by pushing
//! its encoder back while data is outstanding (its congestion window); natter does the
//! same from the round trip, which grows by exactly the queue.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::VideoOptions;

/// What audio (Opus with RED, RTP and SRTP overhead) takes of the estimate, kbit/s.
pub(super) const AUDIO_SHARE_KBPS: u64 = 80;
/// The video encoder gets this share of what the estimate leaves after audio: the pacer
/// and retransmissions need headroom.
const VIDEO_SHARE_OF_ESTIMATE: f64 = 0.85;
const MIN_VIDEO_KBPS: u32 = 50;

/// Where the bandwidth estimate starts: above what Opus with RED needs, and low, as
/// libwebrtc's does; str0m's initial probes (at 3 and 6 times it) find the link within a
/// second or two. Starting where the configured media fits (4.7 Mbit/s for 4 Mbit/s video)
/// put the first keyframe, sized for that, and a second of video into a 1 Mbit/s link at
/// once: 200 ms of queue for 2 s (RFC 8867 §5.1). The encoder drops frames rather than
/// overshoot a low target, so the pacer does not queue.
pub(super) const INITIAL_ESTIMATE_KBPS: u64 = 300;

/// The video encoder's bitrate for an estimate: what is left after audio, with headroom,
/// scaled by the queue pushback (1.0 when there is no standing queue), never above what was
/// asked for.
pub(super) fn video_kbps_for(estimate_kbps: u64, pushback: f64, configured: u32) -> u32 {
    let left = estimate_kbps.saturating_sub(AUDIO_SHARE_KBPS) as f64 * VIDEO_SHARE_OF_ESTIMATE;
    ((left * pushback) as u32).clamp(MIN_VIDEO_KBPS, configured.max(MIN_VIDEO_KBPS))
}

/// What the configured media needs of the link (audio, then video with 15 % for RTP and
/// retransmissions), kbit/s.
pub(super) fn media_kbps(video: Option<VideoOptions>) -> u64 {
    AUDIO_SHARE_KBPS + video.map_or(0, |v| u64::from(v.bitrate_kbps)) * 23 / 20
}

/// The base round trip is the smallest seen over this long: long enough to outlast a
/// standing queue, short enough to follow a path that got longer.
const BASE_WINDOW: Duration = Duration::from_secs(20);
/// At most this many round-trip samples are kept (5 a second over the window is 100).
const MAX_SAMPLES: usize = 256;
/// No pushback up to this much queue (GCC's own p50 here is ~15 ms) ...
const QUEUE_LOW: Duration = Duration::from_millis(25);
/// ... and the most from this much on. 50/250 ms kept p95 at 75–110 ms on RFC 8867 §5.1
/// (three runs), 25/150 at 54–78 ms (five) for 3 points of utilization (docs/benchmarks.md).
const QUEUE_HIGH: Duration = Duration::from_millis(150);
/// The least share of its target the video encoder is left with.
pub const MIN_PUSHBACK: f64 = 0.2;
/// Once the queue is gone the share climbs back this much a second (the round trip that
/// shows it gone is a round trip old; jumping back at once refills the queue).
const RECOVERY_PER_S: f64 = 0.5;

/// How much of its target the video encoder gets while a queue stands at the bottleneck,
/// from round-trip samples: the queue is the round trip above the smallest one of the last
/// [`BASE_WINDOW`]; the share falls straight to what the queue calls for (1.0 at
/// [`QUEUE_LOW`] down to [`MIN_PUSHBACK`] at [`QUEUE_HIGH`], linearly) and climbs back at
/// [`RECOVERY_PER_S`].
#[derive(Debug)]
pub struct QueuePushback {
    /// (when, rtt), rtts increasing from front to back: the front is the window's minimum.
    window: VecDeque<(Instant, Duration)>,
    share: f64,
    last: Option<Instant>,
}

impl Default for QueuePushback {
    fn default() -> Self {
        QueuePushback {
            window: VecDeque::new(),
            share: 1.0,
            last: None,
        }
    }
}

impl QueuePushback {
    /// A round-trip sample taken at `now`; returns the share after it.
    pub fn on_rtt(&mut self, rtt: Duration, now: Instant) -> f64 {
        while self.window.back().is_some_and(|&(_, r)| r >= rtt) {
            self.window.pop_back();
        }
        self.window.push_back((now, rtt));
        while self
            .window
            .front()
            .is_some_and(|&(t, _)| now.saturating_duration_since(t) > BASE_WINDOW)
            || self.window.len() > MAX_SAMPLES
        {
            self.window.pop_front();
        }
        let base = self.window.front().map_or(rtt, |&(_, r)| r);
        let queue = rtt.saturating_sub(base);
        let wanted = if queue <= QUEUE_LOW {
            1.0
        } else if queue >= QUEUE_HIGH {
            MIN_PUSHBACK
        } else {
            let x = (queue - QUEUE_LOW).as_secs_f64() / (QUEUE_HIGH - QUEUE_LOW).as_secs_f64();
            1.0 - x * (1.0 - MIN_PUSHBACK)
        };
        let elapsed = self
            .last
            .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
        self.last = Some(now);
        self.share = if wanted < self.share {
            wanted
        } else {
            (self.share + RECOVERY_PER_S * elapsed).min(wanted)
        };
        self.share
    }

    /// The video encoder's share of its target now.
    pub fn share(&self) -> f64 {
        self.share
    }

    /// The base round trip, when there is one.
    pub fn base_rtt(&self) -> Option<Duration> {
        self.window.front().map(|&(_, r)| r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_video_target_is_what_audio_leaves_with_headroom_scaled_by_the_pushback() {
        // (1,080 - 80) × 0.85 = 850.
        assert_eq!(video_kbps_for(1080, 1.0, 4000), 850);
        assert_eq!(video_kbps_for(1080, 0.5, 4000), 425);
        // Never above the configured rate, never below the floor.
        assert_eq!(video_kbps_for(10_000, 1.0, 1000), 1000);
        assert_eq!(video_kbps_for(100, 0.2, 4000), MIN_VIDEO_KBPS);
    }

    #[test]
    fn a_queue_pushes_back_at_once_and_the_share_climbs_back_at_half_a_second() {
        let t0 = Instant::now();
        let mut p = QueuePushback::default();
        // A 100 ms path with 20 ms of queue: no pushback.
        assert_eq!(p.on_rtt(100 * MS, t0), 1.0);
        assert_eq!(p.on_rtt(120 * MS, t0 + 200 * MS), 1.0);
        // 100 ms of queue: 0.6 of the way from 25 to 150 ms, so 1 - 0.6 × 0.8 = 0.52.
        let s = p.on_rtt(200 * MS, t0 + 400 * MS);
        assert!((s - 0.52).abs() < 1e-9, "{s}");
        // A full 300 ms queue: the floor.
        assert_eq!(p.on_rtt(400 * MS, t0 + 600 * MS), MIN_PUSHBACK);
        // The queue gone: 0.2 climbs 0.1 per 200 ms sample, to 1.0 after 1.6 s.
        let mut t = t0 + 600 * MS;
        let mut shares = Vec::new();
        for _ in 0..9 {
            t += 200 * MS;
            shares.push((p.on_rtt(105 * MS, t) * 10.0).round() / 10.0);
        }
        assert_eq!(shares, [0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.0]);
        // Climbing stops at what a queue still standing calls for (0.52 at 100 ms).
        assert_eq!(p.on_rtt(400 * MS, t + 200 * MS), MIN_PUSHBACK);
        let s = p.on_rtt(200 * MS, t + 2000 * MS);
        assert!((s - 0.52).abs() < 1e-9, "{s}");
    }

    #[test]
    fn the_base_round_trip_is_the_least_of_the_last_twenty_seconds() {
        let t0 = Instant::now();
        let mut p = QueuePushback::default();
        p.on_rtt(100 * MS, t0);
        p.on_rtt(180 * MS, t0 + 5_000 * MS);
        assert_eq!(p.base_rtt(), Some(100 * MS));
        // The path got longer: 20 s after the last 100 ms sample, 180 ms is the base, and
        // 200 ms is no queue to push back on.
        p.on_rtt(190 * MS, t0 + 20_001 * MS);
        assert_eq!(p.base_rtt(), Some(180 * MS));
        assert_eq!(p.on_rtt(200 * MS, t0 + 25_001 * MS), 1.0);
        // Samples stay bounded however many come.
        for i in 0..10_000u64 {
            p.on_rtt((1000 + i) as u32 * MS, t0 + 26_000 * MS + i as u32 * MS);
        }
        assert!(p.window.len() <= MAX_SAMPLES);
    }
}
