//! `natter`: the all-in-one server. Today it runs the messaging gateway; the SFU and TURN
//! server join it here as they land.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use natter_messaging::MessagingConfig;
use natter_messaging::config::{CodeDelivery, Limits, Rate, SyncMode};
use natter_sfu::config::SfuSettings;
use natter_turn::config::TurnConfig;

mod sfu;
mod sfu_remote;
use serde::{Deserialize, Serialize};

const ABOUT: &str =
    "natter: self-hosted end-to-end-encrypted messaging and calls (all-in-one server)";

const LONG_ABOUT: &str = "\
natter: self-hosted end-to-end-encrypted messaging and calls (all-in-one server).

Runs the messaging gateway (HTTP + WebSocket) with embedded storage (SQLite in WAL mode)
under --data-dir, a STUN/TURN server for calls (UDP and TCP on 127.0.0.1:3478 unless
--turn-listen says otherwise) and the SFU for group calls (UDP 127.0.0.1:7882 unless
--sfu-listen says otherwise). Every setting has a default that runs on localhost.

Settings are read, later ones winning, from: built-in defaults; the TOML file given with
--config (keys as in `natter --print-config`); NATTER_* environment variables; flags.
Each flag below names its environment variable.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct LogConfig {
    /// `text` (human-readable) or `json`.
    format: LogFormat,
    /// A tracing filter, e.g. `info` or `natter_messaging=debug,info`.
    filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            filter: "info".into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    log: LogConfig,
    messaging: MessagingConfig,
    turn: TurnConfig,
    sfu: SfuSettings,
}

#[derive(Debug, Parser)]
#[command(name = "natter", version, about = ABOUT, long_about = LONG_ABOUT)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short = 'c', env = "NATTER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,

    /// Log format [config: log.format; default: text]
    #[arg(long, env = "NATTER_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,

    /// Log filter, e.g. `debug` or `natter_messaging=debug,info` [config: log.filter; default: info]
    #[arg(long, env = "NATTER_LOG", value_name = "FILTER")]
    log: Option<String>,

    /// Address of the HTTP + WebSocket gateway [config: messaging.listen; default: 127.0.0.1:8080]
    #[arg(long, env = "NATTER_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Directory for the database and blobs [config: messaging.data_dir; default: ./natter-data]
    #[arg(long, env = "NATTER_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// `full`: every acknowledged write is fsynced (survives power loss); `normal`: survives a
    /// crash of natter but not of the machine [config: messaging.sync; default: full]
    #[arg(long, env = "NATTER_SYNC", value_name = "full|normal")]
    sync: Option<SyncMode>,

    /// Days an undelivered message (or an uploaded blob) is kept [config: messaging.queue_ttl_days; default: 30]
    #[arg(long, env = "NATTER_QUEUE_TTL_DAYS", value_name = "DAYS")]
    queue_ttl_days: Option<u32>,

    /// Queue items per batch when a device replays its backlog [config: messaging.replay_batch; default: 100]
    #[arg(long, env = "NATTER_REPLAY_BATCH", value_name = "N")]
    replay_batch: Option<u32>,

    /// Hours a client message id is remembered to drop duplicate sends (at least 24)
    /// [config: messaging.dedup_hours; default: 24]
    #[arg(long, env = "NATTER_DEDUP_HOURS", value_name = "HOURS")]
    dedup_hours: Option<u32>,

    /// A typing indicator lapses this long after its last refresh [config: messaging.typing_ttl_ms; default: 6000]
    #[arg(long, env = "NATTER_TYPING_TTL_MS", value_name = "MS")]
    typing_ttl_ms: Option<u32>,

    /// Most members of one group [config: messaging.max_group_members; default: 1024]
    #[arg(long, env = "NATTER_MAX_GROUP_MEMBERS", value_name = "N")]
    max_group_members: Option<u32>,

    /// Largest blob that may be uploaded, in bytes [config: messaging.max_blob_bytes; default: 104857600]
    #[arg(long, env = "NATTER_MAX_BLOB_BYTES", value_name = "BYTES")]
    max_blob_bytes: Option<u64>,

    /// A socket that sends no `hello` within this time is closed [config: messaging.hello_timeout_ms; default: 10000]
    #[arg(long, env = "NATTER_HELLO_TIMEOUT_MS", value_name = "MS")]
    hello_timeout_ms: Option<u64>,

    /// On shutdown, sockets get this long to drain [config: messaging.shutdown_grace_ms; default: 10000]
    #[arg(long, env = "NATTER_SHUTDOWN_GRACE_MS", value_name = "MS")]
    shutdown_grace_ms: Option<u64>,

    /// Where registration codes go: `log` (development: logged and returned in the response)
    /// or `webhook` (POSTed as JSON {"phone","code"} to --code-webhook-url)
    /// [config: messaging.code_delivery; default: log]
    #[arg(long, env = "NATTER_CODE_DELIVERY", value_name = "log|webhook")]
    code_delivery: Option<CodeDelivery>,

    /// URL receiving registration codes with --code-delivery webhook [config: messaging.code_webhook_url]
    #[arg(long, env = "NATTER_CODE_WEBHOOK_URL", value_name = "URL")]
    code_webhook_url: Option<String>,

    /// Seconds a registration or device-link code stays valid [config: messaging.code_ttl_s; default: 600]
    #[arg(long, env = "NATTER_CODE_TTL_S", value_name = "SECONDS")]
    code_ttl_s: Option<u32>,

    /// Sends per device, as BURST:PER_SECOND [config: messaging.limits.send; default: 200:50]
    #[arg(long, env = "NATTER_LIMIT_SEND", value_name = "BURST:RATE")]
    limit_send: Option<Rate>,

    /// Registration code requests per phone number [config: messaging.limits.register_phone; default: 3:0.000833333, one per 20 minutes]
    #[arg(long, env = "NATTER_LIMIT_REGISTER_PHONE", value_name = "BURST:RATE")]
    limit_register_phone: Option<Rate>,

    /// Registration, verification and link requests per client IP [config: messaging.limits.register_ip; default: 20:1]
    #[arg(long, env = "NATTER_LIMIT_REGISTER_IP", value_name = "BURST:RATE")]
    limit_register_ip: Option<Rate>,

    /// Prekey uploads per device [config: messaging.limits.prekeys; default: 10:0.2]
    #[arg(long, env = "NATTER_LIMIT_PREKEYS", value_name = "BURST:RATE")]
    limit_prekeys: Option<Rate>,

    /// Key claims and phone lookups per device [config: messaging.limits.directory; default: 60:2]
    #[arg(long, env = "NATTER_LIMIT_DIRECTORY", value_name = "BURST:RATE")]
    limit_directory: Option<Rate>,

    /// Uploaded blob bytes per device [config: messaging.limits.blob_bytes; default: 209715200:10485760]
    #[arg(long, env = "NATTER_LIMIT_BLOB_BYTES", value_name = "BURST:RATE")]
    limit_blob_bytes: Option<Rate>,

    /// Typing frames per device [config: messaging.limits.typing; default: 10:2]
    #[arg(long, env = "NATTER_LIMIT_TYPING", value_name = "BURST:RATE")]
    limit_typing: Option<Rate>,

    /// Any rate limit, as NAME=BURST:PER_SECOND; repeat the flag (or separate with commas in
    /// the variable) for several. The names and defaults are listed at the end of --help
    /// [config: messaging.limits.NAME]
    #[arg(
        long = "limit",
        env = "NATTER_LIMITS",
        value_name = "NAME=BURST:RATE",
        value_delimiter = ','
    )]
    limits: Vec<NamedRate>,

    /// Wrong registration-code guesses for one number per day, all networks together
    /// [config: messaging.max_wrong_codes_per_phone_day; default: 50]
    #[arg(long, env = "NATTER_MAX_WRONG_CODES_PER_PHONE_DAY", value_name = "N")]
    max_wrong_codes_per_phone_day: Option<u32>,

    /// Wrong registration-code guesses for one number per day from one network (an IPv4
    /// address or an IPv6 /64) [config: messaging.max_wrong_codes_per_network_day; default: 10]
    #[arg(long, env = "NATTER_MAX_WRONG_CODES_PER_NETWORK_DAY", value_name = "N")]
    max_wrong_codes_per_network_day: Option<u32>,

    /// Groups one user may create in any hour [config: messaging.max_groups_per_hour; default: 20]
    #[arg(long, env = "NATTER_MAX_GROUPS_PER_HOUR", value_name = "N")]
    max_groups_per_hour: Option<u32>,

    /// Blob bytes one user may have stored, uploads in progress included
    /// [config: messaging.max_stored_bytes_per_user; default: 2147483648]
    #[arg(long, env = "NATTER_MAX_STORED_BYTES_PER_USER", value_name = "BYTES")]
    max_stored_bytes_per_user: Option<u64>,

    /// Uploads one user may have in progress (each can be resumed for 24 h)
    /// [config: messaging.max_open_uploads; default: 8]
    #[arg(long, env = "NATTER_MAX_OPEN_UPLOADS", value_name = "N")]
    max_open_uploads: Option<u32>,

    /// Bytes of events and live messages that may wait for one connection; a client that
    /// falls further behind is disconnected (close code 4008)
    /// [config: messaging.max_outbound_bytes; default: 4194304]
    #[arg(long, env = "NATTER_MAX_OUTBOUND_BYTES", value_name = "BYTES")]
    max_outbound_bytes: Option<u64>,

    /// A connection whose socket takes nothing for this long is disconnected (close code
    /// 4008) [config: messaging.write_timeout_ms; default: 30000]
    #[arg(long, env = "NATTER_WRITE_TIMEOUT_MS", value_name = "MS")]
    write_timeout_ms: Option<u64>,

    /// HTTP request headers must arrive within this time of the connection opening, and an
    /// upload body must not pause longer [config: messaging.http_read_timeout_ms; default: 15000]
    #[arg(long, env = "NATTER_HTTP_READ_TIMEOUT_MS", value_name = "MS")]
    http_read_timeout_ms: Option<u64>,

    /// Admission control's target wait in the storage queue: once jobs wait longer for
    /// 100 ms on end, or a burst would take five times this to drain, requests are refused
    /// at once with `overloaded` [config: messaging.store_queue_target_ms; default: 10]
    #[arg(long, env = "NATTER_STORE_QUEUE_TARGET_MS", value_name = "MS")]
    store_queue_target_ms: Option<u64>,

    /// Admission control: most jobs in the storage queue [config: messaging.store_queue_max_jobs; default: 20000]
    #[arg(long, env = "NATTER_STORE_QUEUE_MAX_JOBS", value_name = "N")]
    store_queue_max_jobs: Option<u32>,

    /// DANGEROUS: allow development mode (--code-delivery log) on a non-loopback address.
    /// Registration codes are then returned to whoever asks, so anyone who can reach the
    /// server can register any phone number and take over its account. Only for closed
    /// test networks [config: messaging.allow_account_takeover_dev_mode; default: false]
    #[arg(
        long,
        env = "NATTER_ALLOW_ACCOUNT_TAKEOVER_DEV_MODE",
        value_name = "BOOL"
    )]
    allow_account_takeover_dev_mode: Option<bool>,

    /// A call rings this long before it counts as missed [config: messaging.calls.ring_timeout_ms; default: 45000]
    #[arg(long, env = "NATTER_RING_TIMEOUT_MS", value_name = "MS")]
    ring_timeout_ms: Option<u64>,

    /// STUN server URLs handed to clients, comma-separated [config: messaging.calls.stun_urls]
    #[arg(
        long,
        env = "NATTER_STUN_URLS",
        value_name = "URLS",
        value_delimiter = ','
    )]
    stun_urls: Option<Vec<String>>,

    /// TURN server URLs handed to clients with short-lived credentials, comma-separated,
    /// e.g. turn:turn.example.com:3478?transport=udp [config: messaging.calls.turn_urls]
    #[arg(
        long,
        env = "NATTER_TURN_URLS",
        value_name = "URLS",
        value_delimiter = ','
    )]
    turn_urls: Option<Vec<String>>,

    /// Secret shared with the TURN server for REST credentials (coturn's static-auth-secret)
    /// [config: messaging.calls.turn_secret]
    #[arg(
        long,
        env = "NATTER_TURN_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    turn_secret: Option<String>,

    /// Lifetime of minted TURN credentials in seconds [config: messaging.calls.turn_ttl_s; default: 3600]
    #[arg(long, env = "NATTER_TURN_TTL_S", value_name = "SECONDS")]
    turn_ttl_s: Option<u64>,

    /// Run the built-in STUN/TURN server [config: turn.enabled; default: true]. When it runs
    /// and messaging.calls.turn_urls is empty, clients are pointed at it, with a REST secret
    /// generated at start unless turn.rest_secret is set.
    #[arg(long, env = "NATTER_TURN_ENABLED", value_name = "BOOL")]
    turn_enabled: Option<bool>,

    /// Built-in TURN: addresses for its UDP and TCP listeners, comma-separated
    /// [config: turn.listen_udp and turn.listen_tcp; default: 127.0.0.1:3478]
    #[arg(
        long,
        env = "NATTER_TURN_LISTEN",
        value_name = "ADDRS",
        value_delimiter = ','
    )]
    turn_listen: Option<Vec<SocketAddr>>,

    /// Built-in TURN: addresses relays open on (one IPv4, one IPv6) [config: turn.relay_ips;
    /// default: 127.0.0.1]
    #[arg(
        long,
        env = "NATTER_TURN_RELAY_IPS",
        value_name = "IPS",
        value_delimiter = ','
    )]
    turn_relay_ips: Option<Vec<std::net::IpAddr>>,

    /// Built-in TURN: relay port range LOW-HIGH [config: turn.relay_ports; default: 49152-65535]
    #[arg(long, env = "NATTER_TURN_RELAY_PORTS", value_name = "LOW-HIGH")]
    turn_relay_ports: Option<String>,

    /// Built-in TURN: peer networks (CIDR) it may relay to despite the default refusal of
    /// non-public ranges (loopback, private, CGNAT, link-local, NAT64, ...: natter-turn
    /// --help lists them), e.g. 127.0.0.0/8 for calls on one machine [config: turn.allow_peers]
    #[arg(
        long,
        env = "NATTER_TURN_ALLOW_PEERS",
        value_name = "CIDRS",
        value_delimiter = ','
    )]
    turn_allow_peers: Option<Vec<String>>,

    /// Run the SFU for group calls in-process [config: sfu.enabled; default: true]
    #[arg(long, env = "NATTER_SFU_ENABLED", value_name = "BOOL")]
    sfu_enabled: Option<bool>,

    /// SFU: the UDP socket all group-call media goes through [config: sfu.listen;
    /// default: 127.0.0.1:7882]
    #[arg(long, env = "NATTER_SFU_LISTEN", value_name = "ADDR")]
    sfu_listen: Option<SocketAddr>,

    /// SFU: the address clients send media to, when it is not --sfu-listen's (behind a NAT)
    /// [config: sfu.public_addr]
    #[arg(long, env = "NATTER_SFU_PUBLIC_ADDR", value_name = "ADDR")]
    sfu_public_addr: Option<SocketAddr>,

    /// SFU: most participants in one group call [config: sfu.max_participants; default: 50]
    #[arg(long, env = "NATTER_SFU_MAX_PARTICIPANTS", value_name = "N")]
    sfu_max_participants: Option<usize>,

    /// SFU: the secret room tokens are signed with, shared with a standalone natter-sfu;
    /// generated at start unless set [config: sfu.token_secret]
    #[arg(
        long,
        env = "NATTER_SFU_TOKEN_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    sfu_token_secret: Option<String>,

    /// SFU: use a standalone natter-sfu at this control URL (ws://HOST:7883/v1/control)
    /// instead of running one in-process; needs --sfu-token-secret [config: sfu.url]
    #[arg(long, env = "NATTER_SFU_URL", value_name = "URL")]
    sfu_url: Option<String>,

    /// SFU: write every forwarded payload, as the SFU can read it (after SRTP), to FILE, to
    /// check what it sees of end-to-end encrypted media [config: sfu.capture]
    #[arg(long, value_name = "FILE")]
    sfu_capture: Option<PathBuf>,
}

/// `NAME=BURST:RATE` for `--limit`.
#[derive(Debug, Clone, PartialEq)]
struct NamedRate(String, Rate);

impl std::str::FromStr for NamedRate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, rate) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?} is not NAME=BURST:RATE (e.g. send=200:50)"))?;
        let name = name.trim();
        if !Limits::NAMES.contains(&name) {
            return Err(format!(
                "{name:?} is not a limit; the limits are: {}",
                Limits::NAMES.join(", ")
            ));
        }
        Ok(NamedRate(name.to_owned(), rate.parse()?))
    }
}

/// The end of `--help`: every rate limit with its default.
fn limits_help() -> String {
    format!(
        "Rate limits (--limit NAME=BURST:PER_SECOND): each is a token bucket of BURST tokens\n\
         refilled at PER_SECOND; a request over it gets `rate_limited` with a retry-after.\n\
         Defaults are far above what a real user does.\n\n{}",
        Limits::describe()
    )
}

/// Copies every flag (or environment variable) that was given onto the configuration.
fn apply(cli: Cli, cfg: &mut Config) {
    macro_rules! set {
        ($($flag:ident => $($field:ident).+;)*) => {
            $(if let Some(v) = cli.$flag { cfg.$($field).+ = v; })*
        };
    }
    set! {
        log_format => log.format;
        log => log.filter;
        listen => messaging.listen;
        data_dir => messaging.data_dir;
        sync => messaging.sync;
        queue_ttl_days => messaging.queue_ttl_days;
        replay_batch => messaging.replay_batch;
        dedup_hours => messaging.dedup_hours;
        typing_ttl_ms => messaging.typing_ttl_ms;
        max_group_members => messaging.max_group_members;
        max_blob_bytes => messaging.max_blob_bytes;
        hello_timeout_ms => messaging.hello_timeout_ms;
        shutdown_grace_ms => messaging.shutdown_grace_ms;
        code_delivery => messaging.code_delivery;
        code_ttl_s => messaging.code_ttl_s;
        max_wrong_codes_per_phone_day => messaging.max_wrong_codes_per_phone_day;
        max_wrong_codes_per_network_day => messaging.max_wrong_codes_per_network_day;
        max_groups_per_hour => messaging.max_groups_per_hour;
        max_stored_bytes_per_user => messaging.max_stored_bytes_per_user;
        max_open_uploads => messaging.max_open_uploads;
        max_outbound_bytes => messaging.max_outbound_bytes;
        write_timeout_ms => messaging.write_timeout_ms;
        http_read_timeout_ms => messaging.http_read_timeout_ms;
        store_queue_target_ms => messaging.store_queue_target_ms;
        store_queue_max_jobs => messaging.store_queue_max_jobs;
        allow_account_takeover_dev_mode => messaging.allow_account_takeover_dev_mode;
        limit_send => messaging.limits.send;
        limit_register_phone => messaging.limits.register_phone;
        limit_register_ip => messaging.limits.register_ip;
        limit_prekeys => messaging.limits.prekeys;
        limit_directory => messaging.limits.directory;
        limit_blob_bytes => messaging.limits.blob_bytes;
        limit_typing => messaging.limits.typing;
        ring_timeout_ms => messaging.calls.ring_timeout_ms;
        stun_urls => messaging.calls.stun_urls;
        turn_urls => messaging.calls.turn_urls;
        turn_ttl_s => messaging.calls.turn_ttl_s;
        turn_enabled => turn.enabled;
        turn_relay_ips => turn.relay_ips;
        turn_relay_ports => turn.relay_ports;
        turn_allow_peers => turn.allow_peers;
        sfu_enabled => sfu.enabled;
        sfu_listen => sfu.listen;
        sfu_max_participants => sfu.max_participants;
    }
    if let Some(a) = cli.sfu_public_addr {
        cfg.sfu.public_addr = Some(a);
    }
    if let Some(s) = cli.sfu_token_secret {
        cfg.sfu.token_secret = Some(s);
    }
    if let Some(c) = cli.sfu_capture {
        cfg.sfu.capture = Some(c);
    }
    if let Some(u) = cli.sfu_url {
        cfg.sfu.url = Some(u);
    }
    for NamedRate(name, rate) in cli.limits {
        *cfg.messaging
            .limits
            .get_mut(&name)
            .expect("names are checked when parsed") = rate;
    }
    if let Some(secret) = cli.turn_secret {
        cfg.messaging.calls.turn_secret = Some(secret);
    }
    // One flag sets both listener lists.
    if let Some(v) = cli.turn_listen {
        cfg.turn.listen_udp = v.clone();
        cfg.turn.listen_tcp = v;
    }
    if let Some(url) = cli.code_webhook_url {
        cfg.messaging.code_webhook_url = Some(url);
    }
}

fn load_config(cli: Cli) -> Result<(Config, bool)> {
    let mut cfg = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str::<Config>(&text)
                .with_context(|| format!("invalid config file {}", path.display()))?
        }
        None => Config::default(),
    };
    let print = cli.print_config;
    apply(cli, &mut cfg);
    cfg.messaging
        .validate()
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Ok((cfg, print))
}

fn init_logging(log: &LogConfig) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&log.filter)
        .with_context(|| format!("invalid log filter {:?}", log.filter))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> Result<()> {
    let matches = Cli::command().after_long_help(limits_help()).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let (cfg, print) = load_config(cli)?;
    if print {
        print!("{}", toml::to_string_pretty(&cfg)?);
        return Ok(());
    }
    init_logging(&cfg.log)?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cfg))
}

async fn run(mut cfg: Config) -> Result<()> {
    if cfg.messaging.code_delivery == CodeDelivery::Log {
        tracing::warn!(
            "development mode: registration codes are logged and returned in responses; \
             set --code-delivery webhook for real users"
        );
    }
    let turn = start_turn(&mut cfg).await?;
    let remote = match (&cfg.sfu.url, &cfg.sfu.token_secret) {
        (Some(url), Some(secret)) if cfg.sfu.enabled => Some((
            url.clone(),
            sfu_remote::RemoteSfu::start(url.clone(), secret.as_bytes()),
        )),
        (Some(_), None) if cfg.sfu.enabled => {
            anyhow::bail!("sfu.url needs sfu.token_secret, the secret the natter-sfu there checks")
        }
        _ => None,
    };
    let sfu = if cfg.sfu.enabled && remote.is_none() {
        Some(sfu::InProcessSfu::start(&mut cfg.sfu).await?)
    } else {
        None
    };
    // One /metrics: the gateway's, then the TURN server's and the SFU's.
    let turn_stats = turn.as_ref().map(|(t, _)| t.clone());
    let sfu_stats = sfu.as_ref().map(|s| s.handle.clone());
    let extra: natter_messaging::ExtraMetrics = std::sync::Arc::new(move || {
        let mut text = String::new();
        if let Some(t) = &turn_stats {
            let (stats, n) = t.stats();
            text.push_str(&natter_turn::config::render_metrics(&stats, n));
        }
        if let Some(s) = &sfu_stats {
            text.push_str(&s.render_metrics());
        }
        text
    });
    let mut notice_slot = None;
    let mut remote_url = None;
    let access = match remote {
        Some((url, (link, slot))) => {
            notice_slot = Some(slot);
            remote_url = Some(url);
            Some(natter_messaging::rooms::SfuAccess {
                link: std::sync::Arc::new(link),
                token_secret: cfg
                    .sfu
                    .token_secret
                    .clone()
                    .unwrap_or_default()
                    .into_bytes(),
            })
        }
        None => sfu.as_ref().map(|s| s.access(&cfg.sfu)),
    };
    let attached = natter_messaging::Attached {
        extra_metrics: Some(extra),
        sfu: access,
    };
    let data_dir = cfg.messaging.data_dir.clone();
    let server = natter_messaging::Server::start_with(cfg.messaging, attached)
        .await
        .context("cannot start the messaging gateway")?;
    let sfu_addr = sfu.as_ref().map(|s| s.handle.local_addr());
    if let Some(s) = sfu {
        s.relay(server.sfu_notices());
    }
    if let Some(slot) = notice_slot {
        let _ = slot.set(server.sfu_notices());
    }
    let addr = server.local_addr();
    let mut out = std::io::stdout().lock();
    writeln!(out, "natter {} is running", env!("CARGO_PKG_VERSION"))?;
    writeln!(out, "  http       http://{addr}/")?;
    writeln!(out, "  websocket  ws://{addr}/v1/ws")?;
    writeln!(out, "  metrics    http://{addr}/metrics")?;
    writeln!(out, "  health     http://{addr}/healthz")?;
    if let Some((_, bound)) = &turn {
        for a in &bound.udp {
            writeln!(out, "  turn       turn:{a}?transport=udp")?;
        }
        for a in &bound.tcp {
            writeln!(out, "  turn       turn:{a}?transport=tcp")?;
        }
    }
    if let Some(a) = sfu_addr {
        writeln!(out, "  sfu        udp:{a} (group calls)")?;
    }
    if let Some(u) = &remote_url {
        writeln!(out, "  sfu        {u} (natter-sfu, group calls)")?;
    }
    writeln!(out, "  data       {} (SQLite, WAL)", data_dir.display())?;
    writeln!(out, "press Ctrl-C to stop")?;
    out.flush()?;
    drop(out);
    shutdown_signal().await;
    tracing::info!("shutting down: draining sockets");
    server.shutdown().await;
    if let Some((t, _)) = turn {
        t.shutdown();
    }
    Ok(())
}

/// Starts the built-in TURN server if enabled, and points calls at it when no TURN servers
/// are configured: one REST secret, generated here unless set, serves both.
async fn start_turn(cfg: &mut Config) -> Result<Option<(natter_turn::Turn, natter_turn::Bound)>> {
    if !cfg.turn.enabled {
        return Ok(None);
    }
    let calls = &mut cfg.messaging.calls;
    let secret = match (&cfg.turn.rest_secret, &calls.turn_secret) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => s.clone(),
        (None, None) => {
            let mut k = [0u8; 24];
            getrandom::fill(&mut k).map_err(|e| anyhow::anyhow!("random secret: {e}"))?;
            k.iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    cfg.turn.rest_secret = Some(secret.clone());
    let (tcfg, listeners) = cfg
        .turn
        .build()
        .map_err(|e| anyhow::anyhow!("invalid [turn] configuration: {e}"))?;
    // The relay gets a thread of its own, off the gateway's workers.
    let (turn, bound) = natter_turn::Turn::start_on_own_thread(tcfg, listeners).context(
        "cannot start the built-in TURN server (another TURN server on 3478? \
             use --turn-listen ADDR, or --turn-enabled false)",
    )?;
    if calls.turn_urls.is_empty() {
        calls.turn_urls = bound
            .udp
            .iter()
            .map(|a| format!("turn:{a}?transport=udp"))
            .chain(bound.tcp.iter().map(|a| format!("turn:{a}?transport=tcp")))
            .collect();
        calls.turn_secret = Some(secret);
    }
    Ok(Some((turn, bound)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_file_parses_and_matches_defaults() {
        let text = include_str!("../natter.example.toml");
        let cfg: Config = toml::from_str(text).unwrap();
        assert_eq!(cfg.messaging, MessagingConfig::default());
        assert_eq!(cfg.turn, TurnConfig::default());
        assert_eq!(cfg.sfu, SfuSettings::default());
    }

    #[test]
    fn flags_override_file_values() {
        let cli = Cli::parse_from(["natter", "--listen", "127.0.0.1:9", "--limit-send", "5:1"]);
        let mut cfg = Config::default();
        apply(cli, &mut cfg);
        assert_eq!(cfg.messaging.listen, "127.0.0.1:9".parse().unwrap());
        assert_eq!(cfg.messaging.limits.send, Rate::new(5.0, 1.0));
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        assert!(toml::from_str::<Config>("[messaging]\nlisen = \"x\"").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn any_limit_can_be_set_by_name_and_unknown_names_are_refused() {
        let cli = Cli::parse_from([
            "natter",
            "--limit",
            "group_create=2:0.5",
            "--limit",
            "call_offer_pair=1:0.01,ice_servers=3:1",
        ]);
        let mut cfg = Config::default();
        apply(cli, &mut cfg);
        assert_eq!(cfg.messaging.limits.group_create, Rate::new(2.0, 0.5));
        assert_eq!(cfg.messaging.limits.call_offer_pair, Rate::new(1.0, 0.01));
        assert_eq!(cfg.messaging.limits.ice_servers, Rate::new(3.0, 1.0));
        let err = Cli::try_parse_from(["natter", "--limit", "sned=1:1"]).unwrap_err();
        assert!(err.to_string().contains("is not a limit"), "{err}");
        for name in Limits::NAMES {
            assert!(limits_help().contains(name), "{name} is documented");
        }
    }
}
