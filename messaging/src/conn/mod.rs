//! One WebSocket connection: authentication, request dispatch, and queue delivery.
//!
//! The task owns the socket. Requests are handed to the store without waiting (so a client
//! may pipeline up to [`MAX_IN_FLIGHT`] of them, and they are stored in the order sent); the
//! answers, live queue items, replay reads and events all come back through one channel and
//! are written out in batches.

use std::collections::HashSet;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::SinkExt;
use natter_signaling::{
    ClientFrame, DeviceId, ErrorCode, PROTOCOL_VERSION, ProtocolError, ServerFrame, UserId,
    codec::Encoding,
};

use crate::delivery::{Delivery, Fetch, Live};
use crate::hub::ConnHandle;
use crate::outbound::{self, Outbound, OutboundRx, OutboundTx};
use crate::ratelimit::RateLimiter;
use crate::state::{SharedState, take};
use crate::store::{AuthInfo, Core, now_ms};

mod calls;
mod devices;
mod groups;
mod keys;
mod messages;
mod presence;
mod rooms;

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
    /// The client did not read what the server sent it fast enough (see
    /// `max_outbound_bytes` and `write_timeout_ms`).
    pub const TOO_SLOW: u16 = 4008;
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

/// Writes out what is queued (a cancelled write leaves `out` empty: the caller is closing).
async fn flush(ws: &mut WebSocket, out: &mut Vec<Message>) -> Result<(), axum::Error> {
    for m in out.drain(..) {
        ws.feed(m).await?;
    }
    ws.flush().await
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
        return;
    };
    let (tx, rx) = outbound::channel(st.cfg.max_outbound_bytes as usize);
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

/// Waits for `hello` and checks its token. Frames before it get `not_authenticated`. The
/// deadline covers everything, writes included: a client that sends junk and never reads
/// the answers is closed on time too.
async fn authenticate(
    ws: &mut WebSocket,
    enc: Encoding,
    st: &SharedState,
) -> Option<(AuthInfo, Option<u64>, u64)> {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(st.cfg.hello_timeout_ms);
    let result = tokio::time::timeout_at(deadline, hello(ws, enc, st)).await;
    // What is left to say goes out within a short grace, never longer.
    let (frames, close) = match result {
        Ok(Ok(authed)) => return Some(authed),
        Ok(Err((frames, close))) => (frames, close),
        Err(_) => {
            st.metrics.hello_timeouts.inc();
            let err = ProtocolError::new(
                ErrorCode::NotAuthenticated,
                "no hello within the time allowed",
            );
            (
                vec![ServerFrame::error(None, err)],
                Some(close_message(close_codes::UNAUTHORIZED, "no hello")),
            )
        }
    };
    let mut out: Vec<Message> = frames.iter().map(|f| count_out(st, enc, f)).collect();
    out.extend(close);
    let _ = tokio::time::timeout(Duration::from_millis(200), flush(ws, &mut out)).await;
    None
}

/// Counts an outgoing frame in the metrics and encodes it.
fn count_out(st: &SharedState, enc: Encoding, frame: &ServerFrame) -> Message {
    if let ServerFrame::Error(e) = frame {
        st.count_error(&ProtocolError::new(e.code, ""));
    }
    st.metrics
        .frames_out
        .with_label_values(&[frame.type_name()])
        .inc();
    to_message(enc, frame)
}

/// What ends the wait for `hello` without a session: frames to send and a close.
type Refusal = (Vec<ServerFrame>, Option<Message>);

async fn hello(
    ws: &mut WebSocket,
    enc: Encoding,
    st: &SharedState,
) -> Result<(AuthInfo, Option<u64>, u64), Refusal> {
    loop {
        let msg = tokio::select! {
            _ = st.shutdown.cancelled() => {
                return Err((vec![], Some(close_message(1001, "server shutting down"))));
            }
            msg = ws.recv() => msg,
        };
        match decode(enc, msg) {
            Incoming::Closed => return Err((vec![], None)),
            Incoming::Ignore => {}
            Incoming::Bad(err, id) => {
                let m = count_out(st, enc, &ServerFrame::error(id, err));
                ws.send(m).await.map_err(|_| (vec![], None))?;
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
                    let m = count_out(st, enc, &ServerFrame::error(Some(frame.id()), err));
                    ws.send(m).await.map_err(|_| (vec![], None))?;
                    continue;
                };
                match st
                    .store
                    .call(move |core: &mut Core| core.authenticate(&token))
                    .await
                {
                    Ok(auth) => return Ok((auth, cursor, id)),
                    Err(err) => {
                        let code = if err.code == ErrorCode::DeviceRevoked {
                            close_codes::REVOKED
                        } else {
                            close_codes::UNAUTHORIZED
                        };
                        return Err((
                            vec![ServerFrame::error(Some(id), err)],
                            Some(close_message(code, "authentication failed")),
                        ));
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
    async fn run(&mut self, ws: &mut WebSocket, mut rx: OutboundRx) {
        let write_timeout = Duration::from_millis(self.st.cfg.write_timeout_ms);
        let slow = rx.alarm();
        loop {
            if !self.out.is_empty() {
                // A client that stops reading blocks this write: cut it off after the write
                // timeout, or as soon as what waits for it passes its byte budget.
                let flushed = tokio::select! {
                    r = tokio::time::timeout(write_timeout, flush(ws, &mut self.out)) => match r {
                        Ok(Ok(())) => None,
                        Ok(Err(_)) => return,
                        Err(_) => Some("blocked"),
                    },
                    _ = slow.fired() => Some("bytes"),
                };
                if let Some(reason) = flushed {
                    return self.cut_off(ws, reason, slow.waiting_bytes()).await;
                }
            }
            if self.closing {
                return;
            }
            tokio::select! {
                biased;
                _ = self.st.shutdown.cancelled() => {
                    self.out.push(close_message(1001, "server shutting down"));
                    self.closing = true;
                }
                _ = slow.fired() => {
                    return self.cut_off(ws, "bytes", slow.waiting_bytes()).await;
                }
                ob = rx.recv() => {
                    // Never None: this task holds a sender.
                    let Some(ob) = ob else { return };
                    self.outbound(ob);
                    for _ in 0..WRITE_BATCH {
                        match rx.try_recv() {
                            Some(ob) => self.outbound(ob),
                            None => break,
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
    }

    /// Disconnects a client that does not keep up: one short try at a close frame (its
    /// socket may be full), then the socket is dropped.
    async fn cut_off(&mut self, ws: &mut WebSocket, reason: &'static str, waiting: usize) {
        self.st
            .metrics
            .slow_consumers
            .with_label_values(&[reason])
            .inc();
        tracing::info!(
            device = %self.auth.device,
            reason,
            waiting_bytes = waiting,
            "disconnecting a client that does not read"
        );
        self.out.clear();
        self.out.push(close_message(
            close_codes::TOO_SLOW,
            "not reading fast enough; reconnect",
        ));
        let _ = tokio::time::timeout(Duration::from_millis(100), flush(ws, &mut self.out)).await;
    }

    fn push(&mut self, frame: ServerFrame) {
        self.out.push(count_out(&self.st, self.enc, &frame));
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
            Outbound::Item(qseq, item, _) => match self.delivery.live(qseq) {
                Live::Send => self.push(ServerFrame::Deliver { qseq, item }),
                Live::Skip(Some(f)) => self.start_fetch(f),
                Live::Skip(None) => {}
            },
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
            Outbound::Event(frame, _) => self.push((*frame).clone()),
            Outbound::Lagged => {
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
            move |r| tx.send(Outbound::Fetched(r.map_err(Box::new))),
        );
    }

    /// Runs `job` in the store and answers with `answer(result)` (or the error). Holds one
    /// of the connection's in-flight slots until answered; refused with `overloaded` (and
    /// nothing done) when the store's queue is past its admission target.
    fn submit<R, F, A>(&mut self, id: u64, job: F, answer: A) -> Result<(), ProtocolError>
    where
        R: Send + 'static,
        F: FnOnce(&mut Core) -> Result<R, ProtocolError> + Send + 'static,
        A: FnOnce(R) -> Option<ServerFrame> + Send + 'static,
    {
        let tx = self.tx.clone();
        let admitted = self.st.store.try_submit(job, move |r| {
            let frame = match r {
                Ok(v) => answer(v),
                Err(e) => Some(ServerFrame::error(Some(id), e)),
            };
            tx.send(Outbound::Reply(frame.map(Box::new)));
        });
        match admitted {
            Ok(()) => {
                self.in_flight += 1;
                Ok(())
            }
            Err(e) => {
                self.st.metrics.overloaded.inc();
                Err(e)
            }
        }
    }

    /// Like [`Conn::submit`] for requests that only free work (acks): holds an in-flight
    /// slot, but is never refused by admission control.
    fn submit_always<R, F>(&mut self, id: u64, job: F)
    where
        R: Send + 'static,
        F: FnOnce(&mut Core) -> Result<R, ProtocolError> + Send + 'static,
    {
        let tx = self.tx.clone();
        self.in_flight += 1;
        self.st.store.submit(job, move |r| {
            let frame = r.err().map(|e| Box::new(ServerFrame::error(Some(id), e)));
            tx.send(Outbound::Reply(frame));
        });
    }

    fn refuse(&mut self, id: u64, err: ProtocolError) {
        self.push(ServerFrame::error(Some(id), err));
    }

    /// Takes `cost` from this device's bucket in `limiter`.
    fn limit(&self, limiter: &RateLimiter<DeviceId>, cost: f64) -> Result<(), ProtocolError> {
        take(limiter, &self.auth.device, cost)
    }

    /// Hands a frame to the handler of its concern. Each handler takes from its rate limit
    /// first, and counts against the in-flight cap whatever costs storage.
    fn request(&mut self, frame: ClientFrame) {
        let id = frame.id();
        let handled = match frame {
            ClientFrame::Hello { .. } => Err(ProtocolError::invalid(
                "this connection is already authenticated",
            )),
            ClientFrame::Ping { id } => self.ping(id),
            f @ (ClientFrame::Send { .. }
            | ClientFrame::SendGroup { .. }
            | ClientFrame::Ack { .. }
            | ClientFrame::Read { .. }
            | ClientFrame::Typing { .. }) => self.messages(f),
            f @ (ClientFrame::KeysUpload { .. }
            | ClientFrame::KeysClaim { .. }
            | ClientFrame::KeysCount { .. }
            | ClientFrame::Lookup { .. }) => self.keys(f),
            f @ (ClientFrame::DevicesList { .. }
            | ClientFrame::DeviceRevoke { .. }
            | ClientFrame::DeviceLinkCode { .. }
            | ClientFrame::Settings { .. }) => self.devices(f),
            f @ (ClientFrame::GroupCreate { .. }
            | ClientFrame::GroupAdd { .. }
            | ClientFrame::GroupRemove { .. }
            | ClientFrame::GroupPromote { .. }
            | ClientFrame::GroupLeave { .. }
            | ClientFrame::GroupRename { .. }
            | ClientFrame::GroupInfo { .. }) => self.groups(f),
            f @ (ClientFrame::PresenceSubscribe { .. }
            | ClientFrame::PresenceUnsubscribe { .. }) => self.presence(f),
            f @ (ClientFrame::CallOffer { .. }
            | ClientFrame::CallRinging { .. }
            | ClientFrame::CallAccept { .. }
            | ClientFrame::CallDecline { .. }
            | ClientFrame::CallCancel { .. }
            | ClientFrame::CallHangup { .. }
            | ClientFrame::CallIce { .. }
            | ClientFrame::CallUpdate { .. }
            | ClientFrame::IceServers { .. }) => self.calls(f),
            f @ (ClientFrame::RoomJoin { .. }
            | ClientFrame::RoomAnswer { .. }
            | ClientFrame::RoomState { .. }
            | ClientFrame::RoomLeave { .. }) => self.rooms(f),
        };
        if let Err(e) = handled {
            self.refuse(id, e);
        }
    }

    fn ping(&mut self, id: u64) -> Result<(), ProtocolError> {
        self.limit(&self.st.limits.ping, 1.0)?;
        self.push(ServerFrame::Pong {
            id,
            server_time_ms: now_ms(),
        });
        Ok(())
    }

    /// Leaves the hub: presence, subscriptions, typing.
    fn finish(self) {
        let st = &self.st;
        let (user, device) = (self.auth.user, self.auth.device);
        let now = now_ms();
        if let Some(went_offline) = st.hub.unregister(device, self.handle.conn_id, user, now) {
            // This was the device's live connection: its calls lose it.
            st.calls.disconnected(st, device);
            let party = natter_signaling::call::Party { user, device };
            st.rooms.disconnected(st, party);
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
