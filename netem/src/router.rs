//! The star router of link mode, sans-IO: IPv4 packets come in from host `i`, go out to the
//! host owning the destination address, through one impaired [`Link`] per ordered pair of
//! hosts (created on first use). Traffic from the first host uses the scenario's `forward`
//! impairments, traffic to it `backward`; between other hosts, `forward`.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::capacity::Capacity;
use crate::config::Impairment;
use crate::link::{Link, Verdict};
use crate::stats::Recorder;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouterCounters {
    /// Not IPv4, or shorter than its header says.
    pub malformed: u64,
    /// Addressed to no host.
    pub unroutable: u64,
}

/// (from host, to host).
type Pair = (usize, usize);

pub struct Router {
    addrs: Vec<Ipv4Addr>,
    forward: (Impairment, Capacity),
    backward: (Impairment, Capacity),
    seed: u64,
    links: Vec<(Pair, Link<Vec<u8>>)>,
    index: HashMap<Pair, usize>,
    pub counters: RouterCounters,
}

/// The destination of an IPv4 packet, if it is one.
pub fn ipv4_destination(p: &[u8]) -> Option<Ipv4Addr> {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return None;
    }
    let ihl = (p[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([p[2], p[3]]) as usize;
    if ihl < 20 || total < ihl || total > p.len() {
        return None;
    }
    Some(Ipv4Addr::new(p[16], p[17], p[18], p[19]))
}

impl Router {
    pub fn new(
        addrs: Vec<Ipv4Addr>,
        forward: (Impairment, Capacity),
        backward: (Impairment, Capacity),
        seed: u64,
    ) -> Router {
        Router {
            addrs,
            forward,
            backward,
            seed,
            links: Vec::new(),
            index: HashMap::new(),
            counters: RouterCounters::default(),
        }
    }

    /// A packet read from host `from`'s device at `now`. `None`: dropped as malformed or
    /// unroutable (counted).
    pub fn ingress(&mut self, now: Duration, from: usize, packet: Vec<u8>) -> Option<Verdict> {
        let Some(dst) = ipv4_destination(&packet) else {
            self.counters.malformed += 1;
            return None;
        };
        let Some(to) = self.addrs.iter().position(|a| *a == dst) else {
            self.counters.unroutable += 1;
            return None;
        };
        if to == from {
            self.counters.unroutable += 1;
            return None;
        }
        let i = match self.index.get(&(from, to)) {
            Some(i) => *i,
            None => {
                let (imp, cap) = if to == 0 {
                    self.backward.clone()
                } else {
                    self.forward.clone()
                };
                let seed = self.seed ^ ((from as u64) << 32 | to as u64).wrapping_mul(0x9E37_79B9);
                self.links.push(((from, to), Link::new(imp, cap, seed)));
                self.index.insert((from, to), self.links.len() - 1);
                self.links.len() - 1
            }
        };
        let bytes = packet.len();
        Some(self.links[i].1.send(now, bytes, packet))
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        self.links
            .iter()
            .filter_map(|(_, l)| l.poll_timeout())
            .min()
    }

    /// The next packet due by `now`, with the host it goes to.
    pub fn poll_egress(&mut self, now: Duration) -> Option<(usize, Vec<u8>)> {
        let (i, _) = self
            .links
            .iter()
            .enumerate()
            .filter_map(|(i, (_, l))| l.poll_timeout().map(|t| (i, t)))
            .filter(|(_, t)| *t <= now)
            .min_by_key(|(_, t)| *t)?;
        let ((_, to), link) = &mut self.links[i];
        let to = *to;
        link.poll_release(now).map(|p| (to, p))
    }

    /// Statistics of every pair that carried traffic: (from, to, recorder).
    pub fn pairs(&self) -> impl Iterator<Item = (usize, usize, &Recorder)> {
        self.links.iter().map(|((f, t), l)| (*f, *t, l.stats()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(dst: [u8; 4], len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[16..20].copy_from_slice(&dst);
        p
    }

    #[test]
    fn routes_by_destination_with_direction_specific_delay() {
        let addrs = vec![Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(10, 77, 0, 2)];
        let fwd = Impairment {
            delay_ms: 10.0,
            ..Default::default()
        };
        let bwd = Impairment {
            delay_ms: 30.0,
            ..Default::default()
        };
        let mut r = Router::new(
            addrs,
            (fwd, Capacity::Unlimited),
            (bwd, Capacity::Unlimited),
            1,
        );
        let t0 = Duration::ZERO;
        assert!(r.ingress(t0, 0, packet([10, 77, 0, 2], 100)).is_some());
        assert!(r.ingress(t0, 1, packet([10, 77, 0, 1], 60)).is_some());
        assert_eq!(r.poll_timeout(), Some(Duration::from_millis(10)));
        assert!(r.poll_egress(Duration::from_millis(9)).is_none());
        let (to, p) = r.poll_egress(Duration::from_millis(10)).unwrap();
        assert_eq!((to, p.len()), (1, 100));
        let (to, p) = r.poll_egress(Duration::from_millis(30)).unwrap();
        assert_eq!((to, p.len()), (0, 60));
        // Garbage, IPv6, a truncated header and an unknown address are dropped and counted.
        assert!(r.ingress(t0, 0, vec![1, 2, 3]).is_none());
        let mut v6 = packet([0; 4], 60);
        v6[0] = 0x60;
        assert!(r.ingress(t0, 0, v6).is_none());
        let mut short = packet([10, 77, 0, 2], 40);
        short[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert!(r.ingress(t0, 0, short).is_none());
        assert!(r.ingress(t0, 0, packet([8, 8, 8, 8], 40)).is_none());
        assert_eq!(r.counters.malformed, 3);
        assert_eq!(r.counters.unroutable, 1);
    }
}
