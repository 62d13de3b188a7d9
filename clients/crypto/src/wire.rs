//! Byte formats of what the server carries (envelope bodies) and of what is sealed inside.
//! MessagePack maps with short field names; every decode is bounded by the envelope size the
//! server already enforces (64 KiB).

use natter_signaling::{DeviceId, GroupId, OpaqueBytes, UserId};
use serde::{Deserialize, Serialize};

use crate::CryptoError;

pub(crate) const VERSION: u8 = 1;

/// A 1:1 envelope body: one Olm message.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct OlmBody {
    pub v: u8,
    /// Olm message type: 0 pre-key (starts a session), 1 normal.
    pub t: u8,
    pub c: OpaqueBytes,
}

/// A group message body: one Megolm message of the sender device's session `s`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct MegolmBody {
    pub v: u8,
    pub s: String,
    pub c: OpaqueBytes,
}

/// What an Olm message seals: the content plus who sent it to whom, so that a server cannot
/// pass one device's message off as another's, and the sender's Ed25519 identity with its
/// signature over the Curve25519 key the session runs on.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SealedOlm {
    pub from_user: UserId,
    pub from_device: DeviceId,
    pub to_device: DeviceId,
    pub ed25519: OpaqueBytes,
    pub curve_sig: OpaqueBytes,
    pub content: OpaqueBytes,
}

/// What a Megolm message seals.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SealedMegolm {
    pub from_user: UserId,
    pub from_device: DeviceId,
    pub group: GroupId,
    pub content: OpaqueBytes,
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).expect("plain structs serialize")
}

pub(crate) fn decode<'a, T: Deserialize<'a>>(
    what: &str,
    bytes: &'a [u8],
) -> Result<T, CryptoError> {
    rmp_serde::from_slice(bytes).map_err(|e| CryptoError::Malformed(format!("{what}: {e}")))
}

/// A decrypted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plaintext {
    /// The application content (the client's own encoding).
    pub content: Vec<u8>,
    /// Set when this message revealed a new identity for the sending device (its first
    /// message, or a changed key).
    pub identity_change: Option<crate::IdentityChange>,
}
