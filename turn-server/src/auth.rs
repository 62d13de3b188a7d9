//! Authentication pieces of the core: stateless nonces, and why a request failed.

use std::net::IpAddr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Why a request failed authentication (metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    NoCredentials,
    UnknownUser,
    Expired,
    StaleNonce,
    BadIntegrity,
    WrongUser,
}

impl AuthFailure {
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::NoCredentials => "no_credentials",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::Expired => "expired",
            AuthFailure::StaleNonce => "stale_nonce",
            AuthFailure::BadIntegrity => "bad_integrity",
            AuthFailure::WrongUser => "wrong_user",
        }
    }
}

/// Nonces that need no table: an expiry and a MAC over it and the client's address.
///
/// 16 characters (base64url of 4 bytes of expiry and 8 of HMAC-SHA1): every
/// unauthenticated 401 carries one, so its size is what the server reflects. 64 bits of
/// MAC cannot be guessed online, and a nonce only proves that its holder got the 401 at
/// that address before the expiry; the password still has to match.
pub(crate) struct Nonces {
    /// Signs nonces (random per process).
    key: [u8; 32],
    lifetime: Duration,
}

const EXPIRY_LEN: usize = 4;
const TAG_LEN: usize = 8;
/// Characters of a nonce: base64 of 12 bytes, no padding.
pub(crate) const NONCE_LEN: usize = (EXPIRY_LEN + TAG_LEN) * 4 / 3;

fn now_s(now_ms: u64) -> u64 {
    now_ms / 1000
}

impl Nonces {
    pub(crate) fn new(key: [u8; 32], lifetime: Duration) -> Nonces {
        Nonces { key, lifetime }
    }

    fn mac(&self, client: IpAddr, expiry: [u8; EXPIRY_LEN]) -> Hmac<Sha1> {
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.key).expect("key");
        mac.update(&expiry);
        match client {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        mac
    }

    pub(crate) fn issue(&self, client: IpAddr, now_ms: u64) -> String {
        let expiry = (now_s(now_ms) + self.lifetime.as_secs()).min(u64::from(u32::MAX)) as u32;
        let expiry = expiry.to_be_bytes();
        let mut raw = [0u8; EXPIRY_LEN + TAG_LEN];
        raw[..EXPIRY_LEN].copy_from_slice(&expiry);
        raw[EXPIRY_LEN..]
            .copy_from_slice(&self.mac(client, expiry).finalize().into_bytes()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    pub(crate) fn valid(&self, nonce: &str, client: IpAddr, now_ms: u64) -> bool {
        let mut raw = [0u8; EXPIRY_LEN + TAG_LEN];
        if nonce.len() != NONCE_LEN
            || URL_SAFE_NO_PAD.decode_slice(nonce, &mut raw).ok() != Some(raw.len())
        {
            return false;
        }
        let expiry: [u8; EXPIRY_LEN] = raw[..EXPIRY_LEN].try_into().expect("4 bytes");
        u64::from(u32::from_be_bytes(expiry)) > now_s(now_ms)
            && self
                .mac(client, expiry)
                .verify_truncated_left(&raw[EXPIRY_LEN..])
                .is_ok()
    }
}
