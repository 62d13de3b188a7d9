//! Per-interval statistics of one direction (default 200 ms, RFC 8867's measurement
//! interval) and a whole-run summary, written as CSV and JSON.

use std::time::Duration;

use serde::Serialize;

/// Interval length used unless told otherwise.
pub const INTERVAL: Duration = Duration::from_millis(200);
/// Longest run recorded interval by interval (at 200 ms: 24 hours).
const MAX_INTERVALS: usize = 432_000;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Interval {
    /// Start of the interval, seconds from the start of the run.
    pub t_s: f64,
    /// Bottleneck capacity at the start of the interval (None: unlimited).
    pub capacity_kbps: Option<f64>,
    pub offered_pkts: u64,
    pub offered_bytes: u64,
    pub delivered_pkts: u64,
    pub delivered_bytes: u64,
    /// Lost to the loss model.
    pub lost_random: u64,
    /// Dropped by the full queue in front of the bottleneck.
    pub lost_queue: u64,
    /// Duplicates made.
    pub duplicated: u64,
    /// One-way delay (arrival to release) of packets delivered in the interval, ms.
    pub owd_mean_ms: f64,
    pub owd_max_ms: f64,
    /// Wait in the bottleneck queue including serialisation, ms.
    pub queue_mean_ms: f64,
    #[serde(skip)]
    pub(crate) owd_sum_ns: u128,
    #[serde(skip)]
    pub(crate) queue_sum_ns: u128,
}

impl Interval {
    pub fn offered_kbps(&self, len: Duration) -> f64 {
        self.offered_bytes as f64 * 8.0 / len.as_secs_f64() / 1000.0
    }
    pub fn delivered_kbps(&self, len: Duration) -> f64 {
        self.delivered_bytes as f64 * 8.0 / len.as_secs_f64() / 1000.0
    }
}

/// A delay histogram fine enough for sub-millisecond medians: 10 µs bins to 100 ms,
/// then 1 ms bins to 10 s, then one overflow bin.
#[derive(Debug, Clone)]
struct Histogram {
    bins: Vec<u64>,
    count: u64,
}

const FINE_BINS: usize = 10_000;
const COARSE_BINS: usize = 9_900;

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            bins: vec![0; FINE_BINS + COARSE_BINS + 1],
            count: 0,
        }
    }
    fn add(&mut self, d: Duration) {
        let us = d.as_micros() as usize;
        let i = if us < 100_000 {
            us / 10
        } else {
            (FINE_BINS + (us - 100_000) / 1000).min(FINE_BINS + COARSE_BINS)
        };
        self.bins[i] += 1;
        self.count += 1;
    }
    /// The q-quantile, at the middle of its bin, ms.
    fn quantile_ms(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let want = ((self.count as f64 * q).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &c) in self.bins.iter().enumerate() {
            seen += c;
            if seen >= want {
                return Some(if i < FINE_BINS {
                    (i as f64 * 10.0 + 5.0) / 1000.0
                } else {
                    100.0 + (i - FINE_BINS) as f64 + 0.5
                });
            }
        }
        None
    }
}

/// Whole-run figures.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    pub duration_s: f64,
    pub offered_pkts: u64,
    pub delivered_pkts: u64,
    pub offered_bytes: u64,
    pub delivered_bytes: u64,
    pub lost_random: u64,
    pub lost_queue: u64,
    pub duplicated: u64,
    /// Share of offered packets not delivered, percent.
    pub loss_pct: f64,
    pub delivered_kbps: f64,
    pub owd_p50_ms: Option<f64>,
    pub owd_p95_ms: Option<f64>,
    pub owd_p99_ms: Option<f64>,
    pub owd_max_ms: f64,
    /// Wait in the bottleneck queue (with serialisation) of delivered packets: RFC 8868's
    /// queuing delay, ms.
    pub queue_p50_ms: Option<f64>,
    pub queue_p95_ms: Option<f64>,
    /// Mean length of runs of consecutive lost packets (loss model only).
    pub mean_loss_burst: Option<f64>,
}

/// Records one direction.
#[derive(Debug, Clone)]
pub struct Recorder {
    len: Duration,
    intervals: Vec<Interval>,
    owd: Histogram,
    owd_max: Duration,
    queue: Histogram,
    bursts: u64,
    burst_pkts: u64,
    in_burst: bool,
    last_t: Duration,
}

impl Recorder {
    pub fn new(len: Duration) -> Recorder {
        Recorder {
            len: len.max(Duration::from_millis(1)),
            intervals: Vec::new(),
            owd: Histogram::new(),
            owd_max: Duration::ZERO,
            queue: Histogram::new(),
            bursts: 0,
            burst_pkts: 0,
            in_burst: false,
            last_t: Duration::ZERO,
        }
    }

    pub fn interval_len(&self) -> Duration {
        self.len
    }

    fn at(&mut self, t: Duration) -> Option<&mut Interval> {
        self.last_t = self.last_t.max(t);
        let i = (t.as_nanos() / self.len.as_nanos()) as usize;
        if i >= MAX_INTERVALS {
            return None;
        }
        while self.intervals.len() <= i {
            let t_s = (self.intervals.len() as u128 * self.len.as_nanos()) as f64 / 1e9;
            self.intervals.push(Interval {
                t_s,
                ..Default::default()
            });
        }
        Some(&mut self.intervals[i])
    }

    /// Notes the capacity in force at `t` if its interval has none yet; `rate` (bits per
    /// second, `None` for unlimited) is only asked then, once per interval rather than per
    /// packet.
    pub fn capacity(&mut self, t: Duration, rate: impl FnOnce() -> Option<u64>) {
        if let Some(iv) = self.at(t)
            && iv.capacity_kbps.is_none()
        {
            iv.capacity_kbps = rate().map(|b| b as f64 / 1000.0);
        }
    }

    pub fn offered(&mut self, t: Duration, bytes: usize) {
        if let Some(iv) = self.at(t) {
            iv.offered_pkts += 1;
            iv.offered_bytes += bytes as u64;
        }
    }

    pub fn lost_random(&mut self, t: Duration) {
        if !self.in_burst {
            self.bursts += 1;
            self.in_burst = true;
        }
        self.burst_pkts += 1;
        if let Some(iv) = self.at(t) {
            iv.lost_random += 1;
        }
    }

    /// A packet got past the loss model (ends a loss burst).
    pub fn passed_loss(&mut self) {
        self.in_burst = false;
    }

    pub fn lost_queue(&mut self, t: Duration) {
        if let Some(iv) = self.at(t) {
            iv.lost_queue += 1;
        }
    }

    pub fn duplicated(&mut self, t: Duration) {
        if let Some(iv) = self.at(t) {
            iv.duplicated += 1;
        }
    }

    /// A packet left the link at `t` after `owd`, of which `queue` in the bottleneck.
    pub fn delivered(&mut self, t: Duration, bytes: usize, owd: Duration, queue: Duration) {
        self.owd.add(owd);
        self.owd_max = self.owd_max.max(owd);
        self.queue.add(queue);
        if let Some(iv) = self.at(t) {
            iv.delivered_pkts += 1;
            iv.delivered_bytes += bytes as u64;
            iv.owd_sum_ns += owd.as_nanos();
            iv.queue_sum_ns += queue.as_nanos();
            let ms = owd.as_secs_f64() * 1000.0;
            if ms > iv.owd_max_ms {
                iv.owd_max_ms = ms;
            }
        }
    }

    /// The intervals so far, with means filled in.
    pub fn intervals(&self) -> Vec<Interval> {
        self.intervals
            .iter()
            .map(|iv| {
                let mut iv = iv.clone();
                if iv.delivered_pkts > 0 {
                    iv.owd_mean_ms = iv.owd_sum_ns as f64 / iv.delivered_pkts as f64 / 1e6;
                    iv.queue_mean_ms = iv.queue_sum_ns as f64 / iv.delivered_pkts as f64 / 1e6;
                }
                iv
            })
            .collect()
    }

    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for iv in &self.intervals {
            s.offered_pkts += iv.offered_pkts;
            s.offered_bytes += iv.offered_bytes;
            s.delivered_pkts += iv.delivered_pkts;
            s.delivered_bytes += iv.delivered_bytes;
            s.lost_random += iv.lost_random;
            s.lost_queue += iv.lost_queue;
            s.duplicated += iv.duplicated;
        }
        s.duration_s = self.last_t.as_secs_f64();
        let expected = s.offered_pkts + s.duplicated;
        if expected > 0 {
            s.loss_pct = (s.lost_random + s.lost_queue) as f64 * 100.0 / expected as f64;
        }
        if s.duration_s > 0.0 {
            s.delivered_kbps = s.delivered_bytes as f64 * 8.0 / s.duration_s / 1000.0;
        }
        s.owd_p50_ms = self.owd.quantile_ms(0.5);
        s.owd_p95_ms = self.owd.quantile_ms(0.95);
        s.owd_p99_ms = self.owd.quantile_ms(0.99);
        s.owd_max_ms = self.owd_max.as_secs_f64() * 1000.0;
        s.queue_p50_ms = self.queue.quantile_ms(0.5);
        s.queue_p95_ms = self.queue.quantile_ms(0.95);
        if self.bursts > 0 {
            s.mean_loss_burst = Some(self.burst_pkts as f64 / self.bursts as f64);
        }
        s
    }

    /// CSV with a header line.
    pub fn csv(&self, direction: &str) -> String {
        let mut out = String::from(
            "direction,t_s,capacity_kbps,offered_kbps,delivered_kbps,offered_pkts,delivered_pkts,lost_random,lost_queue,duplicated,owd_mean_ms,owd_max_ms,queue_mean_ms\n",
        );
        for iv in self.intervals() {
            out.push_str(&format!(
                "{direction},{:.3},{},{:.1},{:.1},{},{},{},{},{},{:.3},{:.3},{:.3}\n",
                iv.t_s,
                iv.capacity_kbps
                    .map(|c| format!("{c:.1}"))
                    .unwrap_or_default(),
                iv.offered_kbps(self.len),
                iv.delivered_kbps(self.len),
                iv.offered_pkts,
                iv.delivered_pkts,
                iv.lost_random,
                iv.lost_queue,
                iv.duplicated,
                iv.owd_mean_ms,
                iv.owd_max_ms,
                iv.queue_mean_ms
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_quantiles_land_in_the_right_bin() {
        let mut h = Histogram::new();
        for us in 0..1000u64 {
            h.add(Duration::from_micros(50_000 + us));
        }
        let p50 = h.quantile_ms(0.5).unwrap();
        assert!((p50 - 50.5).abs() < 0.02, "{p50}");
        h.add(Duration::from_secs(3));
        h.add(Duration::from_secs(100));
        assert!(h.quantile_ms(1.0).unwrap() > 9_000.0);
    }

    #[test]
    fn the_summary_gives_queuing_delay_percentiles_apart_from_one_way_delay() {
        let mut r = Recorder::new(INTERVAL);
        // 100 packets, 50 ms of propagation each; 90 wait 2 ms in the queue, 10 wait 80 ms.
        for i in 0..100u64 {
            let queue = Duration::from_millis(if i < 90 { 2 } else { 80 });
            let t = Duration::from_millis(i * 10);
            r.offered(t, 1000);
            r.delivered(t, 1000, Duration::from_millis(50) + queue, queue);
        }
        let s = r.summary();
        assert!((s.queue_p50_ms.unwrap() - 2.005).abs() < 0.01, "{s:?}");
        assert!((s.queue_p95_ms.unwrap() - 80.005).abs() < 0.01, "{s:?}");
        assert!((s.owd_p50_ms.unwrap() - 52.005).abs() < 0.01, "{s:?}");
    }
}
