//! The channel from the rest of the server to one connection's task, with a byte budget.
//!
//! Replies are bounded by the connection's cap on requests in flight, and replay reads by its
//! delivery window, so those always go in. What others push at a connection on their own —
//! presence, typing, call events, live queue items — is counted against
//! `max_outbound_bytes`: a live item over the budget is dropped and re-read from storage
//! later (it is durable), an event over the budget marks the connection as too slow, and its
//! task cuts it off. So a client that never reads costs bounded memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use natter_signaling::call::CallEvent;
use natter_signaling::{GroupChange, ProtocolError, QueueItem, ServerFrame};
use tokio::sync::{Notify, mpsc};

use crate::store::Fetched;

/// Live items queued to one connection before it is told to re-read from storage instead.
pub const LIVE_QUEUE_LIMIT: usize = 1024;

/// What other parts of the server hand to a connection's task.
pub enum Outbound {
    /// The answer to one of its requests (`None`: a request answered only on failure succeeded).
    Reply(Option<Box<ServerFrame>>),
    /// A queue item committed for this device, and the bytes it was counted as.
    Item(u64, Arc<QueueItem>, u32),
    /// A replay read finished. (Errors are boxed to keep this enum small: every connection's
    /// channel allocates room for a block of them.)
    Fetched(Result<Fetched, Box<ProtocolError>>),
    /// A frame shared by many connections (presence, typing, calls), and its counted bytes.
    Event(Arc<ServerFrame>, u32),
    /// Live items were dropped because the connection fell behind: re-read from storage.
    Lagged,
    /// Send this error and close (revoked, or replaced by a newer connection of the device).
    Kick(Box<ProtocolError>),
}

/// Shared between a connection's senders and its task.
struct Budget {
    /// Bytes of items and events in the channel.
    bytes: AtomicUsize,
    /// Live items in the channel.
    items: AtomicUsize,
    limit: usize,
    lagged: AtomicBool,
    too_slow: AtomicBool,
    wake: Notify,
}

/// The sending side; cheap to clone.
#[derive(Clone)]
pub struct OutboundTx {
    tx: mpsc::UnboundedSender<Outbound>,
    budget: Arc<Budget>,
}

/// The connection task's side.
pub struct OutboundRx {
    rx: mpsc::UnboundedReceiver<Outbound>,
    budget: Arc<Budget>,
}

/// A channel whose items and events may hold at most `limit_bytes`.
pub fn channel(limit_bytes: usize) -> (OutboundTx, OutboundRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let budget = Arc::new(Budget {
        bytes: AtomicUsize::new(0),
        items: AtomicUsize::new(0),
        limit: limit_bytes,
        lagged: AtomicBool::new(false),
        too_slow: AtomicBool::new(false),
        wake: Notify::new(),
    });
    (
        OutboundTx {
            tx,
            budget: budget.clone(),
        },
        OutboundRx { rx, budget },
    )
}

impl OutboundTx {
    /// Replies, replay reads and control messages: bounded elsewhere, always sent.
    pub fn send(&self, ob: Outbound) {
        let _ = self.tx.send(ob);
    }

    fn reserve(&self, cost: usize) -> bool {
        let b = &self.budget;
        let mut current = b.bytes.load(Ordering::Relaxed);
        loop {
            if current + cost > b.limit {
                return false;
            }
            match b.bytes.compare_exchange_weak(
                current,
                current + cost,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => current = now,
            }
        }
    }

    /// An event; if it does not fit the budget the connection is marked too slow (its task
    /// closes it) and false is returned.
    pub fn send_event(&self, frame: Arc<ServerFrame>) -> bool {
        let cost = event_cost(&frame);
        if !self.reserve(cost) {
            if !self.budget.too_slow.swap(true, Ordering::Relaxed) {
                self.budget.wake.notify_one();
            }
            return false;
        }
        let _ = self.tx.send(Outbound::Event(frame, cost as u32));
        true
    }

    /// A committed queue item; if too many items or bytes wait already, it is dropped and
    /// the connection told (once) to re-read from storage.
    pub fn send_item(&self, qseq: u64, item: Arc<QueueItem>) {
        let b = &self.budget;
        let cost = item_cost(&item);
        if b.items.load(Ordering::Relaxed) >= LIVE_QUEUE_LIMIT || !self.reserve(cost) {
            if !b.lagged.swap(true, Ordering::Relaxed) {
                let _ = self.tx.send(Outbound::Lagged);
            }
            return;
        }
        b.items.fetch_add(1, Ordering::Relaxed);
        let _ = self.tx.send(Outbound::Item(qseq, item, cost as u32));
    }

    /// Whether the task is still there to receive.
    pub fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }
}

impl OutboundRx {
    /// The next message, with its bytes released from the budget.
    pub async fn recv(&mut self) -> Option<Outbound> {
        let ob = self.rx.recv().await?;
        Some(self.taken(ob))
    }

    pub fn try_recv(&mut self) -> Option<Outbound> {
        let ob = self.rx.try_recv().ok()?;
        Some(self.taken(ob))
    }

    fn taken(&self, ob: Outbound) -> Outbound {
        let b = &self.budget;
        match &ob {
            Outbound::Item(_, _, cost) => {
                b.bytes.fetch_sub(*cost as usize, Ordering::Relaxed);
                b.items.fetch_sub(1, Ordering::Relaxed);
            }
            Outbound::Event(_, cost) => {
                b.bytes.fetch_sub(*cost as usize, Ordering::Relaxed);
            }
            Outbound::Lagged => b.lagged.store(false, Ordering::Relaxed),
            _ => {}
        }
        ob
    }

    /// What tells the task that its client is too slow (a handle of its own, so it can be
    /// awaited while the channel is read).
    pub fn alarm(&self) -> SlowAlarm {
        SlowAlarm(self.budget.clone())
    }
}

/// See [`OutboundRx::alarm`].
pub struct SlowAlarm(Arc<Budget>);

impl SlowAlarm {
    /// Resolves once an event was refused for lack of budget.
    pub async fn fired(&self) {
        loop {
            let notified = self.0.wake.notified();
            if self.0.too_slow.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }

    /// Bytes of items and events waiting.
    pub fn waiting_bytes(&self) -> usize {
        self.0.bytes.load(Ordering::Relaxed)
    }
}

/// Roughly what an item costs once encoded (JSON base64-encodes bodies: 4/3).
fn item_cost(item: &QueueItem) -> usize {
    const FRAME: usize = 160;
    match item {
        QueueItem::Message { body, .. } => FRAME + body.len() * 4 / 3,
        QueueItem::Receipt { seqs, .. } => FRAME + seqs.len() * 12,
        QueueItem::GroupNotice { change, .. } => {
            FRAME
                + match change {
                    GroupChange::Created { name, members } => name.len() + members.len() * 12,
                    GroupChange::Added { users }
                    | GroupChange::Removed { users }
                    | GroupChange::Promoted { users } => users.len() * 12,
                    GroupChange::Left { .. } => 12,
                    GroupChange::Renamed { name } => name.len(),
                }
        }
        QueueItem::MissedCall { call_id, .. } => FRAME + call_id.len(),
    }
}

/// Roughly what an event costs once encoded.
fn event_cost(frame: &ServerFrame) -> usize {
    const FRAME: usize = 192;
    match frame {
        ServerFrame::Call {
            event,
            ice_servers,
            call_id,
        } => {
            let servers: usize = ice_servers
                .iter()
                .map(|s| {
                    64 + s.urls.iter().map(|u| u.len() + 4).sum::<usize>()
                        + s.username.as_ref().map_or(0, String::len)
                        + s.credential.as_ref().map_or(0, String::len)
                })
                .sum();
            let body = match event {
                CallEvent::Incoming { sdp, .. }
                | CallEvent::Accepted { sdp, .. }
                | CallEvent::Update { sdp, .. } => sdp.len() + sdp.len() / 8,
                CallEvent::Ice { candidate, .. } => {
                    64 + candidate.candidate.len()
                        + candidate.sdp_mid.as_ref().map_or(0, String::len)
                }
                _ => 0,
            };
            FRAME + call_id.len() + servers + body
        }
        _ => FRAME,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natter_signaling::{Conv, DeviceId, OpaqueBytes, PresenceInfo, UserId};

    fn presence() -> Arc<ServerFrame> {
        Arc::new(ServerFrame::Presence(PresenceInfo {
            user: UserId(1),
            hidden: false,
            online: true,
            last_seen_ms: None,
        }))
    }

    fn message(len: usize) -> Arc<QueueItem> {
        Arc::new(QueueItem::Message {
            conv: Conv::Direct(UserId(1)),
            seq: 1,
            from: UserId(1),
            device: DeviceId(1),
            ts_ms: 0,
            body: OpaqueBytes(vec![0; len]),
        })
    }

    /// Every connection's channel allocates a block of 32 of these up front, so their size
    /// is memory per idle socket.
    #[test]
    fn outbound_stays_small() {
        assert!(std::mem::size_of::<Outbound>() <= 32);
    }

    #[tokio::test]
    async fn events_past_the_budget_mark_the_connection_too_slow() {
        let (tx, mut rx) = channel(1000);
        let per = event_cost(&presence());
        let fit = 1000 / per;
        for _ in 0..fit {
            assert!(tx.send_event(presence()));
        }
        assert!(!tx.send_event(presence()), "over the budget");
        // Resolves at once: the refusal was recorded.
        tokio::time::timeout(std::time::Duration::from_secs(1), rx.alarm().fired())
            .await
            .expect("too_slow resolves");
        // Taking events releases their bytes.
        for _ in 0..fit {
            assert!(matches!(rx.try_recv(), Some(Outbound::Event(..))));
        }
        assert_eq!(rx.alarm().waiting_bytes(), 0);
        assert!(rx.try_recv().is_none());
    }

    #[test]
    fn items_past_the_budget_lag_once_and_are_not_queued() {
        let (tx, mut rx) = channel(10_000);
        tx.send_item(1, message(3000)); // ~4.1 KB
        tx.send_item(2, message(3000));
        tx.send_item(3, message(3000)); // does not fit
        tx.send_item(4, message(3000)); // still lagged: no second notice
        assert!(matches!(rx.try_recv(), Some(Outbound::Item(1, ..))));
        assert!(matches!(rx.try_recv(), Some(Outbound::Item(2, ..))));
        assert!(matches!(rx.try_recv(), Some(Outbound::Lagged)));
        assert!(rx.try_recv().is_none());
        assert_eq!(rx.alarm().waiting_bytes(), 0);
        // Once the lag notice was taken, a later overflow notifies again.
        tx.send_item(5, message(3000));
        assert!(matches!(rx.try_recv(), Some(Outbound::Item(5, ..))));
    }

    #[test]
    fn replies_are_never_refused() {
        let (tx, mut rx) = channel(1);
        for _ in 0..10 {
            tx.send(Outbound::Reply(None));
        }
        for _ in 0..10 {
            assert!(matches!(rx.try_recv(), Some(Outbound::Reply(None))));
        }
    }

    #[test]
    fn call_events_count_their_sdp() {
        let small = event_cost(&presence());
        let call = ServerFrame::Call {
            call_id: "c".into(),
            event: CallEvent::Accepted {
                device: DeviceId(1),
                sdp: "v".repeat(20_000),
            },
            ice_servers: vec![],
        };
        assert!(event_cost(&call) > 20_000 + small);
    }
}
