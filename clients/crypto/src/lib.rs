//! The client's end-to-end encryption core, free of tokio and sockets so it builds for wasm32.
//!
//! Reserved by the workspace layout in DESIGN.md; nothing is implemented here yet.
