//! Presence (online / last seen, visibility) and typing indicators.

use std::time::Duration;

use natter_client::protocol::{
    ClientFrame, Conv, ErrorCode, PresenceInfo, PresenceVisibility, ServerFrame, UserId,
};

use crate::common::*;

async fn subscribe(conn: &natter_client::Connection, user: UserId) -> PresenceInfo {
    match conn
        .request(ClientFrame::PresenceSubscribe {
            id: 0,
            users: vec![user],
        })
        .await
        .unwrap()
    {
        ServerFrame::PresenceList { mut users, .. } => users.remove(0),
        f => panic!("{f:?}"),
    }
}

async fn presence_event(conn: &mut natter_client::Connection) -> PresenceInfo {
    match recv_until(conn, |f| matches!(f, ServerFrame::Presence(_))).await {
        ServerFrame::Presence(p) => p,
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn subscribers_see_online_and_last_seen() {
    let s = TestServer::start();
    let (_, mut aconn) = s.user().await;
    let b = s.register().await;
    let p = subscribe(&aconn, b.user).await;
    assert_eq!((p.online, p.hidden, p.last_seen_ms), (false, false, None));
    let bconn = s.connect(&b).await;
    let p = presence_event(&mut aconn).await;
    assert_eq!((p.user, p.online), (b.user, true));
    drop(bconn);
    let p = presence_event(&mut aconn).await;
    assert!(!p.online);
    let seen = p.last_seen_ms.expect("last seen");
    // A later subscriber reads last-seen from storage.
    let (_, cconn) = s.user().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let p = subscribe(&cconn, b.user).await;
    assert_eq!((p.online, p.last_seen_ms), (false, Some(seen)));
}

#[tokio::test]
async fn nobody_visibility_hides_presence() {
    let s = TestServer::start();
    let (_, mut aconn) = s.user().await;
    let (b, bconn) = s.user().await;
    assert!(subscribe(&aconn, b.user).await.online);
    let ServerFrame::Settings { presence, .. } = bconn
        .request(ClientFrame::Settings {
            id: 0,
            presence: Some(PresenceVisibility::Nobody),
            read_receipts: None,
        })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(presence, PresenceVisibility::Nobody);
    let p = presence_event(&mut aconn).await;
    assert!(p.hidden && !p.online && p.last_seen_ms.is_none());
    drop(bconn);
    expect_silence(&mut aconn, Duration::from_millis(300)).await;
    let (_, cconn) = s.user().await;
    let p = subscribe(&cconn, b.user).await;
    assert!(p.hidden && p.last_seen_ms.is_none());
}

#[tokio::test]
async fn subscribing_to_a_missing_user_is_not_found() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let err = aconn
        .request(ClientFrame::PresenceSubscribe {
            id: 0,
            users: vec![UserId(31337)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn typing_is_forwarded_and_lapses_on_its_own() {
    let s = TestServer::start_with(&["--typing-ttl-ms", "400"]);
    let (a, aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    aconn
        .notify(ClientFrame::Typing {
            id: 0,
            conv: Conv::Direct(b.user),
            active: true,
        })
        .unwrap();
    let f = recv_until(&mut bconn, |f| matches!(f, ServerFrame::Typing { .. })).await;
    let ServerFrame::Typing {
        conv,
        from,
        active,
        ttl_ms,
        ..
    } = f
    else {
        unreachable!()
    };
    assert_eq!(
        (conv, from, active, ttl_ms),
        (Conv::Direct(a.user), a.user, true, 400)
    );
    // No refresh: the server says it stopped.
    let f = recv_until(&mut bconn, |f| matches!(f, ServerFrame::Typing { .. })).await;
    assert!(matches!(f, ServerFrame::Typing { active: false, .. }));
}

#[tokio::test]
async fn typing_is_never_stored() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let b = s.register().await; // offline
    aconn
        .notify(ClientFrame::Typing {
            id: 0,
            conv: Conv::Direct(b.user),
            active: true,
        })
        .unwrap();
    aconn.request(ClientFrame::Ping { id: 0 }).await.unwrap();
    assert_eq!(
        count(&open_db(&s.data_dir), "SELECT COUNT(*) FROM queue"),
        0
    );
    let mut bconn = s.connect(&b).await;
    expect_queue_empty(&mut bconn).await;
    expect_silence(&mut bconn, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn typing_stops_when_the_typist_disconnects() {
    let s = TestServer::start_with(&["--typing-ttl-ms", "60000"]);
    let (_, aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    aconn
        .notify(ClientFrame::Typing {
            id: 0,
            conv: Conv::Direct(b.user),
            active: true,
        })
        .unwrap();
    recv_until(&mut bconn, |f| {
        matches!(f, ServerFrame::Typing { active: true, .. })
    })
    .await;
    drop(aconn);
    recv_until(&mut bconn, |f| {
        matches!(f, ServerFrame::Typing { active: false, .. })
    })
    .await;
}

#[tokio::test]
async fn typing_in_a_group_one_is_not_in_is_refused() {
    let s = TestServer::start();
    let (_, mut aconn) = s.user().await;
    aconn
        .notify(ClientFrame::Typing {
            id: 0,
            conv: Conv::Group(natter_client::protocol::GroupId(77)),
            active: true,
        })
        .unwrap();
    let f = recv(&mut aconn).await;
    assert!(
        matches!(f, ServerFrame::Error(ref e) if e.code == ErrorCode::NotFound),
        "{f:?}"
    );
}
