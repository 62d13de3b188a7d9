//! One authenticated WebSocket to a natter server.
//!
//! Two small tasks own the socket halves. Requests get the next id and a waiter; answers are
//! matched to waiters by id. Everything the server sends on its own (deliveries, receipts,
//! presence, typing, `queue_empty`, errors for fire-and-forget frames) arrives as an [`Event`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use natter_signaling::codec::Encoding;
use natter_signaling::{ClientFrame, DeviceId, ErrorCode, ProtocolError, ServerFrame, UserId};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::ClientError;

/// Times a request refused as `overloaded` is sent again by [`Connection::request`].
const OVERLOAD_RETRIES: u32 = 8;

/// How to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    pub encoding: Encoding,
    /// The highest queue sequence already stored locally (sent in `hello`).
    pub cursor: Option<u64>,
    /// Local address to connect from (load tests spread sockets over 127.x addresses).
    pub bind: Option<IpAddr>,
    /// How long to wait for the answer to any request.
    pub timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            encoding: Encoding::Binary,
            cursor: None,
            bind: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Something the server sent on its own.
#[derive(Debug, Clone)]
pub enum Event {
    Frame(ServerFrame),
    /// The socket closed; with the close code and reason if the server gave them.
    Closed(Option<(u16, String)>),
}

/// Requests waiting for answers; `None` once the connection is gone, so that a request made
/// after that fails at once instead of waiting for its timeout.
type Waiters = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<ServerFrame>>>>>;

/// An authenticated connection.
pub struct Connection {
    out: mpsc::UnboundedSender<Message>,
    waiters: Waiters,
    next_id: AtomicU64,
    events: mpsc::UnboundedReceiver<Event>,
    encoding: Encoding,
    timeout: Duration,
    pub user: UserId,
    pub device: DeviceId,
    pub primary: bool,
}

impl Connection {
    /// Opens the socket, sends `hello` and waits for `welcome`.
    pub async fn connect(
        url: &str,
        token: &str,
        opts: ConnectOptions,
    ) -> Result<Connection, ClientError> {
        let mut conn = Self::open(url, opts.encoding, opts.bind, opts.timeout).await?;
        let hello = ClientFrame::Hello {
            id: 0,
            token: token.to_owned(),
            cursor: opts.cursor,
            client: Some(concat!("natter-client/", env!("CARGO_PKG_VERSION")).into()),
        };
        match conn.request(hello).await? {
            ServerFrame::Welcome {
                user,
                device,
                primary,
                ..
            } => {
                conn.user = user;
                conn.device = device;
                conn.primary = primary;
                Ok(conn)
            }
            other => Err(ClientError::Protocol(format!(
                "expected welcome, got {}",
                other.type_name()
            ))),
        }
    }

    /// Opens the socket without authenticating (for tests of what the server does before
    /// `hello`).
    pub async fn open(
        url: &str,
        encoding: Encoding,
        bind: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Connection, ClientError> {
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(encoding.subprotocol()),
        );
        let host = req.uri().host().unwrap_or("127.0.0.1").to_owned();
        let port = req.uri().port_u16().unwrap_or(80);
        let addr: SocketAddr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| ClientError::Protocol(format!("cannot resolve {host}")))?;
        let stream = connect_tcp(addr, bind).await?;
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(8 * 1024)
            .max_message_size(Some(16 << 20));
        let (ws, resp) =
            tokio_tungstenite::client_async_with_config(req, stream, Some(config)).await?;
        let chosen = resp
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if chosen != encoding.subprotocol() {
            return Err(ClientError::Protocol(format!(
                "server chose subprotocol {chosen:?}, asked for {}",
                encoding.subprotocol()
            )));
        }
        let (mut sink, mut stream) = ws.split();
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let (ev_tx, ev_rx) = mpsc::unbounded_channel();
        let waiters: Waiters = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(async move {
            while let Some(m) = out_rx.recv().await {
                if sink.feed(m).await.is_err() {
                    return;
                }
                while let Ok(m) = out_rx.try_recv() {
                    if sink.feed(m).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
            let _ = sink.close().await;
        });
        let w = waiters.clone();
        tokio::spawn(async move {
            let mut close = None;
            while let Some(msg) = stream.next().await {
                let bytes = match msg {
                    Ok(Message::Text(t)) => t.as_bytes().to_vec(),
                    Ok(Message::Binary(b)) => b.to_vec(),
                    Ok(Message::Close(c)) => {
                        close = c.map(|c| (u16::from(c.code), c.reason.to_string()));
                        break;
                    }
                    Ok(_) => continue,
                    Err(_) => break,
                };
                let frame: ServerFrame = match encoding.decode(&bytes) {
                    Ok(f) => f,
                    Err(e) => {
                        tracing_free_log(&format!("undecodable server frame: {e}"));
                        continue;
                    }
                };
                let waiter = frame
                    .request_id()
                    .and_then(|id| w.lock().unwrap().as_mut().and_then(|m| m.remove(&id)));
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(frame);
                    }
                    None => {
                        let _ = ev_tx.send(Event::Frame(frame));
                    }
                }
            }
            // Dropping the waiters tells every pending request the connection closed.
            w.lock().unwrap().take();
            let _ = ev_tx.send(Event::Closed(close));
        });
        Ok(Connection {
            out: out_tx,
            waiters,
            next_id: AtomicU64::new(1),
            events: ev_rx,
            encoding,
            timeout,
            user: UserId(0),
            device: DeviceId(0),
            primary: false,
        })
    }

    pub fn encoding(&self) -> Encoding {
        self.encoding
    }

    /// Sends a request and waits for its answer. An `error` answer becomes
    /// [`ClientError::Server`]. A request the server refused as `overloaded` (it did
    /// nothing) is sent again after the wait the server asked for, a few times, within the
    /// request timeout.
    pub async fn request(&self, frame: ClientFrame) -> Result<ServerFrame, ClientError> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut attempts = 0;
        loop {
            match self.request_once(frame.clone()).await {
                Err(ClientError::Server(e))
                    if e.code == ErrorCode::Overloaded && attempts < OVERLOAD_RETRIES =>
                {
                    attempts += 1;
                    let wait = Duration::from_millis(e.retry_after_ms.unwrap_or(50).max(1));
                    if tokio::time::Instant::now() + wait >= deadline {
                        return Err(ClientError::Server(e));
                    }
                    tokio::time::sleep(wait).await;
                }
                r => return r,
            }
        }
    }

    /// Sends a request once and waits for its answer (no retry of `overloaded`).
    pub async fn request_once(&self, mut frame: ClientFrame) -> Result<ServerFrame, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        frame.set_id(id);
        let (tx, rx) = oneshot::channel();
        match self.waiters.lock().unwrap().as_mut() {
            Some(m) => m.insert(id, tx),
            None => return Err(ClientError::Closed),
        };
        if self.send_frame(&frame).is_err() {
            self.forget(id);
            return Err(ClientError::Closed);
        }
        let answer = match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(f)) => f,
            Ok(Err(_)) => return Err(ClientError::Closed),
            Err(_) => {
                self.forget(id);
                return Err(ClientError::Protocol(format!(
                    "no answer to {} within {:?}",
                    frame.type_name(),
                    self.timeout
                )));
            }
        };
        match answer {
            ServerFrame::Error(e) => Err(ClientError::Server(ProtocolError::from(e))),
            f => Ok(f),
        }
    }

    fn forget(&self, id: u64) {
        if let Some(m) = self.waiters.lock().unwrap().as_mut() {
            m.remove(&id);
        }
    }

    /// Sends a frame without waiting (for `ack` and `typing`, answered only on failure, which
    /// then arrives as an event). Returns the id used.
    pub fn notify(&self, mut frame: ClientFrame) -> Result<u64, ClientError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        frame.set_id(id);
        self.send_frame(&frame)?;
        Ok(id)
    }

    fn send_frame(&self, frame: &ClientFrame) -> Result<(), ClientError> {
        let bytes = self.encoding.encode(frame);
        let msg = match self.encoding {
            Encoding::Json => {
                Message::Text(String::from_utf8(bytes).expect("JSON is UTF-8").into())
            }
            Encoding::Binary => Message::Binary(bytes.into()),
        };
        self.send_raw(msg)
    }

    /// Sends any WebSocket message as is (tests use this for malformed input).
    pub fn send_raw(&self, msg: Message) -> Result<(), ClientError> {
        self.out.send(msg).map_err(|_| ClientError::Closed)
    }

    /// The next server-initiated event; `None` once the connection is gone and drained
    /// (or its events were taken with [`Connection::take_events`]).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_next_event(&mut self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Moves the event stream out, so one task can read events while the connection itself
    /// is shared (e.g. in an `Arc`) for requests.
    pub fn take_events(&mut self) -> Events {
        let (_, empty) = mpsc::unbounded_channel();
        Events(std::mem::replace(&mut self.events, empty))
    }

    /// Closes the socket (the server sees a normal close).
    pub fn close(self) {
        let _ = self.out.send(Message::Close(None));
    }
}

/// A connection's server-initiated events, taken out of it.
pub struct Events(mpsc::UnboundedReceiver<Event>);

impl Events {
    pub async fn next(&mut self) -> Option<Event> {
        self.0.recv().await
    }

    pub fn try_next(&mut self) -> Option<Event> {
        self.0.try_recv().ok()
    }
}

async fn connect_tcp(addr: SocketAddr, bind: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let stream = match bind {
        None => TcpStream::connect(addr).await?,
        Some(ip) => {
            let sock = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            sock.bind(SocketAddr::new(ip, 0))?;
            sock.connect(addr).await?
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The SDK does not pull in a logging framework; frames it cannot read are reported here.
fn tracing_free_log(msg: &str) {
    if std::env::var_os("NATTER_CLIENT_DEBUG").is_some() {
        eprintln!("natter-client: {msg}");
    }
}
