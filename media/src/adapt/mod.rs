//! Codec adaptation: sans-IO policies that turn what the link shows (the send estimate,
//! the loss the far end reports, the encoder's bitrate target) into encoder settings. The
//! session applies them to libopus and libvpx.

pub mod audio;
pub mod video;

pub use audio::{AudioPolicy, AudioSettings};
pub use video::{VideoPolicy, VideoStep};
