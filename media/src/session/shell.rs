//! The tokio shell around a [`Session`]: binds the UDP sockets, connects TCP streams to TURN
//! servers that want them, moves bytes between them and the core, and wakes the core when it
//! asks. Everything else — ICE, DTLS, SRTP, TURN, Opus — happens in the core.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natter_signaling::IceServer;
use natter_signaling::call::IceCandidate;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Notify, mpsc, watch};

use super::{CallStats, MediaError, MediaOptions, MediaState, Session, SessionEvent, Via};
use crate::ice_servers;

/// Datagrams and stream chunks waiting for the core; beyond this the readers wait (UDP
/// drops in the kernel), so a flood costs bounded memory.
const INBOX: usize = 1024;
/// Candidates waiting to be trickled.
const CANDIDATES: usize = 64;
/// Bytes queued toward one TURN TCP stream.
const STREAM_QUEUE: usize = 256;

enum Inbound {
    Datagram {
        local: SocketAddr,
        from: SocketAddr,
        bytes: Vec<u8>,
    },
    Stream {
        turn: usize,
        bytes: Vec<u8>,
    },
    StreamClosed {
        turn: usize,
    },
}

/// One call's media, running: see the module documentation.
pub struct MediaSession {
    core: Arc<Mutex<Session>>,
    wake: Arc<Notify>,
    state: watch::Receiver<MediaState>,
    candidates: Mutex<Option<mpsc::Receiver<IceCandidate>>>,
    wav_out: Option<std::path::PathBuf>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// The local addresses `bind` stands for: itself, or for a wildcard every address of the
/// host's interfaces that are up, of that family, loopback left out.
fn bind_addrs(bind: &str) -> Result<Vec<SocketAddr>, MediaError> {
    let addr: SocketAddr = bind
        .parse()
        .map_err(|e| MediaError::NoAddress(format!("{bind}: {e}")))?;
    if !addr.ip().is_unspecified() {
        return Ok(vec![addr]);
    }
    let ifs = if_addrs::get_if_addrs().map_err(|e| MediaError::NoAddress(e.to_string()))?;
    let found: Vec<SocketAddr> = ifs
        .into_iter()
        .map(|i| i.ip())
        .filter(|ip| !ip.is_loopback() && ip.is_ipv4() == addr.is_ipv4())
        .filter(|ip| match ip {
            IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) != 0xfe80, // no link-local
            IpAddr::V4(v4) => !v4.is_link_local(),
        })
        .map(|ip| SocketAddr::new(ip, addr.port()))
        .collect();
    if found.is_empty() {
        return Err(MediaError::NoAddress(format!(
            "no non-loopback interface for {bind}; pass a concrete address such as 127.0.0.1:0"
        )));
    }
    Ok(found)
}

impl MediaSession {
    /// Binds the sockets, reaches the TURN servers, starts the session.
    pub async fn new(ice_servers: &[IceServer], opts: MediaOptions) -> Result<Self, MediaError> {
        let servers = ice_servers::resolve(ice_servers);
        for (url, why) in &servers.skipped {
            tracing::debug!(%url, %why, "ICE server not used");
        }
        let mut sockets = Vec::new();
        for bind in &opts.udp_bind {
            for addr in bind_addrs(bind)? {
                let s = UdpSocket::bind(addr)
                    .await
                    .map_err(|e| MediaError::NoAddress(format!("{addr}: {e}")))?;
                // tokio reports a new socket not writable until it has polled it once, and
                // the driver sends with `try_send_to`: without this, every session's first
                // datagram (its TURN Allocate) was dropped and retried after 500 ms.
                s.writable()
                    .await
                    .map_err(|e| MediaError::NoAddress(format!("{addr}: {e}")))?;
                sockets.push(Arc::new(s));
            }
        }
        let locals: Vec<SocketAddr> = sockets
            .iter()
            .map(|s| s.local_addr())
            .collect::<Result<_, _>>()
            .map_err(|e| MediaError::NoAddress(e.to_string()))?;
        let wav_out = opts.wav_out.clone();
        let core = Session::new(opts, &servers, &locals, Instant::now())?;
        let streams = core.turn_streams();
        let core = Arc::new(Mutex::new(core));
        let wake = Arc::new(Notify::new());
        let (state_tx, state_rx) = watch::channel(MediaState::New);
        let (cand_tx, cand_rx) = mpsc::channel(CANDIDATES);
        let (in_tx, in_rx) = mpsc::channel(INBOX);
        let mut tasks = Vec::new();
        for s in &sockets {
            tasks.push(tokio::spawn(read_udp(s.clone(), in_tx.clone())));
        }
        let mut stream_tx = Vec::new();
        for (turn, addr) in streams {
            let (tx, rx) = mpsc::channel::<Vec<u8>>(STREAM_QUEUE);
            stream_tx.push((turn, tx));
            tasks.push(tokio::spawn(run_stream(turn, addr, rx, in_tx.clone())));
        }
        drop(in_tx);
        tasks.push(tokio::spawn(drive(Driver {
            core: core.clone(),
            wake: wake.clone(),
            sockets,
            streams: stream_tx,
            inbox: in_rx,
            state: state_tx,
            candidates: cand_tx,
        })));
        Ok(MediaSession {
            core,
            wake,
            state: state_rx,
            candidates: Mutex::new(Some(cand_rx)),
            wav_out,
            tasks: Mutex::new(tasks),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Session, Instant) -> T) -> T {
        let out = f(&mut self.core.lock().unwrap(), Instant::now());
        self.wake.notify_one();
        out
    }

    pub async fn create_offer(&self) -> Result<String, MediaError> {
        self.with(|s, now| s.create_offer(now))
    }

    pub async fn restart_offer(&self) -> Result<String, MediaError> {
        self.with(|s, now| s.restart_offer(now))
    }

    pub async fn accept_offer(&self, sdp: &str) -> Result<String, MediaError> {
        self.with(|s, now| s.accept_offer(sdp, now))
    }

    pub async fn set_answer(&self, sdp: &str) -> Result<(), MediaError> {
        self.with(|s, now| s.set_answer(sdp, now))
    }

    pub async fn add_candidate(&self, c: IceCandidate) -> Result<(), MediaError> {
        self.with(|s, now| s.add_remote_candidate(&c, now))
    }

    /// Local candidates as they are gathered (once).
    pub fn take_candidates(&self) -> Option<mpsc::Receiver<IceCandidate>> {
        self.candidates.lock().unwrap().take()
    }

    /// Waits until media can flow (ICE and DTLS connected) or fails.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), MediaError> {
        let mut rx = self.state.clone();
        let wait = rx.wait_for(|s| {
            matches!(
                s,
                MediaState::Connected | MediaState::Failed | MediaState::Closed
            )
        });
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) if *s == MediaState::Connected => Ok(()),
            Ok(Ok(s)) => Err(MediaError::NotConnected(*s)),
            Ok(Err(_)) => Err(MediaError::NotConnected(MediaState::Closed)),
            Err(_) => Err(MediaError::Rtc(format!(
                "the media connection did not come up within {timeout:?}"
            ))),
        }
    }

    pub fn state(&self) -> MediaState {
        *self.state.borrow()
    }

    pub async fn start_sending(&self) -> Result<(), MediaError> {
        self.with(|s, now| s.start_sending(now))
    }

    pub fn stats(&self) -> CallStats {
        self.core.lock().unwrap().stats()
    }

    pub fn first_audio(&self) -> Option<Instant> {
        self.core.lock().unwrap().first_audio()
    }

    /// In a group call: the simulcast layers the SFU says someone receives.
    pub fn set_wanted_layers(&self, rids: &[String]) {
        self.core.lock().unwrap().set_wanted_layers(rids);
    }

    /// In a group call: the simulcast layers being sent.
    pub fn active_layers(&self) -> Vec<String> {
        self.core.lock().unwrap().active_layers()
    }

    /// Sends silence instead of the source (or the source again).
    pub fn set_muted(&self, muted: bool) {
        self.core.lock().unwrap().set_muted(muted);
    }

    /// In a group call: each received track's figures.
    pub fn track_stats(&self) -> Vec<super::group::TrackStats> {
        self.core.lock().unwrap().track_stats()
    }

    /// In a group call: the tone expected on received audio track `mid`.
    pub fn expect_tone_on(&self, mid: &str, freq: f32) {
        self.core.lock().unwrap().expect_tone_on(mid, freq);
    }

    /// Stops sending, releases the relays (briefly waiting for their answers), closes.
    pub async fn close(&self) {
        self.with(|s, now| s.close(now));
        // Let the driver send the closing Refreshes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
        let samples = self.core.lock().unwrap().take_samples();
        if let (Some(path), Some(samples)) = (&self.wav_out, samples) {
            let spec = hound::WavSpec {
                channels: 1,
                sample_rate: crate::audio::SAMPLE_RATE,
                bits_per_sample: 16,
                sample_format: hound::SampleFormat::Int,
            };
            match hound::WavWriter::create(path, spec) {
                Ok(mut w) => {
                    for v in samples {
                        let _ = w.write_sample(v);
                    }
                    let _ = w.finalize();
                }
                Err(e) => tracing::warn!("{}: {e}", path.display()),
            }
        }
    }
}

impl Drop for MediaSession {
    fn drop(&mut self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }
}

async fn read_udp(sock: Arc<UdpSocket>, tx: mpsc::Sender<Inbound>) {
    let Ok(local) = sock.local_addr() else {
        return;
    };
    let mut buf = vec![0u8; 2048];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                let msg = Inbound::Datagram {
                    local,
                    from,
                    bytes: buf[..n].to_vec(),
                };
                if tx.send(msg).await.is_err() {
                    return;
                }
            }
            // ICMP errors surface here on Linux (port unreachable): keep reading.
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

async fn run_stream(
    turn: usize,
    addr: SocketAddr,
    mut out: mpsc::Receiver<Vec<u8>>,
    tx: mpsc::Sender<Inbound>,
) {
    let stream = match tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr)).await
    {
        Ok(Ok(s)) => s,
        _ => {
            let _ = tx.send(Inbound::StreamClosed { turn }).await;
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        while let Some(b) = out.recv().await {
            if wr.write_all(&b).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16_384];
    loop {
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let msg = Inbound::Stream {
                    turn,
                    bytes: buf[..n].to_vec(),
                };
                if tx.send(msg).await.is_err() {
                    break;
                }
            }
        }
    }
    writer.abort();
    let _ = tx.send(Inbound::StreamClosed { turn }).await;
}

struct Driver {
    core: Arc<Mutex<Session>>,
    wake: Arc<Notify>,
    sockets: Vec<Arc<UdpSocket>>,
    streams: Vec<(usize, mpsc::Sender<Vec<u8>>)>,
    inbox: mpsc::Receiver<Inbound>,
    state: watch::Sender<MediaState>,
    candidates: mpsc::Sender<IceCandidate>,
}

async fn drive(mut d: Driver) {
    let locals: Vec<SocketAddr> = d
        .sockets
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .collect();
    loop {
        // Everything the core wants done, then wait for input, a wake-up or its timer.
        let (out, events, timeout) = {
            let mut s = d.core.lock().unwrap();
            let mut out = Vec::new();
            while let Some(t) = s.poll_transmit() {
                out.push(t);
            }
            let mut events = Vec::new();
            while let Some(e) = s.poll_event() {
                events.push(e);
            }
            (out, events, s.poll_timeout())
        };
        for t in out {
            match t.via {
                Via::Udp { from, to } => {
                    if let Some(i) = locals.iter().position(|l| *l == from) {
                        // A full socket buffer drops the datagram, as the network would.
                        let _ = d.sockets[i].try_send_to(&t.bytes, to);
                    }
                }
                Via::Stream { turn } => {
                    if let Some((_, tx)) = d.streams.iter().find(|(i, _)| *i == turn) {
                        let _ = tx.try_send(t.bytes);
                    }
                }
            }
        }
        for e in events {
            match e {
                SessionEvent::LocalCandidate(c) => {
                    let _ = d.candidates.try_send(c);
                }
                SessionEvent::State(st) => {
                    d.state.send_replace(st);
                    if st == MediaState::Closed {
                        return;
                    }
                }
                SessionEvent::Warning(w) => tracing::info!("{w}"),
            }
        }
        let deadline = timeout.unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        tokio::select! {
            msg = d.inbox.recv() => {
                let Some(msg) = msg else { return };
                let mut s = d.core.lock().unwrap();
                let now = Instant::now();
                feed(&mut s, msg, now);
                // Take whatever else has arrived too, up to a batch.
                for _ in 0..64 {
                    match d.inbox.try_recv() {
                        Ok(m) => feed(&mut s, m, now),
                        Err(_) => break,
                    }
                }
                if s.poll_timeout().is_some_and(|t| t <= now) {
                    s.handle_timeout(now);
                }
            }
            _ = d.wake.notified() => {}
            _ = tokio::time::sleep_until(deadline.into()) => {
                d.core.lock().unwrap().handle_timeout(Instant::now());
            }
        }
    }
}

fn feed(s: &mut Session, msg: Inbound, now: Instant) {
    match msg {
        Inbound::Datagram { local, from, bytes } => s.handle_datagram(local, from, &bytes, now),
        Inbound::Stream { turn, bytes } => s.handle_stream(turn, &bytes, now),
        Inbound::StreamClosed { turn } => s.stream_closed(turn, now),
    }
}
