//! The prekey directory and phone-number look-ups.

use natter_signaling::{ClientFrame, ProtocolError, ServerFrame};

use super::Conn;
use crate::store::KeyCount;

fn key_count_frame(id: u64, c: KeyCount) -> ServerFrame {
    ServerFrame::KeyCount {
        id,
        one_time: c.one_time,
        last_resort: c.last_resort,
        signed_prekey: c.signed_prekey,
        identity_key: c.identity_key,
    }
}

impl Conn {
    pub(super) fn keys(&mut self, frame: ClientFrame) -> Result<(), ProtocolError> {
        let device = self.auth.device;
        let st = self.st.clone();
        match frame {
            // Limit: `prekeys`. Cost: a storage job writing up to 100 keys.
            ClientFrame::KeysUpload {
                id,
                identity_key,
                signed_prekey,
                one_time,
                last_resort,
            } => {
                self.limit(&st.limits.prekeys, 1.0)?;
                self.submit(
                    id,
                    move |core| {
                        core.upload_keys(
                            device,
                            identity_key.as_ref(),
                            signed_prekey.as_ref(),
                            &one_time,
                            last_resort.as_ref(),
                        )
                    },
                    move |c| Some(key_count_frame(id, c)),
                )
            }
            // Limit: `directory`. Cost: a storage job (consumes one prekey per device).
            ClientFrame::KeysClaim { id, user: target } => {
                self.limit(&st.limits.directory, 1.0)?;
                self.submit(
                    id,
                    move |core| core.claim_keys(target),
                    move |devices| {
                        Some(ServerFrame::Bundle {
                            id,
                            user: target,
                            devices,
                        })
                    },
                )
            }
            // Limit: `account`. Cost: a storage read.
            ClientFrame::KeysCount { id } => {
                self.limit(&st.limits.account, 1.0)?;
                self.submit(
                    id,
                    move |core| core.key_count(device),
                    move |c| Some(key_count_frame(id, c)),
                )
            }
            // Limit: `directory`. Cost: a storage read of up to 256 numbers.
            ClientFrame::Lookup { id, phones } => {
                self.limit(&st.limits.directory, 1.0)?;
                self.submit(
                    id,
                    move |core| core.lookup(&phones),
                    move |users| Some(ServerFrame::Users { id, users }),
                )
            }
            other => Err(ProtocolError::internal(format!(
                "{} is not a key frame",
                other.type_name()
            ))),
        }
    }
}
