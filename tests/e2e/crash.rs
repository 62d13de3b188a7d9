//! Crash safety: SIGKILL the server under load, restart it on the same data directory, and
//! check that every message acknowledged with `sent` reaches every recipient device exactly
//! once and in per-conversation order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use natter_client::protocol::{ClientFrame, Conv, QueueItem, ServerFrame, UserId};
use natter_client::{ConnectOptions, Connection, Credentials, Event};
use tokio::sync::Mutex;

use crate::common::*;

const PAIRS: usize = 6;
/// Sends acknowledged before the kill.
const KILL_AFTER_ACKED: usize = 1500;
/// Sends a sender keeps in flight.
const WINDOW: usize = 16;

/// What a recipient device has stored, as its local database would hold it.
#[derive(Default)]
struct DeviceStore {
    /// Message (conv, seq, body) in the order received.
    messages: Vec<(Conv, u64, Vec<u8>)>,
    /// Highest queue sequence stored: the cursor for the next connection.
    cursor: u64,
}

/// Receives until the connection dies, storing each message before acking it.
async fn receive(mut conn: Connection, store: Arc<Mutex<DeviceStore>>) {
    while let Some(ev) = conn.next_event().await {
        let Event::Frame(ServerFrame::Deliver { qseq, item }) = ev else {
            if matches!(ev, Event::Closed(_)) {
                return;
            }
            continue;
        };
        {
            let mut st = store.lock().await;
            if let QueueItem::Message {
                conv, seq, body, ..
            } = &*item
            {
                st.messages.push((*conv, *seq, body.0.clone()));
            }
            st.cursor = st.cursor.max(qseq);
        }
        if conn
            .notify(ClientFrame::Ack {
                id: 0,
                qseqs: vec![qseq],
            })
            .is_err()
        {
            return;
        }
    }
}

fn body(sender: usize, n: usize) -> Vec<u8> {
    format!("sender {sender} message {n}").into_bytes()
}

fn frame(sender: usize, n: usize, to: &[Credentials; 2]) -> ClientFrame {
    ClientFrame::Send {
        id: 0,
        client_id: format!("c{n}"),
        to: to[0].user,
        envelopes: to
            .iter()
            .map(|d| envelope(d.device, &body(sender, n)))
            .collect(),
    }
}

#[tokio::test]
async fn acked_messages_survive_sigkill_exactly_once_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let mut server = TestServer::start_in(&dir, &[]);

    // Each sender writes to one recipient that has two devices.
    let mut senders = Vec::new();
    let mut recipients: Vec<[Credentials; 2]> = Vec::new();
    for _ in 0..PAIRS {
        senders.push(server.register().await);
        let (r1, r1conn) = server.user().await;
        let r2 = server.link(&r1conn).await;
        recipients.push([r1, r2]);
    }
    let stores: Vec<Arc<Mutex<DeviceStore>>> = (0..PAIRS * 2)
        .map(|_| Arc::new(Mutex::new(DeviceStore::default())))
        .collect();
    let mut receivers = Vec::new();
    for (i, pair) in recipients.iter().enumerate() {
        for (j, dev) in pair.iter().enumerate() {
            let conn = server.connect(dev).await;
            receivers.push(tokio::spawn(receive(conn, stores[i * 2 + j].clone())));
        }
    }

    // Senders pipeline until the server dies.
    let acked_total = Arc::new(AtomicUsize::new(0));
    let mut send_tasks = Vec::new();
    for (i, creds) in senders.iter().enumerate() {
        let conn = server.connect(creds).await;
        let to = recipients[i].clone();
        let acked_total = acked_total.clone();
        send_tasks.push(tokio::spawn(async move {
            // n -> seq for every `sent` received.
            let mut acked: BTreeMap<usize, u64> = BTreeMap::new();
            let mut attempted = 0usize;
            let mut inflight = FuturesUnordered::new();
            let conn = Arc::new(conn);
            loop {
                while inflight.len() < WINDOW {
                    let (c, f, n) = (conn.clone(), frame(i, attempted, &to), attempted);
                    inflight.push(async move { (n, c.request(f).await) });
                    attempted += 1;
                }
                match inflight.next().await {
                    Some((n, Ok(ServerFrame::Sent { seq, .. }))) => {
                        acked.insert(n, seq);
                        acked_total.fetch_add(1, Ordering::Relaxed);
                    }
                    Some((_, Err(_))) | None => break,
                    Some((_, Ok(other))) => panic!("unexpected answer {other:?}"),
                }
            }
            // Drain what is left: some may still have been answered before the kill.
            while let Some((n, r)) = inflight.next().await {
                if let Ok(ServerFrame::Sent { seq, .. }) = r {
                    acked.insert(n, seq);
                }
            }
            (acked, attempted)
        }));
    }

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acked_total.load(Ordering::Relaxed) < KILL_AFTER_ACKED {
        assert!(
            tokio::time::Instant::now() < deadline,
            "load did not reach {KILL_AFTER_ACKED} acks"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    std::process::Command::new("kill")
        .args(["-KILL", &server.pid().to_string()])
        .status()
        .unwrap();
    let mut before: Vec<(BTreeMap<usize, u64>, usize)> = Vec::new();
    for t in send_tasks {
        before.push(t.await.unwrap());
    }
    for r in receivers {
        r.await.unwrap();
    }
    server.kill();
    let acked_before: usize = before.iter().map(|(a, _)| a.len()).sum();
    assert!(acked_before >= KILL_AFTER_ACKED);
    let unacked: usize = before.iter().map(|(a, n)| n - a.len()).sum();
    assert!(unacked > 0, "the kill should land with sends in flight");

    // Restart on the same data directory.
    let server = TestServer::start_in(&dir, &[]);
    // Senders retry every send that got no answer, with the same client id, as clients do.
    let mut final_acked: Vec<BTreeMap<usize, u64>> = Vec::new();
    for (i, creds) in senders.iter().enumerate() {
        let conn = server.connect(creds).await;
        let (mut acked, attempted) = before[i].clone();
        for n in 0..attempted {
            if acked.contains_key(&n) {
                continue;
            }
            match conn.request(frame(i, n, &recipients[i])).await.unwrap() {
                ServerFrame::Sent { seq, .. } => {
                    acked.insert(n, seq);
                }
                other => panic!("{other:?}"),
            }
        }
        // A retry of an acked send is a duplicate with the same seq.
        if let Some((&n, &seq)) = before[i].0.iter().next() {
            let ServerFrame::Sent {
                seq: again,
                duplicate,
                ..
            } = conn.request(frame(i, n, &recipients[i])).await.unwrap()
            else {
                panic!()
            };
            assert_eq!((again, duplicate), (seq, true));
        }
        final_acked.push(acked);
    }

    // Recipients reconnect with their cursors and receive the rest.
    let mut receivers = Vec::new();
    for (i, pair) in recipients.iter().enumerate() {
        for (j, dev) in pair.iter().enumerate() {
            let store = stores[i * 2 + j].clone();
            let cursor = store.lock().await.cursor;
            let opts = ConnectOptions {
                cursor: Some(cursor),
                ..Default::default()
            };
            let conn = Connection::connect(&server.ws, &dev.token, opts)
                .await
                .unwrap();
            receivers.push(tokio::spawn(receive(conn, store)));
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut done = true;
        for (i, acked) in final_acked.iter().enumerate() {
            for j in 0..2 {
                if stores[i * 2 + j].lock().await.messages.len() < acked.len() {
                    done = false;
                }
            }
        }
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "recipients did not get everything"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // let any duplicate show up

    for (i, acked) in final_acked.iter().enumerate() {
        let sender: UserId = senders[i].user;
        let by_seq: HashMap<u64, usize> = acked.iter().map(|(n, s)| (*s, *n)).collect();
        assert_eq!(
            by_seq.len(),
            acked.len(),
            "distinct seqs for distinct messages"
        );
        for j in 0..2 {
            let st = stores[i * 2 + j].lock().await;
            let seqs: Vec<u64> = st.messages.iter().map(|(_, s, _)| *s).collect();
            assert_eq!(seqs.len(), acked.len(), "pair {i} device {j}: exactly once");
            assert!(
                seqs.windows(2).all(|w| w[0] < w[1]),
                "pair {i} device {j}: in order"
            );
            for (conv, seq, got) in &st.messages {
                assert_eq!(*conv, Conv::Direct(sender));
                let n = by_seq[seq];
                assert_eq!(got, &body(i, n), "intact body");
            }
            for (n, seq) in &before[i].0 {
                assert!(
                    seqs.contains(seq),
                    "message {n} acked before the crash is there"
                );
            }
        }
    }
    eprintln!("crash test: {acked_before} acked before SIGKILL, {unacked} in flight retried");
    for r in receivers {
        r.abort();
    }
}
