//! `natter-load sfu`: a group call's worth of WebRTC participants in one process, against a
//! standalone natter-sfu (over its control link, with room tokens minted from the shared
//! secret) or a Janus VideoRoom (`janus.rs`; there a participant is two connections, a
//! publisher's and a subscriber's, as VideoRoom has it). Each participant is a str0m `Rtc` on its own UDP socket that publishes Opus-sized
//! audio frames (and, for the first `--video`, VP8 frames encoded once at start and replayed)
//! and receives every other participant's tracks.
//!
//! Each audio frame carries its publisher, number and send time, so every subscriber counts
//! what arrived of each publisher's frames sent in the measured window, the gaps (a freeze:
//! over 100 ms without a frame from a publisher) and the time from send to receipt (both
//! ends in this process: the SFU's part plus two trips through the kernel).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use natter_media::str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use natter_media::str0m::format::Codec;
use natter_media::str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use natter_media::str0m::net::{Protocol, Receive};
use natter_media::str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};
use natter_media::video::{EncoderSettings, Stamp, TestPattern, Vp8Encoder};
use serde_json::{Value, json};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::janus::Janus;
use crate::stamped;

/// What `natter-load sfu` is asked to do.
#[derive(Debug, Clone)]
pub struct SfuLoad {
    pub target: Target,
    pub participants: usize,
    pub video: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub bind: IpAddr,
    pub sfu_pid: Option<u32>,
}

/// The SFU under load.
#[derive(Debug, Clone)]
pub enum Target {
    /// natter-sfu, over its control link, with room tokens minted from the shared secret.
    Natter {
        control: String,
        secret: String,
        room: String,
    },
    /// A Janus VideoRoom, over Janus's HTTP API (e.g. `http://10.77.0.2:8088/janus`).
    Janus { url: String },
}

/// A VideoRoom made for this run, and the publishers' feed ids by participant.
struct JanusRoom {
    janus: Arc<Janus>,
    number: u64,
    feeds: Mutex<HashMap<usize, u64>>,
}

enum Backend {
    Natter(Arc<Control>, String, String),
    Janus(Arc<JanusRoom>),
}

const AUDIO_FRAME: Duration = Duration::from_millis(20);
const AUDIO_BYTES: usize = 60;
const VIDEO_FPS: u32 = 15;
const FREEZE: Duration = Duration::from_millis(100);

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn since_epoch_us(t: Instant) -> u64 {
    t.duration_since(epoch()).as_micros() as u64
}

/// The control link: requests answered by number, notices routed by participant.
struct Control {
    out: mpsc::UnboundedSender<String>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    routes: Mutex<HashMap<u64, mpsc::UnboundedSender<Value>>>,
    /// Notices for a participant whose join reply has not been read yet.
    early: Mutex<HashMap<u64, Vec<Value>>>,
    next: AtomicU64,
}

impl Control {
    async fn connect(url: &str, secret: &str) -> Result<Arc<Control>> {
        let mut req = url.into_client_request().context("control URL")?;
        let key = natter_signaling::room_token::control_key(secret.as_bytes());
        req.headers_mut()
            .insert("authorization", format!("Bearer {key}").parse()?);
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .with_context(|| format!("cannot open the SFU's control link {url}"))?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let ctl = Arc::new(Control {
            out,
            pending: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            early: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        });
        tokio::spawn(async move {
            while let Some(t) = out_rx.recv().await {
                if sink.send(Message::Text(t.into())).await.is_err() {
                    return;
                }
            }
        });
        let reader = ctl.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&t) else {
                    continue;
                };
                reader.dispatch(v);
            }
            eprintln!("natter-load: the SFU's control link closed");
        });
        Ok(ctl)
    }

    fn dispatch(&self, v: Value) {
        if let Some(req) = v.get("req").and_then(Value::as_u64) {
            if let Some(tx) = self.pending.lock().unwrap().remove(&req) {
                let _ = tx.send(v);
            }
            return;
        }
        let Some(p) = v.get("participant").and_then(Value::as_u64) else {
            return;
        };
        match self.routes.lock().unwrap().get(&p) {
            Some(tx) => {
                let _ = tx.send(v);
            }
            None => self.early.lock().unwrap().entry(p).or_default().push(v),
        }
    }

    async fn request(&self, mut v: Value) -> Result<Value> {
        let req = self.next.fetch_add(1, Ordering::Relaxed);
        v["req"] = json!(req);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(req, tx);
        self.out
            .send(v.to_string())
            .map_err(|_| anyhow!("control link closed"))?;
        let r = tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .context("the SFU did not answer within 20 s")??;
        if r["op"] == "refused" {
            bail!("refused: {} {}", r["code"], r["message"]);
        }
        Ok(r)
    }

    fn notify(&self, v: Value) {
        let _ = self.out.send(v.to_string());
    }

    fn register(&self, participant: u64) -> mpsc::UnboundedReceiver<Value> {
        let (tx, rx) = mpsc::unbounded_channel();
        for v in self
            .early
            .lock()
            .unwrap()
            .remove(&participant)
            .unwrap_or_default()
        {
            let _ = tx.send(v);
        }
        self.routes.lock().unwrap().insert(participant, tx);
        rx
    }
}

/// What one participant measured.
#[derive(Default)]
struct Report {
    /// Audio frames it sent with a send time in the window.
    sent: u64,
    /// Per publisher: frames received that were sent in the window.
    received: HashMap<u16, u64>,
    freezes: u64,
    video_frames: u64,
    /// RTP packets of those frames.
    video_packets: u64,
    latency_us: Option<Histogram<u64>>,
    connected: bool,
}

impl Report {
    /// Adds what another connection of the same participant measured.
    fn merge(&mut self, o: Report) {
        self.sent += o.sent;
        for (p, n) in o.received {
            *self.received.entry(p).or_default() += n;
        }
        self.freezes += o.freezes;
        self.video_frames += o.video_frames;
        self.video_packets += o.video_packets;
        if let (Some(a), Some(b)) = (self.latency_us.as_mut(), o.latency_us.as_ref()) {
            let _ = a.add(b);
        }
        self.connected &= o.connected;
    }
}

/// Pre-encoded video: a keyframe, then the frames after it, replayed in a loop.
struct Clip {
    frames: Vec<Vec<u8>>,
}

impl Clip {
    fn encode() -> Result<Clip> {
        let (w, h) = (320, 180);
        let mut pattern = TestPattern::new(w, h).map_err(|e| anyhow!("{e}"))?;
        let mut enc = Vp8Encoder::new(EncoderSettings {
            width: w,
            height: h,
            fps: VIDEO_FPS,
            bitrate_kbps: 300,
            temporal_layers: 1,
        })
        .map_err(|e| anyhow!("{e}"))?;
        let mut frames = Vec::new();
        for n in 0..(VIDEO_FPS * 4) {
            let pic = pattern
                .draw(Stamp {
                    frame: n,
                    capture_ms: n * 66,
                })
                .to_vec();
            let pts = i64::from(n) * 6_000;
            if let Some(f) = enc
                .encode(&pic, pts, 6_000, n == 0)
                .map_err(|e| anyhow!("{e}"))?
            {
                frames.push(f.data);
            }
        }
        Ok(Clip { frames })
    }
}

pub async fn run(o: SfuLoad) -> Result<()> {
    let _ = epoch();
    let backend = match &o.target {
        Target::Natter {
            control,
            secret,
            room,
        } => Backend::Natter(
            Control::connect(control, secret).await?,
            secret.clone(),
            room.clone(),
        ),
        Target::Janus { url } => {
            let janus = Janus::connect(url).await?;
            let admin = janus.attach().await?;
            let number = janus.create_room(admin, o.participants + 1).await?;
            Backend::Janus(Arc::new(JanusRoom {
                janus,
                number,
                feeds: Mutex::new(HashMap::new()),
            }))
        }
    };
    let clip = Arc::new(if o.video > 0 {
        Some(Clip::encode()?)
    } else {
        None
    });
    let start = Instant::now();
    // Everyone joins within the warm-up; the window is the same for all.
    let window = (start + o.warmup, start + o.warmup + o.duration);
    let mut tasks = Vec::new();
    for i in 0..o.participants {
        let o2 = o.clone();
        let clip = if i < o.video {
            clip.clone()
        } else {
            Arc::new(None)
        };
        let task = match &backend {
            Backend::Natter(ctl, secret, room) => {
                let (ctl, secret, room) = (ctl.clone(), secret.clone(), room.clone());
                tokio::spawn(async move {
                    natter_participant(i, &ctl, (&secret, &room), &o2, clip, window).await
                })
            }
            Backend::Janus(room) => {
                let room = room.clone();
                tokio::spawn(async move { janus_participant(i, &room, &o2, clip, window).await })
            }
        };
        tasks.push(task);
        // Joins spread out a little, as people arrive.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu0 = wait_until(window.0, o.sfu_pid).await;
    let cpu1 = wait_until(window.1, o.sfu_pid).await;
    let mut reports = Vec::new();
    for t in tasks {
        match t.await? {
            Ok(r) => reports.push(r),
            Err(e) => eprintln!("natter-load: a participant failed: {e:#}"),
        }
    }
    if let Backend::Janus(room) = &backend {
        room.janus.destroy().await;
    }
    let cpu = cpu0
        .zip(cpu1)
        .map(|(a, b)| (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)));
    summarize(&o, &reports, cpu);
    Ok(())
}

/// Sleeps until `t`, then reads the SFU's CPU time (user and system, µs), if its PID is
/// known.
async fn wait_until(t: Instant, pid: Option<u32>) -> Option<(u64, u64)> {
    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
    pid.and_then(|p| crate::cpu_split_us(p).ok())
}

/// `sfu_cpu_us` is the SFU's CPU time in the window, in user space and in the kernel.
fn summarize(o: &SfuLoad, reports: &[Report], sfu_cpu_us: Option<(u64, u64)>) {
    let n = reports.len();
    let sent: HashMap<u16, u64> = reports
        .iter()
        .enumerate()
        .map(|(i, r)| (i as u16, r.sent))
        .collect();
    let mut pcts = Vec::new();
    let (mut expected, mut got, mut freezes, mut video) = (0u64, 0u64, 0u64, 0u64);
    let mut video_packets = 0u64;
    let mut lat = Histogram::<u64>::new(3).expect("histogram");
    for (i, r) in reports.iter().enumerate() {
        let mut e = 0;
        let mut g = 0;
        for (p, s) in &sent {
            if usize::from(*p) == i {
                continue;
            }
            e += s;
            g += r.received.get(p).copied().unwrap_or(0).min(*s);
        }
        if e > 0 {
            pcts.push(g as f64 * 100.0 / e as f64);
        }
        expected += e;
        got += g;
        freezes += r.freezes;
        video += r.video_frames;
        video_packets += r.video_packets;
        if let Some(h) = &r.latency_us {
            let _ = lat.add(h);
        }
    }
    let secs = o.duration.as_secs_f64();
    let min_pct = pcts.iter().copied().fold(f64::INFINITY, f64::min);
    let mean_pct = pcts.iter().sum::<f64>() / pcts.len().max(1) as f64;
    let connected = reports.iter().filter(|r| r.connected).count();
    let audio_out_pps = got as f64 / secs;
    // Everything the subscribers got: audio frames (a packet each) and video packets.
    let out_packets = got + video_packets;
    let video_fps_out = video as f64 / secs;
    let mut line = format!(
        "participants={n} connected={connected} video_publishers={} out_pps={:.0} audio_pps_out={:.0} \
         recv_pct_min={:.2} recv_pct_mean={:.2} loss_pct={:.3} freezes={freezes} \
         video_fps_out={video_fps_out:.1} latency_p50_ms={:.2} latency_p99_ms={:.2}",
        o.video.min(n),
        out_packets as f64 / secs,
        audio_out_pps,
        if min_pct.is_finite() { min_pct } else { 0.0 },
        mean_pct,
        if expected > 0 {
            (expected - got) as f64 * 100.0 / expected as f64
        } else {
            100.0
        },
        lat.value_at_quantile(0.5) as f64 / 1000.0,
        lat.value_at_quantile(0.99) as f64 / 1000.0,
    );
    if let Some((user, system)) = sfu_cpu_us {
        let cpu_s = (user + system) as f64 / 1e6;
        line.push_str(&format!(
            " sfu_cpu_s={cpu_s:.2} sfu_kernel_pct={:.0} out_pps_per_cpu={:.0}",
            system as f64 * 100.0 / (user + system).max(1) as f64,
            out_packets as f64 / cpu_s.max(1e-6)
        ));
    }
    println!("{line}");
}

struct Peer {
    index: u16,
    rtc: Rtc,
    socket: UdpSocket,
    local: SocketAddr,
    /// The tracks it publishes (none on a Janus subscriber's connection).
    audio: Option<Mid>,
    video: Option<Mid>,
    connected: bool,
    next_audio: Instant,
    next_video: Instant,
    audio_n: u32,
    video_n: usize,
    keyframe_next: bool,
    /// Per publisher: when its last frame arrived (for freezes).
    last_from: HashMap<u16, Instant>,
    report: Report,
    /// Told when the connection is up.
    on_connected: Option<oneshot::Sender<()>>,
}

/// A str0m `Rtc` on its own socket, its host candidate added.
async fn new_peer(index: usize, bind: IpAddr) -> Result<Peer> {
    let socket = UdpSocket::bind((bind, 0)).await?;
    stamped::enable(&socket).context("SO_TIMESTAMPNS")?;
    let local = socket.local_addr()?;
    let now = Instant::now();
    let mut rtc = RtcConfig::new()
        .set_crypto_provider(Arc::new(natter_media::session::dtls::crypto_provider()))
        .clear_codecs()
        .enable_opus(true, false)
        .enable_vp8(true)
        .build(now);
    rtc.add_local_candidate(Candidate::host(local, "udp")?);
    Ok(Peer {
        index: index as u16,
        rtc,
        socket,
        local,
        audio: None,
        video: None,
        connected: false,
        next_audio: now,
        next_video: now,
        audio_n: 0,
        video_n: 0,
        keyframe_next: false,
        last_from: HashMap::new(),
        report: Report {
            latency_us: Some(Histogram::new_with_bounds(1, 10_000_000, 3).expect("bounds")),
            ..Default::default()
        },
        on_connected: None,
    })
}

/// A peer publishing audio (and video with a clip), and its offer.
async fn new_publisher(
    index: usize,
    bind: IpAddr,
    video: bool,
) -> Result<(Peer, SdpOffer, SdpPendingOffer)> {
    let mut p = new_peer(index, bind).await?;
    let mut api = p.rtc.sdp_api();
    let audio = api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
    let video =
        video.then(|| api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None));
    let (offer, pending) = api.apply().context("no offer")?;
    p.audio = Some(audio);
    p.video = video;
    Ok((p, offer, pending))
}

/// The SFU's renegotiations of a natter participant's connection, over the control link.
struct Renegotiation<'a> {
    ctl: &'a Control,
    participant: u64,
    notices: mpsc::UnboundedReceiver<Value>,
}

/// A participant of natter's SFU: one connection that publishes and subscribes.
async fn natter_participant(
    i: usize,
    ctl: &Control,
    (secret, room): (&str, &str),
    o: &SfuLoad,
    clip: Arc<Option<Clip>>,
    window: (Instant, Instant),
) -> Result<Report> {
    let (mut p, offer, pending) = new_publisher(i, o.bind, clip.is_some()).await?;
    let token =
        natter_signaling::room_token::mint(secret.as_bytes(), room, i as u64 + 1, unix_now(), 3600);
    let joined = ctl
        .request(json!({"op": "join", "token": token, "offer": offer.to_sdp_string()}))
        .await
        .with_context(|| format!("participant {i} could not join"))?;
    let id = joined["participant"]
        .as_u64()
        .context("no participant id")?;
    let answer = joined["answer"].as_str().context("no answer")?;
    p.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(answer)?)?;
    let reneg = Renegotiation {
        ctl,
        participant: id,
        notices: ctl.register(id),
    };
    let report = run_peer(p, Some(reneg), &clip, window).await;
    ctl.notify(json!({"op": "leave", "participant": id}));
    report
}

/// A participant of a Janus VideoRoom: a publisher's connection, and a subscriber's taking
/// every other participant's streams once all have published (so no renegotiation).
async fn janus_participant(
    i: usize,
    room: &JanusRoom,
    o: &SfuLoad,
    clip: Arc<Option<Clip>>,
    window: (Instant, Instant),
) -> Result<Report> {
    let janus = &room.janus;
    let (mut p, offer, pending) = new_publisher(i, o.bind, clip.is_some()).await?;
    let handle = janus.attach().await?;
    let (feed, answer) = janus
        .publish(
            handle,
            room.number,
            &format!("p{i}"),
            &offer.to_sdp_string(),
        )
        .await
        .with_context(|| format!("participant {i} could not publish"))?;
    p.rtc
        .sdp_api()
        .accept_answer(pending, SdpAnswer::from_sdp_string(&answer)?)?;
    let (tx, published) = oneshot::channel();
    p.on_connected = Some(tx);
    let subscriber = async {
        // VideoRoom refuses a subscription to a feed whose connection is not up yet.
        published
            .await
            .context("the publisher's connection did not come up")?;
        room.feeds.lock().unwrap().insert(i, feed);
        // Everyone publishes within the first part of the warm-up.
        let deadline = window.0 - Duration::from_millis(1500).min(window.0 - Instant::now());
        while room.feeds.lock().unwrap().len() < o.participants && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let others: Vec<u64> = room
            .feeds
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| **k != i)
            .map(|(_, f)| *f)
            .collect();
        let mut s = new_peer(i, o.bind).await?;
        let handle = janus.attach().await?;
        let offer = janus.subscribe(handle, room.number, &others).await?;
        let answer = s
            .rtc
            .sdp_api()
            .accept_offer(SdpOffer::from_sdp_string(&offer)?)?;
        janus.start(handle, &answer.to_sdp_string()).await?;
        run_peer(s, None, &Arc::new(None), window).await
    };
    let (published, subscribed) = tokio::join!(run_peer(p, None, &clip, window), subscriber);
    let mut r = published?;
    r.merge(subscribed.with_context(|| format!("participant {i} could not subscribe"))?);
    Ok(r)
}

/// Runs one connection until the window (and a little after) is over.
async fn run_peer(
    mut p: Peer,
    mut reneg: Option<Renegotiation<'_>>,
    clip: &Option<Clip>,
    window: (Instant, Instant),
) -> Result<Report> {
    let mut buf = vec![0u8; 2000];
    let end = window.1 + Duration::from_millis(300);
    loop {
        let timeout = p.drain(window)?;
        let now = Instant::now();
        if now >= end {
            break;
        }
        let mut wake = timeout.min(end);
        if p.connected {
            if p.audio.is_some() {
                wake = wake.min(p.next_audio);
            }
            if p.video.is_some() {
                wake = wake.min(p.next_video);
            }
        }
        let notice = async {
            match reneg.as_mut() {
                Some(r) => r.notices.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = stamped::recv_from(&p.socket, &mut buf) => {
                let (n, from, arrived) = r?;
                if let Ok(r) = Receive::new(Protocol::Udp, from, p.local, &buf[..n]) {
                    p.rtc.handle_input(Input::Receive(arrived, r))?;
                }
            }
            v = notice => {
                let Some(v) = v else { bail!("control link closed") };
                let r = reneg.as_ref().expect("notices come with a renegotiation");
                if v["op"] == "offer" {
                    let sdp = v["sdp"].as_str().unwrap_or_default();
                    let answer = p.rtc.sdp_api().accept_offer(SdpOffer::from_sdp_string(sdp)?)?;
                    r.ctl.notify(json!({
                        "op": "answer", "req": 0, "participant": r.participant,
                        "sdp": answer.to_sdp_string(),
                    }));
                } else if v["op"] == "left" {
                    bail!("participant {} removed: {}", p.index, v["reason"]);
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(wake)) => {
                let now = Instant::now();
                p.rtc.handle_input(Input::Timeout(now))?;
                if p.connected {
                    p.send_due(now, clip, window);
                }
            }
        }
    }
    Ok(p.report)
}

impl Peer {
    /// Sends what str0m wants sent and takes its events; returns when it wants time next.
    fn drain(&mut self, window: (Instant, Instant)) -> Result<Instant> {
        loop {
            match self.rtc.poll_output()? {
                Output::Timeout(t) => return Ok(t),
                Output::Transmit(t) => {
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Output::Event(Event::Connected) => {
                    self.connected = true;
                    self.report.connected = true;
                    if let Some(tx) = self.on_connected.take() {
                        let _ = tx.send(());
                    }
                }
                Output::Event(Event::KeyframeRequest(_)) => self.keyframe_next = true,
                Output::Event(Event::MediaData(d)) => {
                    let now = Instant::now();
                    if d.params.spec().codec == Codec::Vp8 {
                        if now >= window.0 && now < window.1 {
                            self.report.video_frames += 1;
                            let (a, b) = (**d.seq_range.start(), **d.seq_range.end());
                            self.report.video_packets += b.saturating_sub(a) + 1;
                        }
                    } else if d.data.len() >= 14 {
                        self.heard(&d.data, now, window);
                    }
                }
                Output::Event(_) => {}
            }
        }
    }

    fn heard(&mut self, data: &[u8], now: Instant, window: (Instant, Instant)) {
        let from = u16::from_be_bytes([data[0], data[1]]);
        let sent_us = u64::from_be_bytes(data[6..14].try_into().expect("8 bytes"));
        let (w0, w1) = (since_epoch_us(window.0), since_epoch_us(window.1));
        if sent_us < w0 || sent_us >= w1 {
            return;
        }
        *self.report.received.entry(from).or_default() += 1;
        let now_us = since_epoch_us(now);
        if let Some(h) = self.report.latency_us.as_mut() {
            let _ = h.record(now_us.saturating_sub(sent_us).max(1));
        }
        if let Some(last) = self.last_from.insert(from, now)
            && now.duration_since(last) > FREEZE
        {
            self.report.freezes += 1;
        }
    }

    fn send_due(&mut self, now: Instant, clip: &Option<Clip>, window: (Instant, Instant)) {
        if let Some(audio) = self.audio
            && now >= self.next_audio
        {
            self.next_audio += AUDIO_FRAME;
            if self.next_audio < now {
                self.next_audio = now + AUDIO_FRAME;
            }
            let mut data = Vec::with_capacity(AUDIO_BYTES);
            data.extend_from_slice(&self.index.to_be_bytes());
            data.extend_from_slice(&self.audio_n.to_be_bytes());
            data.extend_from_slice(&since_epoch_us(now).to_be_bytes());
            data.resize(AUDIO_BYTES, 0x5A);
            let time = MediaTime::new(u64::from(self.audio_n) * 960, Frequency::FORTY_EIGHT_KHZ);
            if let Some(pt) = first_pt(&mut self.rtc, audio)
                && let Some(w) = self.rtc.writer(audio)
                && w.write(pt, now, time, data).is_ok()
            {
                self.audio_n += 1;
                if now >= window.0 && now < window.1 {
                    self.report.sent += 1;
                }
            }
        }
        if let (Some(mid), Some(clip)) = (self.video, clip)
            && now >= self.next_video
        {
            self.next_video += Duration::from_secs(1) / VIDEO_FPS;
            if self.next_video < now {
                self.next_video = now + Duration::from_secs(1) / VIDEO_FPS;
            }
            if std::mem::take(&mut self.keyframe_next) {
                self.video_n = 0;
            }
            let frame = clip.frames[self.video_n % clip.frames.len()].clone();
            // The replay loops back to the keyframe, never to a frame that follows another.
            self.video_n = (self.video_n + 1) % clip.frames.len();
            let n = since_epoch_us(now) * 90 / 1000;
            if let Some(pt) = first_pt(&mut self.rtc, mid)
                && let Some(w) = self.rtc.writer(mid)
            {
                let _ = w.write(pt, now, MediaTime::new(n, Frequency::NINETY_KHZ), frame);
            }
        }
    }
}

/// The first payload type negotiated on `mid`.
fn first_pt(rtc: &mut Rtc, mid: Mid) -> Option<natter_media::str0m::media::Pt> {
    rtc.writer(mid)?.payload_params().next().map(|p| p.pt())
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
