//! Hostile clients, time and memory: clients that never read, never finish a header or
//! never say hello are cut off within stated times and cost bounded memory.

use std::time::{Duration, Instant};

use futures_util::SinkExt;
use natter_client::protocol::{ClientFrame, Conv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;
use crate::raw;

/// Body of a message near the envelope limit (64 KiB).
const BIG: usize = 60 * 1024;

/// `n` big messages from `from` to `to`, pipelined.
async fn send_big(from: &natter_client::Connection, to: &natter_client::Credentials, n: usize) {
    let body = vec![7u8; BIG];
    let pending: Vec<_> = (0..n)
        .map(|i| from.request(send_frame(&format!("big{i}"), to.user, to.device, &body)))
        .collect();
    for r in futures_util::future::join_all(pending).await {
        r.expect("sent");
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_after_the_write_timeout_and_loses_nothing() {
    let s = TestServer::start_with(&["--write-timeout-ms", "1500"]);
    let (_, aconn) = s.user().await;
    let b = s.register().await;
    let (mut sink, mut stream) = raw::connect(&s.ws, 4096).await;
    raw::hello(&mut sink, &mut stream, &b.token).await;
    // From here on b reads nothing; 100 × 60 KiB fill its socket buffers.
    let t0 = Instant::now();
    send_big(&aconn, &b, 100).await;
    let cut = s
        .wait_metric(
            "natter_messaging_slow_consumer_disconnects_total{reason=\"blocked\"}",
            1.0,
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(cut, 1.0, "cut off for a blocked write");
    assert!(t0.elapsed() >= Duration::from_millis(1500));
    // The socket really is gone: reading now finds its end (after what was in flight).
    let end = tokio::time::timeout(Duration::from_secs(20), raw::drain_to_close(&mut stream)).await;
    assert!(end.is_ok(), "the server closed the socket");
    // What it never read is still queued: a well-behaved reconnect gets all of it.
    drop((sink, stream));
    let mut bconn = s.connect(&b).await;
    let mut n = 0;
    while n < 100 {
        recv_item(&mut bconn).await;
        n += 1;
    }
}

#[tokio::test]
async fn events_for_a_client_that_does_not_read_are_bounded_in_bytes() {
    let s = TestServer::start_with(&[
        "--write-timeout-ms",
        "120000",
        "--max-outbound-bytes",
        "2097152",
    ]);
    let (_, aconn) = s.user().await;
    let b = s.register().await;
    let (mut sink, mut stream) = raw::connect(&s.ws, 4096).await;
    raw::hello(&mut sink, &mut stream, &b.token).await;
    // Block its socket, then flood it with typing events it never reads.
    send_big(&aconn, &b, 100).await;
    let rss_before = s.rss_kib();
    let name = "natter_messaging_slow_consumer_disconnects_total{reason=\"bytes\"}";
    let mut cut = 0.0;
    for round in 0..40 {
        for i in 0..1000 {
            aconn
                .notify(ClientFrame::Typing {
                    id: 0,
                    conv: Conv::Direct(b.user),
                    active: (round * 1000 + i) % 2 == 0,
                })
                .unwrap();
        }
        cut = s.wait_metric(name, 1.0, Duration::from_millis(250)).await;
        if cut >= 1.0 {
            break;
        }
    }
    assert_eq!(
        cut, 1.0,
        "cut off for bytes waiting, long before the write timeout"
    );
    let grown = s.rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "server memory grew {grown} KiB");
    // It was told why, if it ever reads again.
    let close = tokio::time::timeout(Duration::from_secs(20), raw::drain_to_close(&mut stream))
        .await
        .expect("the socket ends");
    assert!(close.is_none() || close == Some(4008), "{close:?}");
}

#[tokio::test]
async fn the_hello_deadline_holds_while_the_server_cannot_write() {
    let s = TestServer::start_with(&["--hello-timeout-ms", "1000"]);
    let (mut sink, stream) = raw::connect(&s.ws, 4096).await;
    // Junk before hello: every frame gets an error back, which this client never reads.
    let flood = tokio::spawn(async move {
        for _ in 0..200_000 {
            if sink
                .feed(raw::json(serde_json::json!({"type": "nope"})))
                .await
                .is_err()
            {
                break;
            }
        }
        let _ = sink.flush().await;
    });
    let closed = s
        .wait_metric(
            "natter_messaging_hello_timeouts_total",
            1.0,
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(closed, 1.0, "closed at the hello deadline");
    flood.abort();
    // And the socket is closed: reading finds its end after the error frames in flight.
    let mut stream = stream;
    let end = tokio::time::timeout(Duration::from_secs(20), raw::drain_to_close(&mut stream)).await;
    assert!(end.is_ok(), "the server closed the socket");
}

async fn closed_within(tcp: &mut TcpStream, within: Duration) -> Option<Duration> {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((t0 + within).into(), tcp.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t0.elapsed()),
            Ok(Ok(_)) => {}
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn slow_http_clients_are_closed_after_the_read_timeout() {
    let s = TestServer::start_with(&["--http-read-timeout-ms", "1000"]);
    let addr = s.base.trim_start_matches("http://").to_owned();
    let t0 = Instant::now();
    // Connects and sends nothing.
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    // Sends half a header and stops.
    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Dribbles a header a byte every 200 ms: never finishes in time.
    let mut dribble = TcpStream::connect(&addr).await.unwrap();
    let dribbler = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa" {
            if dribble.write_all(&[*b]).await.is_err() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    });
    for (name, tcp) in [("silent", &mut silent), ("half header", &mut half)] {
        let t = closed_within(tcp, Duration::from_secs(5)).await;
        assert!(t.is_some(), "{name}: still open after 5 s");
        let t = t0.elapsed();
        assert!(
            t >= Duration::from_millis(900),
            "{name}: closed after {t:?}"
        );
    }
    assert!(dribbler.await.unwrap(), "the dribbling client was cut off");
}

#[tokio::test]
async fn a_kept_alive_http_connection_that_goes_quiet_is_closed() {
    let s = TestServer::start_with(&["--http-read-timeout-ms", "1000"]);
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let t = closed_within(&mut tcp, Duration::from_secs(5)).await;
    assert!(t.is_some(), "an idle kept-alive connection stays open");
}

#[tokio::test]
async fn a_stalled_upload_body_is_cut_off_and_keeps_what_arrived() {
    let s = TestServer::start_with(&["--http-read-timeout-ms", "1000"]);
    let a = s.register().await;
    let http = s.http();
    let id = http.upload_create(&a.token, 1000).await.unwrap().upload_id;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut tcp = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PATCH /v1/uploads/{id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Upload-Offset: 0\r\nContent-Length: 1000\r\n\r\n",
        a.token
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&[1u8; 10]).await.unwrap();
    // The server answers after the stall and closes.
    let mut resp = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut resp)).await;
    assert!(read.is_ok(), "answered and closed within 5 s");
    let text = String::from_utf8_lossy(&resp);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("upload-offset: 10"),
        "{text}"
    );
    let status = http.upload_status(&a.token, &id).await.unwrap();
    assert_eq!(status.offset, 10);
}
