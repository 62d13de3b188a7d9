//! One participant's side of the SFU: its `Rtc` (ICE-lite, RTP mode: packets in and out,
//! never frames), the tracks it publishes, and what it receives of the others' tracks.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::bwe::Bitrate;
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, MediaKind, Mid, Pt, Rid};
use str0m::{Candidate, IceCreds, Rtc, RtcConfig};

use crate::layers::{LayerLiveness, LayerRates, PictureRewriter};
use crate::rewrite::StreamRewriter;
use crate::{ParticipantId, RoomId, SfuError, TrackId};

/// Where each participant's send estimate starts (the allocator of a later change reads it).
const INITIAL_ESTIMATE_KBPS: u64 = 500;

/// An m-line of an offer: which track it carries, and its kind.
pub(crate) type OfferedTrack = (Mid, TrackId, MediaKind);

/// One of a participant's own m-lines that it sends on.
pub(crate) struct PublishedTrack {
    pub kind: MediaKind,
    /// Its simulcast layers, lowest first (empty: one stream).
    pub rids: Vec<Rid>,
    pub rates: LayerRates,
    /// Which layers it is sending (one it dropped is not chosen for anyone).
    pub live: LayerLiveness,
    /// The layers it was last told someone receives (dynacast).
    pub wanted: Option<Vec<Rid>>,
}

impl PublishedTrack {
    pub fn layers(&self) -> usize {
        self.rids.len().max(1)
    }
}

/// What a participant receives of one published track.
pub(crate) struct OutTrack {
    /// The m-line in this participant's `Rtc` that carries it, once negotiated.
    pub mid: Mid,
    pub kind: MediaKind,
    pub negotiated: bool,
    /// Whether forwarding has begun (video begins at a keyframe).
    pub started: bool,
    /// Video: the spatial layer forwarded now, and the one wanted (None: paused); a switch
    /// happens at the wanted layer's next keyframe.
    pub layer: Option<usize>,
    pub target: Option<usize>,
    /// Video: the highest temporal layer forwarded.
    pub max_temporal: u8,
    pub pictures: PictureRewriter,
    /// Its resend cache is set up (once, before the first packet: str0m empties it then).
    pub rtx_ready: bool,
    pub rewriter: StreamRewriter,
    /// Packets written to its stream (what str0m sends beyond these are resends).
    pub written: u64,
    /// Publisher's payload type → this participant's, learned per type on first use.
    pub pts: HashMap<Pt, Option<Pt>>,
}

/// How often str0m reports a participant's stream counters.
const STATS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) struct Participant {
    pub room: RoomId,
    /// The device its room token names.
    pub device: u64,
    pub rtc: Rtc,
    pub ufrag: String,
    /// Its own m-lines that it sends on: what it publishes.
    pub published: HashMap<Mid, PublishedTrack>,
    /// What it receives of the others' tracks.
    pub subscribed: HashMap<TrackId, OutTrack>,
    /// Tracks waiting for the renegotiation in flight to finish.
    pub to_add: VecDeque<(TrackId, MediaKind)>,
    /// Its m-lines of tracks whose publisher left, to turn inactive the same way.
    pub to_stop: VecDeque<Mid>,
    /// The offer this SFU made it, waiting for its answer.
    pub pending: Option<SdpPendingOffer>,
    pub timeout: Option<Instant>,
    /// How much later than `timeout` the shell need wake for it: a pacer gate with nothing
    /// behind it runs with whatever the SFU does next, or this much later (see
    /// `Sfu::drain`).
    pub idle_slack: Duration,
    /// Packets written to it that its `Rtc` has not sent yet, as far as the SFU can tell,
    /// and the payload types they were written with (a bit each), to tell them from
    /// resends and probes.
    pub unsent_writes: u32,
    pub written_pts: u128,
    /// When each of its tracks (and layers) was last asked for a keyframe.
    pub keyframe_asked: HashMap<(Mid, Option<Rid>), Instant>,
    /// The estimate of its downlink (str0m's TWCC/GCC), bits/s.
    pub estimate_bps: u64,
    /// str0m's last counts per m-line it receives on: NACKs it sent us, packets resent.
    pub egress_seen: HashMap<Mid, (u64, u64)>,
    /// str0m's last count of NACKs sent to it, per m-line and layer it publishes.
    pub ingress_nacks: HashMap<(Mid, Option<Rid>), u64>,
}

impl Participant {
    /// A new participant answering `offer`, reachable at `public` (the SFU's one socket).
    pub fn new(
        room: RoomId,
        public: SocketAddr,
        offer: &str,
        now: Instant,
    ) -> Result<(Participant, SdpAnswer), SfuError> {
        let offer =
            SdpOffer::from_sdp_string(offer).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        let creds = IceCreds::new();
        let ufrag = creds.ufrag.clone();
        let mut rtc = RtcConfig::new()
            .set_crypto_provider(Arc::new(natter_media::session::dtls::crypto_provider()))
            .set_rtp_mode(true)
            .set_ice_lite(true)
            .set_local_ice_credentials(creds)
            .clear_codecs()
            .enable_opus(true, true)
            .enable_vp8(true)
            .enable_bwe(Some(Bitrate::kbps(INITIAL_ESTIMATE_KBPS)))
            // Its NACK and resend counts, for the metrics.
            .set_stats_interval(Some(STATS_INTERVAL))
            .build(now);
        let cand = Candidate::host(public, "udp").map_err(|e| SfuError::Rtc(e.to_string()))?;
        rtc.add_local_candidate(cand);
        let answer = rtc
            .sdp_api()
            .accept_offer(offer)
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        Ok((
            Participant {
                room,
                device: 0,
                rtc,
                ufrag,
                published: HashMap::new(),
                subscribed: HashMap::new(),
                to_add: VecDeque::new(),
                to_stop: VecDeque::new(),
                pending: None,
                timeout: None,
                idle_slack: Duration::ZERO,
                unsent_writes: 0,
                written_pts: 0,
                keyframe_asked: HashMap::new(),
                estimate_bps: INITIAL_ESTIMATE_KBPS * 1000,
                egress_seen: HashMap::new(),
                ingress_nacks: HashMap::new(),
            },
            answer,
        ))
    }

    /// Starts a renegotiation adding the waiting tracks and stopping the ended ones, unless
    /// one is in flight. Returns the offer and which of its new m-lines carries which track.
    pub fn offer_waiting(&mut self) -> Option<(String, Vec<OfferedTrack>)> {
        if self.pending.is_some() || (self.to_add.is_empty() && self.to_stop.is_empty()) {
            return None;
        }
        let mut api = self.rtc.sdp_api();
        for mid in self.to_stop.drain(..) {
            api.set_direction(mid, Direction::Inactive);
        }
        let mut added = Vec::new();
        for (track, kind) in self.to_add.drain(..) {
            let stream = format!("p{}", track.publisher.0);
            let id = format!("p{}-{}", track.publisher.0, track.mid);
            let mid = api.add_media(kind, Direction::SendOnly, Some(stream), Some(id), None);
            added.push((mid, track, kind));
        }
        let (offer, pending) = api.apply()?;
        self.pending = Some(pending);
        let mut lines = Vec::new();
        for (mid, track, kind) in added {
            let clock = if kind == MediaKind::Audio {
                48_000
            } else {
                90_000
            };
            let first = u16::from_le_bytes(random_bytes());
            self.subscribed.insert(
                track,
                OutTrack {
                    mid,
                    kind,
                    negotiated: false,
                    started: false,
                    layer: None,
                    // The top layer until the first allocation says otherwise.
                    target: Some(usize::MAX),
                    max_temporal: u8::MAX,
                    pictures: PictureRewriter::default(),
                    rtx_ready: false,
                    rewriter: StreamRewriter::new(clock, first),
                    written: 0,
                    pts: HashMap::new(),
                },
            );
            lines.push((mid, track, kind));
        }
        Some((offer.to_sdp_string(), lines))
    }

    /// The answer to the offer in flight.
    pub fn accept_answer(&mut self, answer: &str) -> Result<(), SfuError> {
        let pending = self.pending.take().ok_or(SfuError::NoOfferPending)?;
        let answer =
            SdpAnswer::from_sdp_string(answer).map_err(|e| SfuError::BadSdp(e.to_string()))?;
        self.rtc
            .sdp_api()
            .accept_answer(pending, answer)
            .map_err(|e| SfuError::BadSdp(e.to_string()))?;
        for t in self.subscribed.values_mut() {
            t.negotiated = true;
        }
        Ok(())
    }
}

/// A subscriber's payload type (in `rtc`) for the publisher's codec `params` (its RED form
/// if `red`), if it negotiated that.
pub(crate) fn map_pt(rtc: &Rtc, params: &str0m::format::PayloadParams, red: bool) -> Option<Pt> {
    let mine = rtc.codec_config().match_params(*params)?;
    if red { mine.red() } else { Some(mine.pt()) }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).expect("the OS random source works");
    b
}

/// A participant id nobody can guess from another's.
pub(crate) fn random_id() -> ParticipantId {
    ParticipantId(u64::from_le_bytes(random_bytes()))
}
