//! Audio on a bad link, through natter-netem link mode (root): a 1:1 `natter-cli` call
//! from host `a` to `b` (where the server runs) across the `loss-10-50ms` (10 % random
//! loss each way, 50 ms one way) and `burst-loss-50ms` (Gilbert–Elliott, ~5.9 % in bursts)
//! scenarios, once with the encoders adapting to the link (FEC and RED on as the peer
//! reports loss) and once with `--no-adapt` (plain Opus), side by side on the same path.
//! Each call prints `case=… adapt=… concealed_pct=…`: the frames still missing after
//! repair, which the decoder concealed, over those expected, both sides of the call
//! averaged (from each side's last statistics line).

use std::process::Stdio;
use std::time::Duration;

use natter_netem::scenario::Scenario;
use natter_netem::topology::{Topology, unavailable};

use crate::netem_calls::{KillOnDrop, LinkPair, cli_path, skip};

/// Long enough for ~1500 frames each way (the first second, before the first loss report,
/// is unprotected either way).
const CALL: &str = "30s";

/// The concealed share of both directions of one call across `case`, in percent.
fn concealed_pct(case: &str, adapt: bool) -> Option<f64> {
    if let Some(why) = unavailable() {
        skip(&why);
        return None;
    }
    let Some(cli) = cli_path() else {
        skip("natter-cli is not built next to natter (run scripts/test)");
        return None;
    };
    let topo = Topology::build(&Scenario::load(case).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pair = LinkPair::start(&topo, cli, dir.path(), ["+15550000301", "+15550000302"]);
    let flag = |c: &mut std::process::Command| {
        if !adapt {
            c.arg("--no-adapt");
        }
    };
    let mut answer = pair.cli("b", "bob");
    answer.args(["answer", "--count", "1", "--wait", "60s"]);
    flag(&mut answer);
    let bob = answer
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let bob = KillOnDrop(bob);
    std::thread::sleep(Duration::from_secs(1));
    let mut call = pair.cli("a", "alice");
    call.args(["call", "bob", "--duration", CALL]);
    flag(&mut call);
    let alice = call.output().unwrap();
    let alice_text = String::from_utf8_lossy(&alice.stdout).into_owned()
        + &String::from_utf8_lossy(&alice.stderr);
    assert!(alice.status.success(), "the call failed:\n{alice_text}");
    let bob_out = wait_output(bob);
    let pcts: Vec<f64> = [alice_text.as_str(), bob_out.as_str()]
        .iter()
        .map(|t| after_repair_pct(t).unwrap_or_else(|| panic!("no statistics in:\n{t}")))
        .collect();
    let mean = (pcts[0] + pcts[1]) / 2.0;
    // The last live line shows what the adaptation had set.
    let last = alice_text
        .lines()
        .rfind(|l| l.contains("opus "))
        .unwrap_or("");
    let settings = last
        .split(" · ")
        .find(|p| p.starts_with("opus "))
        .unwrap_or("-");
    println!(
        "case={case} adapt={} concealed_pct={mean:.2} (alice {:.2}, bob {:.2}) alice_sends: {settings}",
        if adapt { "on" } else { "off" },
        pcts[0],
        pcts[1],
    );
    Some(mean)
}

fn wait_output(mut child: KillOnDrop) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(mut o) = child.0.stdout.take() {
        let _ = o.read_to_string(&mut text);
    }
    if let Some(mut e) = child.0.stderr.take() {
        let _ = e.read_to_string(&mut text);
    }
    let _ = child.0.wait();
    text
}

/// From the last statistics line (`… loss X% before repair, Y% after …`): Y, the frames
/// still missing after repair, concealed.
fn after_repair_pct(text: &str) -> Option<f64> {
    text.lines()
        .rev()
        .find_map(|l| l.split(" before repair, ").nth(1))
        .and_then(|v| v.split("% after").next())
        .and_then(|v| v.trim().parse().ok())
}

/// 10 % random loss and 50 ms one way: with adaptation at most 3 % of frames are
/// concealed; without, about the loss itself.
#[test]
fn ten_pct_loss_is_repaired_with_adaptation_and_not_without() {
    let Some(on) = concealed_pct("loss-10-50ms", true) else {
        return;
    };
    let Some(off) = concealed_pct("loss-10-50ms", false) else {
        return;
    };
    assert!(on <= 3.0, "with adaptation {on:.2} % concealed");
    assert!(
        off >= 6.0,
        "without adaptation only {off:.2} % concealed: was there loss?"
    );
}

/// Loss in bursts (the same way, measured side by side): RED's two copies and FEC repair
/// bursts of up to three packets, so adaptation conceals well under half of what plain
/// Opus does.
#[test]
fn burst_loss_is_mostly_repaired_with_adaptation() {
    let Some(on) = concealed_pct("burst-loss-50ms", true) else {
        return;
    };
    let Some(off) = concealed_pct("burst-loss-50ms", false) else {
        return;
    };
    assert!(
        off >= 3.0,
        "without adaptation only {off:.2} % concealed: was there loss?"
    );
    assert!(
        on * 2.0 <= off,
        "with adaptation {on:.2} %, without {off:.2} %"
    );
}
