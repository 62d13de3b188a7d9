//! natter's media stack: a call's media session on str0m and what it needs around it.
//!
//! * [`session`]: the sans-IO session (one str0m `Rtc`: Opus with RED, VP8 with NACK/RTX
//!   and keyframe requests, host/srflx/relay candidates) and [`MediaSession`], its tokio
//!   shell.
//! * [`audio`]: what a call sends (tone, speech-like signal, WAV) and how a receiver judges
//!   what a listener hears.
//! * [`video`]: VP8 over the system libvpx, the stamped test pattern, and how a receiver
//!   judges what a viewer sees (frame rate, freezes, delay).
//! * [`turn_client`]: a sans-IO TURN client (RFC 8656) that gives a session relay
//!   candidates, sharing natter-turn's STUN codec (`natter-stun`).
//!
//! Bandwidth-driven adaptation and SFrame framing come next (see the bandwidth and group
//! call issues).

pub mod adapt;
pub mod audio;
pub mod ice_servers;
pub mod session;
pub mod turn_client;
pub mod video;

pub use session::shell::MediaSession;
pub use session::{CallStats, MediaError, MediaOptions, MediaState, TransportStats};
/// The WebRTC implementation underneath, for tools that drive it directly (natter-load).
pub use str0m;
pub use turn_client::{TurnClient, TurnConfig, TurnError, TurnEvent, TurnStats, TurnTransport};
pub use video::{VideoOptions, VideoStats};
