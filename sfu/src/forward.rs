//! Forwarding: each packet of a publisher to every subscriber of its track, through that
//! subscriber's choice of layers; keyframe requests toward publishers; and the periodic
//! allocation that makes the choices from each subscriber's estimate.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use natter_media::video::vp8_rtp::Vp8Header;
use str0m::bwe::Bitrate;
use str0m::media::{KeyframeRequestKind, MediaKind, Rid};
use str0m::rtp::{ExtensionValues, RtpPacket, RtpWrite, Vp8Descriptor};

use crate::allocator::{self, VideoDemand};
use crate::layers::layer_index;
use crate::{KEYFRAME_REQUEST_INTERVAL, ParticipantId, Sfu, SfuEvent, TrackId, participant};

/// A subscriber's video resend cache: 3 s of packets, resends up to half the rate.
const RTX_CACHE_PACKETS: usize = 2000;
const RTX_CACHE_AGE: Duration = Duration::from_secs(3);
const RTX_RATIO_CAP: f32 = 0.5;

/// Subscribers' layers are chosen again this often.
pub const ALLOCATE_EVERY: Duration = Duration::from_millis(500);
/// Publishers' layers are checked for one dropped this often (see
/// [`crate::layers::LayerLiveness`]); one that was is acted on at once.
pub const STALL_CHECK_EVERY: Duration = Duration::from_millis(50);

impl Sfu {
    /// One packet of `publisher`'s to every other member that receives its track.
    pub(crate) fn forward(&mut self, publisher: ParticipantId, pkt: RtpPacket, now: Instant) {
        let Some(pubp) = self.participants.get_mut(&publisher) else {
            return;
        };
        let ssrc = pkt.header.ssrc;
        let Some((mid, rid)) = pubp
            .rtc
            .direct_api()
            .stream_rx(&ssrc)
            .map(|s| (s.mid(), s.rid()))
        else {
            return;
        };
        let Some(published) = pubp.published.get_mut(&mid) else {
            return;
        };
        let kind = published.kind;
        if let Some(c) = self.captured.as_mut() {
            c.push(crate::capture::Captured {
                publisher,
                kind,
                ssrc: *ssrc,
                seq: *pkt.seq_no,
                timestamp: pkt.header.timestamp,
                marker: pkt.header.marker,
                payload: pkt.payload.to_vec(),
            });
        }
        let spatial = layer_index(&published.rids, rid);
        let layers = published.layers();
        published.rates.packet(spatial, pkt.payload.len(), now);
        published.live.packet(spatial, now);
        if let (MediaKind::Audio, Some(level)) = (kind, pkt.header.ext_vals.audio_level) {
            self.speakers.level(&pubp.room, publisher, level, now);
        }
        let pt = pkt.header.payload_type;
        // The codec, and whether this packet is its RED (RFC 2198) form: RED is passed
        // through as it came, so a subscriber without RED cannot take it.
        let codec = pubp
            .rtc
            .codec_config()
            .find(|p| p.pt() == pt || p.red() == Some(pt))
            .map(|p| (*p, p.red() == Some(pt)));
        let Some((params, is_red)) = codec else {
            self.stats.not_forwarded += 1;
            return;
        };
        let members = self.rooms.get(&pubp.room).cloned().unwrap_or_default();
        let track = TrackId { publisher, mid };
        let vp8 = match kind {
            MediaKind::Video => Vp8Header::parse(&pkt.payload),
            MediaKind::Audio => None,
        };
        // Only what a receiver can use of the publisher's extensions: the audio level.
        let ext = ExtensionValues {
            audio_level: pkt.header.ext_vals.audio_level,
            voice_activity: pkt.header.ext_vals.voice_activity,
            ..Default::default()
        };
        let mut keyframes_wanted = BTreeSet::new();
        for sub in members {
            if sub == publisher {
                continue;
            }
            let Some(s) = self.participants.get_mut(&sub) else {
                continue;
            };
            let Some(out) = s.subscribed.get_mut(&track) else {
                continue;
            };
            if !out.negotiated {
                self.stats.not_forwarded += 1;
                continue;
            }
            if out.kind == MediaKind::Video {
                let target = out.target.map(|t| t.min(layers - 1));
                if out.layer != Some(spatial) {
                    // A decoder can start, or change layer, only at a keyframe.
                    if target == Some(spatial) && vp8.is_some_and(|h| h.keyframe) {
                        if out.layer.is_some() {
                            self.stats.layer_switches += 1;
                        }
                        tracing::debug!(
                            subscriber = sub.0,
                            publisher = publisher.0,
                            from = ?out.layer,
                            to = spatial,
                            "layer switch at a keyframe"
                        );
                        out.layer = Some(spatial);
                        out.started = true;
                    } else {
                        self.stats.not_forwarded += 1;
                        if let Some(t) = target {
                            keyframes_wanted.insert(t);
                        }
                        continue;
                    }
                }
                // Waiting to switch down: the link is short, so the current layer stops
                // now (the picture holds) rather than queue ahead of the lower layer's
                // keyframe, which is asked for at once.
                if target.is_none_or(|t| out.layer.is_some_and(|l| t < l)) {
                    out.rewriter.skip(*ssrc, *pkt.seq_no);
                    self.stats.not_forwarded += 1;
                    continue;
                }
                let max_temporal = out.max_temporal;
                if vp8
                    .and_then(|h| h.tid)
                    .is_some_and(|tid| tid > max_temporal)
                {
                    out.rewriter.skip(*ssrc, *pkt.seq_no);
                    self.stats.not_forwarded += 1;
                    continue;
                }
            }
            let out_pt = *out
                .pts
                .entry(pt)
                .or_insert_with(|| participant::map_pt(&s.rtc, &params, is_red));
            let (Some(out_pt), Some(place)) = (
                out_pt,
                out.rewriter
                    .rewrite(*ssrc, *pkt.seq_no, pkt.header.timestamp, now),
            ) else {
                self.stats.not_forwarded += 1;
                continue;
            };
            // One picture numbering across the layers this subscriber is switched between.
            let patch = vp8.and_then(|h| {
                let pid = h.picture_id?;
                let (pid, tl0) = out.pictures.rewrite(*ssrc, pid, h.tl0_pic_idx);
                let mut b = Vp8Descriptor::parse(&pkt.payload)
                    .ok()?
                    .patch()
                    .picture_id(pid);
                if let Some(t) = tl0 {
                    b = b.tl0_pic_idx(t);
                }
                b.build().ok()
            });
            let out_mid = out.mid;
            let first = !std::mem::replace(&mut out.rtx_ready, true);
            let mut api = s.rtc.direct_api();
            let Some(tx) = api.stream_tx_by_mid(out_mid, None) else {
                self.stats.not_forwarded += 1;
                continue;
            };
            if first && kind == MediaKind::Video {
                // As natter's clients: resends may take up to half the video rate (str0m's
                // 15 % is crossed by chance at a few percent loss, and each dropped resend
                // costs a keyframe).
                tx.set_rtx_cache(RTX_CACHE_PACKETS, RTX_CACHE_AGE, Some(RTX_RATIO_CAP));
            }
            let mut w = RtpWrite::new(
                out_pt,
                place.seq.into(),
                place.timestamp,
                pkt.timestamp,
                pkt.payload.clone(),
            )
            .marker(pkt.header.marker)
            .ext_vals(ext.clone())
            .nackable(true);
            if let Some(p) = patch {
                w = w.vp8_patch(p);
            }
            tx.write_rtp(w);
            out.written += 1;
            self.stats.forwarded_packets += 1;
            self.stats.forwarded_bytes += pkt.payload.len() as u64;
            // str0m stamps what was written at the subscriber's next timeout, which is due
            // at once: that run sends it (one run for every subscriber written to, after
            // this datagram), so no poll now.
            s.timeout = Some(s.timeout.map_or(now, |t| t.min(now)));
            s.idle_slack = Duration::ZERO;
            s.unsent_writes += 1;
            s.written_pts |= 1 << (*out_pt & 0x7f);
        }
        for layer in keyframes_wanted {
            self.request_keyframe(track, Some(layer), now);
        }
    }

    /// Asks `track`'s publisher for a keyframe (PLI) of spatial `layer`, at most once per
    /// [`KEYFRAME_REQUEST_INTERVAL`] per track and layer: a keyframe is many packets, and
    /// every subscriber that lost the same picture asks at once.
    pub(crate) fn request_keyframe(&mut self, track: TrackId, layer: Option<usize>, now: Instant) {
        let Some(p) = self.participants.get_mut(&track.publisher) else {
            return;
        };
        let rid: Option<Rid> = p
            .published
            .get(&track.mid)
            .and_then(|t| layer.and_then(|l| t.rids.get(l.min(t.layers() - 1)).copied()));
        let key = (track.mid, rid);
        let last = p.keyframe_asked.get(&key);
        if last.is_some_and(|t| now.saturating_duration_since(*t) < KEYFRAME_REQUEST_INTERVAL) {
            return;
        }
        let mut api = p.rtc.direct_api();
        let Some(rx) = api.stream_rx_by_mid(track.mid, rid) else {
            return;
        };
        rx.request_keyframe(KeyframeRequestKind::Pli);
        tracing::debug!(
            publisher = track.publisher.0,
            ?rid,
            "keyframe request (PLI)"
        );
        p.keyframe_asked.insert(key, now);
        self.stats.keyframe_requests += 1;
        self.drain(track.publisher, now);
    }

    /// Marks the simulcast layers publishers stopped sending though asked for; true if
    /// one did since the last check (the allocation must then be made again).
    pub(crate) fn check_stalled_layers(&mut self, now: Instant) -> bool {
        let mut newly = false;
        for p in self.participants.values_mut() {
            for t in p.published.values_mut() {
                if t.kind != MediaKind::Video || t.rids.len() < 2 {
                    continue;
                }
                let (rids, wanted) = (&t.rids, &t.wanted);
                let asked = |l: usize| wanted.as_ref().is_none_or(|w| w.contains(&rids[l]));
                newly |= t.live.check(asked, now);
            }
        }
        newly
    }

    /// Chooses every subscriber's layers from its estimate, probes toward what it could
    /// use, and tells publishers which layers anyone receives.
    pub(crate) fn reallocate(&mut self, now: Instant) {
        let audio_costs: HashMap<TrackId, u64> = self
            .participants
            .iter()
            .flat_map(|(id, p)| {
                p.published
                    .iter()
                    .filter(|(_, t)| t.kind == MediaKind::Audio)
                    .map(|(mid, t)| {
                        let track = TrackId {
                            publisher: *id,
                            mid: *mid,
                        };
                        (track, allocator::audio_cost(t.rates.measured(0)))
                    })
            })
            .collect();
        let rates: HashMap<TrackId, Vec<u64>> = self
            .participants
            .iter()
            .flat_map(|(id, p)| {
                p.published.iter().map(|(mid, t)| {
                    // Only the layers the publisher is sending can be chosen.
                    let mut bps = t.rates.bps();
                    bps.truncate(t.live.usable(now));
                    (
                        TrackId {
                            publisher: *id,
                            mid: *mid,
                        },
                        bps,
                    )
                })
            })
            .collect();
        let mut wanted: HashMap<TrackId, BTreeSet<usize>> = HashMap::new();
        let ids: Vec<ParticipantId> = self.participants.keys().copied().collect();
        for id in ids {
            let speaker = self
                .participants
                .get(&id)
                .and_then(|p| self.speakers.speaker(&p.room));
            let Some(s) = self.participants.get_mut(&id) else {
                continue;
            };
            let audio: u64 = s
                .subscribed
                .iter()
                .filter(|(_, o)| o.kind == MediaKind::Audio && o.negotiated)
                .map(|(t, _)| audio_costs.get(t).copied().unwrap_or(allocator::AUDIO_BPS))
                .sum();
            let videos: Vec<TrackId> = s
                .subscribed
                .iter()
                .filter(|(_, o)| o.kind == MediaKind::Video)
                .map(|(t, _)| *t)
                .collect();
            let demands: Vec<VideoDemand> = videos
                .iter()
                .map(|t| VideoDemand {
                    priority: u8::from(Some(t.publisher) != speaker),
                    layer_bps: rates.get(t).cloned().unwrap_or_default(),
                })
                .collect();
            let (choices, want_bps) = allocator::allocate(s.estimate_bps, audio, &demands);
            let mut using = audio;
            for ((track, choice), demand) in videos.iter().zip(&choices).zip(&demands) {
                let Some(out) = s.subscribed.get_mut(track) else {
                    continue;
                };
                if out.target != choice.layer || out.max_temporal != choice.max_temporal {
                    self.stats.allocation_changes += 1;
                    tracing::debug!(
                        subscriber = id.0,
                        publisher = track.publisher.0,
                        estimate_kbps = s.estimate_bps / 1000,
                        audio_kbps = audio / 1000,
                        layers_kbps = ?demand.layer_bps.iter().map(|b| b / 1000).collect::<Vec<_>>(),
                        layer = ?choice.layer,
                        max_temporal = choice.max_temporal,
                        "allocation"
                    );
                }
                out.target = choice.layer;
                out.max_temporal = choice.max_temporal;
                if choice.layer.is_none() {
                    out.layer = None;
                }
                if let Some(l) = choice.layer {
                    using += demand.layer_bps.get(l).copied().unwrap_or(0);
                }
                let w = wanted.entry(*track).or_default();
                w.extend(choice.layer);
                w.extend(out.layer);
            }
            // Keep sending what is chosen; probe toward what every track at its best takes.
            s.rtc
                .bwe()
                .set_bitrate(Bitrate::bps(using), Bitrate::bps(want_bps.max(using)));
        }
        self.tell_publishers(wanted, now);
    }

    /// Dynacast: each publisher learns which layers of its tracks anyone receives.
    fn tell_publishers(&mut self, wanted: HashMap<TrackId, BTreeSet<usize>>, now: Instant) {
        for (id, p) in &mut self.participants {
            for (mid, t) in &mut p.published {
                if t.kind != MediaKind::Video || t.rids.is_empty() {
                    continue;
                }
                let track = TrackId {
                    publisher: *id,
                    mid: *mid,
                };
                let rids: Vec<Rid> = wanted
                    .get(&track)
                    .map(|w| w.iter().filter_map(|l| t.rids.get(*l).copied()).collect())
                    .unwrap_or_default();
                if t.wanted.as_ref() != Some(&rids) {
                    t.wanted = Some(rids.clone());
                    t.live.asked(now);
                    self.events.push_back(SfuEvent::Layers {
                        participant: *id,
                        mid: *mid,
                        rids: rids.iter().map(|r| r.to_string()).collect(),
                    });
                }
            }
        }
    }
}
