//! STUN/TURN server (RFC 8489 / RFC 8656) for natter.
//!
//! Reserved by the workspace layout in DESIGN.md; nothing is implemented here yet.
