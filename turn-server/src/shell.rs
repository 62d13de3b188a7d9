//! The async shell around the TURN core: UDP and TCP (and TLS) listeners, one UDP socket
//! per relay, a timer. Tasks only move bytes; every decision is the core's, taken under one
//! short lock. Datagrams are sent with `try_send_to`: a full socket buffer drops the packet,
//! as the network would, instead of stalling everything behind it. Toward a TCP/TLS client
//! at most [`STREAM_BUFFER_BYTES`] wait in the server: past that it is not reading, and is
//! cut off; the core closes connections that go idle ([`Output::Close`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::batch;
use crate::server::{Config, FiveTuple, Output, PeerRoute, Server, Transport};
use crate::stun::{self, ChannelData};

/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;
/// Frames queued toward a TCP/TLS client at most.
const TCP_QUEUE: usize = 1024;
/// Bytes queued in the server toward a TCP/TLS client at most, on top of what its socket
/// buffer holds: a client that leaves more unread (it stopped reading) is cut off. 256 KiB
/// is several keyframe bursts, and a quarter of a second at the default bandwidth cap;
/// media later than that is of no use, and 10,000 such clients cost 2.5 GiB at worst.
pub const STREAM_BUFFER_BYTES: usize = 256 * 1024;
/// What a queued frame costs beyond its bytes (counted against [`STREAM_BUFFER_BYTES`], so
/// many tiny frames cannot hide behind it).
const FRAME_OVERHEAD: usize = 32;

/// Where a client's bytes go back to.
#[derive(Clone)]
enum ClientSink {
    Udp(Arc<UdpSocket>),
    Stream(StreamSink),
}

/// The way to a TCP/TLS client's writer task.
#[derive(Clone)]
struct StreamSink {
    tx: mpsc::Sender<Vec<u8>>,
    /// Bytes queued and not yet written to the socket (with [`FRAME_OVERHEAD`] each).
    queued: Arc<AtomicUsize>,
    /// Ends the connection (idle, cut off, or the server stopping).
    close: CancellationToken,
    /// Set when it was cut off for leaving too much unread.
    overflowed: Arc<AtomicBool>,
}

impl StreamSink {
    /// Queues a frame; a client with [`TCP_QUEUE`] frames or [`STREAM_BUFFER_BYTES`] unread
    /// is not reading, and is cut off instead of buffered for without end.
    fn send(&self, frame: Vec<u8>) {
        let cost = frame.len() + FRAME_OVERHEAD;
        let before = self.queued.fetch_add(cost, Ordering::Relaxed);
        if before + cost > STREAM_BUFFER_BYTES || self.tx.try_send(frame).is_err() {
            self.overflowed.store(true, Ordering::Relaxed);
            self.close.cancel();
        }
    }
}

struct Relay {
    socket: Arc<UdpSocket>,
    task: JoinHandle<()>,
}

struct State {
    core: Server,
    relays: HashMap<SocketAddr, Relay>,
    /// UDP listeners by local address; stream clients by 5-tuple.
    udp: HashMap<SocketAddr, Arc<UdpSocket>>,
    streams: HashMap<FiveTuple, StreamSink>,
}

impl State {
    /// Where bytes for the client at `to` are written.
    fn sink(&self, to: &FiveTuple) -> Option<ClientSink> {
        match to.transport {
            Transport::Udp => self.udp.get(&to.server).cloned().map(ClientSink::Udp),
            Transport::Tcp | Transport::Tls => {
                self.streams.get(to).cloned().map(ClientSink::Stream)
            }
        }
    }
}

/// A running TURN server.
#[derive(Clone)]
pub struct Turn {
    state: Arc<Mutex<State>>,
    epoch: Instant,
    base_ms: u64,
    stop: CancellationToken,
}

/// Listener addresses.
#[derive(Debug, Clone, Default)]
pub struct Listeners {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    /// TLS listeners with their certificate chain and key (PEM).
    pub tls: Vec<(SocketAddr, Arc<tokio_rustls::rustls::ServerConfig>)>,
}

/// What is listening, after binding (ports resolved).
#[derive(Debug, Clone)]
pub struct Bound {
    pub udp: Vec<SocketAddr>,
    pub tcp: Vec<SocketAddr>,
    pub tls: Vec<SocketAddr>,
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Turn {
    /// Binds every listener and starts serving.
    pub async fn start(cfg: Config, listeners: Listeners) -> std::io::Result<(Turn, Bound)> {
        let key = {
            let mut k = [0u8; 32];
            getrandom::fill(&mut k).map_err(|e| std::io::Error::other(e.to_string()))?;
            k
        };
        let turn = Turn {
            state: Arc::new(Mutex::new(State {
                core: Server::new(cfg, key),
                relays: HashMap::new(),
                udp: HashMap::new(),
                streams: HashMap::new(),
            })),
            epoch: Instant::now(),
            base_ms: wall_ms(),
            stop: CancellationToken::new(),
        };
        let mut bound = Bound {
            udp: Vec::new(),
            tcp: Vec::new(),
            tls: Vec::new(),
        };
        for addr in &listeners.udp {
            let sock = Arc::new(bind_udp(*addr)?);
            let local = sock.local_addr()?;
            turn.state.lock().unwrap().udp.insert(local, sock.clone());
            tokio::spawn(turn.clone().udp_listener(sock, local));
            bound.udp.push(local);
        }
        for addr in &listeners.tcp {
            let l = TcpListener::bind(addr).await?;
            bound.tcp.push(l.local_addr()?);
            tokio::spawn(turn.clone().tcp_listener(l, None));
        }
        for (addr, tls) in &listeners.tls {
            let l = TcpListener::bind(addr).await?;
            bound.tls.push(l.local_addr()?);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.clone());
            tokio::spawn(turn.clone().tcp_listener(l, Some(acceptor)));
        }
        tokio::spawn(turn.clone().ticker());
        Ok((turn, bound))
    }

    /// Starts the server on a thread of its own with a single-threaded runtime: every socket
    /// task runs there, so the core's lock is never contended and no packet waits for a
    /// wake-up on another core (the shape coturn's relay threads have too).
    pub fn start_on_own_thread(
        cfg: Config,
        listeners: Listeners,
    ) -> std::io::Result<(Turn, Bound)> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("natter-turn".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                rt.block_on(async move {
                    match Turn::start(cfg, listeners).await {
                        Ok((turn, bound)) => {
                            let stop = turn.stop.clone();
                            let _ = tx.send(Ok((turn, bound)));
                            stop.cancelled().await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })?;
        rx.recv()
            .map_err(|_| std::io::Error::other("the TURN thread ended early"))?
    }

    /// Milliseconds on the wall clock, advancing monotonically from the start.
    fn now_ms(&self) -> u64 {
        self.base_ms + self.epoch.elapsed().as_millis() as u64
    }

    /// Stops accepting, releases every relay.
    pub fn shutdown(&self) {
        self.stop.cancel();
        let mut st = self.state.lock().unwrap();
        for (_, r) in st.relays.drain() {
            r.task.abort();
        }
    }

    /// A snapshot of the core's counters, with the number of live allocations.
    pub fn stats(&self) -> (crate::server::Stats, usize) {
        let st = self.state.lock().unwrap();
        (st.core.stats.clone(), st.core.allocation_count())
    }

    async fn ticker(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.cancelled() => return,
            }
            let now = self.now_ms();
            let outs = self.state.lock().unwrap().core.tick(now);
            self.apply(outs);
        }
    }

    /// Carries out the core's outputs.
    fn apply(&self, outs: Vec<Output>) {
        for o in outs {
            match o {
                Output::ToClient { to, bytes } => self.to_client(to, bytes),
                Output::ToPeer { relay, peer, data } => {
                    let sock = self
                        .state
                        .lock()
                        .unwrap()
                        .relays
                        .get(&relay)
                        .map(|r| r.socket.clone());
                    if let Some(s) = sock {
                        let _ = s.try_send_to(&data, peer);
                    }
                }
                Output::Bind {
                    relay,
                    client,
                    response,
                } => match bind_udp(relay) {
                    Ok(sock) => {
                        let sock = Arc::new(sock);
                        let task = tokio::spawn(self.clone().relay_reader(sock.clone(), relay));
                        self.state
                            .lock()
                            .unwrap()
                            .relays
                            .insert(relay, Relay { socket: sock, task });
                        self.to_client(client, response);
                    }
                    Err(_) => {
                        let outs = self.state.lock().unwrap().core.bind_failed(relay);
                        self.apply(outs);
                    }
                },
                Output::Release { relay } => {
                    if let Some(r) = self.state.lock().unwrap().relays.remove(&relay) {
                        r.task.abort();
                    }
                }
                Output::Close { client } => {
                    if let Some(s) = self.state.lock().unwrap().streams.get(&client) {
                        s.close.cancel();
                    }
                }
            }
        }
    }

    fn to_client(&self, to: FiveTuple, bytes: Vec<u8>) {
        let sink = self.state.lock().unwrap().sink(&to);
        match sink {
            Some(ClientSink::Udp(s)) => {
                let _ = s.try_send_to(&bytes, to.client);
            }
            Some(ClientSink::Stream(s)) => s.send(bytes),
            None => {}
        }
    }

    async fn udp_listener(self, sock: Arc<UdpSocket>, local: SocketAddr) {
        loop {
            let r = tokio::select! {
                r = batch::recv_all(&sock, |buf, n, from| {
                    let five = FiveTuple {
                        transport: Transport::Udp,
                        client: from,
                        server: local,
                    };
                    self.on_client_packet(five, &buf[batch::HEADROOM..batch::HEADROOM + n], false);
                }) => r,
                _ = self.stop.cancelled() => return,
            };
            if r.is_err() {
                // One-shot socket errors (e.g. an ICMP report); keep serving.
                tokio::task::yield_now().await;
            }
        }
    }

    /// One framed message from a client.
    fn on_client_packet(&self, five: FiveTuple, packet: &[u8], padded: bool) {
        let now = self.now_ms();
        if stun::is_channel_data(packet) {
            let Ok((cd, _)) = ChannelData::parse(packet, padded) else {
                return;
            };
            let route = {
                let mut st = self.state.lock().unwrap();
                st.core
                    .route_from_client(five, cd.channel, cd.data.len(), now)
                    .and_then(|(relay, peer)| {
                        st.relays.get(&relay).map(|r| (r.socket.clone(), peer))
                    })
            };
            if let Some((sock, peer)) = route {
                let _ = sock.try_send_to(cd.data, peer);
            }
            return;
        }
        let outs = self.state.lock().unwrap().core.handle(five, packet, now);
        self.apply(outs);
    }

    /// Reads what peers send to one relay and hands it to the allocation's client.
    async fn relay_reader(self, sock: Arc<UdpSocket>, relay: SocketAddr) {
        loop {
            let r = tokio::select! {
                r = batch::recv_all(&sock, |buf, n, peer| self.on_peer_packet(relay, buf, n, peer)) => r,
                _ = self.stop.cancelled() => return,
            };
            if r.is_err() {
                tokio::task::yield_now().await;
            }
        }
    }

    /// One datagram from a peer, at `buf[HEADROOM..HEADROOM + n]`.
    fn on_peer_packet(&self, relay: SocketAddr, buf: &mut [u8], n: usize, peer: SocketAddr) {
        let now = self.now_ms();
        let (route, sink) = {
            let mut st = self.state.lock().unwrap();
            let Some(route) = st.core.route_from_peer(relay, peer, n, now) else {
                return;
            };
            let sink = st.sink(&route.client);
            (route, sink)
        };
        let Some(sink) = sink else { return };
        let PeerRoute { client, channel } = route;
        let data = &buf[batch::HEADROOM..batch::HEADROOM + n];
        match (channel, sink) {
            (Some(ch), ClientSink::Udp(s)) => {
                buf[0..2].copy_from_slice(&ch.to_be_bytes());
                buf[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                let _ = s.try_send_to(&buf[..4 + n], client.client);
            }
            (Some(ch), ClientSink::Stream(s)) => {
                let mut out = Vec::with_capacity(n + 8);
                ChannelData::write(ch, data, true, &mut out);
                s.send(out);
            }
            (None, ClientSink::Udp(s)) => {
                let _ = s.try_send_to(&Server::data_indication(peer, data), client.client);
            }
            (None, ClientSink::Stream(s)) => s.send(Server::data_indication(peer, data)),
        }
    }

    async fn tcp_listener(self, l: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
        loop {
            let (stream, from) = tokio::select! {
                r = l.accept() => match r {
                    Ok(x) => x,
                    Err(_) => {
                        // Out of descriptors, most likely: wait instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = self.stop.cancelled() => return,
            };
            let _ = stream.set_nodelay(true);
            let local = match stream.local_addr() {
                Ok(a) => a,
                Err(_) => continue,
            };
            let five = FiveTuple {
                transport: if tls.is_some() {
                    Transport::Tls
                } else {
                    Transport::Tcp
                },
                client: from,
                server: local,
            };
            // Registered from the accept on, so the idle timeout covers a TLS handshake too.
            let (tx, rx) = mpsc::channel::<Vec<u8>>(TCP_QUEUE);
            let sink = StreamSink {
                tx,
                queued: Arc::new(AtomicUsize::new(0)),
                close: self.stop.child_token(),
                overflowed: Arc::new(AtomicBool::new(false)),
            };
            {
                let now = self.now_ms();
                let mut st = self.state.lock().unwrap();
                if !st.core.stream_opened(five, now) {
                    continue; // as many connections as allocations may exist: refused
                }
                st.streams.insert(five, sink.clone());
            }
            let me = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    None => me.serve_stream(stream, five, sink, rx).await,
                    Some(acceptor) => {
                        let accept =
                            tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
                        let accepted = tokio::select! {
                            r = accept => r.ok().and_then(Result::ok),
                            _ = sink.close.cancelled() => None,
                        };
                        match accepted {
                            Some(s) => me.serve_stream(s, five, sink, rx).await,
                            None => me.stream_ended(five, &sink),
                        }
                    }
                }
            });
        }
    }

    /// One TCP or TLS client: framed STUN/ChannelData both ways until it closes, is idle
    /// too long, or leaves too much unread.
    async fn serve_stream<S>(
        self,
        stream: S,
        five: FiveTuple,
        sink: StreamSink,
        mut rx: mpsc::Receiver<Vec<u8>>,
    ) where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let queued = sink.queued.clone();
        let writer = tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    return;
                }
                queued.fetch_sub(b.len() + FRAME_OVERHEAD, Ordering::Relaxed);
            }
        });
        let mut buf: Vec<u8> = Vec::with_capacity(8192);
        let mut chunk = vec![0u8; 16384];
        'read: loop {
            let n = tokio::select! {
                r = rd.read(&mut chunk) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                },
                _ = sink.close.cancelled() => break,
            };
            buf.extend_from_slice(&chunk[..n]);
            while let Some(len) = stun::tcp_frame_len(&buf) {
                if len > MAX_DATAGRAM + 8 {
                    break 'read; // garbage: drop the connection
                }
                if buf.len() < len {
                    break;
                }
                let frame: Vec<u8> = buf.drain(..len).collect();
                self.on_client_packet(five, &frame, true);
            }
        }
        writer.abort();
        self.stream_ended(five, &sink);
    }

    /// A TCP/TLS connection is over: the core forgets it and its allocation.
    fn stream_ended(&self, five: FiveTuple, sink: &StreamSink) {
        let outs = {
            let mut st = self.state.lock().unwrap();
            st.streams.remove(&five);
            if sink.overflowed.load(Ordering::Relaxed) {
                st.core.stats.cut_off_streams += 1;
            }
            st.core.client_closed(five)
        };
        self.apply(outs);
    }
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let std = std::net::UdpSocket::bind(addr)?;
    std.set_nonblocking(true)?;
    // Larger buffers: bursts of media should not be dropped by the kernel first.
    let sock = socket2::SockRef::from(&std);
    let _ = sock.set_recv_buffer_size(1 << 21);
    let _ = sock.set_send_buffer_size(1 << 21);
    UdpSocket::from_std(std)
}
