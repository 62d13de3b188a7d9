//! A group call through natter-netem link mode (root): two `natter-cli` publishers sending
//! simulcast video and a subscriber whose downlink drops to 300 kbit/s for 12 s
//! (`sfu-downlink-300k`), all on real sockets in their own namespaces, the server with its
//! SFU on a fourth host. The subscriber's pictures go down a layer within 2 s of the drop,
//! are back at the full picture within 10 s of the recovery, and never stop for 500 ms.
//!
//! Not met yet, so the test is ignored (it runs with `cargo nextest run --run-ignored all
//! netem_group`). Found on 2026-12-04 (docs/benchmarks.md): the 5 s freezes it showed even
//! on the open link were publishers dropping their top layer while the SFU kept subscribers
//! on it (fixed: `layers::LayerLiveness`). What is left is the budget: the subscriber's two
//! audio tracks (Opus at 32 kbit/s with RED) measure 216 kbit/s, and str0m's estimate of the
//! 300 kbit/s link settles at 240-270 kbit/s, so even the two lowest pictures at half their
//! frame rate do not fit and the SFU pauses them (by design, but a freeze to this test).

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use natter_netem::scenario::Scenario;
use natter_netem::topology::{Topology, unavailable};

use crate::netem_calls::{KillOnDrop, cli_path, register_when_up, server_command, skip};

const LIMIT_AT: Duration = Duration::from_secs(30);
const LIFT_AT: Duration = Duration::from_secs(42);
const FULL_WIDTH: u32 = 640;

/// One video line of the subscriber's output: when it was read, whose track, its width and
/// the longest gap between rendered frames so far.
#[derive(Debug)]
struct Sample {
    at: Duration,
    who: String,
    width: u32,
    longest_gap_ms: u64,
}

fn parse(line: &str, at: Duration) -> Option<Sample> {
    let (who, rest) = line.trim().split_once(" video: ")?;
    let size = rest.split(" · ").nth(1)?;
    let width = size.split('x').next()?.parse().ok()?;
    let gap = rest.split("longest gap ").nth(1)?;
    let longest_gap_ms = gap.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        at,
        who: who.to_string(),
        width,
        longest_gap_ms,
    })
}

#[test]
#[ignore = "fails today: at 300 kbit/s the subscriber's audio (216 kbit/s) leaves too little \
            for either picture, so the SFU pauses video for seconds (docs/benchmarks.md, \
            2026-12-04); run with --run-ignored"]
fn a_subscriber_behind_a_300_kbit_downlink_drops_a_layer_and_climbs_back() {
    if let Some(why) = unavailable() {
        skip(&why);
        return;
    }
    let Some(cli) = cli_path() else {
        skip("natter-cli is not built next to natter (run scripts/test)");
        return;
    };
    let s = Scenario::load("sfu-downlink-300k").unwrap();
    let topo = Topology::build(&s).unwrap();
    // The capacity schedule runs from the emulator's start.
    let t0 = Instant::now();
    let ip = topo.host("server").unwrap().addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = server_command(&topo, "server", &dir.path().join("server"));
    cmd.args(["--sfu-listen", &format!("{ip}:7882")])
        .args(["--turn-enabled", "false"]);
    // NETEM_GROUP_SERVER_LOG=path keeps the server's log (NATTER_LOG=natter_sfu=debug,info shows
    // each allocation), the subscriber's in path.sub and the publishers' in path.pub1 and
    // path.pub2; otherwise they are dropped.
    match std::env::var_os("NETEM_GROUP_SERVER_LOG") {
        Some(path) => cmd.stderr(std::fs::File::create(path).unwrap()),
        None => cmd.stderr(Stdio::null()),
    };
    let _server = KillOnDrop(cmd.spawn().unwrap());
    let url = format!("http://{ip}:8080");
    let cli_cmd = |host: &str| {
        let mut c = topo.command(host, cli.to_str().unwrap()).unwrap();
        c.arg("--home").arg(dir.path().join(host));
        c
    };
    let people = [
        ("sub", "+15550000101"),
        ("pub1", "+15550000102"),
        ("pub2", "+15550000103"),
    ];
    for (host, phone) in people {
        register_when_up(|| cli_cmd(host), phone, &url);
    }
    for (phone, name) in [("+15550000101", "sub"), ("+15550000103", "pub2")] {
        let out = cli_cmd("pub1")
            .args(["contacts", "add", phone, "--name", name])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let out = cli_cmd("pub1")
        .args(["group", "create", "call", "sub", "pub2"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let group = text
        .split_whitespace()
        .find(|w| {
            w.starts_with('g')
                && w[1..]
                    .trim_end_matches([',', ':', ')'])
                    .parse::<u64>()
                    .is_ok()
        })
        .map(|w| w.trim_end_matches([',', ':', ')']).to_string())
        .unwrap_or_else(|| panic!("no group id in {text:?}"));
    let until = |end: Duration| format!("{}s", end.saturating_sub(t0.elapsed()).as_secs());
    let mut pubs: Vec<Child> = ["pub1", "pub2"]
        .iter()
        .map(|h| {
            cli_cmd(h)
                .args([
                    "call",
                    "--group",
                    &group,
                    "--video",
                    "--duration",
                    &until(Duration::from_secs(62)),
                ])
                .stdout(Stdio::null())
                .stderr(match std::env::var_os("NETEM_GROUP_SERVER_LOG") {
                    Some(mut path) => {
                        path.push(format!(".{h}"));
                        Stdio::from(std::fs::File::create(path).unwrap())
                    }
                    None => Stdio::null(),
                })
                .spawn()
                .unwrap()
        })
        .collect();
    let mut sub = cli_cmd("sub")
        .args([
            "call",
            "--group",
            &group,
            "--duration",
            &until(Duration::from_secs(60)),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut samples = Vec::new();
    let mut log = String::new();
    for line in BufReader::new(sub.stderr.take().unwrap()).lines() {
        let Ok(line) = line else { break };
        if let Some(s) = parse(&line, t0.elapsed()) {
            samples.push(s);
        }
        log.push_str(&line);
        log.push('\n');
    }
    let _ = sub.wait();
    if let Some(path) = std::env::var_os("NETEM_GROUP_SERVER_LOG") {
        let mut path = path;
        path.push(".sub");
        std::fs::write(path, &log).unwrap();
    }
    for p in &mut pubs {
        let _ = p.wait();
    }
    let tail: String = log
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    let tracks: std::collections::BTreeSet<&str> = samples.iter().map(|s| s.who.as_str()).collect();
    assert_eq!(
        tracks.len(),
        2,
        "two video tracks at the subscriber:\n{tail}"
    );
    // Every track at `pred` in the same second's lines, first from `from`.
    let first_all = |from: Duration, pred: &dyn Fn(u32) -> bool| -> Option<Duration> {
        let mut by_second: std::collections::BTreeMap<u64, Vec<&Sample>> = Default::default();
        for s in samples.iter().filter(|s| s.at >= from) {
            by_second.entry(s.at.as_secs()).or_default().push(s);
        }
        by_second
            .values()
            .find(|v| v.len() >= tracks.len() && v.iter().all(|s| pred(s.width)))
            .map(|v| v[0].at.saturating_sub(from))
    };
    let timeline: String = samples
        .iter()
        .map(|s| {
            format!(
                "{:.0}s {} {}px gap{}",
                s.at.as_secs_f64(),
                s.who,
                s.width,
                s.longest_gap_ms
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    println!("subscriber's pictures: {timeline}");
    let full_before = first_all(Duration::ZERO, &|w| w == FULL_WIDTH);
    assert!(
        full_before.is_some_and(|t| t < LIMIT_AT),
        "the full picture before the limit:\n{tail}"
    );
    let down = first_all(LIMIT_AT, &|w| w < FULL_WIDTH).expect("a lower layer under the limit");
    let up = first_all(LIFT_AT, &|w| w == FULL_WIDTH).expect("the full picture after the limit");
    let longest_gap = samples
        .iter()
        .map(|s| s.longest_gap_ms)
        .max()
        .unwrap_or(u64::MAX);
    println!(
        "full picture {:?} after the start, down {down:?} after the limit, up {up:?} after it \
         lifts, longest gap between rendered frames {longest_gap} ms",
        full_before.unwrap()
    );
    assert!(
        down <= Duration::from_secs(2),
        "down after {down:?}:\n{tail}"
    );
    assert!(up <= Duration::from_secs(10), "up after {up:?}:\n{tail}");
    assert!(longest_gap < 500, "a freeze of {longest_gap} ms:\n{tail}");
}
