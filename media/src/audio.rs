//! Call audio without the network: what a call sends (a tone, a speech-like signal or a WAV
//! file, in 20 ms frames at 48 kHz mono) and how the receiver judges what a user would hear
//! (frames received, lost and concealed, interarrival jitter, and whether the tone is there
//! in each 20 ms frame).

use std::path::Path;

pub const SAMPLE_RATE: u32 = 48_000;
/// Samples in one 20 ms frame (mono).
pub const FRAME: usize = 960;
/// RTP clock ticks per frame (Opus uses a 48 kHz clock).
pub const FRAME_TICKS: u32 = FRAME as u32;

/// What a call sends.
#[derive(Debug, Clone)]
pub enum AudioSource {
    /// A sine tone.
    Tone { freq: f32 },
    /// A voiced signal whose loudness moves like speech (syllables of ~200 ms with pauses),
    /// detectable frame by frame where it is voiced.
    Speech { freq: f32 },
    /// A WAV file's samples (looped), mono 48 kHz after conversion.
    Wav { samples: Vec<i16> },
}

impl AudioSource {
    /// Reads a WAV file: any sample rate or channel count, converted to 48 kHz mono.
    pub fn wav(path: &Path) -> Result<AudioSource, String> {
        let mut r = hound::WavReader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let spec = r.spec();
        let channels = spec.channels.max(1) as usize;
        let raw: Vec<i32> = match spec.sample_format {
            hound::SampleFormat::Int => r
                .samples::<i32>()
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
            hound::SampleFormat::Float => r
                .samples::<f32>()
                .map(|s| s.map(|v| (v * 32767.0) as i32))
                .collect::<Result<_, _>>()
                .map_err(|e| e.to_string())?,
        };
        let shift = spec.bits_per_sample.saturating_sub(16);
        let mono: Vec<i16> = raw
            .chunks(channels)
            .map(|c| {
                let sum: i64 = c.iter().map(|v| i64::from(*v >> shift)).sum();
                (sum / channels as i64).clamp(-32768, 32767) as i16
            })
            .collect();
        // Linear resampling to 48 kHz.
        let ratio = spec.sample_rate as f64 / SAMPLE_RATE as f64;
        let n = (mono.len() as f64 / ratio) as usize;
        let samples: Vec<i16> = (0..n)
            .map(|i| {
                let x = i as f64 * ratio;
                let j = x as usize;
                let f = x - j as f64;
                let a = f64::from(mono[j.min(mono.len() - 1)]);
                let b = f64::from(mono[(j + 1).min(mono.len() - 1)]);
                (a + (b - a) * f) as i16
            })
            .collect();
        if samples.is_empty() {
            return Err(format!("{}: no samples", path.display()));
        }
        Ok(AudioSource::Wav { samples })
    }

    /// The tone the receiver should listen for, if any.
    pub fn tone(&self) -> Option<f32> {
        match self {
            AudioSource::Tone { freq } | AudioSource::Speech { freq } => Some(*freq),
            AudioSource::Wav { .. } => None,
        }
    }
}

/// Produces consecutive 20 ms frames of a source.
pub struct Generator {
    source: AudioSource,
    pos: u64,
}

impl Generator {
    pub fn new(source: AudioSource) -> Generator {
        Generator { source, pos: 0 }
    }

    pub fn next_frame(&mut self) -> [i16; FRAME] {
        let mut out = [0i16; FRAME];
        for (i, s) in out.iter_mut().enumerate() {
            let n = self.pos + i as u64;
            let t = n as f64 / f64::from(SAMPLE_RATE);
            *s = match &self.source {
                AudioSource::Tone { freq } => {
                    (0.5 * 32767.0 * (2.0 * std::f64::consts::PI * f64::from(*freq) * t).sin())
                        as i16
                }
                AudioSource::Speech { freq } => {
                    // 250 ms syllables: 200 ms voiced with a rising-falling envelope and a
                    // second harmonic, then 50 ms of near silence.
                    let phase = t % 0.25;
                    let env = if phase < 0.2 {
                        (std::f64::consts::PI * phase / 0.2).sin().powf(0.5)
                    } else {
                        0.02
                    };
                    let w = 2.0 * std::f64::consts::PI * f64::from(*freq) * t;
                    (0.5 * 32767.0 * env * (0.85 * w.sin() + 0.15 * (2.0 * w).sin())) as i16
                }
                AudioSource::Wav { samples } => samples[(n % samples.len() as u64) as usize],
            };
        }
        self.pos += FRAME as u64;
        out
    }

    /// Whether the frame starting at sample `start` should carry the tone (voiced).
    pub fn voiced_at(source: &AudioSource, start: u64) -> bool {
        match source {
            AudioSource::Speech { .. } => {
                let t = start as f64 / f64::from(SAMPLE_RATE) % 0.25;
                (0.02..0.18).contains(&t)
            }
            _ => true,
        }
    }
}

/// Whether `freq` dominates the frame: the Goertzel power at `freq` is a large share of the
/// frame's energy, and the frame is not silent.
/// A frame's level as RFC 6464 carries it: dBov (0 is full scale, -127 silence), and
/// whether it holds voice (above -50 dBov, the level of quiet speech).
pub fn audio_level(frame: &[i16]) -> (i8, bool) {
    if frame.is_empty() {
        return (-127, false);
    }
    let energy: f64 = frame.iter().map(|&x| f64::from(x) * f64::from(x)).sum();
    let rms = (energy / frame.len() as f64).sqrt();
    let dbov = if rms < 1.0 {
        -127.0
    } else {
        20.0 * (rms / 32768.0).log10()
    };
    let level = dbov.round().clamp(-127.0, 0.0) as i8;
    (level, level > -50)
}

pub fn tone_present(frame: &[i16], freq: f32) -> bool {
    let n = frame.len() as f64;
    let k = (n * f64::from(freq) / f64::from(SAMPLE_RATE)).round();
    let w = 2.0 * std::f64::consts::PI * k / n;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 0.0f64;
    for &x in frame {
        let x = f64::from(x);
        energy += x * x;
        let s0 = x + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    // A pure tone puts about n/2 of the energy into its bin (power ≈ energy * n / 2).
    let rms = (energy / n).sqrt();
    rms > 300.0 && power > 0.25 * energy * n / 2.0
}

/// What the receiving side measured.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReceiveStats {
    /// RTP packets (frames) that arrived.
    pub frames_received: u64,
    /// Frames missing in the sequence (never arrived).
    pub frames_lost: u64,
    /// Missing frames the decoder filled in (Opus FEC or packet-loss concealment).
    pub frames_concealed: u64,
    /// Frames that decoded.
    pub frames_decoded: u64,
    /// Decoded frames in which the tone was heard.
    pub tone_frames: u64,
    /// Interarrival jitter (RFC 3550 §6.4.1), milliseconds.
    pub jitter_ms: f64,
}

/// Tracks sequence numbers and jitter of one incoming RTP stream (RFC 3550 §6.4.1 and A.8).
#[derive(Debug, Default)]
pub struct StreamTracker {
    highest: Option<u16>,
    /// Transit time of the previous packet, in RTP clock units.
    last_transit: Option<f64>,
    jitter: f64,
}

impl StreamTracker {
    /// Records a packet; returns how many packets are missing just before it (0 when it is
    /// in order; late or duplicate packets also return 0).
    pub fn packet(&mut self, seq: u16, rtp_ts: u32, arrival_s: f64) -> u16 {
        let transit = arrival_s * f64::from(SAMPLE_RATE) - f64::from(rtp_ts);
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            self.jitter += (d - self.jitter) / 16.0;
        }
        self.last_transit = Some(transit);
        let gap = match self.highest {
            None => 0,
            Some(h) => {
                let delta = seq.wrapping_sub(h);
                if delta == 0 || delta > 0x8000 {
                    return 0; // duplicate or late
                }
                delta - 1
            }
        };
        self.highest = Some(seq);
        gap
    }

    pub fn jitter_ms(&self) -> f64 {
        self.jitter * 1000.0 / f64::from(SAMPLE_RATE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_level_is_dbov_of_the_frame() {
        // A sine at half of full scale: rms 0.354 of full scale, -9.03 dBov.
        let f = Generator::new(AudioSource::Tone { freq: 440.0 }).next_frame();
        assert_eq!(audio_level(&f), (-9, true));
        assert_eq!(audio_level(&[0; FRAME]), (-127, false));
        // 1/1000 of full scale: -60 dBov, not voice.
        let quiet: Vec<i16> = f.iter().map(|x| x / 500).collect();
        let (l, voice) = audio_level(&quiet);
        assert!((-64..=-58).contains(&l), "{l}");
        assert!(!voice);
    }

    #[test]
    fn the_tone_is_heard_and_other_sounds_are_not() {
        let mut g = Generator::new(AudioSource::Tone { freq: 440.0 });
        for _ in 0..10 {
            let f = g.next_frame();
            assert!(tone_present(&f, 440.0));
            assert!(!tone_present(&f, 1000.0));
        }
        assert!(!tone_present(&[0i16; FRAME], 440.0), "silence");
        let noise: Vec<i16> = (0..FRAME as u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 17) as i16)
            .collect();
        assert!(!tone_present(&noise, 440.0), "noise");
    }

    #[test]
    fn speech_like_signal_is_voiced_most_of_the_time_with_pauses() {
        let src = AudioSource::Speech { freq: 300.0 };
        let mut g = Generator::new(src.clone());
        let (mut voiced, mut heard) = (0, 0);
        for i in 0..100u64 {
            let f = g.next_frame();
            if Generator::voiced_at(&src, i * FRAME as u64) {
                voiced += 1;
                if tone_present(&f, 300.0) {
                    heard += 1;
                }
            }
        }
        assert!((50..90).contains(&voiced), "{voiced}");
        assert!(heard >= voiced * 9 / 10, "{heard} of {voiced}");
    }

    #[test]
    fn gaps_and_jitter_are_measured() {
        let mut t = StreamTracker::default();
        // Perfectly paced packets: no jitter.
        for i in 0..50u16 {
            assert_eq!(
                t.packet(i, u32::from(i) * FRAME_TICKS, f64::from(i) * 0.02),
                0
            );
        }
        assert!(t.jitter_ms() < 0.01);
        // Two lost, then one that arrives 5 ms late.
        assert_eq!(t.packet(52, 52 * FRAME_TICKS, 52.0 * 0.02), 2);
        t.packet(53, 53 * FRAME_TICKS, 53.0 * 0.02 + 0.005);
        assert!(t.jitter_ms() > 0.2);
        // Duplicates and stragglers are not gaps; sequence numbers wrap.
        assert_eq!(t.packet(53, 0, 0.0), 0);
        assert_eq!(t.packet(40, 0, 0.0), 0);
        let mut w = StreamTracker::default();
        w.packet(65535, 0, 0.0);
        assert_eq!(w.packet(1, FRAME_TICKS * 2, 0.04), 1);
    }

    #[test]
    fn wav_files_are_converted_to_48k_mono() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for i in 0..16_000 {
            let v =
                (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * i as f64 / 16_000.0).sin()) as i16;
            w.write_sample(v).unwrap();
            w.write_sample(v).unwrap();
        }
        w.finalize().unwrap();
        let AudioSource::Wav { samples } = AudioSource::wav(&path).unwrap() else {
            panic!()
        };
        assert!(
            (47_900..=48_000).contains(&samples.len()),
            "{}",
            samples.len()
        );
        assert!(tone_present(&samples[4800..4800 + FRAME], 440.0));
    }
}
