//! Room tokens: the gateway mints one when a device joins a group call, and the SFU checks
//! it before it admits the device, with a secret the two share. So an SFU that runs on its
//! own host admits only whom a gateway let in, and only into the room it named, for a short
//! while.
//!
//! A token is `<room>.<device>.<expiry unix seconds>.<base64url HMAC-SHA256 of the rest>`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Longest room name a token may carry.
pub const MAX_ROOM_CHARS: usize = 64;
/// Longest token accepted (a room name at its longest, a device id, an expiry and a MAC).
pub const MAX_TOKEN_CHARS: usize = 160;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomClaims {
    pub room: String,
    /// The device (`DeviceId`'s number) the token admits.
    pub device: u64,
    pub expires_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the room token is malformed")]
    Malformed,
    #[error("the room token's signature is wrong")]
    BadSignature,
    #[error("the room token expired")]
    Expired,
}

fn mac(secret: &[u8], body: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(body.as_bytes());
    mac
}

/// Whether `room` can be named in a token: 1 to 64 of `A-Z a-z 0-9 - _`.
pub fn valid_room(room: &str) -> bool {
    !room.is_empty()
        && room.len() <= MAX_ROOM_CHARS
        && room
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A token admitting `device` to `room` for `ttl_s` seconds from `now_unix`.
///
/// # Panics
/// If `room` is not [`valid_room`] (rooms are named by the gateway, never by a client).
pub fn mint(secret: &[u8], room: &str, device: u64, now_unix: u64, ttl_s: u64) -> String {
    assert!(valid_room(room), "room name {room:?} cannot go in a token");
    let body = format!("{room}.{device}.{}", now_unix + ttl_s);
    let sig = BASE64URL.encode(mac(secret, &body).finalize().into_bytes());
    format!("{body}.{sig}")
}

/// The claims of `token` if `secret` signed it and it has not expired at `now_unix`.
pub fn verify(secret: &[u8], token: &str, now_unix: u64) -> Result<RoomClaims, TokenError> {
    if token.len() > MAX_TOKEN_CHARS {
        return Err(TokenError::Malformed);
    }
    let (body, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let mut parts = body.split('.');
    let (Some(room), Some(device), Some(expiry), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let sig = BASE64URL.decode(sig).map_err(|_| TokenError::Malformed)?;
    let device = device.parse().map_err(|_| TokenError::Malformed)?;
    let expires_unix: u64 = expiry.parse().map_err(|_| TokenError::Malformed)?;
    if !valid_room(room) {
        return Err(TokenError::Malformed);
    }
    // Constant-time comparison, before the expiry is trusted.
    mac(secret, body)
        .verify_slice(&sig)
        .map_err(|_| TokenError::BadSignature)?;
    if expires_unix <= now_unix {
        return Err(TokenError::Expired);
    }
    Ok(RoomClaims {
        room: room.to_string(),
        device,
        expires_unix,
    })
}

/// The bearer key of a standalone SFU's control link (`/v1/control`) for a token secret: a
/// holder of the secret may drive the SFU.
pub fn control_key(secret: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(b"natter-sfu control link v1");
    BASE64URL.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"shared between gateway and sfu";

    #[test]
    fn a_minted_token_verifies_until_it_expires() {
        let t = mint(SECRET, "g42", 7, 1_000, 60);
        let claims = verify(SECRET, &t, 1_059).unwrap();
        assert_eq!(
            claims,
            RoomClaims {
                room: "g42".into(),
                device: 7,
                expires_unix: 1_060
            }
        );
        assert_eq!(verify(SECRET, &t, 1_060), Err(TokenError::Expired));
    }

    #[test]
    fn another_secret_or_any_changed_field_is_refused() {
        let t = mint(SECRET, "g42", 7, 1_000, 60);
        assert_eq!(verify(b"other", &t, 1_000), Err(TokenError::BadSignature));
        let sig = t.rsplit_once('.').unwrap().1;
        for forged in [
            format!("g43.7.1060.{sig}"),
            format!("g42.8.1060.{sig}"),
            format!("g42.7.9999.{sig}"),
        ] {
            assert_eq!(
                verify(SECRET, &forged, 1_000),
                Err(TokenError::BadSignature)
            );
        }
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in [
            "",
            "g42",
            "g42.7.1060",
            "g42.7.1060.!!",
            "g42.x.1060.AAAA",
            "g 42.7.1060.AAAA",
            "a.b.7.1060.AAAA",
            &"x".repeat(MAX_TOKEN_CHARS + 1),
        ] {
            assert_eq!(verify(SECRET, bad, 0), Err(TokenError::Malformed), "{bad}");
        }
    }
}
