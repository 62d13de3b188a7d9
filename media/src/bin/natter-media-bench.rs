//! One process carrying N simultaneous 1:1 audio calls, both ends of each, on loopback: the
//! CPU one call costs on natter-media (str0m, Opus both ways, SRTP, TWCC, the tokio shell).
//!
//! Last line: `calls=N seconds=S cpu_s=C calls_per_core=N cpu_us_per_packet=N decoded_pct_min=N`
//! where a packet is one audio packet (a 20 ms Opus frame) sent, and received and decoded at
//! the other end; RTCP, TWCC feedback and padding are part of the cost, not of the count.

use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_media::audio::AudioSource;
use natter_media::{MediaOptions, MediaSession};

fn usage() -> ! {
    eprintln!(
        "usage: natter-media-bench [CALLS] [SECONDS] [--no-red]\n\
         Places CALLS (default 20) audio calls, both ends in this process, on 127.0.0.1, \
         lets them run SECONDS (default 20), and prints the CPU they took. --no-red offers \
         no RED (each packet then carries one frame, not two)."
    );
    std::process::exit(2)
}

/// User + system CPU time of this process, from /proc (10 ms resolution).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ")".
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn opts(mine: f32, theirs: f32, red: bool) -> MediaOptions {
    MediaOptions {
        red,
        source: AudioSource::Tone { freq: mine },
        expect_tone: Some(theirs),
        udp_bind: vec!["127.0.0.1:0".to_owned()],
        ..MediaOptions::default()
    }
}

async fn connect(red: bool) -> Result<(Arc<MediaSession>, Arc<MediaSession>), String> {
    let a = MediaSession::new(&[], opts(440.0, 660.0, red))
        .await
        .map_err(|e| e.to_string())?;
    let b = MediaSession::new(&[], opts(660.0, 440.0, red))
        .await
        .map_err(|e| e.to_string())?;
    let offer = a.create_offer().await.map_err(|e| e.to_string())?;
    let answer = b.accept_offer(&offer).await.map_err(|e| e.to_string())?;
    a.set_answer(&answer).await.map_err(|e| e.to_string())?;
    let (mut ca, mut cb) = (a.take_candidates().unwrap(), b.take_candidates().unwrap());
    let (a, b) = (Arc::new(a), Arc::new(b));
    let (ta, tb) = (a.clone(), b.clone());
    tokio::spawn(async move {
        while let Some(c) = ca.recv().await {
            let _ = tb.add_candidate(c).await;
        }
    });
    tokio::spawn(async move {
        while let Some(c) = cb.recv().await {
            let _ = ta.add_candidate(c).await;
        }
    });
    a.wait_connected(Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?;
    b.wait_connected(Duration::from_secs(20))
        .await
        .map_err(|e| e.to_string())?;
    a.start_sending().await.map_err(|e| e.to_string())?;
    b.start_sending().await.map_err(|e| e.to_string())?;
    Ok((a, b))
}

fn packets_sent(calls: &[(Arc<MediaSession>, Arc<MediaSession>)]) -> u64 {
    calls
        .iter()
        .map(|(a, b)| a.stats().frames_sent + b.stats().frames_sent)
        .sum()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let red = !args.iter().any(|a| a == "--no-red");
    args.retain(|a| a != "--no-red");
    if args.iter().any(|a| a == "-h" || a == "--help") || args.len() > 2 {
        usage();
    }
    let n: usize = args
        .first()
        .map_or(Ok(20), |a| a.parse())
        .unwrap_or_else(|_| usage());
    let secs: u64 = args
        .get(1)
        .map_or(Ok(20), |a| a.parse())
        .unwrap_or_else(|_| usage());
    if n == 0 || n > 2000 || secs == 0 || secs > 3600 {
        usage();
    }
    let mut calls = Vec::with_capacity(n);
    for i in 0..n {
        match connect(red).await {
            Ok(c) => calls.push(c),
            Err(e) => {
                eprintln!("call {i} did not connect: {e}");
                std::process::exit(1);
            }
        }
    }
    // Let the estimators and pacers settle, then measure a steady window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (p0, c0, t0) = (packets_sent(&calls), cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let (p1, c1, t1) = (packets_sent(&calls), cpu_time(), Instant::now());
    let cpu = (c1 - c0).as_secs_f64();
    let wall = (t1 - t0).as_secs_f64();
    let packets = p1.saturating_sub(p0).max(1);
    let decoded_min = calls
        .iter()
        .flat_map(|(a, b)| [a.stats().decoded_pct(), b.stats().decoded_pct()])
        .fold(100.0f64, f64::min);
    for (a, b) in &calls {
        a.close().await;
        b.close().await;
    }
    let per_core = if cpu > 0.0 {
        n as f64 * wall / cpu
    } else {
        0.0
    };
    println!(
        "calls={n} seconds={wall:.1} cpu_s={cpu:.2} calls_per_core={per_core:.0} cpu_us_per_packet={:.1} decoded_pct_min={decoded_min:.1}",
        cpu * 1e6 / packets as f64
    );
}
