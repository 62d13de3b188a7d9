//! natter's user-space network emulator.
//!
//! * [`link`]: the sans-IO impairment pipeline of one direction, fed packets and time.
//! * [`capacity`]: bottleneck service from a rate, a schedule of steps or a Mahimahi trace.
//! * [`config`]: what a direction does, as written in scenario files and flags.
//! * [`scenario`]: scenario files (`netem/scenarios/*.toml`).
//! * [`stats`]: per-interval (200 ms) statistics and summaries, CSV and JSON.
//! * [`trace`]: synthetic Mahimahi traces.
//! * [`proxy`]: UDP proxy mode, the async shell around two links.
//! * [`router`], [`tun`], [`topology`]: link mode (root): hosts in network namespaces
//!   joined through TUN devices to a user-space star router, optionally behind NATs.
//! * [`probe`]: a paced UDP sender and a sink measuring rate, loss and one-way delay.
//! * [`plot`]: SVG plots of the per-interval statistics.

pub mod capacity;
pub mod config;
pub mod link;
pub mod plot;
pub mod probe;
pub mod proxy;
pub mod rng;
pub mod router;
pub mod scenario;
pub mod stats;
pub mod topology;
pub mod trace;
pub mod tun;

pub use config::Impairment;
pub use link::{Link, Verdict};
pub use scenario::Scenario;
