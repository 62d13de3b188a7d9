//! natter's user-space network emulator.
//!
//! * [`link`]: the sans-IO impairment pipeline of one direction, fed packets and time.
//! * [`capacity`]: bottleneck service from a rate, a schedule of steps or a Mahimahi trace.
//! * [`config`]: what a direction does, as written in scenario files and flags.
//! * [`scenario`]: scenario files (`netem/scenarios/*.toml`).
//! * [`stats`]: per-interval (200 ms) statistics and summaries, CSV and JSON.
//! * [`trace`]: synthetic Mahimahi traces.
//! * [`proxy`]: UDP proxy mode, the async shell around two links.

pub mod capacity;
pub mod config;
pub mod link;
pub mod proxy;
pub mod rng;
pub mod scenario;
pub mod stats;
pub mod trace;

pub use config::Impairment;
pub use link::{Link, Verdict};
pub use scenario::Scenario;
