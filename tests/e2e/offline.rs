//! Store-and-forward: offline devices, backlog replay, cursors, redelivery.

use std::time::Duration;

use natter_client::ConnectOptions;
use natter_client::protocol::{ClientFrame, QueueItem, ServerFrame};

use crate::common::*;

/// Sends `n` messages from `conn` to `to`, pipelined, waiting for every `sent`.
async fn send_many(conn: &natter_client::Connection, to: &natter_client::Credentials, n: usize) {
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(conn.request(send_frame(
            &format!("m{i}"),
            to.user,
            to.device,
            format!("body {i}").as_bytes(),
        )));
    }
    for (i, r) in futures_util::future::join_all(pending)
        .await
        .into_iter()
        .enumerate()
    {
        assert!(matches!(r, Ok(ServerFrame::Sent { .. })), "send {i}: {r:?}");
    }
}

/// Receives every item up to `queue_empty` and acks as it goes; returns the message seqs.
async fn drain(conn: &mut natter_client::Connection) -> Vec<u64> {
    let mut seqs = Vec::new();
    loop {
        match recv(conn).await {
            ServerFrame::QueueEmpty {} => return seqs,
            ServerFrame::Deliver { qseq, item } => {
                if let QueueItem::Message { seq, .. } = *item {
                    seqs.push(seq);
                }
                conn.notify(ClientFrame::Ack {
                    id: 0,
                    qseqs: vec![qseq],
                })
                .unwrap();
            }
            f => panic!("unexpected {f:?}"),
        }
    }
}

#[tokio::test]
async fn offline_device_gets_its_backlog_in_order_then_queue_empty() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let b = s.register().await;
    send_many(&aconn, &b, 250).await;
    let mut bconn = s.connect(&b).await;
    let seqs = drain(&mut bconn).await;
    assert_eq!(seqs, (1..=250).collect::<Vec<_>>());
    // Acked items are gone: a new connection gets nothing.
    drop(bconn);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = s.connect(&b).await;
    expect_queue_empty(&mut again).await;
}

#[tokio::test]
async fn ten_thousand_message_backlog_replays_completely_and_in_order() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let b = s.register().await;
    send_many(&aconn, &b, 10_000).await;
    assert_eq!(
        count(
            &open_db(&s.data_dir),
            &format!("SELECT COUNT(*) FROM queue WHERE device = {}", b.device.0)
        ),
        10_000
    );
    let mut bconn = s.connect(&b).await;
    let seqs = drain(&mut bconn).await;
    assert_eq!(seqs.len(), 10_000);
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gaps, no duplicates"
    );
}

#[tokio::test]
async fn replay_waits_for_acks_between_batches() {
    let s = TestServer::start_with(&["--replay-batch", "10"]);
    let (_, aconn) = s.user().await;
    let b = s.register().await;
    send_many(&aconn, &b, 30).await;
    let mut bconn = s.connect(&b).await;
    let mut got = Vec::new();
    for _ in 0..10 {
        got.push(recv_item_unacked(&mut bconn).await.0);
    }
    // Without acks, no second batch.
    expect_silence(&mut bconn, Duration::from_millis(300)).await;
    bconn
        .notify(ClientFrame::Ack {
            id: 0,
            qseqs: got.clone(),
        })
        .unwrap();
    let rest = drain(&mut bconn).await;
    assert_eq!(rest.len(), 20);
}

#[tokio::test]
async fn unacked_items_come_again_on_reconnect() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let b = s.register().await;
    send_many(&aconn, &b, 3).await;
    let mut first = s.connect(&b).await;
    let q1 = recv_item_unacked(&mut first).await.0;
    drop(first);
    let mut second = s.connect(&b).await;
    let q2 = recv_item_unacked(&mut second).await.0;
    assert_eq!(q1, q2);
}

#[tokio::test]
async fn a_cursor_counts_as_ack_and_skips_what_the_device_has() {
    let s = TestServer::start();
    let (a, mut aconn) = s.user().await;
    let b = s.register().await;
    send_many(&aconn, &b, 5).await;
    let mut first = s.connect(&b).await;
    let mut last = 0;
    for _ in 0..3 {
        last = recv_item_unacked(&mut first).await.0;
    }
    drop(first);
    // The device stored three items but its acks were lost; it says so with its cursor.
    let mut second = s
        .connect_with(
            &b,
            ConnectOptions {
                cursor: Some(last),
                ..Default::default()
            },
        )
        .await;
    let seqs = drain(&mut second).await;
    assert_eq!(seqs, vec![4, 5]);
    // The author still hears that all five were delivered.
    let mut delivered = Vec::new();
    while delivered.len() < 5 {
        let (_, item) = recv_item(&mut aconn).await;
        if let QueueItem::Receipt { seqs, .. } = item {
            delivered.extend(seqs);
        }
    }
    delivered.sort();
    assert_eq!(delivered, vec![1, 2, 3, 4, 5]);
    let _ = a;
}

#[tokio::test]
async fn live_messages_interleave_with_replay_in_order() {
    let s = TestServer::start_with(&["--replay-batch", "20"]);
    let (_, aconn) = s.user().await;
    let b = s.register().await;
    send_many(&aconn, &b, 100).await;
    let mut bconn = s.connect(&b).await;
    // Keep sending while b replays.
    let sender = tokio::spawn(async move {
        send_many(&aconn, &b, 0).await;
        for i in 100..200 {
            aconn
                .request(send_frame(&format!("m{i}"), b.user, b.device, b"live"))
                .await
                .unwrap();
        }
        aconn
    });
    let mut seqs = Vec::new();
    while seqs.len() < 200 {
        match recv(&mut bconn).await {
            ServerFrame::Deliver { qseq, item } => {
                if let QueueItem::Message { seq, .. } = *item {
                    seqs.push(seq);
                }
                bconn
                    .notify(ClientFrame::Ack {
                        id: 0,
                        qseqs: vec![qseq],
                    })
                    .unwrap();
            }
            ServerFrame::QueueEmpty {} => {}
            f => panic!("{f:?}"),
        }
    }
    sender.await.unwrap();
    assert_eq!(seqs, (1..=200).collect::<Vec<_>>());
}
