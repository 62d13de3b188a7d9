//! WAL checkpoints off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that crosses the threshold: that
//! commit then copies the whole WAL into the database and fsyncs it, and every request in
//! its batch (and all queued behind it) waits — the latency tail of a busy server. So the
//! writer connection has automatic checkpoints off, and this thread, on a connection of its
//! own, runs `PASSIVE` checkpoints, which never block the writer: SQLite lets one writer
//! append to the WAL while a checkpoint copies what was committed before.
//!
//! The WAL starts over only when a write transaction begins with every frame copied, which
//! never happens while the writer commits back to back: under steady load the file would
//! grow without end (about 100 MB a second at 15,000 messages a second). So once the
//! background pass reports more than [`RESTART_FRAMES`] in the WAL, the writer runs one
//! checkpoint itself between two batches; the background thread has copied nearly all of
//! it already, so that costs the writer the last few frames and one fsync, and its next
//! transaction starts the WAL over.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;

/// How often the thread looks for new commits.
const EVERY: Duration = Duration::from_millis(50);

/// Frames in the WAL (4 KiB pages) past which the writer checkpoints itself: 32 MiB.
pub const RESTART_FRAMES: u64 = 8192;

/// Shared between the writer (which counts its commits) and the checkpointer.
#[derive(Debug, Default)]
pub struct Commits {
    count: AtomicU64,
    stop: AtomicBool,
    /// Frames in the WAL at the last background pass.
    wal_frames: AtomicU64,
}

impl Commits {
    pub fn committed(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the writer should checkpoint (and so restart the WAL) before its next batch.
    pub fn writer_should_checkpoint(&self) -> bool {
        self.wal_frames.load(Ordering::Relaxed) > RESTART_FRAMES
    }

    /// The writer checkpointed: the WAL starts over with its next transaction.
    pub fn writer_checkpointed(&self) {
        self.wal_frames.store(0, Ordering::Relaxed);
    }
}

pub struct Checkpointer {
    commits: Arc<Commits>,
    handle: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (already in WAL mode).
    pub fn start(path: &Path, commits: Arc<Commits>) -> std::io::Result<Checkpointer> {
        let path = path.to_owned();
        let c = commits.clone();
        let handle = std::thread::Builder::new()
            .name("natter-checkpoint".into())
            .spawn(move || run(&path, &c))?;
        Ok(Checkpointer {
            commits,
            handle: Some(handle),
        })
    }

    pub fn stop(mut self) {
        self.commits.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(path: &Path, commits: &Commits) {
    let db = match Connection::open(path) {
        Ok(db) => db,
        Err(e) => {
            tracing::error!("checkpoint connection: {e}; the WAL is folded in on shutdown only");
            return;
        }
    };
    let _ = db.busy_timeout(Duration::from_millis(100));
    let mut seen = 0;
    while !commits.stop.load(Ordering::Relaxed) {
        std::thread::sleep(EVERY);
        let now = commits.count.load(Ordering::Relaxed);
        if now == seen {
            continue;
        }
        seen = now;
        // (busy, frames in the WAL, frames copied): logged only when it falls behind.
        match db.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        }) {
            Ok((_, log, done)) => {
                commits
                    .wal_frames
                    .store(log.max(0) as u64, Ordering::Relaxed);
                if log - done > 100_000 {
                    tracing::warn!(log, done, "WAL checkpoint falls behind");
                }
            }
            Err(e) => tracing::warn!("WAL checkpoint failed: {e}"),
        }
    }
}
