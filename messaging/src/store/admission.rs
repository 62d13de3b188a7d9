//! Admission control for the storage queue.
//!
//! Two signals decide whether a client's request may join the queue:
//!
//! * **Sojourn**, as in CoDel: the writer thread reports how long the oldest job of each
//!   batch waited. A queue whose oldest job has waited longer than the target for a whole
//!   interval is a standing queue — more work arrives than the writer can do — and from then
//!   on client requests are refused while the queue still holds more than half a target of
//!   work. A burst that drains within the interval is absorbed: it is not overload.
//! * **Prediction**, for a flood that arrives faster than sojourn can show it: the writer
//!   runs jobs in batches of up to [`super::MAX_BATCH`], each ending in one commit (one
//!   fsync), so draining `q` jobs takes about `commits(q) · commit + q · job`, from the
//!   commit and per-job times it measures after every batch. A request whose wait would pass
//!   the ceiling (a multiple of the target) is refused at once, as is one past the hard cap
//!   on queued jobs.
//!
//! A refusal is `overloaded` with a retry-after of about the time the queue needs to drain.
//! Work the server does on its own (replay reads, cursor acks, sweeps) and acks are never
//! refused, only counted; they are bounded by connections, in-flight caps and timers.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Weight of the newest batch in the moving averages (1/16: one slow batch on a busy machine
/// should not move the estimate much).
const EWMA_SHIFT: u32 = 4;
/// How long the sojourn must stay above the target to count as a standing queue.
pub const INTERVAL_NS: u64 = 100_000_000;
/// The prediction refuses past this many targets.
pub const CEILING_TARGETS: u64 = 5;

/// The estimate and the counters behind it, shared by every connection (atomics, no lock).
#[derive(Debug)]
pub struct Admission {
    /// Jobs sent and not yet taken by the writer thread.
    queued: AtomicUsize,
    /// Moving averages, in nanoseconds.
    commit_ns: AtomicU64,
    job_ns: AtomicU64,
    /// A standing queue was seen (sojourn above target for an interval).
    standing: AtomicBool,
    /// When the sojourn first went above the target (0: it is below), writer's clock.
    above_since_ns: AtomicU64,
    /// The oldest job's wait in the last batch.
    sojourn_ns: AtomicU64,
    target_ns: u64,
    max_jobs: usize,
    batch: usize,
}

impl Admission {
    pub fn new(target_ms: u64, max_jobs: usize, batch: usize) -> Admission {
        Admission {
            queued: AtomicUsize::new(0),
            // Until measured: a slow disk's fsync and a slow job, so a cold server is careful.
            commit_ns: AtomicU64::new(2_000_000),
            job_ns: AtomicU64::new(50_000),
            standing: AtomicBool::new(false),
            above_since_ns: AtomicU64::new(0),
            sojourn_ns: AtomicU64::new(0),
            target_ns: target_ms * 1_000_000,
            max_jobs,
            batch: batch.max(1),
        }
    }

    /// Takes a slot for one client job, or says in how many milliseconds to retry.
    pub fn try_admit(&self) -> Result<(), u64> {
        let queued = self.queued.fetch_add(1, Ordering::Relaxed);
        let drain = self.drain_ns(queued + 1);
        let standing = self.standing.load(Ordering::Relaxed) && drain > self.target_ns / 2;
        let flood = drain > CEILING_TARGETS * self.target_ns;
        if queued < self.max_jobs && !standing && !flood {
            return Ok(());
        }
        self.queued.fetch_sub(1, Ordering::Relaxed);
        let wait = drain.max(self.sojourn_ns.load(Ordering::Relaxed));
        Err(wait.div_ceil(1_000_000).max(1))
    }

    /// Counts a job that is never refused.
    pub fn admit(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    /// A job left the queue (taken by the writer thread, or never sent).
    pub fn release(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
    }

    /// The writer starts a batch at `now_ns` (its own monotonic clock) whose oldest job
    /// waited `waited_ns`.
    pub fn observe_sojourn(&self, waited_ns: u64, now_ns: u64) {
        self.sojourn_ns.store(waited_ns, Ordering::Relaxed);
        if waited_ns <= self.target_ns {
            self.above_since_ns.store(0, Ordering::Relaxed);
            self.standing.store(false, Ordering::Relaxed);
            return;
        }
        // Only the writer writes these, so load-then-store loses nothing.
        let since = self.above_since_ns.load(Ordering::Relaxed);
        if since == 0 {
            self.above_since_ns.store(now_ns.max(1), Ordering::Relaxed);
        } else if now_ns.saturating_sub(since) >= INTERVAL_NS {
            self.standing.store(true, Ordering::Relaxed);
        }
    }

    /// The writer thread ran `jobs` jobs in `run_ns` and committed them in `commit_ns`.
    pub fn observe_batch(&self, jobs: usize, run_ns: u64, commit_ns: u64) {
        if jobs == 0 {
            return;
        }
        ewma(&self.commit_ns, commit_ns);
        ewma(&self.job_ns, run_ns / jobs as u64);
    }

    /// Estimated time to drain `queued` jobs, in nanoseconds.
    pub fn drain_ns(&self, queued: usize) -> u64 {
        drain_estimate_ns(
            queued,
            self.batch,
            self.commit_ns.load(Ordering::Relaxed),
            self.job_ns.load(Ordering::Relaxed),
        )
    }

    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Whether a standing queue was seen and not yet drained.
    pub fn standing(&self) -> bool {
        self.standing.load(Ordering::Relaxed)
    }
}

fn ewma(avg: &AtomicU64, sample: u64) {
    // Only the writer thread writes, so load-then-store does not lose updates.
    let old = avg.load(Ordering::Relaxed);
    let new = old - (old >> EWMA_SHIFT) + (sample >> EWMA_SHIFT);
    avg.store(new.max(1), Ordering::Relaxed);
}

/// `queued` jobs run in batches of `batch`: one commit per batch plus the jobs themselves.
pub fn drain_estimate_ns(queued: usize, batch: usize, commit_ns: u64, job_ns: u64) -> u64 {
    let commits = queued.div_ceil(batch) as u64;
    commits * commit_ns + queued as u64 * job_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// An admission whose averages have settled on 1 ms commits and 20 µs jobs.
    fn settled(target_ms: u64) -> Admission {
        let a = Admission::new(target_ms, 100_000, 512);
        for _ in 0..256 {
            a.observe_batch(100, 100 * 20_000, MS);
        }
        a
    }

    fn admit_all(a: &Admission, n: usize) -> usize {
        (0..n).take_while(|_| a.try_admit().is_ok()).count()
    }

    #[test]
    fn drain_estimate_counts_one_commit_per_batch() {
        assert_eq!(drain_estimate_ns(0, 512, MS, 10_000), 0);
        // One job: one commit and the job.
        assert_eq!(drain_estimate_ns(1, 512, MS, 10_000), 1_010_000);
        // A full batch still needs one commit.
        assert_eq!(drain_estimate_ns(512, 512, MS, 10_000), 6_120_000);
        // One more needs a second.
        assert_eq!(drain_estimate_ns(513, 512, MS, 10_000), 7_130_000);
    }

    #[test]
    fn a_flood_is_refused_past_the_ceiling() {
        // 20 ms target, ceiling 100 ms: with 1 ms commits and 20 µs jobs, n jobs need
        // ceil(n/512) ms + n·20 µs, which passes 100 ms after 4550 jobs (9 + 91 ms).
        let a = settled(20);
        let admitted = admit_all(&a, 10_000);
        assert!((4540..=4551).contains(&admitted), "{admitted}");
        let retry = a.try_admit().unwrap_err();
        assert_eq!(retry, 101, "about the time the queue needs to drain");
        for _ in 0..1000 {
            a.release();
        }
        assert!(a.try_admit().is_ok(), "draining frees room again");
    }

    #[test]
    fn a_short_burst_is_absorbed_but_a_standing_queue_is_refused() {
        let a = settled(20);
        // A queue of 2000 jobs (about 44 ms of work) is admitted: no standing queue yet.
        assert_eq!(admit_all(&a, 2000), 2000);
        // The oldest job waited 30 ms, for less than an interval: still a burst.
        a.observe_sojourn(30 * MS, 1_000 * MS);
        a.observe_sojourn(30 * MS, 1_050 * MS);
        assert!(!a.standing());
        assert!(a.try_admit().is_ok());
        // Above the target for a whole interval: a standing queue; refused while more than
        // half a target (10 ms) of work waits.
        a.observe_sojourn(35 * MS, 1_100 * MS);
        assert!(a.standing());
        let retry = a.try_admit().unwrap_err();
        assert!(retry >= 35, "at least the oldest job's wait: {retry}");
        // The queue drains to about 400 jobs (9 ms): admitted again even before a batch
        // reports a short wait.
        for _ in 0..1600 {
            a.release();
        }
        assert!(a.try_admit().is_ok());
        // A batch whose oldest job waited less than the target ends the standing queue.
        a.observe_sojourn(5 * MS, 1_200 * MS);
        assert!(!a.standing());
    }

    #[test]
    fn a_dip_below_the_target_restarts_the_interval() {
        let a = settled(20);
        a.observe_sojourn(30 * MS, 1_000 * MS);
        a.observe_sojourn(10 * MS, 1_080 * MS);
        a.observe_sojourn(30 * MS, 1_090 * MS);
        a.observe_sojourn(30 * MS, 1_150 * MS);
        assert!(!a.standing(), "above for 60 ms only since the dip");
        a.observe_sojourn(30 * MS, 1_190 * MS);
        assert!(a.standing());
    }

    #[test]
    fn the_hard_cap_holds_even_when_jobs_look_free() {
        let a = Admission::new(10_000, 100, 512);
        for _ in 0..256 {
            a.observe_batch(512, 512, 1);
        }
        assert_eq!(admit_all(&a, 1000), 100);
        assert_eq!(a.queued(), 100);
    }

    #[test]
    fn a_slower_disk_admits_less() {
        // Ceiling 100 ms. Fast: 0.5 ms commits, about 4760 jobs (10 commits, 95 ms of jobs).
        // Slow: 8 ms commits, about 2600 jobs (6 commits = 48 ms, 52 ms of jobs).
        let fast = Admission::new(20, 100_000, 512);
        let slow = Admission::new(20, 100_000, 512);
        for _ in 0..256 {
            fast.observe_batch(10, 10 * 20_000, MS / 2);
            slow.observe_batch(10, 10 * 20_000, 8 * MS);
        }
        let (f, s) = (admit_all(&fast, 10_000), admit_all(&slow, 10_000));
        assert!((4700..=4800).contains(&f), "{f}");
        assert!((2550..=2650).contains(&s), "{s}");
    }
}
