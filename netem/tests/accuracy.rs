//! Accuracy of the impairment core against its configuration, in virtual time, over at
//! least 10,000 packets each: delay medians within 1 ms, loss within ±1 percentage point,
//! Gilbert–Elliott burst lengths within 10 %, rates within ±3 %, capacity steps taking
//! effect within one 200 ms interval.

use std::time::Duration;

use natter_netem::capacity::{Capacity, Step};
use natter_netem::config::{GilbertElliott, Impairment, JitterDist};
use natter_netem::trace::{TraceKind, generate};
use natter_netem::{Link, Verdict};

/// Offers `n` packets of `size` bytes every `gap` and drains everything; returns the link.
fn offer(mut link: Link<u32>, n: u32, size: usize, gap: Duration) -> Link<u32> {
    let mut now = Duration::ZERO;
    for i in 0..n {
        while link.poll_release(now).is_some() {}
        link.send(now, size, i);
        now += gap;
    }
    while let Some(t) = link.poll_timeout() {
        link.poll_release(t);
    }
    link
}

fn rate(bps: u64) -> Capacity {
    Capacity::steps(vec![Step {
        at: Duration::ZERO,
        bits_per_s: bps,
    }])
}

#[test]
fn median_added_delay_is_within_1ms_for_every_jitter_shape() {
    for (dist, jitter) in [
        (JitterDist::Uniform, 10.0),
        (JitterDist::Normal, 5.0),
        (JitterDist::Normal, 20.0),
    ] {
        let imp = Impairment {
            delay_ms: 50.0,
            jitter_ms: jitter,
            jitter_dist: dist,
            ..Default::default()
        };
        let l = offer(
            Link::new(imp, Capacity::Unlimited, 11),
            20_000,
            200,
            Duration::from_millis(2),
        );
        let s = l.stats().summary();
        assert_eq!(s.delivered_pkts, 20_000);
        let p50 = s.owd_p50_ms.unwrap();
        assert!((p50 - 50.0).abs() < 1.0, "{dist:?} {jitter}: median {p50}");
    }
    // Half-normal has median σ·0.674 above the base delay.
    let imp = Impairment {
        delay_ms: 50.0,
        jitter_ms: 5.0,
        jitter_dist: JitterDist::Halfnormal,
        ..Default::default()
    };
    let s = offer(
        Link::new(imp, Capacity::Unlimited, 3),
        20_000,
        200,
        Duration::from_millis(2),
    )
    .stats()
    .summary();
    let p50 = s.owd_p50_ms.unwrap();
    assert!(
        (p50 - (50.0 + 5.0 * 0.6745)).abs() < 1.0,
        "halfnormal median {p50}"
    );
    assert!(
        s.owd_max_ms <= 50.0 + 15.0 + 1e-6,
        "3σ cap: {}",
        s.owd_max_ms
    );
}

#[test]
fn bernoulli_loss_is_within_one_point() {
    for (pct, seed) in [(1.0, 1), (10.0, 2), (30.0, 3)] {
        let imp = Impairment {
            loss_pct: pct,
            ..Default::default()
        };
        let s = offer(
            Link::new(imp, Capacity::Unlimited, seed),
            20_000,
            100,
            Duration::from_millis(1),
        )
        .stats()
        .summary();
        assert!(
            (s.loss_pct - pct).abs() < 1.0,
            "{pct}%: measured {}",
            s.loss_pct
        );
        assert_eq!(s.lost_queue, 0);
    }
}

#[test]
fn gilbert_elliott_bursts_and_loss_match_the_model() {
    for (loss, burst, seed) in [(5.0, 4.0, 1), (10.0, 2.0, 2), (2.0, 8.0, 3)] {
        let ge = GilbertElliott::from_loss_and_burst(loss, burst);
        let imp = Impairment {
            gilbert_elliott: Some(ge),
            ..Default::default()
        };
        let s = offer(
            Link::new(imp, Capacity::Unlimited, seed),
            200_000,
            100,
            Duration::from_micros(100),
        )
        .stats()
        .summary();
        let b = s.mean_loss_burst.unwrap();
        assert!(
            (b - burst).abs() / burst < 0.10,
            "burst {burst}: measured {b}"
        );
        assert!(
            (s.loss_pct - loss).abs() < 1.0,
            "loss {loss}: measured {}",
            s.loss_pct
        );
    }
}

#[test]
fn bottleneck_rate_is_within_3_percent() {
    // 1.5 Mbit/s offered into 1 Mbit/s for 20 s (1,200-byte packets, 31,250 of them).
    let imp = Impairment {
        queue_ms: Some(300.0),
        ..Default::default()
    };
    let l = offer(
        Link::new(imp, rate(1_000_000), 1),
        31_250,
        1200,
        Duration::from_micros(6400),
    );
    let ivs = l.stats().intervals();
    let len = l.stats().interval_len();
    // Skip the first second (queue filling) and the drain after the offer stops.
    let steady: Vec<f64> = ivs[5..95].iter().map(|iv| iv.delivered_kbps(len)).collect();
    let mean = steady.iter().sum::<f64>() / steady.len() as f64;
    assert!((mean - 1000.0).abs() / 1000.0 < 0.03, "mean {mean} kbps");
    for (i, r) in steady.iter().enumerate() {
        // One 1,200-byte packet more or less per 200 ms is 48 kbit/s.
        assert!((r - 1000.0).abs() <= 50.0, "interval {i}: {r} kbps");
    }
    let s = l.stats().summary();
    assert!(
        s.lost_queue > 9_000,
        "a third should be dropped: {}",
        s.lost_queue
    );
    assert!(s.owd_max_ms <= 300.0 + 1e-6);
}

#[test]
fn capacity_steps_take_effect_within_one_interval() {
    let imp = Impairment {
        queue_ms: Some(100.0),
        capacity: vec![
            natter_netem::config::StepSpec {
                at_s: 0.0,
                kbps: 2000.0,
            },
            natter_netem::config::StepSpec {
                at_s: 10.0,
                kbps: 500.0,
            },
            natter_netem::config::StepSpec {
                at_s: 15.0,
                kbps: 3000.0,
            },
        ],
        ..Default::default()
    };
    let cap = imp.capacity(std::path::Path::new(".")).unwrap();
    // 4 Mbit/s offered: always above capacity.
    let l = offer(
        Link::new(imp, cap, 1),
        25_000,
        1000,
        Duration::from_millis(2),
    );
    let ivs = l.stats().intervals();
    let len = l.stats().interval_len();
    let kbps = |t: f64| ivs[(t / 0.2).round() as usize].delivered_kbps(len);
    let near = |got: f64, want: f64| (got - want).abs() / want < 0.05;
    assert!(near(kbps(9.8), 2000.0), "before the drop: {}", kbps(9.8));
    assert!(
        near(kbps(10.0), 500.0),
        "first interval after the drop: {}",
        kbps(10.0)
    );
    assert!(near(kbps(14.8), 500.0));
    assert!(
        near(kbps(15.0), 3000.0),
        "first interval after the rise: {}",
        kbps(15.0)
    );
    assert_eq!(ivs[50].capacity_kbps, Some(500.0));
}

#[test]
fn a_constant_trace_matches_the_same_rate() {
    let trace = Capacity::mahimahi(&generate(TraceKind::Constant, 30, 1, 1200.0)).unwrap();
    let imp = Impairment {
        queue_ms: Some(300.0),
        ..Default::default()
    };
    // 1.5 Mbit/s of 1,500-byte packets into 1.2 Mbit/s.
    let l = offer(
        Link::new(imp, trace, 1),
        30_000 / 8 * 10,
        1500,
        Duration::from_millis(8),
    );
    let ivs = l.stats().intervals();
    let len = l.stats().interval_len();
    let steady: Vec<f64> = ivs[5..145]
        .iter()
        .map(|iv| iv.delivered_kbps(len))
        .collect();
    let mean = steady.iter().sum::<f64>() / steady.len() as f64;
    assert!(
        (mean - 1200.0).abs() / 1200.0 < 0.03,
        "trace mean {mean} kbps"
    );
}

#[test]
fn duplication_and_reordering_shares() {
    let imp = Impairment {
        delay_ms: 20.0,
        duplicate_pct: 5.0,
        reorder_pct: 10.0,
        reorder_ms: 5.0,
        ..Default::default()
    };
    let mut l: Link<u32> = Link::new(imp, Capacity::Unlimited, 5);
    let mut now = Duration::ZERO;
    let mut order = Vec::new();
    for i in 0..20_000u32 {
        while let Some(p) = l.poll_release(now) {
            order.push(p);
        }
        assert!(matches!(l.send(now, 100, i), Verdict::Scheduled(_)));
        now += Duration::from_millis(1);
    }
    while let Some(t) = l.poll_timeout() {
        order.push(l.poll_release(t).unwrap());
    }
    let dups = order.len() - 20_000;
    assert!((dups as f64 / 200.0 - 5.0).abs() < 1.0, "{dups} duplicates");
    // A held-back packet is overtaken by the 4 or 5 sent after it.
    let late = order.windows(2).filter(|w| w[1] + 3 < w[0]).count();
    assert!((late as f64 / 200.0 - 10.0).abs() < 1.0, "{late} reordered");
}
