//! The sans-IO impairment pipeline for one direction.
//!
//! Fed `(time, packet)`; each packet goes through, in order: the loss model, duplication,
//! the drop-tail queue in front of the bottleneck (whose departure time is computed on
//! arrival, the capacity being known in advance), then propagation delay with jitter and
//! reordering. The caller asks [`Link::poll_timeout`] when to come back and takes released
//! packets from [`Link::poll_release`]. Time is a `Duration` since the link's start, so
//! tests run in virtual time and a seed makes a run repeatable.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use crate::capacity::{Capacity, ServiceState};
use crate::config::{GilbertElliott, Impairment, JitterDist, QueueLimit};
use crate::rng::Rng;
use crate::stats::{INTERVAL, Recorder};

/// Packets held at once (in the queue and in flight) before new ones are dropped, whatever
/// the configuration says: memory stays bounded even with an unbounded queue.
pub const MAX_HELD: usize = 200_000;

/// What happened to a packet handed to [`Link::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Will be released at this time (a duplicate, if made, is not reported).
    Scheduled(Duration),
    /// Lost to the loss model.
    LostRandom,
    /// The queue in front of the bottleneck was full (or the link holds too much).
    LostQueue,
    /// The bottleneck will never serve it (capacity zero from here on).
    LostOutage,
}

struct Held<P> {
    release: Duration,
    seq: u64,
    arrival: Duration,
    queue: Duration,
    bytes: usize,
    packet: P,
}

impl<P> PartialEq for Held<P> {
    fn eq(&self, o: &Self) -> bool {
        (self.release, self.seq) == (o.release, o.seq)
    }
}
impl<P> Eq for Held<P> {}
impl<P> PartialOrd for Held<P> {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl<P> Ord for Held<P> {
    // Reversed: the heap's top is the earliest release, ties in arrival order.
    fn cmp(&self, o: &Self) -> Ordering {
        (o.release, o.seq).cmp(&(self.release, self.seq))
    }
}

pub struct Link<P> {
    imp: Impairment,
    loss: Option<GilbertElliott>,
    bad: bool,
    capacity: Capacity,
    limit: QueueLimit,
    service: ServiceState,
    /// (departure, bytes) of packets still in the bottleneck queue.
    queued: VecDeque<(Duration, u64)>,
    queued_bytes: u64,
    held: BinaryHeap<Held<P>>,
    seq: u64,
    last_release: Duration,
    rng: Rng,
    stats: Recorder,
}

impl<P: Clone> Link<P> {
    /// A link with these impairments and bottleneck; `seed` fixes every random choice.
    pub fn new(imp: Impairment, capacity: Capacity, seed: u64) -> Link<P> {
        Link {
            loss: imp.loss_model(),
            bad: false,
            limit: imp.queue_limit(),
            imp,
            capacity,
            service: ServiceState::default(),
            queued: VecDeque::new(),
            queued_bytes: 0,
            held: BinaryHeap::new(),
            seq: 0,
            last_release: Duration::ZERO,
            rng: Rng::new(seed),
            stats: Recorder::new(INTERVAL),
        }
    }

    /// Replaces the recorder (e.g. for another interval length).
    pub fn with_recorder(mut self, r: Recorder) -> Self {
        self.stats = r;
        self
    }

    pub fn stats(&self) -> &Recorder {
        &self.stats
    }

    /// Packets waiting in the queue or in flight.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A packet of `bytes` (its size on the wire, before `overhead_bytes`) enters at `now`.
    pub fn send(&mut self, now: Duration, bytes: usize, packet: P) -> Verdict {
        let capacity = &self.capacity;
        self.stats.capacity(now, || capacity.rate_at(now));
        self.stats.offered(now, bytes);
        if self.lose(now) {
            return Verdict::LostRandom;
        }
        self.stats.passed_loss();
        if self.imp.duplicate_pct > 0.0 && self.rng.chance(self.imp.duplicate_pct / 100.0) {
            self.stats.duplicated(now);
            let _ = self.enqueue(now, bytes, packet.clone());
        }
        self.enqueue(now, bytes, packet)
    }

    fn lose(&mut self, now: Duration) -> bool {
        let Some(ge) = self.loss else { return false };
        // Step the chain, then lose with the new state's chance.
        self.bad = if self.bad {
            !self.rng.chance(ge.r_pct / 100.0)
        } else {
            self.rng.chance(ge.p_pct / 100.0)
        };
        let p = if self.bad {
            ge.bad_loss_pct
        } else {
            ge.good_loss_pct
        };
        if self.rng.chance(p / 100.0) {
            self.stats.lost_random(now);
            true
        } else {
            false
        }
    }

    fn enqueue(&mut self, now: Duration, bytes: usize, packet: P) -> Verdict {
        if self.held.len() >= MAX_HELD {
            self.stats.lost_queue(now);
            return Verdict::LostQueue;
        }
        while self.queued.front().is_some_and(|&(d, _)| d <= now) {
            let (_, b) = self.queued.pop_front().unwrap_or_default();
            self.queued_bytes -= b;
        }
        let charged = bytes as u64 + self.imp.overhead_bytes as u64;
        let Some((departure, next)) =
            self.capacity
                .serve(self.service, now, charged.min(u32::MAX as u64) as u32)
        else {
            self.stats.lost_queue(now);
            return Verdict::LostOutage;
        };
        let full = match self.limit {
            QueueLimit::Unbounded => false,
            QueueLimit::Bytes(max) => self.queued_bytes + charged > max,
            QueueLimit::Wait(max) => departure - now > max,
        };
        if full {
            self.stats.lost_queue(now);
            return Verdict::LostQueue;
        }
        if !matches!(self.capacity, Capacity::Unlimited) {
            self.service = next;
            self.queued.push_back((departure, charged));
            self.queued_bytes += charged;
        }
        let mut release = departure + self.propagation();
        if self.imp.preserve_order {
            release = release.max(self.last_release);
        }
        self.last_release = self.last_release.max(release);
        if self.imp.reorder_pct > 0.0 && self.rng.chance(self.imp.reorder_pct / 100.0) {
            release += Duration::from_secs_f64(self.imp.reorder_ms / 1000.0);
        }
        self.seq += 1;
        self.held.push(Held {
            release,
            seq: self.seq,
            arrival: now,
            queue: departure - now,
            bytes,
            packet,
        });
        Verdict::Scheduled(release)
    }

    /// Fixed delay plus one jitter sample, never below zero.
    fn propagation(&mut self) -> Duration {
        let base = self.imp.delay_ms;
        let j = self.imp.jitter_ms;
        let extra = if j <= 0.0 {
            0.0
        } else {
            match self.imp.jitter_dist {
                JitterDist::Uniform => {
                    let cap = self.imp.jitter_max_ms.unwrap_or(j).min(j);
                    (self.rng.unit() * 2.0 - 1.0) * cap
                }
                JitterDist::Normal => {
                    let cap = self.imp.jitter_max_ms.unwrap_or(3.0 * j);
                    (self.rng.normal() * j).clamp(-cap, cap)
                }
                JitterDist::Halfnormal => {
                    let cap = self.imp.jitter_max_ms.unwrap_or(3.0 * j);
                    (self.rng.normal() * j).abs().min(cap)
                }
                JitterDist::Pareto => {
                    let x = self.rng.pareto(j, 2.5);
                    self.imp.jitter_max_ms.map_or(x, |cap| x.min(cap))
                }
            }
        };
        Duration::from_secs_f64(((base + extra) / 1000.0).max(0.0))
    }

    /// When the next packet is due, if any.
    pub fn poll_timeout(&self) -> Option<Duration> {
        self.held.peek().map(|h| h.release)
    }

    /// The next packet due at or before `now`.
    pub fn poll_release(&mut self, now: Duration) -> Option<P> {
        if self.held.peek()?.release > now {
            return None;
        }
        let h = self.held.pop()?;
        // Recorded at its due time, not when the caller got round to it.
        self.stats
            .delivered(h.release, h.bytes, h.release - h.arrival, h.queue);
        Some(h.packet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capacity::Step;

    fn ms(v: f64) -> Duration {
        Duration::from_secs_f64(v / 1000.0)
    }

    /// Sends `n` packets of `size` every `gap`, drains, returns (sent index, release) pairs.
    fn run(link: &mut Link<u64>, n: u64, size: usize, gap: Duration) -> Vec<(u64, Duration)> {
        let mut out = Vec::new();
        let mut now = Duration::ZERO;
        for i in 0..n {
            while let Some(t) = link.poll_timeout().filter(|t| *t <= now) {
                let p = link.poll_release(now).unwrap();
                out.push((p, t));
            }
            link.send(now, size, i);
            now += gap;
        }
        while let Some(t) = link.poll_timeout() {
            let p = link.poll_release(t).unwrap();
            out.push((p, t));
        }
        out
    }

    /// 2,000 packets of 100 bytes a millisecond apart through an unlimited link.
    fn run_unlimited(imp: Impairment, seed: u64) -> Vec<(u64, Duration)> {
        run(
            &mut Link::new(imp, Capacity::Unlimited, seed),
            2000,
            100,
            ms(1.0),
        )
    }

    #[test]
    fn plain_delay_is_exact_and_keeps_order() {
        let imp = Impairment {
            delay_ms: 40.0,
            ..Default::default()
        };
        let mut l = Link::new(imp, Capacity::Unlimited, 1);
        let out = run(&mut l, 1000, 100, ms(1.0));
        assert_eq!(out.len(), 1000);
        for (k, (i, t)) in out.iter().enumerate() {
            assert_eq!(*i, k as u64);
            assert_eq!(*t, ms(40.0) + ms(1.0) * k as u32);
        }
    }

    #[test]
    fn same_seed_same_run() {
        let imp = Impairment {
            delay_ms: 20.0,
            jitter_ms: 5.0,
            loss_pct: 10.0,
            reorder_pct: 5.0,
            reorder_ms: 3.0,
            ..Default::default()
        };
        let a = run_unlimited(imp.clone(), 9);
        let b = run_unlimited(imp.clone(), 9);
        let c = run_unlimited(imp, 10);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn preserve_order_stops_jitter_reordering() {
        let mut imp = Impairment {
            delay_ms: 50.0,
            jitter_ms: 10.0,
            ..Default::default()
        };
        let jittery = run_unlimited(imp.clone(), 3);
        assert!(
            jittery.windows(2).any(|w| w[1].0 < w[0].0),
            "expected reordering"
        );
        imp.preserve_order = true;
        let ordered = run_unlimited(imp, 3);
        assert!(ordered.windows(2).all(|w| w[1].0 > w[0].0));
    }

    #[test]
    fn drop_tail_queue_in_bytes_and_in_time() {
        let rate = Capacity::steps(vec![Step {
            at: Duration::ZERO,
            bits_per_s: 1_000_000,
        }]);
        // 2 Mbit/s offered into 1 Mbit/s with a 10-packet queue: about half is dropped.
        let imp = Impairment {
            queue_bytes: Some(12_500),
            ..Default::default()
        };
        let mut l = Link::new(imp, rate.clone(), 1);
        let out = run(&mut l, 2000, 1250, ms(5.0));
        let s = l.stats().summary();
        assert_eq!(out.len() as u64, s.delivered_pkts);
        assert!((990..=1015).contains(&out.len()), "{}", out.len());
        // Queue wait never exceeds 10 packets × 10 ms.
        assert!(s.owd_max_ms <= 100.0 + 1e-6, "{}", s.owd_max_ms);
        let imp = Impairment {
            queue_ms: Some(50.0),
            ..Default::default()
        };
        let mut l = Link::new(imp, rate, 1);
        run(&mut l, 2000, 1250, ms(5.0));
        assert!(l.stats().summary().owd_max_ms <= 50.0 + 1e-6);
    }

    #[test]
    fn overhead_is_charged_to_the_bottleneck() {
        let rate = Capacity::steps(vec![Step {
            at: Duration::ZERO,
            bits_per_s: 1_000_000,
        }]);
        let imp = Impairment {
            overhead_bytes: 250,
            ..Default::default()
        };
        let mut l = Link::new(imp, rate, 1);
        // 1000 + 250 bytes = 10 ms each at 1 Mbit/s.
        let out = run(&mut l, 3, 1000, Duration::ZERO);
        let times: Vec<_> = out.iter().map(|o| o.1).collect();
        assert_eq!(times, vec![ms(10.0), ms(20.0), ms(30.0)]);
    }

    #[test]
    fn duplication_and_outage() {
        let imp = Impairment {
            duplicate_pct: 100.0,
            ..Default::default()
        };
        let mut l = Link::new(imp, Capacity::Unlimited, 1);
        assert_eq!(run(&mut l, 10, 100, ms(1.0)).len(), 20);
        let dead = Capacity::steps(vec![Step {
            at: Duration::ZERO,
            bits_per_s: 0,
        }]);
        let mut l: Link<u64> = Link::new(Impairment::default(), dead, 1);
        assert_eq!(l.send(Duration::ZERO, 100, 1), Verdict::LostOutage);
        assert_eq!(l.held(), 0);
    }
}
