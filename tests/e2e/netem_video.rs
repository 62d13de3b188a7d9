//! Video on a falling link, through natter-netem link mode (root): a 1:1 `natter-cli`
//! video call from host `a` to `b` across the `train` scenario, whose uplink from `a`
//! collapses twice (2 Mbit/s → 400 → 0 for 3 s → 300 → 1000 → 2000; later 800 → 0 for
//! 6 s → 200 → 700 → 2000) and recovers. The receiver's log of freezes and of picture
//! sizes says what a viewer saw: the sender steps the picture down as the link falls and
//! back up as it recovers; the only freezes longer than a second are the outages
//! themselves (nothing crosses a link of 0 kbit/s); full size is back within 10 s of each
//! recovery to 2 Mbit/s.

use std::process::Stdio;
use std::time::{Duration, Instant};

use natter_netem::scenario::Scenario;
use natter_netem::topology::{Topology, unavailable};

use crate::netem_calls::{KillOnDrop, LinkPair, cli_path, skip};

/// The train's outages on `a`'s uplink, seconds from the emulator's start, and when the
/// capacity is back at 2 Mbit/s after each.
const OUTAGES: [(f64, f64); 2] = [(22.0, 25.0), (57.0, 63.0)];
const RECOVERED: [f64; 2] = [32.0, 70.0];
/// After an outage the picture comes back with the next keyframe: the loss is noticed,
/// a keyframe asked for and sent across a round trip of 120 ms on a thin link.
const OUTAGE_TAIL_S: f64 = 2.0;

/// Ignored: it does not pass yet. The steps and the way back hold (full size 1 s before,
/// and 4.4 s after, the two recoveries to 2 Mbit/s), but each collapse freezes from the
/// capacity drop before its outage (2 → 0.4 Mbit/s at 20 s, 2 → 0.8 at 55 s): the 500 ms
/// queue fills with 2 Mbit/s of video, its tail is dropped, and the repairs wait behind
/// it until the outage (docs/benchmarks.md). Run it with `--run-ignored only`.
#[test]
#[ignore = "the collapses into the outages still freeze from the capacity drop (docs/benchmarks.md)"]
fn the_train_steps_the_picture_down_without_long_freezes_and_back_up() {
    if let Some(why) = unavailable() {
        skip(&why);
        return;
    }
    let Some(cli) = cli_path() else {
        skip("natter-cli is not built next to natter (run scripts/test)");
        return;
    };
    let s = Scenario::load("train").unwrap();
    let length = Duration::from_secs_f64(s.duration_s.unwrap_or(90.0));
    let topo = Topology::build(&s).unwrap();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let pair = LinkPair::start(&topo, cli, dir.path(), ["+15550000401", "+15550000402"]);
    let bob = pair
        .cli("b", "bob")
        .args(["--json", "answer", "--count", "1", "--wait", "60s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let bob = KillOnDrop(bob);
    std::thread::sleep(Duration::from_secs(1));
    // bob's receiver starts when he answers, a moment after alice calls: its log's times
    // are counted from about here.
    let offset_s = t0.elapsed().as_secs_f64();
    let remaining = length.saturating_sub(t0.elapsed());
    let alice = pair
        .cli("a", "alice")
        .args(["call", "bob", "--video", "--video-kbps", "2000"])
        .args(["--duration", &format!("{}s", remaining.as_secs())])
        .output()
        .unwrap();
    assert!(
        alice.status.success(),
        "the call failed: {}",
        String::from_utf8_lossy(&alice.stderr)
    );
    let stats = bob_stats(bob);
    let alice_log = String::from_utf8_lossy(&alice.stderr);
    for l in alice_log
        .lines()
        .rev()
        .take(25)
        .collect::<Vec<_>>()
        .iter()
        .rev()
    {
        let brief: Vec<&str> = l
            .split(" · ")
            .filter(|p| {
                p.starts_with("estimate") || p.starts_with("video sent") || p.starts_with("queue")
            })
            .collect();
        println!("alice: {}", brief.join(" · "));
    }
    for k in [
        "video_frames_rendered",
        "video_frames_received",
        "video_frames_decoded",
        "video_frames_discarded",
        "video_keyframe_requests_sent",
        "video_width",
        "video_freezes",
    ] {
        println!("bob {k}={}", stats[k]);
    }
    let freezes: Vec<(f64, f64)> = stats["video_freeze_log"]
        .as_array()
        .expect("a freeze log")
        .iter()
        .map(|f| {
            let end = f[0].as_f64().unwrap() / 1000.0 + offset_s;
            (end, f[1].as_f64().unwrap() / 1000.0)
        })
        .collect();
    let sizes: Vec<(f64, u64, u64)> = stats["video_size_log"]
        .as_array()
        .expect("a size log")
        .iter()
        .map(|z| {
            let at = z[0].as_f64().unwrap() / 1000.0 + offset_s;
            (at, z[1].as_u64().unwrap(), z[2].as_u64().unwrap())
        })
        .collect();
    println!("freezes (end s, length s): {freezes:.1?}");
    println!("sizes (from s, w, h): {sizes:?}");
    let mut misses = vec![];
    // Each freeze longer than a second lies within an outage, or ends soon after one.
    for &(end, len) in &freezes {
        let start = end - len;
        let in_outage = OUTAGES
            .iter()
            .any(|&(from, to)| start >= from - 0.5 && end <= to + OUTAGE_TAIL_S);
        if len > 1.0 && !in_outage {
            misses.push(format!(
                "a freeze of {len:.1} s from {start:.1} to {end:.1} s, beyond the outages"
            ));
        }
    }
    // In each collapse the picture got smaller, and it was back to full size within 10 s
    // of the recovery.
    let size_at = |t: f64| {
        sizes
            .iter()
            .rev()
            .find(|&&(at, _, _)| at <= t)
            .map(|&(_, w, h)| (w, h))
    };
    for (&(from, _), &back) in OUTAGES.iter().zip(&RECOVERED) {
        if !sizes
            .iter()
            .any(|&(at, w, _)| at > from - 3.0 && at < back && w < 640)
        {
            misses.push(format!("no smaller picture around the outage at {from} s"));
        }
        if size_at(back + 10.0) != Some((640, 360)) {
            misses.push(format!("not back to 640x360 within 10 s of {back} s"));
        }
    }
    if stats["video_width"].as_u64() != Some(640) {
        misses.push("not at full size at the end".into());
    }
    assert!(misses.is_empty(), "{misses:#?}");
}

/// bob's statistics from his JSON line for the call.
fn bob_stats(mut bob: KillOnDrop) -> serde_json::Value {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut o) = bob.0.stdout.take() {
        let _ = o.read_to_string(&mut text);
    }
    let _ = bob.0.wait();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v.get("stats").cloned())
        .unwrap_or_else(|| panic!("no statistics from bob:\n{text}"))
}
