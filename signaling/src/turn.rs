//! TURN REST credentials, compatible with coturn's `--use-auth-secret`: the username is
//! `<expiry unix seconds>:<user>` and the password is the base64 HMAC-SHA1 of the username
//! under a secret shared by whoever mints (the messaging server) and whoever checks (the TURN
//! server). One implementation for both sides.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// A short-lived TURN username and password.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TurnCredential {
    pub username: String,
    pub password: String,
    /// When it stops working (unix seconds).
    pub expires_unix: u64,
}

fn password_for(secret: &[u8], username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(username.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

/// Mints a credential for `user`, valid for `ttl_s` seconds from `now_unix`.
pub fn mint(secret: &[u8], user: &str, now_unix: u64, ttl_s: u64) -> TurnCredential {
    let expires_unix = now_unix + ttl_s;
    let username = format!("{expires_unix}:{user}");
    TurnCredential {
        password: password_for(secret, &username),
        username,
        expires_unix,
    }
}

/// Why a REST credential was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    #[error("username is not <expiry>:<user>")]
    Malformed,
    #[error("credential expired")]
    Expired,
}

/// The password a TURN server expects for `username` at `now_unix`, or why none is valid.
/// (The TURN server derives its long-term key from this password, so it never needs a
/// password from the client in the clear.)
pub fn password(secret: &[u8], username: &str, now_unix: u64) -> Result<String, CredentialError> {
    let expiry = username
        .split(':')
        .next()
        .and_then(|e| e.parse::<u64>().ok())
        .ok_or(CredentialError::Malformed)?;
    if expiry <= now_unix {
        return Err(CredentialError::Expired);
    }
    Ok(password_for(secret, username))
}

/// Checks a username/password pair as given by a client.
pub fn verify(
    secret: &[u8],
    username: &str,
    password: &str,
    now_unix: u64,
) -> Result<bool, CredentialError> {
    let expected = self::password(secret, username, now_unix)?;
    // Constant-time comparison: the password is an HMAC.
    let (a, b) = (expected.as_bytes(), password.as_bytes());
    Ok(a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_coturn_rest_scheme() {
        // coturn: password = base64(hmac-sha1(secret, "expiry:user")); computed independently
        // with `printf %s "1800000000:alice" | openssl dgst -sha1 -hmac s3cret -binary | base64`.
        let c = mint(b"s3cret", "alice", 1_800_000_000 - 3600, 3600);
        assert_eq!(c.username, "1800000000:alice");
        assert_eq!(c.password, "3i66Yob+5ER4xVxIRXhvnAp6moo=");
        assert_eq!(c.expires_unix, 1_800_000_000);
    }

    #[test]
    fn verification_checks_secret_password_and_expiry() {
        let now = 1_700_000_000;
        let c = mint(b"k", "u42", now, 60);
        assert_eq!(verify(b"k", &c.username, &c.password, now), Ok(true));
        assert_eq!(verify(b"other", &c.username, &c.password, now), Ok(false));
        assert_eq!(verify(b"k", &c.username, "x", now), Ok(false));
        assert_eq!(
            verify(b"k", &c.username, &c.password, now + 60),
            Err(CredentialError::Expired)
        );
        assert_eq!(
            verify(b"k", "alice", "x", now),
            Err(CredentialError::Malformed)
        );
        // The user part may itself hold colons; only the expiry is parsed.
        let c = mint(b"k", "a:b", now, 60);
        assert_eq!(verify(b"k", &c.username, &c.password, now), Ok(true));
    }
}
