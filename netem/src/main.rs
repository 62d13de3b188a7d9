//! `natter-netem`: a user-space network emulator for testing real-time media on bad links.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use natter_netem::config::{GilbertElliott, Impairment, JitterDist};
use natter_netem::proxy::{Direction, Proxy, ProxyConfig, Report};
use natter_netem::scenario::{BUILT_IN, Scenario};
use natter_netem::trace::{TraceKind, generate};

#[derive(Parser)]
#[command(
    name = "natter-netem",
    version,
    about = "User-space network emulator: delay, jitter, burst loss, reordering, duplication, rate limits and capacity traces",
    long_about = "User-space network emulator for testing calls on bad networks.\n\n\
        Every packet passes, per direction: the loss model (Bernoulli or Gilbert–Elliott), \
        duplication, a drop-tail queue in front of a bottleneck (constant rate, a schedule \
        of steps, or a Mahimahi trace), then propagation delay with jitter and reordering. \
        Runs are deterministic under a seed.\n\n\
        Examples:\n  \
        natter-netem proxy --listen 127.0.0.1:4000 --upstream 127.0.0.1:3478 --delay-ms 50 --loss-pct 2\n  \
        natter-netem proxy --listen 127.0.0.1:4000 --upstream 127.0.0.1:5000 --scenario rfc8867-5.1 --stats-dir out/\n  \
        natter-netem scenarios"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Relay UDP from --listen to --upstream through impaired links (no privileges needed).
    Proxy(Box<ProxyArgs>),
    /// List the built-in scenarios.
    Scenarios,
    /// Print a scenario (built-in name or file) as parsed, or the error in it.
    Show {
        /// Built-in name or path to a .toml file.
        scenario: String,
    },
    /// Link mode (root): build the scenario's hosts in network namespaces joined through
    /// the emulator, run one shell command per host (in the order the scenario lists the
    /// hosts), then tear everything down, even on failure.
    ///
    /// Each command sees NETEM_HOST and NETEM_ADDR_<NAME> (every host's address). The run
    /// ends when every command has exited or the duration passes (commands still running
    /// then are stopped, which is not a failure).
    Run(Box<RunArgs>),
    /// Send timestamped UDP datagrams (for measuring a link).
    Blast {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1200)]
        size: usize,
        /// Rate, Mbit/s (0: as fast as possible).
        #[arg(long, default_value_t = 10.0)]
        mbit: f64,
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// Receive what `blast` sends and print rate, loss and one-way delay as JSON.
    Sink {
        #[arg(long)]
        listen: SocketAddr,
        /// Give up after this long.
        #[arg(long, default_value_t = 30.0)]
        secs: f64,
        /// Stop once the flow has been idle this long.
        #[arg(long, default_value_t = 1.0)]
        idle_s: f64,
    },
    /// Write a synthetic Mahimahi trace (one line per 1500-byte delivery opportunity, ms).
    GenTrace {
        #[arg(long, value_enum, default_value = "lte-drive")]
        kind: TraceKind,
        #[arg(long, default_value_t = 120)]
        seconds: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Rate of a constant trace, kbit/s.
        #[arg(long, default_value_t = 1200.0)]
        kbps: f64,
        /// Output file (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Built-in name or .toml file.
    scenario: String,
    /// Stop after this many seconds (default: the scenario's duration_s, else 60).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Write a CSV (per 200 ms) and an SVG plot per access link direction, and
    /// summary.json, here.
    #[arg(long)]
    stats_dir: Option<PathBuf>,
    /// One shell command per host, in the scenario's host order.
    #[arg(last = true, required = true)]
    commands: Vec<String>,
}

#[derive(Args)]
struct ProxyArgs {
    /// Address clients send to.
    #[arg(long)]
    listen: SocketAddr,
    /// Where their datagrams go.
    #[arg(long)]
    upstream: SocketAddr,
    /// Scenario: a built-in name (see `natter-netem scenarios`) or a .toml file. The flags
    /// below override it, in both directions.
    #[arg(long)]
    scenario: Option<String>,
    /// Stop after this many seconds (default: run until Ctrl-C / SIGTERM).
    #[arg(long)]
    duration_s: Option<f64>,
    /// Write forward.csv, backward.csv (per 200 ms), summary.json and SVG plots here when
    /// stopping.
    #[arg(long)]
    stats_dir: Option<PathBuf>,
    /// Seed for every random choice (default: the scenario's, else 1).
    #[arg(long)]
    seed: Option<u64>,
    #[command(flatten)]
    imp: ImpairFlags,
}

/// Impairment flags; each applies to both directions.
#[derive(Args, Default)]
struct ImpairFlags {
    /// One-way delay, ms.
    #[arg(long)]
    delay_ms: Option<f64>,
    /// Jitter, ms (σ for normal/halfnormal, half-range for uniform, mean for pareto).
    #[arg(long)]
    jitter_ms: Option<f64>,
    #[arg(long, value_enum)]
    jitter_dist: Option<JitterDist>,
    /// Keep packet order despite jitter.
    #[arg(long)]
    preserve_order: bool,
    /// Random loss, percent (Bernoulli; with --burst-len, Gilbert–Elliott).
    #[arg(long)]
    loss_pct: Option<f64>,
    /// Mean loss burst length in packets: makes --loss-pct bursty (Gilbert–Elliott).
    #[arg(long)]
    burst_len: Option<f64>,
    /// Duplicate this share of packets, percent.
    #[arg(long)]
    duplicate_pct: Option<f64>,
    /// Hold this share of packets back (percent) by --reorder-ms, so later ones overtake.
    #[arg(long)]
    reorder_pct: Option<f64>,
    #[arg(long, default_value_t = 10.0)]
    reorder_ms: f64,
    /// Bottleneck rate, kbit/s.
    #[arg(long)]
    rate_kbps: Option<f64>,
    /// Mahimahi trace for the bottleneck.
    #[arg(long)]
    trace: Option<String>,
    /// Drop-tail queue limit, ms of waiting.
    #[arg(long)]
    queue_ms: Option<f64>,
    /// Drop-tail queue limit, bytes.
    #[arg(long)]
    queue_bytes: Option<u64>,
}

impl ImpairFlags {
    fn apply(&self, imp: &mut Impairment) {
        if let Some(v) = self.delay_ms {
            imp.delay_ms = v;
        }
        if let Some(v) = self.jitter_ms {
            imp.jitter_ms = v;
        }
        if let Some(v) = self.jitter_dist {
            imp.jitter_dist = v;
        }
        if self.preserve_order {
            imp.preserve_order = true;
        }
        match (self.loss_pct, self.burst_len) {
            (Some(l), Some(b)) => {
                imp.loss_pct = 0.0;
                imp.gilbert_elliott = Some(GilbertElliott::from_loss_and_burst(l, b));
            }
            (Some(l), None) => {
                imp.loss_pct = l;
                imp.gilbert_elliott = None;
            }
            _ => {}
        }
        if let Some(v) = self.duplicate_pct {
            imp.duplicate_pct = v;
        }
        if let Some(v) = self.reorder_pct {
            imp.reorder_pct = v;
            imp.reorder_ms = self.reorder_ms;
        }
        if self.rate_kbps.is_some() || self.trace.is_some() {
            imp.rate_kbps = self.rate_kbps;
            imp.trace = self.trace.clone();
            imp.capacity.clear();
        }
        if self.queue_ms.is_some() || self.queue_bytes.is_some() {
            imp.queue_ms = self.queue_ms;
            imp.queue_bytes = self.queue_bytes;
        }
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Scenarios => {
            for (name, _) in BUILT_IN {
                let s = Scenario::load(name).map_err(anyhow::Error::msg)?;
                println!("{name:<20} {}", s.description);
            }
            Ok(())
        }
        Cmd::Show { scenario } => {
            let s = Scenario::load(&scenario).map_err(anyhow::Error::msg)?;
            println!("{s:#?}");
            Ok(())
        }
        Cmd::GenTrace {
            kind,
            seconds,
            seed,
            kbps,
            out,
        } => {
            if seconds == 0 || seconds > 86_400 {
                bail!("--seconds must be between 1 and 86400");
            }
            let t = generate(kind, seconds, seed, kbps);
            match out {
                Some(p) => {
                    std::fs::write(&p, t).with_context(|| format!("writing {}", p.display()))
                }
                None => {
                    print!("{t}");
                    Ok(())
                }
            }
        }
        Cmd::Proxy(args) => proxy(*args),
        Cmd::Run(args) => run(*args),
        Cmd::Blast {
            to,
            size,
            mbit,
            secs,
        } => {
            let r = natter_netem::probe::blast(to, size, mbit, secs)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Cmd::Sink {
            listen,
            secs,
            idle_s,
        } => {
            let r = natter_netem::probe::sink(listen, secs, Duration::from_secs_f64(idle_s))?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}

fn proxy(args: ProxyArgs) -> anyhow::Result<()> {
    let (mut fwd, mut bwd, base, mut seed) = match &args.scenario {
        Some(s) => {
            let s = Scenario::load(s).map_err(anyhow::Error::msg)?;
            (
                s.forward.clone(),
                s.backward.clone(),
                s.base.clone(),
                s.seed,
            )
        }
        None => (
            Impairment::default(),
            Impairment::default(),
            PathBuf::from("."),
            1,
        ),
    };
    args.imp.apply(&mut fwd);
    args.imp.apply(&mut bwd);
    if let Some(s) = args.seed {
        seed = s;
    }
    let cfg = ProxyConfig {
        listen: args.listen,
        upstream: args.upstream,
        forward: Direction::load(fwd, &base).map_err(|e| anyhow::anyhow!("forward: {e}"))?,
        backward: Direction::load(bwd, &base).map_err(|e| anyhow::anyhow!("backward: {e}"))?,
        seed,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let p = Proxy::start(cfg)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        println!("natter-netem proxy {} -> {}", p.local_addr(), args.upstream);
        let limit = async {
            match args.duration_s {
                Some(s) => tokio::time::sleep(Duration::from_secs_f64(s)).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = limit => {}
            _ = shutdown_signal() => {}
        }
        let report = p.stop().await;
        print_report(&report);
        if let Some(dir) = &args.stats_dir {
            write_stats(dir, &report)?;
            println!("statistics in {}", dir.display());
        }
        anyhow::Ok(())
    })
}

fn print_report(r: &Report) {
    for (name, s) in [("forward", &r.forward), ("backward", &r.backward)] {
        println!(
            "{name:<8} offered={} delivered={} lost_random={} lost_queue={} loss_pct={:.2} owd_p50_ms={} owd_p95_ms={} kbps={:.1}",
            s.offered_pkts,
            s.delivered_pkts,
            s.lost_random,
            s.lost_queue,
            s.loss_pct,
            fmt_opt(s.owd_p50_ms),
            fmt_opt(s.owd_p95_ms),
            s.delivered_kbps
        );
    }
}

fn fmt_opt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into())
}

fn write_stats(dir: &std::path::Path, r: &Report) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("forward.csv"), &r.forward_csv)?;
    std::fs::write(dir.join("backward.csv"), &r.backward_csv)?;
    let len = natter_netem::stats::INTERVAL;
    std::fs::write(
        dir.join("forward.svg"),
        natter_netem::plot::svg("forward (client -> upstream)", &r.forward_intervals, len),
    )?;
    std::fs::write(
        dir.join("backward.svg"),
        natter_netem::plot::svg("backward (upstream -> client)", &r.backward_intervals, len),
    )?;
    std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(r)?)?;
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    use natter_netem::topology::Topology;
    let s = Scenario::load(&args.scenario).map_err(anyhow::Error::msg)?;
    if args.commands.len() > s.hosts.len() {
        bail!(
            "{} commands for {} hosts ({})",
            args.commands.len(),
            s.hosts.len(),
            s.hosts
                .iter()
                .map(|h| h.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let duration = Duration::from_secs_f64(args.duration_s.or(s.duration_s).unwrap_or(60.0));
    let mut topo =
        Topology::build(&s).map_err(|e| anyhow::anyhow!("cannot build {}: {e}", s.name))?;
    let up: Vec<String> = topo
        .hosts
        .iter()
        .map(|h| format!("{}={}", h.name, h.addr))
        .collect();
    println!("hosts up: {}", up.join(" "));
    use std::io::Write;
    std::io::stdout().flush()?;
    let names: Vec<String> = s.hosts.iter().map(|h| h.name.clone()).collect();
    let mut running = Vec::new();
    for (name, cmd) in names.iter().zip(&args.commands) {
        let child = topo
            .spawn_sh(name, cmd)
            .with_context(|| format!("starting the command on {name}"))?;
        running.push((name.clone(), child.id()));
    }
    let deadline = std::time::Instant::now() + duration;
    let mut statuses: Vec<Option<std::process::ExitStatus>> = vec![None; running.len()];
    while std::time::Instant::now() < deadline && statuses.iter().any(|s| s.is_none()) {
        for (i, st) in statuses.iter_mut().enumerate() {
            if st.is_none() {
                *st = topo.try_wait(i)?;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = topo.stop_emulator();
    topo.teardown();
    let mut failed = Vec::new();
    for ((name, _), st) in running.iter().zip(&statuses) {
        match st {
            Some(s) if s.success() => println!("{name}: exited 0"),
            Some(s) => {
                println!("{name}: {s}");
                failed.push(name.clone());
            }
            None => println!("{name}: still running at the end, stopped"),
        }
    }
    if let Some(r) = &report {
        for p in &r.links {
            let s = &p.summary;
            println!(
                "{} {:<4} offered={} delivered={} loss_pct={:.2} owd_p50_ms={} kbps={:.1}",
                p.host,
                p.direction,
                s.offered_pkts,
                s.delivered_pkts,
                s.loss_pct,
                fmt_opt(s.owd_p50_ms),
                s.delivered_kbps
            );
        }
        if let Some(dir) = &args.stats_dir {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for p in &r.links {
                let stem = format!("{}-{}", p.host, p.direction);
                std::fs::write(dir.join(format!("{stem}.csv")), &p.csv)?;
                let title = format!("{}: {} {}link", s.name, p.host, p.direction);
                std::fs::write(
                    dir.join(format!("{stem}.svg")),
                    natter_netem::plot::svg(&title, &p.intervals, r.interval),
                )?;
            }
            std::fs::write(dir.join("summary.json"), serde_json::to_string_pretty(r)?)?;
            println!("statistics in {}", dir.display());
        }
    }
    if !failed.is_empty() {
        bail!("failed on {}", failed.join(", "));
    }
    Ok(())
}
