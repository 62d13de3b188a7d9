//! Helpers shared by the core's test files: a server in virtual time, and a client that
//! answers the 401 challenge like a real one.
#![allow(dead_code)] // each test file uses some of them

use std::net::SocketAddr;

use natter_turn::server::{Config, FiveTuple, Output, Server, Transport};
use natter_turn::stun::{self, Class, Message, MessageBuilder, attr, method};

pub const T0: u64 = 1_800_000_000_000;

pub fn five(port: u16) -> FiveTuple {
    FiveTuple {
        transport: Transport::Udp,
        client: format!("198.51.100.7:{port}").parse().unwrap(),
        server: "192.0.2.1:3478".parse().unwrap(),
    }
}

pub fn server_with(f: impl FnOnce(&mut Config)) -> Server {
    let mut cfg = Config {
        realm: "natter.test".into(),
        rest_secret: Some(b"rest-secret".to_vec()),
        relay_ports: (50000, 50009),
        ..Config::default()
    };
    cfg.users.insert("alice".into(), "wonderland".into());
    f(&mut cfg);
    Server::new(cfg, [9; 32])
}

pub fn server() -> Server {
    server_with(|_| {})
}

/// A client that answers the 401 challenge like a real one.
pub struct Client {
    pub five: FiveTuple,
    pub user: String,
    pub pass: String,
    pub nonce: String,
    pub tid: u8,
}

impl Client {
    pub fn new(five: FiveTuple, user: &str, pass: &str) -> Client {
        Client {
            five,
            user: user.into(),
            pass: pass.into(),
            nonce: String::new(),
            tid: 0,
        }
    }

    pub fn next_tid(&mut self) -> [u8; 12] {
        self.tid += 1;
        [self.tid; 12]
    }

    pub fn request(&mut self, m: u16, add: impl Fn(&mut MessageBuilder)) -> Vec<u8> {
        let tid = self.next_tid();
        let mut b = MessageBuilder::new(m, Class::Request, tid);
        add(&mut b);
        let key = stun::long_term_key(&self.user, "natter.test", &self.pass);
        b.add(attr::USERNAME, self.user.as_bytes())
            .add(attr::REALM, b"natter.test")
            .add(attr::NONCE, self.nonce.as_bytes())
            .integrity(&key)
            .fingerprint();
        b.finish()
    }

    /// Sends a request, learning the nonce from a 401 first if needed; returns the outputs.
    pub fn call(
        &mut self,
        s: &mut Server,
        m: u16,
        add: impl Fn(&mut MessageBuilder),
        now: u64,
    ) -> Vec<Output> {
        for _ in 0..2 {
            let out = s.handle(self.five, &self.request(m, &add), now);
            if let Some(bytes) = client_bytes(&out) {
                let r = Message::parse(&bytes).unwrap();
                if r.class == Class::Error
                    && matches!(code(&r), 401 | 438)
                    && let Ok(Some(n)) = r.string(attr::NONCE, 763)
                    && n != self.nonce
                {
                    self.nonce = n.to_owned();
                    continue;
                }
            }
            return out;
        }
        panic!("challenge loop")
    }

    pub fn allocate(&mut self, s: &mut Server, now: u64) -> SocketAddr {
        self.allocate_family(s, now, false)
    }

    /// Allocates an IPv6 relay (`v6`) or an IPv4 one.
    pub fn allocate_family(&mut self, s: &mut Server, now: u64, v6: bool) -> SocketAddr {
        let out = self.call(
            s,
            method::ALLOCATE,
            |b| {
                b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                if v6 {
                    b.add(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
                }
            },
            now,
        );
        match &out[..] {
            [
                Output::Bind {
                    relay, response, ..
                },
            ] => {
                let r = Message::parse(response).unwrap();
                assert_eq!(r.class, Class::Success);
                assert_eq!(
                    r.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap(),
                    Some(*relay)
                );
                assert_eq!(
                    r.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap(),
                    Some(self.five.client)
                );
                *relay
            }
            other => panic!("allocate: {other:?}"),
        }
    }
}

pub fn client_bytes(out: &[Output]) -> Option<Vec<u8>> {
    out.iter().find_map(|o| match o {
        Output::ToClient { bytes, .. } => Some(bytes.clone()),
        Output::Bind { response, .. } => Some(response.clone()),
        _ => None,
    })
}

pub fn code(m: &Message<'_>) -> u16 {
    let v = m.get(attr::ERROR_CODE).expect("error code");
    u16::from(v[2]) * 100 + u16::from(v[3])
}

pub fn error_code(out: &[Output]) -> u16 {
    let b = client_bytes(out).expect("an answer");
    let m = Message::parse(&b).unwrap();
    assert_eq!(m.class, Class::Error, "{out:?}");
    code(&m)
}

pub fn peer_perm(peer: SocketAddr) -> impl Fn(&mut MessageBuilder) {
    move |b: &mut MessageBuilder| {
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
    }
}
