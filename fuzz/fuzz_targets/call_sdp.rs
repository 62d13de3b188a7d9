//! The signaling server does not parse SDP: `ClientFrame::validate` bounds it (non-blank, at
//! most `MAX_SDP_BYTES`) and `CallRouter` passes it through untouched. So this target fuzzes
//! what does look at call frames: a structured sequence of offers, answers, ICE candidates and
//! updates with arbitrary SDP and candidate strings, from three users with two devices each,
//! through `validate` (as the gateway does) into the sans-IO `CallRouter`, with time passing.
//! Nothing may panic; SDP and candidates reach the other party byte for byte; events go only
//! to devices of that call; and once every device is gone and the ring timeout has passed,
//! the router holds nothing.
#![no_main]

use std::collections::{HashMap, HashSet};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use natter_signaling::call::{Action, CallEvent, CallRouter, IceCandidate, Media, Party, SdpKind};
use natter_signaling::{ClientFrame, DeviceId, UserId};

const EPOCH_MS: u64 = 1_800_000_000_000;

#[derive(Arbitrary, Debug)]
struct Input {
    ring_timeout_ms: u64,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Offer {
        from: u8,
        call: u8,
        to: u8,
        video: bool,
        sdp: String,
        online: u8,
    },
    Ringing {
        from: u8,
        call: u8,
    },
    Accept {
        from: u8,
        call: u8,
        sdp: String,
    },
    Decline {
        from: u8,
        call: u8,
    },
    Cancel {
        from: u8,
        call: u8,
    },
    Hangup {
        from: u8,
        call: u8,
    },
    Ice {
        from: u8,
        call: u8,
        candidate: String,
        mid: Option<String>,
        index: Option<u16>,
    },
    Update {
        from: u8,
        call: u8,
        offer: bool,
        sdp: String,
    },
    Disconnect {
        device: u8,
    },
    Tick {
        advance_ms: u32,
    },
}

/// Device `i % 6`: users 1, 2, 3 with devices 10/11, 20/21, 30/31.
fn party(i: u8) -> Party {
    let i = i % 6;
    let user = u64::from(i / 2) + 1;
    Party {
        user: UserId(user),
        device: DeviceId(user * 10 + u64::from(i % 2)),
    }
}

fn call_id(c: u8) -> String {
    // A few ids so calls collide, are reused and race each other (glare compares ids).
    format!("call-{}", c % 4)
}

fuzz_target!(|input: Input| {
    let mut r = CallRouter::new(input.ring_timeout_ms);
    let mut now = EPOCH_MS;
    // Devices that may hear about each call id: its callers and the callee devices it rang
    // (ids are reused after a call ends, so a set only grows).
    let mut parties: HashMap<String, HashSet<DeviceId>> = HashMap::new();
    for op in input.ops.into_iter().take(128) {
        let (frame, from) = match &op {
            Op::Offer {
                from,
                call,
                to,
                video,
                sdp,
                ..
            } => (
                ClientFrame::CallOffer {
                    id: 1,
                    call_id: call_id(*call),
                    to: party(*to).user,
                    media: if *video { Media::Video } else { Media::Audio },
                    sdp: sdp.clone(),
                },
                *from,
            ),
            Op::Accept { from, call, sdp } => (
                ClientFrame::CallAccept {
                    id: 1,
                    call_id: call_id(*call),
                    sdp: sdp.clone(),
                },
                *from,
            ),
            Op::Ice {
                from,
                call,
                candidate,
                mid,
                index,
            } => (
                ClientFrame::CallIce {
                    id: 1,
                    call_id: call_id(*call),
                    candidate: IceCandidate {
                        candidate: candidate.clone(),
                        sdp_mid: mid.clone(),
                        sdp_mline_index: *index,
                    },
                },
                *from,
            ),
            Op::Update {
                from,
                call,
                offer,
                sdp,
            } => (
                ClientFrame::CallUpdate {
                    id: 1,
                    call_id: call_id(*call),
                    kind: if *offer {
                        SdpKind::Offer
                    } else {
                        SdpKind::Answer
                    },
                    sdp: sdp.clone(),
                },
                *from,
            ),
            Op::Ringing { from, .. }
            | Op::Decline { from, .. }
            | Op::Cancel { from, .. }
            | Op::Hangup { from, .. } => (ClientFrame::Ping { id: 1 }, *from),
            Op::Disconnect { .. } | Op::Tick { .. } => (ClientFrame::Ping { id: 1 }, 0),
        };
        // The gateway refuses frames that fail validation before the router sees them.
        if frame.validate().is_err() {
            continue;
        }
        let from = party(from);
        let result = match op {
            Op::Offer { online, .. } => {
                let ClientFrame::CallOffer {
                    call_id,
                    to: callee,
                    media,
                    sdp,
                    ..
                } = &frame
                else {
                    unreachable!()
                };
                // The callee's devices that are online, chosen by the bits of `online`.
                let devices: Vec<DeviceId> = (0..2)
                    .filter(|b| online & (1 << b) != 0)
                    .map(|b| DeviceId(callee.0 * 10 + b))
                    .collect();
                let out = r.offer(from, call_id, *callee, *media, sdp, &devices, now);
                if let Ok(actions) = &out {
                    for a in actions {
                        if let Action::Send {
                            device,
                            call_id: id,
                            event: CallEvent::Incoming { sdp: got, .. },
                        } = a
                        {
                            assert_eq!(got, sdp, "the offer's SDP is passed on unchanged");
                            assert_eq!(id, call_id);
                            let p = parties.entry(id.clone()).or_default();
                            p.insert(from.device);
                            p.insert(*device);
                        }
                    }
                    parties
                        .entry(call_id.clone())
                        .or_default()
                        .insert(from.device);
                }
                out
            }
            Op::Ringing { call, .. } => r.ringing(from, &call_id(call)),
            Op::Accept { call, sdp, .. } => {
                let out = r.accept(from, &call_id(call), &sdp);
                if let Ok(actions) = &out {
                    assert!(actions.iter().any(|a| matches!(a,
                        Action::Send { event: CallEvent::Accepted { sdp: got, .. }, .. } if *got == sdp)));
                }
                out
            }
            Op::Decline { call, .. } => r.decline(from, &call_id(call), now),
            Op::Cancel { call, .. } => r.cancel(from, &call_id(call), now),
            Op::Hangup { call, .. } => r.hangup(from, &call_id(call), now),
            Op::Ice {
                call,
                candidate,
                mid,
                index,
                ..
            } => {
                let c = IceCandidate {
                    candidate,
                    sdp_mid: mid,
                    sdp_mline_index: index,
                };
                let out = r.ice(from, &call_id(call), c.clone());
                if let Ok(actions) = &out {
                    for a in actions {
                        if let Action::Send {
                            event: CallEvent::Ice { candidate, .. },
                            ..
                        } = a
                        {
                            assert_eq!(*candidate, c, "a candidate is passed on unchanged");
                        }
                    }
                }
                out
            }
            Op::Update {
                call, offer, sdp, ..
            } => {
                let kind = if offer {
                    SdpKind::Offer
                } else {
                    SdpKind::Answer
                };
                r.update(from, &call_id(call), kind, &sdp)
            }
            Op::Disconnect { device } => Ok(r.disconnected(party(device).device, now)),
            Op::Tick { advance_ms } => {
                now += u64::from(advance_ms);
                Ok(r.tick(now))
            }
        };
        for a in result.unwrap_or_default() {
            if let Action::Send {
                device,
                call_id,
                event,
            } = &a
            {
                let allowed = parties.get(call_id).is_some_and(|p| p.contains(device));
                assert!(
                    allowed,
                    "{event:?} about {call_id} went to {device:?}, not a party"
                );
            }
        }
        // A call joins two users and a user is in one call at most: three users, one call.
        assert!(r.len() <= 1, "{} calls among three users", r.len());
    }
    for i in 0..6 {
        r.disconnected(party(i).device, now);
    }
    r.tick(now.saturating_add(input.ring_timeout_ms));
    assert!(r.is_empty(), "calls outlive every device: {r:?}");
    assert_eq!(r.next_deadline(), None);
});
