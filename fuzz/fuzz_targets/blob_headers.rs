//! Fuzzes what the HTTP routes parse out of headers and paths
//! (`natter_messaging::http_parse`): Upload-Length/Offset/Content-Length, `Range`, the append
//! checks, upload ids and blob hashes, and `Sec-WebSocket-Protocol`. Nothing may panic; a
//! range start is below the size; an append never allows more than the upload has left; an
//! encoding is only picked if the client offered its subprotocol.
#![no_main]

use libfuzzer_sys::fuzz_target;
use natter_messaging::http_parse::{
    check_append, choose_encoding, parse_range_start, parse_u64_header, valid_blob_hash,
    valid_upload_id,
};

fuzz_target!(|data: &[u8]| {
    // The first 24 bytes steer the numbers, the rest is the header text.
    let (nums, text) = data.split_at(data.len().min(24));
    let mut n = [0u64; 3];
    for (i, c) in nums.chunks(8).enumerate() {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        n[i] = u64::from_le_bytes(b);
    }
    let (size, current, offset) = (n[0], n[1], n[2]);

    if let Some(v) = parse_u64_header(text) {
        // What parses is the trimmed decimal text.
        let s = std::str::from_utf8(text).expect("parsed text is UTF-8");
        assert_eq!(s.trim().parse::<u64>().ok(), Some(v));
    }
    if let Ok(start) = parse_range_start(text, size) {
        assert!(start < size);
    }
    let declared = parse_u64_header(text);
    if let Ok(left) = check_append(size, current, offset, declared) {
        assert_eq!(offset, current);
        assert_eq!(left, size - current);
        assert!(declared.is_none_or(|d| d <= left));
    }
    if let Ok(s) = std::str::from_utf8(text) {
        if valid_upload_id(s) {
            assert!(s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }
        if valid_blob_hash(s) {
            assert!(s.len() == 64 && !s.contains('/') && !s.contains('.'));
        }
    }
    // Several header values: split the text on newlines.
    let values: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    if let Ok(Some(enc)) = choose_encoding(values.iter().copied()) {
        let wanted = enc.subprotocol();
        let offered = values
            .iter()
            .filter_map(|v| std::str::from_utf8(v).ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim() == wanted);
        assert!(offered, "{wanted} was not offered");
    }
});
