//! `natter-sfu`: natter's SFU on its own host. (The all-in-one `natter` runs the same SFU
//! in-process.) Gateways reach it over the control link (`natter --sfu-url`), with the
//! room-token secret shared.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use natter_sfu::config::SfuSettings;
use natter_sfu::{control, shell};
use serde::Deserialize;

const LONG_ABOUT: &str = "\
natter-sfu: the selective forwarding unit for natter's group calls, on its own.

Every participant's media goes through one UDP socket (--listen); the address clients send
to is --public-addr when that is not the listening one (behind a NAT). Gateways connect to
the control link (--control-listen, WebSocket at /v1/control) with a key derived from the
room-token secret, which must be the one the gateways mint room tokens with: start them
with `natter --sfu-url ws://HOST:PORT/v1/control --sfu-token-secret SECRET`. The control
listener also serves /metrics (natter_sfu_*) and /healthz.

Settings come from the [sfu] section of --config (the same file natter reads), then
NATTER_SFU_* variables, then flags.";

#[derive(Debug, Parser)]
#[command(name = "natter-sfu", version, about = "natter's SFU for group calls", long_about = LONG_ABOUT)]
struct Cli {
    /// TOML file with an [sfu] section.
    #[arg(long, short = 'c', env = "NATTER_CONFIG")]
    config: Option<PathBuf>,
    /// The UDP socket for all media [config: sfu.listen; default: 127.0.0.1:7882]
    #[arg(long, env = "NATTER_SFU_LISTEN")]
    listen: Option<SocketAddr>,
    /// The address clients send media to, when not --listen's [config: sfu.public_addr]
    #[arg(long, env = "NATTER_SFU_PUBLIC_ADDR")]
    public_addr: Option<SocketAddr>,
    /// Most participants in one room [config: sfu.max_participants; default: 50]
    #[arg(long, env = "NATTER_SFU_MAX_PARTICIPANTS")]
    max_participants: Option<usize>,
    /// The room-token secret shared with the gateways (at least 16 characters; required)
    /// [config: sfu.token_secret]
    #[arg(long, env = "NATTER_SFU_TOKEN_SECRET", hide_env_values = true)]
    token_secret: Option<String>,
    /// Where gateways connect (TCP: WebSocket /v1/control, /metrics, /healthz)
    /// [default: 127.0.0.1:7883]
    #[arg(long, env = "NATTER_SFU_CONTROL_LISTEN")]
    control_listen: Option<SocketAddr>,
    /// Write every forwarded payload, as the SFU can read it (after SRTP), to FILE: to
    /// check what the SFU sees of end-to-end encrypted media [config: sfu.capture]
    #[arg(long, value_name = "FILE")]
    capture: Option<PathBuf>,
    /// A tracing filter, e.g. `info` or `natter_sfu=debug` [default: info]
    #[arg(long, env = "NATTER_LOG", default_value = "info")]
    log: String,
}

/// The one section of the shared file this binary reads; the rest is natter's.
#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    sfu: SfuSettings,
}

fn settings(cli: &Cli) -> Result<SfuSettings> {
    let mut s = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            let file: toml::Table = toml::from_str(&text)
                .with_context(|| format!("invalid config file {}", path.display()))?;
            let sfu = file
                .get("sfu")
                .cloned()
                .unwrap_or(toml::Value::Table(Default::default()));
            File {
                sfu: sfu
                    .try_into()
                    .with_context(|| format!("invalid [sfu] section in {}", path.display()))?,
            }
            .sfu
        }
        None => SfuSettings::default(),
    };
    if let Some(v) = cli.listen {
        s.listen = v;
    }
    if let Some(v) = cli.public_addr {
        s.public_addr = Some(v);
    }
    if let Some(v) = cli.max_participants {
        s.max_participants = v;
    }
    if let Some(v) = &cli.token_secret {
        s.token_secret = Some(v.clone());
    }
    if let Some(v) = &cli.capture {
        s.capture = Some(v.clone());
    }
    Ok(s)
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
    let s = settings(&cli)?;
    let (cfg, bind) = s
        .build()
        .map_err(|e| anyhow::anyhow!("invalid [sfu] configuration: {e}"))?;
    let secret = cfg.token_secret.clone();
    let (sfu, events, _task) = shell::spawn(cfg, Some(bind))
        .await
        .with_context(|| format!("cannot bind the media socket UDP {bind}"))?;
    let control_at = cli
        .control_listen
        .unwrap_or_else(control::default_control_listen);
    let listener = tokio::net::TcpListener::bind(control_at)
        .await
        .with_context(|| format!("cannot listen for gateways on {control_at}"))?;
    let control_at = listener.local_addr()?;
    println!("natter-sfu {} is running", env!("CARGO_PKG_VERSION"));
    println!("  media      udp:{}", sfu.local_addr());
    println!("  control    ws://{control_at}/v1/control");
    println!("  metrics    http://{control_at}/metrics");
    tokio::select! {
        r = control::serve(listener, sfu, events, &secret) => r.context("control listener")?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
