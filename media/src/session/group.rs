//! What a session in a group call receives: one track per other participant's audio and
//! video (m-lines the SFU adds by renegotiation), each decoded and measured on its own.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use str0m::media::{MediaKind, Mid};

use super::audio_pipe::AudioDecoder;
use super::video_pipe::VideoReceiver;
use crate::audio::ReceiveStats;
use crate::video::VideoStats;

/// One received track's figures.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrackStats {
    /// The m-line, as the SFU's offer named it (the room's `tracks` say whose it is).
    pub mid: String,
    pub video: bool,
    /// RTP packets and payload bytes received on it (str0m's counts, once a second).
    pub packets: u64,
    pub bytes: u64,
    /// Audio tracks: what arrived and decoded.
    pub audio: Option<ReceiveStats>,
    /// Video tracks: frames received, rendered, freezes, fps.
    pub picture: Option<VideoStats>,
    /// Frames that arrived but did not open with the call's keys (end-to-end encryption).
    pub undecryptable: u64,
}

enum Decoder {
    Audio(AudioDecoder),
    Video(Box<VideoReceiver>),
}

struct Track {
    decoder: Decoder,
    /// Frames that did not open with the call's keys.
    undecryptable: u64,
    /// The next video frame follows one that did not open.
    after_gap: bool,
}

#[derive(Default)]
pub(crate) struct RemoteTracks {
    tracks: BTreeMap<Mid, Track>,
    /// Tones asked for before the track's m-line was applied (bounded by the m-lines).
    tones: BTreeMap<Mid, f32>,
}

impl RemoteTracks {
    /// The SFU added an m-line that sends to us.
    pub fn added(&mut self, mid: Mid, kind: MediaKind, now: Instant) -> Result<(), String> {
        if self.tracks.contains_key(&mid) {
            return Ok(());
        }
        let d = match kind {
            MediaKind::Audio => {
                let tone = self.tones.remove(&mid);
                Decoder::Audio(AudioDecoder::new(tone, false, now)?)
            }
            MediaKind::Video => Decoder::Video(Box::new(VideoReceiver::new(now)?)),
        };
        self.tracks.insert(
            mid,
            Track {
                decoder: d,
                undecryptable: 0,
                after_gap: false,
            },
        );
        Ok(())
    }

    pub fn has(&self, mid: Mid) -> bool {
        self.tracks.contains_key(&mid)
    }

    /// The tone expected on an audio track (its publisher's), for the continuity figure.
    pub fn expect_tone(&mut self, mid: Mid, freq: f32) {
        match self.tracks.get_mut(&mid).map(|t| &mut t.decoder) {
            Some(Decoder::Audio(a)) => a.expect_tone(Some(freq)),
            Some(Decoder::Video(_)) => {}
            None if self.tones.len() < 256 => {
                self.tones.insert(mid, freq);
            }
            None => {}
        }
    }

    pub fn audio(&mut self, mid: Mid, seq: u16, rtp: u32, data: &[u8], now: Instant) {
        if let Some(Decoder::Audio(a)) = self.tracks.get_mut(&mid).map(|t| &mut t.decoder) {
            a.packet(seq, rtp, data, now);
        }
    }

    /// A whole video frame; true when a keyframe should be asked for.
    pub fn video(
        &mut self,
        mid: Mid,
        data: &[u8],
        rtp: u64,
        contiguous: bool,
        now: Instant,
        wall_ms: u32,
    ) -> bool {
        let Some(t) = self.tracks.get_mut(&mid) else {
            return false;
        };
        let after_gap = std::mem::take(&mut t.after_gap);
        match &mut t.decoder {
            Decoder::Video(v) => v.frame(data, rtp, contiguous && !after_gap, now, wall_ms),
            Decoder::Audio(_) => false,
        }
    }

    /// A frame of `mid` did not open.
    pub fn undecryptable(&mut self, mid: Mid) {
        if let Some(t) = self.tracks.get_mut(&mid) {
            t.undecryptable += 1;
            t.after_gap = true;
        }
    }

    pub fn set_rtt(&mut self, rtt: Duration) {
        for t in self.tracks.values_mut() {
            if let Decoder::Video(v) = &mut t.decoder {
                v.set_rtt(rtt);
            }
        }
    }

    /// `ingress` is str0m's (packets, bytes) per m-line.
    pub fn stats(&self, ingress: &HashMap<Mid, (u64, u64)>) -> Vec<TrackStats> {
        self.tracks
            .iter()
            .map(|(mid, t)| {
                let (packets, bytes) = ingress.get(mid).copied().unwrap_or_default();
                let (audio, picture) = match &t.decoder {
                    Decoder::Audio(a) => (Some(a.stats.clone()), None),
                    Decoder::Video(v) => (None, Some(v.stats())),
                };
                TrackStats {
                    mid: mid.to_string(),
                    video: picture.is_some(),
                    packets,
                    bytes,
                    audio,
                    picture,
                    undecryptable: t.undecryptable,
                }
            })
            .collect()
    }
}
