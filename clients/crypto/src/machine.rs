//! One device's crypto state: identity, published prekeys, Olm sessions, Megolm sessions.

use std::collections::{BTreeSet, HashMap};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use natter_signaling::{
    DeviceBundle, DeviceId, GroupId, OpaqueBytes, Prekey, SignedPrekey, UserId,
};
use serde::{Deserialize, Serialize};
use vodozemac::megolm::{
    GroupSession, GroupSessionPickle, InboundGroupSession, InboundGroupSessionPickle,
    MegolmMessage, SessionConfig as MegolmConfig, SessionKey,
};
use vodozemac::olm::{
    Account, AccountPickle, OlmMessage, Session, SessionConfig as OlmConfig, SessionPickle,
};
use vodozemac::{Curve25519PublicKey, Ed25519PublicKey, Ed25519Signature};

use crate::wire::{self, MegolmBody, OlmBody, SealedMegolm, SealedOlm, VERSION};
use crate::{CryptoError, Plaintext, random_bytes};

/// One-time keys kept published on the server (vodozemac keeps the private halves of at
/// most 100, so publishing no more than half leaves room for keys claimed but not yet used).
const ONE_TIME_KEY_TARGET: usize = 50;
/// Olm sessions kept per peer device; older ones are dropped.
const SESSIONS_PER_DEVICE: usize = 4;
/// A Megolm outbound session is replaced after this many messages …
const GROUP_ROTATE_MESSAGES: u32 = 100;
/// … or this long after it was created.
const GROUP_ROTATE_MS: u64 = 7 * 24 * 3_600_000;

/// A device's public identity: what the directory and the safety number are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceKeys {
    pub ed25519: [u8; 32],
    pub curve25519: [u8; 32],
}

/// A peer device as this device knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDevice {
    pub user: UserId,
    pub device: DeviceId,
    pub keys: DeviceKeys,
}

/// A peer device's identity appeared for the first time (`old` is `None`) or changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityChange {
    pub user: UserId,
    pub device: DeviceId,
    pub old: Option<[u8; 32]>,
    pub new: [u8; 32],
    /// The first device ever seen of this user. Anything else — a changed key, or a new
    /// device of a user already known — changes the safety number and deserves a warning.
    pub first_for_user: bool,
}

/// A key as published in the directory.
#[derive(Debug, Clone, PartialEq)]
pub struct PublishedKey {
    pub key_id: u32,
    pub key: Vec<u8>,
}

/// What to send in a `keys_upload` frame.
#[derive(Debug, Clone, PartialEq)]
pub struct KeysUpload {
    pub identity_key: OpaqueBytes,
    pub signed_prekey: SignedPrekey,
    pub one_time: Vec<Prekey>,
    pub last_resort: Option<Prekey>,
}

/// A group session key to deliver, over Olm, to each of `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupKeyShare {
    pub group: GroupId,
    pub session_id: String,
    pub session_key: Vec<u8>,
    pub to: Vec<DeviceId>,
}

struct OutboundGroup {
    session: GroupSession,
    created_ms: u64,
    sent: u32,
    shared_with: BTreeSet<DeviceId>,
}

struct InboundGroup {
    group: GroupId,
    session: InboundGroupSession,
}

/// One device's end-to-end encryption state.
pub struct Machine {
    user: UserId,
    device: DeviceId,
    account: Account,
    /// Per peer device, most recently working first.
    sessions: HashMap<DeviceId, Vec<Session>>,
    peers: HashMap<DeviceId, PeerDevice>,
    /// Users any device of which was ever seen (a later new device is a change).
    seen_users: BTreeSet<UserId>,
    outbound_groups: HashMap<GroupId, OutboundGroup>,
    /// By (sending device, session id).
    inbound_groups: HashMap<(DeviceId, String), InboundGroup>,
    /// The published last-resort key, and whether a session was started with it since.
    last_resort: Option<[u8; 32]>,
    last_resort_used: bool,
    /// Inbound sessions started (each used up a published one-time key) since last asked.
    new_inbound_sessions: usize,
}

fn key_id_of(id: vodozemac::KeyId) -> u32 {
    // vodozemac numbers its keys with a counter and shows it as big-endian base64.
    let bytes = vodozemac::base64_decode(id.to_base64()).unwrap_or_default();
    let mut n: u64 = 0;
    for b in bytes.iter().rev().take(8).rev() {
        n = (n << 8) | u64::from(*b);
    }
    n as u32
}

fn curve(bytes: &[u8]) -> Option<Curve25519PublicKey> {
    Curve25519PublicKey::from_slice(bytes).ok()
}

fn array32(bytes: &[u8]) -> Option<[u8; 32]> {
    bytes.try_into().ok()
}

fn verify(ed25519: &[u8; 32], message: &[u8], signature: &[u8]) -> bool {
    let (Ok(key), Ok(sig)) = (
        Ed25519PublicKey::from_slice(ed25519),
        Ed25519Signature::from_slice(signature),
    ) else {
        return false;
    };
    key.verify(message, &sig).is_ok()
}

impl Machine {
    /// A new device identity for `device` of `user`.
    pub fn new(user: UserId, device: DeviceId) -> Machine {
        Machine {
            user,
            device,
            account: Account::new(),
            sessions: HashMap::new(),
            peers: HashMap::new(),
            seen_users: BTreeSet::new(),
            outbound_groups: HashMap::new(),
            inbound_groups: HashMap::new(),
            last_resort: None,
            last_resort_used: false,
            new_inbound_sessions: 0,
        }
    }

    pub fn user(&self) -> UserId {
        self.user
    }

    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// This device's public identity.
    pub fn keys(&self) -> DeviceKeys {
        DeviceKeys {
            ed25519: *self.account.ed25519_key().as_bytes(),
            curve25519: self.account.curve25519_key().to_bytes(),
        }
    }

    /// What is known of a peer device.
    pub fn peer(&self, device: DeviceId) -> Option<&PeerDevice> {
        self.peers.get(&device)
    }

    /// Every known peer device of `user`.
    pub fn peers_of(&self, user: UserId) -> Vec<PeerDevice> {
        let mut v: Vec<PeerDevice> = self
            .peers
            .values()
            .filter(|p| p.user == user)
            .copied()
            .collect();
        v.sort_by_key(|p| p.device);
        v
    }

    /// Forgets a device (revoked, or no longer in the recipient's list).
    pub fn forget_device(&mut self, device: DeviceId) {
        self.sessions.remove(&device);
        self.peers.remove(&device);
    }

    pub fn has_session(&self, device: DeviceId) -> bool {
        self.sessions.get(&device).is_some_and(|s| !s.is_empty())
    }

    /// The keys to publish, given how many one-time keys the server still holds. `None` when
    /// nothing needs uploading. Call [`Machine::keys_published`] once the server accepted them.
    pub fn keys_to_upload(&mut self, server_one_time: usize, force: bool) -> Option<KeysUpload> {
        let wanted = ONE_TIME_KEY_TARGET.saturating_sub(server_one_time);
        let unpublished = self.account.one_time_keys().len();
        if wanted > unpublished {
            self.account.generate_one_time_keys(wanted - unpublished);
        }
        // A new last-resort key when none is out yet, or the published one was used (and no
        // replacement is already waiting to be published).
        if (self.last_resort.is_none() || self.last_resort_used)
            && self.account.fallback_key().is_empty()
        {
            self.account.generate_fallback_key();
        }
        let one_time: Vec<Prekey> = self
            .account
            .one_time_keys()
            .into_iter()
            .map(|(id, key)| self.signed_key(key_id_of(id), key))
            .collect();
        let last_resort = self
            .account
            .fallback_key()
            .into_iter()
            .next()
            .map(|(id, key)| self.signed_key(key_id_of(id), key));
        if one_time.is_empty() && last_resort.is_none() && !force {
            return None;
        }
        let curve = self.account.curve25519_key().to_bytes();
        Some(KeysUpload {
            identity_key: OpaqueBytes(self.account.ed25519_key().as_bytes().to_vec()),
            signed_prekey: SignedPrekey {
                key_id: 1,
                key: OpaqueBytes(curve.to_vec()),
                signature: OpaqueBytes(self.account.sign(curve).to_bytes().to_vec()),
            },
            one_time,
            last_resort,
        })
    }

    fn signed_key(&self, key_id: u32, key: Curve25519PublicKey) -> Prekey {
        let mut bytes = key.to_vec();
        bytes.extend_from_slice(&self.account.sign(key.as_bytes()).to_bytes());
        Prekey {
            key_id,
            key: OpaqueBytes(bytes),
        }
    }

    /// The server stored what [`Machine::keys_to_upload`] returned.
    pub fn keys_published(&mut self, upload: &KeysUpload) {
        if let Some(lr) = &upload.last_resort
            && let Some(k) = array32(&lr.key.0[..32.min(lr.key.len())])
        {
            self.last_resort = Some(k);
            self.last_resort_used = false;
        }
        self.account.mark_keys_as_published();
    }

    /// How many incoming sessions started since the last call (each consumed a published
    /// prekey, so the client should check its count on the server).
    pub fn take_new_inbound_sessions(&mut self) -> usize {
        std::mem::take(&mut self.new_inbound_sessions)
    }

    /// Whether the last-resort key was used to start a session since it was published (it
    /// should then be replaced: call [`Machine::keys_to_upload`] with `force`).
    pub fn last_resort_used(&self) -> bool {
        self.last_resort_used
    }

    /// Checks a claimed bundle: sizes, and that the Ed25519 identity signed the Curve25519
    /// identity and the prekey.
    fn verify_bundle(
        &self,
        user: UserId,
        bundle: &DeviceBundle,
    ) -> Result<(PeerDevice, Curve25519PublicKey), CryptoError> {
        let bad = |reason: &str| CryptoError::BadBundle {
            device: bundle.device,
            reason: reason.to_owned(),
        };
        let ed25519 = bundle
            .identity_key
            .as_ref()
            .and_then(|k| array32(&k.0))
            .ok_or_else(|| bad("no 32-byte identity key (has the device published keys?)"))?;
        let spk = bundle
            .signed_prekey
            .as_ref()
            .ok_or_else(|| bad("no signed prekey"))?;
        let curve25519 = array32(&spk.key.0).ok_or_else(|| bad("identity curve key size"))?;
        if !verify(&ed25519, &curve25519, &spk.signature.0) {
            return Err(bad("the identity curve key's signature does not verify"));
        }
        let prekey = bundle
            .one_time
            .as_ref()
            .or(bundle.last_resort.as_ref())
            .ok_or_else(|| bad("neither a one-time nor a last-resort key"))?;
        if prekey.key.len() != 96 {
            return Err(bad("prekey is not 32 key bytes + 64 signature bytes"));
        }
        let (key, sig) = prekey.key.0.split_at(32);
        if !verify(&ed25519, key, sig) {
            return Err(bad("the prekey's signature does not verify"));
        }
        let prekey = curve(key).ok_or_else(|| bad("prekey is not a curve25519 key"))?;
        Ok((
            PeerDevice {
                user,
                device: bundle.device,
                keys: DeviceKeys {
                    ed25519,
                    curve25519,
                },
            },
            prekey,
        ))
    }

    /// Records a peer identity, reporting a new or changed one.
    fn learn_peer(&mut self, peer: PeerDevice) -> Option<IdentityChange> {
        let first_for_user = self.seen_users.insert(peer.user);
        let old = self.peers.insert(peer.device, peer);
        match old {
            Some(o) if o.keys == peer.keys => None,
            Some(o) => {
                // A changed identity: sessions with the old one are void.
                self.sessions.remove(&peer.device);
                Some(IdentityChange {
                    user: peer.user,
                    device: peer.device,
                    old: Some(o.keys.ed25519),
                    new: peer.keys.ed25519,
                    first_for_user,
                })
            }
            None => Some(IdentityChange {
                user: peer.user,
                device: peer.device,
                old: None,
                new: peer.keys.ed25519,
                first_for_user,
            }),
        }
    }

    /// Starts an Olm session with a device from its claimed bundle.
    pub fn start_session(
        &mut self,
        user: UserId,
        bundle: &DeviceBundle,
    ) -> Result<Option<IdentityChange>, CryptoError> {
        let (peer, prekey) = self.verify_bundle(user, bundle)?;
        let change = self.learn_peer(peer);
        let identity = Curve25519PublicKey::from_bytes(peer.keys.curve25519);
        let session = self
            .account
            .create_outbound_session(OlmConfig::version_1(), identity, prekey)
            .map_err(|e| CryptoError::BadBundle {
                device: bundle.device,
                reason: e.to_string(),
            })?;
        self.add_session(peer.device, session);
        Ok(change)
    }

    fn add_session(&mut self, device: DeviceId, session: Session) {
        let list = self.sessions.entry(device).or_default();
        list.insert(0, session);
        list.truncate(SESSIONS_PER_DEVICE);
    }

    /// Encrypts `content` for one device (an envelope body).
    pub fn encrypt(&mut self, to: DeviceId, content: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let curve = self.account.curve25519_key().to_bytes();
        let sealed = wire::encode(&SealedOlm {
            from_user: self.user,
            from_device: self.device,
            to_device: to,
            ed25519: OpaqueBytes(self.account.ed25519_key().as_bytes().to_vec()),
            curve_sig: OpaqueBytes(self.account.sign(curve).to_bytes().to_vec()),
            content: OpaqueBytes(content.to_vec()),
        });
        let session = self
            .sessions
            .get_mut(&to)
            .and_then(|l| l.first_mut())
            .ok_or(CryptoError::NoSession(to))?;
        let message = session.encrypt(&sealed).map_err(|e| CryptoError::Olm {
            device: to,
            reason: e.to_string(),
        })?;
        let (t, c) = message.to_parts();
        Ok(wire::encode(&OlmBody {
            v: VERSION,
            t: t as u8,
            c: OpaqueBytes(c),
        }))
    }

    /// Decrypts an envelope that the server says `from_device` of `from_user` sent.
    pub fn decrypt(
        &mut self,
        from_user: UserId,
        from_device: DeviceId,
        body: &[u8],
    ) -> Result<Plaintext, CryptoError> {
        let olm_err = |reason: String| CryptoError::Olm {
            device: from_device,
            reason,
        };
        let b: OlmBody = wire::decode("olm envelope", body)?;
        if b.v != VERSION {
            return Err(CryptoError::Malformed(format!(
                "olm envelope version {}",
                b.v
            )));
        }
        let message = OlmMessage::from_parts(usize::from(b.t), &b.c.0)
            .map_err(|e| CryptoError::Malformed(format!("olm message: {e}")))?;
        let (sealed, remote_curve, new_session) = match &message {
            OlmMessage::PreKey(pre) => {
                let existing = self.try_sessions(from_device, &message, Some(pre.session_id()));
                match existing {
                    Some(sealed) => (sealed, None, None),
                    None => {
                        let identity = pre.identity_key();
                        let used = pre.one_time_key().to_bytes();
                        let created = self
                            .account
                            .create_inbound_session(OlmConfig::version_1(), identity, pre)
                            .map_err(|e| olm_err(e.to_string()))?;
                        if self.last_resort == Some(used) {
                            self.last_resort_used = true;
                        }
                        self.new_inbound_sessions += 1;
                        (
                            created.plaintext,
                            Some(identity.to_bytes()),
                            Some(created.session),
                        )
                    }
                }
            }
            OlmMessage::Normal(_) => match self.try_sessions(from_device, &message, None) {
                Some(sealed) => (sealed, None, None),
                None if self.has_session(from_device) => {
                    return Err(olm_err(
                        "no session with this device decrypts the message".into(),
                    ));
                }
                None => return Err(CryptoError::NoSession(from_device)),
            },
        };
        let s: SealedOlm = wire::decode("sealed olm content", &sealed)?;
        if s.from_user != from_user || s.from_device != from_device {
            return Err(CryptoError::WrongSender {
                claimed: format!("{}/{}", s.from_user, s.from_device),
                actual: format!("{from_user}/{from_device}"),
            });
        }
        if s.to_device != self.device {
            return Err(CryptoError::WrongSender {
                claimed: format!("a message for {}", s.to_device),
                actual: format!("delivered to {}", self.device),
            });
        }
        let ed25519 = array32(&s.ed25519.0)
            .ok_or_else(|| CryptoError::Malformed("sender identity key size".into()))?;
        let mut identity_change = None;
        match (remote_curve, new_session) {
            (Some(curve25519), Some(session)) => {
                // A new session: its Curve25519 key must be vouched for by the sender's
                // Ed25519 identity, which is then what we know this device by.
                if !verify(&ed25519, &curve25519, &s.curve_sig.0) {
                    return Err(olm_err(
                        "the sender's identity signature does not verify".into(),
                    ));
                }
                identity_change = self.learn_peer(PeerDevice {
                    user: from_user,
                    device: from_device,
                    keys: DeviceKeys {
                        ed25519,
                        curve25519,
                    },
                });
                self.add_session(from_device, session);
            }
            _ => {
                let known = self.peers.get(&from_device).map(|p| p.keys.ed25519);
                if known != Some(ed25519) {
                    return Err(olm_err(
                        "the sealed identity differs from the session's".into(),
                    ));
                }
            }
        }
        Ok(Plaintext {
            content: s.content.0,
            identity_change,
        })
    }

    /// Tries the device's sessions in turn (only the one with `session_id` if given); the one
    /// that decrypts moves to the front.
    fn try_sessions(
        &mut self,
        device: DeviceId,
        message: &OlmMessage,
        session_id: Option<String>,
    ) -> Option<Vec<u8>> {
        let list = self.sessions.get_mut(&device)?;
        let mut found = None;
        for (i, session) in list.iter_mut().enumerate() {
            if session_id
                .as_ref()
                .is_some_and(|id| *id != session.session_id())
            {
                continue;
            }
            if let Ok(p) = session.decrypt(message) {
                found = Some((i, p));
                break;
            }
        }
        let (i, plaintext) = found?;
        let s = list.remove(i);
        list.insert(0, s);
        Some(plaintext)
    }

    /// Prepares sending to `group` whose other member devices (everyone's, including this
    /// user's other devices, but not this one) are `devices`. Returns the session key to
    /// deliver over Olm to the devices that do not have it yet, if any. A new session is
    /// started when there is none, after the rotation limits, or after
    /// [`Machine::rotate_group`].
    pub fn prepare_group(
        &mut self,
        group: GroupId,
        devices: &[DeviceId],
        now_ms: u64,
    ) -> Option<GroupKeyShare> {
        let expired = self.outbound_groups.get(&group).is_none_or(|g| {
            g.sent >= GROUP_ROTATE_MESSAGES
                || now_ms.saturating_sub(g.created_ms) >= GROUP_ROTATE_MS
        });
        if expired {
            self.outbound_groups.insert(
                group,
                OutboundGroup {
                    session: GroupSession::new(MegolmConfig::version_1()),
                    created_ms: now_ms,
                    sent: 0,
                    shared_with: BTreeSet::new(),
                },
            );
        }
        let g = self.outbound_groups.get_mut(&group).expect("just ensured");
        let to: Vec<DeviceId> = devices
            .iter()
            .copied()
            .filter(|d| *d != self.device && !g.shared_with.contains(d))
            .collect();
        if to.is_empty() {
            return None;
        }
        g.shared_with.extend(to.iter().copied());
        Some(GroupKeyShare {
            group,
            session_id: g.session.session_id(),
            session_key: g.session.session_key().to_bytes(),
            to,
        })
    }

    /// Ends this device's current session for `group`: the next message starts a new one,
    /// shared only with the members of that moment (after a removal, a leave, or a failed
    /// key delivery).
    pub fn rotate_group(&mut self, group: GroupId) {
        self.outbound_groups.remove(&group);
    }

    /// Encrypts a group message (the `send_group` body). [`Machine::prepare_group`] must
    /// have run first.
    pub fn encrypt_group(
        &mut self,
        group: GroupId,
        content: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        let sealed = wire::encode(&SealedMegolm {
            from_user: self.user,
            from_device: self.device,
            group,
            content: OpaqueBytes(content.to_vec()),
        });
        let g = self.outbound_groups.get_mut(&group).ok_or_else(|| {
            CryptoError::UnknownGroupSession {
                device: self.device,
                session_id: format!("(none for group {group}: call prepare_group)"),
            }
        })?;
        g.sent += 1;
        let message = g.session.encrypt(&sealed);
        Ok(wire::encode(&MegolmBody {
            v: VERSION,
            s: g.session.session_id(),
            c: OpaqueBytes(message.to_bytes()),
        }))
    }

    /// Stores a group session key that `from_device` delivered over Olm. A session already
    /// known is kept (a repeated share cannot reset it).
    pub fn receive_group_key(
        &mut self,
        from_device: DeviceId,
        group: GroupId,
        session_key: &[u8],
    ) -> Result<(), CryptoError> {
        let key = SessionKey::from_bytes(session_key)
            .map_err(|e| CryptoError::Malformed(format!("group session key: {e}")))?;
        let session = InboundGroupSession::new(&key, MegolmConfig::version_1());
        self.inbound_groups
            .entry((from_device, session.session_id()))
            .or_insert(InboundGroup { group, session });
        Ok(())
    }

    /// Decrypts a group message that the server says `from_device` of `from_user` sent to
    /// `group`.
    pub fn decrypt_group(
        &mut self,
        from_user: UserId,
        from_device: DeviceId,
        group: GroupId,
        body: &[u8],
    ) -> Result<Plaintext, CryptoError> {
        let b: MegolmBody = wire::decode("group envelope", body)?;
        if b.v != VERSION {
            return Err(CryptoError::Malformed(format!(
                "group envelope version {}",
                b.v
            )));
        }
        let message = MegolmMessage::from_bytes(&b.c.0)
            .map_err(|e| CryptoError::Malformed(format!("megolm message: {e}")))?;
        let inbound = self
            .inbound_groups
            .get_mut(&(from_device, b.s.clone()))
            .ok_or_else(|| CryptoError::UnknownGroupSession {
                device: from_device,
                session_id: b.s.clone(),
            })?;
        if inbound.group != group {
            return Err(CryptoError::WrongSender {
                claimed: format!("a session of group {}", inbound.group),
                actual: format!("used in group {group}"),
            });
        }
        let decrypted = inbound
            .session
            .decrypt(&message)
            .map_err(|e| CryptoError::Megolm {
                device: from_device,
                reason: e.to_string(),
            })?;
        let s: SealedMegolm = wire::decode("sealed group content", &decrypted.plaintext)?;
        if s.from_user != from_user || s.from_device != from_device || s.group != group {
            return Err(CryptoError::WrongSender {
                claimed: format!("{}/{} in {}", s.from_user, s.from_device, s.group),
                actual: format!("{from_user}/{from_device} in {group}"),
            });
        }
        Ok(Plaintext {
            content: s.content.0,
            identity_change: None,
        })
    }

    /// The whole state, encrypted under `key` (ChaCha20-Poly1305), for the client's store.
    pub fn pickle(&self, key: &[u8; 32]) -> Vec<u8> {
        let p = MachinePickle {
            v: 1,
            user: self.user,
            device: self.device,
            account: self.account.pickle(),
            sessions: self
                .sessions
                .iter()
                .map(|(d, l)| (*d, l.iter().map(Session::pickle).collect()))
                .collect(),
            peers: self.peers.values().copied().collect(),
            seen_users: self.seen_users.iter().copied().collect(),
            outbound: self
                .outbound_groups
                .iter()
                .map(|(g, o)| OutboundPickle {
                    group: *g,
                    session: o.session.pickle(),
                    created_ms: o.created_ms,
                    sent: o.sent,
                    shared_with: o.shared_with.iter().copied().collect(),
                })
                .collect(),
            inbound: self
                .inbound_groups
                .iter()
                .map(|((d, _), i)| (*d, i.group, i.session.pickle()))
                .collect(),
            last_resort: self.last_resort,
            last_resort_used: self.last_resort_used,
        };
        let plain = zeroize::Zeroizing::new(serde_json::to_vec(&p).expect("pickles serialize"));
        let nonce = random_bytes::<12>();
        let cipher = ChaCha20Poly1305::new(&Key::from(*key));
        let mut out = nonce.to_vec();
        out.extend(
            cipher
                .encrypt(&Nonce::from(nonce), plain.as_slice())
                .expect("in-memory encryption cannot fail"),
        );
        out
    }

    /// Opens what [`Machine::pickle`] made.
    pub fn unpickle(bytes: &[u8], key: &[u8; 32]) -> Result<Machine, CryptoError> {
        if bytes.len() < 12 + 16 {
            return Err(CryptoError::Pickle("too short".into()));
        }
        let (nonce, ct) = bytes.split_at(12);
        let cipher = ChaCha20Poly1305::new(&Key::from(*key));
        let nonce: [u8; 12] = nonce.try_into().expect("split at 12");
        let plain = zeroize::Zeroizing::new(
            cipher
                .decrypt(&Nonce::from(nonce), ct)
                .map_err(|_| CryptoError::Pickle("wrong key or damaged data".into()))?,
        );
        let p: MachinePickle =
            serde_json::from_slice(&plain).map_err(|e| CryptoError::Pickle(e.to_string()))?;
        Ok(Machine {
            user: p.user,
            device: p.device,
            account: Account::from_pickle(p.account),
            sessions: p
                .sessions
                .into_iter()
                .map(|(d, l)| (d, l.into_iter().map(Session::from_pickle).collect()))
                .collect(),
            peers: p.peers.into_iter().map(|x| (x.device, x)).collect(),
            seen_users: p.seen_users.into_iter().collect(),
            outbound_groups: p
                .outbound
                .into_iter()
                .map(|o| {
                    (
                        o.group,
                        OutboundGroup {
                            session: GroupSession::from_pickle(o.session),
                            created_ms: o.created_ms,
                            sent: o.sent,
                            shared_with: o.shared_with.into_iter().collect(),
                        },
                    )
                })
                .collect(),
            inbound_groups: p
                .inbound
                .into_iter()
                .map(|(d, group, pickle)| {
                    let session = InboundGroupSession::from_pickle(pickle);
                    ((d, session.session_id()), InboundGroup { group, session })
                })
                .collect(),
            last_resort: p.last_resort,
            last_resort_used: p.last_resort_used,
            new_inbound_sessions: 0,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct OutboundPickle {
    group: GroupId,
    session: GroupSessionPickle,
    created_ms: u64,
    sent: u32,
    shared_with: Vec<DeviceId>,
}

#[derive(Serialize, Deserialize)]
struct MachinePickle {
    v: u8,
    user: UserId,
    device: DeviceId,
    account: AccountPickle,
    sessions: Vec<(DeviceId, Vec<SessionPickle>)>,
    peers: Vec<PeerDevice>,
    seen_users: Vec<UserId>,
    outbound: Vec<OutboundPickle>,
    inbound: Vec<(DeviceId, GroupId, InboundGroupSessionPickle)>,
    last_resort: Option<[u8; 32]>,
    last_resort_used: bool,
}
