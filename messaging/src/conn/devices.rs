//! The account's devices, link codes and settings.

use natter_signaling::{ClientFrame, ProtocolError, ServerFrame};

use super::Conn;
use crate::store::now_ms;

impl Conn {
    pub(super) fn devices(&mut self, frame: ClientFrame) -> Result<(), ProtocolError> {
        let auth = self.auth;
        let st = self.st.clone();
        match frame {
            // Limit: `account`. Cost: a storage read.
            ClientFrame::DevicesList { id } => {
                self.limit(&st.limits.account, 1.0)?;
                self.submit(
                    id,
                    move |core| core.list_devices(auth.user),
                    move |devices| Some(ServerFrame::Devices { id, devices }),
                )
            }
            // Limit: `account`. Cost: a storage job and a kick.
            ClientFrame::DeviceRevoke { id, device: target } => {
                self.limit(&st.limits.account, 1.0)?;
                self.submit(
                    id,
                    move |core| core.revoke_device(&auth, target, now_ms()),
                    move |()| Some(ServerFrame::Ok { id }),
                )
            }
            // Limit: `link_code` (a code is a credential: few, and slowly).
            ClientFrame::DeviceLinkCode { id } => {
                self.limit(&st.limits.link_code, 1.0)?;
                self.submit(
                    id,
                    move |core| core.create_link_code(&auth, now_ms()),
                    move |(code, expires_ms)| {
                        Some(ServerFrame::LinkCode {
                            id,
                            code,
                            expires_ms,
                        })
                    },
                )
            }
            // Limit: `account`. Cost: a storage job, and presence events to subscribers.
            ClientFrame::Settings {
                id,
                presence,
                read_receipts,
            } => {
                self.limit(&st.limits.account, 1.0)?;
                let hub = st.hub.clone();
                let user = auth.user;
                self.submit(
                    id,
                    move |core| core.settings(user, presence, read_receipts),
                    move |s| {
                        if presence.is_some() {
                            hub.set_visibility(user, s.presence);
                        }
                        Some(ServerFrame::Settings {
                            id,
                            presence: s.presence,
                            read_receipts: s.read_receipts,
                        })
                    },
                )
            }
            other => Err(ProtocolError::internal(format!(
                "{} is not a device frame",
                other.type_name()
            ))),
        }
    }
}
