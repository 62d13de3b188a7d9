//! Fuzzes MessagePack frame decoding (`Encoding::Binary`, subprotocol `natter.v1.bin`):
//! nothing may panic, and every frame that decodes round-trips through the encoder unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_signaling::Encoding;

#[path = "common/frames.rs"]
mod frames;

fuzz_target!(|data: &[u8]| frames::check(Encoding::Binary, data));
