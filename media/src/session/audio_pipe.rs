//! Opus both ways, without the network: the sender encodes 20 ms frames of an
//! [`AudioSource`]; the receiver decodes what arrives, fills gaps with Opus in-band FEC (the
//! newest missing frame) and packet-loss concealment (older ones), and measures what a
//! listener would get.

use std::time::Instant;

use crate::audio::{
    AudioSource, FRAME, FRAME_TICKS, Generator, ReceiveStats, SAMPLE_RATE, StreamTracker,
    audio_level, tone_present,
};

/// One encoded 20 ms frame: its RTP time, its Opus packet and its level (RFC 6464 dBov,
/// voice or not).
pub struct EncodedFrame {
    pub rtp_time: u64,
    pub data: Vec<u8>,
    pub level: (i8, bool),
}

/// Encodes the source a frame at a time.
pub struct AudioEncoder {
    encoder: opus::Encoder,
    generator: Generator,
    out: Vec<u8>,
    /// RTP time of the next frame (48 kHz ticks).
    pub rtp_time: u64,
    pub frames: u64,
    /// Muted: the source is replaced by silence (the stream goes on, so nothing restarts).
    pub muted: bool,
}

impl AudioEncoder {
    pub fn new(source: AudioSource, bitrate: i32) -> Result<AudioEncoder, String> {
        let mut encoder =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                .map_err(|e| format!("opus encoder: {e}"))?;
        // In-band FEC, sized for the loss the link is expected to have: a lost frame comes
        // back from the next packet.
        encoder
            .set_bitrate(opus::Bitrate::Bits(bitrate))
            .and_then(|_| encoder.set_inband_fec(true))
            .and_then(|_| encoder.set_packet_loss_perc(10))
            .map_err(|e| format!("opus encoder settings: {e}"))?;
        Ok(AudioEncoder {
            encoder,
            generator: Generator::new(source),
            out: vec![0u8; 1500],
            rtp_time: 0,
            frames: 0,
            muted: false,
        })
    }

    /// The next 20 ms, encoded.
    pub fn next_frame(&mut self) -> Result<EncodedFrame, String> {
        let mut pcm = self.generator.next_frame();
        if self.muted {
            pcm = [0; FRAME];
        }
        let n = self
            .encoder
            .encode(&pcm, &mut self.out)
            .map_err(|e| format!("opus encode: {e}"))?;
        let t = self.rtp_time;
        self.rtp_time += u64::from(FRAME_TICKS);
        self.frames += 1;
        Ok(EncodedFrame {
            rtp_time: t,
            data: self.out[..n].to_vec(),
            level: audio_level(&pcm),
        })
    }
}

/// Decodes one incoming stream and keeps its receive statistics.
pub struct AudioDecoder {
    decoder: opus::Decoder,
    tracker: StreamTracker,
    expect_tone: Option<f32>,
    started: Instant,
    pub stats: ReceiveStats,
    pub first_decoded: Option<Instant>,
    pcm: Vec<i16>,
    /// Decoded samples kept for a WAV file, if asked for.
    pub keep: Option<Vec<i16>>,
}

impl AudioDecoder {
    pub fn new(expect_tone: Option<f32>, keep_samples: bool, now: Instant) -> Result<Self, String> {
        Ok(AudioDecoder {
            decoder: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)
                .map_err(|e| format!("opus decoder: {e}"))?,
            tracker: StreamTracker::default(),
            expect_tone,
            started: now,
            stats: ReceiveStats::default(),
            first_decoded: None,
            pcm: vec![0i16; FRAME * 6],
            keep: keep_samples.then(Vec::new),
        })
    }

    /// The tone to look for in what is decoded from now on.
    pub fn expect_tone(&mut self, freq: Option<f32>) {
        self.expect_tone = freq;
    }

    /// One Opus packet: its RTP sequence number and time, when it arrived.
    pub fn packet(&mut self, seq: u16, rtp_time: u32, payload: &[u8], now: Instant) {
        let arrival = now.duration_since(self.started).as_secs_f64();
        let gap = self.tracker.packet(seq, rtp_time, arrival);
        let mut concealed = 0;
        for i in 0..gap {
            // The newest missing frame can come back from this packet's FEC; older ones are
            // concealed.
            let fec = i + 1 == gap;
            let input: &[u8] = if fec { payload } else { &[] };
            if let Ok(n) = self.decoder.decode(input, &mut self.pcm[..FRAME], fec) {
                concealed += 1;
                if let Some(k) = self.keep.as_mut() {
                    k.extend_from_slice(&self.pcm[..n]);
                }
            }
        }
        self.stats.frames_received += 1;
        self.stats.frames_lost += u64::from(gap);
        self.stats.frames_concealed += concealed;
        self.stats.jitter_ms = self.tracker.jitter_ms();
        if let Ok(n) = self.decoder.decode(payload, &mut self.pcm, false) {
            self.stats.frames_decoded += 1;
            if self
                .expect_tone
                .is_some_and(|f| tone_present(&self.pcm[..n], f))
            {
                self.stats.tone_frames += 1;
            }
            if let Some(k) = self.keep.as_mut() {
                k.extend_from_slice(&self.pcm[..n]);
            }
            self.first_decoded.get_or_insert(now);
        }
    }
}
