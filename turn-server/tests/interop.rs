//! natter-turn against coturn's own client tools (Debian's `coturn` package):
//! `turnutils_stunclient`, and `turnutils_uclient` relaying to `turnutils_peer` over UDP,
//! TCP and TLS, with long-term and with REST credentials. Skips with a reason when the tools
//! are missing, and fails instead under NATTER_REQUIRE_ALL=1.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

fn tools() -> bool {
    let found = Command::new("turnutils_uclient")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        if std::env::var("NATTER_REQUIRE_ALL").is_ok_and(|v| v == "1") {
            panic!("coturn's turnutils are required (NATTER_REQUIRE_ALL=1): install coturn");
        }
        eprintln!("SKIPPED: coturn's turnutils are not installed");
    }
    found
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

fn free_port(ip: IpAddr) -> u16 {
    UdpSocket::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Turn {
    _p: Proc,
    udp: SocketAddr,
    tcp: SocketAddr,
    tls: Option<SocketAddr>,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

/// natter-turn listening and relaying on the loopback address `ip`, with a static user, a
/// REST secret, and loopback peers allowed.
fn natter_turn(ip: IpAddr, tls: bool) -> Turn {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natter-turn"));
    let metrics = format!("127.0.0.1:{}", free_port_tcp());
    let any_port = SocketAddr::new(ip, 0).to_string();
    let loopback_net = if ip.is_ipv4() {
        "127.0.0.0/8"
    } else {
        "::1/128"
    };
    cmd.args(["--listen-udp", &any_port, "--listen-tcp", &any_port])
        .args(["--relay-ips", &ip.to_string()]);
    cmd.args([
        "--user",
        "bench:benchpass",
        "--rest-secret",
        "rest-secret",
        "--allow-peer",
        loopback_net,
        "--relay-ports",
        "52000-52999",
        "--user-quota",
        "100",
        "--metrics",
        &metrics,
    ]);
    if tls {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (c, k) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
        cmd.args(["--listen-tls", &any_port, "--tls-cert"])
            .arg(&c)
            .arg("--tls-key")
            .arg(&k);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut udp, mut tcp, mut tlsa) = (None, None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        let addr = || {
            line.split_whitespace()
                .last()
                .unwrap()
                .parse::<SocketAddr>()
                .ok()
        };
        if line.starts_with("stun/turn udp") {
            udp = addr();
        } else if line.starts_with("stun/turn tcp") {
            tcp = addr();
        } else if line.starts_with("turns tls") {
            tlsa = addr();
        } else if line.starts_with("metrics") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Turn {
        _p: Proc(child),
        udp: udp.expect("udp listener"),
        tcp: tcp.expect("tcp listener"),
        tls: tlsa,
        metrics: metrics.parse().unwrap(),
        _dir: dir,
    }
}

fn free_port_tcp() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// turnutils_peer echoing on `ip`; returns it and its port.
fn peer(ip: IpAddr) -> (Proc, u16) {
    let port = free_port(ip);
    let p = Command::new("turnutils_peer")
        .args(["-L", &ip.to_string(), "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    (Proc(p), port)
}

/// Runs turnutils_uclient against `server`, relaying to a peer on the same address, and
/// returns (sent, received, lost %, its output).
fn uclient(server: SocketAddr, peer_port: u16, extra: &[&str]) -> (u64, u64, f64, String) {
    let ip = server.ip().to_string();
    let out = Command::new("timeout")
        .arg("60")
        .arg("turnutils_uclient")
        .args([
            "-m", "2", "-n", "30", "-z", "5", "-l", "172", "-c", "-e", &ip,
        ])
        .args([
            "-r",
            &peer_port.to_string(),
            "-p",
            &server.port().to_string(),
        ])
        .args(extra)
        .arg(&ip)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let mut sent = 0;
    let mut recv = 0;
    let mut lost = 100.0;
    for l in text.lines() {
        if let Some(rest) = l.split("start_mclient: tot_send_msgs=").nth(1)
            && let Some((s, r)) = rest.split_once(", tot_recv_msgs=")
            && let (Ok(s), Ok(r)) = (s.trim().parse(), r.trim().parse())
        {
            sent = s;
            recv = r;
        }
        if let Some(rest) = l.split("Total lost packets ").nth(1) {
            lost = rest
                .split('(')
                .nth(1)
                .and_then(|x| x.split('%').next())
                .and_then(|x| x.parse().ok())
                .unwrap_or(100.0);
        }
    }
    (sent, recv, lost, text)
}

fn metrics(t: &Turn) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(t.metrics).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn stun_binding_with_turnutils_stunclient() {
    if !tools() {
        return;
    }
    let t = natter_turn(V4, false);
    let out = Command::new("turnutils_stunclient")
        .args(["-p", &t.udp.port().to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("UDP reflexive addr: 127.0.0.1:"), "{text}");
}

#[test]
fn uclient_relays_over_udp_and_tcp_with_long_term_and_rest_credentials() {
    if !tools() {
        return;
    }
    let t = natter_turn(V4, false);
    let (_peer, pp) = peer(V4);
    let cases: [(&str, SocketAddr, Vec<&str>); 5] = [
        (
            "udp long-term",
            t.udp,
            vec!["-u", "bench", "-w", "benchpass"],
        ),
        (
            "udp rest",
            t.udp,
            vec!["-W", "rest-secret", "-u", "someone"],
        ),
        (
            "tcp long-term",
            t.tcp,
            vec!["-t", "-u", "bench", "-w", "benchpass"],
        ),
        (
            "tcp rest",
            t.tcp,
            vec!["-t", "-W", "rest-secret", "-u", "someone"],
        ),
        (
            "udp send indications",
            t.udp,
            vec!["-s", "-u", "bench", "-w", "benchpass"],
        ),
    ];
    for (name, server, args) in cases {
        let (sent, recv, lost, text) = uclient(server, pp, &args);
        assert!(
            sent >= 60 && recv == sent && lost == 0.0,
            "{name}: sent {sent} recv {recv} lost {lost}\n{text}"
        );
    }
    let m = metrics(&t);
    assert!(
        m.contains("natter_turn_relayed_packets_to_peers_total"),
        "{m}"
    );
}

#[test]
fn uclient_relays_over_tls() {
    if !tools() {
        return;
    }
    let t = natter_turn(V4, true);
    let (_peer, pp) = peer(V4);
    let tls = t.tls.expect("tls listener");
    let (sent, recv, lost, text) =
        uclient(tls, pp, &["-t", "-S", "-u", "bench", "-w", "benchpass"]);
    assert!(
        sent >= 60 && recv == sent && lost == 0.0,
        "sent {sent} recv {recv} lost {lost}\n{text}"
    );
}

#[test]
fn wrong_and_expired_credentials_are_refused_and_counted() {
    if !tools() {
        return;
    }
    let t = natter_turn(V4, false);
    let (_peer, pp) = peer(V4);
    let (_, recv, _, text) = uclient(t.udp, pp, &["-u", "bench", "-w", "wrong"]);
    assert_eq!(recv, 0, "{text}");
    let (_, recv, _, text) = uclient(t.udp, pp, &["-W", "not-the-secret", "-u", "someone"]);
    assert_eq!(recv, 0, "{text}");
    let m = metrics(&t);
    assert!(
        m.contains("natter_turn_auth_failures_total{reason=\"bad_integrity\"}"),
        "{m}"
    );
}

#[test]
fn garbage_datagrams_get_no_answer_and_the_server_keeps_working() {
    if !tools() {
        return;
    }
    let t = natter_turn(V4, false);
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    for junk in [
        &b""[..],
        b"\x00\x01",
        b"\x00\x01\x00\x00\x21\x12\xa4\x42",
        &[0x41; 200],
        &[0u8; 1500],
    ] {
        s.send_to(junk, t.udp).unwrap();
    }
    let mut buf = [0u8; 1500];
    assert!(s.recv_from(&mut buf).is_err(), "no answer to garbage");
    let out = Command::new("turnutils_stunclient")
        .args(["-p", &t.udp.port().to_string(), "127.0.0.1"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("reflexive addr"));
}

#[test]
fn uclient_relays_over_ipv6_when_the_host_has_it() {
    if !tools() {
        return;
    }
    if std::net::UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("SKIPPED: this host has no IPv6 loopback");
        return;
    }
    let t = natter_turn(V6, false);
    let (_peer, pp) = peer(V6);
    let (sent, recv, lost, text) = uclient(t.udp, pp, &["-u", "bench", "-w", "benchpass"]);
    assert!(
        sent == 60 && recv == 60 && lost == 0.0,
        "all 60 messages relayed over IPv6: sent {sent} recv {recv} lost {lost}\n{text}"
    );
}
