//! Simulcast through the SFU in virtual time: a publisher sends the test pattern as three
//! layers (natter-media's simulcast sender: real libvpx, two temporal layers each), a
//! subscriber decodes what the SFU forwards. Its downlink is limited to 300 kbit/s for a
//! while: the SFU's allocator, fed by str0m's estimate of that downlink, moves it to a
//! lower layer, and back to the full picture once the limit lifts, with no long freeze.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

mod common;

use common::wire::Wire;
use natter_media::session::simulcast::{self, SimulcastSender};
use natter_media::session::video_pipe::VideoReceiver;
use natter_media::video::VideoOptions;
use natter_sfu::{ParticipantId, Sfu, SfuConfig, SfuEvent};
use str0m::change::{SdpAnswer, SdpOffer};
use str0m::format::Codec;
use str0m::media::{Direction, MediaKind, Mid, Rid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc};

const ONE_WAY: Duration = Duration::from_millis(15);

fn sfu_addr() -> SocketAddr {
    "10.9.0.1:3478".parse().unwrap()
}

fn opts() -> VideoOptions {
    VideoOptions {
        width: 640,
        height: 360,
        fps: 15,
        bitrate_kbps: 900,
    }
}

struct Peer {
    rtc: Rtc,
    addr: SocketAddr,
    id: ParticipantId,
    timeout: Option<Instant>,
}

/// A publisher (peer 0, sending simulcast) and a subscriber (peer 1, decoding).
struct Call {
    sfu: Sfu,
    wire: Wire,
    peers: Vec<Peer>,
    now: Instant,
    video_mid: Mid,
    sender: Option<SimulcastSender>,
    /// The subscriber's side as natter's client has it: decodes, asks for a keyframe
    /// when a picture is lost.
    receiver: Option<VideoReceiver>,
    /// Each decoded frame at the subscriber: when, and its width.
    decoded: Vec<(Instant, u32)>,
    layer_events: Vec<Vec<String>>,
    start: Instant,
    /// `TRACE_SIM=1`: a line every 100 ms of what the subscriber's downlink carries.
    trace: bool,
    traced: Instant,
}

impl Call {
    fn new() -> Call {
        let now = Instant::now();
        let mut sfu = Sfu::new(SfuConfig::new(sfu_addr(), common::SECRET.to_vec()));
        let mut peers = Vec::new();
        let mut video_mid = None;
        for i in 0..2u8 {
            let mut rtc = common::client_rtc(now);
            let addr: SocketAddr = format!("10.9.0.{}:5000", 10 + i).parse().unwrap();
            rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
            let mut api = rtc.sdp_api();
            api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
            if i == 0 {
                video_mid = Some(api.add_media(
                    MediaKind::Video,
                    Direction::SendOnly,
                    None,
                    None,
                    Some(simulcast::sdp_layers(&opts())),
                ));
            }
            let (offer, pending) = api.apply().unwrap();
            let token = common::token("sim", u64::from(i));
            let (id, answer) = sfu
                .join(&token, &offer.to_sdp_string(), now, common::unix_now())
                .unwrap();
            rtc.sdp_api()
                .accept_answer(pending, SdpAnswer::from_sdp_string(&answer).unwrap())
                .unwrap();
            peers.push(Peer {
                rtc,
                addr,
                id,
                timeout: Some(now),
            });
        }
        Call {
            sfu,
            wire: Wire::new(ONE_WAY),
            peers,
            now,
            video_mid: video_mid.unwrap(),
            sender: None,
            receiver: None,
            decoded: Vec::new(),
            layer_events: Vec::new(),
            start: now,
            trace: std::env::var_os("TRACE_SIM").is_some(),
            traced: now,
        }
    }

    fn settle(&mut self) {
        while let Some(e) = self.sfu.poll_event() {
            match e {
                SfuEvent::Offer {
                    participant, sdp, ..
                } => {
                    let p = self.peers.iter_mut().find(|p| p.id == participant).unwrap();
                    let offer = SdpOffer::from_sdp_string(&sdp).unwrap();
                    let answer = p.rtc.sdp_api().accept_offer(offer).unwrap();
                    self.sfu
                        .accept_answer(participant, &answer.to_sdp_string(), self.now)
                        .unwrap();
                }
                SfuEvent::Layers { rids, .. } => {
                    if let Some(s) = self.sender.as_mut() {
                        let rids: Vec<Rid> = rids.iter().map(|r| Rid::from(r.as_str())).collect();
                        s.set_wanted(&rids);
                    }
                    self.layer_events.push(rids);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for (i, p) in self.peers.iter_mut().enumerate() {
            loop {
                match p.rtc.poll_output().unwrap() {
                    Output::Timeout(t) => {
                        p.timeout = Some(t);
                        break;
                    }
                    Output::Transmit(t) => out.push((p.addr, t.destination, t.contents.to_vec())),
                    Output::Event(Event::Connected) if i == 0 && self.sender.is_none() => {
                        self.sender = Some(SimulcastSender::new(&opts(), self.now).unwrap());
                    }
                    Output::Event(Event::KeyframeRequest(r)) if i == 0 => {
                        if let Some(s) = self.sender.as_mut() {
                            s.keyframe_requested(r.rid);
                        }
                    }
                    Output::Event(Event::MediaData(d))
                        if i == 1 && d.params.spec().codec == Codec::Vp8 =>
                    {
                        let now = self.now;
                        let rx = self
                            .receiver
                            .get_or_insert_with(|| VideoReceiver::new(now).unwrap());
                        let before = rx.stats().video_frames_rendered;
                        let rtp = d.time.rebase(str0m::media::Frequency::NINETY_KHZ).numer();
                        let wall = now.duration_since(self.start).as_millis() as u32;
                        if rx.frame(&d.data, rtp, d.contiguous, now, wall)
                            && let Some(mut w) = p.rtc.writer(d.mid)
                        {
                            let _ =
                                w.request_keyframe(d.rid, str0m::media::KeyframeRequestKind::Pli);
                        }
                        let st = rx.stats();
                        if st.video_frames_rendered > before {
                            self.decoded.push((now, st.video_width));
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
            self.wire.send(from, to, bytes, self.now);
        }
    }

    fn run(&mut self, length: Duration) {
        let end = self.now + length;
        let mut wall = 0u32;
        for _ in 0..50_000_000 {
            self.settle();
            let next = [
                self.wire.next_at(),
                self.sfu.poll_timeout(),
                self.sender.as_ref().and_then(|s| s.next_due()),
            ]
            .into_iter()
            .chain(self.peers.iter().map(|p| p.timeout))
            .flatten()
            .min()
            .unwrap();
            if next > end {
                self.now = end;
                return;
            }
            self.now = next.max(self.now);
            let now = self.now;
            if self.trace && now >= self.traced + Duration::from_millis(100) {
                self.print_trace(now);
            }
            while let Some(w) = self.wire.pop_due(now) {
                if w.to == sfu_addr() {
                    self.sfu.handle_datagram(w.from, w.to, &w.bytes, now);
                } else if let Some(p) = self.peers.iter_mut().find(|p| p.addr == w.to) {
                    let r = Receive::new(Protocol::Udp, w.from, w.to, &w.bytes).unwrap();
                    p.rtc.handle_input(Input::Receive(now, r)).unwrap();
                }
            }
            if self.sfu.poll_timeout().is_some_and(|t| t <= now) {
                self.sfu.handle_timeout(now);
            }
            for p in &mut self.peers {
                if p.timeout.is_some_and(|t| t <= now) {
                    p.rtc.handle_input(Input::Timeout(now)).unwrap();
                }
            }
            if let Some(s) = self.sender.as_mut()
                && s.next_due().is_some_and(|t| t <= now)
            {
                wall = wall.wrapping_add(1);
                s.send(&mut self.peers[0].rtc, self.video_mid, now, wall, None)
                    .unwrap();
            }
        }
        panic!("the simulation does not advance");
    }

    /// The subscriber's estimate, picture and bottleneck, and what its downlink carried
    /// since the last line, kbit/s by RTP payload type (a lead when a run goes wrong).
    fn print_trace(&mut self, now: Instant) {
        self.traced = now;
        let sub = self.peers[1].addr;
        let est: Vec<u64> = self.sfu.estimates().map(|b| b / 1000).collect();
        let kbps_by_pt: Vec<(u8, u64)> = self
            .wire
            .pt_bytes
            .iter()
            .filter(|((to, _), _)| *to == sub)
            .map(|((_, pt), bytes)| (*pt, bytes * 8 / 100))
            .collect();
        self.wire.pt_bytes.clear();
        eprintln!(
            "t={:>6}ms estimates_kbps={est:?} width={:?} backlog_ms={} dropped={} \
             keyframe_requests={} switches={} nacks={} rtx={} kbps_by_pt={kbps_by_pt:?}",
            now.duration_since(self.start).as_millis(),
            self.width_at(now),
            self.wire.backlog(sub, now).as_millis(),
            self.wire.dropped_by_limit,
            self.sfu.stats.keyframe_requests,
            self.sfu.stats.layer_switches,
            self.sfu.stats.nacks_received,
            self.sfu.stats.rtx_packets,
        );
    }

    /// The width of the last frame decoded by `t`.
    fn width_at(&self, t: Instant) -> Option<u32> {
        self.decoded
            .iter()
            .rev()
            .find(|(at, _)| *at <= t)
            .map(|(_, w)| *w)
    }

    /// The first time from `from` at which a frame of `pred` width was decoded.
    fn first(&self, from: Instant, pred: impl Fn(u32) -> bool) -> Option<Duration> {
        self.decoded
            .iter()
            .find(|(at, w)| *at >= from && pred(*w))
            .map(|(at, _)| at.duration_since(from))
    }

    /// The longest time between two decoded frames in [from, to).
    fn longest_gap(&self, from: Instant, to: Instant) -> Duration {
        self.decoded
            .windows(2)
            .filter(|w| w[0].0 >= from && w[1].0 < to)
            .map(|w| w[1].0.duration_since(w[0].0))
            .max()
            .unwrap_or(Duration::MAX)
    }
}

#[test]
fn a_limited_downlink_drops_to_a_lower_layer_and_climbs_back_when_it_lifts() {
    let mut c = Call::new();
    let start = c.now;
    c.run(Duration::from_secs(8));
    assert_eq!(
        c.width_at(c.now),
        Some(640),
        "the full picture on an open link"
    );
    // 300 kbit/s toward the subscriber, with a quarter second of buffer.
    let limited = c.now;
    let sub = c.peers[1].addr;
    let shape = c.wire.shape(sub);
    shape.rate_bps = Some(300_000);
    shape.buffer = Duration::from_millis(250);
    c.run(Duration::from_secs(12));
    let down = c
        .first(limited, |w| w < 640)
        .expect("a lower layer under the limit");
    assert!(
        c.width_at(c.now).unwrap() < 640,
        "still lower at the end of the limit"
    );
    let lifted = c.now;
    c.wire.shape(sub).rate_bps = None;
    c.run(Duration::from_secs(15));
    let up = c
        .first(lifted, |w| w == 640)
        .expect("the full picture again after the limit");
    let gap_limited = c.longest_gap(limited, lifted);
    let gap_all = c.longest_gap(start + Duration::from_secs(2), c.now);
    println!(
        "down after {} ms, up after {} ms; longest gap under the limit {} ms, whole call {} ms; \
         dropped at the bottleneck {}; switches {}, keyframe requests {}, layers told {:?}",
        down.as_millis(),
        up.as_millis(),
        gap_limited.as_millis(),
        gap_all.as_millis(),
        c.wire.dropped_by_limit,
        c.sfu.stats.layer_switches,
        c.sfu.stats.keyframe_requests,
        c.layer_events,
    );
    assert!(down <= Duration::from_secs(2), "down after {down:?}");
    assert!(up <= Duration::from_secs(10), "up after {up:?}");
    assert!(
        gap_limited < Duration::from_millis(500),
        "a freeze of {gap_limited:?} under the limit"
    );
    assert!(c.sfu.stats.layer_switches >= 2);
}

/// A publisher whose own uplink estimate has no room for its top layer stops sending it
/// (natter's client does; so do browsers). Its subscribers must not watch a frozen picture
/// until it comes back: the SFU sees the layer fall silent and moves them down.
#[test]
fn a_layer_the_publisher_stops_moves_its_subscribers_down_without_a_freeze() {
    let mut c = Call::new();
    c.run(Duration::from_secs(8));
    assert_eq!(
        c.width_at(c.now),
        Some(640),
        "the full picture on an open link"
    );
    // Room for the quarter and half pictures (360 kbit/s), not the full one.
    let dropped = c.now;
    c.sender.as_mut().unwrap().follow_estimate(400);
    c.run(Duration::from_secs(4));
    let down = c
        .first(dropped, |w| w < 640)
        .expect("a lower layer once the top one stopped");
    let gap = c.longest_gap(dropped - Duration::from_millis(100), c.now);
    assert_eq!(c.width_at(c.now), Some(320), "the half picture, still sent");
    // Room again: the layer is tried again when its hold ends.
    let back = c.now;
    c.sender.as_mut().unwrap().follow_estimate(2000);
    c.run(Duration::from_secs(6));
    let up = c
        .first(back, |w| w == 640)
        .expect("the full picture once the layer is sent again");
    println!(
        "down after {} ms, longest gap {} ms, up after {} ms; layers told {:?}",
        down.as_millis(),
        gap.as_millis(),
        up.as_millis(),
        c.layer_events,
    );
    assert!(gap < Duration::from_millis(500), "a freeze of {gap:?}");
    assert!(
        up <= natter_sfu::layers::STALL_HOLD + Duration::from_secs(1),
        "up after {up:?}"
    );
}

#[test]
fn five_percent_loss_on_a_downlink_is_repaired_by_nack_and_rtx() {
    let mut c = Call::new();
    c.run(Duration::from_secs(6));
    assert_eq!(c.width_at(c.now), Some(640), "the full picture first");
    let sub = c.peers[1].addr;
    let before = c.receiver.as_ref().unwrap().stats();
    let (sent0, lost0) = (
        c.wire.sent_to[&sub],
        c.wire.lost_to.get(&sub).copied().unwrap_or(0),
    );
    let (nacks0, rtx0) = (c.sfu.stats.nacks_received, c.sfu.stats.rtx_packets);
    let lossy = c.now;
    c.wire.shape(sub).loss = 0.05;
    c.run(Duration::from_secs(20));
    let after = c.receiver.as_ref().unwrap().stats();
    let sent = c.wire.sent_to[&sub] - sent0;
    let lost = c.wire.lost_to[&sub] - lost0;
    let rendered = after.video_frames_rendered - before.video_frames_rendered;
    let missed = after.video_frames_missed - before.video_frames_missed;
    let residual = missed as f64 / (rendered + missed).max(1) as f64;
    let nacks = c.sfu.stats.nacks_received - nacks0;
    let rtx = c.sfu.stats.rtx_packets - rtx0;
    let gap = c.longest_gap(lossy + Duration::from_secs(1), c.now);
    println!(
        "5 % loss toward the subscriber: {lost} of {sent} datagrams lost ({:.1} %); frames \
         rendered {rendered}, missed {missed} (residual {:.2} %); NACKs {nacks}, resent {rtx}; \
         longest gap {} ms; width at the end {:?}",
        lost as f64 * 100.0 / sent as f64,
        residual * 100.0,
        gap.as_millis(),
        c.width_at(c.now),
    );
    assert!(
        lost * 100 >= sent * 3,
        "the loss happened: {lost} of {sent}"
    );
    assert!(nacks > 0 && rtx > 0, "NACKs {nacks}, resent {rtx}");
    // Unrepaired, 5 % of packets is a damaged frame in three at these frame sizes.
    assert!(
        residual <= 0.01,
        "residual frame loss {:.2} %",
        residual * 100.0
    );
    assert!(
        rendered >= 20 * 15 * 9 / 10,
        "rendered {rendered} frames in 20 s"
    );
    assert!(gap < Duration::from_millis(500), "a freeze of {gap:?}");
}
