//! natter's media stack: a call's media session on str0m and what it needs around it.
//!
//! * [`audio`]: what a call sends (tone, speech-like signal, WAV) and how a receiver judges
//!   what a listener hears.
//! * [`turn_client`]: a sans-IO TURN client (RFC 8656) that gives a session relay
//!   candidates, sharing natter-turn's STUN codec (`natter-stun`).
//!
//! The str0m session, the audio/video pipelines, bandwidth-driven adaptation and SFrame
//! framing come next (see the media and bandwidth issues).

pub mod audio;
pub mod ice_servers;
pub mod session;
pub mod turn_client;

pub use session::shell::MediaSession;
pub use session::{CallStats, MediaError, MediaOptions, MediaState, TransportStats};
pub use turn_client::{TurnClient, TurnConfig, TurnError, TurnEvent, TurnStats, TurnTransport};
