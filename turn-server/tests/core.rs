//! The TURN core driven directly, in virtual time: every request type, every refusal.

use std::net::SocketAddr;

use natter_turn::server::{IpNet, Output, Server};
use natter_turn::stun::{Class, Message, MessageBuilder, attr, method};

mod common;
use common::*;

#[test]
fn binding_answers_with_the_mapped_address_and_a_fingerprint() {
    let mut s = server();
    let req = MessageBuilder::new(method::BINDING, Class::Request, [3; 12]).finish();
    let out = s.handle(five(1000), &req, T0);
    let b = client_bytes(&out).unwrap();
    let m = Message::parse(&b).unwrap();
    assert_eq!(m.class, Class::Success);
    assert_eq!(
        m.xor_address(attr::XOR_MAPPED_ADDRESS).unwrap(),
        Some(five(1000).client)
    );
    assert_eq!(m.types().last(), Some(attr::FINGERPRINT));
}

#[test]
fn allocate_challenges_then_succeeds_with_long_term_and_rest_credentials() {
    let mut s = server();
    let req = MessageBuilder::new(method::ALLOCATE, Class::Request, [1; 12])
        .add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
        .finish();
    let out = s.handle(five(1), &req, T0);
    assert_eq!(error_code(&out), 401);
    let bytes = client_bytes(&out).unwrap();
    let m = Message::parse(&bytes).unwrap();
    assert!(m.get(attr::REALM).is_some() && m.get(attr::NONCE).is_some());

    let relay = Client::new(five(1), "alice", "wonderland").allocate(&mut s, T0);
    assert_eq!(relay.ip().to_string(), "127.0.0.1");

    let cred = natter_signaling::turn::mint(b"rest-secret", "u7", T0 / 1000, 3600);
    Client::new(five(2), &cred.username, &cred.password).allocate(&mut s, T0);
    assert_eq!(s.allocation_count(), 2);
}

#[test]
fn wrong_unknown_and_expired_credentials_are_refused() {
    let mut s = server();
    let alloc = |b: &mut MessageBuilder| {
        b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    };
    assert_eq!(
        error_code(&Client::new(five(1), "alice", "nope").call(
            &mut s,
            method::ALLOCATE,
            alloc,
            T0
        )),
        401
    );
    assert_eq!(
        error_code(&Client::new(five(1), "mallory", "x").call(&mut s, method::ALLOCATE, alloc, T0)),
        401
    );
    let old = natter_signaling::turn::mint(b"rest-secret", "u7", T0 / 1000 - 7200, 3600);
    assert_eq!(
        error_code(&Client::new(five(1), &old.username, &old.password).call(
            &mut s,
            method::ALLOCATE,
            alloc,
            T0
        )),
        401
    );
    let forged = natter_signaling::turn::mint(b"other-secret", "u7", T0 / 1000, 3600);
    assert_eq!(
        error_code(
            &Client::new(five(1), &forged.username, &forged.password).call(
                &mut s,
                method::ALLOCATE,
                alloc,
                T0
            )
        ),
        401
    );
    assert_eq!(s.allocation_count(), 0);
    assert_eq!(s.stats.auth_failures.get("expired"), Some(&1));
    assert!(
        s.stats
            .auth_failures
            .get("bad_integrity")
            .copied()
            .unwrap_or(0)
            >= 2
    );
}

#[test]
fn stale_and_forged_nonces_get_438_with_a_fresh_one() {
    let mut s = server();
    let mut c = Client::new(five(1), "alice", "wonderland");
    c.allocate(&mut s, T0);
    c.call(
        &mut s,
        method::REFRESH,
        |b| {
            b.add_u32(attr::LIFETIME, 3600);
        },
        T0 + 500_000,
    );
    // The nonce lasts 600 s; a refresh after that is told to retry with a new one.
    let stale = s.handle(c.five, &c.request(method::REFRESH, |_| {}), T0 + 601_000);
    assert_eq!(error_code(&stale), 438);
    c.nonce = "0000000000000000aaaaaaaaaaaaaaaaaaaaaaaa".into();
    let forged = s.handle(c.five, &c.request(method::REFRESH, |_| {}), T0);
    assert_eq!(error_code(&forged), 438);
    // The client retries with the nonce it was given, and it works.
    let out = c.call(&mut s, method::REFRESH, |_| {}, T0 + 601_000);
    assert_eq!(
        Message::parse(&client_bytes(&out).unwrap()).unwrap().class,
        Class::Success
    );
}

#[test]
fn allocate_is_idempotent_for_a_retransmission_and_refused_for_a_second_allocation() {
    let mut s = server();
    let mut c = Client::new(five(1), "alice", "wonderland");
    c.allocate(&mut s, T0);
    // Same transaction again: same answer, no new allocation.
    let tid = c.tid;
    c.tid = tid - 1;
    let again = c.call(
        &mut s,
        method::ALLOCATE,
        |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        },
        T0,
    );
    assert!(matches!(&again[..], [Output::ToClient { .. }]));
    assert_eq!(
        Message::parse(&client_bytes(&again).unwrap())
            .unwrap()
            .class,
        Class::Success
    );
    let second = c.call(
        &mut s,
        method::ALLOCATE,
        |b| {
            b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
        },
        T0,
    );
    assert_eq!(error_code(&second), 437);
    assert_eq!(s.allocation_count(), 1);
}

#[test]
fn bad_allocate_requests_and_quotas() {
    let mut s = server_with(|c| c.user_quota = 1);
    let mut c = Client::new(five(1), "alice", "wonderland");
    assert_eq!(
        error_code(&c.call(&mut s, method::ALLOCATE, |_| {}, T0)),
        400
    );
    assert_eq!(
        error_code(&c.call(
            &mut s,
            method::ALLOCATE,
            |b| {
                b.add(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0]);
            },
            T0
        )),
        442
    );
    assert_eq!(
        error_code(&c.call(
            &mut s,
            method::ALLOCATE,
            |b| {
                b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0])
                    .add(attr::REQUESTED_ADDRESS_FAMILY, &[2, 0, 0, 0]);
            },
            T0
        )),
        440,
        "no IPv6 relay configured"
    );
    c.allocate(&mut s, T0);
    let mut c2 = Client::new(five(2), "alice", "wonderland");
    assert_eq!(
        error_code(&c2.call(
            &mut s,
            method::ALLOCATE,
            |b| {
                b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            },
            T0
        )),
        486
    );
    // Unknown comprehension-required attribute.
    let mut c3 = Client::new(five(3), "alice", "wonderland");
    let out = c3.call(
        &mut s,
        method::ALLOCATE,
        |b| {
            b.add(0x7777, b"????");
        },
        T0,
    );
    assert_eq!(error_code(&out), 420);
}

#[test]
fn permissions_refuse_denied_peers_unless_allow_listed() {
    let mut s = server();
    let mut c = Client::new(five(1), "alice", "wonderland");
    c.allocate(&mut s, T0);
    for denied in [
        "127.0.0.1:9",
        "10.1.2.3:9",
        "192.168.0.1:9",
        "172.16.0.1:9",
        "169.254.1.1:9",
        "224.0.0.1:9",
        "0.0.0.0:9",
        "255.255.255.255:9",
    ] {
        let out = c.call(
            &mut s,
            method::CREATE_PERMISSION,
            peer_perm(denied.parse().unwrap()),
            T0,
        );
        assert_eq!(error_code(&out), 403, "{denied}");
    }
    let v6: SocketAddr = "[2001:db8::1]:9".parse().unwrap();
    assert_eq!(
        error_code(&c.call(&mut s, method::CREATE_PERMISSION, peer_perm(v6), T0)),
        443
    );
    let ok = c.call(
        &mut s,
        method::CREATE_PERMISSION,
        peer_perm("203.0.113.5:9".parse().unwrap()),
        T0,
    );
    assert_eq!(
        Message::parse(&client_bytes(&ok).unwrap()).unwrap().class,
        Class::Success
    );
    assert!(s.stats.refused_peers >= 8);

    let mut s = server_with(|c| c.allowed_peers = vec!["127.0.0.0/8".parse::<IpNet>().unwrap()]);
    let mut c = Client::new(five(1), "alice", "wonderland");
    c.allocate(&mut s, T0);
    let ok = c.call(
        &mut s,
        method::CREATE_PERMISSION,
        peer_perm("127.0.0.1:9".parse().unwrap()),
        T0,
    );
    assert_eq!(
        Message::parse(&client_bytes(&ok).unwrap()).unwrap().class,
        Class::Success
    );
    assert_eq!(
        error_code(&c.call(
            &mut s,
            method::CREATE_PERMISSION,
            peer_perm("10.0.0.1:9".parse().unwrap()),
            T0
        )),
        403
    );
}

#[test]
fn data_flows_by_send_indication_and_by_channel_both_ways() {
    let mut s = server();
    let mut c = Client::new(five(1), "alice", "wonderland");
    let relay = c.allocate(&mut s, T0);
    let peer: SocketAddr = "203.0.113.5:7000".parse().unwrap();
    let send = |data: &[u8]| {
        MessageBuilder::new(method::SEND, Class::Indication, [5; 12])
            .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            .add(attr::DATA, data)
            .finish()
    };
    // No permission yet: dropped, both ways.
    assert!(s.handle(c.five, &send(b"x"), T0).is_empty());
    assert!(s.route_from_peer(relay, peer, 10, T0).is_none());
    c.call(&mut s, method::CREATE_PERMISSION, peer_perm(peer), T0);
    assert_eq!(
        s.handle(c.five, &send(b"hi"), T0),
        vec![Output::ToPeer {
            relay,
            peer,
            data: b"hi".to_vec()
        }]
    );
    let r = s.route_from_peer(relay, peer, 10, T0).unwrap();
    assert_eq!((r.client, r.channel), (c.five, None));
    let ind_bytes = Server::data_indication(peer, b"back");
    let ind = Message::parse(&ind_bytes).unwrap();
    assert_eq!((ind.method, ind.class), (method::DATA, Class::Indication));
    assert_eq!(ind.get(attr::DATA), Some(&b"back"[..]));
    // Another peer IP: no permission.
    assert!(
        s.route_from_peer(relay, "203.0.113.6:7000".parse().unwrap(), 10, T0)
            .is_none()
    );

    // Channels.
    assert!(s.route_from_client(c.five, 0x4001, 5, T0).is_none());
    let bind = |ch: u16, p: SocketAddr| {
        move |b: &mut MessageBuilder| {
            b.add(attr::CHANNEL_NUMBER, &[(ch >> 8) as u8, ch as u8, 0, 0])
                .add_xor_address(attr::XOR_PEER_ADDRESS, p);
        }
    };
    let ok = c.call(&mut s, method::CHANNEL_BIND, bind(0x4001, peer), T0);
    assert_eq!(
        Message::parse(&client_bytes(&ok).unwrap()).unwrap().class,
        Class::Success
    );
    assert_eq!(
        s.route_from_client(c.five, 0x4001, 5, T0),
        Some((relay, peer))
    );
    assert_eq!(
        s.route_from_peer(relay, peer, 10, T0).unwrap().channel,
        Some(0x4001)
    );
    // The same channel for another peer, or the same peer on another channel: 400.
    assert_eq!(
        error_code(&c.call(
            &mut s,
            method::CHANNEL_BIND,
            bind(0x4001, "203.0.113.9:1".parse().unwrap()),
            T0
        )),
        400
    );
    assert_eq!(
        error_code(&c.call(&mut s, method::CHANNEL_BIND, bind(0x4002, peer), T0)),
        400
    );
    assert_eq!(
        error_code(&c.call(&mut s, method::CHANNEL_BIND, bind(0x3fff, peer), T0)),
        400
    );
    // Another client cannot use this allocation's channel.
    assert!(s.route_from_client(five(9), 0x4001, 5, T0).is_none());
    assert_eq!(s.stats.packets_to_peers, 2);
}

#[test]
fn refresh_and_expiry_release_relays() {
    let mut s = server();
    let mut c = Client::new(five(1), "alice", "wonderland");
    let relay = c.allocate(&mut s, T0);
    // Refresh extends; LIFETIME 0 deletes.
    let out = c.call(
        &mut s,
        method::REFRESH,
        |b| {
            b.add_u32(attr::LIFETIME, 1200);
        },
        T0 + 500_000,
    );
    let bytes = client_bytes(&out).unwrap();
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.u32(attr::LIFETIME).unwrap(), Some(1200));
    assert!(
        s.tick(T0 + 1_100_000).is_empty(),
        "still alive after the refresh"
    );
    let out = c.call(
        &mut s,
        method::REFRESH,
        |b| {
            b.add_u32(attr::LIFETIME, 0);
        },
        T0 + 1_100_000,
    );
    assert!(out.contains(&Output::Release { relay }));
    assert_eq!(s.allocation_count(), 0);
    // Expiry without refresh.
    let mut c2 = Client::new(five(2), "alice", "wonderland");
    let relay2 = c2.allocate(&mut s, T0);
    assert_eq!(
        s.tick(T0 + 600_000),
        vec![Output::Release { relay: relay2 }]
    );
    // Requests for a gone allocation: 437.
    assert_eq!(
        error_code(&c2.call(&mut s, method::REFRESH, |_| {}, T0 + 600_001)),
        437
    );
    // Another user's credentials on an allocation: 441.
    let mut c3 = Client::new(five(3), "alice", "wonderland");
    c3.allocate(&mut s, T0);
    let cred = natter_signaling::turn::mint(b"rest-secret", "bob", T0 / 1000, 3600);
    let mut imposter = Client::new(five(3), &cred.username, &cred.password);
    assert_eq!(
        error_code(&imposter.call(&mut s, method::REFRESH, |_| {}, T0)),
        441
    );
}

#[test]
fn bandwidth_cap_drops_what_exceeds_it() {
    let mut s = server_with(|c| c.bandwidth_bytes_per_s = 10_000);
    let mut c = Client::new(five(1), "alice", "wonderland");
    let relay = c.allocate(&mut s, T0);
    let peer: SocketAddr = "203.0.113.5:7000".parse().unwrap();
    c.call(&mut s, method::CREATE_PERMISSION, peer_perm(peer), T0);
    let passed = (0..20)
        .filter(|_| s.route_from_peer(relay, peer, 1000, T0).is_some())
        .count();
    assert_eq!(passed, 10, "one second's worth");
    assert_eq!(s.stats.dropped_over_bandwidth, 10);
    assert!(
        s.route_from_peer(relay, peer, 1000, T0 + 200).is_some(),
        "refilled"
    );
}

#[test]
fn relay_ports_run_out_and_failed_binds_are_undone() {
    let mut s = server_with(|c| {
        c.relay_ports = (50000, 50001);
        c.user_quota = 10;
    });
    let r1 = Client::new(five(1), "alice", "wonderland").allocate(&mut s, T0);
    let r2 = Client::new(five(2), "alice", "wonderland").allocate(&mut s, T0);
    assert_ne!(r1, r2);

    let mut c3 = Client::new(five(3), "alice", "wonderland");
    assert_eq!(
        error_code(&c3.call(
            &mut s,
            method::ALLOCATE,
            |b| {
                b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            },
            T0
        )),
        508
    );
    // A port another process holds: the allocation moves to another port when there is one
    // (here none is free, so it is undone with 508).
    let out = s.bind_failed(r2);
    assert_eq!(error_code(&out), 508);
    assert_eq!(s.allocation_count(), 1);
    c3.allocate(&mut s, T0);
    // With room in the range, a failed bind moves on to a free port and answers from there.
    let mut s = server_with(|c| c.relay_ports = (50000, 50009));
    let r = Client::new(five(1), "alice", "wonderland").allocate(&mut s, T0);
    match &s.bind_failed(r)[..] {
        [
            Output::Bind {
                relay, response, ..
            },
        ] => {
            assert_ne!(*relay, r);
            let m = Message::parse(response).unwrap();
            assert_eq!(
                m.xor_address(attr::XOR_RELAYED_ADDRESS).unwrap(),
                Some(*relay)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(s.allocation_count(), 1);
}

#[test]
fn garbage_never_panics_and_gets_no_answer() {
    let mut s = server();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for len in 0..600 {
        let bytes: Vec<u8> = (0..len % 120)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert!(s.handle(five(1), &bytes, T0).is_empty());
    }
    // Truncations of a valid request.
    let mut c = Client::new(five(1), "alice", "wonderland");
    let req = c.request(method::ALLOCATE, |b| {
        b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    });
    for cut in 0..req.len() {
        assert!(s.handle(five(1), &req[..cut], T0).is_empty());
    }
}
