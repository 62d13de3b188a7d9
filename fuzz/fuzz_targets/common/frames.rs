//! Shared body of the `client_frame_*` targets: one encoding's decoders fed arbitrary bytes.

use natter_signaling::protocol::limits::MAX_FRAME_BYTES;
use natter_signaling::{ClientFrame, Encoding, ErrorCode, ServerFrame};

/// Decodes `data` as a client frame (what the server does with every WebSocket message) and
/// as a server frame (what a client does); whatever decodes must survive encode → decode
/// unchanged.
pub fn check(enc: Encoding, data: &[u8]) {
    match enc.decode_client(data) {
        Ok(frame) => {
            let bytes = enc.encode(&frame);
            // A compact input (MessagePack arrays instead of maps) can re-encode longer; the
            // frame limit is about what arrives, so such a frame is not a round-trip failure.
            if bytes.len() <= MAX_FRAME_BYTES {
                let back = enc
                    .decode_client(&bytes)
                    .unwrap_or_else(|e| panic!("{frame:?} re-encoded does not decode: {e}"));
                assert_eq!(back, frame, "client frame changed in a round trip");
            }
            assert!(ClientFrame::TYPES.contains(&frame.type_name()));
        }
        Err(e) => {
            assert!(!e.message.is_empty());
            assert_eq!(
                e.code == ErrorCode::TooLarge && e.id.is_none(),
                data.len() > MAX_FRAME_BYTES,
                "only an oversized frame is refused before parsing: {e:?}"
            );
        }
    }
    if let Ok(frame) = enc.decode::<ServerFrame>(data) {
        let bytes = enc.encode(&frame);
        if bytes.len() <= MAX_FRAME_BYTES {
            let back: ServerFrame = enc
                .decode(&bytes)
                .unwrap_or_else(|e| panic!("{frame:?} re-encoded does not decode: {e}"));
            assert_eq!(back, frame, "server frame changed in a round trip");
        }
    }
}
