//! Encrypted media blobs.
//!
//! Each file gets a fresh random 256-bit key. The file is cut into 64 KiB chunks, each sealed
//! with ChaCha20-Poly1305 under a nonce made of the chunk's index and a "last chunk" flag, so
//! chunks cannot be reordered, dropped or the file cut short without detection. The SHA-256
//! of the whole ciphertext is the digest the sender puts next to the key inside the E2EE
//! message; it is also the blob's address on the server, so the receiver checks what it
//! downloaded before decrypting anything.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use sha2_011::{Digest, Sha256};

use crate::{CryptoError, random_bytes};

/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;

/// What the receiver needs to fetch and open a blob; travels inside an E2EE message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaKey {
    pub key: [u8; 32],
    /// SHA-256 of the ciphertext (the blob's address).
    pub digest: [u8; 32],
    /// Ciphertext length in bytes.
    pub size: u64,
}

impl MediaKey {
    /// The digest as the server names the blob: lowercase hex.
    pub fn blob_id(&self) -> String {
        self.digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn nonce(index: u64, last: bool) -> Nonce {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[8] = u8::from(last);
    Nonce::from(n)
}

/// The ciphertext length of a plaintext of `len` bytes.
pub fn ciphertext_len(len: u64) -> u64 {
    let chunks = len.div_ceil(CHUNK as u64).max(1);
    len + chunks * TAG as u64
}

/// Encrypts a whole file under a new random key.
pub fn encrypt(plaintext: &[u8]) -> (Vec<u8>, MediaKey) {
    let key = random_bytes::<32>();
    let cipher = ChaCha20Poly1305::new(&Key::from(key));
    let mut out = Vec::with_capacity(ciphertext_len(plaintext.len() as u64) as usize);
    let mut chunks = plaintext.chunks(CHUNK).peekable();
    if chunks.peek().is_none() {
        out.extend(cipher.encrypt(&nonce(0, true), &[][..]).expect("seal"));
    }
    let mut index = 0u64;
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        out.extend(cipher.encrypt(&nonce(index, last), chunk).expect("seal"));
        index += 1;
    }
    let digest: [u8; 32] = Sha256::digest(&out).into();
    let size = out.len() as u64;
    (out, MediaKey { key, digest, size })
}

/// Checks the digest, then opens every chunk.
pub fn decrypt(ciphertext: &[u8], key: &MediaKey) -> Result<Vec<u8>, CryptoError> {
    let digest: [u8; 32] = Sha256::digest(ciphertext).into();
    if digest != key.digest {
        return Err(CryptoError::Media(
            "the download does not match the digest in the message".into(),
        ));
    }
    if ciphertext.len() as u64 != key.size {
        return Err(CryptoError::Media("the download has the wrong size".into()));
    }
    let cipher = ChaCha20Poly1305::new(&Key::from(key.key));
    let mut out = Vec::with_capacity(ciphertext.len());
    let mut pieces = ciphertext.chunks(CHUNK + TAG).peekable();
    if pieces.peek().is_none() {
        return Err(CryptoError::Media("empty ciphertext".into()));
    }
    let mut index = 0u64;
    while let Some(piece) = pieces.next() {
        let last = pieces.peek().is_none();
        let plain = cipher
            .decrypt(&nonce(index, last), piece)
            .map_err(|_| CryptoError::Media(format!("chunk {index} does not authenticate")))?;
        out.extend(plain);
        index += 1;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_at_chunk_boundaries() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let (ct, key) = encrypt(&data);
            assert_eq!(ct.len() as u64, ciphertext_len(len as u64));
            assert_eq!(decrypt(&ct, &key).unwrap(), data, "len {len}");
            assert_eq!(key.blob_id().len(), 64);
        }
    }

    #[test]
    fn tampering_truncation_and_wrong_keys_are_caught() {
        let data = vec![7u8; 2 * CHUNK + 10];
        let (ct, key) = encrypt(&data);
        let mut flipped = ct.clone();
        flipped[100] ^= 1;
        assert!(decrypt(&flipped, &key).is_err(), "digest");
        // A consistent digest over a forged ciphertext still fails the AEAD.
        let forged = MediaKey {
            digest: Sha256::digest(&flipped).into(),
            ..key.clone()
        };
        assert!(decrypt(&flipped, &forged).is_err(), "tag");
        // Dropping the last chunk: the new last chunk was not sealed as last.
        let cut = ct[..2 * (CHUNK + TAG)].to_vec();
        let cut_key = MediaKey {
            digest: Sha256::digest(&cut).into(),
            size: cut.len() as u64,
            ..key.clone()
        };
        assert!(decrypt(&cut, &cut_key).is_err(), "truncation");
        let other = MediaKey {
            key: [9; 32],
            ..key.clone()
        };
        assert!(decrypt(&ct, &other).is_err(), "key");
    }
}
