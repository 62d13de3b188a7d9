//! Every frame of protocol version 1.
//!
//! Frames are tagged by a `type` field. Every client frame carries a request id `id`
//! (chosen by the client, echoed by the server); the server answers each request with exactly
//! one response frame carrying the same id, or with an `error` frame carrying it. `ack` and
//! `typing` are the exception: they are answered only when they fail. Frames the server sends
//! on its own (`deliver`, `queue_empty`, `presence`, `typing`) have no request id.
//!
//! Byte strings ([`OpaqueBytes`]) are base64 (standard alphabet, padded) in JSON and raw
//! binary in MessagePack. The server treats them as opaque: it never looks inside.

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

use crate::ErrorCode;
use crate::call::{CallEvent, IceCandidate, Media, SdpKind};
use crate::room::{RoomEvent, RosterEntry};

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = 1;

/// Limits every decoder and the server enforce. Sizes are in bytes.
pub mod limits {
    /// Largest WebSocket message the server accepts as a frame.
    pub const MAX_FRAME_BYTES: usize = 1024 * 1024;
    /// Largest single per-device envelope or group message body.
    pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;
    /// Most envelopes in one `send` (5 recipient devices + 4 own other devices, with room).
    pub const MAX_ENVELOPES: usize = 16;
    /// Longest client message id.
    pub const MAX_CLIENT_ID_CHARS: usize = 64;
    /// Most queue sequence numbers in one `ack`, or message seqs in one `read`.
    pub const MAX_ACKS: usize = 1000;
    /// Most phone numbers in one `lookup`.
    pub const MAX_LOOKUP: usize = 256;
    /// Most users named in one group or presence request.
    pub const MAX_USERS_PER_REQUEST: usize = 1024;
    /// Longest group or device name, in characters.
    pub const MAX_NAME_CHARS: usize = 128;
    /// Largest public key or signature.
    pub const MAX_KEY_BYTES: usize = 256;
    /// Most one-time prekeys a device may have stored.
    pub const MAX_ONE_TIME_PREKEYS: usize = 100;
    /// Longest bearer token or client name.
    pub const MAX_TOKEN_CHARS: usize = 256;
    /// Longest call id.
    pub const MAX_CALL_ID_CHARS: usize = 64;
    /// Largest SDP offer or answer.
    pub const MAX_SDP_BYTES: usize = 32 * 1024;
    /// Longest ICE candidate line (and its mid).
    pub const MAX_CANDIDATE_BYTES: usize = 1024;
}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $prefix:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }
    };
}

id_type!(
    /// A user (one phone number).
    UserId,
    "u"
);
id_type!(
    /// One device of a user; globally unique.
    DeviceId,
    "d"
);
id_type!(
    /// A group conversation.
    GroupId,
    "g"
);

/// Bytes the server stores and forwards without interpreting: ciphertexts and public keys.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct OpaqueBytes(pub Vec<u8>);

impl OpaqueBytes {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Vec<u8>> for OpaqueBytes {
    fn from(v: Vec<u8>) -> Self {
        OpaqueBytes(v)
    }
}

impl fmt::Debug for OpaqueBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpaqueBytes({} bytes)", self.0.len())
    }
}

impl Serialize for OpaqueBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&BASE64.encode(&self.0))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> Deserialize<'de> for OpaqueBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Decided by what arrives rather than by `is_human_readable`, because serde's buffering
        // of internally tagged enums reports every format as human readable.
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OpaqueBytes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("base64 text or a byte string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<OpaqueBytes, E> {
                BASE64
                    .decode(s)
                    .map(OpaqueBytes)
                    .map_err(|e| E::custom(format!("invalid base64: {e}")))
            }
            fn visit_bytes<E: de::Error>(self, b: &[u8]) -> Result<OpaqueBytes, E> {
                Ok(OpaqueBytes(b.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, b: Vec<u8>) -> Result<OpaqueBytes, E> {
                Ok(OpaqueBytes(b))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OpaqueBytes, A::Error> {
                // MessagePack encoders that lack a bin type send an array of small integers.
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(65536));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(OpaqueBytes(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A conversation as seen by the device that receives the frame: a direct conversation
/// with another user, or a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Conv {
    Direct(UserId),
    Group(GroupId),
}

/// One ciphertext for one device in a `send`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub device: DeviceId,
    pub body: OpaqueBytes,
}

/// A prekey: opaque public key bytes with a client-chosen id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prekey {
    pub key_id: u32,
    pub key: OpaqueBytes,
}

/// The signed prekey and its signature by the identity key (checked by clients, not the server).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignedPrekey {
    pub key_id: u32,
    pub key: OpaqueBytes,
    pub signature: OpaqueBytes,
}

/// Who may see a user's online state and last-seen time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PresenceVisibility {
    #[default]
    Everyone,
    Nobody,
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// First frame on every socket: authenticates the device. `cursor` is the highest queue
    /// sequence the device has already stored; everything at or below it counts as acked.
    Hello {
        id: u64,
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// Application-level keepalive; answered with `pong`.
    Ping {
        id: u64,
    },
    /// A 1:1 message: one envelope per device of `to` and per other device of the sender.
    Send {
        id: u64,
        client_id: String,
        to: UserId,
        envelopes: Vec<Envelope>,
    },
    /// A group message, encrypted once (sender keys) and stored once.
    SendGroup {
        id: u64,
        client_id: String,
        group: GroupId,
        body: OpaqueBytes,
    },
    /// The device has stored these queue items; the server deletes them. Answered only on error.
    Ack {
        id: u64,
        qseqs: Vec<u64>,
    },
    /// Read receipts for messages `seqs` of `conv`, authored by `to`.
    Read {
        id: u64,
        conv: Conv,
        to: UserId,
        seqs: Vec<u64>,
    },
    /// Typing indicator; ephemeral, expires on its own. Answered only on error.
    Typing {
        id: u64,
        conv: Conv,
        active: bool,
    },
    /// Publish this device's keys. Every field is optional; one-time keys are added.
    KeysUpload {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity_key: Option<OpaqueBytes>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signed_prekey: Option<SignedPrekey>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        one_time: Vec<Prekey>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_resort: Option<Prekey>,
    },
    /// Claim one prekey bundle per device of `user`, consuming one one-time key each.
    KeysClaim {
        id: u64,
        user: UserId,
    },
    /// How many one-time prekeys this device has left.
    KeysCount {
        id: u64,
    },
    /// List this user's devices.
    DevicesList {
        id: u64,
    },
    /// Revoke a device: the primary may revoke any linked device; a linked device itself.
    DeviceRevoke {
        id: u64,
        device: DeviceId,
    },
    /// Primary only: a one-time code that links a new device (POST /v1/devices/link).
    DeviceLinkCode {
        id: u64,
    },
    /// Find users by phone number.
    Lookup {
        id: u64,
        phones: Vec<String>,
    },
    GroupCreate {
        id: u64,
        name: String,
        members: Vec<UserId>,
    },
    GroupAdd {
        id: u64,
        group: GroupId,
        users: Vec<UserId>,
    },
    GroupRemove {
        id: u64,
        group: GroupId,
        users: Vec<UserId>,
    },
    GroupPromote {
        id: u64,
        group: GroupId,
        user: UserId,
    },
    GroupLeave {
        id: u64,
        group: GroupId,
    },
    GroupRename {
        id: u64,
        group: GroupId,
        name: String,
    },
    GroupInfo {
        id: u64,
        group: GroupId,
    },
    /// Receive presence updates for these users (answered with their current state).
    PresenceSubscribe {
        id: u64,
        users: Vec<UserId>,
    },
    PresenceUnsubscribe {
        id: u64,
        users: Vec<UserId>,
    },
    /// Change settings; fields left out stay as they are. Answered with all settings.
    Settings {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        presence: Option<PresenceVisibility>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        read_receipts: Option<bool>,
    },
    /// Call `to` (every online device of theirs rings). `call_id` is chosen by the caller
    /// (unique; glare keeps the call with the smaller id). Answered with `call_started`.
    CallOffer {
        id: u64,
        call_id: String,
        to: UserId,
        media: Media,
        sdp: String,
    },
    /// This (callee) device is ringing.
    CallRinging {
        id: u64,
        call_id: String,
    },
    /// Answer the call on this device.
    CallAccept {
        id: u64,
        call_id: String,
        sdp: String,
    },
    CallDecline {
        id: u64,
        call_id: String,
    },
    /// The caller gives up before an answer.
    CallCancel {
        id: u64,
        call_id: String,
    },
    CallHangup {
        id: u64,
        call_id: String,
    },
    /// A trickled ICE candidate. Answered only on error.
    CallIce {
        id: u64,
        call_id: String,
        candidate: IceCandidate,
    },
    /// A new offer or answer in an answered call (ICE restart on a network change).
    CallUpdate {
        id: u64,
        call_id: String,
        kind: SdpKind,
        sdp: String,
    },
    /// STUN/TURN servers with fresh short-lived credentials.
    IceServers {
        id: u64,
    },
    /// Join `group`'s call (starting it if none is going on: the other members ring) with an
    /// SDP offer of what this device publishes. Answered with `room_joined`.
    RoomJoin {
        id: u64,
        group: GroupId,
        media: Media,
        sdp: String,
    },
    /// The answer to a `room` offer event.
    RoomAnswer {
        id: u64,
        group: GroupId,
        sdp: String,
    },
    RoomLeave {
        id: u64,
        group: GroupId,
    },
    /// This device's state in the call; fields left out stay as they are.
    RoomState {
        id: u64,
        group: GroupId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        muted: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        camera: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hand: Option<bool>,
    },
}

/// A reference to the `id` field of any client frame (shared or mutable, as `$frame` is).
macro_rules! client_frame_id {
    ($frame:expr) => {{
        use ClientFrame::*;
        match $frame {
            Hello { id, .. }
            | Ping { id }
            | Send { id, .. }
            | SendGroup { id, .. }
            | Ack { id, .. }
            | Read { id, .. }
            | Typing { id, .. }
            | KeysUpload { id, .. }
            | KeysClaim { id, .. }
            | KeysCount { id }
            | DevicesList { id }
            | DeviceRevoke { id, .. }
            | DeviceLinkCode { id }
            | Lookup { id, .. }
            | GroupCreate { id, .. }
            | GroupAdd { id, .. }
            | GroupRemove { id, .. }
            | GroupPromote { id, .. }
            | GroupLeave { id, .. }
            | GroupRename { id, .. }
            | GroupInfo { id, .. }
            | PresenceSubscribe { id, .. }
            | PresenceUnsubscribe { id, .. }
            | Settings { id, .. }
            | CallOffer { id, .. }
            | CallRinging { id, .. }
            | CallAccept { id, .. }
            | CallDecline { id, .. }
            | CallCancel { id, .. }
            | CallHangup { id, .. }
            | CallIce { id, .. }
            | CallUpdate { id, .. }
            | IceServers { id }
            | RoomJoin { id, .. }
            | RoomAnswer { id, .. }
            | RoomLeave { id, .. }
            | RoomState { id, .. } => id,
        }
    }};
}

mod validate;
pub use validate::check_name;

/// A device's public keys as handed to a user who wants to start sessions with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceBundle {
    pub device: DeviceId,
    /// `null` when the device has not published keys yet.
    pub identity_key: Option<OpaqueBytes>,
    pub signed_prekey: Option<SignedPrekey>,
    /// The one-time prekey consumed by this claim, if any were left.
    pub one_time: Option<Prekey>,
    /// Set when no one-time key was left: the reusable last-resort key.
    pub last_resort: Option<Prekey>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub device: DeviceId,
    pub name: String,
    pub primary: bool,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserMatch {
    pub phone: String,
    pub user: UserId,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupMember {
    pub user: UserId,
    pub admin: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupInfo {
    pub group: GroupId,
    pub name: String,
    pub members: Vec<GroupMember>,
}

/// A user's presence as the asking user may see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceInfo {
    pub user: UserId,
    /// The user hides presence (`nobody`): `online` is false and `last_seen_ms` absent.
    pub hidden: bool,
    pub online: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen_ms: Option<u64>,
}

/// Delivered or read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptStatus {
    Delivered,
    Read,
}

/// What changed in a group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum GroupChange {
    Created { name: String, members: Vec<UserId> },
    Added { users: Vec<UserId> },
    Removed { users: Vec<UserId> },
    Promoted { users: Vec<UserId> },
    Left { user: UserId },
    Renamed { name: String },
}

/// One entry of a device's durable queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum QueueItem {
    /// A message; `seq` is its position in `conv`, assigned by the server.
    Message {
        conv: Conv,
        seq: u64,
        from: UserId,
        device: DeviceId,
        ts_ms: u64,
        body: OpaqueBytes,
    },
    /// Messages `seqs` of `conv` were delivered to, or read on, a device of user `by`.
    Receipt {
        conv: Conv,
        status: ReceiptStatus,
        by: UserId,
        device: DeviceId,
        seqs: Vec<u64>,
        ts_ms: u64,
    },
    /// A membership or name change of a group; `seq` orders it among the group's messages.
    GroupNotice {
        group: GroupId,
        seq: u64,
        by: UserId,
        change: GroupChange,
        ts_ms: u64,
    },
    /// `from` called and nobody answered (timeout, cancel, or no device online).
    MissedCall {
        call_id: String,
        from: UserId,
        media: Media,
        ts_ms: u64,
    },
}

/// A STUN or TURN server, shaped like the browser's `RTCIceServer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Details of an error frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The request this error answers; absent when the frame could not be read far enough.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// With `device_mismatch`: devices of the recipients that have no envelope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<DeviceId>,
    /// With `device_mismatch`: envelopes for devices that are not (or no longer) recipients.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<DeviceId>,
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Answer to `hello`.
    Welcome {
        id: u64,
        user: UserId,
        device: DeviceId,
        primary: bool,
        protocol: u32,
        server_time_ms: u64,
    },
    /// Generic success for requests that return nothing else.
    Ok {
        id: u64,
    },
    Pong {
        id: u64,
        server_time_ms: u64,
    },
    Error(ErrorBody),
    /// The message is durable in every recipient queue (one tick).
    Sent {
        id: u64,
        client_id: String,
        seq: u64,
        ts_ms: u64,
        /// True when this client id was seen before and nothing new was stored.
        duplicate: bool,
    },
    /// A queue item for this device; acknowledge `qseq` with `ack` once stored.
    Deliver {
        qseq: u64,
        item: Arc<QueueItem>,
    },
    /// Every item queued at connect time has been sent.
    QueueEmpty {},
    Bundle {
        id: u64,
        user: UserId,
        devices: Vec<DeviceBundle>,
    },
    KeyCount {
        id: u64,
        one_time: u32,
        last_resort: bool,
        signed_prekey: bool,
        identity_key: bool,
    },
    Devices {
        id: u64,
        devices: Vec<DeviceInfo>,
    },
    LinkCode {
        id: u64,
        code: String,
        expires_ms: u64,
    },
    Users {
        id: u64,
        users: Vec<UserMatch>,
    },
    Group {
        id: u64,
        group: GroupInfo,
    },
    PresenceList {
        id: u64,
        users: Vec<PresenceInfo>,
    },
    /// A subscribed user's presence changed.
    Presence(PresenceInfo),
    /// Someone is (or stopped) typing in `conv`; treat it as stopped after `ttl_ms`.
    Typing {
        conv: Conv,
        from: UserId,
        device: DeviceId,
        active: bool,
        ttl_ms: u32,
    },
    Settings {
        id: u64,
        presence: PresenceVisibility,
        read_receipts: bool,
    },
    /// Answer to `call_offer`: the callee's devices are being rung (or the call already
    /// ended, which a `call` frame says). Carries the ICE servers for the call.
    CallStarted {
        id: u64,
        call_id: String,
        ice_servers: Vec<IceServer>,
    },
    /// Something happened in a call this device is part of.
    Call {
        call_id: String,
        event: CallEvent,
        /// With `incoming`: the ICE servers this device should use.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        ice_servers: Vec<IceServer>,
    },
    IceServers {
        id: u64,
        servers: Vec<IceServer>,
        /// How long the credentials stay valid.
        ttl_s: u64,
    },
    /// Answer to `room_join`: the SFU's SDP answer and who is in the call. The others'
    /// tracks follow in a `room` offer event.
    RoomJoined {
        id: u64,
        group: GroupId,
        call_id: String,
        sdp: String,
        roster: Vec<RosterEntry>,
    },
    /// Something happened in `group`'s call.
    Room {
        group: GroupId,
        event: RoomEvent,
    },
}

impl ServerFrame {
    /// Every server frame type name, as on the wire.
    pub const TYPES: &'static [&'static str] = &[
        "welcome",
        "ok",
        "pong",
        "error",
        "sent",
        "deliver",
        "queue_empty",
        "bundle",
        "key_count",
        "devices",
        "link_code",
        "users",
        "group",
        "presence_list",
        "presence",
        "typing",
        "settings",
        "call_started",
        "call",
        "ice_servers",
        "room_joined",
        "room",
    ];

    /// An error frame answering request `id`.
    pub fn error(id: Option<u64>, err: ProtocolError) -> ServerFrame {
        ServerFrame::Error(ErrorBody {
            id,
            code: err.code,
            message: err.message,
            retry_after_ms: err.retry_after_ms,
            missing: err.missing,
            extra: err.extra,
        })
    }

    /// The frame's type name, as on the wire (used for metrics labels).
    pub fn type_name(&self) -> &'static str {
        use ServerFrame::*;
        match self {
            Welcome { .. } => "welcome",
            Ok { .. } => "ok",
            Pong { .. } => "pong",
            Error(_) => "error",
            Sent { .. } => "sent",
            Deliver { .. } => "deliver",
            QueueEmpty {} => "queue_empty",
            Bundle { .. } => "bundle",
            KeyCount { .. } => "key_count",
            Devices { .. } => "devices",
            LinkCode { .. } => "link_code",
            Users { .. } => "users",
            Group { .. } => "group",
            PresenceList { .. } => "presence_list",
            Presence(_) => "presence",
            Typing { .. } => "typing",
            Settings { .. } => "settings",
            CallStarted { .. } => "call_started",
            Call { .. } => "call",
            IceServers { .. } => "ice_servers",
            RoomJoined { .. } => "room_joined",
            Room { .. } => "room",
        }
    }

    /// The request id this frame answers, if it answers one.
    pub fn request_id(&self) -> Option<u64> {
        use ServerFrame::*;
        match self {
            Welcome { id, .. }
            | Ok { id }
            | Pong { id, .. }
            | Sent { id, .. }
            | Bundle { id, .. }
            | KeyCount { id, .. }
            | Devices { id, .. }
            | LinkCode { id, .. }
            | Users { id, .. }
            | Group { id, .. }
            | PresenceList { id, .. }
            | Settings { id, .. }
            | CallStarted { id, .. }
            | IceServers { id, .. }
            | RoomJoined { id, .. } => Some(*id),
            Error(e) => e.id,
            Deliver { .. }
            | QueueEmpty {}
            | Presence(_)
            | Typing { .. }
            | Call { .. }
            | Room { .. } => None,
        }
    }
}

/// A refusal: a stable code, a human message and optional details.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_ms: Option<u64>,
    pub missing: Vec<DeviceId>,
    pub extra: Vec<DeviceId>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
            retry_after_ms: None,
            missing: Vec::new(),
            extra: Vec::new(),
        }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Invalid, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Internal, message)
    }
    pub fn rate_limited(retry_after_ms: u64) -> Self {
        ProtocolError {
            retry_after_ms: Some(retry_after_ms.max(1)),
            ..Self::new(
                ErrorCode::RateLimited,
                format!("rate limit reached; retry in {retry_after_ms} ms"),
            )
        }
    }
    /// Refused by admission control: nothing was done, and trying again after
    /// `retry_after_ms` is expected to work.
    pub fn overloaded(retry_after_ms: u64) -> Self {
        ProtocolError {
            retry_after_ms: Some(retry_after_ms.max(1)),
            ..Self::new(
                ErrorCode::Overloaded,
                format!("the server is over capacity; retry in {retry_after_ms} ms"),
            )
        }
    }
}

impl From<ErrorBody> for ProtocolError {
    fn from(e: ErrorBody) -> Self {
        ProtocolError {
            code: e.code,
            message: e.message,
            retry_after_ms: e.retry_after_ms,
            missing: e.missing,
            extra: e.extra,
        }
    }
}
