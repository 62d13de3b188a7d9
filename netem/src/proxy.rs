//! UDP proxy mode: clients send to `listen`, the proxy forwards to `upstream` through the
//! forward link and brings replies back through the backward link. Each client gets its
//! own upstream socket (as behind a NAT), so several flows stay apart. No privileges.
//!
//! The shell is one task that owns both [`Link`]s: it reads datagrams, feeds them in with
//! the time since start, and sleeps until the next release.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};

pub use crate::config::Direction;
use crate::link::Link;
use crate::stats::{Interval, Summary};

/// Clients served at once; the least recently heard one is forgotten beyond this.
pub const MAX_CLIENTS: usize = 256;
/// A client silent this long loses its upstream socket.
pub const CLIENT_IDLE: Duration = Duration::from_secs(120);
const MAX_DATAGRAM: usize = 65_535;

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    /// Client → upstream.
    pub forward: Direction,
    /// Upstream → client.
    pub backward: Direction,
    pub seed: u64,
}

/// What a finished run saw, per direction.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    pub forward: Summary,
    pub backward: Summary,
    /// Per-interval figures (200 ms), in the JSON too.
    pub forward_intervals: Vec<Interval>,
    pub backward_intervals: Vec<Interval>,
    #[serde(skip)]
    pub forward_csv: String,
    #[serde(skip)]
    pub backward_csv: String,
}

/// A running proxy.
pub struct Proxy {
    local: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Report>,
}

impl Proxy {
    /// Binds `listen` and starts relaying.
    pub async fn start(cfg: ProxyConfig) -> std::io::Result<Proxy> {
        for d in [&cfg.forward, &cfg.backward] {
            d.impairment
                .validate()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        }
        let sock = Arc::new(UdpSocket::bind(cfg.listen).await?);
        let local = sock.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(cfg, sock, stopped));
        Ok(Proxy { local, stop, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Stops relaying (packets still in the links are dropped) and returns the figures.
    pub async fn stop(self) -> Report {
        let _ = self.stop.send(true);
        match self.task.await {
            Ok(r) => r,
            Err(e) => panic!("netem proxy task failed: {e}"),
        }
    }
}

struct Client {
    addr: SocketAddr,
    sock: Arc<UdpSocket>,
    reader: tokio::task::JoinHandle<()>,
    last_heard: Instant,
}

/// A datagram in flight: which client, and the bytes.
type Packet = (u32, Vec<u8>);

async fn run(
    cfg: ProxyConfig,
    listen: Arc<UdpSocket>,
    mut stopped: watch::Receiver<bool>,
) -> Report {
    let start = Instant::now();
    let mut fwd: Link<Packet> = Link::new(
        cfg.forward.impairment.clone(),
        cfg.forward.capacity.clone(),
        cfg.seed,
    );
    let mut bwd: Link<Packet> = Link::new(
        cfg.backward.impairment.clone(),
        cfg.backward.capacity.clone(),
        cfg.seed ^ 0x5EED_BAC4,
    );
    let mut clients: HashMap<u32, Client> = HashMap::new();
    let mut by_addr: HashMap<SocketAddr, u32> = HashMap::new();
    let mut next_id: u32 = 0;
    let (up_tx, mut up_rx) = mpsc::channel::<(u32, Vec<u8>, Instant)>(4096);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    // Headers the emulator does not see but the bottleneck should charge: IP + UDP.
    let header = |a: &SocketAddr| if a.is_ipv4() { 28 } else { 48 };
    let mut sweep = tokio::time::interval(Duration::from_secs(10));
    loop {
        let next = [fwd.poll_timeout(), bwd.poll_timeout()]
            .into_iter()
            .flatten()
            .min();
        let sleep = async {
            match next {
                Some(t) => tokio::time::sleep_until((start + t).into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = listen.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let id = match by_addr.get(&from) {
                    Some(id) => *id,
                    None => {
                        let Ok(id) = new_client(&cfg, from, &mut clients, &mut next_id, &up_tx).await else {
                            continue;
                        };
                        by_addr.insert(from, id);
                        if clients.len() > MAX_CLIENTS {
                            forget_oldest(&mut clients, &mut by_addr);
                        }
                        id
                    }
                };
                if let Some(c) = clients.get_mut(&id) {
                    c.last_heard = Instant::now();
                }
                let now = start.elapsed();
                fwd.send(now, n + header(&from), (id, buf[..n].to_vec()));
            }
            Some((id, data, at)) = up_rx.recv() => {
                let n = data.len();
                bwd.send(at.duration_since(start), n + header(&cfg.upstream), (id, data));
            }
            _ = sleep => {}
            _ = sweep.tick() => {
                let idle: Vec<u32> = clients
                    .iter()
                    .filter(|(_, c)| c.last_heard.elapsed() > CLIENT_IDLE)
                    .map(|(id, _)| *id)
                    .collect();
                for id in idle {
                    if let Some(c) = clients.remove(&id) {
                        c.reader.abort();
                        by_addr.remove(&c.addr);
                    }
                }
            }
            _ = stopped.changed() => break,
        }
        let now = start.elapsed();
        while let Some((id, data)) = fwd.poll_release(now) {
            if let Some(c) = clients.get(&id) {
                let _ = c.sock.try_send(&data);
            }
        }
        while let Some((id, data)) = bwd.poll_release(now) {
            if let Some(c) = clients.get(&id) {
                let _ = listen.try_send_to(&data, c.addr);
            }
        }
    }
    for (_, c) in clients {
        c.reader.abort();
    }
    Report {
        forward: fwd.stats().summary(),
        backward: bwd.stats().summary(),
        forward_intervals: fwd.stats().intervals(),
        backward_intervals: bwd.stats().intervals(),
        forward_csv: fwd.stats().csv("forward"),
        backward_csv: bwd.stats().csv("backward"),
    }
}

async fn new_client(
    cfg: &ProxyConfig,
    from: SocketAddr,
    clients: &mut HashMap<u32, Client>,
    next_id: &mut u32,
    up_tx: &mpsc::Sender<(u32, Vec<u8>, Instant)>,
) -> std::io::Result<u32> {
    let bind: SocketAddr = if cfg.upstream.is_ipv4() {
        "0.0.0.0:0".parse().unwrap_or(cfg.listen)
    } else {
        "[::]:0".parse().unwrap_or(cfg.listen)
    };
    let sock = Arc::new(UdpSocket::bind(bind).await?);
    sock.connect(cfg.upstream).await?;
    // tokio reports a new socket not writable until it has polled it once, and the send
    // below is a `try_send`: without this, each client's first datagram was dropped.
    sock.writable().await?;
    *next_id = next_id.wrapping_add(1);
    let id = *next_id;
    let reader = {
        let sock = sock.clone();
        let tx = up_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; MAX_DATAGRAM];
            loop {
                match sock.recv(&mut buf).await {
                    Ok(n) => {
                        // The arrival time is taken here, not when the main loop gets to it.
                        if tx
                            .send((id, buf[..n].to_vec(), Instant::now()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    // ICMP port unreachable from a closed upstream: keep listening.
                    Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
        })
    };
    clients.insert(
        id,
        Client {
            addr: from,
            sock,
            reader,
            last_heard: Instant::now(),
        },
    );
    Ok(id)
}

fn forget_oldest(clients: &mut HashMap<u32, Client>, by_addr: &mut HashMap<SocketAddr, u32>) {
    if let Some(id) = clients
        .iter()
        .min_by_key(|(_, c)| c.last_heard)
        .map(|(id, _)| *id)
        && let Some(c) = clients.remove(&id)
    {
        c.reader.abort();
        by_addr.remove(&c.addr);
    }
}
