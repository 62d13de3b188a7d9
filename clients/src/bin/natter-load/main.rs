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
//! `sfu` runs a group call's participants against a standalone natter-sfu (see `sfu.rs`).
//!
//! `idle` opens many authenticated sockets that then sit idle, and reports how much the
//! server's resident memory grew per socket.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use natter_client::args::parse_duration;
use natter_client::protocol::codec::Encoding;
use natter_client::{Credentials, HttpClient};

mod durable;
mod idle;
mod janus;
mod reliability;
mod setup;
mod sfu;
mod stamped;
mod throughput;

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

/// The server that `storm` and `chaos` run, kill and restart themselves.
#[derive(Debug, clap::Args)]
struct ServerArgs {
    /// The natter binary.
    #[arg(long, default_value = "target/release/natter")]
    natter: std::path::PathBuf,
    /// Port it listens on (127.0.0.1).
    #[arg(long, default_value_t = 18_190)]
    port: u16,
    /// Its data directory (created; kept across restarts).
    #[arg(long)]
    data_dir: std::path::PathBuf,
    /// More arguments for the server, e.g. --server-arg=--sync --server-arg=normal.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    extra: Vec<String>,
}

impl ServerArgs {
    fn opts(&self) -> reliability::ServerOpts {
        reliability::ServerOpts {
            natter: self.natter.clone(),
            port: self.port,
            data_dir: self.data_dir.clone(),
            extra: self.extra.clone(),
        }
    }
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
        /// p99 latency (ms) a step must stay under to count as sustained (with no errors,
        /// 99 % delivered, 95 % of the rate achieved, at most 0.1 % refused as overloaded).
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
        /// Runs of each step; the step's figures are the median run's (by achieved rate),
        /// with the spread of p99 over the runs.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
        /// After the steps, offer twice the highest sustained rate (the knee) `--repeat`
        /// times, each followed by a light probe that measures how soon latency recovers.
        #[arg(long)]
        overload: bool,
        /// PID of the server: its CPU time (/proc/PID/stat) per message sent is reported.
        #[arg(long)]
        server_pid: Option<u32>,
    },
    /// Reconnect storm: N clients connected while messages flow to them; the server is
    /// SIGKILLed and restarted (natter-load runs it); every client reconnects with jittered
    /// backoff. Reports how long until all were back, the server's peak memory, and the check
    /// of every client's log (each acknowledged message exactly once, in order).
    Storm {
        #[command(flatten)]
        server: ServerArgs,
        /// Clients (receivers), each a registered user with one device.
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Sending users; each writes to its share of the clients.
        #[arg(long, default_value_t = 20)]
        senders: usize,
        /// Messages sent to each client.
        #[arg(long, default_value_t = 2)]
        messages_per_client: u64,
        /// Source addresses 127.0.0.A to 127.0.0.B used round robin, as A-B.
        #[arg(long, default_value = "2-17")]
        sources: String,
        /// Every client must be back within this long.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        within: Duration,
        /// Seed of the clients' backoff jitter.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Chaos: steady 1:1 load while the server (run by natter-load) is SIGKILLed and
    /// restarted, or SIGSTOPped and continued, at random moments drawn from --seed; then
    /// every client's log is checked. Exits non-zero on any loss, duplicate, reordering or
    /// message never sent; the same seed replays the same schedule.
    Chaos {
        #[command(flatten)]
        server: ServerArgs,
        /// Sender/receiver pairs.
        #[arg(long, default_value_t = 50)]
        pairs: usize,
        /// Messages per second, all senders together.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// How long the chaos lasts.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 1)]
        seed: u64,
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
    /// A group call against a standalone natter-sfu (or, with --janus, a Janus VideoRoom):
    /// N WebRTC participants (str0m) in this process, each publishing audio frames (the
    /// first --video also replay pre-encoded VP8) and receiving everyone else's; reports
    /// per-subscriber receive rate, loss, freezes, send-to-receipt latency and, with
    /// --sfu-pid, forwarded packets per SFU CPU-second.
    Sfu {
        /// natter-sfu's control link.
        #[arg(long, default_value = "ws://127.0.0.1:7883/v1/control")]
        control: String,
        /// natter-sfu's room-token secret (room tokens are minted with it, as a gateway
        /// does). Needed unless --janus is given.
        #[arg(
            long,
            env = "NATTER_SFU_TOKEN_SECRET",
            hide_env_values = true,
            required_unless_present = "janus"
        )]
        token_secret: Option<String>,
        /// Load a Janus VideoRoom instead, through Janus's HTTP API at this URL (e.g.
        /// http://10.77.0.2:8088/janus): each participant publishes on one connection and
        /// subscribes to all the others on a second, and the room is created for the run.
        #[arg(long, conflicts_with_all = ["control", "token_secret", "room"])]
        janus: Option<String>,
        /// The room's name (natter-sfu).
        #[arg(long, default_value = "load")]
        room: String,
        /// Participants in the room.
        #[arg(long, default_value_t = 10)]
        participants: usize,
        /// How many of them also publish video (320x180, 15 fps, ~300 kbit/s).
        #[arg(long, default_value_t = 0)]
        video: usize,
        /// The measured window.
        #[arg(long, default_value = "20s", value_parser = parse_duration)]
        duration: Duration,
        /// Time for everyone to join and connect before the window starts.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        warmup: Duration,
        /// Local address the participants' sockets bind.
        #[arg(long, default_value = "127.0.0.1")]
        bind: std::net::IpAddr,
        /// PID of the SFU: its CPU time over the window is read from /proc.
        #[arg(long)]
        sfu_pid: Option<u32>,
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
            repeat,
            overload,
            server_pid,
        } => {
            let opts = throughput::ThroughputOpts {
                pairs,
                step,
                warmup,
                size,
                p99_limit_ms,
                encoding: cli.encoding,
                e2ee,
                group_pct,
                group_size,
                repeat: repeat.max(1),
                server_pid,
            };
            throughput::throughput(&http, &opts, &rates, stop_on_failure, overload).await
        }
        Command::Storm {
            server,
            clients,
            senders,
            messages_per_client,
            sources,
            within,
            seed,
        } => {
            reliability::storm(&reliability::StormOpts {
                server: server.opts(),
                clients,
                senders,
                messages_per_client,
                sources,
                seed,
                within,
            })
            .await
        }
        Command::Chaos {
            server,
            pairs,
            rate,
            duration,
            seed,
        } => {
            reliability::chaos(&reliability::ChaosOpts {
                server: server.opts(),
                pairs,
                rate,
                duration,
                seed,
            })
            .await
        }
        Command::Sfu {
            control,
            token_secret,
            janus,
            room,
            participants,
            video,
            duration,
            warmup,
            bind,
            sfu_pid,
        } => {
            let target = match (janus, token_secret) {
                (Some(url), _) => sfu::Target::Janus { url },
                (None, Some(secret)) => sfu::Target::Natter {
                    control,
                    secret,
                    room,
                },
                (None, None) => bail!("--token-secret (or --janus) is needed"),
            };
            sfu::run(sfu::SfuLoad {
                target,
                participants,
                video,
                duration,
                warmup,
                bind,
                sfu_pid,
            })
            .await
        }
        Command::Idle {
            connections,
            server_pid,
            sources,
            concurrency,
            settle,
        } => {
            idle::idle(
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
pub async fn register_many(
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

pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (is the server running?)"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS line")
}

/// CPU time (user + system, all threads) the process `pid` has used, in microseconds.
pub fn cpu_us(pid: u32) -> Result<u64> {
    cpu_split_us(pid).map(|(user, system)| user + system)
}

/// CPU time the process `pid` has used in user space and in the kernel, in microseconds.
pub fn cpu_split_us(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat (is the server running?)"))?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let user: u64 = fields.get(11).context("utime")?.parse()?;
    let system: u64 = fields.get(12).context("stime")?.parse()?;
    let hz = clock_ticks_per_second();
    Ok((user * 1_000_000 / hz, system * 1_000_000 / hz))
}

fn clock_ticks_per_second() -> u64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on; `getconf` says otherwise.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}
