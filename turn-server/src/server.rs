//! The TURN server core (RFC 8656), sans-IO: fed packets from clients and peers and the
//! time, it returns what to send where, which relay sockets to bind and release.
//!
//! The data path has its own two calls ([`Server::route_from_client`] for ChannelData and
//! [`Server::route_from_peer`]) that allocate nothing: the shell sends the bytes it already
//! holds. Everything else (STUN requests and indications) goes through [`Server::handle`].
//!
//! Safety by default: relaying to addresses that are no public Internet peer (loopback,
//! private, CGNAT, link-local, reserved, NAT64, ...: see [`crate::peers`]) is refused (the
//! CVE-2020-26262 class) unless an allow-list says otherwise;
//! allocations per user are capped; each allocation has a byte-rate cap and bounded
//! permission and channel tables; nonces are stateless and expire; answers to
//! unauthenticated UDP requests are small and rate-limited per source; idle TCP/TLS
//! connections are closed.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

pub use crate::auth::AuthFailure;
use crate::auth::Nonces;
use crate::limits::{Bucket, SourceLimiter, take};
use crate::peers;
pub use crate::peers::{IpNet, denied_by_default};
use crate::quota::{Owner, UserQuotas};
use crate::streams::Streams;
use crate::stun::{self, Class, Message, MessageBuilder, attr, method};

mod allocate;

/// Client transport of a 5-tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

/// A client's connection as the server sees it (RFC 8656 §2: the 5-tuple).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FiveTuple {
    pub transport: Transport,
    pub client: SocketAddr,
    pub server: SocketAddr,
}

/// The default per-allocation cap: 1,000,000 bytes/s (8 Mbit/s) both ways together, so 4
/// Mbit/s each way. A 1:1 video call relays one 720p stream out and one in per allocation,
/// each at most 2.5 Mbit/s (libwebrtc's ceiling for 720p) plus Opus, RTX and RTP/UDP/TURN
/// headers: ~3 Mbit/s a way. Enough for that with room for a simulcast uplink, and it
/// stops one credential from turning the relay into a bulk pipe.
pub const DEFAULT_BANDWIDTH_BYTES_PER_S: u64 = 1_000_000;

/// The default limit on answers to unauthenticated UDP requests per source address.
/// Legitimate ones are few: one challenge per new allocation and a Binding now and then
/// (browsers refresh server-reflexive candidates every ~10 s), so 20 a second serves a NAT
/// with a hundred active users; a forged-source flood reflects at most 20 x 68 bytes
/// (~11 kbit/s) at any one victim.
pub const DEFAULT_UNAUTH_ANSWERS_PER_S: u32 = 20;

/// Server settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub realm: String,
    /// Long-term users: name → password.
    pub users: HashMap<String, String>,
    /// coturn-compatible REST secret (`expiry:user` usernames).
    pub rest_secret: Option<Vec<u8>>,
    /// Addresses relays are allocated on; one per family at most.
    pub relay_v4: Option<Ipv4Addr>,
    pub relay_v6: Option<Ipv6Addr>,
    pub relay_ports: (u16, u16),
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub nonce_lifetime: Duration,
    /// Allocations per user at once: per static user name, per REST `user` (of
    /// `expiry:user`, so not per credential).
    pub user_quota: usize,
    /// Allocations in all.
    pub total_quota: usize,
    /// Relayed bytes per second per allocation, both ways together, with a one-second
    /// burst; 0 = no cap.
    pub bandwidth_bytes_per_s: u64,
    /// Peers allowed even where the default would deny (tests, LANs).
    pub allowed_peers: Vec<IpNet>,
    /// Peers always refused.
    pub denied_peers: Vec<IpNet>,
    /// SOFTWARE of successful Allocate answers; answers an unauthenticated sender can get
    /// (Binding, errors) carry none, as every byte of them can be reflected.
    pub software: String,
    /// Answers a second, per source address (IPv6: per /64), to UDP requests that did not
    /// authenticate (Binding, challenges, errors); one-second burst; 0 = no limit.
    pub unauth_answers_per_s: u32,
    /// TCP/TLS connections are closed after this long without a complete STUN or
    /// ChannelData message, from the time they connect; one holding a live allocation stays
    /// open until the allocation expires (its refreshes are messages).
    pub stream_idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            realm: "natter".into(),
            users: HashMap::new(),
            rest_secret: None,
            relay_v4: Some(Ipv4Addr::LOCALHOST),
            relay_v6: None,
            relay_ports: (49152, 65535),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            nonce_lifetime: Duration::from_secs(600),
            user_quota: 10,
            total_quota: 10_000,
            bandwidth_bytes_per_s: DEFAULT_BANDWIDTH_BYTES_PER_S,
            allowed_peers: Vec::new(),
            denied_peers: Vec::new(),
            software: "natter-turn".into(),
            unauth_answers_per_s: DEFAULT_UNAUTH_ANSWERS_PER_S,
            stream_idle_timeout: Duration::from_secs(30),
        }
    }
}

const PERMISSION_LIFETIME_MS: u64 = 300_000;
const CHANNEL_LIFETIME_MS: u64 = 600_000;
/// Bounded memory per allocation.
const MAX_PERMISSIONS: usize = 64;
const MAX_CHANNELS: usize = 256;
const MAX_USERNAME: usize = 512;
const MAX_REALM_NONCE: usize = 763;

/// What the shell must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    ToClient {
        to: FiveTuple,
        bytes: Vec<u8>,
    },
    ToPeer {
        relay: SocketAddr,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    /// Bind a UDP socket on `relay` for `client`'s new allocation, then send `response`.
    /// If the bind fails, call [`Server::bind_failed`].
    Bind {
        relay: SocketAddr,
        client: FiveTuple,
        response: Vec<u8>,
    },
    /// Close the relay socket.
    Release {
        relay: SocketAddr,
    },
    /// Close the TCP/TLS connection of `client`: it brought no complete message for the
    /// idle timeout and holds no live allocation. (Its allocation is gone already.)
    Close {
        client: FiveTuple,
    },
}

/// Counters the shell exports.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub allocations_created: u64,
    pub packets_to_peers: u64,
    pub bytes_to_peers: u64,
    pub packets_to_clients: u64,
    pub bytes_to_clients: u64,
    pub auth_failures: HashMap<&'static str, u64>,
    pub refused_peers: u64,
    pub dropped_over_bandwidth: u64,
    /// Answers to unauthenticated UDP requests not sent: the source was over its rate.
    pub dropped_unauthenticated: u64,
    /// TCP/TLS connections closed for being idle.
    pub closed_idle_streams: u64,
    /// TCP/TLS connections cut off because they left too much unread (counted by the
    /// shell, which holds what is queued toward them).
    pub cut_off_streams: u64,
}

struct Allocation {
    relay: SocketAddr,
    username: String,
    owner: Owner,
    key: [u8; 16],
    expires_ms: u64,
    /// The transaction that created it (a retransmitted Allocate gets the same answer).
    created_by: [u8; 12],
    created_response: Vec<u8>,
    lifetime_s: u32,
    /// Relay ports tried that the shell could not bind.
    bind_attempts: u8,
    permissions: HashMap<IpAddr, u64>,
    channels: HashMap<u16, (SocketAddr, u64)>,
    peer_channels: HashMap<SocketAddr, u16>,
    bucket: Bucket,
}

/// Where a peer's packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerRoute {
    pub client: FiveTuple,
    /// Bound channel (send ChannelData), or `None` (send a Data indication).
    pub channel: Option<u16>,
}

pub struct Server {
    cfg: Config,
    nonces: Nonces,
    unauthenticated: SourceLimiter,
    streams: Streams,
    allocations: HashMap<FiveTuple, Allocation>,
    by_relay: HashMap<SocketAddr, FiveTuple>,
    per_user: UserQuotas,
    next_port: u16,
    pub stats: Stats,
}

struct Authed {
    username: String,
    /// Whose `user_quota` its allocations count against.
    owner: Owner,
    key: [u8; 16],
}

fn now_s(now_ms: u64) -> u64 {
    now_ms / 1000
}

impl Server {
    pub fn new(cfg: Config, nonce_key: [u8; 32]) -> Server {
        // Start somewhere in the range, so servers sharing a host rarely pick the same ports.
        let (lo, hi) = cfg.relay_ports;
        let span = u32::from(hi - lo) + 1;
        let r = u32::from_le_bytes([nonce_key[0], nonce_key[1], nonce_key[2], nonce_key[3]]);
        let next_port = lo + (r % span) as u16;
        Server {
            nonces: Nonces::new(nonce_key, cfg.nonce_lifetime),
            unauthenticated: SourceLimiter::new(cfg.unauth_answers_per_s),
            // A TCP/TLS connection is there to carry an allocation: no more of them than
            // allocations may exist.
            streams: Streams::new(cfg.stream_idle_timeout.as_millis() as u64, cfg.total_quota),
            cfg,
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            per_user: UserQuotas::default(),
            next_port,
            stats: Stats::default(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    fn password(&self, username: &str, now_ms: u64) -> Result<(String, Owner), AuthFailure> {
        if let Some(p) = self.cfg.users.get(username) {
            return Ok((p.clone(), Owner::Static(username.to_owned())));
        }
        if let Some(secret) = &self.cfg.rest_secret {
            return natter_signaling::turn::password(secret, username, now_s(now_ms))
                .map(|p| (p, Owner::rest(username)))
                .map_err(|e| match e {
                    natter_signaling::turn::CredentialError::Expired => AuthFailure::Expired,
                    natter_signaling::turn::CredentialError::Malformed => AuthFailure::UnknownUser,
                });
        }
        Err(AuthFailure::UnknownUser)
    }

    fn auth_fail(&mut self, why: AuthFailure) {
        *self.stats.auth_failures.entry(why.label()).or_default() += 1;
    }

    /// Checks the long-term credentials of a request; on failure returns the error answer.
    fn authenticate(
        &mut self,
        m: &Message<'_>,
        five: &FiveTuple,
        now_ms: u64,
    ) -> Result<Authed, Vec<u8>> {
        // No SOFTWARE on error answers: they go to unauthenticated senders, and every byte
        // is amplification.
        let challenge = |s: &Server, code: u16, reason: &str| {
            MessageBuilder::answer(m, Class::Error)
                .add_error(code, reason)
                .add(attr::REALM, s.cfg.realm.as_bytes())
                .add(
                    attr::NONCE,
                    s.nonces.issue(five.client.ip(), now_ms).as_bytes(),
                )
                .fingerprint()
                .finish()
        };
        if !m.has_integrity() {
            // The answer anyone can get by sending 28 bytes from a forged address: only
            // what RFC 8489 §9.2.4 requires (no reason phrase, no SOFTWARE), 68 bytes.
            self.auth_fail(AuthFailure::NoCredentials);
            return Err(challenge(self, 401, ""));
        }
        let (Ok(Some(username)), Ok(Some(_realm)), Ok(Some(nonce))) = (
            m.string(attr::USERNAME, MAX_USERNAME),
            m.string(attr::REALM, MAX_REALM_NONCE),
            m.string(attr::NONCE, MAX_REALM_NONCE),
        ) else {
            return Err(error_answer(
                m,
                400,
                "Bad Request: USERNAME, REALM and NONCE are required",
            ));
        };
        if !self.nonces.valid(nonce, five.client.ip(), now_ms) {
            self.auth_fail(AuthFailure::StaleNonce);
            return Err(challenge(self, 438, "Stale Nonce"));
        }
        let (password, owner) = match self.password(username, now_ms) {
            Ok(p) => p,
            Err(why) => {
                self.auth_fail(why);
                return Err(challenge(self, 401, "Unauthorized"));
            }
        };
        let key = stun::long_term_key(username, &self.cfg.realm, &password);
        if !m.check_integrity(&key) {
            self.auth_fail(AuthFailure::BadIntegrity);
            return Err(challenge(self, 401, "Unauthorized"));
        }
        Ok(Authed {
            username: username.to_owned(),
            owner,
            key,
        })
    }

    fn peer_allowed(&mut self, peer: SocketAddr) -> bool {
        let ok = peers::allowed(peer.ip(), &self.cfg.allowed_peers, &self.cfg.denied_peers);
        if !ok {
            self.stats.refused_peers += 1;
        }
        ok
    }

    /// Why `five`'s allocation may not use `peer` (error code and reason), if it may not:
    /// another address family than its relay, or a refused address.
    fn refuse_peer(&mut self, five: &FiveTuple, peer: SocketAddr) -> Option<(u16, &'static str)> {
        if peer.is_ipv4() != self.allocations[five].relay.is_ipv4() {
            return Some((443, "Peer Address Family Mismatch"));
        }
        if !self.peer_allowed(peer) {
            return Some((403, "Forbidden: peer address not allowed"));
        }
        None
    }

    /// Whether an answer to a request that did not authenticate may go to `five`: over UDP,
    /// where the source address may be forged, only within the source's rate.
    fn admit_unauthenticated(&mut self, five: &FiveTuple, now_ms: u64) -> bool {
        if five.transport != Transport::Udp || self.unauthenticated.admit(five.client.ip(), now_ms)
        {
            return true;
        }
        self.stats.dropped_unauthenticated += 1;
        false
    }

    /// A STUN packet from a client (a request or an indication).
    pub fn handle(&mut self, five: FiveTuple, bytes: &[u8], now_ms: u64) -> Vec<Output> {
        let Ok(m) = Message::parse(bytes) else {
            return Vec::new(); // not STUN: dropped
        };
        self.streams.message(&five, now_ms);
        let reply = |bytes: Vec<u8>| vec![Output::ToClient { to: five, bytes }];
        match m.class {
            Class::Request => {}
            Class::Indication if m.method == method::SEND => {
                return self.send_indication(five, &m, now_ms);
            }
            _ => return Vec::new(),
        }
        let unknown = m.unknown_required();
        if !unknown.is_empty() {
            if !self.admit_unauthenticated(&five, now_ms) {
                return Vec::new();
            }
            let list: Vec<u8> = unknown.iter().flat_map(|t| t.to_be_bytes()).collect();
            return reply(
                MessageBuilder::answer(&m, Class::Error)
                    .add_error(420, "Unknown Attribute")
                    .add(attr::UNKNOWN_ATTRIBUTES, &list)
                    .fingerprint()
                    .finish(),
            );
        }
        if m.method == method::BINDING {
            if !self.admit_unauthenticated(&five, now_ms) {
                return Vec::new();
            }
            return reply(
                MessageBuilder::answer(&m, Class::Success)
                    .add_xor_address(attr::XOR_MAPPED_ADDRESS, five.client)
                    .fingerprint()
                    .finish(),
            );
        }
        let auth = match self.authenticate(&m, &five, now_ms) {
            Ok(a) => a,
            Err(e) if self.admit_unauthenticated(&five, now_ms) => return reply(e),
            Err(_) => return Vec::new(),
        };
        match m.method {
            method::ALLOCATE => self.allocate(five, &m, auth, now_ms),
            method::REFRESH | method::CREATE_PERMISSION | method::CHANNEL_BIND => {
                let Some(alloc) = self
                    .allocations
                    .get(&five)
                    .filter(|a| a.expires_ms > now_ms)
                else {
                    return reply(signed_error(&m, 437, "Allocation Mismatch", &auth.key));
                };
                if alloc.username != auth.username {
                    self.auth_fail(AuthFailure::WrongUser);
                    return reply(signed_error(&m, 441, "Wrong Credentials", &auth.key));
                }
                match m.method {
                    method::REFRESH => self.refresh(five, &m, &auth, now_ms),
                    method::CREATE_PERMISSION => self.create_permission(five, &m, &auth, now_ms),
                    _ => self.channel_bind(five, &m, &auth, now_ms),
                }
            }
            _ => reply(signed_error(
                &m,
                400,
                "Bad Request: unsupported method",
                &auth.key,
            )),
        }
    }

    fn create_permission(
        &mut self,
        five: FiveTuple,
        m: &Message<'_>,
        auth: &Authed,
        now_ms: u64,
    ) -> Vec<Output> {
        let reply = |bytes: Vec<u8>| vec![Output::ToClient { to: five, bytes }];
        let peers = match m.xor_addresses(attr::XOR_PEER_ADDRESS) {
            Ok(p) if !p.is_empty() => p,
            _ => {
                return reply(signed_error(
                    m,
                    400,
                    "Bad Request: XOR-PEER-ADDRESS is required",
                    &auth.key,
                ));
            }
        };
        for p in &peers {
            if let Some((code, reason)) = self.refuse_peer(&five, *p) {
                return reply(signed_error(m, code, reason, &auth.key));
            }
        }
        let a = self
            .allocations
            .get_mut(&five)
            .expect("checked by the caller");
        let new = peers
            .iter()
            .filter(|p| !a.permissions.contains_key(&p.ip()))
            .count();
        if a.permissions.len() + new > MAX_PERMISSIONS {
            return reply(signed_error(
                m,
                508,
                "Insufficient Capacity: too many permissions",
                &auth.key,
            ));
        }
        for p in peers {
            a.permissions
                .insert(p.ip(), now_ms + PERMISSION_LIFETIME_MS);
        }
        reply(
            MessageBuilder::answer(m, Class::Success)
                .integrity(&auth.key)
                .fingerprint()
                .finish(),
        )
    }

    fn channel_bind(
        &mut self,
        five: FiveTuple,
        m: &Message<'_>,
        auth: &Authed,
        now_ms: u64,
    ) -> Vec<Output> {
        let reply = |bytes: Vec<u8>| vec![Output::ToClient { to: five, bytes }];
        let channel = match m.get(attr::CHANNEL_NUMBER) {
            Some(v) if v.len() == 4 => u16::from_be_bytes([v[0], v[1]]),
            _ => {
                return reply(signed_error(
                    m,
                    400,
                    "Bad Request: CHANNEL-NUMBER is required",
                    &auth.key,
                ));
            }
        };
        // RFC 8656 narrowed channels to 0x4000-0x4FFF; RFC 5766 clients (coturn's among
        // them) still use up to 0x7FFF, which cannot be mistaken for anything else.
        if !(0x4000..=0x7FFF).contains(&channel) {
            return reply(signed_error(
                m,
                400,
                "Bad Request: channel number out of range",
                &auth.key,
            ));
        }
        let peer = match m.xor_address(attr::XOR_PEER_ADDRESS) {
            Ok(Some(p)) => p,
            _ => {
                return reply(signed_error(
                    m,
                    400,
                    "Bad Request: XOR-PEER-ADDRESS is required",
                    &auth.key,
                ));
            }
        };
        if let Some((code, reason)) = self.refuse_peer(&five, peer) {
            return reply(signed_error(m, code, reason, &auth.key));
        }
        let a = self
            .allocations
            .get_mut(&five)
            .expect("checked by the caller");
        let clash = a.channels.get(&channel).is_some_and(|(p, _)| *p != peer)
            || a.peer_channels.get(&peer).is_some_and(|c| *c != channel);
        if clash {
            return reply(signed_error(
                m,
                400,
                "Bad Request: channel or peer already bound otherwise",
                &auth.key,
            ));
        }
        if !a.channels.contains_key(&channel) && a.channels.len() >= MAX_CHANNELS {
            return reply(signed_error(
                m,
                508,
                "Insufficient Capacity: too many channels",
                &auth.key,
            ));
        }
        a.channels
            .insert(channel, (peer, now_ms + CHANNEL_LIFETIME_MS));
        a.peer_channels.insert(peer, channel);
        let perm = a.permissions.entry(peer.ip()).or_default();
        *perm = (*perm).max(now_ms + PERMISSION_LIFETIME_MS);
        reply(
            MessageBuilder::answer(m, Class::Success)
                .integrity(&auth.key)
                .fingerprint()
                .finish(),
        )
    }

    fn send_indication(&mut self, five: FiveTuple, m: &Message<'_>, now_ms: u64) -> Vec<Output> {
        let (Ok(Some(peer)), Some(data)) =
            (m.xor_address(attr::XOR_PEER_ADDRESS), m.get(attr::DATA))
        else {
            return Vec::new();
        };
        match self.admit_to_peer(five, peer, data.len(), now_ms) {
            Some(relay) => vec![Output::ToPeer {
                relay,
                peer,
                data: data.to_vec(),
            }],
            None => Vec::new(),
        }
    }

    /// Checks allocation, permission and bandwidth for data to `peer`; the relay to send from.
    fn admit_to_peer(
        &mut self,
        five: FiveTuple,
        peer: SocketAddr,
        len: usize,
        now_ms: u64,
    ) -> Option<SocketAddr> {
        let cap = self.cfg.bandwidth_bytes_per_s;
        let a = self.allocations.get_mut(&five)?;
        if a.expires_ms <= now_ms || a.permissions.get(&peer.ip()).is_none_or(|e| *e <= now_ms) {
            return None;
        }
        if !take(&mut a.bucket, cap, len, now_ms) {
            self.stats.dropped_over_bandwidth += 1;
            return None;
        }
        self.stats.packets_to_peers += 1;
        self.stats.bytes_to_peers += len as u64;
        Some(a.relay)
    }

    /// ChannelData from a client: where to send its `len` bytes of data, if anywhere.
    pub fn route_from_client(
        &mut self,
        five: FiveTuple,
        channel: u16,
        len: usize,
        now_ms: u64,
    ) -> Option<(SocketAddr, SocketAddr)> {
        self.streams.message(&five, now_ms);
        let (peer, expires) = *self.allocations.get(&five)?.channels.get(&channel)?;
        if expires <= now_ms {
            return None;
        }
        let relay = self.admit_to_peer(five, peer, len, now_ms)?;
        Some((relay, peer))
    }

    /// A packet from `peer` arrived on `relay`: which client gets it, and how.
    pub fn route_from_peer(
        &mut self,
        relay: SocketAddr,
        peer: SocketAddr,
        len: usize,
        now_ms: u64,
    ) -> Option<PeerRoute> {
        let cap = self.cfg.bandwidth_bytes_per_s;
        let five = *self.by_relay.get(&relay)?;
        let a = self.allocations.get_mut(&five)?;
        if a.expires_ms <= now_ms || a.permissions.get(&peer.ip()).is_none_or(|e| *e <= now_ms) {
            return None;
        }
        if !take(&mut a.bucket, cap, len, now_ms) {
            self.stats.dropped_over_bandwidth += 1;
            return None;
        }
        let channel = a
            .peer_channels
            .get(&peer)
            .copied()
            .filter(|c| a.channels.get(c).is_some_and(|(_, e)| *e > now_ms));
        self.stats.packets_to_clients += 1;
        self.stats.bytes_to_clients += len as u64;
        Some(PeerRoute {
            client: five,
            channel,
        })
    }

    /// A Data indication carrying `data` from `peer` (for peers without a channel).
    pub fn data_indication(peer: SocketAddr, data: &[u8]) -> Vec<u8> {
        let tid: [u8; 12] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ data.len() as u8);
        MessageBuilder::new(method::DATA, Class::Indication, tid)
            .add_xor_address(attr::XOR_PEER_ADDRESS, peer)
            .add(attr::DATA, data)
            .finish()
    }

    /// A TCP/TLS client connected (`five`): from now on it has the idle timeout to send a
    /// complete message. False when the server has as many connections as `total_quota`:
    /// the shell closes this one.
    pub fn stream_opened(&mut self, five: FiveTuple, now_ms: u64) -> bool {
        self.streams.open(five, now_ms)
    }

    /// A TCP/TLS client connection closed: its allocation goes (RFC 8656 §3.1).
    pub fn client_closed(&mut self, five: FiveTuple) -> Vec<Output> {
        self.streams.close(&five);
        match self.remove(five) {
            Some(a) => vec![Output::Release { relay: a.relay }],
            None => Vec::new(),
        }
    }

    /// Expires allocations, permissions and channels; closes idle TCP/TLS connections.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Output> {
        self.unauthenticated.prune(now_ms);
        let expired: Vec<FiveTuple> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires_ms <= now_ms)
            .map(|(f, _)| *f)
            .collect();
        let mut out = Vec::new();
        for f in expired {
            if let Some(a) = self.remove(f) {
                out.push(Output::Release { relay: a.relay });
            }
        }
        for a in self.allocations.values_mut() {
            a.permissions.retain(|_, e| *e > now_ms);
            let gone: Vec<(u16, SocketAddr)> = a
                .channels
                .iter()
                .filter(|(_, (_, e))| *e <= now_ms)
                .map(|(c, (p, _))| (*c, *p))
                .collect();
            for (c, p) in gone {
                a.channels.remove(&c);
                a.peer_channels.remove(&p);
            }
        }
        let allocations = &self.allocations;
        for five in self
            .streams
            .idle(now_ms, |f| allocations.get(f).map(|a| a.expires_ms))
        {
            self.streams.close(&five);
            self.stats.closed_idle_streams += 1;
            out.push(Output::Close { client: five });
        }
        out
    }
}

fn error_answer(m: &Message<'_>, code: u16, reason: &str) -> Vec<u8> {
    MessageBuilder::answer(m, Class::Error)
        .add_error(code, reason)
        .fingerprint()
        .finish()
}

fn signed_error(m: &Message<'_>, code: u16, reason: &str, key: &[u8]) -> Vec<u8> {
    MessageBuilder::answer(m, Class::Error)
        .add_error(code, reason)
        .integrity(key)
        .fingerprint()
        .finish()
}
