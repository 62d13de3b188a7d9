//! State shared by every connection and HTTP handler of one server.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use natter_signaling::{DeviceId, ProtocolError, UserId};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::MessagingConfig;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::store::Store;

/// The network a client address belongs to, for limits per source: an IPv4 address, or the
/// /64 of an IPv6 address (one subscriber usually holds a whole /64, so keying on the full
/// address would let it pick a fresh one per request). IPv4-mapped IPv6 counts as IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NetKey(IpAddr);

impl NetKey {
    pub fn of(ip: IpAddr) -> NetKey {
        match ip {
            IpAddr::V4(v4) => NetKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => NetKey(IpAddr::V4(v4)),
                None => {
                    let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                    NetKey(IpAddr::V6(prefix.into()))
                }
            },
        }
    }

    /// `1.2.3.4` or `2001:db8:1:2::/64`, as stored with wrong-code counts.
    pub fn as_text(&self) -> String {
        match self.0 {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("{v6}/64"),
        }
    }
}

/// One token bucket per kind of request (see [`crate::config::Limits`] for what each counts).
pub struct Limiters {
    pub send: RateLimiter<DeviceId>,
    pub register_phone: RateLimiter<String>,
    pub register_ip: RateLimiter<NetKey>,
    pub prekeys: RateLimiter<DeviceId>,
    pub directory: RateLimiter<DeviceId>,
    pub blob_bytes: RateLimiter<DeviceId>,
    pub typing: RateLimiter<DeviceId>,
    pub ack: RateLimiter<DeviceId>,
    pub read: RateLimiter<DeviceId>,
    pub ping: RateLimiter<DeviceId>,
    pub account: RateLimiter<DeviceId>,
    pub link_code: RateLimiter<DeviceId>,
    pub group_create: RateLimiter<DeviceId>,
    pub group_change: RateLimiter<DeviceId>,
    pub group_info: RateLimiter<DeviceId>,
    pub presence: RateLimiter<DeviceId>,
    pub call_offer: RateLimiter<DeviceId>,
    pub call_offer_pair: RateLimiter<(UserId, UserId)>,
    pub call_signal: RateLimiter<DeviceId>,
    pub call_ice: RateLimiter<DeviceId>,
    pub ice_servers: RateLimiter<DeviceId>,
    pub room_join: RateLimiter<DeviceId>,
    pub room_signal: RateLimiter<DeviceId>,
}

impl Limiters {
    pub fn new(cfg: &MessagingConfig) -> Limiters {
        let l = &cfg.limits;
        Limiters {
            send: RateLimiter::new(l.send),
            register_phone: RateLimiter::new(l.register_phone),
            register_ip: RateLimiter::new(l.register_ip),
            prekeys: RateLimiter::new(l.prekeys),
            directory: RateLimiter::new(l.directory),
            blob_bytes: RateLimiter::new(l.blob_bytes),
            typing: RateLimiter::new(l.typing),
            ack: RateLimiter::new(l.ack),
            read: RateLimiter::new(l.read),
            ping: RateLimiter::new(l.ping),
            account: RateLimiter::new(l.account),
            link_code: RateLimiter::new(l.link_code),
            group_create: RateLimiter::new(l.group_create),
            group_change: RateLimiter::new(l.group_change),
            group_info: RateLimiter::new(l.group_info),
            presence: RateLimiter::new(l.presence),
            call_offer: RateLimiter::new(l.call_offer),
            call_offer_pair: RateLimiter::new(l.call_offer_pair),
            call_signal: RateLimiter::new(l.call_signal),
            call_ice: RateLimiter::new(l.call_ice),
            ice_servers: RateLimiter::new(l.ice_servers),
            room_join: RateLimiter::new(l.room_join),
            room_signal: RateLimiter::new(l.room_signal),
        }
    }

    /// Forgets full buckets.
    pub fn prune(&self) {
        let now = Instant::now();
        let per_device = [
            &self.send,
            &self.prekeys,
            &self.directory,
            &self.blob_bytes,
            &self.typing,
            &self.ack,
            &self.read,
            &self.ping,
            &self.account,
            &self.link_code,
            &self.group_create,
            &self.group_change,
            &self.group_info,
            &self.presence,
            &self.call_offer,
            &self.call_signal,
            &self.call_ice,
            &self.ice_servers,
            &self.room_join,
            &self.room_signal,
        ];
        for l in per_device {
            l.prune(now);
        }
        self.register_phone.prune(now);
        self.register_ip.prune(now);
        self.call_offer_pair.prune(now);
    }
}

/// Takes `cost` from `key`'s bucket or returns a `rate_limited` error.
pub fn take<K: std::hash::Hash + Eq + Clone>(
    limiter: &RateLimiter<K>,
    key: &K,
    cost: f64,
) -> Result<(), ProtocolError> {
    limiter.take(key, cost, Instant::now()).map_err(|wait| {
        ProtocolError::rate_limited(wait.as_nanos().div_ceil(1_000_000).max(1) as u64)
    })
}

pub struct AppState {
    pub cfg: MessagingConfig,
    pub store: Store,
    pub hub: Arc<Hub>,
    pub metrics: Arc<Metrics>,
    pub limits: Limiters,
    /// Cancelled when the server begins to shut down.
    pub shutdown: CancellationToken,
    /// WebSocket tasks, awaited on shutdown.
    pub sockets: TaskTracker,
    pub http: reqwest::Client,
    pub blob_dir: PathBuf,
    pub upload_dir: PathBuf,
    pub upload_locks: crate::http::UploadLocks,
    pub calls: crate::calls::Calls,
    pub rooms: crate::rooms::Rooms,
    /// The runtime the server started on (for work begun on the storage thread).
    pub runtime: tokio::runtime::Handle,
    pub extra_metrics: Option<crate::ExtraMetrics>,
}

impl AppState {
    /// Counts an error by code.
    pub fn count_error(&self, err: &ProtocolError) {
        self.metrics
            .errors
            .with_label_values(&[err.code.as_str()])
            .inc();
    }
}

pub type SharedState = Arc<AppState>;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> NetKey {
        NetKey::of(s.parse().unwrap())
    }

    #[test]
    fn ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4() {
        // One subscriber's /64: every address in it is one network.
        assert_eq!(
            key("2001:db8:1:2::1"),
            key("2001:db8:1:2:ffff:ffff:ffff:fffe")
        );
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("2001:db8:1:2::1").as_text(), "2001:db8:1:2::/64");
        // IPv4 by the address, whether it comes as IPv4 or IPv4-mapped IPv6.
        assert_eq!(key("192.0.2.7"), key("::ffff:192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
        assert_eq!(key("192.0.2.7").as_text(), "192.0.2.7");
    }

    #[test]
    fn the_register_limit_is_shared_across_a_64() {
        let l: RateLimiter<NetKey> = RateLimiter::new(crate::config::Rate::new(2.0, 0.001));
        for a in ["2001:db8::1", "2001:db8::2"] {
            take(&l, &key(a), 1.0).unwrap();
        }
        assert!(
            take(&l, &key("2001:db8::3"), 1.0).is_err(),
            "a third address of the /64"
        );
        take(&l, &key("2001:db8:0:1::1"), 1.0).unwrap();
    }
}
