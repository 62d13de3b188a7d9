//! A hostile client's tools: a raw WebSocket that can stop reading, with a tiny receive
//! buffer so that the server's writes block early.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use natter_client::protocol::ServerFrame;
use natter_client::protocol::codec::Encoding;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

pub type RawSink = SplitSink<WebSocketStream<TcpStream>, Message>;
pub type RawStream = SplitStream<WebSocketStream<TcpStream>>;

/// Connects to `ws_url` (ws://127.0.0.1:PORT/v1/ws) with a receive buffer of about
/// `rcvbuf` bytes. JSON encoding.
pub async fn connect(ws_url: &str, rcvbuf: u32) -> (RawSink, RawStream) {
    let hostport = ws_url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .expect("ws:// URL");
    let addr: std::net::SocketAddr = hostport.parse().expect("an IP:port URL");
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(rcvbuf).unwrap();
    let tcp = sock.connect(addr).await.expect("TCP connect");
    let (ws, _) = tokio_tungstenite::client_async(ws_url, tcp)
        .await
        .expect("WebSocket handshake");
    ws.split()
}

pub fn json(frame: serde_json::Value) -> Message {
    Message::Text(frame.to_string().into())
}

/// The next server frame; `None` once the socket is closed.
pub async fn next_frame(stream: &mut RawStream) -> Option<ServerFrame> {
    loop {
        match stream.next().await? {
            Ok(Message::Text(t)) => {
                return Some(Encoding::Json.decode(t.as_bytes()).expect("a server frame"));
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Sends `hello` and reads up to `queue_empty`.
pub async fn hello(sink: &mut RawSink, stream: &mut RawStream, token: &str) {
    sink.send(json(
        serde_json::json!({"type": "hello", "id": 1, "token": token}),
    ))
    .await
    .unwrap();
    loop {
        match next_frame(stream).await.expect("welcome and queue_empty") {
            ServerFrame::QueueEmpty {} => return,
            ServerFrame::Welcome { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Reads and drops everything until the socket closes; returns the close code, if any.
pub async fn drain_to_close(stream: &mut RawStream) -> Option<u16> {
    while let Some(msg) = stream.next().await {
        match msg {
            Ok(Message::Close(c)) => return c.map(|c| u16::from(c.code)),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}
