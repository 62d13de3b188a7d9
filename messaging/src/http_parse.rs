//! What the HTTP routes parse out of request headers and paths, as plain functions over
//! bytes, so that they can be unit-tested and fuzzed without a server.

use natter_signaling::codec::Encoding;
use natter_signaling::{ErrorCode, ProtocolError};

/// A header value as a non-negative integer (ASCII digits, surrounding spaces allowed).
pub fn parse_u64_header(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

/// The start of `Range: bytes=N-`, which must be below the blob's `size`.
pub fn parse_range_start(value: &[u8], size: u64) -> Result<u64, String> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|n| *n < size)
        .ok_or_else(|| format!("only `Range: bytes=N-` with N below {size} is supported"))
}

/// Checks an append to an upload of `length` bytes that holds `current` already: the
/// client's `offset` must be `current`, and a declared body length must fit. Returns how
/// many bytes may still be written.
pub fn check_append(
    length: u64,
    current: u64,
    offset: u64,
    declared: Option<u64>,
) -> Result<u64, ProtocolError> {
    if offset != current {
        return Err(ProtocolError::new(
            ErrorCode::Conflict,
            format!("the upload is at offset {current}, not {offset}"),
        ));
    }
    let remaining = length.checked_sub(current).ok_or_else(|| {
        ProtocolError::internal(format!("upload holds {current} of {length} bytes"))
    })?;
    if let Some(n) = declared
        && n > remaining
    {
        return Err(ProtocolError::new(
            ErrorCode::TooLarge,
            format!("{n} bytes would pass the declared length; {remaining} remain"),
        ));
    }
    Ok(remaining)
}

/// An upload id: 32 lower-case hex digits.
pub fn valid_upload_id(id: &str) -> bool {
    id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// A blob address: SHA-256 as 64 lower-case hex digits.
pub fn valid_blob_hash(hash: &str) -> bool {
    hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// Picks the encoding from `Sec-WebSocket-Protocol` values (comma-separated, in the
/// client's order of preference). `Ok(None)`: the client asked for none (JSON, without
/// echoing a subprotocol).
pub fn choose_encoding<'a>(
    offered: impl IntoIterator<Item = &'a [u8]>,
) -> Result<Option<Encoding>, String> {
    let offered: Vec<&str> = offered
        .into_iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    let mut first_error = None;
    for name in &offered {
        match Encoding::from_subprotocol(name) {
            Ok(Some(enc)) => return Ok(Some(enc)),
            Ok(None) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| {
        format!(
            "none of the offered subprotocols {offered:?} is supported; use natter.v1.json or natter.v1.bin"
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_chosen_in_client_order() {
        let one = |v: &'static str| choose_encoding([v.as_bytes()]);
        assert_eq!(choose_encoding(std::iter::empty()), Ok(None));
        assert_eq!(
            one("chat, natter.v1.json, natter.v1.bin"),
            Ok(Some(Encoding::Json))
        );
        assert!(one("natter.v9.bin").unwrap_err().contains("version 9"));
        assert_eq!(
            one("natter.v9.bin, natter.v1.bin"),
            Ok(Some(Encoding::Binary))
        );
        assert!(one("chat").is_err());
    }

    #[test]
    fn ids_and_hashes_are_strict_hex() {
        assert!(valid_upload_id("0123456789abcdef0123456789abcdef"));
        assert!(!valid_upload_id("../etc/passwd"));
        assert!(!valid_upload_id("0123456789ABCDEF0123456789ABCDEF"));
        assert!(valid_blob_hash(&"a".repeat(64)));
        assert!(!valid_blob_hash(&"a".repeat(63)));
    }

    #[test]
    fn ranges_and_appends() {
        assert_eq!(parse_range_start(b"bytes=5-", 10), Ok(5));
        assert!(parse_range_start(b"bytes=10-", 10).is_err());
        assert!(parse_range_start(b"bytes=1-2", 10).is_err());
        assert_eq!(parse_u64_header(b" 42 "), Some(42));
        assert_eq!(parse_u64_header(b"-1"), None);
        assert_eq!(check_append(10, 4, 4, Some(6)), Ok(6));
        assert_eq!(
            check_append(10, 4, 3, None).unwrap_err().code,
            ErrorCode::Conflict
        );
        assert_eq!(
            check_append(10, 4, 4, Some(7)).unwrap_err().code,
            ErrorCode::TooLarge
        );
        assert_eq!(
            check_append(10, 11, 11, None).unwrap_err().code,
            ErrorCode::Internal
        );
    }
}
