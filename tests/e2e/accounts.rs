//! Registration, tokens, linked devices, revocation.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use natter_client::protocol::{ClientFrame, ErrorCode, ServerFrame};
use natter_client::{ConnectOptions, Connection};
use natter_messaging::close_codes;

use crate::common::*;

#[tokio::test]
async fn register_verify_and_authenticate_socket() {
    let s = TestServer::start();
    let creds = s.register().await;
    assert!(creds.primary);
    assert!(creds.token.starts_with(&format!("{}.", creds.device.0)));
    let mut conn = s.connect(&creds).await;
    assert_eq!(
        (conn.user, conn.device, conn.primary),
        (creds.user, creds.device, true)
    );
    expect_queue_empty(&mut conn).await;
    let pong = conn.request(ClientFrame::Ping { id: 0 }).await.unwrap();
    assert!(matches!(pong, ServerFrame::Pong { .. }));
}

#[tokio::test]
async fn tokens_are_stored_hashed() {
    let s = TestServer::start();
    let creds = s.register().await;
    let secret = creds.token.split_once('.').unwrap().1.to_owned();
    let db = open_db(&s.data_dir);
    let stored: Vec<u8> = db
        .query_row(
            "SELECT token_hash FROM devices WHERE id = ?1",
            [creds.device.0 as i64],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(stored.len(), 32, "a SHA-256, not the token");
    assert!(
        !stored
            .windows(8)
            .any(|w| secret.as_bytes().windows(8).any(|s| s == w))
    );
}

#[tokio::test]
async fn wrong_codes_are_refused_then_the_code_is_burned() {
    let s = TestServer::start();
    let http = s.http();
    let phone = phone();
    let code = http.request_code(&phone).await.unwrap().dev_code.unwrap();
    let wrong = if code == "000000" { "111111" } else { "000000" };
    for _ in 0..5 {
        let err = http.verify(&phone, wrong, "d").await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
    }
    // Five wrong guesses used the code up: even the right one fails now, and no user exists.
    let err = http.verify(&phone, &code, "d").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
    let db = open_db(&s.data_dir);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM users"), 0);
    // A fresh code works.
    let code = http.request_code(&phone).await.unwrap().dev_code.unwrap();
    http.verify(&phone, &code, "d").await.unwrap();
}

#[tokio::test]
async fn malformed_phone_numbers_are_refused() {
    let s = TestServer::start();
    for bad in ["12345", "+0155512", "phone", ""] {
        let err = s.http().request_code(bad).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Invalid), "{bad}");
    }
}

/// Codes go to a webhook when configured; the response then carries no code.
#[tokio::test]
async fn codes_are_posted_to_the_webhook() {
    let received: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<serde_json::Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let s = TestServer::start_with(&["--code-delivery", "webhook", "--code-webhook-url", &hook]);
    let phone = phone();
    let sent = s.http().request_code(&phone).await.unwrap();
    assert!(
        sent.dev_code.is_none(),
        "the code must not be in the response"
    );
    let posted = received.lock().unwrap().clone();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0]["phone"], phone);
    let code = posted[0]["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 6);
    assert!(
        !s.log().contains(&code),
        "webhook mode must not log the code"
    );
    s.http().verify(&phone, &code, "d").await.unwrap();
}

#[tokio::test]
async fn an_unreachable_webhook_is_reported() {
    let s = TestServer::start_with(&[
        "--code-delivery",
        "webhook",
        "--code-webhook-url",
        "http://127.0.0.1:9/hook",
    ]);
    let err = s.http().request_code(&phone()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unavailable));
}

#[tokio::test]
async fn up_to_four_linked_devices() {
    let s = TestServer::start();
    let (creds, primary) = s.user().await;
    let mut linked = Vec::new();
    for _ in 0..4 {
        let l = s.link(&primary).await;
        assert_eq!(l.user, creds.user);
        assert!(!l.primary);
        linked.push(l);
    }
    let err = primary
        .request(ClientFrame::DeviceLinkCode { id: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LimitExceeded));
    let ServerFrame::Devices { devices, .. } = primary
        .request(ClientFrame::DevicesList { id: 0 })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(devices.len(), 5);
    assert_eq!(devices.iter().filter(|d| d.primary).count(), 1);

    // A linked device cannot link more devices.
    let conn = s.connect(&linked[0]).await;
    let err = conn
        .request(ClientFrame::DeviceLinkCode { id: 0 })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
}

#[tokio::test]
async fn link_codes_work_once() {
    let s = TestServer::start();
    let (_, primary) = s.user().await;
    let ServerFrame::LinkCode { code, .. } = primary
        .request(ClientFrame::DeviceLinkCode { id: 0 })
        .await
        .unwrap()
    else {
        panic!()
    };
    s.http().link(&code, "one").await.unwrap();
    let err = s.http().link(&code, "two").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
}

#[tokio::test]
async fn revoking_a_device_closes_its_socket_and_voids_its_token() {
    let s = TestServer::start();
    let (_, primary) = s.user().await;
    let linked = s.link(&primary).await;
    let mut lconn = s.connect(&linked).await;
    expect_queue_empty(&mut lconn).await;

    let ok = primary
        .request(ClientFrame::DeviceRevoke {
            id: 0,
            device: linked.device,
        })
        .await
        .unwrap();
    assert!(matches!(ok, ServerFrame::Ok { .. }));
    let f = recv(&mut lconn).await;
    let ServerFrame::Error(e) = f else {
        panic!("{f:?}")
    };
    assert_eq!(e.code, ErrorCode::DeviceRevoked);
    let (code, _) = recv_close(&mut lconn).await.expect("close frame");
    assert_eq!(code, close_codes::REVOKED);

    let err = Connection::connect(&s.ws, &linked.token, ConnectOptions::default())
        .await
        .err()
        .expect("revoked token refused");
    assert_eq!(err.code(), Some(ErrorCode::DeviceRevoked));
    // The primary is unaffected.
    primary.request(ClientFrame::Ping { id: 0 }).await.unwrap();
}

#[tokio::test]
async fn only_own_devices_can_be_revoked_and_the_primary_cannot_revoke_itself() {
    let s = TestServer::start();
    let (a, aconn) = s.user().await;
    let (b, _bconn) = s.user().await;
    let err = aconn
        .request(ClientFrame::DeviceRevoke {
            id: 0,
            device: b.device,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    let err = aconn
        .request(ClientFrame::DeviceRevoke {
            id: 0,
            device: a.device,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    // b still works.
    s.connect(&b).await;
}

#[tokio::test]
async fn wrong_and_malformed_tokens_are_refused_with_a_close() {
    let s = TestServer::start();
    let creds = s.register().await;
    let forged = format!("{}.{}", creds.device.0, "A".repeat(43));
    for token in [forged.as_str(), "nonsense", "99999.x", ""] {
        let mut conn = Connection::open(
            &s.ws,
            natter_client::protocol::codec::Encoding::Json,
            None,
            WAIT,
        )
        .await
        .unwrap();
        let err = conn
            .request(ClientFrame::Hello {
                id: 0,
                token: token.into(),
                cursor: None,
                client: None,
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Unauthorized), "{token}");
        let (code, _) = recv_close(&mut conn).await.expect("close frame");
        assert_eq!(code, close_codes::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn frames_before_hello_are_refused() {
    let s = TestServer::start();
    let creds = s.register().await;
    let conn = Connection::open(
        &s.ws,
        natter_client::protocol::codec::Encoding::Binary,
        None,
        WAIT,
    )
    .await
    .unwrap();
    for frame in [
        ClientFrame::Ping { id: 0 },
        send_frame("x", creds.user, creds.device, b"hi"),
    ] {
        let err = conn.request(frame).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::NotAuthenticated));
    }
    // Nothing was stored by the refused send.
    assert_eq!(
        count(&open_db(&s.data_dir), "SELECT COUNT(*) FROM queue"),
        0
    );
    // The socket still accepts hello.
    let welcome = conn
        .request(ClientFrame::Hello {
            id: 0,
            token: creds.token.clone(),
            cursor: None,
            client: None,
        })
        .await
        .unwrap();
    assert!(matches!(welcome, ServerFrame::Welcome { .. }));
}

#[tokio::test]
async fn silent_sockets_are_closed_after_the_hello_timeout() {
    let s = TestServer::start_with(&["--hello-timeout-ms", "300"]);
    let mut conn = Connection::open(
        &s.ws,
        natter_client::protocol::codec::Encoding::Json,
        None,
        WAIT,
    )
    .await
    .unwrap();
    let f = recv(&mut conn).await;
    let ServerFrame::Error(e) = f else {
        panic!("{f:?}")
    };
    assert_eq!(e.code, ErrorCode::NotAuthenticated);
    let (code, _) = recv_close(&mut conn).await.unwrap();
    assert_eq!(code, close_codes::UNAUTHORIZED);
}

#[tokio::test]
async fn registering_the_number_again_revokes_the_old_devices() {
    let s = TestServer::start();
    let http = s.http();
    let phone = phone();
    let first = http.register_dev(&phone, "old phone").await.unwrap();
    let mut old = s.connect(&first).await;
    expect_queue_empty(&mut old).await;
    let second = http.register_dev(&phone, "new phone").await.unwrap();
    assert_eq!(second.user, first.user, "same account");
    assert_ne!(second.device, first.device);
    assert_eq!(recv_close(&mut old).await.unwrap().0, close_codes::REVOKED);
    s.connect(&second).await;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test]
async fn a_second_socket_of_a_device_replaces_the_first() {
    let s = TestServer::start();
    let creds = s.register().await;
    let mut first = s.connect(&creds).await;
    expect_queue_empty(&mut first).await;
    let _second = s.connect(&creds).await;
    let f = recv(&mut first).await;
    let ServerFrame::Error(e) = f else {
        panic!("{f:?}")
    };
    assert_eq!(e.code, ErrorCode::Conflict);
    assert_eq!(
        recv_close(&mut first).await.unwrap().0,
        close_codes::REPLACED
    );
}
