//! What arrives: each whole frame str0m hands over goes to the decoder of its m-line — the
//! other side's audio or video in a 1:1 call, each participant's track in a group call —
//! and a video decoder that lost a picture asks the sender for a keyframe.

use std::time::Instant;

use str0m::format::Codec;
use str0m::media::{Frequency, KeyframeRequestKind, MediaData};

use super::video_pipe::VideoReceiver;
use super::{Session, SessionEvent};

impl Session {
    pub(super) fn media_data(&mut self, d: MediaData, now: Instant) {
        let video = d.params.spec().codec == Codec::Vp8;
        if video {
            let wall = self.wall_ms(now);
            let rtp = d.time.rebase(Frequency::NINETY_KHZ).numer();
            let want_keyframe = if self.remote_tracks.has(d.mid) {
                self.remote_tracks
                    .video(d.mid, &d.data, rtp, d.contiguous, now, wall)
            } else if Some(d.mid) == self.video_mid {
                match self.video_receiver(now) {
                    Some(rx) => rx.frame(&d.data, rtp, d.contiguous, now, wall),
                    None => return,
                }
            } else {
                return;
            };
            if want_keyframe && let Some(mut w) = self.rtc.writer(d.mid) {
                let _ = w.request_keyframe(d.rid, KeyframeRequestKind::Pli);
            }
            return;
        }
        let seq = **d.seq_range.end() as u16;
        let rtp = d.time.rebase(Frequency::FORTY_EIGHT_KHZ).numer() as u32;
        if self.remote_tracks.has(d.mid) {
            self.remote_tracks.audio(d.mid, seq, rtp, &d.data, now);
        } else if Some(d.mid) == self.mid {
            self.decoder.packet(seq, rtp, &d.data, now);
        }
    }

    /// The 1:1 call's video decoder, made on the first frame (None, and video off, if it
    /// cannot be made).
    fn video_receiver(&mut self, now: Instant) -> Option<&mut VideoReceiver> {
        if self.video_rx.is_none() {
            match VideoReceiver::new(now) {
                Ok(rx) => self.video_rx = Some(rx),
                Err(e) => {
                    self.events.push_back(SessionEvent::Warning(format!(
                        "video cannot be decoded: {e}"
                    )));
                    self.video_mid = None;
                    return None;
                }
            }
        }
        self.video_rx.as_mut()
    }
}
