//! The prekey directory: upload, count, atomic claims, last resort, bounds.

use std::collections::HashSet;

use natter_client::protocol::{
    ClientFrame, ErrorCode, OpaqueBytes, Prekey, ServerFrame, SignedPrekey,
};

use crate::common::*;

fn key(tag: u8, id: u32) -> OpaqueBytes {
    OpaqueBytes(vec![tag; 32].into_iter().chain(id.to_le_bytes()).collect())
}

fn upload(ids: std::ops::Range<u32>) -> ClientFrame {
    ClientFrame::KeysUpload {
        id: 0,
        identity_key: Some(key(1, 0)),
        signed_prekey: Some(SignedPrekey {
            key_id: 1,
            key: key(2, 1),
            signature: key(3, 1),
        }),
        one_time: ids
            .map(|i| Prekey {
                key_id: i,
                key: key(4, i),
            })
            .collect(),
        last_resort: Some(Prekey {
            key_id: 9999,
            key: key(5, 9999),
        }),
    }
}

async fn count_keys(conn: &natter_client::Connection) -> u32 {
    match conn
        .request(ClientFrame::KeysCount { id: 0 })
        .await
        .unwrap()
    {
        ServerFrame::KeyCount { one_time, .. } => one_time,
        f => panic!("{f:?}"),
    }
}

#[tokio::test]
async fn claims_consume_one_time_keys_then_fall_back_to_last_resort() {
    let s = TestServer::start();
    let (b, bconn) = s.user().await;
    let ServerFrame::KeyCount {
        one_time,
        last_resort,
        signed_prekey,
        identity_key,
        ..
    } = bconn.request(upload(0..3)).await.unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (one_time, last_resort, signed_prekey, identity_key),
        (3, true, true, true)
    );
    let (_, aconn) = s.user().await;
    let mut seen = Vec::new();
    for _ in 0..3 {
        let ServerFrame::Bundle { user, devices, .. } = aconn
            .request(ClientFrame::KeysClaim {
                id: 0,
                user: b.user,
            })
            .await
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(user, b.user);
        assert_eq!(devices.len(), 1);
        let d = &devices[0];
        assert_eq!(d.device, b.device);
        assert_eq!(d.identity_key, Some(key(1, 0)));
        assert_eq!(d.signed_prekey.as_ref().unwrap().signature, key(3, 1));
        assert!(d.last_resort.is_none());
        seen.push(d.one_time.clone().expect("a one-time key").key_id);
    }
    assert_eq!(seen, vec![0, 1, 2]);
    assert_eq!(count_keys(&bconn).await, 0);
    let ServerFrame::Bundle { devices, .. } = aconn
        .request(ClientFrame::KeysClaim {
            id: 0,
            user: b.user,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(devices[0].one_time.is_none());
    assert_eq!(devices[0].last_resort.as_ref().unwrap().key_id, 9999);
}

#[tokio::test]
async fn concurrent_claims_never_share_a_one_time_key() {
    let s = TestServer::start();
    let (b, bconn) = s.user().await;
    bconn.request(upload(0..100)).await.unwrap();
    let mut claimers = Vec::new();
    for _ in 0..4 {
        claimers.push(s.user().await.1);
    }
    let mut tasks = Vec::new();
    for conn in claimers {
        let user = b.user;
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..25 {
                let ServerFrame::Bundle { devices, .. } = conn
                    .request(ClientFrame::KeysClaim { id: 0, user })
                    .await
                    .unwrap()
                else {
                    panic!()
                };
                got.push(devices[0].one_time.clone().unwrap().key_id);
            }
            got
        }));
    }
    let mut all = HashSet::new();
    for t in tasks {
        for id in t.await.unwrap() {
            assert!(all.insert(id), "key {id} handed out twice");
        }
    }
    assert_eq!(all.len(), 100);
}

#[tokio::test]
async fn more_than_one_hundred_one_time_keys_are_refused_whole() {
    let s = TestServer::start();
    let (_, conn) = s.user().await;
    conn.request(upload(0..60)).await.unwrap();
    let err = conn.request(upload(60..101)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LimitExceeded));
    assert_eq!(
        count_keys(&conn).await,
        60,
        "nothing of the refused upload was stored"
    );
    // Reusing an id is refused too.
    let err = conn.request(upload(59..61)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid));
    assert_eq!(count_keys(&conn).await, 60);
    // Topping up to exactly 100 works.
    conn.request(upload(60..100)).await.unwrap();
    assert_eq!(count_keys(&conn).await, 100);
}

#[tokio::test]
async fn bundles_cover_every_device_including_ones_without_keys() {
    let s = TestServer::start();
    let (b, bconn) = s.user().await;
    bconn.request(upload(0..1)).await.unwrap();
    let b2 = s.link(&bconn).await;
    let (_, aconn) = s.user().await;
    let ServerFrame::Bundle { devices, .. } = aconn
        .request(ClientFrame::KeysClaim {
            id: 0,
            user: b.user,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(devices.len(), 2);
    assert_eq!(devices[1].device, b2.device);
    assert!(devices[1].identity_key.is_none());
}

#[tokio::test]
async fn oversized_or_empty_keys_are_refused() {
    let s = TestServer::start();
    let (_, conn) = s.user().await;
    let err = conn
        .request(ClientFrame::KeysUpload {
            id: 0,
            identity_key: Some(OpaqueBytes(vec![0; 257])),
            signed_prekey: None,
            one_time: vec![],
            last_resort: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TooLarge));
    let err = conn
        .request(ClientFrame::KeysUpload {
            id: 0,
            identity_key: Some(OpaqueBytes(vec![])),
            signed_prekey: None,
            one_time: vec![],
            last_resort: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid));
    let ServerFrame::KeyCount { identity_key, .. } = conn
        .request(ClientFrame::KeysCount { id: 0 })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert!(!identity_key);
}

#[tokio::test]
async fn claiming_a_missing_user_is_not_found() {
    let s = TestServer::start();
    let (_, conn) = s.user().await;
    let err = conn
        .request(ClientFrame::KeysClaim {
            id: 0,
            user: natter_client::protocol::UserId(424242),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}
