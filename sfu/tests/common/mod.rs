//! Shared by the SFU's integration tests: how a test client's `Rtc` is set up and what its
//! audio frames carry (the sender's index and the frame's number, so a receiver can tell
//! whose frame it heard).

// Each test binary uses a different part of it.
#![allow(dead_code)]

pub mod wire;

use std::sync::Arc;
use std::time::Instant;

use str0m::media::{Frequency, MediaTime, Mid};
use str0m::{Rtc, RtcConfig};

/// A client as natter's are: Opus with RED, VP8, natter's DTLS timers.
pub fn client_rtc(now: Instant) -> Rtc {
    RtcConfig::new()
        .set_crypto_provider(Arc::new(natter_media::session::dtls::crypto_provider()))
        .clear_codecs()
        .enable_opus(true, true)
        .enable_vp8(true)
        .build(now)
}

/// Writes audio frame `n` of client `sender` on `mid` (20 ms of 48 kHz per frame); false
/// while the m-line cannot send yet.
pub fn write_audio_frame(rtc: &mut Rtc, mid: Mid, sender: u8, n: u32, now: Instant) -> bool {
    let Some(w) = rtc.writer(mid) else {
        return false;
    };
    let Some(pt) = w.payload_params().next().map(|p| p.pt()) else {
        return false;
    };
    let mut data = vec![sender];
    data.extend_from_slice(&n.to_le_bytes());
    data.resize(60, 0xAA);
    let time = MediaTime::new(u64::from(n) * 960, Frequency::FORTY_EIGHT_KHZ);
    w.write(pt, now, time, data).unwrap();
    true
}

/// (sender, frame number) of an audio frame written by [`write_audio_frame`].
pub fn audio_frame_id(data: &[u8]) -> (u8, u32) {
    (data[0], u32::from_le_bytes(data[1..5].try_into().unwrap()))
}

/// The secret the tests' SFUs check room tokens with.
pub const SECRET: &[u8] = b"sfu test secret";

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A room token for `device` in `room`, as a gateway mints it, valid for a minute.
pub fn token(room: &str, device: u64) -> String {
    natter_signaling::room_token::mint(SECRET, room, device, unix_now(), 60)
}
