//! What a client frame must be to be taken: type names, sizes, counts and identifiers
//! bounded before anything acts on it (`ClientFrame::validate`).

use super::*;

impl ClientFrame {
    /// Every client frame type name, as on the wire.
    pub const TYPES: &'static [&'static str] = &[
        "hello",
        "ping",
        "send",
        "send_group",
        "ack",
        "read",
        "typing",
        "keys_upload",
        "keys_claim",
        "keys_count",
        "devices_list",
        "device_revoke",
        "device_link_code",
        "lookup",
        "group_create",
        "group_add",
        "group_remove",
        "group_promote",
        "group_leave",
        "group_rename",
        "group_info",
        "presence_subscribe",
        "presence_unsubscribe",
        "settings",
        "call_offer",
        "call_ringing",
        "call_accept",
        "call_decline",
        "call_cancel",
        "call_hangup",
        "call_ice",
        "call_update",
        "ice_servers",
        "room_join",
        "room_answer",
        "room_leave",
        "room_state",
    ];

    /// The request id.
    pub fn id(&self) -> u64 {
        *client_frame_id!(self)
    }

    /// Sets the request id (clients number their requests just before sending).
    pub fn set_id(&mut self, new: u64) {
        *client_frame_id!(self) = new;
    }

    /// The frame's type name, as on the wire (used for metrics labels).
    pub fn type_name(&self) -> &'static str {
        use ClientFrame::*;
        match self {
            Hello { .. } => "hello",
            Ping { .. } => "ping",
            Send { .. } => "send",
            SendGroup { .. } => "send_group",
            Ack { .. } => "ack",
            Read { .. } => "read",
            Typing { .. } => "typing",
            KeysUpload { .. } => "keys_upload",
            KeysClaim { .. } => "keys_claim",
            KeysCount { .. } => "keys_count",
            DevicesList { .. } => "devices_list",
            DeviceRevoke { .. } => "device_revoke",
            DeviceLinkCode { .. } => "device_link_code",
            Lookup { .. } => "lookup",
            GroupCreate { .. } => "group_create",
            GroupAdd { .. } => "group_add",
            GroupRemove { .. } => "group_remove",
            GroupPromote { .. } => "group_promote",
            GroupLeave { .. } => "group_leave",
            GroupRename { .. } => "group_rename",
            GroupInfo { .. } => "group_info",
            PresenceSubscribe { .. } => "presence_subscribe",
            PresenceUnsubscribe { .. } => "presence_unsubscribe",
            Settings { .. } => "settings",
            CallOffer { .. } => "call_offer",
            CallRinging { .. } => "call_ringing",
            CallAccept { .. } => "call_accept",
            CallDecline { .. } => "call_decline",
            CallCancel { .. } => "call_cancel",
            CallHangup { .. } => "call_hangup",
            CallIce { .. } => "call_ice",
            CallUpdate { .. } => "call_update",
            IceServers { .. } => "ice_servers",
            RoomJoin { .. } => "room_join",
            RoomAnswer { .. } => "room_answer",
            RoomLeave { .. } => "room_leave",
            RoomState { .. } => "room_state",
        }
    }

    /// The call a call frame is about.
    pub fn call_id(&self) -> Option<&str> {
        use ClientFrame::*;
        match self {
            CallOffer { call_id, .. }
            | CallRinging { call_id, .. }
            | CallAccept { call_id, .. }
            | CallDecline { call_id, .. }
            | CallCancel { call_id, .. }
            | CallHangup { call_id, .. }
            | CallIce { call_id, .. }
            | CallUpdate { call_id, .. } => Some(call_id),
            _ => None,
        }
    }

    /// Checks the count and size bounds of every field. Decoding already bounded the frame as
    /// a whole; this keeps any one list or string within what the server is built for.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        use ClientFrame::*;
        use limits::*;
        match self {
            Hello { token, client, .. } => {
                check_chars("token", token, MAX_TOKEN_CHARS)?;
                if let Some(c) = client {
                    check_chars("client", c, MAX_TOKEN_CHARS)?;
                }
            }
            Send {
                client_id,
                envelopes,
                ..
            } => {
                check_client_id(client_id)?;
                check_count("envelopes", envelopes.len(), MAX_ENVELOPES)?;
                if envelopes.is_empty() {
                    return Err(ProtocolError::invalid("`envelopes` is empty"));
                }
                for e in envelopes {
                    check_envelope(&e.body)?;
                }
                let mut devices: Vec<u64> = envelopes.iter().map(|e| e.device.0).collect();
                devices.sort_unstable();
                if devices.windows(2).any(|w| w[0] == w[1]) {
                    return Err(ProtocolError::invalid("two envelopes name the same device"));
                }
            }
            SendGroup {
                client_id, body, ..
            } => {
                check_client_id(client_id)?;
                check_envelope(body)?;
            }
            Ack { qseqs, .. } => check_count("qseqs", qseqs.len(), MAX_ACKS)?,
            Read { seqs, .. } => {
                check_count("seqs", seqs.len(), MAX_ACKS)?;
                if seqs.is_empty() {
                    return Err(ProtocolError::invalid("`seqs` is empty"));
                }
            }
            KeysUpload {
                identity_key,
                signed_prekey,
                one_time,
                last_resort,
                ..
            } => {
                if let Some(k) = identity_key {
                    check_key("identity_key", k)?;
                }
                if let Some(s) = signed_prekey {
                    check_key("signed_prekey.key", &s.key)?;
                    check_key("signed_prekey.signature", &s.signature)?;
                }
                check_count("one_time", one_time.len(), MAX_ONE_TIME_PREKEYS)?;
                for k in one_time {
                    check_key("one_time.key", &k.key)?;
                }
                let mut ids: Vec<u32> = one_time.iter().map(|k| k.key_id).collect();
                ids.sort_unstable();
                if ids.windows(2).any(|w| w[0] == w[1]) {
                    return Err(ProtocolError::invalid(
                        "two one-time prekeys share a key_id",
                    ));
                }
                if let Some(k) = last_resort {
                    check_key("last_resort.key", &k.key)?;
                }
            }
            Lookup { phones, .. } => {
                check_count("phones", phones.len(), MAX_LOOKUP)?;
                for p in phones {
                    check_chars("phone", p, 32)?;
                }
            }
            GroupCreate { name, members, .. } => {
                check_name(name)?;
                check_count("members", members.len(), MAX_USERS_PER_REQUEST)?;
            }
            GroupAdd { users, .. }
            | GroupRemove { users, .. }
            | PresenceSubscribe { users, .. }
            | PresenceUnsubscribe { users, .. } => {
                check_count("users", users.len(), MAX_USERS_PER_REQUEST)?;
                if users.is_empty() {
                    return Err(ProtocolError::invalid("`users` is empty"));
                }
            }
            GroupRename { name, .. } => check_name(name)?,
            CallOffer { call_id, sdp, .. }
            | CallAccept { call_id, sdp, .. }
            | CallUpdate { call_id, sdp, .. } => {
                check_call_id(call_id)?;
                check_sdp(sdp)?;
            }
            CallRinging { call_id, .. }
            | CallDecline { call_id, .. }
            | CallCancel { call_id, .. }
            | CallHangup { call_id, .. } => check_call_id(call_id)?,
            CallIce {
                call_id, candidate, ..
            } => {
                check_call_id(call_id)?;
                check_bytes(
                    "candidate",
                    &candidate.candidate,
                    limits::MAX_CANDIDATE_BYTES,
                )?;
                if let Some(mid) = &candidate.sdp_mid {
                    check_bytes("sdp_mid", mid, limits::MAX_CANDIDATE_BYTES)?;
                }
            }
            Ping { .. }
            | Typing { .. }
            | KeysClaim { .. }
            | KeysCount { .. }
            | DevicesList { .. }
            | DeviceRevoke { .. }
            | DeviceLinkCode { .. }
            | GroupPromote { .. }
            | GroupLeave { .. }
            | GroupInfo { .. }
            | Settings { .. }
            | IceServers { .. }
            | RoomLeave { .. }
            | RoomState { .. } => {}
            RoomJoin { sdp, .. } | RoomAnswer { sdp, .. } => check_sdp(sdp)?,
        }
        Ok(())
    }
}

fn check_call_id(call_id: &str) -> Result<(), ProtocolError> {
    if call_id.is_empty() || call_id.chars().any(char::is_control) {
        return Err(ProtocolError::invalid(
            "`call_id` must be non-empty and free of control characters",
        ));
    }
    check_chars("call_id", call_id, limits::MAX_CALL_ID_CHARS)
}

fn check_sdp(sdp: &str) -> Result<(), ProtocolError> {
    if sdp.trim().is_empty() {
        return Err(ProtocolError::invalid("`sdp` is empty"));
    }
    check_bytes("sdp", sdp, limits::MAX_SDP_BYTES)
}

fn check_bytes(field: &str, s: &str, max: usize) -> Result<(), ProtocolError> {
    if s.len() > max {
        return Err(ProtocolError::new(
            ErrorCode::TooLarge,
            format!("`{field}` is {} bytes; at most {max} are allowed", s.len()),
        ));
    }
    Ok(())
}

fn check_count(field: &str, n: usize, max: usize) -> Result<(), ProtocolError> {
    if n > max {
        return Err(ProtocolError::new(
            ErrorCode::TooLarge,
            format!("`{field}` has {n} entries; at most {max} are allowed"),
        ));
    }
    Ok(())
}

fn check_chars(field: &str, s: &str, max: usize) -> Result<(), ProtocolError> {
    let n = s.chars().count();
    if n > max {
        return Err(ProtocolError::new(
            ErrorCode::TooLarge,
            format!("`{field}` is {n} characters; at most {max} are allowed"),
        ));
    }
    Ok(())
}

fn check_client_id(client_id: &str) -> Result<(), ProtocolError> {
    if client_id.is_empty() {
        return Err(ProtocolError::invalid("`client_id` is empty"));
    }
    check_chars("client_id", client_id, limits::MAX_CLIENT_ID_CHARS)
}

fn check_envelope(body: &OpaqueBytes) -> Result<(), ProtocolError> {
    if body.len() > limits::MAX_ENVELOPE_BYTES {
        return Err(ProtocolError::new(
            ErrorCode::TooLarge,
            format!(
                "an envelope is {} bytes; at most {} are allowed",
                body.len(),
                limits::MAX_ENVELOPE_BYTES
            ),
        ));
    }
    if body.is_empty() {
        return Err(ProtocolError::invalid("an envelope is empty"));
    }
    Ok(())
}

fn check_key(field: &str, key: &OpaqueBytes) -> Result<(), ProtocolError> {
    if key.is_empty() || key.len() > limits::MAX_KEY_BYTES {
        return Err(ProtocolError::new(
            if key.is_empty() {
                ErrorCode::Invalid
            } else {
                ErrorCode::TooLarge
            },
            format!(
                "`{field}` is {} bytes; 1 to {} are allowed",
                key.len(),
                limits::MAX_KEY_BYTES
            ),
        ));
    }
    Ok(())
}

/// Checks a group or device name: 1 to [`limits::MAX_NAME_CHARS`] characters, no control characters.
pub fn check_name(name: &str) -> Result<(), ProtocolError> {
    check_chars("name", name, limits::MAX_NAME_CHARS)?;
    if name.trim().is_empty() || name.chars().any(char::is_control) {
        return Err(ProtocolError::invalid(
            "`name` must be non-blank and free of control characters",
        ));
    }
    Ok(())
}
