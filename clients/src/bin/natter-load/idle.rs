//! `idle`: server memory per idle authenticated socket.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use natter_client::protocol::ServerFrame;
use natter_client::protocol::codec::Encoding;
use natter_client::{ConnectOptions, Connection, Event, HttpClient};

use crate::{register_many, rss_kib};

pub fn parse_sources(s: &str) -> Result<Vec<IpAddr>> {
    let (a, b) = s.split_once('-').context("--sources is A-B, e.g. 2-17")?;
    let (a, b): (u8, u8) = (a.trim().parse()?, b.trim().parse()?);
    if a == 0 || a > b {
        bail!("--sources {s}: need 1 <= A <= B <= 255");
    }
    Ok((a..=b)
        .map(|x| IpAddr::V4(Ipv4Addr::new(127, 0, 0, x)))
        .collect())
}

pub async fn idle(
    http: &HttpClient,
    encoding: Encoding,
    counts: &[usize],
    pid: u32,
    sources: &str,
    concurrency: usize,
    settle: Duration,
) -> Result<()> {
    let sources = parse_sources(sources)?;
    let total = counts.iter().copied().max().unwrap_or(0);
    let users = register_many(http, total, 64, "idle").await?;
    // Let registration's transient allocations settle before the baseline.
    tokio::time::sleep(settle).await;
    let baseline = rss_kib(pid)?;
    eprintln!("server RSS before sockets: {baseline} KiB");
    let mut conns: Vec<Connection> = Vec::with_capacity(total);
    let mut figures = Vec::new();
    let mut sorted: Vec<usize> = counts.to_vec();
    sorted.sort_unstable();
    for target in sorted {
        let started = Instant::now();
        let mut jobs = FuturesUnordered::new();
        let mut next = conns.len();
        while conns.len() < target {
            while next < target && jobs.len() < concurrency {
                let opts = ConnectOptions {
                    encoding,
                    bind: Some(sources[next % sources.len()]),
                    ..Default::default()
                };
                let url = http.ws_url();
                let token = users[next].token.clone();
                jobs.push(async move {
                    let mut c = Connection::connect(&url, &token, opts).await?;
                    // Authenticated and its (empty) queue drained: the socket is now idle.
                    match c.next_event().await {
                        Some(Event::Frame(ServerFrame::QueueEmpty {})) => Ok(c),
                        other => Err(anyhow::anyhow!("expected queue_empty, got {other:?}")),
                    }
                });
                next += 1;
            }
            let c = jobs.next().await.expect("jobs pending")?;
            conns.push(c);
        }
        eprintln!(
            "{target} sockets connected in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        tokio::time::sleep(settle).await;
        let rss = rss_kib(pid)?;
        let per = (rss.saturating_sub(baseline)) as f64 / target as f64;
        println!(
            "idle connections={target} server_rss_kib={rss} baseline_kib={baseline} kib_per_conn={per:.2}"
        );
        figures.push((target, per));
    }
    let (n, per) = figures.last().copied().unwrap_or((0, 0.0));
    println!("idle_kib_per_conn={per:.2} connections={n}");
    drop(conns);
    Ok(())
}
