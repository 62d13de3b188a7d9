//! The synthetic camera: a moving test pattern whose every frame carries its frame number
//! and capture time, drawn as black and white blocks big enough to survive VP8 at low
//! bitrates, so the receiver reads them back from the decoded picture.

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub frame: u32,
    /// Wall-clock milliseconds (UNIX time, wrapping at 2^32) when the frame was captured.
    pub capture_ms: u32,
}

const BITS_PER_ROW: usize = 16;
/// frame (32 bits), capture time (32), check (16).
const ROWS: usize = 5;
const DARK: u8 = 24;
const LIGHT: u8 = 232;

/// The block edge for a picture `width` wide: 16 px (a VP8 macroblock) where it fits.
fn block(width: u32) -> usize {
    if width as usize >= BITS_PER_ROW * 16 {
        16
    } else {
        8
    }
}

/// The smallest picture that holds a stamp.
pub const MIN_WIDTH: u32 = (BITS_PER_ROW * 8) as u32;
pub const MIN_HEIGHT: u32 = (ROWS * 8 * 2) as u32;

fn check_bits(frame: u32, capture_ms: u32) -> u16 {
    // FNV-1a over the 8 bytes, folded to 16 bits: a misread block fails it.
    let mut h: u32 = 0x811c_9dc5;
    for b in frame
        .to_be_bytes()
        .into_iter()
        .chain(capture_ms.to_be_bytes())
    {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h >> 16) ^ (h & 0xFFFF)) as u16
}

fn stamp_bits(s: Stamp) -> [u16; ROWS] {
    [
        (s.frame >> 16) as u16,
        s.frame as u16,
        (s.capture_ms >> 16) as u16,
        s.capture_ms as u16,
        check_bits(s.frame, s.capture_ms),
    ]
}

/// Generates I420 pictures.
pub struct TestPattern {
    width: u32,
    height: u32,
    buf: Vec<u8>,
}

impl TestPattern {
    pub fn new(width: u32, height: u32) -> Result<TestPattern, String> {
        if width < MIN_WIDTH
            || height < MIN_HEIGHT
            || !width.is_multiple_of(2)
            || !height.is_multiple_of(2)
        {
            return Err(format!(
                "the test pattern needs an even size of at least {MIN_WIDTH}x{MIN_HEIGHT}, not {width}x{height}"
            ));
        }
        Ok(TestPattern {
            width,
            height,
            buf: vec![0u8; (width * height * 3 / 2) as usize],
        })
    }

    /// Draws frame `s.frame`: a diagonal ramp scrolling right, a square bouncing across it,
    /// the stamp in the top-left corner.
    pub fn draw(&mut self, s: Stamp) -> &[u8] {
        let (w, h) = (self.width as usize, self.height as usize);
        let n = s.frame as usize;
        let (luma, chroma) = self.buf.split_at_mut(w * h);
        for (y, row) in luma.chunks_exact_mut(w).enumerate() {
            for (x, px) in row.iter_mut().enumerate() {
                *px = (((x + y + 3 * n) & 0xFF) / 2 + 48) as u8;
            }
        }
        // The square: 1/6 of the height, bouncing horizontally, 4 px per frame.
        let side = (h / 6).max(8);
        let span = w - side;
        let t = (4 * n) % (2 * span);
        let x0 = if t < span { t } else { 2 * span - t };
        let y0 = h / 2 - side / 2;
        for row in luma.chunks_exact_mut(w).skip(y0).take(side) {
            row[x0..x0 + side].fill(235);
        }
        // Chroma: a tint that drifts with time.
        let (u, v) = chroma.split_at_mut(w * h / 4);
        u.fill((96 + (n % 64)) as u8);
        v.fill((160 - (n % 64)) as u8);
        // The stamp.
        let b = block(self.width);
        for (r, bits) in stamp_bits(s).into_iter().enumerate() {
            for i in 0..BITS_PER_ROW {
                let on = bits >> (BITS_PER_ROW - 1 - i) & 1 == 1;
                let value = if on { LIGHT } else { DARK };
                for y in r * b..(r + 1) * b {
                    luma[y * w + i * b..y * w + (i + 1) * b].fill(value);
                }
            }
        }
        &self.buf
    }
}

/// Reads the stamp back from a decoded luma plane (`width` pixels a row); None when it does
/// not check out (a damaged or foreign picture).
pub fn read_stamp(luma: &[u8], width: u32, height: u32) -> Option<Stamp> {
    if width < MIN_WIDTH || height < MIN_HEIGHT || luma.len() < (width * height) as usize {
        return None;
    }
    let w = width as usize;
    let b = block(width);
    let mut rows = [0u16; ROWS];
    for (r, bits) in rows.iter_mut().enumerate() {
        for i in 0..BITS_PER_ROW {
            // The middle half of the block: its edges blur into the neighbours.
            let (x0, y0) = (i * b + b / 4, r * b + b / 4);
            let mut sum = 0u32;
            for y in y0..y0 + b / 2 {
                for x in x0..x0 + b / 2 {
                    sum += u32::from(luma[y * w + x]);
                }
            }
            let mean = sum / (b * b / 4) as u32;
            *bits = (*bits << 1) | u16::from(mean > 128);
        }
    }
    let frame = (u32::from(rows[0]) << 16) | u32::from(rows[1]);
    let capture_ms = (u32::from(rows[2]) << 16) | u32::from(rows[3]);
    (rows[4] == check_bits(frame, capture_ms)).then_some(Stamp { frame, capture_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamp_reads_back_from_the_raw_picture() {
        for (w, h) in [(640, 360), (320, 240), (128, 80)] {
            let mut p = TestPattern::new(w, h).unwrap();
            for frame in [0, 1, 77, 0xDEAD_BEEF] {
                let s = Stamp {
                    frame,
                    capture_ms: frame.wrapping_mul(31),
                };
                let luma = &p.draw(s)[..(w * h) as usize];
                assert_eq!(read_stamp(luma, w, h), Some(s), "{w}x{h} frame {frame}");
            }
        }
    }

    #[test]
    fn a_damaged_stamp_is_refused() {
        let (w, h) = (320, 240);
        let mut p = TestPattern::new(w, h).unwrap();
        let mut luma = p
            .draw(Stamp {
                frame: 5,
                capture_ms: 9,
            })
            .to_vec();
        // Flip one block of the frame number (row 1, block 15).
        let b = block(w);
        for y in b..2 * b {
            for x in 15 * b..16 * b {
                luma[y * w as usize + x] ^= 0xFF;
            }
        }
        assert_eq!(read_stamp(&luma, w, h), None);
    }

    #[test]
    fn sizes_too_small_for_a_stamp_are_refused() {
        assert!(TestPattern::new(64, 64).is_err());
        assert!(TestPattern::new(321, 240).is_err());
        assert_eq!(read_stamp(&[0; 100], 10, 10), None);
    }
}
