//! Group calls on top of [`Client`]: a device joins its group's call (a room on natter's SFU)
//! with one [`MediaSession`] that publishes its audio (and video) and receives every other
//! participant's tracks as the SFU adds them.
//!
//! Each room runs a small task that applies, in order, what the server relays: the SFU's
//! answer to the join first, then its renegotiation offers (each answered with
//! `room_answer`), roster changes, and removal from the call.
//!
//! Media is end-to-end encrypted with SFrame ([`natter_crypto::call_media`]): each device's
//! key goes to the group over its Megolm channel (`Content::CallKey`), from a second task
//! that keeps the key moving with the roster: one ratchet step when someone joins (they
//! cannot read what came before), a new epoch when someone leaves (they cannot read what
//! follows), shared [`KEY_SWITCH_DELAY`] before it is used so the others have it first.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_crypto::call_media::{CallKeyShare, CallKeys};
use natter_media::session::group::TrackStats;
use natter_media::session::{FrameCrypto, FrameE2ee};
use natter_signaling::call::Media;
use natter_signaling::room::{RoomEvent, RoomTrack, RosterEntry};
use natter_signaling::{ClientFrame, DeviceId, GroupId, ServerFrame, UserId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::client::Inner;
use crate::{Client, ClientError};
use natter_media::{MediaOptions, MediaSession};

/// How long a new epoch's key is shared before frames use it.
pub const KEY_SWITCH_DELAY: Duration = Duration::from_millis(300);

/// One call's SFrame keys, as the media session seals and opens frames with them.
pub struct SharedCallKeys(Mutex<CallKeys>);

impl SharedCallKeys {
    fn with<T>(&self, f: impl FnOnce(&mut CallKeys) -> T) -> T {
        f(&mut self.0.lock().unwrap())
    }
}

impl FrameCrypto for SharedCallKeys {
    fn seal(&self, frame: &[u8], clear: usize) -> Result<Vec<u8>, String> {
        self.with(|k| k.seal(frame, clear))
            .map_err(|e| e.to_string())
    }

    fn open(&self, frame: &[u8], clear: usize) -> Result<Vec<u8>, String> {
        self.with(|k| k.open(frame, clear))
            .map(|(_, f)| f)
            .map_err(|e| e.to_string())
    }
}

/// A call key that came over the group channel.
pub(crate) struct CallKeyArrived {
    pub group: GroupId,
    pub call_id: String,
    pub from: DeviceId,
    pub key: CallKeyShare,
}

/// Hands keys to the rooms they are for (others are for calls this device is not in).
pub(crate) fn call_keys_arrived(inner: &Inner, keys: Vec<CallKeyArrived>) {
    if keys.is_empty() {
        return;
    }
    let rooms = inner.rooms.lock().unwrap();
    for k in keys {
        let Some(route) = rooms.get(&k.group) else {
            continue;
        };
        if route.call_id.as_ref().is_some_and(|c| *c != k.call_id) {
            continue;
        }
        if let Err(e) = route.keys.with(|keys| keys.add(k.from, &k.key)) {
            eprintln!("natter-client: call key from {}: {e}", k.from);
        }
    }
}

/// What the key task is told.
enum KeyWork {
    /// Share the current key (the join is done).
    Start { call_id: String },
    /// The roster changed: who joined, who left (devices, with their users).
    Roster {
        joined: bool,
        left: Vec<(UserId, DeviceId)>,
    },
}

/// What this device knows of the call it is in.
#[derive(Debug, Clone, Default)]
pub struct RoomView {
    pub roster: Vec<RosterEntry>,
    /// Every track the SFU sends this device, with its publisher.
    pub tracks: Vec<RoomTrack>,
    /// Media flows (ICE and DTLS are up, this device publishes).
    pub connected: bool,
    /// Who speaks, as the SFU last said.
    pub speaker: Option<DeviceId>,
    /// Why this device is out of the call, once it is (`left` after its own leave).
    pub ended: Option<String>,
}

/// A group call this device is in.
pub struct ActiveRoom {
    pub group: GroupId,
    pub call_id: String,
    client: Client,
    media: Arc<MediaSession>,
    view: watch::Receiver<RoomView>,
    tones: Arc<std::sync::Mutex<HashMap<DeviceId, f32>>>,
    keys: Option<Arc<SharedCallKeys>>,
}

pub(crate) struct RoomRoute {
    pub signals: mpsc::UnboundedSender<RoomEvent>,
    pub keys: Arc<SharedCallKeys>,
    /// Known once the join is answered; keys for another call of the group are not taken.
    pub call_id: Option<String>,
}

impl ActiveRoom {
    pub fn view(&self) -> RoomView {
        self.view.borrow().clone()
    }

    /// Waits until `pred` holds for the view, or `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(&RoomView) -> bool,
    ) -> Result<RoomView, ClientError> {
        let mut rx = self.view.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|v| pred(v))).await {
            Ok(Ok(v)) => Ok(v.clone()),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Protocol(format!(
                "room of {} is {:?} after {timeout:?}",
                self.group,
                self.view()
            ))),
        }
    }

    /// The call's SFrame keys (None when media is not end-to-end encrypted): what this
    /// device seals its frames with and opens others' with.
    pub fn call_keys(&self) -> Option<Arc<SharedCallKeys>> {
        self.keys.clone()
    }

    /// Each received track's figures, with whose it is.
    pub fn track_stats(&self) -> Vec<(RoomTrack, TrackStats)> {
        let tracks = self.view.borrow().tracks.clone();
        let stats = self.media.track_stats();
        tracks
            .into_iter()
            .filter_map(|t| {
                let s = stats.iter().find(|s| s.mid == t.mid)?.clone();
                Some((t, s))
            })
            .collect()
    }

    /// The tone `device` sends, to be looked for in its audio (for the continuity figure).
    pub fn expect_tone(&self, device: DeviceId, freq: f32) {
        self.tones.lock().unwrap().insert(device, freq);
        for t in &self.view.borrow().tracks {
            if t.device == device && t.kind == Media::Audio {
                self.media.expect_tone_on(&t.mid, freq);
            }
        }
    }

    /// Sets this device's muted / camera / hand state (fields left `None` stay). Muted, it
    /// sends silence.
    pub async fn set_state(
        &self,
        muted: Option<bool>,
        camera: Option<bool>,
        hand: Option<bool>,
    ) -> Result<(), ClientError> {
        if let Some(m) = muted {
            self.media.set_muted(m);
        }
        self.client
            .request(ClientFrame::RoomState {
                id: 0,
                group: self.group,
                muted,
                camera,
                hand,
            })
            .await
            .map(|_| ())
    }

    /// Leaves the call; media stops (first, so no renegotiation in flight is answered).
    pub async fn leave(&self) -> Result<(), ClientError> {
        self.client.end_room(self.group, "left");
        self.client
            .request(ClientFrame::RoomLeave {
                id: 0,
                group: self.group,
            })
            .await
            .map(|_| ())
    }
}

impl Client {
    /// Joins (or starts) `group`'s call, publishing audio (and video when `opts.video` is
    /// set). Returns once the SFU answered; media connects in the background.
    pub async fn join_room(
        &self,
        group: GroupId,
        media: Media,
        opts: MediaOptions,
    ) -> Result<ActiveRoom, ClientError> {
        self.join_room_with(group, media, opts, true).await
    }

    /// Like [`Client::join_room`], with media end-to-end encrypted (SFrame) or not (to
    /// measure what SFrame costs, and what an SFU sees without it).
    pub async fn join_room_with(
        &self,
        group: GroupId,
        media: Media,
        mut opts: MediaOptions,
        e2ee: bool,
    ) -> Result<ActiveRoom, ClientError> {
        opts.group = true;
        let keys = Arc::new(SharedCallKeys(Mutex::new(CallKeys::new(self.device()))));
        opts.e2ee = e2ee.then(|| FrameE2ee(keys.clone()));
        // Tones are per track in a group call: see ActiveRoom::expect_tone.
        opts.expect_tone = None;
        let ice = self.ice_servers().await?;
        let session = Arc::new(MediaSession::new(&ice, opts).await?);
        let offer = session.create_offer().await?;
        // Registered before the join is sent: the SFU's first offer can overtake its answer.
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        {
            let mut rooms = self.inner.rooms.lock().unwrap();
            if rooms.contains_key(&group) {
                return Err(ClientError::Protocol(format!(
                    "already in the call of {group}"
                )));
            }
            rooms.insert(
                group,
                RoomRoute {
                    signals: sig_tx,
                    keys: keys.clone(),
                    call_id: None,
                },
            );
        }
        let (key_tx, key_rx) = mpsc::unbounded_channel();
        if e2ee {
            tokio::spawn(run_keys(self.clone(), group, keys.clone(), key_rx));
        }
        let (view_tx, view_rx) = watch::channel(RoomView::default());
        let (answer_tx, answer_rx) = oneshot::channel();
        let tones = Arc::new(std::sync::Mutex::new(HashMap::new()));
        self.inner.live_calls.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(run_room(
            RoomTask {
                client: self.clone(),
                group,
                media: session.clone(),
                view: view_tx,
                tones: tones.clone(),
                keys: key_tx.clone(),
            },
            sig_rx,
            answer_rx,
        ));
        let joined = self
            .request(ClientFrame::RoomJoin {
                id: 0,
                group,
                media,
                sdp: offer,
            })
            .await;
        match joined {
            Ok(ServerFrame::RoomJoined {
                call_id,
                sdp,
                roster,
                ..
            }) => {
                if let Some(route) = self.inner.rooms.lock().unwrap().get_mut(&group) {
                    route.call_id = Some(call_id.clone());
                }
                let _ = key_tx.send(KeyWork::Start {
                    call_id: call_id.clone(),
                });
                let _ = answer_tx.send((sdp, roster));
                Ok(ActiveRoom {
                    group,
                    call_id,
                    client: self.clone(),
                    media: session,
                    view: view_rx,
                    tones,
                    keys: e2ee.then_some(keys),
                })
            }
            Ok(other) => {
                self.end_room(group, "refused");
                Err(ClientError::Protocol(format!(
                    "unexpected answer {}",
                    other.type_name()
                )))
            }
            Err(e) => {
                self.end_room(group, "refused");
                Err(e)
            }
        }
    }

    /// Ends this device's part in `group`'s call locally: its task closes the media.
    pub(crate) fn end_room(&self, group: GroupId, why: &str) {
        if let Some(route) = self.inner.rooms.lock().unwrap().remove(&group) {
            let _ = route.signals.send(RoomEvent::Removed {
                reason: why.to_string(),
            });
        }
    }
}

/// What a room's task works with.
struct RoomTask {
    client: Client,
    group: GroupId,
    media: Arc<MediaSession>,
    view: watch::Sender<RoomView>,
    tones: Arc<std::sync::Mutex<HashMap<DeviceId, f32>>>,
    keys: mpsc::UnboundedSender<KeyWork>,
}

/// One room's task: see the module documentation.
async fn run_room(
    task: RoomTask,
    mut signals: mpsc::UnboundedReceiver<RoomEvent>,
    answer: oneshot::Receiver<(String, Vec<RosterEntry>)>,
) {
    let RoomTask {
        client,
        group,
        media,
        view,
        tones,
        keys,
    } = task;
    let me = client.device();
    // The other devices in the call, with their users.
    let others = |roster: &[RosterEntry]| -> BTreeMap<DeviceId, UserId> {
        roster
            .iter()
            .filter(|r| r.device != me)
            .map(|r| (r.device, r.user))
            .collect()
    };
    let mut present = BTreeMap::new();
    let started = match answer.await {
        Ok((sdp, roster)) => {
            present = others(&roster);
            view.send_modify(|v| v.roster = roster);
            media.set_answer(&sdp).await.map_err(|e| e.to_string())
        }
        Err(_) => Err("the join was refused".to_string()),
    };
    if let Err(e) = started {
        view.send_modify(|v| v.ended = Some(e));
        finish(&client, group, &media).await;
        return;
    }
    {
        let (media, view) = (media.clone(), view.clone());
        tokio::spawn(async move {
            if media.wait_connected(Duration::from_secs(20)).await.is_ok()
                && media.start_sending().await.is_ok()
            {
                view.send_modify(|v| v.connected = true);
            }
        });
    }
    while let Some(ev) = signals.recv().await {
        match ev {
            RoomEvent::Offer { sdp, tracks } => match media.accept_offer(&sdp).await {
                Ok(answer) => {
                    // The tracks go into the view before the tones are read: an
                    // `expect_tone` racing with this either is read here or finds them there.
                    view.send_modify(|v| v.tracks.extend(tracks.iter().cloned()));
                    let tones = tones.lock().unwrap().clone();
                    for t in &tracks {
                        if let (Media::Audio, Some(f)) = (t.kind, tones.get(&t.device)) {
                            media.expect_tone_on(&t.mid, *f);
                        }
                    }
                    let frame = ClientFrame::RoomAnswer {
                        id: 0,
                        group,
                        sdp: answer,
                    };
                    if let Err(e) = client.request(frame).await {
                        eprintln!("natter-client: room {group}: answer refused: {e}");
                    }
                }
                Err(e) => eprintln!("natter-client: room {group}: offer: {e}"),
            },
            RoomEvent::Roster { participants } => {
                let now = others(&participants);
                let joined = now.keys().any(|d| !present.contains_key(d));
                let left: Vec<(UserId, DeviceId)> = present
                    .iter()
                    .filter(|(d, _)| !now.contains_key(d))
                    .map(|(d, u)| (*u, *d))
                    .collect();
                if joined || !left.is_empty() {
                    let _ = keys.send(KeyWork::Roster { joined, left });
                }
                present = now;
                view.send_modify(|v| v.roster = participants);
            }
            RoomEvent::Removed { reason } => {
                view.send_modify(|v| v.ended = Some(reason));
                break;
            }
            RoomEvent::Speaker { device, .. } => view.send_modify(|v| v.speaker = Some(device)),
            RoomEvent::Layers { rids, .. } => media.set_wanted_layers(&rids),
            RoomEvent::Ringing { .. } | RoomEvent::Ended { .. } => {}
        }
    }
    finish(&client, group, &media).await;
}

/// A room's key task (see the module documentation). Ends when the room's task does.
async fn run_keys(
    client: Client,
    group: GroupId,
    keys: Arc<SharedCallKeys>,
    mut work: mpsc::UnboundedReceiver<KeyWork>,
) {
    let mut call_id = None;
    while let Some(w) = work.recv().await {
        let (share, departed) = match w {
            KeyWork::Start { call_id: c } => {
                call_id = Some(c);
                (keys.with(|k| k.current()), Vec::new())
            }
            KeyWork::Roster { joined, left } if left.is_empty() => {
                debug_assert!(joined);
                (keys.with(|k| k.ratchet()), Vec::new())
            }
            KeyWork::Roster { left, .. } => {
                let share = keys.with(|k| {
                    for (_, d) in &left {
                        k.forget(*d);
                    }
                    k.next_epoch()
                });
                (share, left.into_iter().map(|(u, _)| u).collect())
            }
        };
        let Some(call) = &call_id else { continue };
        let rotating = !departed.is_empty();
        if let Err(e) = client.send_call_key(group, call, &share, &departed).await {
            eprintln!("natter-client: room {group}: call key not sent: {e}");
        }
        if rotating {
            tokio::time::sleep(KEY_SWITCH_DELAY).await;
            keys.with(|k| k.use_next_epoch());
        }
    }
}

async fn finish(client: &Client, group: GroupId, media: &MediaSession) {
    client.inner.rooms.lock().unwrap().remove(&group);
    media.close().await;
    client.inner.live_calls.fetch_sub(1, Ordering::SeqCst);
}
