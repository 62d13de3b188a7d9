//! Presence subscriptions.

use natter_signaling::{ClientFrame, ErrorCode, ProtocolError, ServerFrame};

use super::{Conn, MAX_SUBSCRIPTIONS};

impl Conn {
    pub(super) fn presence(&mut self, frame: ClientFrame) -> Result<(), ProtocolError> {
        let st = self.st.clone();
        match frame {
            // Limit: `presence`, one token per user named (each is a storage look-up, even
            // for a user already subscribed). Cost: a storage read.
            ClientFrame::PresenceSubscribe { id, users } => {
                self.limit(&st.limits.presence, users.len().max(1) as f64)?;
                let new = users
                    .iter()
                    .filter(|u| !self.subscriptions.contains(u))
                    .count();
                if self.subscriptions.len() + new > MAX_SUBSCRIPTIONS {
                    return Err(ProtocolError::new(
                        ErrorCode::LimitExceeded,
                        format!(
                            "at most {MAX_SUBSCRIPTIONS} presence subscriptions per connection"
                        ),
                    ));
                }
                let (hub, tx, conn_id) = (st.hub.clone(), self.tx.clone(), self.handle.conn_id);
                let wanted = users.clone();
                self.submit(
                    id,
                    move |core| {
                        users
                            .iter()
                            .map(|&u| match core.presence_of(u)? {
                                Some((vis, seen)) => Ok((u, vis, seen)),
                                None => Err(ProtocolError::not_found(format!("no user {u}"))),
                            })
                            .collect::<Result<Vec<_>, _>>()
                    },
                    move |stored| {
                        let users = hub.subscribe(conn_id, &tx, &stored);
                        Some(ServerFrame::PresenceList { id, users })
                    },
                )?;
                // Recorded now so disconnect cleans up even if the answer is still on its way.
                self.subscriptions.extend(wanted);
                Ok(())
            }
            // Limit: `presence`, one token. Cost: in memory only.
            ClientFrame::PresenceUnsubscribe { id, users } => {
                self.limit(&st.limits.presence, 1.0)?;
                for u in &users {
                    self.subscriptions.remove(u);
                }
                st.hub.unsubscribe(self.handle.conn_id, &users);
                self.push(ServerFrame::Ok { id });
                Ok(())
            }
            other => Err(ProtocolError::internal(format!(
                "{} is not a presence frame",
                other.type_name()
            ))),
        }
    }
}
