//! The session's statistics: what str0m reports (packets, bytes, NACKs, the round trip,
//! the send estimate) folded into [`CallStats`], and the video encoder kept to what the
//! estimate and the queue pushback allow.

use std::time::Instant;

use str0m::Event;
use str0m::bwe::BweKind;

use super::group::TrackStats;
use super::{AudioSendStats, CallStats, Session, SessionEvent, rate};
use crate::video::VideoStats;

impl Session {
    /// One of str0m's statistics events (the others go to `handle_event`).
    pub(super) fn stats_event(&mut self, e: Event, now: Instant) {
        match e {
            Event::MediaIngressStats(m) => {
                self.ingress.insert(m.mid, (m.packets, m.bytes));
                self.transport.packets_received = self.ingress.values().map(|v| v.0).sum();
                self.transport.bytes_received = self.ingress.values().map(|v| v.1).sum();
                if Some(m.mid) == self.mid {
                    // RTP packets that arrived against sequence numbers spanned so far (one
                    // packet per audio frame), taken at the same moment: loss before RED or
                    // concealment repaired anything.
                    let r = &self.decoder.stats;
                    let expected = r.frames_received + r.frames_lost;
                    if expected > 0 {
                        let got = m.packets.min(expected) as f64;
                        self.transport.loss_before_repair_pct =
                            100.0 * (1.0 - got / expected as f64);
                    }
                } else if Some(m.mid) == self.video_mid {
                    self.video_nacks_sent = m.nacks;
                }
            }
            Event::MediaEgressStats(m) => {
                self.egress.insert(m.mid, (m.packets, m.bytes));
                self.transport.packets_sent = self.egress.values().map(|v| v.0).sum();
                self.transport.bytes_sent = self.egress.values().map(|v| v.1).sum();
                if Some(m.mid) == self.video_mid {
                    self.video_nacks_received = m.nacks;
                }
                if Some(m.mid) == self.mid
                    && let Some(loss) = m.loss
                {
                    self.audio_loss_reported(loss, now);
                }
            }
            Event::PeerStats(p) => {
                if let Some(rtt) = p.rtt {
                    self.transport.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                    if let Some(rx) = self.video_rx.as_mut() {
                        rx.set_rtt(rtt);
                    }
                    self.remote_tracks.set_rtt(rtt);
                    let before = self.pushback.share();
                    let share = self.pushback.on_rtt(rtt, now);
                    self.transport.queue_ms = self
                        .pushback
                        .base_rtt()
                        .map(|b| rtt.saturating_sub(b).as_secs_f64() * 1000.0);
                    self.transport.video_pushback_pct = share * 100.0;
                    if (share - before).abs() > 1e-9
                        && let Some(kbps) = self.transport.send_estimate_kbps
                    {
                        self.follow_estimate(kbps);
                    }
                }
                if let Some(b) = p.bwe_tx {
                    self.transport.send_estimate_kbps = Some(b.as_u64() / 1000);
                }
                // The video policy's holds are timed by these (every STATS_INTERVAL).
                if let (Some(v), Some(kbps)) = (self.opts.video, self.transport.send_estimate_kbps)
                {
                    let want = rate::video_kbps_for(kbps, self.pushback.share(), v.bitrate_kbps);
                    self.video_target(want, now);
                }
            }
            Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                let kbps = estimate.as_u64() / 1000;
                self.transport.send_estimate_kbps = Some(kbps);
                self.follow_estimate(kbps);
                self.audio_estimate(kbps, now);
            }
            _ => {}
        }
    }

    pub fn stats(&self) -> CallStats {
        CallStats {
            frames_sent: self.encoder.as_ref().map_or(0, |e| e.frames),
            received: self.decoder.stats.clone(),
            first_audio_ms: self
                .decoder
                .first_decoded
                .map(|t| t.duration_since(self.created).as_millis() as u64),
            transport: self.transport.clone(),
            audio_send: self.audio_send_stats(),
            video: self.video_stats(),
        }
    }

    /// Sets the video encoder to what the estimate allows, when that moved by more than a
    /// tenth (so small wobbles do not reconfigure it every report).
    fn follow_estimate(&mut self, estimate_kbps: u64) {
        if let Some(s) = self.simulcast.as_mut() {
            let room = rate::video_kbps_for(estimate_kbps, self.pushback.share(), s.total_kbps());
            s.follow_estimate(room);
            return;
        }
        let (Some(v), Some(tx)) = (self.opts.video, self.video_tx.as_mut()) else {
            return;
        };
        let want = rate::video_kbps_for(estimate_kbps, self.pushback.share(), v.bitrate_kbps);
        let now = tx.bitrate_kbps();
        if want.abs_diff(now) * 10 > now
            && let Err(e) = tx.set_bitrate(want)
        {
            self.events
                .push_back(SessionEvent::Warning(format!("video bitrate: {e}")));
        }
    }

    fn audio_send_stats(&self) -> AudioSendStats {
        let Some(e) = self.encoder.as_ref() else {
            return AudioSendStats::default();
        };
        let s = e.settings();
        AudioSendStats {
            opus_kbps: f64::from(s.bitrate_bps) / 1000.0,
            opus_fec: s.fec,
            opus_expected_loss_pct: s.expected_loss_pct,
            opus_dtx: s.dtx,
            audio_red: s.red,
            audio_ptime_ms: s.ptime_ms,
            audio_dtx_skipped: e.dtx_skipped,
            audio_adaptations: self.audio_adaptations,
            audio_remote_loss_pct: self.audio_policy.as_ref().map_or(0.0, |p| p.loss_pct()),
        }
    }

    fn video_stats(&self) -> Option<VideoStats> {
        if self.video_tx.is_none() && self.video_rx.is_none() && self.simulcast.is_none() {
            return None;
        }
        let mut s = self
            .video_rx
            .as_ref()
            .map(|r| r.stats())
            .unwrap_or_default();
        if let Some(tx) = &self.video_tx {
            s.video_frames_sent = tx.frames;
            s.video_keyframes_sent = tx.keyframes;
            s.video_keyframe_requests_received = tx.requests;
            s.video_target_kbps = tx.bitrate_kbps();
            let e = tx.settings();
            (s.video_send_width, s.video_send_height, s.video_send_fps) =
                (e.width, e.height, e.fps);
            s.video_step_changes = tx.step_changes;
        }
        if let Some(tx) = &self.simulcast {
            let (frames, keyframes, requests, kbps) = tx.counts();
            s.video_frames_sent = frames;
            s.video_keyframes_sent = keyframes;
            s.video_keyframe_requests_received = requests;
            s.video_target_kbps = kbps;
        }
        s.video_nacks_sent = self.video_nacks_sent;
        s.video_nacks_received = self.video_nacks_received;
        Some(s)
    }

    /// In a group call: each received track's figures.
    pub fn track_stats(&self) -> Vec<TrackStats> {
        self.remote_tracks.stats(&self.ingress)
    }
}
