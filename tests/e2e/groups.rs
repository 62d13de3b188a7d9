//! Groups: membership, admins, notices, fan-out by reference.

use std::time::Duration;

use natter_client::Connection;
use natter_client::protocol::{
    ClientFrame, Conv, ErrorCode, GroupChange, GroupId, GroupInfo, OpaqueBytes, QueueItem,
    ServerFrame, UserId,
};

use crate::common::*;

async fn create(conn: &Connection, members: &[UserId]) -> GroupInfo {
    match conn
        .request(ClientFrame::GroupCreate {
            id: 0,
            name: "team".into(),
            members: members.to_vec(),
        })
        .await
        .unwrap()
    {
        ServerFrame::Group { group, .. } => group,
        f => panic!("{f:?}"),
    }
}

async fn notice(conn: &mut Connection) -> (u64, GroupChange) {
    match recv_item(conn).await.1 {
        QueueItem::GroupNotice { seq, change, .. } => (seq, change),
        other => panic!("expected a group notice, got {other:?}"),
    }
}

fn send_group(group: GroupId, cid: &str, body: &[u8]) -> ClientFrame {
    ClientFrame::SendGroup {
        id: 0,
        client_id: cid.into(),
        group,
        body: OpaqueBytes(body.to_vec()),
    }
}

#[tokio::test]
async fn group_message_is_stored_once_and_reaches_every_other_member_device() {
    let s = TestServer::start();
    let (a, mut aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    let (c, mut cconn) = s.user().await;
    let c2 = s.link(&cconn).await;
    let mut c2conn = s.connect(&c2).await;
    expect_queue_empty(&mut c2conn).await;
    let g = create(&aconn, &[b.user, c.user]).await;
    assert_eq!(g.members.len(), 3);
    assert!(g.members.iter().any(|m| m.user == a.user && m.admin));
    for conn in [&mut aconn, &mut bconn, &mut cconn, &mut c2conn] {
        let (seq, change) = notice(conn).await;
        assert_eq!(seq, 1);
        assert!(matches!(change, GroupChange::Created { ref members, .. } if members.len() == 3));
    }
    // Keep b and the cs offline so the queue holds the references.
    drop(bconn);
    drop(cconn);
    drop(c2conn);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let body = vec![9u8; 40_000];
    let ServerFrame::Sent { seq, .. } = aconn
        .request(send_group(g.group, "g1", &body))
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(seq, 2);
    let db = open_db(&s.data_dir);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM payloads"),
        1,
        "body stored once"
    );
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM queue WHERE payload IS NOT NULL"),
        3,
        "b, c, c2"
    );
    assert!(
        count(
            &db,
            "SELECT COALESCE(MAX(LENGTH(item)), 0) FROM queue WHERE payload IS NOT NULL"
        ) < 200,
        "queue rows hold references, not copies"
    );
    for creds in [&b, &c, &c2] {
        let mut conn = s.connect(creds).await;
        let (_, item) = recv_item(&mut conn).await;
        assert!(matches!(
            item,
            QueueItem::Message { conv: Conv::Group(gid), seq: 2, from, ref body, .. }
                if gid == g.group && from == a.user && body.0.len() == 40_000
        ));
        expect_queue_empty(&mut conn).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM payloads"),
        0,
        "released after the last ack"
    );
}

#[tokio::test]
async fn only_admins_change_a_group_and_refusals_change_nothing() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let (b, bconn) = s.user().await;
    let (c, _) = s.user().await;
    let (d, _) = s.user().await;
    let g = create(&aconn, &[b.user, c.user]).await;
    let gid = g.group;
    for frame in [
        ClientFrame::GroupAdd {
            id: 0,
            group: gid,
            users: vec![d.user],
        },
        ClientFrame::GroupRemove {
            id: 0,
            group: gid,
            users: vec![c.user],
        },
        ClientFrame::GroupPromote {
            id: 0,
            group: gid,
            user: c.user,
        },
        ClientFrame::GroupRename {
            id: 0,
            group: gid,
            name: "mine".into(),
        },
    ] {
        let err = bconn.request(frame).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    }
    let ServerFrame::Group { group: after, .. } = bconn
        .request(ClientFrame::GroupInfo { id: 0, group: gid })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(after, g, "unchanged");
    // Outsiders can neither read nor write the group.
    let (_, dconn) = s.user().await;
    for frame in [
        ClientFrame::GroupInfo { id: 0, group: gid },
        send_group(gid, "x", b"x"),
    ] {
        let err = dconn.request(frame).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::Forbidden));
    }
    let err = dconn
        .request(ClientFrame::GroupInfo {
            id: 0,
            group: GroupId(9999),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn membership_changes_reach_every_member_and_removed_members_read_nothing_new() {
    let s = TestServer::start();
    let (_, mut aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    let (c, mut cconn) = s.user().await;
    let (d, mut dconn) = s.user().await;
    let g = create(&aconn, &[b.user, c.user]).await.group;
    for conn in [&mut aconn, &mut bconn, &mut cconn] {
        notice(conn).await;
    }
    aconn
        .request(ClientFrame::GroupAdd {
            id: 0,
            group: g,
            users: vec![d.user],
        })
        .await
        .unwrap();
    for conn in [&mut aconn, &mut bconn, &mut cconn, &mut dconn] {
        assert!(
            matches!(notice(conn).await, (2, GroupChange::Added { ref users }) if users == &[d.user])
        );
    }
    aconn
        .request(ClientFrame::GroupRemove {
            id: 0,
            group: g,
            users: vec![c.user],
        })
        .await
        .unwrap();
    for conn in [&mut aconn, &mut bconn, &mut cconn, &mut dconn] {
        assert!(
            matches!(notice(conn).await, (3, GroupChange::Removed { ref users }) if users == &[c.user])
        );
    }
    aconn
        .request(ClientFrame::GroupRename {
            id: 0,
            group: g,
            name: "renamed".into(),
        })
        .await
        .unwrap();
    aconn
        .request(send_group(g, "after", b"secret"))
        .await
        .unwrap();
    for conn in [&mut bconn, &mut dconn] {
        assert!(matches!(
            notice(conn).await,
            (4, GroupChange::Renamed { .. })
        ));
        assert!(matches!(
            recv_item(conn).await.1,
            QueueItem::Message { seq: 5, .. }
        ));
    }
    expect_silence(&mut cconn, Duration::from_millis(300)).await;
    let err = cconn.request(send_group(g, "c", b"x")).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Forbidden));
}

#[tokio::test]
async fn when_the_last_admin_leaves_the_oldest_member_is_promoted() {
    let s = TestServer::start();
    let (a, aconn) = s.user().await;
    let (b, mut bconn) = s.user().await;
    let (c, _) = s.user().await;
    let g = create(&aconn, &[b.user, c.user]).await.group;
    notice(&mut bconn).await;
    aconn
        .request(ClientFrame::GroupLeave { id: 0, group: g })
        .await
        .unwrap();
    assert!(matches!(notice(&mut bconn).await, (2, GroupChange::Left { user }) if user == a.user));
    assert!(
        matches!(notice(&mut bconn).await, (3, GroupChange::Promoted { ref users }) if users == &[b.user])
    );
    let ServerFrame::Group { group, .. } = bconn
        .request(ClientFrame::GroupInfo { id: 0, group: g })
        .await
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(group.members.len(), 2);
    assert!(group.members.iter().any(|m| m.user == b.user && m.admin));
    // b, now an admin, can rename.
    bconn
        .request(ClientFrame::GroupRename {
            id: 0,
            group: g,
            name: "b's".into(),
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn groups_are_capped_in_size() {
    let s = TestServer::start_with(&["--max-group-members", "3"]);
    let (_, aconn) = s.user().await;
    let (b, _) = s.user().await;
    let (c, _) = s.user().await;
    let (d, _) = s.user().await;
    let err = aconn
        .request(ClientFrame::GroupCreate {
            id: 0,
            name: "big".into(),
            members: vec![b.user, c.user, d.user],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LimitExceeded));
    let g = create(&aconn, &[b.user, c.user]).await.group;
    let err = aconn
        .request(ClientFrame::GroupAdd {
            id: 0,
            group: g,
            users: vec![d.user],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LimitExceeded));
}

#[tokio::test]
async fn the_default_cap_is_1024_members() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    // Users exist only as rows here; registering 1024 over HTTP is the slow part of this test.
    let mut users = Vec::new();
    let http = s.http();
    for _ in 0..1024 {
        users.push(http.register_dev(&phone(), "m").await.unwrap().user);
    }
    let err = aconn
        .request(ClientFrame::GroupCreate {
            id: 0,
            name: "huge".into(),
            members: users.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::LimitExceeded),
        "1 creator + 1024 is one too many"
    );
    let g = create(&aconn, &users[..1023]).await;
    assert_eq!(g.members.len(), 1024);
    let ServerFrame::Sent { .. } = aconn
        .request(send_group(g.group, "all", b"hi all"))
        .await
        .unwrap()
    else {
        panic!()
    };
    let db = open_db(&s.data_dir);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM payloads"), 1);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM queue WHERE payload IS NOT NULL"),
        1023
    );
}

#[tokio::test]
async fn blank_names_and_unknown_members_are_refused() {
    let s = TestServer::start();
    let (_, aconn) = s.user().await;
    let err = aconn
        .request(ClientFrame::GroupCreate {
            id: 0,
            name: "   ".into(),
            members: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Invalid));
    let err = aconn
        .request(ClientFrame::GroupCreate {
            id: 0,
            name: "g".into(),
            members: vec![UserId(5555)],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotFound));
    assert_eq!(
        count(&open_db(&s.data_dir), "SELECT COUNT(*) FROM groups"),
        0
    );
}
