//! natter-load: load generator for the messaging gateway.
//!
//! `throughput` measures durable messaging: paced senders (open loop), recipients that
//! acknowledge, and senders that acknowledge their delivered receipts, so every message costs
//! the server its whole life cycle. A share of the messages (`--group-pct`) can go to groups
//! of `--group-size`. Latency is from the moment a sender writes the frame to the moment a
//! recipient device has it (and, with `--e2ee`, has decrypted it), in an HDR histogram.
//!
//! By default envelopes are pre-built opaque bytes (the server cannot tell them from
//! ciphertext), so the figures are the server's alone. With `--e2ee` every message is
//! encrypted with Olm (1:1) or Megolm (groups) exactly as the client does.
//!
//! `idle` opens many authenticated sockets that then sit idle, and reports how much the
//! server's resident memory grew per socket.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use natter_client::args::parse_duration;
use natter_client::content::Content;
use natter_client::crypto::Machine;
use natter_client::protocol::codec::Encoding;
use natter_client::protocol::{
    ClientFrame, Conv, DeviceId, Envelope, GroupId, OpaqueBytes, QueueItem, ServerFrame, UserId,
};
use natter_client::{ConnectOptions, Connection, Credentials, Event, Events, HttpClient};
use tokio::sync::Mutex;

#[derive(Debug, Parser)]
#[command(
    name = "natter-load",
    version,
    about = "Load generator for the natter messaging gateway",
    long_about = "Load generator for the natter messaging gateway.\n\n\
        The server must run in development mode (code_delivery = log) so that test users can\n\
        register, with registration limits raised for the number of users asked for, e.g.\n\
        natter --limit-register-ip 1000000:100000 --limit-register-phone 1000:1000.\n\
        Each command prints its figures as key=value pairs on its last line."
)]
struct Cli {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080", global = true)]
    server: String,
    /// Runtime worker threads of this load generator (it shares the machine with the server).
    #[arg(long, default_value_t = 1, global = true)]
    threads: usize,
    /// Frame encoding: bin (MessagePack) or json.
    #[arg(long, default_value = "bin", global = true, value_parser = parse_encoding)]
    encoding: Encoding,
    #[command(subcommand)]
    cmd: Command,
}

fn parse_encoding(s: &str) -> Result<Encoding, String> {
    match s {
        "bin" => Ok(Encoding::Binary),
        "json" => Ok(Encoding::Json),
        _ => Err(format!("{s:?}: use bin or json")),
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sustained messages per second at given offered rates (steps), with latency: 1:1 and
    /// (with --group-pct) group messages, pre-built or (with --e2ee) really encrypted.
    Throughput {
        /// Sender/recipient pairs (each a registered user with one device).
        #[arg(long, default_value_t = 500)]
        pairs: usize,
        /// Offered rates in messages per second, one step each (comma-separated).
        #[arg(long, value_delimiter = ',', default_value = "5000,10000,15000,20000")]
        rates: Vec<u64>,
        /// Length of each step.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        step: Duration,
        /// Part of each step not measured (the pipeline fills).
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        warmup: Duration,
        /// Envelope size in bytes.
        #[arg(long, default_value_t = 200)]
        size: usize,
        /// p99 latency (ms) a step must stay under to count as sustained.
        #[arg(long, default_value_t = 50.0)]
        p99_limit_ms: f64,
        /// Stop after the first step that is not sustained.
        #[arg(long)]
        stop_on_failure: bool,
        /// Encrypt for real: Olm per 1:1 message and Megolm per group message (vodozemac, as
        /// the client does), decrypted by the recipients before their latency is taken.
        /// Without it, envelopes are pre-built opaque bytes and the figures are the server's.
        #[arg(long)]
        e2ee: bool,
        /// Percentage of messages sent to the sender's group instead of its 1:1 partner.
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
        group_pct: u32,
        /// Members per group (the sender, its partner and the next recipients).
        #[arg(long, default_value_t = 8)]
        group_size: usize,
    },
    /// Memory per idle authenticated socket: registers N users, connects them all, waits, and
    /// reads the server's resident memory before and after.
    Idle {
        /// Sockets to open (comma-separated: one measurement per count, cumulative).
        #[arg(long, value_delimiter = ',', default_value = "10000")]
        connections: Vec<usize>,
        /// PID of the server (its /proc/PID/status VmRSS is read).
        #[arg(long)]
        server_pid: u32,
        /// Source addresses 127.0.0.A to 127.0.0.B used round robin, as A-B (ephemeral ports
        /// run out near 28,000 sockets per address).
        #[arg(long, default_value = "2-17")]
        sources: String,
        /// Sockets connecting at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// How long the sockets sit idle before memory is read.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        settle: Duration,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let http = HttpClient::new(&cli.server);
    match cli.cmd {
        Command::Throughput {
            pairs,
            rates,
            step,
            warmup,
            size,
            p99_limit_ms,
            stop_on_failure,
            e2ee,
            group_pct,
            group_size,
        } => {
            let opts = ThroughputOpts {
                pairs,
                step,
                warmup,
                size,
                p99_limit_ms,
                encoding: cli.encoding,
                e2ee,
                group_pct,
                group_size,
            };
            throughput(&http, &opts, &rates, stop_on_failure).await
        }
        Command::Idle {
            connections,
            server_pid,
            sources,
            concurrency,
            settle,
        } => {
            idle(
                &http,
                cli.encoding,
                &connections,
                server_pid,
                &sources,
                concurrency,
                settle,
            )
            .await
        }
    }
}

/// Registers `n` users, `concurrency` at a time.
async fn register_many(
    http: &HttpClient,
    n: usize,
    concurrency: usize,
    tag: &str,
) -> Result<Vec<Credentials>> {
    let started = Instant::now();
    // Phone numbers unique per run: +1 9XX <pid> <index>.
    let base = u64::from(std::process::id() % 100_000) * 1_000_000;
    let mut out = Vec::with_capacity(n);
    let mut jobs = FuturesUnordered::new();
    let mut next = 0usize;
    while out.len() < n {
        while next < n && jobs.len() < concurrency {
            let http = http.clone();
            let phone = format!("+19{:011}", base + next as u64);
            let tag = tag.to_owned();
            jobs.push(async move { http.register_dev(&phone, &tag).await });
            next += 1;
        }
        let creds = jobs.next().await.expect("jobs pending")?;
        out.push(creds);
        if out.len() % 10_000 == 0 {
            eprintln!("registered {} / {n}", out.len());
        }
    }
    eprintln!(
        "registered {n} users in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(out)
}

struct ThroughputOpts {
    pairs: usize,
    step: Duration,
    warmup: Duration,
    size: usize,
    p99_limit_ms: f64,
    encoding: Encoding,
    e2ee: bool,
    group_pct: u32,
    group_size: usize,
}

/// Shared by all tasks of a run.
struct Run {
    /// Which step this is: client ids are unique per step, as the server de-duplicates them.
    step: usize,
    epoch: Instant,
    /// Messages sent at or after this (ns since epoch) are measured.
    measure_from_ns: AtomicU64,
    measure_until_ns: AtomicU64,
    stop: AtomicBool,
    /// Tells recipients to merge their histograms and end.
    finish: tokio::sync::watch::Sender<bool>,
    latencies: Mutex<Histogram<u64>>,
    sent_ok: AtomicU64,
    errors: AtomicU64,
    /// Messages sent in the window, and the deliveries they should make (1 per 1:1 message,
    /// one per other member for a group message).
    sent_in_window: AtomicU64,
    expected_in_window: AtomicU64,
    delivered_in_window: AtomicU64,
}

impl Run {
    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
    fn in_window(&self, t: u64) -> bool {
        t >= self.measure_from_ns.load(Ordering::Relaxed)
            && t < self.measure_until_ns.load(Ordering::Relaxed)
    }
}

/// A recipient's state: its crypto (with `--e2ee`) outlives the steps.
struct Recipient {
    machine: Option<Machine>,
}

/// The send time a payload carries: its first 8 bytes (pre-built), or the first 20 digits of
/// the decrypted text (E2EE).
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
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
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
                    if let Some(sent) = open_item(&mut r, &item, &run)
                        && run.in_window(sent)
                    {
                        let now = run.now_ns();
                        local.saturating_record(((now.saturating_sub(sent)) / 1000).max(1));
                        run.delivered_in_window.fetch_add(1, Ordering::Relaxed);
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
    r
}

/// What one sender sends to.
struct SenderSetup {
    creds: Credentials,
    to: Credentials,
    /// Its group (sender, its recipient and the next recipients), with the other members'
    /// device count.
    group: Option<(GroupId, u64)>,
    machine: Option<Machine>,
}

async fn setup_connection(http: &HttpClient, c: &Credentials, enc: Encoding) -> Result<Connection> {
    let opts = ConnectOptions {
        encoding: enc,
        ..Default::default()
    };
    Connection::connect(&http.ws_url(), &c.token, opts)
        .await
        .context("connect")
}

/// Publishes a machine's keys through `conn`.
async fn publish(conn: &Connection, m: &mut Machine) -> Result<()> {
    let up = m.keys_to_upload(0, true).context("keys to upload")?;
    let frame = ClientFrame::KeysUpload {
        id: 0,
        identity_key: Some(up.identity_key.clone()),
        signed_prekey: Some(up.signed_prekey.clone()),
        one_time: up.one_time.clone(),
        last_resort: up.last_resort.clone(),
    };
    conn.request(frame).await.context("keys_upload")?;
    m.keys_published(&up);
    Ok(())
}

/// Starts an Olm session from `m` to `user`'s (single) device.
async fn claim(conn: &Connection, m: &mut Machine, user: UserId) -> Result<()> {
    match conn.request(ClientFrame::KeysClaim { id: 0, user }).await? {
        ServerFrame::Bundle { devices, .. } => {
            for b in &devices {
                m.start_session(user, b)
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            Ok(())
        }
        other => bail!("unexpected answer to keys_claim: {other:?}"),
    }
}

/// Registers users, makes groups, and (with E2EE) publishes keys, starts sessions and shares
/// each sender's group key.
async fn setup(
    http: &HttpClient,
    o: &ThroughputOpts,
) -> Result<(Vec<SenderSetup>, Vec<(Credentials, Recipient)>)> {
    let users = register_many(http, o.pairs * 2, 64, "load").await?;
    let (senders, recipients) = users.split_at(o.pairs);
    let members = o.group_size.clamp(2, o.pairs + 1);
    let mut rec_out = Vec::new();
    for r in recipients {
        let mut machine = o.e2ee.then(|| Machine::new(r.user, r.device));
        if let Some(m) = machine.as_mut() {
            let conn = setup_connection(http, r, o.encoding).await?;
            publish(&conn, m).await?;
            conn.close();
        }
        rec_out.push((r.clone(), Recipient { machine }));
    }
    let mut out = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        let to = recipients[i].clone();
        let mut machine = o.e2ee.then(|| Machine::new(s.user, s.device));
        let conn = setup_connection(http, s, o.encoding).await?;
        if let Some(m) = machine.as_mut() {
            publish(&conn, m).await?;
            claim(&conn, m, to.user).await?;
        }
        let mut group = None;
        if o.group_pct > 0 {
            let others: Vec<&Credentials> = (0..members - 1)
                .map(|k| &recipients[(i + k) % recipients.len()])
                .collect();
            let info = match conn
                .request(ClientFrame::GroupCreate {
                    id: 0,
                    name: format!("load {i}"),
                    members: others.iter().map(|c| c.user).collect(),
                })
                .await?
            {
                ServerFrame::Group { group, .. } => group,
                other => bail!("unexpected answer to group_create: {other:?}"),
            };
            if let Some(m) = machine.as_mut() {
                for c in others.iter().skip(1) {
                    claim(&conn, m, c.user).await?;
                }
                let devices: Vec<DeviceId> = others.iter().map(|c| c.device).collect();
                let share = m
                    .prepare_group(info.group, &devices, 0)
                    .context("a new group session")?;
                let key = Content::GroupKey {
                    group: info.group,
                    session_key: OpaqueBytes(share.session_key.clone()),
                }
                .encode();
                for c in &others {
                    let body = m
                        .encrypt(c.device, &key)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                    conn.request(ClientFrame::Send {
                        id: 0,
                        client_id: format!("key-{}", c.user),
                        to: c.user,
                        envelopes: vec![Envelope {
                            device: c.device,
                            body: OpaqueBytes(body),
                        }],
                    })
                    .await
                    .context("sharing a group key")?;
                }
            }
            group = Some((info.group, others.len() as u64));
        }
        conn.close();
        out.push(SenderSetup {
            creds: s.clone(),
            to,
            group,
            machine,
        });
        if (i + 1) % 100 == 0 {
            eprintln!("set up {} / {} senders", i + 1, o.pairs);
        }
    }
    Ok((out, rec_out))
}

async fn throughput(
    http: &HttpClient,
    o: &ThroughputOpts,
    rates: &[u64],
    stop_on_failure: bool,
) -> Result<()> {
    let (mut senders, mut recipients) = setup(http, o).await?;
    let mut best: Option<(u64, f64)> = None;
    let mut last_p99 = 0.0;
    for (step, &rate) in rates.iter().enumerate() {
        let run = Arc::new(Run {
            step,
            epoch: Instant::now(),
            measure_from_ns: AtomicU64::new(u64::MAX),
            measure_until_ns: AtomicU64::new(u64::MAX),
            stop: AtomicBool::new(false),
            finish: tokio::sync::watch::channel(false).0,
            latencies: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3).unwrap()),
            sent_ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            sent_in_window: AtomicU64::new(0),
            expected_in_window: AtomicU64::new(0),
            delivered_in_window: AtomicU64::new(0),
        });
        let opts = ConnectOptions {
            encoding: o.encoding,
            ..Default::default()
        };
        let mut receivers = Vec::new();
        for (c, r) in recipients.drain(..) {
            let conn = Connection::connect(&http.ws_url(), &c.token, opts.clone())
                .await
                .context("connect recipient")?;
            let run = run.clone();
            receivers.push((c, tokio::spawn(recipient(conn, r, run))));
        }
        let per_sender = rate as f64 / o.pairs as f64;
        let mut tasks = Vec::new();
        for (i, s) in senders.drain(..).enumerate() {
            let conn = Connection::connect(&http.ws_url(), &s.creds.token, opts.clone())
                .await
                .context("connect sender")?;
            let phase = Duration::from_secs_f64(i as f64 / o.pairs as f64 / per_sender.max(0.001));
            let cfg = SenderCfg {
                rate: per_sender,
                size: o.size,
                group_pct: o.group_pct,
                phase,
            };
            tasks.push(tokio::spawn(sender(conn, s, cfg, run.clone())));
        }
        let start = run.now_ns();
        let warm = o.warmup.as_nanos() as u64;
        let len = o.step.as_nanos() as u64;
        run.measure_from_ns.store(start + warm, Ordering::Relaxed);
        run.measure_until_ns.store(start + len, Ordering::Relaxed);
        tokio::time::sleep(o.step).await;
        run.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            senders.push(t.await?);
        }
        // Give deliveries of the measured window time to arrive (they count against latency).
        tokio::time::sleep(Duration::from_secs(2)).await;
        run.finish.send_replace(true);
        for (c, r) in receivers {
            recipients.push((c, r.await?));
        }
        let h = run.latencies.lock().await.clone();
        let window_s = (len - warm) as f64 / 1e9;
        let sent = run.sent_in_window.load(Ordering::Relaxed);
        let expected = run.expected_in_window.load(Ordering::Relaxed);
        let delivered = run.delivered_in_window.load(Ordering::Relaxed);
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let errors = run.errors.load(Ordering::Relaxed);
        let complete = if expected == 0 {
            0.0
        } else {
            delivered as f64 / expected as f64
        };
        let achieved = sent as f64 / window_s * complete.min(1.0);
        let sustained = errors == 0
            && complete >= 0.99
            && achieved >= 0.95 * rate as f64
            && ms(0.99) < o.p99_limit_ms;
        println!(
            "step rate={rate} offered={:.0} msgs_per_s={achieved:.0} deliveries_per_s={:.0} \
             sent={sent} expected={expected} delivered={delivered} p50_ms={:.2} p99_ms={:.2} \
             p999_ms={:.2} max_ms={:.2} errors={errors} sustained={sustained}",
            sent as f64 / window_s,
            delivered as f64 / window_s,
            ms(0.5),
            ms(0.99),
            ms(0.999),
            h.max() as f64 / 1000.0,
        );
        if sustained && best.is_none_or(|(r, _)| achieved as u64 > r) {
            best = Some((achieved as u64, ms(0.99)));
        }
        last_p99 = ms(0.99);
        if !sustained && stop_on_failure {
            break;
        }
        // Let the server's queues drain before the next step.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    match best {
        Some((r, p99)) => println!("msgs_per_s={r} p99_ms={p99:.2}"),
        None => println!("msgs_per_s=0 p99_ms={last_p99:.2}"),
    }
    Ok(())
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
    rate: f64,
    size: usize,
    group_pct: u32,
    phase: Duration,
}

/// Builds the frame for message `n` sent at `t`, and how many deliveries it should make.
fn next_frame(
    s: &mut SenderSetup,
    cfg: &SenderCfg,
    step: usize,
    n: u64,
    t: u64,
) -> Result<(ClientFrame, u64)> {
    let client_id = format!("{step}-{n}");
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

/// Sends at `cfg.rate` messages per second (open loop: a slow server does not slow the
/// pacing) until the run stops, and acks the receipts that come back.
async fn sender(
    mut conn: Connection,
    mut s: SenderSetup,
    cfg: SenderCfg,
    run: Arc<Run>,
) -> SenderSetup {
    let events = conn.take_events();
    let conn = Arc::new(conn);
    let acker = tokio::spawn(ack_all(conn.clone(), events));
    let interval = Duration::from_secs_f64(1.0 / cfg.rate);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + cfg.phase, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut inflight = FuturesUnordered::new();
    let mut n = 0u64;
    let record = |r: Result<ServerFrame, natter_client::ClientError>| match r {
        Ok(ServerFrame::Sent {
            duplicate: false, ..
        }) => {
            run.sent_ok.fetch_add(1, Ordering::Relaxed);
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
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if run.stop.load(Ordering::Relaxed) {
                    break;
                }
                let t = run.now_ns();
                let (frame, deliveries) = match next_frame(&mut s, &cfg, run.step, n, t) {
                    Ok(f) => f,
                    Err(e) => {
                        eprintln!("cannot build message: {e}");
                        run.errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                };
                n += 1;
                if run.in_window(t) {
                    run.sent_in_window.fetch_add(1, Ordering::Relaxed);
                    run.expected_in_window.fetch_add(deliveries, Ordering::Relaxed);
                }
                let c = conn.clone();
                inflight.push(async move { c.request(frame).await });
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

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (is the server running?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

fn parse_sources(s: &str) -> Result<Vec<IpAddr>> {
    let (a, b) = s.split_once('-').context("--sources is A-B, e.g. 2-17")?;
    let (a, b): (u8, u8) = (a.trim().parse()?, b.trim().parse()?);
    if a == 0 || a > b {
        bail!("--sources {s}: need 1 <= A <= B <= 255");
    }
    Ok((a..=b)
        .map(|x| IpAddr::V4(Ipv4Addr::new(127, 0, 0, x)))
        .collect())
}

async fn idle(
    http: &HttpClient,
    encoding: Encoding,
    counts: &[usize],
    pid: u32,
    sources: &str,
    concurrency: usize,
    settle: Duration,
) -> Result<()> {
    let sources = parse_sources(sources)?;
    let total = counts.iter().copied().max().unwrap_or(0);
    let users = register_many(http, total, 64, "idle").await?;
    // Let registration's transient allocations settle before the baseline.
    tokio::time::sleep(settle).await;
    let baseline = rss_kib(pid)?;
    eprintln!("server RSS before sockets: {baseline} KiB");
    let mut conns: Vec<Connection> = Vec::with_capacity(total);
    let mut figures = Vec::new();
    let mut sorted: Vec<usize> = counts.to_vec();
    sorted.sort_unstable();
    for target in sorted {
        let started = Instant::now();
        let mut jobs = FuturesUnordered::new();
        let mut next = conns.len();
        while conns.len() < target {
            while next < target && jobs.len() < concurrency {
                let opts = ConnectOptions {
                    encoding,
                    bind: Some(sources[next % sources.len()]),
                    ..Default::default()
                };
                let url = http.ws_url();
                let token = users[next].token.clone();
                jobs.push(async move {
                    let mut c = Connection::connect(&url, &token, opts).await?;
                    // Authenticated and its (empty) queue drained: the socket is now idle.
                    match c.next_event().await {
                        Some(Event::Frame(ServerFrame::QueueEmpty {})) => Ok(c),
                        other => Err(anyhow::anyhow!("expected queue_empty, got {other:?}")),
                    }
                });
                next += 1;
            }
            let c = jobs.next().await.expect("jobs pending")?;
            conns.push(c);
        }
        eprintln!(
            "{target} sockets connected in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(settle).await;
        let rss = rss_kib(pid)?;
        let per = (rss.saturating_sub(baseline)) as f64 / target as f64;
        println!(
            "idle connections={target} server_rss_kib={rss} baseline_kib={baseline} kib_per_conn={per:.2}"
        );
        figures.push((target, per));
    }
    let (n, per) = figures.last().copied().unwrap_or((0, 0.0));
    println!("idle_kib_per_conn={per:.2} connections={n}");
    drop(conns);
    Ok(())
}
