//! natter's messaging gateway: an HTTP + WebSocket server (axum) with accounts and devices,
//! the prekey directory, 1:1 and group messaging over durable per-device queues, receipts,
//! presence, typing, encrypted blob storage and rate limits.
//!
//! Start one with [`Server::start`]; the wire protocol lives in `natter-signaling`.

pub mod calls;
pub mod config;
pub mod delivery;
pub mod http_parse;
pub mod hub;
pub mod metrics;
pub mod outbound;
pub mod ratelimit;
pub mod rooms;
pub mod store;
pub mod typing;

mod conn;
mod http;
mod serve;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::MessagingConfig;
pub use conn::close_codes;
use hub::Hub;
use metrics::Metrics;
use state::{AppState, Limiters, SharedState};
use store::{Core, Store, StoreThread, now_ms};

/// How often a sweep runs. Each looks at a bounded chunk of the queue (see
/// `store::maintenance`), so it costs the storage thread a few milliseconds.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Renders more Prometheus text for `/metrics`.
pub type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// What runs beside the gateway and plugs into it.
#[derive(Default)]
pub struct Attached {
    /// Appended to `/metrics`.
    pub extra_metrics: Option<ExtraMetrics>,
    /// The SFU; without it, `room_join` is answered `unavailable`.
    pub sfu: Option<rooms::SfuAccess>,
}

/// Passes what the SFU says on its own (offers, dropped participants) to the gateway.
#[derive(Clone)]
pub struct SfuNotices(SharedState);

impl SfuNotices {
    pub fn notice(&self, n: rooms::SfuNotice) {
        self.0.rooms.notice(&self.0, n);
    }
}

/// A running gateway.
pub struct Server {
    addr: SocketAddr,
    state: SharedState,
    serve: JoinHandle<std::io::Result<()>>,
    background: Vec<JoinHandle<()>>,
    store_thread: StoreThread,
}

impl Server {
    /// Opens storage, binds the listener and starts serving.
    pub async fn start(cfg: MessagingConfig) -> Result<Server, ServerError> {
        Self::start_with(cfg, Attached::default()).await
    }

    /// Like [`Server::start`], with what the all-in-one server attaches: more `/metrics`
    /// text (the TURN server's and the SFU's) and the SFU for group calls.
    pub async fn start_with(
        cfg: MessagingConfig,
        attached: Attached,
    ) -> Result<Server, ServerError> {
        let Attached { extra_metrics, sfu } = attached;
        cfg.validate().map_err(ServerError::Config)?;
        let blob_dir = cfg.data_dir.join("blobs");
        let upload_dir = cfg.data_dir.join("uploads");
        for dir in [&cfg.data_dir, &blob_dir, &upload_dir] {
            std::fs::create_dir_all(dir).map_err(|source| ServerError::DataDir {
                path: dir.clone(),
                source,
            })?;
        }
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(Duration::from_millis(u64::from(
            cfg.typing_ttl_ms,
        ))));
        let (store, store_thread) = Store::open(&cfg, hub.clone(), metrics.clone())?;
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServerError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServerError::Listen {
                addr: cfg.listen,
                source,
            })?;
        let state = Arc::new(AppState {
            limits: Limiters::new(&cfg),
            calls: calls::Calls::new(&cfg.calls),
            rooms: rooms::Rooms::new(sfu),
            runtime: tokio::runtime::Handle::current(),
            extra_metrics,
            cfg,
            store,
            hub,
            metrics,
            shutdown: CancellationToken::new(),
            sockets: TaskTracker::new(),
            http: reqwest::Client::new(),
            blob_dir,
            upload_dir,
            upload_locks: http::UploadLocks::new(),
        });
        let app = http::router(state.clone());
        let read_timeout = Duration::from_millis(state.cfg.http_read_timeout_ms);
        let serve = tokio::spawn(serve::serve(
            listener,
            app,
            read_timeout,
            state.shutdown.clone(),
        ));
        let background = vec![
            tokio::spawn(sweeper(state.clone())),
            tokio::spawn(typing_expiry(state.clone())),
            tokio::spawn(calls::ticker(state.clone())),
        ];
        Ok(Server {
            addr,
            state,
            serve,
            background,
            store_thread,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.state.metrics.clone()
    }

    /// Where the SFU's notices go.
    pub fn sfu_notices(&self) -> SfuNotices {
        SfuNotices(self.state.clone())
    }

    /// Stops accepting, tells every socket to close (1001), waits up to `shutdown_grace_ms`
    /// for them to drain, then finishes pending storage work and closes the database.
    pub async fn shutdown(self) {
        self.state.shutdown.cancel();
        let grace = Duration::from_millis(self.state.cfg.shutdown_grace_ms);
        self.state.sockets.close();
        if tokio::time::timeout(grace, self.state.sockets.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                "{} sockets still open after the shutdown grace period",
                self.state.hub.connection_count()
            );
        }
        match tokio::time::timeout(grace, self.serve).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!("HTTP server ended with an error: {e}"),
            Ok(Err(e)) => tracing::warn!("HTTP server task failed: {e}"),
            Err(_) => tracing::warn!("HTTP connections still open after the grace period"),
        }
        for task in self.background {
            task.abort();
        }
        let thread = self.store_thread;
        let _ = tokio::task::spawn_blocking(move || thread.stop()).await;
        tracing::info!("messaging gateway stopped");
    }

    /// A token cancelled when shutdown begins.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.state.shutdown.clone()
    }
}

/// Removes what has expired, every [`SWEEP_EVERY`] (and once at start).
async fn sweeper(st: SharedState) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        st.limits.prune();
        match st.store.call(|core: &mut Core| core.sweep(now_ms())).await {
            Ok(report) => {
                for id in &report.expired_uploads {
                    let _ = tokio::fs::remove_file(st.upload_dir.join(id)).await;
                }
                for hash in &report.expired_blobs {
                    let _ = tokio::fs::remove_file(st.blob_dir.join(hash)).await;
                }
                if report.expired_items + report.expired_blobs.len() + report.expired_uploads.len()
                    > 0
                {
                    tracing::info!(
                        items = report.expired_items,
                        blobs = report.expired_blobs.len(),
                        uploads = report.expired_uploads.len(),
                        "expired"
                    );
                }
            }
            Err(e) => tracing::warn!("sweep failed: {e}"),
        }
    }
}

/// Ends typing indicators that were not refreshed.
async fn typing_expiry(st: SharedState) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        st.hub.expire_typing(std::time::Instant::now());
    }
}
