//! The SFU on tokio: one task owns the UDP socket and the sans-IO [`Sfu`], and is driven
//! by datagrams, commands (join, answer, leave) and the core's timer. It stays dumb: every
//! decision is the core's.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::capture::CaptureWriter;
use crate::metrics::SfuMetrics;
use crate::{ParticipantId, Sfu, SfuConfig, SfuError, SfuEvent, SfuStats};

/// Commands waiting for the SFU task; a sender waits (async) when it is full.
const COMMAND_QUEUE: usize = 256;
/// Events waiting for whoever relays them to the clients. Offers must not be lost, so
/// when it is full the SFU task waits for room (overload shows as slower forwarding).
const EVENT_QUEUE: usize = 1024;
/// Largest datagram read; anything longer is not WebRTC media from a sane client.
const MAX_DATAGRAM: usize = 2048;

enum Command {
    Join {
        token: String,
        offer: String,
        reply: oneshot::Sender<Result<(ParticipantId, String), SfuError>>,
    },
    Answer {
        id: ParticipantId,
        answer: String,
        reply: oneshot::Sender<Result<(), SfuError>>,
    },
    Leave {
        id: ParticipantId,
    },
}

/// The counters are copied out for readers at most this often.
const STATS_EVERY: Duration = Duration::from_millis(250);

/// Talks to a running SFU task; cheap to clone.
#[derive(Clone)]
pub struct SfuHandle {
    commands: mpsc::Sender<Command>,
    local: SocketAddr,
    stats: Arc<Mutex<SfuStats>>,
    metrics: Arc<SfuMetrics>,
}

impl SfuHandle {
    /// The SFU's counters, as of at most [`STATS_EVERY`] ago.
    pub fn stats(&self) -> SfuStats {
        self.stats.lock().unwrap().clone()
    }

    /// Everything for `/metrics`: the counters and the histograms, in Prometheus' text form.
    pub fn render_metrics(&self) -> String {
        let mut text = self.stats().render();
        text.push_str(&self.metrics.render());
        text
    }

    /// The socket's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Joins the room `token` names with `offer`: the participant's id and the SFU's answer.
    pub async fn join(
        &self,
        token: String,
        offer: String,
    ) -> Result<(ParticipantId, String), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Join {
            token,
            offer,
            reply,
        })
        .await?;
        rx.await.map_err(|_| stopped())?
    }

    /// The participant's answer to the SFU's last [`SfuEvent::Offer`].
    pub async fn answer(&self, id: ParticipantId, answer: String) -> Result<(), SfuError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Answer { id, answer, reply }).await?;
        rx.await.map_err(|_| stopped())?
    }

    pub async fn leave(&self, id: ParticipantId) -> Result<(), SfuError> {
        self.send(Command::Leave { id }).await
    }

    async fn send(&self, c: Command) -> Result<(), SfuError> {
        self.commands.send(c).await.map_err(|_| stopped())
    }
}

fn stopped() -> SfuError {
    SfuError::Rtc("the SFU has stopped".into())
}

/// Binds `cfg.public_addr` (or `bind`, when the public address is a NAT's) and starts the
/// SFU task. Its events come out of the returned receiver; dropping every handle stops it.
pub async fn spawn(
    cfg: SfuConfig,
    bind: Option<SocketAddr>,
) -> io::Result<(SfuHandle, mpsc::Receiver<SfuEvent>, JoinHandle<()>)> {
    let socket = UdpSocket::bind(bind.unwrap_or(cfg.public_addr)).await?;
    // tokio reports a new socket not writable until it has been polled once; sends are
    // `try_send_to`, so wait for that here rather than drop the first datagrams.
    socket.writable().await?;
    let mut cfg = cfg;
    if cfg.public_addr.port() == 0 {
        cfg.public_addr = socket.local_addr()?;
    }
    let local = cfg.public_addr;
    let capture = match &cfg.capture {
        Some(path) => Some(CaptureWriter::create(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the capture file {}: {e}", path.display()),
            )
        })?),
        None => None,
    };
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (event_tx, events) = mpsc::channel(EVENT_QUEUE);
    let stats = Arc::new(Mutex::new(SfuStats::default()));
    let metrics = Arc::new(SfuMetrics::default());
    let task = tokio::spawn(run(
        Sfu::new(cfg),
        socket,
        command_rx,
        event_tx,
        stats.clone(),
        metrics.clone(),
        capture,
    ));
    Ok((
        SfuHandle {
            commands,
            local,
            stats,
            metrics,
        },
        events,
        task,
    ))
}

async fn run(
    mut sfu: Sfu,
    socket: UdpSocket,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<SfuEvent>,
    stats: Arc<Mutex<SfuStats>>,
    metrics: Arc<SfuMetrics>,
    mut capture: Option<CaptureWriter>,
) {
    let local = sfu.cfg.public_addr;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut copied = Instant::now();
    loop {
        if copied.elapsed() >= STATS_EVERY {
            copied = Instant::now();
            let mut s = sfu.stats.clone();
            s.rooms = sfu.rooms() as u64;
            s.participants = sfu.participants() as u64;
            *stats.lock().unwrap() = s;
            for bps in sfu.estimates() {
                metrics.estimate.observe(bps as f64);
            }
            if let Some(w) = capture.as_mut()
                && let Err(e) = w.flush()
            {
                tracing::warn!("sfu capture stopped: {e}");
                capture = None;
            }
        }
        let wake = sfu
            .poll_timeout()
            .map(tokio::time::Instant::from_std)
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
        let mut arrived = None;
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => {
                    let now = Instant::now();
                    arrived = Some(now);
                    sfu.handle_datagram(from, local, &buf[..n], now);
                }
                // ICMP errors surface here on some systems; the socket stays usable.
                Err(e) => tracing::debug!("sfu socket: {e}"),
            },
            c = commands.recv() => match c {
                None => {
                    if let Some(w) = capture.as_mut() {
                        let _ = w.flush();
                    }
                    return;
                }
                Some(Command::Join { token, offer, reply }) => {
                    let _ = reply.send(sfu.join(&token, &offer, Instant::now(), unix_now()));
                }
                Some(Command::Answer { id, answer, reply }) => {
                    let _ = reply.send(sfu.accept_answer(id, &answer, Instant::now()));
                }
                Some(Command::Leave { id }) => sfu.leave(id, "left", Instant::now()),
            },
            _ = tokio::time::sleep_until(wake) => sfu.handle_timeout(Instant::now()),
        }
        // Timers that came due while a datagram was handled run now, not whenever the
        // select above next picks its timer over a busy socket (or tokio's millisecond
        // timer wheel comes round): str0m releases what was just written to a subscriber
        // on a timer a microsecond later, and its pacer and probes send on timers too (a
        // probe sent late reads as a slow link). So the forwarding time observed below is
        // the whole of it.
        if arrived.is_some() {
            let now = Instant::now();
            if sfu.is_due(now) {
                sfu.handle_timeout(now);
            }
        }
        let mut sent = 0;
        while let Some(t) = sfu.poll_transmit() {
            // A full send buffer drops the datagram, as a congested network would.
            let _ = socket.try_send_to(&t.contents, t.destination);
            sent += 1;
        }
        // A datagram that made others go out (a forwarded packet, most of the time).
        if let Some(at) = arrived.filter(|_| sent > 0) {
            metrics.processing.observe(at.elapsed().as_secs_f64());
        }
        while let Some(c) = sfu.poll_captured() {
            if let Some(w) = capture.as_mut()
                && let Err(e) = w.write(&c)
            {
                tracing::warn!("sfu capture stopped: {e}");
                capture = None;
            }
        }
        while let Some(e) = sfu.poll_event() {
            if events.send(e).await.is_err() {
                return;
            }
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
