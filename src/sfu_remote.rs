//! A standalone `natter-sfu` reached over its control link (WebSocket, see
//! `natter_sfu::control`): the gateway's [`SfuLink`] when `sfu.url` is set. One connection,
//! re-opened with backoff when it drops; while it is down, joins are refused `unavailable`,
//! and the participants joined through it are dropped (the SFU drops them too).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use natter_messaging::SfuNotices;
use natter_messaging::rooms::{BoxFuture, SfuLink, SfuNotice};
use natter_sfu::control::{ControlReply, ControlRequest, MAX_CONTROL_FRAME, control_key};
use natter_signaling::call::Media;
use natter_signaling::{ErrorCode, ProtocolError};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Requests waiting for the link task.
const OUTBOX: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A request the SFU does not answer within this long is refused.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = oneshot::Sender<ControlReply>;

pub struct RemoteSfu {
    outbox: mpsc::Sender<(ControlRequest, Option<Reply>)>,
}

/// Where notices go once the gateway is up.
pub type NoticeSlot = Arc<OnceLock<SfuNotices>>;

fn unavailable(why: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Unavailable,
        format!("the SFU is unreachable: {why}"),
    )
}

impl RemoteSfu {
    /// Starts the link task toward `url`, authorised with the key of `secret`.
    pub fn start(url: String, secret: &[u8]) -> (RemoteSfu, NoticeSlot) {
        let (outbox, rx) = mpsc::channel(OUTBOX);
        let slot: NoticeSlot = Arc::new(OnceLock::new());
        tokio::spawn(run(url, control_key(secret), rx, slot.clone()));
        (RemoteSfu { outbox }, slot)
    }

    async fn ask(&self, r: ControlRequest) -> Result<ControlReply, ProtocolError> {
        let (tx, rx) = oneshot::channel();
        self.outbox
            .send((r, Some(tx)))
            .await
            .map_err(|_| unavailable("the link stopped"))?;
        match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
            Ok(Ok(ControlReply::Refused { code, message, .. })) => {
                Err(ProtocolError::new(code, message))
            }
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(unavailable("the link dropped")),
            Err(_) => Err(unavailable("no answer in time")),
        }
    }
}

impl SfuLink for RemoteSfu {
    fn join(
        &self,
        token: String,
        offer: String,
    ) -> BoxFuture<Result<(u64, String), ProtocolError>> {
        let me = RemoteSfu {
            outbox: self.outbox.clone(),
        };
        Box::pin(async move {
            match me
                .ask(ControlRequest::Join {
                    req: 0,
                    token,
                    offer,
                })
                .await?
            {
                ControlReply::Joined {
                    participant,
                    answer,
                    ..
                } => Ok((participant, answer)),
                other => Err(ProtocolError::internal(format!(
                    "the SFU answered {other:?}"
                ))),
            }
        })
    }

    fn answer(&self, participant: u64, sdp: String) -> BoxFuture<Result<(), ProtocolError>> {
        let me = RemoteSfu {
            outbox: self.outbox.clone(),
        };
        Box::pin(async move {
            me.ask(ControlRequest::Answer {
                req: 0,
                participant,
                sdp,
            })
            .await
            .map(|_| ())
        })
    }

    fn leave(&self, participant: u64) -> BoxFuture<()> {
        let outbox = self.outbox.clone();
        Box::pin(async move {
            let _ = outbox
                .send((ControlRequest::Leave { participant }, None))
                .await;
        })
    }
}

fn with_req(r: ControlRequest, id: u64) -> ControlRequest {
    match r {
        ControlRequest::Join { token, offer, .. } => ControlRequest::Join {
            req: id,
            token,
            offer,
        },
        ControlRequest::Answer {
            participant, sdp, ..
        } => ControlRequest::Answer {
            req: id,
            participant,
            sdp,
        },
        leave => leave,
    }
}

fn notice(slot: &NoticeSlot, n: SfuNotice) {
    if let Some(to) = slot.get() {
        to.notice(n);
    }
}

async fn run(
    url: String,
    key: String,
    mut outbox: mpsc::Receiver<(ControlRequest, Option<Reply>)>,
    slot: NoticeSlot,
) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let mut request = match url.as_str().into_client_request() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("sfu.url {url:?} is not a WebSocket URL: {e}");
                return;
            }
        };
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {key}").parse().expect("a header value"),
        );
        let mut cfg = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default();
        cfg.max_message_size = Some(MAX_CONTROL_FRAME);
        let ws = tokio_tungstenite::connect_async_with_config(request, Some(cfg), false).await;
        let mut ws = match ws {
            Ok((ws, _)) => {
                tracing::info!("connected to the SFU at {url}");
                backoff = BACKOFF_MIN;
                ws
            }
            Err(e) => {
                tracing::warn!("cannot reach the SFU at {url}: {e}; retrying in {backoff:?}");
                // Refuse what comes meanwhile rather than queue it.
                let until = tokio::time::Instant::now() + backoff;
                while let Ok(Some((_, reply))) = tokio::time::timeout_at(until, outbox.recv()).await
                {
                    drop(reply);
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let mut next = 0u64;
        let mut waiting: HashMap<u64, Reply> = HashMap::new();
        let mut joined: HashSet<u64> = HashSet::new();
        loop {
            tokio::select! {
                r = outbox.recv() => {
                    let Some((r, reply)) = r else { return };
                    next += 1;
                    if let Some(reply) = reply {
                        waiting.insert(next, reply);
                    }
                    if let ControlRequest::Leave { participant } = &r {
                        joined.remove(participant);
                    }
                    let text = serde_json::to_string(&with_req(r, next)).expect("serializes");
                    if ws.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                m = ws.next() => {
                    let text = match m {
                        Some(Ok(Message::Text(t))) => t,
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                        _ => break,
                    };
                    let Ok(reply) = serde_json::from_str::<ControlReply>(&text) else {
                        tracing::warn!("the SFU sent a frame this gateway cannot read");
                        break;
                    };
                    match reply {
                        ControlReply::Joined { req, participant, .. } => {
                            joined.insert(participant);
                            if let Some(w) = waiting.remove(&req) {
                                let _ = w.send(reply);
                            }
                        }
                        ControlReply::Done { req } | ControlReply::Refused { req, .. } => {
                            if let Some(w) = waiting.remove(&req) {
                                let _ = w.send(reply);
                            }
                        }
                        ControlReply::Offer { participant, sdp, tracks } => {
                            let tracks = tracks
                                .into_iter()
                                .map(|t| {
                                    let kind = if t.kind == "video" { Media::Video } else { Media::Audio };
                                    (t.mid, t.publisher, kind)
                                })
                                .collect();
                            notice(&slot, SfuNotice::Offer { participant, sdp, tracks });
                        }
                        ControlReply::Layers { participant, mid, rids } => {
                            notice(&slot, SfuNotice::Layers { participant, mid, rids });
                        }
                        ControlReply::Speaker { participant, speaker } => {
                            notice(&slot, SfuNotice::Speaker { participant, speaker });
                        }
                        ControlReply::Left { participant, reason } => {
                            joined.remove(&participant);
                            notice(&slot, SfuNotice::Left { participant, reason });
                        }
                    }
                }
            }
        }
        tracing::warn!("the link to the SFU at {url} dropped; reconnecting");
        // Waiters are refused as their senders drop; the SFU drops this link's
        // participants, and so does the gateway.
        drop(waiting);
        for participant in joined {
            notice(
                &slot,
                SfuNotice::Left {
                    participant,
                    reason: "the SFU link was lost".into(),
                },
            );
        }
    }
}
