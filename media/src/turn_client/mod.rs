//! A TURN client (RFC 8656), sans-IO: fed what the server sends and the time, it says what
//! to send to the server and what happened. The media session wraps its peer traffic in
//! it to reach a peer through a relay.
//!
//! One [`TurnClient`] is one allocation on one server, over UDP or a TCP stream (the caller
//! owns the socket). It authenticates with long-term or REST credentials (the 401 challenge,
//! a 438 stale nonce answered with the new nonce), refreshes the allocation before it
//! expires, binds a channel to every peer it is given (which installs the permission too,
//! RFC 8656 §12) and re-binds it before either lapses, and carries data as ChannelData once
//! a channel is bound — as Send indications never, because a peer's first packets wait
//! (bounded) for its channel instead.
//!
//! Driving it: call [`TurnClient::handle_input`] with every datagram (or stream chunk) from
//! the server, [`TurnClient::handle_timeout`] when [`TurnClient::poll_timeout`] comes, and
//! after either drain [`TurnClient::poll_transmit`] (bytes for the server) and
//! [`TurnClient::poll_event`].

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_stun::{self as stun, ChannelData, Class, Message, MessageBuilder, attr, method};

mod rto;
pub use rto::{MAX_RTO, MIN_RTO, RtoEstimator};

/// How the client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnTransport {
    Udp,
    /// A TCP (or TLS) stream: no retransmissions, ChannelData padded to 4 bytes.
    Tcp,
}

/// What a [`TurnClient`] needs to know.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    pub transport: TurnTransport,
    pub username: String,
    pub password: String,
    /// Allocation lifetime to ask for; the server may grant less.
    pub lifetime: Duration,
    /// First retransmission timeout over UDP until a round trip is measured (RFC 8489
    /// §6.2.1: 500 ms); after that it follows the measured round trip ([`RtoEstimator`]).
    /// Doubled for each retransmission of a request.
    pub rto: Duration,
    /// Transmissions of a request over UDP before it has failed (RFC 8489: Rc = 7; the last
    /// wait is 16 × RTO). Over TCP a request has 39.5 s, the same total.
    pub max_transmissions: u32,
}

impl TurnConfig {
    pub fn new(transport: TurnTransport, username: &str, password: &str) -> TurnConfig {
        TurnConfig {
            transport,
            username: username.into(),
            password: password.into(),
            lifetime: Duration::from_secs(600),
            rto: Duration::from_millis(500),
            max_transmissions: 7,
        }
    }
}

/// Why the allocation or a peer's binding failed: clear enough to show a user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurnError {
    #[error("the TURN server refused the credentials (401 Unauthorized): {0}")]
    Unauthorized(String),
    #[error("the TURN server will not relay to that peer (403 Forbidden): {0}")]
    Forbidden(String),
    #[error("the TURN server has no allocation for this client (437 Allocation Mismatch)")]
    AllocationMismatch,
    #[error("the TURN server's quota for this user is used up (486 Allocation Quota Reached)")]
    QuotaReached,
    #[error("the TURN server is out of capacity (508): {0}")]
    InsufficientCapacity(String),
    #[error("the TURN server refused the request: {code} {reason}")]
    Refused { code: u16, reason: String },
    #[error("no answer from the TURN server to {0} after {1:?}")]
    Timeout(&'static str, Duration),
    #[error("the connection to the TURN server closed")]
    ConnectionClosed,
    #[error("the TURN server keeps answering 438 Stale Nonce")]
    NonceLoop,
    #[error("the TURN server answered the allocation without the relayed address")]
    Malformed,
}

impl TurnError {
    fn from_code(code: u16, reason: &str) -> TurnError {
        let reason = reason.to_string();
        match code {
            401 => TurnError::Unauthorized(reason),
            403 => TurnError::Forbidden(reason),
            437 => TurnError::AllocationMismatch,
            486 => TurnError::QuotaReached,
            508 => TurnError::InsufficientCapacity(reason),
            code => TurnError::Refused { code, reason },
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnEvent {
    /// The allocation exists: `relayed` is the relay candidate, `mapped` this client's
    /// server-reflexive address as the server saw it.
    Allocated {
        relayed: SocketAddr,
        mapped: SocketAddr,
        lifetime: Duration,
    },
    /// A peer's channel is bound (and its IP permitted): data to and from it flows.
    PeerReady { peer: SocketAddr, channel: u16 },
    /// A peer's channel could not be bound; what was queued for it is dropped.
    PeerFailed { peer: SocketAddr, error: TurnError },
    /// Data a peer sent to the relayed address.
    Data { peer: SocketAddr, data: Vec<u8> },
    /// The allocation could not be made or was lost; the client does nothing more.
    Failed(TurnError),
    /// [`TurnClient::close`] finished (the server released the allocation, or did not
    /// answer in time).
    Closed,
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnStats {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    /// Data for a peer whose channel was not bound yet, dropped because its queue was full
    /// or the binding failed.
    pub dropped_unbound: u64,
    pub retransmissions: u64,
    /// Answers ignored: not STUN, no matching request, or a success without valid integrity.
    pub ignored: u64,
}

/// Peers (channels) one allocation holds; natter-turn allows 256 channels, 64 permitted IPs.
pub const MAX_PEERS: usize = 64;
/// Packets held for a peer whose channel is being bound.
pub const MAX_QUEUED_PER_PEER: usize = 16;
/// A stream chunk can hold at most this much of an incomplete message (64 KiB + header).
const MAX_STREAM_BUFFER: usize = 65_536 + 4;
/// Stale-nonce retries of one request before giving up.
const MAX_NONCE_RETRIES: u8 = 3;
/// Permissions last 300 s and channels 600 s (RFC 8656 §9, §12); a ChannelBind refreshes
/// both, so it is repeated before the shorter one lapses.
const PEER_REFRESH: Duration = Duration::from_secs(240);
const FIRST_CHANNEL: u16 = 0x4000;
const LAST_CHANNEL: u16 = 0x4FFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Allocate sent (the first one without credentials, to learn realm and nonce).
    Allocating,
    Allocated,
    Closing,
    Done,
}

#[derive(Debug, Clone)]
enum Kind {
    Allocate,
    Refresh { lifetime: u32 },
    ChannelBind { peer: SocketAddr, channel: u16 },
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Allocate => "Allocate",
            Kind::Refresh { .. } => "Refresh",
            Kind::ChannelBind { .. } => "ChannelBind",
        }
    }
}

struct Transaction {
    id: [u8; 12],
    kind: Kind,
    bytes: Vec<u8>,
    /// Whether it carried credentials (its success must then carry valid integrity).
    signed: bool,
    sends: u32,
    /// The first transmission, for the round-trip sample.
    sent_at: Instant,
    /// This request's first wait, doubled per retransmission.
    rto: Duration,
    next_send: Option<Instant>,
    deadline: Instant,
    nonce_retries: u8,
}

#[derive(Debug)]
struct Peer {
    channel: u16,
    bound: bool,
    /// When to bind (again): the first time at once, then before permission and channel lapse.
    bind_at: Option<Instant>,
    queued: VecDeque<Vec<u8>>,
}

/// Realm, nonce and key once the server has challenged.
struct Credentials {
    realm: String,
    nonce: Vec<u8>,
    key: [u8; 16],
}

/// One allocation on one TURN server: see the module documentation.
pub struct TurnClient {
    cfg: TurnConfig,
    phase: Phase,
    creds: Option<Credentials>,
    relayed: Option<SocketAddr>,
    refresh_at: Option<Instant>,
    transactions: Vec<Transaction>,
    peers: HashMap<SocketAddr, Peer>,
    by_channel: HashMap<u16, SocketAddr>,
    next_channel: u16,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<TurnEvent>,
    stream: Vec<u8>,
    rtt: RtoEstimator,
    pub stats: TurnStats,
}

impl TurnClient {
    /// Starts allocating: the first Allocate is ready in [`TurnClient::poll_transmit`].
    pub fn new(cfg: TurnConfig, now: Instant) -> TurnClient {
        let mut c = TurnClient {
            rtt: RtoEstimator::new(cfg.rto),
            cfg,
            phase: Phase::Allocating,
            creds: None,
            relayed: None,
            refresh_at: None,
            transactions: Vec::new(),
            peers: HashMap::new(),
            by_channel: HashMap::new(),
            next_channel: FIRST_CHANNEL,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stream: Vec::new(),
            stats: TurnStats::default(),
        };
        c.start(Kind::Allocate, now, 0);
        c
    }

    /// The relayed address, once allocated.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.relayed.filter(|_| self.phase == Phase::Allocated)
    }

    /// The smoothed round trip to the server, once a request was answered.
    pub fn srtt(&self) -> Option<Duration> {
        self.rtt.srtt()
    }

    /// Whether the allocation is live.
    pub fn is_allocated(&self) -> bool {
        self.phase == Phase::Allocated
    }

    /// Whether data to `peer` would go out now (its channel is bound).
    pub fn is_ready(&self, peer: SocketAddr) -> bool {
        self.peers.get(&peer).is_some_and(|p| p.bound)
    }

    /// Binds a channel to `peer` (permitting its IP) if it has none: do this for every
    /// remote candidate, so that what the peer sends to the relay gets through.
    pub fn add_peer(&mut self, peer: SocketAddr, now: Instant) -> Result<(), TurnError> {
        if self.peers.contains_key(&peer) {
            return Ok(());
        }
        if self.peers.len() >= MAX_PEERS || self.next_channel > LAST_CHANNEL {
            return Err(TurnError::InsufficientCapacity(format!(
                "this client binds at most {MAX_PEERS} peers"
            )));
        }
        let channel = self.next_channel;
        self.next_channel += 1;
        self.by_channel.insert(channel, peer);
        self.peers.insert(
            peer,
            Peer {
                channel,
                bound: false,
                bind_at: Some(now),
                queued: VecDeque::new(),
            },
        );
        if self.phase == Phase::Allocated {
            self.bind_due(now);
        }
        Ok(())
    }

    /// Sends `data` to `peer` through the relay: at once if its channel is bound, else after
    /// (binding it first if need be; at most [`MAX_QUEUED_PER_PEER`] packets wait).
    pub fn send_to(
        &mut self,
        peer: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Result<(), TurnError> {
        if matches!(self.phase, Phase::Closing | Phase::Done) {
            return Err(TurnError::ConnectionClosed);
        }
        self.add_peer(peer, now)?;
        let padded = self.cfg.transport == TurnTransport::Tcp;
        let p = self.peers.get_mut(&peer).expect("added above");
        if p.bound {
            let mut out = Vec::with_capacity(data.len() + 8);
            ChannelData::write(p.channel, data, padded, &mut out);
            self.stats.packets_sent += 1;
            self.stats.bytes_sent += data.len() as u64;
            self.transmits.push_back(out);
        } else if p.queued.len() < MAX_QUEUED_PER_PEER {
            p.queued.push_back(data.to_vec());
        } else {
            self.stats.dropped_unbound += 1;
        }
        Ok(())
    }

    /// Releases the allocation (a Refresh with lifetime 0); [`TurnEvent::Closed`] follows.
    pub fn close(&mut self, now: Instant) {
        match self.phase {
            Phase::Allocated => {
                self.phase = Phase::Closing;
                self.transactions.clear();
                self.start(Kind::Refresh { lifetime: 0 }, now, 0);
            }
            Phase::Allocating => {
                self.transactions.clear();
                self.finish(TurnEvent::Closed);
            }
            Phase::Closing | Phase::Done => {}
        }
    }

    /// The stream to the server closed (TCP): the allocation is gone with it.
    pub fn handle_closed(&mut self) {
        match self.phase {
            Phase::Closing => self.finish(TurnEvent::Closed),
            Phase::Done => {}
            _ => self.finish(TurnEvent::Failed(TurnError::ConnectionClosed)),
        }
    }

    /// Bytes from the server: one datagram over UDP, any chunk of the stream over TCP.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        match self.cfg.transport {
            TurnTransport::Udp => self.handle_message(bytes, now),
            TurnTransport::Tcp => {
                self.stream.extend_from_slice(bytes);
                let mut at = 0;
                while let Some(len) = stun::tcp_frame_len(&self.stream[at..]) {
                    if self.stream.len() - at < len {
                        break;
                    }
                    let frame = self.stream[at..at + len].to_vec();
                    at += len;
                    self.handle_message(&frame, now);
                }
                self.stream.drain(..at);
                if self.stream.len() > MAX_STREAM_BUFFER {
                    // No message is this long: the stream is not TURN.
                    self.stream.clear();
                    self.finish(TurnEvent::Failed(TurnError::ConnectionClosed));
                }
            }
        }
    }

    /// When [`TurnClient::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        let tx = self
            .transactions
            .iter()
            .flat_map(|t| [t.next_send, Some(t.deadline)])
            .flatten();
        let peers = if self.phase == Phase::Allocated {
            self.peers.values().filter_map(|p| p.bind_at).min()
        } else {
            None
        };
        tx.chain(self.refresh_at).chain(peers).min()
    }

    /// Retransmits, gives up on requests, refreshes what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase == Phase::Done {
            return;
        }
        let mut failed = Vec::new();
        for t in &mut self.transactions {
            if t.deadline <= now {
                failed.push(t.id);
            } else if t.next_send.is_some_and(|at| at <= now) {
                t.sends += 1;
                self.stats.retransmissions += 1;
                self.transmits.push_back(t.bytes.clone());
                t.next_send = if t.sends < self.cfg.max_transmissions {
                    Some(now + t.rto * 2u32.pow(t.sends - 1))
                } else {
                    None
                };
            }
        }
        for id in failed {
            let Some(t) = self.take_transaction(&id) else {
                continue;
            };
            let error = TurnError::Timeout(t.kind.name(), self.total_wait());
            self.fail(t.kind, error);
        }
        if self.phase == Phase::Allocated {
            if self.refresh_at.is_some_and(|at| at <= now) {
                self.refresh_at = None;
                let lifetime = self.cfg.lifetime.as_secs() as u32;
                self.start(Kind::Refresh { lifetime }, now, 0);
            }
            self.bind_due(now);
        }
    }

    /// Bytes to send to the server, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<TurnEvent> {
        self.events.pop_front()
    }

    fn total_wait(&self) -> Duration {
        match self.cfg.transport {
            // RTO × (1 + 2 + … + 2^(Rc-2)) + 16 × RTO (RFC 8489 §6.2.1).
            TurnTransport::Udp => {
                let n = self.cfg.max_transmissions.max(1);
                self.cfg.rto * ((1u32 << (n - 1)) - 1 + 16)
            }
            TurnTransport::Tcp => Duration::from_millis(39_500),
        }
    }

    fn bind_due(&mut self, now: Instant) {
        let due: Vec<(SocketAddr, u16)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.bind_at.is_some_and(|at| at <= now))
            .map(|(a, p)| (*a, p.channel))
            .collect();
        for (peer, channel) in due {
            if let Some(p) = self.peers.get_mut(&peer) {
                p.bind_at = None;
            }
            self.start(Kind::ChannelBind { peer, channel }, now, 0);
        }
    }

    fn start(&mut self, kind: Kind, now: Instant, nonce_retries: u8) {
        let mut id = [0u8; 12];
        getrandom::fill(&mut id).expect("the OS random source works");
        let m = match &kind {
            Kind::Allocate => method::ALLOCATE,
            Kind::Refresh { .. } => method::REFRESH,
            Kind::ChannelBind { .. } => method::CHANNEL_BIND,
        };
        let mut b = MessageBuilder::new(m, Class::Request, id);
        match &kind {
            Kind::Allocate => {
                b.add(attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
                if self.creds.is_some() {
                    b.add_u32(attr::LIFETIME, self.cfg.lifetime.as_secs() as u32);
                }
            }
            Kind::Refresh { lifetime } => {
                b.add_u32(attr::LIFETIME, *lifetime);
            }
            Kind::ChannelBind { peer, channel } => {
                b.add_u32(attr::CHANNEL_NUMBER, u32::from(*channel) << 16);
                b.add_xor_address(attr::XOR_PEER_ADDRESS, *peer);
            }
        }
        let signed = match &self.creds {
            Some(c) => {
                b.add(attr::USERNAME, self.cfg.username.as_bytes());
                b.add(attr::REALM, c.realm.as_bytes());
                b.add(attr::NONCE, &c.nonce);
                b.integrity(&c.key);
                true
            }
            None => false,
        };
        b.fingerprint();
        let bytes = b.into_bytes();
        let rto = self.rtt.rto();
        let next_send = (self.cfg.transport == TurnTransport::Udp
            && self.cfg.max_transmissions > 1)
            .then(|| now + rto);
        self.transmits.push_back(bytes.clone());
        self.transactions.push(Transaction {
            id,
            kind,
            bytes,
            signed,
            sends: 1,
            sent_at: now,
            rto,
            next_send,
            deadline: now + self.total_wait(),
            nonce_retries,
        });
    }

    fn take_transaction(&mut self, id: &[u8; 12]) -> Option<Transaction> {
        let i = self.transactions.iter().position(|t| &t.id == id)?;
        Some(self.transactions.swap_remove(i))
    }

    fn handle_message(&mut self, bytes: &[u8], now: Instant) {
        if stun::is_channel_data(bytes) {
            let padded = self.cfg.transport == TurnTransport::Tcp;
            let Ok((cd, _)) = ChannelData::parse(bytes, padded) else {
                self.stats.ignored += 1;
                return;
            };
            match self.by_channel.get(&cd.channel) {
                Some(peer) if self.peers.get(peer).is_some_and(|p| p.bound) => {
                    let peer = *peer;
                    self.received(peer, cd.data.to_vec());
                }
                _ => self.stats.ignored += 1,
            }
            return;
        }
        let Ok(m) = Message::parse(bytes) else {
            self.stats.ignored += 1;
            return;
        };
        match m.class {
            Class::Indication if m.method == method::DATA => {
                // Data from a permitted peer without a channel (yet).
                match (m.xor_address(attr::XOR_PEER_ADDRESS), m.get(attr::DATA)) {
                    (Ok(Some(peer)), Some(data)) if self.phase == Phase::Allocated => {
                        self.received(peer, data.to_vec());
                    }
                    _ => self.stats.ignored += 1,
                }
            }
            Class::Success | Class::Error => self.handle_answer(&m, now),
            _ => self.stats.ignored += 1,
        }
    }

    fn received(&mut self, peer: SocketAddr, data: Vec<u8>) {
        self.stats.packets_received += 1;
        self.stats.bytes_received += data.len() as u64;
        self.events.push_back(TurnEvent::Data { peer, data });
    }

    fn handle_answer(&mut self, m: &Message<'_>, now: Instant) {
        let Some(i) = self
            .transactions
            .iter()
            .position(|t| t.id == m.transaction_id)
        else {
            self.stats.ignored += 1; // a late duplicate, or not ours
            return;
        };
        // A success to a signed request must prove it came from the server that knows the
        // key; errors (401, 438) come unsigned before the key is agreed.
        let signed = self.transactions[i].signed;
        if m.class == Class::Success && signed {
            let ok = self
                .creds
                .as_ref()
                .is_some_and(|c| m.check_integrity(&c.key));
            if !ok {
                self.stats.ignored += 1;
                return;
            }
        }
        let t = self.transactions.swap_remove(i);
        if t.sends == 1 {
            self.rtt.sample(now.saturating_duration_since(t.sent_at));
        }
        if m.class == Class::Success {
            self.succeeded(t.kind, m, now);
            return;
        }
        let (code, reason) = match m.error_code() {
            Ok(Some(e)) => e,
            _ => (400, "error answer without a valid ERROR-CODE"),
        };
        match code {
            // The challenge (first Allocate) or a nonce the server no longer takes: learn
            // realm and nonce, try again with credentials, a few times at most.
            401 | 438 if t.nonce_retries < MAX_NONCE_RETRIES => {
                let realm = m.string(attr::REALM, 763).ok().flatten();
                let nonce = m.get(attr::NONCE);
                let Some(nonce) = nonce else {
                    self.fail(t.kind, TurnError::from_code(code, reason));
                    return;
                };
                let realm = match (realm, &self.creds) {
                    (Some(r), _) => r.to_string(),
                    (None, Some(c)) => c.realm.clone(),
                    (None, None) => {
                        self.fail(t.kind, TurnError::from_code(code, reason));
                        return;
                    }
                };
                // A 401 to a request that already carried credentials for this realm is
                // a refusal, not a challenge.
                let was_challenge = code == 438
                    || !t.signed
                    || self.creds.as_ref().is_some_and(|c| c.realm != realm);
                if !was_challenge {
                    self.fail(t.kind, TurnError::from_code(code, reason));
                    return;
                }
                let key = stun::long_term_key(&self.cfg.username, &realm, &self.cfg.password);
                self.creds = Some(Credentials {
                    realm,
                    nonce: nonce.to_vec(),
                    key,
                });
                let retries = if t.signed {
                    t.nonce_retries + 1
                } else {
                    t.nonce_retries
                };
                self.start(t.kind, now, retries);
            }
            438 => self.fail(t.kind, TurnError::NonceLoop),
            _ => self.fail(t.kind, TurnError::from_code(code, reason)),
        }
    }

    fn succeeded(&mut self, kind: Kind, m: &Message<'_>, now: Instant) {
        match kind {
            Kind::Allocate => {
                let relayed = m.xor_address(attr::XOR_RELAYED_ADDRESS).ok().flatten();
                let mapped = m.xor_address(attr::XOR_MAPPED_ADDRESS).ok().flatten();
                let (Some(relayed), Some(mapped)) = (relayed, mapped) else {
                    self.finish(TurnEvent::Failed(TurnError::Malformed));
                    return;
                };
                if self.phase != Phase::Allocating {
                    return;
                }
                let lifetime = self.granted(m);
                self.phase = Phase::Allocated;
                self.relayed = Some(relayed);
                self.schedule_refresh(lifetime, now);
                self.events.push_back(TurnEvent::Allocated {
                    relayed,
                    mapped,
                    lifetime,
                });
                self.bind_due(now);
            }
            Kind::Refresh { lifetime: 0 } => self.finish(TurnEvent::Closed),
            Kind::Refresh { .. } => {
                let lifetime = self.granted(m);
                self.schedule_refresh(lifetime, now);
            }
            Kind::ChannelBind { peer, channel } => {
                let padded = self.cfg.transport == TurnTransport::Tcp;
                let Some(p) = self.peers.get_mut(&peer) else {
                    return;
                };
                p.bind_at = Some(now + PEER_REFRESH);
                if p.bound {
                    return;
                }
                p.bound = true;
                let queued: Vec<Vec<u8>> = p.queued.drain(..).collect();
                self.events
                    .push_back(TurnEvent::PeerReady { peer, channel });
                for data in queued {
                    let mut out = Vec::with_capacity(data.len() + 8);
                    ChannelData::write(channel, &data, padded, &mut out);
                    self.stats.packets_sent += 1;
                    self.stats.bytes_sent += data.len() as u64;
                    self.transmits.push_back(out);
                }
            }
        }
    }

    /// The lifetime the server granted (LIFETIME), or the one asked for.
    fn granted(&self, m: &Message<'_>) -> Duration {
        match m.u32(attr::LIFETIME) {
            Ok(Some(s)) => Duration::from_secs(u64::from(s)),
            _ => self.cfg.lifetime,
        }
    }

    /// A minute before expiry, or at half the lifetime if that is shorter than two minutes.
    fn schedule_refresh(&mut self, lifetime: Duration, now: Instant) {
        let margin = Duration::from_secs(60).min(lifetime / 2);
        self.refresh_at = Some(now + lifetime - margin);
    }

    fn fail(&mut self, kind: Kind, error: TurnError) {
        match kind {
            Kind::ChannelBind { peer, channel } => {
                let dropped = self.peers.remove(&peer).map_or(0, |p| p.queued.len());
                self.by_channel.remove(&channel);
                self.stats.dropped_unbound += dropped as u64;
                self.events.push_back(TurnEvent::PeerFailed { peer, error });
            }
            Kind::Refresh { lifetime: 0 } => self.finish(TurnEvent::Closed),
            Kind::Allocate | Kind::Refresh { .. } => self.finish(TurnEvent::Failed(error)),
        }
    }

    fn finish(&mut self, event: TurnEvent) {
        if self.phase == Phase::Done {
            return;
        }
        self.phase = Phase::Done;
        self.transactions.clear();
        self.refresh_at = None;
        for p in self.peers.values() {
            self.stats.dropped_unbound += p.queued.len() as u64;
        }
        self.peers.clear();
        self.by_channel.clear();
        self.events.push_back(event);
    }
}
