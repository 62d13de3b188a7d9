//! TURN settings as they appear in the `[turn]` section of natter's TOML file (and as the
//! `natter-turn` binary's flags), turned into the core's [`Config`] and the listeners.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::server::{Config, IpNet};
use crate::shell::Listeners;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TurnConfig {
    /// Run the TURN server (in the all-in-one `natter`).
    pub enabled: bool,
    /// UDP listeners (STUN and TURN).
    pub listen_udp: Vec<SocketAddr>,
    /// TCP listeners.
    pub listen_tcp: Vec<SocketAddr>,
    /// TLS listeners (need `tls_cert` and `tls_key`).
    pub listen_tls: Vec<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Addresses relays are opened on (at most one IPv4 and one IPv6).
    pub relay_ips: Vec<IpAddr>,
    /// Relay port range, `LOW-HIGH`.
    pub relay_ports: String,
    pub realm: String,
    /// Static long-term users, `name:password`.
    pub users: Vec<String>,
    /// coturn-compatible REST secret (`static-auth-secret`).
    pub rest_secret: Option<String>,
    /// Allocations per user at once (a REST user is the `user` of `expiry:user`).
    pub user_quota: usize,
    pub total_quota: usize,
    /// Relayed bytes per second per allocation, both ways together; 0 = no cap.
    pub bandwidth_bytes_per_s: u64,
    pub default_lifetime_s: u64,
    pub max_lifetime_s: u64,
    pub nonce_lifetime_s: u64,
    /// Answers a second per source address to unauthenticated UDP requests; 0 = no limit.
    pub unauth_answers_per_s: u32,
    /// Seconds a TCP/TLS connection may go without a complete message (one with a live
    /// allocation: until it expires); at least 1.
    pub tcp_idle_timeout_s: u64,
    /// Peer networks allowed despite the default denial (CIDR), e.g. `10.0.0.0/8` on a LAN.
    pub allow_peers: Vec<String>,
    /// Peer networks always refused (CIDR).
    pub deny_peers: Vec<String>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            enabled: true,
            listen_udp: vec!["127.0.0.1:3478".parse().unwrap()],
            listen_tcp: vec!["127.0.0.1:3478".parse().unwrap()],
            listen_tls: Vec::new(),
            tls_cert: None,
            tls_key: None,
            relay_ips: vec!["127.0.0.1".parse().unwrap()],
            relay_ports: "49152-65535".into(),
            realm: "natter".into(),
            users: Vec::new(),
            rest_secret: None,
            user_quota: 10,
            total_quota: 10_000,
            bandwidth_bytes_per_s: crate::server::DEFAULT_BANDWIDTH_BYTES_PER_S,
            default_lifetime_s: 600,
            max_lifetime_s: 3600,
            nonce_lifetime_s: 600,
            unauth_answers_per_s: crate::server::DEFAULT_UNAUTH_ANSWERS_PER_S,
            tcp_idle_timeout_s: 30,
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
        }
    }
}

fn parse_nets(list: &[String]) -> Result<Vec<IpNet>, String> {
    list.iter().map(|s| s.parse()).collect()
}

impl TurnConfig {
    /// Checks the settings and builds the core's configuration and the listeners.
    pub fn build(&self) -> Result<(Config, Listeners), String> {
        let (lo, hi) = self
            .relay_ports
            .split_once('-')
            .and_then(|(a, b)| Some((a.trim().parse::<u16>().ok()?, b.trim().parse::<u16>().ok()?)))
            .filter(|(a, b)| a <= b && *a >= 1024)
            .ok_or_else(|| {
                format!(
                    "relay_ports {:?} is not LOW-HIGH within 1024-65535",
                    self.relay_ports
                )
            })?;
        let mut cfg = Config {
            realm: self.realm.clone(),
            rest_secret: self
                .rest_secret
                .clone()
                .filter(|s| !s.is_empty())
                .map(String::into_bytes),
            relay_v4: None,
            relay_v6: None,
            relay_ports: (lo, hi),
            default_lifetime: Duration::from_secs(self.default_lifetime_s.max(60)),
            max_lifetime: Duration::from_secs(self.max_lifetime_s.max(self.default_lifetime_s)),
            nonce_lifetime: Duration::from_secs(self.nonce_lifetime_s.max(30)),
            user_quota: self.user_quota.max(1),
            total_quota: self.total_quota.max(1),
            bandwidth_bytes_per_s: self.bandwidth_bytes_per_s,
            unauth_answers_per_s: self.unauth_answers_per_s,
            stream_idle_timeout: Duration::from_secs(self.tcp_idle_timeout_s.max(1)),
            allowed_peers: parse_nets(&self.allow_peers)?,
            denied_peers: parse_nets(&self.deny_peers)?,
            ..Config::default()
        };
        for ip in &self.relay_ips {
            match ip {
                IpAddr::V4(v4) if cfg.relay_v4.is_none() => cfg.relay_v4 = Some(*v4),
                IpAddr::V6(v6) if cfg.relay_v6.is_none() => cfg.relay_v6 = Some(*v6),
                _ => {
                    return Err(format!(
                        "relay_ips: at most one IPv4 and one IPv6 address ({ip})"
                    ));
                }
            }
        }
        if cfg.relay_v4.is_none() && cfg.relay_v6.is_none() {
            return Err("relay_ips: at least one address is needed".into());
        }
        for u in &self.users {
            let (name, pass) = u
                .split_once(':')
                .filter(|(n, p)| !n.is_empty() && !p.is_empty())
                .ok_or_else(|| format!("users: {u:?} is not name:password"))?;
            cfg.users.insert(name.to_owned(), pass.to_owned());
        }
        if cfg.users.is_empty() && cfg.rest_secret.is_none() {
            return Err("no credentials: set rest_secret and/or users".into());
        }
        let mut listeners = Listeners {
            udp: self.listen_udp.clone(),
            tcp: self.listen_tcp.clone(),
            tls: Vec::new(),
        };
        if !self.listen_tls.is_empty() {
            let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
                return Err("listen_tls needs tls_cert and tls_key".into());
            };
            let tls = Arc::new(tls_config(cert, key)?);
            for a in &self.listen_tls {
                listeners.tls.push((*a, tls.clone()));
            }
        }
        Ok((cfg, listeners))
    }
}

/// A rustls server configuration from PEM files.
pub fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::rustls::ServerConfig, String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    tls_config_from(certs, key)
}

pub fn tls_config_from(
    certs: Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>,
    key: tokio_rustls::rustls::pki_types::PrivateKeyDer<'static>,
) -> Result<tokio_rustls::rustls::ServerConfig, String> {
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate: {e}"))
}

/// Prometheus text for the TURN counters (`natter_turn_*`).
pub fn render_metrics(stats: &crate::server::Stats, allocations: usize) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let mut line = |name: &str, kind: &str, help: &str, v: f64| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    line(
        "natter_turn_allocations",
        "gauge",
        "Allocations now",
        allocations as f64,
    );
    line(
        "natter_turn_allocations_created_total",
        "counter",
        "Allocations created",
        stats.allocations_created as f64,
    );
    line(
        "natter_turn_relayed_packets_to_peers_total",
        "counter",
        "Packets relayed from clients to peers",
        stats.packets_to_peers as f64,
    );
    line(
        "natter_turn_relayed_bytes_to_peers_total",
        "counter",
        "Bytes relayed from clients to peers",
        stats.bytes_to_peers as f64,
    );
    line(
        "natter_turn_relayed_packets_to_clients_total",
        "counter",
        "Packets relayed from peers to clients",
        stats.packets_to_clients as f64,
    );
    line(
        "natter_turn_relayed_bytes_to_clients_total",
        "counter",
        "Bytes relayed from peers to clients",
        stats.bytes_to_clients as f64,
    );
    line(
        "natter_turn_refused_peers_total",
        "counter",
        "Permissions or channels refused for a denied peer address",
        stats.refused_peers as f64,
    );
    line(
        "natter_turn_dropped_unauthenticated_total",
        "counter",
        "Answers to unauthenticated UDP requests dropped: the source was over its rate",
        stats.dropped_unauthenticated as f64,
    );
    line(
        "natter_turn_closed_idle_streams_total",
        "counter",
        "TCP/TLS connections closed for sending no complete message within the idle timeout",
        stats.closed_idle_streams as f64,
    );
    line(
        "natter_turn_cut_off_streams_total",
        "counter",
        "TCP/TLS connections cut off for leaving too much unread",
        stats.cut_off_streams as f64,
    );
    line(
        "natter_turn_dropped_over_bandwidth_total",
        "counter",
        "Packets dropped by the per-allocation bandwidth cap",
        stats.dropped_over_bandwidth as f64,
    );
    let _ = writeln!(
        s,
        "# HELP natter_turn_auth_failures_total Authentication failures, by reason\n# TYPE natter_turn_auth_failures_total counter"
    );
    let mut reasons: Vec<_> = stats.auth_failures.iter().collect();
    reasons.sort();
    for (reason, n) in reasons {
        let _ = writeln!(
            s,
            "natter_turn_auth_failures_total{{reason=\"{reason}\"}} {n}"
        );
    }
    s
}
