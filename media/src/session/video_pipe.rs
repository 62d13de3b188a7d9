//! VP8 both ways, without the network: the sender encodes the stamped test pattern at its
//! frame rate and honours keyframe requests; the receiver decodes whole frames, drops what
//! cannot decode after damage until a keyframe comes (asking for one, rate-limited), and
//! tracks what a viewer would see.

use std::time::{Duration, Instant};

use crate::adapt::VideoStep;
use crate::video::{
    EncodedFrame, EncoderSettings, Playout, RenderTracker, Stamp, TestPattern, VideoOptions,
    VideoStats, Vp8Decoder, Vp8Encoder, VpxError, read_stamp, vpx::RTP_CLOCK,
};

/// Keyframes forced by requests come at most this often: a burst of PLIs (several lost
/// frames in a row) costs one keyframe.
const MIN_FORCED_KEYFRAME_GAP: Duration = Duration::from_millis(200);
/// A receiver waiting for a keyframe asks again after this long.
const KEYFRAME_REQUEST_GAP: Duration = Duration::from_millis(250);

pub struct VideoSender {
    encoder: Vp8Encoder,
    pattern: TestPattern,
    interval: Duration,
    ticks_per_frame: u32,
    frame: u32,
    /// RTP time of the next frame (90 kHz): frames keep their spacing when the frame rate
    /// changes.
    pts: i64,
    pub step_changes: u64,
    pub next_due: Instant,
    keyframe_wanted: bool,
    last_forced: Option<Instant>,
    pub frames: u64,
    pub keyframes: u64,
    pub requests: u64,
}

impl VideoSender {
    pub fn new(opts: VideoOptions, now: Instant) -> Result<VideoSender, String> {
        Self::with_settings(opts.encoder_settings(), now)
    }

    /// A sender of the test pattern encoded as `s` says (a simulcast layer, two temporal
    /// layers).
    pub fn with_settings(s: EncoderSettings, now: Instant) -> Result<VideoSender, String> {
        let encoder = Vp8Encoder::new(s).map_err(|e| e.to_string())?;
        Ok(VideoSender {
            encoder,
            pattern: TestPattern::new(s.width, s.height)?,
            interval: Duration::from_secs(1) / s.fps,
            ticks_per_frame: RTP_CLOCK / s.fps,
            frame: 0,
            pts: 0,
            step_changes: 0,
            next_due: now,
            keyframe_wanted: false,
            last_forced: None,
            frames: 0,
            keyframes: 0,
            requests: 0,
        })
    }

    /// The peer asked for a keyframe (PLI or FIR).
    pub fn keyframe_requested(&mut self) {
        self.requests += 1;
        self.keyframe_wanted = true;
    }

    pub fn bitrate_kbps(&self) -> u32 {
        self.encoder.settings().bitrate_kbps
    }

    /// What the encoder is set to.
    pub fn settings(&self) -> EncoderSettings {
        self.encoder.settings()
    }

    /// Encodes at another size and frame rate from the next frame on, at `kbps`: a new
    /// encoder (its first frame a keyframe: VP8 says the size only there) and the pattern
    /// drawn at that size.
    pub fn set_step(&mut self, step: VideoStep, kbps: u32) -> Result<(), String> {
        let s = EncoderSettings {
            width: step.width,
            height: step.height,
            fps: step.fps,
            bitrate_kbps: kbps,
            ..self.encoder.settings()
        };
        self.encoder = Vp8Encoder::new(s).map_err(|e| e.to_string())?;
        self.pattern = TestPattern::new(s.width, s.height)?;
        self.interval = Duration::from_secs(1) / s.fps;
        self.ticks_per_frame = RTP_CLOCK / s.fps;
        self.step_changes += 1;
        Ok(())
    }

    /// Changes the encoder's target bitrate.
    pub fn set_bitrate(&mut self, kbps: u32) -> Result<(), VpxError> {
        self.encoder.set_bitrate(kbps)
    }

    /// The next frame if one is due: its RTP time (90 kHz) and VP8 data. `wall_ms` is the
    /// wall clock at `now`, stamped in as the capture time.
    pub fn next_frame(
        &mut self,
        now: Instant,
        wall_ms: u32,
    ) -> Result<Option<(u64, Vec<u8>)>, VpxError> {
        Ok(self
            .next_encoded(now, wall_ms)?
            .map(|(rtp, f)| (rtp, f.data)))
    }

    /// Lets a due frame pass unencoded (a paused simulcast layer): its number and time are
    /// used up, so that when the layer resumes its pictures are numbered and timed as the
    /// other layers' of the same moment.
    pub fn skip_due(&mut self, now: Instant) {
        while self.next_due <= now {
            self.next_due += self.interval;
            self.frame = self.frame.wrapping_add(1);
            self.pts += i64::from(self.ticks_per_frame);
        }
    }

    /// Like [`VideoSender::next_frame`], with what the encoder said of the frame.
    pub fn next_encoded(
        &mut self,
        now: Instant,
        wall_ms: u32,
    ) -> Result<Option<(u64, EncodedFrame)>, VpxError> {
        if now < self.next_due {
            return Ok(None);
        }
        // Far behind (the process was stopped): skip ahead rather than burst.
        self.next_due = if now - self.next_due > 4 * self.interval {
            now + self.interval
        } else {
            self.next_due + self.interval
        };
        let force = self.keyframe_wanted
            && self
                .last_forced
                .is_none_or(|t| now.duration_since(t) >= MIN_FORCED_KEYFRAME_GAP);
        if force {
            self.keyframe_wanted = false;
            self.last_forced = Some(now);
        }
        let stamp = Stamp {
            frame: self.frame,
            capture_ms: wall_ms,
        };
        let pts = self.pts;
        self.pts += i64::from(self.ticks_per_frame);
        let picture = self.pattern.draw(stamp);
        let out = self
            .encoder
            .encode(picture, pts, self.ticks_per_frame, force)?;
        self.frame = self.frame.wrapping_add(1);
        Ok(out.map(|f| {
            self.frames += 1;
            self.keyframes += u64::from(f.keyframe);
            (pts as u64, f)
        }))
    }
}

pub struct VideoReceiver {
    decoder: Vp8Decoder,
    tracker: RenderTracker,
    playout: Playout,
    waiting_for_keyframe: bool,
    last_request: Option<Instant>,
    frames_received: u64,
    discarded: u64,
    requests: u64,
}

impl VideoReceiver {
    pub fn new(now: Instant) -> Result<VideoReceiver, String> {
        Ok(VideoReceiver {
            decoder: Vp8Decoder::new().map_err(|e| e.to_string())?,
            tracker: RenderTracker::new(now),
            playout: Playout::default(),
            waiting_for_keyframe: true,
            last_request: None,
            frames_received: 0,
            discarded: 0,
            requests: 0,
        })
    }

    /// One whole frame from the jitter buffer, with its RTP time (90 kHz, extended).
    /// `contiguous` is false when frames before it went missing; `wall_ms` is the wall
    /// clock at `now`. Returns true when a keyframe should be requested now.
    pub fn frame(
        &mut self,
        data: &[u8],
        rtp: u64,
        contiguous: bool,
        now: Instant,
        wall_ms: u32,
    ) -> bool {
        self.frames_received += 1;
        // The VP8 frame tag: bit 0 of the first byte is 0 on a keyframe.
        let keyframe = data.first().is_some_and(|b| b & 1 == 0);
        if keyframe {
            self.waiting_for_keyframe = false;
        } else if !contiguous {
            self.waiting_for_keyframe = true;
        }
        if self.waiting_for_keyframe {
            self.discarded += 1;
        } else {
            match self.decoder.decode(data) {
                Ok(Some(pic)) => {
                    let stamp = read_stamp(&pic.luma, pic.width, pic.height);
                    let show = self.playout.schedule(rtp, now);
                    let held = show.duration_since(now).as_millis() as u32;
                    self.tracker
                        .rendered(&pic, stamp, show, wall_ms.wrapping_add(held));
                }
                Ok(None) => {}
                Err(_) => self.waiting_for_keyframe = true,
            }
        }
        self.should_request(now)
    }

    fn should_request(&mut self, now: Instant) -> bool {
        let due = self.waiting_for_keyframe
            && self
                .last_request
                .is_none_or(|t| now.duration_since(t) >= KEYFRAME_REQUEST_GAP);
        if due {
            self.last_request = Some(now);
            self.requests += 1;
        }
        due
    }

    /// The round-trip time to the sender, as measured.
    pub fn set_rtt(&mut self, rtt: Duration) {
        self.playout.set_rtt(rtt);
    }

    pub fn stats(&self) -> VideoStats {
        let mut s = self.tracker.snapshot();
        s.video_frames_received = self.frames_received;
        s.video_frames_discarded = self.discarded;
        s.video_keyframe_requests_sent = self.requests;
        s.video_playout_delay_ms = self.playout.target().as_millis() as u64;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> VideoOptions {
        VideoOptions {
            width: 320,
            height: 240,
            fps: 30,
            bitrate_kbps: 300,
        }
    }

    /// Sender to receiver with no network: every frame renders, stamps read back.
    #[test]
    fn frames_encode_decode_and_render_in_order() {
        let t0 = Instant::now();
        let mut tx = VideoSender::new(opts(), t0).unwrap();
        let mut rx = VideoReceiver::new(t0).unwrap();
        let mut keyframes = 0;
        for i in 0..60u32 {
            let now = t0 + Duration::from_secs(1) / 30 * i;
            let (rtp, data) = tx.next_frame(now, 0).unwrap().expect("a frame is due");
            assert_eq!(rtp, u64::from(i) * 3000);
            keyframes += usize::from(data[0] & 1 == 0);
            assert!(
                !rx.frame(&data, rtp, true, now, 0),
                "no keyframe request on a clean stream"
            );
        }
        let s = rx.stats();
        assert_eq!(keyframes, 1, "only the first frame is a keyframe");
        assert_eq!(s.video_frames_rendered, 60);
        assert_eq!(s.video_frames_missed, 0);
        assert_eq!(s.video_freezes, 0);
        assert_eq!((s.video_width, s.video_height), (320, 240));
    }

    /// A lost frame: the receiver drops what follows until a keyframe, asks for one (not
    /// more often than the gap allows), and the sender's forced keyframe heals it.
    #[test]
    fn damage_waits_for_a_requested_keyframe() {
        let t0 = Instant::now();
        let mut tx = VideoSender::new(opts(), t0).unwrap();
        let mut rx = VideoReceiver::new(t0).unwrap();
        let at = |i: u32| t0 + Duration::from_secs(1) / 30 * i;
        for i in 0..5 {
            let (rtp, d) = tx.next_frame(at(i), 0).unwrap().unwrap();
            rx.frame(&d, rtp, true, at(i), 0);
        }
        let _lost = tx.next_frame(at(5), 0).unwrap().unwrap();
        let mut requests = 0;
        for i in 6..12 {
            let (rtp, d) = tx.next_frame(at(i), 0).unwrap().unwrap();
            if rx.frame(&d, rtp, i != 6, at(i), 0) {
                requests += 1;
                tx.keyframe_requested();
            }
        }
        // Asked at frame 6; the keyframe is frame 7, so no second request was needed.
        assert_eq!(requests, 1);
        assert_eq!(tx.keyframes, 2);
        let s = rx.stats();
        assert_eq!(s.video_frames_discarded, 1, "only frame 6 was dropped");
        assert_eq!(s.video_frames_rendered, 5 + 5);
        assert_eq!(s.video_frames_missed, 2);
        assert_eq!(s.video_keyframe_requests_sent, 1);
    }

    #[test]
    fn garbage_is_not_rendered_and_asks_for_a_keyframe() {
        let t0 = Instant::now();
        let mut rx = VideoReceiver::new(t0).unwrap();
        // A "keyframe" tag with nonsense after it.
        assert!(rx.frame(&[0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9], 0, true, t0, 0));
        assert!(!rx.frame(&[0x11, 9, 9], 3000, true, t0 + Duration::from_millis(10), 0));
        assert!(rx.frame(
            &[0x11, 9, 9],
            3000,
            true,
            t0 + Duration::from_millis(300),
            0
        ));
        assert_eq!(rx.stats().video_frames_rendered, 0);
    }
}
