//! Bad input on the socket: each gets an error frame and changes nothing.

use std::time::Duration;

use natter_client::protocol::codec::Encoding;
use natter_client::protocol::limits::{MAX_ENVELOPE_BYTES, MAX_FRAME_BYTES};
use natter_client::protocol::{ClientFrame, ErrorCode, ServerFrame};
use natter_client::{ConnectOptions, Connection};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

async fn error_event(conn: &mut Connection) -> natter_client::protocol::ErrorBody {
    match recv(conn).await {
        ServerFrame::Error(e) => e,
        f => panic!("expected an error frame, got {f:?}"),
    }
}

#[tokio::test]
async fn malformed_frames_get_bad_frame_and_the_socket_lives_on() {
    let s = TestServer::start();
    let creds = s.register().await;
    let mut conn = s.connect_json(&creds).await;
    expect_queue_empty(&mut conn).await;
    for junk in ["{not json", "[1,2,3]", "\"just a string\"", r#"{"id":4}"#] {
        conn.send_raw(Message::Text(junk.into())).unwrap();
        let e = error_event(&mut conn).await;
        assert_eq!(e.code, ErrorCode::BadFrame, "{junk}");
    }
    conn.send_raw(Message::Text(r#"{"type":"send","id":9,"to":"bob"}"#.into()))
        .unwrap();
    let e = error_event(&mut conn).await;
    assert_eq!((e.code, e.id), (ErrorCode::BadFrame, Some(9)));
    conn.request(ClientFrame::Ping { id: 0 }).await.unwrap();
}

#[tokio::test]
async fn unknown_frame_types_are_named_as_such() {
    let s = TestServer::start();
    let creds = s.register().await;
    let mut conn = s.connect_json(&creds).await;
    expect_queue_empty(&mut conn).await;
    conn.send_raw(Message::Text(r#"{"type":"self_destruct","id":77}"#.into()))
        .unwrap();
    let e = error_event(&mut conn).await;
    assert_eq!((e.code, e.id), (ErrorCode::UnknownType, Some(77)));
    assert!(e.message.contains("self_destruct"));
}

#[tokio::test]
async fn binary_connections_refuse_text_frames_and_vice_versa() {
    let s = TestServer::start();
    let creds = s.register().await;
    let mut bin = s.connect(&creds).await;
    expect_queue_empty(&mut bin).await;
    bin.send_raw(Message::Text(r#"{"type":"ping","id":1}"#.into()))
        .unwrap();
    assert_eq!(error_event(&mut bin).await.code, ErrorCode::BadFrame);
    drop(bin);
    let mut json = s.connect_json(&creds).await;
    expect_queue_empty(&mut json).await;
    json.send_raw(Message::Binary(
        Encoding::Binary.encode(&ClientFrame::Ping { id: 1 }).into(),
    ))
    .unwrap();
    assert_eq!(error_event(&mut json).await.code, ErrorCode::BadFrame);
}

#[tokio::test]
async fn oversized_frames_are_refused_and_nothing_is_stored() {
    let s = TestServer::start();
    let (_, mut aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    // A whole frame over the limit.
    let big = send_frame("big", b.user, b.device, &vec![7u8; MAX_FRAME_BYTES + 1000]);
    aconn
        .send_raw(Message::Binary(Encoding::Binary.encode(&big).into()))
        .unwrap();
    assert_eq!(error_event(&mut aconn).await.code, ErrorCode::TooLarge);
    // One envelope over its limit, inside a frame that is not.
    let err = aconn
        .request(send_frame(
            "env",
            b.user,
            b.device,
            &vec![7u8; MAX_ENVELOPE_BYTES + 1],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooLarge));
    // Exactly at the limit is fine.
    send(&aconn, "ok", &b, &vec![7u8; MAX_ENVELOPE_BYTES]).await;
    let (_, item) = recv_item(&mut bconn).await;
    assert!(matches!(
        item,
        natter_client::protocol::QueueItem::Message { seq: 1, .. }
    ));
    expect_silence(&mut bconn, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn frames_far_over_the_limit_close_the_socket() {
    let s = TestServer::start();
    let creds = s.register().await;
    let mut conn = s.connect(&creds).await;
    expect_queue_empty(&mut conn).await;
    conn.send_raw(Message::Binary(vec![0u8; 5 * MAX_FRAME_BYTES].into()))
        .unwrap();
    // tungstenite refuses to buffer it; the server closes the socket.
    recv_close(&mut conn).await;
    // The server is fine.
    s.connect(&creds).await;
}

#[tokio::test]
async fn unsupported_protocol_versions_are_refused_at_upgrade() {
    let s = TestServer::start();
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/ws", s.base))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .header("sec-websocket-protocol", "natter.v7.json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "unsupported_version");
}

#[tokio::test]
async fn a_second_hello_is_refused() {
    let s = TestServer::start();
    let creds = s.register().await;
    let conn = s.connect(&creds).await;
    let err = conn
        .request(ClientFrame::Hello {
            id: 0,
            token: creds.token.clone(),
            cursor: None,
            client: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid));
}

#[tokio::test]
async fn json_is_the_default_without_a_subprotocol() {
    let s = TestServer::start();
    let creds = s.register().await;
    let (mut ws, resp) = tokio_tungstenite::connect_async(s.ws.as_str())
        .await
        .unwrap();
    assert!(resp.headers().get("sec-websocket-protocol").is_none());
    use futures_util::{SinkExt, StreamExt};
    let hello = format!(r#"{{"type":"hello","id":1,"token":"{}"}}"#, creds.token);
    ws.send(Message::Text(hello.into())).await.unwrap();
    let Some(Ok(Message::Text(t))) = ws.next().await else {
        panic!()
    };
    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
    assert_eq!(v["type"], "welcome");
    assert_eq!(v["id"], 1);
    let _ = ConnectOptions::default();
}
