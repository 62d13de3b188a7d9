//! Who is connected right now: one live connection per device, presence subscriptions, and
//! typing indicators. Everything here is in memory and ephemeral; durable state lives in the
//! store, which calls [`Hub::push_item`] after each commit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use natter_signaling::{
    DeviceId, PresenceInfo, PresenceVisibility, ProtocolError, QueueItem, ServerFrame, UserId,
};

pub use crate::outbound::{LIVE_QUEUE_LIMIT, Outbound, OutboundTx};
use crate::typing::{TypingKey, TypingTracker, TypingUpdate};

/// The hub's handle on one connection.
#[derive(Clone)]
pub struct ConnHandle {
    pub conn_id: u64,
    pub user: UserId,
    pub device: DeviceId,
    tx: OutboundTx,
}

impl ConnHandle {
    pub fn new(conn_id: u64, user: UserId, device: DeviceId, tx: OutboundTx) -> ConnHandle {
        ConnHandle {
            conn_id,
            user,
            device,
            tx,
        }
    }
}

struct UserPresence {
    /// Devices of this user with a live connection.
    online: Vec<DeviceId>,
    visibility: PresenceVisibility,
    last_seen_ms: Option<u64>,
    /// Connections subscribed to this user's presence.
    subscribers: HashMap<u64, OutboundTx>,
}

impl UserPresence {
    fn new(visibility: PresenceVisibility) -> UserPresence {
        UserPresence {
            online: Vec::new(),
            visibility,
            last_seen_ms: None,
            subscribers: HashMap::new(),
        }
    }

    fn info(&self, user: UserId) -> PresenceInfo {
        match self.visibility {
            PresenceVisibility::Nobody => PresenceInfo {
                user,
                hidden: true,
                online: false,
                last_seen_ms: None,
            },
            PresenceVisibility::Everyone => PresenceInfo {
                user,
                hidden: false,
                online: !self.online.is_empty(),
                last_seen_ms: if self.online.is_empty() {
                    self.last_seen_ms
                } else {
                    None
                },
            },
        }
    }

    /// Applies `change` and tells subscribers if what they may see changed. (A hidden user's
    /// comings and goings must not even produce a frame: its timing would give them away.)
    fn change(&mut self, user: UserId, change: impl FnOnce(&mut Self)) {
        let before = self.info(user);
        change(self);
        let after = self.info(user);
        if before != after {
            self.notify(after);
        }
    }

    fn notify(&self, info: PresenceInfo) {
        if self.subscribers.is_empty() {
            return;
        }
        let frame = Arc::new(ServerFrame::Presence(info));
        for tx in self.subscribers.values() {
            tx.send_event(frame.clone());
        }
    }

    fn is_idle(&self) -> bool {
        self.online.is_empty() && self.subscribers.is_empty()
    }
}

/// Recipients of a typing indicator: users whose online devices are told.
pub type TypingRecipients = Arc<[UserId]>;

pub struct Hub {
    next_conn_id: AtomicU64,
    conns: Mutex<HashMap<DeviceId, ConnHandle>>,
    presence: Mutex<HashMap<UserId, UserPresence>>,
    typing: Mutex<TypingTracker<TypingRecipients>>,
}

impl Hub {
    pub fn new(typing_ttl: std::time::Duration) -> Hub {
        Hub {
            next_conn_id: AtomicU64::new(1),
            conns: Mutex::new(HashMap::new()),
            presence: Mutex::new(HashMap::new()),
            typing: Mutex::new(TypingTracker::new(typing_ttl)),
        }
    }

    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes `handle` the device's live connection. An older connection of the same device
    /// is told to close.
    pub fn register(&self, handle: ConnHandle, visibility: PresenceVisibility) {
        let (user, device) = (handle.user, handle.device);
        let old = self.conns.lock().unwrap().insert(device, handle);
        if let Some(old) = old {
            old.tx.send(Outbound::Kick(Box::new(ProtocolError::new(
                natter_signaling::ErrorCode::Conflict,
                "replaced by a newer connection of this device",
            ))));
        }
        let mut presence = self.presence.lock().unwrap();
        let entry = presence
            .entry(user)
            .or_insert_with(|| UserPresence::new(visibility));
        entry.change(user, |e| {
            e.visibility = visibility;
            if !e.online.contains(&device) {
                e.online.push(device);
            }
        });
    }

    /// Removes the connection if it is still the device's live one: `None` if it was not
    /// (a newer connection replaced it), else whether this took the user offline (the caller
    /// records last-seen).
    pub fn unregister(
        &self,
        device: DeviceId,
        conn_id: u64,
        user: UserId,
        now_ms: u64,
    ) -> Option<bool> {
        {
            let mut conns = self.conns.lock().unwrap();
            match conns.get(&device) {
                Some(h) if h.conn_id == conn_id => {
                    conns.remove(&device);
                }
                _ => return None,
            }
        }
        let mut presence = self.presence.lock().unwrap();
        let Some(entry) = presence.get_mut(&user) else {
            return Some(false);
        };
        let mut went_offline = false;
        entry.change(user, |e| {
            e.online.retain(|d| *d != device);
            if e.online.is_empty() {
                went_offline = true;
                e.last_seen_ms = Some(now_ms);
            }
        });
        if entry.is_idle() {
            presence.remove(&user);
        }
        Some(went_offline)
    }

    /// The devices of `user` connected right now.
    pub fn online_devices(&self, user: UserId) -> Vec<DeviceId> {
        self.presence
            .lock()
            .unwrap()
            .get(&user)
            .map(|p| p.online.clone())
            .unwrap_or_default()
    }

    /// Sends `frame` to the device's live connection; false if it has none.
    pub fn send_to_device(&self, device: DeviceId, frame: Arc<ServerFrame>) -> bool {
        match self.conns.lock().unwrap().get(&device) {
            Some(h) => h.tx.send_event(frame),
            None => false,
        }
    }

    /// Hands a committed queue item to the device's live connection, if any.
    pub fn push_item(&self, device: DeviceId, qseq: u64, item: Arc<QueueItem>) {
        let conns = self.conns.lock().unwrap();
        if let Some(h) = conns.get(&device) {
            h.tx.send_item(qseq, item);
        }
    }

    /// Tells the device's live connection to send `err` and close.
    pub fn kick(&self, device: DeviceId, err: ProtocolError) {
        if let Some(h) = self.conns.lock().unwrap().get(&device) {
            h.tx.send(Outbound::Kick(Box::new(err)));
        }
    }

    pub fn connection_count(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    /// Sends `frame` to every live connection of `users`, except `except`.
    pub fn send_to_users(
        &self,
        users: &[UserId],
        frame: Arc<ServerFrame>,
        except: Option<DeviceId>,
    ) {
        let presence = self.presence.lock().unwrap();
        let conns = self.conns.lock().unwrap();
        for u in users {
            let Some(p) = presence.get(u) else { continue };
            for d in &p.online {
                if Some(*d) == except {
                    continue;
                }
                if let Some(h) = conns.get(d) {
                    h.tx.send_event(frame.clone());
                }
            }
        }
    }

    /// Subscribes connection `conn_id` to `users` and returns their presence as it stands.
    /// `stored` gives each user's visibility and last-seen time from storage.
    pub fn subscribe(
        &self,
        conn_id: u64,
        tx: &OutboundTx,
        stored: &[(UserId, PresenceVisibility, Option<u64>)],
    ) -> Vec<PresenceInfo> {
        let mut presence = self.presence.lock().unwrap();
        stored
            .iter()
            .map(|&(user, visibility, last_seen)| {
                let entry = presence
                    .entry(user)
                    .or_insert_with(|| UserPresence::new(visibility));
                if entry.online.is_empty() {
                    // Offline users' entries exist only for subscribers: storage is current.
                    entry.visibility = visibility;
                    entry.last_seen_ms = last_seen;
                }
                entry.subscribers.insert(conn_id, tx.clone());
                entry.info(user)
            })
            .collect()
    }

    pub fn unsubscribe(&self, conn_id: u64, users: &[UserId]) {
        let mut presence = self.presence.lock().unwrap();
        for u in users {
            if let Some(entry) = presence.get_mut(u) {
                entry.subscribers.remove(&conn_id);
                if entry.is_idle() {
                    presence.remove(u);
                }
            }
        }
    }

    /// A user changed who may see their presence; subscribers learn the new view.
    pub fn set_visibility(&self, user: UserId, visibility: PresenceVisibility) {
        if let Some(entry) = self.presence.lock().unwrap().get_mut(&user) {
            entry.change(user, |e| e.visibility = visibility);
        }
    }

    /// A typing frame from `key.device`; forwards it to the recipients' live devices.
    pub fn typing(&self, key: TypingKey, active: bool, recipients: TypingRecipients) {
        let update = {
            let mut t = self.typing.lock().unwrap();
            t.update(Instant::now(), key, active, recipients.clone())
        };
        match update {
            TypingUpdate::Started => self.forward_typing(key, true, &recipients),
            TypingUpdate::Stopped => self.forward_typing(key, false, &recipients),
            TypingUpdate::Nothing => {}
        }
    }

    fn forward_typing(&self, key: TypingKey, active: bool, recipients: &[UserId]) {
        let ttl_ms = self.typing.lock().unwrap().ttl().as_millis() as u32;
        let frame = Arc::new(ServerFrame::Typing {
            conv: match key.conv {
                // The recipient sees the direct conversation named after the typist.
                natter_signaling::Conv::Direct(_) => natter_signaling::Conv::Direct(key.user),
                g => g,
            },
            from: key.user,
            device: key.device,
            active,
            ttl_ms,
        });
        self.send_to_users(recipients, frame, Some(key.device));
    }

    /// Ends indicators whose time is up, telling their recipients. Returns when to call again.
    pub fn expire_typing(&self, now: Instant) -> Option<Instant> {
        let (expired, next) = {
            let mut t = self.typing.lock().unwrap();
            (t.expire(now), t.next_deadline())
        };
        for (key, recipients) in expired {
            self.forward_typing(key, false, &recipients);
        }
        next
    }

    /// The device disconnected: its typing indicators stop now.
    pub fn forget_typing(&self, device: DeviceId) {
        let gone = self.typing.lock().unwrap().forget_device(device);
        for (key, recipients) in gone {
            self.forward_typing(key, false, &recipients);
        }
    }
}
