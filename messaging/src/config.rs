//! Messaging gateway settings. Every field has a default that runs on localhost; the `natter`
//! binary layers a TOML file, `NATTER_*` environment variables and flags on top.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MessagingConfig {
    /// Address the HTTP + WebSocket gateway listens on.
    pub listen: SocketAddr,
    /// Directory for the SQLite database and blobs; created if missing.
    pub data_dir: PathBuf,
    /// `full`: every acknowledged write is fsynced (survives power loss).
    /// `normal`: survives a crash of natter but not of the machine.
    pub sync: SyncMode,
    /// How long an undelivered queue item (and an uploaded blob) is kept.
    pub queue_ttl_days: u32,
    /// Queue items sent per batch when a device replays its backlog.
    pub replay_batch: u32,
    /// How long a (device, client id) pair is remembered to drop duplicate sends.
    /// Entries live between this and twice this long.
    pub dedup_hours: u32,
    /// A typing indicator lapses this long after its last refresh.
    pub typing_ttl_ms: u32,
    /// Most members of one group.
    pub max_group_members: u32,
    /// Largest blob that may be uploaded.
    pub max_blob_bytes: u64,
    /// A socket that has not sent `hello` within this time is closed.
    pub hello_timeout_ms: u64,
    /// On shutdown, sockets get this long to drain before they are dropped.
    pub shutdown_grace_ms: u64,
    /// Where registration codes go: `log` (development: logged, and returned in the
    /// response) or `webhook` (POSTed as JSON `{"phone","code"}` to `code_webhook_url`).
    pub code_delivery: CodeDelivery,
    /// Webhook URL for `code_delivery = "webhook"` (http://).
    pub code_webhook_url: Option<String>,
    /// A registration or link code is valid this long.
    pub code_ttl_s: u32,
    /// Token buckets.
    pub limits: Limits,
    /// Calls and the ICE (STUN/TURN) servers handed to clients.
    pub calls: CallsConfig,
}

/// Call signaling settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CallsConfig {
    /// A call rings this long before it counts as missed.
    pub ring_timeout_ms: u64,
    /// STUN servers for clients, e.g. `stun:stun.example.com:3478`.
    pub stun_urls: Vec<String>,
    /// TURN servers for clients, e.g. `turn:turn.example.com:3478?transport=udp`.
    pub turn_urls: Vec<String>,
    /// Secret shared with the TURN server for REST credentials (coturn's
    /// `static-auth-secret`). Required with `turn_urls`.
    pub turn_secret: Option<String>,
    /// How long minted TURN credentials stay valid.
    pub turn_ttl_s: u64,
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            ring_timeout_ms: natter_signaling::call::RING_TIMEOUT_MS,
            stun_urls: Vec::new(),
            turn_urls: Vec::new(),
            turn_secret: None,
            turn_ttl_s: 3600,
        }
    }
}

impl Default for MessagingConfig {
    fn default() -> Self {
        MessagingConfig {
            listen: "127.0.0.1:8080".parse().unwrap(),
            data_dir: PathBuf::from("./natter-data"),
            sync: SyncMode::Full,
            queue_ttl_days: 30,
            replay_batch: 100,
            dedup_hours: 24,
            typing_ttl_ms: 6_000,
            max_group_members: 1024,
            max_blob_bytes: 100 * 1024 * 1024,
            hello_timeout_ms: 10_000,
            shutdown_grace_ms: 10_000,
            code_delivery: CodeDelivery::Log,
            code_webhook_url: None,
            code_ttl_s: 600,
            limits: Limits::default(),
            calls: CallsConfig::default(),
        }
    }
}

impl MessagingConfig {
    pub fn queue_ttl(&self) -> Duration {
        Duration::from_secs(u64::from(self.queue_ttl_days) * 86_400)
    }

    /// Checks values that serde cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), String> {
        if self.queue_ttl_days == 0 {
            return Err("queue_ttl_days must be at least 1".into());
        }
        if !(1..=10_000).contains(&self.replay_batch) {
            return Err("replay_batch must be between 1 and 10000".into());
        }
        if self.dedup_hours < 24 {
            return Err("dedup_hours must be at least 24".into());
        }
        if !(1..=100_000).contains(&self.max_group_members) {
            return Err("max_group_members must be between 1 and 100000".into());
        }
        if self.max_blob_bytes == 0 {
            return Err("max_blob_bytes must be positive".into());
        }
        if self.code_delivery == CodeDelivery::Webhook {
            match &self.code_webhook_url {
                None => return Err("code_delivery = \"webhook\" needs code_webhook_url".into()),
                Some(u) if !u.starts_with("http://") && !u.starts_with("https://") => {
                    return Err(format!("code_webhook_url {u:?} is not an http(s) URL"));
                }
                Some(_) => {}
            }
        }
        for (name, rate) in self.limits.named() {
            if !(rate.per_s > 0.0 && rate.burst >= 1.0) {
                return Err(format!(
                    "limits.{name}: per_s must be > 0 and burst >= 1 (got per_s={}, burst={})",
                    rate.per_s, rate.burst
                ));
            }
        }
        let c = &self.calls;
        if !(1_000..=600_000).contains(&c.ring_timeout_ms) {
            return Err("calls.ring_timeout_ms must be between 1000 and 600000".into());
        }
        for u in &c.stun_urls {
            if !u.starts_with("stun:") && !u.starts_with("stuns:") {
                return Err(format!("calls.stun_urls: {u:?} is not a stun: URL"));
            }
        }
        for u in &c.turn_urls {
            if !u.starts_with("turn:") && !u.starts_with("turns:") {
                return Err(format!(
                    "calls.turn_urls: {u:?} is not a turn: or turns: URL"
                ));
            }
        }
        if !c.turn_urls.is_empty() && c.turn_secret.as_deref().is_none_or(str::is_empty) {
            return Err(
                "calls.turn_urls needs calls.turn_secret (the TURN server's REST secret)".into(),
            );
        }
        if !(60..=7 * 86_400).contains(&c.turn_ttl_s) {
            return Err("calls.turn_ttl_s must be between 60 and 604800".into());
        }
        if self.limits.blob_bytes.burst < 1024.0 * 1024.0 {
            return Err("limits.blob_bytes.burst must be at least 1 MiB (one upload chunk)".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncMode {
    Full,
    Normal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodeDelivery {
    Log,
    Webhook,
}

/// A token bucket: `burst` tokens at most, refilled at `per_s` tokens per second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub burst: f64,
    pub per_s: f64,
}

impl Rate {
    pub const fn new(burst: f64, per_s: f64) -> Rate {
        Rate { burst, per_s }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// `send` and `send_group` frames, per device.
    pub send: Rate,
    /// Registration code requests, per phone number.
    pub register_phone: Rate,
    /// Registration, verification and device-link requests, per client IP address.
    pub register_ip: Rate,
    /// `keys_upload` frames, per device.
    pub prekeys: Rate,
    /// `keys_claim` and `lookup` frames, per device.
    pub directory: Rate,
    /// Uploaded blob bytes, per device.
    pub blob_bytes: Rate,
    /// `typing` frames, per device.
    pub typing: Rate,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            send: Rate::new(200.0, 50.0),
            register_phone: Rate::new(3.0, 1.0 / 60.0),
            register_ip: Rate::new(20.0, 1.0),
            prekeys: Rate::new(10.0, 0.2),
            directory: Rate::new(60.0, 2.0),
            blob_bytes: Rate::new(200.0 * 1024.0 * 1024.0, 10.0 * 1024.0 * 1024.0),
            typing: Rate::new(10.0, 2.0),
        }
    }
}

impl Limits {
    pub fn named(&self) -> [(&'static str, Rate); 7] {
        [
            ("send", self.send),
            ("register_phone", self.register_phone),
            ("register_ip", self.register_ip),
            ("prekeys", self.prekeys),
            ("directory", self.directory),
            ("blob_bytes", self.blob_bytes),
            ("typing", self.typing),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        MessagingConfig::default().validate().unwrap();
    }

    #[test]
    fn webhook_needs_url() {
        let cfg = MessagingConfig {
            code_delivery: CodeDelivery::Webhook,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().contains("code_webhook_url"));
    }
}

impl std::str::FromStr for SyncMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(SyncMode::Full),
            "normal" => Ok(SyncMode::Normal),
            _ => Err(format!("{s:?} is not a sync mode (full, normal)")),
        }
    }
}

impl std::str::FromStr for CodeDelivery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "log" => Ok(CodeDelivery::Log),
            "webhook" => Ok(CodeDelivery::Webhook),
            _ => Err(format!("{s:?} is not a code delivery (log, webhook)")),
        }
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    /// `BURST:PER_SECOND`, e.g. `200:50`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (burst, per_s) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not BURST:PER_SECOND (e.g. 200:50)"))?;
        let num = |v: &str| {
            v.trim()
                .parse::<f64>()
                .map_err(|_| format!("{v:?} in {s:?} is not a number"))
        };
        Ok(Rate::new(num(burst)?, num(per_s)?))
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn rates_parse_as_burst_colon_rate() {
        assert_eq!("200:50".parse::<Rate>().unwrap(), Rate::new(200.0, 50.0));
        assert_eq!("3:0.0167".parse::<Rate>().unwrap(), Rate::new(3.0, 0.0167));
        assert!("200".parse::<Rate>().is_err());
        assert!("a:b".parse::<Rate>().is_err());
    }
}
