//! Opus both ways, without the network: the sender takes 20 ms frames of an
//! [`AudioSource`] and encodes them a packet time (20, 40 or 60 ms) at a time, as the
//! adaptation policy sets it (`crate::adapt`); the receiver decodes what arrives, fills gaps with Opus in-band FEC (the
//! newest missing frame) and packet-loss concealment (older ones), and measures what a
//! listener would get.

use std::time::Instant;

use crate::adapt::AudioSettings;

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

/// Encodes the source: 20 ms at a time in, a packet of the packet time out.
pub struct AudioEncoder {
    encoder: opus::Encoder,
    generator: Generator,
    out: Vec<u8>,
    /// What has been taken of the source toward the next packet.
    pending: Vec<i16>,
    /// RTP time of the next 20 ms taken (48 kHz ticks).
    pub rtp_time: u64,
    /// Packets encoded and sent (not those DTX left out).
    pub frames: u64,
    /// Packets DTX left out (silence).
    pub dtx_skipped: u64,
    /// Muted: the source is replaced by silence (the stream goes on, so nothing restarts).
    pub muted: bool,
    settings: AudioSettings,
}

impl AudioEncoder {
    pub fn new(source: AudioSource, settings: AudioSettings) -> Result<AudioEncoder, String> {
        let encoder =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                .map_err(|e| format!("opus encoder: {e}"))?;
        let mut e = AudioEncoder {
            encoder,
            generator: Generator::new(source),
            out: vec![0u8; 1500],
            pending: Vec::with_capacity(FRAME * 3),
            rtp_time: 0,
            frames: 0,
            dtx_skipped: 0,
            muted: false,
            settings,
        };
        e.force(settings)?;
        Ok(e)
    }

    pub fn settings(&self) -> AudioSettings {
        self.settings
    }

    /// Applies what the policy asks for (libopus ctl calls; the packet time from the next
    /// packet on).
    pub fn apply(&mut self, s: AudioSettings) -> Result<(), String> {
        if s != self.settings {
            self.force(s)?;
        }
        Ok(())
    }

    fn force(&mut self, s: AudioSettings) -> Result<(), String> {
        let e = &mut self.encoder;
        e.set_bitrate(opus::Bitrate::Bits(s.bitrate_bps))
            .and_then(|_| e.set_inband_fec(s.fec))
            .and_then(|_| e.set_packet_loss_perc(i32::from(s.expected_loss_pct)))
            .and_then(|_| e.set_dtx(s.dtx))
            .map_err(|err| format!("opus encoder settings: {err}"))?;
        self.settings = s;
        Ok(())
    }

    /// Takes the next 20 ms of the source; returns a packet when a packet time's worth is
    /// in (none while DTX leaves silence out).
    pub fn next_frame(&mut self) -> Result<Option<EncodedFrame>, String> {
        let mut pcm = self.generator.next_frame();
        if self.muted {
            pcm = [0; FRAME];
        }
        self.pending.extend_from_slice(&pcm);
        self.rtp_time += u64::from(FRAME_TICKS);
        let want = FRAME * (self.settings.ptime_ms as usize / 20).clamp(1, 3);
        if self.pending.len() < want {
            return Ok(None);
        }
        let n = self
            .encoder
            .encode(&self.pending, &mut self.out)
            .map_err(|e| format!("opus encode: {e}"))?;
        let t = self.rtp_time - self.pending.len() as u64;
        let level = audio_level(&self.pending);
        self.pending.clear();
        // In DTX libopus says "nothing to send" with a packet of one or two bytes.
        if self.settings.dtx && n <= 2 {
            self.dtx_skipped += 1;
            return Ok(None);
        }
        self.frames += 1;
        Ok(Some(EncodedFrame {
            rtp_time: t,
            data: self.out[..n].to_vec(),
            level,
        }))
    }
}

/// Packets concealed (decoded as lost) at most for one gap in the sequence numbers.
const MAX_CONCEALED_IN_A_GAP: u16 = 50;

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
        // A lost packet is taken to be as long as this one (the packet time changes
        // rarely); FEC must be asked for exactly the length missing.
        let samples = opus::packet::get_nb_samples(payload, SAMPLE_RATE)
            .unwrap_or(FRAME)
            .clamp(FRAME / 8, FRAME * 3);
        let mut concealed = 0;
        for i in 0..gap {
            // The newest missing frame can come back from this packet's FEC; older ones are
            // concealed.
            // A jump in sequence numbers (a peer's restart, or a hostile one) is counted
            // whole but concealed for at most a second: decoding costs CPU per frame.
            if gap - i > MAX_CONCEALED_IN_A_GAP {
                continue;
            }
            let fec = i + 1 == gap;
            let input: &[u8] = if fec { payload } else { &[] };
            if let Ok(n) = self.decoder.decode(input, &mut self.pcm[..samples], fec) {
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
