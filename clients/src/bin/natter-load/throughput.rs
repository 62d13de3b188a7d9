//! `throughput`: durable messages per second at offered rates, with latency, the server's
//! CPU per message and, past the knee, how admission control holds up.
//!
//! Senders pace themselves (open loop: a slow server does not slow them), recipients
//! acknowledge, and senders acknowledge their delivered receipts, so every message costs the
//! server its whole life cycle. A message refused with `overloaded` is counted, with how long
//! the refusal took, and not sent again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use natter_client::content::Content;
use natter_client::crypto::Machine;
use natter_client::protocol::codec::Encoding;
use natter_client::protocol::{
    ClientFrame, Conv, Envelope, ErrorCode, OpaqueBytes, QueueItem, ServerFrame,
};
use natter_client::{
    ClientError, ConnectOptions, Connection, Credentials, Event, Events, HttpClient,
};
use tokio::sync::Mutex;

use crate::cpu_us;
use crate::setup::{SenderSetup, setup};

pub struct ThroughputOpts {
    pub pairs: usize,
    pub step: Duration,
    pub warmup: Duration,
    pub size: usize,
    pub p99_limit_ms: f64,
    pub encoding: Encoding,
    pub e2ee: bool,
    pub group_pct: u32,
    pub group_size: usize,
    pub repeat: usize,
    pub server_pid: Option<u32>,
}

/// After an overload step, senders go on at this fraction of the knee for this long, to see
/// how soon latency is back to normal.
const PROBE_SHARE: f64 = 0.25;
const PROBE: Duration = Duration::from_secs(8);

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()
}

/// Shared by all tasks of one run.
struct Run {
    /// Which run this is: client ids are unique per run, as the server de-duplicates them.
    id: usize,
    epoch: Instant,
    /// Messages sent in [from, until) (ns since epoch) are measured.
    measure_from_ns: u64,
    measure_until_ns: u64,
    /// From `until` to `probe_until` senders go on at `probe_rate` (an overload's recovery).
    probe_until_ns: u64,
    rate: f64,
    probe_rate: f64,
    stop: AtomicBool,
    /// Tells recipients to merge their histograms and end.
    finish: tokio::sync::watch::Sender<bool>,
    latencies: Mutex<Histogram<u64>>,
    /// How long `overloaded` refusals took to come back.
    refusals: Mutex<Histogram<u64>>,
    /// (sent at, latency µs) of messages sent during the probe.
    probe_latencies: Mutex<Vec<(u64, u64)>>,
    errors: AtomicU64,
    overloaded: AtomicU64,
    /// Messages admitted in the window, and the deliveries they should make (1 per 1:1
    /// message, one per other member for a group message).
    sent_in_window: AtomicU64,
    expected_in_window: AtomicU64,
    delivered_in_window: AtomicU64,
}

impl Run {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
    fn in_window(&self, t: u64) -> bool {
        t >= self.measure_from_ns && t < self.measure_until_ns
    }
    fn in_probe(&self, t: u64) -> bool {
        t >= self.measure_until_ns && t < self.probe_until_ns
    }
    /// Messages per second, all senders together, at `t`.
    fn rate_at(&self, t: u64) -> f64 {
        if t < self.measure_until_ns {
            self.rate
        } else {
            self.probe_rate
        }
    }
}

/// A recipient's state: its crypto (with `--e2ee`) outlives the runs.
pub struct Recipient {
    pub machine: Option<Machine>,
}

/// The send time a payload carries: its first 20 digits (pre-built or decrypted text).
fn payload(t: u64, size: usize) -> Vec<u8> {
    let mut body = vec![b'x'; size.max(20)];
    body[..20].copy_from_slice(format!("{t:020}").as_bytes());
    body
}

fn payload_time(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes.get(..20)?).ok()?.parse().ok()
}

/// Opens a delivered item: the send time of a measured message, or `None` (a group key,
/// a receipt, or a decrypt failure, which is counted as an error).
fn open_item(r: &mut Recipient, item: &QueueItem, run: &Run) -> Option<u64> {
    let QueueItem::Message {
        conv,
        from,
        device,
        body,
        ..
    } = item
    else {
        return None;
    };
    let Some(machine) = r.machine.as_mut() else {
        return payload_time(&body.0);
    };
    let plain = match conv {
        Conv::Direct(_) => machine.decrypt(*from, *device, &body.0),
        Conv::Group(g) => machine.decrypt_group(*from, *device, *g, &body.0),
    };
    let plain = match plain {
        Ok(p) => p,
        Err(e) => {
            eprintln!("decrypt failed: {e}");
            run.errors.fetch_add(1, Ordering::Relaxed);
            return None;
        }
    };
    match Content::decode(&plain.content) {
        Ok(Content::Text { text }) => payload_time(text.as_bytes()),
        Ok(Content::GroupKey { group, session_key }) => {
            if let Err(e) = machine.receive_group_key(*device, group, &session_key.0) {
                eprintln!("group key: {e}");
                run.errors.fetch_add(1, Ordering::Relaxed);
            }
            None
        }
        _ => None,
    }
}

/// Receives deliveries: records latency of messages, acks everything in batches.
async fn recipient(mut conn: Connection, mut r: Recipient, run: Arc<Run>) -> Recipient {
    let mut local = histogram();
    let mut probe = Vec::new();
    let mut acks = Vec::new();
    let mut finish = run.finish.subscribe();
    loop {
        let first = tokio::select! {
            ev = conn.next_event() => match ev {
                Some(ev) => ev,
                None => break,
            },
            _ = finish.changed() => break,
        };
        let mut batch = vec![first];
        while let Some(ev) = conn.try_next_event() {
            batch.push(ev);
            if batch.len() >= 256 {
                break;
            }
        }
        let mut closed = false;
        for ev in batch {
            match ev {
                Event::Frame(ServerFrame::Deliver { qseq, item }) => {
                    acks.push(qseq);
                    let Some(sent) = open_item(&mut r, &item, &run) else {
                        continue;
                    };
                    let latency_us = (run.now_ns().saturating_sub(sent) / 1000).max(1);
                    if run.in_window(sent) {
                        local.saturating_record(latency_us);
                        run.delivered_in_window.fetch_add(1, Ordering::Relaxed);
                    } else if run.in_probe(sent) {
                        probe.push((sent, latency_us));
                    }
                }
                Event::Frame(ServerFrame::Error(e)) => {
                    eprintln!("recipient error: {:?} {}", e.code, e.message);
                    run.errors.fetch_add(1, Ordering::Relaxed);
                }
                Event::Frame(_) => {}
                Event::Closed(_) => closed = true,
            }
        }
        if !acks.is_empty() {
            let qseqs = std::mem::take(&mut acks);
            if conn.notify(ClientFrame::Ack { id: 0, qseqs }).is_err() {
                break;
            }
        }
        if closed {
            break;
        }
    }
    run.latencies.lock().await.add(&local).unwrap();
    run.probe_latencies.lock().await.extend(probe);
    r
}

/// Acks every queue item that arrives (receipts on a sender's socket), in batches.
async fn ack_all(conn: Arc<Connection>, mut events: Events) {
    while let Some(ev) = events.next().await {
        let mut qseqs = Vec::new();
        let mut take = |ev: Event| {
            if let Event::Frame(ServerFrame::Deliver { qseq, .. }) = ev {
                qseqs.push(qseq);
            }
        };
        take(ev);
        while let Some(ev) = events.try_next() {
            take(ev);
        }
        if !qseqs.is_empty() && conn.notify(ClientFrame::Ack { id: 0, qseqs }).is_err() {
            return;
        }
    }
}

struct SenderCfg {
    size: usize,
    group_pct: u32,
    /// This sender's share of the total rate, and where in the cycle it starts.
    share: f64,
    phase: Duration,
}

/// Builds the frame for message `n` sent at `t`, and how many deliveries it should make.
fn next_frame(
    s: &mut SenderSetup,
    cfg: &SenderCfg,
    run_id: usize,
    n: u64,
    t: u64,
) -> Result<(ClientFrame, u64)> {
    let client_id = format!("{run_id}-{n}");
    let body = payload(t, cfg.size);
    // Spread evenly: message n goes to the group when the running share crosses a whole one.
    let pct = u64::from(cfg.group_pct);
    let to_group = s.group.filter(|_| (n + 1) * pct / 100 > n * pct / 100);
    let content = || {
        Content::Text {
            text: String::from_utf8(body.clone()).expect("ascii payload"),
        }
        .encode()
    };
    Ok(match to_group {
        Some((group, others)) => {
            let body = match s.machine.as_mut() {
                Some(m) => m
                    .encrypt_group(group, &content())
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
                None => body,
            };
            let frame = ClientFrame::SendGroup {
                id: 0,
                client_id,
                group,
                body: OpaqueBytes(body),
            };
            (frame, others)
        }
        None => {
            let body = match s.machine.as_mut() {
                Some(m) => m
                    .encrypt(s.to.device, &content())
                    .map_err(|e| anyhow::anyhow!("{e}"))?,
                None => body,
            };
            let frame = ClientFrame::Send {
                id: 0,
                client_id,
                to: s.to.user,
                envelopes: vec![Envelope {
                    device: s.to.device,
                    body: OpaqueBytes(body),
                }],
            };
            (frame, 1)
        }
    })
}

/// Sends at its share of the run's rate until the run stops, and acks the receipts that
/// come back.
async fn sender(
    mut conn: Connection,
    mut s: SenderSetup,
    cfg: SenderCfg,
    run: Arc<Run>,
) -> SenderSetup {
    let events = conn.take_events();
    let conn = Arc::new(conn);
    let acker = tokio::spawn(ack_all(conn.clone(), events));
    let mut inflight = FuturesUnordered::new();
    let mut n = 0u64;
    let record = |(t, deliveries, r): (u64, u64, Result<ServerFrame, ClientError>)| match r {
        Ok(ServerFrame::Sent {
            duplicate: false, ..
        }) => {
            if run.in_window(t) {
                run.sent_in_window.fetch_add(1, Ordering::Relaxed);
                run.expected_in_window
                    .fetch_add(deliveries, Ordering::Relaxed);
            }
        }
        Err(ClientError::Server(e)) if e.code == ErrorCode::Overloaded => {
            if run.in_window(t) {
                run.overloaded.fetch_add(1, Ordering::Relaxed);
                let took_us = (run.now_ns().saturating_sub(t) / 1000).max(1);
                if let Ok(mut h) = run.refusals.try_lock() {
                    h.saturating_record(took_us);
                }
            }
        }
        Ok(other) => {
            eprintln!("unexpected answer {other:?}");
            run.errors.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            eprintln!("send failed: {e}");
            run.errors.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut next_at = cfg.phase;
    loop {
        let due = run.epoch + next_at;
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {
                if run.stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = run.now_ns();
                let (frame, deliveries) = match next_frame(&mut s, &cfg, run.id, n, t) {
                    Ok(f) => f,
                    Err(e) => {
                        eprintln!("cannot build message: {e}");
                        run.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                };
                n += 1;
                let c = conn.clone();
                inflight.push(async move { (t, deliveries, c.request_once(frame).await) });
                // Open loop: the next send is due on the schedule, not after this answer.
                let rate = run.rate_at(t) * cfg.share;
                if rate <= 0.0 {
                    break;
                }
                next_at += Duration::from_secs_f64(1.0 / rate);
                if next_at.as_nanos() as u64 >= run.probe_until_ns {
                    break;
                }
            }
            Some(r) = inflight.next(), if !inflight.is_empty() => record(r),
        }
    }
    while let Some(r) = inflight.next().await {
        record(r);
    }
    // Receipts of the last sends still arrive; the acker ends when the socket closes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    acker.abort();
    s
}

/// One run's figures.
#[derive(Debug, Clone, Copy)]
struct RunResult {
    offered: f64,
    achieved: f64,
    delivered_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    overloaded: u64,
    refusal_p99_ms: f64,
    errors: u64,
    complete: f64,
    server_us_per_msg: Option<f64>,
    /// After the load: ms until every probe message was under the latency limit.
    recovery_ms: Option<f64>,
}

struct World {
    senders: Vec<SenderSetup>,
    recipients: Vec<(Credentials, Recipient)>,
    runs: usize,
}

async fn run_once(
    http: &HttpClient,
    o: &ThroughputOpts,
    w: &mut World,
    rate: f64,
    probe_rate: Option<f64>,
) -> Result<RunResult> {
    let warm = o.warmup.as_nanos() as u64;
    let len = o.step.as_nanos() as u64;
    let probe_ns = probe_rate.map_or(0, |_| PROBE.as_nanos() as u64);
    let opts = ConnectOptions {
        encoding: o.encoding,
        ..Default::default()
    };
    let mut receivers = Vec::new();
    let mut conns = Vec::new();
    for (c, _) in &w.recipients {
        conns.push(
            Connection::connect(&http.ws_url(), &c.token, opts.clone())
                .await
                .context("connect recipient")?,
        );
    }
    let mut sender_conns = Vec::new();
    for s in &w.senders {
        sender_conns.push(
            Connection::connect(&http.ws_url(), &s.creds.token, opts.clone())
                .await
                .context("connect sender")?,
        );
    }
    // Every socket is up: time starts now.
    eprintln!(
        "run {}: {} sockets connected, offering {rate:.0} msgs/s",
        w.runs,
        2 * w.senders.len()
    );
    let epoch = Instant::now();
    let lead = Duration::from_millis(200).as_nanos() as u64;
    let run = Arc::new(Run {
        id: w.runs,
        epoch,
        measure_from_ns: lead + warm,
        measure_until_ns: lead + len,
        probe_until_ns: lead + len + probe_ns,
        rate,
        probe_rate: probe_rate.unwrap_or(0.0),
        stop: AtomicBool::new(false),
        finish: tokio::sync::watch::channel(false).0,
        latencies: Mutex::new(histogram()),
        refusals: Mutex::new(histogram()),
        probe_latencies: Mutex::new(Vec::new()),
        errors: AtomicU64::new(0),
        overloaded: AtomicU64::new(0),
        sent_in_window: AtomicU64::new(0),
        expected_in_window: AtomicU64::new(0),
        delivered_in_window: AtomicU64::new(0),
    });
    w.runs += 1;
    for ((c, r), conn) in w.recipients.drain(..).zip(conns) {
        receivers.push((c, tokio::spawn(recipient(conn, r, run.clone()))));
    }
    let pairs = w.senders.len();
    let mut tasks = Vec::new();
    for (i, (s, conn)) in w.senders.drain(..).zip(sender_conns).enumerate() {
        let share = 1.0 / pairs as f64;
        let phase = Duration::from_nanos(lead)
            + Duration::from_secs_f64(i as f64 / pairs as f64 / (rate * share).max(0.001));
        let cfg = SenderCfg {
            size: o.size,
            group_pct: o.group_pct,
            share,
            phase,
        };
        tasks.push(tokio::spawn(sender(conn, s, cfg, run.clone())));
    }
    // The server's CPU over the measured window.
    let cpu_window = async {
        let pid = o.server_pid?;
        tokio::time::sleep_until((epoch + Duration::from_nanos(run.measure_from_ns)).into()).await;
        let a = cpu_us(pid).ok()?;
        tokio::time::sleep_until((epoch + Duration::from_nanos(run.measure_until_ns)).into()).await;
        let b = cpu_us(pid).ok()?;
        Some(b.saturating_sub(a))
    };
    let cpu = cpu_window.await;
    tokio::time::sleep_until((epoch + Duration::from_nanos(run.probe_until_ns)).into()).await;
    run.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        w.senders.push(t.await?);
    }
    // Give deliveries of the measured window time to arrive (they count against latency).
    tokio::time::sleep(Duration::from_secs(2)).await;
    run.finish.send_replace(true);
    for (c, r) in receivers {
        w.recipients.push((c, r.await?));
    }
    let h = run.latencies.lock().await.clone();
    let refusals = run.refusals.lock().await.clone();
    let window_s = (len - warm) as f64 / 1e9;
    let sent = run.sent_in_window.load(Ordering::Relaxed);
    let expected = run.expected_in_window.load(Ordering::Relaxed);
    let delivered = run.delivered_in_window.load(Ordering::Relaxed);
    let overloaded = run.overloaded.load(Ordering::Relaxed);
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let complete = if expected == 0 {
        0.0
    } else {
        delivered as f64 / expected as f64
    };
    let recovery_ms = probe_rate.map(|_| {
        let limit_us = (o.p99_limit_ms * 1000.0) as u64;
        let probe = run
            .probe_latencies
            .try_lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        probe
            .iter()
            .filter(|(_, lat)| *lat > limit_us)
            .map(|(t, _)| t.saturating_sub(run.measure_until_ns) as f64 / 1e6)
            .fold(0.0, f64::max)
    });
    Ok(RunResult {
        offered: (sent + overloaded) as f64 / window_s,
        achieved: sent as f64 / window_s * complete.min(1.0),
        delivered_per_s: delivered as f64 / window_s,
        p50_ms: ms(&h, 0.5),
        p99_ms: ms(&h, 0.99),
        p999_ms: ms(&h, 0.999),
        max_ms: h.max() as f64 / 1000.0,
        overloaded,
        refusal_p99_ms: ms(&refusals, 0.99),
        errors: run.errors.load(Ordering::Relaxed),
        complete,
        server_us_per_msg: cpu.filter(|_| sent > 0).map(|us| us as f64 / sent as f64),
        recovery_ms,
    })
}

/// Most of the offered messages a sustained run may have refused with `overloaded` (a
/// moment's stall on a shared machine; the client retries them).
const MAX_REFUSED_SHARE: f64 = 0.001;

fn sustained(r: &RunResult, rate: f64, limit_ms: f64, window_s: f64) -> bool {
    r.errors == 0
        && (r.overloaded as f64) <= MAX_REFUSED_SHARE * r.offered * window_s
        && r.complete >= 0.99
        && r.achieved >= 0.95 * rate
        && r.p99_ms < limit_ms
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

/// Runs one rate `repeat` times; prints each run and the median; returns the median run
/// (by achieved rate) and whether most runs were sustained.
async fn step(
    http: &HttpClient,
    o: &ThroughputOpts,
    w: &mut World,
    rate: f64,
    probe_rate: Option<f64>,
    label: &str,
) -> Result<(RunResult, bool, Vec<RunResult>)> {
    let window_s = (o.step - o.warmup).as_secs_f64();
    let mut runs = Vec::new();
    for k in 0..o.repeat {
        let r = run_once(http, o, w, rate, probe_rate).await?;
        println!(
            "run {label} rate={rate:.0} n={k} offered={:.0} msgs_per_s={:.0} deliveries_per_s={:.0} \
             p50_ms={:.2} p99_ms={:.2} p999_ms={:.2} max_ms={:.2} overloaded={} \
             refusal_p99_ms={:.2} errors={} complete={:.4} server_us_per_msg={} recovery_ms={} \
             sustained={}",
            r.offered,
            r.achieved,
            r.delivered_per_s,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            r.overloaded,
            r.refusal_p99_ms,
            r.errors,
            r.complete,
            opt(r.server_us_per_msg),
            opt(r.recovery_ms),
            sustained(&r, rate, o.p99_limit_ms, window_s),
        );
        runs.push(r);
        // Let the server's queues drain before the next run.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let ok = runs
        .iter()
        .filter(|r| sustained(r, rate, o.p99_limit_ms, window_s))
        .count();
    let mut by_rate = runs.clone();
    by_rate.sort_by(|a, b| a.achieved.total_cmp(&b.achieved));
    let mid = by_rate[by_rate.len() / 2];
    let p99s: Vec<f64> = runs.iter().map(|r| r.p99_ms).collect();
    let (lo, hi) = p99s
        .iter()
        .fold((f64::MAX, 0.0f64), |(a, b), &v| (a.min(v), b.max(v)));
    let sustained = ok * 2 > runs.len();
    println!(
        "step {label} rate={rate:.0} msgs_per_s={:.0} p99_ms={:.2} p99_ms_range={lo:.2}-{hi:.2} \
         server_us_per_msg={} overloaded={} sustained={sustained} ({ok}/{} runs)",
        mid.achieved,
        median(p99s),
        opt(mid.server_us_per_msg),
        mid.overloaded,
        runs.len(),
    );
    Ok((mid, sustained, runs))
}

pub async fn throughput(
    http: &HttpClient,
    o: &ThroughputOpts,
    rates: &[u64],
    stop_on_failure: bool,
    overload: bool,
) -> Result<()> {
    let (senders, recipients) = setup(http, o).await?;
    let mut w = World {
        senders,
        recipients,
        runs: 0,
    };
    let mut knee: Option<(f64, RunResult, f64)> = None;
    let mut last = None;
    for &rate in rates {
        let rate = rate as f64;
        let (mid, ok, runs) = step(http, o, &mut w, rate, None, "load").await?;
        let p99 = median(runs.iter().map(|r| r.p99_ms).collect());
        last = Some((mid, p99));
        if ok && knee.is_none_or(|(r, _, _)| rate > r) {
            knee = Some((rate, mid, p99));
        }
        if !ok && stop_on_failure {
            break;
        }
    }
    let mut line = match (&knee, &last) {
        (Some((_, mid, p99)), _) => format!(
            "msgs_per_s={:.0} p99_ms={p99:.2} server_us_per_msg={}",
            mid.achieved,
            opt(mid.server_us_per_msg)
        ),
        (None, Some((_, p99))) => format!("msgs_per_s=0 p99_ms={p99:.2} server_us_per_msg=-"),
        (None, None) => "msgs_per_s=0 p99_ms=0 server_us_per_msg=-".into(),
    };
    if overload {
        let base = knee.map_or(rates.first().copied().unwrap_or(1000) as f64, |k| k.0);
        let rate = 2.0 * base;
        let (mid, _, runs) =
            step(http, o, &mut w, rate, Some(PROBE_SHARE * base), "overload").await?;
        let p99 = median(runs.iter().map(|r| r.p99_ms).collect());
        let window_s = (o.step - o.warmup).as_secs_f64();
        let refused_pct = median(
            runs.iter()
                .map(|r| 100.0 * r.overloaded as f64 / (r.offered * window_s).max(1.0))
                .collect(),
        );
        let refusal = median(runs.iter().map(|r| r.refusal_p99_ms).collect());
        let recovery = median(runs.iter().filter_map(|r| r.recovery_ms).collect());
        line.push_str(&format!(
            " overload_rate={rate:.0} overload_msgs_per_s={:.0} overload_p99_ms={p99:.2} \
             overload_refused_pct={refused_pct:.1} refusal_p99_ms={refusal:.2} recovery_ms={recovery:.0}",
            mid.achieved
        ));
    }
    println!("{line}");
    Ok(())
}
