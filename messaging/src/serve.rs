//! The HTTP accept loop: hyper's HTTP/1 server driven directly, because `axum::serve` sets no
//! timer and so no header-read timeout (a client that opens a connection and sends nothing,
//! or a header a byte at a time, would hold it for ever).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::Response;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// After an accept error (e.g. out of file descriptors), wait this long before the next
/// accept rather than spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves `app` on `listener` until `stop`, then waits for open requests to finish (the
/// caller bounds that wait). Headers must arrive within `read_timeout` of the connection
/// opening (and of the previous response, on a kept-alive connection).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    read_timeout: Duration,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let open = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        // Frames are small and latency matters: no Nagle delay behind a delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY: {e}");
        }
        let app = app.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let mut app = app.clone();
            async move {
                let resp: Result<Response, Infallible> = app.call(req).await;
                resp
            }
        });
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(read_timeout)
            .serve_connection(TokioIo::new(tcp), svc)
            .with_upgrades();
        let stop = stop.clone();
        open.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    // Finish the request in progress, take no more.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
    drop(listener);
    open.close();
    open.wait().await;
    Ok(())
}
