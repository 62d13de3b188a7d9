//! Durable storage: one SQLite database (WAL) owned by one writer thread.
//!
//! Every read and write is a *job* sent to that thread. The thread takes whatever jobs are
//! waiting (up to [`MAX_BATCH`]), runs them in one transaction, commits once (one fsync for
//! the whole batch: group commit), and only then pushes the new queue items to connected
//! devices and answers the callers. So nothing is acknowledged before it is durable, and items
//! reach live connections in commit order.
//!
//! Jobs check everything before they write, so a refused request has written nothing and the
//! rest of the batch goes ahead. (Savepoints per job would guarantee that too, but cost about
//! as much as the jobs themselves.) Should a job fail after writing — only a storage error can
//! do that — the whole batch is rolled back and every job in it gets an `internal` error: an
//! error always means nothing was applied. The same happens when the commit fails; the
//! in-memory counters are then reloaded from the database.

mod accounts;
pub mod admission;
mod checkpoint;
mod groups;
mod keys;
mod maintenance;
mod messages;
mod schema;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use natter_signaling::{
    DeviceId, ErrorCode, GroupId, GroupMember, ProtocolError, QueueItem, UserId,
};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

pub use accounts::{AuthInfo, MAX_LINKED_DEVICES, Registered, UserSettings, normalize_phone};
pub use keys::KeyCount;
pub use maintenance::{StorageUsage, SweepReport, UPLOAD_TTL_MS, UploadRecord};
pub use messages::{Fetched, Sent};

use crate::config::{MessagingConfig, SyncMode};
use crate::hub::Hub;
use crate::metrics::Metrics;
use admission::Admission;
use checkpoint::{Checkpointer, Commits};

/// Most jobs in one transaction.
pub const MAX_BATCH: usize = 512;

type Completion = Box<dyn FnOnce(bool) + Send>;
/// A job runs against the core, or (given `None`, when storage cannot run it) only
/// prepares to report failure; either way its completion answers the caller.
type Job = Box<dyn FnOnce(Option<&mut Core>) -> Completion + Send>;

enum Msg {
    /// A job, and when it was sent; each holds a slot of the admission control's count
    /// until taken.
    Job(Job, Instant),
    Stop,
}

/// A handle to the storage thread; cheap to clone.
#[derive(Clone)]
pub struct Store {
    tx: mpsc::Sender<Msg>,
    admission: Arc<Admission>,
}

/// Joins the storage thread once every handle's work is done.
pub struct StoreThread {
    tx: mpsc::Sender<Msg>,
    handle: Option<JoinHandle<()>>,
    checkpointer: Option<Checkpointer>,
}

impl StoreThread {
    /// Finishes the jobs already sent, closes the database and waits for the thread.
    pub fn stop(mut self) {
        // The writer folds the WAL in itself as it stops.
        if let Some(c) = self.checkpointer.take() {
            c.stop();
        }
        let _ = self.tx.send(Msg::Stop);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn unavailable() -> ProtocolError {
    ProtocolError::new(ErrorCode::Unavailable, "storage is shutting down")
}

impl Store {
    /// Opens (creating and migrating if needed) the database under `data_dir` and starts
    /// the writer thread.
    pub fn open(
        cfg: &MessagingConfig,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
    ) -> Result<(Store, StoreThread), StoreError> {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let path = cfg.data_dir.join("natter.db");
        let db = open_db(&path, cfg.sync)?;
        let commits = Arc::new(Commits::default());
        let checkpointer = Checkpointer::start(&path, commits.clone())?;
        let admission = Arc::new(Admission::new(
            cfg.store_queue_target_ms,
            cfg.store_queue_max_jobs as usize,
            MAX_BATCH,
        ));
        let mut core = Core::new(db, cfg, hub, metrics.clone(), admission.clone())?;
        core.commits = commits;
        metrics.queue_items.set(core.queue_items);
        let (tx, rx) = mpsc::channel::<Msg>();
        let handle = std::thread::Builder::new()
            .name("natter-store".into())
            .spawn(move || {
                // Crash-only: if storage fails in a way it cannot answer, stop the process
                // rather than leave callers waiting. Everything acknowledged is on disk.
                let run = std::panic::AssertUnwindSafe(move || core.run(rx));
                if std::panic::catch_unwind(run).is_err() {
                    tracing::error!(
                        "storage thread panicked; aborting so that natter restarts clean"
                    );
                    std::process::abort();
                }
            })?;
        Ok((
            Store {
                tx: tx.clone(),
                admission,
            },
            StoreThread {
                tx,
                handle: Some(handle),
                checkpointer: Some(checkpointer),
            },
        ))
    }

    /// Runs `f` on the storage thread inside the next transaction; after the commit,
    /// `done` gets its result (on the storage thread: keep it short). For work the server
    /// does on its own (bounded by connections or timers) and for requests that only free
    /// work (acks): never refused, but counted in the queue that admission control sees.
    pub fn submit<R, F, C>(&self, f: F, done: C)
    where
        R: Send + 'static,
        F: FnOnce(&mut Core) -> Result<R, ProtocolError> + Send + 'static,
        C: FnOnce(Result<R, ProtocolError>) + Send + 'static,
    {
        self.admission.admit();
        self.send(make_job(f, done));
    }

    /// Like [`Store::submit`], for a client's request: refused with `overloaded` (and
    /// nothing done, `done` not called) when the queue already holds more work than the
    /// admission target.
    pub fn try_submit<R, F, C>(&self, f: F, done: C) -> Result<(), ProtocolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Core) -> Result<R, ProtocolError> + Send + 'static,
        C: FnOnce(Result<R, ProtocolError>) + Send + 'static,
    {
        self.admission
            .try_admit()
            .map_err(|retry_ms| ProtocolError::overloaded(jitter(retry_ms)))?;
        self.send(make_job(f, done));
        Ok(())
    }

    fn send(&self, job: Job) {
        if let Err(mpsc::SendError(Msg::Job(job, _))) = self.tx.send(Msg::Job(job, Instant::now()))
        {
            // The thread is gone: answer the caller rather than dropping the request.
            self.admission.release();
            job(None)(false);
        }
    }

    /// Jobs waiting for the writer thread.
    pub fn queued(&self) -> usize {
        self.admission.queued()
    }

    /// Like [`Store::submit`], awaiting the result.
    pub async fn call<R, F>(&self, f: F) -> Result<R, ProtocolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Core) -> Result<R, ProtocolError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(f, move |r| {
            let _ = tx.send(r);
        });
        rx.await.unwrap_or_else(|_| Err(unavailable()))
    }

    /// Like [`Store::try_submit`], awaiting the result (HTTP requests).
    pub async fn try_call<R, F>(&self, f: F) -> Result<R, ProtocolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Core) -> Result<R, ProtocolError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.try_submit(f, move |r| {
            let _ = tx.send(r);
        })?;
        rx.await.unwrap_or_else(|_| Err(unavailable()))
    }
}

/// Spreads retries over 1–1.5× the wait, so refused clients do not come back together.
fn jitter(ms: u64) -> u64 {
    let r = u16::from_le_bytes(random_bytes::<2>()) as u64;
    ms + ms * r / (2 * u16::MAX as u64)
}

fn make_job<R, F, C>(f: F, done: C) -> Job
where
    R: Send + 'static,
    F: FnOnce(&mut Core) -> Result<R, ProtocolError> + Send + 'static,
    C: FnOnce(Result<R, ProtocolError>) + Send + 'static,
{
    Box::new(move |core: Option<&mut Core>| {
        let result = match core {
            Some(core) => core.run_job(f),
            None => Err(unavailable()),
        };
        Box::new(move |committed: bool| {
            done(match result {
                Ok(_) if !committed => Err(ProtocolError::internal(
                    "storage failure; the request was not applied",
                )),
                r => r,
            })
        })
    })
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

fn open_db(path: &Path, sync: SyncMode) -> Result<Connection, StoreError> {
    let mut db = Connection::open(path)?;
    db.busy_timeout(Duration::from_secs(5))?;
    db.pragma_update(None, "journal_mode", "WAL")?;
    db.pragma_update(
        None,
        "synchronous",
        match sync {
            SyncMode::Full => "FULL",
            SyncMode::Normal => "NORMAL",
        },
    )?;
    db.pragma_update(None, "foreign_keys", "OFF")?;
    db.pragma_update(None, "temp_store", "MEMORY")?;
    db.pragma_update(None, "cache_size", -16_384i64)?; // 16 MiB
    // Checkpoints run on a thread of their own (see `checkpoint`), never inside a commit.
    db.pragma_update(None, "wal_autocheckpoint", 0i64)?;
    // A WAL that grew under a burst is cut back to this once checkpointed.
    db.pragma_update(None, "journal_size_limit", 64i64 * 1024 * 1024)?;
    db.set_prepared_statement_cache_capacity(64);
    schema::migrate(&mut db)?;
    Ok(db)
}

/// Queue sequences are reserved in blocks of this many, so the counter row of a device is
/// written once per block rather than with every item. After a crash the unused rest of a
/// block is skipped: sequences stay increasing, with a gap.
const QSEQ_BLOCK: u64 = 1024;

/// A device's queue sequence counter: `next` is handed out next; every sequence below
/// `reserved` may be handed out without writing the counter row.
#[derive(Debug, Clone, Copy)]
struct QseqCounter {
    next: u64,
    reserved: u64,
}

/// A conversation's sequence counter key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ConvKey {
    /// Users ordered low, high.
    Direct(UserId, UserId),
    Group(GroupId),
}

impl ConvKey {
    pub(crate) fn direct(a: UserId, b: UserId) -> ConvKey {
        if a <= b {
            ConvKey::Direct(a, b)
        } else {
            ConvKey::Direct(b, a)
        }
    }
}

/// How to undo an in-memory change when a job's savepoint rolls back.
enum Undo {
    Qseq(DeviceId, Option<QseqCounter>),
    ConvSeq(ConvKey, Option<u64>),
}

/// Effects of the open transaction, applied only after it commits.
#[derive(Default)]
struct Pending {
    pushes: Vec<(DeviceId, u64, Arc<QueueItem>)>,
    queue_delta: i64,
    kicks: Vec<DeviceId>,
    dirty_qseq: HashSet<DeviceId>,
    dirty_conv: HashSet<ConvKey>,
    latencies_ms: Vec<u64>,
}

/// Lengths of [`Pending`]'s lists when a job started, to cut them back if it fails.
struct Mark {
    pushes: usize,
    queue_delta: i64,
    kicks: usize,
    latencies: usize,
    undo: usize,
}

/// State of the storage thread. Jobs get `&mut Core`.
pub struct Core {
    db: Connection,
    pub(crate) cfg: MessagingConfig,
    pub(crate) hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    pending: Pending,
    undo: Vec<Undo>,
    /// Next queue sequence per device (loaded on first use).
    next_qseq: HashMap<DeviceId, QseqCounter>,
    /// Next sequence per conversation (loaded on first use).
    next_conv_seq: HashMap<ConvKey, u64>,
    /// Active devices per user.
    devices: HashMap<UserId, Arc<[DeviceId]>>,
    /// Members per group.
    group_members: HashMap<GroupId, Arc<[GroupMember]>>,
    queue_items: i64,
    /// A job of the open transaction failed after writing: roll it all back.
    poisoned: bool,
    /// Where the next expiry sweep continues (a queue rowid).
    sweep_cursor: i64,
    /// Which dedup table is current, and since when.
    dedup_current: u8,
    dedup_since_ms: u64,
    admission: Arc<Admission>,
    /// Counts commits for the checkpoint thread.
    commits: Arc<Commits>,
    /// The writer's clock for admission control.
    started: Instant,
}

impl Core {
    fn new(
        db: Connection,
        cfg: &MessagingConfig,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        admission: Arc<Admission>,
    ) -> Result<Core, StoreError> {
        let queue_items: i64 = db.query_row("SELECT COUNT(*) FROM queue", [], |r| r.get(0))?;
        let meta = |key: &str| -> rusqlite::Result<Option<i64>> {
            db.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()
        };
        let dedup_current = meta("dedup_current")?.unwrap_or(0) as u8;
        let dedup_since_ms = match meta("dedup_since_ms")? {
            Some(v) => v as u64,
            None => {
                let now = now_ms();
                db.execute(
                    "INSERT INTO meta(key, value) VALUES ('dedup_since_ms', ?1), ('dedup_current', 0)",
                    [now as i64],
                )?;
                now
            }
        };
        Ok(Core {
            db,
            cfg: cfg.clone(),
            hub,
            metrics,
            pending: Pending::default(),
            undo: Vec::new(),
            next_qseq: HashMap::new(),
            next_conv_seq: HashMap::new(),
            devices: HashMap::new(),
            group_members: HashMap::new(),
            queue_items,
            poisoned: false,
            sweep_cursor: 0,
            dedup_current,
            dedup_since_ms,
            admission,
            commits: Arc::default(),
            started: Instant::now(),
        })
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        let mut stop = false;
        while !stop {
            let first = match rx.recv() {
                Ok(Msg::Job(j, sent)) => {
                    // The oldest job of the batch: how long the queue made it wait.
                    let now = Instant::now();
                    let waited = now.saturating_duration_since(sent).as_nanos() as u64;
                    let clock = now.saturating_duration_since(self.started).as_nanos() as u64;
                    self.admission.observe_sojourn(waited, clock);
                    self.taken(j)
                }
                Ok(Msg::Stop) | Err(_) => break,
            };
            let mut jobs = vec![first];
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(Msg::Job(j, _)) => jobs.push(self.taken(j)),
                    Ok(Msg::Stop) => {
                        stop = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
            self.run_batch(jobs);
            if self.commits.writer_should_checkpoint() {
                self.checkpoint_between_batches();
            }
        }
        // Jobs that arrived after the stop request are answered, not dropped.
        while let Ok(msg) = rx.try_recv() {
            if let Msg::Job(j, _) = msg {
                self.taken(j)(None)(false);
            }
        }
        // Checkpoint so the WAL is folded into the database on a clean stop.
        if let Err(e) = self.db.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!("WAL checkpoint on shutdown failed: {e}");
        }
        tracing::debug!("storage thread stopped");
    }

    /// Copies what the background checkpointer has not yet copied, so that the next
    /// transaction starts the WAL over (see `checkpoint`).
    fn checkpoint_between_batches(&mut self) {
        let started = Instant::now();
        match self
            .db
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
        {
            Ok(_) => self.commits.writer_checkpointed(),
            Err(e) => tracing::warn!("WAL checkpoint by the writer failed: {e}"),
        }
        self.metrics
            .store_checkpoint
            .observe(started.elapsed().as_secs_f64());
    }

    /// A job left the queue: its admission slot is free again.
    fn taken(&self, job: Job) -> Job {
        self.admission.release();
        job
    }

    fn exec_cached(&self, sql: &str) -> rusqlite::Result<()> {
        self.db.prepare_cached(sql)?.execute([]).map(|_| ())
    }

    fn run_batch(&mut self, jobs: Vec<Job>) {
        self.metrics.store_batch_jobs.observe(jobs.len() as f64);
        if let Err(e) = self.exec_cached("BEGIN IMMEDIATE") {
            tracing::error!("cannot begin a storage transaction: {e}");
            for job in jobs {
                job(None)(false);
            }
            return;
        }
        self.poisoned = false;
        let n = jobs.len();
        let run_started = Instant::now();
        let completions: Vec<Completion> = jobs.into_iter().map(|job| job(Some(self))).collect();
        let run_ns = run_started.elapsed().as_nanos() as u64;
        let started = Instant::now();
        let committed = if self.poisoned {
            Err("a job failed after writing".to_owned())
        } else {
            self.flush_counters()
                .and_then(|()| self.exec_cached("COMMIT"))
                .map_err(|e| e.to_string())
        };
        let commit = started.elapsed();
        self.metrics.store_commit.observe(commit.as_secs_f64());
        let after_started = Instant::now();
        let pending = std::mem::take(&mut self.pending);
        self.undo.clear();
        let ok = match committed {
            Ok(()) => {
                self.commits.committed();
                self.queue_items += pending.queue_delta;
                self.metrics.queue_items.set(self.queue_items);
                for ms in &pending.latencies_ms {
                    self.metrics.send_to_delivered.observe(*ms as f64 / 1000.0);
                }
                for device in pending.kicks {
                    self.hub.kick(
                        device,
                        ProtocolError::new(ErrorCode::DeviceRevoked, "this device was revoked"),
                    );
                }
                for (device, qseq, item) in pending.pushes {
                    self.hub.push_item(device, qseq, item);
                }
                true
            }
            Err(e) => {
                tracing::error!("storage transaction rolled back: {e}");
                let _ = self.exec_cached("ROLLBACK");
                self.next_qseq.clear();
                self.next_conv_seq.clear();
                self.devices.clear();
                self.group_members.clear();
                false
            }
        };
        for c in completions {
            c(ok);
        }
        // Pushes and answers are per-job work of the writer thread too.
        let after_ns = after_started.elapsed().as_nanos() as u64;
        self.admission
            .observe_batch(n, run_ns + after_ns, commit.as_nanos() as u64);
    }

    /// Runs one job. If it fails, its in-memory effects are undone; if it also wrote to the
    /// database, the batch is marked for rollback.
    fn run_job<R>(
        &mut self,
        f: impl FnOnce(&mut Core) -> Result<R, ProtocolError>,
    ) -> Result<R, ProtocolError> {
        let changes = self.db.total_changes();
        let mark = Mark {
            pushes: self.pending.pushes.len(),
            queue_delta: self.pending.queue_delta,
            kicks: self.pending.kicks.len(),
            latencies: self.pending.latencies_ms.len(),
            undo: self.undo.len(),
        };
        let result = f(self);
        if result.is_err() {
            if self.db.total_changes() != changes {
                self.poisoned = true;
            }
            self.pending.pushes.truncate(mark.pushes);
            self.pending.queue_delta = mark.queue_delta;
            self.pending.kicks.truncate(mark.kicks);
            self.pending.latencies_ms.truncate(mark.latencies);
            while self.undo.len() > mark.undo {
                match self.undo.pop().unwrap() {
                    Undo::Qseq(d, Some(v)) => {
                        self.next_qseq.insert(d, v);
                    }
                    Undo::Qseq(d, None) => {
                        self.next_qseq.remove(&d);
                    }
                    Undo::ConvSeq(c, Some(v)) => {
                        self.next_conv_seq.insert(c, v);
                    }
                    Undo::ConvSeq(c, None) => {
                        self.next_conv_seq.remove(&c);
                    }
                }
            }
            // Cached lists may describe rows this job wrote.
            self.devices.clear();
            self.group_members.clear();
        }
        result
    }

    /// Writes the counters changed in this transaction.
    fn flush_counters(&mut self) -> rusqlite::Result<()> {
        if !self.pending.dirty_qseq.is_empty() {
            let mut st = self
                .db
                .prepare_cached("UPDATE devices SET qseq_reserved = ?2 WHERE id = ?1")?;
            // A counter missing from the cache was first loaded by a job that rolled back:
            // it never changed, so there is nothing to write.
            for d in self.pending.dirty_qseq.drain() {
                if let Some(c) = self.next_qseq.get(&d) {
                    st.execute(params![d.0 as i64, c.reserved as i64])?;
                }
            }
        }
        for c in self.pending.dirty_conv.drain() {
            let Some(&next) = self.next_conv_seq.get(&c) else {
                continue;
            };
            let next = next as i64;
            match c {
                ConvKey::Direct(a, b) => {
                    self.db
                        .prepare_cached(
                            "UPDATE direct_convs SET next_seq = ?3 WHERE a = ?1 AND b = ?2",
                        )?
                        .execute(params![a.0 as i64, b.0 as i64, next])?;
                }
                ConvKey::Group(g) => {
                    self.db
                        .prepare_cached("UPDATE groups SET next_seq = ?2 WHERE id = ?1")?
                        .execute(params![g.0 as i64, next])?;
                }
            }
        }
        Ok(())
    }

    /// The database connection, for the job modules.
    pub(crate) fn db(&self) -> &Connection {
        &self.db
    }

    /// Takes the next queue sequence of `device`.
    fn take_qseq(&mut self, device: DeviceId) -> Result<u64, ProtocolError> {
        let mut counter = match self.next_qseq.get(&device) {
            Some(c) => *c,
            None => {
                let reserved = self.load_qseq_reserved(device)?;
                QseqCounter {
                    next: reserved,
                    reserved,
                }
            }
        };
        self.undo
            .push(Undo::Qseq(device, self.next_qseq.get(&device).copied()));
        let qseq = counter.next;
        counter.next += 1;
        if qseq >= counter.reserved {
            // Written with this batch, so the database always bounds what was handed out.
            counter.reserved = qseq + QSEQ_BLOCK;
            self.pending.dirty_qseq.insert(device);
        }
        self.next_qseq.insert(device, counter);
        Ok(qseq)
    }

    fn load_qseq_reserved(&self, device: DeviceId) -> Result<u64, ProtocolError> {
        let reserved: i64 = self
            .db
            .prepare_cached("SELECT qseq_reserved FROM devices WHERE id = ?1")
            .and_then(|mut s| s.query_row([device.0 as i64], |r| r.get(0)))
            .map_err(sql_err)?;
        Ok(reserved as u64)
    }

    /// The highest queue sequence `device` may have been given so far (0 if none): every
    /// item queued from now on has a higher one.
    pub(crate) fn last_qseq(&mut self, device: DeviceId) -> Result<u64, ProtocolError> {
        let next = match self.next_qseq.get(&device) {
            Some(c) => c.next,
            None => self.load_qseq_reserved(device)?,
        };
        Ok(next - 1)
    }

    /// The sequence the next message of `conv` will get; `None` for a direct conversation
    /// in which nothing was ever sent.
    pub(crate) fn conv_next_seq(&mut self, conv: ConvKey) -> Result<Option<u64>, ProtocolError> {
        if let Some(v) = self.next_conv_seq.get(&conv) {
            return Ok(Some(*v));
        }
        let found: Option<i64> = match conv {
            ConvKey::Direct(a, b) => self
                .db
                .prepare_cached("SELECT next_seq FROM direct_convs WHERE a = ?1 AND b = ?2")
                .and_then(|mut s| {
                    s.query_row(params![a.0 as i64, b.0 as i64], |r| r.get(0))
                        .optional()
                }),
            ConvKey::Group(g) => self
                .db
                .prepare_cached("SELECT next_seq FROM groups WHERE id = ?1")
                .and_then(|mut s| s.query_row([g.0 as i64], |r| r.get(0)).optional()),
        }
        .map_err(sql_err)?;
        Ok(found.map(|v| v as u64))
    }

    /// Takes the next sequence of a conversation.
    fn take_conv_seq(&mut self, conv: ConvKey) -> Result<u64, ProtocolError> {
        let current = match self.next_conv_seq.get(&conv) {
            Some(v) => *v,
            None => match conv {
                ConvKey::Direct(a, b) => {
                    let found: Option<i64> = self
                        .db
                        .prepare_cached("SELECT next_seq FROM direct_convs WHERE a = ?1 AND b = ?2")
                        .and_then(|mut s| {
                            s.query_row(params![a.0 as i64, b.0 as i64], |r| r.get(0))
                                .optional()
                        })
                        .map_err(sql_err)?;
                    match found {
                        Some(v) => v as u64,
                        None => {
                            self.db
                                .prepare_cached(
                                    "INSERT INTO direct_convs(a, b, next_seq) VALUES (?1, ?2, 1)",
                                )
                                .and_then(|mut s| s.execute(params![a.0 as i64, b.0 as i64]))
                                .map_err(sql_err)?;
                            1
                        }
                    }
                }
                ConvKey::Group(g) => self
                    .db
                    .prepare_cached("SELECT next_seq FROM groups WHERE id = ?1")
                    .and_then(|mut s| s.query_row([g.0 as i64], |r| r.get::<_, i64>(0)))
                    .map_err(sql_err)? as u64,
            },
        };
        self.undo
            .push(Undo::ConvSeq(conv, self.next_conv_seq.get(&conv).copied()));
        self.next_conv_seq.insert(conv, current + 1);
        self.pending.dirty_conv.insert(conv);
        Ok(current)
    }

    /// Appends `item` to `device`'s queue and schedules its live push after commit.
    /// `meta` describes message items for receipts; `payload` points at a shared body.
    fn enqueue(
        &mut self,
        device: DeviceId,
        item: Arc<QueueItem>,
        stored: &[u8],
        meta: ItemMeta,
        now: u64,
    ) -> Result<u64, ProtocolError> {
        let qseq = self.take_qseq(device)?;
        let expires = now + self.cfg.queue_ttl().as_millis() as u64;
        self.db
            .prepare_cached(
                "INSERT INTO queue (device, qseq, created_ms, expires_ms, kind, from_user, grp, conv_seq, payload, item)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    device.0 as i64,
                    qseq as i64,
                    now as i64,
                    expires as i64,
                    meta.kind as i64,
                    meta.from_user.map(|u| u.0 as i64),
                    meta.group.map(|g| g.0 as i64),
                    meta.conv_seq.map(|s| s as i64),
                    meta.payload,
                    stored,
                ])
            })
            .map_err(sql_err)?;
        self.pending.queue_delta += 1;
        self.pending.pushes.push((device, qseq, item));
        Ok(qseq)
    }

    /// Active devices of `user`, oldest first; empty if the user does not exist.
    pub(crate) fn devices_of(&mut self, user: UserId) -> Result<Arc<[DeviceId]>, ProtocolError> {
        if let Some(d) = self.devices.get(&user) {
            return Ok(d.clone());
        }
        let list: Vec<DeviceId> = self
            .db
            .prepare_cached(
                "SELECT id FROM devices WHERE user = ?1 AND revoked_ms IS NULL ORDER BY id",
            )
            .and_then(|mut s| {
                s.query_map([user.0 as i64], |r| {
                    Ok(DeviceId(r.get::<_, i64>(0)? as u64))
                })?
                .collect()
            })
            .map_err(sql_err)?;
        let list: Arc<[DeviceId]> = list.into();
        self.devices.insert(user, list.clone());
        Ok(list)
    }

    fn forget_devices(&mut self, user: UserId) {
        self.devices.remove(&user);
    }

    pub(crate) fn user_exists(&self, user: UserId) -> Result<bool, ProtocolError> {
        self.db
            .prepare_cached("SELECT 1 FROM users WHERE id = ?1")
            .and_then(|mut s| s.exists([user.0 as i64]))
            .map_err(sql_err)
    }
}

/// What the queue row records about an item besides its encoding.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ItemMeta {
    pub kind: ItemKind,
    pub from_user: Option<UserId>,
    pub group: Option<GroupId>,
    pub conv_seq: Option<u64>,
    pub payload: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub(crate) enum ItemKind {
    #[default]
    Message = 1,
    Receipt = 2,
    GroupNotice = 3,
    MissedCall = 4,
}

/// Encodes a queue item for storage.
pub(crate) fn encode_item(item: &QueueItem) -> Vec<u8> {
    rmp_serde::to_vec_named(item).expect("queue item serializes")
}

/// Maps an SQLite failure to an `internal` protocol error (and logs it).
pub(crate) fn sql_err(e: rusqlite::Error) -> ProtocolError {
    tracing::error!("storage error: {e}");
    ProtocolError::internal("storage error")
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// `n` bytes from the operating system's CSPRNG.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    getrandom::fill(&mut buf).expect("the OS random source works");
    buf
}

/// Constant-time equality of two byte strings.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    //! The store against a real SQLite file, driven directly for what the end-to-end tests
    //! cannot wait for (time-based expiry).

    use super::*;
    use natter_signaling::{Envelope, OpaqueBytes};

    const DAY_MS: u64 = 86_400_000;

    fn open(dir: &Path) -> Core {
        let cfg = MessagingConfig {
            data_dir: dir.to_owned(),
            ..Default::default()
        };
        let db = open_db(&dir.join("natter.db"), SyncMode::Normal).unwrap();
        let hub = Arc::new(Hub::new(Duration::from_secs(5)));
        let admission = Arc::new(Admission::new(25, 1000, MAX_BATCH));
        Core::new(db, &cfg, hub, Arc::new(Metrics::new()), admission).unwrap()
    }

    /// Runs `f` as a batch of its own, as the writer thread would, and returns its result.
    fn batch<R: Send + 'static>(
        core: &mut Core,
        f: impl FnOnce(&mut Core) -> Result<R, ProtocolError> + Send + 'static,
    ) -> Result<R, ProtocolError> {
        let out = std::sync::Arc::new(std::sync::Mutex::new(None));
        let o = out.clone();
        core.run_batch(vec![make_job(f, move |r| *o.lock().unwrap() = Some(r))]);
        out.lock().unwrap().take().expect("the job was answered")
    }

    fn tx<R: Send + 'static>(
        core: &mut Core,
        f: impl FnOnce(&mut Core) -> Result<R, ProtocolError> + Send + 'static,
    ) -> R {
        batch(core, f).unwrap()
    }

    fn register(core: &mut Core, phone: &str, now: u64) -> Registered {
        let (p1, p2) = (phone.to_owned(), phone.to_owned());
        let code = tx(core, move |c| c.request_code(&p1, now));
        tx(core, move |c| {
            c.verify_code(&p2, &code, "d", "127.0.0.1", now)
        })
        .unwrap()
    }

    #[test]
    fn queue_items_expire_after_the_ttl_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = open(dir.path());
        let t0 = 1_000 * DAY_MS;
        let a = register(&mut core, "+15550000001", t0);
        let b = register(&mut core, "+15550000002", t0);
        let env = vec![Envelope {
            device: b.device,
            body: OpaqueBytes(b"x".to_vec()),
        }];
        tx(&mut core, move |c| {
            c.send_direct(a.user, a.device, "m1", b.user, env, t0)
        });
        let day29 = t0 + 29 * DAY_MS;
        let r = tx(&mut core, move |c| c.sweep(day29));
        assert_eq!(r.expired_items, 0);
        assert_eq!(
            tx(&mut core, move |c| c.fetch(b.device, 0, 10, day29)).len(),
            1
        );
        let day30 = t0 + 30 * DAY_MS;
        // An expired item is not handed out even before the sweep removes it.
        assert!(tx(&mut core, move |c| c.fetch(b.device, 0, 10, day30)).is_empty());
        let r = tx(&mut core, move |c| c.sweep(day30));
        assert_eq!(r.expired_items, 1);
        let left: i64 = core
            .db
            .query_row("SELECT COUNT(*) FROM queue", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn blobs_expire_with_the_queue_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = open(dir.path());
        let t0 = 1_000 * DAY_MS;
        let hash = "ab".repeat(32);
        let h = hash.clone();
        tx(&mut core, move |c| c.finish_upload("u1", &h, 10, t0));
        let h = hash.clone();
        let day29 = t0 + 29 * DAY_MS;
        assert_eq!(tx(&mut core, move |c| c.blob_size(&h, day29)), Some(10));
        assert!(
            tx(&mut core, move |c| c.sweep(day29))
                .expired_blobs
                .is_empty()
        );
        let day30 = t0 + 30 * DAY_MS;
        let h = hash.clone();
        assert_eq!(tx(&mut core, move |c| c.blob_size(&h, day30)), None);
        let r = tx(&mut core, move |c| c.sweep(day30));
        assert_eq!(
            r.expired_blobs,
            vec![hash],
            "the sweeper deletes these files"
        );
    }

    #[test]
    fn queue_sequences_only_increase_across_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let now = 1_000 * DAY_MS;
        let (a, b, before) = {
            let mut core = open(dir.path());
            let a = register(&mut core, "+15550000001", now);
            let b = register(&mut core, "+15550000002", now);
            let mut last = 0;
            for i in 0..5 {
                let env = vec![Envelope {
                    device: b.device,
                    body: OpaqueBytes(b"x".to_vec()),
                }];
                let cid = format!("m{i}");
                tx(&mut core, move |c| {
                    c.send_direct(a.user, a.device, &cid, b.user, env, now)
                });
                let q = core.last_qseq(b.device).unwrap();
                assert!(q > last, "increasing while running");
                last = q;
            }
            // The counter row was written once, for the whole block.
            let reserved: i64 = core
                .db
                .query_row(
                    "SELECT qseq_reserved FROM devices WHERE id = ?1",
                    [b.device.0 as i64],
                    |r| r.get(0),
                )
                .unwrap();
            assert_eq!(reserved as u64, 1 + QSEQ_BLOCK);
            (a, b, last)
            // Dropped without any shutdown step: what a crash leaves.
        };
        let mut core = open(dir.path());
        assert!(core.last_qseq(b.device).unwrap() >= before);
        let env = vec![Envelope {
            device: b.device,
            body: OpaqueBytes(b"x".to_vec()),
        }];
        tx(&mut core, move |c| {
            c.send_direct(a.user, a.device, "after", b.user, env, now)
        });
        let items = tx(&mut core, move |c| c.fetch(b.device, 0, 100, now));
        let qseqs: Vec<u64> = items.iter().map(|i| i.0).collect();
        assert_eq!(qseqs.len(), 6);
        assert!(qseqs.windows(2).all(|w| w[0] < w[1]), "{qseqs:?}");
        assert!(qseqs[5] > before, "no sequence handed out twice: {qseqs:?}");
    }

    #[test]
    fn client_ids_are_remembered_at_least_dedup_hours() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = open(dir.path());
        let start = core.dedup_since_ms;
        let a = register(&mut core, "+15550000001", start);
        let b = register(&mut core, "+15550000002", start);
        let send = |core: &mut Core, cid: &str, now: u64| {
            let env = vec![Envelope {
                device: b.device,
                body: OpaqueBytes(b"x".to_vec()),
            }];
            let (cid, (au, ad), bu) = (cid.to_owned(), (a.user, a.device), b.user);
            tx(core, move |c| c.send_direct(au, ad, &cid, bu, env, now))
        };
        let hour = 3_600_000;
        // Sent just before the first rotation, so it lives in the older table afterwards.
        let first = send(&mut core, "late", start + 24 * hour - 1);
        assert!(tx(&mut core, move |c| c.sweep(start + 24 * hour)).dedup_rotated);
        let again = send(&mut core, "late", start + 47 * hour);
        assert!(again.duplicate, "remembered 47 h later");
        assert_eq!(again.seq, first.seq);
        // The next rotation drops it, more than 24 h after it was sent.
        assert!(tx(&mut core, move |c| c.sweep(start + 48 * hour)).dedup_rotated);
        let third = send(&mut core, "late", start + 48 * hour);
        assert!(!third.duplicate);
        // State survives a restart.
        drop(core);
        let core = open(dir.path());
        assert_eq!(core.dedup_since_ms, start + 48 * hour);
        assert_eq!(core.dedup_current, 0);
    }

    #[test]
    fn a_refused_job_leaves_no_trace_and_the_batch_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = open(dir.path());
        let now = 1_000 * DAY_MS;
        let a = register(&mut core, "+15550000001", now);
        let b = register(&mut core, "+15550000002", now);
        let (ra, rb) = (
            std::sync::Arc::new(std::sync::Mutex::new(None)),
            std::sync::Arc::new(std::sync::Mutex::new(None)),
        );
        let (oa, ob) = (ra.clone(), rb.clone());
        let wrong = vec![Envelope {
            device: a.device,
            body: OpaqueBytes(b"x".to_vec()),
        }];
        let right = vec![Envelope {
            device: b.device,
            body: OpaqueBytes(b"x".to_vec()),
        }];
        core.run_batch(vec![
            make_job(
                move |c| c.send_direct(a.user, a.device, "bad", b.user, wrong, now),
                move |r| *oa.lock().unwrap() = Some(r),
            ),
            make_job(
                move |c| c.send_direct(a.user, a.device, "good", b.user, right, now),
                move |r| *ob.lock().unwrap() = Some(r),
            ),
        ]);
        assert_eq!(
            ra.lock().unwrap().take().unwrap().unwrap_err().code,
            ErrorCode::DeviceMismatch
        );
        let good = rb.lock().unwrap().take().unwrap().unwrap();
        assert_eq!(good.seq, 1, "the refusal took no sequence number");
        assert_eq!(core.last_qseq(b.device).unwrap(), 1);
    }

    #[test]
    fn a_job_failing_after_writing_rolls_back_its_whole_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = open(dir.path());
        let now = 1_000 * DAY_MS;
        let a = register(&mut core, "+15550000001", now);
        let b = register(&mut core, "+15550000002", now);
        let bd = b.device;
        let env = move || {
            vec![Envelope {
                device: bd,
                body: OpaqueBytes(b"x".to_vec()),
            }]
        };
        let (ra, rb) = (
            std::sync::Arc::new(std::sync::Mutex::new(None)),
            std::sync::Arc::new(std::sync::Mutex::new(None)),
        );
        let (oa, ob) = (ra.clone(), rb.clone());
        let (e1, e2) = (env(), env());
        core.run_batch(vec![
            make_job(
                move |c| c.send_direct(a.user, a.device, "ok", b.user, e1, now),
                move |r| *oa.lock().unwrap() = Some(r),
            ),
            make_job(
                move |c| {
                    c.send_direct(a.user, a.device, "m", b.user, e2, now)?;
                    Err::<(), _>(ProtocolError::internal("fails after writing"))
                },
                move |r| *ob.lock().unwrap() = Some(r),
            ),
        ]);
        assert_eq!(
            ra.lock().unwrap().take().unwrap().unwrap_err().code,
            ErrorCode::Internal,
            "batch-mate rolled back too"
        );
        assert!(rb.lock().unwrap().take().unwrap().is_err());
        let rows: i64 = core
            .db
            .query_row("SELECT COUNT(*) FROM queue", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
        assert_eq!(core.last_qseq(b.device).unwrap(), 0, "counters reloaded");
        // The client's retry of the rolled-back send is new, not a duplicate.
        let sent = tx(&mut core, move |c| {
            c.send_direct(a.user, a.device, "ok", b.user, env(), now)
        });
        assert_eq!((sent.seq, sent.duplicate), (1, false));
    }
}
