//! Frame encodings, negotiated per connection with `Sec-WebSocket-Protocol`:
//!
//! | subprotocol      | WebSocket message | body                                   |
//! |------------------|-------------------|----------------------------------------|
//! | `natter.v1.json` | text              | JSON object with a `type` field        |
//! | `natter.v1.bin`  | binary            | MessagePack map with the same fields   |
//!
//! A client that asks for no subprotocol gets JSON (what a plain browser `WebSocket` does).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::protocol::{ClientFrame, ProtocolError, limits};
use crate::{ErrorCode, PROTOCOL_VERSION};

/// How frames are encoded on one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    Json,
    Binary,
}

/// The subprotocol names this build accepts, most preferred first.
pub const SUBPROTOCOLS: &[&str] = &["natter.v1.bin", "natter.v1.json"];

impl Encoding {
    /// The `Sec-WebSocket-Protocol` value selecting this encoding at the current version.
    pub fn subprotocol(self) -> &'static str {
        match self {
            Encoding::Json => "natter.v1.json",
            Encoding::Binary => "natter.v1.bin",
        }
    }

    /// Parses a subprotocol name. `Err` carries a clear reason for names that look like natter
    /// subprotocols but ask for another version or encoding; `Ok(None)` means "not ours".
    pub fn from_subprotocol(name: &str) -> Result<Option<Encoding>, String> {
        let name = name.trim();
        let Some(rest) = name.strip_prefix("natter.v") else {
            return Ok(None);
        };
        let (version, enc) = rest
            .split_once('.')
            .ok_or_else(|| format!("malformed subprotocol {name:?}"))?;
        // Canonical digits only ("+1" and "01" would parse as 1): the server echoes the
        // name it chose, and it must be one the client offered (RFC 6455 §4.1).
        let canonical = !version.is_empty()
            && version.bytes().all(|b| b.is_ascii_digit())
            && (version.len() == 1 || !version.starts_with('0'));
        let version: u32 = version
            .parse()
            .ok()
            .filter(|_| canonical)
            .ok_or_else(|| format!("malformed subprotocol {name:?}"))?;
        if version != PROTOCOL_VERSION {
            return Err(format!(
                "protocol version {version} is not supported; this server speaks {PROTOCOL_VERSION}"
            ));
        }
        match enc {
            "json" => Ok(Some(Encoding::Json)),
            "bin" => Ok(Some(Encoding::Binary)),
            other => Err(format!("encoding {other:?} is not supported (json, bin)")),
        }
    }

    /// Encodes a frame.
    pub fn encode<T: Serialize>(self, frame: &T) -> Vec<u8> {
        match self {
            // Serializing these types cannot fail: all map keys are strings.
            Encoding::Json => serde_json::to_vec(frame).expect("frame serializes to JSON"),
            Encoding::Binary => {
                rmp_serde::to_vec_named(frame).expect("frame serializes to MessagePack")
            }
        }
    }

    /// Decodes a frame of at most [`limits::MAX_FRAME_BYTES`].
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        if bytes.len() > limits::MAX_FRAME_BYTES {
            return Err(DecodeError {
                id: None,
                code: ErrorCode::TooLarge,
                message: format!(
                    "frame is {} bytes; at most {} are allowed",
                    bytes.len(),
                    limits::MAX_FRAME_BYTES
                ),
            });
        }
        let result = match self {
            Encoding::Json => serde_json::from_slice::<T>(bytes).map_err(|e| e.to_string()),
            Encoding::Binary => rmp_serde::from_slice::<T>(bytes).map_err(|e| e.to_string()),
        };
        result.map_err(|message| self.explain(bytes, message))
    }

    /// Decodes and validates a client frame.
    pub fn decode_client(self, bytes: &[u8]) -> Result<ClientFrame, DecodeError> {
        let frame: ClientFrame = self.decode(bytes)?;
        frame.validate().map_err(|e| DecodeError {
            id: Some(frame.id()),
            code: e.code,
            message: e.message,
        })?;
        Ok(frame)
    }

    /// Builds a helpful error for a frame that did not decode: recovers its request id and
    /// tells an unknown `type` apart from a malformed known one.
    fn explain(self, bytes: &[u8], message: String) -> DecodeError {
        #[derive(serde::Deserialize)]
        struct Head {
            #[serde(rename = "type")]
            kind: Option<String>,
            id: Option<u64>,
        }
        let head: Option<Head> = match self {
            Encoding::Json => serde_json::from_slice(bytes).ok(),
            Encoding::Binary => rmp_serde::from_slice(bytes).ok(),
        };
        let Some(head) = head else {
            let what = match self {
                Encoding::Json => "a JSON object",
                Encoding::Binary => "a MessagePack map",
            };
            return DecodeError {
                id: None,
                code: ErrorCode::BadFrame,
                message: format!("frame is not {what}: {message}"),
            };
        };
        match head.kind {
            None => DecodeError {
                id: head.id,
                code: ErrorCode::BadFrame,
                message: "frame has no `type` field".into(),
            },
            Some(kind) if !ClientFrame::TYPES.contains(&kind.as_str()) => DecodeError {
                id: head.id,
                code: ErrorCode::UnknownType,
                message: format!("unknown frame type {kind:?}"),
            },
            Some(kind) => DecodeError {
                id: head.id,
                code: ErrorCode::BadFrame,
                message: format!("malformed {kind:?} frame: {message}"),
            },
        }
    }
}

/// A frame that could not be accepted, with what could be recovered of its request id.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DecodeError {
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

impl From<DecodeError> for ProtocolError {
    fn from(e: DecodeError) -> Self {
        ProtocolError::new(e.code, e.message)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::call::{IceCandidate, Media, SdpKind};
    use crate::protocol::*;

    fn sample_frames() -> Vec<ClientFrame> {
        let bytes = || OpaqueBytes(vec![1, 2, 3, 255]);
        vec![
            ClientFrame::Hello {
                id: 1,
                token: "t".into(),
                cursor: Some(9),
                client: None,
            },
            ClientFrame::Ping { id: 2 },
            ClientFrame::Send {
                id: 3,
                client_id: "c1".into(),
                to: UserId(7),
                envelopes: vec![Envelope {
                    device: DeviceId(4),
                    body: bytes(),
                }],
            },
            ClientFrame::SendGroup {
                id: 4,
                client_id: "c2".into(),
                group: GroupId(1),
                body: bytes(),
            },
            ClientFrame::Ack {
                id: 5,
                qseqs: vec![1, 2],
            },
            ClientFrame::Read {
                id: 6,
                conv: Conv::Direct(UserId(2)),
                to: UserId(2),
                seqs: vec![3],
            },
            ClientFrame::Typing {
                id: 7,
                conv: Conv::Group(GroupId(3)),
                active: true,
            },
            ClientFrame::KeysUpload {
                id: 8,
                identity_key: Some(bytes()),
                signed_prekey: Some(SignedPrekey {
                    key_id: 1,
                    key: bytes(),
                    signature: bytes(),
                }),
                one_time: vec![Prekey {
                    key_id: 2,
                    key: bytes(),
                }],
                last_resort: Some(Prekey {
                    key_id: 3,
                    key: bytes(),
                }),
            },
            ClientFrame::KeysClaim {
                id: 9,
                user: UserId(1),
            },
            ClientFrame::KeysCount { id: 10 },
            ClientFrame::DevicesList { id: 11 },
            ClientFrame::DeviceRevoke {
                id: 12,
                device: DeviceId(5),
            },
            ClientFrame::DeviceLinkCode { id: 13 },
            ClientFrame::Lookup {
                id: 14,
                phones: vec!["+15550001".into()],
            },
            ClientFrame::GroupCreate {
                id: 15,
                name: "g".into(),
                members: vec![UserId(2)],
            },
            ClientFrame::GroupAdd {
                id: 16,
                group: GroupId(1),
                users: vec![UserId(3)],
            },
            ClientFrame::GroupRemove {
                id: 17,
                group: GroupId(1),
                users: vec![UserId(3)],
            },
            ClientFrame::GroupPromote {
                id: 18,
                group: GroupId(1),
                user: UserId(3),
            },
            ClientFrame::GroupLeave {
                id: 19,
                group: GroupId(1),
            },
            ClientFrame::GroupRename {
                id: 20,
                group: GroupId(1),
                name: "h".into(),
            },
            ClientFrame::GroupInfo {
                id: 21,
                group: GroupId(1),
            },
            ClientFrame::PresenceSubscribe {
                id: 22,
                users: vec![UserId(1)],
            },
            ClientFrame::PresenceUnsubscribe {
                id: 23,
                users: vec![UserId(1)],
            },
            ClientFrame::Settings {
                id: 24,
                presence: Some(PresenceVisibility::Nobody),
                read_receipts: Some(false),
            },
            ClientFrame::CallOffer {
                id: 25,
                call_id: "c".into(),
                to: UserId(2),
                media: Media::Video,
                sdp: "v=0".into(),
            },
            ClientFrame::CallRinging {
                id: 26,
                call_id: "c".into(),
            },
            ClientFrame::CallAccept {
                id: 27,
                call_id: "c".into(),
                sdp: "v=0".into(),
            },
            ClientFrame::CallDecline {
                id: 28,
                call_id: "c".into(),
            },
            ClientFrame::CallCancel {
                id: 29,
                call_id: "c".into(),
            },
            ClientFrame::CallHangup {
                id: 30,
                call_id: "c".into(),
            },
            ClientFrame::CallIce {
                id: 31,
                call_id: "c".into(),
                candidate: IceCandidate {
                    candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
                    sdp_mid: None,
                    sdp_mline_index: Some(0),
                },
            },
            ClientFrame::CallUpdate {
                id: 32,
                call_id: "c".into(),
                kind: SdpKind::Answer,
                sdp: "v=0".into(),
            },
            ClientFrame::IceServers { id: 33 },
            ClientFrame::RoomJoin {
                id: 34,
                group: GroupId(1),
                media: Media::Audio,
                sdp: "v=0".into(),
            },
            ClientFrame::RoomAnswer {
                id: 35,
                group: GroupId(1),
                sdp: "v=0".into(),
            },
            ClientFrame::RoomLeave {
                id: 36,
                group: GroupId(1),
            },
            ClientFrame::RoomState {
                id: 37,
                group: GroupId(1),
                muted: Some(true),
                camera: None,
                hand: Some(false),
            },
        ]
    }

    #[test]
    fn every_client_frame_round_trips_in_both_encodings() {
        let frames = sample_frames();
        assert_eq!(frames.len(), ClientFrame::TYPES.len());
        for frame in frames {
            assert!(ClientFrame::TYPES.contains(&frame.type_name()));
            for enc in [Encoding::Json, Encoding::Binary] {
                let bytes = enc.encode(&frame);
                let back = enc.decode_client(&bytes).unwrap();
                assert_eq!(back, frame, "{enc:?}");
            }
            let json: serde_json::Value = serde_json::to_value(&frame).unwrap();
            assert_eq!(json["type"], frame.type_name());
        }
    }

    #[test]
    fn bytes_are_base64_in_json_and_raw_in_binary() {
        let frame = ServerFrame::Deliver {
            qseq: 1,
            item: Arc::new(QueueItem::Message {
                conv: Conv::Direct(UserId(1)),
                seq: 1,
                from: UserId(1),
                device: DeviceId(1),
                ts_ms: 0,
                body: OpaqueBytes(vec![0xde, 0xad, 0xbe, 0xef]),
            }),
        };
        let json = String::from_utf8(Encoding::Json.encode(&frame)).unwrap();
        assert!(json.contains("\"body\":\"3q2+7w==\""), "{json}");
        let bin = Encoding::Binary.encode(&frame);
        assert!(
            bin.windows(6)
                .any(|w| w == [0xc4, 4, 0xde, 0xad, 0xbe, 0xef])
        );
        for enc in [Encoding::Json, Encoding::Binary] {
            let back: ServerFrame = enc.decode(&enc.encode(&frame)).unwrap();
            assert_eq!(back, frame);
        }
    }

    #[test]
    fn unknown_type_keeps_request_id() {
        let err = Encoding::Json
            .decode_client(br#"{"type":"launch_rockets","id":42}"#)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownType);
        assert_eq!(err.id, Some(42));
    }

    #[test]
    fn malformed_known_type_is_bad_frame_with_id() {
        let err = Encoding::Json
            .decode_client(br#"{"type":"send","id":5,"to":"not-a-number"}"#)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::BadFrame);
        assert_eq!(err.id, Some(5));
        let bin =
            rmp_serde::to_vec_named(&serde_json::json!({"type": "ack", "id": 6, "qseqs": "x"}))
                .unwrap();
        let err = Encoding::Binary.decode_client(&bin).unwrap_err();
        assert_eq!((err.code, err.id), (ErrorCode::BadFrame, Some(6)));
    }

    #[test]
    fn garbage_is_bad_frame_without_id() {
        for enc in [Encoding::Json, Encoding::Binary] {
            let err = enc.decode_client(b"\xff\x00garbage").unwrap_err();
            assert_eq!(err.code, ErrorCode::BadFrame);
            assert_eq!(err.id, None);
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_parsing() {
        let big = vec![b' '; limits::MAX_FRAME_BYTES + 1];
        let err = Encoding::Json.decode_client(&big).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);
    }

    #[test]
    fn field_bounds_are_checked() {
        let frame = ClientFrame::Send {
            id: 1,
            client_id: "c".into(),
            to: UserId(1),
            envelopes: vec![Envelope {
                device: DeviceId(1),
                body: OpaqueBytes(vec![0; limits::MAX_ENVELOPE_BYTES + 1]),
            }],
        };
        let err = Encoding::Binary
            .decode_client(&Encoding::Binary.encode(&frame))
            .unwrap_err();
        assert_eq!((err.code, err.id), (ErrorCode::TooLarge, Some(1)));

        let frame = ClientFrame::Ack {
            id: 2,
            qseqs: vec![1; limits::MAX_ACKS + 1],
        };
        let err = Encoding::Json
            .decode_client(&Encoding::Json.encode(&frame))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooLarge);

        let dup = ClientFrame::Send {
            id: 3,
            client_id: "c".into(),
            to: UserId(1),
            envelopes: vec![
                Envelope {
                    device: DeviceId(1),
                    body: OpaqueBytes(vec![1]),
                },
                Envelope {
                    device: DeviceId(1),
                    body: OpaqueBytes(vec![2]),
                },
            ],
        };
        let err = Encoding::Json
            .decode_client(&Encoding::Json.encode(&dup))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::Invalid);
    }

    #[test]
    fn subprotocol_names() {
        assert_eq!(
            Encoding::from_subprotocol("natter.v1.bin"),
            Ok(Some(Encoding::Binary))
        );
        assert_eq!(
            Encoding::from_subprotocol("natter.v1.json"),
            Ok(Some(Encoding::Json))
        );
        assert_eq!(Encoding::from_subprotocol("chat"), Ok(None));
        assert!(Encoding::from_subprotocol("natter.v2.json").is_err());
        assert!(Encoding::from_subprotocol("natter.v1.xml").is_err());
        // Found by fuzzing: these parsed as version 1, and the server then echoed a name
        // the client never offered.
        for odd in ["natter.v+1.bin", "natter.v01.json", "natter.v.bin"] {
            assert!(Encoding::from_subprotocol(odd).is_err(), "{odd}");
        }
        for enc in [Encoding::Json, Encoding::Binary] {
            assert_eq!(Encoding::from_subprotocol(enc.subprotocol()), Ok(Some(enc)));
            assert!(SUBPROTOCOLS.contains(&enc.subprotocol()));
        }
    }
}
