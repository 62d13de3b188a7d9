//! Authentication pieces of the core: stateless nonces, and why a request failed.

use std::net::IpAddr;
use std::time::Duration;

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
pub(crate) struct Nonces {
    /// Signs nonces (random per process).
    key: [u8; 32],
    lifetime: Duration,
}

fn now_s(now_ms: u64) -> u64 {
    now_ms / 1000
}

impl Nonces {
    pub(crate) fn new(key: [u8; 32], lifetime: Duration) -> Nonces {
        Nonces { key, lifetime }
    }

    pub(crate) fn issue(&self, client: IpAddr, now_ms: u64) -> String {
        let expiry = now_s(now_ms) + self.lifetime.as_secs();
        format!("{expiry:016x}{}", self.tag(client, expiry))
    }

    fn tag(&self, client: IpAddr, expiry: u64) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.key).expect("key");
        mac.update(&expiry.to_be_bytes());
        match client {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        let tag = mac.finalize().into_bytes();
        tag[..12].iter().map(|b| format!("{b:02x}")).collect()
    }

    pub(crate) fn valid(&self, nonce: &str, client: IpAddr, now_ms: u64) -> bool {
        if nonce.len() != 16 + 24 || !nonce.is_ascii() {
            return false;
        }
        let Ok(expiry) = u64::from_str_radix(&nonce[..16], 16) else {
            return false;
        };
        expiry > now_s(now_ms) && nonce[16..] == self.tag(client, expiry)
    }
}
