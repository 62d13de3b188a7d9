//! Group calls through the SFU's sans-IO core in virtual time: real str0m clients (full
//! ICE, DTLS, SRTP, Opus with RED negotiated) joining one room over a simulated network,
//! each publishing audio frames that name their sender and number, each checking what it
//! hears of every other.

use std::collections::{BTreeSet, BinaryHeap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_sfu::{ParticipantId, RoomId, Sfu, SfuConfig, SfuEvent};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

const ONE_WAY: Duration = Duration::from_millis(10);
const FRAME: Duration = Duration::from_millis(20);

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
}

impl Client {
    /// A client and its offer (publishing one audio track).
    fn new(index: u8, now: Instant) -> (Client, String, SdpPendingOffer) {
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(Arc::new(natter_media::session::dtls::crypto_provider()))
            .clear_codecs()
            .enable_opus(true, true)
            .build(now);
        let addr: SocketAddr = format!("10.9.0.{}:5000", 10 + index).parse().unwrap();
        rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
        let mut api = rtc.sdp_api();
        let send_mid = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
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
        };
        (c, offer.to_sdp_string(), pending)
    }

    fn send_frame(&mut self, now: Instant) {
        let Some(w) = self.rtc.writer(self.send_mid) else {
            return;
        };
        let Some(pt) = w.payload_params().next().map(|p| p.pt()) else {
            return;
        };
        let n = self.sent;
        let mut data = vec![self.index];
        data.extend_from_slice(&n.to_le_bytes());
        data.resize(60, 0xAA);
        let time = MediaTime::new(u64::from(n) * 960, Frequency::FORTY_EIGHT_KHZ);
        w.write(pt, now, time, data).unwrap();
        self.sent += 1;
    }
}

#[derive(PartialEq, Eq)]
struct InFlight {
    at: Instant,
    seq: u64,
    from: SocketAddr,
    to: SocketAddr,
    bytes: Vec<u8>,
}

impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

struct Group {
    sfu: Sfu,
    room: RoomId,
    clients: Vec<Client>,
    wire: BinaryHeap<InFlight>,
    seq: u64,
    now: Instant,
    next_frame: Instant,
    offers: u32,
}

impl Group {
    fn new(now: Instant) -> Group {
        Group {
            sfu: Sfu::new(SfuConfig::new(sfu_addr())),
            room: RoomId("family".into()),
            clients: Vec::new(),
            wire: BinaryHeap::new(),
            seq: 0,
            now,
            next_frame: now,
            offers: 0,
        }
    }

    fn join(&mut self) {
        let index = self.clients.len() as u8;
        let (mut c, offer, pending) = Client::new(index, self.now);
        let (id, answer) = self.sfu.join(&self.room, &offer, self.now).unwrap();
        let answer = SdpAnswer::from_sdp_string(&answer).unwrap();
        c.rtc.sdp_api().accept_answer(pending, answer).unwrap();
        c.id = Some(id);
        self.clients.push(c);
    }

    fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>) {
        self.seq += 1;
        self.wire.push(InFlight {
            at: self.now + ONE_WAY,
            seq: self.seq,
            from,
            to,
            bytes,
        });
    }

    /// Moves everything that is ready: SFU offers answered, outputs onto the wire.
    fn settle(&mut self) {
        while let Some(e) = self.sfu.poll_event() {
            if let SfuEvent::Offer {
                participant, sdp, ..
            } = e
            {
                self.offers += 1;
                let c = self
                    .clients
                    .iter_mut()
                    .find(|c| c.id == Some(participant))
                    .expect("an offer for a client of this test");
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
                    Output::Event(Event::MediaData(d)) => {
                        let n = u32::from_le_bytes(d.data[1..5].try_into().unwrap());
                        c.heard.insert((d.data[0], n));
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

    /// Runs the network and everyone's timers for `length`, every connected client sending
    /// a frame each 20 ms.
    fn run(&mut self, length: Duration) {
        let end = self.now + length;
        for _ in 0..10_000_000 {
            self.settle();
            let next = [
                self.wire.peek().map(|w| w.at),
                self.sfu.poll_timeout(),
                Some(self.next_frame),
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
            while self.wire.peek().is_some_and(|w| w.at <= now) {
                let w = self.wire.pop().unwrap();
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
                for c in self.clients.iter_mut().filter(|c| c.connected) {
                    c.send_frame(now);
                }
            }
        }
        panic!("the simulation does not advance");
    }
}

#[test]
fn four_participants_each_hear_every_other() {
    let t0 = Instant::now();
    let mut g = Group::new(t0);
    for _ in 0..4 {
        g.join();
    }
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
