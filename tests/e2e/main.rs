//! End-to-end tests: the real server binary on loopback with real WebSocket clients.
