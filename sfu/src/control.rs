//! The control link between gateways and a standalone `natter-sfu`: one WebSocket per
//! gateway at `/v1/control`, JSON text frames. A gateway asks (join, answer, leave); the SFU
//! answers each request by its `req` number and sends the notices (renegotiation offers,
//! dropped participants) of the participants that gateway joined. The link is authorised
//! by a bearer key derived from the room-token secret, so only a holder of the secret can
//! answer or remove participants; joins carry their room tokens as well.
//!
//! When a gateway's link closes, the participants it joined are removed: nobody is left to
//! relay their renegotiations.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use natter_signaling::ErrorCode;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::shell::SfuHandle;
use crate::{MediaKind, ParticipantId, SfuError, SfuEvent};

/// Largest control frame: an SDP (32 KiB at most through the gateway) and its envelope.
pub const MAX_CONTROL_FRAME: usize = 64 * 1024;
/// Frames queued toward one gateway before the link is considered stuck and closed.
const LINK_QUEUE: usize = 1024;

pub use natter_signaling::room_token::control_key;

/// A gateway's request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    Join {
        req: u64,
        token: String,
        offer: String,
    },
    Answer {
        req: u64,
        participant: u64,
        sdp: String,
    },
    Leave {
        participant: u64,
    },
}

/// One m-line of an offer: its mid, the publishing participant, `audio` or `video`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfferedTrack {
    pub mid: String,
    pub publisher: u64,
    pub kind: String,
}

/// What the SFU sends a gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlReply {
    Joined {
        req: u64,
        participant: u64,
        answer: String,
    },
    Done {
        req: u64,
    },
    Refused {
        req: u64,
        code: ErrorCode,
        message: String,
    },
    Offer {
        participant: u64,
        sdp: String,
        tracks: Vec<OfferedTrack>,
    },
    Left {
        participant: u64,
        reason: String,
    },
    /// Who speaks now in `participant`'s room.
    Speaker {
        participant: u64,
        speaker: u64,
    },
    /// The simulcast layers of `participant`'s track `mid` that anyone receives.
    Layers {
        participant: u64,
        mid: String,
        rids: Vec<String>,
    },
}

impl SfuError {
    /// The protocol error code a client gets for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            SfuError::BadSdp(_) => ErrorCode::Invalid,
            SfuError::RoomFull(_) => ErrorCode::LimitExceeded,
            SfuError::Token(_) => ErrorCode::Unauthorized,
            SfuError::AlreadyJoined | SfuError::NoOfferPending => ErrorCode::Conflict,
            SfuError::UnknownParticipant => ErrorCode::NotFound,
            SfuError::Rtc(_) => ErrorCode::Unavailable,
        }
    }
}

/// `audio` or `video`.
pub fn kind_name(k: MediaKind) -> &'static str {
    match k {
        MediaKind::Audio => "audio",
        MediaKind::Video => "video",
    }
}

type LinkTx = mpsc::Sender<ControlReply>;

struct Links {
    next: u64,
    /// Each gateway link's queue.
    links: HashMap<u64, LinkTx>,
    /// Which link joined each participant.
    owner: HashMap<ParticipantId, u64>,
    /// Offers to a newcomer that came out before its join's answer named it: held until
    /// the join finishes (bounded; dropped after a while if it never does).
    early: HashMap<ParticipantId, (Instant, Vec<ControlReply>)>,
}

const EARLY_HELD: usize = 1024;
const EARLY_TTL: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct Control {
    sfu: SfuHandle,
    key: Arc<String>,
    links: Arc<Mutex<Links>>,
}

/// Serves the control link (and `/metrics`, `/healthz`) on `listener`, and routes the SFU's
/// `events` to the gateway that joined each participant.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sfu: SfuHandle,
    mut events: mpsc::Receiver<SfuEvent>,
    secret: &[u8],
) -> std::io::Result<()> {
    let control = Control {
        sfu,
        key: Arc::new(control_key(secret)),
        links: Arc::new(Mutex::new(Links {
            next: 0,
            links: HashMap::new(),
            owner: HashMap::new(),
            early: HashMap::new(),
        })),
    };
    let links = control.links.clone();
    tokio::spawn(async move {
        while let Some(e) = events.recv().await {
            let (participant, reply) = match e {
                SfuEvent::Offer {
                    participant,
                    sdp,
                    tracks,
                } => (
                    participant,
                    ControlReply::Offer {
                        participant: participant.0,
                        sdp,
                        tracks: tracks
                            .into_iter()
                            .map(|(mid, t, k)| OfferedTrack {
                                mid: mid.to_string(),
                                publisher: t.publisher.0,
                                kind: kind_name(k).into(),
                            })
                            .collect(),
                    },
                ),
                SfuEvent::Left {
                    participant,
                    reason,
                } => (
                    participant,
                    ControlReply::Left {
                        participant: participant.0,
                        reason,
                    },
                ),
                SfuEvent::Speaker {
                    participant,
                    speaker,
                } => (
                    participant,
                    ControlReply::Speaker {
                        participant: participant.0,
                        speaker: speaker.0,
                    },
                ),
                SfuEvent::Layers {
                    participant,
                    mid,
                    rids,
                } => (
                    participant,
                    ControlReply::Layers {
                        participant: participant.0,
                        mid: mid.to_string(),
                        rids,
                    },
                ),
                SfuEvent::Connected(_) => continue,
            };
            let mut l = links.lock().unwrap();
            let left = matches!(reply, ControlReply::Left { .. });
            let owner = if left {
                l.early.remove(&participant);
                l.owner.remove(&participant)
            } else {
                l.owner.get(&participant).copied()
            };
            match owner.and_then(|o| l.links.get(&o)) {
                // A gateway that does not read loses its notices.
                Some(tx) => {
                    let _ = tx.try_send(reply);
                }
                None if !left => {
                    let now = Instant::now();
                    l.early
                        .retain(|_, (at, _)| now.duration_since(*at) < EARLY_TTL);
                    if l.early.len() < EARLY_HELD || l.early.contains_key(&participant) {
                        let (_, held) = l.early.entry(participant).or_insert((now, Vec::new()));
                        if held.len() < 16 {
                            held.push(reply);
                        }
                    }
                }
                None => {}
            }
        }
    });
    let app = axum::Router::new()
        .route("/v1/control", get(upgrade))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(control);
    axum::serve(listener, app).await
}

async fn metrics(State(c): State<Control>) -> String {
    c.sfu.render_metrics()
}

async fn upgrade(State(c): State<Control>, headers: HeaderMap, ws: WebSocketUpgrade) -> Response {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Not secret-dependent timing worth guarding: the key is a MAC, compared whole.
    if bearer != Some(c.key.as_str()) {
        return (StatusCode::UNAUTHORIZED, "a control key is required").into_response();
    }
    ws.max_message_size(MAX_CONTROL_FRAME)
        .on_upgrade(move |socket| link(c, socket))
}

async fn link(c: Control, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::channel(LINK_QUEUE);
    let id = {
        let mut l = c.links.lock().unwrap();
        l.next += 1;
        let id = l.next;
        l.links.insert(id, tx.clone());
        id
    };
    let mut mine: HashSet<ParticipantId> = HashSet::new();
    tracing::info!(link = id, "a gateway connected");
    loop {
        tokio::select! {
            out = rx.recv() => {
                let Some(out) = out else { break };
                let text = serde_json::to_string(&out).expect("serializes");
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            msg = socket.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => break,
                };
                match serde_json::from_str::<ControlRequest>(&text) {
                    Ok(r) => request(&c, id, &tx, &mut mine, r).await,
                    Err(e) => {
                        tracing::warn!(link = id, "a control frame that does not parse: {e}");
                        break;
                    }
                }
            }
        }
    }
    tracing::info!(
        link = id,
        participants = mine.len(),
        "a gateway's link closed"
    );
    c.links.lock().unwrap().links.remove(&id);
    for p in mine {
        let _ = c.sfu.leave(p).await;
    }
}

async fn request(
    c: &Control,
    link: u64,
    tx: &LinkTx,
    mine: &mut HashSet<ParticipantId>,
    r: ControlRequest,
) {
    let reply = match r {
        ControlRequest::Join { req, token, offer } => match c.sfu.join(token, offer).await {
            Ok((p, answer)) => {
                mine.insert(p);
                let held = {
                    let mut l = c.links.lock().unwrap();
                    l.owner.insert(p, link);
                    l.early.remove(&p)
                };
                let _ = tx
                    .send(ControlReply::Joined {
                        req,
                        participant: p.0,
                        answer,
                    })
                    .await;
                for r in held.into_iter().flat_map(|(_, h)| h) {
                    let _ = tx.send(r).await;
                }
                return;
            }
            Err(e) => refused(req, e),
        },
        ControlRequest::Answer {
            req,
            participant,
            sdp,
        } => {
            let p = ParticipantId(participant);
            if !mine.contains(&p) {
                refused(req, SfuError::UnknownParticipant)
            } else {
                match c.sfu.answer(p, sdp).await {
                    Ok(()) => ControlReply::Done { req },
                    Err(e) => refused(req, e),
                }
            }
        }
        ControlRequest::Leave { participant } => {
            let p = ParticipantId(participant);
            if mine.remove(&p) {
                let _ = c.sfu.leave(p).await;
            }
            return;
        }
    };
    let _ = tx.send(reply).await;
}

fn refused(req: u64, e: SfuError) -> ControlReply {
    ControlReply::Refused {
        req,
        code: e.code(),
        message: e.to_string(),
    }
}

/// Where a standalone SFU listens for gateways.
pub fn default_control_listen() -> SocketAddr {
    "127.0.0.1:7883".parse().expect("a socket address")
}
