//! natter's selective forwarding unit for group calls, sans-IO.
//!
//! One [`Sfu`] owns every participant of every room on one UDP socket. Each participant
//! has one str0m `Rtc` (publish and subscribe on one connection) in RTP mode: the SFU sees
//! packets, never frames, and forwards each publisher's RTP to every other member of the
//! room with its sequence numbers and timestamps rewritten per subscriber
//! ([`rewrite::StreamRewriter`]); it never decodes, so it forwards media that is
//! end-to-end encrypted as readily as plain.
//!
//! ICE-lite: the SFU has a public address and nothing to discover, so it only answers
//! checks (as mediasoup and Janus in lite mode do); the client is the full, controlling
//! agent. That saves a timer and a check list per participant, and a client behind any
//! NAT still reaches it, or reaches it through TURN. Datagrams are routed to their
//! participant by [`router::Router`] (ufrag, then pinned address).
//!
//! Driving it: [`Sfu::join`] with a client's offer (the answer goes back over the chat
//! socket), then [`Sfu::handle_datagram`] with every datagram of the socket,
//! [`Sfu::handle_timeout`] when [`Sfu::poll_timeout`] comes, and after either drain
//! [`Sfu::poll_transmit`] and [`Sfu::poll_event`] — an [`SfuEvent::Offer`] is a
//! renegotiation to send the participant, whose answer comes back in
//! [`Sfu::accept_answer`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_signaling::room_token::{self, TokenError};
use str0m::bwe::BweKind;
use str0m::media::Mid;
use str0m::net::{Protocol, Receive};
use str0m::{Event, IceConnectionState, Input, Output, PacerReason, Reason};

pub mod allocator;
pub mod capture;
pub mod config;
pub mod control;
mod forward;
pub mod layers;
pub mod metrics;
mod participant;
pub mod rewrite;
pub mod router;
pub mod shell;
pub mod speaker;

use participant::Participant;
pub use router::{ParticipantId, Route, Router};
pub use str0m::media::MediaKind;

/// How long a participant's `Rtc` waits for its pacer's gate run when nothing is left to
/// send (see [`Sfu::drain`]), and how long at most when the SFU is otherwise idle; its
/// other timers wait as long at most.
const GATE_WAIT: Duration = Duration::from_millis(2);
const GATE_IDLE: Duration = Duration::from_millis(10);

/// The payload type of an SRTP packet (not SRTCP, STUN or DTLS: version 2 and not an RTCP
/// type, RFC 5761); its header is in the clear.
fn rtp_payload_type(datagram: &[u8]) -> Option<u8> {
    let rtp = datagram.len() >= 12 && datagram[0] >> 6 == 2;
    (rtp && !(192..=223).contains(&datagram[1])).then(|| datagram[1] & 0x7f)
}

/// A publisher's track is asked for a keyframe at most this often.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(300);

/// Participants one room holds unless configured otherwise.
pub const DEFAULT_MAX_PARTICIPANTS: usize = 50;

/// A room's name (the gateway derives it from the group).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(pub String);

/// One published track: its publisher and the publisher's m-line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TrackId {
    pub publisher: ParticipantId,
    pub mid: Mid,
}

#[derive(Clone)]
pub struct SfuConfig {
    /// The address clients send to: the one host candidate of every participant.
    pub public_addr: SocketAddr,
    pub max_participants: usize,
    /// Signs the room tokens a join must carry (shared with the gateways that mint them).
    pub token_secret: Vec<u8>,
    /// Records every forwarded payload, as the SFU can read it, to this file.
    pub capture: Option<std::path::PathBuf>,
}

impl SfuConfig {
    pub fn new(public_addr: SocketAddr, token_secret: Vec<u8>) -> SfuConfig {
        SfuConfig {
            public_addr,
            max_participants: DEFAULT_MAX_PARTICIPANTS,
            token_secret,
            capture: None,
        }
    }
}

impl std::fmt::Debug for SfuConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SfuConfig")
            .field("public_addr", &self.public_addr)
            .field("max_participants", &self.max_participants)
            .field("token_secret", &"<hidden>")
            .field("capture", &self.capture)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SfuError {
    #[error("the session description could not be used: {0}")]
    BadSdp(String),
    #[error("the room is full ({0} participants)")]
    RoomFull(usize),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("this device is already in the room")]
    AlreadyJoined,
    #[error("no such participant in this SFU")]
    UnknownParticipant,
    #[error("an answer came but no offer was made to this participant")]
    NoOfferPending,
    #[error("media engine: {0}")]
    Rtc(String),
}

impl SfuStats {
    /// Prometheus text (`natter_sfu_*`).
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let mut line = |name: &str, kind: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        line(
            "natter_sfu_rooms",
            "gauge",
            "Rooms with participants",
            self.rooms,
        );
        line(
            "natter_sfu_participants",
            "gauge",
            "Participants in all rooms",
            self.participants,
        );
        line(
            "natter_sfu_forwarded_packets_total",
            "counter",
            "RTP packets forwarded to subscribers",
            self.forwarded_packets,
        );
        line(
            "natter_sfu_forwarded_bytes_total",
            "counter",
            "RTP payload bytes forwarded to subscribers",
            self.forwarded_bytes,
        );
        line(
            "natter_sfu_unrouted_datagrams_total",
            "counter",
            "Datagrams from no participant's address, or checks naming nobody",
            self.unrouted,
        );
        line(
            "natter_sfu_not_forwarded_packets_total",
            "counter",
            "Packets held back (m-line not negotiated, codec not taken, waiting for a keyframe)",
            self.not_forwarded,
        );
        line(
            "natter_sfu_keyframe_requests_total",
            "counter",
            "Keyframe requests (PLI) sent to publishers",
            self.keyframe_requests,
        );
        line(
            "natter_sfu_layer_switches_total",
            "counter",
            "Subscribers moved from one simulcast layer of a track to another",
            self.layer_switches,
        );
        line(
            "natter_sfu_allocation_changes_total",
            "counter",
            "Changes of a subscriber's layer choice for a track by the bandwidth allocator",
            self.allocation_changes,
        );
        line(
            "natter_sfu_nacks_received_total",
            "counter",
            "NACKs from subscribers (each may name several lost packets)",
            self.nacks_received,
        );
        line(
            "natter_sfu_rtx_packets_total",
            "counter",
            "Packets sent to subscribers beyond those forwarded: resends (RTX) from their caches, as str0m counts them",
            self.rtx_packets,
        );
        line(
            "natter_sfu_nacks_sent_total",
            "counter",
            "NACKs sent to publishers for packets lost on the way to the SFU",
            self.nacks_sent,
        );
        line(
            "natter_sfu_rtc_timer_runs_total",
            "counter",
            "Timer runs of the participants' media engines (str0m Rtc timeouts handled)",
            self.rtc_timer_runs,
        );
        s
    }
}

/// What the shell sends on the socket.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub destination: SocketAddr,
    pub contents: Vec<u8>,
}

/// What happened, for the shell to pass on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SfuEvent {
    /// Send this offer to the participant; `tracks` says whose track (and what kind) each
    /// new m-line carries.
    Offer {
        participant: ParticipantId,
        sdp: String,
        tracks: Vec<(Mid, TrackId, MediaKind)>,
    },
    /// ICE and DTLS are up: media flows.
    Connected(ParticipantId),
    /// The participant is gone (left, or its connection died) and its resources freed.
    Left {
        participant: ParticipantId,
        reason: String,
    },
    /// Tell the participant who speaks now in its room.
    Speaker {
        participant: ParticipantId,
        speaker: ParticipantId,
    },
    /// Tell the publisher which simulcast layers of its track `mid` anyone receives (it
    /// may stop encoding the others: dynacast).
    Layers {
        participant: ParticipantId,
        mid: Mid,
        rids: Vec<String>,
    },
}

/// Counters, also for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SfuStats {
    /// Rooms with anyone in them, and participants in all rooms (gauges, set by the shell).
    pub rooms: u64,
    pub participants: u64,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    /// Datagrams from nobody's address, or checks naming nobody.
    pub unrouted: u64,
    /// Packets dropped because the subscriber's m-line was not negotiated yet, or its codec
    /// is not one the subscriber took.
    pub not_forwarded: u64,
    /// PLIs sent to publishers (for a subscriber that lost a picture or starts watching).
    pub keyframe_requests: u64,
    /// A subscriber moved from one simulcast layer of a track to another.
    pub layer_switches: u64,
    /// The allocator changed a subscriber's layer choice for a track.
    pub allocation_changes: u64,
    /// NACKs subscribers sent (each may name several packets), packets resent to them from
    /// their resend caches (RTX), and NACKs sent to publishers for loss on the way in.
    pub nacks_received: u64,
    pub rtx_packets: u64,
    pub nacks_sent: u64,
    /// Timer runs of the participants' media engines (str0m's `Rtc`): most of the SFU's
    /// cost, so runs per forwarded packet says how well they are shared.
    pub rtc_timer_runs: u64,
}

pub struct Sfu {
    pub(crate) cfg: SfuConfig,
    participants: HashMap<ParticipantId, Participant>,
    rooms: HashMap<RoomId, Vec<ParticipantId>>,
    router: Router,
    speakers: speaker::SpeakerObserver,
    next_allocation: Instant,
    next_stall_check: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SfuEvent>,
    pub stats: SfuStats,
    /// What was forwarded, for `cfg.capture`.
    pub(crate) captured: Option<capture::CaptureQueue>,
}

impl Sfu {
    pub fn new(cfg: SfuConfig) -> Sfu {
        let cfg_capture = cfg.capture.is_some();
        Sfu {
            cfg,
            participants: HashMap::new(),
            rooms: HashMap::new(),
            router: Router::default(),
            speakers: speaker::SpeakerObserver::default(),
            next_allocation: Instant::now(),
            next_stall_check: Instant::now(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: SfuStats::default(),
            captured: cfg_capture.then(capture::CaptureQueue::default),
        }
    }

    /// The next forwarded payload recorded for the capture file (see [`capture`]).
    pub fn poll_captured(&mut self) -> Option<capture::Captured> {
        self.captured.as_mut()?.pop()
    }

    /// Each participant's downlink estimate (str0m's TWCC/GCC), bits/s, for those that
    /// receive anything.
    pub fn estimates(&self) -> impl Iterator<Item = u64> + '_ {
        self.participants
            .values()
            .filter(|p| !p.subscribed.is_empty())
            .map(|p| p.estimate_bps)
    }

    /// A participant joins with its offer and the room token a gateway minted for it (which
    /// names the room and the device); returns its id and the SFU's answer. The others'
    /// tracks follow in an [`SfuEvent::Offer`]. `now_unix` is for the token's expiry.
    pub fn join(
        &mut self,
        token: &str,
        offer: &str,
        now: Instant,
        now_unix: u64,
    ) -> Result<(ParticipantId, String), SfuError> {
        let claims = room_token::verify(&self.cfg.token_secret, token, now_unix)?;
        let room = &RoomId(claims.room);
        let members = self.rooms.get(room).map_or(&[][..], Vec::as_slice);
        if members.len() >= self.cfg.max_participants {
            return Err(SfuError::RoomFull(self.cfg.max_participants));
        }
        let device = claims.device;
        if members
            .iter()
            .any(|m| self.participants.get(m).is_some_and(|p| p.device == device))
        {
            return Err(SfuError::AlreadyJoined);
        }
        let (mut p, answer) = Participant::new(room.clone(), self.cfg.public_addr, offer, now)?;
        p.device = device;
        let id = participant::random_id();
        self.router.add(id, &p.ufrag);
        self.participants.insert(id, p);
        let others = self.rooms.entry(room.clone()).or_default().clone();
        self.rooms.get_mut(room).expect("made above").push(id);
        // What the others already publish, for the newcomer.
        let tracks: Vec<(TrackId, MediaKind)> = others
            .iter()
            .filter_map(|o| self.participants.get(o).map(|p| (o, p)))
            .flat_map(|(o, p)| {
                p.published.iter().map(|(mid, t)| {
                    (
                        TrackId {
                            publisher: *o,
                            mid: *mid,
                        },
                        t.kind,
                    )
                })
            })
            .collect();
        let p = self.participants.get_mut(&id).expect("inserted above");
        p.to_add.extend(tracks);
        if let Some(speaker) = self.speakers.speaker(room) {
            self.events.push_back(SfuEvent::Speaker {
                participant: id,
                speaker,
            });
        }
        self.drain(id, now);
        Ok((id, answer.to_sdp_string()))
    }

    /// The participant's answer to the SFU's last offer.
    pub fn accept_answer(
        &mut self,
        id: ParticipantId,
        answer: &str,
        now: Instant,
    ) -> Result<(), SfuError> {
        let p = self
            .participants
            .get_mut(&id)
            .ok_or(SfuError::UnknownParticipant)?;
        p.accept_answer(answer)?;
        self.drain(id, now);
        // New subscriptions: their layers now, and their publishers told at once (a paused
        // layer must resume for a newcomer without waiting for the next round).
        self.reallocate(now);
        Ok(())
    }

    /// The participant leaves; the others stop receiving its tracks.
    pub fn leave(&mut self, id: ParticipantId, reason: &str, now: Instant) {
        let Some(mut p) = self.participants.remove(&id) else {
            return;
        };
        p.rtc.disconnect();
        self.router.remove(id);
        self.speakers.remove(&p.room, id);
        if let Some(members) = self.rooms.get_mut(&p.room) {
            members.retain(|m| *m != id);
            if members.is_empty() {
                self.rooms.remove(&p.room);
                self.speakers.forget(&p.room);
            }
        }
        for other in self.participants.values_mut() {
            let ended: Vec<Mid> = other
                .subscribed
                .iter()
                .filter(|(t, _)| t.publisher == id)
                .map(|(_, o)| o.mid)
                .collect();
            other.to_stop.extend(ended);
            other.subscribed.retain(|t, _| t.publisher != id);
            other.to_add.retain(|(t, _)| t.publisher != id);
        }
        self.events.push_back(SfuEvent::Left {
            participant: id,
            reason: reason.to_string(),
        });
        // The others' m-lines for its tracks go inactive (a renegotiation each).
        let others: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(_, p)| !p.to_stop.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for other in others {
            self.drain(other, now);
        }
    }

    /// A datagram that arrived on the SFU's socket.
    pub fn handle_datagram(
        &mut self,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) {
        let route = self.router.route(source, bytes);
        let id = match route {
            Route::Stun(id) | Route::Pinned(id) => id,
            Route::Unknown => {
                self.stats.unrouted += 1;
                return;
            }
        };
        let Some(p) = self.participants.get_mut(&id) else {
            self.stats.unrouted += 1;
            return;
        };
        let Ok(recv) = Receive::new(Protocol::Udp, source, destination, bytes) else {
            self.stats.unrouted += 1;
            return;
        };
        let input = Input::Receive(now, recv);
        if !p.rtc.accepts(&input) {
            self.stats.unrouted += 1;
            return;
        }
        if p.rtc.handle_input(input).is_err() {
            self.leave(id, "the media engine failed on input", now);
            return;
        }
        if let Route::Stun(_) = route {
            self.router.pin(id, source);
        }
        self.drain(id, now);
    }

    /// When [`Sfu::handle_timeout`] must next run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let rtc = self
            .participants
            .values()
            .filter_map(|p| p.timeout.map(|t| t + p.idle_slack))
            .min();
        [rtc, self.speakers.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether [`Sfu::handle_timeout`] has work at `now`: sooner than [`Sfu::poll_timeout`]
    /// says, when some of it can wait for the SFU to be awake anyway.
    pub fn is_due(&self, now: Instant) -> bool {
        self.participants
            .values()
            .any(|p| p.timeout.is_some_and(|t| t <= now))
            || self.speakers.poll_timeout().is_some_and(|t| t <= now)
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|(_, p)| p.timeout.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            let Some(p) = self.participants.get_mut(&id) else {
                continue;
            };
            self.stats.rtc_timer_runs += 1;
            if p.rtc.handle_input(Input::Timeout(now)).is_err() {
                self.leave(id, "the media engine failed on a timeout", now);
                continue;
            }
            self.drain(id, now);
        }
        let stalled = now >= self.next_stall_check && {
            self.next_stall_check = now + forward::STALL_CHECK_EVERY;
            self.check_stalled_layers(now)
        };
        if stalled || now >= self.next_allocation {
            self.next_allocation = now + forward::ALLOCATE_EVERY;
            self.reallocate(now);
        }
        for (room, speaker) in self.speakers.handle_timeout(now) {
            for participant in self.members(&room) {
                self.events.push_back(SfuEvent::Speaker {
                    participant,
                    speaker,
                });
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SfuEvent> {
        self.events.pop_front()
    }

    /// Participants in all rooms.
    pub fn participants(&self) -> usize {
        self.participants.len()
    }

    /// Rooms with anyone in them.
    pub fn rooms(&self) -> usize {
        self.rooms.len()
    }

    /// Participants in `room`.
    pub fn members(&self, room: &RoomId) -> Vec<ParticipantId> {
        self.rooms.get(room).cloned().unwrap_or_default()
    }

    /// Drains one participant's `Rtc`, then forwards what it published.
    fn drain(&mut self, id: ParticipantId, now: Instant) {
        let mut packets = Vec::new();
        let mut new_tracks = Vec::new();
        let mut keyframes_wanted = Vec::new();
        let mut reallocate = false;
        let mut gone = None;
        let Some(p) = self.participants.get_mut(&id) else {
            return;
        };
        let writes = std::mem::take(&mut p.unsent_writes);
        // RTP sent from what was written, and any other (resends, probes).
        let (mut written_sent, mut other_sent) = (0, 0);
        loop {
            match p.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    p.unsent_writes = writes.saturating_sub(written_sent);
                    p.timeout = Some(t);
                    p.idle_slack = Duration::ZERO;
                    // str0m's pacer sends one packet per run and then wants another run at
                    // once (a "gate"). When what was written all went and nothing else did
                    // (no resend, no probe), that run has nothing to send: it waits
                    // GATE_WAIT for the next write or for whatever the SFU runs next, and
                    // wakes the shell only after GATE_IDLE. On a real socket that was
                    // half a run per forwarded packet. Not for a participant receiving
                    // video: its pacer's timing is what its estimate, and so its layers,
                    // come from (with video the 300 kbit/s down-switch test came out
                    // 400 ms later).
                    if writes > 0
                        && written_sent == writes
                        && other_sent == 0
                        && !p.subscribed.values().any(|o| o.kind == MediaKind::Video)
                        && p.rtc.last_timeout_reason() == Reason::Pacer(PacerReason::Immediate)
                    {
                        p.timeout = Some(t.max(now) + GATE_WAIT);
                        p.idle_slack = GATE_IDLE - GATE_WAIT;
                    }
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    match rtp_payload_type(&t.contents) {
                        Some(pt) if p.written_pts & (1 << pt) != 0 => written_sent += 1,
                        Some(_) => other_sent += 1,
                        None => {}
                    }
                    self.transmits.push_back(Transmit {
                        destination: t.destination,
                        contents: t.contents.into(),
                    })
                }
                Ok(Output::Event(e)) => match e {
                    Event::Connected => self.events.push_back(SfuEvent::Connected(id)),
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        gone = Some("its connection timed out");
                    }
                    Event::MediaAdded(m) if m.direction.is_receiving() => {
                        let rids = m
                            .simulcast
                            .as_ref()
                            .map(|s| if s.recv.is_empty() { &s.send } else { &s.recv })
                            .map(|l| l.iter().map(|l| l.rid).collect())
                            .unwrap_or_default();
                        let rids = layers::order_rids(rids);
                        let rates = layers::LayerRates::new(rids.len(), now);
                        let live = layers::LayerLiveness::new(rids.len(), now);
                        p.published.insert(
                            m.mid,
                            participant::PublishedTrack {
                                kind: m.kind,
                                rids,
                                rates,
                                live,
                                wanted: None,
                            },
                        );
                        new_tracks.push((
                            TrackId {
                                publisher: id,
                                mid: m.mid,
                            },
                            m.kind,
                        ));
                    }
                    Event::RtpPacket(pkt) => packets.push(pkt),
                    // The subscriber lost a picture: ask the track's publisher, for the
                    // layer it receives.
                    Event::KeyframeRequest(r) => {
                        let track = p.subscribed.iter().find(|(_, o)| o.mid == r.mid);
                        if let Some((track, o)) = track {
                            keyframes_wanted.push((*track, o.layer.or(o.target)));
                        }
                    }
                    // Counters come as totals: what changed since the last report is added.
                    Event::MediaEgressStats(e) => {
                        let written = p.subscribed.values().find(|o| o.mid == e.mid);
                        if let Some(written) = written.map(|o| o.written) {
                            let resent = e.packets.saturating_sub(written);
                            let last = p.egress_seen.entry(e.mid).or_default();
                            self.stats.nacks_received += e.nacks.saturating_sub(last.0);
                            self.stats.rtx_packets += resent.saturating_sub(last.1);
                            *last = (e.nacks.max(last.0), resent.max(last.1));
                        }
                    }
                    Event::MediaIngressStats(i) => {
                        let last = p.ingress_nacks.entry((i.mid, i.rid)).or_default();
                        self.stats.nacks_sent += i.nacks.saturating_sub(*last);
                        *last = i.nacks.max(*last);
                    }
                    Event::EgressBitrateEstimate(BweKind::Twcc { estimate, .. }) => {
                        // A fall of more than a sixth is acted on now, not at the next round.
                        if estimate.as_u64() * 6 < p.estimate_bps * 5 {
                            reallocate = true;
                        }
                        p.estimate_bps = estimate.as_u64();
                    }
                    _ => {}
                },
                Err(_) => {
                    gone = Some("the media engine failed");
                    p.timeout = None;
                    break;
                }
            }
        }
        if let Some((sdp, tracks)) = p.offer_waiting() {
            self.events.push_back(SfuEvent::Offer {
                participant: id,
                sdp,
                tracks,
            });
        }
        if !new_tracks.is_empty() {
            self.announce(id, &new_tracks, now);
        }
        for (track, layer) in keyframes_wanted {
            self.request_keyframe(track, layer, now);
        }
        if reallocate {
            self.reallocate(now);
        }
        for pkt in packets {
            self.forward(id, pkt, now);
        }
        if let Some(reason) = gone {
            self.leave(id, reason, now);
        }
    }

    /// Tells the other members of `publisher`'s room about its new tracks.
    fn announce(
        &mut self,
        publisher: ParticipantId,
        tracks: &[(TrackId, MediaKind)],
        now: Instant,
    ) {
        let Some(room) = self.participants.get(&publisher).map(|p| p.room.clone()) else {
            return;
        };
        for other in self.members(&room) {
            if other == publisher {
                continue;
            }
            if let Some(p) = self.participants.get_mut(&other) {
                p.to_add.extend(tracks.iter().copied());
            }
            self.drain(other, now);
        }
    }
}
