//! Messages, acknowledgements, read receipts and typing.

use natter_signaling::{ClientFrame, Conv, ProtocolError, ServerFrame, UserId};

use super::Conn;
use crate::store::{AuthInfo, Sent, now_ms};
use crate::typing::TypingKey;

fn sent(id: u64, client_id: String) -> impl FnOnce(Sent) -> Option<ServerFrame> {
    move |s| {
        Some(ServerFrame::Sent {
            id,
            client_id,
            seq: s.seq,
            ts_ms: s.ts_ms,
            duplicate: s.duplicate,
        })
    }
}

impl Conn {
    pub(super) fn messages(&mut self, frame: ClientFrame) -> Result<(), ProtocolError> {
        let AuthInfo { user, device, .. } = self.auth;
        let st = self.st.clone();
        match frame {
            // Limit: `send`, one per frame. Cost: a storage job (one write per envelope).
            ClientFrame::Send {
                id,
                client_id,
                to,
                envelopes,
            } => {
                self.limit(&st.limits.send, 1.0)?;
                let answer = sent(id, client_id.clone());
                self.submit(
                    id,
                    move |core| core.send_direct(user, device, &client_id, to, envelopes, now_ms()),
                    answer,
                )
            }
            // Limit: `send`. Cost: a storage job (one payload, one index row per member device).
            ClientFrame::SendGroup {
                id,
                client_id,
                group,
                body,
            } => {
                self.limit(&st.limits.send, 1.0)?;
                let answer = sent(id, client_id.clone());
                self.submit(
                    id,
                    move |core| core.send_group(user, device, &client_id, group, body, now_ms()),
                    answer,
                )
            }
            // Limit: `ack`. Cost: a storage job, only for sequences delivered on this
            // connection and not yet acknowledged; a re-ack costs nothing and is refused.
            ClientFrame::Ack { id, qseqs } => {
                self.limit(&st.limits.ack, 1.0)?;
                if let Some(&q) = qseqs.iter().find(|&&q| q > self.delivery.last_sent()) {
                    return Err(ProtocolError::invalid(format!(
                        "qseq {q} has not been delivered on this connection"
                    )));
                }
                let mut fresh: Vec<u64> = qseqs
                    .iter()
                    .copied()
                    .filter(|&q| self.delivery.is_unacked(q))
                    .collect();
                fresh.sort_unstable();
                fresh.dedup();
                if fresh.is_empty() {
                    return Err(ProtocolError::invalid(
                        "these qseqs are already acknowledged",
                    ));
                }
                let next = self.delivery.acked(&fresh).map_err(|a| {
                    ProtocolError::internal(format!("qseq {} passed the check", a.0))
                })?;
                self.submit_always(id, move |core| core.ack(user, device, &fresh, now_ms()));
                if let Some(f) = next {
                    self.start_fetch(f);
                }
                Ok(())
            }
            // Limit: `read`. Cost: a storage job (a receipt per device of both users).
            ClientFrame::Read { id, conv, to, seqs } => {
                self.limit(&st.limits.read, 1.0)?;
                self.submit(
                    id,
                    move |core| core.read(user, device, conv, to, seqs, now_ms()),
                    move |_| Some(ServerFrame::Ok { id }),
                )
            }
            // Limit: `typing`. Cost: a storage look-up of the recipients, then an event to
            // each of their online devices.
            ClientFrame::Typing { id, conv, active } => {
                self.limit(&st.limits.typing, 1.0)?;
                let hub = st.hub.clone();
                self.submit(
                    id,
                    move |core| -> Result<Vec<UserId>, ProtocolError> {
                        match conv {
                            // Typing comes before the first message too: any user will do.
                            Conv::Direct(peer) => {
                                if !core.user_exists(peer)? {
                                    return Err(ProtocolError::not_found(format!(
                                        "no user {peer}"
                                    )));
                                }
                                Ok(vec![peer])
                            }
                            Conv::Group(g) => Ok(core
                                .require_member(g, user)?
                                .iter()
                                .map(|m| m.user)
                                .filter(|u| *u != user)
                                .collect()),
                        }
                    },
                    move |recipients| {
                        let key = TypingKey { user, device, conv };
                        hub.typing(key, active, recipients.into());
                        None
                    },
                )
            }
            other => Err(ProtocolError::internal(format!(
                "{} is not a message frame",
                other.type_name()
            ))),
        }
    }
}
