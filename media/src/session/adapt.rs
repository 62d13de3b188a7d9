//! The adaptation policies (`crate::adapt`) applied: the far end's loss reports and the send
//! estimate go to the audio policy, whose settings go to libopus and to str0m's RED
//! switch; the video encoder's target goes to the video policy, whose steps re-make the
//! encoder at the new size and frame rate.

use std::time::Instant;

use super::{Session, SessionEvent};
use crate::adapt::{AudioPolicy, AudioSettings, VideoPolicy, VideoStep};

impl Session {
    /// The audio policy for a stream that starts now (None when adaptation is off), and
    /// the settings to start with.
    pub(super) fn audio_start(&mut self) -> (Option<AudioPolicy>, AudioSettings) {
        let red = self.opts.red
            && self.mid.is_some_and(|mid| {
                self.rtc
                    .writer(mid)
                    .is_some_and(|w| w.payload_params().any(|p| p.red().is_some()))
            });
        let policy = self
            .opts
            .adapt
            .then(|| AudioPolicy::new(self.opts.bitrate, red, self.opts.video.is_some()));
        let settings = policy
            .as_ref()
            .map_or(AudioSettings::fixed(self.opts.bitrate), |p| p.settings());
        if let Some(mid) = self.mid {
            self.rtc.direct_api().set_red_send(mid, settings.red);
        }
        (policy, settings)
    }

    /// The far end's receiver report on our audio: `fraction` lost since the last one.
    pub(super) fn audio_loss_reported(&mut self, fraction: f32, now: Instant) {
        let change = self
            .audio_policy
            .as_mut()
            .and_then(|p| p.on_loss(fraction, now));
        self.apply_audio(change);
    }

    pub(super) fn audio_estimate(&mut self, kbps: u64, now: Instant) {
        let change = self
            .audio_policy
            .as_mut()
            .and_then(|p| p.on_estimate(kbps, now));
        self.apply_audio(change);
    }

    fn apply_audio(&mut self, change: Option<AudioSettings>) {
        let Some(s) = change else { return };
        self.audio_adaptations += 1;
        if let Some(mid) = self.mid {
            self.rtc.direct_api().set_red_send(mid, s.red);
        }
        if let Some(e) = self.encoder.as_mut()
            && let Err(e) = e.apply(s)
        {
            self.events.push_back(SessionEvent::Warning(e));
        }
    }

    /// The video policy for the configured picture (None when adaptation is off or there
    /// is no 1:1 video).
    pub(super) fn video_policy(&self) -> Option<VideoPolicy> {
        let v = self.opts.video.filter(|_| self.opts.adapt)?;
        Some(VideoPolicy::new(VideoStep {
            width: v.width,
            height: v.height,
            fps: v.fps,
        }))
    }

    /// The video encoder's target is `kbps`: a step down or up when the policy says so.
    pub(super) fn video_target(&mut self, kbps: u32, now: Instant) {
        let Some(step) = self
            .video_steps
            .as_mut()
            .and_then(|p| p.on_target(kbps, now))
        else {
            return;
        };
        if let Some(tx) = self.video_tx.as_mut()
            && let Err(e) = tx.set_step(step, kbps)
        {
            self.events
                .push_back(SessionEvent::Warning(format!("video step: {e}")));
        }
    }
}
