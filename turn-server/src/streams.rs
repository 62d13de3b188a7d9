//! TCP and TLS client connections as the core sees them: when each last brought a
//! complete STUN or ChannelData message, so idle ones (a client that connects and sends
//! nothing, or half a message: slowloris) can be closed.

use std::collections::HashMap;

use crate::server::{FiveTuple, Transport};

pub(crate) struct Streams {
    idle_ms: u64,
    /// At most this many at once (the shell refuses more connections).
    cap: usize,
    /// Per connection: when it opened or last brought a complete message.
    last_message_ms: HashMap<FiveTuple, u64>,
}

impl Streams {
    pub(crate) fn new(idle_ms: u64, cap: usize) -> Streams {
        Streams {
            idle_ms,
            cap,
            last_message_ms: HashMap::new(),
        }
    }

    /// A connection opened; false when the table is full.
    pub(crate) fn open(&mut self, five: FiveTuple, now_ms: u64) -> bool {
        if self.last_message_ms.len() >= self.cap && !self.last_message_ms.contains_key(&five) {
            return false;
        }
        self.last_message_ms.insert(five, now_ms);
        true
    }

    /// A complete message arrived on `five` (a no-op for UDP 5-tuples).
    pub(crate) fn message(&mut self, five: &FiveTuple, now_ms: u64) {
        if five.transport == Transport::Udp {
            return;
        }
        if let Some(t) = self.last_message_ms.get_mut(five) {
            *t = now_ms;
        }
    }

    pub(crate) fn close(&mut self, five: &FiveTuple) -> bool {
        self.last_message_ms.remove(five).is_some()
    }

    /// Connections idle past the timeout at `now_ms`, where `allocation_expiry` says until
    /// when each one's allocation (if any) keeps it open.
    pub(crate) fn idle(
        &self,
        now_ms: u64,
        allocation_expiry: impl Fn(&FiveTuple) -> Option<u64>,
    ) -> Vec<FiveTuple> {
        self.last_message_ms
            .iter()
            .filter(|(five, last)| {
                let deadline = (*last + self.idle_ms).max(allocation_expiry(five).unwrap_or(0));
                deadline <= now_ms
            })
            .map(|(five, _)| *five)
            .collect()
    }
}
