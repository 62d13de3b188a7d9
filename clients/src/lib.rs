//! natter's Rust client SDK.
//!
//! * [`Client`]: one end-to-end-encrypted device — connects and reconnects on its own,
//!   replays its backlog, decrypts and stores every delivery locally before acknowledging
//!   it, and sends 1:1 (Olm), group (Megolm) and file messages. The server only ever sees
//!   ciphertext.
//! * [`account`]: HTTP calls — registration, device linking, blob upload and download.
//! * [`connection`]: one authenticated WebSocket, with request/response matching by id and
//!   a stream of server-initiated frames (deliveries, receipts, presence, typing).
//! * [`store`]: the local SQLite database (credentials, sealed crypto state, history).

pub mod account;
pub mod args;
pub use natter_media::audio;
pub mod calls;
pub mod client;
pub mod connection;
pub mod content;
mod error;
pub mod rooms;
pub mod store;

pub use account::{Credentials, HttpClient};
pub use calls::{ActiveCall, CallEnd, CallState};
pub use client::{Client, ClientEvent, ClientEvents, Sent};
pub use connection::{ConnectOptions, Connection, Event, Events};
pub use error::ClientError;
pub use natter_crypto as crypto;
pub use natter_media::{
    CallStats, MediaError, MediaOptions, MediaSession, VideoOptions, VideoStats,
    session::group::TrackStats,
};
pub use natter_signaling as protocol;
pub use rooms::{ActiveRoom, RoomView};
pub use store::{FileRef, HistoryItem, ItemKind};
