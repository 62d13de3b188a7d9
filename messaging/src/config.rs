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
    /// Wrong registration-code guesses for one phone number in a day, across all its codes
    /// and all networks; past it, verification of that number is refused until the day is
    /// over. Bounds an attacker's chance of guessing a 6-digit code to this many in a
    /// million per day.
    pub max_wrong_codes_per_phone_day: u32,
    /// Wrong guesses for one phone number from one network (IPv4 address or IPv6 /64) in a
    /// day. Lower than the per-phone cap, so one attacking network cannot lock the owner
    /// of the number out.
    pub max_wrong_codes_per_network_day: u32,
    /// Groups one user may create in any hour.
    pub max_groups_per_hour: u32,
    /// Blob bytes one user may have stored (finished and unexpired, plus the declared
    /// length of uploads in progress).
    pub max_stored_bytes_per_user: u64,
    /// Uploads one user may have in progress at once.
    pub max_open_uploads: u32,
    /// Bytes of events and live items waiting for one connection; a client that reads more
    /// slowly than this fills is disconnected (close code 4008).
    pub max_outbound_bytes: u64,
    /// A connection whose socket accepts nothing for this long is disconnected.
    pub write_timeout_ms: u64,
    /// An HTTP connection must send a request's headers within this time (and a keep-alive
    /// connection its next request's); an upload body must keep arriving (one chunk at least
    /// this often).
    pub http_read_timeout_ms: u64,
    /// Admission control's target wait in the storage queue: when jobs have waited longer
    /// than this for 100 ms on end (a standing queue), or a burst would take more than five
    /// times this to drain, client requests are refused at once with `overloaded`.
    pub store_queue_target_ms: u64,
    /// Admission control: the storage queue never holds more client jobs than this.
    pub store_queue_max_jobs: u32,
    /// Allow `code_delivery = "log"` on a non-loopback address. In that mode the server
    /// returns every registration code in the HTTP response, so anyone who can reach it can
    /// register any number, i.e. take over any account. Only for closed test networks.
    pub allow_account_takeover_dev_mode: bool,
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
            max_wrong_codes_per_phone_day: 50,
            max_wrong_codes_per_network_day: 10,
            max_groups_per_hour: 20,
            max_stored_bytes_per_user: 2 * 1024 * 1024 * 1024,
            max_open_uploads: 8,
            max_outbound_bytes: 4 * 1024 * 1024,
            write_timeout_ms: 30_000,
            http_read_timeout_ms: 15_000,
            store_queue_target_ms: 10,
            store_queue_max_jobs: 20_000,
            allow_account_takeover_dev_mode: false,
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
        if self.code_delivery == CodeDelivery::Log
            && !self.listen.ip().is_loopback()
            && !self.allow_account_takeover_dev_mode
        {
            return Err(format!(
                "refusing to listen on {} in development mode: with code_delivery = \"log\" \
                 every registration code is returned in the HTTP response, so anyone who can \
                 reach this address can register any phone number and take over its account. \
                 Set code_delivery = \"webhook\" (codes go to your SMS gateway), listen on a \
                 loopback address, or, on a closed test network only, set \
                 allow_account_takeover_dev_mode = true (--allow-account-takeover-dev-mode true)",
                self.listen
            ));
        }
        if self.max_wrong_codes_per_network_day == 0
            || self.max_wrong_codes_per_network_day > self.max_wrong_codes_per_phone_day
        {
            return Err(
                "max_wrong_codes_per_network_day must be between 1 and max_wrong_codes_per_phone_day"
                    .into(),
            );
        }
        if self.max_groups_per_hour == 0 || self.max_open_uploads == 0 {
            return Err("max_groups_per_hour and max_open_uploads must be at least 1".into());
        }
        if self.max_stored_bytes_per_user < self.max_blob_bytes {
            return Err("max_stored_bytes_per_user must be at least max_blob_bytes".into());
        }
        if self.max_outbound_bytes < 2 * natter_signaling::limits::MAX_FRAME_BYTES as u64 {
            return Err("max_outbound_bytes must be at least two frames (2 MiB)".into());
        }
        for (name, ms) in [
            ("write_timeout_ms", self.write_timeout_ms),
            ("http_read_timeout_ms", self.http_read_timeout_ms),
            ("hello_timeout_ms", self.hello_timeout_ms),
        ] {
            if !(100..=3_600_000).contains(&ms) {
                return Err(format!("{name} must be between 100 and 3600000"));
            }
        }
        if !(1..=10_000).contains(&self.store_queue_target_ms) || self.store_queue_max_jobs < 64 {
            return Err(
                "store_queue_target_ms must be 1..=10000 and store_queue_max_jobs at least 64"
                    .into(),
            );
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

/// `BURST:PER_SECOND`, the rate rounded to 6 significant digits (`3:0.000833333`).
impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = if self.per_s >= 1.0 {
            0
        } else {
            (6 - self.per_s.log10().floor() as i32 - 1).clamp(0, 12) as usize
        };
        let rate = format!("{:.*}", digits, self.per_s);
        let rate = if rate.contains('.') {
            rate.trim_end_matches('0').trim_end_matches('.')
        } else {
            &rate
        };
        write!(f, "{}:{}", self.burst, rate)
    }
}

/// Declares [`Limits`]: one token bucket per kind of work a client can ask for, with its
/// default, so that the struct, its defaults and the list of names cannot drift apart.
macro_rules! limits {
    ($( $(#[doc = $doc:expr])+ $name:ident = ($burst:expr, $per_s:expr); )+) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct Limits {
            $( $(#[doc = $doc])+ pub $name: Rate, )+
        }

        impl Default for Limits {
            fn default() -> Self {
                Limits { $( $name: Rate::new($burst, $per_s), )+ }
            }
        }

        impl Limits {
            /// Every limit's name (its config key under `limits`).
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),+];

            pub fn named(&self) -> Vec<(&'static str, Rate)> {
                vec![$( (stringify!($name), self.$name), )+]
            }

            /// The limit called `name`, to set it from a flag.
            pub fn get_mut(&mut self, name: &str) -> Option<&mut Rate> {
                match name {
                    $( stringify!($name) => Some(&mut self.$name), )+
                    _ => None,
                }
            }

            /// One line per limit: name, default and what it counts (for `--help`).
            pub fn describe() -> String {
                let mut out = String::new();
                $(
                    out.push_str(&format!(
                        "  {:<16} {:>12}  {}\n",
                        stringify!($name),
                        Rate::new($burst, $per_s).to_string(),
                        [$($doc.trim()),+].join(" ")
                    ));
                )+
                out
            }
        }
    };
}

// Defaults are set well above what a real user does, so only abuse meets them. A bucket of
// burst B refilled at R per second allows B at once and R per second after.
limits! {
    /// `send` and `send_group` frames, per device.
    send = (200.0, 50.0);
    /// Registration codes sent (SMS) per phone number: three, then one per 20 minutes.
    register_phone = (3.0, 1.0 / 1200.0);
    /// Registration, verification and link requests per client network (IPv4 address or
    /// IPv6 /64).
    register_ip = (20.0, 1.0);
    /// `keys_upload` frames, per device.
    prekeys = (10.0, 0.2);
    /// `keys_claim` and `lookup` frames, per device.
    directory = (60.0, 2.0);
    /// Uploaded blob bytes, per device.
    blob_bytes = (200.0 * 1024.0 * 1024.0, 10.0 * 1024.0 * 1024.0);
    /// `typing` frames, per device.
    typing = (10.0, 2.0);
    /// `ack` frames, per device.
    ack = (2000.0, 500.0);
    /// `read` receipts, per device.
    read = (200.0, 20.0);
    /// `ping` frames, per device.
    ping = (30.0, 1.0);
    /// `keys_count`, `devices_list`, `device_revoke` and `settings` frames, per device.
    account = (30.0, 1.0);
    /// `device_link_code` frames, per device: five, then one per 10 minutes.
    link_code = (5.0, 1.0 / 600.0);
    /// `group_create` frames, per device (see also `max_groups_per_hour`).
    group_create = (5.0, 0.01);
    /// `group_add`, `group_remove`, `group_promote`, `group_rename` and `group_leave`
    /// frames, per device; `group_add` costs 1 more per 64 users added.
    group_change = (30.0, 0.5);
    /// `group_info` frames, per device.
    group_info = (300.0, 5.0);
    /// Presence look-ups, per device: `presence_subscribe` costs one per user named,
    /// `presence_unsubscribe` one per frame.
    presence = (4096.0, 64.0);
    /// `call_offer` frames, per device.
    call_offer = (10.0, 0.1);
    /// `call_offer` frames from one user to the same other user: three, then one per
    /// 5 minutes, so a declined caller cannot keep the callee busy.
    call_offer_pair = (3.0, 1.0 / 300.0);
    /// `call_ringing`, `call_accept`, `call_decline`, `call_cancel`, `call_hangup` and
    /// `call_update` frames, per device.
    call_signal = (60.0, 5.0);
    /// `call_ice` frames, per device.
    call_ice = (500.0, 50.0);
    /// `ice_servers` frames (each mints TURN credentials), per device.
    ice_servers = (10.0, 0.1);
    /// `room_join` frames, per device: five, then one a minute (the first join of a call
    /// rings every member of the group).
    room_join = (5.0, 1.0 / 60.0);
    /// `room_answer`, `room_state` and `room_leave` frames, per device.
    room_signal = (120.0, 10.0);
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
