//! A simulated network for the virtual-time tests: datagrams in flight ordered by arrival,
//! a fixed one-way delay, and per destination a loss rate and a rate limit (a bottleneck
//! that serialises what it carries and drops what would wait longer than its buffer).
//! With [`Wire::line_bps`] (`SIM_LINE_BPS=1000000000`) a path without a limit carries one
//! datagram at a time at that rate, so that two never arrive at the same instant.

use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

#[derive(PartialEq, Eq)]
pub struct InFlight {
    pub at: Instant,
    seq: u64,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: Vec<u8>,
}

impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// What the path to one address does to datagrams.
#[derive(Debug, Clone, Default)]
pub struct Shape {
    /// Random loss, in [0, 1).
    pub loss: f64,
    /// Bits per second, or None: no limit.
    pub rate_bps: Option<u64>,
    /// The bottleneck's buffer, as the longest a datagram may wait in it.
    pub buffer: Duration,
    free_at: Option<Instant>,
}

pub struct Wire {
    heap: BinaryHeap<InFlight>,
    seq: u64,
    one_way: Duration,
    shapes: HashMap<SocketAddr, Shape>,
    rng: u64,
    pub dropped_by_limit: u64,
    /// Per destination: datagrams sent toward it, and those the random loss took.
    pub sent_to: HashMap<SocketAddr, u64>,
    pub lost_to: HashMap<SocketAddr, u64>,
    /// RTP bytes sent toward each destination by payload type, for tracing.
    pub pt_bytes: BTreeMap<(SocketAddr, u8), u64>,
    /// The rate of a path with no limit, or None: such a path delivers after the one-way
    /// delay whatever is sent.
    pub line_bps: Option<u64>,
}

impl Wire {
    pub fn new(one_way: Duration) -> Wire {
        Wire {
            heap: BinaryHeap::new(),
            seq: 0,
            one_way,
            shapes: HashMap::new(),
            rng: 0x9E37_79B9_7F4A_7C15,
            dropped_by_limit: 0,
            sent_to: HashMap::new(),
            lost_to: HashMap::new(),
            pt_bytes: BTreeMap::new(),
            line_bps: std::env::var("SIM_LINE_BPS")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }

    /// The path toward `to`, to shape.
    pub fn shape(&mut self, to: SocketAddr) -> &mut Shape {
        self.shapes.entry(to).or_default()
    }

    /// xorshift64: a fixed sequence of draws in [0, 1).
    fn draw(&mut self) -> f64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        (self.rng >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn send(&mut self, from: SocketAddr, to: SocketAddr, bytes: Vec<u8>, now: Instant) {
        *self.sent_to.entry(to).or_default() += 1;
        // RTP (version 2, not an RTCP packet type): its payload type is in the clear.
        if bytes.len() > 12 && (bytes[0] >> 6) == 2 && !(192..=223).contains(&bytes[1]) {
            let pt = bytes[1] & 0x7f;
            *self.pt_bytes.entry((to, pt)).or_default() += bytes.len() as u64;
        }
        let loss = self.shapes.get(&to).map_or(0.0, |s| s.loss);
        if loss > 0.0 && self.draw() < loss {
            *self.lost_to.entry(to).or_default() += 1;
            return;
        }
        let line = self.line_bps;
        let s = self.shapes.entry(to).or_default();
        let mut at = now + self.one_way;
        if let Some(rate) = s.rate_bps.or(line) {
            let start = s.free_at.map_or(now, |f| f.max(now));
            if s.rate_bps.is_some() && start.duration_since(now) > s.buffer {
                self.dropped_by_limit += 1;
                return;
            }
            // IP and UDP headers count against the link too.
            let bits = (bytes.len() as u64 + 28) * 8;
            let done = start + Duration::from_micros(bits * 1_000_000 / rate.max(1));
            s.free_at = Some(done);
            at = done + self.one_way;
        }
        self.seq += 1;
        self.heap.push(InFlight {
            at,
            seq: self.seq,
            from,
            to,
            bytes,
        });
    }

    /// How long a datagram sent toward `to` now would wait at its bottleneck.
    pub fn backlog(&self, to: SocketAddr, now: Instant) -> Duration {
        self.shapes
            .get(&to)
            .and_then(|s| s.free_at)
            .map_or(Duration::ZERO, |f| f.saturating_duration_since(now))
    }

    pub fn next_at(&self) -> Option<Instant> {
        self.heap.peek().map(|w| w.at)
    }

    /// The next datagram due by `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<InFlight> {
        if self.heap.peek().is_some_and(|w| w.at <= now) {
            self.heap.pop()
        } else {
            None
        }
    }
}
