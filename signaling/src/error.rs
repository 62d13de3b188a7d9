//! Stable error codes. A code never changes meaning once released; clients branch on it,
//! while the accompanying message is for humans and may change.

use serde::{Deserialize, Serialize};

macro_rules! error_codes {
    ($($variant:ident = $text:literal, $http:literal, $doc:literal;)*) => {
        /// Machine-readable error code carried by every error frame and error HTTP body.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ErrorCode {
            $(#[doc = $doc] $variant,)*
            /// A code this build does not know (sent by a newer peer).
            #[serde(other)]
            Unknown,
        }

        impl ErrorCode {
            /// Every known code, for documentation and metrics.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The code as it appears on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $text,)*
                    ErrorCode::Unknown => "unknown",
                }
            }

            /// The HTTP status used when this error answers an HTTP request.
            pub fn http_status(self) -> u16 {
                match self {
                    $(ErrorCode::$variant => $http,)*
                    ErrorCode::Unknown => 500,
                }
            }

            /// One line saying when the code is used.
            pub fn description(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $doc,)*
                    ErrorCode::Unknown => "a code this build does not know",
                }
            }
        }
    };
}

error_codes! {
    BadFrame = "bad_frame", 400, "The frame could not be decoded or a field has the wrong type.";
    UnknownType = "unknown_type", 400, "The frame's `type` is not one this server knows.";
    TooLarge = "too_large", 413, "A frame, envelope, blob or field is over its size limit.";
    Invalid = "invalid", 400, "A field is well-formed but its value is not acceptable.";
    NotAuthenticated = "not_authenticated", 401, "A frame other than `hello` arrived before authentication.";
    Unauthorized = "unauthorized", 401, "The token or verification code is wrong, expired or revoked.";
    DeviceRevoked = "device_revoked", 401, "This device was revoked; the socket is closed after this frame.";
    Forbidden = "forbidden", 403, "Authenticated, but not allowed to do this (not an admin, not a member, not your device).";
    NotFound = "not_found", 404, "The user, device, group, upload or blob does not exist.";
    DeviceMismatch = "device_mismatch", 409, "The envelopes do not match the recipient's device list; `missing` and `extra` say how.";
    Conflict = "conflict", 409, "The request conflicts with the current state (e.g. a wrong upload offset).";
    LimitExceeded = "limit_exceeded", 422, "A count limit would be exceeded (devices, group members, prekeys, subscriptions).";
    RateLimited = "rate_limited", 429, "A rate limit refused the request; retry after `retry_after_ms`.";
    Overloaded = "overloaded", 503, "The server is over capacity and refused the request before doing any of it; retry after `retry_after_ms`.";
    UnsupportedVersion = "unsupported_version", 400, "The requested protocol version or encoding is not supported.";
    Unavailable = "unavailable", 503, "The server is shutting down or a dependency is unavailable; retry later.";
    Internal = "internal", 500, "An unexpected server error; the request had no effect.";
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_as_str() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&json).unwrap();
            assert_eq!(back, *code);
        }
    }

    #[test]
    fn unknown_codes_decode_as_unknown() {
        let code: ErrorCode = serde_json::from_str("\"from_the_future\"").unwrap();
        assert_eq!(code, ErrorCode::Unknown);
    }
}
