//! The TURN client over real sockets: against natter-turn (in this process, on loopback) and
//! against coturn's `turnserver` (Debian's `coturn`), over UDP and TCP, with long-term and
//! REST credentials, relaying to a UDP echo peer and back.
//!
//! The coturn tests skip with a printed reason when `turnserver` is missing, and fail
//! instead under NATTER_REQUIRE_ALL=1.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use natter_media::{TurnClient, TurnConfig, TurnEvent, TurnTransport};
use natter_turn::server::Config;
use natter_turn::{Listeners, Turn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

enum Conn {
    Udp(UdpSocket, SocketAddr),
    Tcp(TcpStream),
}

/// A TURN client with its socket, driven the way the media session drives it.
struct Driven {
    client: TurnClient,
    conn: Conn,
    events: Vec<TurnEvent>,
}

impl Driven {
    async fn connect(
        server: SocketAddr,
        transport: TurnTransport,
        user: &str,
        pass: &str,
    ) -> Driven {
        let conn = match transport {
            TurnTransport::Udp => {
                let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
                Conn::Udp(s, server)
            }
            TurnTransport::Tcp => Conn::Tcp(TcpStream::connect(server).await.unwrap()),
        };
        Driven {
            client: TurnClient::new(TurnConfig::new(transport, user, pass), Instant::now()),
            conn,
            events: Vec::new(),
        }
    }

    async fn flush(&mut self) {
        while let Some(b) = self.client.poll_transmit() {
            match &mut self.conn {
                Conn::Udp(s, to) => {
                    s.send_to(&b, *to).await.unwrap();
                }
                Conn::Tcp(s) => s.write_all(&b).await.unwrap(),
            }
        }
    }

    /// Runs until `done` holds over the events so far, or `limit` passes.
    async fn run_until(&mut self, limit: Duration, done: impl Fn(&[TurnEvent]) -> bool) {
        let end = Instant::now() + limit;
        let mut buf = vec![0u8; 65_536];
        while !done(&self.events) && Instant::now() < end {
            self.flush().await;
            let wake = self.client.poll_timeout().unwrap_or(end).min(end);
            let sleep = tokio::time::sleep_until(wake.into());
            let n = match &mut self.conn {
                Conn::Udp(s, _) => tokio::select! {
                    r = s.recv_from(&mut buf) => Some(r.unwrap().0),
                    _ = sleep => None,
                },
                Conn::Tcp(s) => tokio::select! {
                    r = s.read(&mut buf) => Some(r.unwrap()),
                    _ = sleep => None,
                },
            };
            let now = Instant::now();
            match n {
                Some(0) if matches!(self.conn, Conn::Tcp(_)) => self.client.handle_closed(),
                Some(n) => self.client.handle_input(&buf[..n], now),
                None => self.client.handle_timeout(now),
            }
            while let Some(e) = self.client.poll_event() {
                self.events.push(e);
            }
            self.flush().await;
        }
    }

    fn relayed(&self) -> Option<SocketAddr> {
        self.events.iter().find_map(|e| match e {
            TurnEvent::Allocated { relayed, .. } => Some(*relayed),
            _ => None,
        })
    }

    fn data(&self) -> Vec<Vec<u8>> {
        self.events
            .iter()
            .filter_map(|e| match e {
                TurnEvent::Data { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect()
    }
}

/// A UDP peer that echoes everything back to where it came from, for a while.
async fn echo_peer() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        let end = Instant::now() + Duration::from_secs(60);
        while Instant::now() < end {
            let Ok(Ok((n, from))) =
                tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf)).await
            else {
                continue;
            };
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// Allocates, relays 50 packets of different sizes to an echo peer and back, closes.
async fn relay_round_trip(server: SocketAddr, transport: TurnTransport, user: &str, pass: &str) {
    let peer = echo_peer().await;
    let mut d = Driven::connect(server, transport, user, pass).await;
    d.run_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, TurnEvent::Allocated { .. } | TurnEvent::Failed(_)))
    })
    .await;
    let relayed = d
        .relayed()
        .unwrap_or_else(|| panic!("no allocation: {:?}", d.events));
    assert_eq!(relayed.ip().to_string(), "127.0.0.1");
    d.client.add_peer(peer, Instant::now()).unwrap();
    d.run_until(Duration::from_secs(10), |e| {
        e.iter().any(|e| {
            matches!(
                e,
                TurnEvent::PeerReady { .. } | TurnEvent::PeerFailed { .. }
            )
        })
    })
    .await;
    assert!(d.client.is_ready(peer), "{:?}", d.events);
    let sent: Vec<Vec<u8>> = (0..50u32)
        .map(|i| {
            let mut p = i.to_be_bytes().to_vec();
            p.resize(4 + (i as usize * 37) % 1100, i as u8);
            p
        })
        .collect();
    for p in &sent {
        d.client.send_to(peer, p, Instant::now()).unwrap();
    }
    d.run_until(Duration::from_secs(10), |e| {
        e.iter()
            .filter(|e| matches!(e, TurnEvent::Data { .. }))
            .count()
            >= 50
    })
    .await;
    let mut got = d.data();
    got.sort();
    let mut want = sent.clone();
    want.sort();
    assert_eq!(
        got.len(),
        50,
        "echoes back: {} of 50 ({:?})",
        got.len(),
        d.client.stats
    );
    assert_eq!(got, want);
    assert!(
        d.events
            .iter()
            .any(|e| matches!(e, TurnEvent::PeerReady { peer: p, .. } if *p == peer))
    );
    d.client.close(Instant::now());
    d.run_until(Duration::from_secs(10), |e| {
        e.iter().any(|e| matches!(e, TurnEvent::Closed))
    })
    .await;
    assert!(
        d.events.iter().any(|e| matches!(e, TurnEvent::Closed)),
        "{:?}",
        d.events
    );
}

fn natter_turn() -> (Turn, SocketAddr, SocketAddr) {
    let mut cfg = Config {
        realm: "natter.test".into(),
        rest_secret: Some(b"rest-secret".to_vec()),
        relay_ports: (53000, 53999),
        allowed_peers: vec!["127.0.0.0/8".parse().unwrap()],
        ..Config::default()
    };
    cfg.users.insert("alice".into(), "wonderland".into());
    let listeners = Listeners {
        udp: vec!["127.0.0.1:0".parse().unwrap()],
        tcp: vec!["127.0.0.1:0".parse().unwrap()],
        tls: Vec::new(),
    };
    let (turn, bound) = Turn::start_on_own_thread(cfg, listeners).unwrap();
    (turn, bound.udp[0], bound.tcp[0])
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn relays_through_natter_turn_over_udp_and_tcp() {
    let (turn, udp, tcp) = natter_turn();
    relay_round_trip(udp, TurnTransport::Udp, "alice", "wonderland").await;
    let cred = natter_signaling::turn::mint(b"rest-secret", "u1", unix_now(), 600);
    relay_round_trip(tcp, TurnTransport::Tcp, &cred.username, &cred.password).await;
    let (stats, live) = turn.stats();
    assert_eq!(live, 0, "both allocations were released");
    assert_eq!(stats.allocations_created, 2);
    turn.shutdown();
}

struct Proc {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn coturn_installed() -> bool {
    let found = Command::new("turnserver")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var("NATTER_REQUIRE_ALL").is_ok_and(|v| v == "1") {
            panic!("coturn's turnserver is required (NATTER_REQUIRE_ALL=1): install coturn");
        }
        eprintln!("SKIPPED: coturn's turnserver is not installed");
    }
    found
}

fn free_port() -> u16 {
    // A port free for both UDP and TCP.
    loop {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// coturn on loopback with `auth` arguments; waits until it answers on TCP.
async fn coturn(auth: &[&str]) -> (Proc, SocketAddr) {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("turnserver")
        .args([
            "-n",
            "--listening-ip=127.0.0.1",
            "--relay-ip=127.0.0.1",
            &format!("--listening-port={port}"),
            "--realm=coturn.test",
            "--no-tls",
            "--no-dtls",
            "--allow-loopback-peers",
            "--no-cli",
            "--log-file=stdout",
            "--min-port=54000",
            "--max-port=54999",
        ])
        .arg(format!("--pidfile={}", dir.path().join("pid").display()))
        .args(auth)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (Proc { child, _dir: dir }, addr)
}

#[tokio::test]
async fn interoperates_with_coturn_over_udp_and_tcp_with_long_term_credentials() {
    if !coturn_installed() {
        return;
    }
    let (_p, addr) = coturn(&["--lt-cred-mech", "--user=bench:benchpass"]).await;
    relay_round_trip(addr, TurnTransport::Udp, "bench", "benchpass").await;
    relay_round_trip(addr, TurnTransport::Tcp, "bench", "benchpass").await;
}

#[tokio::test]
async fn interoperates_with_coturn_with_rest_credentials() {
    if !coturn_installed() {
        return;
    }
    let (_p, addr) = coturn(&["--use-auth-secret", "--static-auth-secret=rest-secret"]).await;
    let cred = natter_signaling::turn::mint(b"rest-secret", "u1", unix_now(), 600);
    relay_round_trip(addr, TurnTransport::Udp, &cred.username, &cred.password).await;
}
