//! What one direction of a link does to packets, as written in scenario files and flags.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::capacity::{Capacity, Step};

/// Longest delay, jitter, reordering hold or queue wait a configuration may ask for (a day).
/// Far past any path worth emulating, and it keeps every computed release time within what
/// `Duration` holds (a larger finite value made `Link::send` panic).
pub const MAX_TIME_MS: f64 = 86_400_000.0;

/// Shape of the jitter added to the fixed delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum JitterDist {
    /// Uniform in [-jitter, +jitter].
    Uniform,
    /// Gaussian with σ = jitter (truncated at `jitter_max_ms`, default 3σ).
    #[default]
    Normal,
    /// |N(0, σ = jitter)| truncated at `jitter_max_ms` (default 3σ): RFC 8868 §4.5.3's
    /// recommended PDV, positive only.
    Halfnormal,
    /// Heavy-tailed and positive only (Lomax, shape 2.5) with mean = jitter.
    Pareto,
}

/// Gilbert–Elliott burst loss: a two-state chain stepped once per packet.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GilbertElliott {
    /// Chance per packet of moving from the good state to the bad one, in percent.
    pub p_pct: f64,
    /// Chance per packet of moving from the bad state back to the good one, in percent.
    /// The mean burst (time in the bad state) is 100 / r_pct packets.
    pub r_pct: f64,
    /// Loss while good, percent (default 0).
    #[serde(default)]
    pub good_loss_pct: f64,
    /// Loss while bad, percent (default 100).
    #[serde(default = "hundred")]
    pub bad_loss_pct: f64,
}

fn hundred() -> f64 {
    100.0
}

impl GilbertElliott {
    /// The chain with a given long-run loss and mean burst length (packets), losing every
    /// packet in the bad state and none in the good one.
    pub fn from_loss_and_burst(loss_pct: f64, mean_burst: f64) -> GilbertElliott {
        let r = 1.0 / mean_burst.max(1.0);
        let l = (loss_pct / 100.0).clamp(0.0, 0.999);
        let p = l * r / (1.0 - l);
        GilbertElliott {
            p_pct: p * 100.0,
            r_pct: r * 100.0,
            good_loss_pct: 0.0,
            bad_loss_pct: 100.0,
        }
    }
}

/// One capacity step in a scenario file: from `at_s` seconds on, `kbps` kbit/s.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    pub at_s: f64,
    pub kbps: f64,
}

/// Impairments of one direction. Every field is optional; the default passes packets
/// through untouched.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Impairment {
    /// Fixed one-way delay added after the bottleneck (propagation), ms.
    pub delay_ms: f64,
    /// Jitter scale, ms (see `jitter_dist`).
    pub jitter_ms: f64,
    pub jitter_dist: JitterDist,
    /// Cap on |jitter|, ms (normal: default 3σ; uniform: the range itself).
    pub jitter_max_ms: Option<f64>,
    /// Never let jitter reorder packets (a packet waits for the one before it).
    pub preserve_order: bool,
    /// Independent (Bernoulli) loss, percent.
    pub loss_pct: f64,
    /// Burst loss instead of Bernoulli.
    pub gilbert_elliott: Option<GilbertElliott>,
    /// Duplication, percent: the copy goes through the same queue.
    pub duplicate_pct: f64,
    /// Reordering: this share of packets (percent) is held back `reorder_ms` extra, so the
    /// packets behind it overtake.
    pub reorder_pct: f64,
    pub reorder_ms: f64,
    /// Constant bottleneck rate, kbit/s.
    pub rate_kbps: Option<f64>,
    /// Bottleneck rate that changes over time (kbit/s from `at_s`); the last step holds.
    pub capacity: Vec<StepSpec>,
    /// Mahimahi trace file (one line per 1500-byte delivery opportunity, in ms; it loops),
    /// relative to the scenario file.
    pub trace: Option<String>,
    /// Drop-tail queue in front of the bottleneck, bytes.
    pub queue_bytes: Option<u64>,
    /// Drop-tail queue in front of the bottleneck expressed as the longest wait, ms.
    pub queue_ms: Option<f64>,
    /// Bytes added to each packet's size when it is charged to the bottleneck (e.g. 28
    /// for IPv4+UDP headers when the emulator only sees UDP payloads).
    pub overhead_bytes: u32,
}

/// One direction of a link: what it does to packets, and its bottleneck (loaded).
#[derive(Debug, Clone)]
pub struct Direction {
    pub impairment: Impairment,
    pub capacity: Capacity,
}

impl Direction {
    /// Checks `impairment` and loads its bottleneck (a trace path is relative to `base`).
    pub fn load(impairment: Impairment, base: &Path) -> Result<Direction, String> {
        impairment.validate()?;
        let capacity = impairment.capacity(base)?;
        Ok(Direction {
            impairment,
            capacity,
        })
    }

    /// Passes packets through untouched.
    pub fn clean() -> Direction {
        Direction {
            impairment: Impairment::default(),
            capacity: Capacity::Unlimited,
        }
    }
}

/// The queue in front of the bottleneck.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum QueueLimit {
    Unbounded,
    Bytes(u64),
    Wait(Duration),
}

impl Impairment {
    /// Checks ranges and combinations; the error says which field is wrong.
    pub fn validate(&self) -> Result<(), String> {
        let pct = |name: &str, v: f64| {
            if !(0.0..=100.0).contains(&v) || v.is_nan() {
                Err(format!("{name} must be between 0 and 100, got {v}"))
            } else {
                Ok(())
            }
        };
        let nonneg = |name: &str, v: f64| {
            if v < 0.0 || !v.is_finite() {
                Err(format!("{name} must be a finite number ≥ 0, got {v}"))
            } else {
                Ok(())
            }
        };
        let time_ms = |name: &str, v: f64| {
            nonneg(name, v)?;
            if v > MAX_TIME_MS {
                return Err(format!(
                    "{name} must be at most {MAX_TIME_MS} (a day), got {v}"
                ));
            }
            Ok(())
        };
        time_ms("delay_ms", self.delay_ms)?;
        time_ms("jitter_ms", self.jitter_ms)?;
        if let Some(m) = self.jitter_max_ms {
            time_ms("jitter_max_ms", m)?;
        }
        pct("loss_pct", self.loss_pct)?;
        pct("duplicate_pct", self.duplicate_pct)?;
        pct("reorder_pct", self.reorder_pct)?;
        time_ms("reorder_ms", self.reorder_ms)?;
        if let Some(ge) = &self.gilbert_elliott {
            pct("gilbert_elliott.p_pct", ge.p_pct)?;
            pct("gilbert_elliott.r_pct", ge.r_pct)?;
            pct("gilbert_elliott.good_loss_pct", ge.good_loss_pct)?;
            pct("gilbert_elliott.bad_loss_pct", ge.bad_loss_pct)?;
            if ge.r_pct == 0.0 && ge.p_pct > 0.0 {
                return Err("gilbert_elliott.r_pct of 0 never leaves the bad state".into());
            }
            if self.loss_pct > 0.0 {
                return Err("set either loss_pct or gilbert_elliott, not both".into());
            }
        }
        let shapers = [
            self.rate_kbps.is_some(),
            !self.capacity.is_empty(),
            self.trace.is_some(),
        ];
        if shapers.iter().filter(|b| **b).count() > 1 {
            return Err("set only one of rate_kbps, capacity and trace".into());
        }
        if let Some(r) = self.rate_kbps
            && (r <= 0.0 || !r.is_finite())
        {
            return Err(format!("rate_kbps must be > 0, got {r}"));
        }
        let mut last = -1.0;
        for s in &self.capacity {
            nonneg("capacity.at_s", s.at_s)?;
            if s.at_s > MAX_TIME_MS / 1000.0 {
                return Err(format!(
                    "capacity.at_s must be at most {} (a day), got {}",
                    MAX_TIME_MS / 1000.0,
                    s.at_s
                ));
            }
            nonneg("capacity.kbps", s.kbps)?;
            if s.at_s <= last {
                return Err("capacity steps must be in increasing at_s order".into());
            }
            last = s.at_s;
        }
        if self.queue_bytes.is_some() && self.queue_ms.is_some() {
            return Err("set either queue_bytes or queue_ms, not both".into());
        }
        if let Some(q) = self.queue_ms {
            time_ms("queue_ms", q)?;
        }
        if self.overhead_bytes > 65_535 {
            return Err("overhead_bytes must be ≤ 65535".into());
        }
        Ok(())
    }

    /// The bottleneck this direction has, loading a trace file relative to `base`.
    pub fn capacity(&self, base: &Path) -> Result<Capacity, String> {
        if let Some(r) = self.rate_kbps {
            return Ok(Capacity::steps(vec![Step {
                at: Duration::ZERO,
                bits_per_s: (r * 1000.0) as u64,
            }]));
        }
        if !self.capacity.is_empty() {
            let mut steps: Vec<Step> = self
                .capacity
                .iter()
                .map(|s| Step {
                    at: Duration::from_secs_f64(s.at_s),
                    bits_per_s: (s.kbps * 1000.0) as u64,
                })
                .collect();
            // Before the first step the link runs at the first step's rate.
            steps[0].at = Duration::ZERO;
            return Ok(Capacity::steps(steps));
        }
        if let Some(t) = &self.trace {
            let path = base.join(t);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read trace {}: {e}", path.display()))?;
            return Capacity::mahimahi(&text).map_err(|e| format!("{}: {e}", path.display()));
        }
        Ok(Capacity::Unlimited)
    }

    pub fn queue_limit(&self) -> QueueLimit {
        match (self.queue_bytes, self.queue_ms) {
            (Some(b), _) => QueueLimit::Bytes(b),
            (None, Some(ms)) => QueueLimit::Wait(Duration::from_secs_f64(ms / 1000.0)),
            (None, None) => QueueLimit::Unbounded,
        }
    }

    /// The loss model in force (Gilbert–Elliott wins when set).
    pub fn loss_model(&self) -> Option<GilbertElliott> {
        if let Some(ge) = self.gilbert_elliott {
            return Some(ge);
        }
        if self.loss_pct > 0.0 {
            // Bernoulli is the one-state special case: always "good", losing loss_pct.
            return Some(GilbertElliott {
                p_pct: 0.0,
                r_pct: 100.0,
                good_loss_pct: self.loss_pct,
                bad_loss_pct: 100.0,
            });
        }
        None
    }
}
