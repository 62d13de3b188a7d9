//! Simulcast and temporal layers on the SFU's side: the rate each layer of a published
//! track measures, and the VP8 picture numbering a subscriber sees, kept continuous when
//! the SFU switches it from one layer (one RTP stream, one picture-id sequence) to another.

use std::time::{Duration, Instant};

use str0m::media::Rid;

/// A layer's rate is the bytes of the last window of this length.
const RATE_WINDOW: Duration = Duration::from_millis(500);
/// What a layer is assumed to take until it has been measured (lowest first), bits/s.
const ASSUMED_BPS: [u64; 3] = [150_000, 350_000, 800_000];

/// The spatial index of a packet's RID among a track's (lowest first; no RID is layer 0).
pub fn layer_index(rids: &[Rid], rid: Option<Rid>) -> usize {
    rid.and_then(|r| rids.iter().position(|x| *x == r))
        .unwrap_or(0)
}

/// The simulcast layers a publisher offers, lowest first: `q`, `h`, `f` as natter's and
/// the browsers' clients name them; other names keep the order they came in.
pub fn order_rids(mut rids: Vec<Rid>) -> Vec<Rid> {
    let rank = |r: &Rid| match &**r {
        "q" => 0,
        "h" => 1,
        "f" => 2,
        _ => 1,
    };
    rids.sort_by_key(rank);
    rids
}

/// Per spatial layer of a track: the bytes of the current window and the last full rate.
#[derive(Debug, Clone)]
pub struct LayerRates {
    window_start: Instant,
    bytes: Vec<u64>,
    bps: Vec<Option<u64>>,
    /// When each layer first and last sent in this window: a window in which a layer
    /// started or stopped (paused, resumed with a keyframe) does not give its rate.
    span: Vec<Option<(Instant, Instant)>>,
}

/// A layer sent through a window if it sent this close to both of its ends.
const EDGE: Duration = Duration::from_millis(100);

impl LayerRates {
    pub fn new(layers: usize, now: Instant) -> LayerRates {
        LayerRates {
            window_start: now,
            bytes: vec![0; layers.max(1)],
            bps: vec![None; layers.max(1)],
            span: vec![None; layers.max(1)],
        }
    }

    pub fn packet(&mut self, layer: usize, bytes: usize, now: Instant) {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= RATE_WINDOW {
            for ((b, r), span) in self
                .bytes
                .iter_mut()
                .zip(self.bps.iter_mut())
                .zip(self.span.iter_mut())
            {
                // A layer that sent nothing keeps its last rate: it is paused, not free.
                let whole = span.is_some_and(|(first, last)| {
                    first.duration_since(self.window_start) < EDGE
                        && now.saturating_duration_since(last) < EDGE
                });
                if whole {
                    *r = Some(*b * 8 * 1000 / elapsed.as_millis().max(1) as u64);
                }
                *b = 0;
                *span = None;
            }
            self.window_start = now;
        }
        if let (Some(b), Some(span)) = (self.bytes.get_mut(layer), self.span.get_mut(layer)) {
            *b += bytes as u64;
            let first = span.map_or(now, |(f, _)| f);
            *span = Some((first, now));
        }
    }

    /// A layer's measured rate, bits/s, if it has been measured.
    pub fn measured(&self, layer: usize) -> Option<u64> {
        self.bps.get(layer).copied().flatten()
    }

    /// Each layer's rate, bits/s (assumed until measured; never below the one beneath).
    pub fn bps(&self) -> Vec<u64> {
        let mut out = Vec::with_capacity(self.bps.len());
        for (i, r) in self.bps.iter().enumerate() {
            let v = r.unwrap_or(ASSUMED_BPS[i.min(2)]);
            let floor = out.last().copied().unwrap_or(0);
            out.push(v.max(floor));
        }
        out
    }
}

/// A layer the publisher was asked for (or never told about) that has sent nothing for
/// this long has been dropped by the publisher: its own uplink estimate has no room for
/// it. Subscribers on it would see a frozen picture until it came back.
pub const LAYER_SILENCE: Duration = Duration::from_millis(300);
/// A dropped layer is not chosen for anyone for this long, unless it sends again (the
/// publisher brings a layer back when its estimate allows, which the SFU cannot see).
pub const STALL_HOLD: Duration = Duration::from_secs(3);

/// Which of a track's layers its publisher is sending. The lowest always counts as sent:
/// below it there is nothing to switch to.
#[derive(Debug, Clone)]
pub struct LayerLiveness {
    last: Vec<Option<Instant>>,
    /// When the layers asked of the publisher last changed (or the track began): a layer
    /// just asked for has until then plus [`LAYER_SILENCE`] to start.
    asked_since: Instant,
    stalled_until: Vec<Option<Instant>>,
}

impl LayerLiveness {
    pub fn new(layers: usize, now: Instant) -> LayerLiveness {
        LayerLiveness {
            last: vec![None; layers.max(1)],
            asked_since: now,
            stalled_until: vec![None; layers.max(1)],
        }
    }

    pub fn packet(&mut self, layer: usize, now: Instant) {
        if let Some(l) = self.last.get_mut(layer) {
            *l = Some(now);
            self.stalled_until[layer] = None;
        }
    }

    /// The publisher was told a new set of wanted layers.
    pub fn asked(&mut self, now: Instant) {
        self.asked_since = now;
    }

    /// Marks the layers that went silent while `wanted`; true if one did just now.
    pub fn check(&mut self, wanted: impl Fn(usize) -> bool, now: Instant) -> bool {
        let mut newly = false;
        for layer in 1..self.last.len() {
            if self.stalled_until[layer].is_some_and(|t| t > now) || !wanted(layer) {
                continue;
            }
            let since = self.last[layer].map_or(self.asked_since, |l| l.max(self.asked_since));
            if now.saturating_duration_since(since) >= LAYER_SILENCE {
                // Not stalled before, or its hold ended: news either way.
                newly = true;
                self.stalled_until[layer] = Some(now + STALL_HOLD);
            } else {
                self.stalled_until[layer] = None;
            }
        }
        newly
    }

    /// How many layers, from the lowest, can be chosen at `now`.
    pub fn usable(&self, now: Instant) -> usize {
        1 + self.stalled_until[1..]
            .iter()
            .take_while(|s| s.is_none_or(|t| t <= now))
            .count()
    }
}

/// The picture id (15 bits) and TL0PICIDX a subscriber sees, continuous across switches.
#[derive(Debug, Clone, Default)]
pub struct PictureRewriter {
    source: Option<u32>,
    pid_offset: u16,
    tl0_offset: u8,
    last_pid: Option<u16>,
    last_tl0: Option<u8>,
}

impl PictureRewriter {
    /// The output numbers for a packet of stream `ssrc` with picture id `pid` and
    /// TL0PICIDX `tl0`. A new stream continues from the last picture sent.
    pub fn rewrite(&mut self, ssrc: u32, pid: u16, tl0: Option<u8>) -> (u16, Option<u8>) {
        if self.source != Some(ssrc) {
            self.source = Some(ssrc);
            self.pid_offset = match self.last_pid {
                Some(last) => last.wrapping_add(1).wrapping_sub(pid) & 0x7FFF,
                None => 0,
            };
            self.tl0_offset = match (self.last_tl0, tl0) {
                (Some(last), Some(t)) => last.wrapping_add(1).wrapping_sub(t),
                _ => 0,
            };
        }
        let out = pid.wrapping_add(self.pid_offset) & 0x7FFF;
        let out_tl0 = tl0.map(|t| t.wrapping_add(self.tl0_offset));
        // Newer in 15-bit serial arithmetic: within half the space ahead.
        let newer = self
            .last_pid
            .is_none_or(|l| (out.wrapping_sub(l) & 0x7FFF) < 0x4000);
        if newer {
            self.last_pid = Some(out);
            if out_tl0.is_some() {
                self.last_tl0 = out_tl0;
            }
        }
        (out, out_tl0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picture_ids_continue_across_a_switch_and_wrap_in_15_bits() {
        let mut p = PictureRewriter::default();
        assert_eq!(p.rewrite(1, 0x7FFE, Some(10)), (0x7FFE, Some(10)));
        assert_eq!(p.rewrite(1, 0x7FFF, Some(10)), (0x7FFF, Some(10)));
        // Packets of one picture share its id.
        assert_eq!(p.rewrite(1, 0x7FFF, Some(10)), (0x7FFF, Some(10)));
        // Another layer, numbered its own way: it continues at 0 (after 0x7FFF) and 11.
        assert_eq!(p.rewrite(2, 500, Some(200)), (0, Some(11)));
        assert_eq!(p.rewrite(2, 501, Some(201)), (1, Some(12)));
        // And back.
        assert_eq!(p.rewrite(1, 40, Some(30)), (2, Some(13)));
        // A late packet of an older picture does not move the numbering back.
        assert_eq!(p.rewrite(1, 39, Some(30)), (1, Some(13)));
        assert_eq!(p.rewrite(3, 9, None), (3, None));
    }

    #[test]
    fn rates_are_measured_per_window_and_a_silent_layer_keeps_its_rate() {
        let t = Instant::now();
        let mut r = LayerRates::new(3, t);
        assert_eq!(r.bps(), vec![150_000, 350_000, 800_000]);
        for i in 0..50u64 {
            let now = t + Duration::from_millis(i * 10);
            r.packet(0, 125, now); // 100 kbit/s
            r.packet(2, 1250, now); // 1 Mbit/s
            if i >= 30 {
                // Layer 1 starts late in the window: not a rate yet.
                r.packet(1, 5000, now);
            }
        }
        r.packet(0, 0, t + Duration::from_millis(500));
        let bps = r.bps();
        assert_eq!(bps[0], 100_000);
        assert_eq!(bps[1], 350_000, "not measured: assumed");
        assert_eq!(bps[2], 1_000_000);
        // Layer 2 stops a while into the next window, then goes quiet: it keeps its rate.
        r.packet(2, 1250, t + Duration::from_millis(600));
        r.packet(0, 125, t + Duration::from_millis(1000));
        r.packet(0, 125, t + Duration::from_millis(1500));
        assert_eq!(r.bps()[2], 1_000_000);
    }

    #[test]
    fn a_wanted_layer_that_goes_silent_is_not_usable_until_it_sends_or_the_hold_ends() {
        let t = Instant::now();
        let ms = |m: u64| t + Duration::from_millis(m);
        let mut l = LayerLiveness::new(3, t);
        let all = |_: usize| true;
        // Nothing sent yet, but just asked: the layers have LAYER_SILENCE to start.
        assert!(!l.check(all, ms(299)));
        assert_eq!(l.usable(ms(299)), 3);
        for m in (0..1000).step_by(33) {
            l.packet(0, ms(300 + m));
            l.packet(1, ms(300 + m));
        }
        // Layer 2 never came: stalled, once; layers 0 and 1 still usable.
        assert!(l.check(all, ms(300)));
        assert!(!l.check(all, ms(400)));
        assert_eq!(l.usable(ms(400)), 2);
        // Layer 1 stops at 1,290 ms; at 1,590 it is stalled, and 2 above it with it.
        assert!(!l.check(all, ms(1589)));
        assert!(l.check(all, ms(1590)));
        assert_eq!(l.usable(ms(1590)), 1);
        // Layer 2 comes back (at a keyframe): layer 1 still holds it off.
        l.packet(2, ms(1600));
        assert_eq!(l.usable(ms(1600)), 1);
        l.packet(1, ms(1610));
        assert_eq!(l.usable(ms(1610)), 3);
        // A layer nobody asks for is silent, not stalled; asked again, it has
        // LAYER_SILENCE from then.
        let only_low = |layer: usize| layer == 0;
        assert!(!l.check(only_low, ms(5000)));
        assert_eq!(l.usable(ms(5000)), 3);
        l.asked(ms(5000));
        assert!(!l.check(all, ms(5200)));
        assert!(l.check(all, ms(5300)));
        assert_eq!(l.usable(ms(5300)), 1);
        // The hold ends: usable again, and silent still, stalled again at the next check.
        assert_eq!(l.usable(ms(8300)), 3);
        assert!(l.check(all, ms(8300)));
    }

    #[test]
    fn rids_order_lowest_first() {
        let rids = order_rids(vec![Rid::from("f"), Rid::from("q"), Rid::from("h")]);
        let names: Vec<String> = rids.iter().map(|r| r.to_string()).collect();
        assert_eq!(names, vec!["q", "h", "f"]);
        assert_eq!(layer_index(&rids, Some(Rid::from("h"))), 1);
        assert_eq!(layer_index(&rids, None), 0);
    }
}
