//! The TURN server core (RFC 8656), sans-IO: fed packets from clients and peers and the
//! time, it returns what to send where, which relay sockets to bind and release.
//!
//! The data path has its own two calls ([`Server::route_from_client`] for ChannelData and
//! [`Server::route_from_peer`]) that allocate nothing: the shell sends the bytes it already
//! holds. Everything else (STUN requests and indications) goes through [`Server::handle`].
//!
//! Safety by default: relaying to loopback, private, link-local, multicast and unspecified
//! addresses is refused (the CVE-2020-26262 class) unless an allow-list says otherwise;
//! allocations per user are capped; each allocation has a byte-rate cap and bounded
//! permission and channel tables; nonces are stateless and expire.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha1::Sha1;

use crate::stun::{self, Class, Message, MessageBuilder, attr, method};

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

/// An IP network, for allow-lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let p = u32::from(self.prefix.min(32));
                let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let p = u32::from(self.prefix.min(128));
                let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<IpNet, String> {
        let (a, p) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{s:?} is not an address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = if p.is_empty() {
            max
        } else {
            p.parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: bad prefix length"))?
        };
        Ok(IpNet { addr, prefix })
    }
}

/// Whether relaying to `ip` is refused unless allow-listed: loopback, private (RFC 1918,
/// fc00::/7), link-local, multicast, unspecified, broadcast, and IPv4 hidden in IPv6.
pub fn denied_by_default(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 0
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return denied_by_default(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || first & 0xfe00 == 0xfc00
                || first & 0xffc0 == 0xfe80
        }
    }
}

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
    /// Allocations per user at once.
    pub user_quota: usize,
    /// Allocations in all.
    pub total_quota: usize,
    /// Relayed bytes per second per allocation, each way together; 0 = no cap.
    pub bandwidth_bytes_per_s: u64,
    /// Peers allowed even where the default would deny (tests, LANs).
    pub allowed_peers: Vec<IpNet>,
    /// Peers always refused.
    pub denied_peers: Vec<IpNet>,
    pub software: String,
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
            bandwidth_bytes_per_s: 0,
            allowed_peers: Vec::new(),
            denied_peers: Vec::new(),
            software: "natter-turn".into(),
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

/// Why a request failed authentication (metrics label).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthFailure {
    NoCredentials,
    UnknownUser,
    Expired,
    StaleNonce,
    BadIntegrity,
    WrongUser,
}

impl AuthFailure {
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::NoCredentials => "no_credentials",
            AuthFailure::UnknownUser => "unknown_user",
            AuthFailure::Expired => "expired",
            AuthFailure::StaleNonce => "stale_nonce",
            AuthFailure::BadIntegrity => "bad_integrity",
            AuthFailure::WrongUser => "wrong_user",
        }
    }
}

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
}

struct Bucket {
    tokens: f64,
    last_ms: u64,
}

struct Allocation {
    relay: SocketAddr,
    username: String,
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
    /// Signs nonces (random per process).
    nonce_key: [u8; 32],
    allocations: HashMap<FiveTuple, Allocation>,
    by_relay: HashMap<SocketAddr, FiveTuple>,
    per_user: HashMap<String, usize>,
    next_port: u16,
    pub stats: Stats,
}

struct Authed {
    username: String,
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
            cfg,
            nonce_key,
            allocations: HashMap::new(),
            by_relay: HashMap::new(),
            per_user: HashMap::new(),
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

    fn nonce(&self, client: IpAddr, now_ms: u64) -> String {
        let expiry = now_s(now_ms) + self.cfg.nonce_lifetime.as_secs();
        format!("{expiry:016x}{}", self.nonce_tag(client, expiry))
    }

    fn nonce_tag(&self, client: IpAddr, expiry: u64) -> String {
        let mut mac = Hmac::<Sha1>::new_from_slice(&self.nonce_key).expect("key");
        mac.update(&expiry.to_be_bytes());
        match client {
            IpAddr::V4(a) => mac.update(&a.octets()),
            IpAddr::V6(a) => mac.update(&a.octets()),
        }
        let tag = mac.finalize().into_bytes();
        tag[..12].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn nonce_valid(&self, nonce: &str, client: IpAddr, now_ms: u64) -> bool {
        if nonce.len() != 16 + 24 || !nonce.is_ascii() {
            return false;
        }
        let Ok(expiry) = u64::from_str_radix(&nonce[..16], 16) else {
            return false;
        };
        expiry > now_s(now_ms) && nonce[16..] == self.nonce_tag(client, expiry)
    }

    fn password(&self, username: &str, now_ms: u64) -> Result<String, AuthFailure> {
        if let Some(p) = self.cfg.users.get(username) {
            return Ok(p.clone());
        }
        if let Some(secret) = &self.cfg.rest_secret {
            return natter_signaling::turn::password(secret, username, now_s(now_ms)).map_err(
                |e| match e {
                    natter_signaling::turn::CredentialError::Expired => AuthFailure::Expired,
                    natter_signaling::turn::CredentialError::Malformed => AuthFailure::UnknownUser,
                },
            );
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
        let challenge = |s: &Server, code: u16, reason: &str| {
            MessageBuilder::answer(m, Class::Error)
                .add_error(code, reason)
                .add(attr::REALM, s.cfg.realm.as_bytes())
                .add(attr::NONCE, s.nonce(five.client.ip(), now_ms).as_bytes())
                .add(attr::SOFTWARE, s.cfg.software.as_bytes())
                .fingerprint()
                .finish()
        };
        if !m.has_integrity() {
            self.auth_fail(AuthFailure::NoCredentials);
            return Err(challenge(self, 401, "Unauthorized"));
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
        if !self.nonce_valid(nonce, five.client.ip(), now_ms) {
            self.auth_fail(AuthFailure::StaleNonce);
            return Err(challenge(self, 438, "Stale Nonce"));
        }
        let password = match self.password(username, now_ms) {
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
            key,
        })
    }

    fn peer_allowed(&mut self, peer: SocketAddr) -> bool {
        let ip = match peer.ip() {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer.ip()),
            ip => ip,
        };
        let ok = !self.cfg.denied_peers.iter().any(|n| n.contains(ip))
            && (!denied_by_default(ip) || self.cfg.allowed_peers.iter().any(|n| n.contains(ip)));
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

    /// A STUN packet from a client (a request or an indication).
    pub fn handle(&mut self, five: FiveTuple, bytes: &[u8], now_ms: u64) -> Vec<Output> {
        let Ok(m) = Message::parse(bytes) else {
            return Vec::new(); // not STUN: dropped
        };
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
            return reply(
                MessageBuilder::answer(&m, Class::Success)
                    .add_xor_address(attr::XOR_MAPPED_ADDRESS, five.client)
                    .add(attr::SOFTWARE, self.cfg.software.as_bytes())
                    .fingerprint()
                    .finish(),
            );
        }
        let auth = match self.authenticate(&m, &five, now_ms) {
            Ok(a) => a,
            Err(e) => return reply(e),
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

    fn allocate(
        &mut self,
        five: FiveTuple,
        m: &Message<'_>,
        auth: Authed,
        now_ms: u64,
    ) -> Vec<Output> {
        let reply = |bytes: Vec<u8>| vec![Output::ToClient { to: five, bytes }];
        if let Some(a) = self.allocations.get(&five) {
            if a.created_by == m.transaction_id {
                return reply(a.created_response.clone());
            }
            return reply(signed_error(m, 437, "Allocation Mismatch", &auth.key));
        }
        match m.get(attr::REQUESTED_TRANSPORT) {
            None => {
                return reply(signed_error(
                    m,
                    400,
                    "Bad Request: REQUESTED-TRANSPORT is required",
                    &auth.key,
                ));
            }
            Some(v) if v.len() != 4 || v[0] != 17 => {
                return reply(signed_error(
                    m,
                    442,
                    "Unsupported Transport Protocol",
                    &auth.key,
                ));
            }
            Some(_) => {}
        }
        if m.get(attr::RESERVATION_TOKEN).is_some() {
            return reply(signed_error(
                m,
                508,
                "Insufficient Capacity: reservations are not supported",
                &auth.key,
            ));
        }
        let want_v6 = match m.get(attr::REQUESTED_ADDRESS_FAMILY) {
            None => false,
            Some([0x01, ..]) => false,
            Some([0x02, ..]) => true,
            Some(_) => {
                return reply(signed_error(
                    m,
                    440,
                    "Address Family not Supported",
                    &auth.key,
                ));
            }
        };
        let relay_ip = match (want_v6, self.cfg.relay_v4, self.cfg.relay_v6) {
            (false, Some(v4), _) => IpAddr::V4(v4),
            (true, _, Some(v6)) => IpAddr::V6(v6),
            _ => {
                return reply(signed_error(
                    m,
                    440,
                    "Address Family not Supported",
                    &auth.key,
                ));
            }
        };
        if self.per_user.get(&auth.username).copied().unwrap_or(0) >= self.cfg.user_quota {
            return reply(signed_error(m, 486, "Allocation Quota Reached", &auth.key));
        }
        let even = m.get(attr::EVEN_PORT).is_some();
        let Some(port) = self.free_port(relay_ip, even) else {
            return reply(signed_error(m, 508, "Insufficient Capacity", &auth.key));
        };
        if self.allocations.len() >= self.cfg.total_quota {
            return reply(signed_error(m, 508, "Insufficient Capacity", &auth.key));
        }
        let lifetime = self.lifetime(m);
        let relay = SocketAddr::new(relay_ip, port);
        let response = self.allocate_response(
            m.transaction_id,
            relay,
            lifetime.as_secs() as u32,
            five.client,
            &auth.key,
        );
        *self.per_user.entry(auth.username.clone()).or_default() += 1;
        self.by_relay.insert(relay, five);
        self.allocations.insert(
            five,
            Allocation {
                relay,
                username: auth.username,
                key: auth.key,
                expires_ms: now_ms + lifetime.as_millis() as u64,
                created_by: m.transaction_id,
                created_response: response.clone(),
                lifetime_s: lifetime.as_secs() as u32,
                bind_attempts: 0,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                peer_channels: HashMap::new(),
                bucket: Bucket {
                    tokens: self.cfg.bandwidth_bytes_per_s as f64,
                    last_ms: now_ms,
                },
            },
        );
        self.stats.allocations_created += 1;
        vec![Output::Bind {
            relay,
            client: five,
            response,
        }]
    }

    fn allocate_response(
        &self,
        tid: [u8; 12],
        relay: SocketAddr,
        lifetime_s: u32,
        mapped: SocketAddr,
        key: &[u8],
    ) -> Vec<u8> {
        MessageBuilder::new(method::ALLOCATE, Class::Success, tid)
            .add_xor_address(attr::XOR_RELAYED_ADDRESS, relay)
            .add_u32(attr::LIFETIME, lifetime_s)
            .add_xor_address(attr::XOR_MAPPED_ADDRESS, mapped)
            .add(attr::SOFTWARE, self.cfg.software.as_bytes())
            .integrity(key)
            .fingerprint()
            .finish()
    }

    fn lifetime(&self, m: &Message<'_>) -> Duration {
        match m.u32(attr::LIFETIME) {
            Ok(Some(s)) => Duration::from_secs(u64::from(s))
                .max(self.cfg.default_lifetime)
                .min(self.cfg.max_lifetime),
            _ => self.cfg.default_lifetime,
        }
    }

    fn free_port(&mut self, ip: IpAddr, even: bool) -> Option<u16> {
        let (lo, hi) = self.cfg.relay_ports;
        let span = u32::from(hi - lo) + 1;
        for _ in 0..span {
            let p = self.next_port;
            self.next_port = if p >= hi { lo } else { p + 1 };
            if even && p % 2 == 1 {
                continue;
            }
            if !self.by_relay.contains_key(&SocketAddr::new(ip, p)) {
                return Some(p);
            }
        }
        None
    }

    /// The shell could not bind `relay` (another process holds the port): the allocation
    /// moves to another port, up to 16 tries, after which it is undone and the client told.
    pub fn bind_failed(&mut self, relay: SocketAddr) -> Vec<Output> {
        // The search below runs while the failed port still counts as taken.
        let Some(five) = self.by_relay.get(&relay).copied() else {
            return Vec::new();
        };
        let attempts = self
            .allocations
            .get(&five)
            .map_or(u8::MAX, |a| a.bind_attempts);
        let next = if attempts < 16 {
            self.free_port(relay.ip(), false)
        } else {
            None
        };
        let Some(port) = next else {
            let Some(a) = self.remove(five) else {
                return Vec::new();
            };
            let Ok(m) = Message::parse(&a.created_response) else {
                return Vec::new();
            };
            return vec![Output::ToClient {
                to: five,
                bytes: signed_error(
                    &m,
                    508,
                    "Insufficient Capacity: relay port unavailable",
                    &a.key,
                ),
            }];
        };
        self.by_relay.remove(&relay);
        let new_relay = SocketAddr::new(relay.ip(), port);
        let a = self.allocations.get(&five).expect("looked up above");
        let response =
            self.allocate_response(a.created_by, new_relay, a.lifetime_s, five.client, &a.key);
        let a = self.allocations.get_mut(&five).expect("looked up above");
        a.relay = new_relay;
        a.bind_attempts += 1;
        a.created_response = response.clone();
        self.by_relay.insert(new_relay, five);
        vec![Output::Bind {
            relay: new_relay,
            client: five,
            response,
        }]
    }

    fn remove(&mut self, five: FiveTuple) -> Option<Allocation> {
        let a = self.allocations.remove(&five)?;
        self.by_relay.remove(&a.relay);
        if let Some(n) = self.per_user.get_mut(&a.username) {
            *n -= 1;
            if *n == 0 {
                self.per_user.remove(&a.username);
            }
        }
        Some(a)
    }

    fn refresh(
        &mut self,
        five: FiveTuple,
        m: &Message<'_>,
        auth: &Authed,
        now_ms: u64,
    ) -> Vec<Output> {
        let requested = m.u32(attr::LIFETIME).ok().flatten();
        if requested == Some(0) {
            let a = self.remove(five).expect("checked by the caller");
            let ok = MessageBuilder::answer(m, Class::Success)
                .add_u32(attr::LIFETIME, 0)
                .integrity(&auth.key)
                .fingerprint()
                .finish();
            return vec![
                Output::ToClient {
                    to: five,
                    bytes: ok,
                },
                Output::Release { relay: a.relay },
            ];
        }
        let lifetime = self.lifetime(m);
        let a = self
            .allocations
            .get_mut(&five)
            .expect("checked by the caller");
        a.expires_ms = now_ms + lifetime.as_millis() as u64;
        vec![Output::ToClient {
            to: five,
            bytes: MessageBuilder::answer(m, Class::Success)
                .add_u32(attr::LIFETIME, lifetime.as_secs() as u32)
                .integrity(&auth.key)
                .fingerprint()
                .finish(),
        }]
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

    /// A TCP/TLS client connection closed: its allocation goes (RFC 8656 §3.1).
    pub fn client_closed(&mut self, five: FiveTuple) -> Vec<Output> {
        match self.remove(five) {
            Some(a) => vec![Output::Release { relay: a.relay }],
            None => Vec::new(),
        }
    }

    /// Expires allocations, permissions and channels.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Output> {
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
        out
    }
}

fn take(b: &mut Bucket, cap: u64, len: usize, now_ms: u64) -> bool {
    if cap == 0 {
        return true;
    }
    let cap = cap as f64;
    let elapsed = now_ms.saturating_sub(b.last_ms) as f64 / 1000.0;
    b.last_ms = now_ms;
    // A one-second burst.
    b.tokens = (b.tokens + elapsed * cap).min(cap);
    if b.tokens >= len as f64 {
        b.tokens -= len as f64;
        true
    } else {
        false
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
