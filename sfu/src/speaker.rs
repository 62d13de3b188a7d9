//! Who is talking in each room, from the RFC 6464 audio levels publishers put on their
//! audio packets (the SFU never decodes). Levels are averaged per publisher over a short
//! window (as mediasoup's audio-level observer does); the loudest one above a voice
//! threshold leads the window, and a new leader becomes the speaker once it has led
//! [`HOLD_WINDOWS`] windows in a row, so cross-talk and a cough do not flip it. Silence
//! keeps the last speaker.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::{ParticipantId, RoomId};

/// Levels are averaged over this long.
pub const WINDOW: Duration = Duration::from_millis(300);
/// The quietest average that counts as talking, dBov.
pub const VOICE_DBOV: f64 = -50.0;
/// Windows in a row a new leader must lead to become the speaker.
pub const HOLD_WINDOWS: u32 = 2;

struct RoomSpeech {
    window_end: Instant,
    /// (sum of dBov, packets) per publisher in this window.
    levels: HashMap<ParticipantId, (f64, u32)>,
    speaker: Option<ParticipantId>,
    leader: Option<(ParticipantId, u32)>,
}

#[derive(Default)]
pub struct SpeakerObserver {
    rooms: HashMap<RoomId, RoomSpeech>,
}

impl SpeakerObserver {
    /// An audio packet of `publisher` in `room` with level `dbov` (0 loudest, -127 silent).
    pub fn level(&mut self, room: &RoomId, publisher: ParticipantId, dbov: i8, now: Instant) {
        let r = self
            .rooms
            .entry(room.clone())
            .or_insert_with(|| RoomSpeech {
                window_end: now + WINDOW,
                levels: HashMap::new(),
                speaker: None,
                leader: None,
            });
        let e = r.levels.entry(publisher).or_insert((0.0, 0));
        e.0 += f64::from(dbov.clamp(-127, 0));
        e.1 += 1;
    }

    /// A participant left: it is no longer a candidate (nor the speaker).
    pub fn remove(&mut self, room: &RoomId, participant: ParticipantId) {
        if let Some(r) = self.rooms.get_mut(room) {
            r.levels.remove(&participant);
            if r.speaker == Some(participant) {
                r.speaker = None;
            }
            if r.leader.is_some_and(|(p, _)| p == participant) {
                r.leader = None;
            }
        }
    }

    /// A room emptied.
    pub fn forget(&mut self, room: &RoomId) {
        self.rooms.remove(room);
    }

    /// When the next window ends.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.rooms.values().map(|r| r.window_end).min()
    }

    /// Closes the windows that ended; returns the rooms whose speaker changed.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<(RoomId, ParticipantId)> {
        let mut changed = Vec::new();
        for (room, r) in &mut self.rooms {
            if r.window_end > now {
                continue;
            }
            r.window_end = now + WINDOW;
            let loudest = r
                .levels
                .drain()
                .map(|(p, (sum, n))| (p, sum / f64::from(n.max(1))))
                .filter(|(_, avg)| *avg >= VOICE_DBOV)
                .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
            let Some((p, _)) = loudest else {
                r.leader = None;
                continue;
            };
            if r.speaker == Some(p) {
                r.leader = None;
                continue;
            }
            let led = match r.leader {
                Some((q, n)) if q == p => n + 1,
                _ => 1,
            };
            r.leader = Some((p, led));
            if led >= HOLD_WINDOWS {
                r.speaker = Some(p);
                r.leader = None;
                changed.push((room.clone(), p));
            }
        }
        changed
    }

    pub fn speaker(&self, room: &RoomId) -> Option<ParticipantId> {
        self.rooms.get(room).and_then(|r| r.speaker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ParticipantId = ParticipantId(1);
    const B: ParticipantId = ParticipantId(2);

    fn room() -> RoomId {
        RoomId("r".into())
    }

    /// Feeds 20 ms packets of each (participant, level) for `windows` windows; returns
    /// the changes seen.
    fn run(
        o: &mut SpeakerObserver,
        t: &mut Instant,
        talk: &[(ParticipantId, i8)],
        windows: u32,
    ) -> Vec<ParticipantId> {
        let mut out = Vec::new();
        for _ in 0..windows {
            for _ in 0..15 {
                for (p, l) in talk {
                    o.level(&room(), *p, *l, *t);
                }
                *t += Duration::from_millis(20);
            }
            out.extend(o.handle_timeout(*t).into_iter().map(|(_, p)| p));
        }
        out
    }

    #[test]
    fn the_loudest_talker_becomes_the_speaker_after_two_windows() {
        let mut o = SpeakerObserver::default();
        let mut t = Instant::now();
        assert_eq!(run(&mut o, &mut t, &[(A, -20), (B, -127)], 1), vec![]);
        assert_eq!(run(&mut o, &mut t, &[(A, -20), (B, -127)], 1), vec![A]);
        assert_eq!(o.speaker(&room()), Some(A));
        // B talks louder, A goes quiet: B after two windows.
        assert_eq!(run(&mut o, &mut t, &[(A, -127), (B, -25)], 1), vec![]);
        assert_eq!(run(&mut o, &mut t, &[(A, -127), (B, -25)], 1), vec![B]);
    }

    #[test]
    fn one_loud_window_does_not_take_over_and_silence_keeps_the_speaker() {
        let mut o = SpeakerObserver::default();
        let mut t = Instant::now();
        assert_eq!(run(&mut o, &mut t, &[(A, -20)], 3), vec![A]);
        // A cough from B between A's words.
        assert_eq!(run(&mut o, &mut t, &[(A, -30), (B, -10)], 1), vec![]);
        assert_eq!(run(&mut o, &mut t, &[(A, -30), (B, -127)], 1), vec![]);
        // Nobody talks: A stays.
        assert_eq!(run(&mut o, &mut t, &[(A, -127), (B, -127)], 5), vec![]);
        assert_eq!(o.speaker(&room()), Some(A));
        // Below the voice threshold is not talking.
        assert_eq!(run(&mut o, &mut t, &[(B, -60)], 5), vec![]);
    }

    #[test]
    fn a_speaker_who_leaves_is_replaced_by_the_next_talker() {
        let mut o = SpeakerObserver::default();
        let mut t = Instant::now();
        run(&mut o, &mut t, &[(A, -20)], 2);
        o.remove(&room(), A);
        assert_eq!(o.speaker(&room()), None);
        assert_eq!(run(&mut o, &mut t, &[(B, -40)], 2), vec![B]);
    }
}
