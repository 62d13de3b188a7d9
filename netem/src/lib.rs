//! User-space network emulator: delay, jitter, loss, reordering, rate limits, capacity traces.
//!
//! Reserved by the workspace layout in DESIGN.md; nothing is implemented here yet.
