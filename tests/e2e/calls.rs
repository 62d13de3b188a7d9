//! Call signaling through the real server, with raw WebSocket clients: ringing, answering,
//! every way a call ends, ICE trickle, glare, missed-call notices, TURN credentials.

use std::time::Duration;

use natter_client::Connection;
use natter_client::protocol::call::{CallEvent, EndReason, IceCandidate, Media, SdpKind};
use natter_client::protocol::{ClientFrame, ErrorCode, QueueItem, ServerFrame};

use crate::common::*;

fn offer(call_id: &str, to: natter_client::protocol::UserId) -> ClientFrame {
    ClientFrame::CallOffer {
        id: 0,
        call_id: call_id.into(),
        to,
        media: Media::Audio,
        sdp: "v=0 offer".into(),
    }
}

fn frame(call_id: &str, kind: &str) -> ClientFrame {
    let call_id = call_id.to_owned();
    match kind {
        "ringing" => ClientFrame::CallRinging { id: 0, call_id },
        "decline" => ClientFrame::CallDecline { id: 0, call_id },
        "cancel" => ClientFrame::CallCancel { id: 0, call_id },
        "hangup" => ClientFrame::CallHangup { id: 0, call_id },
        "accept" => ClientFrame::CallAccept {
            id: 0,
            call_id,
            sdp: "v=0 answer".into(),
        },
        other => panic!("{other}"),
    }
}

fn ice(call_id: &str, c: &str) -> ClientFrame {
    ClientFrame::CallIce {
        id: 0,
        call_id: call_id.into(),
        candidate: IceCandidate {
            candidate: c.into(),
            sdp_mid: Some("0".into()),
            sdp_mline_index: Some(0),
        },
    }
}

/// A connection that keeps the queue items it sees while waiting for call events.
struct Peer {
    conn: Connection,
    items: Vec<QueueItem>,
}

impl std::ops::Deref for Peer {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.conn
    }
}

impl Peer {
    fn new(conn: Connection) -> Peer {
        Peer {
            conn,
            items: Vec::new(),
        }
    }

    /// The next frame that is not a queue item (those are stored and acknowledged).
    async fn next(&mut self) -> ServerFrame {
        loop {
            match recv(&mut self.conn).await {
                ServerFrame::Deliver { qseq, item } => {
                    self.conn
                        .notify(ClientFrame::Ack {
                            id: 0,
                            qseqs: vec![qseq],
                        })
                        .unwrap();
                    self.items.push((*item).clone());
                }
                f => return f,
            }
        }
    }

    /// Waits for a missed-call item about `call_id`.
    async fn missed(&mut self, call_id: &str) -> QueueItem {
        loop {
            if let Some(i) = self
                .items
                .iter()
                .find(|i| matches!(i, QueueItem::MissedCall { call_id: c, .. } if c == call_id))
            {
                return i.clone();
            }
            let _ = tokio::time::timeout(Duration::from_millis(100), self.next()).await;
        }
    }
}

/// The next call event (other frames are skipped).
async fn call_event(p: &mut Peer) -> (String, CallEvent) {
    loop {
        if let ServerFrame::Call { call_id, event, .. } = p.next().await {
            return (call_id, event);
        }
    }
}

async fn ended(p: &mut Peer) -> EndReason {
    loop {
        if let (_, CallEvent::Ended { reason }) = call_event(p).await {
            return reason;
        }
    }
}

async fn no_call_event(p: &mut Peer) {
    let r = tokio::time::timeout(Duration::from_millis(300), call_event(p)).await;
    assert!(r.is_err(), "unexpected call event {r:?}");
}

async fn ok(conn: &Connection, f: ClientFrame) {
    match conn.request(f).await.unwrap() {
        ServerFrame::Ok { .. } | ServerFrame::CallStarted { .. } => {}
        other => panic!("unexpected {other:?}"),
    }
}

async fn refused(conn: &Connection, f: ClientFrame) -> ErrorCode {
    conn.request(f)
        .await
        .unwrap_err()
        .code()
        .expect("a server error")
}

/// Alice, and Bob with two devices, all connected with their queues drained.
async fn parties(
    server: &TestServer,
) -> (
    natter_client::Credentials,
    Peer,
    natter_client::Credentials,
    Peer,
    Peer,
) {
    let (a, ac) = server.user().await;
    let (b, bc) = server.user().await;
    let b2 = server.link(&bc).await;
    let mut b2c = server.connect(&b2).await;
    expect_queue_empty(&mut b2c).await;
    (a, Peer::new(ac), b, Peer::new(bc), Peer::new(b2c))
}

#[tokio::test]
async fn every_device_rings_the_first_answer_wins_and_media_signals_flow() {
    let server = TestServer::start();
    let (_a, mut ac, b, mut bc, mut b2c) = parties(&server).await;
    ok(&ac, offer("call-1", b.user)).await;
    for c in [&mut bc, &mut b2c] {
        let (id, ev) = call_event(c).await;
        assert_eq!(id, "call-1");
        assert!(
            matches!(ev, CallEvent::Incoming { media: Media::Audio, ref sdp, .. } if sdp == "v=0 offer")
        );
    }
    ok(&b2c, frame("call-1", "ringing")).await;
    assert!(matches!(
        call_event(&mut ac).await.1,
        CallEvent::Ringing { .. }
    ));
    // ICE from the caller reaches both ringing devices; the callee's waits for its answer.
    conn_notify(&ac, ice("call-1", "a-cand"));
    for c in [&mut bc, &mut b2c] {
        assert!(
            matches!(call_event(c).await.1, CallEvent::Ice { ref candidate, .. } if candidate.candidate == "a-cand")
        );
    }
    conn_notify(&bc, ice("call-1", "b-early"));
    no_call_event(&mut ac).await;
    ok(&bc, frame("call-1", "accept")).await;
    assert!(
        matches!(call_event(&mut ac).await.1, CallEvent::Accepted { device, ref sdp } if device == b.device && sdp == "v=0 answer")
    );
    assert!(
        matches!(call_event(&mut ac).await.1, CallEvent::Ice { ref candidate, .. } if candidate.candidate == "b-early")
    );
    assert_eq!(call_event(&mut b2c).await.1, CallEvent::AnsweredElsewhere);
    // The loser can neither answer nor send candidates.
    assert_eq!(
        refused(&b2c, frame("call-1", "accept")).await,
        ErrorCode::Conflict
    );
    // ICE restart: a new offer and answer pass between the parties.
    ok(
        &ac,
        ClientFrame::CallUpdate {
            id: 0,
            call_id: "call-1".into(),
            kind: SdpKind::Offer,
            sdp: "v=0 restart".into(),
        },
    )
    .await;
    assert!(matches!(
        call_event(&mut bc).await.1,
        CallEvent::Update {
            kind: SdpKind::Offer,
            ..
        }
    ));
    ok(&bc, frame("call-1", "hangup")).await;
    assert_eq!(ended(&mut ac).await, EndReason::Hangup);
    let m = server_metrics(&server).await;
    assert!(m.contains("natter_messaging_calls_answered_total 1"), "{m}");
    assert!(m.contains("natter_messaging_call_setup_seconds_count 1"));
}

fn conn_notify(c: &Connection, f: ClientFrame) {
    c.notify(f).unwrap();
}

async fn server_metrics(server: &TestServer) -> String {
    reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[tokio::test]
async fn decline_busy_cancel_and_glare_end_calls_on_both_sides() {
    let server = TestServer::start();
    let (a, mut ac, b, mut bc, mut b2c) = parties(&server).await;
    // Decline on one device ends it for everyone.
    ok(&ac, offer("d", b.user)).await;
    call_event(&mut bc).await;
    call_event(&mut b2c).await;
    ok(&b2c, frame("d", "decline")).await;
    assert_eq!(ended(&mut ac).await, EndReason::Declined);
    assert_eq!(ended(&mut bc).await, EndReason::Declined);

    // Busy: Bob is in a call with Carol.
    let (_c, cc) = server.user().await;
    let cc = Peer::new(cc);
    ok(&cc, offer("c-b", b.user)).await;
    call_event(&mut bc).await;
    call_event(&mut b2c).await;
    ok(&bc, frame("c-b", "accept")).await;
    ok(&ac, offer("a-b", b.user)).await;
    assert_eq!(ended(&mut ac).await, EndReason::Busy);
    ok(&cc, frame("c-b", "hangup")).await;
    assert_eq!(ended(&mut bc).await, EndReason::Hangup);
    assert_eq!(call_event(&mut b2c).await.1, CallEvent::AnsweredElsewhere);

    // Cancel before an answer: the ringing devices stop, and a missed call is queued.
    ok(&ac, offer("cancelled", b.user)).await;
    call_event(&mut bc).await;
    call_event(&mut b2c).await;
    ok(&ac, frame("cancelled", "cancel")).await;
    assert_eq!(ended(&mut bc).await, EndReason::Cancelled);
    let item = bc.missed("cancelled").await;
    assert!(matches!(item, QueueItem::MissedCall { from, .. } if from == a.user));

    // Glare: both call each other; the smaller id survives on both sides.
    ok(&bc, offer("zzz-bob", a.user)).await;
    ok(&ac, offer("aaa-alice", b.user)).await;
    assert_eq!(
        ended(&mut bc).await,
        EndReason::Glare,
        "bob's own call ended"
    );
    let mut alice_saw_glare = false;
    for _ in 0..2 {
        match call_event(&mut ac).await {
            (
                id,
                CallEvent::Ended {
                    reason: EndReason::Glare,
                },
            ) if id == "zzz-bob" => alice_saw_glare = true,
            (id, CallEvent::Incoming { .. }) if id == "zzz-bob" => {}
            other => panic!("alice got {other:?}"),
        }
        if alice_saw_glare {
            break;
        }
    }
    assert!(alice_saw_glare);
    // Alice's call rings bob's devices.
    loop {
        if let (id, CallEvent::Incoming { .. }) = call_event(&mut b2c).await
            && id == "aaa-alice"
        {
            break;
        }
    }
    ok(&b2c, frame("aaa-alice", "accept")).await;
}

#[tokio::test]
async fn an_unanswered_call_times_out_into_a_missed_call() {
    let server = TestServer::start_with(&["--ring-timeout-ms", "1000"]);
    let (a, mut ac, b, mut bc, mut b2c) = parties(&server).await;
    ok(&ac, offer("t", b.user)).await;
    call_event(&mut bc).await;
    assert_eq!(ended(&mut ac).await, EndReason::Timeout);
    assert_eq!(ended(&mut bc).await, EndReason::Timeout);
    assert_eq!(ended(&mut b2c).await, EndReason::Timeout);
    for c in [&mut bc, &mut b2c] {
        let item = c.missed("t").await;
        assert!(
            matches!(item, QueueItem::MissedCall { from, media: Media::Audio, .. } if from == a.user)
        );
    }
    // Nobody online: unavailable at once, and the notice waits in the queue.
    drop(bc);
    drop(b2c);
    tokio::time::sleep(Duration::from_millis(200)).await;
    ok(&ac, offer("offline", b.user)).await;
    assert_eq!(ended(&mut ac).await, EndReason::Unavailable);
    let mut bc = server.connect(&b).await;
    let mut found = false;
    loop {
        match recv(&mut bc).await {
            ServerFrame::Deliver { item, .. } => {
                if matches!(&*item, QueueItem::MissedCall { call_id, .. } if call_id == "offline") {
                    found = true;
                }
            }
            ServerFrame::QueueEmpty {} => break,
            _ => {}
        }
    }
    assert!(found, "the missed call waited for bob");
    let m = server_metrics(&server).await;
    assert!(
        m.contains("natter_messaging_calls_failed_total{reason=\"timeout\"} 1"),
        "{m}"
    );
    assert!(m.contains("natter_messaging_calls_failed_total{reason=\"unavailable\"} 1"));
}

#[tokio::test]
async fn call_frames_from_strangers_and_for_unknown_calls_are_refused() {
    let server = TestServer::start();
    let (_a, ac, b, mut bc, mut b2c) = parties(&server).await;
    let (_c, cc) = server.user().await;
    assert_eq!(
        refused(&bc, frame("nope", "accept")).await,
        ErrorCode::NotFound
    );
    ok(&ac, offer("x", b.user)).await;
    call_event(&mut bc).await;
    call_event(&mut b2c).await;
    // A third party may not answer, decline, hang up or send candidates or SDP.
    for k in ["accept", "decline", "hangup", "ringing"] {
        assert_eq!(
            refused(&cc, frame("x", k)).await,
            ErrorCode::Forbidden,
            "{k}"
        );
    }
    assert_eq!(refused(&cc, ice("x", "c")).await, ErrorCode::Forbidden);
    assert_eq!(
        refused(&bc, frame("x", "cancel")).await,
        ErrorCode::Forbidden
    );
    // Bad frames: empty SDP, oversized SDP, an id in use, calling oneself.
    let bad = ClientFrame::CallOffer {
        id: 0,
        call_id: "y".into(),
        to: b.user,
        media: Media::Video,
        sdp: "".into(),
    };
    assert_eq!(refused(&cc, bad).await, ErrorCode::Invalid);
    let big = ClientFrame::CallOffer {
        id: 0,
        call_id: "y".into(),
        to: b.user,
        media: Media::Video,
        sdp: "v".repeat(40_000),
    };
    assert_eq!(refused(&cc, big).await, ErrorCode::TooLarge);
    assert_eq!(refused(&cc, offer("x", _a.user)).await, ErrorCode::Conflict);
    assert_eq!(
        refused(&bc, offer("self", b.user)).await,
        ErrorCode::Invalid
    );
    // None of it disturbed the call.
    ok(&bc, frame("x", "accept")).await;
}

#[tokio::test]
async fn ice_servers_carry_turn_credentials_the_turn_side_accepts() {
    let server = TestServer::start_with(&[
        "--stun-urls",
        "stun:127.0.0.1:3478",
        "--turn-urls",
        "turn:127.0.0.1:3478?transport=udp,turn:127.0.0.1:3478?transport=tcp",
        "--turn-secret",
        "shared-secret",
        "--turn-ttl-s",
        "600",
    ]);
    let (_a, ac) = server.user().await;
    let (servers, ttl) = match ac.request(ClientFrame::IceServers { id: 0 }).await.unwrap() {
        ServerFrame::IceServers { servers, ttl_s, .. } => (servers, ttl_s),
        other => panic!("{other:?}"),
    };
    assert_eq!(ttl, 600);
    assert_eq!(servers[0].urls, ["stun:127.0.0.1:3478"]);
    let turn = &servers[1];
    assert_eq!(turn.urls.len(), 2);
    let (user, pass) = (
        turn.username.clone().unwrap(),
        turn.credential.clone().unwrap(),
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert_eq!(
        natter_client::protocol::turn::verify(b"shared-secret", &user, &pass, now),
        Ok(true)
    );
    assert_eq!(
        natter_client::protocol::turn::verify(b"wrong", &user, &pass, now),
        Ok(false)
    );
    let expiry: u64 = user.split(':').next().unwrap().parse().unwrap();
    assert!((now + 590..=now + 610).contains(&expiry));
}
