//! Bandwidth estimation (GCC over transport-wide CC feedback), codec adaptation and media E2EE.
//!
//! Reserved by the workspace layout in DESIGN.md; nothing is implemented here yet.
