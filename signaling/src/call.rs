//! The server's 1:1 call router, sans-IO: fed what devices send (and the time), it returns
//! what to send to which device, and which missed-call notices to store. The messaging
//! gateway is its thin shell; every transition here is a unit test in virtual time.
//!
//! A call rings every online device of the callee. The first device to accept wins and the
//! others hear "answered elsewhere". Decline, cancel, busy, ring timeout (default 45 s) and
//! hangup end it. ICE candidates trickle both ways, also before the answer: the caller's go
//! to every ringing device, a ringing device's are held until it accepts. Two users calling
//! each other at once (glare) keep the call with the smaller id, on both sides alike.
//! Frames go to online devices only; a call that was never answered leaves a missed-call
//! notice in the callee's durable queue.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::{DeviceId, ErrorCode, ProtocolError, UserId};

/// Default time a call rings before it counts as missed.
pub const RING_TIMEOUT_MS: u64 = 45_000;
/// ICE candidates held per ringing device until it accepts.
const MAX_HELD_CANDIDATES: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Media {
    Audio,
    Video,
}

/// Whether an SDP in a `call_update` is an offer or an answer (ICE restart, renegotiation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SdpKind {
    Offer,
    Answer,
}

/// One trickled ICE candidate, as the browser's `RTCIceCandidateInit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mline_index: Option<u16>,
}

/// Why a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The callee declined (on any device).
    Declined,
    /// The callee was already in a call.
    Busy,
    /// The caller gave up before an answer.
    Cancelled,
    /// Nobody answered within the ring timeout.
    Timeout,
    /// One side hung up.
    Hangup,
    /// Both users called each other at once; the other call goes on.
    Glare,
    /// No device of the callee is online.
    Unavailable,
    /// A party's connection to the server went away.
    ConnectionLost,
}

/// What the server tells a device about a call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum CallEvent {
    /// A call for this device to ring.
    Incoming {
        from: UserId,
        from_device: DeviceId,
        media: Media,
        sdp: String,
    },
    /// A callee device is ringing.
    Ringing {
        device: DeviceId,
    },
    /// The callee answered on `device`.
    Accepted {
        device: DeviceId,
        sdp: String,
    },
    /// Another device of this user took the call: stop ringing.
    AnsweredElsewhere,
    Ice {
        from_device: DeviceId,
        candidate: IceCandidate,
    },
    /// A new offer or answer in a running call (ICE restart after a network change).
    Update {
        from_device: DeviceId,
        kind: SdpKind,
        sdp: String,
    },
    Ended {
        reason: EndReason,
    },
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send `event` about `call_id` to `device` (if it is online; never stored).
    Send {
        device: DeviceId,
        call_id: String,
        event: CallEvent,
    },
    /// Store a missed-call notice in every device queue of `user`.
    Missed {
        user: UserId,
        call_id: String,
        from: UserId,
        media: Media,
        at_ms: u64,
    },
}

/// A device and the user it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Party {
    pub user: UserId,
    pub device: DeviceId,
}

#[derive(Debug)]
enum Phase {
    Ringing {
        deadline_ms: u64,
        /// Callee devices the offer went to, with their candidates held until they accept.
        rung: HashMap<DeviceId, Vec<IceCandidate>>,
        ringing_reported: bool,
    },
    Active {
        callee_device: DeviceId,
    },
}

#[derive(Debug)]
struct Call {
    caller: Party,
    callee: UserId,
    media: Media,
    started_ms: u64,
    phase: Phase,
}

/// Every call in progress on this server.
#[derive(Debug)]
pub struct CallRouter {
    ring_timeout_ms: u64,
    calls: HashMap<String, Call>,
    /// The call each user is part of (as caller or callee).
    by_user: HashMap<UserId, BTreeSet<String>>,
    /// Call ids offered in the last [`USED_IDS_KEPT_MS`], oldest first, so that an id is
    /// never offered twice: each unanswered offer leaves a durable missed-call notice, and a
    /// repeated one would leave another.
    used_ids: VecDeque<(u64, String)>,
    used_set: HashSet<String>,
}

/// How long an offered call id stays taken after its offer (longer than any ring timeout;
/// a call that lasts longer keeps its id in use while it runs).
pub const USED_IDS_KEPT_MS: u64 = 3_600_000;
/// Most call ids remembered; past it the oldest are forgotten first. With per-caller offer
/// limits this is many hours of the busiest server's offers.
pub const MAX_USED_IDS: usize = 200_000;

fn not_found(call_id: &str) -> ProtocolError {
    ProtocolError::not_found(format!("no call {call_id:?}"))
}

fn not_yours(call_id: &str) -> ProtocolError {
    ProtocolError::forbidden(format!("this device is not part of call {call_id:?}"))
}

fn send(device: DeviceId, call_id: &str, event: CallEvent) -> Action {
    Action::Send {
        device,
        call_id: call_id.to_owned(),
        event,
    }
}

impl CallRouter {
    pub fn new(ring_timeout_ms: u64) -> CallRouter {
        CallRouter {
            ring_timeout_ms,
            calls: HashMap::new(),
            by_user: HashMap::new(),
            used_ids: VecDeque::new(),
            used_set: HashSet::new(),
        }
    }

    /// Call ids remembered as used.
    pub fn used_ids(&self) -> usize {
        self.used_set.len()
    }

    fn forget_used_ids(&mut self, now_ms: u64) {
        while let Some((at, _)) = self.used_ids.front() {
            let expired = at.saturating_add(USED_IDS_KEPT_MS) <= now_ms;
            if !expired && self.used_ids.len() <= MAX_USED_IDS {
                break;
            }
            let (_, id) = self.used_ids.pop_front().expect("front exists");
            self.used_set.remove(&id);
        }
    }

    /// Calls in progress (ringing or active).
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// When [`CallRouter::tick`] next has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        self.calls
            .values()
            .filter_map(|c| match c.phase {
                Phase::Ringing { deadline_ms, .. } => Some(deadline_ms),
                Phase::Active { .. } => None,
            })
            .min()
    }

    fn in_call(&self, user: UserId) -> bool {
        self.by_user.get(&user).is_some_and(|s| !s.is_empty())
    }

    fn remove(&mut self, call_id: &str) -> Option<Call> {
        let call = self.calls.remove(call_id)?;
        for u in [call.caller.user, call.callee] {
            if let Some(s) = self.by_user.get_mut(&u) {
                s.remove(call_id);
                if s.is_empty() {
                    self.by_user.remove(&u);
                }
            }
        }
        Some(call)
    }

    /// Ends `call_id`, telling every device involved except `except`.
    fn end(
        &mut self,
        call_id: &str,
        reason: EndReason,
        except: Option<DeviceId>,
        now_ms: u64,
    ) -> Vec<Action> {
        let Some(call) = self.remove(call_id) else {
            return Vec::new();
        };
        let ended = || CallEvent::Ended { reason };
        let mut out = Vec::new();
        if Some(call.caller.device) != except {
            out.push(send(call.caller.device, call_id, ended()));
        }
        match call.phase {
            Phase::Ringing { rung, .. } => {
                let mut devices: Vec<DeviceId> = rung.into_keys().collect();
                devices.sort_unstable();
                for d in devices {
                    if Some(d) != except {
                        out.push(send(d, call_id, ended()));
                    }
                }
                // Never answered: the callee should see that someone tried.
                if matches!(
                    reason,
                    EndReason::Timeout | EndReason::Cancelled | EndReason::Unavailable
                ) {
                    out.push(Action::Missed {
                        user: call.callee,
                        call_id: call_id.to_owned(),
                        from: call.caller.user,
                        media: call.media,
                        at_ms: call.started_ms.min(now_ms),
                    });
                }
            }
            Phase::Active { callee_device } => {
                if Some(callee_device) != except {
                    out.push(send(callee_device, call_id, ended()));
                }
            }
        }
        out
    }

    /// `caller` offers a call to `callee`, whose devices online now are `online`. Returns
    /// the actions (the offer to each of those devices) or a refusal for the caller.
    #[allow(clippy::too_many_arguments)]
    pub fn offer(
        &mut self,
        caller: Party,
        call_id: &str,
        callee: UserId,
        media: Media,
        sdp: &str,
        online: &[DeviceId],
        now_ms: u64,
    ) -> Result<Vec<Action>, ProtocolError> {
        if callee == caller.user {
            return Err(ProtocolError::invalid("a user cannot call themselves"));
        }
        self.forget_used_ids(now_ms);
        if self.calls.contains_key(call_id) || self.used_set.contains(call_id) {
            return Err(ProtocolError::new(
                ErrorCode::Conflict,
                format!("call id {call_id:?} is in use or was used; choose another"),
            ));
        }
        self.used_set.insert(call_id.to_owned());
        self.used_ids.push_back((now_ms, call_id.to_owned()));
        // Glare: the callee is already calling this caller.
        let glare = self.by_user.get(&callee).and_then(|ids| {
            ids.iter()
                .find(|id| {
                    let c = &self.calls[*id];
                    c.caller.user == callee
                        && c.callee == caller.user
                        && matches!(c.phase, Phase::Ringing { .. })
                })
                .cloned()
        });
        let mut out = Vec::new();
        if let Some(other) = glare {
            if other.as_str() < call_id {
                // The other call wins: this one ends before it starts.
                out.push(send(
                    caller.device,
                    call_id,
                    CallEvent::Ended {
                        reason: EndReason::Glare,
                    },
                ));
                return Ok(out);
            }
            out.extend(self.end(&other, EndReason::Glare, None, now_ms));
        }
        if self.in_call(caller.user) {
            return Err(ProtocolError::new(
                ErrorCode::Conflict,
                "you are already in a call; hang up first",
            ));
        }
        if self.in_call(callee) {
            out.push(send(
                caller.device,
                call_id,
                CallEvent::Ended {
                    reason: EndReason::Busy,
                },
            ));
            return Ok(out);
        }
        let mut online: Vec<DeviceId> = online.to_vec();
        online.sort_unstable();
        online.dedup();
        if online.is_empty() {
            out.push(send(
                caller.device,
                call_id,
                CallEvent::Ended {
                    reason: EndReason::Unavailable,
                },
            ));
            out.push(Action::Missed {
                user: callee,
                call_id: call_id.to_owned(),
                from: caller.user,
                media,
                at_ms: now_ms,
            });
            return Ok(out);
        }
        for d in &online {
            out.push(send(
                *d,
                call_id,
                CallEvent::Incoming {
                    from: caller.user,
                    from_device: caller.device,
                    media,
                    sdp: sdp.to_owned(),
                },
            ));
        }
        self.calls.insert(
            call_id.to_owned(),
            Call {
                caller,
                callee,
                media,
                started_ms: now_ms,
                phase: Phase::Ringing {
                    // A timeout near u64::MAX means "ring until answered", not an overflow.
                    deadline_ms: now_ms.saturating_add(self.ring_timeout_ms),
                    rung: online.into_iter().map(|d| (d, Vec::new())).collect(),
                    ringing_reported: false,
                },
            },
        );
        for u in [caller.user, callee] {
            self.by_user
                .entry(u)
                .or_default()
                .insert(call_id.to_owned());
        }
        Ok(out)
    }

    /// A callee device reports it is ringing (the caller hears it once).
    pub fn ringing(&mut self, from: Party, call_id: &str) -> Result<Vec<Action>, ProtocolError> {
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or_else(|| not_found(call_id))?;
        match &mut call.phase {
            Phase::Ringing {
                rung,
                ringing_reported,
                ..
            } if rung.contains_key(&from.device) => {
                if std::mem::replace(ringing_reported, true) {
                    return Ok(Vec::new());
                }
                Ok(vec![send(
                    call.caller.device,
                    call_id,
                    CallEvent::Ringing {
                        device: from.device,
                    },
                )])
            }
            Phase::Ringing { .. } => Err(not_yours(call_id)),
            Phase::Active { .. } => Ok(Vec::new()),
        }
    }

    /// A callee device answers. The first answer wins.
    pub fn accept(
        &mut self,
        from: Party,
        call_id: &str,
        sdp: &str,
    ) -> Result<Vec<Action>, ProtocolError> {
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or_else(|| not_found(call_id))?;
        let Phase::Ringing { rung, .. } = &mut call.phase else {
            return Err(if call.caller.device == from.device {
                not_yours(call_id)
            } else {
                ProtocolError::new(ErrorCode::Conflict, "the call was answered elsewhere")
            });
        };
        let Some(held) = rung.remove(&from.device) else {
            return Err(not_yours(call_id));
        };
        let mut others: Vec<DeviceId> = rung.keys().copied().collect();
        others.sort_unstable();
        let caller = call.caller.device;
        call.phase = Phase::Active {
            callee_device: from.device,
        };
        let mut out = vec![send(
            caller,
            call_id,
            CallEvent::Accepted {
                device: from.device,
                sdp: sdp.to_owned(),
            },
        )];
        for candidate in held {
            out.push(send(
                caller,
                call_id,
                CallEvent::Ice {
                    from_device: from.device,
                    candidate,
                },
            ));
        }
        for d in others {
            out.push(send(d, call_id, CallEvent::AnsweredElsewhere));
        }
        Ok(out)
    }

    /// A callee device declines: the call ends everywhere.
    pub fn decline(
        &mut self,
        from: Party,
        call_id: &str,
        now_ms: u64,
    ) -> Result<Vec<Action>, ProtocolError> {
        let call = self.calls.get(call_id).ok_or_else(|| not_found(call_id))?;
        match &call.phase {
            Phase::Ringing { rung, .. } if rung.contains_key(&from.device) => {
                Ok(self.end(call_id, EndReason::Declined, Some(from.device), now_ms))
            }
            _ => Err(not_yours(call_id)),
        }
    }

    /// The caller gives up before an answer.
    pub fn cancel(
        &mut self,
        from: Party,
        call_id: &str,
        now_ms: u64,
    ) -> Result<Vec<Action>, ProtocolError> {
        let call = self.calls.get(call_id).ok_or_else(|| not_found(call_id))?;
        if call.caller.device != from.device {
            return Err(not_yours(call_id));
        }
        if !matches!(call.phase, Phase::Ringing { .. }) {
            return Err(ProtocolError::new(
                ErrorCode::Conflict,
                "the call was answered: hang up instead",
            ));
        }
        Ok(self.end(call_id, EndReason::Cancelled, Some(from.device), now_ms))
    }

    /// Either party ends the call. Before an answer, the caller hanging up cancels and a
    /// callee device hanging up declines.
    pub fn hangup(
        &mut self,
        from: Party,
        call_id: &str,
        now_ms: u64,
    ) -> Result<Vec<Action>, ProtocolError> {
        let call = self.calls.get(call_id).ok_or_else(|| not_found(call_id))?;
        match &call.phase {
            Phase::Ringing { .. } if call.caller.device == from.device => {
                self.cancel(from, call_id, now_ms)
            }
            Phase::Ringing { .. } => self.decline(from, call_id, now_ms),
            Phase::Active { callee_device }
                if *callee_device == from.device || call.caller.device == from.device =>
            {
                Ok(self.end(call_id, EndReason::Hangup, Some(from.device), now_ms))
            }
            Phase::Active { .. } => Err(not_yours(call_id)),
        }
    }

    /// A trickled ICE candidate from either side.
    pub fn ice(
        &mut self,
        from: Party,
        call_id: &str,
        candidate: IceCandidate,
    ) -> Result<Vec<Action>, ProtocolError> {
        let call = self
            .calls
            .get_mut(call_id)
            .ok_or_else(|| not_found(call_id))?;
        let ice = |candidate| CallEvent::Ice {
            from_device: from.device,
            candidate,
        };
        match &mut call.phase {
            Phase::Ringing { rung, .. } if call.caller.device == from.device => {
                let mut devices: Vec<DeviceId> = rung.keys().copied().collect();
                devices.sort_unstable();
                Ok(devices
                    .into_iter()
                    .map(|d| send(d, call_id, ice(candidate.clone())))
                    .collect())
            }
            Phase::Ringing { rung, .. } => {
                let held = rung
                    .get_mut(&from.device)
                    .ok_or_else(|| not_yours(call_id))?;
                if held.len() >= MAX_HELD_CANDIDATES {
                    return Err(ProtocolError::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "at most {MAX_HELD_CANDIDATES} candidates are held before an answer"
                        ),
                    ));
                }
                held.push(candidate);
                Ok(Vec::new())
            }
            Phase::Active { callee_device } => {
                let to = if call.caller.device == from.device {
                    *callee_device
                } else if *callee_device == from.device {
                    call.caller.device
                } else {
                    return Err(not_yours(call_id));
                };
                Ok(vec![send(to, call_id, ice(candidate))])
            }
        }
    }

    /// A new offer or answer inside an answered call (ICE restart).
    pub fn update(
        &mut self,
        from: Party,
        call_id: &str,
        kind: SdpKind,
        sdp: &str,
    ) -> Result<Vec<Action>, ProtocolError> {
        let call = self.calls.get(call_id).ok_or_else(|| not_found(call_id))?;
        let Phase::Active { callee_device } = call.phase else {
            return Err(ProtocolError::new(
                ErrorCode::Conflict,
                "the call is not answered yet",
            ));
        };
        let to = if call.caller.device == from.device {
            callee_device
        } else if callee_device == from.device {
            call.caller.device
        } else {
            return Err(not_yours(call_id));
        };
        Ok(vec![send(
            to,
            call_id,
            CallEvent::Update {
                from_device: from.device,
                kind,
                sdp: sdp.to_owned(),
            },
        )])
    }

    /// A device's socket closed: calls it was part of end (a ringing callee device just
    /// stops ringing, unless it was the last one).
    pub fn disconnected(&mut self, device: DeviceId, now_ms: u64) -> Vec<Action> {
        let mut ids: Vec<String> = self.calls.keys().cloned().collect();
        ids.sort();
        let mut out = Vec::new();
        for id in ids {
            let call = self.calls.get_mut(&id).expect("listed");
            let gone = match &mut call.phase {
                _ if call.caller.device == device => true,
                Phase::Active { callee_device } => *callee_device == device,
                Phase::Ringing { rung, .. } => rung.remove(&device).is_some() && rung.is_empty(),
            };
            if gone {
                let reason = if matches!(call.phase, Phase::Ringing { .. })
                    && call.caller.device == device
                {
                    EndReason::Cancelled
                } else if matches!(call.phase, Phase::Ringing { .. }) {
                    EndReason::Unavailable
                } else {
                    EndReason::ConnectionLost
                };
                out.extend(self.end(&id, reason, Some(device), now_ms));
            }
        }
        out
    }

    /// Ends calls whose ring timeout has passed.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        self.forget_used_ids(now_ms);
        let mut due: Vec<String> = self
            .calls
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Ringing { deadline_ms, .. } if deadline_ms <= now_ms))
            .map(|(id, _)| id.clone())
            .collect();
        due.sort();
        due.into_iter()
            .flat_map(|id| self.end(&id, EndReason::Timeout, None, now_ms))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Party = Party {
        user: UserId(1),
        device: DeviceId(10),
    };
    const BOB: Party = Party {
        user: UserId(2),
        device: DeviceId(20),
    };
    const BOB2: Party = Party {
        user: UserId(2),
        device: DeviceId(21),
    };
    const CAROL: Party = Party {
        user: UserId(3),
        device: DeviceId(30),
    };

    fn router() -> CallRouter {
        CallRouter::new(RING_TIMEOUT_MS)
    }

    fn ended(device: DeviceId, id: &str, reason: EndReason) -> Action {
        send(device, id, CallEvent::Ended { reason })
    }

    fn cand(s: &str) -> IceCandidate {
        IceCandidate {
            candidate: s.into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        }
    }

    #[test]
    fn a_call_id_is_offered_once_so_an_offline_callee_gets_one_missed_call() {
        let mut r = router();
        let offline =
            |r: &mut CallRouter, at| r.offer(ALICE, "c1", BOB.user, Media::Audio, "sdp", &[], at);
        let first = offline(&mut r, 0).unwrap();
        let missed = first
            .iter()
            .filter(|a| matches!(a, Action::Missed { .. }))
            .count();
        assert_eq!(missed, 1);
        for at in [1, 1_000, USED_IDS_KEPT_MS - 1] {
            let e = offline(&mut r, at).unwrap_err();
            assert_eq!(e.code, ErrorCode::Conflict, "repeat at {at} ms");
        }
        // Forgotten once its time is up, and the table shrinks with it.
        assert_eq!(r.used_ids(), 1);
        r.tick(USED_IDS_KEPT_MS);
        assert_eq!(r.used_ids(), 0);
        assert!(offline(&mut r, USED_IDS_KEPT_MS).is_ok());
    }

    #[test]
    fn remembered_call_ids_are_capped() {
        let mut r = router();
        for i in 0..MAX_USED_IDS + 10 {
            let id = format!("c{i}");
            r.offer(ALICE, &id, BOB.user, Media::Audio, "sdp", &[], 5)
                .unwrap();
        }
        assert!(r.used_ids() <= MAX_USED_IDS + 1);
    }

    /// Alice calls Bob, who has two devices online.
    fn ringing(r: &mut CallRouter) {
        let out = r
            .offer(
                ALICE,
                "c1",
                BOB.user,
                Media::Audio,
                "offer-sdp",
                &[BOB.device, BOB2.device],
                0,
            )
            .unwrap();
        let incoming = |d| {
            send(
                d,
                "c1",
                CallEvent::Incoming {
                    from: ALICE.user,
                    from_device: ALICE.device,
                    media: Media::Audio,
                    sdp: "offer-sdp".into(),
                },
            )
        };
        assert_eq!(out, vec![incoming(BOB.device), incoming(BOB2.device)]);
    }

    #[test]
    fn first_accept_wins_and_the_other_device_hears_answered_elsewhere() {
        let mut r = router();
        ringing(&mut r);
        assert_eq!(
            r.ringing(BOB2, "c1").unwrap(),
            vec![send(
                ALICE.device,
                "c1",
                CallEvent::Ringing {
                    device: BOB2.device
                }
            )]
        );
        assert!(r.ringing(BOB, "c1").unwrap().is_empty(), "reported once");
        let out = r.accept(BOB, "c1", "answer-sdp").unwrap();
        assert_eq!(
            out,
            vec![
                send(
                    ALICE.device,
                    "c1",
                    CallEvent::Accepted {
                        device: BOB.device,
                        sdp: "answer-sdp".into()
                    }
                ),
                send(BOB2.device, "c1", CallEvent::AnsweredElsewhere),
            ]
        );
        let late = r.accept(BOB2, "c1", "x").unwrap_err();
        assert_eq!(late.code, ErrorCode::Conflict);
        assert_eq!(
            r.next_deadline(),
            None,
            "answered calls have no ring deadline"
        );
    }

    #[test]
    fn decline_ends_the_call_everywhere_without_a_missed_notice() {
        let mut r = router();
        ringing(&mut r);
        let out = r.decline(BOB2, "c1", 5).unwrap();
        assert_eq!(
            out,
            vec![
                ended(ALICE.device, "c1", EndReason::Declined),
                ended(BOB.device, "c1", EndReason::Declined),
            ]
        );
        assert!(r.is_empty());
    }

    #[test]
    fn cancel_before_an_answer_leaves_a_missed_call() {
        let mut r = router();
        ringing(&mut r);
        let out = r.cancel(ALICE, "c1", 3_000).unwrap();
        assert_eq!(
            out,
            vec![
                ended(BOB.device, "c1", EndReason::Cancelled),
                ended(BOB2.device, "c1", EndReason::Cancelled),
                Action::Missed {
                    user: BOB.user,
                    call_id: "c1".into(),
                    from: ALICE.user,
                    media: Media::Audio,
                    at_ms: 0
                },
            ]
        );
        assert!(r.is_empty());
    }

    #[test]
    fn ring_timeout_in_virtual_time_ends_the_call_and_leaves_a_missed_call() {
        let mut r = router();
        ringing(&mut r);
        assert_eq!(r.next_deadline(), Some(RING_TIMEOUT_MS));
        assert!(r.tick(RING_TIMEOUT_MS - 1).is_empty());
        let out = r.tick(RING_TIMEOUT_MS);
        assert_eq!(out.len(), 4);
        assert_eq!(out[0], ended(ALICE.device, "c1", EndReason::Timeout));
        assert!(matches!(out[3], Action::Missed { user, .. } if user == BOB.user));
        assert!(r.is_empty());
        assert_eq!(r.next_deadline(), None);
    }

    #[test]
    fn a_callee_in_a_call_is_busy() {
        let mut r = router();
        ringing(&mut r);
        r.accept(BOB, "c1", "a").unwrap();
        let out = r
            .offer(
                CAROL,
                "c2",
                BOB.user,
                Media::Video,
                "o",
                &[BOB.device, BOB2.device],
                1,
            )
            .unwrap();
        assert_eq!(out, vec![ended(CAROL.device, "c2", EndReason::Busy)]);
        assert_eq!(r.len(), 1, "nothing new started");
        // Alice (in a call) cannot start another.
        let e = r
            .offer(
                ALICE,
                "c3",
                CAROL.user,
                Media::Audio,
                "o",
                &[CAROL.device],
                1,
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
    }

    #[test]
    fn hangup_from_either_side_ends_an_answered_call() {
        for (who, other) in [(ALICE, BOB), (BOB, ALICE)] {
            let mut r = router();
            ringing(&mut r);
            r.accept(BOB, "c1", "a").unwrap();
            assert_eq!(
                r.hangup(CAROL, "c1", 9).unwrap_err().code,
                ErrorCode::Forbidden
            );
            assert_eq!(
                r.hangup(BOB2, "c1", 9).unwrap_err().code,
                ErrorCode::Forbidden
            );
            let out = r.hangup(who, "c1", 10).unwrap();
            assert_eq!(out, vec![ended(other.device, "c1", EndReason::Hangup)]);
            assert!(r.is_empty());
            assert_eq!(
                r.hangup(who, "c1", 11).unwrap_err().code,
                ErrorCode::NotFound
            );
        }
    }

    #[test]
    fn hangup_while_ringing_is_cancel_or_decline() {
        let mut r = router();
        ringing(&mut r);
        let out = r.hangup(ALICE, "c1", 1).unwrap();
        assert!(out.contains(&ended(BOB.device, "c1", EndReason::Cancelled)));
        let mut r = router();
        ringing(&mut r);
        let out = r.hangup(BOB, "c1", 1).unwrap();
        assert_eq!(out[0], ended(ALICE.device, "c1", EndReason::Declined));
    }

    #[test]
    fn ice_trickles_both_ways_and_callee_candidates_wait_for_the_answer() {
        let mut r = router();
        ringing(&mut r);
        // The caller's candidates go to every ringing device at once.
        let out = r.ice(ALICE, "c1", cand("a1")).unwrap();
        assert_eq!(out.len(), 2);
        // A ringing device's candidates are held …
        assert!(r.ice(BOB, "c1", cand("b1")).unwrap().is_empty());
        assert!(r.ice(BOB, "c1", cand("b2")).unwrap().is_empty());
        assert!(r.ice(BOB2, "c1", cand("x")).unwrap().is_empty());
        // … and follow its answer, in order; the other device's are dropped.
        let out = r.accept(BOB, "c1", "ans").unwrap();
        let ice_to_alice: Vec<&str> = out
            .iter()
            .filter_map(|a| match a {
                Action::Send {
                    device,
                    event: CallEvent::Ice { candidate, .. },
                    ..
                } if *device == ALICE.device => Some(candidate.candidate.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(ice_to_alice, ["b1", "b2"]);
        assert_eq!(
            r.ice(BOB, "c1", cand("b3")).unwrap(),
            vec![send(
                ALICE.device,
                "c1",
                CallEvent::Ice {
                    from_device: BOB.device,
                    candidate: cand("b3")
                }
            )]
        );
        assert_eq!(
            r.ice(ALICE, "c1", cand("a2")).unwrap(),
            vec![send(
                BOB.device,
                "c1",
                CallEvent::Ice {
                    from_device: ALICE.device,
                    candidate: cand("a2")
                }
            )]
        );
        // Third parties and the losing device are refused.
        assert_eq!(
            r.ice(CAROL, "c1", cand("z")).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert_eq!(
            r.ice(BOB2, "c1", cand("z")).unwrap_err().code,
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn held_candidates_are_bounded() {
        let mut r = router();
        ringing(&mut r);
        for i in 0..MAX_HELD_CANDIDATES {
            r.ice(BOB, "c1", cand(&i.to_string())).unwrap();
        }
        let e = r.ice(BOB, "c1", cand("one too many")).unwrap_err();
        assert_eq!(e.code, ErrorCode::LimitExceeded);
    }

    #[test]
    fn ice_restart_updates_pass_between_the_parties_of_an_answered_call() {
        let mut r = router();
        ringing(&mut r);
        assert_eq!(
            r.update(ALICE, "c1", SdpKind::Offer, "o2")
                .unwrap_err()
                .code,
            ErrorCode::Conflict,
            "not before the answer"
        );
        r.accept(BOB2, "c1", "a").unwrap();
        assert_eq!(
            r.update(ALICE, "c1", SdpKind::Offer, "o2").unwrap(),
            vec![send(
                BOB2.device,
                "c1",
                CallEvent::Update {
                    from_device: ALICE.device,
                    kind: SdpKind::Offer,
                    sdp: "o2".into()
                }
            )]
        );
        assert_eq!(
            r.update(BOB2, "c1", SdpKind::Answer, "a2").unwrap(),
            vec![send(
                ALICE.device,
                "c1",
                CallEvent::Update {
                    from_device: BOB2.device,
                    kind: SdpKind::Answer,
                    sdp: "a2".into()
                }
            )]
        );
        assert_eq!(
            r.update(BOB, "c1", SdpKind::Answer, "x").unwrap_err().code,
            ErrorCode::Forbidden
        );
    }

    #[test]
    fn glare_keeps_the_call_with_the_smaller_id_whichever_arrives_first() {
        for order in [["a-call", "b-call"], ["b-call", "a-call"]] {
            let mut r = router();
            // Alice's call id is "a-call", Bob's "b-call"; they arrive in either order.
            for id in order {
                let (from, to) = if id == "a-call" {
                    (ALICE, BOB)
                } else {
                    (BOB, ALICE)
                };
                let out = r
                    .offer(from, id, to.user, Media::Audio, "o", &[to.device], 0)
                    .unwrap();
                if id == "b-call" && order[0] == "a-call" {
                    assert_eq!(out, vec![ended(BOB.device, "b-call", EndReason::Glare)]);
                }
                if id == "a-call" && order[0] == "b-call" {
                    // Bob's ringing call is ended on both sides, then Alice's rings.
                    assert!(out.contains(&ended(BOB.device, "b-call", EndReason::Glare)));
                    assert!(out.contains(&ended(ALICE.device, "b-call", EndReason::Glare)));
                    assert!(out.iter().any(|a| matches!(a,
                        Action::Send { device, call_id, event: CallEvent::Incoming { .. } }
                        if *device == BOB.device && call_id == "a-call")));
                }
            }
            assert_eq!(r.len(), 1);
            r.accept(BOB, "a-call", "ans").unwrap();
            assert_eq!(
                r.accept(ALICE, "b-call", "x").unwrap_err().code,
                ErrorCode::NotFound
            );
        }
    }

    #[test]
    fn nobody_online_is_unavailable_with_a_missed_call() {
        let mut r = router();
        let out = r
            .offer(ALICE, "c1", BOB.user, Media::Video, "o", &[], 7)
            .unwrap();
        assert_eq!(out[0], ended(ALICE.device, "c1", EndReason::Unavailable));
        assert!(
            matches!(out[1], Action::Missed { user, media: Media::Video, at_ms: 7, .. } if user == BOB.user)
        );
        assert!(r.is_empty());
    }

    #[test]
    fn bad_input_is_refused_and_changes_nothing() {
        let mut r = router();
        assert_eq!(
            r.offer(
                ALICE,
                "c1",
                ALICE.user,
                Media::Audio,
                "o",
                &[ALICE.device],
                0
            )
            .unwrap_err()
            .code,
            ErrorCode::Invalid
        );
        ringing(&mut r);
        assert_eq!(
            r.offer(CAROL, "c1", BOB.user, Media::Audio, "o", &[BOB.device], 0)
                .unwrap_err()
                .code,
            ErrorCode::Conflict,
            "call ids are unique"
        );
        assert_eq!(
            r.accept(BOB, "nope", "a").unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            r.accept(CAROL, "c1", "a").unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert_eq!(
            r.accept(ALICE, "c1", "a").unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert_eq!(
            r.decline(CAROL, "c1", 0).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert_eq!(
            r.cancel(BOB, "c1", 0).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert_eq!(
            r.ringing(CAROL, "c1").unwrap_err().code,
            ErrorCode::Forbidden
        );
        // Still ringing, untouched.
        assert_eq!(r.len(), 1);
        assert!(r.accept(BOB, "c1", "a").is_ok());
    }

    #[test]
    fn disconnects_end_or_narrow_calls() {
        // The caller's socket goes: like a cancel.
        let mut r = router();
        ringing(&mut r);
        let out = r.disconnected(ALICE.device, 1);
        assert!(out.contains(&ended(BOB.device, "c1", EndReason::Cancelled)));
        assert!(r.is_empty());
        // One ringing device goes: the other keeps ringing; the last one going ends it.
        let mut r = router();
        ringing(&mut r);
        assert!(r.disconnected(BOB.device, 1).is_empty());
        assert_eq!(r.len(), 1);
        let out = r.disconnected(BOB2.device, 2);
        assert_eq!(out[0], ended(ALICE.device, "c1", EndReason::Unavailable));
        // An answered call loses a party.
        let mut r = router();
        ringing(&mut r);
        r.accept(BOB, "c1", "a").unwrap();
        assert!(r.disconnected(BOB2.device, 1).is_empty(), "not in the call");
        assert_eq!(
            r.disconnected(BOB.device, 2),
            vec![ended(ALICE.device, "c1", EndReason::ConnectionLost)]
        );
    }
}
