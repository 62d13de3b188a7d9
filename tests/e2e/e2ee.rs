//! The end-to-end-encrypted Rust client against the real server: real sockets, real Olm and
//! Megolm (vodozemac), local history in SQLite. The server sees only ciphertext — the last
//! test reads its whole data directory to check.

use std::path::Path;
use std::time::Duration;

use natter_client::crypto::Machine;
use natter_client::protocol::{ClientFrame, Conv, Envelope, OpaqueBytes, ServerFrame};
use natter_client::{Client, ClientEvent, ClientEvents, HistoryItem, ItemKind};

use crate::common::*;

const WAIT: Duration = Duration::from_secs(15);

pub(crate) struct Device {
    pub client: Client,
    pub events: ClientEvents,
    pub _dir: tempfile::TempDir,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.client.shutdown();
    }
}

impl Device {
    /// Waits for an event `f` accepts, skipping others.
    pub async fn wait<T>(&mut self, what: &str, mut f: impl FnMut(&ClientEvent) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ev = tokio::time::timeout_at(deadline, self.events.next())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .expect("client stopped");
            if let Some(v) = f(&ev) {
                return v;
            }
        }
    }

    pub async fn ready(&mut self) {
        self.wait("backlog done", |e| {
            matches!(e, ClientEvent::BacklogDone).then_some(())
        })
        .await;
    }

    async fn message(&mut self) -> HistoryItem {
        self.wait("a message", |e| match e {
            ClientEvent::Message(m) => Some(m.clone()),
            _ => None,
        })
        .await
    }

    /// Waits until nothing arrives for `quiet` (to show that something does not come).
    async fn no_message_for(&mut self, quiet: Duration) {
        let end = tokio::time::Instant::now() + quiet;
        while let Ok(Some(ev)) = tokio::time::timeout_at(end, self.events.next()).await {
            if let ClientEvent::Message(m) = ev {
                panic!("unexpected message {m:?}");
            }
        }
    }
}

pub(crate) async fn device(server: &TestServer) -> Device {
    let dir = tempfile::tempdir().unwrap();
    let (client, events) = Client::register(dir.path(), &server.base, &phone(), None, "phone")
        .await
        .expect("register");
    let mut d = Device {
        client,
        events,
        _dir: dir,
    };
    d.ready().await;
    d
}

pub(crate) async fn linked(server: &TestServer, primary: &Device) -> Device {
    let (code, _) = primary.client.link_code().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (client, events) = Client::link(dir.path(), &server.base, &code, "laptop")
        .await
        .expect("link");
    let mut d = Device {
        client,
        events,
        _dir: dir,
    };
    d.ready().await;
    d
}

/// Gives a device's key upload (which runs right after it connects) time to land.
pub(crate) async fn keys_published(d: &Device) {
    client_keys_published(&d.client).await
}

async fn client_keys_published(client: &Client) {
    for _ in 0..100 {
        let conn = client.connection(WAIT).await.unwrap();
        if let Ok(ServerFrame::KeyCount { one_time, .. }) =
            conn.request(ClientFrame::KeysCount { id: 0 }).await
            && one_time > 0
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("keys never published");
}

#[tokio::test]
async fn one_to_one_both_ways() {
    let server = TestServer::start();
    let mut alice = device(&server).await;
    let mut bob = device(&server).await;
    keys_published(&bob).await;

    let sent = alice
        .client
        .send_text(bob.client.user(), "hello bob")
        .await
        .unwrap();
    let m = bob.message().await;
    assert_eq!((m.kind, m.body.as_str()), (ItemKind::Text, "hello bob"));
    assert_eq!(m.conv, Conv::Direct(alice.client.user()));
    assert_eq!(m.seq, Some(sent.seq));
    assert!(!m.outgoing);

    // Delivered receipt (two ticks) reaches alice.
    alice
        .wait("receipt", |e| match e {
            ClientEvent::Receipt { seqs, .. } if seqs.contains(&sent.seq) => Some(()),
            _ => None,
        })
        .await;
    let h = alice
        .client
        .history(Conv::Direct(bob.client.user()), 10)
        .unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].status, "delivered");

    keys_published(&alice).await;
    bob.client
        .send_text(alice.client.user(), "hi alice")
        .await
        .unwrap();
    let m = alice.message().await;
    assert_eq!(m.body, "hi alice");
    for i in 0..5 {
        alice
            .client
            .send_text(bob.client.user(), &format!("n{i}"))
            .await
            .unwrap();
    }
    for i in 0..5 {
        assert_eq!(bob.message().await.body, format!("n{i}"));
    }
    // Both sides see the same safety number.
    let a = alice.client.safety_number(bob.client.user()).await.unwrap();
    let b = bob.client.safety_number(alice.client.user()).await.unwrap();
    assert_eq!(a, b);
}

#[tokio::test]
async fn group_of_three_and_a_removed_member_reads_nothing_new() {
    let server = TestServer::start();
    let mut a = device(&server).await;
    let mut b = device(&server).await;
    let mut c = device(&server).await;
    keys_published(&b).await;
    keys_published(&c).await;
    let info = a
        .client
        .create_group("trip", &[b.client.user(), c.client.user()])
        .await
        .unwrap();
    let g = info.group;
    a.client.send_group_text(g, "to all three").await.unwrap();
    for d in [&mut b, &mut c] {
        let m = d.message().await;
        assert_eq!(m.body, "to all three");
        assert_eq!(m.conv, Conv::Group(g));
    }
    keys_published(&a).await;
    b.client.send_group_text(g, "from b").await.unwrap();
    assert_eq!(a.message().await.body, "from b");
    assert_eq!(c.message().await.body, "from b");

    a.client
        .remove_members(g, &[c.client.user()])
        .await
        .unwrap();
    c.wait("removal notice", |e| {
        matches!(e, ClientEvent::GroupChanged { .. }).then_some(())
    })
    .await;
    b.wait("removal notice", |e| {
        matches!(e, ClientEvent::GroupChanged { .. }).then_some(())
    })
    .await;
    a.client.send_group_text(g, "after c left").await.unwrap();
    assert_eq!(b.message().await.body, "after c left");
    b.client.send_group_text(g, "b after c left").await.unwrap();
    assert_eq!(a.message().await.body, "b after c left");
    c.no_message_for(Duration::from_millis(500)).await;
    assert!(c.client.groups().unwrap().is_empty(), "c forgot the group");
}

#[tokio::test]
async fn an_offline_recipient_gets_its_backlog_after_reconnecting() {
    let server = TestServer::start();
    let mut alice = device(&server).await;
    let bob_dir = tempfile::tempdir().unwrap();
    let (bob, bob_events) = Client::register(bob_dir.path(), &server.base, &phone(), None, "phone")
        .await
        .unwrap();
    let bob_user = bob.user();
    // Bob publishes his keys, then goes offline.
    client_keys_published(&bob).await;
    bob.shutdown();
    drop(bob_events);
    tokio::time::sleep(Duration::from_millis(200)).await;

    for i in 0..30 {
        alice
            .client
            .send_text(bob_user, &format!("while away {i}"))
            .await
            .unwrap();
    }
    let (client, events) = Client::open(bob_dir.path()).await.unwrap();
    let mut bob = Device {
        client,
        events,
        _dir: bob_dir,
    };
    for i in 0..30 {
        assert_eq!(bob.message().await.body, format!("while away {i}"));
    }
    bob.ready().await;
    let h = bob
        .client
        .history(Conv::Direct(alice.client.user()), 100)
        .unwrap();
    assert_eq!(h.len(), 30);
    assert!(h.iter().all(|m| m.kind == ItemKind::Text));
    alice
        .wait("receipts", |e| match e {
            ClientEvent::Receipt { seqs, .. } if seqs.contains(&30) => Some(()),
            _ => None,
        })
        .await;
}

#[tokio::test]
async fn clients_reconnect_by_themselves_after_the_server_dies() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut server = TestServer::start_in(&data, &[]);
    let addr = server.base.trim_start_matches("http://").to_owned();
    let mut alice = device(&server).await;
    let mut bob = device(&server).await;
    keys_published(&bob).await;
    alice
        .client
        .send_text(bob.client.user(), "before")
        .await
        .unwrap();
    assert_eq!(bob.message().await.body, "before");

    server.kill();
    for d in [&mut alice, &mut bob] {
        d.wait("disconnect", |e| {
            matches!(e, ClientEvent::Disconnected { .. }).then_some(())
        })
        .await;
    }
    let _server = TestServer::start_at(&data, &addr, &[]);
    for d in [&mut alice, &mut bob] {
        d.wait("reconnect", |e| {
            matches!(e, ClientEvent::Connected).then_some(())
        })
        .await;
    }
    alice
        .client
        .send_text(bob.client.user(), "after")
        .await
        .unwrap();
    assert_eq!(bob.message().await.body, "after");
    let h = bob
        .client
        .history(Conv::Direct(alice.client.user()), 10)
        .unwrap();
    let bodies: Vec<&str> = h.iter().map(|m| m.body.as_str()).collect();
    assert_eq!(bodies, ["before", "after"], "nothing twice, nothing lost");
}

#[tokio::test]
async fn a_contact_reinstalling_is_reported_and_changes_the_safety_number() {
    let server = TestServer::start();
    let mut alice = device(&server).await;
    let bob_phone = phone();
    let bob_dir = tempfile::tempdir().unwrap();
    let (bob, bob_events) =
        Client::register(bob_dir.path(), &server.base, &bob_phone, None, "phone")
            .await
            .unwrap();
    let mut bob = Device {
        client: bob,
        events: bob_events,
        _dir: bob_dir,
    };
    bob.ready().await;
    keys_published(&bob).await;
    alice
        .client
        .send_text(bob.client.user(), "first")
        .await
        .unwrap();
    assert_eq!(bob.message().await.body, "first");
    let before = alice.client.safety_number(bob.client.user()).await.unwrap();

    // Bob registers his number again on a new phone: new device, new keys.
    drop(bob);
    let new_dir = tempfile::tempdir().unwrap();
    let (bob, bob_events) =
        Client::register(new_dir.path(), &server.base, &bob_phone, None, "new phone")
            .await
            .unwrap();
    let mut bob = Device {
        client: bob,
        events: bob_events,
        _dir: new_dir,
    };
    bob.ready().await;
    keys_published(&bob).await;
    alice
        .client
        .send_text(bob.client.user(), "still there?")
        .await
        .unwrap();
    let (user, old) = alice
        .wait("identity change", |e| match e {
            ClientEvent::IdentityChanged { user, old, .. } => Some((*user, *old)),
            _ => None,
        })
        .await;
    assert_eq!(user, bob.client.user());
    assert_eq!(old, None, "a new device, not a new key on the old one");
    assert_eq!(bob.message().await.body, "still there?");
    let after = alice.client.safety_number(bob.client.user()).await.unwrap();
    assert_ne!(before, after);
    assert_eq!(
        after,
        bob.client.safety_number(alice.client.user()).await.unwrap()
    );
}

#[tokio::test]
async fn a_second_device_gets_incoming_and_its_users_sent_messages() {
    let server = TestServer::start();
    let mut alice = device(&server).await;
    let mut bob = device(&server).await;
    let mut bob2 = linked(&server, &bob).await;
    keys_published(&bob).await;
    keys_published(&bob2).await;

    alice
        .client
        .send_text(bob.client.user(), "to both of bob's")
        .await
        .unwrap();
    assert_eq!(bob.message().await.body, "to both of bob's");
    assert_eq!(bob2.message().await.body, "to both of bob's");

    keys_published(&alice).await;
    bob.client
        .send_text(alice.client.user(), "sent from bob's phone")
        .await
        .unwrap();
    assert_eq!(alice.message().await.body, "sent from bob's phone");
    let copy = bob2.message().await;
    assert_eq!(copy.body, "sent from bob's phone");
    assert!(copy.outgoing, "a copy of bob's own message");
    assert_eq!(copy.conv, Conv::Direct(alice.client.user()));
    // Alice's later messages reach both devices without alice being told about them again.
    alice
        .client
        .send_text(bob.client.user(), "again")
        .await
        .unwrap();
    assert_eq!(bob.message().await.body, "again");
    assert_eq!(bob2.message().await.body, "again");
}

#[tokio::test]
async fn a_file_travels_encrypted_and_arrives_intact() {
    let server = TestServer::start();
    let alice = device(&server).await;
    let mut bob = device(&server).await;
    keys_published(&bob).await;
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("photo.bin");
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    let mut last = 0;
    alice
        .client
        .send_file(bob.client.user(), &src, |done, total| {
            assert!(done >= last && done <= total);
            last = done;
        })
        .await
        .unwrap();
    assert!(last > 0);
    let m = bob.message().await;
    assert_eq!(m.kind, ItemKind::File);
    assert_eq!(m.body, "photo.bin");
    let out = tempfile::tempdir().unwrap();
    let path = bob
        .client
        .download(m.id, out.path(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), data);
    // The blob on the server is ciphertext: none of the file's plaintext is in it.
    let file = m.file.unwrap();
    let blob = std::fs::read(server.data_dir.join("blobs").join(file.media.blob_id())).unwrap();
    assert_eq!(blob.len() as u64, file.media.size);
    assert!(!contains(&blob, &data[1000..1064]));
}

#[tokio::test]
async fn a_tampered_ciphertext_becomes_a_decrypt_error_item() {
    let server = TestServer::start();
    let mut bob = device(&server).await;
    keys_published(&bob).await;
    // Mallory is a raw client with her own Olm machine.
    let (m_creds, m_conn) = server.user().await;
    let mut mallory = Machine::new(m_creds.user, m_creds.device);
    let bundle = match m_conn
        .request(ClientFrame::KeysClaim {
            id: 0,
            user: bob.client.user(),
        })
        .await
        .unwrap()
    {
        ServerFrame::Bundle { devices, .. } => devices,
        other => panic!("{other:?}"),
    };
    mallory
        .start_session(bob.client.user(), &bundle[0])
        .unwrap();
    let content = natter_client::content::Content::Text {
        text: "intact".into(),
    }
    .encode();
    let mut body = mallory.encrypt(bob.client.device(), &content).unwrap();
    let n = body.len();
    body[n - 10] ^= 0x01;
    let (bob_user, bob_device) = (bob.client.user(), bob.client.device());
    let send = |cid: &str, body: Vec<u8>| ClientFrame::Send {
        id: 0,
        client_id: cid.into(),
        to: bob_user,
        envelopes: vec![Envelope {
            device: bob_device,
            body: OpaqueBytes(body),
        }],
    };
    m_conn.request(send("t1", body)).await.unwrap();
    let m = bob.message().await;
    assert_eq!(m.kind, ItemKind::Error);
    assert!(m.body.contains("decrypt"), "reason kept: {}", m.body);
    // Garbage too; and the client goes on working.
    m_conn
        .request(send("t2", b"not an envelope".to_vec()))
        .await
        .unwrap();
    let m = bob.message().await;
    assert_eq!(m.kind, ItemKind::Error);
    assert!(m.body.contains("malformed"), "{}", m.body);
    let good = mallory.encrypt(bob.client.device(), &content).unwrap();
    m_conn.request(send("t3", good)).await.unwrap();
    let m = bob.message().await;
    assert_eq!((m.kind, m.body.as_str()), (ItemKind::Text, "intact"));
    let h = bob.client.history(Conv::Direct(m_creds.user), 10).unwrap();
    let kinds: Vec<ItemKind> = h.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, [ItemKind::Error, ItemKind::Error, ItemKind::Text]);
}

async fn one_time_keys_left(conn: &natter_client::Connection) -> u32 {
    match conn
        .request(ClientFrame::KeysCount { id: 0 })
        .await
        .unwrap()
    {
        ServerFrame::KeyCount { one_time, .. } => one_time,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn used_up_prekeys_are_topped_up() {
    let server = TestServer::start();
    let mut bob = device(&server).await;
    keys_published(&bob).await;
    let bob_conn = bob.client.connection(WAIT).await.unwrap();
    let full = one_time_keys_left(&bob_conn).await;
    assert!(full >= 40, "{full}");
    // Thirty strangers each claim a bundle (a one-time key apiece).
    let (creds, conn) = server.user().await;
    let mut machines = Vec::new();
    for i in 0..30 {
        let mut m = Machine::new(creds.user, creds.device);
        let bundle = match conn
            .request(ClientFrame::KeysClaim {
                id: 0,
                user: bob.client.user(),
            })
            .await
            .unwrap()
        {
            ServerFrame::Bundle { devices, .. } => devices,
            other => panic!("{other:?}"),
        };
        assert!(bundle[0].one_time.is_some(), "claim {i} got a one-time key");
        m.start_session(bob.client.user(), &bundle[0]).unwrap();
        machines.push(m);
    }
    assert_eq!(one_time_keys_left(&bob_conn).await, full - 30);
    // The first message on one of those sessions makes bob check and top up.
    let content = natter_client::content::Content::Text { text: "hi".into() }.encode();
    let body = machines[0].encrypt(bob.client.device(), &content).unwrap();
    conn.request(ClientFrame::Send {
        id: 0,
        client_id: "c".into(),
        to: bob.client.user(),
        envelopes: vec![Envelope {
            device: bob.client.device(),
            body: OpaqueBytes(body),
        }],
    })
    .await
    .unwrap();
    assert_eq!(bob.message().await.body, "hi");
    let mut left = 0;
    for _ in 0..100 {
        left = one_time_keys_left(&bob_conn).await;
        if left >= full {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left >= full, "topped up to {left}");
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn the_servers_data_directory_holds_no_plaintext() {
    let server = TestServer::start();
    let mut a = device(&server).await;
    let mut b = device(&server).await;
    let mut c = device(&server).await;
    let mut b2 = linked(&server, &b).await;
    for d in [&a, &b, &c, &b2] {
        keys_published(d).await;
    }
    let marker = |what: &str| format!("plaintext-{what}-{}", std::process::id());
    let secrets = [
        marker("direct"),
        marker("reply"),
        marker("group"),
        marker("group-reply"),
    ];
    a.client
        .send_text(b.client.user(), &secrets[0])
        .await
        .unwrap();
    assert_eq!(b.message().await.body, secrets[0]);
    assert_eq!(b2.message().await.body, secrets[0]);
    b.client
        .send_text(a.client.user(), &secrets[1])
        .await
        .unwrap();
    assert_eq!(a.message().await.body, secrets[1]);
    let g = a
        .client
        .create_group("plans", &[b.client.user(), c.client.user()])
        .await
        .unwrap()
        .group;
    a.client.send_group_text(g, &secrets[2]).await.unwrap();
    assert_eq!(c.message().await.body, secrets[2]);
    c.client.send_group_text(g, &secrets[3]).await.unwrap();
    assert_eq!(a.message().await.body, secrets[3]);
    let file_marker = marker("file-contents").repeat(100);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("notes.txt");
    std::fs::write(&src, &file_marker).unwrap();
    a.client
        .send_file(b.client.user(), &src, |_, _| {})
        .await
        .unwrap();
    // (b, a group member, also has the group messages before it.)
    let m = b
        .wait("the file", |e| match e {
            ClientEvent::Message(m) if m.kind == ItemKind::File => Some(m.clone()),
            _ => None,
        })
        .await;
    let out = b
        .client
        .download(m.id, dir.path(), |_, _| {})
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(out).unwrap(), file_marker);

    let files = files_under(&server.data_dir);
    assert!(files.iter().any(|f| f.ends_with("natter.db")), "{files:?}");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        for s in secrets.iter().chain([&marker("file-contents")]) {
            assert!(
                !contains(&bytes, s.as_bytes()),
                "{} holds the plaintext {s:?}",
                f.display()
            );
        }
    }
    // The same scan does find the plaintext where it belongs: in a client's own store.
    let found = files_under(a._dir.path())
        .iter()
        .any(|f| contains(&std::fs::read(f).unwrap(), secrets[2].as_bytes()));
    assert!(found, "the scan finds plaintext in the client's history");
    assert!(!a.client.search("plaintext-group", 10).unwrap().is_empty());
}
