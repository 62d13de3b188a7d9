//! What a natter client seals inside its E2EE messages (the server never sees any of it).

use natter_crypto::call_media::CallKeyShare;
use natter_crypto::media::MediaKey;
use natter_signaling::{GroupId, OpaqueBytes};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    Text {
        text: String,
    },
    /// An encrypted blob on the server: its name, plaintext size and the key to open it.
    File {
        name: String,
        size: u64,
        media: MediaKey,
    },
    /// A Megolm session key of the sending device for `group` (not shown to the user).
    GroupKey {
        group: GroupId,
        session_key: OpaqueBytes,
    },
    /// The sending device's SFrame key for `group`'s call `call_id` (not shown to the user).
    CallKey {
        group: GroupId,
        call_id: String,
        key: CallKeyShare,
    },
}

impl Content {
    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).expect("content serializes")
    }

    pub fn decode(bytes: &[u8]) -> Result<Content, String> {
        rmp_serde::from_slice(bytes).map_err(|e| format!("unreadable content: {e}"))
    }
}
