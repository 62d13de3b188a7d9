//! RFC 8867 test cases through natter-netem link mode (root), scored with RFC 8868's
//! metrics, for two senders on the same emulated link: natter's own (a 1:1 `natter-cli`
//! video call from host `a` to `b`, where the server runs too) and Chromium's (headless
//! Debian chromium on `a`, its own GCC and encoders, sending natter's test pattern as its
//! camera to `natter-webrtc-sink` on `b`). `a`'s uplink is the case's bottleneck (the
//! scenario's `[forward]`). What the bottleneck carried comes from the emulator itself:
//! capacity and delivered bytes per 200 ms interval, each packet's wait in its queue, its
//! drops.
//!
//! Ignored (a case runs its whole duration, 100 s for 5.1, per sender): `scripts/bwe-eval`
//! runs it, with `BWE_CASES` (comma-separated scenario names, default `rfc8867-5.1`),
//! `BWE_SENDERS` (default `natter,chromium`) and `BWE_PLOTS` (a directory for the SVG
//! plots, the per-interval CSV and the sender's statistics each second). Each case and
//! sender prints one line,
//! `case=… sender=… utilization_pct=… queue_p50_ms=… queue_p95_ms=… loss_pct=…
//! response_s=…` (each capacity step: when, from and to what, and how long the sender took
//! to offer 80–105 % of the new capacity two intervals running, or `never`).
//!
//! Not yet: the multi-flow cases (5.2, 5.4, 5.5, 5.6, 5.7) and their Jain fairness.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use natter_netem::scenario::Scenario;
use natter_netem::stats::Interval;
use natter_netem::topology::{Topology, unavailable};

use crate::netem_calls::{KillOnDrop, LinkPair, built_bin, cli_path, skip};

/// The sender asks for more than any case's capacity, so the estimate is what limits it;
/// `BWE_VIDEO_SIZE` sets the picture (default 640x360, which needs ~1.4 Mbit/s at most).
const VIDEO_KBPS: &str = "4000";

/// RFC 8868's figures for one sender on one case.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseScore {
    /// Bytes delivered through the bottleneck over the bytes its capacity allowed, from
    /// the call's start to its end, percent.
    pub utilization_pct: f64,
    pub queue_p50_ms: f64,
    pub queue_p95_ms: f64,
    /// Packets offered to the bottleneck and not delivered, percent.
    pub loss_pct: f64,
    pub responses: Vec<Response>,
}

/// Utilization over the intervals starting in `[from_s, to_s)` (seconds from the
/// emulator's start) that have a capacity.
pub fn utilization_pct(intervals: &[Interval], interval: Duration, from_s: f64, to_s: f64) -> f64 {
    let (mut delivered, mut capacity) = (0.0, 0.0);
    for iv in intervals
        .iter()
        .filter(|iv| iv.t_s >= from_s && iv.t_s < to_s)
    {
        let Some(c) = iv.capacity_kbps else {
            continue;
        };
        delivered += iv.delivered_bytes as f64 * 8.0 / 1000.0;
        capacity += c * interval.as_secs_f64();
    }
    if capacity > 0.0 {
        delivered * 100.0 / capacity
    } else {
        0.0
    }
}

/// A capacity step and how long the sender took to follow it.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// When the capacity changed, seconds from the emulator's start, and from what to what.
    pub at_s: f64,
    pub from_kbps: f64,
    pub to_kbps: f64,
    /// Until the rate offered to the bottleneck was within [`FOLLOWS`] of the new
    /// capacity for two intervals in a row; None if it never was before the next step.
    pub after_s: Option<f64>,
}

/// A sender follows a capacity when it offers 80–105 % of it.
pub const FOLLOWS: (f64, f64) = (0.80, 1.05);

/// RFC 8868's rate-change response time for each capacity step in `[from_s, to_s)`.
pub fn response_times(
    intervals: &[Interval],
    interval: Duration,
    from_s: f64,
    to_s: f64,
) -> Vec<Response> {
    let window: Vec<&Interval> = intervals
        .iter()
        .filter(|iv| iv.t_s >= from_s && iv.t_s < to_s && iv.capacity_kbps.is_some())
        .collect();
    let mut out: Vec<Response> = Vec::new();
    let mut run = 0;
    for (i, iv) in window.iter().enumerate() {
        let cap = iv.capacity_kbps.unwrap_or_default();
        if i > 0 {
            let before = window[i - 1].capacity_kbps.unwrap_or_default();
            if (before - cap).abs() > 1e-9 {
                out.push(Response {
                    at_s: iv.t_s,
                    from_kbps: before,
                    to_kbps: cap,
                    after_s: None,
                });
                run = 0;
            }
        }
        let Some(step) = out.last_mut().filter(|s| s.after_s.is_none()) else {
            continue;
        };
        let offered = iv.offered_kbps(interval);
        if offered >= FOLLOWS.0 * cap && offered <= FOLLOWS.1 * cap {
            run += 1;
            if run == 2 {
                step.after_s = Some(iv.t_s + interval.as_secs_f64() - step.at_s);
            }
        } else {
            run = 0;
        }
    }
    out
}

/// Who sends on a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A 1:1 `natter-cli` video call (str0m's GCC, natter's encoders).
    Natter,
    /// Debian's chromium (its own GCC and encoders) through playwright-core, playing
    /// natter's test pattern as its camera, to `natter-webrtc-sink` (natter's receive side).
    Chromium,
}

impl Sender {
    pub fn name(self) -> &'static str {
        match self {
            Sender::Natter => "natter",
            Sender::Chromium => "chromium",
        }
    }
}

/// What a sender ran: when its media started (seconds from the emulator's start) and its
/// own statistics each second.
struct Sent {
    start_s: f64,
    log: Vec<u8>,
}

/// A case's host programs a sender needs, or why they are missing.
fn missing(sender: Sender) -> Option<String> {
    if cli_path().is_none() {
        return Some("natter-cli is not built next to natter (run scripts/test)".into());
    }
    if sender == Sender::Natter {
        return None;
    }
    for bin in ["natter-webrtc-sink", "natter-pattern-y4m"] {
        if built_bin(bin).is_none() {
            return Some(format!(
                "{bin} is not built next to natter (run scripts/test)"
            ));
        }
    }
    if !chromium().exists() {
        return Some(format!(
            "no chromium at {} (scripts/install-deps installs Debian's)",
            chromium().display()
        ));
    }
    if !browser_dir().join("node_modules/playwright-core").exists() {
        return Some(
            "tests/browser has no node_modules (npm ci there; scripts/install-deps)".into(),
        );
    }
    None
}

fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM").map_or_else(|| "/usr/bin/chromium".into(), PathBuf::from)
}

fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

/// The video picture both senders send (`BWE_VIDEO_SIZE`).
fn video_size() -> String {
    std::env::var("BWE_VIDEO_SIZE").unwrap_or_else(|_| "640x360".into())
}

/// Runs `case` with `sender`; None (after a skip message) when link mode or a program the
/// sender needs is missing.
fn run_case(case: &str, sender: Sender, plots: Option<&Path>) -> Option<CaseScore> {
    if let Some(why) = unavailable().or_else(|| missing(sender)) {
        skip(&why);
        return None;
    }
    let s = Scenario::load(case).unwrap();
    let length = Duration::from_secs_f64(s.duration_s.unwrap_or(100.0));
    let mut topo = Topology::build(&s).unwrap();
    // The capacity schedule runs from the emulator's start.
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let sent = match sender {
        Sender::Natter => natter_call(&topo, dir.path(), t0, length),
        Sender::Chromium => chromium_call(&topo, dir.path(), t0, length),
    };
    let end_s = t0.elapsed().as_secs_f64();
    let report = topo.stop_emulator().expect("the emulator's report");
    let up = report
        .links
        .iter()
        .find(|l| l.host == "a" && l.direction == "up")
        .expect("a's uplink carried the call");
    if let Some(dir) = plots {
        std::fs::create_dir_all(dir).unwrap();
        let who = sender.name();
        let title = format!("{case}: {who}'s sender, a's uplink");
        let svg = natter_netem::plot::svg(&title, &up.intervals, report.interval);
        std::fs::write(dir.join(format!("{case}-{who}.svg")), svg).unwrap();
        std::fs::write(dir.join(format!("{case}-{who}.csv")), &up.csv).unwrap();
        // The sender's own statistics each second: its estimate, encoder target,
        // keyframes, NACKs.
        std::fs::write(dir.join(format!("{case}-{who}-sender.txt")), &sent.log).unwrap();
    }
    Some(CaseScore {
        utilization_pct: utilization_pct(&up.intervals, report.interval, sent.start_s, end_s),
        queue_p50_ms: up.summary.queue_p50_ms.unwrap_or(f64::NAN),
        queue_p95_ms: up.summary.queue_p95_ms.unwrap_or(f64::NAN),
        loss_pct: up.summary.loss_pct,
        responses: response_times(&up.intervals, report.interval, sent.start_s, end_s),
    })
}

/// natter's sender: alice on `a` calls bob on `b` (where the server runs too) with video
/// until the case ends.
fn natter_call(topo: &Topology, dir: &Path, t0: Instant, length: Duration) -> Sent {
    let pair = LinkPair::start(
        topo,
        cli_path().unwrap(),
        dir,
        ["+15550000201", "+15550000202"],
    );
    let mut bob = pair
        .cli("b", "bob")
        .args(["answer", "--count", "1", "--wait", "60s"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // The call runs to the end of the case; its media starts about a second after this.
    let start_s = t0.elapsed().as_secs_f64() + 1.0;
    let remaining = length.saturating_sub(t0.elapsed());
    let alice = pair
        .cli("a", "alice")
        .args(["call", "bob", "--video", "--video-kbps", VIDEO_KBPS])
        .args(["--video-size", &video_size()])
        .args(["--duration", &format!("{}s", remaining.as_secs())])
        .output()
        .unwrap();
    let _ = bob.wait();
    assert!(
        alice.status.success(),
        "the call failed: {}",
        String::from_utf8_lossy(&alice.stderr)
    );
    Sent {
        start_s,
        log: alice.stderr,
    }
}

/// Copies SDP lines from `from` to `to` up to and including the empty line that ends them.
fn relay_sdp(from: &mut impl BufRead, to: &mut impl Write, what: &str) {
    let mut n = 0;
    loop {
        let mut line = String::new();
        let got = from.read_line(&mut line).unwrap();
        assert!(
            got > 0,
            "the {what} ended after {n} lines, before an empty line"
        );
        to.write_all(line.as_bytes()).unwrap();
        n += 1;
        assert!(n < 1000, "the {what} runs past 1000 lines");
        if line.trim().is_empty() {
            break;
        }
    }
    to.flush().unwrap();
}

/// Chromium's sender: headless chromium on `a` sends natter's test pattern and its fake
/// microphone to natter-webrtc-sink on `b`, offer and answer relayed here.
fn chromium_call(topo: &Topology, dir: &Path, t0: Instant, length: Duration) -> Sent {
    let size = video_size();
    let y4m = dir.join("pattern.y4m");
    let out = Command::new(built_bin("natter-pattern-y4m").unwrap())
        .arg(&y4m)
        .arg(&size)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let sink_addr = format!("{}:5004", topo.host("b").unwrap().addr);
    let secs = length.saturating_sub(t0.elapsed()).as_secs();
    let mut sink_cmd = topo
        .command(
            "b",
            built_bin("natter-webrtc-sink").unwrap().to_str().unwrap(),
        )
        .unwrap();
    sink_cmd
        .args([
            "--listen",
            &sink_addr,
            "--duration",
            &(secs + 5).to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("sink.txt")).unwrap());
    let mut sink = KillOnDrop(sink_cmd.spawn().unwrap());
    let log = dir.join("chromium.txt");
    let mut browser_cmd = topo.command("a", "node").unwrap();
    browser_cmd
        .arg(browser_dir().join("bwe-sender.mjs"))
        .args([&secs.to_string(), &size, VIDEO_KBPS])
        .env("Y4M", &y4m)
        .env("CHROMIUM", chromium())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap());
    let mut browser = KillOnDrop(browser_cmd.spawn().unwrap());
    let mut offer = BufReader::new(browser.0.stdout.take().unwrap());
    relay_sdp(&mut offer, sink.0.stdin.as_mut().unwrap(), "offer");
    let mut answer = BufReader::new(sink.0.stdout.take().unwrap());
    relay_sdp(&mut answer, browser.0.stdin.as_mut().unwrap(), "answer");
    // ICE and DTLS take a few round trips before the first media.
    let start_s = t0.elapsed().as_secs_f64() + 1.0;
    let status = browser.0.wait().unwrap();
    let mut log = std::fs::read(&log).unwrap();
    assert!(
        status.success(),
        "chromium's sender failed: {}",
        String::from_utf8_lossy(&log)
    );
    drop(sink);
    // What the receiver saw, after the sender's lines.
    log.extend_from_slice(b"\n# natter-webrtc-sink, each second:\n");
    log.extend(std::fs::read(dir.join("sink.txt")).unwrap());
    Sent { start_s, log }
}

/// The senders `BWE_SENDERS` names (comma-separated; default both).
fn senders() -> Vec<Sender> {
    let names = std::env::var("BWE_SENDERS").unwrap_or_else(|_| "natter,chromium".into());
    names
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| match n {
            "natter" => Sender::Natter,
            "chromium" => Sender::Chromium,
            other => panic!("BWE_SENDERS: no sender {other:?} (natter, chromium)"),
        })
        .collect()
}

#[test]
#[ignore = "runs each RFC 8867 case for its whole length (100 s for 5.1): scripts/bwe-eval"]
fn rfc8867_cases() {
    let cases = std::env::var("BWE_CASES").unwrap_or_else(|_| "rfc8867-5.1".into());
    let plots = std::env::var_os("BWE_PLOTS").map(PathBuf::from);
    for case in cases.split(',').map(str::trim).filter(|c| !c.is_empty()) {
        for sender in senders() {
            let Some(s) = run_case(case, sender, plots.as_deref()) else {
                return;
            };
            println!("{}", score_line(case, sender, &s));
        }
    }
}

/// `case=… sender=… utilization_pct=… queue_p50_ms=… queue_p95_ms=… loss_pct=…
/// response_s=…`, each step as at_s:from->to:seconds ("never" if the sender did not follow).
fn score_line(case: &str, sender: Sender, s: &CaseScore) -> String {
    let responses: Vec<String> = s
        .responses
        .iter()
        .map(|r| {
            let after = r.after_s.map_or("never".into(), |a| format!("{a:.1}"));
            format!("{:.0}:{:.0}->{:.0}:{after}", r.at_s, r.from_kbps, r.to_kbps)
        })
        .collect();
    format!(
        "case={case} sender={} utilization_pct={:.1} queue_p50_ms={:.1} queue_p95_ms={:.1} \
         loss_pct={:.2} response_s={}",
        sender.name(),
        s.utilization_pct,
        s.queue_p50_ms,
        s.queue_p95_ms,
        s.loss_pct,
        responses.join(",")
    )
}

#[test]
fn utilization_counts_only_the_window_and_intervals_with_a_capacity() {
    let iv = |t_s: f64, capacity_kbps: Option<f64>, delivered_bytes: u64| {
        let mut i = Interval::default();
        i.t_s = t_s;
        i.capacity_kbps = capacity_kbps;
        i.delivered_bytes = delivered_bytes;
        i
    };
    // 200 ms intervals at 1,000 kbit/s carry 25,000 bytes at full use.
    let ivs = [
        iv(0.0, Some(1000.0), 0),
        iv(0.2, Some(1000.0), 25_000),
        iv(0.4, Some(1000.0), 12_500),
        iv(0.6, None, 99_999),
        iv(0.8, Some(1000.0), 99_999),
    ];
    let len = Duration::from_millis(200);
    assert!((utilization_pct(&ivs, len, 0.2, 0.8) - 75.0).abs() < 1e-9);
    assert!((utilization_pct(&ivs, len, 0.0, 0.6) - 50.0).abs() < 1e-9);
    assert_eq!(utilization_pct(&ivs, len, 0.6, 0.8), 0.0);
}

#[test]
fn the_response_time_is_until_two_intervals_offer_what_the_new_capacity_carries() {
    let len = Duration::from_millis(200);
    // 25,000 bytes in 200 ms is 1,000 kbit/s.
    let iv = |t_s: f64, capacity: f64, offered_kbps: f64| {
        let mut i = Interval::default();
        i.t_s = t_s;
        i.capacity_kbps = Some(capacity);
        i.offered_bytes = (offered_kbps * 25.0) as u64;
        i
    };
    let ivs = [
        iv(0.0, 1000.0, 950.0),
        // Up to 2,000 at 0.2 s: 1,500, 1,700 (in), 1,500, 1,650, 1,900 (in, in).
        iv(0.2, 2000.0, 1500.0),
        iv(0.4, 2000.0, 1700.0),
        iv(0.6, 2000.0, 1500.0),
        iv(0.8, 2000.0, 1650.0),
        iv(1.0, 2000.0, 1900.0),
        // Down to 500 at 1.2 s: never back under 525 before the window ends.
        iv(1.2, 500.0, 900.0),
        iv(1.4, 500.0, 600.0),
    ];
    let r = response_times(&ivs, len, 0.0, 2.0);
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!((r[0].from_kbps, r[0].to_kbps), (1000.0, 2000.0));
    assert!((r[0].after_s.unwrap() - 1.0).abs() < 1e-9, "{r:?}");
    assert_eq!(r[1].at_s, 1.2);
    assert_eq!(r[1].after_s, None);
}
