//! A UDP probe for measuring links: a paced sender stamping each datagram with a sequence
//! number and its send time (CLOCK_MONOTONIC, shared by every namespace on the machine),
//! and a sink that reports rate, loss and one-way delay.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use serde::Serialize;

const HEADER: usize = 16;

fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Debug, Clone, Serialize)]
pub struct BlastReport {
    pub sent: u64,
    pub bytes: u64,
    pub secs: f64,
    pub mbit_s: f64,
}

/// Sends `size`-byte datagrams to `to` for `secs`, at `mbit_s` (0: as fast as possible).
pub fn blast(to: SocketAddr, size: usize, mbit_s: f64, secs: f64) -> std::io::Result<BlastReport> {
    let size = size.clamp(HEADER, 65_000);
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let s = UdpSocket::bind(bind)?;
    s.connect(to)?;
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let gap = if mbit_s > 0.0 {
        Some(Duration::from_secs_f64(size as f64 * 8.0 / (mbit_s * 1e6)))
    } else {
        None
    };
    let mut next = start;
    let mut seq = 0u64;
    let mut bytes = 0u64;
    while Instant::now() < end {
        if let Some(g) = gap {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            next += g;
        }
        buf[..8].copy_from_slice(&seq.to_be_bytes());
        buf[8..16].copy_from_slice(&mono_ns().to_be_bytes());
        match s.send(&buf) {
            Ok(_) => {
                seq += 1;
                bytes += size as u64;
            }
            // No route yet or a full buffer: try again shortly.
            Err(_) => std::thread::sleep(Duration::from_micros(50)),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(BlastReport {
        sent: seq,
        bytes,
        secs,
        mbit_s: bytes as f64 * 8.0 / secs / 1e6,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct SinkReport {
    pub received: u64,
    /// Highest sequence number seen + 1, minus what arrived (duplicates ignored).
    pub lost: u64,
    pub loss_pct: f64,
    pub bytes: u64,
    /// From the first to the last datagram.
    pub secs: f64,
    pub mbit_s: f64,
    pub owd_p50_ms: f64,
    pub owd_p99_ms: f64,
}

/// Receives on `listen` until `secs` pass or the flow has been idle for `idle` after it
/// started.
pub fn sink(listen: SocketAddr, secs: f64, idle: Duration) -> std::io::Result<SinkReport> {
    let s = UdpSocket::bind(listen)?;
    s.set_read_timeout(Some(Duration::from_millis(100)))?;
    let _ = socket_rcvbuf(&s, 8 << 20);
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut buf = vec![0u8; 65_536];
    let mut seen = std::collections::HashSet::new();
    let mut max_seq = 0u64;
    let mut owd = Vec::new();
    let (mut first, mut last) = (None, None);
    let mut bytes = 0u64;
    while Instant::now() < deadline {
        if let Some(l) = last
            && Instant::now().duration_since(l) > idle
        {
            break;
        }
        let n = match s.recv(&mut buf) {
            Ok(n) => n,
            Err(_) => continue,
        };
        let now = Instant::now();
        if n < HEADER {
            continue;
        }
        let seq = u64::from_be_bytes(buf[..8].try_into().expect("8 bytes"));
        let sent = u64::from_be_bytes(buf[8..16].try_into().expect("8 bytes"));
        if !seen.insert(seq) {
            continue;
        }
        max_seq = max_seq.max(seq + 1);
        owd.push(mono_ns().saturating_sub(sent));
        bytes += n as u64;
        first.get_or_insert(now);
        last = Some(now);
    }
    owd.sort_unstable();
    let q = |p: f64| {
        owd.get(((owd.len() as f64 * p) as usize).min(owd.len().saturating_sub(1)))
            .map(|v| *v as f64 / 1e6)
            .unwrap_or(0.0)
    };
    let received = seen.len() as u64;
    let secs = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f).as_secs_f64(),
        _ => 0.0,
    };
    Ok(SinkReport {
        received,
        lost: max_seq.saturating_sub(received),
        loss_pct: if max_seq > 0 {
            (max_seq - received) as f64 * 100.0 / max_seq as f64
        } else {
            0.0
        },
        bytes,
        secs,
        mbit_s: if secs > 0.0 {
            bytes as f64 * 8.0 / secs / 1e6
        } else {
            0.0
        },
        owd_p50_ms: q(0.5),
        owd_p99_ms: q(0.99),
    })
}

fn socket_rcvbuf(s: &UdpSocket, bytes: i32) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: setsockopt reads one int.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}
