//! Drives the TURN core through authenticated request sequences. Random bytes almost never
//! carry a valid MESSAGE-INTEGRITY, so `stun_decoder` stops at the 401; here the target signs
//! what the fuzzer chose (with the right key and a nonce the server handed out, or with a
//! wrong one), so the attribute decoders behind authentication (XOR-PEER-ADDRESS, CHANNEL-NUMBER,
//! LIFETIME, REQUESTED-TRANSPORT, DATA …) and the allocation tables are reached. Nothing may
//! panic, every answer must parse, signed answers must verify, and tables stay within quota.
#![no_main]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use natter_turn::server::{Config, FiveTuple, Output, Server, Transport};
use natter_turn::stun::{self, ChannelData, Class, Message, MessageBuilder, attr, method};

const SECRET: &[u8] = b"fuzz";
const REALM: &str = "natter";
const USER_QUOTA: usize = 3;
const TOTAL_QUOTA: usize = 5;
const START_MS: u64 = 1_800_000_000_000;

#[derive(Arbitrary, Debug)]
struct Step {
    client: u8,
    advance_ms: u16,
    action: Action,
}

#[derive(Arbitrary, Debug)]
enum Action {
    Request(Request),
    /// ChannelData from the client (the data path the shell runs without `handle`).
    ChannelData {
        channel: u16,
        data: Vec<u8>,
    },
    /// A packet from a peer to the relay of allocation number `relay` (in creation order).
    FromPeer {
        relay: u8,
        peer: Peer,
        len: u16,
    },
    BindFailed {
        relay: u8,
    },
    ClientClosed,
    Tick,
}

#[derive(Arbitrary, Debug)]
struct Request {
    method: Method,
    indication: bool,
    tid: u8,
    user: User,
    sign: Sign,
    stale_nonce: bool,
    fingerprint: bool,
    attrs: Vec<Attr>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Method {
    Allocate,
    Refresh,
    CreatePermission,
    ChannelBind,
    Send,
    Binding,
    Other(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum User {
    LongTerm,
    /// A REST credential minted with the server's secret, `ttl` seconds from now (0: expired).
    Rest {
        ttl: u8,
    },
    Unknown,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sign {
    Right,
    WrongKey,
    Unsigned,
}

#[derive(Arbitrary, Debug, Clone)]
enum Peer {
    PublicV4(u8, u16),
    PublicV6(u8, u16),
    Loopback(u16),
    Private(u16),
    MappedV4(u16),
    Unspecified,
    Any(SocketAddr),
}

impl Peer {
    fn addr(&self) -> SocketAddr {
        match *self {
            Peer::PublicV4(h, p) => SocketAddr::new(Ipv4Addr::new(198, 51, 100, h).into(), p),
            Peer::PublicV6(h, p) => SocketAddr::new(
                Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(h)).into(),
                p,
            ),
            Peer::Loopback(p) => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), p),
            Peer::Private(p) => SocketAddr::new(Ipv4Addr::new(10, 0, 0, 1).into(), p),
            Peer::MappedV4(p) => {
                SocketAddr::new(Ipv4Addr::new(127, 0, 0, 1).to_ipv6_mapped().into(), p)
            }
            Peer::Unspecified => SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0),
            Peer::Any(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug, Clone)]
enum Attr {
    XorPeer(Peer),
    Lifetime(u32),
    RequestedTransport(u8),
    RequestedFamily(u8),
    ChannelNumber(u16),
    Data(Vec<u8>),
    EvenPort,
    DontFragment,
    ReservationToken,
    /// Any type and value, well-formed or not.
    Raw(u16, Vec<u8>),
}

fn five(client: u8) -> FiveTuple {
    let (transport, ip): (Transport, IpAddr) = match client % 4 {
        0 => (Transport::Udp, Ipv4Addr::new(203, 0, 113, 1).into()),
        1 => (Transport::Udp, Ipv4Addr::new(203, 0, 113, 2).into()),
        2 => (Transport::Tcp, Ipv4Addr::new(203, 0, 113, 1).into()),
        _ => (
            Transport::Udp,
            Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1).into(),
        ),
    };
    FiveTuple {
        transport,
        client: SocketAddr::new(ip, 40_000 + u16::from(client % 4)),
        server: "192.0.2.1:3478".parse().unwrap(),
    }
}

fn server() -> Server {
    let mut cfg = Config {
        realm: REALM.into(),
        rest_secret: Some(SECRET.to_vec()),
        relay_v4: Some(Ipv4Addr::new(192, 0, 2, 1)),
        relay_v6: Some(Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1)),
        // A small port range, so port exhaustion and bind failures are reachable.
        relay_ports: (50_000, 50_007),
        user_quota: USER_QUOTA,
        total_quota: TOTAL_QUOTA,
        bandwidth_bytes_per_s: 4096,
        default_lifetime: Duration::from_secs(60),
        max_lifetime: Duration::from_secs(120),
        nonce_lifetime: Duration::from_secs(30),
        ..Config::default()
    };
    cfg.users.insert("u".into(), "p".into());
    Server::new(cfg, [7; 32])
}

/// Checks an answer the server sent a client: it is STUN (or ChannelData) that parses.
fn check_output(out: &Output, relays: &mut Vec<SocketAddr>) {
    match out {
        Output::ToClient { bytes, .. } => {
            if stun::is_channel_data(bytes) {
                ChannelData::parse(bytes, false).expect("server's ChannelData parses");
            } else {
                Message::parse(bytes).expect("server's STUN answer parses");
            }
        }
        Output::Bind {
            relay, response, ..
        } => {
            let m = Message::parse(response).expect("allocate answer parses");
            assert_eq!(
                m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap(),
                Some(*relay),
                "the answer names the relay being bound"
            );
            relays.push(*relay);
        }
        Output::ToPeer { .. } | Output::Release { .. } | Output::Close { .. } => {}
    }
}

fuzz_target!(|steps: Vec<Step>| {
    let mut s = server();
    let mut now = START_MS;
    let mut relays: Vec<SocketAddr> = Vec::new();
    // Nonces the server handed out, per client address.
    let mut nonces: HashMap<IpAddr, String> = HashMap::new();
    for step in steps.into_iter().take(64) {
        now += u64::from(step.advance_ms);
        let five = five(step.client);
        let outs = match step.action {
            Action::Request(r) => {
                if matches!(r.sign, Sign::Right | Sign::WrongKey)
                    && (r.stale_nonce || !nonces.contains_key(&five.client.ip()))
                {
                    // Learn a nonce the way a client does: from the 401 challenge.
                    let probe =
                        MessageBuilder::new(method::ALLOCATE, Class::Request, [9; 12]).finish();
                    for o in s.handle(five, &probe, now) {
                        if let Output::ToClient { bytes, .. } = o {
                            let m = Message::parse(&bytes).expect("challenge parses");
                            let nonce = m.string(attr::NONCE, 763).unwrap().expect("nonce");
                            let realm = m.string(attr::REALM, 763).unwrap();
                            assert_eq!(realm, Some(REALM));
                            nonces.insert(five.client.ip(), nonce.to_owned());
                        }
                    }
                }
                let (username, password) = match r.user {
                    User::LongTerm => ("u".to_owned(), "p".to_owned()),
                    User::Rest { ttl } => {
                        let c = natter_signaling::turn::mint(
                            SECRET,
                            "rest",
                            now / 1000,
                            u64::from(ttl),
                        );
                        (c.username, c.password)
                    }
                    User::Unknown => ("nobody".to_owned(), "x".to_owned()),
                };
                let m = match r.method {
                    Method::Allocate => method::ALLOCATE,
                    Method::Refresh => method::REFRESH,
                    Method::CreatePermission => method::CREATE_PERMISSION,
                    Method::ChannelBind => method::CHANNEL_BIND,
                    Method::Send => method::SEND,
                    Method::Binding => method::BINDING,
                    Method::Other(m) => m & 0x0FFF,
                };
                let class = if r.indication {
                    Class::Indication
                } else {
                    Class::Request
                };
                let mut b = MessageBuilder::new(m, class, [r.tid; 12]);
                for a in r.attrs.iter().take(16) {
                    match a {
                        Attr::XorPeer(p) => b.add_xor_address(attr::XOR_PEER_ADDRESS, p.addr()),
                        Attr::Lifetime(l) => b.add_u32(attr::LIFETIME, *l),
                        Attr::RequestedTransport(p) => {
                            b.add(attr::REQUESTED_TRANSPORT, &[*p, 0, 0, 0])
                        }
                        Attr::RequestedFamily(f) => {
                            b.add(attr::REQUESTED_ADDRESS_FAMILY, &[*f, 0, 0, 0])
                        }
                        Attr::ChannelNumber(c) => {
                            let c = c.to_be_bytes();
                            b.add(attr::CHANNEL_NUMBER, &[c[0], c[1], 0, 0])
                        }
                        Attr::Data(d) => b.add(attr::DATA, &d[..d.len().min(1500)]),
                        Attr::EvenPort => b.add(attr::EVEN_PORT, &[0x80, 0, 0, 0]),
                        Attr::DontFragment => b.add(attr::DONT_FRAGMENT, &[]),
                        Attr::ReservationToken => b.add(attr::RESERVATION_TOKEN, &[1; 8]),
                        Attr::Raw(t, v) => b.add(*t, &v[..v.len().min(256)]),
                    };
                }
                if !matches!(r.sign, Sign::Unsigned) {
                    let nonce = nonces.get(&five.client.ip()).cloned().unwrap_or_default();
                    b.add(attr::USERNAME, username.as_bytes())
                        .add(attr::REALM, REALM.as_bytes())
                        .add(attr::NONCE, nonce.as_bytes());
                    let key = match r.sign {
                        Sign::Right => stun::long_term_key(&username, REALM, &password),
                        _ => stun::long_term_key(&username, REALM, "wrong"),
                    };
                    b.integrity(&key);
                }
                if r.fingerprint {
                    b.fingerprint();
                }
                let bytes = b.finish();
                // Only well-formed messages are built here (a Raw attribute may still be
                // refused by the parser, e.g. a second MESSAGE-INTEGRITY or a bad FINGERPRINT).
                if let Ok(parsed) = Message::parse(&bytes)
                    && matches!(r.sign, Sign::Right)
                {
                    let key = stun::long_term_key(&username, REALM, &password);
                    assert!(parsed.check_integrity(&key), "own signature verifies");
                }
                s.handle(five, &bytes, now)
            }
            Action::ChannelData { channel, mut data } => {
                data.truncate(usize::from(u16::MAX));
                let mut framed = Vec::new();
                ChannelData::write(
                    channel,
                    &data,
                    five.transport != Transport::Udp,
                    &mut framed,
                );
                match ChannelData::parse(&framed, five.transport != Transport::Udp) {
                    Ok((cd, _)) => {
                        assert_eq!((cd.channel, cd.data), (channel, &data[..]));
                        let _ = s.route_from_client(five, cd.channel, cd.data.len(), now);
                    }
                    Err(_) => assert!(!(0x4000..=0x7FFF).contains(&channel)),
                }
                Vec::new()
            }
            Action::FromPeer { relay, peer, len } => {
                if let Some(r) = relays.get(usize::from(relay) % relays.len().max(1)) {
                    let _ = s.route_from_peer(*r, peer.addr(), usize::from(len), now);
                }
                Vec::new()
            }
            Action::BindFailed { relay } => {
                match relays.get(usize::from(relay) % relays.len().max(1)) {
                    Some(r) => s.bind_failed(*r),
                    None => Vec::new(),
                }
            }
            Action::ClientClosed => s.client_closed(five),
            Action::Tick => s.tick(now),
        };
        for o in &outs {
            check_output(o, &mut relays);
        }
        assert!(s.allocation_count() <= TOTAL_QUOTA, "total quota holds");
    }
});
