//! Which layers of which video tracks fit a subscriber's downlink: a pure function of the
//! estimate (str0m's TWCC/GCC of the subscriber's link), the audio it receives and what
//! each video layer measures at the SFU.
//!
//! Audio comes first, at what each track measures. Then every video track, most important first (the active speaker,
//! then the rest), gets its lowest layer; one that does not fit at its full frame rate
//! gets its base temporal layer only, and one that does not fit even so is paused. What
//! is left upgrades tracks in the same order, each to the highest layer that fits. The
//! wanted rate, what every track at its best would take, is what the SFU probes toward.

/// What one audio track is taken to cost of a downlink until its rate is measured (Opus at
/// 32 kbit/s with RED, RTP and SRTP).
pub const AUDIO_BPS: u64 = 72_000;
/// What 50 packets a second add to an audio track's measured payload rate on the wire
/// (RTP header and extensions, SRTP tag, UDP and IP: ~64 bytes a packet).
pub const AUDIO_OVERHEAD_BPS: u64 = 26_000;

/// The downlink an audio track takes: its measured payload rate and the packets' overhead,
/// or [`AUDIO_BPS`] before it is measured.
pub fn audio_cost(measured_payload_bps: Option<u64>) -> u64 {
    measured_payload_bps.map_or(AUDIO_BPS, |b| b + AUDIO_OVERHEAD_BPS)
}
/// The base temporal layer's share of a layer's rate (the encoder gives it 60 %).
pub const BASE_TEMPORAL_SHARE: f64 = 0.6;

/// A video track the subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoDemand {
    /// Lower is more important (0: the active speaker).
    pub priority: u8,
    /// Measured rate of each spatial layer, lowest first, bits/s.
    pub layer_bps: Vec<u64>,
}

/// What one track gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// Spatial layer (index into `layer_bps`), or None: paused.
    pub layer: Option<usize>,
    /// Highest temporal layer forwarded.
    pub max_temporal: u8,
}

/// The choices, in the order of `video`, and the wanted rate.
/// `audio_bps` is what the subscriber's audio tracks take together (see [`audio_cost`]).
pub fn allocate(budget_bps: u64, audio_bps: u64, video: &[VideoDemand]) -> (Vec<Choice>, u64) {
    let mut left = budget_bps.saturating_sub(audio_bps) as f64;
    let mut order: Vec<usize> = (0..video.len()).collect();
    order.sort_by_key(|&i| (video[i].priority, i));
    let mut out = vec![
        Choice {
            layer: None,
            max_temporal: 0
        };
        video.len()
    ];
    // Everyone's lowest layer at its base frame rate first (a picture for every track
    // before a full frame rate for any: a paused tile is worse than a slower one), then
    // at its full frame rate.
    for &i in &order {
        let Some(&low) = video[i].layer_bps.first() else {
            continue;
        };
        let base = low as f64 * BASE_TEMPORAL_SHARE;
        if base <= left {
            out[i] = Choice {
                layer: Some(0),
                max_temporal: 0,
            };
            left -= base;
        }
    }
    for &i in &order {
        let (Some(&low), Some(0)) = (video[i].layer_bps.first(), out[i].layer) else {
            continue;
        };
        let rest = low as f64 * (1.0 - BASE_TEMPORAL_SHARE);
        if rest <= left {
            out[i].max_temporal = 1;
            left -= rest;
        }
    }
    // Then upgrades, most important first.
    for &i in &order {
        let (Some(0), 1) = (out[i].layer, out[i].max_temporal) else {
            continue;
        };
        let rates = &video[i].layer_bps;
        let mut at = 0;
        for (l, &r) in rates.iter().enumerate().skip(1) {
            let extra = r as f64 - rates[at] as f64;
            if extra <= left {
                left -= extra.max(0.0);
                at = l;
            } else {
                break;
            }
        }
        out[i].layer = Some(at);
    }
    let wanted = audio_bps
        + video
            .iter()
            .map(|v| v.layer_bps.last().copied().unwrap_or(0))
            .sum::<u64>();
    (out, wanted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn track(priority: u8) -> VideoDemand {
        VideoDemand {
            priority,
            layer_bps: vec![100_000, 250_000, 550_000],
        }
    }

    fn layers(c: &[Choice]) -> Vec<Option<usize>> {
        c.iter().map(|c| c.layer).collect()
    }

    #[test]
    fn plenty_gives_everyone_the_top_layer() {
        let (c, wanted) = allocate(5_000_000, 2 * AUDIO_BPS, &[track(1), track(1)]);
        assert_eq!(layers(&c), vec![Some(2), Some(2)]);
        assert!(c.iter().all(|c| c.max_temporal == 1));
        assert_eq!(wanted, 2 * AUDIO_BPS + 2 * 550_000);
    }

    #[test]
    fn the_speaker_is_upgraded_first() {
        // 2 audio tracks, then 700k for video: both lowest (200k), 500k left: the speaker
        // (second) goes to its top layer (450k more), the other stays.
        let budget = 2 * AUDIO_BPS + 700_000;
        let (c, _) = allocate(budget, 2 * AUDIO_BPS, &[track(1), track(0)]);
        assert_eq!(layers(&c), vec![Some(0), Some(2)]);
    }

    #[test]
    fn a_tight_link_takes_half_the_frame_rate_then_pauses() {
        let temporal = |c: &[Choice]| c.iter().map(|c| c.max_temporal).collect::<Vec<_>>();
        // One audio track and 228k for three video tracks of 100k lowest layers: each
        // gets its base frame rate (60k, 180k), the speaker (first) then its full rate
        // (40k more); 8k left is not enough for another.
        let budget = AUDIO_BPS + 228_000;
        let (c, _) = allocate(budget, AUDIO_BPS, &[track(0), track(1), track(1)]);
        assert_eq!(layers(&c), vec![Some(0), Some(0), Some(0)]);
        assert_eq!(temporal(&c), vec![1, 0, 0]);
        // 170k: two base frame rates (120k), the third (60k) does not fit: paused; the
        // speaker's full rate does (40k of the 50k left).
        let budget = AUDIO_BPS + 170_000;
        let (c, _) = allocate(budget, AUDIO_BPS, &[track(0), track(1), track(1)]);
        assert_eq!(layers(&c), vec![Some(0), Some(0), None]);
        assert_eq!(temporal(&c), vec![1, 0, 0]);
        // What a 500 kbit/s link measured at 345k after its queue filled gave (two audio
        // tracks of 108k and two 90k lowest layers): both pictures at half the frame rate,
        // where the lowest layers whole first had paused the second track.
        let video = [90_000, 89_000].map(|low| VideoDemand {
            priority: 1,
            layer_bps: vec![low, 245_000, 540_000],
        });
        let (c, _) = allocate(345_000, 215_000, &video);
        assert_eq!(layers(&c), vec![Some(0), Some(0)]);
        assert_eq!(temporal(&c), vec![0, 0]);
        // Audio alone does not fit: every video track paused, audio still counted first.
        let (c, _) = allocate(50_000, AUDIO_BPS, &[track(0)]);
        assert_eq!(layers(&c), vec![None]);
    }

    #[test]
    fn an_upgrade_that_does_not_fit_leaves_the_room_to_the_next_track() {
        // Lowest layers (200k) leave 200k: not enough for anyone's h (150k more)? It is:
        // the speaker takes h (150k), 50k left, the other stays at q.
        let (c, _) = allocate(400_000, 0, &[track(1), track(0)]);
        assert_eq!(layers(&c), vec![Some(0), Some(1)]);
    }
}

#[cfg(test)]
mod audio_tests {
    use super::*;

    #[test]
    fn audio_costs_what_it_measures_and_is_assumed_dear_until_then() {
        assert_eq!(audio_cost(None), AUDIO_BPS);
        // A 24 kbit/s payload (60-byte frames every 20 ms) on the wire.
        assert_eq!(audio_cost(Some(24_000)), 50_000);
        // Nineteen such tracks leave room for a 300k video layer in 1.3 Mbit/s.
        let video = [VideoDemand {
            priority: 0,
            layer_bps: vec![300_000],
        }];
        let (c, _) = allocate(1_300_000, 19 * audio_cost(Some(24_000)), &video);
        assert_eq!(c[0].layer, Some(0));
        let (c, _) = allocate(1_300_000, 19 * AUDIO_BPS, &video);
        assert_eq!(c[0].layer, None);
    }
}
