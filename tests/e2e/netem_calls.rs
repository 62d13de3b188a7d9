//! Calls across emulated networks (natter-netem link mode, root): two `natter-cli` users
//! behind symmetric NATs, the `natter` server with its TURN on a public host. With TURN the
//! call connects and audio flows through the relay; without it the call cannot connect.
//! Skips with the reason when link mode or `natter-cli` is unavailable; fails instead under
//! NATTER_REQUIRE_ALL=1.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use natter_netem::scenario::Scenario;
use natter_netem::topology::{Topology, nat_unavailable};

pub(crate) fn skip(why: &str) {
    if std::env::var("NATTER_REQUIRE_ALL").is_ok_and(|v| v == "1") {
        panic!("required (NATTER_REQUIRE_ALL=1): {why}");
    }
    eprintln!("SKIPPED: {why}");
}

/// A binary of the workspace built next to the `natter` binary under test (`scripts/test`
/// builds the ones the e2e tests drive), when it is there.
pub(crate) fn built_bin(name: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_BIN_EXE_natter")).with_file_name(name);
    p.exists().then_some(p)
}

/// `natter-cli` from the same build as the `natter` binary under test.
pub(crate) fn cli_path() -> Option<PathBuf> {
    built_bin("natter-cli")
}

/// A child process killed (and reaped) when this goes out of scope, a test's panic too.
pub(crate) struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The natter server on `host` of `topo`, listening on the host's address at port 8080,
/// its data in `data`, registration codes returned (a private test network); its output
/// dropped. Callers add what their case needs.
pub(crate) fn server_command(topo: &Topology, host: &str, data: &Path) -> Command {
    let ip = topo.host(host).unwrap().addr;
    let mut cmd = topo.command(host, env!("CARGO_BIN_EXE_natter")).unwrap();
    cmd.args(["--listen", &format!("{ip}:8080")])
        .arg("--data-dir")
        .arg(data)
        .args(["--allow-account-takeover-dev-mode", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd
}

/// Registers `phone` at `url` with the device `cli` makes commands for, retrying for 20 s
/// while the server comes up.
pub(crate) fn register_when_up(cli: impl Fn() -> Command, phone: &str, url: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = cli()
            .args(["register", "--phone", phone, "--server", url])
            .output()
            .unwrap();
        if out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "cannot register {phone}: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// alice on host `a` and bob on `b` of a link-mode topology, the server on `b` (no TURN),
/// both registered and alice knowing bob: what a 1:1 call across the emulated link needs.
pub(crate) struct LinkPair<'a> {
    topo: &'a Topology,
    cli: PathBuf,
    home: PathBuf,
    _server: KillOnDrop,
}

impl<'a> LinkPair<'a> {
    /// `phones` are alice's and bob's numbers (unique per test); `dir` holds the server's
    /// data and both devices.
    pub(crate) fn start(topo: &'a Topology, cli: PathBuf, dir: &Path, phones: [&str; 2]) -> Self {
        let mut cmd = server_command(topo, "b", &dir.join("server"));
        cmd.args(["--turn-enabled", "false"]);
        let pair = LinkPair {
            topo,
            cli,
            home: dir.to_path_buf(),
            _server: KillOnDrop(cmd.spawn().unwrap()),
        };
        let url = format!("http://{}:8080", topo.host("b").unwrap().addr);
        for ((host, user), phone) in [("a", "alice"), ("b", "bob")].into_iter().zip(phones) {
            register_when_up(|| pair.cli(host, user), phone, &url);
        }
        let out = pair
            .cli("a", "alice")
            .args(["contacts", "add", phones[1], "--name", "bob"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        pair
    }

    /// `natter-cli` as `user` on `host`.
    pub(crate) fn cli(&self, host: &str, user: &str) -> Command {
        let mut c = self.topo.command(host, self.cli.to_str().unwrap()).unwrap();
        c.arg("--home").arg(self.home.join(user));
        c
    }
}

struct Run {
    topo: Topology,
    dir: tempfile::TempDir,
    server: Child,
    cli: PathBuf,
    url: String,
}

impl Run {
    fn start(turn: bool) -> Option<Run> {
        if let Some(why) = nat_unavailable() {
            skip(&why);
            return None;
        }
        let Some(cli) = cli_path() else {
            skip(
                "natter-cli is not built next to natter (run scripts/test, or cargo build -p natter-client --bin natter-cli)",
            );
            return None;
        };
        let s = Scenario::load("symmetric-nat").unwrap();
        let topo = Topology::build(&s).unwrap();
        let relay = topo.host("relay").unwrap().addr.to_string();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = server_command(&topo, "relay", &dir.path().join("server"));
        cmd.args(["--turn-listen", &format!("{relay}:3478")])
            .args(["--turn-relay-ips", &relay])
            // The clients' NATs and the relay itself are on 10.77.0.0/24, a private range
            // TURN refuses by default.
            .args(["--turn-allow-peers", "10.77.0.0/24"])
            .args(["--turn-enabled", if turn { "true" } else { "false" }]);
        let server = cmd.spawn().unwrap();
        let run = Run {
            url: format!("http://{relay}:8080"),
            topo,
            dir,
            server,
            cli,
        };
        // Registration doubles as the wait for the server to come up.
        for (host, user, phone) in [("a", "alice", "+15550000001"), ("b", "bob", "+15550000002")] {
            register_when_up(|| run.cli_cmd(host, user), phone, &run.url);
        }
        assert!(
            run.cli(
                "a",
                "alice",
                &["contacts", "add", "+15550000002", "--name", "bob"]
            )
            .status
            .success()
        );
        assert!(
            run.cli(
                "b",
                "bob",
                &["contacts", "add", "+15550000001", "--name", "alice"]
            )
            .status
            .success()
        );
        Some(run)
    }

    fn cli_cmd(&self, host: &str, user: &str) -> std::process::Command {
        let mut c = self.topo.command(host, self.cli.to_str().unwrap()).unwrap();
        c.arg("--home").arg(self.dir.path().join(user));
        c
    }

    fn cli(&self, host: &str, user: &str, args: &[&str]) -> Output {
        self.cli_cmd(host, user).args(args).output().unwrap()
    }

    /// bob answers, alice calls for 3 s: (alice's output, bob's output, alice succeeded).
    fn call(&self) -> (String, String, bool) {
        let bob = self
            .cli_cmd("b", "bob")
            .args(["answer", "--count", "1", "--wait", "60s"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(1));
        let alice = self.cli("a", "alice", &["call", "bob", "--duration", "3s"]);
        let bob = bob.wait_with_output().unwrap();
        let text = |o: &Output| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        };
        (text(&alice), text(&bob), alice.status.success())
    }

    /// The server's TURN counters, read from inside the relay host.
    fn turn_metric(&self, name: &str) -> u64 {
        let out = self
            .topo
            .command("relay", "curl")
            .unwrap()
            .args(["-sf", &format!("{}/metrics", self.url)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// decoded_pct from natter-cli's summary line.
fn decoded_pct(out: &str) -> f64 {
    out.lines()
        .rev()
        .find_map(|l| l.split("decoded_pct=").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_call_between_symmetric_nats_connects_through_natters_turn() {
    let Some(run) = Run::start(true) else { return };
    let (alice, bob, ok) = run.call();
    assert!(ok, "alice's call failed:\n{alice}\nbob:\n{bob}");
    let pct = decoded_pct(&alice);
    assert!(pct >= 95.0, "decoded {pct} %:\n{alice}");
    assert!(run.turn_metric("natter_turn_allocations_created_total") >= 1);
    assert!(
        run.turn_metric("natter_turn_relayed_packets_to_peers_total") >= 100,
        "the media went through the relay"
    );
}

#[test]
fn without_turn_the_same_call_cannot_connect() {
    let Some(run) = Run::start(false) else { return };
    let (alice, bob, ok) = run.call();
    assert!(!ok, "connected without a relay?\n{alice}");
    assert!(
        bob.contains("did not come up") || alice.contains("before it connected"),
        "alice:\n{alice}\nbob:\n{bob}"
    );
}
