//! natter-turn against coturn's own client tools (Debian's `coturn` package):
//! `turnutils_stunclient`, and `turnutils_uclient` relaying to `turnutils_peer` over UDP,
//! TCP and TLS, with long-term and with REST credentials. Skips with a reason when the tools
//! are missing, and fails instead under NATTER_REQUIRE_ALL=1.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
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

fn free_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
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

/// natter-turn with a static user, a REST secret, and loopback peers allowed.
fn natter_turn(tls: bool) -> Turn {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natter-turn"));
    let metrics = format!("127.0.0.1:{}", free_port_tcp());
    cmd.args([
        "--listen-udp",
        "127.0.0.1:0",
        "--listen-tcp",
        "127.0.0.1:0",
        "--user",
        "bench:benchpass",
        "--rest-secret",
        "rest-secret",
        "--allow-peer",
        "127.0.0.0/8",
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
        cmd.args(["--listen-tls", "127.0.0.1:0", "--tls-cert"])
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

fn peer() -> (Proc, u16) {
    let port = free_port();
    let p = Command::new("turnutils_peer")
        .args(["-L", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    (Proc(p), port)
}

/// Runs turnutils_uclient and returns (sent, received, lost %).
fn uclient(server_port: u16, peer_port: u16, extra: &[&str]) -> (u64, u64, f64, String) {
    let out = Command::new("timeout")
        .arg("60")
        .arg("turnutils_uclient")
        .args([
            "-m",
            "2",
            "-n",
            "30",
            "-z",
            "5",
            "-l",
            "172",
            "-c",
            "-e",
            "127.0.0.1",
        ])
        .args(["-r", &peer_port.to_string(), "-p", &server_port.to_string()])
        .args(extra)
        .arg("127.0.0.1")
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
    let t = natter_turn(false);
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
    let t = natter_turn(false);
    let (_peer, pp) = peer();
    let cases: [(&str, u16, Vec<&str>); 5] = [
        (
            "udp long-term",
            t.udp.port(),
            vec!["-u", "bench", "-w", "benchpass"],
        ),
        (
            "udp rest",
            t.udp.port(),
            vec!["-W", "rest-secret", "-u", "someone"],
        ),
        (
            "tcp long-term",
            t.tcp.port(),
            vec!["-t", "-u", "bench", "-w", "benchpass"],
        ),
        (
            "tcp rest",
            t.tcp.port(),
            vec!["-t", "-W", "rest-secret", "-u", "someone"],
        ),
        (
            "udp send indications",
            t.udp.port(),
            vec!["-s", "-u", "bench", "-w", "benchpass"],
        ),
    ];
    for (name, port, args) in cases {
        let (sent, recv, lost, text) = uclient(port, pp, &args);
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
    let t = natter_turn(true);
    let (_peer, pp) = peer();
    let port = t.tls.expect("tls listener").port();
    let (sent, recv, lost, text) =
        uclient(port, pp, &["-t", "-S", "-u", "bench", "-w", "benchpass"]);
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
    let t = natter_turn(false);
    let (_peer, pp) = peer();
    let (_, recv, _, text) = uclient(t.udp.port(), pp, &["-u", "bench", "-w", "wrong"]);
    assert_eq!(recv, 0, "{text}");
    let (_, recv, _, text) = uclient(t.udp.port(), pp, &["-W", "not-the-secret", "-u", "someone"]);
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
    let t = natter_turn(false);
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
    let port = UdpSocket::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_natter-turn"))
        .args([
            "--listen-udp",
            &format!("[::1]:{port}"),
            "--listen-tcp",
            "[::1]:0",
        ])
        .args(["--relay-ips", "::1", "--user", "bench:benchpass"])
        .args(["--allow-peer", "::1/128", "--relay-ports", "53000-53999"])
        .args(["--metrics", ""])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.contains(&format!("[::1]:{port}")), "{first}");
    std::thread::spawn(move || for _ in lines {});
    let _turn = Proc(child);
    let peer_port = UdpSocket::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _peer = Proc(
        Command::new("turnutils_peer")
            .args(["-L", "::1", "-p", &peer_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let out = Command::new("timeout")
        .arg("60")
        .arg("turnutils_uclient")
        .args(["-m", "2", "-n", "30", "-z", "5", "-l", "172", "-c"])
        .args(["-e", "::1", "-r", &peer_port.to_string()])
        .args(["-u", "bench", "-w", "benchpass", "-p", &port.to_string()])
        .arg("::1")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("tot_send_msgs=60, tot_recv_msgs=60"),
        "all 60 messages relayed over IPv6:\n{text}"
    );
}
