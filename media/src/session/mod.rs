//! A call's media session, sans-IO: one str0m [`Rtc`] carrying Opus (and VP8 when asked
//! for) both ways, its local
//! candidates (host, server-reflexive from a STUN Binding, relayed through a
//! [`TurnClient`]), and the audio pipelines. Fed datagrams (and TURN stream bytes) and the
//! time; it returns what to send where and what happened. [`shell::MediaSession`] owns the
//! sockets and drives it on tokio.

mod adapt;
pub mod audio_pipe;
pub mod dtls;
pub mod group;
pub mod rate;
mod receive;
pub mod shell;
pub mod simulcast;
mod stats;
mod types;
pub mod video_pipe;

pub use types::{
    AudioSendStats, CallStats, FrameCrypto, FrameE2ee, MediaError, MediaOptions, MediaState,
    SessionEvent, Transmit, TransportStats, Via, vp8_clear_bytes,
};

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use natter_signaling::call::IceCandidate;
use natter_stun::{Class, Message, MessageBuilder, attr, method};
use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::ice_servers::{Servers, TurnServer};
use crate::turn_client::{TurnClient, TurnConfig, TurnEvent, TurnTransport};
use crate::video::VideoOptions;
use audio_pipe::{AudioDecoder, AudioEncoder};
use group::RemoteTracks;
use video_pipe::{VideoReceiver, VideoSender};

fn rtc_err(e: impl std::fmt::Display) -> MediaError {
    MediaError::Rtc(e.to_string())
}

/// One server-reflexive probe: a STUN Binding from a local socket.
struct StunProbe {
    local: SocketAddr,
    server: SocketAddr,
    tid: [u8; 12],
    bytes: Vec<u8>,
    next_send: Instant,
    sends: u32,
}

/// str0m's resend cache for video, as its defaults: room for 3 s of packets.
const RTX_CACHE_PACKETS: usize = 2000;
const RTX_CACHE_AGE: Duration = Duration::from_secs(3);
/// Resends stop while they are more than this share of the last second's video bytes.
/// str0m's default, 15 %, is crossed by chance at 5 % loss (a few losses close together,
/// a lost keyframe packet), and the resends it then drops each cost a keyframe and a
/// freeze of half a second. libwebrtc lets resends take up to the media rate itself.
const RTX_RATIO_CAP: f32 = 0.5;
/// Sender and receiver reports for video this often (str0m's default is 1 s). The round trip
/// comes from them, and until str0m knows it, it spaces NACK retries 100 ms apart: on a
/// lossy link the first second of a call froze on repairs that took two slow rounds.
pub const VIDEO_RTCP_INTERVAL: Duration = Duration::from_millis(200);
const STUN_PROBE_SENDS: u32 = 5;
const STUN_PROBE_RTO: Duration = Duration::from_millis(250);
/// str0m's statistics this often: each carries a round-trip sample (from TWCC feedback)
/// for the queue pushback, which must see a queue within a few round trips.
const STATS_INTERVAL: Duration = Duration::from_millis(200);
const FRAME_INTERVAL: Duration = Duration::from_millis(20);
/// How often the receiver of our audio reports its loss (RTCP RR).
const AUDIO_RTCP_INTERVAL: Duration = Duration::from_secs(1);
/// ICE connectivity checks: first retry after 50 ms (RFC 8445's pacing interval Ta), backing
/// off to at most 500 ms, 20 retries (~8.6 s before a pair fails).
const STUN_CHECK_RTO: Duration = Duration::from_millis(50);
const STUN_CHECK_MAX_RTO: Duration = Duration::from_millis(500);
const STUN_CHECK_RETRANSMITS: usize = 20;
/// One encoded frame into `mid`'s first negotiated payload type (str0m packetizes it),
/// with its audio level (RFC 6464: what an SFU picks the active speaker by).
fn write_frame(
    rtc: &mut Rtc,
    mid: Mid,
    clock: Frequency,
    rtp_time: u64,
    data: Vec<u8>,
    level: Option<(i8, bool)>,
    now: Instant,
) {
    if let Some(mut w) = rtc.writer(mid) {
        let pt = w.payload_params().next().map(|p| p.pt());
        if let Some((level, voice)) = level {
            w = w.audio_level(level, voice);
        }
        if let Some(pt) = pt {
            let _ = w.write(pt, now, MediaTime::new(rtp_time, clock), data);
        }
    }
}

/// Packets str0m holds to reassemble a video frame: a keyframe at 2 Mbit/s spans ~100.
pub const VIDEO_REORDER_PACKETS: usize = 160;

/// A relay: a TURN allocation reached from a local UDP socket or over a TCP stream.
struct Relay {
    server: TurnServer,
    /// The local UDP socket for a UDP server.
    local: Option<SocketAddr>,
    client: TurnClient,
    relayed: Option<SocketAddr>,
}

/// The sans-IO session: see the module documentation.
pub struct Session {
    rtc: Rtc,
    opts: MediaOptions,
    created: Instant,
    created_wall_ms: u32,
    probes: Vec<StunProbe>,
    relays: Vec<Relay>,
    remote: Vec<SocketAddr>,
    pending: Option<SdpPendingOffer>,
    mid: Option<Mid>,
    encoder: Option<AudioEncoder>,
    next_frame: Option<Instant>,
    decoder: AudioDecoder,
    video_mid: Option<Mid>,
    video_tx: Option<VideoSender>,
    /// In a group call, video goes as simulcast layers instead.
    simulcast: Option<simulcast::SimulcastSender>,
    video_rx: Option<VideoReceiver>,
    /// In a group call: the others' tracks.
    remote_tracks: RemoteTracks,
    /// Sending silence (kept for an encoder made later).
    muted: bool,
    /// The SFU's last word on the simulcast layers wanted (kept for layers made later).
    wanted_layers: Option<Vec<String>>,
    /// Packets and bytes per media, each way, from str0m's statistics.
    ingress: HashMap<Mid, (u64, u64)>,
    egress: HashMap<Mid, (u64, u64)>,
    video_nacks_sent: u64,
    video_nacks_received: u64,
    transport: TransportStats,
    /// The video encoder's share of its target while a queue stands at the bottleneck.
    pushback: rate::QueuePushback,
    /// Opus settings from the loss reports and the estimate (None: adaptation off).
    audio_policy: Option<crate::adapt::AudioPolicy>,
    audio_adaptations: u64,
    /// Picture size and frame rate from the video target (1:1 video, adaptation on).
    video_steps: Option<crate::adapt::VideoPolicy>,
    rtc_timeout: Option<Instant>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<SessionEvent>,
    state: MediaState,
}

impl Session {
    /// A session on the local UDP sockets `locals` (bound by the shell) using `servers`.
    pub fn new(
        opts: MediaOptions,
        servers: &Servers,
        locals: &[SocketAddr],
        now: Instant,
    ) -> Result<Session, MediaError> {
        if locals.is_empty() {
            return Err(MediaError::NoAddress("no UDP socket".into()));
        }
        // The wall clock at `now` (read before the slow part below: the DTLS certificate).
        let wall_at_now = crate::video::wall_ms()
            .wrapping_sub(Instant::now().saturating_duration_since(now).as_millis() as u32);
        let mut cfg = RtcConfig::new()
            .set_crypto_provider(Arc::new(dtls::crypto_provider()))
            .clear_codecs()
            .enable_opus(true, opts.red)
            .enable_vp8(true)
            .set_reordering_size_video(VIDEO_REORDER_PACKETS)
            .set_rtcp_report_interval_video(VIDEO_RTCP_INTERVAL)
            // The peer's reports carry the loss the audio policy turns FEC and RED on for:
            // str0m's 5 s default would leave a spell of loss unprotected for seconds.
            .set_rtcp_report_interval_audio(AUDIO_RTCP_INTERVAL)
            .set_red_distances(&[1, 2][..crate::adapt::audio::RED_LEVELS as usize])
            .enable_bwe(Some(Bitrate::kbps(rate::INITIAL_ESTIMATE_KBPS)))
            .set_stats_interval(Some(STATS_INTERVAL));
        // A check that meets a relay before the peer's permission is in place is lost, and
        // with str0m's defaults (250 ms doubling to 3 s) the retry comes late: relayed calls
        // took ~1.5 s to connect on loopback. Retry sooner, capped lower, for longer.
        cfg.set_initial_stun_rto(STUN_CHECK_RTO);
        cfg.set_max_stun_rto(STUN_CHECK_MAX_RTO);
        cfg.set_max_stun_retransmits(STUN_CHECK_RETRANSMITS);
        let rtc = cfg.build(now);
        let decoder = AudioDecoder::new(opts.expect_tone, opts.wav_out.is_some(), now)
            .map_err(MediaError::Audio)?;
        let mut s = Session {
            rtc,
            opts,
            created: now,
            created_wall_ms: wall_at_now,
            probes: Vec::new(),
            relays: Vec::new(),
            remote: Vec::new(),
            pending: None,
            mid: None,
            encoder: None,
            next_frame: None,
            decoder,
            video_mid: None,
            video_tx: None,
            simulcast: None,
            video_rx: None,
            remote_tracks: RemoteTracks::default(),
            muted: false,
            wanted_layers: None,
            ingress: HashMap::new(),
            egress: HashMap::new(),
            video_nacks_sent: 0,
            video_nacks_received: 0,
            transport: TransportStats {
                video_pushback_pct: 100.0,
                ..TransportStats::default()
            },
            pushback: rate::QueuePushback::default(),
            audio_policy: None,
            audio_adaptations: 0,
            video_steps: None,
            rtc_timeout: None,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            state: MediaState::New,
        };
        for &local in locals {
            if !s.opts.relay_only {
                let c = Candidate::host(local, "udp")
                    .map_err(|e| MediaError::NoAddress(e.to_string()))?;
                s.add_local(c);
            }
            for stun in servers
                .stun
                .iter()
                .filter(|x| x.addr.is_ipv4() == local.is_ipv4())
            {
                if s.opts.relay_only {
                    break;
                }
                let mut tid = [0u8; 12];
                getrandom::fill(&mut tid).expect("the OS random source works");
                let bytes = MessageBuilder::new(method::BINDING, Class::Request, tid)
                    .fingerprint()
                    .finish();
                s.probes.push(StunProbe {
                    local,
                    server: stun.addr,
                    tid,
                    bytes,
                    next_send: now,
                    sends: 0,
                });
            }
        }
        for server in &servers.turn {
            if s.opts.turn_tcp_only && server.transport != TurnTransport::Tcp {
                continue;
            }
            let local = match server.transport {
                TurnTransport::Udp => {
                    match locals.iter().find(|l| l.is_ipv4() == server.addr.is_ipv4()) {
                        Some(l) => Some(*l),
                        None => continue,
                    }
                }
                TurnTransport::Tcp => None,
            };
            let cfg = TurnConfig::new(server.transport, &server.username, &server.password);
            s.relays.push(Relay {
                server: server.clone(),
                local,
                client: TurnClient::new(cfg, now),
                relayed: None,
            });
        }
        s.pump_relays(now);
        s.handle_timeout(now);
        Ok(s)
    }

    /// TURN servers reached over TCP, by index: the shell connects a stream to each and
    /// feeds it with [`Session::handle_stream`].
    pub fn turn_streams(&self) -> Vec<(usize, SocketAddr)> {
        self.relays
            .iter()
            .enumerate()
            .filter(|(_, r)| r.local.is_none())
            .map(|(i, r)| (i, r.server.addr))
            .collect()
    }

    pub fn state(&self) -> MediaState {
        self.state
    }

    fn set_state(&mut self, s: MediaState) {
        if self.state != s {
            self.state = s;
            self.events.push_back(SessionEvent::State(s));
        }
    }

    fn add_local(&mut self, c: Candidate) {
        if let Some(c) = self.rtc.add_local_candidate(c) {
            let line = c.to_sdp_string();
            self.events
                .push_back(SessionEvent::LocalCandidate(IceCandidate {
                    candidate: line,
                    sdp_mid: Some("0".into()),
                    sdp_mline_index: Some(0),
                }));
        }
    }

    /// The offer (caller side); candidates trickle afterwards.
    pub fn create_offer(&mut self, now: Instant) -> Result<String, MediaError> {
        // In a group call the SFU sends the others' media on m-lines of its own.
        let dir = if self.opts.group {
            Direction::SendOnly
        } else {
            Direction::SendRecv
        };
        let mut api = self.rtc.sdp_api();
        if self.mid.is_none() {
            self.mid = Some(api.add_media(MediaKind::Audio, dir, None, None, None));
        }
        if let (None, Some(v)) = (self.video_mid, self.opts.video) {
            let layers = self.opts.group.then(|| simulcast::sdp_layers(&v));
            self.video_mid = Some(api.add_media(MediaKind::Video, dir, None, None, layers));
        }
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| MediaError::Rtc("nothing to offer".into()))?;
        self.pending = Some(pending);
        self.set_state(MediaState::Connecting);
        self.drain(now);
        Ok(offer.to_sdp_string())
    }

    /// A new offer with fresh ICE credentials (ICE restart after a network change).
    pub fn restart_offer(&mut self, now: Instant) -> Result<String, MediaError> {
        let mut api = self.rtc.sdp_api();
        api.ice_restart(true);
        let (offer, pending) = api
            .apply()
            .ok_or_else(|| MediaError::Rtc("nothing to offer".into()))?;
        self.pending = Some(pending);
        self.drain(now);
        Ok(offer.to_sdp_string())
    }

    /// Takes the peer's offer and returns the answer.
    pub fn accept_offer(&mut self, sdp: &str, now: Instant) -> Result<String, MediaError> {
        let offer =
            SdpOffer::from_sdp_string(sdp).map_err(|e| MediaError::BadSdp(e.to_string()))?;
        let answer = self.rtc.sdp_api().accept_offer(offer).map_err(rtc_err)?;
        self.set_state(MediaState::Connecting);
        self.drain(now);
        Ok(answer.to_sdp_string())
    }

    /// Applies the peer's answer to our offer.
    pub fn set_answer(&mut self, sdp: &str, now: Instant) -> Result<(), MediaError> {
        let answer =
            SdpAnswer::from_sdp_string(sdp).map_err(|e| MediaError::BadSdp(e.to_string()))?;
        let pending = self
            .pending
            .take()
            .ok_or_else(|| MediaError::Rtc("an answer without an offer".into()))?;
        // An ICE-lite SFU trickles nothing: its candidates are in the answer, and the
        // relays need them as peers.
        let sfu_candidates: Vec<IceCandidate> = if self.opts.group {
            answer_candidates(sdp)
        } else {
            Vec::new()
        };
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(rtc_err)?;
        for c in &sfu_candidates {
            self.add_remote_candidate(c, now)?;
        }
        self.drain(now);
        Ok(())
    }

    /// A candidate the peer trickled.
    pub fn add_remote_candidate(
        &mut self,
        c: &IceCandidate,
        now: Instant,
    ) -> Result<(), MediaError> {
        let line = c.candidate.trim();
        let line = line.strip_prefix("a=").unwrap_or(line);
        if line.is_empty() {
            return Ok(()); // end-of-candidates
        }
        let cand = Candidate::from_sdp_string(line)
            .map_err(|e| MediaError::BadCandidate(e.to_string()))?;
        let addr = cand.addr();
        self.rtc.add_remote_candidate(cand);
        if !self.remote.contains(&addr) {
            self.remote.push(addr);
            for r in &mut self.relays {
                // Each relay permits and binds a channel to every remote candidate, so
                // what the peer sends to the relay gets through.
                let _ = r.client.add_peer(addr, now);
            }
            self.pump_relays(now);
        }
        self.drain(now);
        Ok(())
    }

    /// Starts sending the audio source, a 20 ms Opus frame at a time.
    pub fn start_sending(&mut self, now: Instant) -> Result<(), MediaError> {
        let mid = self.mid.ok_or(MediaError::NoAudio)?;
        if self.rtc.writer(mid).is_none() {
            return Err(MediaError::NoAudio);
        }
        let (policy, settings) = self.audio_start();
        self.audio_policy = policy;
        let mut encoder =
            AudioEncoder::new(self.opts.source.clone(), settings).map_err(MediaError::Audio)?;
        encoder.muted = self.muted;
        self.encoder = Some(encoder);
        self.next_frame = Some(now);
        if let (Some(v), Some(mid)) = (self.opts.video, self.video_mid)
            && self.rtc.writer(mid).is_some()
        {
            if self.opts.group {
                let s = simulcast::SimulcastSender::new(&v, now).map_err(MediaError::Video)?;
                s.set_rtx_caches(
                    &mut self.rtc,
                    mid,
                    RTX_CACHE_PACKETS,
                    RTX_CACHE_AGE,
                    RTX_RATIO_CAP,
                );
                self.simulcast = Some(s);
                if let Some(w) = self.wanted_layers.clone() {
                    self.set_wanted_layers(&w);
                }
            } else {
                self.video_tx = Some(VideoSender::new(v, now).map_err(MediaError::Video)?);
                self.video_steps = self.video_policy();
                // Before the first frame: str0m drops its resend cache when this is set.
                if let Some(tx) = self.rtc.direct_api().stream_tx_by_mid(mid, None) {
                    tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, Some(RTX_RATIO_CAP));
                }
            }
            // Probe toward what the configured media needs.
            self.rtc.bwe().set_bitrate(
                Bitrate::kbps(rate::AUDIO_SHARE_KBPS),
                Bitrate::kbps(rate::media_kbps(Some(v))),
            );
        }
        self.handle_timeout(now);
        Ok(())
    }

    /// A datagram arrived on the local socket `local` from `from`.
    pub fn handle_datagram(
        &mut self,
        local: SocketAddr,
        from: SocketAddr,
        bytes: &[u8],
        now: Instant,
    ) {
        if let Some(i) = self
            .relays
            .iter()
            .position(|r| r.local == Some(local) && r.server.addr == from)
        {
            self.relays[i].client.handle_input(bytes, now);
            self.pump_relays(now);
        } else if let Some(i) = self.probe_answer(local, from, bytes) {
            let p = self.probes.swap_remove(i);
            if let Ok(m) = Message::parse(bytes)
                && let Ok(Some(mapped)) = m.xor_address(attr::XOR_MAPPED_ADDRESS)
                && mapped != p.local
                && let Ok(c) = Candidate::server_reflexive(mapped, p.local, "udp")
            {
                self.add_local(c);
            }
        } else if let Ok(r) = Receive::new(Protocol::Udp, from, local, bytes) {
            let _ = self.rtc.handle_input(Input::Receive(now, r));
        }
        self.drain(now);
    }

    /// Bytes from the TCP stream to TURN server number `turn`.
    pub fn handle_stream(&mut self, turn: usize, bytes: &[u8], now: Instant) {
        if let Some(r) = self.relays.get_mut(turn) {
            r.client.handle_input(bytes, now);
        }
        self.pump_relays(now);
        self.drain(now);
    }

    /// The TCP stream to TURN server number `turn` closed or could not be opened.
    pub fn stream_closed(&mut self, turn: usize, now: Instant) {
        if let Some(r) = self.relays.get_mut(turn) {
            r.client.handle_closed();
        }
        self.pump_relays(now);
    }

    fn probe_answer(&self, local: SocketAddr, from: SocketAddr, bytes: &[u8]) -> Option<usize> {
        if bytes.len() < 20 || bytes[0] & 0xC0 != 0 {
            return None;
        }
        let tid = bytes.get(8..20)?;
        self.probes
            .iter()
            .position(|p| p.local == local && p.server == from && p.tid == tid)
    }

    /// When [`Session::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let relays = self.relays.iter().filter_map(|r| r.client.poll_timeout());
        let probes = self.probes.iter().map(|p| p.next_send);
        let open = self.state != MediaState::Closed;
        let video = self.video_tx.as_ref().filter(|_| open).map(|v| v.next_due);
        let layers = self
            .simulcast
            .as_ref()
            .filter(|_| open)
            .and_then(|s| s.next_due());
        [self.rtc_timeout, self.next_frame, video, layers]
            .into_iter()
            .flatten()
            .chain(relays)
            .chain(probes)
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for r in &mut self.relays {
            if r.client.poll_timeout().is_some_and(|t| t <= now) {
                r.client.handle_timeout(now);
            }
        }
        self.pump_relays(now);
        let mut i = 0;
        while i < self.probes.len() {
            let p = &mut self.probes[i];
            if p.next_send <= now {
                if p.sends >= STUN_PROBE_SENDS {
                    self.probes.swap_remove(i);
                    continue;
                }
                p.sends += 1;
                p.next_send = now + STUN_PROBE_RTO * p.sends;
                self.transmits.push_back(Transmit {
                    via: Via::Udp {
                        from: p.local,
                        to: p.server,
                    },
                    bytes: p.bytes.clone(),
                });
            }
            i += 1;
        }
        self.send_audio(now);
        self.send_video(now);
        let _ = self.rtc.handle_input(Input::Timeout(now));
        self.drain(now);
    }

    fn send_audio(&mut self, now: Instant) {
        let (Some(mid), Some(enc)) = (self.mid, self.encoder.as_mut()) else {
            return;
        };
        let mut due = 0;
        while self.next_frame.is_some_and(|t| t <= now) && due < 5 {
            due += 1;
            let f = enc.next_frame();
            self.next_frame = self.next_frame.map(|t| t + FRAME_INTERVAL);
            let mut f = match f {
                Ok(Some(f)) => f,
                // Part of a longer packet, or silence DTX leaves out.
                Ok(None) => continue,
                Err(_) => {
                    self.next_frame = None;
                    return;
                }
            };
            if let Some(e2ee) = &self.opts.e2ee {
                match e2ee.0.seal(&f.data, 0) {
                    Ok(sealed) => f.data = sealed,
                    // Nothing leaves in the clear.
                    Err(_) => continue,
                }
            }
            write_frame(
                &mut self.rtc,
                mid,
                Frequency::FORTY_EIGHT_KHZ,
                f.rtp_time,
                f.data,
                Some(f.level),
                now,
            );
        }
        // Far behind (the process was stopped): skip ahead rather than burst.
        if self.next_frame.is_some_and(|t| t <= now) {
            self.next_frame = Some(now + FRAME_INTERVAL);
        }
    }

    fn send_video(&mut self, now: Instant) {
        let Some(mid) = self.video_mid else {
            return;
        };
        if self.state == MediaState::Closed {
            return;
        }
        let wall = self.wall_ms(now);
        if let Some(s) = self.simulcast.as_mut() {
            if let Err(e) = s.send(&mut self.rtc, mid, now, wall, self.opts.e2ee.as_ref()) {
                self.simulcast = None;
                self.events
                    .push_back(SessionEvent::Warning(format!("video stopped: {e}")));
            }
            return;
        }
        let Some(tx) = self.video_tx.as_mut() else {
            return;
        };
        let frame = match tx.next_frame(now, wall) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                self.video_tx = None;
                self.events
                    .push_back(SessionEvent::Warning(format!("video stopped: {e}")));
                return;
            }
        };
        let (rtp_time, data) = frame;
        write_frame(
            &mut self.rtc,
            mid,
            Frequency::NINETY_KHZ,
            rtp_time,
            data,
            None,
            now,
        );
    }

    /// Moves what the TURN clients produced: their events handled (data into str0m), then
    /// their transmits out, those that handling the events queued included.
    fn pump_relays(&mut self, now: Instant) {
        let mut allocated = Vec::new();
        for (i, r) in self.relays.iter_mut().enumerate() {
            while let Some(e) = r.client.poll_event() {
                match e {
                    TurnEvent::Allocated { relayed, .. } => {
                        r.relayed = Some(relayed);
                        for addr in &self.remote {
                            let _ = r.client.add_peer(*addr, now);
                        }
                        allocated.push((relayed, r.local.unwrap_or(relayed)));
                    }
                    TurnEvent::Data { peer, data } => {
                        if let Some(relayed) = r.relayed
                            && let Ok(rcv) = Receive::new(Protocol::Udp, peer, relayed, &data)
                        {
                            let _ = self.rtc.handle_input(Input::Receive(now, rcv));
                        }
                    }
                    TurnEvent::Failed(e) => self.events.push_back(SessionEvent::Warning(format!(
                        "TURN server {}: {e}",
                        r.server.addr
                    ))),
                    TurnEvent::PeerFailed { peer, error } => {
                        self.events.push_back(SessionEvent::Warning(format!(
                            "TURN server {}: peer {peer}: {error}",
                            r.server.addr
                        )))
                    }
                    TurnEvent::PeerReady { .. } | TurnEvent::Closed => {}
                }
            }
            let via = match r.local {
                Some(from) => Via::Udp {
                    from,
                    to: r.server.addr,
                },
                None => Via::Stream { turn: i },
            };
            while let Some(bytes) = r.client.poll_transmit() {
                self.transmits.push_back(Transmit { via, bytes });
            }
        }
        for (relayed, local) in allocated {
            if let Ok(c) = Candidate::relayed(relayed, local, "udp") {
                self.add_local(c);
            }
        }
    }

    /// Drains str0m: transmits routed (through a relay when sent from a relayed address),
    /// events handled, its next timeout kept.
    fn drain(&mut self, now: Instant) {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.rtc_timeout = Some(t);
                    break;
                }
                Ok(Output::Transmit(t)) => {
                    let bytes: Vec<u8> = t.contents.to_vec();
                    if let Some(r) = self.relays.iter_mut().find(|r| r.relayed == Some(t.source)) {
                        let _ = r.client.send_to(t.destination, &bytes, now);
                    } else {
                        self.transmits.push_back(Transmit {
                            via: Via::Udp {
                                from: t.source,
                                to: t.destination,
                            },
                            bytes,
                        });
                    }
                }
                Ok(Output::Event(e)) => self.handle_event(e, now),
                Err(e) => {
                    self.events
                        .push_back(SessionEvent::Warning(format!("media: {e}")));
                    self.set_state(MediaState::Failed);
                    self.rtc_timeout = None;
                    break;
                }
            }
        }
        self.pump_relays(now);
    }

    fn handle_event(&mut self, e: Event, now: Instant) {
        match e {
            Event::Connected => self.set_state(MediaState::Connected),
            Event::IceConnectionStateChange(s) => match s {
                IceConnectionState::Disconnected => self.set_state(MediaState::Disconnected),
                IceConnectionState::Connected | IceConnectionState::Completed
                    if self.state == MediaState::Disconnected =>
                {
                    self.set_state(MediaState::Connected)
                }
                _ => {}
            },
            // A group call: the SFU adds each other participant's tracks, send-only.
            Event::MediaAdded(m) if self.opts.group && m.direction == Direction::RecvOnly => {
                if let Err(e) = self.remote_tracks.added(m.mid, m.kind, now) {
                    self.events
                        .push_back(SessionEvent::Warning(format!("track {}: {e}", m.mid)));
                }
            }
            Event::MediaAdded(m) if m.kind == MediaKind::Audio && self.mid.is_none() => {
                self.mid = Some(m.mid);
            }
            Event::MediaAdded(m) if m.kind == MediaKind::Video && self.video_mid.is_none() => {
                self.video_mid = Some(m.mid);
            }
            Event::MediaData(d) => self.media_data(d, now),
            Event::KeyframeRequest(r) if Some(r.mid) == self.video_mid => {
                if let Some(tx) = self.video_tx.as_mut() {
                    tx.keyframe_requested();
                }
                if let Some(s) = self.simulcast.as_mut() {
                    s.keyframe_requested(r.rid);
                }
            }
            Event::MediaIngressStats(_)
            | Event::MediaEgressStats(_)
            | Event::PeerStats(_)
            | Event::EgressBitrateEstimate(_) => self.stats_event(e, now),
            _ => {}
        }
    }

    /// Bytes to send, oldest first.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// The wall clock (UNIX milliseconds, wrapping) at `now`, kept from the one reading
    /// taken at creation so that time stays the caller's.
    fn wall_ms(&self, now: Instant) -> u32 {
        let since = now.saturating_duration_since(self.created).as_millis() as u32;
        self.created_wall_ms.wrapping_add(since)
    }

    pub fn first_audio(&self) -> Option<Instant> {
        self.decoder.first_decoded
    }

    /// In a group call: the simulcast layers the SFU says someone receives.
    pub fn set_wanted_layers(&mut self, rids: &[String]) {
        self.wanted_layers = Some(rids.to_vec());
        if let Some(s) = self.simulcast.as_mut() {
            let rids: Vec<str0m::media::Rid> = rids
                .iter()
                .map(|r| str0m::media::Rid::from(r.as_str()))
                .collect();
            s.set_wanted(&rids);
        }
    }

    /// In a group call: the simulcast layers being sent.
    pub fn active_layers(&self) -> Vec<String> {
        self.simulcast
            .as_ref()
            .map(|s| s.active())
            .unwrap_or_default()
    }

    /// Sends silence instead of the source (or the source again).
    pub fn set_muted(&mut self, muted: bool) {
        if let Some(e) = self.encoder.as_mut() {
            e.muted = muted;
        }
        self.muted = muted;
    }

    /// In a group call: the tone expected on the received audio track `mid`.
    pub fn expect_tone_on(&mut self, mid: &str, freq: f32) {
        self.remote_tracks.expect_tone(Mid::from(mid), freq);
    }

    /// Decoded samples kept for the WAV file.
    pub fn take_samples(&mut self) -> Option<Vec<i16>> {
        self.decoder.keep.take()
    }

    /// Stops sending, releases the relays, closes the connection.
    pub fn close(&mut self, now: Instant) {
        // The encoders stay, unscheduled, so the statistics still count what was sent.
        self.next_frame = None;
        for r in &mut self.relays {
            r.client.close(now);
        }
        self.pump_relays(now);
        self.rtc.disconnect();
        self.rtc_timeout = None;
        self.set_state(MediaState::Closed);
    }
}

/// The `a=candidate` lines of an SDP.
fn answer_candidates(sdp: &str) -> Vec<IceCandidate> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a="))
        .filter(|l| l.starts_with("candidate:"))
        .map(|l| IceCandidate {
            candidate: l.to_string(),
            sdp_mid: None,
            sdp_mline_index: Some(0),
        })
        .collect()
}
