//! Per-connection delivery of a device's queue (sans-IO).
//!
//! Items reach a connected device two ways: *replay* reads them from the durable queue in
//! batches, and *live* pushes hand over items the moment they are committed. This state machine
//! decides which to use so that a device sees every item exactly once per connection and in
//! queue order, whatever the interleaving of commits, pushes and reads:
//!
//! * While replaying, live pushes are not sent (the next read will include them, because an item
//!   is pushed only after it is committed); a push seen during a read triggers one more read.
//! * A read that comes back short means the queue is drained: switch to live.
//! * In live mode an item is sent only if it directly follows the last one sent; anything else
//!   (a gap after a dropped push, or too many unacknowledged items) falls back to replay.
//!
//! The next batch is read once no more than half a batch is still unacknowledged, so a slow
//! device holds at most one and a half batches in flight.

use std::collections::BTreeSet;

/// Ask the store for up to `limit` items with a queue sequence above `after`, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fetch {
    pub after: u64,
    pub limit: u32,
}

/// What to do with a live push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Send it to the device now.
    Send,
    /// Do not send it; if a fetch is given, start it.
    Skip(Option<Fetch>),
}

/// Result of a completed read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fetched {
    /// The device has now been sent everything that was queued when it connected:
    /// send `queue_empty` (once per connection).
    pub queue_empty: bool,
    /// Start this read next.
    pub next: Option<Fetch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Replay,
    Live,
}

/// An `ack` named a sequence this connection never sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckAhead(pub u64);

#[derive(Debug)]
pub struct Delivery {
    batch: u32,
    live_window: usize,
    last_sent: u64,
    in_flight: BTreeSet<u64>,
    mode: Mode,
    fetching: bool,
    refetch: bool,
    drained_once: bool,
}

impl Delivery {
    /// A new connection whose device has stored everything up to `cursor`.
    /// Returns the state and the first read to make.
    pub fn start(cursor: u64, batch: u32) -> (Delivery, Fetch) {
        let batch = batch.max(1);
        let mut d = Delivery {
            batch,
            live_window: (batch as usize * 4).max(256),
            last_sent: cursor,
            in_flight: BTreeSet::new(),
            mode: Mode::Replay,
            fetching: false,
            refetch: false,
            drained_once: false,
        };
        let f = d.begin_fetch();
        (d, f)
    }

    fn begin_fetch(&mut self) -> Fetch {
        self.fetching = true;
        self.refetch = false;
        Fetch {
            after: self.last_sent,
            limit: self.batch,
        }
    }

    fn window_open(&self) -> bool {
        self.in_flight.len() <= self.batch as usize / 2
    }

    fn maybe_fetch(&mut self) -> Option<Fetch> {
        (self.mode == Mode::Replay && !self.fetching && self.window_open())
            .then(|| self.begin_fetch())
    }

    /// A read finished; `qseqs` are the sequences it returned, ascending. The caller sends
    /// those items to the device in that order.
    pub fn fetched(&mut self, qseqs: &[u64]) -> Fetched {
        debug_assert!(qseqs.windows(2).all(|w| w[0] < w[1]));
        self.fetching = false;
        for &q in qseqs {
            debug_assert!(q > self.last_sent);
            self.in_flight.insert(q);
            self.last_sent = self.last_sent.max(q);
        }
        let short = qseqs.len() < self.batch as usize;
        let mut out = Fetched::default();
        if short {
            if !self.drained_once {
                self.drained_once = true;
                out.queue_empty = true;
            }
            if self.refetch {
                // A push arrived while we were reading; it may have missed the snapshot.
                // Read again, but only within the ack window: a device that stops acking
                // must not be replayed without bound (the next ack starts the read).
                out.next = self.maybe_fetch();
            } else {
                self.mode = Mode::Live;
            }
        } else {
            out.next = self.maybe_fetch();
        }
        out
    }

    /// An item with sequence `qseq` was committed and pushed to this connection.
    pub fn live(&mut self, qseq: u64) -> Live {
        if qseq <= self.last_sent {
            return Live::Skip(None);
        }
        match self.mode {
            Mode::Replay => {
                if self.fetching {
                    self.refetch = true;
                }
                Live::Skip(self.maybe_fetch())
            }
            Mode::Live if qseq == self.last_sent + 1 && self.in_flight.len() < self.live_window => {
                self.last_sent = qseq;
                self.in_flight.insert(qseq);
                Live::Send
            }
            Mode::Live => {
                // A gap (a push was dropped) or a device that stopped acking: read instead.
                self.mode = Mode::Replay;
                Live::Skip(self.maybe_fetch())
            }
        }
    }

    /// Pushes to this connection were dropped because it fell behind.
    pub fn lagged(&mut self) -> Option<Fetch> {
        self.mode = Mode::Replay;
        if self.fetching {
            self.refetch = true;
        }
        self.maybe_fetch()
    }

    /// The device acknowledged these sequences. Sequences above anything sent on this
    /// connection are refused (nothing is changed); re-acks are harmless.
    pub fn acked(&mut self, qseqs: &[u64]) -> Result<Option<Fetch>, AckAhead> {
        if let Some(&q) = qseqs.iter().find(|&&q| q > self.last_sent) {
            return Err(AckAhead(q));
        }
        for q in qseqs {
            self.in_flight.remove(q);
        }
        Ok(self.maybe_fetch())
    }

    pub fn last_sent(&self) -> u64 {
        self.last_sent
    }

    pub fn unacked(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether `qseq` was sent on this connection and not yet acknowledged.
    pub fn is_unacked(&self, qseq: u64) -> bool {
        self.in_flight.contains(&qseq)
    }

    pub fn is_live(&self) -> bool {
        self.mode == Mode::Live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model queue plus a device that acks everything it receives.
    struct World {
        queue: Vec<u64>,
        received: Vec<u64>,
        d: Delivery,
        pending: Option<Fetch>,
    }

    impl World {
        fn new(backlog: u64, batch: u32) -> World {
            let (d, f) = Delivery::start(0, batch);
            World {
                queue: (1..=backlog).collect(),
                received: vec![],
                d,
                pending: Some(f),
            }
        }
        fn run_fetch(&mut self) -> Fetched {
            let f = self.pending.take().expect("a fetch is pending");
            let items: Vec<u64> = self
                .queue
                .iter()
                .copied()
                .filter(|&q| q > f.after)
                .take(f.limit as usize)
                .collect();
            self.received.extend(&items);
            let r = self.d.fetched(&items);
            self.pending = r.next;
            r
        }
        fn ack_all(&mut self) {
            let acks: Vec<u64> = self.received.clone();
            if let Some(f) = self.d.acked(&acks).unwrap() {
                assert!(self.pending.is_none());
                self.pending = Some(f);
            }
        }
        fn commit(&mut self, q: u64) {
            self.queue.push(q);
            match self.d.live(q) {
                Live::Send => self.received.push(q),
                Live::Skip(Some(f)) => {
                    assert!(self.pending.is_none());
                    self.pending = Some(f)
                }
                Live::Skip(None) => {}
            }
        }
    }

    #[test]
    fn backlog_replays_in_batches_then_goes_live() {
        let mut w = World::new(250, 100);
        let r = w.run_fetch();
        assert_eq!(w.received.len(), 100);
        assert!(r.next.is_none(), "waits for acks before the next batch");
        w.ack_all();
        w.run_fetch();
        w.ack_all();
        let r = w.run_fetch();
        assert!(r.queue_empty);
        assert!(w.d.is_live());
        assert_eq!(w.received, (1..=250).collect::<Vec<_>>());
        w.commit(251);
        assert_eq!(w.received.last(), Some(&251));
    }

    #[test]
    fn push_during_read_triggers_another_read() {
        let mut w = World::new(5, 100);
        // Item 6 is committed after the read's snapshot but pushed before the read returns.
        let f = w.pending.take().unwrap();
        assert_eq!(w.d.live(6), Live::Skip(None));
        let r = w.d.fetched(&[1, 2, 3, 4, 5]);
        assert!(r.queue_empty);
        let again = r.next.expect("another read");
        assert_eq!(again.after, 5);
        assert_eq!(f.after, 0);
        let r = w.d.fetched(&[6]);
        assert!(!r.queue_empty, "queue_empty is sent once");
        assert!(w.d.is_live());
    }

    #[test]
    fn live_items_already_read_are_not_sent_twice() {
        let mut w = World::new(0, 10);
        w.queue.push(1); // committed before the read, pushed after it
        w.run_fetch();
        assert_eq!(w.d.live(1), Live::Skip(None));
        assert_eq!(w.received, vec![1]);
    }

    #[test]
    fn gap_in_live_pushes_falls_back_to_replay() {
        let mut w = World::new(0, 10);
        w.run_fetch();
        w.commit(1);
        w.queue.push(2); // this push was lost
        w.commit(3);
        assert!(!w.d.is_live());
        w.run_fetch();
        assert_eq!(w.received, vec![1, 2, 3]);
        assert!(w.d.is_live());
    }

    #[test]
    fn slow_device_is_flow_controlled() {
        let mut w = World::new(0, 10);
        w.run_fetch();
        for q in 1..=300 {
            w.commit(q);
        }
        let sent_live = w.received.len();
        assert_eq!(sent_live, 256, "live window");
        assert!(!w.d.is_live());
        assert!(w.pending.is_none(), "no read while the window is full");
        w.ack_all();
        while w.pending.is_some() {
            w.run_fetch();
            w.ack_all();
        }
        assert_eq!(w.received, (1..=300).collect::<Vec<_>>());
        assert!(w.d.is_live());
    }

    #[test]
    fn lag_signal_recovers_everything() {
        let mut w = World::new(0, 10);
        w.run_fetch();
        w.queue.extend([1, 2, 3]); // pushes dropped
        if let Some(f) = w.d.lagged() {
            w.pending = Some(f);
        }
        w.run_fetch();
        assert_eq!(w.received, vec![1, 2, 3]);
    }

    #[test]
    fn acks_ahead_of_what_was_sent_are_refused() {
        let mut w = World::new(3, 10);
        w.run_fetch();
        assert_eq!(w.d.acked(&[1, 4]), Err(AckAhead(4)));
        assert_eq!(w.d.unacked(), 3, "a refused ack changes nothing");
        w.d.acked(&[1, 2, 3]).unwrap();
        assert_eq!(w.d.unacked(), 0);
    }

    #[test]
    fn cursor_skips_what_the_device_already_has() {
        let (d, f) = Delivery::start(40, 100);
        assert_eq!(f.after, 40);
        assert_eq!(d.last_sent(), 40);
    }
}
