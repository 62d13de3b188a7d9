//! One continuous RTP stream out of several sources: what a subscriber sees of a track
//! whose publisher sends simulcast layers, or of a track that is paused and resumed.
//!
//! Each forwarded packet keeps its payload; its sequence number and timestamp are mapped
//! so that the subscriber sees sequence numbers without a jump and a timestamp that
//! advances with the wall clock across a switch. Packets of the current source that are
//! older than the switch point (a late retransmission from before it) are dropped: their
//! numbers are taken by the previous source's packets.

use std::time::Instant;

/// Where the outgoing sequence numbers start: below 2¹⁵, so that the SRTP roll-over
/// counter starts at 0 as a receiver assumes (RFC 3711 §3.3.1) whatever the source sent.
const MAX_FIRST_SEQ: u64 = 1 << 15;

/// The rewrite of one outgoing stream.
#[derive(Debug, Clone)]
pub struct StreamRewriter {
    clock_rate: u32,
    /// The source being forwarded (an SSRC) and how its numbers map to the output.
    source: Option<Source>,
    /// The highest sequence number and its timestamp sent so far, and when.
    last: Option<Last>,
    first_seq: u64,
}

#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: u32,
    /// Output sequence number = input (extended) + this.
    seq_offset: i64,
    /// The first input sequence number taken from this source: older ones are dropped.
    first_in_seq: u64,
    /// Output timestamp = input + this (wrapping).
    ts_offset: u32,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    seq: u64,
    ts: u32,
    at: Instant,
}

/// A packet's place in the outgoing stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Extended sequence number (str0m takes the roll-over counter from its high bits).
    pub seq: u64,
    pub timestamp: u32,
}

impl StreamRewriter {
    /// `clock_rate` in Hz (48 000 for Opus, 90 000 for video); `first_seq` where the
    /// output numbering starts (random per stream, reduced below 2¹⁵).
    pub fn new(clock_rate: u32, first_seq: u16) -> StreamRewriter {
        StreamRewriter {
            clock_rate,
            source: None,
            last: None,
            first_seq: u64::from(first_seq) % MAX_FIRST_SEQ,
        }
    }

    /// The source now forwarded, if any.
    pub fn source(&self) -> Option<u32> {
        self.source.map(|s| s.ssrc)
    }

    /// Maps a packet of source `ssrc` (extended sequence number `seq`, RTP timestamp `ts`)
    /// that arrived at `now`. A packet of another source than the current one switches to
    /// it: call this only with packets the caller chose to forward (for a video layer
    /// switch, the keyframe's first packet). `None`: drop it (from before the switch).
    pub fn rewrite(&mut self, ssrc: u32, seq: u64, ts: u32, now: Instant) -> Option<Rewritten> {
        let src = match self.source {
            Some(s) if s.ssrc == ssrc => s,
            _ => self.switch_to(ssrc, seq, ts, now),
        };
        if seq < src.first_in_seq {
            return None;
        }
        let out_seq = (seq as i64 + src.seq_offset) as u64;
        let out_ts = ts.wrapping_add(src.ts_offset);
        match self.last {
            Some(l) if l.seq >= out_seq => {} // a retransmission or reordering: not newer
            _ => {
                self.last = Some(Last {
                    seq: out_seq,
                    ts: out_ts,
                    at: now,
                })
            }
        }
        Some(Rewritten {
            seq: out_seq,
            timestamp: out_ts,
        })
    }

    /// A packet of the current source that the caller drops on purpose (a temporal layer
    /// the subscriber does not take): the numbers after it close up, so the subscriber sees
    /// no loss. (A late packet from before the newest one leaves the numbering as it is.)
    pub fn skip(&mut self, ssrc: u32, seq: u64) {
        let (Some(src), Some(last)) = (self.source.as_mut(), self.last) else {
            return;
        };
        if src.ssrc == ssrc && (seq as i64 + src.seq_offset) as u64 > last.seq {
            src.seq_offset -= 1;
        }
    }

    fn switch_to(&mut self, ssrc: u32, seq: u64, ts: u32, now: Instant) -> Source {
        let (out_seq, out_ts) = match self.last {
            None => (self.first_seq, ts),
            Some(l) => {
                // The timestamp advances by the wall-clock time since the last packet, at
                // least one tick, so the receiver's jitter estimate sees no jump.
                let elapsed = now.saturating_duration_since(l.at);
                let ticks = (elapsed.as_micros() * u128::from(self.clock_rate) / 1_000_000)
                    .clamp(1, u128::from(u32::MAX / 2)) as u32;
                (l.seq + 1, l.ts.wrapping_add(ticks))
            }
        };
        let src = Source {
            ssrc,
            seq_offset: out_seq as i64 - seq as i64,
            first_in_seq: seq,
            ts_offset: out_ts.wrapping_sub(ts),
        };
        self.source = Some(src);
        src
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_source_keeps_its_spacing_from_the_first_number() {
        let t0 = Instant::now();
        let mut r = StreamRewriter::new(48_000, 40_000);
        let a = r.rewrite(7, 1_000, 5_000, t0).unwrap();
        assert_eq!(a.seq, 40_000 % (1 << 15));
        assert_eq!(a.timestamp, 5_000);
        let b = r.rewrite(7, 1_002, 5_960, t0).unwrap(); // one lost between
        assert_eq!(b.seq, a.seq + 2);
        assert_eq!(b.timestamp, 5_960);
        // A late retransmission of the lost one fills its own place.
        let late = r.rewrite(7, 1_001, 5_480, t0).unwrap();
        assert_eq!(late.seq, a.seq + 1);
    }

    #[test]
    fn a_switch_continues_numbers_and_advances_time_by_the_wall_clock() {
        let t0 = Instant::now();
        let mut r = StreamRewriter::new(90_000, 100);
        r.rewrite(1, 50, 9_000, t0).unwrap();
        let last = r.rewrite(1, 51, 12_000, t0).unwrap();
        // 100 ms later another source (another layer) with unrelated numbers.
        let t1 = t0 + Duration::from_millis(100);
        let first = r.rewrite(2, 60_000, 4_000_000_000, t1).unwrap();
        assert_eq!(first.seq, last.seq + 1);
        assert_eq!(first.timestamp, 12_000 + 9_000);
        let next = r.rewrite(2, 60_001, 4_000_003_000, t1).unwrap();
        assert_eq!(next.seq, last.seq + 2);
        assert_eq!(next.timestamp, 12_000 + 9_000 + 3_000);
        // A packet of the new source from before the switch point is dropped.
        assert_eq!(r.rewrite(2, 59_999, 3_999_997_000, t1), None);
        assert_eq!(r.source(), Some(2));
    }

    #[test]
    fn skipped_packets_leave_no_gap() {
        let t0 = Instant::now();
        let mut r = StreamRewriter::new(90_000, 10);
        let a = r.rewrite(1, 100, 0, t0).unwrap();
        r.skip(1, 101);
        r.skip(1, 102);
        let b = r.rewrite(1, 103, 6_000, t0).unwrap();
        assert_eq!(b.seq, a.seq + 1);
        // A late copy of a skipped one does not shift what follows.
        r.skip(1, 101);
        let c = r.rewrite(1, 104, 6_000, t0).unwrap();
        assert_eq!(c.seq, a.seq + 2);
    }

    #[test]
    fn timestamps_wrap() {
        let t0 = Instant::now();
        let mut r = StreamRewriter::new(48_000, 1);
        r.rewrite(1, 10, u32::MAX - 100, t0).unwrap();
        let b = r.rewrite(1, 11, 860, t0).unwrap();
        assert_eq!(b.timestamp, 860);
        let t1 = t0 + Duration::from_millis(20);
        let c = r.rewrite(9, 5, 0, t1).unwrap();
        assert_eq!(c.timestamp, 860 + 960);
    }
}
