//! End-to-end encryption of group-call media: SFrame (RFC 9605, the `sframe` crate) on every
//! encoded frame, so the SFU forwards what it cannot read.
//!
//! Each device sending into a call has one key at a time, named by its SFrame key id:
//!
//! ```text
//!  40 bits            16 bits      8 bits
//! +------------------+------------+-------------+
//! | sending device   | epoch      | ratchet step|
//! +------------------+------------+-------------+
//! ```
//!
//! * When someone **joins**, every sender ratchets its key one step forward (HKDF, RFC 9605
//!   §5.1) and shares the new step: the joiner cannot go back to frames sent before it came,
//!   while everyone already in catches up on their own, without waiting for a message.
//! * When someone **leaves** (or is removed from the group), every sender makes a new random
//!   key (the next epoch) and shares it; a key it still holds does not lead to the new one.
//!
//! Keys travel as [`CallKeyShare`]s inside the group's Megolm channel; see the client.
//!
//! A frame may keep its first bytes in the clear (`clear`), authenticated with the frame but
//! not encrypted: for VP8 that is what the SFU needs to find keyframes (10 bytes of a keyframe,
//! 3 of another frame, as Jitsi and LiveKit do; `natter_media::session::vp8_clear_bytes`).
//! The receiver reads the same count off the frame with the same rule.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use sframe::CipherSuite;
use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
use sframe::ratchet::{
    Generation, RatchetBits, RatchetStep, RatchetStepDiff, RatchetingDecryptionKey,
    RatchetingEncryptionKey, RatchetingKeyId, RatchetingKeyStore,
};

use crate::{DeviceId, random_bytes};

/// AES-128-GCM with SHA-256 for the key schedule (the suite browsers' WebCrypto has).
const SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;
const RATCHET_BITS: u8 = 8;
const EPOCH_BITS: u32 = 16;
const DEVICE_BITS: u32 = 40;
/// How many steps a receiver follows for one frame: joins come one at a time, and a frame of a
/// step it missed costs only one derivation per step.
const MAX_STEPS: u64 = 16;
/// Epochs kept per sender: the current one and the one before, for frames still in flight
/// when a sender moved on.
const EPOCHS_KEPT: usize = 2;

/// A sender's key as it travels to the other participants.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, zeroize::ZeroizeOnDrop)]
pub struct CallKeyShare {
    /// The SFrame key id (device, epoch, step).
    #[zeroize(skip)]
    pub kid: u64,
    /// The key material of that step.
    pub material: Vec<u8>,
}

impl std::fmt::Debug for CallKeyShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CallKeyShare {{ kid: {:#x} }}", self.kid)
    }
}

/// Why a frame could not be sealed or opened, or a key not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes cannot keep {1} in the clear")]
    TooShort(usize, usize),
    #[error("key of device {0} shared by device {1}")]
    NotTheirs(DeviceId, DeviceId),
    #[error("sframe: {0}")]
    Sframe(String),
}

fn bits() -> RatchetBits {
    RatchetBits::new(RATCHET_BITS)
}

fn generation(device: DeviceId, epoch: u16) -> u64 {
    ((device.0 & ((1 << DEVICE_BITS) - 1)) << EPOCH_BITS) | u64::from(epoch)
}

/// The sending device a key id names (its low 40 bits).
pub fn kid_device(kid: u64) -> DeviceId {
    DeviceId(kid >> (u32::from(RATCHET_BITS) + EPOCH_BITS))
}

/// One device's keys for one call: its own sending key and every other sender's.
pub struct CallKeys {
    device: DeviceId,
    epoch: u16,
    send: RatchetingEncryptionKey,
    /// The current sending key as shared (the material its step was derived from).
    share: CallKeyShare,
    /// The next epoch's key, shared but not yet used.
    next: Option<(u16, RatchetingEncryptionKey, CallKeyShare)>,
    /// One counter across keys and layers: a nonce is never used twice under one key.
    counter: MonotonicCounter,
    receive: RatchetingKeyStore,
    /// Generations stored in `receive`, per sender, in the order they came (epochs wrap).
    generations: HashMap<DeviceId, VecDeque<u64>>,
}

impl CallKeys {
    /// A fresh random key for `device`, at a random epoch (so a key left over from an
    /// earlier call is not taken for one of this call).
    pub fn new(device: DeviceId) -> CallKeys {
        let epoch = u16::from_le_bytes(random_bytes::<2>());
        let (send, share) = new_key(device, epoch);
        CallKeys {
            device,
            epoch,
            send,
            share,
            next: None,
            counter: MonotonicCounter::default(),
            receive: RatchetingKeyStore::new(bits(), RatchetStepDiff::from(MAX_STEPS)),
            generations: HashMap::new(),
        }
    }

    /// The current sending key, to share with whoever should read this device's frames.
    pub fn current(&self) -> CallKeyShare {
        self.share.clone()
    }

    /// Someone joined: the sending key moves one step forward, and the new step is returned
    /// for the joiner (the others follow the step themselves).
    pub fn ratchet(&mut self) -> CallKeyShare {
        let next_material = self.send.key_material().as_ref().to_vec();
        match self.send.ratchet() {
            Ok(next) if next.key_id().ratchet_step() != RatchetStep::from(0) => {
                self.send = next;
                self.share = CallKeyShare {
                    kid: u64::from(self.send.key_id()),
                    material: next_material,
                };
                self.share.clone()
            }
            // The step wrapped around (or could not be derived): a new epoch instead.
            _ => self.rotate(),
        }
    }

    /// Someone left: a new random key in the next epoch, which no old key leads to, used at
    /// once.
    pub fn rotate(&mut self) -> CallKeyShare {
        let share = self.next_epoch();
        self.use_next_epoch();
        share
    }

    /// Makes the next epoch's key, to share before it is used: frames keep going under the
    /// current key until [`CallKeys::use_next_epoch`], so receivers have the new key first.
    pub fn next_epoch(&mut self) -> CallKeyShare {
        let epoch = self.epoch.wrapping_add(1);
        let (send, share) = new_key(self.device, epoch);
        self.next = Some((epoch, send, share.clone()));
        share
    }

    /// Switches to the key [`CallKeys::next_epoch`] made; false if there is none.
    pub fn use_next_epoch(&mut self) -> bool {
        let Some((epoch, send, share)) = self.next.take() else {
            return false;
        };
        self.epoch = epoch;
        self.send = send;
        self.share = share;
        true
    }

    /// Stores a key `from` shared. A key naming another device is refused; the oldest epochs
    /// of a sender are forgotten past [`EPOCHS_KEPT`].
    pub fn add(&mut self, from: DeviceId, share: &CallKeyShare) -> Result<(), FrameError> {
        let owner = kid_device(share.kid);
        if owner != from {
            return Err(FrameError::NotTheirs(owner, from));
        }
        let kid = RatchetingKeyId::from_key_id(share.kid, bits());
        let key = RatchetingDecryptionKey::derive_from(SUITE, kid, &share.material)
            .map_err(|e| FrameError::Sframe(e.to_string()))?;
        let generation = u64::from(kid.generation());
        // A generation already held is followed step by step as frames need it: taking the
        // shared step now would lose the key of frames still in flight at the step before.
        // Only a share far ahead (past what a frame may make us follow) replaces it.
        if let Some(held) = self.receive.get(kid.generation()) {
            let (held, shared) = (
                u64::from(held.key_id().ratchet_step()),
                u64::from(kid.ratchet_step()),
            );
            if shared <= held || shared - held <= MAX_STEPS / 2 {
                return Ok(());
            }
        }
        self.receive.insert(key);
        let kept = self.generations.entry(from).or_default();
        if !kept.contains(&generation) {
            kept.push_back(generation);
        }
        while kept.len() > EPOCHS_KEPT {
            if let Some(oldest) = kept.pop_front() {
                self.receive.remove(Generation::from(oldest));
            }
        }
        Ok(())
    }

    /// Forgets every key of `device` (it left the call).
    pub fn forget(&mut self, device: DeviceId) {
        for g in self.generations.remove(&device).unwrap_or_default() {
            self.receive.remove(Generation::from(g));
        }
    }

    /// Encrypts `frame` under the current sending key, its first `clear` bytes left readable
    /// (and authenticated). The result is those bytes, then the SFrame header and ciphertext.
    pub fn seal(&mut self, frame: &[u8], clear: usize) -> Result<Vec<u8>, FrameError> {
        if frame.len() < clear {
            return Err(FrameError::TooShort(frame.len(), clear));
        }
        let (meta, payload) = frame.split_at(clear);
        let media = MediaFrameView::try_with_meta_data(&mut self.counter, &payload, &meta)
            .map_err(|e| FrameError::Sframe(e.to_string()))?;
        let sealed = media
            .encrypt(self.send.as_ref())
            .map_err(|e| FrameError::Sframe(e.to_string()))?;
        // The frame's buffer is the clear bytes, then the SFrame header and ciphertext.
        Ok(sealed.as_ref().to_vec())
    }

    /// Decrypts a frame [`CallKeys::seal`] made, whose first `clear` bytes are in the clear.
    /// Returns the sending device with the frame.
    pub fn open(&mut self, frame: &[u8], clear: usize) -> Result<(DeviceId, Vec<u8>), FrameError> {
        if frame.len() < clear {
            return Err(FrameError::TooShort(frame.len(), clear));
        }
        let (meta, rest) = frame.split_at(clear);
        let sealed = EncryptedFrameView::try_with_meta_data(&rest, &meta)
            .map_err(|e| FrameError::Sframe(e.to_string()))?;
        let sender = kid_device(sealed.header().key_id());
        let opened = sealed
            .decrypt(&mut self.receive)
            .map_err(|e| FrameError::Sframe(e.to_string()))?;
        let mut out = Vec::with_capacity(frame.len());
        out.extend_from_slice(meta);
        out.extend_from_slice(opened.payload());
        Ok((sender, out))
    }
}

fn new_key(device: DeviceId, epoch: u16) -> (RatchetingEncryptionKey, CallKeyShare) {
    let material = random_bytes::<32>();
    let kid = RatchetingKeyId::new(Generation::from(generation(device, epoch)), bits());
    let key = RatchetingEncryptionKey::derive_from(SUITE, kid, material)
        .expect("the suite derives from 32 bytes");
    let share = CallKeyShare {
        kid: u64::from(kid),
        material: material.to_vec(),
    };
    (key, share)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (CallKeys, CallKeys, CallKeys) {
        let (mut a, mut b, mut c) = (
            CallKeys::new(DeviceId(1)),
            CallKeys::new(DeviceId(2)),
            CallKeys::new(DeviceId(3)),
        );
        b.add(DeviceId(1), &a.current()).unwrap();
        c.add(DeviceId(1), &a.current()).unwrap();
        a.add(DeviceId(2), &b.current()).unwrap();
        (a, b, c)
    }

    #[test]
    fn a_frame_opens_with_the_shared_key_and_keeps_its_clear_bytes() {
        let (mut a, mut b, _) = pair();
        let frame = b"\x10\x02\x00\x9d\x01\x2asecret keyframe payload";
        let sealed = a.seal(frame, 10).unwrap();
        assert_eq!(&sealed[..10], &frame[..10]);
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        let (from, opened) = b.open(&sealed, 10).unwrap();
        assert_eq!((from, opened.as_slice()), (DeviceId(1), &frame[..]));
    }

    #[test]
    fn a_changed_clear_byte_or_ciphertext_is_refused() {
        let (mut a, mut b, _) = pair();
        let sealed = a.seal(b"\x11\x02\x00delta frame", 3).unwrap();
        let mut bad = sealed.clone();
        bad[1] ^= 1;
        assert!(b.open(&bad, 3).is_err());
        let mut bad = sealed.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(b.open(&bad, 3).is_err());
        assert!(b.open(&sealed, 3).is_ok());
        assert!(b.open(&sealed[..2], 3).is_err());
    }

    #[test]
    fn receivers_follow_a_ratchet_but_a_joiner_cannot_go_back() {
        let (mut a, mut b, _) = pair();
        let before = a.seal(b"audio before the join", 0).unwrap();
        let step = a.ratchet();
        let mut joiner = CallKeys::new(DeviceId(4));
        joiner.add(DeviceId(1), &step).unwrap();
        let after = a.seal(b"audio after the join", 0).unwrap();
        // b never got the step: it follows on its own.
        assert_eq!(b.open(&after, 0).unwrap().1, b"audio after the join");
        assert_eq!(joiner.open(&after, 0).unwrap().1, b"audio after the join");
        assert!(joiner.open(&before, 0).is_err());
    }

    #[test]
    fn after_a_rotation_a_leaver_cannot_open_what_follows() {
        let (mut a, mut b, mut c) = pair();
        let old = a.seal(b"before", 0).unwrap();
        assert!(c.open(&old, 0).is_ok());
        // c leaves: a rotates and shares only with b.
        let share = a.rotate();
        b.add(DeviceId(1), &share).unwrap();
        let new = a.seal(b"after the leave", 0).unwrap();
        assert_eq!(b.open(&new, 0).unwrap().1, b"after the leave");
        assert!(c.open(&new, 0).is_err());
        // Frames of the old epoch still in flight still open for b.
        assert!(b.open(&old, 0).is_ok());
    }

    #[test]
    fn the_next_epoch_is_shared_before_it_is_used() {
        let (mut a, mut b, _) = pair();
        let share = a.next_epoch();
        let still_old = a.seal(b"old key", 0).unwrap();
        assert!(b.open(&still_old, 0).is_ok(), "not switched yet");
        b.add(DeviceId(1), &share).unwrap();
        assert!(a.use_next_epoch());
        assert!(!a.use_next_epoch());
        assert_eq!(a.current(), share);
        assert!(b.open(&a.seal(b"new key", 0).unwrap(), 0).is_ok());
    }

    #[test]
    fn a_key_for_another_device_is_refused_and_old_epochs_are_dropped() {
        let (mut a, mut b, _) = pair();
        assert_eq!(
            b.add(DeviceId(3), &a.current()),
            Err(FrameError::NotTheirs(DeviceId(1), DeviceId(3)))
        );
        let first = a.seal(b"epoch 0", 0).unwrap();
        for _ in 0..EPOCHS_KEPT {
            let s = a.rotate();
            b.add(DeviceId(1), &s).unwrap();
        }
        assert!(b.open(&first, 0).is_err());
        assert!(b.open(&a.seal(b"now", 0).unwrap(), 0).is_ok());
        b.forget(DeviceId(1));
        assert!(b.open(&a.seal(b"gone", 0).unwrap(), 0).is_err());
    }

    #[test]
    fn a_step_shared_before_the_frames_of_the_step_before_have_arrived_loses_nothing() {
        let (mut a, mut b, _) = pair();
        let in_flight = a.seal(b"sent before the join", 0).unwrap();
        // The join's step reaches b before the frame a sent just before it.
        let step = a.ratchet();
        b.add(DeviceId(1), &step).unwrap();
        assert!(b.open(&in_flight, 0).is_ok());
        assert!(b.open(&a.seal(b"after", 0).unwrap(), 0).is_ok());
    }

    #[test]
    fn a_ratchet_step_shared_late_does_not_undo_a_later_one() {
        let (mut a, mut b, _) = pair();
        let one = a.ratchet();
        let _two = a.ratchet();
        let f = a.seal(b"step two", 0).unwrap();
        assert!(b.open(&f, 0).is_ok());
        b.add(DeviceId(1), &one).unwrap();
        assert!(b.open(&a.seal(b"still two", 0).unwrap(), 0).is_ok());
    }
}
