//! Token buckets: refusals carry retry-after and change nothing.

use std::time::Duration;

use natter_client::protocol::{ClientFrame, ErrorCode, OpaqueBytes, Prekey};

use crate::common::*;

#[tokio::test]
async fn sends_over_the_rate_are_refused_with_retry_after() {
    let s = TestServer::start_with(&["--limit-send", "3:1"]);
    let (_, aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    for i in 0..3 {
        send(&aconn, &format!("m{i}"), &b, b"x").await;
    }
    let err = aconn
        .request(send_frame("m3", b.user, b.device, b"x"))
        .await
        .unwrap_err();
    let natter_client::ClientError::Server(e) = err else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::RateLimited);
    let wait = e.retry_after_ms.expect("retry_after_ms");
    assert!((1..=1000).contains(&wait), "{wait}");
    for _ in 0..3 {
        recv_item(&mut bconn).await;
    }
    expect_silence(&mut bconn, Duration::from_millis(200)).await;
    tokio::time::sleep(Duration::from_millis(wait + 50)).await;
    send(&aconn, "m3", &b, b"x").await;
}

#[tokio::test]
async fn registration_codes_are_limited_per_phone_with_retry_after() {
    let s = TestServer::start_with(&["--limit-register-phone", "2:0.01"]);
    let phone = phone();
    let http = s.http();
    http.request_code(&phone).await.unwrap();
    http.request_code(&phone).await.unwrap();
    let (status, retry, code) = s.refused_code_request(&phone).await;
    assert_eq!(status, 429);
    assert!((90..=100).contains(&retry), "{retry}");
    assert_eq!(code, "rate_limited");
    // Another number is not affected.
    http.request_code(&crate::common::phone()).await.unwrap();
}

#[tokio::test]
async fn registrations_are_limited_per_address() {
    let s = TestServer::start_with(&["--limit-register-ip", "3:0.01"]);
    let http = s.http();
    for _ in 0..3 {
        http.request_code(&phone()).await.unwrap();
    }
    let err = http.request_code(&phone()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RateLimited));
}

#[tokio::test]
async fn prekey_uploads_are_limited() {
    let s = TestServer::start_with(&["--limit-prekeys", "1:0.01"]);
    let (_, conn) = s.user().await;
    let upload = |id| ClientFrame::KeysUpload {
        id: 0,
        identity_key: None,
        signed_prekey: None,
        one_time: vec![Prekey {
            key_id: id,
            key: OpaqueBytes(vec![1; 32]),
        }],
        last_resort: None,
    };
    conn.request(upload(1)).await.unwrap();
    let err = conn.request(upload(2)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RateLimited));
}

#[tokio::test]
async fn blob_bytes_are_limited() {
    let s = TestServer::start_with(&["--limit-blob-bytes", "1048576:1"]);
    let creds = s.register().await;
    let http = s.http();
    let up = http.upload_create(&creds.token, 2_000_000).await.unwrap();
    http.upload_append(&creds.token, &up.upload_id, 0, vec![1; 1_000_000])
        .await
        .unwrap();
    let err = http
        .upload_append(&creds.token, &up.upload_id, 1_000_000, vec![1; 1_000_000])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RateLimited));
    assert_eq!(
        http.upload_status(&creds.token, &up.upload_id)
            .await
            .unwrap()
            .offset,
        1_000_000
    );
}
