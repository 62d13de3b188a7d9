//! Typing indicators: never stored, and they lapse on their own (sans-IO; time is passed in).
//!
//! A device's "typing" in a conversation stays active until it says it stopped or until
//! `ttl` passes without a refresh; then the tracker reports it as expired so the server can
//! tell the recipients that typing stopped.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use natter_signaling::{Conv, DeviceId, UserId};

/// Who is typing where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TypingKey {
    pub user: UserId,
    pub device: DeviceId,
    pub conv: Conv,
}

#[derive(Debug)]
struct Entry<R> {
    expires: Instant,
    recipients: R,
}

/// What the caller should tell the recipients.
#[derive(Debug, PartialEq, Eq)]
pub enum TypingUpdate {
    /// Forward `active: true`.
    Started,
    /// Forward `active: false`.
    Stopped,
    /// Nothing to forward (a stop for something that was not active).
    Nothing,
}

#[derive(Debug)]
pub struct TypingTracker<R> {
    ttl: Duration,
    active: HashMap<TypingKey, Entry<R>>,
}

impl<R> TypingTracker<R> {
    pub fn new(ttl: Duration) -> Self {
        TypingTracker {
            ttl,
            active: HashMap::new(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A typing frame arrived.
    pub fn update(
        &mut self,
        now: Instant,
        key: TypingKey,
        active: bool,
        recipients: R,
    ) -> TypingUpdate {
        if active {
            self.active.insert(
                key,
                Entry {
                    expires: now + self.ttl,
                    recipients,
                },
            );
            TypingUpdate::Started
        } else if self.active.remove(&key).is_some() {
            TypingUpdate::Stopped
        } else {
            TypingUpdate::Nothing
        }
    }

    /// The device went away: its indicators stop now.
    pub fn forget_device(&mut self, device: DeviceId) -> Vec<(TypingKey, R)> {
        let keys: Vec<TypingKey> = self
            .active
            .keys()
            .filter(|k| k.device == device)
            .copied()
            .collect();
        keys.into_iter()
            .filter_map(|k| self.active.remove(&k).map(|e| (k, e.recipients)))
            .collect()
    }

    /// Removes and returns every indicator whose time is up.
    pub fn expire(&mut self, now: Instant) -> Vec<(TypingKey, R)> {
        let keys: Vec<TypingKey> = self
            .active
            .iter()
            .filter(|(_, e)| e.expires <= now)
            .map(|(k, _)| *k)
            .collect();
        keys.into_iter()
            .filter_map(|k| self.active.remove(&k).map(|e| (k, e.recipients)))
            .collect()
    }

    /// When the next indicator lapses, if any is active.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.active.values().map(|e| e.expires).min()
    }

    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(device: u64) -> TypingKey {
        TypingKey {
            user: UserId(1),
            device: DeviceId(device),
            conv: Conv::Direct(UserId(2)),
        }
    }

    #[test]
    fn active_indicator_lapses_after_ttl() {
        let t0 = Instant::now();
        let mut t = TypingTracker::new(Duration::from_secs(5));
        assert_eq!(t.update(t0, key(1), true, "bob"), TypingUpdate::Started);
        assert!(t.expire(t0 + Duration::from_millis(4999)).is_empty());
        assert_eq!(t.next_deadline(), Some(t0 + Duration::from_secs(5)));
        let gone = t.expire(t0 + Duration::from_secs(5));
        assert_eq!(gone, vec![(key(1), "bob")]);
        assert!(t.is_empty());
        assert_eq!(t.next_deadline(), None);
    }

    #[test]
    fn refresh_extends_and_stop_ends() {
        let t0 = Instant::now();
        let mut t = TypingTracker::new(Duration::from_secs(5));
        t.update(t0, key(1), true, ());
        t.update(t0 + Duration::from_secs(4), key(1), true, ());
        assert!(t.expire(t0 + Duration::from_secs(6)).is_empty());
        assert_eq!(
            t.update(t0 + Duration::from_secs(7), key(1), false, ()),
            TypingUpdate::Stopped
        );
        assert_eq!(
            t.update(t0 + Duration::from_secs(7), key(1), false, ()),
            TypingUpdate::Nothing
        );
        assert!(t.expire(t0 + Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn forgetting_a_device_stops_only_its_indicators() {
        let t0 = Instant::now();
        let mut t = TypingTracker::new(Duration::from_secs(5));
        t.update(t0, key(1), true, ());
        t.update(t0, key(2), true, ());
        assert_eq!(t.forget_device(DeviceId(1)).len(), 1);
        assert_eq!(t.len(), 1);
    }
}
