//! Group-call frames, handed to [`crate::rooms::Rooms`].

use natter_signaling::call::Party;
use natter_signaling::room::StateChange;
use natter_signaling::{ClientFrame, ProtocolError, ServerFrame};

use super::Conn;
use crate::outbound::Outbound;

impl Conn {
    pub(super) fn rooms(&mut self, frame: ClientFrame) -> Result<(), ProtocolError> {
        let st = self.st.clone();
        let from = Party {
            user: self.auth.user,
            device: self.auth.device,
        };
        match frame {
            // Limit: `room_join`. Cost: a storage read, an SFU participant, and for the first
            // join a ring to every member's online devices. Waits for the SFU holding one of
            // the connection's in-flight slots.
            ClientFrame::RoomJoin {
                id,
                group,
                media,
                sdp,
            } => {
                self.limit(&st.limits.room_join, 1.0)?;
                self.in_flight += 1;
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let r = st.rooms.join(&st, id, from, group, media, sdp).await;
                    let frame = r.unwrap_or_else(|e| ServerFrame::error(Some(id), e));
                    tx.send(Outbound::Reply(Some(Box::new(frame))));
                });
                Ok(())
            }
            // Limit: `room_signal` for the rest. Cost: an SFU renegotiation step.
            ClientFrame::RoomAnswer { id, group, sdp } => {
                self.limit(&st.limits.room_signal, 1.0)?;
                self.in_flight += 1;
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let frame = match st.rooms.answer(from, group, sdp).await {
                        Ok(()) => ServerFrame::Ok { id },
                        Err(e) => ServerFrame::error(Some(id), e),
                    };
                    tx.send(Outbound::Reply(Some(Box::new(frame))));
                });
                Ok(())
            }
            // Cost: a roster to every participant.
            ClientFrame::RoomState {
                id,
                group,
                muted,
                camera,
                hand,
            } => {
                self.limit(&st.limits.room_signal, 1.0)?;
                let change = StateChange {
                    muted,
                    camera,
                    hand,
                };
                st.rooms.set_state(&st, from, group, change)?;
                self.push(ServerFrame::Ok { id });
                Ok(())
            }
            ClientFrame::RoomLeave { id, group } => {
                self.limit(&st.limits.room_signal, 1.0)?;
                st.rooms.leave(&st, from, group)?;
                self.push(ServerFrame::Ok { id });
                Ok(())
            }
            other => Err(ProtocolError::internal(format!(
                "{} is not a room frame",
                other.type_name()
            ))),
        }
    }
}
