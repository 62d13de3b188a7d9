//! Admission control for the storage queue.
//!
//! The writer thread runs jobs in batches of up to [`super::MAX_BATCH`], each ending in one
//! commit (one fsync). So draining `q` queued jobs takes about `commits(q) · commit + q · job`,
//! where `commit` and `job` are the recent commit time and the recent time per job, both
//! measured by the writer thread after every batch. A client request is admitted only while
//! that estimate stays under the target: past it, waiting in the queue would cost the request
//! (and everyone behind it) more than the target, so it is refused at once with `overloaded`
//! and a retry-after of about the time the queue needs to drain. Work the server does on its
//! own (replay reads, cursor acks, sweeps) and acks are never refused, only counted; they are
//! bounded by the number of connections, their in-flight caps and timers.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Weight of the newest batch in the moving averages (1/8, as TCP's SRTT).
const EWMA_SHIFT: u32 = 3;

/// The estimate and the counters behind it, shared by every connection (atomics, no lock).
#[derive(Debug)]
pub struct Admission {
    /// Jobs sent and not yet taken by the writer thread.
    queued: AtomicUsize,
    /// Moving averages, in nanoseconds.
    commit_ns: AtomicU64,
    job_ns: AtomicU64,
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
            target_ns: target_ms * 1_000_000,
            max_jobs,
            batch: batch.max(1),
        }
    }

    /// Takes a slot for one client job, or says in how many milliseconds to retry.
    pub fn try_admit(&self) -> Result<(), u64> {
        let queued = self.queued.fetch_add(1, Ordering::Relaxed);
        let drain = self.drain_ns(queued + 1);
        if queued < self.max_jobs && drain <= self.target_ns {
            return Ok(());
        }
        self.queued.fetch_sub(1, Ordering::Relaxed);
        Err(drain.div_ceil(1_000_000).max(1))
    }

    /// Counts a job that is never refused.
    pub fn admit(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    /// A job left the queue (taken by the writer thread, or never sent).
    pub fn release(&self) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
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

    #[test]
    fn drain_estimate_counts_one_commit_per_batch() {
        assert_eq!(drain_estimate_ns(0, 512, 1_000_000, 10_000), 0);
        // One job: one commit and the job.
        assert_eq!(drain_estimate_ns(1, 512, 1_000_000, 10_000), 1_010_000);
        // A full batch still needs one commit.
        assert_eq!(drain_estimate_ns(512, 512, 1_000_000, 10_000), 6_120_000);
        // One more needs a second.
        assert_eq!(drain_estimate_ns(513, 512, 1_000_000, 10_000), 7_130_000);
    }

    #[test]
    fn admits_until_the_estimate_reaches_the_target() {
        // 25 ms target; commits 1 ms, jobs 20 µs: the estimate for n ≤ 512 is 1 ms + n·20 µs,
        // so 1200 jobs would need 3 commits + 24 ms > 25 ms; 1100 need 3 ms + 22 ms = 25 ms.
        let a = Admission::new(25, 100_000, 512);
        for _ in 0..64 {
            a.observe_batch(100, 100 * 20_000, 1_000_000);
        }
        // The averages converge on the samples (within the EWMA's rounding).
        let admitted = (0..2000).take_while(|_| a.try_admit().is_ok()).count();
        assert!((1090..=1100).contains(&admitted), "{admitted}");
        let retry = a.try_admit().unwrap_err();
        assert_eq!(retry, 26, "about the time the queue needs to drain");
        // Draining frees room again.
        for _ in 0..500 {
            a.release();
        }
        assert!(a.try_admit().is_ok());
    }

    #[test]
    fn the_hard_cap_holds_even_when_jobs_look_free() {
        let a = Admission::new(10_000, 100, 512);
        for _ in 0..64 {
            a.observe_batch(512, 512, 1);
        }
        let admitted = (0..1000).take_while(|_| a.try_admit().is_ok()).count();
        assert_eq!(admitted, 100);
        assert_eq!(a.queued(), 100);
    }

    #[test]
    fn a_slower_disk_admits_less() {
        let fast = Admission::new(25, 100_000, 512);
        let slow = Admission::new(25, 100_000, 512);
        for _ in 0..64 {
            fast.observe_batch(10, 10 * 20_000, 500_000);
            slow.observe_batch(10, 10 * 20_000, 8_000_000);
        }
        let count = |a: &Admission| (0..5000).take_while(|_| a.try_admit().is_ok()).count();
        assert!(count(&slow) * 2 < count(&fast));
    }
}
