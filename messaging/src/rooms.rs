//! Group calls: the thin shell around the sans-IO [`RoomRouter`]. Media is the SFU's,
//! reached through an [`SfuLink`] (in-process in the all-in-one server); the gateway checks
//! membership, mints the room token the SFU verifies, relays the SFU's renegotiation
//! offers to the device they are for, and keeps the roster.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use natter_signaling::call::{Media, Party};
use natter_signaling::room::{RoomAction, RoomEvent, RoomRouter, RoomTrack, StateChange};
use natter_signaling::{ErrorCode, GroupId, ProtocolError, ServerFrame, room_token};
use tokio::sync::oneshot;

use crate::calls::MissedNotice;
use crate::state::SharedState;
use crate::store::{Core, now_ms};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// How long a room token stays valid: it is used once, right after it is minted.
pub const ROOM_TOKEN_TTL_S: u64 = 60;

/// The SFU as the gateway uses it. Errors are protocol errors for the client (a full room
/// is `limit_exceeded`, an SDP it cannot use `invalid`, an SFU that is down `unavailable`).
pub trait SfuLink: Send + Sync + 'static {
    /// Admits the device the token names with its offer: the SFU's participant id and
    /// answer.
    fn join(&self, token: String, offer: String)
    -> BoxFuture<Result<(u64, String), ProtocolError>>;
    /// The participant's answer to the SFU's last offer.
    fn answer(&self, participant: u64, sdp: String) -> BoxFuture<Result<(), ProtocolError>>;
    fn leave(&self, participant: u64) -> BoxFuture<()>;
}

/// What the SFU tells the gateway on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SfuNotice {
    /// Send this offer to the participant; `tracks` are (mid, publishing participant, kind).
    Offer {
        participant: u64,
        sdp: String,
        tracks: Vec<(String, u64, Media)>,
    },
    /// The SFU dropped the participant (its connection died).
    Left { participant: u64, reason: String },
    /// Who speaks now in `participant`'s room.
    Speaker { participant: u64, speaker: u64 },
    /// The simulcast layers of `participant`'s track `mid` that anyone receives.
    Layers {
        participant: u64,
        mid: String,
        rids: Vec<String>,
    },
}

/// The SFU, and the secret its room tokens are signed with.
pub struct SfuAccess {
    pub link: Arc<dyn SfuLink>,
    pub token_secret: Vec<u8>,
}

/// Notices held for participants the router does not know yet: the SFU's first offer to a
/// newcomer can overtake the answer to its join. Bounded; a join takes what is held for it,
/// and what nobody took is dropped after [`EARLY_NOTICE_TTL`] (an offer that raced a leave).
const EARLY_NOTICES: usize = 1024;
const EARLY_NOTICE_TTL: Duration = Duration::from_secs(10);

pub struct Rooms {
    router: Mutex<RoomRouter>,
    sfu: Option<SfuAccess>,
    early: Mutex<HashMap<u64, (Instant, Vec<SfuNotice>)>>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs `job` in storage and waits for it.
async fn stored<R, F>(st: &SharedState, job: F) -> Result<R, ProtocolError>
where
    R: Send + 'static,
    F: FnOnce(&mut Core) -> Result<R, ProtocolError> + Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    st.store.try_submit(job, move |r| {
        let _ = tx.send(r);
    })?;
    rx.await
        .map_err(|_| ProtocolError::new(ErrorCode::Unavailable, "storage stopped"))?
}

impl Rooms {
    pub fn new(sfu: Option<SfuAccess>) -> Rooms {
        Rooms {
            router: Mutex::new(RoomRouter::new()),
            sfu,
            early: Mutex::new(HashMap::new()),
        }
    }

    fn sfu(&self) -> Result<&SfuAccess, ProtocolError> {
        self.sfu.as_ref().ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::Unavailable,
                "this server runs no SFU: group calls are off",
            )
        })
    }

    /// `room_join`: membership, then the SFU, then the roster.
    pub async fn join(
        &self,
        st: &SharedState,
        id: u64,
        from: Party,
        group: GroupId,
        media: Media,
        sdp: String,
    ) -> Result<ServerFrame, ProtocolError> {
        let sfu = self.sfu()?;
        self.router.lock().unwrap().check_join(from, group)?;
        let members = stored(st, move |core| core.require_member(group, from.user)).await?;
        let room = format!("g{}", group.0);
        let token = room_token::mint(
            &sfu.token_secret,
            &room,
            from.device.0,
            unix_now(),
            ROOM_TOKEN_TTL_S,
        );
        let (participant, answer) = sfu.link.join(token, sdp).await?;
        let users: Vec<_> = members.iter().map(|m| m.user).collect();
        let online = |u| st.hub.online_devices(u);
        let joined = self.router.lock().unwrap().joined(
            from,
            group,
            participant,
            media,
            &users,
            &online,
            now_ms(),
        );
        match joined {
            Ok((actions, roster)) => {
                st.metrics.room_joins.inc();
                let call_id = self.call_id(group);
                self.apply(st, actions);
                let early = self.early.lock().unwrap().remove(&participant);
                for n in early.into_iter().flat_map(|(_, held)| held) {
                    self.notice(st, n);
                }
                Ok(ServerFrame::RoomJoined {
                    id,
                    group,
                    call_id,
                    sdp: answer,
                    roster,
                })
            }
            // A second join raced this one past the first check.
            Err(e) => {
                self.early.lock().unwrap().remove(&participant);
                sfu.link.leave(participant).await;
                Err(e)
            }
        }
    }

    fn call_id(&self, group: GroupId) -> String {
        self.router
            .lock()
            .unwrap()
            .call_id(group)
            .unwrap_or_default()
    }

    /// `room_answer`.
    pub async fn answer(
        &self,
        from: Party,
        group: GroupId,
        sdp: String,
    ) -> Result<(), ProtocolError> {
        let sfu = self.sfu()?;
        let participant = self.router.lock().unwrap().sfu_id(from, group)?;
        sfu.link.answer(participant, sdp).await
    }

    /// `room_leave`.
    pub fn leave(
        &self,
        st: &SharedState,
        from: Party,
        group: GroupId,
    ) -> Result<(), ProtocolError> {
        let actions = {
            let mut r = self.router.lock().unwrap();
            r.sfu_id(from, group)?;
            r.leave(from.device, now_ms())
        };
        self.apply(st, actions);
        Ok(())
    }

    /// `room_state`.
    pub fn set_state(
        &self,
        st: &SharedState,
        from: Party,
        group: GroupId,
        change: StateChange,
    ) -> Result<(), ProtocolError> {
        let actions = self.router.lock().unwrap().set_state(from, group, change)?;
        self.apply(st, actions);
        Ok(())
    }

    /// A device's live connection ended: it leaves its call.
    pub fn disconnected(&self, st: &SharedState, from: Party) {
        let actions = self.router.lock().unwrap().leave(from.device, now_ms());
        self.apply(st, actions);
    }

    /// Users left or were removed from `group`: their devices leave its call. (Callable from
    /// the storage thread: nothing here waits.)
    pub fn members_removed(
        &self,
        st: &SharedState,
        group: GroupId,
        users: &[natter_signaling::UserId],
    ) {
        let mut actions = Vec::new();
        {
            let mut r = self.router.lock().unwrap();
            for u in users {
                actions.extend(r.member_removed(group, *u, now_ms()));
            }
        }
        self.apply(st, actions);
    }

    /// Keeps an offer for a participant whose join has not finished; false if it is known.
    /// (A `left` for an unknown participant is for one that already left: dropped.)
    fn hold_early(&self, n: &SfuNotice) -> bool {
        let participant = match n {
            SfuNotice::Offer { participant, .. }
            | SfuNotice::Speaker { participant, .. }
            | SfuNotice::Layers { participant, .. } => *participant,
            SfuNotice::Left { .. } => return false,
        };
        if self.router.lock().unwrap().by_sfu(participant).is_some() {
            return false;
        }
        let now = Instant::now();
        let mut early = self.early.lock().unwrap();
        early.retain(|_, (at, _)| now.duration_since(*at) < EARLY_NOTICE_TTL);
        if early.len() < EARLY_NOTICES || early.contains_key(&participant) {
            let (_, held) = early
                .entry(participant)
                .or_insert_with(|| (now, Vec::new()));
            if held.len() < 16 {
                held.push(n.clone());
            }
        }
        true
    }

    /// Something the SFU said.
    pub fn notice(&self, st: &SharedState, n: SfuNotice) {
        if self.hold_early(&n) {
            return;
        }
        match n {
            SfuNotice::Offer {
                participant,
                sdp,
                tracks,
            } => {
                let r = self.router.lock().unwrap();
                let Some((group, to)) = r.by_sfu(participant) else {
                    return;
                };
                let tracks = tracks
                    .into_iter()
                    .filter_map(|(mid, publisher, kind)| {
                        let (_, p) = r.by_sfu(publisher)?;
                        Some(RoomTrack {
                            mid,
                            user: p.user,
                            device: p.device,
                            kind,
                        })
                    })
                    .collect();
                drop(r);
                let event = RoomEvent::Offer { sdp, tracks };
                st.hub
                    .send_to_device(to.device, Arc::new(ServerFrame::Room { group, event }));
            }
            SfuNotice::Speaker {
                participant,
                speaker,
            } => {
                let r = self.router.lock().unwrap();
                let (Some((group, to)), Some((_, who))) =
                    (r.by_sfu(participant), r.by_sfu(speaker))
                else {
                    return;
                };
                drop(r);
                let event = RoomEvent::Speaker {
                    user: who.user,
                    device: who.device,
                };
                st.hub
                    .send_to_device(to.device, Arc::new(ServerFrame::Room { group, event }));
            }
            SfuNotice::Layers {
                participant,
                mid,
                rids,
            } => {
                let Some((group, to)) = self.router.lock().unwrap().by_sfu(participant) else {
                    return;
                };
                let event = RoomEvent::Layers { mid, rids };
                st.hub
                    .send_to_device(to.device, Arc::new(ServerFrame::Room { group, event }));
            }
            SfuNotice::Left {
                participant,
                reason,
            } => {
                let actions = self
                    .router
                    .lock()
                    .unwrap()
                    .sfu_left(participant, &reason, now_ms());
                self.apply(st, actions);
            }
        }
    }

    /// (rooms with a call, devices in one), for `/metrics`.
    pub fn counts(&self) -> (usize, usize) {
        let r = self.router.lock().unwrap();
        (r.rooms(), r.participants())
    }

    fn apply(&self, st: &SharedState, actions: Vec<RoomAction>) {
        let mut missed = Vec::new();
        for a in actions {
            match a {
                RoomAction::Send {
                    device,
                    group,
                    event,
                } => {
                    st.hub
                        .send_to_device(device, Arc::new(ServerFrame::Room { group, event }));
                }
                RoomAction::Missed {
                    user,
                    call_id,
                    from,
                    media,
                    at_ms,
                } => missed.push(MissedNotice::new(user, call_id, from, media, at_ms)),
                RoomAction::SfuLeave { participant } => {
                    // This may run on the storage thread: the server's runtime does it.
                    if let Some(sfu) = &self.sfu {
                        st.runtime.spawn(sfu.link.leave(participant));
                    }
                }
            }
        }
        crate::calls::store_missed(st, missed);
    }
}
