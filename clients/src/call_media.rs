//! One call's media: a WebRTC peer connection (webrtc-rs) carrying Opus audio, both ways.
//!
//! The sending side encodes 20 ms frames of an [`AudioSource`] with libopus (in-band FEC on)
//! and writes them to the track. The receiving side decodes every RTP packet, fills gaps
//! with Opus FEC (the last missing frame) and packet-loss concealment (the others), and
//! measures what a listener would get: frames received, lost, concealed, decoded, whether
//! the expected tone is audible in each frame, and interarrival jitter. Decoded audio can be
//! written to a WAV file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use natter_signaling::IceServer;
use natter_signaling::call::IceCandidate;
use rtc::media::Sample;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::media_engine::MIME_TYPE_OPUS;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use tokio::sync::{mpsc, watch};
use webrtc::media_stream::Track;
use webrtc::media_stream::track_local::TrackLocal;
use webrtc::media_stream::track_local::static_sample::TrackLocalStaticSample;
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionIceEvent, RTCPeerConnectionState, RTCSessionDescription, Registry,
    SettingEngineBuilder, register_default_interceptors,
};
use webrtc::rtp_transceiver::RtpSender;

use crate::ClientError;
use crate::audio::{
    AudioSource, FRAME, Generator, ReceiveStats, SAMPLE_RATE, StreamTracker, tone_present,
};

/// How a call's media is made.
#[derive(Debug, Clone)]
pub struct MediaOptions {
    pub source: AudioSource,
    /// The tone expected from the other side (for the continuity figure), if any.
    pub expect_tone: Option<f32>,
    /// Use only TURN relay candidates (ICE transport policy `relay`).
    pub relay_only: bool,
    /// Write what is received (decoded) to this WAV file.
    pub wav_out: Option<PathBuf>,
    /// Opus target bitrate, bits per second.
    pub bitrate: i32,
    /// Local UDP addresses media binds. A wildcard (`0.0.0.0:0`, the default) means every
    /// non-loopback interface; a concrete address binds just that one.
    pub udp_bind: Vec<String>,
}

impl Default for MediaOptions {
    fn default() -> Self {
        MediaOptions {
            source: AudioSource::Tone { freq: 440.0 },
            expect_tone: Some(440.0),
            relay_only: false,
            wav_out: None,
            bitrate: 32_000,
            udp_bind: vec!["0.0.0.0:0".to_owned()],
        }
    }
}

/// What one side of a call measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CallStats {
    pub frames_sent: u64,
    #[serde(flatten)]
    pub received: ReceiveStats,
    /// From the session's creation to the first decoded frame.
    pub first_audio_ms: Option<u64>,
}

impl CallStats {
    /// Decoded frames out of those that should have arrived (received + lost), in percent.
    pub fn decoded_pct(&self) -> f64 {
        let expected = self.received.frames_received + self.received.frames_lost;
        if expected == 0 {
            return 0.0;
        }
        100.0 * self.received.frames_decoded as f64 / expected as f64
    }

    /// Decoded frames in which the expected tone was heard, in percent of those decoded.
    pub fn tone_pct(&self) -> f64 {
        if self.received.frames_decoded == 0 {
            return 0.0;
        }
        100.0 * self.received.tone_frames as f64 / self.received.frames_decoded as f64
    }
}

struct Shared {
    stats: Mutex<ReceiveStats>,
    first_audio: Mutex<Option<Instant>>,
    created: Instant,
    opts: MediaOptions,
}

struct Handler {
    candidates: mpsc::UnboundedSender<IceCandidate>,
    state: watch::Sender<RTCPeerConnectionState>,
    shared: Arc<Shared>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        if let Ok(c) = event.candidate.to_json() {
            let _ = self.candidates.send(IceCandidate {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index,
            });
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let shared = self.shared.clone();
        tokio::spawn(receive(track, shared));
    }
}

/// Decodes one incoming audio track until it ends.
async fn receive(track: Arc<dyn TrackRemote>, shared: Arc<Shared>) {
    let mut decoder = match opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("natter-client: opus decoder: {e}");
            return;
        }
    };
    let mut wav = shared.opts.wav_out.as_ref().and_then(|p| {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        hound::WavWriter::create(p, spec)
            .map_err(|e| eprintln!("natter-client: {}: {e}", p.display()))
            .ok()
    });
    let mut tracker = StreamTracker::default();
    let start = Instant::now();
    let mut pcm = vec![0i16; FRAME * 6];
    while let Some(ev) = track.poll().await {
        let TrackRemoteEvent::OnRtpPacket(pkt) = ev else {
            if matches!(ev, TrackRemoteEvent::OnEnded) {
                break;
            }
            continue;
        };
        let arrival = start.elapsed().as_secs_f64();
        let gap = tracker.packet(pkt.header.sequence_number, pkt.header.timestamp, arrival);
        let payload = &pkt.payload[..];
        let mut decoded_frames: Vec<Vec<i16>> = Vec::new();
        let mut concealed = 0;
        for i in 0..gap {
            // The newest missing frame can come back from this packet's FEC; older ones are
            // concealed.
            let fec = i + 1 == gap;
            let input: &[u8] = if fec { payload } else { &[] };
            if let Ok(n) = decoder.decode(input, &mut pcm[..FRAME], fec) {
                concealed += 1;
                decoded_frames.push(pcm[..n].to_vec());
            }
        }
        let mut this_frame = None;
        if let Ok(n) = decoder.decode(payload, &mut pcm, false) {
            this_frame = Some(pcm[..n].to_vec());
        }
        let mut s = shared.stats.lock().unwrap();
        s.frames_received += 1;
        s.frames_lost += u64::from(gap);
        s.frames_concealed += concealed;
        s.jitter_ms = tracker.jitter_ms();
        if let Some(frame) = this_frame {
            s.frames_decoded += 1;
            if shared
                .opts
                .expect_tone
                .is_some_and(|f| tone_present(&frame, f))
            {
                s.tone_frames += 1;
            }
            decoded_frames.push(frame);
            let mut first = shared.first_audio.lock().unwrap();
            if first.is_none() {
                *first = Some(Instant::now());
            }
        }
        drop(s);
        if let Some(w) = wav.as_mut() {
            for f in &decoded_frames {
                for v in f {
                    let _ = w.write_sample(*v);
                }
            }
        }
    }
    if let Some(w) = wav {
        let _ = w.finalize();
    }
}

/// One call's peer connection and audio.
pub struct MediaSession {
    pc: Arc<dyn PeerConnection>,
    track: Arc<TrackLocalStaticSample>,
    sender: Arc<dyn RtpSender>,
    shared: Arc<Shared>,
    sent: Arc<AtomicU64>,
    state: watch::Receiver<RTCPeerConnectionState>,
    candidates: Mutex<Option<mpsc::UnboundedReceiver<IceCandidate>>>,
    sending: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// ICE timing (see `MediaSession::new`). Besides pacing checks (50 ms is RFC 8445's Ta),
/// the check and keepalive intervals are what wake webrtc-rs 0.21's driver while a call
/// connects: it hands TURN-relayed writes to its TURN client after it has flushed that
/// client, so they leave only on the driver's next wake-up. With the library's 200 ms / 2 s
/// a relayed handshake crawled (2.5 s on loopback); with these it takes under a second.
/// A pair gets 200 checks (10 s) before it counts as failed: with 50 per pair, relayed calls
/// on a machine short of CPU sometimes gave up on their only pair and never connected.
const SRFLX_ACCEPTANCE_WAIT: Duration = Duration::from_millis(100);
const PRFLX_ACCEPTANCE_WAIT: Duration = Duration::from_millis(200);
const RELAY_ACCEPTANCE_WAIT: Duration = Duration::from_millis(400);
const ICE_CHECK_INTERVAL: Duration = Duration::from_millis(50);
const ICE_CHECKS_PER_PAIR: u16 = 200;
const ICE_KEEPALIVE: Duration = Duration::from_millis(100);

fn rtc_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(format!("webrtc: {e}"))
}

impl MediaSession {
    /// A peer connection with one Opus audio track, using `ice_servers`.
    pub async fn new(
        ice_servers: &[IceServer],
        opts: MediaOptions,
    ) -> Result<MediaSession, ClientError> {
        let mut media = MediaEngine::default();
        media.register_default_codecs().map_err(rtc_err)?;
        let registry =
            register_default_interceptors(Registry::new(), &mut media).map_err(rtc_err)?;
        let servers: Vec<RTCIceServer> = ice_servers
            .iter()
            .map(|s| RTCIceServer {
                urls: s.urls.clone(),
                username: s.username.clone().unwrap_or_default(),
                credential: s.credential.clone().unwrap_or_default(),
            })
            .collect();
        let policy = if opts.relay_only {
            RTCIceTransportPolicy::Relay
        } else {
            RTCIceTransportPolicy::All
        };
        let (cand_tx, cand_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(RTCPeerConnectionState::New);
        let shared = Arc::new(Shared {
            stats: Mutex::new(ReceiveStats::default()),
            first_audio: Mutex::new(None),
            created: Instant::now(),
            opts: opts.clone(),
        });
        // How long ICE lets a pair of each candidate type wait before nominating it. The
        // library's defaults (srflx 0.5 s, prflx 1 s, relay 2 s, from pion) hold a relayed
        // call back by seconds; a call should connect in well under one. Direct paths still
        // get a head start over the relay, which wins at once when it is all there is.
        let relay_wait = if opts.relay_only {
            Duration::ZERO
        } else {
            RELAY_ACCEPTANCE_WAIT
        };
        let settings = SettingEngineBuilder::new()
            .with_host_acceptance_min_wait(Some(Duration::ZERO))
            .with_srflx_acceptance_min_wait(Some(SRFLX_ACCEPTANCE_WAIT))
            .with_prflx_acceptance_min_wait(Some(PRFLX_ACCEPTANCE_WAIT))
            .with_relay_acceptance_min_wait(Some(relay_wait))
            .with_ice_connection_attempts(Some(ICE_CHECK_INTERVAL), Some(ICE_CHECKS_PER_PAIR))
            .with_ice_timeouts(None, None, Some(ICE_KEEPALIVE))
            .build();
        let pc = PeerConnectionBuilder::new()
            .with_setting_engine(settings)
            .with_configuration(
                RTCConfigurationBuilder::new()
                    .with_ice_servers(servers)
                    .with_ice_transport_policy(policy)
                    .build(),
            )
            .with_media_engine(media)
            .with_interceptor_registry(registry)
            .with_handler(Arc::new(Handler {
                candidates: cand_tx,
                state: state_tx,
                shared: shared.clone(),
            }))
            .with_udp_addrs(opts.udp_bind.clone())
            .build()
            .await
            .map_err(rtc_err)?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let ssrc = u32::from_le_bytes(natter_crypto::random_bytes::<4>());
        let track = Arc::new(
            TrackLocalStaticSample::new(
                Instant::now(),
                MediaStreamTrack::new(
                    "natter".to_owned(),
                    "audio".to_owned(),
                    "natter-audio".to_owned(),
                    RtpCodecKind::Audio,
                    vec![RTCRtpEncodingParameters {
                        rtp_coding_parameters: RTCRtpCodingParameters {
                            ssrc: Some(ssrc),
                            ..Default::default()
                        },
                        codec: RTCRtpCodec {
                            mime_type: MIME_TYPE_OPUS.to_owned(),
                            clock_rate: SAMPLE_RATE,
                            channels: 2,
                            sdp_fmtp_line: "minptime=10;useinbandfec=1".to_owned(),
                            rtcp_feedback: vec![],
                        },
                        ..Default::default()
                    }],
                ),
            )
            .map_err(rtc_err)?,
        );
        let sender = pc
            .add_track(track.clone() as Arc<dyn TrackLocal>)
            .await
            .map_err(rtc_err)?;
        Ok(MediaSession {
            pc,
            track,
            sender,
            shared,
            sent: Arc::new(AtomicU64::new(0)),
            state: state_rx,
            candidates: Mutex::new(Some(cand_rx)),
            sending: Mutex::new(None),
        })
    }

    /// The offer (caller side); candidates trickle afterwards.
    pub async fn create_offer(&self) -> Result<String, ClientError> {
        let offer = self.pc.create_offer(None).await.map_err(rtc_err)?;
        let sdp = offer.sdp.clone();
        self.pc
            .set_local_description(offer)
            .await
            .map_err(rtc_err)?;
        Ok(sdp)
    }

    /// A new offer with fresh ICE credentials (ICE restart after a network change).
    pub async fn restart_offer(&self) -> Result<String, ClientError> {
        self.pc.restart_ice().await.map_err(rtc_err)?;
        self.create_offer().await
    }

    /// Takes the caller's offer and returns the answer (callee side).
    pub async fn accept_offer(&self, offer_sdp: &str) -> Result<String, ClientError> {
        let offer = RTCSessionDescription::offer(offer_sdp.to_owned()).map_err(rtc_err)?;
        self.pc
            .set_remote_description(offer)
            .await
            .map_err(rtc_err)?;
        let answer = self.pc.create_answer(None).await.map_err(rtc_err)?;
        let sdp = answer.sdp.clone();
        self.pc
            .set_local_description(answer)
            .await
            .map_err(rtc_err)?;
        Ok(sdp)
    }

    /// Applies the callee's answer (caller side).
    pub async fn set_answer(&self, answer_sdp: &str) -> Result<(), ClientError> {
        let answer = RTCSessionDescription::answer(answer_sdp.to_owned()).map_err(rtc_err)?;
        self.pc
            .set_remote_description(answer)
            .await
            .map_err(rtc_err)
    }

    pub async fn add_candidate(&self, c: IceCandidate) -> Result<(), ClientError> {
        self.pc
            .add_ice_candidate(RTCIceCandidateInit {
                candidate: c.candidate,
                sdp_mid: c.sdp_mid,
                sdp_mline_index: c.sdp_mline_index,
                ..Default::default()
            })
            .await
            .map_err(rtc_err)
    }

    /// Local candidates as they are gathered (once).
    pub fn take_candidates(&self) -> Option<mpsc::UnboundedReceiver<IceCandidate>> {
        self.candidates.lock().unwrap().take()
    }

    /// Waits until media can flow (DTLS and ICE connected) or fails.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let mut rx = self.state.clone();
        let wait = rx.wait_for(|s| {
            matches!(
                s,
                RTCPeerConnectionState::Connected
                    | RTCPeerConnectionState::Failed
                    | RTCPeerConnectionState::Closed
            )
        });
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) if *s == RTCPeerConnectionState::Connected => Ok(()),
            Ok(Ok(s)) => Err(ClientError::Protocol(format!(
                "the media connection is {}",
                *s
            ))),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Protocol(format!(
                "the media connection did not come up within {timeout:?}"
            ))),
        }
    }

    pub fn state(&self) -> RTCPeerConnectionState {
        *self.state.borrow()
    }

    /// Starts sending the audio source, a 20 ms Opus frame at a time.
    pub async fn start_sending(&self) -> Result<(), ClientError> {
        let params = self.sender.get_parameters().await.map_err(rtc_err)?;
        let pt = params
            .rtp_parameters
            .codecs
            .first()
            .map(|c| c.payload_type)
            .ok_or_else(|| ClientError::Protocol("no audio codec was negotiated".into()))?;
        let ssrc = *self
            .track
            .ssrcs()
            .await
            .first()
            .ok_or_else(|| ClientError::Protocol("the audio track has no SSRC".into()))?;
        let mut encoder =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)
                .map_err(|e| ClientError::Protocol(format!("opus encoder: {e}")))?;
        let _ = encoder.set_bitrate(opus::Bitrate::Bits(self.shared.opts.bitrate));
        let _ = encoder.set_inband_fec(true);
        let _ = encoder.set_packet_loss_perc(10);
        let track = self.track.clone();
        let sent = self.sent.clone();
        let mut generator = Generator::new(self.shared.opts.source.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut out = vec![0u8; 1500];
            loop {
                tick.tick().await;
                let frame = generator.next_frame();
                let n = match encoder.encode(&frame, &mut out) {
                    Ok(n) => n,
                    Err(e) => {
                        eprintln!("natter-client: opus encode: {e}");
                        return;
                    }
                };
                let sample = Sample {
                    data: bytes::Bytes::copy_from_slice(&out[..n]),
                    duration: Duration::from_millis(20),
                    ..Sample::new(Instant::now())
                };
                if track
                    .sample_writer(ssrc, pt)
                    .write_sample(&sample)
                    .await
                    .is_ok()
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        if let Some(old) = self.sending.lock().unwrap().replace(task) {
            old.abort();
        }
        Ok(())
    }

    pub fn stats(&self) -> CallStats {
        CallStats {
            frames_sent: self.sent.load(Ordering::Relaxed),
            received: self.shared.stats.lock().unwrap().clone(),
            first_audio_ms: self
                .shared
                .first_audio
                .lock()
                .unwrap()
                .map(|t| t.duration_since(self.shared.created).as_millis() as u64),
        }
    }

    /// When the first frame was decoded, if yet.
    pub fn first_audio(&self) -> Option<Instant> {
        *self.shared.first_audio.lock().unwrap()
    }

    /// Stops sending and closes the peer connection.
    pub async fn close(&self) {
        if let Some(t) = self.sending.lock().unwrap().take() {
            t.abort();
        }
        let _ = self.pc.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two sessions in one process, signaling handed over directly: audio flows both ways.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn opus_audio_flows_both_ways_over_webrtc() {
        let a = MediaSession::new(
            &[],
            MediaOptions {
                source: AudioSource::Tone { freq: 440.0 },
                expect_tone: Some(660.0),
                udp_bind: vec!["127.0.0.1:0".to_owned()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let b = MediaSession::new(
            &[],
            MediaOptions {
                source: AudioSource::Tone { freq: 660.0 },
                expect_tone: Some(440.0),
                udp_bind: vec!["127.0.0.1:0".to_owned()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let offer = a.create_offer().await.unwrap();
        let answer = b.accept_offer(&offer).await.unwrap();
        a.set_answer(&answer).await.unwrap();
        // Trickle each side's candidates to the other.
        let (mut ca, mut cb) = (a.take_candidates().unwrap(), b.take_candidates().unwrap());
        let (a2, b2) = (Arc::new(a), Arc::new(b));
        let (ta, tb) = (a2.clone(), b2.clone());
        let pump_ab = tokio::spawn(async move {
            while let Some(c) = ca.recv().await {
                let _ = tb.add_candidate(c).await;
            }
        });
        let pump_ba = tokio::spawn(async move {
            while let Some(c) = cb.recv().await {
                let _ = ta.add_candidate(c).await;
            }
        });
        a2.wait_connected(Duration::from_secs(10)).await.unwrap();
        b2.wait_connected(Duration::from_secs(10)).await.unwrap();
        a2.start_sending().await.unwrap();
        b2.start_sending().await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (sa, sb) = (a2.stats(), b2.stats());
        eprintln!("a: {sa:?}\nb: {sb:?}");
        for (name, s) in [("a", &sa), ("b", &sb)] {
            assert!(s.frames_sent >= 80, "{name} sent {}", s.frames_sent);
            assert!(s.received.frames_decoded >= 70, "{name}: {s:?}");
            assert!(s.decoded_pct() >= 95.0, "{name}: {s:?}");
            assert!(s.tone_pct() >= 90.0, "{name} hears the other's tone: {s:?}");
        }
        a2.close().await;
        b2.close().await;
        pump_ab.abort();
        pump_ba.abort();
    }
}
