//! VP8 through the system libvpx, on `env-libvpx-sys`' pre-generated bindings.
//!
//! Why not the `vpx-rs` wrapper: it turns on the bindings' `generate` feature (bindgen and
//! a 650 MB libclang at build time) and has no way to change the bitrate of a running
//! encoder (`vpx_codec_enc_config_set`), which rate adaptation needs. What natter uses of
//! libvpx is small: a realtime VP8 encoder and a decoder, wrapped here.

use std::mem::MaybeUninit;
use std::os::raw::{c_int, c_long, c_uint, c_ulong};
use std::ptr;

use vpx_sys as sys;

/// The RTP clock of video: encoder timestamps are in its ticks.
pub const RTP_CLOCK: u32 = 90_000;
/// The largest picture accepted, either way (a 1080p frame).
pub const MAX_WIDTH: u32 = 1920;
pub const MAX_HEIGHT: u32 = 1088;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VpxError {
    #[error("vp8: {0} failed: {1}")]
    Call(&'static str, String),
    #[error("vp8: {0}")]
    Invalid(String),
}

fn check(what: &'static str, err: sys::vpx_codec_err_t) -> Result<(), VpxError> {
    if err == sys::VPX_CODEC_OK {
        return Ok(());
    }
    // SAFETY: libvpx returns a static, NUL-terminated string for every error code.
    let msg = unsafe { std::ffi::CStr::from_ptr(sys::vpx_codec_err_to_string(err)) };
    Err(VpxError::Call(what, msg.to_string_lossy().into_owned()))
}

/// What the encoder makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderSettings {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub bitrate_kbps: u32,
    /// 1, or 2 for two temporal layers: every other frame is a discardable enhancement
    /// frame that references only the base layer, so an SFU can halve the frame rate by
    /// dropping them.
    pub temporal_layers: u8,
}

/// The base layer's share of the bitrate with two temporal layers (libwebrtc gives it 60 %).
const BASE_LAYER_SHARE: f64 = 0.6;

impl EncoderSettings {
    fn validate(&self) -> Result<(), VpxError> {
        let ok_size = (16..=MAX_WIDTH).contains(&self.width)
            && (16..=MAX_HEIGHT).contains(&self.height)
            && self.width.is_multiple_of(2)
            && self.height.is_multiple_of(2);
        if !ok_size {
            return Err(VpxError::Invalid(format!(
                "{}x{} is not a size the encoder takes (even, 16x16 to {MAX_WIDTH}x{MAX_HEIGHT})",
                self.width, self.height
            )));
        }
        if !(1..=60).contains(&self.fps) {
            return Err(VpxError::Invalid(format!(
                "{} fps is not 1 to 60",
                self.fps
            )));
        }
        if !(1..=2).contains(&self.temporal_layers) {
            return Err(VpxError::Invalid(format!(
                "{} temporal layers is not 1 or 2",
                self.temporal_layers
            )));
        }
        if !(30..=20_000).contains(&self.bitrate_kbps) {
            return Err(VpxError::Invalid(format!(
                "{} kbit/s is not 30 to 20000",
                self.bitrate_kbps
            )));
        }
        Ok(())
    }
}

/// One encoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    pub data: Vec<u8>,
    pub keyframe: bool,
    pub temporal: crate::video::vp8_rtp::TemporalInfo,
}

/// Per-frame libvpx flags of the two-layer pattern: the base layer references and updates
/// only LAST; an enhancement frame references LAST (the previous base frame) and updates
/// nothing, so dropping it costs nothing.
fn layer_flags(tid: u8) -> sys::vpx_enc_frame_flags_t {
    let base = sys::VP8_EFLAG_NO_REF_GF
        | sys::VP8_EFLAG_NO_REF_ARF
        | sys::VP8_EFLAG_NO_UPD_GF
        | sys::VP8_EFLAG_NO_UPD_ARF;
    let flags = if tid == 0 {
        base
    } else {
        base | sys::VP8_EFLAG_NO_UPD_LAST | sys::VP8_EFLAG_NO_UPD_ENTROPY
    };
    flags as sys::vpx_enc_frame_flags_t
}

/// Cumulative per-layer targets, kbit/s, as libvpx wants them.
fn set_layer_rates(cfg: &mut sys::vpx_codec_enc_cfg_t, s: &EncoderSettings) {
    if s.temporal_layers < 2 {
        return;
    }
    cfg.ts_number_layers = 2;
    cfg.ts_periodicity = 2;
    cfg.ts_layer_id[0] = 0;
    cfg.ts_layer_id[1] = 1;
    cfg.ts_rate_decimator[0] = 2;
    cfg.ts_rate_decimator[1] = 1;
    cfg.ts_target_bitrate[0] = (f64::from(s.bitrate_kbps) * BASE_LAYER_SHARE) as c_uint;
    cfg.ts_target_bitrate[1] = s.bitrate_kbps;
}

/// An initialised libvpx codec context, destroyed when dropped. Boxed: libvpx keeps
/// pointers into the context, so it must not move once initialised.
struct Context(Box<sys::vpx_codec_ctx_t>);

// SAFETY: the context is used only through `&mut self`, from one thread at a time, and
// libvpx's VP8 encoder and decoder keep no thread-affine state.
unsafe impl Send for Context {}

impl Context {
    /// Runs `init` on zeroed storage; the context exists only if it succeeded.
    fn init(
        what: &'static str,
        init: impl FnOnce(*mut sys::vpx_codec_ctx_t) -> sys::vpx_codec_err_t,
    ) -> Result<Context, VpxError> {
        // SAFETY: a zeroed context is what the libvpx init functions expect to fill in.
        let mut ctx: Box<sys::vpx_codec_ctx_t> =
            Box::new(unsafe { MaybeUninit::zeroed().assume_init() });
        check(what, init(&mut *ctx))?;
        Ok(Context(ctx))
    }

    fn ptr(&mut self) -> *mut sys::vpx_codec_ctx_t {
        &mut *self.0
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: initialised (`init` succeeded), destroyed once.
        unsafe {
            sys::vpx_codec_destroy(self.ptr());
        }
    }
}

/// A realtime VP8 encoder (CBR, no look-ahead, error resilient) as WebRTC senders set it up.
pub struct Vp8Encoder {
    ctx: Context,
    cfg: sys::vpx_codec_enc_cfg_t,
    settings: EncoderSettings,
    /// Frames since the last keyframe, for the temporal pattern.
    in_pattern: u64,
}

// SAFETY: the context is Send (above); the config's only pointers are the two-pass stats
// buffers, null for a realtime one-pass encoder.
unsafe impl Send for Vp8Encoder {}

impl Vp8Encoder {
    pub fn new(settings: EncoderSettings) -> Result<Vp8Encoder, VpxError> {
        settings.validate()?;
        // SAFETY: the interface is a static; the config is filled in by libvpx before use.
        let mut cfg = unsafe {
            let mut cfg = MaybeUninit::<sys::vpx_codec_enc_cfg_t>::zeroed();
            check(
                "vpx_codec_enc_config_default",
                sys::vpx_codec_enc_config_default(sys::vpx_codec_vp8_cx(), cfg.as_mut_ptr(), 0),
            )?;
            cfg.assume_init()
        };
        cfg.g_w = settings.width;
        cfg.g_h = settings.height;
        cfg.g_timebase = sys::vpx_rational {
            num: 1,
            den: RTP_CLOCK as c_int,
        };
        cfg.g_threads = if settings.width * settings.height >= 640 * 480 {
            2
        } else {
            1
        };
        cfg.g_lag_in_frames = 0;
        cfg.g_error_resilient = sys::VPX_ERROR_RESILIENT_DEFAULT as _;
        cfg.rc_end_usage = sys::vpx_rc_mode::VPX_CBR;
        cfg.rc_target_bitrate = settings.bitrate_kbps;
        cfg.rc_min_quantizer = 2;
        cfg.rc_max_quantizer = 56;
        cfg.rc_undershoot_pct = 100;
        cfg.rc_overshoot_pct = 15;
        cfg.rc_buf_initial_sz = 500;
        cfg.rc_buf_optimal_sz = 600;
        cfg.rc_buf_sz = 1000;
        // The encoder skips a frame rather than overshoot when its buffer runs low (as
        // libwebrtc's VP8 does, at the same threshold): when the target falls below what the
        // picture needs at the highest quantizer (the estimate collapsing, the queue pushback
        // draining a full bottleneck queue), the frame rate gives, not the link.
        cfg.rc_dropframe_thresh = 30;
        // Keyframes come on request (PLI/FIR) and at least every 100 s.
        cfg.kf_mode = sys::vpx_kf_mode::VPX_KF_AUTO;
        cfg.kf_max_dist = 100 * settings.fps;
        set_layer_rates(&mut cfg, &settings);

        // SAFETY: cfg outlives the call.
        let ctx = Context::init("vpx_codec_enc_init", |ctx| unsafe {
            sys::vpx_codec_enc_init_ver(
                ctx,
                sys::vpx_codec_vp8_cx(),
                &cfg,
                0,
                sys::VPX_ENCODER_ABI_VERSION as c_int,
            )
        })?;
        let mut enc = Vp8Encoder {
            ctx,
            cfg,
            settings,
            in_pattern: 0,
        };
        // Speed: libwebrtc's realtime setting for VP8 on a desktop CPU.
        enc.control(sys::vp8e_enc_control_id::VP8E_SET_CPUUSED as c_int, -6)?;
        enc.control(
            sys::vp8e_enc_control_id::VP8E_SET_NOISE_SENSITIVITY as c_int,
            0,
        )?;
        enc.control(
            sys::vp8e_enc_control_id::VP8E_SET_STATIC_THRESHOLD as c_int,
            1,
        )?;
        // A keyframe may take at most 3 times a frame's share of the bitrate.
        enc.control(
            sys::vp8e_enc_control_id::VP8E_SET_MAX_INTRA_BITRATE_PCT as c_int,
            300,
        )?;
        Ok(enc)
    }

    fn control(&mut self, id: c_int, value: c_int) -> Result<(), VpxError> {
        // SAFETY: the context is initialised; these controls take one int.
        check("vpx_codec_control", unsafe {
            sys::vpx_codec_control_(self.ctx.ptr(), id, value)
        })
    }

    pub fn settings(&self) -> EncoderSettings {
        self.settings
    }

    /// Changes the target bitrate of the running encoder (no keyframe needed).
    pub fn set_bitrate(&mut self, kbps: u32) -> Result<(), VpxError> {
        let next = EncoderSettings {
            bitrate_kbps: kbps,
            ..self.settings
        };
        next.validate()?;
        self.cfg.rc_target_bitrate = kbps;
        set_layer_rates(&mut self.cfg, &next);
        // SAFETY: the context is initialised and the config is a valid one it accepted.
        check("vpx_codec_enc_config_set", unsafe {
            sys::vpx_codec_enc_config_set(self.ctx.ptr(), &self.cfg)
        })?;
        self.settings = next;
        Ok(())
    }

    /// Encodes one I420 picture (`width * height * 3 / 2` bytes) shown at `pts` (90 kHz
    /// ticks) for `duration` ticks. None when the encoder produced nothing for it.
    pub fn encode(
        &mut self,
        i420: &[u8],
        pts: i64,
        duration: u32,
        force_keyframe: bool,
    ) -> Result<Option<EncodedFrame>, VpxError> {
        let (w, h) = (self.settings.width, self.settings.height);
        let need = (w * h * 3 / 2) as usize;
        if i420.len() != need {
            return Err(VpxError::Invalid(format!(
                "a {w}x{h} picture is {need} bytes, not {}",
                i420.len()
            )));
        }
        // A keyframe starts the temporal pattern over, as a base frame.
        if force_keyframe {
            self.in_pattern = 0;
        }
        let layers = u64::from(self.settings.temporal_layers);
        let tid = (self.in_pattern % layers) as u8;
        let mut flags = if force_keyframe {
            sys::VPX_EFLAG_FORCE_KF as sys::vpx_enc_frame_flags_t
        } else {
            0
        };
        if layers > 1 {
            flags |= layer_flags(tid);
            self.control(
                sys::vp8e_enc_control_id::VP8E_SET_TEMPORAL_LAYER_ID as c_int,
                c_int::from(tid),
            )?;
        }
        self.in_pattern += 1;
        let temporal = crate::video::vp8_rtp::TemporalInfo {
            tid,
            layer_sync: tid > 0,
            discardable: tid > 0,
        };
        let mut out = None;
        // SAFETY: the image only borrows `i420`, which outlives the encode call (libvpx
        // copies what it keeps, as there is no look-ahead); packets are copied out before
        // the next call into the encoder.
        unsafe {
            let mut img = MaybeUninit::<sys::vpx_image_t>::zeroed();
            let wrapped = sys::vpx_img_wrap(
                img.as_mut_ptr(),
                sys::vpx_img_fmt::VPX_IMG_FMT_I420,
                w as c_uint,
                h as c_uint,
                1,
                i420.as_ptr() as *mut u8,
            );
            if wrapped.is_null() {
                return Err(VpxError::Call("vpx_img_wrap", "refused the picture".into()));
            }
            check(
                "vpx_codec_encode",
                sys::vpx_codec_encode(
                    self.ctx.ptr(),
                    wrapped,
                    pts,
                    c_ulong::from(duration),
                    flags,
                    c_ulong::from(sys::VPX_DL_REALTIME),
                ),
            )?;
            let mut iter: sys::vpx_codec_iter_t = ptr::null();
            loop {
                let pkt = sys::vpx_codec_get_cx_data(self.ctx.ptr(), &mut iter);
                if pkt.is_null() {
                    break;
                }
                if (*pkt).kind != sys::vpx_codec_cx_pkt_kind::VPX_CODEC_CX_FRAME_PKT {
                    continue;
                }
                let f = (*pkt).data.frame;
                let data = std::slice::from_raw_parts(f.buf as *const u8, f.sz as usize).to_vec();
                let keyframe = f.flags & sys::VPX_FRAME_IS_KEY != 0;
                if keyframe && tid != 0 {
                    // libvpx put a keyframe of its own in an enhancement slot: it is a base
                    // frame now, and the pattern goes on from it.
                    self.in_pattern = 1;
                }
                out = Some(EncodedFrame {
                    data,
                    keyframe,
                    temporal: if keyframe {
                        crate::video::vp8_rtp::TemporalInfo::BASE
                    } else {
                        temporal
                    },
                });
            }
        }
        Ok(out)
    }
}

/// A decoded picture's luma plane (what the receiver reads the stamp from), tightly packed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedPicture {
    pub width: u32,
    pub height: u32,
    pub luma: Vec<u8>,
}

/// A VP8 decoder.
pub struct Vp8Decoder {
    ctx: Context,
}

impl Vp8Decoder {
    pub fn new() -> Result<Vp8Decoder, VpxError> {
        let cfg = sys::vpx_codec_dec_cfg_t {
            threads: 1,
            w: 0,
            h: 0,
        };
        // SAFETY: cfg outlives the call.
        let ctx = Context::init("vpx_codec_dec_init", |ctx| unsafe {
            sys::vpx_codec_dec_init_ver(
                ctx,
                sys::vpx_codec_vp8_dx(),
                &cfg,
                0,
                sys::VPX_DECODER_ABI_VERSION as c_int,
            )
        })?;
        Ok(Vp8Decoder { ctx })
    }

    /// Decodes one frame. An error means the frame (or what it refers to) was damaged; the
    /// caller should wait for a keyframe.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Option<DecodedPicture>, VpxError> {
        if frame.is_empty() || frame.len() > 4 << 20 {
            return Err(VpxError::Invalid(format!(
                "a frame of {} bytes is not decodable",
                frame.len()
            )));
        }
        let mut out = None;
        // SAFETY: libvpx reads `frame` during the call only; the picture's planes are read
        // within its stated dimensions and strides before the next call.
        unsafe {
            check(
                "vpx_codec_decode",
                sys::vpx_codec_decode(
                    self.ctx.ptr(),
                    frame.as_ptr(),
                    frame.len() as c_uint,
                    ptr::null_mut(),
                    0 as c_long,
                ),
            )?;
            let mut iter: sys::vpx_codec_iter_t = ptr::null();
            loop {
                let img = sys::vpx_codec_get_frame(self.ctx.ptr(), &mut iter);
                if img.is_null() {
                    break;
                }
                let img = &*img;
                let (w, h) = (img.d_w, img.d_h);
                if w == 0 || h == 0 || w > MAX_WIDTH || h > MAX_HEIGHT {
                    return Err(VpxError::Invalid(format!("a decoded picture of {w}x{h}")));
                }
                let stride = img.stride[0] as usize;
                let mut luma = Vec::with_capacity((w * h) as usize);
                for row in 0..h as usize {
                    let p = img.planes[0].add(row * stride);
                    luma.extend_from_slice(std::slice::from_raw_parts(p, w as usize));
                }
                out = Some(DecodedPicture {
                    width: w,
                    height: h,
                    luma,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::{Stamp, TestPattern, read_stamp};

    fn settings(layers: u8) -> EncoderSettings {
        EncoderSettings {
            width: 320,
            height: 180,
            fps: 30,
            bitrate_kbps: 300,
            temporal_layers: layers,
        }
    }

    #[test]
    fn with_two_temporal_layers_the_base_alone_decodes_at_half_the_rate() {
        let mut enc = Vp8Encoder::new(settings(2)).unwrap();
        let mut pattern = TestPattern::new(320, 180).unwrap();
        let mut all = Vp8Decoder::new().unwrap();
        let mut base_only = Vp8Decoder::new().unwrap();
        let mut tids = Vec::new();
        let mut base_stamps = Vec::new();
        for n in 0..40u32 {
            let pic = pattern.draw(Stamp {
                frame: n,
                capture_ms: n * 33,
            });
            // A keyframe asked for on an enhancement slot (frame 15) restarts the pattern.
            let f = enc
                .encode(pic, i64::from(n) * 3000, 3000, n == 15)
                .unwrap()
                .unwrap();
            tids.push(f.temporal.tid);
            assert_eq!(f.keyframe, n == 0 || n == 15, "frame {n}");
            assert!(all.decode(&f.data).unwrap().is_some());
            if f.temporal.tid == 0 {
                let p = base_only.decode(&f.data).unwrap().unwrap();
                base_stamps.push(read_stamp(&p.luma, p.width, p.height).unwrap().frame);
            } else {
                assert!(f.temporal.discardable && f.temporal.layer_sync);
            }
        }
        assert_eq!(&tids[..4], &[0, 1, 0, 1]);
        assert_eq!(
            &tids[14..18],
            &[0, 0, 1, 0],
            "the keyframe at 15 is a base frame"
        );
        // Every base frame decoded on its own, in order, with no enhancement frame.
        assert_eq!(base_stamps.len(), 21);
        assert!(base_stamps.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn one_layer_is_all_base_frames_and_bad_layer_counts_are_refused() {
        let mut enc = Vp8Encoder::new(settings(1)).unwrap();
        let pic = vec![0u8; 320 * 180 * 3 / 2];
        for n in 0..4 {
            let f = enc.encode(&pic, n * 3000, 3000, false).unwrap().unwrap();
            assert_eq!(f.temporal, crate::video::vp8_rtp::TemporalInfo::BASE);
        }
        assert!(Vp8Encoder::new(settings(3)).is_err());
        assert!(Vp8Encoder::new(settings(0)).is_err());
    }
}
