//! Hostile clients, accounts: code guessing, link codes, storage quotas, development mode
//! on a public address.

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};

use natter_client::protocol::{ClientFrame, ErrorCode, ServerFrame};
use natter_client::{ClientError, HttpClient};

use crate::common::*;

fn from_net(s: &TestServer, last_octet: u8) -> HttpClient {
    HttpClient::with_local_address(&s.base, IpAddr::V4(Ipv4Addr::new(127, 0, 0, last_octet)))
}

fn err_code(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Server(e)) => e.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// Asks for a code for `phone` (development mode returns it).
async fn dev_code(c: &HttpClient, phone: &str) -> String {
    c.request_code(phone).await.unwrap().dev_code.unwrap()
}

/// A six-digit code that is not `right`.
fn wrong(right: &str, i: u32) -> String {
    let n: u32 = right.parse().unwrap();
    format!("{:06}", (n + 1 + i) % 1_000_000)
}

#[tokio::test]
async fn wrong_code_guesses_are_capped_across_codes_and_the_owner_can_still_register() {
    let s = TestServer::start_with(&[
        "--max-wrong-codes-per-network-day",
        "6",
        "--max-wrong-codes-per-phone-day",
        "12",
    ]);
    let victim_phone = phone();
    let attacker = from_net(&s, 66);
    // Five wrong guesses burn a code; a new code must not give five more.
    let mut guesses = 0;
    for _round in 0..3 {
        let code = dev_code(&attacker, &victim_phone).await;
        for _ in 0..5 {
            let r = attacker
                .verify(&victim_phone, &wrong(&code, guesses), "x")
                .await;
            let c = err_code(r);
            if guesses < 6 {
                assert_eq!(c, ErrorCode::Unauthorized, "guess {guesses}");
            } else {
                assert_eq!(
                    c,
                    ErrorCode::RateLimited,
                    "guess {guesses}: the day's budget is spent"
                );
            }
            guesses += 1;
        }
    }
    // Even the right code is refused to that network now (it would be guess number 16).
    let code = dev_code(&attacker, &victim_phone).await;
    assert_eq!(
        err_code(attacker.verify(&victim_phone, &code, "x").await),
        ErrorCode::RateLimited
    );
    // The owner, from another network, gets a fresh code and registers.
    let owner = from_net(&s, 77);
    let code = dev_code(&owner, &victim_phone).await;
    let creds = owner.verify(&victim_phone, &code, "mine").await.unwrap();
    assert!(creds.primary);
}

#[tokio::test]
async fn the_per_number_cap_holds_against_many_networks() {
    let s = TestServer::start_with(&[
        "--max-wrong-codes-per-network-day",
        "3",
        "--max-wrong-codes-per-phone-day",
        "6",
    ]);
    let target = phone();
    let mut refused_at = None;
    for (i, net) in (10..20u8).enumerate() {
        let c = from_net(&s, net);
        let code = dev_code(&c, &target).await;
        let r = c.verify(&target, &wrong(&code, 0), "x").await;
        if err_code(r) == ErrorCode::RateLimited {
            refused_at = Some(i);
            break;
        }
        let _ = c.verify(&target, &wrong(&code, 1), "x").await;
        let _ = c.verify(&target, &wrong(&code, 2), "x").await;
    }
    // Two networks × 3 wrong guesses spend the number's 6: the third network is refused.
    assert_eq!(refused_at, Some(2));
}

#[tokio::test]
async fn codes_go_out_at_most_three_then_one_per_twenty_minutes_by_default() {
    // The built-in default, not the test harness's generous one.
    let s = TestServer::start_with_default_limits(&[]);
    let target = phone();
    let http = s.http();
    for _ in 0..3 {
        http.request_code(&target).await.unwrap();
    }
    let (status, retry, code) = s.refused_code_request(&target).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    assert!((1150..=1200).contains(&retry), "{retry} s");
}

#[tokio::test]
async fn re_registering_a_number_voids_its_link_codes() {
    let s = TestServer::start();
    let phone = phone();
    let http = s.http();
    let first = http.register_dev(&phone, "old phone").await.unwrap();
    let conn = s.connect(&first).await;
    let ServerFrame::LinkCode { code, .. } = conn
        .request(ClientFrame::DeviceLinkCode { id: 0 })
        .await
        .unwrap()
    else {
        panic!("expected link_code")
    };
    drop(conn);
    // The owner recovers the number on a new phone.
    let recovered = http.register_dev(&phone, "new phone").await.unwrap();
    assert_eq!(recovered.user, first.user);
    // Whoever held the old phone cannot use the code it made.
    let r = http.link(&code, "thief").await;
    assert!(matches!(
        err_code(r),
        ErrorCode::Unauthorized | ErrorCode::NotFound
    ));
    let db = open_db(&s.data_dir);
    assert_eq!(
        count(
            &db,
            &format!(
                "SELECT COUNT(*) FROM devices WHERE user = {} AND revoked_ms IS NULL",
                first.user.0
            )
        ),
        1
    );
}

#[tokio::test]
async fn link_codes_are_rate_limited() {
    let s = TestServer::start_with(&["--limit", "link_code=2:0.001"]);
    let (_, conn) = s.user().await;
    for _ in 0..2 {
        assert!(matches!(
            conn.request(ClientFrame::DeviceLinkCode { id: 0 }).await,
            Ok(ServerFrame::LinkCode { .. })
        ));
    }
    assert_eq!(
        err_code(conn.request(ClientFrame::DeviceLinkCode { id: 0 }).await),
        ErrorCode::RateLimited
    );
}

#[tokio::test]
async fn stored_bytes_and_open_uploads_are_capped_per_user() {
    let s = TestServer::start_with(&[
        "--max-blob-bytes",
        "1048576",
        "--max-stored-bytes-per-user",
        "2097152",
        "--max-open-uploads",
        "2",
    ]);
    let a = s.register().await;
    let http = s.http();
    let u1 = http.upload_create(&a.token, 1_048_576).await.unwrap();
    let u2 = http.upload_create(&a.token, 1_048_576).await.unwrap();
    // A third at once: too many in progress.
    let r = http.upload_create(&a.token, 10).await;
    let ClientError::Server(e) = r.unwrap_err() else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::LimitExceeded);
    assert!(e.message.contains("in progress"), "{}", e.message);
    // Finish both (different contents): 2 MiB stored, the whole quota.
    for (u, byte) in [(&u1, 1u8), (&u2, 2u8)] {
        let done = http
            .upload_append(&a.token, &u.upload_id, 0, vec![byte; 1_048_576])
            .await
            .unwrap();
        assert!(done.complete);
    }
    let r = http.upload_create(&a.token, 1).await;
    let ClientError::Server(e) = r.unwrap_err() else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::LimitExceeded);
    assert!(e.message.contains("quota"), "{}", e.message);
    // Nothing was left behind by the refusals, and another user is not affected.
    assert_eq!(
        std::fs::read_dir(s.data_dir.join("uploads"))
            .unwrap()
            .count(),
        0
    );
    let b = s.register().await;
    http.upload_create(&b.token, 1_048_576).await.unwrap();
}

#[test]
fn development_mode_on_a_public_address_is_refused_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_natter"))
        .args(["--listen", "0.0.0.0:0", "--turn-enabled", "false"])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It must refuse at once; a server that starts anyway is stopped here and fails the test.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let status = status.expect("natter started in development mode on 0.0.0.0");
    assert!(!status.success());
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(err.contains("take over"), "{err}");
    assert!(err.contains("allow-account-takeover-dev-mode"), "{err}");
    // Said explicitly, it starts (and is stopped here).
    let s = TestServer::start_at(
        &dir.path().join("forced"),
        "0.0.0.0:0",
        &[
            "--allow-account-takeover-dev-mode",
            "true",
            "--turn-enabled",
            "false",
        ],
    );
    assert!(s.base.contains(':'));
}
