//! natter's STUN/TURN server (RFC 8489 / RFC 8656).
//!
//! * [`stun`]: the message and ChannelData codec, decoded in place and bounded.
//! * [`server`]: the sans-IO TURN core: allocations, permissions, channels, auth, limits.

mod batch;
pub mod config;
pub mod server;
pub mod shell;
pub mod stun;

pub use shell::{Bound, Listeners, Turn};
