//! The Janus side of `natter-load sfu`: the VideoRoom plugin through Janus's HTTP JSON API.
//! One Janus session carries every participant; each PeerConnection is a plugin handle (a
//! publisher's, and a subscriber's taking every other publisher's streams). Requests are
//! POSTed; their asynchronous answers (the plugin's events, with Janus's SDP) come back on
//! one long poll, matched to the request by transaction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const PLUGIN: &str = "janus.plugin.videoroom";
/// Janus drops a session after 60 s without a request by default.
const KEEPALIVE: Duration = Duration::from_secs(15);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Janus {
    http: reqwest::Client,
    base: String,
    session: u64,
    pending: Mutex<HashMap<String, oneshot::Sender<Value>>>,
    next: AtomicU64,
}

impl Janus {
    /// Opens a session at `base` (e.g. `http://10.77.0.2:8088/janus`) and starts its long
    /// poll and keepalive.
    pub async fn connect(base: &str) -> Result<Arc<Janus>> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()?;
        let mut j = Janus {
            http,
            base: base.trim_end_matches('/').to_string(),
            session: 0,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        };
        let r = j
            .post(&j.base.clone(), json!({"janus": "create"}))
            .await
            .with_context(|| format!("cannot open a Janus session at {base}"))?;
        j.session = r["data"]["id"].as_u64().context("no session id")?;
        let j = Arc::new(j);
        let poller = Arc::downgrade(&j);
        tokio::spawn(async move {
            while let Some(j) = poller.upgrade() {
                if let Err(e) = j.poll_once().await {
                    eprintln!("natter-load: Janus long poll failed: {e:#}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        let keeper = Arc::downgrade(&j);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(KEEPALIVE).await;
                let Some(j) = keeper.upgrade() else { return };
                let _ = j
                    .post(&j.session_url(), json!({"janus": "keepalive"}))
                    .await;
            }
        });
        Ok(j)
    }

    fn session_url(&self) -> String {
        format!("{}/{}", self.base, self.session)
    }

    fn transaction(&self) -> String {
        format!("t{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// POSTs `body` and returns Janus's immediate reply; a Janus `error` is an error.
    async fn post(&self, url: &str, mut body: Value) -> Result<Value> {
        if body.get("transaction").is_none() {
            body["transaction"] = json!(self.transaction());
        }
        let v = json_of(self.http.post(url).body(body.to_string())).await?;
        if v["janus"] == "error" {
            bail!(
                "Janus error {}: {}",
                v["error"]["code"],
                v["error"]["reason"]
            );
        }
        Ok(v)
    }

    /// One long poll: hands each event to the request waiting for its transaction.
    async fn poll_once(&self) -> Result<()> {
        let url = format!("{}?maxev=20", self.session_url());
        let events = match json_of(self.http.get(url)).await? {
            Value::Array(a) => a,
            v => vec![v],
        };
        for e in events {
            if e["janus"] == "hangup" {
                eprintln!(
                    "natter-load: Janus hung up handle {}: {}",
                    e["sender"], e["reason"]
                );
            }
            let Some(t) = e["transaction"].as_str() else {
                continue;
            };
            if let Some(tx) = self.pending.lock().unwrap().remove(t) {
                let _ = tx.send(e);
            }
        }
        Ok(())
    }

    /// A new VideoRoom handle (one PeerConnection).
    pub async fn attach(&self) -> Result<u64> {
        let r = self
            .post(
                &self.session_url(),
                json!({"janus": "attach", "plugin": PLUGIN}),
            )
            .await?;
        r["data"]["id"].as_u64().context("no handle id")
    }

    /// A message to the plugin on `handle`; waits for the plugin's event when Janus only
    /// acknowledges it. Returns (the plugin's data, the JSEP if any).
    async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> Result<(Value, Option<Value>)> {
        let t = self.transaction();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(t.clone(), tx);
        let mut req = json!({"janus": "message", "transaction": t, "body": body});
        if let Some(j) = jsep {
            req["jsep"] = j;
        }
        let url = format!("{}/{handle}", self.session_url());
        let reply = match self.post(&url, req).await {
            Ok(r) => r,
            Err(e) => {
                self.pending.lock().unwrap().remove(&t);
                return Err(e);
            }
        };
        let event = if reply["janus"] == "ack" {
            tokio::time::timeout(ANSWER_TIMEOUT, rx)
                .await
                .context("Janus did not answer within 20 s")?
                .map_err(|_| anyhow!("Janus's long poll stopped"))?
        } else {
            self.pending.lock().unwrap().remove(&t);
            reply
        };
        let data = event["plugindata"]["data"].clone();
        if let Some(err) = data.get("error") {
            bail!("VideoRoom error {}: {err}", data["error_code"]);
        }
        let jsep = event.get("jsep").cloned();
        Ok((data, jsep))
    }

    /// Creates a room for `publishers` publishers (Opus and VP8, no bitrate cap below
    /// 2 Mbit/s) and returns its number.
    pub async fn create_room(&self, handle: u64, publishers: usize) -> Result<u64> {
        let (data, _) = self
            .message(
                handle,
                json!({
                    "request": "create",
                    "publishers": publishers,
                    "audiocodec": "opus",
                    "videocodec": "vp8",
                    "bitrate": 2_000_000,
                    "permanent": false,
                }),
                None,
            )
            .await?;
        data["room"].as_u64().context("no room number")
    }

    /// Joins `room` as a publisher with `offer`: returns (its feed id, Janus's answer).
    pub async fn publish(
        &self,
        handle: u64,
        room: u64,
        display: &str,
        offer: &str,
    ) -> Result<(u64, String)> {
        let (data, jsep) = self
            .message(
                handle,
                json!({"request": "joinandconfigure", "room": room, "ptype": "publisher",
                       "display": display}),
                Some(json!({"type": "offer", "sdp": offer})),
            )
            .await?;
        let feed = data["id"].as_u64().context("no publisher id")?;
        self.end_of_candidates(handle).await?;
        Ok((feed, sdp_of(jsep, "answer")?))
    }

    /// Joins `room` as a subscriber of every stream of `feeds`: returns Janus's offer.
    pub async fn subscribe(&self, handle: u64, room: u64, feeds: &[u64]) -> Result<String> {
        let streams: Vec<Value> = feeds.iter().map(|f| json!({"feed": f})).collect();
        let (_, jsep) = self
            .message(
                handle,
                json!({"request": "join", "room": room, "ptype": "subscriber",
                       "streams": streams}),
                None,
            )
            .await?;
        sdp_of(jsep, "offer")
    }

    /// Answers a subscription's offer, which starts its media.
    pub async fn start(&self, handle: u64, answer: &str) -> Result<()> {
        self.message(
            handle,
            json!({"request": "start"}),
            Some(json!({"type": "answer", "sdp": answer})),
        )
        .await?;
        self.end_of_candidates(handle).await
    }

    /// Our candidates are all in the SDP: tells Janus there are no more.
    async fn end_of_candidates(&self, handle: u64) -> Result<()> {
        let url = format!("{}/{handle}", self.session_url());
        self.post(
            &url,
            json!({"janus": "trickle", "candidate": {"completed": true}}),
        )
        .await
        .map(drop)
    }

    /// Ends the session (every handle and its PeerConnection with it).
    pub async fn destroy(&self) {
        let _ = self
            .post(&self.session_url(), json!({"janus": "destroy"}))
            .await;
    }
}

/// Sends `req` and reads Janus's JSON answer.
async fn json_of(req: reqwest::RequestBuilder) -> Result<Value> {
    let text = req.send().await?.error_for_status()?.text().await?;
    serde_json::from_str(&text).context("Janus answered with no JSON")
}

fn sdp_of(jsep: Option<Value>, kind: &str) -> Result<String> {
    let j = jsep.with_context(|| format!("Janus sent no {kind}"))?;
    if j["type"] != kind {
        bail!("Janus sent a {} where an {kind} was due", j["type"]);
    }
    j["sdp"]
        .as_str()
        .map(str::to_string)
        .with_context(|| format!("Janus's {kind} has no SDP"))
}
