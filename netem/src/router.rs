//! The star router of link mode, sans-IO: every host reaches the router through its own
//! access link, an impaired [`Link`] per direction (uplink: host → router, downlink: router
//! → host). An IPv4 packet from host X to host Y crosses X's uplink, then Y's downlink; the
//! host owning the destination address is found from the packet.
//!
//! A scenario's `forward` and `backward` are the first host's uplink and downlink (so with two
//! hosts, `forward` is everything from the first to the second); any host may set its own.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::config::Direction;
use crate::link::{Link, Verdict};
use crate::stats::Recorder;

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouterCounters {
    /// Not IPv4, or shorter than its header says.
    pub malformed: u64,
    /// Addressed to no host, or to the sender itself.
    pub unroutable: u64,
}

pub struct Router {
    addrs: Vec<Ipv4Addr>,
    /// Per host: packets on their way to the router, tagged with the host they are for.
    up: Vec<Link<(usize, Vec<u8>)>>,
    /// Per host: packets on their way from the router to it.
    down: Vec<Link<Vec<u8>>>,
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
    /// A router for hosts at `addrs`, each with its (uplink, downlink).
    pub fn new(addrs: Vec<Ipv4Addr>, links: Vec<(Direction, Direction)>, seed: u64) -> Router {
        let mix =
            |i: usize, d: u64| seed ^ ((i as u64) << 8 | d).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut up = Vec::new();
        let mut down = Vec::new();
        for (i, (u, d)) in links.into_iter().enumerate() {
            up.push(Link::new(u.impairment, u.capacity, mix(i, 1)));
            down.push(Link::new(d.impairment, d.capacity, mix(i, 2)));
        }
        Router {
            addrs,
            up,
            down,
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
        if to == from || from >= self.up.len() {
            self.counters.unroutable += 1;
            return None;
        }
        let bytes = packet.len();
        Some(self.up[from].send(now, bytes, (to, packet)))
    }

    pub fn poll_timeout(&self) -> Option<Duration> {
        let up = self.up.iter().filter_map(|l| l.poll_timeout());
        let down = self.down.iter().filter_map(|l| l.poll_timeout());
        up.chain(down).min()
    }

    /// The next packet due by `now`, with the host it goes to.
    pub fn poll_egress(&mut self, now: Duration) -> Option<(usize, Vec<u8>)> {
        // Packets that left an uplink by now enter their downlink at the time they left, in
        // time order across uplinks (a link expects its arrivals in order).
        while let Some((i, t)) = self
            .up
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.poll_timeout().map(|t| (i, t)))
            .filter(|(_, t)| *t <= now)
            .min_by_key(|(_, t)| *t)
        {
            let Some((to, p)) = self.up[i].poll_release(t) else {
                break;
            };
            let n = p.len();
            self.down[to].send(t, n, p);
        }
        let (to, t) = self
            .down
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.poll_timeout().map(|t| (i, t)))
            .filter(|(_, t)| *t <= now)
            .min_by_key(|(_, t)| *t)?;
        self.down[to].poll_release(t).map(|p| (to, p))
    }

    /// Statistics of every access link: (host, is uplink, recorder).
    pub fn links(&self) -> impl Iterator<Item = (usize, bool, &Recorder)> {
        let up = self
            .up
            .iter()
            .enumerate()
            .map(|(i, l)| (i, true, l.stats()));
        let down = self
            .down
            .iter()
            .enumerate()
            .map(|(i, l)| (i, false, l.stats()));
        up.chain(down)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Impairment;

    fn packet(dst: [u8; 4], len: usize) -> Vec<u8> {
        let mut p = vec![0u8; len];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[16..20].copy_from_slice(&dst);
        p
    }

    fn delay(ms: f64) -> Direction {
        let imp = Impairment {
            delay_ms: ms,
            ..Default::default()
        };
        Direction::load(imp, std::path::Path::new(".")).unwrap()
    }

    #[test]
    fn a_packet_crosses_the_senders_uplink_then_the_receivers_downlink() {
        let addrs = vec![
            Ipv4Addr::new(10, 77, 0, 1),
            Ipv4Addr::new(10, 77, 0, 2),
            Ipv4Addr::new(10, 77, 0, 3),
        ];
        // a: 10 ms up, 30 ms down; b: clean; c: 5 ms each way.
        let links = vec![
            (delay(10.0), delay(30.0)),
            (delay(0.0), delay(0.0)),
            (delay(5.0), delay(5.0)),
        ];
        let mut r = Router::new(addrs, links, 1);
        let t0 = Duration::ZERO;
        let ms = Duration::from_millis;
        assert!(r.ingress(t0, 0, packet([10, 77, 0, 2], 100)).is_some()); // a -> b: 10
        assert!(r.ingress(t0, 1, packet([10, 77, 0, 1], 60)).is_some()); // b -> a: 30
        assert!(r.ingress(t0, 1, packet([10, 77, 0, 3], 70)).is_some()); // b -> c: 5
        assert!(r.ingress(t0, 2, packet([10, 77, 0, 1], 80)).is_some()); // c -> a: 5 + 30
        let mut out = Vec::new();
        let mut now = t0;
        while let Some(t) = r.poll_timeout() {
            now = now.max(t);
            while let Some((to, p)) = r.poll_egress(now) {
                out.push((now, to, p.len()));
            }
        }
        assert_eq!(
            out,
            vec![
                (ms(5), 2, 70),
                (ms(10), 1, 100),
                (ms(30), 0, 60),
                (ms(35), 0, 80)
            ]
        );
        // Garbage, IPv6, a truncated header, an unknown address and a packet to oneself
        // are dropped and counted.
        assert!(r.ingress(t0, 0, vec![1, 2, 3]).is_none());
        let mut v6 = packet([0; 4], 60);
        v6[0] = 0x60;
        assert!(r.ingress(t0, 0, v6).is_none());
        let mut short = packet([10, 77, 0, 2], 40);
        short[2..4].copy_from_slice(&100u16.to_be_bytes());
        assert!(r.ingress(t0, 0, short).is_none());
        assert!(r.ingress(t0, 0, packet([8, 8, 8, 8], 40)).is_none());
        assert!(r.ingress(t0, 0, packet([10, 77, 0, 1], 40)).is_none());
        assert_eq!(r.counters.malformed, 3);
        assert_eq!(r.counters.unroutable, 2);
        let stats: Vec<_> = r
            .links()
            .map(|(h, up, rec)| (h, up, rec.summary().delivered_pkts))
            .collect();
        assert!(stats.contains(&(1, true, 2)) && stats.contains(&(0, false, 2)));
    }
}
