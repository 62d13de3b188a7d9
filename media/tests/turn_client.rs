//! The TURN client against natter-turn's own core, in virtual time: the two sans-IO halves
//! wired back to back, with packets lost on purpose where a test says so.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_media::{TurnClient, TurnConfig, TurnError, TurnEvent, TurnTransport};
use natter_turn::server::{Config, FiveTuple, Output, Server, Transport};
use natter_turn::stun::{self, ChannelData, Class, Message, MessageBuilder, attr};

/// Unix time of the virtual clock's start, in ms (REST credentials carry unix expiries).
const T0_MS: u64 = 1_800_000_000_000;

fn peer(n: u16) -> SocketAddr {
    format!("203.0.113.5:{n}").parse().unwrap()
}

struct Net {
    server: Server,
    five: FiveTuple,
    base: Instant,
    now: Instant,
    relays: Vec<SocketAddr>,
    released: Vec<SocketAddr>,
    /// What reached peers: (relay, peer, data).
    at_peers: Vec<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Client → server packets to lose, by index of transmission (0-based).
    lose_to_server: Vec<usize>,
    sent_to_server: usize,
    /// Whether server → client bytes are fed one at a time (a stream cut anywhere).
    byte_by_byte: bool,
    events: Vec<TurnEvent>,
}

impl Net {
    fn new(transport: TurnTransport, f: impl FnOnce(&mut Config)) -> Net {
        let mut cfg = Config {
            realm: "natter.test".into(),
            rest_secret: Some(b"rest-secret".to_vec()),
            relay_ports: (50000, 50009),
            allowed_peers: vec!["203.0.113.0/24".parse().unwrap()],
            ..Config::default()
        };
        cfg.users.insert("alice".into(), "wonderland".into());
        f(&mut cfg);
        let base = Instant::now();
        Net {
            server: Server::new(cfg, [9; 32]),
            five: FiveTuple {
                transport: match transport {
                    TurnTransport::Udp => Transport::Udp,
                    TurnTransport::Tcp => Transport::Tcp,
                },
                client: "198.51.100.7:40000".parse().unwrap(),
                server: "192.0.2.1:3478".parse().unwrap(),
            },
            base,
            now: base,
            relays: Vec::new(),
            released: Vec::new(),
            at_peers: Vec::new(),
            lose_to_server: Vec::new(),
            sent_to_server: 0,
            byte_by_byte: false,
            events: Vec::new(),
        }
    }

    fn ms(&self) -> u64 {
        T0_MS + (self.now - self.base).as_millis() as u64
    }

    fn client(&mut self, user: &str, pass: &str) -> TurnClient {
        let transport = match self.five.transport {
            Transport::Udp => TurnTransport::Udp,
            _ => TurnTransport::Tcp,
        };
        TurnClient::new(TurnConfig::new(transport, user, pass), self.now)
    }

    fn deliver(&mut self, c: &mut TurnClient, bytes: &[u8]) {
        if self.byte_by_byte {
            for b in bytes {
                c.handle_input(std::slice::from_ref(b), self.now);
            }
        } else {
            c.handle_input(bytes, self.now);
        }
    }

    /// Moves packets both ways until nothing more is sent.
    fn pump(&mut self, c: &mut TurnClient) {
        while let Some(b) = c.poll_transmit() {
            self.reach_server(c, &b);
        }
        while let Some(e) = c.poll_event() {
            self.events.push(e);
        }
    }

    /// Like [`Net::pump`], with every answer arriving `rtt` after its request left.
    fn pump_with_rtt(&mut self, c: &mut TurnClient, rtt: Duration) {
        for _ in 0..100 {
            let sent: Vec<Vec<u8>> = std::iter::from_fn(|| c.poll_transmit()).collect();
            if sent.is_empty() {
                break;
            }
            self.now += rtt;
            for b in sent {
                self.reach_server(c, &b);
            }
        }
        while let Some(e) = c.poll_event() {
            self.events.push(e);
        }
    }

    /// One transmission reaches the server (unless lost), its answers the client.
    fn reach_server(&mut self, c: &mut TurnClient, b: &[u8]) {
        let i = self.sent_to_server;
        self.sent_to_server += 1;
        if self.lose_to_server.contains(&i) {
            return;
        }
        let ms = self.ms();
        let outs = if stun::is_channel_data(b) {
            let padded = self.five.transport != Transport::Udp;
            let (cd, took) = ChannelData::parse(b, padded).unwrap();
            assert_eq!(took, b.len(), "one whole ChannelData per transmit");
            if padded {
                assert_eq!(b.len() % 4, 0, "ChannelData over TCP is padded");
            }
            match self
                .server
                .route_from_client(self.five, cd.channel, cd.data.len(), ms)
            {
                Some((relay, peer)) => vec![Output::ToPeer {
                    relay,
                    peer,
                    data: cd.data.to_vec(),
                }],
                None => Vec::new(),
            }
        } else {
            self.server.handle(self.five, b, ms)
        };
        for o in outs {
            match o {
                Output::ToClient { bytes, .. } => self.deliver(c, &bytes),
                Output::Bind {
                    relay, response, ..
                } => {
                    self.relays.push(relay);
                    self.deliver(c, &response);
                }
                Output::ToPeer { relay, peer, data } => self.at_peers.push((relay, peer, data)),
                Output::Release { relay } => self.released.push(relay),
                Output::Close { .. } => c.handle_closed(),
            }
        }
    }

    /// Runs the clock to `until`, waking the client when due and ticking the server each
    /// second (as its shell does).
    fn advance(&mut self, c: &mut TurnClient, until: Duration) {
        let end = self.base + until;
        for _ in 0..1_000_000 {
            self.pump(c);
            if self.now >= end {
                return;
            }
            let tick = self.now + Duration::from_secs(1);
            let next = c.poll_timeout().map_or(tick, |n| n.min(tick));
            self.now = next.max(self.now).min(end);
            let ms = self.ms();
            for o in self.server.tick(ms) {
                if let Output::Release { relay } = o {
                    self.released.push(relay);
                }
            }
            c.handle_timeout(self.now);
        }
        panic!("the client keeps asking to be woken at once");
    }

    /// `peer` sends `data` to the client's relayed address.
    fn peer_sends(
        &mut self,
        c: &mut TurnClient,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
    ) -> bool {
        let ms = self.ms();
        let Some(route) = self.server.route_from_peer(relay, peer, data.len(), ms) else {
            return false;
        };
        let bytes = match route.channel {
            Some(ch) => {
                let mut out = Vec::new();
                ChannelData::write(ch, data, self.five.transport != Transport::Udp, &mut out);
                out
            }
            None => Server::data_indication(peer, data),
        };
        self.deliver(c, &bytes);
        self.pump(c);
        true
    }

    fn allocated(&self) -> Option<(SocketAddr, SocketAddr, Duration)> {
        self.events.iter().find_map(|e| match e {
            TurnEvent::Allocated {
                relayed,
                mapped,
                lifetime,
            } => Some((*relayed, *mapped, *lifetime)),
            _ => None,
        })
    }

    fn data_events(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                TurnEvent::Data { peer, data } => Some((*peer, data.clone())),
                _ => None,
            })
            .collect()
    }
}

#[test]
fn allocates_after_the_challenge_with_long_term_and_rest_credentials() {
    let mut net = Net::new(TurnTransport::Udp, |_| {});
    let mut c = net.client("alice", "wonderland");
    net.pump(&mut c);
    let (relayed, mapped, lifetime) = net.allocated().expect("allocated");
    assert_eq!(net.relays, vec![relayed]);
    assert_eq!(mapped, net.five.client);
    assert_eq!(lifetime, Duration::from_secs(600));
    assert_eq!(c.relayed(), Some(relayed));
    // The challenge, then the signed Allocate: two requests, nothing retransmitted.
    assert_eq!(net.sent_to_server, 2);
    assert_eq!(c.stats.retransmissions, 0);

    let mut net = Net::new(TurnTransport::Udp, |_| {});
    let cred = natter_signaling::turn::mint(b"rest-secret", "u7", T0_MS / 1000, 3600);
    let mut c = net.client(&cred.username, &cred.password);
    net.pump(&mut c);
    assert!(net.allocated().is_some(), "{:?}", net.events);
    assert_eq!(net.server.allocation_count(), 1);
}

#[test]
fn wrong_credentials_fail_clearly_after_one_signed_try() {
    let mut net = Net::new(TurnTransport::Udp, |_| {});
    let mut c = net.client("alice", "not-the-password");
    net.pump(&mut c);
    assert_eq!(net.sent_to_server, 2);
    match net.events.as_slice() {
        [TurnEvent::Failed(TurnError::Unauthorized(_))] => {}
        other => panic!("expected one Unauthorized failure, got {other:?}"),
    }
    assert!(
        c.poll_timeout().is_none(),
        "a failed client wants no more wake-ups"
    );
    assert!(
        TurnError::Unauthorized("x".into())
            .to_string()
            .contains("401")
    );
}

#[test]
fn the_quota_refusal_is_surfaced_as_486() {
    let mut net = Net::new(TurnTransport::Udp, |c| c.user_quota = 1);
    let mut first = net.client("alice", "wonderland");
    net.pump(&mut first);
    assert!(net.allocated().is_some());
    net.events.clear();
    net.five.client = "198.51.100.7:40001".parse().unwrap();
    let mut second = net.client("alice", "wonderland");
    net.pump(&mut second);
    assert_eq!(net.events, vec![TurnEvent::Failed(TurnError::QuotaReached)]);
}

#[test]
fn a_forbidden_peer_fails_alone_and_drops_what_was_queued_for_it() {
    let mut net = Net::new(TurnTransport::Udp, |_| {});
    let mut c = net.client("alice", "wonderland");
    net.pump(&mut c);
    let private: SocketAddr = "10.1.2.3:5000".parse().unwrap();
    c.send_to(private, b"one", net.now).unwrap();
    c.send_to(private, b"two", net.now).unwrap();
    c.send_to(peer(7000), b"fine", net.now).unwrap();
    net.pump(&mut c);
    assert!(
        net.events.iter().any(|e| matches!(e,
            TurnEvent::PeerFailed { peer, error: TurnError::Forbidden(_) } if *peer == private)),
        "{:?}",
        net.events
    );
    assert_eq!(c.stats.dropped_unbound, 2);
    assert!(
        c.is_allocated(),
        "one refused peer does not end the allocation"
    );
    assert_eq!(net.at_peers.len(), 1);
    assert_eq!(net.at_peers[0].1, peer(7000));
}

#[test]
fn data_waits_for_the_channel_then_flows_both_ways_as_channel_data() {
    let mut net = Net::new(TurnTransport::Udp, |_| {});
    let mut c = net.client("alice", "wonderland");
    // Sent before the allocation exists: queued, not lost.
    c.send_to(peer(7000), b"early", net.now).unwrap();
    net.pump(&mut c);
    let (relayed, _, _) = net.allocated().unwrap();
    assert!(c.is_ready(peer(7000)));
    c.send_to(peer(7000), b"later", net.now).unwrap();
    net.pump(&mut c);
    let got: Vec<&[u8]> = net.at_peers.iter().map(|(_, _, d)| d.as_slice()).collect();
    assert_eq!(got, vec![&b"early"[..], &b"later"[..]]);
    assert!(
        net.at_peers
            .iter()
            .all(|(r, p, _)| *r == relayed && *p == peer(7000))
    );

    assert!(net.peer_sends(&mut c, relayed, peer(7000), b"reply"));
    // The same IP on another port has the permission but no channel: a Data indication.
    assert!(net.peer_sends(&mut c, relayed, peer(7001), b"other port"));
    // An IP with no permission never reaches the client.
    let stranger: SocketAddr = "203.0.113.99:1".parse().unwrap();
    assert!(!net.peer_sends(&mut c, relayed, stranger, b"spam"));
    assert_eq!(
        net.data_events(),
        vec![
            (peer(7000), b"reply".to_vec()),
            (peer(7001), b"other port".to_vec())
        ]
    );
    assert_eq!(c.stats.packets_sent, 2);
    assert_eq!(c.stats.packets_received, 2);
}

#[test]
fn at_most_sixteen_packets_wait_for_a_channel() {
    let mut net = Net::new(TurnTransport::Udp, |_| {});
    let mut c = net.client("alice", "wonderland");
    for i in 0..20u8 {
        c.send_to(peer(7000), &[i], net.now).unwrap();
    }
    assert_eq!(c.stats.dropped_unbound, 4);
    net.pump(&mut c);
    assert_eq!(net.at_peers.len(), 16);
}

#[test]
fn allocation_permission_and_channel_are_refreshed_for_hours_through_stale_nonces() {
    // Nonces last 100 s here, so nearly every refresh first meets 438 Stale Nonce.
    let mut net = Net::new(TurnTransport::Udp, |c| {
        c.nonce_lifetime = Duration::from_secs(100);
    });
    let mut c = net.client("alice", "wonderland");
    c.add_peer(peer(7000), net.now).unwrap();
    net.advance(&mut c, Duration::from_secs(3 * 3600));
    assert!(c.is_allocated(), "{:?}", net.events);
    assert_eq!(net.server.allocation_count(), 1);
    assert!(net.released.is_empty());
    let (relayed, _, _) = net.allocated().unwrap();
    // Three hours on, the channel still carries data both ways.
    assert!(net.peer_sends(&mut c, relayed, peer(7000), b"still here"));
    c.send_to(peer(7000), b"me too", net.now).unwrap();
    net.pump(&mut c);
    assert_eq!(net.at_peers.last().unwrap().2, b"me too");
    assert!(
        matches!(net.data_events().last(), Some((p, d)) if *p == peer(7000) && d == b"still here")
    );
    let failures = &net.server.stats.auth_failures;
    assert!(
        failures.get("stale_nonce").copied().unwrap_or(0) >= 10,
        "the stale nonces were met and answered: {failures:?}"
    );
    assert!(
        !net.events
            .iter()
            .any(|e| matches!(e, TurnEvent::Failed(_) | TurnEvent::PeerFailed { .. })),
        "{:?}",
        net.events
    );
}

#[test]
fn without_refreshes_the_server_lets_it_all_expire() {
    // The control for the test above: a client never woken lets everything lapse, so the
    // refreshes are what kept it alive.
    let mut net = Net::new(TurnTransport::Udp, |_| {});
    let mut c = net.client("alice", "wonderland");
    c.add_peer(peer(7000), net.now).unwrap();
    net.pump(&mut c);
    let (relayed, _, _) = net.allocated().unwrap();
    net.now += Duration::from_secs(301);
    let ms = net.ms();
    net.server.tick(ms);
    assert!(
        !net.peer_sends(&mut c, relayed, peer(7000), b"late"),
        "permission lapsed"
    );
    net.now += Duration::from_secs(300);
    let ms = net.ms();
    let out = net.server.tick(ms);
    assert!(out.iter().any(|o| matches!(o, Output::Release { .. })));
    assert_eq!(net.server.allocation_count(), 0);
}

#[test]
fn lost_requests_are_retransmitted_and_a_dead_server_times_out_at_39_5_s() {
    let mut net = Net::new(TurnTransport::Udp, |_| {});
    net.lose_to_server = vec![0, 1, 2, 4]; // the challenge twice, then the signed one once
    let mut c = net.client("alice", "wonderland");
    net.advance(&mut c, Duration::from_secs(10));
    assert!(net.allocated().is_some(), "{:?}", net.events);
    assert_eq!(c.stats.retransmissions, 4);

    let mut net = Net::new(TurnTransport::Udp, |_| {});
    net.lose_to_server = (0..100).collect();
    let mut c = net.client("alice", "wonderland");
    net.advance(&mut c, Duration::from_millis(39_499));
    assert!(net.events.is_empty());
    assert_eq!(net.sent_to_server, 7, "Rc = 7 transmissions");
    net.advance(&mut c, Duration::from_millis(39_500));
    match net.events.as_slice() {
        [TurnEvent::Failed(TurnError::Timeout("Allocate", t))] => {
            assert_eq!(*t, Duration::from_millis(39_500))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_retransmission_timeout_follows_the_measured_round_trip() {
    let mut net = Net::new(TurnTransport::Udp, |_| {});
    let mut c = net.client("alice", "wonderland");
    // Nothing measured yet: RFC 8489's initial 500 ms.
    assert_eq!(c.poll_timeout(), Some(net.now + Duration::from_millis(500)));
    // The challenge and the signed Allocate, each answered after 80 ms: SRTT 80 ms,
    // RTTVAR 3/4·40 = 30 ms, so RTO = 80 + 4·30 = 200 ms (RFC 6298 by hand).
    net.pump_with_rtt(&mut c, Duration::from_millis(80));
    assert!(net.allocated().is_some(), "{:?}", net.events);
    assert_eq!(c.srtt(), Some(Duration::from_millis(80)));
    let sent = net.sent_to_server;
    net.lose_to_server = vec![sent];
    c.add_peer(peer(1), net.now).unwrap();
    let bind_sent = net.now;
    net.pump(&mut c); // the ChannelBind is lost
    assert_eq!(
        c.poll_timeout(),
        Some(bind_sent + Duration::from_millis(200))
    );
    net.now = bind_sent + Duration::from_millis(200);
    c.handle_timeout(net.now);
    assert_eq!(c.stats.retransmissions, 1);
    // Doubled for the next one; the resend is answered, but an answer to a resent request
    // is no sample (Karn), so the estimate stays.
    assert_eq!(c.poll_timeout(), Some(net.now + Duration::from_millis(400)));
    net.pump_with_rtt(&mut c, Duration::from_millis(1_000));
    assert!(c.is_ready(peer(1)));
    assert_eq!(c.srtt(), Some(Duration::from_millis(80)));
}

#[test]
fn a_forged_success_without_integrity_is_ignored() {
    let mut net = Net::new(TurnTransport::Udp, |_| {});
    let mut c = net.client("alice", "wonderland");
    net.lose_to_server = vec![1]; // the signed Allocate is lost: we answer it ourselves
    net.pump(&mut c);
    assert_eq!(net.sent_to_server, 2);
    // Whoever saw the request (its transaction id) forges an answer naming their relay.
    net.now += Duration::from_millis(500);
    c.handle_timeout(net.now);
    let resent = c.poll_transmit().unwrap();
    let m = Message::parse(&resent).unwrap();
    let forged = MessageBuilder::answer(&m, Class::Success)
        .add_xor_address(attr::XOR_RELAYED_ADDRESS, "203.0.113.66:1".parse().unwrap())
        .add_xor_address(attr::XOR_MAPPED_ADDRESS, net.five.client)
        .fingerprint()
        .finish();
    c.handle_input(&forged, net.now);
    assert_eq!(c.stats.ignored, 1);
    assert!(c.poll_event().is_none());
    // The real answer still counts.
    let ms = net.ms();
    let mut bound = None;
    for o in net.server.handle(net.five, &resent, ms) {
        if let Output::Bind {
            relay, response, ..
        } = o
        {
            bound = Some(relay);
            c.handle_input(&response, net.now);
        }
    }
    net.pump(&mut c);
    let (relayed, _, _) = net.allocated().unwrap();
    assert_eq!(Some(relayed), bound);
}

#[test]
fn close_releases_the_allocation() {
    let mut net = Net::new(TurnTransport::Udp, |_| {});
    let mut c = net.client("alice", "wonderland");
    net.pump(&mut c);
    c.close(net.now);
    net.pump(&mut c);
    assert_eq!(net.events.last(), Some(&TurnEvent::Closed));
    assert_eq!(net.server.allocation_count(), 0);
    assert!(c.send_to(peer(1), b"x", net.now).is_err());
}

#[test]
fn over_tcp_answers_cut_anywhere_are_reassembled_and_channel_data_is_padded() {
    let mut net = Net::new(TurnTransport::Tcp, |_| {});
    net.byte_by_byte = true;
    let mut c = net.client("alice", "wonderland");
    net.pump(&mut c);
    let (relayed, _, _) = net.allocated().expect("allocated over TCP");
    c.send_to(peer(7000), b"odd", net.now).unwrap();
    net.pump(&mut c);
    assert_eq!(net.at_peers.last().unwrap().2, b"odd");
    assert!(net.peer_sends(&mut c, relayed, peer(7000), b"fives"));
    assert!(net.peer_sends(&mut c, relayed, peer(7000), b"x"));
    assert_eq!(
        net.data_events(),
        vec![(peer(7000), b"fives".to_vec()), (peer(7000), b"x".to_vec())]
    );
    // No retransmissions on a stream, and a closed stream ends the allocation.
    net.advance(&mut c, Duration::from_secs(5));
    assert_eq!(c.stats.retransmissions, 0);
    c.handle_closed();
    assert_eq!(
        c.poll_event(),
        Some(TurnEvent::Failed(TurnError::ConnectionClosed))
    );
}
