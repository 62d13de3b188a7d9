//! Link mode with real namespaces and TUN devices (root). Each test skips with the reason
//! when link mode cannot run here, and fails instead under NATTER_REQUIRE_ALL=1.

use std::process::{Command, Stdio};
use std::time::Duration;

use natter_netem::scenario::Scenario;
use natter_netem::topology::{Topology, nat_unavailable, unavailable};

const BIN: &str = env!("CARGO_BIN_EXE_natter-netem");

fn require(why: Option<String>) -> bool {
    match why {
        None => true,
        Some(why) => {
            if std::env::var("NATTER_REQUIRE_ALL").is_ok_and(|v| v == "1") {
                panic!("link mode is required (NATTER_REQUIRE_ALL=1): {why}");
            }
            eprintln!("SKIPPED: {why}");
            false
        }
    }
}

fn scenario(toml: &str) -> Scenario {
    Scenario::parse(toml, std::path::Path::new(".")).unwrap()
}

/// Runs a sink on `rx` and a blast from `tx` to it; returns the sink's JSON report.
fn measure(topo: &Topology, tx: &str, rx: &str, mbit: f64, secs: f64) -> serde_json::Value {
    let port = 9000;
    let sink = topo
        .command(rx, BIN)
        .unwrap()
        .args(["sink", "--listen", &format!("0.0.0.0:{port}")])
        .args(["--secs", &(secs + 3.0).to_string(), "--idle-s", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let to = format!("{}:{port}", topo.host(rx).unwrap().addr);
    let out = topo
        .command(tx, BIN)
        .unwrap()
        .args(["blast", "--to", &to, "--size", "1200"])
        .args(["--mbit", &mbit.to_string(), "--secs", &secs.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "blast failed");
    let out = sink.wait_with_output().unwrap();
    serde_json::from_slice(&out.stdout).expect("sink report")
}

#[test]
fn delay_and_loss_in_link_mode_match_the_configuration() {
    if !require(unavailable()) {
        return;
    }
    let s = scenario(
        "name = \"t\"\n[forward]\ndelay_ms = 30\nloss_pct = 5\n[backward]\ndelay_ms = 30\n",
    );
    let topo = Topology::build(&s).unwrap();
    // 12,500 datagrams of 1,200 bytes at 20 Mbit/s from a to b.
    let r = measure(&topo, "a", "b", 20.0, 6.0);
    let received = r["received"].as_u64().unwrap();
    let lost = r["lost"].as_u64().unwrap();
    assert!(received + lost >= 10_000, "{r}");
    let loss = r["loss_pct"].as_f64().unwrap();
    assert!((loss - 5.0).abs() < 1.0, "loss {loss} %");
    let p50 = r["owd_p50_ms"].as_f64().unwrap();
    assert!((p50 - 30.0).abs() < 1.0, "median one-way delay {p50} ms");
}

/// The kernel's tbf on a veth pair between two fresh namespaces, for comparison.
fn tbf_goodput(mbit: u32, offered: f64, secs: f64) -> f64 {
    let ns = |name: &str, args: &[&str]| {
        let st = Command::new("ip")
            .args(["netns", "exec", name])
            .args(args)
            .status()
            .unwrap();
        assert!(st.success(), "{args:?}");
    };
    let tag = std::process::id();
    let (na, nb) = (format!("nttbfa{tag}"), format!("nttbfb{tag}"));
    let cleanup = |na: &str, nb: &str| {
        let _ = Command::new("ip").args(["netns", "del", na]).status();
        let _ = Command::new("ip").args(["netns", "del", nb]).status();
    };
    cleanup(&na, &nb);
    for n in [&na, &nb] {
        assert!(
            Command::new("ip")
                .args(["netns", "add", n])
                .status()
                .unwrap()
                .success()
        );
    }
    let st = Command::new("ip")
        .args([
            "link", "add", "tbfa", "netns", &na, "type", "veth", "peer", "name", "tbfb",
        ])
        .args(["netns", &nb])
        .status()
        .unwrap();
    assert!(st.success());
    ns(&na, &["ip", "addr", "add", "10.78.0.1/24", "dev", "tbfa"]);
    ns(&nb, &["ip", "addr", "add", "10.78.0.2/24", "dev", "tbfb"]);
    ns(&na, &["ip", "link", "set", "tbfa", "up"]);
    ns(&nb, &["ip", "link", "set", "tbfb", "up"]);
    let rate = format!("{mbit}mbit");
    ns(
        &na,
        &[
            "tc", "qdisc", "add", "dev", "tbfa", "root", "tbf", "rate", &rate, "burst", "15k",
            "latency", "300ms",
        ],
    );
    let sink = Command::new("ip")
        .args([
            "netns",
            "exec",
            &nb,
            BIN,
            "sink",
            "--listen",
            "0.0.0.0:9000",
        ])
        .args(["--secs", &(secs + 10.0).to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let blast = Command::new("ip")
        .args(["netns", "exec", &na, BIN, "blast", "--to", "10.78.0.2:9000"])
        .args(["--size", "1200", "--mbit", &offered.to_string()])
        .args(["--secs", &secs.to_string()])
        .output()
        .unwrap();
    let out = sink.wait_with_output().unwrap();
    cleanup(&na, &nb);
    assert!(blast.status.success());
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    r["mbit_s"].as_f64().unwrap()
}

#[test]
fn rate_limit_matches_the_configured_rate_and_the_kernels_tbf() {
    if !require(unavailable()) {
        return;
    }
    let s = scenario("name = \"t\"\n[forward]\nrate_kbps = 20000\nqueue_ms = 300\n");
    let topo = Topology::build(&s).unwrap();
    // 30 Mbit/s offered into 20: the sink sees payload bytes, the limiter charges the whole
    // IP packet (1,200 + 28 bytes).
    let r = measure(&topo, "a", "b", 30.0, 5.0);
    drop(topo);
    let ours = r["mbit_s"].as_f64().unwrap();
    let want = 20.0 * 1200.0 / 1228.0;
    assert!(
        (ours - want).abs() / want < 0.03,
        "natter-netem {ours} Mbit/s, want {want}"
    );
    // tbf on a veth charges the Ethernet frame too (1,242 bytes).
    let theirs = tbf_goodput(20, 30.0, 5.0);
    let want_tbf = 20.0 * 1200.0 / 1242.0;
    eprintln!("goodput at 20 Mbit/s: natter-netem {ours:.3} Mbit/s, tbf {theirs:.3} Mbit/s");
    assert!(
        (theirs - want_tbf).abs() / want_tbf < 0.03,
        "tbf {theirs} Mbit/s, want {want_tbf}"
    );
    // Per byte on the wire, the two limiters agree within 3 %.
    let ratio = (ours * 1228.0) / (theirs * 1242.0);
    assert!((ratio - 1.0).abs() < 0.03, "ratio {ratio}");
}

#[test]
fn hosts_behind_symmetric_nats_reach_a_public_host_but_not_each_other() {
    if !require(nat_unavailable()) {
        return;
    }
    let s = Scenario::load("symmetric-nat").unwrap();
    let topo = Topology::build(&s).unwrap();
    let a = topo.host("a").unwrap();
    assert_ne!(a.addr, a.local_addr, "a sits behind its NAT");
    let to_relay = measure(&topo, "a", "relay", 2.0, 1.0);
    assert!(to_relay["received"].as_u64().unwrap() > 150, "{to_relay}");
    assert_eq!(to_relay["loss_pct"].as_f64().unwrap(), 0.0);
    let to_b = measure(&topo, "a", "b", 2.0, 1.0);
    assert_eq!(to_b["received"].as_u64().unwrap(), 0, "{to_b}");
}

/// Every process: (pid, parent pid, network namespace, command line).
fn processes() -> Vec<(u32, u32, std::path::PathBuf, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(net) = std::fs::read_link(e.path().join("ns/net")) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // The parent pid is the second field after the parenthesised command name.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        v.push((pid, ppid, net, cmdline));
    }
    v
}

#[test]
fn a_harness_killed_midway_leaves_nothing_behind() {
    if !require(nat_unavailable()) {
        return;
    }
    let marker = format!(
        "{}.{}",
        1000 + std::process::id() % 1000,
        std::process::id()
    );
    let ours = std::fs::read_link("/proc/self/ns/net").unwrap();
    let mut h = Command::new(BIN)
        .args(["run", "symmetric-nat", "--duration-s", "60", "--"])
        .args([
            format!("sleep {marker}"),
            format!("sleep {marker}"),
            format!("sh -c 'sleep {marker}; true'"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut lines = std::io::BufReader::new(h.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    assert!(first.starts_with("hosts up:"), "{first}");
    // Wait until the three commands run.
    // The harness's own command line holds the marker too, and so does each shell until it
    // execs `sleep`: count only the sleeps.
    let sleepers_in = |procs: &[(u32, u32, std::path::PathBuf, String)]| -> Vec<u32> {
        procs
            .iter()
            .filter(|p| p.3.starts_with("sleep") && p.3.contains(&marker))
            .map(|p| p.0)
            .collect()
    };
    let mut procs = processes();
    for _ in 0..100 {
        if sleepers_in(&procs).len() >= 3 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        procs = processes();
    }
    let sleepers = sleepers_in(&procs);
    assert_eq!(sleepers.len(), 3, "the three host commands run");
    // The namespaces the run made: those of the harness's namespace holders.
    let namespaces: std::collections::HashSet<_> = procs
        .iter()
        .filter(|p| p.1 == h.id() && p.3.starts_with("unshare"))
        .map(|p| p.2.clone())
        .collect();
    assert_eq!(namespaces.len(), 5, "3 hosts + 2 NATs");
    assert!(!namespaces.contains(&ours));
    h.kill().unwrap(); // SIGKILL: no handler runs
    h.wait().unwrap();
    let mut left = (usize::MAX, usize::MAX);
    for _ in 0..100 {
        let now = processes();
        left = (
            now.iter().filter(|p| p.3.contains(&marker)).count(),
            now.iter().filter(|p| namespaces.contains(&p.2)).count(),
        );
        if left == (0, 0) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // No process is left in (and so nothing holds) any of the run's namespaces; their TUN
    // and veth devices went with them.
    assert_eq!(
        left,
        (0, 0),
        "(marker processes, processes in the run's namespaces)"
    );
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let tag = format!("{:04x}", h.id() & 0xffff);
    let devs = String::from_utf8_lossy(&links.stdout)
        .lines()
        .filter(|l| l.contains(&format!("nt{tag}")) || l.contains(&format!("vh{tag}")))
        .count();
    assert_eq!(devs, 0);
}

#[test]
fn a_capacity_step_takes_effect_within_one_interval_in_link_mode() {
    if !require(unavailable()) {
        return;
    }
    // The schedule counts from the emulator's start, as do the recorded intervals.
    let s = scenario(
        "name = \"t\"\n[forward]\nqueue_ms = 100\ncapacity = [{ at_s = 0, kbps = 20000 }, { at_s = 3, kbps = 5000 }]\n",
    );
    let mut topo = Topology::build(&s).unwrap();
    // 30 Mbit/s offered from well before the step to well after it.
    let r = measure(&topo, "a", "b", 30.0, 4.0);
    assert!(r["received"].as_u64().unwrap() > 1000, "{r}");
    let report = topo.stop_emulator().unwrap();
    let pair = report
        .links
        .iter()
        .find(|p| p.host == "a" && p.direction == "up")
        .unwrap();
    let len = report.interval;
    let kbps = |t: f64| pair.intervals[(t / 0.2).round() as usize].delivered_kbps(len);
    let near = |got: f64, want: f64| (got - want).abs() / want < 0.05;
    assert!(near(kbps(2.6), 20_000.0), "before: {}", kbps(2.6));
    assert!(
        near(kbps(2.8), 20_000.0),
        "last interval before: {}",
        kbps(2.8)
    );
    assert!(
        near(kbps(3.0), 5_000.0),
        "first interval after: {}",
        kbps(3.0)
    );
    assert!(near(kbps(3.4), 5_000.0), "after: {}", kbps(3.4));
}
