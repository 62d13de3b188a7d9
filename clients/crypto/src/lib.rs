//! natter's end-to-end encryption core, shared by the Rust client and (compiled to
//! WebAssembly) the browser client. It is sans-IO: plain structs fed keys, ciphertexts and
//! time, returning ciphertexts, plaintexts and what to publish; no sockets, no tokio, no
//! clock of its own.
//!
//! * [`Machine`]: one device's crypto state. Its identity (Ed25519 signing key, Curve25519
//!   key), the one-time and last-resort prekeys it publishes, an Olm session (double
//!   ratchet) per peer device, its Megolm outbound session per group and the inbound group
//!   sessions others shared with it. It pickles to an encrypted blob for storage.
//! * [`media`]: a random key per file; chunked ChaCha20-Poly1305; SHA-256 digest of the
//!   ciphertext (which is also the blob's address on the server).
//! * [`safety`]: the safety number two users compare out of band.
//!
//! How keys map onto the server's prekey directory (which treats them as opaque bytes):
//!
//! | directory field | contents |
//! |---|---|
//! | `identity_key` | the device's Ed25519 public key (32 bytes) |
//! | `signed_prekey` | the device's Curve25519 identity key, signed by the Ed25519 key |
//! | `one_time[i].key` | a Curve25519 one-time key (32 bytes) + its Ed25519 signature (64) |
//! | `last_resort.key` | the Olm fallback key, signed the same way |

pub mod call_media;
mod error;
mod machine;
pub mod media;
pub mod safety;
mod wire;

pub use error::CryptoError;
pub use machine::{
    DeviceKeys, GroupKeyShare, IdentityChange, KeysUpload, Machine, PeerDevice, PublishedKey,
};
pub use natter_signaling::{DeviceId, GroupId, UserId};
pub use wire::Plaintext;

/// Fills `buf` with cryptographically secure random bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the system random number generator works");
    buf
}
