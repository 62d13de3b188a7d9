//! `storm` and `chaos`: the server is killed, stopped and restarted under clients that
//! reconnect on their own; afterwards every client's log is checked (see `durable`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use natter_client::{Credentials, HttpClient};
use tokio::sync::watch;

use crate::durable::{
    Counters, Receiver, RecvLog, Rng, SendLog, Sender, ServerProc, Verdict, check,
};
use crate::idle::parse_sources;
use crate::{register_many, rss_kib};

/// Where and how to run the server under test.
pub struct ServerOpts {
    pub natter: PathBuf,
    pub port: u16,
    pub data_dir: PathBuf,
    pub extra: Vec<String>,
}

impl ServerOpts {
    fn command(&self) -> Vec<String> {
        let mut cmd = vec![
            self.natter.display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", self.port),
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--turn-enabled".into(),
            "false".into(),
            "--log".into(),
            "warn".into(),
            // Many test users from one machine.
            "--limit-register-ip".into(),
            "10000000:1000000".into(),
            "--limit-register-phone".into(),
            "1000:1000".into(),
            "--limit-send".into(),
            "100000:100000".into(),
        ];
        cmd.extend(self.extra.iter().cloned());
        cmd
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

type Logs<T> = Vec<(natter_client::protocol::UserId, Arc<Mutex<T>>)>;

struct Clients {
    counters: Arc<Counters>,
    /// Ends the senders (they finish what they handed out), then the receivers.
    stop_senders: watch::Sender<bool>,
    stop_receivers: watch::Sender<bool>,
    receivers: Vec<tokio::task::JoinHandle<Receiver>>,
    senders: Vec<tokio::task::JoinHandle<Sender>>,
    recv_logs: Logs<RecvLog>,
    send_logs: Logs<SendLog>,
}

impl Clients {
    fn stored(&self) -> usize {
        self.recv_logs
            .iter()
            .map(|(_, l)| l.lock().unwrap().stored.len())
            .sum()
    }
    fn acked(&self) -> usize {
        self.send_logs
            .iter()
            .map(|(_, l)| l.lock().unwrap().acked.len())
            .sum()
    }
    fn handed_out(&self) -> u64 {
        self.send_logs
            .iter()
            .map(|(_, l)| l.lock().unwrap().next)
            .sum()
    }
}

/// Receivers for `recv`, senders from `send` (sender i writes to its slice of receivers).
#[allow(clippy::too_many_arguments)]
fn spawn_clients(
    url: &str,
    recv: &[Credentials],
    send: &[Credentials],
    sources: &[IpAddr],
    per_sender_s: f64,
    per_sender_limit: u64,
    seed: u64,
    drain: Duration,
) -> Clients {
    let counters = Arc::new(Counters::default());
    let (stop_senders, senders_rx) = watch::channel(false);
    let (stop_receivers, receivers_rx) = watch::channel(false);
    let mut c = Clients {
        counters: counters.clone(),
        stop_senders,
        stop_receivers,
        receivers: Vec::new(),
        senders: Vec::new(),
        recv_logs: Vec::new(),
        send_logs: Vec::new(),
    };
    for (i, creds) in recv.iter().enumerate() {
        let log = Arc::new(Mutex::new(RecvLog::default()));
        c.recv_logs.push((creds.user, log.clone()));
        let r = Receiver {
            creds: creds.clone(),
            bind: Some(sources[i % sources.len()]),
            log,
        };
        c.receivers.push(tokio::spawn(r.run(
            url.to_owned(),
            seed ^ (i as u64 + 1),
            counters.clone(),
            receivers_rx.clone(),
        )));
    }
    let slice = recv.len().div_ceil(send.len().max(1));
    for (i, creds) in send.iter().enumerate() {
        let to: Vec<Credentials> = recv.iter().skip(i * slice).take(slice).cloned().collect();
        if to.is_empty() {
            continue;
        }
        let log = Arc::new(Mutex::new(SendLog::default()));
        c.send_logs.push((creds.user, log.clone()));
        let s = Sender {
            creds: creds.clone(),
            bind: Some(sources[(i + 1) % sources.len()]),
            log,
        };
        c.senders.push(tokio::spawn(s.run(
            url.to_owned(),
            to,
            per_sender_s,
            per_sender_limit,
            seed.rotate_left(17) ^ (i as u64 + 1),
            senders_rx.clone(),
            drain,
        )));
    }
    c
}

/// Waits until `cond` holds or `within` passes; returns how long it took.
async fn wait_for(within: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if cond() {
            return Some(t0.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cond().then(|| t0.elapsed())
}

/// Stops the senders (they finish what they handed out), lets the receivers catch up,
/// stops them, and checks every log.
async fn finish(c: Clients, catch_up: Duration) -> Result<Verdict> {
    c.stop_senders.send_replace(true);
    let Clients {
        receivers,
        senders,
        recv_logs,
        send_logs,
        stop_receivers,
        ..
    } = c;
    for s in senders {
        s.await?;
    }
    let acked: usize = send_logs
        .iter()
        .map(|(_, l)| l.lock().unwrap().acked.len())
        .sum();
    wait_for(catch_up, || {
        recv_logs
            .iter()
            .map(|(_, l)| l.lock().unwrap().stored.len())
            .sum::<usize>()
            >= acked
    })
    .await;
    let stored: usize = recv_logs
        .iter()
        .map(|(_, l)| l.lock().unwrap().stored.len())
        .sum();
    let mut refusals = std::collections::BTreeMap::<String, u64>::new();
    for (_, l) in &send_logs {
        for (k, v) in &l.lock().unwrap().refusals {
            *refusals.entry(k.clone()).or_default() += v;
        }
    }
    eprintln!("acknowledged {acked}, stored by receivers {stored}; refusals {refusals:?}");
    stop_receivers.send_replace(true);
    for r in receivers {
        r.await?;
    }
    Ok(check(&send_logs, &recv_logs))
}

fn verdict_line(v: &Verdict) -> String {
    format!(
        "checked={} lost={} duplicated={} reordered={} unknown={} mismatched={}",
        v.checked, v.lost, v.duplicated, v.reordered, v.unknown, v.mismatched
    )
}

pub struct StormOpts {
    pub server: ServerOpts,
    pub clients: usize,
    pub senders: usize,
    pub messages_per_client: u64,
    pub sources: String,
    pub seed: u64,
    pub within: Duration,
}

/// N clients connected; messages flowing to them; the server is killed and restarted; every
/// client reconnects with jittered backoff. Reports how long until all were back, the
/// server's peak memory during the storm, and the log check.
pub async fn storm(o: &StormOpts) -> Result<()> {
    let sources = parse_sources(&o.sources)?;
    let mut server = ServerProc::start(o.server.command(), o.server.base())?;
    server.ready(Duration::from_secs(20)).await?;
    let http = HttpClient::new(o.server.base());
    let users = register_many(&http, o.clients + o.senders, 64, "storm").await?;
    let (recv, send) = users.split_at(o.clients);
    let slice = o.clients.div_ceil(o.senders.max(1)) as u64;
    let limit = slice * o.messages_per_client;
    // Each sender's share, spread over about 20 s: the kill lands mid-flow.
    let per_sender_s = limit as f64 / 20.0;
    let c = spawn_clients(
        &http.ws_url(),
        recv,
        send,
        &sources,
        per_sender_s,
        limit,
        o.seed,
        Duration::from_secs(120),
    );
    let counters = c.counters.clone();
    let connected = || counters.connected.load(Ordering::Relaxed) as usize;
    let Some(t) = wait_for(Duration::from_secs(180), || connected() >= o.clients).await else {
        bail!("only {} of {} clients connected", connected(), o.clients);
    };
    eprintln!(
        "{} clients connected in {:.1} s",
        o.clients,
        t.as_secs_f64()
    );
    let total = limit * send.len() as u64;
    wait_for(Duration::from_secs(60), || c.acked() as u64 >= total / 2).await;
    let before = rss_kib(server.pid()).unwrap_or(0);
    eprintln!(
        "{} of {total} messages acknowledged; killing the server (RSS {} MiB)",
        c.acked(),
        before / 1024
    );
    server.kill_and_restart()?;
    let pid = server.pid();
    let t0 = Instant::now();
    // The server's peak memory while everyone comes back.
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    server.ready(Duration::from_secs(20)).await?;
    // Connections dropped with the old server; wait for them all to be back.
    let back = wait_for(o.within + Duration::from_secs(60), || {
        connected() >= o.clients && t0.elapsed() > Duration::from_millis(200)
    })
    .await;
    let reconnect_s = back.map_or(f64::NAN, |_| t0.elapsed().as_secs_f64());
    wait_for(Duration::from_secs(120), || {
        c.handed_out() >= total && c.acked() as u64 >= total
    })
    .await;
    let stored_before_finish = c.stored();
    let v = finish(c, Duration::from_secs(60)).await?;
    sampler.abort();
    let peak_mib = peak.load(Ordering::Relaxed) as f64 / 1024.0;
    println!(
        "storm clients={} senders={} messages={total} stored={stored_before_finish} \
         reconnect_s={reconnect_s:.1} reconnects={} peak_rss_mib={peak_mib:.0} {}",
        o.clients,
        send.len(),
        counters.reconnects.load(Ordering::Relaxed),
        verdict_line(&v)
    );
    if back.is_none() || reconnect_s > o.within.as_secs_f64() {
        bail!("not every client was back within {:?}", o.within);
    }
    if !v.clean() {
        bail!("the log check failed: {}", verdict_line(&v));
    }
    Ok(())
}

pub struct ChaosOpts {
    pub server: ServerOpts,
    pub pairs: usize,
    pub rate: f64,
    pub duration: Duration,
    pub seed: u64,
}

/// Steady load while the server is SIGKILLed (and restarted) or SIGSTOPped (and continued)
/// at seeded random moments; then every log is checked.
pub async fn chaos(o: &ChaosOpts) -> Result<()> {
    let mut rng = Rng::new(o.seed);
    let mut server = ServerProc::start(o.server.command(), o.server.base())?;
    server.ready(Duration::from_secs(20)).await?;
    let http = HttpClient::new(o.server.base());
    let users = register_many(&http, o.pairs * 2, 64, "chaos").await?;
    let (recv, send) = users.split_at(o.pairs);
    let sources = parse_sources("2-9")?;
    let c = spawn_clients(
        &http.ws_url(),
        recv,
        send,
        &sources,
        o.rate / o.pairs as f64,
        u64::MAX,
        o.seed,
        Duration::from_secs(60),
    );
    let (mut kills, mut stops) = (0, 0);
    let t0 = Instant::now();
    while t0.elapsed() < o.duration {
        tokio::time::sleep(Duration::from_millis(rng.range(500, 3000))).await;
        if t0.elapsed() >= o.duration {
            break;
        }
        if rng.range(0, 2) == 0 {
            kills += 1;
            eprintln!("{:.1} s: SIGKILL and restart", t0.elapsed().as_secs_f64());
            server.kill_and_restart()?;
            server.ready(Duration::from_secs(20)).await?;
        } else {
            stops += 1;
            let pause = Duration::from_millis(rng.range(200, 2000));
            eprintln!(
                "{:.1} s: SIGSTOP for {} ms",
                t0.elapsed().as_secs_f64(),
                pause.as_millis()
            );
            server.stop()?;
            tokio::time::sleep(pause).await;
            server.cont()?;
        }
    }
    let refused: u64 = c
        .send_logs
        .iter()
        .map(|(_, l)| l.lock().unwrap().refused)
        .sum();
    let reconnects = c.counters.reconnects.load(Ordering::Relaxed);
    let v = finish(c, Duration::from_secs(60)).await?;
    println!(
        "chaos seed={} pairs={} kills={kills} stops={stops} reconnects={reconnects} refused={refused} {}",
        o.seed,
        o.pairs,
        verdict_line(&v)
    );
    if !v.clean() {
        bail!(
            "the log check failed (replay with --seed {}): {}",
            o.seed,
            verdict_line(&v)
        );
    }
    Ok(())
}
