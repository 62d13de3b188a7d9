//! Group calls through the SFU's sans-IO core in virtual time: real str0m clients (full
//! ICE, DTLS, SRTP, Opus with RED negotiated) joining one room over a simulated network,
//! each publishing audio frames that name their sender and number, each checking what it
//! hears of every other.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;

use common::wire::Wire;

use natter_media::video::{
    EncoderSettings, Stamp, TestPattern, Vp8Decoder, Vp8Encoder, read_stamp,
};
use natter_sfu::{ParticipantId, RoomId, Sfu, SfuConfig, SfuEvent};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::format::Codec;
use str0m::media::{Direction, Frequency, KeyframeRequestKind, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

const ONE_WAY: Duration = Duration::from_millis(10);
const FRAME: Duration = Duration::from_millis(20);
const VIDEO_FRAME: Duration = Duration::from_millis(66);
const VIDEO_W: u32 = 160;
const VIDEO_H: u32 = 128;
/// A video frame's stamp carries its sender in the millions.
const PER_SENDER: u32 = 1_000_000;

/// A client's camera: the stamped test pattern through a real VP8 encoder.
struct Camera {
    mid: Mid,
    pattern: TestPattern,
    encoder: Vp8Encoder,
    sent: u32,
    keyframe_asked: bool,
    keyframes: u32,
    /// Keyframe requests that reached it.
    requests: u32,
}

fn sfu_addr() -> SocketAddr {
    "10.9.0.1:3478".parse().unwrap()
}

struct Client {
    index: u8,
    rtc: Rtc,
    addr: SocketAddr,
    id: Option<ParticipantId>,
    send_mid: Mid,
    timeout: Option<Instant>,
    connected: bool,
    /// Frames heard: (sender index, frame number).
    heard: BTreeSet<(u8, u32)>,
    sent: u32,
    camera: Option<Camera>,
    decoders: HashMap<Mid, Vp8Decoder>,
    /// Video frames decoded: (sender index, frame number).
    seen: BTreeSet<(u8, u32)>,
}

impl Client {
    /// A client and its offer (publishing one audio track).
    fn new(index: u8, now: Instant) -> (Client, String, SdpPendingOffer) {
        Client::with_video(index, false, now)
    }

    fn with_video(index: u8, video: bool, now: Instant) -> (Client, String, SdpPendingOffer) {
        let mut rtc = common::client_rtc(now);
        let addr: SocketAddr = format!("10.9.0.{}:5000", 10 + index).parse().unwrap();
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let send_mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        let camera = video.then(|| Camera {
            mid: api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None),
            pattern: TestPattern::new(VIDEO_W, VIDEO_H).unwrap(),
            encoder: Vp8Encoder::new(EncoderSettings {
                width: VIDEO_W,
                height: VIDEO_H,
                fps: 15,
                bitrate_kbps: 150,
                temporal_layers: 1,
            })
            .unwrap(),
            sent: 0,
            keyframe_asked: false,
            keyframes: 0,
            requests: 0,
        });
        let (offer, pending) = api.apply().unwrap();
        let c = Client {
            index,
            rtc,
            addr,
            id: None,
            send_mid,
            timeout: Some(now),
            connected: false,
            heard: BTreeSet::new(),
            sent: 0,
            camera,
            decoders: HashMap::new(),
            seen: BTreeSet::new(),
        };
        (c, offer.to_sdp_string(), pending)
    }

    fn send_frame(&mut self, now: Instant) {
        if common::write_audio_frame(&mut self.rtc, self.send_mid, self.index, self.sent, now) {
            self.sent += 1;
        }
    }
}

impl Client {
    fn send_video_frame(&mut self, now: Instant) {
        let index = self.index;
        let Some(cam) = self.camera.as_mut() else {
            return;
        };
        let n = cam.sent;
        let stamp = Stamp {
            frame: u32::from(index) * PER_SENDER + n,
            capture_ms: n.wrapping_mul(66),
        };
        let picture = cam.pattern.draw(stamp).to_vec();
        let pts = i64::from(n) * 6_000;
        let force = std::mem::take(&mut cam.keyframe_asked);
        let Some(frame) = cam.encoder.encode(&picture, pts, 6_000, force).unwrap() else {
            return;
        };
        cam.sent += 1;
        cam.keyframes += u32::from(frame.keyframe);
        let Some(w) = self.rtc.writer(cam.mid) else {
            return;
        };
        let Some(pt) = w.payload_params().next().map(|p| p.pt()) else {
            return;
        };
        let time = MediaTime::new(pts as u64, Frequency::NINETY_KHZ);
        w.write(pt, now, time, frame.data).unwrap();
    }

    fn received(&mut self, d: str0m::media::MediaData) {
        if d.params.spec().codec != Codec::Vp8 {
            self.heard.insert(common::audio_frame_id(&d.data));
            return;
        }
        let dec = self
            .decoders
            .entry(d.mid)
            .or_insert_with(|| Vp8Decoder::new().unwrap());
        if let Ok(Some(pic)) = dec.decode(&d.data)
            && let Some(stamp) = read_stamp(&pic.luma, pic.width, pic.height)
        {
            self.seen
                .insert(((stamp.frame / PER_SENDER) as u8, stamp.frame % PER_SENDER));
        }
    }

    /// Video frame numbers decoded of client `sender`.
    fn seen_from(&self, sender: u8) -> BTreeSet<u32> {
        self.seen
            .iter()
            .filter(|(s, _)| *s == sender)
            .map(|(_, n)| *n)
            .collect()
    }
}

struct Group {
    sfu: Sfu,
    room: RoomId,
    clients: Vec<Client>,
    wire: Wire,
    now: Instant,
    next_frame: Instant,
    next_video_frame: Instant,
    video: bool,
    offers: u32,
    /// Addresses whose datagrams vanish both ways (a crashed client).
    cut: Vec<SocketAddr>,
    events: Vec<SfuEvent>,
}

impl Group {
    fn new(now: Instant) -> Group {
        Group {
            sfu: Sfu::new(SfuConfig::new(sfu_addr(), common::SECRET.to_vec())),
            room: RoomId("family".into()),
            clients: Vec::new(),
            wire: Wire::new(ONE_WAY),
            now,
            next_frame: now,
            next_video_frame: now,
            video: false,
            offers: 0,
            cut: Vec::new(),
            events: Vec::new(),
        }
    }

    /// A room of `n` clients that have joined (not yet connected: [`Group::run`] does that).
    fn with(n: usize, video: bool) -> Group {
        let mut g = Group::new(Instant::now());
        g.video = video;
        for _ in 0..n {
            g.join();
        }
        g
    }

    fn join(&mut self) {
        let index = self.clients.len() as u8;
        let (mut c, offer, pending) = Client::with_video(index, self.video, self.now);
        let token = common::token(&self.room.0, u64::from(index));
        let (id, answer) = self
            .sfu
            .join(&token, &offer, self.now, common::unix_now())
            .unwrap();
        let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
        c.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        c.id = Some(id);
        self.clients.push(c);
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        if self.cut.contains(&from) || self.cut.contains(&to) {
            return;
        }
        self.wire.send(from, to, bytes, self.now);
    }

    /// Moves everything that is ready: SFU offers answered, outputs onto the wire.
    fn settle(&mut self) {
        while let Some(e) = self.sfu.poll_event() {
            self.events.push(e.clone());
            if let SfuEvent::Offer {
                participant, sdp, ..
            } = e
            {
                self.offers += 1;
                let Some(c) = self
                    .clients
                    .iter_mut()
                    .find(|c| c.id == Some(participant) && !self.cut.contains(&c.addr))
                else {
                    continue;
                };
                let offer = SdpOffer::from_sdp_string(&sdp).unwrap();
                let answer = c.rtc.sdp_api().accept_offer(offer).unwrap();
                self.sfu
                    .accept_answer(participant, &answer.to_sdp_string(), self.now)
                    .unwrap();
            }
        }
        let mut out = Vec::new();
        for c in &mut self.clients {
            loop {
                match c.rtc.poll_output().unwrap() {
                    Output::Timeout(t) => {
                        c.timeout = Some(t);
                        break;
                    }
                    Output::Transmit(t) => out.push((c.addr, t.destination, t.contents.to_vec())),
                    Output::Event(Event::Connected) => c.connected = true,
                    Output::Event(Event::MediaData(d)) => c.received(d),
                    Output::Event(Event::KeyframeRequest(_)) => {
                        if let Some(cam) = c.camera.as_mut() {
                            cam.keyframe_asked = true;
                            cam.requests += 1;
                        }
                    }
                    Output::Event(_) => {}
                }
            }
        }
        while let Some(t) = self.sfu.poll_transmit() {
            out.push((sfu_addr(), t.destination, t.contents));
        }
        for (from, to, bytes) in out {
            self.send(from, to, bytes);
        }
    }

    /// Every client that is connected and not cut off.
    fn each_live_client(&mut self, f: impl FnMut(&mut Client)) {
        let cut = &self.cut;
        self.clients
            .iter_mut()
            .filter(|c| c.connected && !cut.contains(&c.addr))
            .for_each(f);
    }

    /// Runs the network and everyone's timers for `length`, every connected client sending
    /// a frame each 20 ms.
    fn run(&mut self, length: Duration) {
        let end = self.now + length;
        for _ in 0..10_000_000 {
            self.settle();
            let next = [
                self.wire.next_at(),
                self.sfu.poll_timeout(),
                Some(self.next_frame),
                self.video.then_some(self.next_video_frame),
            ]
            .into_iter()
            .chain(self.clients.iter().map(|c| c.timeout))
            .flatten()
            .min()
            .unwrap();
            if next > end {
                self.now = end;
                return;
            }
            self.now = next.max(self.now);
            let now = self.now;
            while let Some(w) = self.wire.pop_due(now) {
                if w.to == sfu_addr() {
                    self.sfu.handle_datagram(w.from, w.to, &w.bytes, now);
                } else if let Some(c) = self.clients.iter_mut().find(|c| c.addr == w.to) {
                    let r = Receive::new(Protocol::Udp, w.from, w.to, &w.bytes).unwrap();
                    c.rtc.handle_input(Input::Receive(now, r)).unwrap();
                }
            }
            if self.sfu.poll_timeout().is_some_and(|t| t <= now) {
                self.sfu.handle_timeout(now);
            }
            for c in &mut self.clients {
                if c.timeout.is_some_and(|t| t <= now) {
                    c.rtc.handle_input(Input::Timeout(now)).unwrap();
                }
            }
            if self.next_frame <= now {
                self.next_frame = now + FRAME;
                self.each_live_client(|c| c.send_frame(now));
            }
            if self.video && self.next_video_frame <= now {
                self.next_video_frame = now + VIDEO_FRAME;
                self.each_live_client(|c| c.send_video_frame(now));
            }
        }
        panic!("the simulation does not advance");
    }
}

impl Client {
    /// Frame numbers heard from client `sender`.
    fn heard_from(&self, sender: u8) -> BTreeSet<u32> {
        self.heard
            .iter()
            .filter(|(s, _)| *s == sender)
            .map(|(_, n)| *n)
            .collect()
    }
}

#[test]
fn four_participants_each_hear_every_other() {
    let mut g = Group::with(4, false);
    g.run(Duration::from_secs(6));
    assert!(g.clients.iter().all(|c| c.connected));
    assert_eq!(g.sfu.members(&g.room).len(), 4);
    for c in &g.clients {
        for other in g.clients.iter().filter(|o| o.index != c.index) {
            let heard: BTreeSet<u32> = c
                .heard
                .iter()
                .filter(|(s, _)| *s == other.index)
                .map(|(_, n)| *n)
                .collect();
            // Frames sent before the subscriber's m-line was negotiated are not forwarded:
            // count from one second in, everything after must arrive (a lossless link).
            let from = 50;
            let expected: BTreeSet<u32> = (from..other.sent.saturating_sub(5)).collect();
            let missing: Vec<u32> = expected.difference(&heard).copied().collect();
            assert!(
                missing.is_empty() && other.sent > 250,
                "client {} missed {} of {}'s frames {from}.. ({:?}…); it sent {}",
                c.index,
                missing.len(),
                other.index,
                &missing[..missing.len().min(5)],
                other.sent
            );
        }
        // It never hears itself.
        assert!(c.heard.iter().all(|(s, _)| *s != c.index));
    }
    assert!(g.sfu.stats.forwarded_packets > 4 * 3 * 250);
    // Each joiner was offered the tracks already there, and each earlier member the new one.
    assert!(g.offers >= 3, "offers: {}", g.offers);
}

#[test]
fn a_late_joiner_hears_everyone_within_a_second_and_is_heard() {
    let mut g = Group::with(3, false);
    g.run(Duration::from_secs(3));
    let sent_at_join: Vec<u32> = g.clients.iter().map(|c| c.sent).collect();
    g.join();
    g.run(Duration::from_secs(1));
    let late = &g.clients[3];
    assert!(late.connected);
    for (i, other) in g.clients.iter().take(3).enumerate() {
        let heard = late.heard_from(other.index);
        // Within the second after joining it hears the others' frames of that second.
        let first = heard.iter().next().copied();
        assert!(
            first.is_some_and(|f| f < sent_at_join[i] + 50) && heard.len() > 20,
            "late joiner heard {} frames of client {i}, first {first:?}, sent at join {}",
            heard.len(),
            sent_at_join[i]
        );
    }
    g.run(Duration::from_secs(2));
    for c in g.clients.iter().take(3) {
        let heard = c.heard_from(3);
        let sent = g.clients[3].sent;
        assert!(
            heard.len() as u32 + 60 > sent,
            "client {} heard {} of the late joiner's {sent}",
            c.index,
            heard.len()
        );
    }
}

#[test]
fn five_pct_loss_on_one_downlink_is_repaired_by_red() {
    let mut g = Group::with(3, false);
    let victim = g.clients[0].addr;
    g.wire.shape(victim).loss = 0.05;
    g.run(Duration::from_secs(20));
    for other in 1..3u8 {
        let heard = g.clients[0].heard_from(other);
        let sent = g.clients[other as usize].sent;
        // From frame 100 (setup is behind) to the last few still in flight.
        let expected: BTreeSet<u32> = (100..sent - 5).collect();
        let missing = expected.difference(&heard).count();
        let pct = 100.0 * missing as f64 / expected.len() as f64;
        println!(
            "client 0 of client {other}: {missing} of {} frames lost after repair ({pct:.2} %)",
            expected.len()
        );
        // Each packet carries the previous frame too: a frame is lost only when two packets
        // in a row are (0.05² = 0.25 %); without RED this would be ~5 %.
        assert!(pct < 1.0, "{pct:.2} % lost after repair");
        assert!(expected.len() > 800);
    }
    // The other downlinks lost nothing.
    let clean = g.clients[1].heard_from(2);
    assert!((100..g.clients[2].sent - 5).all(|n| clean.contains(&n)));
}

#[test]
fn a_participant_that_leaves_is_removed_and_no_longer_forwarded() {
    let mut g = Group::with(3, false);
    g.run(Duration::from_secs(2));
    let gone = g.clients[2].id.unwrap();
    let offers = g.offers;
    g.sfu.leave(gone, "hung up", g.now);
    g.run(Duration::from_millis(100));
    // Each of the two left was offered its m-line for the leaver's track, now inactive,
    // and answered.
    assert_eq!(g.offers, offers + 2);
    let offered_inactive = g
        .events
        .iter()
        .rev()
        .take(4)
        .any(|e| matches!(e, SfuEvent::Offer { sdp, .. } if sdp.contains("a=inactive")));
    assert!(
        offered_inactive,
        "{:?}",
        g.events.iter().rev().take(4).collect::<Vec<_>>()
    );
    let heard_then = g.clients[0].heard_from(2).len();
    g.run(Duration::from_secs(2));
    assert_eq!(
        g.clients[0].heard_from(2).len(),
        heard_then,
        "still forwarded"
    );
    assert_eq!(g.sfu.members(&g.room).len(), 2);
    assert_eq!(g.sfu.participants(), 2);
    assert!(
        g.events
            .iter()
            .any(|e| matches!(e, SfuEvent::Left { participant, .. } if *participant == gone))
    );
    // The two left still hear each other.
    let sent = g.clients[1].sent;
    assert!(g.clients[0].heard_from(1).contains(&(sent - 10)));
}

#[test]
fn a_participant_that_crashes_is_removed_and_freed() {
    let mut g = Group::with(3, false);
    g.run(Duration::from_secs(2));
    let crashed = g.clients[1].id.unwrap();
    g.cut.push(g.clients[1].addr);
    g.run(Duration::from_secs(30));
    let left = g.events.iter().find_map(|e| match e {
        SfuEvent::Left {
            participant,
            reason,
        } if *participant == crashed => Some(reason.clone()),
        _ => None,
    });
    assert!(
        left.is_some(),
        "a silent participant was not removed in 30 s"
    );
    assert_eq!(g.sfu.members(&g.room).len(), 2);
    assert_eq!(g.sfu.participants(), 2);
    let sent = g.clients[2].sent;
    assert!(g.clients[0].heard_from(2).contains(&(sent - 10)));
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let mut g = Group::with(2, false);
    g.run(Duration::from_secs(2));
    let before = g.sfu.stats.clone();
    // Garbage from a stranger and from a member's own address.
    let stranger: SocketAddr = "10.9.0.99:4000".parse().unwrap();
    let member = g.clients[0].addr;
    for (i, from) in [stranger, member].into_iter().enumerate() {
        for len in [0usize, 1, 12, 20, 100, 1500] {
            let junk: Vec<u8> = (0..len).map(|k| (k * 31 + i * 7) as u8 | 0x80).collect();
            g.sfu.handle_datagram(from, sfu_addr(), &junk, g.now);
        }
    }
    assert!(g.sfu.stats.unrouted >= before.unrouted + 6);
    assert!(matches!(
        g.sfu.join(
            &common::token("family", 99),
            "not sdp",
            g.now,
            common::unix_now()
        ),
        Err(natter_sfu::SfuError::BadSdp(_))
    ));
    // Tokens: another secret's, an expired one, and a second join of a device inside.
    let (_, offer, _) = Client::new(7, g.now);
    let forged = natter_signaling::room_token::mint(b"guess", "family", 7, common::unix_now(), 60);
    let expired = natter_signaling::room_token::mint(common::SECRET, "family", 7, 1_000, 60);
    for (token, want) in [
        (
            forged,
            natter_signaling::room_token::TokenError::BadSignature,
        ),
        (expired, natter_signaling::room_token::TokenError::Expired),
        (
            "family.7".to_string(),
            natter_signaling::room_token::TokenError::Malformed,
        ),
    ] {
        assert_eq!(
            g.sfu.join(&token, &offer, g.now, common::unix_now()).err(),
            Some(natter_sfu::SfuError::Token(want))
        );
    }
    assert_eq!(
        g.sfu
            .join(
                &common::token("family", 0),
                &offer,
                g.now,
                common::unix_now()
            )
            .err(),
        Some(natter_sfu::SfuError::AlreadyJoined)
    );
    let id = g.clients[0].id.unwrap();
    assert_eq!(
        g.sfu.accept_answer(id, "v=0", g.now),
        Err(natter_sfu::SfuError::NoOfferPending)
    );
    assert_eq!(
        g.sfu.accept_answer(ParticipantId(12345), "v=0", g.now),
        Err(natter_sfu::SfuError::UnknownParticipant)
    );
    assert_eq!(g.sfu.members(&g.room).len(), 2);
    // Media still flows both ways.
    let heard = g.clients[1].heard_from(0).len();
    g.run(Duration::from_secs(1));
    assert!(g.clients[1].heard_from(0).len() >= heard + 45);
}

#[test]
fn a_full_room_refuses_the_next_joiner() {
    let t0 = Instant::now();
    let mut cfg = SfuConfig::new(sfu_addr(), common::SECRET.to_vec());
    cfg.max_participants = 2;
    let mut sfu = Sfu::new(cfg);
    let room = RoomId("small".into());
    for i in 0..3u8 {
        let (_, offer, _) = Client::new(i, t0);
        let r = sfu.join(
            &common::token("small", i.into()),
            &offer,
            t0,
            common::unix_now(),
        );
        if i < 2 {
            assert!(r.is_ok());
        } else {
            assert_eq!(r.err(), Some(natter_sfu::SfuError::RoomFull(2)));
        }
    }
    assert_eq!(sfu.members(&room).len(), 2);
}

#[test]
fn four_participants_each_see_every_other_and_a_late_joiner_within_a_second() {
    let mut g = Group::with(3, true);
    g.run(Duration::from_secs(4));
    let sent_at_join: Vec<u32> = g
        .clients
        .iter()
        .map(|c| c.camera.as_ref().unwrap().sent)
        .collect();
    g.join();
    g.run(Duration::from_secs(1));
    for i in 0..3u8 {
        let seen = g.clients[3].seen_from(i);
        let first = seen.iter().next().copied();
        // 15 fps: within the second after joining, frames from that second decode.
        assert!(
            first.is_some_and(|f| f <= sent_at_join[i as usize] + 15),
            "late joiner decoded {} frames of client {i}, first {first:?} (sent {} at join)",
            seen.len(),
            sent_at_join[i as usize]
        );
    }
    g.run(Duration::from_secs(3));
    for c in &g.clients {
        for o in g.clients.iter().filter(|o| o.index != c.index) {
            let sent = o.camera.as_ref().unwrap().sent;
            let seen = c.seen_from(o.index);
            // From one second after whichever of the two joined later, every frame.
            let start = if c.index == 3 && o.index != 3 {
                sent_at_join[o.index as usize] + 15
            } else {
                15
            };
            let expected: BTreeSet<u32> = (start..sent - 3).collect();
            let missing = expected.difference(&seen).count();
            assert!(
                missing == 0 && expected.len() > 30,
                "client {} decoded {} of {} frames of client {} (missing {missing})",
                c.index,
                expected.len() - missing,
                expected.len(),
                o.index
            );
        }
    }
    // The late joiner's subscriptions asked for keyframes, which came.
    assert!(g.sfu.stats.keyframe_requests >= 3, "{:?}", g.sfu.stats);
    assert!(
        g.clients
            .iter()
            .take(3)
            .all(|c| c.camera.as_ref().unwrap().keyframes >= 2)
    );
}

#[test]
fn rtcp_naming_another_participants_ssrc_reaches_no_one() {
    let mut g = Group::with(3, true);
    g.run(Duration::from_secs(4));
    // Publisher 0's own video SSRC toward the SFU (which subscribers never see: the SFU
    // rewrites it), as participant 2 might guess or learn it.
    let cam_mid = g.clients[0].camera.as_ref().unwrap().mid;
    let uplink = g.clients[0]
        .rtc
        .direct_api()
        .stream_tx_by_mid(cam_mid, None)
        .unwrap()
        .ssrc();
    let bad = &mut g.clients[2];
    let mid = *bad.decoders.keys().next().expect("2 receives video");
    let real = bad
        .rtc
        .direct_api()
        .stream_rx_by_mid(mid, None)
        .unwrap()
        .ssrc();
    bad.rtc
        .direct_api()
        .expect_stream_rx(uplink, None, mid, None);
    let requests = |g: &Group| g.clients[0].camera.as_ref().unwrap().requests;
    let (asked, sfu_asked) = (requests(&g), g.sfu.stats.keyframe_requests);
    // Two seconds of PLIs and FIRs naming that SSRC, every 100 ms.
    for i in 0..20 {
        let kind = if i % 2 == 0 {
            KeyframeRequestKind::Pli
        } else {
            KeyframeRequestKind::Fir
        };
        if let Some(rx) = g.clients[2].rtc.direct_api().stream_rx(&uplink) {
            rx.request_keyframe(kind);
        }
        g.run(Duration::from_millis(100));
    }
    assert_eq!(requests(&g), asked, "a request naming 0's SSRC reached 0");
    assert_eq!(g.sfu.stats.keyframe_requests, sfu_asked);
    // The same request on a stream 2 really receives does reach that track's publisher: the
    // check above could fail.
    let total = |g: &Group| -> u32 {
        g.clients[..2]
            .iter()
            .map(|c| c.camera.as_ref().unwrap().requests)
            .sum()
    };
    let before = total(&g);
    g.clients[2]
        .rtc
        .direct_api()
        .stream_rx(&real)
        .unwrap()
        .request_keyframe(KeyframeRequestKind::Pli);
    g.run(Duration::from_millis(300));
    assert!(total(&g) > before, "a real PLI should reach its publisher");
    assert!(g.sfu.stats.keyframe_requests > sfu_asked);
    // And the room goes on: everyone still sees everyone.
    let seen: Vec<usize> = (0..3).map(|i| g.clients[1].seen_from(i).len()).collect();
    g.run(Duration::from_secs(1));
    for i in [0u8, 2] {
        assert!(g.clients[1].seen_from(i).len() >= seen[i as usize] + 12);
    }
}

/// The load of the SFU's cost benchmark (`scripts/bench-sfu-core` runs it under callgrind,
/// counting only the instructions spent inside the SFU): an audio room of `PARTICIPANTS`
/// (default 20) in virtual time, for `BENCH_SECONDS` (default 4) after everyone is connected.
#[test]
#[ignore = "a benchmark: scripts/bench-sfu-core runs it under callgrind"]
fn cost_benchmark_audio_room() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let mut g = Group::with(env("PARTICIPANTS", 20) as usize, false);
    g.run(Duration::from_secs(3));
    assert!(g.clients.iter().all(|c| c.connected));
    g.run(Duration::from_secs(env("BENCH_SECONDS", 4)));
    println!("forwarded_packets={}", g.sfu.stats.forwarded_packets);
}
