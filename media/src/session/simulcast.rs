//! Simulcast for a group call: the test pattern encoded at up to three sizes (RIDs `q`,
//! `h`, `f`: a quarter, half and the full picture), each with two temporal layers, each on
//! its own RTP stream of one m-line. The SFU forwards one of them to each subscriber. Layers
//! are packetized here ([`Vp8Packetizer`]: a 15-bit picture id and the temporal index the
//! SFU reads) and written to str0m as RTP.
//!
//! A layer is sent while the send estimate has room for it (the lowest always) and while
//! the SFU wants it (it says which nobody receives); a layer that resumes starts at a
//! keyframe.

use std::time::{Duration, Instant};

use str0m::Rtc;
use str0m::media::{Mid, Pt, Rid, Simulcast, SimulcastLayer};
use str0m::rtp::RtpWrite;

use super::types::{FrameE2ee, vp8_clear_bytes};
use super::video_pipe::VideoSender;
use crate::video::vp8_rtp::Vp8Packetizer;
use crate::video::{EncoderSettings, VideoOptions};

/// RTP payloads are cut to this size (room for SRTP, the header extensions and a TURN
/// ChannelData header on a 1280-byte path).
const MTU: usize = 1100;
/// The smallest layer worth sending (the test pattern's stamp must still read back).
const MIN_W: u32 = 128;
const MIN_H: u32 = 80;
const MIN_LAYER_KBPS: u32 = 40;

/// The layers a picture of `opts` is sent as, lowest first: (RID, encoder settings).
pub fn layers_for(opts: &VideoOptions) -> Vec<(&'static str, EncoderSettings)> {
    let even = |v: u32| v & !1;
    let sizes: Vec<(u32, u32)> = [4, 2, 1]
        .iter()
        .map(|d| (even(opts.width / d), even(opts.height / d)))
        .filter(|(w, h)| *w >= MIN_W && *h >= MIN_H)
        .collect();
    let (rids, shares): (&[&str], &[f64]) = match sizes.len() {
        3 => (&["q", "h", "f"], &[0.12, 0.28, 0.60]),
        2 => (&["h", "f"], &[0.3, 0.7]),
        _ => (&["f"], &[1.0]),
    };
    let sizes = if sizes.is_empty() {
        vec![(opts.width, opts.height)]
    } else {
        sizes
    };
    rids.iter()
        .zip(shares)
        .zip(sizes)
        .map(|((rid, share), (width, height))| {
            (
                *rid,
                EncoderSettings {
                    width,
                    height,
                    fps: opts.fps,
                    bitrate_kbps: ((f64::from(opts.bitrate_kbps) * share) as u32)
                        .max(MIN_LAYER_KBPS),
                    temporal_layers: 2,
                },
            )
        })
        .collect()
}

/// The `a=simulcast` send list for the offer.
pub fn sdp_layers(opts: &VideoOptions) -> Simulcast {
    Simulcast {
        send: layers_for(opts)
            .iter()
            .map(|(rid, _)| SimulcastLayer::new(rid))
            .collect(),
        recv: Vec::new(),
    }
}

struct Layer {
    rid: Rid,
    sender: VideoSender,
    packetizer: Vp8Packetizer,
    seq: u64,
    kbps: u32,
    /// The estimate has room for it.
    fits: bool,
    /// Someone receives it (the SFU's word; all are wanted until it says otherwise).
    wanted: bool,
    /// It was off and starts again: at a keyframe.
    resume: bool,
}

impl Layer {
    fn on(&self) -> bool {
        self.fits && self.wanted
    }
}

pub struct SimulcastSender {
    layers: Vec<Layer>,
    pt: Option<Pt>,
}

fn random_u16() -> u16 {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).expect("the OS random source works");
    u16::from_le_bytes(b)
}

impl SimulcastSender {
    pub fn new(opts: &VideoOptions, now: Instant) -> Result<SimulcastSender, String> {
        let mut layers = Vec::new();
        for (rid, s) in layers_for(opts) {
            layers.push(Layer {
                rid: Rid::from(rid),
                sender: VideoSender::with_settings(s, now)?,
                packetizer: Vp8Packetizer::new(random_u16()),
                // Below 2^15: the SRTP roll-over counter starts at 0 as receivers assume.
                seq: u64::from(random_u16() & 0x7FFF),
                kbps: s.bitrate_kbps,
                fits: true,
                wanted: true,
                resume: false,
            });
        }
        Ok(SimulcastSender { layers, pt: None })
    }

    /// Each layer's RTP stream gets a resend cache as the single-stream sender's.
    pub fn set_rtx_caches(&self, rtc: &mut Rtc, mid: Mid, packets: usize, age: Duration, cap: f32) {
        for l in &self.layers {
            let mut api = rtc.direct_api();
            if let Some(tx) = api.stream_tx_by_mid(mid, Some(l.rid)) {
                tx.set_rtx_cache(packets, age, Some(cap));
            }
        }
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.layers
            .iter()
            .filter(|l| l.on())
            .map(|l| l.sender.next_due)
            .min()
    }

    /// Encodes and writes the frames that are due, on every layer that is on.
    pub fn send(
        &mut self,
        rtc: &mut Rtc,
        mid: Mid,
        now: Instant,
        wall_ms: u32,
        e2ee: Option<&FrameE2ee>,
    ) -> Result<(), String> {
        if self.pt.is_none() {
            self.pt = rtc
                .writer(mid)
                .and_then(|w| w.payload_params().next().map(|p| p.pt()));
        }
        let Some(pt) = self.pt else {
            return Ok(());
        };
        for l in &mut self.layers {
            if !l.on() {
                // Its frames pass unencoded, so it resumes in step with the others.
                l.sender.skip_due(now);
                continue;
            }
            if l.resume {
                l.resume = false;
                l.sender.keyframe_requested();
            }
            let Some((rtp_time, frame)) = l
                .sender
                .next_encoded(now, wall_ms)
                .map_err(|e| e.to_string())?
            else {
                continue;
            };
            let mut api = rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(mid, Some(l.rid)) else {
                continue;
            };
            let data = match e2ee {
                // What an SFU needs to find keyframes stays readable; the rest is sealed.
                Some(e) => e.0.seal(&frame.data, vp8_clear_bytes(&frame.data))?,
                None => frame.data,
            };
            let payloads = l.packetizer.packetize(&data, frame.temporal, MTU);
            let last = payloads.len().saturating_sub(1);
            for (i, p) in payloads.into_iter().enumerate() {
                tx.write_rtp(
                    RtpWrite::new(pt, l.seq.into(), rtp_time as u32, now, p)
                        .marker(i == last)
                        .nackable(true),
                );
                l.seq += 1;
            }
        }
        Ok(())
    }

    /// A keyframe asked for on layer `rid` (all layers when the request names none).
    pub fn keyframe_requested(&mut self, rid: Option<Rid>) {
        for l in &mut self.layers {
            if rid.is_none_or(|r| r == l.rid) {
                l.sender.keyframe_requested();
            }
        }
    }

    /// The SFU's word on which layers anyone receives.
    pub fn set_wanted(&mut self, wanted: &[Rid]) {
        for l in &mut self.layers {
            let w = wanted.contains(&l.rid);
            if w && !l.on() && l.fits {
                l.resume = true;
            }
            l.wanted = w;
        }
    }

    /// The room for video in the send estimate: layers from the lowest up while they fit
    /// (the lowest always goes).
    pub fn follow_estimate(&mut self, video_kbps: u32) {
        let mut used = 0;
        for (i, l) in self.layers.iter_mut().enumerate() {
            used += l.kbps;
            let fits = i == 0 || used <= video_kbps;
            if fits && !l.fits && l.wanted {
                l.resume = true;
            }
            l.fits = fits;
        }
    }

    /// What the configured layers need, kbit/s.
    pub fn total_kbps(&self) -> u32 {
        self.layers.iter().map(|l| l.kbps).sum()
    }

    /// RIDs being sent now, lowest first.
    pub fn active(&self) -> Vec<String> {
        self.layers
            .iter()
            .filter(|l| l.on())
            .map(|l| l.rid.to_string())
            .collect()
    }

    /// (frames, keyframes, keyframe requests, target kbit/s of the layers on), all layers.
    pub fn counts(&self) -> (u64, u64, u64, u32) {
        self.layers.iter().fold((0, 0, 0, 0), |(f, k, r, b), l| {
            (
                f + l.sender.frames,
                k + l.sender.keyframes,
                r + l.sender.requests,
                b + if l.on() { l.kbps } else { 0 },
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(w: u32, h: u32) -> VideoOptions {
        VideoOptions {
            width: w,
            height: h,
            fps: 15,
            bitrate_kbps: 900,
        }
    }

    #[test]
    fn layers_are_a_quarter_half_and_full_while_the_smallest_still_reads() {
        let l = layers_for(&opts(640, 360));
        let got: Vec<(&str, u32, u32, u32)> = l
            .iter()
            .map(|(r, s)| (*r, s.width, s.height, s.bitrate_kbps))
            .collect();
        assert_eq!(
            got,
            vec![
                ("q", 160, 90, 108),
                ("h", 320, 180, 252),
                ("f", 640, 360, 540)
            ]
        );
        assert!(l.iter().all(|(_, s)| s.temporal_layers == 2));
        let two: Vec<&str> = layers_for(&opts(320, 180))
            .iter()
            .map(|(r, _)| *r)
            .collect();
        assert_eq!(two, vec!["h", "f"]);
        let one: Vec<&str> = layers_for(&opts(128, 80)).iter().map(|(r, _)| *r).collect();
        assert_eq!(one, vec!["f"]);
    }

    #[test]
    fn the_estimate_and_the_sfu_turn_layers_off_and_a_layer_resumes_at_a_keyframe() {
        let t = Instant::now();
        let mut s = SimulcastSender::new(&opts(640, 360), t).unwrap();
        assert_eq!(s.active(), vec!["q", "h", "f"]);
        s.follow_estimate(400);
        assert_eq!(s.active(), vec!["q", "h"]);
        s.follow_estimate(10);
        assert_eq!(s.active(), vec!["q"], "the lowest always goes");
        s.follow_estimate(2000);
        assert_eq!(s.active(), vec!["q", "h", "f"]);
        assert!(s.layers[2].resume, "f resumes at a keyframe");
        s.set_wanted(&[Rid::from("q")]);
        assert_eq!(s.active(), vec!["q"]);
        s.set_wanted(&[Rid::from("q"), Rid::from("f")]);
        assert_eq!(s.active(), vec!["q", "f"]);
        assert_eq!(s.total_kbps(), 900);
    }
}
