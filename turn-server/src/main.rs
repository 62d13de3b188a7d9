//! `natter-turn`: natter's STUN/TURN server on its own. (The all-in-one `natter` runs the
//! same server in-process.)

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Parser;
use natter_turn::Turn;
use natter_turn::config::{TurnConfig, render_metrics};

const LONG_ABOUT: &str = "\
natter-turn: STUN/TURN server (RFC 8489 / RFC 8656) for natter calls.

Relays UDP for clients connected over UDP, TCP or TLS. Credentials are static long-term
users (--user name:password) and/or coturn-compatible REST credentials (--rest-secret, the
secret natter's messaging server mints short-lived credentials with). Relaying to addresses
that are no peer on the public Internet is refused unless --allow-peer lists them: IPv4
this-network, private, CGNAT (100.64.0.0/10, with cloud metadata services), loopback,
link-local, 192.0.0.0/24, benchmarking (198.18.0.0/15), multicast, reserved and broadcast;
IPv6 IPv4-compatible (::/96), NAT64 (64:ff9b::/96, 64:ff9b:1::/48), unique-local,
link-local, site-local and multicast. IPv4-mapped and 6to4 addresses count as the IPv4
address inside them, and a NAT64 address must also pass for the IPv4 address it leads to.

Settings come from the [turn] section of --config (the same file natter reads), then
NATTER_TURN_* variables, then flags.";

#[derive(Debug, Parser)]
#[command(name = "natter-turn", version, about = "natter's STUN/TURN server", long_about = LONG_ABOUT)]
struct Cli {
    /// TOML file with a [turn] section.
    #[arg(long, short = 'c', env = "NATTER_CONFIG")]
    config: Option<PathBuf>,
    /// UDP listeners, comma-separated [default: 127.0.0.1:3478]
    #[arg(long, env = "NATTER_TURN_LISTEN_UDP", value_delimiter = ',')]
    listen_udp: Option<Vec<SocketAddr>>,
    /// TCP listeners, comma-separated [default: 127.0.0.1:3478]
    #[arg(long, env = "NATTER_TURN_LISTEN_TCP", value_delimiter = ',')]
    listen_tcp: Option<Vec<SocketAddr>>,
    /// TLS listeners, comma-separated (with --tls-cert and --tls-key)
    #[arg(long, env = "NATTER_TURN_LISTEN_TLS", value_delimiter = ',')]
    listen_tls: Option<Vec<SocketAddr>>,
    /// PEM certificate chain for TLS
    #[arg(long, env = "NATTER_TURN_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for TLS
    #[arg(long, env = "NATTER_TURN_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Addresses to open relays on (one IPv4, one IPv6), comma-separated [default: 127.0.0.1]
    #[arg(long, env = "NATTER_TURN_RELAY_IPS", value_delimiter = ',')]
    relay_ips: Option<Vec<IpAddr>>,
    /// Relay port range LOW-HIGH [default: 49152-65535]
    #[arg(long, env = "NATTER_TURN_RELAY_PORTS")]
    relay_ports: Option<String>,
    /// Authentication realm [default: natter]
    #[arg(long, env = "NATTER_TURN_REALM")]
    realm: Option<String>,
    /// A static user, name:password (repeat for more)
    #[arg(
        long = "user",
        env = "NATTER_TURN_USERS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    users: Option<Vec<String>>,
    /// REST secret shared with natter (coturn's static-auth-secret)
    #[arg(long, env = "NATTER_TURN_SECRET", hide_env_values = true)]
    rest_secret: Option<String>,
    /// Allocations per user at once; a REST user is the part of expiry:user after the
    /// colon, so fresh credentials of one user share its quota [default: 10]
    #[arg(long, env = "NATTER_TURN_USER_QUOTA")]
    user_quota: Option<usize>,
    /// Allocations in all [default: 10000]
    #[arg(long, env = "NATTER_TURN_TOTAL_QUOTA")]
    total_quota: Option<usize>,
    /// Relayed bytes per second per allocation, both ways together (1000000 is 8 Mbit/s,
    /// enough for a 1:1 video call); 0 = no cap [default: 1000000]
    #[arg(long, env = "NATTER_TURN_BANDWIDTH")]
    bandwidth_bytes_per_s: Option<u64>,
    /// Answers a second to UDP requests that did not authenticate (Binding, 401/438
    /// challenges, errors), per source address (an IPv6 /64) with a one-second burst;
    /// more are dropped unanswered, as their source may be forged to aim them at a
    /// victim. 0 = no limit [default: 20]
    #[arg(long, env = "NATTER_TURN_UNAUTH_ANSWERS_PER_S")]
    unauth_answers_per_s: Option<u32>,
    /// TCP/TLS: seconds a connection may go without a complete STUN or ChannelData
    /// message, from when it connects, before it is closed; one holding a live allocation
    /// stays open until that expires (refreshes count). A client that leaves more than 256
    /// KiB or 1024 messages unread in the server (beyond its socket buffer) is cut off at
    /// once. At least 1 [default: 30]
    #[arg(long, env = "NATTER_TURN_TCP_IDLE_TIMEOUT_S")]
    tcp_idle_timeout_s: Option<u64>,
    /// Peer networks (CIDR) allowed despite the default denial, comma-separated
    #[arg(
        long = "allow-peer",
        env = "NATTER_TURN_ALLOW_PEERS",
        value_delimiter = ','
    )]
    allow_peers: Option<Vec<String>>,
    /// Peer networks (CIDR) always refused, comma-separated
    #[arg(
        long = "deny-peer",
        env = "NATTER_TURN_DENY_PEERS",
        value_delimiter = ','
    )]
    deny_peers: Option<Vec<String>>,
    /// Where /metrics and /healthz are served; empty to disable [default: 127.0.0.1:9641]
    #[arg(long, env = "NATTER_TURN_METRICS", default_value = "127.0.0.1:9641")]
    metrics: String,
}

fn load(cli: &Cli) -> anyhow::Result<TurnConfig> {
    let mut t = match &cli.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)?;
            // Only the [turn] section matters here; the rest is natter's.
            let v: toml::Value = toml::from_str(&text)?;
            match v.get("turn") {
                Some(t) => t.clone().try_into::<TurnConfig>()?,
                None => TurnConfig::default(),
            }
        }
        None => TurnConfig::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $(if let Some(v) = cli.$f.clone() { t.$f = v; })* };
    }
    set!(
        listen_udp,
        listen_tcp,
        listen_tls,
        relay_ips,
        relay_ports,
        realm,
        users,
        user_quota,
        total_quota,
        bandwidth_bytes_per_s,
        unauth_answers_per_s,
        tcp_idle_timeout_s,
        allow_peers,
        deny_peers
    );
    if cli.tls_cert.is_some() {
        t.tls_cert = cli.tls_cert.clone();
    }
    if cli.tls_key.is_some() {
        t.tls_key = cli.tls_key.clone();
    }
    if cli.rest_secret.is_some() {
        t.rest_secret = cli.rest_secret.clone();
    }
    Ok(t)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let t = load(&cli)?;
    let (cfg, listeners) = t
        .build()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    // The relay runs on a thread of its own; this runtime only serves metrics and signals.
    let (turn, bound) = Turn::start_on_own_thread(cfg, listeners)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        for a in &bound.udp {
            println!("stun/turn udp  {a}");
        }
        for a in &bound.tcp {
            println!("stun/turn tcp  {a}");
        }
        for a in &bound.tls {
            println!("turns tls      {a}");
        }
        if !cli.metrics.is_empty() {
            let addr: SocketAddr = cli.metrics.parse()?;
            let l = tokio::net::TcpListener::bind(addr).await?;
            println!("metrics        http://{}/metrics", l.local_addr()?);
            tokio::spawn(serve_metrics(l, turn.clone()));
        }
        use std::io::Write;
        std::io::stdout().flush()?;
        shutdown_signal().await;
        turn.shutdown();
        anyhow::Ok(())
    })
}

/// A minimal HTTP responder for /metrics and /healthz.
async fn serve_metrics(l: tokio::net::TcpListener, turn: Turn) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((mut s, _)) = l.accept().await else {
            continue;
        };
        let turn = turn.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics") {
                let (stats, n) = turn.stats();
                ("200 OK", render_metrics(&stats, n))
            } else if req.starts_with("GET /healthz") {
                ("200 OK", "ok\n".to_owned())
            } else {
                ("404 Not Found", "not found\n".to_owned())
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        });
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
