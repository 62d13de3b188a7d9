//! 1:1 calls on top of [`Client`]: signaling over the client's socket, media peer to peer
//! (or through TURN) with [`MediaSession`].
//!
//! Each call runs a small task that trickles local ICE candidates to the server and applies
//! what the server relays: the answer, remote candidates (held until the remote description
//! is set), ICE-restart offers, and the end of the call, which closes the peer connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use natter_signaling::call::{CallEvent, EndReason, IceCandidate, Media, SdpKind};
use natter_signaling::{ClientFrame, IceServer, ServerFrame, UserId};
use tokio::sync::{mpsc, watch};

use crate::{Client, ClientError};
use natter_media::{CallStats, MediaOptions, MediaSession};

/// Where a call stands, as this device sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallState {
    /// Offered; the callee's devices are ringing.
    Calling,
    /// A callee device said it rings.
    Ringing,
    /// Answered; media connecting.
    Connecting,
    /// Media flows.
    Connected,
    Ended(CallEnd),
}

/// Why a call ended, seen from this device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallEnd {
    /// The server ended it (the other side hung up, declined, timeout, …).
    Remote(EndReason),
    /// This device hung up or cancelled.
    Local,
    /// Another device of this user answered.
    AnsweredElsewhere,
    /// Media could not connect.
    MediaFailed,
}

/// A call this device takes part in.
pub struct ActiveCall {
    pub call_id: String,
    pub peer: UserId,
    client: Client,
    media: Arc<MediaSession>,
    state: watch::Receiver<CallState>,
    /// When the offer was sent (caller) or the answer (callee).
    pub started: Instant,
}

impl ActiveCall {
    pub fn state(&self) -> CallState {
        *self.state.borrow()
    }

    /// Waits until `pred` holds for the state, or `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        pred: impl Fn(CallState) -> bool,
    ) -> Result<CallState, ClientError> {
        let mut rx = self.state.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|s| pred(*s))).await {
            Ok(Ok(s)) => Ok(*s),
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Protocol(format!(
                "call {} is {:?} after {timeout:?}",
                self.call_id,
                self.state()
            ))),
        }
    }

    /// Waits for the end of the call.
    pub async fn ended(&self, timeout: Duration) -> Result<CallEnd, ClientError> {
        match self
            .wait_for(timeout, |s| matches!(s, CallState::Ended(_)))
            .await?
        {
            CallState::Ended(e) => Ok(e),
            _ => unreachable!(),
        }
    }

    pub fn stats(&self) -> CallStats {
        self.media.stats()
    }

    /// When the first audio frame from the other side was decoded.
    pub fn first_audio(&self) -> Option<Instant> {
        self.media.first_audio()
    }

    /// Hangs up (or cancels, before an answer). Media stops at once.
    pub async fn hangup(&self) -> Result<(), ClientError> {
        if matches!(self.state(), CallState::Ended(_)) {
            return Ok(());
        }
        let call_id = self.call_id.clone();
        let frame = match self.state() {
            CallState::Calling | CallState::Ringing => ClientFrame::CallCancel { id: 0, call_id },
            _ => ClientFrame::CallHangup { id: 0, call_id },
        };
        let result = self.client.request(frame).await;
        self.client.end_call(&self.call_id, CallEnd::Local);
        result.map(|_| ())
    }

    /// Restarts ICE (after a network change): a new offer goes to the other side.
    pub async fn restart_ice(&self) -> Result<(), ClientError> {
        let sdp = self.media.restart_offer().await?;
        self.client
            .request(ClientFrame::CallUpdate {
                id: 0,
                call_id: self.call_id.clone(),
                kind: SdpKind::Offer,
                sdp,
            })
            .await
            .map(|_| ())
    }
}

/// What routes a call's signals to its task.
pub(crate) struct CallRoute {
    pub signals: mpsc::UnboundedSender<CallEvent>,
    pub state: watch::Sender<CallState>,
}

impl Client {
    /// Calls `to`: rings every online device of theirs. Returns once the offer is out.
    pub async fn place_call(
        &self,
        to: UserId,
        media: Media,
        opts: MediaOptions,
    ) -> Result<ActiveCall, ClientError> {
        let ice = self.ice_servers().await?;
        let session = Arc::new(MediaSession::new(&ice, opts).await?);
        let offer = session.create_offer().await?;
        let call_id = format!(
            "{:016x}",
            u64::from_le_bytes(natter_crypto::random_bytes::<8>())
        );
        let (state, rx) = self.register_call(&call_id, CallState::Calling, session.clone(), false);
        let started = Instant::now();
        let frame = ClientFrame::CallOffer {
            id: 0,
            call_id: call_id.clone(),
            to,
            media,
            sdp: offer,
        };
        if let Err(e) = self.request(frame).await {
            self.end_call(&call_id, CallEnd::Local);
            return Err(e);
        }
        let _ = state;
        Ok(ActiveCall {
            call_id,
            peer: to,
            client: self.clone(),
            media: session,
            state: rx,
            started,
        })
    }

    /// Answers an incoming call (its `incoming` event gave the offer and ICE servers).
    pub async fn answer_call(
        &self,
        call_id: &str,
        from: UserId,
        offer_sdp: &str,
        ice_servers: &[IceServer],
        opts: MediaOptions,
    ) -> Result<ActiveCall, ClientError> {
        let session = Arc::new(MediaSession::new(ice_servers, opts).await?);
        let answer = session.accept_offer(offer_sdp).await?;
        let (_, rx) = self.register_call(call_id, CallState::Connecting, session.clone(), true);
        let started = Instant::now();
        let frame = ClientFrame::CallAccept {
            id: 0,
            call_id: call_id.to_owned(),
            sdp: answer,
        };
        if let Err(e) = self.request(frame).await {
            self.end_call(call_id, CallEnd::Local);
            return Err(e);
        }
        Ok(ActiveCall {
            call_id: call_id.to_owned(),
            peer: from,
            client: self.clone(),
            media: session,
            state: rx,
            started,
        })
    }

    /// Tells the caller this device is ringing.
    pub async fn ringing(&self, call_id: &str) -> Result<(), ClientError> {
        self.request(ClientFrame::CallRinging {
            id: 0,
            call_id: call_id.to_owned(),
        })
        .await
        .map(|_| ())
    }

    /// Declines an incoming call (on every device of this user).
    pub async fn decline_call(&self, call_id: &str) -> Result<(), ClientError> {
        self.inner.pending_ice.lock().unwrap().remove(call_id);
        self.request(ClientFrame::CallDecline {
            id: 0,
            call_id: call_id.to_owned(),
        })
        .await
        .map(|_| ())
    }

    /// STUN/TURN servers with fresh credentials.
    pub async fn ice_servers(&self) -> Result<Vec<IceServer>, ClientError> {
        match self.request(ClientFrame::IceServers { id: 0 }).await? {
            ServerFrame::IceServers { servers, .. } => Ok(servers),
            other => Err(ClientError::Protocol(format!(
                "unexpected answer {}",
                other.type_name()
            ))),
        }
    }

    /// Calls whose media has not been closed yet (for checking that nothing leaks).
    pub fn live_calls(&self) -> usize {
        self.inner.live_calls.load(Ordering::SeqCst)
    }

    fn register_call(
        &self,
        call_id: &str,
        initial: CallState,
        media: Arc<MediaSession>,
        answered: bool,
    ) -> (watch::Sender<CallState>, watch::Receiver<CallState>) {
        let (sig_tx, sig_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(initial);
        let held = self
            .inner
            .pending_ice
            .lock()
            .unwrap()
            .remove(call_id)
            .unwrap_or_default();
        self.inner.calls.lock().unwrap().insert(
            call_id.to_owned(),
            CallRoute {
                signals: sig_tx,
                state: state_tx.clone(),
            },
        );
        self.inner.live_calls.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(run_call(
            self.clone(),
            call_id.to_owned(),
            media,
            sig_rx,
            state_tx.clone(),
            held,
            answered,
        ));
        (state_tx, state_rx)
    }

    /// Ends a call locally: its task closes the media.
    pub(crate) fn end_call(&self, call_id: &str, end: CallEnd) {
        if let Some(route) = self.inner.calls.lock().unwrap().remove(call_id) {
            route.state.send_replace(CallState::Ended(end));
        }
    }
}

/// One call's task: trickles local candidates, applies remote signals, closes the media at
/// the end.
async fn run_call(
    client: Client,
    call_id: String,
    media: Arc<MediaSession>,
    mut signals: mpsc::UnboundedReceiver<CallEvent>,
    state: watch::Sender<CallState>,
    held: Vec<IceCandidate>,
    answered: bool,
) {
    let mut local = media.take_candidates().expect("candidates taken once");
    let mut state_rx = state.subscribe();
    // Remote candidates wait until the remote description is set.
    let mut remote_ready = answered;
    let mut pending: Vec<IceCandidate> = held;
    if remote_ready {
        for c in pending.drain(..) {
            let _ = media.add_candidate(c).await;
        }
        connect_media(&client, &call_id, &media, &state);
    }
    loop {
        tokio::select! {
            Some(c) = local.recv() => {
                let frame = ClientFrame::CallIce { id: 0, call_id: call_id.clone(), candidate: c };
                if let Ok(conn) = client.connection(Duration::from_secs(5)).await {
                    let _ = conn.notify(frame);
                }
            }
            ev = signals.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    CallEvent::Ringing { .. } => {
                        state.send_if_modified(|s| {
                            let calling = *s == CallState::Calling;
                            if calling { *s = CallState::Ringing; }
                            calling
                        });
                    }
                    CallEvent::Accepted { sdp, .. } => {
                        state.send_replace(CallState::Connecting);
                        if let Err(e) = media.set_answer(&sdp).await {
                            eprintln!("natter-client: call {call_id}: {e}");
                            client.end_call(&call_id, CallEnd::MediaFailed);
                            let _ = client.request(ClientFrame::CallHangup { id: 0, call_id: call_id.clone() }).await;
                            break;
                        }
                        remote_ready = true;
                        for c in pending.drain(..) {
                            let _ = media.add_candidate(c).await;
                        }
                        connect_media(&client, &call_id, &media, &state);
                    }
                    CallEvent::Ice { candidate, .. } => {
                        if remote_ready {
                            let _ = media.add_candidate(candidate).await;
                        } else {
                            pending.push(candidate);
                        }
                    }
                    CallEvent::Update { kind: SdpKind::Offer, sdp, .. } => {
                        if let Ok(answer) = media.accept_offer(&sdp).await {
                            let _ = client.request(ClientFrame::CallUpdate {
                                id: 0, call_id: call_id.clone(), kind: SdpKind::Answer, sdp: answer,
                            }).await;
                        }
                    }
                    CallEvent::Update { kind: SdpKind::Answer, sdp, .. } => {
                        let _ = media.set_answer(&sdp).await;
                    }
                    CallEvent::Ended { reason } => {
                        client.end_call(&call_id, CallEnd::Remote(reason));
                    }
                    CallEvent::AnsweredElsewhere => {
                        client.end_call(&call_id, CallEnd::AnsweredElsewhere);
                    }
                    CallEvent::Incoming { .. } => {}
                }
            }
            _ = state_rx.changed() => {}
        }
        if matches!(*state_rx.borrow(), CallState::Ended(_)) {
            break;
        }
    }
    client.inner.calls.lock().unwrap().remove(&call_id);
    media.close().await;
    client.inner.live_calls.fetch_sub(1, Ordering::SeqCst);
}

/// Once answered: waits for the media connection, then starts sending audio.
fn connect_media(
    client: &Client,
    call_id: &str,
    media: &Arc<MediaSession>,
    state: &watch::Sender<CallState>,
) {
    let (client, call_id, media, state) = (
        client.clone(),
        call_id.to_owned(),
        media.clone(),
        state.clone(),
    );
    tokio::spawn(async move {
        match media.wait_connected(Duration::from_secs(20)).await {
            Ok(()) => {
                if media.start_sending().await.is_ok() {
                    state.send_if_modified(|s| {
                        let go = !matches!(s, CallState::Ended(_));
                        if go {
                            *s = CallState::Connected;
                        }
                        go
                    });
                }
            }
            Err(e) => {
                if !matches!(*state.borrow(), CallState::Ended(_)) {
                    eprintln!("natter-client: call {call_id}: {e}");
                    client.end_call(&call_id, CallEnd::MediaFailed);
                    let _ = client
                        .request(ClientFrame::CallHangup {
                            id: 0,
                            call_id: call_id.clone(),
                        })
                        .await;
                }
            }
        }
    });
}
