//! Two sans-IO media sessions joined by a simulated link in virtual time: every datagram
//! crosses it with a seeded random loss and a fixed one-way delay. Deterministic for a
//! seed, and a minute of call takes seconds.

use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use natter_media::ice_servers::Servers;
use natter_media::session::{Session, SessionEvent, Via};
use natter_media::{CallStats, MediaOptions, VideoOptions};

/// A datagram due at the far end.
struct InFlight {
    at: Instant,
    seq: u64,
    to: usize,
    from: SocketAddr,
    local: SocketAddr,
    bytes: Vec<u8>,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Earliest first out of a max-heap.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}

/// xorshift64*: the link's loss draws.
struct Rng(u64);
impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

pub struct Link {
    pub loss: f64,
    pub delay: Duration,
    pub seed: u64,
}

/// What one call came to.
struct Outcome {
    stats: [CallStats; 2],
    /// Datagrams the link dropped.
    dropped: u64,
    /// From the offer to both sides connected, in virtual time.
    setup: Duration,
}

/// Runs a call of `length` after connecting.
fn call(link: &Link, opts: [MediaOptions; 2], length: Duration) -> Outcome {
    let t0 = Instant::now();
    let addrs: [SocketAddr; 2] = [
        "10.0.0.1:5000".parse().unwrap(),
        "10.0.0.2:5000".parse().unwrap(),
    ];
    let none = Servers::default();
    let [oa, ob] = opts;
    let mut s = [
        Session::new(oa, &none, &addrs[..1], t0).unwrap(),
        Session::new(ob, &none, &addrs[1..], t0).unwrap(),
    ];
    let offer = s[0].create_offer(t0).unwrap();
    let answer = s[1].accept_offer(&offer, t0).unwrap();
    s[0].set_answer(&answer, t0).unwrap();
    let mut rng = Rng(link.seed | 1);
    let mut wire = BinaryHeap::new();
    let (mut seq, mut dropped) = (0u64, 0u64);
    let mut now = t0;
    let mut sending = false;
    let mut setup = Duration::ZERO;
    let mut end = t0 + Duration::from_secs(10);
    let mut next_trace = t0;
    while now < end {
        for i in 0..2 {
            while let Some(e) = s[i].poll_event() {
                if let SessionEvent::LocalCandidate(c) = e {
                    s[1 - i].add_remote_candidate(&c, now).unwrap();
                }
            }
            while let Some(t) = s[i].poll_transmit() {
                let Via::Udp { from, to } = t.via else {
                    panic!("no TURN here")
                };
                assert_eq!(to, addrs[1 - i]);
                if rng.unit() < link.loss {
                    dropped += 1;
                    continue;
                }
                seq += 1;
                wire.push(InFlight {
                    at: now + link.delay,
                    seq,
                    to: 1 - i,
                    from,
                    local: to,
                    bytes: t.bytes,
                });
            }
        }
        if !sending
            && s.iter()
                .all(|x| x.state() == natter_media::MediaState::Connected)
        {
            sending = true;
            setup = now - t0;
            for x in &mut s {
                x.start_sending(now).unwrap();
            }
            end = now + length;
        }
        if std::env::var_os("LOSSY_TRACE").is_some() && now >= next_trace {
            next_trace = now + Duration::from_secs(1);
            let st = s[0].stats();
            if let Some(v) = st.video {
                eprintln!(
                    "t={:>5.1}s rendered={} freezes={} playout={} p95={:?} target_kbps={} est={:?} rtt={:?}",
                    (now - t0).as_secs_f64(),
                    v.video_frames_rendered,
                    v.video_freezes,
                    v.video_playout_delay_ms,
                    v.video_delay_ms_p95,
                    s[1].stats().video.map_or(0, |v| v.video_target_kbps),
                    s[1].stats().transport.send_estimate_kbps,
                    st.transport.rtt_ms
                );
            }
        }
        let next_timer = s.iter().filter_map(|x| x.poll_timeout()).min();
        let next_wire = wire.peek().map(|d: &InFlight| d.at);
        let next = [next_timer, next_wire, Some(end)]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        now = next.max(now);
        while wire.peek().is_some_and(|d| d.at <= now) {
            let d = wire.pop().unwrap();
            s[d.to].handle_datagram(d.local, d.from, &d.bytes, now);
        }
        for x in &mut s {
            if x.poll_timeout().is_some_and(|t| t <= now) {
                x.handle_timeout(now);
            }
        }
    }
    assert!(sending, "the sessions connected");
    Outcome {
        stats: [s[0].stats(), s[1].stats()],
        dropped,
        setup,
    }
}

/// The loss draws' seed: `LOSSY_SEED` if set, else the test's own.
fn seed_or(default: u64) -> u64 {
    std::env::var("LOSSY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn video_opts() -> MediaOptions {
    MediaOptions {
        video: Some(VideoOptions {
            width: 320,
            height: 240,
            fps: 30,
            bitrate_kbps: 400,
        }),
        ..MediaOptions::default()
    }
}

/// Four minutes of video behind 5 % loss each way: NACK/RTX (and a keyframe when that is
/// not enough) repair it and the playout delay absorbs the repairs: at most one freeze a
/// minute, counted over both sides' eight minutes. Freezes come from the rare packet that
/// needs four repair rounds, about 0.3 a minute (docs/benchmarks.md): one side's count over
/// two minutes was too small a sample (3 where 2 was allowed happened about one run in 25),
/// so the rate is taken over a sample where a real regression still shows.
/// `LOSSY_SEED=N` picks other loss draws.
#[test]
fn video_behind_5_pct_loss_is_repaired() {
    let link = Link {
        loss: 0.05,
        delay: Duration::from_millis(20),
        seed: seed_or(7),
    };
    let Outcome {
        stats: [a, b],
        dropped,
        ..
    } = call(
        &link,
        [video_opts(), video_opts()],
        Duration::from_secs(240),
    );
    assert!(dropped > 2000, "the link lost {dropped} datagrams");
    println!(
        "freezes_a={} freezes_b={}",
        a.video.as_ref().unwrap().video_freezes,
        b.video.as_ref().unwrap().video_freezes
    );
    for (name, s) in [("a", &a), ("b", &b)] {
        let v = s.video.as_ref().unwrap();
        eprintln!("{name}: {v:?}\n  {:?}", s.transport);
        assert!(v.video_frames_sent >= 7000, "{name}: {v:?}");
        assert!(
            v.video_nacks_sent > 0,
            "{name} asked for retransmissions: {v:?}"
        );
        assert!(v.rendered_pct() >= 95.0, "{name}: {v:?}");
    }
    let freezes = a.video.as_ref().unwrap().video_freezes + b.video.as_ref().unwrap().video_freezes;
    assert!(
        freezes <= 8,
        "{freezes} freezes in 8 side-minutes: more than one a minute"
    );
}

/// Call setup behind 5 % loss each way, 40 times over: ICE checks and the DTLS flights
/// (one of them a certificate in several datagrams) each cross the lossy link, and a lost
/// flight waits for a retransmission timer. With dimpl's default first timeout (1 s) the
/// p95 was over a second; starting at 250 ms it stays well under one.
#[test]
fn setup_behind_5_pct_loss_is_quick() {
    let mut setups: Vec<Duration> = (0..40)
        .map(|seed| {
            let link = Link {
                loss: 0.05,
                delay: Duration::from_millis(20),
                seed: 1000 + seed,
            };
            call(&link, Default::default(), Duration::ZERO).setup
        })
        .collect();
    setups.sort();
    let (p50, p95) = (setups[19], setups[37]);
    println!(
        "setup_ms_p50={} setup_ms_p95={}",
        p50.as_millis(),
        p95.as_millis()
    );
    assert!(p95 < Duration::from_millis(800), "{setups:?}");
}

/// A minute of audio behind 10 % loss each way (what a relayed call behind 5 % each way
/// sees: every packet crosses the lossy link twice): RED carries each frame twice, so a
/// frame is lost only when two packets in a row are, about 1 % of them.
#[test]
fn audio_behind_10_pct_loss_is_repaired_by_red() {
    let link = Link {
        loss: 0.10,
        delay: Duration::from_millis(20),
        seed: seed_or(11),
    };
    let Outcome {
        stats: [a, b],
        dropped,
        ..
    } = call(&link, Default::default(), Duration::from_secs(60));
    assert!(dropped > 500, "the link lost {dropped} datagrams");
    for (name, s) in [("a", &a), ("b", &b)] {
        println!(
            "{name}: decoded_pct={:.2} loss_before_repair_pct={:.2} loss_after_repair_pct={:.2}",
            s.decoded_pct(),
            s.transport.loss_before_repair_pct,
            s.loss_after_repair_pct()
        );
        assert!(s.transport.loss_before_repair_pct > 5.0, "{name}: {s:?}");
        assert!(s.loss_after_repair_pct() < 3.0, "{name}: {s:?}");
        assert!(s.decoded_pct() >= 97.0, "{name}: {s:?}");
    }
}
