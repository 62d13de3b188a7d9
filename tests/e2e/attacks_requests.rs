//! Hostile clients, requests: every frame type is rate-limited, work that costs storage is
//! capped per connection and by admission control, repeats cost nothing.

use std::time::Duration;

use natter_client::ClientError;
use natter_client::protocol::call::{IceCandidate, Media, SdpKind};
use natter_client::protocol::{ClientFrame, Conv, ErrorCode, GroupId, ServerFrame, UserId};

use crate::common::*;

/// An audio call offer of `call_id` to `to`.
fn offer(call_id: &str, to: UserId) -> ClientFrame {
    ClientFrame::CallOffer {
        id: 0,
        call_id: call_id.into(),
        to,
        media: Media::Audio,
        sdp: "v=0".into(),
    }
}

fn code(r: Result<ServerFrame, ClientError>) -> Option<ErrorCode> {
    match r {
        Ok(_) => None,
        Err(ClientError::Server(e)) => Some(e.code),
        Err(e) => panic!("not an answer: {e}"),
    }
}

/// One frame of every type an authenticated client can send (after `hello`).
fn every_frame(peer: UserId) -> Vec<ClientFrame> {
    let g = GroupId(999);
    let call = "attack-call".to_string();
    vec![
        ClientFrame::Ping { id: 0 },
        send_frame("x", peer, natter_client::protocol::DeviceId(1), b"x"),
        ClientFrame::SendGroup {
            id: 0,
            client_id: "g".into(),
            group: g,
            body: natter_client::protocol::OpaqueBytes(b"x".to_vec()),
        },
        ClientFrame::Ack {
            id: 0,
            qseqs: vec![1],
        },
        ClientFrame::Read {
            id: 0,
            conv: Conv::Direct(peer),
            to: peer,
            seqs: vec![1],
        },
        ClientFrame::Typing {
            id: 0,
            conv: Conv::Direct(peer),
            active: true,
        },
        ClientFrame::KeysUpload {
            id: 0,
            identity_key: None,
            signed_prekey: None,
            one_time: vec![],
            last_resort: None,
        },
        ClientFrame::KeysClaim { id: 0, user: peer },
        ClientFrame::KeysCount { id: 0 },
        ClientFrame::DevicesList { id: 0 },
        ClientFrame::DeviceRevoke {
            id: 0,
            device: natter_client::protocol::DeviceId(424242),
        },
        ClientFrame::DeviceLinkCode { id: 0 },
        ClientFrame::Lookup {
            id: 0,
            phones: vec!["+15550000000".into()],
        },
        ClientFrame::GroupCreate {
            id: 0,
            name: "g".into(),
            members: vec![peer],
        },
        ClientFrame::GroupAdd {
            id: 0,
            group: g,
            users: vec![peer],
        },
        ClientFrame::GroupRemove {
            id: 0,
            group: g,
            users: vec![peer],
        },
        ClientFrame::GroupPromote {
            id: 0,
            group: g,
            user: peer,
        },
        ClientFrame::GroupLeave { id: 0, group: g },
        ClientFrame::GroupRename {
            id: 0,
            group: g,
            name: "h".into(),
        },
        ClientFrame::GroupInfo { id: 0, group: g },
        ClientFrame::PresenceSubscribe {
            id: 0,
            users: vec![peer],
        },
        ClientFrame::PresenceUnsubscribe {
            id: 0,
            users: vec![peer],
        },
        ClientFrame::Settings {
            id: 0,
            presence: None,
            read_receipts: None,
        },
        offer(&call, peer),
        ClientFrame::CallRinging {
            id: 0,
            call_id: call.clone(),
        },
        ClientFrame::CallAccept {
            id: 0,
            call_id: call.clone(),
            sdp: "v=0".into(),
        },
        ClientFrame::CallDecline {
            id: 0,
            call_id: call.clone(),
        },
        ClientFrame::CallCancel {
            id: 0,
            call_id: call.clone(),
        },
        ClientFrame::CallHangup {
            id: 0,
            call_id: call.clone(),
        },
        ClientFrame::CallIce {
            id: 0,
            call_id: call.clone(),
            candidate: IceCandidate {
                candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host".into(),
                sdp_mid: None,
                sdp_mline_index: Some(0),
            },
        },
        ClientFrame::CallUpdate {
            id: 0,
            call_id: call,
            kind: SdpKind::Offer,
            sdp: "v=0".into(),
        },
        ClientFrame::IceServers { id: 0 },
    ]
}

#[tokio::test]
async fn every_frame_type_has_a_rate_limit() {
    // Every bucket of the socket holds one token and refills in about 17 minutes.
    let all: Vec<String> = natter_messaging::config::Limits::NAMES
        .iter()
        .filter(|n| !["register_ip", "register_phone", "blob_bytes"].contains(n))
        .map(|n| format!("{n}=1:0.001"))
        .collect();
    let all = all.join(",");
    let s = TestServer::start_with(&["--limit", &all]);
    let (_, conn) = s.user().await;
    let (peer, _) = s.user().await;
    let frames = every_frame(peer.user);
    // One of each of the 33 client frame types but `hello` (count them in `ClientFrame`).
    let mut names: Vec<&str> = frames.iter().map(|f| f.type_name()).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), frames.len(), "one frame of each type");
    assert_eq!(frames.len(), 32, "every client frame type but hello");
    for frame in frames {
        let name = frame.type_name();
        // The first one may succeed or fail on its merits; it takes the token either way.
        // (`typing` and `ack` are answered only on error, hence the short wait.)
        let _ = tokio::time::timeout(Duration::from_millis(500), conn.request(frame.clone())).await;
        let second = conn.request(frame).await;
        assert_eq!(
            code(second),
            Some(ErrorCode::RateLimited),
            "a second {name} right away"
        );
    }
}

#[tokio::test]
async fn re_acks_are_refused_and_cost_no_storage_work() {
    let s = TestServer::start_with(&["--limit", "ack=1000:1000"]);
    let (_, mut aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    send(&aconn, "m1", &b, b"x").await;
    let (qseq, _) = recv_item_unacked(&mut bconn).await;
    let ack = || ClientFrame::Ack {
        id: 0,
        qseqs: vec![qseq],
    };
    bconn.notify(ack()).unwrap(); // answered only on error
    recv_item(&mut aconn).await; // the delivered receipt: the ack was stored
    for _ in 0..20 {
        let e = bconn.request(ack()).await.unwrap_err();
        let ClientError::Server(e) = e else {
            panic!("{e}")
        };
        assert_eq!(e.code, ErrorCode::Invalid);
        assert!(e.message.contains("already acknowledged"), "{}", e.message);
    }
    // One ack job ran: the message is gone from the queue and one receipt went out.
    let db = open_db(&s.data_dir);
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM queue WHERE device = {}", b.device.0)
        ),
        0
    );
}

#[tokio::test]
async fn repeating_a_call_offer_to_an_offline_user_leaves_one_missed_call() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let b = s.register().await; // never connects
    assert!(matches!(
        aconn.request(offer("same-id", b.user)).await,
        Ok(ServerFrame::CallStarted { .. })
    ));
    for _ in 0..10 {
        assert_eq!(
            code(aconn.request(offer("same-id", b.user)).await),
            Some(ErrorCode::Conflict)
        );
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let db = open_db(&s.data_dir);
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM queue WHERE device = {} AND kind = 4",
                b.device.0
            )
        ),
        1,
        "one missed-call notice"
    );
}

#[tokio::test]
async fn a_declined_caller_cannot_keep_the_callee_busy() {
    // The default limits for calls: three offers to the same user, then one per 5 minutes.
    let s = TestServer::start_with_default_limits(&[]);
    let (_, aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    for i in 0..3 {
        let call_id = format!("c{i}");
        let started = aconn.request(offer(&call_id, b.user)).await;
        assert!(matches!(started, Ok(ServerFrame::CallStarted { .. })));
        recv_until(&mut bconn, |f| matches!(f, ServerFrame::Call { .. })).await;
        bconn
            .request(ClientFrame::CallDecline { id: 0, call_id })
            .await
            .unwrap();
    }
    let err = aconn.request(offer("c3", b.user)).await.unwrap_err();
    let ClientError::Server(e) = err else {
        panic!("{err}")
    };
    assert_eq!(e.code, ErrorCode::RateLimited);
    assert!(e.retry_after_ms.unwrap() > 60_000, "{e:?}");
    // Someone else can still call them.
    let (_, cconn) = s.user().await;
    let other = cconn.request(offer("from-c", b.user)).await;
    assert!(matches!(other, Ok(ServerFrame::CallStarted { .. })));
}

#[tokio::test]
async fn the_default_call_limits_stop_the_fourth_offer_to_the_same_user() {
    let s = TestServer::start_with_default_limits(&[]);
    let (_, aconn) = s.user().await;
    let b = s.register().await; // offline: each offer ends at once
    for i in 0..4 {
        let r = aconn.request(offer(&format!("c{i}"), b.user)).await;
        if i < 3 {
            assert!(matches!(r, Ok(ServerFrame::CallStarted { .. })), "{r:?}");
        } else {
            assert_eq!(code(r), Some(ErrorCode::RateLimited));
        }
    }
}

#[tokio::test]
async fn read_receipts_to_a_stranger_are_refused_and_nothing_is_queued() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let (b, _) = s.user().await;
    let r = aconn
        .request(ClientFrame::Read {
            id: 0,
            conv: Conv::Direct(b.user),
            to: b.user,
            seqs: vec![1],
        })
        .await;
    assert_eq!(code(r), Some(ErrorCode::Forbidden));
    let db = open_db(&s.data_dir);
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM queue WHERE device = {}", b.device.0)
        ),
        0
    );
    // Once they talk, a receipt for a message that exists is fine, one for a later seq not.
    send(&aconn, "m1", &b, b"x").await;
    let read = |seq| ClientFrame::Read {
        id: 0,
        conv: Conv::Direct(b.user),
        to: b.user,
        seqs: vec![seq],
    };
    assert!(aconn.request(read(1)).await.is_ok());
    assert_eq!(
        code(aconn.request(read(2)).await),
        Some(ErrorCode::Forbidden)
    );
}

#[tokio::test]
async fn re_subscribing_to_presence_is_counted() {
    let s = TestServer::start_with(&["--limit", "presence=10:0.001"]);
    let (_, conn) = s.user().await;
    let mut users = Vec::new();
    for _ in 0..5 {
        users.push(s.register().await.user);
    }
    let sub = || ClientFrame::PresenceSubscribe {
        id: 0,
        users: users.clone(),
    };
    assert!(conn.request(sub()).await.is_ok());
    // The same five again: already subscribed, still five look-ups.
    assert!(conn.request(sub()).await.is_ok());
    assert_eq!(
        code(conn.request(sub()).await),
        Some(ErrorCode::RateLimited)
    );
}

#[tokio::test]
async fn groups_created_per_hour_are_capped() {
    let s = TestServer::start_with(&["--max-groups-per-hour", "3"]);
    let (_, conn) = s.user().await;
    let (peer, _) = s.user().await;
    let create = || ClientFrame::GroupCreate {
        id: 0,
        name: "spam".into(),
        members: vec![peer.user],
    };
    for _ in 0..3 {
        assert!(matches!(
            conn.request(create()).await,
            Ok(ServerFrame::Group { .. })
        ));
    }
    let err = conn.request(create()).await.unwrap_err();
    let ClientError::Server(e) = err else {
        panic!("{err}")
    };
    assert_eq!(e.code, ErrorCode::RateLimited);
    assert!(
        e.retry_after_ms.unwrap() > 3_000_000,
        "about an hour: {e:?}"
    );
    // Three groups, three notices for the peer: nothing from the refused one.
    let db = open_db(&s.data_dir);
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM queue WHERE device = {}",
                peer.device.0
            )
        ),
        3
    );
}

#[tokio::test]
async fn a_flood_past_the_store_queue_is_refused_at_once_with_overloaded() {
    // A tiny admission queue: a pipelined burst from several sockets overflows it.
    let s = TestServer::start_with(&["--store-queue-max-jobs", "64"]);
    let (b, _bconn) = s.user().await;
    let mut senders = Vec::new();
    for _ in 0..4 {
        senders.push(s.user().await.1);
    }
    let mut pending = Vec::new();
    for (k, conn) in senders.iter().enumerate() {
        for i in 0..250 {
            let frame = send_frame(&format!("m{k}-{i}"), b.user, b.device, b"x");
            pending.push(conn.request_once(frame));
        }
    }
    let started = std::time::Instant::now();
    let answers = futures_util::future::join_all(pending).await;
    let (mut sent, mut overloaded) = (0, 0);
    for a in answers {
        match a {
            Ok(ServerFrame::Sent { .. }) => sent += 1,
            Err(ClientError::Server(e)) if e.code == ErrorCode::Overloaded => {
                assert!(e.retry_after_ms.is_some_and(|ms| ms >= 1));
                overloaded += 1;
            }
            other => panic!("neither sent nor overloaded: {other:?}"),
        }
    }
    assert!(overloaded > 0, "some were refused ({sent} sent)");
    assert!(sent > 0, "some got through");
    // Nobody waited for a timeout: every answer came quickly.
    assert!(started.elapsed() < Duration::from_secs(20));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Exactly what was acknowledged is stored.
    let db = open_db(&s.data_dir);
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM queue WHERE device = {}", b.device.0)
        ) as usize,
        sent
    );
    let m = s.metrics().await;
    assert_eq!(
        metric(&m, "natter_messaging_overloaded_total"),
        overloaded as f64
    );
}
