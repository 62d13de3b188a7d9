//! The TCP and TLS listeners over real sockets: a client that sends nothing, or half a
//! message, is closed after the idle timeout; one that stops reading is cut off.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_turn::config::{TurnConfig, tls_config_from};
use natter_turn::server::Stats;
use natter_turn::stun::{self, Class, Message, MessageBuilder, attr, method};
use natter_turn::{Bound, Turn};
use tokio_rustls::rustls;

/// A natter-turn on loopback, stopped when dropped.
struct Running {
    turn: Turn,
    bound: Bound,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.turn.shutdown();
    }
}

impl Running {
    fn stats(&self) -> (Stats, usize) {
        self.turn.stats()
    }
}

/// The TLS certificate of the test server, for "localhost".
fn certificate() -> rcgen::CertifiedKey<rcgen::KeyPair> {
    rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap()
}

/// natter-turn with UDP and TCP listeners (and TLS with `tls`) on 127.0.0.1, user
/// alice:wonderland, loopback peers allowed, and the settings `f` makes.
fn start(
    tls: Option<&rcgen::CertifiedKey<rcgen::KeyPair>>,
    f: impl FnOnce(&mut TurnConfig),
) -> Running {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut t = TurnConfig {
        listen_udp: vec![any],
        listen_tcp: vec![any],
        relay_ports: "53000-53999".into(),
        users: vec!["alice:wonderland".into()],
        allow_peers: vec!["127.0.0.0/8".into()],
        ..TurnConfig::default()
    };
    f(&mut t);
    let (cfg, mut listeners) = t.build().unwrap();
    if let Some(c) = tls {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(c.signing_key.serialize_der().into());
        let server = tls_config_from(vec![c.cert.der().clone()], key).unwrap();
        listeners.tls.push((any, Arc::new(server)));
    }
    let (turn, bound) = Turn::start_on_own_thread(cfg, listeners).unwrap();
    Running { turn, bound }
}

/// How long until the server closes `s` (EOF or reset), reading and discarding what comes;
/// panics if it is still open after `within`.
fn time_to_close(s: &mut impl Read, set_timeout: impl Fn(Duration), within: Duration) -> Duration {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.checked_sub(t0.elapsed()).unwrap_or_default();
        assert!(!left.is_zero(), "still open after {within:?}");
        set_timeout(left);
        match s.read(&mut buf) {
            Ok(0) => return t0.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Reset, or (TLS) closed without close_notify: closed either way.
            Err(_) => return t0.elapsed(),
        }
    }
}

fn tcp_time_to_close(s: &mut TcpStream, within: Duration) -> Duration {
    let c = s.try_clone().unwrap();
    time_to_close(s, |d| c.set_read_timeout(Some(d)).unwrap(), within)
}

/// One framed STUN message from a stream.
fn read_message(s: &mut impl Read) -> Vec<u8> {
    let mut m = vec![0u8; 20];
    s.read_exact(&mut m).unwrap();
    let len = stun::tcp_frame_len(&m).unwrap();
    m.resize(len, 0);
    s.read_exact(&mut m[20..]).unwrap();
    m
}

fn binding(tid: u8) -> Vec<u8> {
    MessageBuilder::new(method::BINDING, Class::Request, [tid; 12]).finish()
}

/// The idle timeout configured in these tests, and how late the close may come: the
/// server checks once a second.
const IDLE: Duration = Duration::from_secs(1);
const LATEST: Duration = Duration::from_millis(3000);

fn assert_closed_on_time(took: Duration) {
    assert!(
        took >= IDLE - Duration::from_millis(100),
        "closed after {took:?}, before the timeout"
    );
    assert!(took <= LATEST, "closed after {took:?}");
}

#[test]
fn a_silent_tcp_client_is_closed_after_the_idle_timeout_and_a_talking_one_is_not() {
    let t = start(None, |c| c.tcp_idle_timeout_s = 1);
    let mut silent = TcpStream::connect(t.bound.tcp[0]).unwrap();
    assert_closed_on_time(tcp_time_to_close(
        &mut silent,
        LATEST + Duration::from_secs(2),
    ));
    // One Binding every 400 ms for 2.4 s: open all along (each is a complete message).
    let mut talking = TcpStream::connect(t.bound.tcp[0]).unwrap();
    for i in 0..6 {
        talking.write_all(&binding(i)).unwrap();
        let answer = read_message(&mut talking);
        assert_eq!(Message::parse(&answer).unwrap().class, Class::Success);
        std::thread::sleep(Duration::from_millis(400));
    }
    // Then silent: closed a timeout after its last message.
    assert_closed_on_time(
        tcp_time_to_close(&mut talking, LATEST + Duration::from_secs(2))
            + Duration::from_millis(400),
    );
    assert_eq!(t.stats().0.closed_idle_streams, 2);
}

#[test]
fn a_half_sent_message_times_out_too() {
    let t = start(None, |c| c.tcp_idle_timeout_s = 1);
    let req = binding(1);
    // Half a message as the first thing sent.
    let mut first = TcpStream::connect(t.bound.tcp[0]).unwrap();
    first.write_all(&req[..12]).unwrap();
    assert_closed_on_time(tcp_time_to_close(
        &mut first,
        LATEST + Duration::from_secs(2),
    ));
    // A complete message, then half of the next one, its last bytes trickling in.
    let mut later = TcpStream::connect(t.bound.tcp[0]).unwrap();
    later.write_all(&req).unwrap();
    read_message(&mut later);
    later.write_all(&req[..10]).unwrap();
    let t0 = Instant::now();
    let writer = later.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let mut w = writer;
        for b in &req[10..req.len() - 1] {
            // Slower than the timeout allows in all: bytes alone do not keep it open.
            std::thread::sleep(Duration::from_millis(400));
            if w.write_all(std::slice::from_ref(b)).is_err() {
                return;
            }
        }
    });
    tcp_time_to_close(&mut later, LATEST + Duration::from_secs(2));
    assert_closed_on_time(t0.elapsed());
    trickle.join().unwrap();
    assert_eq!(t.stats().0.closed_idle_streams, 2);
}

#[test]
fn a_silent_tls_client_is_closed_after_the_idle_timeout_handshake_or_not() {
    let cert = certificate();
    let t = start(Some(&cert), |c| c.tcp_idle_timeout_s = 1);
    let addr = t.bound.tls[0];
    // No handshake at all: the idle timeout applies, not only the 10 s handshake limit.
    let mut raw = TcpStream::connect(addr).unwrap();
    assert_closed_on_time(tcp_time_to_close(&mut raw, LATEST + Duration::from_secs(2)));
    // A handshake, then silence.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(client), name).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    let timeouts = tcp.try_clone().unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    // One Binding proves the session works, and is its last complete message.
    tls.write_all(&binding(1)).unwrap();
    let answer = read_message(&mut tls);
    assert_eq!(Message::parse(&answer).unwrap().class, Class::Success);
    let took = time_to_close(
        &mut tls,
        |d| timeouts.set_read_timeout(Some(d)).unwrap(),
        LATEST + Duration::from_secs(2),
    );
    assert_closed_on_time(took);
    assert_eq!(t.stats().0.closed_idle_streams, 2);
}

/// Allocates over `s` with alice's credentials and lets `peer` send; returns the relay.
fn allocate_over_tcp(s: &mut TcpStream, peer: SocketAddr) -> SocketAddr {
    let request = |m: u16, tid: u8, nonce: Option<&str>, add: &dyn Fn(&mut MessageBuilder)| {
        let mut b = MessageBuilder::new(m, Class::Request, [tid; 12]);
        add(&mut b);
        if let Some(n) = nonce {
            b.add(attr::USERNAME, b"alice")
                .add(attr::REALM, b"natter")
                .add(attr::NONCE, n.as_bytes())
                .integrity(&stun::long_term_key("alice", "natter", "wonderland"));
        }
        b.fingerprint().finish()
    };
    let transport = |b: &mut MessageBuilder| {
        b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    s.write_all(&request(method::ALLOCATE, 1, None, &transport))
        .unwrap();
    let challenge = read_message(s);
    let nonce = Message::parse(&challenge)
        .unwrap()
        .string(attr::NONCE, 763)
        .unwrap()
        .unwrap()
        .to_owned();
    s.write_all(&request(method::ALLOCATE, 2, Some(&nonce), &transport))
        .unwrap();
    let ok = read_message(s);
    let relay = Message::parse(&ok)
        .unwrap()
        .xor_address(attr::XOR_RELAYED_ADDRESS)
        .unwrap()
        .unwrap();
    let permit = |b: &mut MessageBuilder| {
        b.add_xor_address(attr::XOR_PEER_ADDRESS, peer);
    };
    s.write_all(&request(
        method::CREATE_PERMISSION,
        3,
        Some(&nonce),
        &permit,
    ))
    .unwrap();
    let ok = read_message(s);
    assert_eq!(Message::parse(&ok).unwrap().class, Class::Success);
    relay
}

#[test]
fn a_tcp_client_that_stops_reading_is_cut_off() {
    let t = start(None, |c| c.bandwidth_bytes_per_s = 0);
    // A small receive buffer, so the kernel holds little on the client's side.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&t.bound.tcp[0].into()).unwrap();
    let mut client: TcpStream = sock.into();
    let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
    let relay = allocate_over_tcp(&mut client, peer.local_addr().unwrap());
    assert_eq!(t.stats().1, 1);
    // The peer sends (Data indications toward the client); the client reads nothing.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0usize;
    while t.stats().0.cut_off_streams == 0 && Instant::now() < deadline {
        for _ in 0..64 {
            sent += peer.send_to(&[7u8; 1200], relay).unwrap_or(0);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let (stats, allocations) = t.stats();
    assert_eq!(
        stats.cut_off_streams, 1,
        "not cut off after {sent} bytes from the peer"
    );
    assert_eq!(allocations, 0, "its allocation went with it");
    // What the client can still read is what the kernels held; then the stream ends.
    let mut drained = 0usize;
    let mut buf = vec![0u8; 65536];
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    loop {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("still open after the cut-off ({drained} bytes drained)")
            }
            Err(_) => break, // reset: closed too
        }
    }
    eprintln!("peer sent {sent} bytes; the client drained {drained} after the cut-off");
    // The server goes on serving.
    let mut other = TcpStream::connect(t.bound.tcp[0]).unwrap();
    other.write_all(&binding(9)).unwrap();
    assert_eq!(
        Message::parse(&read_message(&mut other)).unwrap().class,
        Class::Success
    );
}
