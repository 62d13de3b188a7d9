//! The natter wire protocol, shared by the server and every client.
//!
//! * [`protocol`]: every frame a client or the server may send, and the items of a device queue.
//! * [`codec`]: the two encodings (JSON text frames for browsers, MessagePack binary frames for
//!   native clients), chosen per connection with `Sec-WebSocket-Protocol`, and bounded decoding.
//! * [`error`]: stable machine-readable error codes.

pub mod call;
pub mod codec;
pub mod error;
pub mod protocol;
pub mod room;
pub mod room_token;
pub mod turn;

pub use codec::{DecodeError, Encoding};
pub use error::ErrorCode;
pub use protocol::*;
