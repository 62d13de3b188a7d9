//! A WebRTC receiver with natter's receive settings, for senders that are not natter: it
//! answers one SDP offer (a browser's), receives its audio and video (sending TWCC
//! feedback, NACKs and receiver reports as a natter call's receiver does) and prints what
//! arrived each second. `scripts/bwe-eval` puts Chromium's sender in front of it.
//!
//! Signalling is on stdin/stdout, so whoever starts it relays: the offer comes in as SDP
//! lines ended by an empty line, the answer goes out the same way. ICE-lite on one UDP
//! socket: the browser, full ICE, finds it from the host candidate in the answer.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_media::session::dtls::crypto_provider;
use natter_media::session::{VIDEO_REORDER_PACKETS, VIDEO_RTCP_INTERVAL};
use natter_media::str0m::change::SdpOffer;
use natter_media::str0m::media::MediaKind;
use natter_media::str0m::net::{Protocol, Receive};
use natter_media::str0m::{Candidate, Event, IceConnectionState, Input, Output, RtcConfig};

fn usage() -> ! {
    eprintln!(
        "usage: natter-webrtc-sink --listen IP:PORT [--duration SECS]\n\
         Reads an SDP offer on stdin (ended by an empty line), prints the answer on stdout \
         (the same way), receives the offered audio and video on a UDP socket at IP:PORT \
         (a host candidate; ICE-lite), and prints each second on stderr what arrived: \
         `t_s=… rx_kbps=… video_kbps=… audio_kbps=… frames=… nacks_sent=… plis_sent=… \
         loss_pct=… rtt_ms=…`. Stops after SECS (default 120) or when the peer goes."
    );
    std::process::exit(2)
}

/// An offer larger than this is refused (a browser's audio+video offer is ~5 KiB).
const MAX_SDP_BYTES: usize = 64 * 1024;

/// Reads SDP lines up to an empty line (or the end of input).
fn read_sdp(input: &mut impl BufRead) -> std::io::Result<String> {
    let mut sdp = String::new();
    // Bounded as a whole, so one endless line cannot grow it either.
    for line in input.take(MAX_SDP_BYTES as u64 + 1).lines() {
        let line = line?;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if sdp.len() + line.len() > MAX_SDP_BYTES {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the offer runs past {MAX_SDP_BYTES} bytes"),
            ));
        }
        sdp.push_str(line);
        sdp.push_str("\r\n");
    }
    Ok(sdp)
}

/// What arrived since the last line.
#[derive(Default)]
struct Second {
    video_bytes: u64,
    audio_bytes: u64,
    frames: u64,
}

fn main() {
    let mut listen: Option<SocketAddr> = None;
    let mut duration = Duration::from_secs(120);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().and_then(|v| v.parse().ok()),
            "--duration" => {
                let secs: u64 = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage());
                duration = Duration::from_secs(secs);
            }
            _ => usage(),
        }
    }
    let Some(listen) = listen else { usage() };
    if let Err(e) = run(listen, duration) {
        eprintln!("natter-webrtc-sink: {e}");
        std::process::exit(1);
    }
}

fn run(listen: SocketAddr, duration: Duration) -> Result<(), String> {
    let socket = UdpSocket::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    let local = socket.local_addr().map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut rtc = RtcConfig::new()
        .set_crypto_provider(Arc::new(crypto_provider()))
        .set_ice_lite(true)
        .clear_codecs()
        .enable_opus(true, true)
        .enable_vp8(true)
        .set_reordering_size_video(VIDEO_REORDER_PACKETS)
        .set_rtcp_report_interval_video(VIDEO_RTCP_INTERVAL)
        .set_stats_interval(Some(Duration::from_secs(1)))
        .build(start);
    let host = Candidate::host(local, "udp").map_err(|e| e.to_string())?;
    rtc.add_local_candidate(host);

    let offer = read_sdp(&mut std::io::stdin().lock()).map_err(|e| e.to_string())?;
    let offer = SdpOffer::from_sdp_string(&offer).map_err(|e| format!("the offer: {e}"))?;
    let answer = rtc
        .sdp_api()
        .accept_offer(offer)
        .map_err(|e| format!("the offer: {e}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", answer.to_sdp_string()).map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    drop(out);

    let mut buf = vec![0u8; 2000];
    let mut second = Second::default();
    let mut kinds = std::collections::HashMap::new();
    let mut ingress: std::collections::HashMap<_, (u64, u64, f32, Option<Duration>)> =
        std::collections::HashMap::new();
    let mut next_line = start + Duration::from_secs(1);
    let end = start + duration;
    loop {
        let timeout = loop {
            match rtc.poll_output().map_err(|e| e.to_string())? {
                Output::Timeout(t) => break t,
                Output::Transmit(t) => {
                    let _ = socket.send_to(&t.contents, t.destination);
                }
                Output::Event(e) => match e {
                    Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                        return Ok(());
                    }
                    Event::MediaAdded(m) => {
                        kinds.insert(m.mid, m.kind);
                    }
                    Event::MediaData(d) => match kinds.get(&d.mid) {
                        Some(MediaKind::Video) => {
                            second.video_bytes += d.data.len() as u64;
                            second.frames += 1;
                        }
                        _ => second.audio_bytes += d.data.len() as u64,
                    },
                    Event::MediaIngressStats(s) => {
                        let e = ingress.entry((s.mid, s.rid)).or_default();
                        *e = (s.nacks, s.plis, s.loss.unwrap_or(0.0), s.rtt);
                    }
                    _ => {}
                },
            }
        };
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        if now >= next_line {
            let nacks: u64 = ingress.values().map(|v| v.0).sum();
            let plis: u64 = ingress.values().map(|v| v.1).sum();
            let loss = ingress.values().map(|v| v.2).fold(0.0f32, f32::max);
            let rtt = ingress.values().filter_map(|v| v.3).max();
            let kbps = |b: u64| b * 8 / 1000;
            eprintln!(
                "t_s={} rx_kbps={} video_kbps={} audio_kbps={} frames={} nacks_sent={nacks} \
                 plis_sent={plis} loss_pct={:.1} rtt_ms={}",
                (now - start).as_secs(),
                kbps(second.video_bytes + second.audio_bytes),
                kbps(second.video_bytes),
                kbps(second.audio_bytes),
                second.frames,
                loss * 100.0,
                rtt.map_or("none".into(), |r| r.as_millis().to_string()),
            );
            second = Second::default();
            next_line += Duration::from_secs(1);
        }
        let wait = timeout
            .min(next_line)
            .min(end)
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        socket
            .set_read_timeout(Some(wait))
            .map_err(|e| e.to_string())?;
        let input = match socket.recv_from(&mut buf) {
            Ok((n, from)) => match Receive::new(Protocol::Udp, from, local, &buf[..n]) {
                Ok(r) => Input::Receive(Instant::now(), r),
                Err(_) => continue,
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Input::Timeout(Instant::now())
            }
            Err(e) => return Err(format!("receive: {e}")),
        };
        rtc.handle_input(input).map_err(|e| e.to_string())?;
    }
}
