//! Call signaling frames, handed to the call router.

use natter_signaling::call::Party;
use natter_signaling::{ClientFrame, ProtocolError};

use super::Conn;
use crate::state::take;

impl Conn {
    pub(super) fn calls(&mut self, frame: ClientFrame) -> Result<(), ProtocolError> {
        let st = self.st.clone();
        let l = &st.limits;
        let id = frame.id();
        match &frame {
            // Limits: `call_offer` per device and `call_offer_pair` per caller and callee, so
            // a declined caller cannot keep ringing. Cost: events to the callee's devices,
            // or a stored missed-call notice per device when none is online.
            ClientFrame::CallOffer { to, .. } => {
                self.limit(&l.call_offer, 1.0)?;
                take(&l.call_offer_pair, &(self.auth.user, *to), 1.0)?;
            }
            // Limit: `call_ice`. Cost: one event (or a candidate held, 64 at most).
            ClientFrame::CallIce { .. } => self.limit(&l.call_ice, 1.0)?,
            // Limit: `ice_servers`: each answer mints TURN credentials.
            ClientFrame::IceServers { .. } => self.limit(&l.ice_servers, 1.0)?,
            // Limit: `call_signal`. Cost: events to the other party's devices.
            _ => self.limit(&l.call_signal, 1.0)?,
        }
        let from = Party {
            user: self.auth.user,
            device: self.auth.device,
        };
        let (answer, missed) = st.calls.request(&st, from, frame)?;
        if let Some(answer) = answer {
            self.push(answer);
        }
        for notice in missed {
            self.submit_always(id, notice.job());
        }
        Ok(())
    }
}
