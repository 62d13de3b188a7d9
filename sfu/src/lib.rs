//! WebRTC selective forwarding unit for natter group calls.
//!
//! Reserved by the workspace layout in DESIGN.md; nothing is implemented here yet.
