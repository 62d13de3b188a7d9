//! Property tests of the sans-IO impairment link (`natter_netem::Link`), over random
//! configurations that `Impairment::validate` accepts, random bottlenecks (unlimited, rate
//! steps including outages, Mahimahi-style traces) and random packet schedules:
//!
//! * every packet handed in is accounted for: released, or lost with a cause, and the
//!   recorder's counts agree with the verdicts;
//! * no packet leaves before its arrival plus the smallest delay the configuration allows
//!   (the base delay when jitter cannot be negative), nor before the time its verdict named;
//! * with order preservation on (and no deliberate reordering), packets leave in the order
//!   they came;
//! * the bottleneck never sends more than its capacity over any window, plus one packet;
//! * the same seed gives the same run.

use std::time::Duration;

use natter_netem::capacity::{Capacity, Step};
use natter_netem::config::{GilbertElliott, JitterDist};
use natter_netem::{Impairment, Link, Verdict};
use proptest::prelude::*;

const OPPORTUNITY_BYTES: u64 = natter_netem::capacity::OPPORTUNITY_BYTES as u64;

fn impairment() -> impl Strategy<Value = Impairment> {
    let jitter = (
        prop_oneof![Just(0.0), 0.0..50.0f64],
        prop_oneof![
            Just(JitterDist::Uniform),
            Just(JitterDist::Normal),
            Just(JitterDist::Halfnormal),
            Just(JitterDist::Pareto),
        ],
        prop::option::of(0.0..80.0f64),
    );
    let loss = prop_oneof![
        Just((0.0, None)),
        (0.0..40.0f64).prop_map(|l| (l, None)),
        (0.0..20.0f64, 1.0..100.0f64, 0.0..5.0f64, 50.0..=100.0f64).prop_map(|(p, r, g, b)| {
            (
                0.0,
                Some(GilbertElliott {
                    p_pct: p,
                    r_pct: r,
                    good_loss_pct: g,
                    bad_loss_pct: b,
                }),
            )
        }),
    ];
    let queue = prop_oneof![
        Just((None, None)),
        (1_500..40_000u64).prop_map(|b| (Some(b), None)),
        (0.0..200.0f64).prop_map(|ms| (None, Some(ms))),
    ];
    (
        prop_oneof![Just(0.0), 0.0..200.0f64],
        jitter,
        any::<bool>(),
        loss,
        prop_oneof![Just(0.0), 0.0..30.0f64],
        prop_oneof![Just((0.0, 0.0)), (0.0..20.0f64, 0.0..40.0f64)],
        queue,
        prop_oneof![Just(0u32), 0..100u32],
    )
        .prop_map(
            |(
                delay_ms,
                (jitter_ms, jitter_dist, jitter_max_ms),
                preserve_order,
                (loss_pct, ge),
                dup,
                (reorder_pct, reorder_ms),
                (queue_bytes, queue_ms),
                overhead_bytes,
            )| Impairment {
                delay_ms,
                jitter_ms,
                jitter_dist,
                jitter_max_ms,
                preserve_order,
                loss_pct,
                gilbert_elliott: ge,
                duplicate_pct: dup,
                reorder_pct,
                reorder_ms,
                queue_bytes,
                queue_ms,
                overhead_bytes,
                ..Default::default()
            },
        )
}

fn capacity() -> impl Strategy<Value = Capacity> {
    prop_oneof![
        Just(Capacity::Unlimited),
        prop::collection::vec(
            (0..3_000u64, prop_oneof![Just(0u64), 64_000..4_000_000u64]),
            1..4
        )
        .prop_map(|steps| Capacity::steps(
            steps
                .into_iter()
                .map(|(at_ms, bits_per_s)| Step {
                    at: Duration::from_millis(at_ms),
                    bits_per_s,
                })
                .collect()
        )),
        prop::collection::vec(0..50u64, 1..12).prop_map(|mut opps| {
            opps.sort_unstable();
            let period = opps.last().copied().unwrap_or(1).max(1);
            Capacity::Trace {
                opportunities_ms: opps,
                period_ms: period,
            }
        }),
    ]
}

/// (gap before the packet, its size in bytes).
fn packets() -> impl Strategy<Value = Vec<(Duration, usize)>> {
    prop::collection::vec(
        (
            prop_oneof![
                Just(Duration::ZERO),
                (0..20_000u64).prop_map(Duration::from_micros)
            ],
            prop_oneof![Just(1200usize), 1..1500usize],
        ),
        1..300,
    )
}

#[derive(Debug, PartialEq)]
struct Run {
    verdicts: Vec<Verdict>,
    arrivals: Vec<Duration>,
    /// (packet index, release time), in release order.
    released: Vec<(usize, Duration)>,
    summary: natter_netem::stats::Summary,
}

fn run(imp: &Impairment, capacity: &Capacity, seed: u64, packets: &[(Duration, usize)]) -> Run {
    let mut link: Link<usize> = Link::new(imp.clone(), capacity.clone(), seed);
    let mut now = Duration::ZERO;
    let mut verdicts = Vec::new();
    let mut arrivals = Vec::new();
    let mut released = Vec::new();
    let mut release_due = |link: &mut Link<usize>, until: Option<Duration>| {
        while let Some(t) = link
            .poll_timeout()
            .filter(|t| until.is_none_or(|u| *t <= u))
        {
            assert!(until.is_none_or(|u| t <= u));
            let p = link.poll_release(t).expect("due packet is released");
            released.push((p, t));
        }
    };
    for (i, (gap, bytes)) in packets.iter().enumerate() {
        now += *gap;
        release_due(&mut link, Some(now));
        // Nothing due is held back, nothing early is let out.
        assert!(link.poll_timeout().is_none_or(|t| t > now));
        assert!(link.poll_release(now).is_none());
        arrivals.push(now);
        verdicts.push(link.send(now, *bytes, i));
    }
    release_due(&mut link, None);
    assert_eq!(link.held(), 0);
    Run {
        verdicts,
        arrivals,
        released,
        summary: link.stats().summary(),
    }
}

/// The smallest propagation delay (ms) the jitter settings allow.
fn min_delay_ms(imp: &Impairment) -> f64 {
    let j = imp.jitter_ms;
    let below = if j <= 0.0 {
        0.0
    } else {
        match imp.jitter_dist {
            JitterDist::Uniform => imp.jitter_max_ms.unwrap_or(j).min(j),
            JitterDist::Normal => imp.jitter_max_ms.unwrap_or(3.0 * j),
            JitterDist::Halfnormal | JitterDist::Pareto => 0.0,
        }
    };
    (imp.delay_ms - below).max(0.0)
}

/// What a bottleneck can send, for checking windows of departures.
enum Budget<'a> {
    Steps(&'a [Step]),
    /// Every delivery opportunity up to the end of the run, in order.
    Opportunities(Vec<Duration>),
}

impl Budget<'_> {
    fn new(capacity: &Capacity, until: Duration) -> Budget<'_> {
        match capacity {
            Capacity::Unlimited => unreachable!("an unlimited link has no budget"),
            Capacity::Steps(steps) => Budget::Steps(steps),
            Capacity::Trace {
                opportunities_ms,
                period_ms,
            } => {
                let n = opportunities_ms.len() as u64;
                let times = (0..)
                    .map(|k| {
                        Duration::from_millis(
                            (k / n) * period_ms + opportunities_ms[(k % n) as usize],
                        )
                    })
                    .take_while(|t| *t <= until)
                    .collect();
                Budget::Opportunities(times)
            }
        }
    }

    /// Bits the capacity can send in [a, b], times 10^9 (exact).
    fn bits_e9(&self, a: Duration, b: Duration) -> u128 {
        match self {
            Budget::Steps(steps) => {
                let mut total = 0u128;
                for (i, s) in steps.iter().enumerate() {
                    let end = steps.get(i + 1).map_or(b, |n| n.at.min(b));
                    let start = s.at.max(a);
                    if end > start {
                        total += u128::from(s.bits_per_s) * (end - start).as_nanos();
                    }
                }
                total
            }
            Budget::Opportunities(times) => {
                let count = times.partition_point(|t| *t <= b) - times.partition_point(|t| *t < a);
                count as u128 * u128::from(OPPORTUNITY_BYTES) * 8 * 1_000_000_000
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_packet_is_delivered_or_lost_for_a_reason(
        imp in impairment(),
        capacity in capacity(),
        seed in any::<u64>(),
        packets in packets(),
    ) {
        prop_assume!(imp.validate().is_ok());
        let r = run(&imp, &capacity, seed, &packets);
        let count = |f: fn(&Verdict) -> bool| r.verdicts.iter().filter(|v| f(v)).count() as u64;
        let scheduled = count(|v| matches!(v, Verdict::Scheduled(_)));
        let random = count(|v| matches!(v, Verdict::LostRandom));
        let queue = count(|v| matches!(v, Verdict::LostQueue));
        let outage = count(|v| matches!(v, Verdict::LostOutage));
        let s = &r.summary;
        prop_assert_eq!(s.offered_pkts, packets.len() as u64);
        prop_assert_eq!(scheduled + random + queue + outage, s.offered_pkts);
        prop_assert_eq!(s.delivered_pkts, r.released.len() as u64);
        // Copies made by duplication are counted, delivered or dropped, like the rest.
        prop_assert_eq!(s.delivered_pkts + s.lost_random + s.lost_queue, s.offered_pkts + s.duplicated);
        prop_assert_eq!(s.lost_random, random, "the loss model runs once per packet handed in");
        prop_assert!(s.lost_queue >= queue + outage);
        prop_assert!(r.released.len() as u64 >= scheduled);
        prop_assert!(r.released.len() as u64 - scheduled <= s.duplicated);
        if imp.duplicate_pct == 0.0 {
            prop_assert_eq!(s.duplicated, 0);
        }
        // A packet scheduled for t leaves at t; one lost leaves only as its copy.
        for (i, v) in r.verdicts.iter().enumerate() {
            let times: Vec<Duration> =
                r.released.iter().filter(|(p, _)| *p == i).map(|(_, t)| *t).collect();
            prop_assert!(times.len() <= 2);
            match v {
                Verdict::Scheduled(t) => prop_assert!(times.contains(t), "{:?} left at {:?}", v, times),
                _ => prop_assert!(times.len() <= 1),
            }
        }
    }

    #[test]
    fn nothing_leaves_before_arrival_plus_the_configured_delay(
        imp in impairment(),
        capacity in capacity(),
        seed in any::<u64>(),
        packets in packets(),
    ) {
        prop_assume!(imp.validate().is_ok());
        let r = run(&imp, &capacity, seed, &packets);
        let min = Duration::from_secs_f64(min_delay_ms(&imp) / 1000.0);
        for (i, t) in &r.released {
            prop_assert!(
                *t >= r.arrivals[*i] + min,
                "packet {} arrived at {:?}, left at {:?}, before the minimum delay {:?}",
                i, r.arrivals[*i], t, min
            );
        }
        if imp.jitter_ms == 0.0 {
            let base = Duration::from_secs_f64(imp.delay_ms / 1000.0);
            for (i, t) in &r.released {
                prop_assert!(*t >= r.arrivals[*i] + base);
            }
        }
    }

    #[test]
    fn order_preservation_keeps_fifo(
        imp in impairment(),
        capacity in capacity(),
        seed in any::<u64>(),
        packets in packets(),
    ) {
        // Deliberate reordering holds a packet back on purpose; it is not jitter.
        let imp = Impairment { preserve_order: true, reorder_pct: 0.0, ..imp };
        prop_assume!(imp.validate().is_ok());
        let r = run(&imp, &capacity, seed, &packets);
        prop_assert!(
            r.released.windows(2).all(|w| w[0].0 <= w[1].0),
            "released out of order: {:?}",
            r.released.iter().map(|(p, _)| *p).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_bottleneck_sends_at_most_its_capacity_plus_one_packet(
        imp in impairment(),
        capacity in capacity(),
        seed in any::<u64>(),
        packets in packets(),
    ) {
        prop_assume!(!matches!(capacity, Capacity::Unlimited));
        // No propagation delay, jitter or reordering: a packet leaves when its service ends.
        let imp = Impairment { delay_ms: 0.0, jitter_ms: 0.0, reorder_pct: 0.0, ..imp };
        prop_assume!(imp.validate().is_ok());
        let r = run(&imp, &capacity, seed, &packets);
        let charged = |i: usize| (packets[i].1 as u128 + u128::from(imp.overhead_bytes)) * 8;
        let largest = (0..packets.len()).map(charged).max().unwrap_or(0);
        let until = r.released.last().map_or(Duration::ZERO, |(_, t)| *t);
        let budget = Budget::new(&capacity, until);
        for a in 0..r.released.len() {
            let mut bits = 0u128;
            for b in a..r.released.len() {
                bits += charged(r.released[b].0);
                let (ta, tb) = (r.released[a].1, r.released[b].1);
                let can = budget.bits_e9(ta, tb);
                prop_assert!(
                    bits * 1_000_000_000 <= can.saturating_add(largest * 1_000_000_000),
                    "{} bits left in [{:?}, {:?}]; capacity {} bits plus one packet of {}",
                    bits, ta, tb, can / 1_000_000_000, largest
                );
            }
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_run(
        imp in impairment(),
        capacity in capacity(),
        seed in any::<u64>(),
        packets in packets(),
    ) {
        prop_assume!(imp.validate().is_ok());
        let a = run(&imp, &capacity, seed, &packets);
        let b = run(&imp, &capacity, seed, &packets);
        prop_assert_eq!(a, b);
    }
}

/// A finite number over a wide range of magnitudes, as a scenario file may hold.
fn wide() -> impl Strategy<Value = f64> {
    (0.0..10.0f64, 0..30i32).prop_map(|(m, e)| m * 10f64.powi(e))
}

fn extreme_impairment() -> impl Strategy<Value = Impairment> {
    (
        (wide(), wide(), prop::option::of(wide()), wide()),
        (prop::option::of(wide()), prop::option::of(wide())),
        prop::collection::vec((wide(), wide()), 0..3),
        impairment(),
    )
        .prop_map(
            |(
                (delay_ms, jitter_ms, jitter_max_ms, reorder_ms),
                (queue_ms, rate_kbps),
                steps,
                base,
            )| {
                Impairment {
                    delay_ms,
                    jitter_ms,
                    jitter_max_ms,
                    reorder_ms,
                    reorder_pct: if reorder_ms > 0.0 { 50.0 } else { 0.0 },
                    queue_ms,
                    queue_bytes: None,
                    rate_kbps: if steps.is_empty() { rate_kbps } else { None },
                    capacity: steps
                        .into_iter()
                        .scan(0.0, |at, (gap, kbps)| {
                            *at += gap + 1e-3;
                            Some(natter_netem::config::StepSpec { at_s: *at, kbps })
                        })
                        .collect(),
                    ..base
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever `validate` accepts loads and runs; what it cannot run it refuses.
    #[test]
    fn every_configuration_validate_accepts_runs(
        imp in extreme_impairment(),
        seed in any::<u64>(),
        packets in packets(),
    ) {
        if imp.validate().is_ok() {
            let dir = natter_netem::config::Direction::load(imp, std::path::Path::new("."))
                .expect("a validated configuration loads");
            run(&dir.impairment, &dir.capacity, seed, &packets);
        }
    }
}

/// Found by the property above: these passed `validate` (finite and ≥ 0) and then
/// panicked converting a delay to a `Duration` in `Link::send` or `Impairment::capacity`.
#[test]
fn times_too_large_to_emulate_are_refused_by_validate() {
    use natter_netem::config::StepSpec;
    let huge = 1e25;
    let cases = [
        Impairment {
            delay_ms: huge,
            ..Default::default()
        },
        Impairment {
            jitter_ms: huge,
            ..Default::default()
        },
        Impairment {
            jitter_ms: 1.0,
            jitter_max_ms: Some(huge),
            ..Default::default()
        },
        Impairment {
            reorder_pct: 100.0,
            reorder_ms: huge,
            ..Default::default()
        },
        Impairment {
            rate_kbps: Some(100.0),
            queue_ms: Some(huge),
            ..Default::default()
        },
        Impairment {
            capacity: vec![
                StepSpec {
                    at_s: 0.0,
                    kbps: 100.0,
                },
                StepSpec {
                    at_s: huge,
                    kbps: 100.0,
                },
            ],
            ..Default::default()
        },
    ];
    for imp in cases {
        assert!(imp.validate().is_err(), "{imp:?} was accepted");
    }
    let a_day = Impairment {
        delay_ms: natter_netem::config::MAX_TIME_MS,
        ..Default::default()
    };
    assert_eq!(a_day.validate(), Ok(()));
    run(&a_day, &Capacity::Unlimited, 1, &[(Duration::ZERO, 100)]);
}
