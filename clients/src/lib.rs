//! natter's Rust client SDK.
//!
//! * [`account`]: HTTP calls — registration, device linking, blob upload and download.
//! * [`connection`]: one authenticated WebSocket, with request/response matching by id and
//!   a stream of server-initiated frames (deliveries, receipts, presence, typing).

pub mod account;
pub mod connection;
mod error;

pub use account::{Credentials, HttpClient};
pub use connection::{ConnectOptions, Connection, Event, Events};
pub use error::ClientError;
pub use natter_signaling as protocol;
