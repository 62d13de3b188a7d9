//! What arrives: each whole frame str0m hands over goes to the decoder of its m-line — the
//! other side's audio or video in a 1:1 call, each participant's track in a group call —
//! and a video decoder that lost a picture asks the sender for a keyframe.

use std::borrow::Cow;
use std::time::Instant;

use str0m::format::Codec;
use str0m::media::{Frequency, KeyframeRequestKind, MediaData, Mid};

use super::video_pipe::VideoReceiver;
use super::{Session, SessionEvent, vp8_clear_bytes};

impl Session {
    pub(super) fn media_data(&mut self, d: MediaData, now: Instant) {
        let video = d.params.spec().codec == Codec::Vp8;
        if video {
            let wall = self.wall_ms(now);
            let rtp = d.time.rebase(Frequency::NINETY_KHZ).numer();
            let want_keyframe = if self.remote_tracks.has(d.mid) {
                match self.open(d.mid, &d.data, vp8_clear_bytes(&d.data)) {
                    Some(frame) => {
                        self.remote_tracks
                            .video(d.mid, &frame, rtp, d.contiguous, now, wall)
                    }
                    // A frame lost to the decoder: the next one follows a gap.
                    None => false,
                }
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
            if let Some(frame) = self.open(d.mid, &d.data, 0) {
                self.remote_tracks.audio(d.mid, seq, rtp, &frame, now);
            }
        } else if Some(d.mid) == self.mid {
            self.decoder.packet(seq, rtp, &d.data, now);
        }
    }

    /// A group track's frame opened with the call's keys (as it is without E2EE); None, and
    /// counted, when it does not open.
    fn open<'a>(&mut self, mid: Mid, data: &'a [u8], clear: usize) -> Option<Cow<'a, [u8]>> {
        let Some(e2ee) = &self.opts.e2ee else {
            return Some(Cow::Borrowed(data));
        };
        match e2ee.0.open(data, clear) {
            Ok(frame) => Some(Cow::Owned(frame)),
            Err(_) => {
                self.remote_tracks.undecryptable(mid);
                None
            }
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
