//! The allocation lifecycle: Allocate, the relay port it gets, Refresh, removal.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::{Allocation, Authed, FiveTuple, Output, Server, signed_error};
use crate::limits::Bucket;
use crate::stun::{Class, Message, MessageBuilder, attr, method};

impl Server {
    pub(super) fn allocate(
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
        if self.per_user.count(&auth.owner) >= self.cfg.user_quota {
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
        self.per_user.add(&auth.owner);
        self.by_relay.insert(relay, five);
        self.allocations.insert(
            five,
            Allocation {
                relay,
                username: auth.username,
                owner: auth.owner,
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

    pub(super) fn remove(&mut self, five: FiveTuple) -> Option<Allocation> {
        let a = self.allocations.remove(&five)?;
        self.by_relay.remove(&a.relay);
        self.per_user.release(&a.owner);
        Some(a)
    }

    pub(super) fn refresh(
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
}
