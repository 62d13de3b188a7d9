//! Which participant a datagram on the shared socket is for, without asking each `Rtc`.
//!
//! Every participant's `Rtc` has its own ICE username fragment, chosen by the SFU. A STUN
//! Binding request names it in its USERNAME (`<sfu ufrag>:<client ufrag>`, RFC 8445
//! §7.2.2), so it is routed by that; once that participant's `Rtc` has accepted a request
//! from an address (its integrity checked), everything else from the address (DTLS, SRTP,
//! SRTCP) is routed by the address. A hash lookup either way, not str0m's `accepts()` scan
//! over every participant.

use std::collections::HashMap;
use std::net::SocketAddr;

use natter_stun::{Class, Message, attr, method};

/// Addresses one participant may be reached from at once (its candidates, a NAT rebinding).
pub const MAX_ADDRESSES_PER_PARTICIPANT: usize = 8;
/// Longest ICE username accepted (RFC 8445: ufrags of 4–256 characters).
const MAX_USERNAME: usize = 513;

/// A participant's id inside one SFU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u64);

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// A Binding request for this participant: its `Rtc` checks it, then the address may
    /// be pinned with [`Router::pin`].
    Stun(ParticipantId),
    /// From a pinned address.
    Pinned(ParticipantId),
    /// Nobody's: dropped.
    Unknown,
}

#[derive(Debug, Default)]
pub struct Router {
    by_ufrag: HashMap<String, ParticipantId>,
    by_addr: HashMap<SocketAddr, ParticipantId>,
    addrs_of: HashMap<ParticipantId, Vec<SocketAddr>>,
}

impl Router {
    pub fn add(&mut self, id: ParticipantId, local_ufrag: &str) {
        self.by_ufrag.insert(local_ufrag.to_string(), id);
        self.addrs_of.entry(id).or_default();
    }

    pub fn remove(&mut self, id: ParticipantId) {
        self.by_ufrag.retain(|_, p| *p != id);
        for a in self.addrs_of.remove(&id).unwrap_or_default() {
            self.by_addr.remove(&a);
        }
    }

    /// How many addresses `id` is reachable from now.
    pub fn addresses(&self, id: ParticipantId) -> usize {
        self.addrs_of.get(&id).map_or(0, Vec::len)
    }

    pub fn route(&self, source: SocketAddr, bytes: &[u8]) -> Route {
        if let Some(id) = binding_request_ufrag(bytes).and_then(|u| self.by_ufrag.get(u)) {
            return Route::Stun(*id);
        }
        match self.by_addr.get(&source) {
            Some(id) => Route::Pinned(*id),
            None => Route::Unknown,
        }
    }

    /// `source` belongs to `id` from now on (its `Rtc` accepted a check from it). The
    /// participant's oldest address goes when it has too many; an address moves if
    /// another participant had it.
    pub fn pin(&mut self, id: ParticipantId, source: SocketAddr) {
        if self.by_addr.get(&source) == Some(&id) {
            return;
        }
        if let Some(old) = self.by_addr.insert(source, id)
            && let Some(list) = self.addrs_of.get_mut(&old)
        {
            list.retain(|a| *a != source);
        }
        let list = self.addrs_of.entry(id).or_default();
        list.push(source);
        if list.len() > MAX_ADDRESSES_PER_PARTICIPANT {
            let gone = list.remove(0);
            self.by_addr.remove(&gone);
        }
    }
}

/// The SFU-side ufrag a STUN Binding request names, if `bytes` is one.
fn binding_request_ufrag(bytes: &[u8]) -> Option<&str> {
    // STUN starts with 0b00 (RFC 7983 demultiplexing); skip the parse for media.
    if bytes.first().is_none_or(|b| *b > 1) {
        return None;
    }
    let m = Message::parse(bytes).ok()?;
    if m.method != method::BINDING || m.class != Class::Request {
        return None;
    }
    let user = m.string(attr::USERNAME, MAX_USERNAME).ok()??;
    user.split_once(':').map(|(local, _)| local)
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_stun::MessageBuilder;

    fn binding(user: &str) -> Vec<u8> {
        let mut b = MessageBuilder::new(method::BINDING, Class::Request, [3; 12]);
        b.add(attr::USERNAME, user.as_bytes());
        b.fingerprint();
        b.into_bytes()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 9], port))
    }

    #[test]
    fn checks_go_by_ufrag_and_the_rest_by_pinned_address() {
        let mut r = Router::default();
        r.add(ParticipantId(1), "aaaa");
        r.add(ParticipantId(2), "bbbb");
        assert_eq!(
            r.route(addr(1), &binding("bbbb:client")),
            Route::Stun(ParticipantId(2))
        );
        let dtls = [22u8, 254, 253, 0, 0];
        assert_eq!(r.route(addr(1), &dtls), Route::Unknown);
        r.pin(ParticipantId(2), addr(1));
        assert_eq!(r.route(addr(1), &dtls), Route::Pinned(ParticipantId(2)));
        // A check naming nobody, from a pinned address, still goes by the address.
        assert_eq!(
            r.route(addr(1), &binding("zzzz:client")),
            Route::Pinned(ParticipantId(2))
        );
        r.remove(ParticipantId(2));
        assert_eq!(r.route(addr(1), &dtls), Route::Unknown);
        assert_eq!(r.route(addr(1), &binding("bbbb:client")), Route::Unknown);
    }

    #[test]
    fn addresses_per_participant_are_bounded_and_move_between_participants() {
        let mut r = Router::default();
        r.add(ParticipantId(1), "aaaa");
        r.add(ParticipantId(2), "bbbb");
        for p in 0..20 {
            r.pin(ParticipantId(1), addr(p));
        }
        assert_eq!(r.by_addr.len(), MAX_ADDRESSES_PER_PARTICIPANT);
        assert_eq!(r.route(addr(0), &[0x80]), Route::Unknown);
        assert_eq!(r.route(addr(19), &[0x80]), Route::Pinned(ParticipantId(1)));
        r.pin(ParticipantId(2), addr(19));
        assert_eq!(r.route(addr(19), &[0x80]), Route::Pinned(ParticipantId(2)));
        assert!(!r.addrs_of[&ParticipantId(1)].contains(&addr(19)));
    }

    #[test]
    fn garbage_and_other_stun_are_not_checks() {
        let r = Router::default();
        assert_eq!(binding_request_ufrag(&[]), None);
        assert_eq!(binding_request_ufrag(&[0, 1, 0]), None);
        assert_eq!(binding_request_ufrag(&binding("no-colon")), None);
        let resp = MessageBuilder::new(method::BINDING, Class::Success, [1; 12]).finish();
        assert_eq!(binding_request_ufrag(&resp), None);
        assert_eq!(r.route(addr(5), &[0xff; 40]), Route::Unknown);
    }
}
