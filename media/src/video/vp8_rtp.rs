//! VP8 RTP payloads (RFC 7741) with the whole payload descriptor an SFU needs: a 15-bit
//! picture id, TL0PICIDX and the temporal layer index with its sync bit. str0m's own
//! packetizer writes only the picture id, and in its 7-bit form for the first 128 frames,
//! which an SFU cannot rewrite to a larger id in place; so natter's clients packetize video
//! themselves and hand str0m finished RTP payloads.

/// The descriptor natter writes: required octet, X octet, 2 octets of picture id, TL0PICIDX,
/// TID/Y/KEYIDX.
pub const DESCRIPTOR_LEN: usize = 6;

/// One frame's place in the temporal structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemporalInfo {
    /// Temporal layer index (0 is the base).
    pub tid: u8,
    /// The frame depends only on base-layer frames (RFC 7741 `Y`): a receiver may start
    /// taking this layer here.
    pub layer_sync: bool,
    /// No other frame references this one (RFC 7741 `N`): it may be dropped.
    pub discardable: bool,
}

impl TemporalInfo {
    pub const BASE: TemporalInfo = TemporalInfo {
        tid: 0,
        layer_sync: false,
        discardable: false,
    };
}

/// Cuts VP8 frames into RTP payloads, numbering pictures as it goes.
#[derive(Debug, Clone)]
pub struct Vp8Packetizer {
    picture_id: u16,
    tl0_pic_idx: u8,
}

impl Vp8Packetizer {
    /// Numbering starts at `first_picture_id` (reduced to 15 bits).
    pub fn new(first_picture_id: u16) -> Vp8Packetizer {
        Vp8Packetizer {
            picture_id: first_picture_id & 0x7FFF,
            tl0_pic_idx: 0,
        }
    }

    /// The payloads of one encoded frame, each at most `mtu` bytes (descriptor included).
    pub fn packetize(&mut self, frame: &[u8], t: TemporalInfo, mtu: usize) -> Vec<Vec<u8>> {
        if t.tid == 0 {
            self.tl0_pic_idx = self.tl0_pic_idx.wrapping_add(1);
        }
        let room = mtu.saturating_sub(DESCRIPTOR_LEN).max(1);
        let mut out = Vec::with_capacity(frame.len().div_ceil(room));
        for (i, chunk) in frame.chunks(room).enumerate() {
            let mut p = Vec::with_capacity(DESCRIPTOR_LEN + chunk.len());
            // X, N, S (start of the frame's first partition), PID 0.
            let start = if i == 0 { 0x10 } else { 0 };
            let n = if t.discardable { 0x20 } else { 0 };
            p.push(0x80 | n | start);
            // I, L, T present; K absent.
            p.push(0x80 | 0x40 | 0x20);
            p.push(0x80 | (self.picture_id >> 8) as u8);
            p.push(self.picture_id as u8);
            p.push(self.tl0_pic_idx);
            p.push(((t.tid & 0x3) << 6) | if t.layer_sync { 0x20 } else { 0 });
            p.extend_from_slice(chunk);
            out.push(p);
        }
        self.picture_id = (self.picture_id + 1) & 0x7FFF;
        out
    }
}

/// What an SFU reads from (and rewrites in) the descriptor of a natter payload, or of any
/// RFC 7741 payload that carries the fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Header {
    /// The descriptor's length: the VP8 frame's bytes begin there.
    pub len: usize,
    /// First packet of a frame.
    pub start: bool,
    pub picture_id: Option<u16>,
    pub tl0_pic_idx: Option<u8>,
    pub tid: Option<u8>,
    pub layer_sync: bool,
    /// The first packet of a keyframe.
    pub keyframe: bool,
}

impl Vp8Header {
    /// Parses the descriptor; None for a payload too short for the fields it announces.
    pub fn parse(p: &[u8]) -> Option<Vp8Header> {
        let b0 = *p.first()?;
        let start = b0 & 0x10 != 0 && b0 & 0x07 == 0;
        let mut i = 1;
        let (mut picture_id, mut tl0_pic_idx, mut tid, mut layer_sync) = (None, None, None, false);
        if b0 & 0x80 != 0 {
            let x = *p.get(i)?;
            i += 1;
            if x & 0x80 != 0 {
                let m = *p.get(i)?;
                i += 1;
                picture_id = Some(if m & 0x80 != 0 {
                    let lo = *p.get(i)?;
                    i += 1;
                    (u16::from(m & 0x7F) << 8) | u16::from(lo)
                } else {
                    u16::from(m)
                });
            }
            if x & 0x40 != 0 {
                tl0_pic_idx = Some(*p.get(i)?);
                i += 1;
            }
            if x & 0x30 != 0 {
                let t = *p.get(i)?;
                i += 1;
                if x & 0x20 != 0 {
                    tid = Some(t >> 6);
                    layer_sync = t & 0x20 != 0;
                }
            }
        }
        let payload_header = p.get(i)?;
        Some(Vp8Header {
            len: i,
            start,
            picture_id,
            tl0_pic_idx,
            tid,
            layer_sync,
            keyframe: start && payload_header & 0x01 == 0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(keyframe: bool, len: usize) -> Vec<u8> {
        // The VP8 payload header: bit 0 clear on a keyframe.
        let mut f = vec![if keyframe { 0x10 } else { 0x11 }];
        f.extend((1..len).map(|i| i as u8));
        f
    }

    #[test]
    fn a_frame_is_cut_at_the_mtu_with_the_whole_descriptor_on_each_packet() {
        let mut p = Vp8Packetizer::new(0x7FFE);
        let f = frame(true, 2500);
        let packets = p.packetize(&f, TemporalInfo::BASE, 1000);
        assert_eq!(packets.len(), 3);
        assert!(packets.iter().all(|q| q.len() <= 1000));
        let body: Vec<u8> = packets
            .iter()
            .flat_map(|q| q[DESCRIPTOR_LEN..].to_vec())
            .collect();
        assert_eq!(body, f);
        let h: Vec<Vp8Header> = packets
            .iter()
            .map(|q| Vp8Header::parse(q).unwrap())
            .collect();
        assert!(h[0].start && h[0].keyframe);
        assert!(!h[1].start && !h[1].keyframe);
        assert_eq!(h[0].picture_id, Some(0x7FFE));
        assert_eq!(h[2].picture_id, Some(0x7FFE));
        assert_eq!(h[0].tl0_pic_idx, Some(1));
        assert_eq!(h[0].tid, Some(0));
        // The next picture, wrapping in 15 bits; a TL1 frame keeps the TL0PICIDX.
        let t1 = TemporalInfo {
            tid: 1,
            layer_sync: true,
            discardable: true,
        };
        let q = p.packetize(&frame(false, 10), t1, 1000);
        let h = Vp8Header::parse(&q[0]).unwrap();
        assert_eq!(
            (h.picture_id, h.tl0_pic_idx, h.tid, h.layer_sync, h.keyframe),
            (Some(0x7FFF), Some(1), Some(1), true, false)
        );
        assert_eq!(q[0][0] & 0x20, 0x20, "N: discardable");
        let q = p.packetize(&frame(false, 10), TemporalInfo::BASE, 1000);
        let h = Vp8Header::parse(&q[0]).unwrap();
        assert_eq!((h.picture_id, h.tl0_pic_idx), (Some(0), Some(2)));
    }

    #[test]
    fn str0m_reads_what_is_written() {
        let mut p = Vp8Packetizer::new(300);
        let q = p.packetize(&frame(true, 50), TemporalInfo::BASE, 1200);
        let d = str0m::rtp::Vp8Descriptor::parse(&q[0]).unwrap();
        assert_eq!(d.picture_id(), Some(300));
        assert_eq!(d.tl0_pic_idx(), Some(1));
        assert!(d.starts_keyframe(&q[0]));
        assert!(str0m::format::detect_vp8_keyframe(&q[0]));
    }

    #[test]
    fn short_or_truncated_descriptors_are_refused() {
        for bad in [
            &[][..],
            &[0x80],
            &[0x80, 0x80],
            &[0x80, 0x80, 0x80],
            &[0x90, 0x40],
        ] {
            assert_eq!(Vp8Header::parse(bad), None, "{bad:?}");
        }
        // No extension: just the required octet.
        let h = Vp8Header::parse(&[0x10, 0x10]).unwrap();
        assert!(h.keyframe && h.picture_id.is_none() && h.tid.is_none());
    }
}
