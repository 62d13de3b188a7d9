//! End-to-end tests: the real `natter` binary on loopback with real WebSocket clients.

mod common;

mod accounts;
mod messages;
mod offline;
mod protocol;
