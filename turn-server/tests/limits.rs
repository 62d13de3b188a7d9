//! The core's limits in virtual time: what keeps abuse bounded (per-user quotas, the
//! default byte-rate cap, peer ranges, the size and rate of unauthenticated answers, nonces,
//! idle TCP/TLS connections).

use std::net::SocketAddr;

use natter_turn::server::{Config, FiveTuple, IpNet, Output, Server, Transport};
use natter_turn::stun::{Class, Message, MessageBuilder, attr, method};

mod common;
use common::*;

#[test]
fn unauthenticated_answers_are_small_and_carry_no_software() {
    // The shipped realm ("natter"), not the test server's.
    let mut s = server_with(|c| c.realm = "natter".into());
    let allocate = MessageBuilder::new(method::ALLOCATE, Class::Request, [1; 12])
        .add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .finish();
    assert_eq!(allocate.len(), 28, "the smallest well-formed Allocate");
    let challenge = client_bytes(&s.handle(five(1), &allocate, T0)).unwrap();
    let bare = MessageBuilder::new(method::ALLOCATE, Class::Request, [2; 12]).finish();
    let bare_challenge = client_bytes(&s.handle(five(1), &bare, T0)).unwrap();
    let binding = MessageBuilder::new(method::BINDING, Class::Request, [3; 12]).finish();
    let mapped = client_bytes(&s.handle(five(1), &binding, T0)).unwrap();
    eprintln!(
        "Allocate {} B -> 401 {} B ({:.2}x); bare Allocate {} B -> 401 {} B ({:.2}x); \
         Binding {} B -> {} B ({:.2}x)",
        allocate.len(),
        challenge.len(),
        challenge.len() as f64 / allocate.len() as f64,
        bare.len(),
        bare_challenge.len(),
        bare_challenge.len() as f64 / bare.len() as f64,
        binding.len(),
        mapped.len(),
        mapped.len() as f64 / binding.len() as f64,
    );
    // 401 = header 20 + ERROR-CODE 8 + REALM 12 + NONCE 20 + FINGERPRINT 8 = 68 bytes.
    assert!(
        challenge.len() * 2 <= allocate.len() * 5,
        "401 of {} bytes to a {}-byte Allocate is more than 2.5x",
        challenge.len(),
        allocate.len()
    );
    assert!(
        mapped.len() <= 2 * binding.len(),
        "Binding answer of {} bytes to {}",
        mapped.len(),
        binding.len()
    );
    let m = Message::parse(&challenge).unwrap();
    assert_eq!(code(&m), 401);
    assert!(m.get(attr::REALM).is_some());
    let nonce = m.string(attr::NONCE, 763).unwrap().unwrap();
    assert!(nonce.len() <= 16, "nonce {nonce:?}");
    assert_eq!(m.types().last(), Some(attr::FINGERPRINT));
    // No SOFTWARE on any answer an unauthenticated sender can get.
    let unknown = MessageBuilder::new(method::ALLOCATE, Class::Request, [4; 12])
        .add(0x7777, b"")
        .finish();
    let mut c = Client::new(five(2), "alice", "wonderland");
    c.nonce = nonce.to_owned();
    let stale = s.handle(
        five(2),
        &c.request(method::ALLOCATE, |_| {}),
        T0 + 3_600_000,
    );
    for (what, bytes) in [
        ("401", challenge.clone()),
        ("bare 401", bare_challenge),
        ("Binding", mapped),
        (
            "420",
            client_bytes(&s.handle(five(1), &unknown, T0)).unwrap(),
        ),
        ("438", client_bytes(&stale).unwrap()),
    ] {
        let m = Message::parse(&bytes).unwrap();
        assert!(m.get(attr::SOFTWARE).is_none(), "{what} carries SOFTWARE");
    }
}

#[test]
fn unauthenticated_answers_are_rate_limited_per_source_address() {
    let mut s = server();
    let at = |ip: &str, port: u16, transport: Transport| FiveTuple {
        transport,
        client: SocketAddr::new(ip.parse().unwrap(), port),
        server: "192.0.2.1:3478".parse().unwrap(),
    };
    let allocate = |i: u16| {
        let mut tid = [0; 12];
        tid[..2].copy_from_slice(&i.to_be_bytes());
        MessageBuilder::new(method::ALLOCATE, Class::Request, tid)
            .add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
            .finish()
    };
    let binding = MessageBuilder::new(method::BINDING, Class::Request, [3; 12]).finish();
    let flood = |s: &mut Server, ip: &str, n: u16, now: u64| {
        (0..n)
            .filter(|i| {
                !s.handle(at(ip, 1000 + i, Transport::Udp), &allocate(*i), now)
                    .is_empty()
            })
            .count()
    };
    // A client of that address that authenticated before the flood.
    let mut c = Client::new(at("198.51.100.7", 1, Transport::Udp), "alice", "wonderland");
    c.allocate(&mut s, T0);

    // The flood, from any port of one address: the default 20 a second (one-second
    // burst; the client's challenge took one), then nothing, Binding included.
    assert_eq!(flood(&mut s, "198.51.100.7", 500, T0), 19);
    assert!(s.handle(c.five, &binding, T0).is_empty());
    assert_eq!(s.stats.dropped_unauthenticated, 500 - 19 + 1);
    // Another source is answered meanwhile; an authenticated client of the flooded one too.
    assert_eq!(
        error_code(&s.handle(at("203.0.113.9", 5000, Transport::Udp), &allocate(1), T0)),
        401
    );
    let out = c.call(&mut s, method::REFRESH, |_| {}, T0);
    assert_eq!(
        Message::parse(&client_bytes(&out).unwrap()).unwrap().class,
        Class::Success
    );
    // Over TCP and TLS the source address cannot be forged: not limited.
    for t in [Transport::Tcp, Transport::Tls] {
        assert_eq!(
            error_code(&s.handle(at("198.51.100.7", 9, t), &allocate(9), T0)),
            401
        );
    }
    // It is a rate, not a ban: 20 a second again.
    assert_eq!(flood(&mut s, "198.51.100.7", 500, T0 + 100), 2);
    assert_eq!(flood(&mut s, "198.51.100.7", 500, T0 + 5000), 20);
    // IPv6: one /64 is one source; another /64 is another.
    assert_eq!(flood(&mut s, "2001:db8:1:2::1", 30, T0), 20);
    assert_eq!(flood(&mut s, "2001:db8:1:2:ffff::9", 30, T0), 0);
    assert_eq!(flood(&mut s, "2001:db8:1:3::1", 30, T0), 20);
    // An IPv4 client seen as IPv4-mapped (a dual-stack listener) is its IPv4 address.
    assert_eq!(flood(&mut s, "::ffff:203.0.113.50", 30, T0), 20);
    assert_eq!(flood(&mut s, "::ffff:203.0.113.51", 30, T0), 20);
    // The table forgets sources whose bucket is full again.
    s.tick(T0 + 10_000);
    assert_eq!(flood(&mut s, "2001:db8:1:2::1", 30, T0 + 10_000), 20);
}

#[test]
fn short_nonces_are_bound_to_the_client_address_and_expire() {
    let mut s = server();
    let mut c = Client::new(five(1), "alice", "wonderland");
    c.allocate(&mut s, T0);
    let nonce = c.nonce.clone();
    let refresh = |s: &mut Server, c: &mut Client, at: u64| {
        let out = s.handle(c.five, &c.request(method::REFRESH, |_| {}), at);
        let m = Message::parse(&client_bytes(&out).unwrap()).unwrap().class;
        if m == Class::Success {
            200
        } else {
            error_code(&out)
        }
    };
    assert_eq!(refresh(&mut s, &mut c, T0 + 1000), 200);
    // Each character of the nonce matters.
    for i in 0..nonce.len() {
        let mut forged = nonce.clone().into_bytes();
        forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
        c.nonce = String::from_utf8(forged).unwrap();
        assert_eq!(refresh(&mut s, &mut c, T0 + 1000), 438, "changed at {i}");
    }
    // Another address cannot use it (here: the same client after moving to another IP).
    c.nonce = nonce.clone();
    let mut moved = Client::new(
        FiveTuple {
            client: "198.51.100.8:1".parse().unwrap(),
            ..five(1)
        },
        "alice",
        "wonderland",
    );
    moved.nonce = nonce.clone();
    let out = s.handle(
        moved.five,
        &moved.request(method::ALLOCATE, |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        }),
        T0 + 1000,
    );
    assert_eq!(error_code(&out), 438);
    // It lasts nonce_lifetime (600 s) and not longer.
    assert_eq!(refresh(&mut s, &mut c, T0 + 599_000), 200);
    assert_eq!(refresh(&mut s, &mut c, T0 + 600_000), 438);
}

#[test]
fn the_user_quota_holds_across_fresh_rest_credentials_of_one_user() {
    let mut s = server_with(|c| {
        c.user_quota = 3;
        c.total_quota = 100;
        c.relay_ports = (50000, 50099);
    });
    let alloc = |b: &mut MessageBuilder| {
        b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    // One credential a second for "mallory", each a different username (`expiry:mallory`).
    let mut granted = 0;
    for i in 0..10u16 {
        let cred =
            natter_signaling::turn::mint(b"rest-secret", "mallory", T0 / 1000 + u64::from(i), 3600);
        let out = Client::new(five(100 + i), &cred.username, &cred.password).call(
            &mut s,
            method::ALLOCATE,
            alloc,
            T0 + u64::from(i) * 1000,
        );
        match client_bytes(&out).map(|b| Message::parse(&b).unwrap().class) {
            Some(Class::Success) => granted += 1,
            _ => assert_eq!(error_code(&out), 486, "credential {i}"),
        }
    }
    assert_eq!(
        granted, 3,
        "user_quota counts the user, not each credential"
    );
    // The same user with a username that is only an expiry counts as the user "", not as a
    // user of its own per expiry.
    for i in 0..4u16 {
        let user = format!("{}", T0 / 1000 + 3600 + u64::from(i));
        let pass = natter_signaling::turn::password(b"rest-secret", &user, T0 / 1000).unwrap();
        let out =
            Client::new(five(200 + i), &user, &pass).call(&mut s, method::ALLOCATE, alloc, T0);
        if i < 3 {
            assert!(matches!(&out[..], [Output::Bind { .. }]), "{i}: {out:?}");
        } else {
            assert_eq!(error_code(&out), 486);
        }
    }
    // Another REST user still gets one, and so does the static user of the same name as
    // a REST user: the two are different accounts.
    let bob = natter_signaling::turn::mint(b"rest-secret", "bob", T0 / 1000, 3600);
    Client::new(five(300), &bob.username, &bob.password).allocate(&mut s, T0);
    let alice = natter_signaling::turn::mint(b"rest-secret", "alice", T0 / 1000, 3600);
    for i in 0..3 {
        Client::new(five(310 + i), &alice.username, &alice.password).allocate(&mut s, T0);
    }
    Client::new(five(320), "alice", "wonderland").allocate(&mut s, T0);
    assert_eq!(s.allocation_count(), 3 + 3 + 1 + 3 + 1);
    // A released allocation gives its place back to the user, whatever credential it used.
    let first = natter_signaling::turn::mint(b"rest-secret", "mallory", T0 / 1000, 3600);
    let mut c = Client::new(five(100), &first.username, &first.password);
    let out = c.call(
        &mut s,
        method::REFRESH,
        |b| {
            b.add_u32(attr::LIFETIME, 0);
        },
        T0,
    );
    assert!(
        out.iter().any(|o| matches!(o, Output::Release { .. })),
        "{out:?}"
    );
    let late = natter_signaling::turn::mint(b"rest-secret", "mallory", T0 / 1000 + 60, 3600);
    Client::new(five(130), &late.username, &late.password).allocate(&mut s, T0 + 60_000);
}

#[test]
fn create_permission_refuses_cgnat_reserved_nat64_6to4_and_site_local_peers() {
    let v6_relay = |c: &mut Config| c.relay_v6 = Some("2001:db8::1".parse().unwrap());
    let mut s = server_with(v6_relay);
    let mut c4 = Client::new(five(1), "alice", "wonderland");
    assert!(c4.allocate(&mut s, T0).is_ipv4());
    let mut c6 = Client::new(five(2), "alice", "wonderland");
    assert!(c6.allocate_family(&mut s, T0, true).is_ipv6());
    let mut verdict = |peer: &str| {
        let peer: SocketAddr = peer.parse().unwrap();
        let c = if peer.is_ipv4() { &mut c4 } else { &mut c6 };
        let out = c.call(&mut s, method::CREATE_PERMISSION, peer_perm(peer), T0);
        let m = Message::parse(&client_bytes(&out).unwrap()).unwrap().class;
        if m == Class::Success {
            200
        } else {
            error_code(&out)
        }
    };
    for denied in [
        "100.100.100.200:80",
        "100.64.0.1:9",
        "192.0.0.9:9",
        "198.18.0.1:9",
        "240.0.0.1:9",
        "[::ffff:100.100.100.200]:80",
        "[::a00:1]:9",
        "[64:ff9b::a9fe:a9fe]:80",
        "[64:ff9b::808:808]:9",
        "[64:ff9b:1::1]:9",
        "[2002:a00:1::1]:9",
        "[2002:6464:64c8::1]:80",
        "[fec0::1]:9",
    ] {
        assert_eq!(verdict(denied), 403, "{denied}");
    }
    for ok in [
        "100.63.255.255:9",
        "100.128.0.0:9",
        "8.8.8.8:53",
        "[2001:4860:4860::8888]:53",
        "[2002:808:808::1]:9",
    ] {
        assert_eq!(verdict(ok), 200, "{ok}");
    }

    // The allow-list opens a range; NAT64 also needs the IPv4 it leads to allowed.
    let mut s = server_with(|c| {
        v6_relay(c);
        c.allowed_peers = ["100.64.0.0/10", "64:ff9b::/96"]
            .iter()
            .map(|n| n.parse::<IpNet>().unwrap())
            .collect();
    });
    let mut c4 = Client::new(five(1), "alice", "wonderland");
    c4.allocate(&mut s, T0);
    let mut c6 = Client::new(five(2), "alice", "wonderland");
    c6.allocate_family(&mut s, T0, true);
    let mut verdict = |c: &mut Client, peer: &str| {
        let out = c.call(
            &mut s,
            method::CREATE_PERMISSION,
            peer_perm(peer.parse().unwrap()),
            T0,
        );
        let m = Message::parse(&client_bytes(&out).unwrap()).unwrap().class;
        if m == Class::Success {
            200
        } else {
            error_code(&out)
        }
    };
    assert_eq!(verdict(&mut c4, "100.100.100.200:80"), 200);
    assert_eq!(verdict(&mut c6, "[64:ff9b::808:808]:9"), 200);
    assert_eq!(
        verdict(&mut c6, "[64:ff9b::6464:64c8]:9"),
        200,
        "100.64/10 is allowed too"
    );
    assert_eq!(
        verdict(&mut c6, "[64:ff9b::a00:1]:9"),
        403,
        "10.0.0.1 is not"
    );
}

#[test]
fn the_default_configuration_caps_each_allocation_at_8_mbit_s() {
    // The settings the binaries start from, not the test server's.
    let t = natter_turn::config::TurnConfig {
        rest_secret: Some("rest-secret".into()),
        ..Default::default()
    };
    let (mut cfg, _) = t.build().unwrap();
    cfg.realm = "natter.test".into();
    let mut s = Server::new(cfg, [9; 32]);
    let cred = natter_signaling::turn::mint(b"rest-secret", "u", T0 / 1000, 3600);
    let mut c = Client::new(five(1), &cred.username, &cred.password);
    let relay = c.allocate(&mut s, T0);
    let peer: SocketAddr = "203.0.113.5:7000".parse().unwrap();
    c.call(&mut s, method::CREATE_PERMISSION, peer_perm(peer), T0);
    // A peer pushing 2 MB at once: one second's worth (1,000,000 bytes) gets through.
    let passed = (0..2000)
        .filter(|_| s.route_from_peer(relay, peer, 1000, T0).is_some())
        .count();
    assert_eq!(passed, 1000);
    // Then 1,000,000 bytes a second, both ways together: half a second later, 250 kB to
    // the peer and 250 kB from it.
    let send = MessageBuilder::new(method::SEND, Class::Indication, [5; 12])
        .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
        .add(attr::DATA, &[0; 1000])
        .finish();
    let to_peer = (0..250)
        .filter(|_| !s.handle(c.five, &send, T0 + 500).is_empty())
        .count();
    assert_eq!(to_peer, 250);
    let from_peer = (0..1000)
        .filter(|_| s.route_from_peer(relay, peer, 1000, T0 + 500).is_some())
        .count();
    assert_eq!(from_peer, 250);
}

#[test]
fn tcp_and_tls_streams_close_when_idle_unless_a_live_allocation_holds_them() {
    let mut s = server_with(|c| c.total_quota = 4);
    let stream = |port: u16, transport: Transport| FiveTuple {
        transport,
        ..five(port)
    };
    let closes = |out: &[Output]| -> Vec<FiveTuple> {
        out.iter()
            .filter_map(|o| match o {
                Output::Close { client } => Some(*client),
                _ => None,
            })
            .collect()
    };
    let binding = MessageBuilder::new(method::BINDING, Class::Request, [3; 12]).finish();
    // Silent from the start: closed 30 s (the default) after it connected.
    let silent = stream(1, Transport::Tcp);
    assert!(s.stream_opened(silent, T0));
    // Chatty: a Binding at 20 s moves its deadline to 50 s; garbage (no complete STUN
    // message) does not.
    let chatty = stream(2, Transport::Tls);
    assert!(s.stream_opened(chatty, T0));
    // Holding an allocation (600 s, refreshed at 500 s): open while the allocation lives.
    let holder = stream(3, Transport::Tcp);
    assert!(s.stream_opened(holder, T0));
    let mut c = Client::new(holder, "alice", "wonderland");
    let relay = c.allocate(&mut s, T0 + 1000);

    assert!(!s.handle(chatty, &binding, T0 + 20_000).is_empty());
    assert!(closes(&s.tick(T0 + 29_999)).is_empty());
    assert_eq!(closes(&s.tick(T0 + 30_000)), vec![silent]);
    assert!(s.handle(chatty, &[0u8; 40], T0 + 40_000).is_empty());
    assert!(closes(&s.tick(T0 + 49_999)).is_empty());
    assert_eq!(closes(&s.tick(T0 + 50_000)), vec![chatty]);
    assert!(
        closes(&s.tick(T0 + 400_000)).is_empty(),
        "its allocation holds it"
    );
    c.call(&mut s, method::REFRESH, |_| {}, T0 + 500_000);
    assert!(closes(&s.tick(T0 + 1_099_999)).is_empty());
    // The allocation expires (600 s after the refresh) and the stream, idle since, goes.
    let out = s.tick(T0 + 1_100_000);
    assert!(out.contains(&Output::Release { relay }), "{out:?}");
    assert_eq!(closes(&out), vec![holder]);
    assert_eq!(s.stats.closed_idle_streams, 3);

    // Later: a stream closed by its client is forgotten; UDP 5-tuples are never streams.
    const T1: u64 = T0 + 2_000_000;
    let gone = stream(4, Transport::Tcp);
    assert!(s.stream_opened(gone, T1));
    s.client_closed(gone);
    assert!(closes(&s.tick(T1 + 60_000)).is_empty());
    let mut u = Client::new(five(5), "alice", "wonderland");
    u.allocate(&mut s, T1);
    assert!(closes(&s.tick(T1 + 300_000)).is_empty());

    // The table holds at most total_quota streams.
    let full: Vec<FiveTuple> = (10..14).map(|p| stream(p, Transport::Tcp)).collect();
    for f in &full {
        assert!(s.stream_opened(*f, T1));
    }
    assert!(
        !s.stream_opened(stream(20, Transport::Tcp), T1),
        "over the cap"
    );
    s.client_closed(full[0]);
    assert!(s.stream_opened(stream(20, Transport::Tcp), T1));
}
