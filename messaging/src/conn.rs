//! One WebSocket connection: authentication, request dispatch, and queue delivery.
//!
//! The task owns the socket. Requests are handed to the store without waiting (so a client
//! may pipeline up to [`MAX_IN_FLIGHT`] of them, and they are stored in the order sent); the
//! answers, live queue items, replay reads and events all come back through one channel and
//! are written out in batches.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use natter_signaling::{
    ClientFrame, Conv, ErrorCode, PROTOCOL_VERSION, ProtocolError, ServerFrame, UserId,
    codec::Encoding,
};
use tokio::sync::mpsc;

use crate::delivery::{AckAhead, Delivery, Fetch, Live};
use crate::hub::{ConnHandle, Outbound, OutboundTx};
use crate::state::{SharedState, take};
use crate::store::{AuthInfo, Core, now_ms};
use crate::typing::TypingKey;

/// Requests a connection may have outstanding before the server stops reading from it.
pub const MAX_IN_FLIGHT: usize = 256;
/// Presence subscriptions per connection.
pub const MAX_SUBSCRIPTIONS: usize = 1024;
/// Outbound messages written before one flush.
const WRITE_BATCH: usize = 128;

/// WebSocket close codes natter uses besides the standard ones.
pub mod close_codes {
    /// The token was wrong, or no `hello` came in time.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The device was revoked.
    pub const REVOKED: u16 = 4003;
    /// A newer connection of the same device took over.
    pub const REPLACED: u16 = 4009;
    /// The server could not continue this connection (storage failure).
    pub const INTERNAL: u16 = 4500;
}

enum Incoming {
    Frame(ClientFrame),
    Bad(ProtocolError, Option<u64>),
    Ignore,
    Closed,
}

fn decode(enc: Encoding, msg: Option<Result<Message, axum::Error>>) -> Incoming {
    let bytes: &[u8] = match &msg {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Incoming::Closed,
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => return Incoming::Ignore,
        Some(Ok(Message::Text(t))) => {
            if enc == Encoding::Binary {
                return Incoming::Bad(
                    ProtocolError::new(
                        ErrorCode::BadFrame,
                        "this connection speaks natter.v1.bin: send binary MessagePack frames",
                    ),
                    None,
                );
            }
            t.as_bytes()
        }
        Some(Ok(Message::Binary(b))) => {
            if enc == Encoding::Json {
                return Incoming::Bad(
                    ProtocolError::new(
                        ErrorCode::BadFrame,
                        "this connection speaks natter.v1.json: send JSON text frames",
                    ),
                    None,
                );
            }
            b
        }
    };
    match enc.decode_client(bytes) {
        Ok(f) => Incoming::Frame(f),
        Err(e) => Incoming::Bad(ProtocolError::new(e.code, e.message), e.id),
    }
}

fn to_message(enc: Encoding, frame: &ServerFrame) -> Message {
    let bytes = enc.encode(frame);
    match enc {
        Encoding::Json => Message::Text(String::from_utf8(bytes).expect("JSON is UTF-8").into()),
        Encoding::Binary => Message::Binary(bytes.into()),
    }
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }))
}

/// Serves one upgraded socket until it closes.
pub async fn serve(mut ws: WebSocket, enc: Encoding, st: SharedState) {
    let Some((auth, cursor, hello_id)) = authenticate(&mut ws, enc, &st).await else {
        let _ = ws.flush().await;
        return;
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = ConnHandle::new(st.hub.next_conn_id(), auth.user, auth.device, tx.clone());
    // The device's cursor says what it already stored: count that as acknowledged.
    let cursor = cursor.map(|c| c.min(auth.last_qseq));
    if let Some(c) = cursor {
        let (user, device) = (auth.user, auth.device);
        st.store.submit(
            move |core: &mut Core| core.ack_through(user, device, c, now_ms()),
            |r| {
                if let Err(e) = r {
                    tracing::warn!("cursor ack failed: {e}");
                }
            },
        );
    }
    // Register before the first read, so every item committed from now on is either in
    // that read or pushed live (see `delivery`).
    st.hub.register(handle.clone(), auth.settings.presence);
    st.metrics.connections.inc();
    let (delivery, first) = Delivery::start(cursor.unwrap_or(0), st.cfg.replay_batch);
    let mut conn = Conn {
        st: st.clone(),
        enc,
        auth,
        handle,
        tx,
        delivery,
        in_flight: 0,
        subscriptions: HashSet::new(),
        out: Vec::new(),
        closing: false,
    };
    conn.push(ServerFrame::Welcome {
        id: hello_id,
        user: auth.user,
        device: auth.device,
        primary: auth.primary,
        protocol: PROTOCOL_VERSION,
        server_time_ms: now_ms(),
    });
    conn.start_fetch(first);
    conn.run(&mut ws, rx).await;
    conn.finish();
}

/// Waits for `hello` and checks its token. Frames before it get `not_authenticated`.
async fn authenticate(
    ws: &mut WebSocket,
    enc: Encoding,
    st: &SharedState,
) -> Option<(AuthInfo, Option<u64>, u64)> {
    let deadline = tokio::time::sleep(Duration::from_millis(st.cfg.hello_timeout_ms));
    tokio::pin!(deadline);
    let send = |frame: ServerFrame| {
        if let ServerFrame::Error(e) = &frame {
            st.count_error(&ProtocolError::new(e.code, ""));
        }
        st.metrics
            .frames_out
            .with_label_values(&[frame.type_name()])
            .inc();
        to_message(enc, &frame)
    };
    loop {
        let msg = tokio::select! {
            _ = &mut deadline => {
                let err = ProtocolError::new(ErrorCode::NotAuthenticated, "no hello within the time allowed");
                let _ = ws.feed(send(ServerFrame::error(None, err))).await;
                let _ = ws.feed(close_message(close_codes::UNAUTHORIZED, "no hello")).await;
                return None;
            }
            _ = st.shutdown.cancelled() => {
                let _ = ws.feed(close_message(1001, "server shutting down")).await;
                return None;
            }
            msg = ws.recv() => msg,
        };
        match decode(enc, msg) {
            Incoming::Closed => return None,
            Incoming::Ignore => {}
            Incoming::Bad(err, id) => {
                let _ = ws.send(send(ServerFrame::error(id, err))).await;
            }
            Incoming::Frame(frame) => {
                st.metrics
                    .frames_in
                    .with_label_values(&[frame.type_name()])
                    .inc();
                let ClientFrame::Hello {
                    id, token, cursor, ..
                } = frame
                else {
                    let err = ProtocolError::new(
                        ErrorCode::NotAuthenticated,
                        "send hello with your token first",
                    );
                    let _ = ws
                        .send(send(ServerFrame::error(Some(frame.id()), err)))
                        .await;
                    continue;
                };
                match st
                    .store
                    .call(move |core: &mut Core| core.authenticate(&token))
                    .await
                {
                    Ok(auth) => return Some((auth, cursor, id)),
                    Err(err) => {
                        let code = if err.code == ErrorCode::DeviceRevoked {
                            close_codes::REVOKED
                        } else {
                            close_codes::UNAUTHORIZED
                        };
                        let _ = ws.feed(send(ServerFrame::error(Some(id), err))).await;
                        let _ = ws.feed(close_message(code, "authentication failed")).await;
                        return None;
                    }
                }
            }
        }
    }
}

struct Conn {
    st: SharedState,
    enc: Encoding,
    auth: AuthInfo,
    handle: ConnHandle,
    tx: OutboundTx,
    delivery: Delivery,
    in_flight: usize,
    subscriptions: HashSet<UserId>,
    out: Vec<Message>,
    closing: bool,
}

impl Conn {
    async fn run(&mut self, ws: &mut WebSocket, mut rx: mpsc::UnboundedReceiver<Outbound>) {
        while !self.closing {
            if self.flush(ws).await.is_err() {
                return;
            }
            tokio::select! {
                biased;
                _ = self.st.shutdown.cancelled() => {
                    self.out.push(close_message(1001, "server shutting down"));
                    self.closing = true;
                }
                ob = rx.recv() => {
                    // Never None: this task holds a sender.
                    let Some(ob) = ob else { return };
                    self.outbound(ob);
                    for _ in 0..WRITE_BATCH {
                        match rx.try_recv() {
                            Ok(ob) => self.outbound(ob),
                            Err(_) => break,
                        }
                    }
                }
                msg = ws.recv(), if self.in_flight < MAX_IN_FLIGHT => {
                    match decode(self.enc, msg) {
                        Incoming::Closed => return,
                        Incoming::Ignore => {}
                        Incoming::Bad(err, id) => self.push(ServerFrame::error(id, err)),
                        Incoming::Frame(frame) => {
                            self.st.metrics.frames_in.with_label_values(&[frame.type_name()]).inc();
                            self.request(frame);
                        }
                    }
                }
            }
        }
        let _ = self.flush(ws).await;
    }

    async fn flush(&mut self, ws: &mut WebSocket) -> Result<(), axum::Error> {
        if self.out.is_empty() {
            return Ok(());
        }
        for m in self.out.drain(..) {
            ws.feed(m).await?;
        }
        ws.flush().await
    }

    fn push(&mut self, frame: ServerFrame) {
        if let ServerFrame::Error(e) = &frame {
            self.st.count_error(&ProtocolError::new(e.code, ""));
        }
        self.st
            .metrics
            .frames_out
            .with_label_values(&[frame.type_name()])
            .inc();
        self.out.push(to_message(self.enc, &frame));
    }

    fn close(&mut self, code: u16, reason: &str) {
        self.out.push(close_message(code, reason));
        self.closing = true;
    }

    fn outbound(&mut self, ob: Outbound) {
        match ob {
            Outbound::Reply(frame) => {
                self.in_flight -= 1;
                if let Some(f) = frame {
                    self.push(*f);
                }
            }
            Outbound::Item(qseq, item) => {
                self.handle.item_taken();
                match self.delivery.live(qseq) {
                    Live::Send => self.push(ServerFrame::Deliver { qseq, item }),
                    Live::Skip(Some(f)) => self.start_fetch(f),
                    Live::Skip(None) => {}
                }
            }
            Outbound::Fetched(Ok(items)) => {
                let qseqs: Vec<u64> = items.iter().map(|(q, _)| *q).collect();
                let next = self.delivery.fetched(&qseqs);
                for (qseq, item) in items {
                    self.push(ServerFrame::Deliver { qseq, item });
                }
                if next.queue_empty {
                    self.push(ServerFrame::QueueEmpty {});
                }
                if let Some(f) = next.next {
                    self.start_fetch(f);
                }
            }
            Outbound::Fetched(Err(e)) => {
                tracing::error!(device = %self.auth.device, "queue read failed: {e}");
                self.push(ServerFrame::error(None, *e));
                self.close(close_codes::INTERNAL, "queue read failed; reconnect");
            }
            Outbound::Event(frame) => self.push((*frame).clone()),
            Outbound::Lagged => {
                self.handle.lag_handled();
                if let Some(f) = self.delivery.lagged() {
                    self.start_fetch(f);
                }
            }
            Outbound::Kick(err) => {
                let code = match err.code {
                    ErrorCode::DeviceRevoked => close_codes::REVOKED,
                    _ => close_codes::REPLACED,
                };
                let reason = if code == close_codes::REVOKED {
                    "device revoked"
                } else {
                    "replaced by a newer connection"
                };
                self.push(ServerFrame::error(None, *err));
                self.close(code, reason);
            }
        }
    }

    fn start_fetch(&self, f: Fetch) {
        let device = self.auth.device;
        let tx = self.tx.clone();
        self.st.store.submit(
            move |core: &mut Core| core.fetch(device, f.after, f.limit, now_ms()),
            move |r| {
                let _ = tx.send(Outbound::Fetched(r.map_err(Box::new)));
            },
        );
    }

    /// Runs `job` in the store and answers with `answer(result)` (or the error).
    fn submit<R, F, A>(&mut self, id: u64, job: F, answer: A)
    where
        R: Send + 'static,
        F: FnOnce(&mut Core) -> Result<R, ProtocolError> + Send + 'static,
        A: FnOnce(R) -> Option<ServerFrame> + Send + 'static,
    {
        self.in_flight += 1;
        let tx = self.tx.clone();
        self.st.store.submit(job, move |r| {
            let frame = match r {
                Ok(v) => answer(v),
                Err(e) => Some(ServerFrame::error(Some(id), e)),
            };
            let _ = tx.send(Outbound::Reply(frame.map(Box::new)));
        });
    }

    fn refuse(&mut self, id: u64, err: ProtocolError) {
        self.push(ServerFrame::error(Some(id), err));
    }

    fn request(&mut self, frame: ClientFrame) {
        let AuthInfo { user, device, .. } = self.auth;
        let st = self.st.clone();
        match frame {
            ClientFrame::Hello { id, .. } => self.refuse(
                id,
                ProtocolError::invalid("this connection is already authenticated"),
            ),
            frame @ (ClientFrame::CallOffer { .. }
            | ClientFrame::CallRinging { .. }
            | ClientFrame::CallAccept { .. }
            | ClientFrame::CallDecline { .. }
            | ClientFrame::CallCancel { .. }
            | ClientFrame::CallHangup { .. }
            | ClientFrame::CallIce { .. }
            | ClientFrame::CallUpdate { .. }
            | ClientFrame::IceServers { .. }) => {
                let id = frame.id();
                let from = natter_signaling::call::Party { user, device };
                match st.calls.request(&st, from, frame) {
                    Ok(Some(answer)) => self.push(answer),
                    Ok(None) => {}
                    Err(e) => self.refuse(id, e),
                }
            }
            ClientFrame::Ping { id } => self.push(ServerFrame::Pong {
                id,
                server_time_ms: now_ms(),
            }),
            ClientFrame::Send {
                id,
                client_id,
                to,
                envelopes,
            } => {
                if let Err(e) = take(&st.limits.send, &device, 1.0) {
                    return self.refuse(id, e);
                }
                let cid = client_id.clone();
                self.submit(
                    id,
                    move |core| core.send_direct(user, device, &client_id, to, envelopes, now_ms()),
                    move |s| {
                        Some(ServerFrame::Sent {
                            id,
                            client_id: cid,
                            seq: s.seq,
                            ts_ms: s.ts_ms,
                            duplicate: s.duplicate,
                        })
                    },
                );
            }
            ClientFrame::SendGroup {
                id,
                client_id,
                group,
                body,
            } => {
                if let Err(e) = take(&st.limits.send, &device, 1.0) {
                    return self.refuse(id, e);
                }
                let cid = client_id.clone();
                self.submit(
                    id,
                    move |core| core.send_group(user, device, &client_id, group, body, now_ms()),
                    move |s| {
                        Some(ServerFrame::Sent {
                            id,
                            client_id: cid,
                            seq: s.seq,
                            ts_ms: s.ts_ms,
                            duplicate: s.duplicate,
                        })
                    },
                );
            }
            ClientFrame::Ack { id, qseqs } => match self.delivery.acked(&qseqs) {
                Err(AckAhead(q)) => self.refuse(
                    id,
                    ProtocolError::invalid(format!(
                        "qseq {q} has not been delivered on this connection"
                    )),
                ),
                Ok(next) => {
                    // Answered only on failure, so no reply slot is held for it.
                    let tx = self.tx.clone();
                    st.store.submit(
                        move |core: &mut Core| core.ack(user, device, &qseqs, now_ms()),
                        move |r| {
                            if let Err(e) = r {
                                let frame = Arc::new(ServerFrame::error(Some(id), e));
                                let _ = tx.send(Outbound::Event(frame));
                            }
                        },
                    );
                    if let Some(f) = next {
                        self.start_fetch(f);
                    }
                }
            },
            ClientFrame::Read { id, conv, to, seqs } => self.submit(
                id,
                move |core| core.read(user, device, conv, to, seqs, now_ms()),
                move |_| Some(ServerFrame::Ok { id }),
            ),
            ClientFrame::Typing { id, conv, active } => {
                if let Err(e) = take(&st.limits.typing, &device, 1.0) {
                    return self.refuse(id, e);
                }
                let hub = st.hub.clone();
                self.submit(
                    id,
                    move |core| -> Result<Vec<UserId>, ProtocolError> {
                        match conv {
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
                );
            }
            ClientFrame::KeysUpload {
                id,
                identity_key,
                signed_prekey,
                one_time,
                last_resort,
            } => {
                if let Err(e) = take(&st.limits.prekeys, &device, 1.0) {
                    return self.refuse(id, e);
                }
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
                );
            }
            ClientFrame::KeysClaim { id, user: target } => {
                if let Err(e) = take(&st.limits.directory, &device, 1.0) {
                    return self.refuse(id, e);
                }
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
                );
            }
            ClientFrame::KeysCount { id } => self.submit(
                id,
                move |core| core.key_count(device),
                move |c| Some(key_count_frame(id, c)),
            ),
            ClientFrame::DevicesList { id } => self.submit(
                id,
                move |core| core.list_devices(user),
                move |devices| Some(ServerFrame::Devices { id, devices }),
            ),
            ClientFrame::DeviceRevoke { id, device: target } => {
                let auth = self.auth;
                self.submit(
                    id,
                    move |core| core.revoke_device(&auth, target, now_ms()),
                    move |()| Some(ServerFrame::Ok { id }),
                );
            }
            ClientFrame::DeviceLinkCode { id } => {
                let auth = self.auth;
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
                );
            }
            ClientFrame::Lookup { id, phones } => {
                if let Err(e) = take(&st.limits.directory, &device, 1.0) {
                    return self.refuse(id, e);
                }
                self.submit(
                    id,
                    move |core| core.lookup(&phones),
                    move |users| Some(ServerFrame::Users { id, users }),
                );
            }
            ClientFrame::GroupCreate { id, name, members } => self.submit(
                id,
                move |core| core.create_group(user, &name, &members, now_ms()),
                move |group| Some(ServerFrame::Group { id, group }),
            ),
            ClientFrame::GroupAdd { id, group, users } => self.submit(
                id,
                move |core| core.add_members(user, group, &users, now_ms()),
                move |group| Some(ServerFrame::Group { id, group }),
            ),
            ClientFrame::GroupRemove { id, group, users } => self.submit(
                id,
                move |core| core.remove_members(user, group, &users, now_ms()),
                move |group| Some(ServerFrame::Group { id, group }),
            ),
            ClientFrame::GroupPromote {
                id,
                group,
                user: target,
            } => self.submit(
                id,
                move |core| core.promote(user, group, target, now_ms()),
                move |group| Some(ServerFrame::Group { id, group }),
            ),
            ClientFrame::GroupLeave { id, group } => self.submit(
                id,
                move |core| core.leave(user, group, now_ms()),
                move |()| Some(ServerFrame::Ok { id }),
            ),
            ClientFrame::GroupRename { id, group, name } => self.submit(
                id,
                move |core| core.rename(user, group, &name, now_ms()),
                move |group| Some(ServerFrame::Group { id, group }),
            ),
            ClientFrame::GroupInfo { id, group } => self.submit(
                id,
                move |core| core.info(user, group),
                move |group| Some(ServerFrame::Group { id, group }),
            ),
            ClientFrame::PresenceSubscribe { id, users } => {
                let new = users
                    .iter()
                    .filter(|u| !self.subscriptions.contains(u))
                    .count();
                if self.subscriptions.len() + new > MAX_SUBSCRIPTIONS {
                    return self.refuse(
                        id,
                        ProtocolError::new(
                            ErrorCode::LimitExceeded,
                            format!(
                                "at most {MAX_SUBSCRIPTIONS} presence subscriptions per connection"
                            ),
                        ),
                    );
                }
                // Recorded now so disconnect cleans up even if the answer is still on its way.
                self.subscriptions.extend(users.iter().copied());
                let (hub, tx, conn_id) = (st.hub.clone(), self.tx.clone(), self.handle.conn_id);
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
                );
            }
            ClientFrame::PresenceUnsubscribe { id, users } => {
                for u in &users {
                    self.subscriptions.remove(u);
                }
                st.hub.unsubscribe(self.handle.conn_id, &users);
                self.push(ServerFrame::Ok { id });
            }
            ClientFrame::Settings {
                id,
                presence,
                read_receipts,
            } => {
                let hub = st.hub.clone();
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
                );
            }
        }
    }

    /// Leaves the hub: presence, subscriptions, typing.
    fn finish(self) {
        let st = &self.st;
        let (user, device) = (self.auth.user, self.auth.device);
        let now = now_ms();
        if let Some(went_offline) = st.hub.unregister(device, self.handle.conn_id, user, now) {
            // This was the device's live connection: its calls lose it.
            st.calls.disconnected(st, device);
            if went_offline {
                st.store
                    .submit(move |core: &mut Core| core.set_last_seen(user, now), |_| {});
            }
        }
        let subs: Vec<UserId> = self.subscriptions.into_iter().collect();
        st.hub.unsubscribe(self.handle.conn_id, &subs);
        st.hub.forget_typing(device);
        st.metrics.connections.dec();
    }
}

fn key_count_frame(id: u64, c: crate::store::KeyCount) -> ServerFrame {
    ServerFrame::KeyCount {
        id,
        one_time: c.one_time,
        last_resort: c.last_resort,
        signed_prekey: c.signed_prekey,
        identity_key: c.identity_key,
    }
}
