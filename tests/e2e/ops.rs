//! Operations: metrics, health, graceful shutdown.

use natter_client::protocol::ClientFrame;

use crate::common::*;

#[tokio::test]
async fn metrics_count_connections_frames_queue_latency_and_errors() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    let c = s.register().await; // offline: its item stays queued
    send(&aconn, "1", &b, b"x").await;
    send(&aconn, "2", &c, b"x").await;
    recv_item(&mut bconn).await;
    let _ = aconn
        .request(ClientFrame::KeysClaim {
            id: 0,
            user: natter_client::protocol::UserId(999),
        })
        .await;
    aconn.request(ClientFrame::Ping { id: 0 }).await.unwrap();
    // b's ack is a fire-and-forget frame on another socket: the delivery latency is
    // recorded once the server has committed it, which may be after a's ping returns.
    let mut text = String::new();
    for _ in 0..100 {
        text = reqwest::get(format!("{}/metrics", s.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric(&text, "natter_messaging_send_to_delivered_seconds_count") >= 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(metric(&text, "natter_messaging_connections"), 2.0);
    assert!(metric(&text, "natter_messaging_frames_in_total{type=\"send\"}") >= 2.0);
    assert!(metric(&text, "natter_messaging_frames_out_total{type=\"deliver\"}") >= 1.0);
    // c's message waits; a's delivered receipt may or may not be acked yet.
    assert!(metric(&text, "natter_messaging_queue_items") >= 1.0);
    assert!(metric(&text, "natter_messaging_send_to_delivered_seconds_count") >= 1.0);
    assert_eq!(
        metric(&text, "natter_messaging_errors_total{code=\"not_found\"}"),
        1.0
    );
    assert!(text.contains("natter_messaging_store_commit_seconds_bucket"));
}

#[tokio::test]
async fn healthz_answers_ok() {
    let s = TestServer::start();
    let v: serde_json::Value = reqwest::get(format!("{}/healthz", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["status"], "ok");
}

#[tokio::test]
async fn sigterm_drains_sockets_and_keeps_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut s = TestServer::start_in(&dir, &[]);
    let (_, aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    let c = s.register().await;
    send(&aconn, "1", &c, b"kept").await;
    let status = s.terminate();
    assert!(status.success(), "clean exit: {status:?}");
    let (code, _) = recv_close(&mut bconn).await.expect("a close frame");
    assert_eq!(code, 1001, "going away");
    assert!(s.log().contains("messaging gateway stopped"));
    let s = TestServer::start_in(&dir, &[]);
    let mut cconn = s.connect(&c).await;
    let (_, item) = recv_item(&mut cconn).await;
    assert!(
        matches!(item, natter_client::protocol::QueueItem::Message { ref body, .. } if body.0 == b"kept")
    );
    let _ = b;
}
