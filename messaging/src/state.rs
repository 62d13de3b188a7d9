//! State shared by every connection and HTTP handler of one server.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use natter_signaling::{DeviceId, ProtocolError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::MessagingConfig;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::ratelimit::RateLimiter;
use crate::store::Store;

pub struct Limiters {
    pub send: RateLimiter<DeviceId>,
    pub register_phone: RateLimiter<String>,
    pub register_ip: RateLimiter<IpAddr>,
    pub prekeys: RateLimiter<DeviceId>,
    pub directory: RateLimiter<DeviceId>,
    pub blob_bytes: RateLimiter<DeviceId>,
    pub typing: RateLimiter<DeviceId>,
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
        }
    }

    /// Forgets full buckets.
    pub fn prune(&self) {
        let now = Instant::now();
        self.send.prune(now);
        self.register_phone.prune(now);
        self.register_ip.prune(now);
        self.prekeys.prune(now);
        self.directory.prune(now);
        self.blob_bytes.prune(now);
        self.typing.prune(now);
    }
}

/// Takes `cost` from `key`'s bucket or returns a `rate_limited` error.
pub fn take<K: std::hash::Hash + Eq + Clone>(
    limiter: &RateLimiter<K>,
    key: &K,
    cost: f64,
) -> Result<(), ProtocolError> {
    limiter
        .take(key, cost, Instant::now())
        .map_err(|wait| ProtocolError::rate_limited(wait.as_millis().max(1) as u64))
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
