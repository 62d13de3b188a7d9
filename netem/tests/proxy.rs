//! UDP proxy mode over real loopback sockets: an echo server behind the proxy, a client in
//! front of it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_netem::capacity::Capacity;
use natter_netem::config::Impairment;
use natter_netem::proxy::{Direction, Proxy, ProxyConfig};
use natter_netem::scenario::{BUILT_IN, Scenario};
use tokio::net::UdpSocket;

async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    (addr, h)
}

fn dir(imp: Impairment) -> Direction {
    Direction::load(imp, std::path::Path::new(".")).unwrap()
}

/// A proxy impairing each way in front of a fresh echo server: (proxy, echo task).
async fn proxy_to_echo(
    forward: Impairment,
    backward: Impairment,
    seed: u64,
) -> (Proxy, tokio::task::JoinHandle<()>) {
    let (up, echo) = echo_server().await;
    let p = Proxy::start(ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: up,
        forward: dir(forward),
        backward: dir(backward),
        seed,
    })
    .await
    .unwrap();
    (p, echo)
}

/// Sends `n` numbered pings every `gap`; returns round trips of those that came back.
async fn ping(proxy: SocketAddr, n: u32, gap: Duration) -> Vec<Duration> {
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.connect(proxy).await.unwrap();
    let start = Instant::now();
    let mut sent_at = vec![None; n as usize];
    let mut rtts = Vec::new();
    let mut buf = [0u8; 64];
    let mut next = Instant::now();
    let mut i = 0u32;
    let deadline = start + gap * n + Duration::from_secs(2);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()), if i < n => {
                let mut msg = [0u8; 40];
                msg[..4].copy_from_slice(&i.to_be_bytes());
                c.send(&msg).await.unwrap();
                sent_at[i as usize] = Some(Instant::now());
                i += 1;
                next += gap;
            }
            r = c.recv(&mut buf) => {
                let n = r.unwrap();
                assert_eq!(n, 40);
                let k = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
                if let Some(t) = sent_at[k] {
                    rtts.push(t.elapsed());
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => break,
        }
    }
    rtts
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test]
async fn delay_each_way_shows_in_the_round_trip() {
    let imp = Impairment {
        delay_ms: 30.0,
        ..Default::default()
    };
    let (p, _echo) = proxy_to_echo(imp.clone(), imp, 1).await;
    let rtts = ping(p.local_addr(), 300, Duration::from_millis(5)).await;
    assert_eq!(rtts.len(), 300);
    let m = median(rtts);
    // 60 ms of emulated delay; timers on a busy 2-core machine add a little.
    assert!(
        m >= Duration::from_millis(60) && m < Duration::from_millis(70),
        "median round trip {m:?}"
    );
    let r = p.stop().await;
    assert_eq!(r.forward.delivered_pkts, 300);
    assert_eq!(r.backward.delivered_pkts, 300);
    let f50 = r.forward.owd_p50_ms.unwrap();
    assert!((f50 - 30.0).abs() < 0.1, "{f50}");
}

#[tokio::test]
async fn loss_both_ways_compounds() {
    let imp = Impairment {
        loss_pct: 10.0,
        ..Default::default()
    };
    let (p, _echo) = proxy_to_echo(imp.clone(), imp, 4).await;
    let rtts = ping(p.local_addr(), 2000, Duration::from_micros(500)).await;
    let r = p.stop().await;
    // What came back is what both links let through, give or take a datagram the kernel
    // dropped from a full socket buffer on this shared test runtime.
    let close = |a: u64, b: u64| a.abs_diff(b) <= 10;
    assert!(close(rtts.len() as u64, r.backward.delivered_pkts));
    assert!(close(r.forward.delivered_pkts, r.backward.offered_pkts));
    let got = rtts.len() as f64 / 2000.0;
    assert!((got - 0.81).abs() < 0.03, "round trips completed: {got}");
    assert!(
        (r.forward.loss_pct - 10.0).abs() < 2.0,
        "{}",
        r.forward.loss_pct
    );
}

#[tokio::test]
async fn a_rate_limit_paces_a_burst() {
    // 400 kbit/s forward: 100 pings of 40 B (+28 B headers) take 136 ms to get through.
    let fwd = Impairment {
        rate_kbps: Some(400.0),
        ..Default::default()
    };
    let (p, _echo) = proxy_to_echo(fwd, Impairment::default(), 1).await;
    let rtts = ping(p.local_addr(), 100, Duration::ZERO).await;
    assert_eq!(rtts.len(), 100);
    let last = *rtts.iter().max().unwrap();
    assert!(
        last >= Duration::from_millis(130) && last < Duration::from_millis(200),
        "last of the burst back after {last:?}"
    );
    let _ = p.stop().await;
}

#[tokio::test]
async fn invalid_impairments_are_refused_before_binding() {
    let bad = Impairment {
        loss_pct: 150.0,
        ..Default::default()
    };
    let err = Proxy::start(ProxyConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        upstream: "127.0.0.1:9".parse().unwrap(),
        forward: Direction {
            impairment: bad,
            capacity: Capacity::Unlimited,
        },
        backward: Direction::clean(),
        seed: 1,
    })
    .await
    .err()
    .expect("refused");
    assert!(err.to_string().contains("loss_pct"), "{err}");
}

#[test]
fn every_built_in_scenario_parses_and_bad_files_say_what_is_wrong() {
    for (name, _) in BUILT_IN {
        let s = Scenario::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&s.name, name);
    }
    let s = Scenario::load("rfc8867-5.1").unwrap();
    assert_eq!(s.forward.delay_ms, 50.0);
    assert_eq!(s.forward.queue_ms, Some(300.0));
    assert_eq!(s.forward.capacity.len(), 4);
    assert!(matches!(
        s.forward.capacity(&s.base).unwrap(),
        Capacity::Steps(_)
    ));
    let cell = Scenario::load("cellular").unwrap();
    assert!(matches!(
        cell.forward.capacity(&cell.base).unwrap(),
        Capacity::Trace { .. }
    ));
    let nat = Scenario::load("symmetric-nat").unwrap();
    let links = nat.access_links().unwrap();
    assert_eq!(links.len(), 3);
    assert_eq!(
        links[0].0.impairment.delay_ms, 20.0,
        "a's uplink is [forward]"
    );
    assert_eq!(links[1].1.impairment.delay_ms, 20.0, "b's own downlink");
    assert_eq!(
        links[2].0.impairment.delay_ms, 0.0,
        "the relay's link is clean"
    );
    let base = std::path::Path::new(".");
    let e = Scenario::parse("name = \"x\"\n[forward]\ndelay = 5\n", base).unwrap_err();
    assert!(e.contains("unknown field `delay`"), "{e}");
    let e = Scenario::parse(
        "name = \"x\"\n[forward]\nrate_kbps = 100\ntrace = \"t\"\n",
        base,
    )
    .unwrap_err();
    assert!(e.contains("only one of"), "{e}");
    let e =
        Scenario::parse("name = \"x\"\n[backward]\ntrace = \"missing.mahi\"\n", base).unwrap_err();
    assert!(e.contains("[backward] cannot read trace"), "{e}");
    let e = Scenario::load("no-such-scenario").unwrap_err();
    assert!(e.contains("built in: rfc8867-5.1"), "{e}");
}
