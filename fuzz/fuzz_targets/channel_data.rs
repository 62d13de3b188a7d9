//! Fuzzes ChannelData framing (RFC 8656 §12.4), the TURN data path's own decoder, which the
//! shell calls without going through `Message::parse`: over UDP (unpadded) and over TCP/TLS
//! (padded, framed with `tcp_frame_len`). Nothing may panic; what parses re-encodes to the
//! same bytes; a TCP stream splits into frames that each parse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_turn::stun::{self, ChannelData};

fuzz_target!(|data: &[u8]| {
    for padded in [false, true] {
        if let Ok((cd, took)) = ChannelData::parse(data, padded) {
            assert!(stun::is_channel_data(data));
            assert!(took <= data.len() && took >= 4 + cd.data.len());
            let mut out = Vec::new();
            ChannelData::write(cd.channel, cd.data, padded, &mut out);
            assert_eq!(out[..4 + cd.data.len()], data[..4 + cd.data.len()]);
            let (again, _) = ChannelData::parse(&out, padded).expect("re-encoded parses");
            assert_eq!(again, cd);
        }
    }
    // A TCP stream: what the shell's read loop does with its buffer.
    let mut buf = data;
    while let Some(len) = stun::tcp_frame_len(buf) {
        if len > buf.len() {
            break; // waits for more bytes
        }
        let (frame, rest) = buf.split_at(len);
        if stun::is_channel_data(frame) {
            let (cd, took) = ChannelData::parse(frame, true).expect("a whole frame parses");
            assert_eq!(took, len);
            assert!(cd.data.len() <= len - 4);
        } else {
            let _ = stun::Message::parse(frame);
        }
        buf = rest;
    }
});
