use natter_signaling::DeviceId;

/// Why an operation failed. Decryption failures are values, never panics: the client keeps
/// them as error items in its history.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The bytes are not a natter envelope (truncated, wrong version, garbage).
    #[error("malformed envelope: {0}")]
    Malformed(String),
    /// A key in a prekey bundle is missing, of the wrong size, or its signature is wrong.
    #[error("invalid key bundle for device {device}: {reason}")]
    BadBundle { device: DeviceId, reason: String },
    /// No Olm session with this device, and the message cannot start one.
    #[error("no session with device {0}")]
    NoSession(DeviceId),
    /// Olm refused the message (wrong MAC, unknown one-time key, replay of a used key…).
    #[error("cannot decrypt message from device {device}: {reason}")]
    Olm { device: DeviceId, reason: String },
    /// A group message whose session key never reached this device.
    #[error("unknown group session {session_id} of device {device}")]
    UnknownGroupSession {
        device: DeviceId,
        session_id: String,
    },
    /// Megolm refused the message (bad signature or MAC, index before the shared one).
    #[error("cannot decrypt group message from device {device}: {reason}")]
    Megolm { device: DeviceId, reason: String },
    /// The sealed plaintext names a different sender or recipient than the envelope came with.
    #[error("the message claims to be from {claimed}, but arrived from {actual}")]
    WrongSender { claimed: String, actual: String },
    /// A media blob's digest or authentication tag did not check.
    #[error("media: {0}")]
    Media(String),
    /// A stored state could not be opened (wrong key, or damaged).
    #[error("cannot open the stored crypto state: {0}")]
    Pickle(String),
}
