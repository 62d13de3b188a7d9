//! Call signaling: the thin shell around the sans-IO [`CallRouter`]. Call frames go through
//! the router under a lock (no awaiting inside); the actions it returns become frames to
//! online devices and, for unanswered calls, missed-call notices in the durable queue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use natter_signaling::call::{Action, CallEvent, CallRouter, EndReason, Media, Party};
use natter_signaling::{
    ClientFrame, DeviceId, IceServer, ProtocolError, QueueItem, ServerFrame, UserId,
};

use crate::config::CallsConfig;
use crate::state::SharedState;
use crate::store::{Core, now_ms};

/// A missed-call item for every device of `user`.
pub struct MissedNotice {
    pub user: UserId,
    pub item: QueueItem,
}

impl MissedNotice {
    /// `from`'s call `call_id` (1:1 or a group's) that `user` missed at `at_ms`.
    pub fn new(user: UserId, call_id: String, from: UserId, media: Media, at_ms: u64) -> Self {
        let item = QueueItem::MissedCall {
            call_id,
            from,
            media,
            ts_ms: at_ms,
        };
        MissedNotice { user, item }
    }

    /// The storage job that queues it.
    pub fn job(self) -> impl FnOnce(&mut Core) -> Result<(), ProtocolError> + Send + 'static {
        move |core: &mut Core| {
            core.enqueue_to_user(self.user, None, self.item, now_ms())
                .map(|_| ())
        }
    }
}

/// Stores notices the server produced on its own (timeouts, disconnects, group calls).
pub(crate) fn store_missed(st: &SharedState, notices: Vec<MissedNotice>) {
    for n in notices {
        st.store.submit(n.job(), |r| {
            if let Err(e) = r {
                tracing::warn!("storing a missed-call notice failed: {e}");
            }
        });
    }
}

pub struct Calls {
    router: Mutex<CallRouter>,
    /// When each unanswered call was offered (for the setup-time histogram).
    offered: Mutex<HashMap<String, Instant>>,
}

/// ICE servers for a client, with TURN credentials minted for `who`.
pub fn ice_servers(cfg: &CallsConfig, who: &str) -> Vec<IceServer> {
    let mut out = Vec::new();
    if !cfg.stun_urls.is_empty() {
        out.push(IceServer {
            urls: cfg.stun_urls.clone(),
            username: None,
            credential: None,
        });
    }
    if let (false, Some(secret)) = (cfg.turn_urls.is_empty(), &cfg.turn_secret) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let c = natter_signaling::turn::mint(secret.as_bytes(), who, now, cfg.turn_ttl_s);
        out.push(IceServer {
            urls: cfg.turn_urls.clone(),
            username: Some(c.username),
            credential: Some(c.password),
        });
    }
    out
}

impl Calls {
    pub fn new(cfg: &CallsConfig) -> Calls {
        Calls {
            router: Mutex::new(CallRouter::new(cfg.ring_timeout_ms)),
            offered: Mutex::new(HashMap::new()),
        }
    }

    /// Handles one call frame from `from`. The answer is `Some` frame to send back, or
    /// `None` when there is nothing to answer (`call_ice`); with it come the missed-call
    /// notices that the caller must store (so that they count against its connection).
    pub fn request(
        &self,
        st: &SharedState,
        from: Party,
        frame: ClientFrame,
    ) -> Result<(Option<ServerFrame>, Vec<MissedNotice>), ProtocolError> {
        let now = now_ms();
        let ok = |id| Some(ServerFrame::Ok { id });
        let (actions, answer) = {
            let mut r = self.router.lock().unwrap();
            match frame {
                ClientFrame::CallOffer {
                    id,
                    call_id,
                    to,
                    media,
                    sdp,
                } => {
                    let online = st.hub.online_devices(to);
                    let actions = r.offer(from, &call_id, to, media, &sdp, &online, now)?;
                    st.metrics.call_attempts.inc();
                    self.offered
                        .lock()
                        .unwrap()
                        .insert(call_id.clone(), Instant::now());
                    let answer = ServerFrame::CallStarted {
                        id,
                        ice_servers: ice_servers(&st.cfg.calls, &from.user.to_string()),
                        call_id,
                    };
                    (actions, Some(answer))
                }
                ClientFrame::CallRinging { id, call_id } => (r.ringing(from, &call_id)?, ok(id)),
                ClientFrame::CallAccept { id, call_id, sdp } => {
                    (r.accept(from, &call_id, &sdp)?, ok(id))
                }
                ClientFrame::CallDecline { id, call_id } => {
                    (r.decline(from, &call_id, now)?, ok(id))
                }
                ClientFrame::CallCancel { id, call_id } => (r.cancel(from, &call_id, now)?, ok(id)),
                ClientFrame::CallHangup { id, call_id } => (r.hangup(from, &call_id, now)?, ok(id)),
                ClientFrame::CallIce {
                    call_id, candidate, ..
                } => (r.ice(from, &call_id, candidate)?, None),
                ClientFrame::CallUpdate {
                    id,
                    call_id,
                    kind,
                    sdp,
                } => (r.update(from, &call_id, kind, &sdp)?, ok(id)),
                ClientFrame::IceServers { id } => (
                    Vec::new(),
                    Some(ServerFrame::IceServers {
                        id,
                        servers: ice_servers(&st.cfg.calls, &from.user.to_string()),
                        ttl_s: st.cfg.calls.turn_ttl_s,
                    }),
                ),
                other => {
                    return Err(ProtocolError::internal(format!(
                        "{} is not a call frame",
                        other.type_name()
                    )));
                }
            }
        };
        Ok((answer, self.apply(st, actions)))
    }

    /// A device's connection ended.
    pub fn disconnected(&self, st: &SharedState, device: DeviceId) {
        let actions = self.router.lock().unwrap().disconnected(device, now_ms());
        store_missed(st, self.apply(st, actions));
    }

    /// Ends calls whose ring timeout passed.
    pub fn tick(&self, st: &SharedState) {
        let actions = self.router.lock().unwrap().tick(now_ms());
        store_missed(st, self.apply(st, actions));
    }

    /// Sends the events; returns the missed-call notices to store.
    fn apply(&self, st: &SharedState, actions: Vec<Action>) -> Vec<MissedNotice> {
        let mut missed = Vec::new();
        for a in actions {
            match a {
                Action::Send {
                    device,
                    call_id,
                    event,
                } => {
                    self.count(st, &call_id, &event);
                    let ice_servers = match event {
                        CallEvent::Incoming { .. } => {
                            ice_servers(&st.cfg.calls, &device.to_string())
                        }
                        _ => Vec::new(),
                    };
                    let frame = ServerFrame::Call {
                        call_id,
                        event,
                        ice_servers,
                    };
                    st.hub.send_to_device(device, Arc::new(frame));
                }
                Action::Missed {
                    user,
                    call_id,
                    from,
                    media,
                    at_ms,
                } => missed.push(MissedNotice::new(user, call_id, from, media, at_ms)),
            }
        }
        missed
    }

    /// Metrics: an answer ends the setup clock; an end before any answer is a failure.
    fn count(&self, st: &SharedState, call_id: &str, event: &CallEvent) {
        match event {
            CallEvent::Accepted { .. } => {
                if let Some(t) = self.offered.lock().unwrap().remove(call_id) {
                    st.metrics.calls_answered.inc();
                    st.metrics.call_setup.observe(t.elapsed().as_secs_f64());
                }
            }
            CallEvent::Ended { reason }
                if self.offered.lock().unwrap().remove(call_id).is_some() =>
            {
                st.metrics
                    .calls_failed
                    .with_label_values(&[reason_name(*reason)])
                    .inc();
            }
            _ => {}
        }
    }
}

fn reason_name(r: EndReason) -> &'static str {
    match r {
        EndReason::Declined => "declined",
        EndReason::Busy => "busy",
        EndReason::Cancelled => "cancelled",
        EndReason::Timeout => "timeout",
        EndReason::Hangup => "hangup",
        EndReason::Glare => "glare",
        EndReason::Unavailable => "unavailable",
        EndReason::ConnectionLost => "connection_lost",
    }
}

/// Runs ring timeouts.
pub async fn ticker(st: SharedState) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        st.calls.tick(&st);
    }
}
