//! A record of what the SFU can read of the media it forwards: every RTP payload a publisher
//! sent, after SRTP is removed (the operator's `--sfu-capture FILE`). With SFrame on, that is
//! the VP8 payload descriptor and the first bytes of each frame in the clear, and ciphertext;
//! the e2e tests read it back to check that no audio or picture can be recovered from it.
//!
//! File format: the line `natter-sfu-capture 1\n`, then per packet: `a` or `v` (audio,
//! video), the publisher's participant id (u64), the RTP SSRC (u32), extended sequence
//! number (u64), timestamp (u32), marker (u8), the payload length (u32), the payload; big
//! endian. At most [`CAPTURE_MAX_PACKETS`] packets are written.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::Path;

pub use str0m::media::MediaKind;

use crate::ParticipantId;

const MAGIC: &[u8] = b"natter-sfu-capture 1\n";
/// Packets written to one capture, at most (a few minutes of a small call).
pub const CAPTURE_MAX_PACKETS: u64 = 200_000;
/// Packets the core holds for its shell to write, at most (the rest are not captured).
const QUEUED_MAX: usize = 4096;
/// The largest payload a record may claim when read back.
const PAYLOAD_MAX: usize = 2048;

/// One forwarded packet's payload, as the SFU had it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    pub publisher: ParticipantId,
    pub kind: MediaKind,
    pub ssrc: u32,
    pub seq: u64,
    pub timestamp: u32,
    pub marker: bool,
    pub payload: Vec<u8>,
}

const RECORD_HEADER: usize = 1 + 8 + 4 + 8 + 4 + 1 + 4;

/// The core's side: payloads queued for the shell, bounded.
#[derive(Debug, Default)]
pub(crate) struct CaptureQueue {
    queued: VecDeque<Captured>,
    pub dropped: u64,
}

impl CaptureQueue {
    pub fn push(&mut self, c: Captured) {
        if self.queued.len() >= QUEUED_MAX {
            self.dropped += 1;
            return;
        }
        self.queued.push_back(c);
    }

    pub fn pop(&mut self) -> Option<Captured> {
        self.queued.pop_front()
    }
}

/// Writes captured packets to a file, up to [`CAPTURE_MAX_PACKETS`].
pub struct CaptureWriter {
    out: BufWriter<File>,
    written: u64,
}

impl CaptureWriter {
    pub fn create(path: &Path) -> io::Result<CaptureWriter> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(MAGIC)?;
        Ok(CaptureWriter { out, written: 0 })
    }

    pub fn write(&mut self, c: &Captured) -> io::Result<()> {
        if self.written >= CAPTURE_MAX_PACKETS {
            return Ok(());
        }
        self.written += 1;
        let kind = if c.kind == MediaKind::Audio {
            b'a'
        } else {
            b'v'
        };
        self.out.write_all(&[kind])?;
        self.out.write_all(&c.publisher.0.to_be_bytes())?;
        self.out.write_all(&c.ssrc.to_be_bytes())?;
        self.out.write_all(&c.seq.to_be_bytes())?;
        self.out.write_all(&c.timestamp.to_be_bytes())?;
        self.out.write_all(&[u8::from(c.marker)])?;
        self.out
            .write_all(&(c.payload.len() as u32).to_be_bytes())?;
        self.out.write_all(&c.payload)
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// Reads a capture file back; a record cut short at the end (a capture still being
/// written) is left out.
pub fn read_capture(path: &Path) -> io::Result<Vec<Captured>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    parse_capture(&bytes)
}

/// [`read_capture`] of bytes already read.
pub fn parse_capture(bytes: &[u8]) -> io::Result<Vec<Captured>> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let rest = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("not a natter-sfu capture"))?;
    let mut out = Vec::new();
    let mut at = 0;
    while rest.len() - at >= RECORD_HEADER {
        let h = &rest[at..at + RECORD_HEADER];
        let kind = match h[0] {
            b'a' => MediaKind::Audio,
            b'v' => MediaKind::Video,
            _ => return Err(bad("unknown record kind")),
        };
        let u32_at = |i: usize| u32::from_be_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_be_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        let len = u32_at(26) as usize;
        if len > PAYLOAD_MAX {
            return Err(bad("record larger than any RTP payload"));
        }
        at += RECORD_HEADER;
        if rest.len() - at < len {
            break;
        }
        out.push(Captured {
            publisher: ParticipantId(u64_at(1)),
            kind,
            ssrc: u32_at(9),
            seq: u64_at(13),
            timestamp: u32_at(21),
            marker: h[25] != 0,
            payload: rest[at..at + len].to_vec(),
        });
        at += len;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capture_reads_back_and_bad_files_are_refused() {
        let dir = std::env::temp_dir().join(format!("sfu-capture-{}", std::process::id()));
        let mut w = CaptureWriter::create(&dir).unwrap();
        let a = Captured {
            publisher: ParticipantId(7),
            kind: MediaKind::Audio,
            ssrc: 0xdead_beef,
            seq: 70_000,
            timestamp: 960,
            marker: false,
            payload: vec![1, 2, 3],
        };
        let v = Captured {
            publisher: ParticipantId(8),
            kind: MediaKind::Video,
            ssrc: 5,
            seq: 1,
            timestamp: 3000,
            marker: true,
            payload: vec![9; 1200],
        };
        w.write(&a).unwrap();
        w.write(&v).unwrap();
        w.flush().unwrap();
        drop(w);
        assert_eq!(read_capture(&dir).unwrap(), vec![a, v]);
        std::fs::write(&dir, b"something else").unwrap();
        assert!(read_capture(&dir).is_err());
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut q = CaptureQueue::default();
        for _ in 0..QUEUED_MAX + 5 {
            q.push(Captured {
                publisher: ParticipantId(1),
                kind: MediaKind::Audio,
                ssrc: 1,
                seq: 1,
                timestamp: 0,
                marker: false,
                payload: vec![0],
            });
        }
        assert_eq!(q.dropped, 5);
    }
}
