//! Property tests of the sans-IO call router (`natter_signaling::call::CallRouter`).
//!
//! Random sequences of offers, ringing, accepts, declines, cancels, hangups, ICE candidates,
//! updates, disconnects and waiting (ticks), from four users with two devices each, are fed
//! to the router while an observer keeps what the router's documented contract says each
//! call is (who called, which devices ring, who answered). After every step it checks:
//!
//! * a user (so a device) is in at most one call, and the router holds as many calls as
//!   the observer;
//! * every event about a call goes only to a device of that call; nothing is said about a
//!   call that does not exist; a refused request says nothing and changes nothing;
//! * a call ends exactly once, with one reason, told to every party still in it but the
//!   one that ended it; a missed-call notice is stored exactly for calls that were never
//!   answered and ended by timeout, cancel or nobody left to ring;
//! * the first accept wins, the other ringing devices hear "answered elsewhere", and
//!   candidates a ringing device sent follow its answer in order;
//! * a call rings no longer than the ring timeout, and `next_deadline` says when it ends;
//! * a call id offered once is refused (`conflict`) if offered again within the hour;
//! * once every device has disconnected, the router holds nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use natter_signaling::call::{
    Action, CallEvent, CallRouter, EndReason, IceCandidate, Media, Party, SdpKind, USED_IDS_KEPT_MS,
};
use natter_signaling::{DeviceId, ErrorCode, UserId};
use proptest::prelude::*;

const RING_MS: u64 = 10_000;
const USERS: u64 = 4;
const DEVICES_PER_USER: u64 = 2;
/// Candidates a ringing device may send before it answers (the router's documented bound).
const MAX_HELD_CANDIDATES: usize = 64;

fn party(i: usize) -> Party {
    let i = i as u64 % (USERS * DEVICES_PER_USER);
    let user = i / DEVICES_PER_USER + 1;
    Party {
        user: UserId(user),
        device: DeviceId(user * 10 + i % DEVICES_PER_USER),
    }
}

/// Few call slots, so that calls collide and race (glare compares ids). An offered id may not
/// be offered again (for `USED_IDS_KEPT_MS`), so each slot takes a fresh id for its next
/// offer — except when the op asks to reuse the old one, which must be refused.
fn call_id(c: usize, generation: u32) -> String {
    format!("c{}-{generation}", c % 4)
}

/// The `online` bits of an offer op that ask to offer the slot's used id again (one op in eight).
const REUSE: u8 = 0xE0;

#[derive(Debug, Clone)]
enum Op {
    Offer {
        from: usize,
        to: usize,
        call: usize,
        online: u8,
        video: bool,
    },
    Ringing {
        from: usize,
        call: usize,
    },
    Accept {
        from: usize,
        call: usize,
    },
    Decline {
        from: usize,
        call: usize,
    },
    Cancel {
        from: usize,
        call: usize,
    },
    Hangup {
        from: usize,
        call: usize,
    },
    Ice {
        from: usize,
        call: usize,
    },
    Update {
        from: usize,
        call: usize,
        offer: bool,
    },
    Disconnect {
        device: usize,
    },
    Wait {
        ms: u64,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let dev = 0..(USERS * DEVICES_PER_USER) as usize;
    let user = 0..USERS as usize;
    let call = 0..4usize;
    prop_oneof![
        4 => (dev.clone(), user, call.clone(), any::<u8>(), any::<bool>()).prop_map(
            |(from, to, call, online, video)| Op::Offer { from, to, call, online, video }
        ),
        2 => (dev.clone(), call.clone()).prop_map(|(from, call)| Op::Ringing { from, call }),
        3 => (dev.clone(), call.clone()).prop_map(|(from, call)| Op::Accept { from, call }),
        1 => (dev.clone(), call.clone()).prop_map(|(from, call)| Op::Decline { from, call }),
        1 => (dev.clone(), call.clone()).prop_map(|(from, call)| Op::Cancel { from, call }),
        2 => (dev.clone(), call.clone()).prop_map(|(from, call)| Op::Hangup { from, call }),
        3 => (dev.clone(), call.clone()).prop_map(|(from, call)| Op::Ice { from, call }),
        1 => (dev.clone(), call.clone(), any::<bool>())
            .prop_map(|(from, call, offer)| Op::Update { from, call, offer }),
        1 => dev.prop_map(|device| Op::Disconnect { device }),
        2 => (0..RING_MS * 3 / 2).prop_map(|ms| Op::Wait { ms }),
    ]
}

/// What the contract says one call in progress is.
#[derive(Debug, Clone)]
struct Call {
    caller: Party,
    callee: UserId,
    media: Media,
    started_ms: u64,
    /// Callee devices still ringing, with the candidates each sent so far.
    rung: BTreeMap<DeviceId, Vec<IceCandidate>>,
    answered_by: Option<DeviceId>,
    ringing_reported: bool,
}

impl Call {
    fn parties(&self) -> BTreeSet<DeviceId> {
        let mut p: BTreeSet<DeviceId> = self.rung.keys().copied().collect();
        p.insert(self.caller.device);
        p.extend(self.answered_by);
        p
    }

    fn other_party(&self, device: DeviceId) -> Option<DeviceId> {
        let callee = self.answered_by?;
        if device == self.caller.device {
            Some(callee)
        } else if device == callee {
            Some(self.caller.device)
        } else {
            None
        }
    }
}

struct World {
    router: CallRouter,
    calls: HashMap<String, Call>,
    now: u64,
    candidates: u64,
    /// Each call slot's current id generation.
    generations: HashMap<usize, u32>,
    /// Ids offered so far, with when.
    used: HashMap<String, u64>,
}

fn sends(actions: &[Action]) -> Vec<(DeviceId, &str, &CallEvent)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send {
                device,
                call_id,
                event,
            } => Some((*device, call_id.as_str(), event)),
            Action::Missed { .. } => None,
        })
        .collect()
}

fn missed(actions: &[Action]) -> Vec<&Action> {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Missed { .. }))
        .collect()
}

impl World {
    fn new() -> World {
        World {
            router: CallRouter::new(RING_MS),
            calls: HashMap::new(),
            now: 0,
            candidates: 0,
            generations: HashMap::new(),
            used: HashMap::new(),
        }
    }

    /// The id a call slot stands for now.
    fn id(&self, call: usize) -> String {
        call_id(
            call,
            self.generations.get(&(call % 4)).copied().unwrap_or(0),
        )
    }

    /// The id an offer in `call`'s slot uses: a fresh one once the current one was offered,
    /// unless the op asks to reuse it.
    fn offer_id(&mut self, call: usize, online: u8) -> String {
        let id = self.id(call);
        if self.used.contains_key(&id) && online & REUSE != REUSE {
            *self.generations.entry(call % 4).or_default() += 1;
            return self.id(call);
        }
        id
    }

    fn call_of(&self, user: UserId) -> Option<&str> {
        self.calls
            .iter()
            .find(|(_, c)| c.caller.user == user || c.callee == user)
            .map(|(id, _)| id.as_str())
    }

    /// Checks the `Ended` events and missed-call notices among `actions`: the calls they end
    /// must exist, end once with one reason, reach every party but `except`, and leave a
    /// missed-call notice exactly when never answered and ended by timeout, cancel or
    /// nobody left ringing. Removes those calls; returns which ended, and why.
    fn take_endings(
        &mut self,
        actions: &[Action],
        except: Option<DeviceId>,
    ) -> BTreeMap<String, EndReason> {
        let mut ended: BTreeMap<String, (EndReason, Vec<DeviceId>)> = BTreeMap::new();
        for (device, id, event) in sends(actions) {
            if let CallEvent::Ended { reason } = event {
                let e = ended.entry(id.to_owned()).or_insert((*reason, Vec::new()));
                assert_eq!(e.0, *reason, "call {id} ended with two reasons");
                assert!(
                    !e.1.contains(&device),
                    "{device:?} told twice that {id} ended"
                );
                e.1.push(device);
            }
        }
        let mut notices: Vec<&Action> = missed(actions);
        let mut out = BTreeMap::new();
        for (id, (reason, told)) in ended {
            let call = self
                .calls
                .remove(&id)
                .unwrap_or_else(|| panic!("call {id} ended but was not in progress"));
            let mut expect = call.parties();
            if let Some(d) = except {
                expect.remove(&d);
            }
            let told: BTreeSet<DeviceId> = told.into_iter().collect();
            assert_eq!(told, expect, "who hears that {id} ended ({reason:?})");
            let wants_notice = call.answered_by.is_none()
                && matches!(
                    reason,
                    EndReason::Timeout | EndReason::Cancelled | EndReason::Unavailable
                );
            let pos = notices
                .iter()
                .position(|a| matches!(a, Action::Missed { call_id, .. } if *call_id == id));
            match (wants_notice, pos) {
                (true, Some(i)) => {
                    let notice = notices.remove(i);
                    assert_eq!(
                        notice,
                        &Action::Missed {
                            user: call.callee,
                            call_id: id.clone(),
                            from: call.caller.user,
                            media: call.media,
                            at_ms: call.started_ms,
                        }
                    );
                }
                (false, None) => {}
                (want, got) => panic!(
                    "call {id} ended ({reason:?}, answered: {:?}): notice wanted {want}, got {got:?}",
                    call.answered_by
                ),
            }
            out.insert(id, reason);
        }
        assert!(
            notices.is_empty(),
            "missed-call notices without an ending: {notices:?}"
        );
        out
    }

    fn step(&mut self, op: &Op) {
        let len_before = self.router.len();
        let deadline_before = self.router.next_deadline();
        let result = self.apply(op);
        if let Err(code) = result {
            // A refused request changes nothing.
            assert_eq!(
                self.router.len(),
                len_before,
                "{op:?} refused with {code:?}"
            );
            assert_eq!(self.router.next_deadline(), deadline_before);
        }
        // One call per user, and the router agrees with the observer on how many there are.
        let mut seen = BTreeSet::new();
        for c in self.calls.values() {
            assert!(
                seen.insert(c.caller.user),
                "{:?} in two calls",
                c.caller.user
            );
            assert!(seen.insert(c.callee), "{:?} in two calls", c.callee);
        }
        assert_eq!(self.router.len(), self.calls.len());
        let deadline = self
            .calls
            .values()
            .filter(|c| c.answered_by.is_none())
            .map(|c| c.started_ms + RING_MS)
            .min();
        assert_eq!(self.router.next_deadline(), deadline);
        for c in self.calls.values() {
            if c.answered_by.is_none() {
                assert!(
                    c.started_ms + RING_MS > self.now,
                    "a call rings past its timeout"
                );
            }
        }
    }

    /// Runs one request; `Err` carries the refusal's code after checking it said nothing.
    fn apply(&mut self, op: &Op) -> Result<(), ErrorCode> {
        match *op {
            Op::Offer {
                from,
                to,
                call,
                online,
                video,
            } => {
                let id = self.offer_id(call, online);
                self.offer(party(from), UserId(to as u64 + 1), &id, online, video)
            }
            Op::Ringing { from, call } => {
                let (from, id) = (party(from), self.id(call));
                let out = self.router.ringing(from, &id);
                let call = self.expect_call(&id, &out)?;
                match (&out, call.answered_by) {
                    (Ok(actions), Some(_)) => assert!(actions.is_empty()),
                    (Ok(actions), None) => {
                        assert!(call.rung.contains_key(&from.device));
                        let first = !call.ringing_reported;
                        let want = first.then(|| Action::Send {
                            device: call.caller.device,
                            call_id: id.clone(),
                            event: CallEvent::Ringing {
                                device: from.device,
                            },
                        });
                        assert_eq!(actions, &Vec::from_iter(want), "ringing is told once");
                        self.calls.get_mut(&id).unwrap().ringing_reported = true;
                    }
                    (Err(e), None) => {
                        assert!(!call.rung.contains_key(&from.device));
                        assert_eq!(e.code, ErrorCode::Forbidden);
                    }
                    (Err(e), Some(_)) => panic!("ringing in an answered call refused: {e:?}"),
                }
                out.map(|_| ()).map_err(|e| e.code)
            }
            Op::Accept { from, call } => {
                let (from, id) = (party(from), self.id(call));
                let out = self.router.accept(from, &id, "answer");
                let call = self.expect_call(&id, &out)?;
                let may = call.answered_by.is_none() && call.rung.contains_key(&from.device);
                let actions = match out {
                    Ok(a) => a,
                    Err(e) => {
                        assert!(!may, "{from:?} may accept {id} but was refused: {e:?}");
                        return Err(e.code);
                    }
                };
                assert!(may, "{from:?} accepted {id}, which it may not");
                // The caller hears the answer, then the candidates held for it, in order;
                // the other ringing devices hear that it was answered elsewhere.
                let mut want = vec![Action::Send {
                    device: call.caller.device,
                    call_id: id.clone(),
                    event: CallEvent::Accepted {
                        device: from.device,
                        sdp: "answer".into(),
                    },
                }];
                for c in &call.rung[&from.device] {
                    want.push(Action::Send {
                        device: call.caller.device,
                        call_id: id.clone(),
                        event: CallEvent::Ice {
                            from_device: from.device,
                            candidate: c.clone(),
                        },
                    });
                }
                for d in call.rung.keys().filter(|d| **d != from.device) {
                    want.push(Action::Send {
                        device: *d,
                        call_id: id.clone(),
                        event: CallEvent::AnsweredElsewhere,
                    });
                }
                assert_eq!(actions, want);
                let c = self.calls.get_mut(&id).unwrap();
                c.answered_by = Some(from.device);
                c.rung.clear();
                Ok(())
            }
            Op::Decline { from, call } => {
                let (from, id) = (party(from), self.id(call));
                let out = self.router.decline(from, &id, self.now);
                let call = self.expect_call(&id, &out)?;
                let may = call.answered_by.is_none() && call.rung.contains_key(&from.device);
                self.expect_ending(out, may, Some(from.device), &id, EndReason::Declined)
            }
            Op::Cancel { from, call } => {
                let (from, id) = (party(from), self.id(call));
                let out = self.router.cancel(from, &id, self.now);
                let call = self.expect_call(&id, &out)?;
                let may = call.answered_by.is_none() && call.caller.device == from.device;
                self.expect_ending(out, may, Some(from.device), &id, EndReason::Cancelled)
            }
            Op::Hangup { from, call } => {
                let (from, id) = (party(from), self.id(call));
                let out = self.router.hangup(from, &id, self.now);
                let call = self.expect_call(&id, &out)?;
                // Before an answer the caller's hangup cancels and a ringing device's declines.
                let (may, reason) = match call.answered_by {
                    None if call.caller.device == from.device => (true, EndReason::Cancelled),
                    None => (call.rung.contains_key(&from.device), EndReason::Declined),
                    Some(_) => (call.other_party(from.device).is_some(), EndReason::Hangup),
                };
                self.expect_ending(out, may, Some(from.device), &id, reason)
            }
            Op::Ice { from, call } => {
                let (from, id) = (party(from), self.id(call));
                self.candidates += 1;
                let candidate = IceCandidate {
                    candidate: format!("candidate:{}", self.candidates),
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: Some(0),
                };
                let out = self.router.ice(from, &id, candidate.clone());
                let call = self.expect_call(&id, &out)?;
                let ice = |to: DeviceId| Action::Send {
                    device: to,
                    call_id: id.clone(),
                    event: CallEvent::Ice {
                        from_device: from.device,
                        candidate: candidate.clone(),
                    },
                };
                let want: Result<Vec<Action>, ErrorCode> = match call.answered_by {
                    None if from.device == call.caller.device => {
                        Ok(call.rung.keys().map(|d| ice(*d)).collect())
                    }
                    None => match call.rung.get(&from.device) {
                        None => Err(ErrorCode::Forbidden),
                        Some(held) if held.len() >= MAX_HELD_CANDIDATES => {
                            Err(ErrorCode::LimitExceeded)
                        }
                        Some(_) => Ok(Vec::new()),
                    },
                    Some(_) => match call.other_party(from.device) {
                        Some(to) => Ok(vec![ice(to)]),
                        None => Err(ErrorCode::Forbidden),
                    },
                };
                assert_eq!(
                    out.as_ref().map_err(|e| e.code),
                    want.as_ref().map_err(|c| *c)
                );
                let c = self.calls.get_mut(&id).unwrap();
                if let Some(held) = c.rung.get_mut(&from.device)
                    && out.is_ok()
                {
                    held.push(candidate);
                }
                out.map(|_| ()).map_err(|e| e.code)
            }
            Op::Update { from, call, offer } => {
                let (from, id) = (party(from), self.id(call));
                let kind = if offer {
                    SdpKind::Offer
                } else {
                    SdpKind::Answer
                };
                let out = self.router.update(from, &id, kind, "sdp2");
                let call = self.expect_call(&id, &out)?;
                let want = match (call.answered_by, call.other_party(from.device)) {
                    (None, _) => Err(ErrorCode::Conflict),
                    (Some(_), None) => Err(ErrorCode::Forbidden),
                    (Some(_), Some(to)) => Ok(vec![Action::Send {
                        device: to,
                        call_id: id.clone(),
                        event: CallEvent::Update {
                            from_device: from.device,
                            kind,
                            sdp: "sdp2".into(),
                        },
                    }]),
                };
                assert_eq!(
                    out.as_ref().map_err(|e| e.code),
                    want.as_ref().map_err(|c| *c)
                );
                out.map(|_| ()).map_err(|e| e.code)
            }
            Op::Disconnect { device } => {
                let device = party(device).device;
                let actions = self.router.disconnected(device, self.now);
                self.check_recipients(&actions);
                // A ringing device that goes stops ringing (its held candidates go with it);
                // the calls it was the caller, the answerer or the last ringing device of end.
                let mut want: BTreeMap<String, EndReason> = BTreeMap::new();
                for (id, c) in self.calls.iter_mut() {
                    let reason = match c.answered_by {
                        _ if c.caller.device == device => {
                            if c.answered_by.is_none() {
                                EndReason::Cancelled
                            } else {
                                EndReason::ConnectionLost
                            }
                        }
                        Some(d) if d == device => EndReason::ConnectionLost,
                        Some(_) => continue,
                        None => {
                            if c.rung.remove(&device).is_none() || !c.rung.is_empty() {
                                continue;
                            }
                            EndReason::Unavailable
                        }
                    };
                    want.insert(id.clone(), reason);
                }
                let got = self.take_endings(&actions, Some(device));
                assert_eq!(got, want, "calls ended by {device:?} going away");
                assert!(
                    sends(&actions)
                        .iter()
                        .all(|(_, _, e)| matches!(e, CallEvent::Ended { .. })),
                    "a disconnect only ends calls: {actions:?}"
                );
                Ok(())
            }
            Op::Wait { ms } => {
                self.now += ms;
                let actions = self.router.tick(self.now);
                self.check_recipients(&actions);
                let want: BTreeMap<String, EndReason> = self
                    .calls
                    .iter()
                    .filter(|(_, c)| c.answered_by.is_none() && c.started_ms + RING_MS <= self.now)
                    .map(|(id, _)| (id.clone(), EndReason::Timeout))
                    .collect();
                let got = self.take_endings(&actions, None);
                assert_eq!(got, want, "calls the ring timeout ends at {}", self.now);
                Ok(())
            }
        }
    }

    fn offer(
        &mut self,
        caller: Party,
        callee: UserId,
        id: &str,
        online: u8,
        video: bool,
    ) -> Result<(), ErrorCode> {
        let media = if video { Media::Video } else { Media::Audio };
        // Callee devices online, as the gateway's hub reports them (duplicates allowed).
        let online: Vec<DeviceId> = (0..4)
            .filter(|b| online & (1 << b) != 0)
            .map(|b| DeviceId(callee.0 * 10 + b % DEVICES_PER_USER))
            .collect();
        let out = self
            .router
            .offer(caller, id, callee, media, "offer", &online, self.now);
        // What the contract says must happen, in the order the router decides it.
        let recently_used = self
            .used
            .get(id)
            .is_some_and(|&at| at + USED_IDS_KEPT_MS > self.now);
        let expected_error = if callee == caller.user {
            Some(ErrorCode::Invalid)
        } else if self.calls.contains_key(id) || recently_used {
            Some(ErrorCode::Conflict)
        } else {
            self.used.insert(id.to_owned(), self.now);
            None
        };
        let glare = self
            .calls
            .iter()
            .find(|(_, c)| {
                c.caller.user == callee && c.callee == caller.user && c.answered_by.is_none()
            })
            .map(|(other, _)| other.clone());
        let refusal = |reason| {
            vec![Action::Send {
                device: caller.device,
                call_id: id.to_owned(),
                event: CallEvent::Ended { reason },
            }]
        };
        if let Some(code) = expected_error {
            assert_eq!(out.map_err(|e| e.code), Err(code));
            return Err(code);
        }
        if let Some(other) = &glare
            && other.as_str() < id
        {
            // The other call wins; this one ends before it starts.
            assert_eq!(out.unwrap(), refusal(EndReason::Glare));
            return Ok(());
        }
        if glare.is_none() && self.call_of(caller.user).is_some() {
            assert_eq!(out.map_err(|e| e.code), Err(ErrorCode::Conflict));
            return Err(ErrorCode::Conflict);
        }
        let actions = out.expect("offer accepted");
        self.check_recipients_with(&actions, Some((id, caller.device)));
        // A losing glare call ends everywhere first.
        let (before, rest): (Vec<Action>, Vec<Action>) = actions.into_iter().partition(|a| {
            matches!(a, Action::Send { call_id, event: CallEvent::Ended { reason: EndReason::Glare }, .. } if Some(call_id) == glare.as_ref())
        });
        if let Some(other) = &glare {
            let got = self.take_endings(&before, None);
            assert_eq!(got, BTreeMap::from([(other.clone(), EndReason::Glare)]));
        } else {
            assert!(before.is_empty());
        }
        if self.call_of(callee).is_some() {
            assert_eq!(rest, refusal(EndReason::Busy));
            return Ok(());
        }
        let mut devices = online.clone();
        devices.sort_unstable();
        devices.dedup();
        if devices.is_empty() {
            let mut want = refusal(EndReason::Unavailable);
            want.push(Action::Missed {
                user: callee,
                call_id: id.to_owned(),
                from: caller.user,
                media,
                at_ms: self.now,
            });
            assert_eq!(rest, want);
            return Ok(());
        }
        let want: Vec<Action> = devices
            .iter()
            .map(|d| Action::Send {
                device: *d,
                call_id: id.to_owned(),
                event: CallEvent::Incoming {
                    from: caller.user,
                    from_device: caller.device,
                    media,
                    sdp: "offer".into(),
                },
            })
            .collect();
        assert_eq!(
            rest, want,
            "the offer rings every online callee device once"
        );
        self.calls.insert(
            id.to_owned(),
            Call {
                caller,
                callee,
                media,
                started_ms: self.now,
                rung: devices.into_iter().map(|d| (d, Vec::new())).collect(),
                answered_by: None,
                ringing_reported: false,
            },
        );
        Ok(())
    }

    /// For requests naming a call: an unknown call is refused as not found (and says
    /// nothing); otherwise returns the observer's view of it, with recipients checked.
    fn expect_call(
        &mut self,
        id: &str,
        out: &Result<Vec<Action>, natter_signaling::ProtocolError>,
    ) -> Result<Call, ErrorCode> {
        let Some(call) = self.calls.get(id).cloned() else {
            let code = out.as_ref().map(|_| ()).map_err(|e| e.code);
            assert_eq!(code, Err(ErrorCode::NotFound), "call {id} does not exist");
            return Err(ErrorCode::NotFound);
        };
        if let Ok(actions) = out {
            self.check_recipients(actions);
        }
        Ok(call)
    }

    /// A request that ends the call when allowed (`may`), and is refused otherwise.
    fn expect_ending(
        &mut self,
        out: Result<Vec<Action>, natter_signaling::ProtocolError>,
        may: bool,
        except: Option<DeviceId>,
        id: &str,
        reason: EndReason,
    ) -> Result<(), ErrorCode> {
        match out {
            Ok(actions) => {
                assert!(may, "{id} ended ({reason:?}) by a device that may not");
                let got = self.take_endings(&actions, except);
                assert_eq!(got, BTreeMap::from([(id.to_owned(), reason)]));
                Ok(())
            }
            Err(e) => {
                assert!(!may, "ending {id} ({reason:?}) refused: {e:?}");
                assert!(matches!(e.code, ErrorCode::Forbidden | ErrorCode::Conflict));
                Err(e.code)
            }
        }
    }

    fn check_recipients(&self, actions: &[Action]) {
        self.check_recipients_with(actions, None);
    }

    /// Every event goes to a party of an existing call (or, for an offer being made, to
    /// its caller or to a device of its callee).
    fn check_recipients_with(&self, actions: &[Action], offering: Option<(&str, DeviceId)>) {
        for (device, id, event) in sends(actions) {
            if let Some((new_id, caller)) = offering
                && id == new_id
                && !self.calls.contains_key(id)
            {
                let to_caller = device == caller;
                let incoming = matches!(event, CallEvent::Incoming { .. });
                assert!(
                    to_caller != incoming,
                    "{event:?} to {device:?} about offer {id}"
                );
                continue;
            }
            let call = self
                .calls
                .get(id)
                .unwrap_or_else(|| panic!("{event:?} to {device:?} about unknown call {id}"));
            assert!(
                call.parties().contains(&device),
                "{event:?} about {id} went to {device:?}, not a party of it"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn router_keeps_its_contract(ops in prop::collection::vec(op(), 1..80)) {
        let mut w = World::new();
        for op in &ops {
            w.step(op);
        }
        // Every device goes away: nothing may be left behind.
        for device in 0..(USERS * DEVICES_PER_USER) as usize {
            w.step(&Op::Disconnect { device });
        }
        prop_assert!(w.router.is_empty(), "calls left after every device went: {:?}", w.router);
        prop_assert!(w.calls.is_empty());
        prop_assert_eq!(w.router.next_deadline(), None);
    }

    #[test]
    fn ringing_calls_end_by_the_timeout_alone(ops in prop::collection::vec(op(), 1..80)) {
        let mut w = World::new();
        for op in &ops {
            w.step(op);
        }
        // Only answered calls may outlive a wait of one ring timeout.
        w.step(&Op::Wait { ms: RING_MS });
        prop_assert!(w.calls.values().all(|c| c.answered_by.is_some()));
        prop_assert_eq!(w.router.next_deadline(), None);
    }
}

/// Found by the `call_sdp` fuzz target: with a ring timeout near `u64::MAX` (a configured
/// "ring forever"), computing the deadline overflowed and the offer panicked.
#[test]
fn a_ring_timeout_past_the_end_of_time_rings_until_answered() {
    let alice = party(0);
    let bob = party(2);
    let mut r = CallRouter::new(u64::MAX);
    let now = 1_800_000_000_000;
    let out = r
        .offer(
            alice,
            "c",
            bob.user,
            Media::Audio,
            "offer",
            &[bob.device],
            now,
        )
        .unwrap();
    assert_eq!(out.len(), 1);
    assert!(
        r.tick(now + 365 * 24 * 3_600_000).is_empty(),
        "still ringing a year later"
    );
    assert!(r.accept(bob, "c", "answer").is_ok());
}
