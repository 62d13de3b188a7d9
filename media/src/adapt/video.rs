//! Which picture size and frame rate the video encoder's bitrate can carry. Sans-IO: fed
//! the encoder's target (what the estimate and the queue pushback leave, `session::rate`)
//! and the time, it returns the step to encode at when it changes.
//!
//! The steps are the configured size, half of it and a quarter (each side), then the
//! quarter at half the frame rate. A step needs [`DOWN_BITS_PER_PIXEL`] per pixel per
//! frame; below that for [`DOWN_HOLD`] the encoder goes a step down (a pushback blip does
//! not cost a keyframe), and it goes back up once the target has carried the upper step
//! with [`UP_MARGIN`] to spare for [`UP_HOLD`] (as many steps up at once as the target
//! carries so): a margin and a longer wait, so it does not flap between two steps. Each change of size costs a keyframe (VP8 carries the size only
//! there), which is why both directions wait.

use std::time::{Duration, Instant};

/// 640x360 at 30 fps needs 276 kbit/s, 320x180 69.
pub const DOWN_BITS_PER_PIXEL: f64 = 0.04;
/// Up needs half as much again as the upper step's own need: 414 kbit/s for 640x360.
pub const UP_MARGIN: f64 = 1.5;
pub const DOWN_HOLD: Duration = Duration::from_secs(1);
pub const UP_HOLD: Duration = Duration::from_secs(3);
/// No step smaller than this (one that would be is left out): the least the stamped test
/// pattern can carry, and about the least a phone shows usefully.
const MIN_WIDTH: u32 = 128;
const MIN_HEIGHT: u32 = 80;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VideoStep {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

impl VideoStep {
    /// The bitrate this step needs, kbit/s.
    pub fn needs_kbps(&self) -> f64 {
        f64::from(self.width * self.height * self.fps) * DOWN_BITS_PER_PIXEL / 1000.0
    }
}

#[derive(Debug)]
pub struct VideoPolicy {
    steps: Vec<VideoStep>,
    level: usize,
    /// Since when the target has been below this step's need, or above the upper one's
    /// with the margin.
    low_since: Option<Instant>,
    high_since: Option<Instant>,
}

impl VideoPolicy {
    /// The steps down from the configured size and frame rate.
    pub fn new(full: VideoStep) -> VideoPolicy {
        let mut steps = vec![full];
        for div in [2, 4] {
            let (w, h) = ((full.width / div) & !1, (full.height / div) & !1);
            if w >= MIN_WIDTH && h >= MIN_HEIGHT {
                steps.push(VideoStep {
                    width: w,
                    height: h,
                    fps: full.fps,
                });
            }
        }
        let last = *steps.last().expect("the full step");
        if last.fps >= 10 {
            steps.push(VideoStep {
                fps: last.fps / 2,
                ..last
            });
        }
        VideoPolicy {
            steps,
            level: 0,
            low_since: None,
            high_since: None,
        }
    }

    pub fn step(&self) -> VideoStep {
        self.steps[self.level]
    }

    /// 0 at the configured size and rate, one more for each step down.
    pub fn level(&self) -> usize {
        self.level
    }

    /// The encoder's target is `kbps` now. Returns the step to encode at when it changes.
    pub fn on_target(&mut self, kbps: u32, now: Instant) -> Option<VideoStep> {
        let kbps = f64::from(kbps);
        let low = self.level + 1 < self.steps.len() && kbps < self.step().needs_kbps();
        let high = self.level > 0 && kbps >= self.steps[self.level - 1].needs_kbps() * UP_MARGIN;
        let held = |since: &mut Option<Instant>, on: bool, hold: Duration| {
            if !on {
                *since = None;
                return false;
            }
            now.duration_since(*since.get_or_insert(now)) >= hold
        };
        let down = held(&mut self.low_since, low, DOWN_HOLD);
        let up = held(&mut self.high_since, high, UP_HOLD);
        if !down && !up {
            return None;
        }
        self.level = if down {
            self.level + 1
        } else {
            // Up as far as the target carries with the margin (after an outage the estimate
            // comes back in a jump: a step a hold would take 6 s from the smallest picture).
            (0..self.level)
                .find(|&i| kbps >= self.steps[i].needs_kbps() * UP_MARGIN)
                .unwrap_or(self.level - 1)
        };
        // The next step's wait counts from this change (a collapse walks down a step a
        // hold), and starts over at the first report that does not bear it out.
        self.low_since = Some(now);
        self.high_since = Some(now);
        Some(self.step())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: VideoStep = VideoStep {
        width: 640,
        height: 360,
        fps: 30,
    };

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn the_steps_halve_the_sides_then_the_frame_rate() {
        let p = VideoPolicy::new(FULL);
        let sizes: Vec<_> = p.steps.iter().map(|s| (s.width, s.height, s.fps)).collect();
        assert_eq!(
            sizes,
            [(640, 360, 30), (320, 180, 30), (160, 90, 30), (160, 90, 15)]
        );
        // 320x240 has no quarter step (80x60 is under 128x80).
        let small = VideoPolicy::new(VideoStep {
            width: 320,
            height: 240,
            fps: 30,
        });
        assert_eq!(small.steps.len(), 3);
        assert_eq!(small.steps[1].width, 160);
        assert_eq!(small.steps[2].fps, 15);
    }

    #[test]
    fn a_blip_under_the_need_does_not_step_down_a_held_one_does() {
        let t0 = Instant::now();
        let mut p = VideoPolicy::new(FULL);
        // 640x360x30 needs 276.48 kbit/s.
        assert_eq!(p.on_target(200, t0), None);
        assert_eq!(p.on_target(300, ms(t0, 800)), None);
        assert_eq!(p.on_target(200, ms(t0, 1000)), None);
        assert_eq!(p.on_target(200, ms(t0, 1900)), None);
        let s = p.on_target(200, ms(t0, 2000)).unwrap();
        assert_eq!((s.width, s.height), (320, 180));
        // 200 carries 320x180 (69 kbit/s): it stays.
        assert_eq!(p.on_target(200, ms(t0, 5000)), None);
    }

    #[test]
    fn a_collapse_walks_down_a_step_a_second_to_half_the_frame_rate() {
        let t0 = Instant::now();
        let mut p = VideoPolicy::new(FULL);
        let mut seen = vec![];
        for t in (0..=4000).step_by(200) {
            if let Some(s) = p.on_target(10, ms(t0, t)) {
                seen.push((t, s.width, s.fps));
            }
        }
        assert_eq!(seen, [(1000, 320, 30), (2000, 160, 30), (3000, 160, 15)]);
        assert_eq!(p.level(), 3);
    }

    #[test]
    fn up_needs_the_margin_held_three_seconds() {
        let t0 = Instant::now();
        let mut p = VideoPolicy::new(FULL);
        p.on_target(100, t0);
        assert!(p.on_target(100, ms(t0, 1000)).is_some());
        // 400 carries 640x360 but not with half again (414.72): no way up.
        for t in (1200..=9000).step_by(200) {
            assert_eq!(p.on_target(400, ms(t0, t)), None, "t={t}");
        }
        // 420 from 9.2 s: up 3 s later, not before.
        for t in (9200..12200).step_by(200) {
            assert_eq!(p.on_target(420, ms(t0, t)), None, "t={t}");
        }
        assert_eq!(p.on_target(420, ms(t0, 12200)), Some(FULL));
    }

    #[test]
    fn a_recovered_target_goes_up_as_many_steps_as_it_carries() {
        let t0 = Instant::now();
        let mut p = VideoPolicy::new(FULL);
        for t in (0..=3000).step_by(500) {
            p.on_target(10, ms(t0, t));
        }
        assert_eq!(p.level(), 3);
        // 160x90 at 30 fps needs 17.28 with half again 25.92; 320x180 103.68 with the
        // margin; 640x360 414.72. 200 kbit/s held 3 s: straight to 320x180.
        p.on_target(200, ms(t0, 3500));
        let s = p.on_target(200, ms(t0, 6500)).unwrap();
        assert_eq!((s.width, s.fps), (320, 30));
        // 1000 held 3 s: 640x360.
        p.on_target(1000, ms(t0, 7000));
        assert_eq!(p.on_target(1000, ms(t0, 10000)), Some(FULL));
    }

    #[test]
    fn a_dip_during_the_climb_starts_the_wait_over() {
        let t0 = Instant::now();
        let mut p = VideoPolicy::new(FULL);
        p.on_target(100, t0);
        p.on_target(100, ms(t0, 1000));
        p.on_target(500, ms(t0, 1200));
        p.on_target(500, ms(t0, 3000));
        p.on_target(300, ms(t0, 3200));
        assert_eq!(p.on_target(500, ms(t0, 4200)), None);
        assert_eq!(p.on_target(500, ms(t0, 7000)), None);
        assert_eq!(p.on_target(500, ms(t0, 7200)), Some(FULL));
    }
}
