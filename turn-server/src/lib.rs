//! natter's STUN/TURN server (RFC 8489 / RFC 8656).
//!
//! * [`stun`]: the message and ChannelData codec (the `natter-stun` crate), decoded in place
//!   and bounded.
//! * [`server`]: the sans-IO TURN core: allocations, permissions, channels, auth, limits;
//!   with [`peers`] (which peer addresses may be relayed to) and private pieces for nonces,
//!   quotas and token buckets.

mod auth;
mod batch;
pub mod config;
mod limits;
pub mod peers;
mod quota;
pub mod server;
pub mod shell;
mod streams;
/// The codec lives in `natter-stun`, shared with natter-media's TURN client.
pub use natter_stun as stun;

pub use shell::{Bound, Listeners, Turn};
