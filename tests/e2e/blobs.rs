//! Encrypted media blobs: resumable upload, content addressing, limits, authentication.

use natter_client::protocol::ErrorCode;
use sha2::{Digest, Sha256};

use crate::common::*;

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[tokio::test]
async fn upload_resumes_by_offset_and_downloads_intact() {
    let s = TestServer::start();
    let creds = s.register().await;
    let http = s.http();
    let blob = data(300_000);
    let up = http
        .upload_create(&creds.token, blob.len() as u64)
        .await
        .unwrap();
    assert_eq!((up.offset, up.complete), (0, false));
    let st = http
        .upload_append(&creds.token, &up.upload_id, 0, blob[..100_000].to_vec())
        .await
        .unwrap();
    assert_eq!(st.offset, 100_000);
    // A client that lost track asks for the offset and resumes from there.
    assert_eq!(
        http.upload_status(&creds.token, &up.upload_id)
            .await
            .unwrap()
            .offset,
        100_000
    );
    let err = http
        .upload_append(&creds.token, &up.upload_id, 0, blob[..10].to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Conflict));
    assert_eq!(
        http.upload_status(&creds.token, &up.upload_id)
            .await
            .unwrap()
            .offset,
        100_000
    );
    let done = http
        .upload_append(
            &creds.token,
            &up.upload_id,
            100_000,
            blob[100_000..].to_vec(),
        )
        .await
        .unwrap();
    assert!(done.complete);
    let hash = done.blob.unwrap();
    assert_eq!(
        hash,
        hex::encode(Sha256::digest(&blob)),
        "content-addressed by SHA-256"
    );

    let other = s.register().await;
    let got = http.download(&other.token, &hash, 0).await.unwrap();
    assert_eq!(got, blob);
    let tail = http.download(&other.token, &hash, 250_000).await.unwrap();
    assert_eq!(tail, &blob[250_000..]);
}

#[tokio::test]
async fn the_upload_helper_reports_progress_to_the_end() {
    let s = TestServer::start();
    let creds = s.register().await;
    let blob = data(1_000_000);
    let mut seen = Vec::new();
    let hash = s
        .http()
        .upload(&creds.token, &blob, 256 * 1024, |done, total| {
            seen.push((done, total))
        })
        .await
        .unwrap();
    assert_eq!(seen.last(), Some(&(1_000_000, 1_000_000)));
    assert_eq!(seen.len(), 4);
    assert_eq!(
        s.http().download(&creds.token, &hash, 0).await.unwrap(),
        blob
    );
}

#[tokio::test]
async fn blobs_over_the_limit_are_refused_and_nothing_is_kept() {
    let s = TestServer::start_with(&["--max-blob-bytes", "1000"]);
    let creds = s.register().await;
    let http = s.http();
    let err = http.upload_create(&creds.token, 1001).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooLarge));
    assert_eq!(
        count(&open_db(&s.data_dir), "SELECT COUNT(*) FROM uploads"),
        0
    );
    // A body longer than declared is refused and the offset stays where it was.
    let up = http.upload_create(&creds.token, 500).await.unwrap();
    http.upload_append(&creds.token, &up.upload_id, 0, data(200))
        .await
        .unwrap();
    let err = http
        .upload_append(&creds.token, &up.upload_id, 200, data(400))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooLarge));
    assert_eq!(
        http.upload_status(&creds.token, &up.upload_id)
            .await
            .unwrap()
            .offset,
        200
    );
    assert_eq!(
        std::fs::read_dir(s.data_dir.join("blobs")).unwrap().count(),
        0
    );
}

#[tokio::test]
async fn the_default_limit_is_one_hundred_mebibytes() {
    let s = TestServer::start();
    let creds = s.register().await;
    let err = s
        .http()
        .upload_create(&creds.token, 100 * 1024 * 1024 + 1)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooLarge));
    s.http()
        .upload_create(&creds.token, 100 * 1024 * 1024)
        .await
        .unwrap();
}

#[tokio::test]
async fn blobs_need_a_token_and_uploads_belong_to_their_device() {
    let s = TestServer::start();
    let a = s.register().await;
    let b = s.register().await;
    let http = s.http();
    let hash = http
        .upload(&a.token, b"ciphertext", 1024, |_, _| {})
        .await
        .unwrap();
    let resp = reqwest::get(format!("{}/v1/blobs/{hash}", s.base))
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let err = http.download("1.forged", &hash, 0).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Unauthorized));
    let up = http.upload_create(&a.token, 10).await.unwrap();
    let err = http
        .upload_append(&b.token, &up.upload_id, 0, data(10))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    assert_eq!(
        http.upload_status(&a.token, &up.upload_id)
            .await
            .unwrap()
            .offset,
        0
    );
    for bad in ["../../natter.db", "00", &"g".repeat(64)] {
        let err = http.download(&a.token, bad, 0).await.unwrap_err();
        assert!(
            matches!(err.code(), Some(ErrorCode::NotFound) | None),
            "{bad}: {err}"
        );
    }
}
