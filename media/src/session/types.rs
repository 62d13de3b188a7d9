//! What a media session is given and what it reports: its options, its statistics, what
//! it sends where, its state, events and errors.

use std::net::SocketAddr;

use natter_signaling::call::IceCandidate;

use crate::audio::{AudioSource, ReceiveStats};
use crate::video::{VideoOptions, VideoStats};

/// How a call's media is made.
#[derive(Debug, Clone)]
pub struct MediaOptions {
    pub source: AudioSource,
    /// The tone expected from the other side (for the continuity figure), if any.
    pub expect_tone: Option<f32>,
    /// Offer only relayed candidates (the ICE transport policy `relay`).
    pub relay_only: bool,
    /// Use only TURN servers reached over TCP (with `relay_only`: media that needs nothing
    /// but an outgoing TCP connection, for networks that block UDP).
    pub turn_tcp_only: bool,
    /// Write what is received (decoded) to this WAV file.
    pub wav_out: Option<std::path::PathBuf>,
    /// Opus target bitrate, bits per second.
    pub bitrate: i32,
    /// Local UDP addresses media binds. A wildcard (`0.0.0.0:0`, the default) means every
    /// non-loopback interface; a concrete address binds just that one.
    pub udp_bind: Vec<String>,
    /// Offer RED (RFC 2198: each packet also carries the previous frame), so a single lost
    /// packet is repaired from the next one without a retransmission.
    pub red: bool,
    /// Send video (the stamped test pattern, VP8). Video the peer offers is received and
    /// measured either way.
    pub video: Option<VideoOptions>,
    /// A group call through an SFU: publish only (send-only m-lines), and receive each
    /// other participant's tracks as the SFU adds them, each decoded on its own.
    pub group: bool,
    /// End-to-end encryption of every encoded frame (SFrame in a group call): sent frames
    /// are sealed before they are packetized, received ones opened before they are decoded.
    pub e2ee: Option<FrameE2ee>,
    /// Adapt the encoders to the link (`crate::adapt`): Opus bitrate, FEC, RED, DTX and
    /// packet time from the loss reports and the estimate; the video's size and frame
    /// rate from its bitrate. Off: Opus at `bitrate` with none of those, video at the
    /// configured size (its bitrate still follows the estimate).
    pub adapt: bool,
}

/// Seals and opens encoded frames end to end. `clear` is how many leading bytes stay
/// readable (authenticated, not encrypted): what an SFU needs of a VP8 frame.
pub trait FrameCrypto: Send + Sync {
    fn seal(&self, frame: &[u8], clear: usize) -> Result<Vec<u8>, String>;
    fn open(&self, frame: &[u8], clear: usize) -> Result<Vec<u8>, String>;
}

/// A shared [`FrameCrypto`] (the call's keys, which the client updates as people come and go).
#[derive(Clone)]
pub struct FrameE2ee(pub std::sync::Arc<dyn FrameCrypto>);

impl std::fmt::Debug for FrameE2ee {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FrameE2ee")
    }
}

/// How many leading bytes of a VP8 frame an SFU must read: the frame tag and, for a
/// keyframe, the start code and picture size (10 bytes); 3 bytes of any other frame.
pub fn vp8_clear_bytes(frame: &[u8]) -> usize {
    let keyframe = frame.first().is_some_and(|b| b & 0x01 == 0);
    (if keyframe { 10 } else { 3 }).min(frame.len())
}

impl Default for MediaOptions {
    fn default() -> Self {
        MediaOptions {
            source: AudioSource::Tone { freq: 440.0 },
            expect_tone: Some(440.0),
            relay_only: false,
            turn_tcp_only: false,
            wav_out: None,
            bitrate: 32_000,
            udp_bind: vec!["0.0.0.0:0".to_owned()],
            red: true,
            video: None,
            group: false,
            e2ee: None,
            adapt: true,
        }
    }
}

/// What one side of a call measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CallStats {
    pub frames_sent: u64,
    #[serde(flatten)]
    pub received: ReceiveStats,
    /// From the session's creation to the first decoded frame.
    pub first_audio_ms: Option<u64>,
    #[serde(flatten)]
    pub transport: TransportStats,
    #[serde(flatten)]
    pub audio_send: AudioSendStats,
    /// Present when video was sent or received.
    #[serde(flatten)]
    pub video: Option<VideoStats>,
}

/// What the audio encoder is set to, and why.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct AudioSendStats {
    pub opus_kbps: f64,
    pub opus_fec: bool,
    pub opus_expected_loss_pct: u8,
    pub opus_dtx: bool,
    pub audio_red: bool,
    pub audio_ptime_ms: u32,
    /// Packets DTX left out.
    pub audio_dtx_skipped: u64,
    /// Times the adaptation policy changed the settings.
    pub audio_adaptations: u64,
    /// The loss the far end reports on our audio, smoothed, percent.
    pub audio_remote_loss_pct: f64,
}

/// What str0m reports about the connection (from its periodic statistics).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct TransportStats {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    /// Incoming packets lost on the way (before RED, FEC and concealment repair them), in
    /// percent of those sent.
    pub loss_before_repair_pct: f64,
    /// Round-trip time of the selected candidate pair.
    pub rtt_ms: Option<f64>,
    /// The sender-side bandwidth estimate (TWCC/GCC), kbit/s.
    pub send_estimate_kbps: Option<u64>,
    /// The round trip above the smallest of the last 20 s: the queue at the bottleneck.
    pub queue_ms: Option<f64>,
    /// The share of its target the video encoder gets while that queue stands (100 when
    /// there is none; `rate::QueuePushback`).
    pub video_pushback_pct: f64,
}

impl CallStats {
    /// Decoded frames out of those that should have arrived (received + lost), in percent.
    pub fn decoded_pct(&self) -> f64 {
        let expected = self.received.frames_received + self.received.frames_lost;
        if expected == 0 {
            return 0.0;
        }
        100.0 * self.received.frames_decoded as f64 / expected as f64
    }

    /// Frames still missing after RED and retransmission, in percent of those expected
    /// (they were concealed or went silent).
    pub fn loss_after_repair_pct(&self) -> f64 {
        let expected = self.received.frames_received + self.received.frames_lost;
        if expected == 0 {
            return 0.0;
        }
        100.0 * self.received.frames_lost as f64 / expected as f64
    }

    /// Decoded frames in which the expected tone was heard, in percent of those decoded.
    pub fn tone_pct(&self) -> f64 {
        if self.received.frames_decoded == 0 {
            return 0.0;
        }
        100.0 * self.received.tone_frames as f64 / self.received.frames_decoded as f64
    }
}

/// Where bytes go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// A datagram from the local socket `from` to `to`.
    Udp { from: SocketAddr, to: SocketAddr },
    /// The TCP stream to TURN server number `turn` (see [`Session::turn_streams`]).
    Stream { turn: usize },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub via: Via,
    pub bytes: Vec<u8>,
}

/// Connection state, as a user would name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaState {
    New,
    Connecting,
    Connected,
    Disconnected,
    Failed,
    Closed,
}

impl std::fmt::Display for MediaState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            MediaState::New => "new",
            MediaState::Connecting => "connecting",
            MediaState::Connected => "connected",
            MediaState::Disconnected => "disconnected",
            MediaState::Failed => "failed",
            MediaState::Closed => "closed",
        };
        f.write_str(s)
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A local candidate to trickle to the peer.
    LocalCandidate(IceCandidate),
    State(MediaState),
    /// Something the user should know about (a TURN server refused us, say).
    Warning(String),
}

/// Why a session call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("media: {0}")]
    Rtc(String),
    #[error("media: the SDP is not valid: {0}")]
    BadSdp(String),
    #[error("media: the ICE candidate is not valid: {0}")]
    BadCandidate(String),
    #[error("media: no audio was negotiated")]
    NoAudio,
    #[error("media: {0}")]
    Audio(String),
    #[error("media: video: {0}")]
    Video(String),
    #[error("media: no local address to use ({0})")]
    NoAddress(String),
    #[error("the media connection is {0}")]
    NotConnected(MediaState),
}
