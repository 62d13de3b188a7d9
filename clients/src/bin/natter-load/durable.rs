//! Clients that survive a server that dies: the pieces `storm` and `chaos` share.
//!
//! A [`Receiver`] stores every item it is given (its log), then acks; on reconnect it sends
//! its cursor (the highest queue sequence stored), so the server must never hand it anything
//! at or below it again. A [`Sender`] numbers its messages, keeps each until the server says
//! `sent`, and on reconnect sends the unacknowledged ones again with the same client id, so
//! the server's de-duplication is what keeps them once. Both reconnect with full-jitter
//! exponential backoff. A [`ServerProc`] is the server under test, which the harness kills,
//! stops and restarts.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use natter_client::protocol::codec::Encoding;
use natter_client::protocol::{ClientFrame, Envelope, OpaqueBytes, QueueItem, ServerFrame, UserId};
use natter_client::{ClientError, ConnectOptions, Connection, Credentials, Event};

/// Reconnect backoff: the n-th attempt waits a random time below min(CAP, BASE·2^n).
const BACKOFF_BASE: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// A small seeded generator (SplitMix64), so a run replays from its seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo).max(1)
    }
}

/// The n-th reconnect's wait.
pub fn backoff(attempt: u32, rng: &mut Rng) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.min(16))
        .min(BACKOFF_CAP);
    Duration::from_micros(rng.range(0, ceiling.as_micros().max(1) as u64))
}

/// The server under test, started from a command line and restarted on the same port and
/// data directory.
pub struct ServerProc {
    cmd: Vec<String>,
    child: Option<Child>,
    pub base: String,
}

impl ServerProc {
    pub fn start(cmd: Vec<String>, base: String) -> Result<ServerProc> {
        let mut s = ServerProc {
            cmd,
            child: None,
            base,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<()> {
        let (bin, args) = self.cmd.split_first().context("empty server command")?;
        let child = Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start {bin}"))?;
        self.child = Some(child);
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Waits until `/healthz` answers.
    pub async fn ready(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let url = format!("{}/healthz", self.base);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(&url).await
                && r.status().is_success()
            {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("the server did not answer {url} within {within:?}")
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let pid = self.pid().to_string();
        let ok = Command::new("kill").args([sig, &pid]).status()?.success();
        if !ok {
            bail!("kill {sig} {pid} failed");
        }
        Ok(())
    }

    /// SIGKILL, then the same command again.
    pub fn kill_and_restart(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn()
    }

    pub fn stop(&self) -> Result<()> {
        self.signal("-STOP")
    }

    pub fn cont(&self) -> Result<()> {
        self.signal("-CONT")
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a message body says: who sent it and its number.
pub fn body(sender: UserId, n: u64) -> Vec<u8> {
    format!("{}:{n}", sender.0).into_bytes()
}

fn parse_body(b: &[u8]) -> Option<(u64, u64)> {
    let (s, n) = std::str::from_utf8(b).ok()?.split_once(':')?;
    Some((s.parse().ok()?, n.parse().ok()?))
}

/// One stored delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub qseq: u64,
    pub sender: u64,
    pub n: u64,
    pub seq: u64,
}

/// A receiver's log and counters, shared with the checker.
#[derive(Debug, Default)]
pub struct RecvLog {
    pub stored: Vec<Stored>,
    /// Items handed over again at or below the cursor (the server's fault).
    pub redelivered: u64,
    /// Message bodies that name no sender and number (never sent).
    pub unreadable: u64,
}

/// Counters across all clients.
#[derive(Debug, Default)]
pub struct Counters {
    /// Receivers with a live, authenticated socket.
    pub connected: AtomicU64,
    pub reconnects: AtomicU64,
}

pub struct Receiver {
    pub creds: Credentials,
    pub bind: Option<IpAddr>,
    pub log: Arc<Mutex<RecvLog>>,
}

/// Connects (retrying with backoff until `stop`), returns the connection.
async fn connect(
    url: &str,
    creds: &Credentials,
    bind: Option<IpAddr>,
    cursor: u64,
    rng: &mut Rng,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Option<Connection> {
    let mut attempt = 0;
    loop {
        if *stop.borrow() {
            return None;
        }
        let opts = ConnectOptions {
            encoding: Encoding::Binary,
            cursor: (cursor > 0).then_some(cursor),
            bind,
            timeout: Duration::from_secs(10),
        };
        match Connection::connect(url, &creds.token, opts).await {
            Ok(c) => return Some(c),
            Err(_) => {
                tokio::time::sleep(backoff(attempt, rng)).await;
                attempt += 1;
            }
        }
    }
}

impl Receiver {
    /// Runs until `stop`: connect, store and ack what arrives, reconnect when dropped.
    pub async fn run(
        self,
        url: String,
        seed: u64,
        counters: Arc<Counters>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Receiver {
        let mut rng = Rng::new(seed);
        let mut cursor = 0u64;
        let mut first = true;
        while let Some(mut conn) =
            connect(&url, &self.creds, self.bind, cursor, &mut rng, &stop).await
        {
            counters.connected.fetch_add(1, Ordering::Relaxed);
            if !first {
                counters.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            loop {
                let ev = tokio::select! {
                    ev = conn.next_event() => ev,
                    _ = stop.changed() => None,
                };
                let Some(Event::Frame(f)) = ev else { break };
                let ServerFrame::Deliver { qseq, item } = f else {
                    continue;
                };
                {
                    let mut log = self.log.lock().unwrap();
                    if qseq <= cursor {
                        log.redelivered += 1;
                    } else if let QueueItem::Message {
                        from, seq, body, ..
                    } = &*item
                    {
                        match parse_body(&body.0) {
                            Some((sender, n)) if sender == from.0 => log.stored.push(Stored {
                                qseq,
                                sender,
                                n,
                                seq: *seq,
                            }),
                            _ => log.unreadable += 1,
                        }
                    }
                }
                // Stored first, then acknowledged (a crash in between replays it).
                cursor = cursor.max(qseq);
                let _ = conn.notify(ClientFrame::Ack {
                    id: 0,
                    qseqs: vec![qseq],
                });
            }
            counters.connected.fetch_sub(1, Ordering::Relaxed);
            if *stop.borrow() {
                break;
            }
        }
        self
    }
}

/// A sender's record: what it sent and what the server acknowledged.
#[derive(Debug, Default)]
pub struct SendLog {
    /// Numbers handed out so far.
    pub next: u64,
    /// Acknowledged: number → (recipient, conversation sequence).
    pub acked: BTreeMap<u64, (UserId, u64)>,
    pub refused: u64,
    /// Refusals by error code.
    pub refusals: BTreeMap<String, u64>,
}

type SendFuture = std::pin::Pin<
    Box<dyn std::future::Future<Output = (u64, UserId, Result<ServerFrame, ClientError>)> + Send>,
>;

pub struct Sender {
    pub creds: Credentials,
    pub bind: Option<IpAddr>,
    pub log: Arc<Mutex<SendLog>>,
}

impl Sender {
    /// Sends messages to `to` in turn, `per_s` per second, until `stop` (then until every
    /// number handed out is acknowledged, or `drain` passes). `limit` caps the count.
    #[allow(clippy::too_many_arguments)]
    pub async fn run(
        self,
        url: String,
        to: Vec<Credentials>,
        per_s: f64,
        limit: u64,
        seed: u64,
        mut stop: tokio::sync::watch::Receiver<bool>,
        drain: Duration,
    ) -> Sender {
        let mut rng = Rng::new(seed);
        // Numbers sent and not yet acknowledged: sent again after a reconnect.
        let mut pending: BTreeMap<u64, UserId> = BTreeMap::new();
        let interval = Duration::from_secs_f64(1.0 / per_s.max(0.001));
        let mut stopping_since: Option<Instant> = None;
        let never = tokio::sync::watch::channel(false).1;
        loop {
            let Some(conn) = connect(&url, &self.creds, self.bind, 0, &mut rng, &never).await
            else {
                break;
            };
            let conn = Arc::new(conn);
            let mut inflight = futures_util::stream::FuturesUnordered::new();
            let send = |n: u64, to: &Credentials| -> SendFuture {
                let c = conn.clone();
                let frame = ClientFrame::Send {
                    id: 0,
                    client_id: format!("c{n}"),
                    to: to.user,
                    envelopes: vec![Envelope {
                        device: to.device,
                        body: OpaqueBytes(body(self.creds.user, n)),
                    }],
                };
                let user = to.user;
                Box::pin(async move { (n, user, c.request_once(frame).await) })
            };
            let by_user: HashMap<UserId, &Credentials> = to.iter().map(|c| (c.user, c)).collect();
            for (&n, user) in &pending {
                inflight.push(send(n, by_user[user]));
            }
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let dropped = loop {
                use futures_util::StreamExt;
                if stopping_since.is_some() && pending.is_empty() {
                    return self;
                }
                if stopping_since.is_some_and(|t| t.elapsed() > drain) {
                    return self;
                }
                tokio::select! {
                    _ = tick.tick(), if stopping_since.is_none() => {
                        let n = {
                            let mut log = self.log.lock().unwrap();
                            if log.next >= limit { continue; }
                            log.next += 1;
                            log.next - 1
                        };
                        let r = &to[(n as usize) % to.len()];
                        pending.insert(n, r.user);
                        inflight.push(send(n, r));
                    }
                    _ = stop.changed(), if stopping_since.is_none() => {
                        stopping_since = Some(Instant::now());
                    }
                    Some((n, user, r)) = inflight.next(), if !inflight.is_empty() => match r {
                        Ok(ServerFrame::Sent { seq, .. }) => {
                            pending.remove(&n);
                            self.log.lock().unwrap().acked.insert(n, (user, seq));
                        }
                        Err(ClientError::Server(e)) => {
                            // Refused (overloaded, rate limited): nothing was done; again later.
                            {
                                let mut log = self.log.lock().unwrap();
                                log.refused += 1;
                                *log.refusals.entry(e.code.as_str().to_owned()).or_default() += 1;
                            }
                            let wait = Duration::from_millis(e.retry_after_ms.unwrap_or(100));
                            let again = send(n, by_user[&user]);
                            inflight.push(Box::pin(async move {
                                tokio::time::sleep(wait).await;
                                again.await
                            }));
                        }
                        Err(_) => break true,
                        Ok(_) => {}
                    },
                    else => {
                        // Nothing in flight while stopping with pending left: send again.
                        if stopping_since.is_some() { break true; }
                    }
                }
            };
            if dropped {
                tokio::time::sleep(backoff(0, &mut rng)).await;
            }
        }
        self
    }
}

/// What the checker found.
#[derive(Debug, Default, Clone, Copy)]
pub struct Verdict {
    /// Acknowledged messages checked.
    pub checked: u64,
    /// Acknowledged but never delivered.
    pub lost: u64,
    /// Delivered twice (or redelivered below a cursor).
    pub duplicated: u64,
    /// Delivered out of conversation order.
    pub reordered: u64,
    /// Delivered but never sent (or unreadable).
    pub unknown: u64,
    /// Delivered with a different sequence than the sender was told.
    pub mismatched: u64,
}

impl Verdict {
    pub fn clean(&self) -> bool {
        self.lost + self.duplicated + self.reordered + self.unknown + self.mismatched == 0
    }
}

/// Checks every receiver's log against every sender's acknowledgements: every acknowledged
/// message delivered exactly once with its sequence, conversations in order, nothing that
/// was never sent.
pub fn check(
    senders: &[(UserId, Arc<Mutex<SendLog>>)],
    receivers: &[(UserId, Arc<Mutex<RecvLog>>)],
) -> Verdict {
    let mut v = Verdict::default();
    // (sender, n) → how often delivered, with the seq and recipient seen.
    let mut seen: HashMap<(u64, u64), (u32, u64, UserId)> = HashMap::new();
    for (user, log) in receivers {
        let log = log.lock().unwrap();
        v.duplicated += log.redelivered;
        v.unknown += log.unreadable;
        let mut last_seq: HashMap<u64, u64> = HashMap::new();
        for s in &log.stored {
            let e = seen.entry((s.sender, s.n)).or_insert((0, s.seq, *user));
            e.0 += 1;
            let last = last_seq.entry(s.sender).or_insert(0);
            if s.seq <= *last {
                v.reordered += 1;
            }
            *last = s.seq;
        }
    }
    let mut sent: HashMap<(u64, u64), ()> = HashMap::new();
    for (user, log) in senders {
        let log = log.lock().unwrap();
        for (&n, &(to, seq)) in &log.acked {
            v.checked += 1;
            sent.insert((user.0, n), ());
            match seen.get(&(user.0, n)) {
                None => v.lost += 1,
                Some(&(count, got_seq, got_to)) => {
                    if count > 1 {
                        v.duplicated += u64::from(count - 1);
                    }
                    if got_seq != seq || got_to != to {
                        v.mismatched += 1;
                    }
                }
            }
        }
        // Numbers handed out but never acknowledged may or may not have arrived: fine.
        for n in 0..log.next {
            sent.insert((user.0, n), ());
        }
    }
    for key in seen.keys() {
        if !sent.contains_key(key) {
            v.unknown += 1;
        }
    }
    v
}
