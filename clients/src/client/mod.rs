//! The end-to-end-encrypted client: one device of one user.
//!
//! A [`Client`] keeps a connection to the server alive in a background task (reconnecting
//! with exponential backoff and full jitter), replays its offline backlog from its cursor,
//! decrypts each delivery, stores it locally *before* acknowledging it, and reports what
//! happened as [`ClientEvent`]s. Sending encrypts once per recipient device (Olm) or once per
//! group (Megolm, with the session key shared to member devices over Olm first).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_crypto::call_media::CallKeyShare;
use natter_crypto::{Machine, media, safety};
use natter_signaling::{
    ClientFrame, Conv, DeviceId, DeviceInfo, Envelope, ErrorCode, GroupChange, GroupId, GroupInfo,
    OpaqueBytes, PresenceInfo, QueueItem, ReceiptStatus, ServerFrame, UserId, UserMatch,
};
use tokio::sync::{mpsc, watch};

use crate::connection::{ConnectOptions, Connection, Event};
use crate::content::Content;
use crate::store::{FileRef, HistoryItem, ItemKind, NewItem, Store};
use crate::{ClientError, Credentials, HttpClient};

mod groups;
mod sync;

use sync::{run, top_up_keys};

/// One-time keys on the server below which the client uploads more.
const PREKEY_LOW_WATER: u32 = 25;
/// Reconnect backoff: the first retry waits up to this long, doubling to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Upload chunk size for blobs.
const UPLOAD_CHUNK: usize = 1 << 20;

/// What the application hears from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// Connected and authenticated.
    Connected,
    /// Every item queued while offline has been processed.
    BacklogDone,
    /// The connection dropped; the client reconnects on its own.
    Disconnected {
        reason: String,
    },
    /// A message arrived (or a copy of one this user sent from another device). Messages that
    /// could not be decrypted arrive too, with `kind: Error` and the reason in `body`.
    Message(HistoryItem),
    /// Own messages `seqs` in `conv` were delivered to, or read by, a device of `by`.
    Receipt {
        conv: Conv,
        seqs: Vec<u64>,
        status: ReceiptStatus,
        by: UserId,
    },
    GroupChanged {
        group: GroupId,
        by: UserId,
        change: GroupChange,
    },
    Presence(PresenceInfo),
    Typing {
        conv: Conv,
        from: UserId,
        active: bool,
    },
    /// A known contact's identity changed: a device of theirs has a new key, or they have a
    /// new device (`old` is `None`), e.g. after reinstalling. The safety number changed:
    /// verify it again.
    IdentityChanged {
        user: UserId,
        device: DeviceId,
        old: Option<[u8; 32]>,
        new: [u8; 32],
    },
    /// Someone called while no device answered.
    MissedCall {
        call_id: String,
        from: UserId,
        media: natter_signaling::call::Media,
        ts_ms: u64,
    },
    /// A call signal for this device (an incoming call, an answer, ICE, the end).
    Call {
        call_id: String,
        event: natter_signaling::call::CallEvent,
        ice_servers: Vec<natter_signaling::IceServer>,
    },
    /// Something happened in a group's call (a call started: `ringing`; it ended; the
    /// roster changed). Calls this device joined are also handled by their [`crate::ActiveRoom`].
    Room {
        group: natter_signaling::GroupId,
        event: natter_signaling::room::RoomEvent,
    },
    /// This device was revoked (or its token no longer works); the client stopped.
    Revoked {
        reason: String,
    },
}

/// A message the server accepted (one tick).
#[derive(Debug, Clone, PartialEq)]
pub struct Sent {
    /// Local history id.
    pub id: i64,
    pub seq: u64,
    pub ts_ms: u64,
}

struct State {
    store: Store,
    machine: Machine,
    key: [u8; 32],
}

impl State {
    /// `content` encrypted for `group` with this device's group session (shared already),
    /// the ratchet's new state saved.
    fn seal_group(&mut self, group: GroupId, content: &Content) -> Result<Vec<u8>, ClientError> {
        let bytes = self
            .machine
            .encrypt_group(group, &content.encode())
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.save_crypto()?;
        Ok(bytes)
    }

    fn save_crypto(&self) -> Result<(), ClientError> {
        self.store.set_crypto_state(&self.machine.pickle(&self.key))
    }
}

pub(crate) struct Inner {
    http: HttpClient,
    creds: Credentials,
    state: Mutex<State>,
    conn: watch::Sender<Option<Arc<Connection>>>,
    events: mpsc::UnboundedSender<ClientEvent>,
    /// One send at a time: encryption advances ratchets, and a retry after a device change
    /// must not interleave with another send.
    send_lock: tokio::sync::Mutex<()>,
    stop: watch::Sender<bool>,
    /// Calls in progress on this device, by call id.
    pub(crate) calls: Mutex<std::collections::HashMap<String, crate::calls::CallRoute>>,
    /// Candidates of incoming calls not answered yet.
    pub(crate) pending_ice:
        Mutex<std::collections::HashMap<String, Vec<natter_signaling::call::IceCandidate>>>,
    pub(crate) live_calls: std::sync::atomic::AtomicUsize,
    /// Group calls this device is in.
    pub(crate) rooms:
        Mutex<std::collections::HashMap<natter_signaling::GroupId, crate::rooms::RoomRoute>>,
}

/// A running client. Cheap to clone; dropping the last clone does not stop the background
/// task: call [`Client::shutdown`].
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

/// The client's events.
pub struct ClientEvents(mpsc::UnboundedReceiver<ClientEvent>);

impl ClientEvents {
    pub async fn next(&mut self) -> Option<ClientEvent> {
        self.0.recv().await
    }
    pub fn try_next(&mut self) -> Option<ClientEvent> {
        self.0.try_recv().ok()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_id() -> String {
    natter_crypto::random_bytes::<12>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A uniformly random duration in [0, max] (full jitter).
fn jitter(max: Duration) -> Duration {
    let r = u64::from_le_bytes(natter_crypto::random_bytes::<8>());
    let ms = max.as_millis().max(1) as u64;
    Duration::from_millis(r % (ms + 1))
}

/// The wait before reconnect attempt `attempt` (0-based): full jitter over an exponentially
/// growing cap, so that many clients dropped at once do not return in step.
pub fn backoff(attempt: u32) -> Duration {
    let cap = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_MAX);
    jitter(cap)
}

impl Client {
    /// Registers `phone` as a new primary device and opens a client in `dir`. Without
    /// `code`, uses the code the server returns in development mode.
    pub async fn register(
        dir: &Path,
        server: &str,
        phone: &str,
        code: Option<&str>,
        device_name: &str,
    ) -> Result<(Client, ClientEvents), ClientError> {
        let http = HttpClient::new(server);
        let code = match code {
            Some(c) => c.to_owned(),
            None => http.request_code(phone).await?.dev_code.ok_or_else(|| {
                ClientError::Protocol(
                    "the server sent the code to the phone (not in development mode): \
                     run again with the code"
                        .into(),
                )
            })?,
        };
        let creds = http.verify(phone, &code, device_name).await?;
        Self::create(dir, server, creds).await
    }

    /// Links this new device with a code from the primary device, and opens a client in `dir`.
    pub async fn link(
        dir: &Path,
        server: &str,
        code: &str,
        device_name: &str,
    ) -> Result<(Client, ClientEvents), ClientError> {
        let creds = HttpClient::new(server).link(code, device_name).await?;
        Self::create(dir, server, creds).await
    }

    async fn create(
        dir: &Path,
        server: &str,
        creds: Credentials,
    ) -> Result<(Client, ClientEvents), ClientError> {
        let store = Store::open(dir)?;
        if store.credentials()?.is_some() {
            return Err(ClientError::Protocol(format!(
                "{} already holds a device; use another directory",
                dir.display()
            )));
        }
        let key = store.pickle_key()?;
        let machine = Machine::new(creds.user, creds.device);
        store.set_crypto_state(&machine.pickle(&key))?;
        store.set_credentials(server, &creds)?;
        Ok(Self::start(
            server,
            creds,
            State {
                store,
                machine,
                key,
            },
        ))
    }

    /// Opens the device stored in `dir` and starts connecting.
    pub async fn open(dir: &Path) -> Result<(Client, ClientEvents), ClientError> {
        let store = Store::open(dir)?;
        let (server, creds) = store.credentials()?.ok_or_else(|| {
            ClientError::Protocol(format!(
                "no device in {}: register or link first",
                dir.display()
            ))
        })?;
        let key = store.pickle_key()?;
        let pickle = store
            .crypto_state()?
            .ok_or_else(|| ClientError::Protocol("the crypto state is missing".into()))?;
        let machine =
            Machine::unpickle(&pickle, &key).map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok(Self::start(
            &server,
            creds,
            State {
                store,
                machine,
                key,
            },
        ))
    }

    fn start(server: &str, creds: Credentials, state: State) -> (Client, ClientEvents) {
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            http: HttpClient::new(server),
            creds,
            state: Mutex::new(state),
            conn: watch::channel(None).0,
            events: ev_tx,
            send_lock: tokio::sync::Mutex::new(()),
            stop: watch::channel(false).0,
            calls: Mutex::new(std::collections::HashMap::new()),
            pending_ice: Mutex::new(std::collections::HashMap::new()),
            live_calls: std::sync::atomic::AtomicUsize::new(0),
            rooms: Mutex::new(std::collections::HashMap::new()),
        });
        tokio::spawn(run(inner.clone()));
        (Client { inner }, ClientEvents(ev_rx))
    }

    pub fn user(&self) -> UserId {
        self.inner.creds.user
    }

    pub fn device(&self) -> DeviceId {
        self.inner.creds.device
    }

    pub fn credentials(&self) -> &Credentials {
        &self.inner.creds
    }

    pub fn http(&self) -> &HttpClient {
        &self.inner.http
    }

    /// Stops the background task and closes the socket.
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }

    /// The current connection, waiting up to `timeout` for one.
    pub async fn connection(&self, timeout: Duration) -> Result<Arc<Connection>, ClientError> {
        let mut rx = self.inner.conn.subscribe();
        let wait = rx.wait_for(|c| c.is_some());
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(c)) => Ok(c.clone().expect("waited for some")),
            _ => Err(ClientError::Protocol(format!(
                "not connected to the server within {timeout:?}"
            ))),
        }
    }

    async fn conn(&self) -> Result<Arc<Connection>, ClientError> {
        self.connection(Duration::from_secs(10)).await
    }

    pub(crate) async fn request(&self, frame: ClientFrame) -> Result<ServerFrame, ClientError> {
        self.conn().await?.request(frame).await
    }

    /// Makes sure this device's keys are on the server (others can only start sessions with
    /// it after that). The client does this by itself after connecting; a command that exits
    /// right after registering should wait for it.
    pub async fn publish_keys(&self) -> Result<(), ClientError> {
        let conn = self.conn().await?;
        top_up_keys(self.inner.clone(), conn.clone()).await;
        match conn.request(ClientFrame::KeysCount { id: 0 }).await? {
            ServerFrame::KeyCount {
                one_time,
                identity_key: true,
                ..
            } if one_time > 0 => Ok(()),
            ServerFrame::KeyCount { .. } => Err(ClientError::Protocol(
                "the server did not take this device's keys".into(),
            )),
            other => Err(unexpected(&other)),
        }
    }

    /// Finds users by phone number and remembers them as contacts.
    pub async fn lookup(&self, phones: &[String]) -> Result<Vec<UserMatch>, ClientError> {
        let frame = ClientFrame::Lookup {
            id: 0,
            phones: phones.to_vec(),
        };
        match self.request(frame).await? {
            ServerFrame::Users { users, .. } => {
                let st = self.inner.state.lock().unwrap();
                for u in &users {
                    st.store.add_contact(u.user, &u.phone, None)?;
                }
                Ok(users)
            }
            other => Err(unexpected(&other)),
        }
    }

    /// Remembers a contact locally (with an optional name to address them by).
    pub fn add_contact(
        &self,
        user: UserId,
        phone: &str,
        name: Option<&str>,
    ) -> Result<(), ClientError> {
        self.inner
            .state
            .lock()
            .unwrap()
            .store
            .add_contact(user, phone, name)
    }

    pub fn contacts(&self) -> Result<Vec<(UserId, String, Option<String>)>, ClientError> {
        self.inner.state.lock().unwrap().store.contacts()
    }

    /// Sends a text message to `to` (every device of theirs, and this user's other devices).
    pub async fn send_text(&self, to: UserId, text: &str) -> Result<Sent, ClientError> {
        let content = Content::Text {
            text: text.to_owned(),
        };
        self.send_direct_item(to, &content, ItemKind::Text, text, None)
            .await
    }

    /// Encrypts a file, uploads it (resumably), and sends its key to `to`.
    pub async fn send_file(
        &self,
        to: UserId,
        path: &Path,
        progress: impl FnMut(u64, u64),
    ) -> Result<Sent, ClientError> {
        let file = self.upload_file(path, progress).await?;
        self.send_direct_item(
            to,
            &file_content(&file),
            ItemKind::File,
            &file.name,
            Some(&file),
        )
        .await
    }

    async fn upload_file(
        &self,
        path: &Path,
        progress: impl FnMut(u64, u64),
    ) -> Result<FileRef, ClientError> {
        let data = tokio::fs::read(path).await?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "file".into());
        let size = data.len() as u64;
        let (ciphertext, key) = tokio::task::spawn_blocking(move || media::encrypt(&data))
            .await
            .map_err(|e| ClientError::Protocol(format!("encryption task: {e}")))?;
        let blob = self
            .inner
            .http
            .upload(&self.inner.creds.token, &ciphertext, UPLOAD_CHUNK, progress)
            .await?;
        if blob != key.blob_id() {
            return Err(ClientError::Protocol(format!(
                "the server stored the upload as {blob}, expected {}",
                key.blob_id()
            )));
        }
        Ok(FileRef {
            name,
            size,
            media: key,
        })
    }

    /// Downloads and decrypts the file of history item `id` into `dest`, checking its digest.
    pub async fn download(
        &self,
        id: i64,
        dest: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<PathBuf, ClientError> {
        let item = self
            .inner
            .state
            .lock()
            .unwrap()
            .store
            .item(id)?
            .ok_or_else(|| ClientError::Protocol(format!("no message {id}")))?;
        let file = item
            .file
            .ok_or_else(|| ClientError::Protocol(format!("message {id} is not a file")))?;
        let total = file.media.size;
        let mut data = Vec::with_capacity(total as usize);
        // Resume after a dropped transfer from the bytes already received.
        let mut tries = 0;
        while (data.len() as u64) < total {
            match self
                .inner
                .http
                .download(
                    &self.inner.creds.token,
                    &file.media.blob_id(),
                    data.len() as u64,
                )
                .await
            {
                Ok(chunk) if !chunk.is_empty() => {
                    data.extend_from_slice(&chunk);
                    progress(data.len() as u64, total);
                }
                Ok(_) => break,
                Err(e) if tries < 3 && !matches!(e, ClientError::Server(_)) => tries += 1,
                Err(e) => return Err(e),
            }
        }
        let key = file.media.clone();
        let plain = tokio::task::spawn_blocking(move || media::decrypt(&data, &key))
            .await
            .map_err(|e| ClientError::Protocol(format!("decryption task: {e}")))?
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let target = if dest.is_dir() {
            dest.join(sanitize_name(&file.name))
        } else {
            dest.to_owned()
        };
        tokio::fs::write(&target, plain).await?;
        Ok(target)
    }

    async fn send_direct_item(
        &self,
        to: UserId,
        content: &Content,
        kind: ItemKind,
        body: &str,
        file: Option<&FileRef>,
    ) -> Result<Sent, ClientError> {
        let _guard = self.inner.send_lock.lock().await;
        let client_id = random_id();
        let local = {
            let st = self.inner.state.lock().unwrap();
            st.store.add_item(NewItem {
                conv: Conv::Direct(to),
                seq: None,
                sender: self.user(),
                sender_device: self.device(),
                ts_ms: now_ms(),
                outgoing: true,
                kind,
                body,
                file,
                status: "sending",
                client_id: Some(&client_id),
            })?
        };
        match self.send_direct(to, content, &client_id).await {
            Ok((seq, ts_ms)) => {
                self.inner
                    .state
                    .lock()
                    .unwrap()
                    .store
                    .mark_sent(local, seq, ts_ms)?;
                Ok(Sent {
                    id: local,
                    seq,
                    ts_ms,
                })
            }
            Err(e) => {
                let st = self.inner.state.lock().unwrap();
                let _ = st.store.mark_failed(local);
                Err(e)
            }
        }
    }

    /// Encrypts `content` for every device of `to` and this user's other devices and sends
    /// it, learning the device lists from the server's `device_mismatch` answers. Call with
    /// the send lock held.
    async fn send_direct(
        &self,
        to: UserId,
        content: &Content,
        client_id: &str,
    ) -> Result<(u64, u64), ClientError> {
        let me = self.user();
        let plaintext = content.encode();
        if to != me {
            self.claim_if_unknown(to).await?;
        }
        for _attempt in 0..4 {
            let envelopes = {
                let mut st = self.inner.state.lock().unwrap();
                let mut devices: Vec<DeviceId> = st
                    .machine
                    .peers_of(to)
                    .iter()
                    .chain(st.machine.peers_of(me).iter())
                    .map(|p| p.device)
                    .filter(|d| *d != self.device())
                    .collect();
                devices.sort_unstable();
                devices.dedup();
                let mut envelopes = Vec::with_capacity(devices.len());
                for d in devices {
                    if !st.machine.has_session(d) {
                        continue;
                    }
                    let body = st
                        .machine
                        .encrypt(d, &plaintext)
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    envelopes.push(Envelope {
                        device: d,
                        body: OpaqueBytes(body),
                    });
                }
                // The ratchets moved: keep that before anything leaves this device.
                st.save_crypto()?;
                envelopes
            };
            let frame = ClientFrame::Send {
                id: 0,
                client_id: client_id.to_owned(),
                to,
                envelopes,
            };
            match self.request(frame).await {
                Ok(ServerFrame::Sent { seq, ts_ms, .. }) => return Ok((seq, ts_ms)),
                Ok(other) => return Err(unexpected(&other)),
                Err(ClientError::Server(e)) if e.code == ErrorCode::DeviceMismatch => {
                    {
                        let mut st = self.inner.state.lock().unwrap();
                        for d in &e.extra {
                            st.machine.forget_device(*d);
                        }
                        st.save_crypto()?;
                    }
                    if !e.missing.is_empty() {
                        let missing: Vec<DeviceId> = e.missing.clone();
                        let found = self.claim(to, Some(&missing)).await?;
                        if found < missing.len() && to != me {
                            self.claim(me, Some(&missing)).await?;
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(ClientError::Protocol(
            "the recipient's devices kept changing; try again".into(),
        ))
    }

    /// Fetches `user`'s device keys (and opens sessions) when no device of theirs is known.
    async fn claim_if_unknown(&self, user: UserId) -> Result<(), ClientError> {
        let unknown = self
            .inner
            .state
            .lock()
            .unwrap()
            .machine
            .peers_of(user)
            .is_empty();
        if unknown {
            self.claim(user, None).await?;
        }
        Ok(())
    }

    /// Claims `user`'s prekey bundles and starts sessions with the devices in `only` (all if
    /// `None`). Returns how many sessions were started.
    async fn claim(&self, user: UserId, only: Option<&[DeviceId]>) -> Result<usize, ClientError> {
        let devices = match self.request(ClientFrame::KeysClaim { id: 0, user }).await? {
            ServerFrame::Bundle { devices, .. } => devices,
            other => return Err(unexpected(&other)),
        };
        let mut started = 0;
        let mut events = Vec::new();
        {
            let mut st = self.inner.state.lock().unwrap();
            for b in &devices {
                if b.device == self.device() || only.is_some_and(|o| !o.contains(&b.device)) {
                    continue;
                }
                if b.identity_key.is_none() {
                    return Err(ClientError::Protocol(format!(
                        "device {} of {user} has not published its keys yet; try again shortly",
                        b.device
                    )));
                }
                match st.machine.start_session(user, b) {
                    Ok(change) => {
                        started += 1;
                        if let Some(c) = change.filter(|c| !c.first_for_user) {
                            events.push(ClientEvent::IdentityChanged {
                                user: c.user,
                                device: c.device,
                                old: c.old,
                                new: c.new,
                            });
                        }
                    }
                    Err(e) => return Err(ClientError::Protocol(e.to_string())),
                }
            }
            st.save_crypto()?;
        }
        for e in events {
            let _ = self.inner.events.send(e);
        }
        Ok(started)
    }

    /// Sends read receipts for messages `seqs` of `conv` written by `author`.
    pub async fn mark_read(
        &self,
        conv: Conv,
        author: UserId,
        seqs: &[u64],
    ) -> Result<(), ClientError> {
        match self
            .request(ClientFrame::Read {
                id: 0,
                conv,
                to: author,
                seqs: seqs.to_vec(),
            })
            .await?
        {
            ServerFrame::Ok { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    pub fn history(&self, conv: Conv, limit: usize) -> Result<Vec<HistoryItem>, ClientError> {
        self.inner.state.lock().unwrap().store.history(conv, limit)
    }

    pub fn search(&self, needle: &str, limit: usize) -> Result<Vec<HistoryItem>, ClientError> {
        self.inner.state.lock().unwrap().store.search(needle, limit)
    }

    /// The safety number with `contact`, from the identity keys of every device of both users
    /// as this device knows them (fetching the contact's keys if none are known yet).
    pub async fn safety_number(&self, contact: UserId) -> Result<String, ClientError> {
        self.claim_if_unknown(contact).await?;
        let st = self.inner.state.lock().unwrap();
        let mine: Vec<[u8; 32]> = std::iter::once(st.machine.keys().ed25519)
            .chain(
                st.machine
                    .peers_of(self.user())
                    .iter()
                    .map(|p| p.keys.ed25519),
            )
            .collect();
        let theirs: Vec<[u8; 32]> = st
            .machine
            .peers_of(contact)
            .iter()
            .map(|p| p.keys.ed25519)
            .collect();
        Ok(safety::safety_number(
            (self.user(), &mine),
            (contact, &theirs),
        ))
    }

    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, ClientError> {
        match self.request(ClientFrame::DevicesList { id: 0 }).await? {
            ServerFrame::Devices { devices, .. } => Ok(devices),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn revoke_device(&self, device: DeviceId) -> Result<(), ClientError> {
        match self
            .request(ClientFrame::DeviceRevoke { id: 0, device })
            .await?
        {
            ServerFrame::Ok { .. } => {
                let mut st = self.inner.state.lock().unwrap();
                st.machine.forget_device(device);
                st.save_crypto()
            }
            other => Err(unexpected(&other)),
        }
    }

    /// A one-time code for linking a new device (primary device only), with its expiry.
    pub async fn link_code(&self) -> Result<(String, u64), ClientError> {
        match self.request(ClientFrame::DeviceLinkCode { id: 0 }).await? {
            ServerFrame::LinkCode {
                code, expires_ms, ..
            } => Ok((code, expires_ms)),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn subscribe_presence(
        &self,
        users: &[UserId],
    ) -> Result<Vec<PresenceInfo>, ClientError> {
        match self
            .request(ClientFrame::PresenceSubscribe {
                id: 0,
                users: users.to_vec(),
            })
            .await?
        {
            ServerFrame::PresenceList { users, .. } => Ok(users),
            other => Err(unexpected(&other)),
        }
    }

    pub fn typing(&self, conv: Conv, active: bool) -> Result<(), ClientError> {
        let conn = self
            .inner
            .conn
            .borrow()
            .clone()
            .ok_or(ClientError::Closed)?;
        conn.notify(ClientFrame::Typing {
            id: 0,
            conv,
            active,
        })?;
        Ok(())
    }
}

fn sanitize_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    match cleaned.as_str() {
        "" | "." | ".." => "download".into(),
        _ => cleaned,
    }
}

fn unexpected(frame: &ServerFrame) -> ClientError {
    ClientError::Protocol(format!("unexpected answer {}", frame.type_name()))
}

/// What is sent for an uploaded file: its name, size and the key to its blob.
fn file_content(file: &FileRef) -> Content {
    Content::File {
        name: file.name.clone(),
        size: file.size,
        media: file.media.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_and_capped() {
        for attempt in 0..40 {
            let cap = BACKOFF_BASE
                .saturating_mul(1u32 << attempt.min(16))
                .min(BACKOFF_MAX);
            for _ in 0..50 {
                assert!(backoff(attempt) <= cap);
            }
        }
        // Full jitter: waits spread over the whole range rather than bunching at the cap.
        let waits: Vec<u128> = (0..2000).map(|_| backoff(10).as_millis()).collect();
        let below_half = waits.iter().filter(|w| **w < 15_000).count();
        assert!(
            (700..1300).contains(&below_half),
            "{below_half} of 2000 below half"
        );
    }

    #[test]
    fn file_names_cannot_escape_the_download_directory() {
        assert_eq!(sanitize_name("../../etc/passwd"), ".._.._etc_passwd");
        assert_eq!(sanitize_name(".."), "download");
        assert_eq!(sanitize_name("photo.jpg"), "photo.jpg");
    }
}
