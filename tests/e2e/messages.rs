//! 1:1 messages: sent / delivered / read, de-duplication, device lists, multi-device copies.

use std::time::Duration;

use natter_client::protocol::{
    ClientFrame, Conv, ErrorCode, OpaqueBytes, QueueItem, ReceiptStatus, ServerFrame,
};

use crate::common::*;

#[tokio::test]
async fn message_is_stored_delivered_and_receipted() {
    let s = TestServer::start();
    let (a, aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    let mut aconn = aconn;

    let seq = send(&aconn, "m1", &b, b"ciphertext-1").await;
    assert_eq!(seq, 1);
    let (_, item) = recv_item(&mut bconn).await;
    let QueueItem::Message {
        conv,
        seq: got_seq,
        from,
        device,
        body,
        ..
    } = item
    else {
        panic!("{item:?}")
    };
    assert_eq!(conv, Conv::Direct(a.user));
    assert_eq!((got_seq, from, device), (1, a.user, a.device));
    assert_eq!(body.0, b"ciphertext-1");

    // b's ack turns into a delivered receipt on a's device.
    let (_, receipt) = recv_item(&mut aconn).await;
    assert_eq!(
        receipt,
        QueueItem::Receipt {
            conv: Conv::Direct(b.user),
            status: ReceiptStatus::Delivered,
            by: b.user,
            device: b.device,
            seqs: vec![1],
            ts_ms: match &receipt {
                QueueItem::Receipt { ts_ms, .. } => *ts_ms,
                _ => 0,
            },
        }
    );
}

#[tokio::test]
async fn sent_is_acknowledged_only_after_the_envelope_is_durable() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let b = s.register().await; // offline
    send(&aconn, "m1", &b, b"x").await;
    // `sent` came back, so the row must already be in the database file.
    let db = open_db(&s.data_dir);
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM queue WHERE device = {}", b.device.0)
        ),
        1
    );
}

#[tokio::test]
async fn read_receipts_reach_the_author_unless_switched_off() {
    let s = TestServer::start();
    let (a, mut aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    send(&aconn, "m1", &b, b"x").await;
    recv_item(&mut bconn).await;
    recv_item(&mut aconn).await; // delivered

    let read = ClientFrame::Read {
        id: 0,
        conv: Conv::Direct(a.user),
        to: a.user,
        seqs: vec![1],
    };
    bconn.request(read).await.unwrap();
    let (_, r) = recv_item(&mut aconn).await;
    assert!(matches!(
        r,
        QueueItem::Receipt { status: ReceiptStatus::Read, by, ref seqs, .. } if by == b.user && seqs == &[1]
    ));

    let ServerFrame::Settings { read_receipts, .. } = bconn
        .request(ClientFrame::Settings {
            id: 0,
            presence: None,
            read_receipts: Some(false),
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(!read_receipts);
    send(&aconn, "m2", &b, b"y").await;
    recv_item(&mut bconn).await;
    recv_item(&mut aconn).await; // delivered still flows
    bconn
        .request(ClientFrame::Read {
            id: 0,
            conv: Conv::Direct(a.user),
            to: a.user,
            seqs: vec![2],
        })
        .await
        .unwrap();
    expect_silence(&mut aconn, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn read_receipts_for_a_conversation_one_is_not_in_are_refused() {
    let s = TestServer::start();
    let (_a, _) = s.user().await;
    let (b, bconn) = s.user().await;
    let (c, _) = s.user().await;
    // Direct: `to` must be the peer.
    let err = bconn
        .request(ClientFrame::Read {
            id: 0,
            conv: Conv::Direct(c.user),
            to: b.user,
            seqs: vec![1],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid));
}

#[tokio::test]
async fn duplicate_client_ids_are_stored_once() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    let frame = send_frame("same-id", b.user, b.device, b"once");
    let first = aconn.request(frame.clone()).await.unwrap();
    let second = aconn.request(frame).await.unwrap();
    let (
        ServerFrame::Sent {
            seq: s1,
            duplicate: d1,
            ..
        },
        ServerFrame::Sent {
            seq: s2,
            duplicate: d2,
            ..
        },
    ) = (first, second)
    else {
        panic!()
    };
    assert_eq!((s1, d1), (1, false));
    assert_eq!((s2, d2), (1, true));
    recv_item(&mut bconn).await;
    expect_silence(&mut bconn, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn envelopes_must_match_the_device_lists() {
    let s = TestServer::start();
    let (a, aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    let b2 = s.link(&bconn).await;
    let (c, _) = s.user().await;

    // Missing b's second device.
    let err = aconn
        .request(send_frame("m1", b.user, b.device, b"x"))
        .await
        .unwrap_err();
    let natter_client::ClientError::Server(e) = err else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::DeviceMismatch);
    assert_eq!(e.missing, vec![b2.device]);
    assert!(e.extra.is_empty());

    // An envelope for someone else's device.
    let err = aconn
        .request(ClientFrame::Send {
            id: 0,
            client_id: "m2".into(),
            to: b.user,
            envelopes: vec![
                envelope(b.device, b"x"),
                envelope(b2.device, b"x"),
                envelope(c.device, b"x"),
            ],
        })
        .await
        .unwrap_err();
    let natter_client::ClientError::Server(e) = err else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::DeviceMismatch);
    assert_eq!(e.extra, vec![c.device]);

    // Nothing was stored, and the refused client ids are still free.
    expect_silence(&mut bconn, Duration::from_millis(200)).await;
    let ok = aconn
        .request(ClientFrame::Send {
            id: 0,
            client_id: "m1".into(),
            to: b.user,
            envelopes: vec![envelope(b.device, b"x"), envelope(b2.device, b"y")],
        })
        .await
        .unwrap();
    assert!(matches!(
        ok,
        ServerFrame::Sent {
            seq: 1,
            duplicate: false,
            ..
        }
    ));
    let _ = a;
}

#[tokio::test]
async fn sending_to_a_missing_user_is_not_found() {
    let s = TestServer::start();
    let (a, aconn) = s.user().await;
    let err = aconn
        .request(send_frame(
            "m",
            natter_client::protocol::UserId(999_999),
            a.device,
            b"x",
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn own_other_devices_get_a_copy_and_both_recipient_devices_theirs() {
    let s = TestServer::start();
    let (a, aconn) = s.user().await;
    let a2 = s.link(&aconn).await;
    let mut a2conn = s.connect(&a2).await;
    expect_queue_empty(&mut a2conn).await;
    let (b, bconn) = s.user().await;
    let b2 = s.link(&bconn).await;
    let mut bconn = bconn;
    let mut b2conn = s.connect(&b2).await;
    expect_queue_empty(&mut b2conn).await;

    let sent = aconn
        .request(ClientFrame::Send {
            id: 0,
            client_id: "m".into(),
            to: b.user,
            envelopes: vec![
                envelope(b.device, b"for-b1"),
                envelope(b2.device, b"for-b2"),
                envelope(a2.device, b"for-a2"),
            ],
        })
        .await
        .unwrap();
    assert!(matches!(sent, ServerFrame::Sent { seq: 1, .. }));
    for (conn, body, conv) in [
        (&mut bconn, &b"for-b1"[..], Conv::Direct(a.user)),
        (&mut b2conn, &b"for-b2"[..], Conv::Direct(a.user)),
        (&mut a2conn, &b"for-a2"[..], Conv::Direct(b.user)),
    ] {
        let (_, item) = recv_item(conn).await;
        let QueueItem::Message {
            conv: c,
            body: got,
            from,
            ..
        } = item
        else {
            panic!()
        };
        assert_eq!((c, got, from), (conv, OpaqueBytes(body.to_vec()), a.user));
    }
}

#[tokio::test]
async fn sequences_are_per_conversation() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let (b, bconn) = s.user().await;
    let (c, _) = s.user().await;
    assert_eq!(send(&aconn, "1", &b, b"x").await, 1);
    assert_eq!(send(&aconn, "2", &b, b"x").await, 2);
    assert_eq!(send(&aconn, "3", &c, b"x").await, 1);
    // The reply in a↔b continues a↔b's sequence.
    let a = aconn.user;
    let a_dev = aconn.device;
    let seq = match bconn
        .request(send_frame("r", a, a_dev, b"x"))
        .await
        .unwrap()
    {
        ServerFrame::Sent { seq, .. } => seq,
        f => panic!("{f:?}"),
    };
    assert_eq!(seq, 3);
}

#[tokio::test]
async fn acks_cannot_reach_items_not_delivered() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    send(&aconn, "m", &b, b"x").await;
    let (qseq, _) = recv_item_unacked(&mut bconn).await;
    // Acking beyond what was delivered is refused and deletes nothing.
    let id = bconn
        .notify(ClientFrame::Ack {
            id: 0,
            qseqs: vec![qseq, qseq + 50],
        })
        .unwrap();
    let f = recv(&mut bconn).await;
    let ServerFrame::Error(e) = f else {
        panic!("{f:?}")
    };
    assert_eq!((e.code, e.id), (ErrorCode::Invalid, Some(id)));
    drop(bconn);
    // The item is still queued: it comes again on the next connection.
    let mut again = s.connect(&b).await;
    let (q2, _) = recv_item(&mut again).await;
    assert_eq!(q2, qseq);
}

#[tokio::test]
async fn binary_and_json_clients_talk_to_each_other() {
    let s = TestServer::start();
    let a = s.register().await;
    let b = s.register().await;
    let mut aconn = s.connect_json(&a).await;
    expect_queue_empty(&mut aconn).await;
    let mut bconn = s.connect(&b).await; // binary
    expect_queue_empty(&mut bconn).await;
    let body: Vec<u8> = (0..=255u8).collect();
    send(&aconn, "j", &b, &body).await;
    let (_, item) = recv_item(&mut bconn).await;
    assert!(matches!(item, QueueItem::Message { body: ref got, .. } if got.0 == body));
    let r = recv_until(&mut aconn, |f| matches!(f, ServerFrame::Deliver { .. })).await;
    assert!(
        matches!(r, ServerFrame::Deliver { ref item, .. } if matches!(**item, QueueItem::Receipt { .. }))
    );
}
