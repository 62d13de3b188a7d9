//! Fuzzes what natter's SFU parses itself, and what it does with a datagram: arbitrary
//! datagrams from members' and strangers' addresses into a live `Sfu` with two joined
//! participants (STUN Binding requests naming their ICE ufrags, so the router's USERNAME
//! path is reached); the router's pin/route/remove; the VP8 payload descriptor (natter's
//! `Vp8Header` and str0m's patch that rewrites picture ids); the sequence/timestamp and
//! picture-id rewriters; SFrame frames into a receiver's keys; room tokens; capture files.
//! Nothing may panic; a pinned address routes to its participant; a participant has at most
//! `MAX_ADDRESSES_PER_PARTICIPANT` addresses; forwarded sequence numbers only go forward.
#![no_main]

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use natter_crypto::call_media::CallKeys;
use natter_media::video::vp8_rtp::Vp8Header;
use natter_sfu::layers::PictureRewriter;
use natter_sfu::rewrite::StreamRewriter;
use natter_sfu::router::{MAX_ADDRESSES_PER_PARTICIPANT, Route, Router};
use natter_sfu::{ParticipantId, Sfu, SfuConfig};
use natter_signaling::DeviceId;
use str0m::media::{Direction, MediaKind};
use str0m::rtp::Vp8Descriptor;
use str0m::{Candidate, Rtc, RtcConfig};

const SECRET: &[u8] = b"fuzz sfu token secret";

#[derive(Arbitrary, Debug)]
enum Op {
    Datagram { from: u8, bytes: Vec<u8> },
    /// A Binding request naming participant `to`'s ufrag, with arbitrary attributes after.
    Binding { from: u8, to: bool, tail: Vec<u8> },
    Tick { ms: u16 },
    Vp8 { payload: Vec<u8>, pid: u16, tl0: u8 },
    Rewrite { ssrc: u8, step: u8, ts: u32, skip: bool },
    Route { from: u8, bytes: Vec<u8>, pin: Option<u8>, remove: Option<u8> },
    Frame { bytes: Vec<u8>, clear: u8 },
    Token { token: String },
    Capture { bytes: Vec<u8> },
}

struct State {
    sfu: Sfu,
    now: Instant,
    ufrags: [String; 2],
    keys: CallKeys,
}

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([10, 0, 0, i % 6], 5000 + u16::from(i % 3)))
}

fn sfu_addr() -> SocketAddr {
    "10.9.0.1:3478".parse().unwrap()
}

fn unix_now() -> u64 {
    1_800_000_000
}

fn setup() -> State {
    let now = Instant::now();
    let mut sfu = Sfu::new(SfuConfig::new(sfu_addr(), SECRET.to_vec()));
    let mut ufrags = [String::new(), String::new()];
    for i in 0..2u8 {
        let mut rtc: Rtc = RtcConfig::new()
            .set_crypto_provider(Arc::new(natter_media::session::dtls::crypto_provider()))
            .clear_codecs()
            .enable_opus(true, true)
            .enable_vp8(true)
            .build(now);
        rtc.add_local_candidate(Candidate::host(addr(i), "udp").unwrap());
        let mut api = rtc.sdp_api();
        api.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None);
        api.add_media(MediaKind::Video, Direction::SendOnly, None, None, None);
        let (offer, _) = api.apply().unwrap();
        let token =
            natter_signaling::room_token::mint(SECRET, "room", u64::from(i), unix_now(), 600);
        let (_, answer) = sfu
            .join(&token, &offer.to_sdp_string(), now, unix_now())
            .unwrap();
        ufrags[i as usize] = answer
            .lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .unwrap()
            .trim()
            .to_string();
    }
    State {
        sfu,
        now,
        ufrags,
        keys: CallKeys::new(DeviceId(1)),
    }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(setup());
}

fn binding(ufrag: &str, tail: &[u8]) -> Vec<u8> {
    let username = format!("{ufrag}:fuzz");
    let mut attrs = Vec::new();
    attrs.extend_from_slice(&0x0006u16.to_be_bytes());
    attrs.extend_from_slice(&(username.len() as u16).to_be_bytes());
    attrs.extend_from_slice(username.as_bytes());
    while attrs.len() % 4 != 0 {
        attrs.push(0);
    }
    attrs.extend_from_slice(&tail[..tail.len().min(256)]);
    let mut m = vec![0x00, 0x01];
    m.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    m.extend_from_slice(&0x2112_A442u32.to_be_bytes());
    m.extend_from_slice(&[7; 12]);
    m.extend_from_slice(&attrs);
    m
}

fuzz_target!(|ops: Vec<Op>| {
    let mut router = Router::default();
    router.add(ParticipantId(1), "aaaa");
    router.add(ParticipantId(2), "bbbb");
    let mut rewriter = StreamRewriter::new(48_000, 100);
    let mut pictures = PictureRewriter::default();
    let mut seqs = [1000u64; 4];
    let mut last_out: Option<u64> = None;
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        for op in ops.into_iter().take(256) {
            match op {
                Op::Datagram { from, bytes } => {
                    let now = s.now;
                    s.sfu.handle_datagram(addr(from), sfu_addr(), &bytes, now);
                }
                Op::Binding { from, to, tail } => {
                    let m = binding(&s.ufrags[usize::from(to)], &tail);
                    let now = s.now;
                    s.sfu.handle_datagram(addr(from), sfu_addr(), &m, now);
                }
                Op::Tick { ms } => {
                    s.now += Duration::from_millis(u64::from(ms));
                    let now = s.now;
                    s.sfu.handle_timeout(now);
                }
                Op::Vp8 { payload, pid, tl0 } => {
                    if let Some(h) = Vp8Header::parse(&payload) {
                        assert!(h.len < payload.len());
                    }
                    if let Ok(d) = Vp8Descriptor::parse(&payload) {
                        let _ = d.patch().picture_id(pid & 0x7FFF).tl0_pic_idx(tl0).build();
                    }
                    let _ = pictures.rewrite(u32::from(tl0 % 3), pid & 0x7FFF, Some(tl0));
                }
                Op::Rewrite {
                    ssrc,
                    step,
                    ts,
                    skip,
                } => {
                    // Extended sequence numbers as str0m hands them over: small steps forward.
                    let i = usize::from(ssrc % 4);
                    seqs[i] += u64::from(step % 8);
                    let ssrc = u32::from(ssrc % 4);
                    if skip {
                        rewriter.skip(ssrc, seqs[i]);
                    } else if let Some(out) = rewriter.rewrite(ssrc, seqs[i], ts, s.now) {
                        if rewriter.source() == Some(ssrc) && step % 8 > 0 {
                            // A newer packet of the current source is never numbered below
                            // one forwarded before it.
                            if let Some(l) = last_out {
                                assert!(out.seq + (1 << 15) > l, "{} after {l}", out.seq);
                            }
                        }
                        last_out = Some(out.seq.max(last_out.unwrap_or(0)));
                    }
                }
                Op::Route {
                    from,
                    bytes,
                    pin,
                    remove,
                } => {
                    let source = addr(from);
                    if let Some(p) = pin {
                        let id = ParticipantId(u64::from(p % 3));
                        router.pin(id, source);
                        assert_eq!(router.route(source, &[0x80, 0, 0, 0]), Route::Pinned(id));
                    }
                    let _ = router.route(source, &bytes);
                    if let Some(r) = remove {
                        router.remove(ParticipantId(u64::from(r % 3)));
                    }
                    for p in 0..3 {
                        assert!(router.addresses(ParticipantId(p)) <= MAX_ADDRESSES_PER_PARTICIPANT);
                    }
                }
                Op::Frame { bytes, clear } => {
                    let _ = s.keys.open(&bytes, usize::from(clear % 16));
                }
                Op::Token { token } => {
                    let _ = natter_signaling::room_token::verify(SECRET, &token, unix_now());
                }
                Op::Capture { bytes } => {
                    let _ = natter_sfu::capture::parse_capture(&bytes);
                }
            }
            while s.sfu.poll_transmit().is_some() {}
            while s.sfu.poll_event().is_some() {}
        }
    });
});
