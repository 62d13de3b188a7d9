//! Video without the network: the VP8 codec, the stamped test pattern, and what the receiver
//! measures of what it renders.

pub mod pattern;
pub mod playout;
pub mod vp8_rtp;
pub mod vpx;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use pattern::{Stamp, TestPattern, read_stamp};
pub use playout::Playout;
pub use vpx::{DecodedPicture, EncodedFrame, EncoderSettings, Vp8Decoder, Vp8Encoder, VpxError};

/// A gap between rendered frames longer than this is a freeze (libwebrtc's full-stack tests
/// count them the same way).
pub const FREEZE_GAP: Duration = Duration::from_millis(150);
const DELAY_SAMPLES: usize = 2048;
/// Freezes remembered one by one (the statistics are copied out every second: kept small).
pub const FREEZE_LOG: usize = 32;

/// What video a call sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VideoOptions {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
}

impl Default for VideoOptions {
    fn default() -> Self {
        VideoOptions {
            width: 640,
            height: 360,
            fps: 30,
            bitrate_kbps: 800,
        }
    }
}

impl VideoOptions {
    pub fn encoder_settings(&self) -> EncoderSettings {
        EncoderSettings {
            width: self.width,
            height: self.height,
            fps: self.fps,
            bitrate_kbps: self.bitrate_kbps,
            temporal_layers: 1,
        }
    }
}

/// What one side measured of the video it sent and received.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct VideoStats {
    pub video_frames_sent: u64,
    pub video_keyframes_sent: u64,
    /// Keyframe requests (PLI/FIR) the other side sent us.
    pub video_keyframe_requests_received: u64,
    /// Whole frames str0m handed over (after its jitter buffer, NACK and RTX).
    pub video_frames_received: u64,
    pub video_frames_decoded: u64,
    /// Decoded frames whose stamp read back, shown in order: what a user saw.
    pub video_frames_rendered: u64,
    /// Frames never shown (frame numbers skipped between rendered ones).
    pub video_frames_missed: u64,
    /// Frames dropped while waiting for a keyframe after damage.
    pub video_frames_discarded: u64,
    pub video_keyframe_requests_sent: u64,
    /// NACKs we sent for missing video packets, and those the peer sent us.
    pub video_nacks_sent: u64,
    pub video_nacks_received: u64,
    pub video_freezes: u64,
    pub video_freeze_ms: u64,
    /// The last [`FREEZE_LOG`] freezes: [when each ended, how long it was], ms, the first
    /// counted from when the receiver started.
    pub video_freeze_log: Vec<[u64; 2]>,
    /// The longest time between two rendered frames so far.
    pub video_longest_gap_ms: u64,
    /// Rendered frames per second over the last second.
    pub video_fps: f64,
    /// Rendered frames per second since the first one.
    pub video_fps_avg: f64,
    pub video_width: u32,
    pub video_height: u32,
    /// The last [`FREEZE_LOG`] changes of the picture size: [when, width, height], ms from
    /// when the receiver started.
    pub video_size_log: Vec<[u64; 3]>,
    /// Capture (on the sender's clock) to render (on ours), when both clocks agree.
    pub video_delay_ms_p50: Option<u32>,
    pub video_delay_ms_p95: Option<u32>,
    /// How long frames are held before they are shown, to absorb retransmissions.
    pub video_playout_delay_ms: u64,
    /// The bitrate the encoder is set to now (it follows the bandwidth estimate).
    pub video_target_kbps: u32,
    /// What the encoder sends now (the adaptation steps it down on a thin link), and how
    /// often that changed.
    pub video_send_width: u32,
    pub video_send_height: u32,
    pub video_send_fps: u32,
    pub video_step_changes: u64,
    pub video_first_frame_ms: Option<u64>,
}

impl VideoStats {
    /// Rendered frames out of those the sender numbered in the span seen, in percent.
    pub fn rendered_pct(&self) -> f64 {
        let spanned = self.video_frames_rendered + self.video_frames_missed;
        if spanned == 0 {
            return 0.0;
        }
        100.0 * self.video_frames_rendered as f64 / spanned as f64
    }
}

/// Counts what is rendered: frame rate, freezes, resolution, delay.
#[derive(Debug)]
pub struct RenderTracker {
    pub stats: VideoStats,
    started: Instant,
    first: Option<Instant>,
    last: Option<(Instant, u32)>,
    recent: VecDeque<Instant>,
    delays: VecDeque<u32>,
}

impl RenderTracker {
    pub fn new(now: Instant) -> RenderTracker {
        RenderTracker {
            stats: VideoStats::default(),
            started: now,
            first: None,
            last: None,
            recent: VecDeque::new(),
            delays: VecDeque::new(),
        }
    }

    /// A picture was decoded with `stamp` (None if it did not read back), at `now`, when
    /// our wall clock read `wall_ms`.
    pub fn rendered(
        &mut self,
        pic: &DecodedPicture,
        stamp: Option<Stamp>,
        now: Instant,
        wall_ms: u32,
    ) {
        let s = &mut self.stats;
        s.video_frames_decoded += 1;
        if (s.video_width, s.video_height) != (pic.width, pic.height) {
            if s.video_size_log.len() == FREEZE_LOG {
                s.video_size_log.remove(0);
            }
            let at = now.duration_since(self.started).as_millis() as u64;
            s.video_size_log
                .push([at, u64::from(pic.width), u64::from(pic.height)]);
        }
        s.video_width = pic.width;
        s.video_height = pic.height;
        let Some(stamp) = stamp else { return };
        if let Some((_, prev)) = self.last {
            let step = stamp.frame.wrapping_sub(prev);
            // An old or repeated frame is not shown again; a far jump is a new sender.
            if step == 0 || step > u32::MAX / 2 {
                return;
            }
            if step < 10_000 {
                s.video_frames_missed += u64::from(step - 1);
            }
        }
        if let Some((at, _)) = self.last {
            let gap = now.duration_since(at);
            s.video_longest_gap_ms = s.video_longest_gap_ms.max(gap.as_millis() as u64);
            if gap > FREEZE_GAP {
                s.video_freezes += 1;
                s.video_freeze_ms += gap.as_millis() as u64;
                if s.video_freeze_log.len() == FREEZE_LOG {
                    s.video_freeze_log.remove(0);
                }
                let end = now.duration_since(self.started).as_millis() as u64;
                s.video_freeze_log.push([end, gap.as_millis() as u64]);
            }
        }
        s.video_frames_rendered += 1;
        self.last = Some((now, stamp.frame));
        let first = *self.first.get_or_insert(now);
        s.video_first_frame_ms
            .get_or_insert(now.duration_since(self.started).as_millis() as u64);
        self.recent.push_back(now);
        while self
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > Duration::from_secs(1))
        {
            self.recent.pop_front();
        }
        s.video_fps = self.recent.len() as f64;
        let span = now.duration_since(first).as_secs_f64();
        if span > 0.0 {
            s.video_fps_avg = (s.video_frames_rendered - 1) as f64 / span;
        }
        // The two clocks are read to the millisecond: a frame across loopback can seem to
        // arrive a millisecond before it left.
        let delay = match wall_ms.wrapping_sub(stamp.capture_ms) {
            d if d > u32::MAX - 1000 => 0,
            d => d,
        };
        if delay < 60_000 {
            if self.delays.len() == DELAY_SAMPLES {
                self.delays.pop_front();
            }
            self.delays.push_back(delay);
        }
    }

    /// The statistics, with the delay percentiles worked out.
    pub fn snapshot(&self) -> VideoStats {
        let mut s = self.stats.clone();
        if let Some([p50, p95]) = percentiles(self.delays.iter().copied(), [0.5, 0.95]) {
            s.video_delay_ms_p50 = Some(p50);
            s.video_delay_ms_p95 = Some(p95);
        }
        s
    }
}

/// The `qs` quantiles (0 to 1, nearest rank) of `values`; None when there are none.
pub(crate) fn percentiles<T: Ord + Copy, const N: usize>(
    values: impl IntoIterator<Item = T>,
    qs: [f64; N],
) -> Option<[T; N]> {
    let mut v: Vec<T> = values.into_iter().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(qs.map(|q| v[((v.len() - 1) as f64 * q).round() as usize]))
}

/// Milliseconds of UNIX time, wrapping at 2^32: the clock stamps are written in.
pub fn wall_ms() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pic() -> DecodedPicture {
        DecodedPicture {
            width: 320,
            height: 240,
            luma: Vec::new(),
        }
    }

    fn stamp(frame: u32) -> Option<Stamp> {
        Some(Stamp {
            frame,
            capture_ms: frame * 33,
        })
    }

    #[test]
    fn steady_frames_count_no_freeze_and_their_rate() {
        let t0 = Instant::now();
        let mut r = RenderTracker::new(t0);
        for i in 0..31u32 {
            let now = t0 + Duration::from_millis(100 + 33 * u64::from(i));
            r.rendered(&pic(), stamp(i), now, i * 33 + 20);
        }
        let s = r.snapshot();
        assert_eq!(s.video_frames_rendered, 31);
        assert_eq!(s.video_freezes, 0);
        assert_eq!(s.video_frames_missed, 0);
        assert!((s.video_fps_avg - 30.3).abs() < 0.2, "{}", s.video_fps_avg);
        assert_eq!(s.video_fps, 31.0);
        assert_eq!(s.video_delay_ms_p50, Some(20));
        assert_eq!(s.video_first_frame_ms, Some(100));
        assert_eq!((s.video_width, s.video_height), (320, 240));
    }

    #[test]
    fn a_long_gap_is_a_freeze_and_skipped_numbers_are_missed() {
        let t0 = Instant::now();
        let mut r = RenderTracker::new(t0);
        r.rendered(&pic(), stamp(0), t0, 0);
        r.rendered(&pic(), stamp(1), t0 + Duration::from_millis(33), 33);
        // Frames 2..=7 lost, 8 shows 200 ms after 1.
        r.rendered(&pic(), stamp(8), t0 + Duration::from_millis(233), 264);
        // A repeat and an unreadable picture change nothing shown.
        r.rendered(&pic(), stamp(8), t0 + Duration::from_millis(240), 270);
        r.rendered(&pic(), None, t0 + Duration::from_millis(250), 280);
        let s = r.snapshot();
        assert_eq!(s.video_freezes, 1);
        assert_eq!(s.video_freeze_ms, 200);
        assert_eq!(s.video_longest_gap_ms, 200);
        assert_eq!(s.video_frames_missed, 6);
        assert_eq!(s.video_frames_rendered, 3);
        assert_eq!(s.video_frames_decoded, 5);
        assert!((s.rendered_pct() - 100.0 * 3.0 / 9.0).abs() < 1e-9);
    }
}
