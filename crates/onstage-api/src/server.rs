//! The HTTP server around the routers: accepts TCP connections up to a cap, gives
//! each one hyper's HTTP/1 with a header-read timeout, and puts a deadline on every
//! request body. What one client can hold open — a connection, a half-sent header,
//! a half-sent body — is bounded in number and in time.
//!
//! The limits are layers and settings of existing parts: hyper's timer for headers,
//! tower-http's `RequestBodyDeadlineLayer` for bodies, a semaphore in front of
//! `accept` for connections. Nothing here knows the IVS protocol.
//!
//! A new connection's first request head is read here, into a buffer the size of
//! what arrived, before hyper takes the socket: hyper gives every connection it
//! reads from an 8 KiB buffer at once, so a connection that sends nothing, or half a
//! header, would cost the server kilobytes it never cost the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tower::ServiceBuilder;
use tower_http::timeout::RequestBodyDeadlineLayer;

/// Bounds on what connections may hold, in number and in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// A connection must deliver a request's complete header within this time,
    /// counted from when the server starts waiting for it (also between requests on
    /// a kept-alive connection), or it is closed.
    pub header_read_timeout: Duration,
    /// A request's whole body must arrive within this time of its header.
    pub body_deadline: Duration,
    /// Most TCP connections open at once (WebSockets included); beyond it new
    /// connections wait in the kernel's backlog until one closes.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            body_deadline: Duration::from_secs(30),
            max_connections: 8192,
        }
    }
}

/// Whether an error reading a body is the body deadline passing.
pub fn is_deadline_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(e) = current {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        current = e.source();
    }
    false
}

/// How long a graceful stop waits for requests in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then
/// stops accepting, lets requests in progress finish (at most [`SHUTDOWN_GRACE`])
/// and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let service = ServiceBuilder::new()
        .layer(RequestBodyDeadlineLayer::new(limits.body_deadline))
        .service(app);
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS) as u32;
    let slots = Arc::new(Semaphore::new(max as usize));
    let mut at_limit = false;
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);

    loop {
        // A slot first, then a connection: at the cap, connections wait in the
        // backlog instead of costing a descriptor and a task each.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => {
                if std::mem::take(&mut at_limit) {
                    tracing::info!("below the connection limit again; accepting");
                }
                slot
            }
            Err(_) => {
                if !std::mem::replace(&mut at_limit, true) {
                    tracing::warn!(
                        max_connections = max,
                        "connection limit reached: new connections wait until one closes \
                         (raise --max-connections if this is legitimate load)"
                    );
                }
                metrics::counter!("onstage_http_connection_limit_reached_total").increment(1);
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, or a connection reset before accept: wait a
                    // moment rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    metrics::counter!("onstage_http_accept_errors_total").increment(1);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // The slot goes with the socket, through an upgrade to a WebSocket too.
        let mut counted = Counted::new(stream, slot);
        let http = http.clone();
        let service = service.clone();
        let mut stopping = stopping.clone();
        let head_timeout = limits.header_read_timeout;
        tokio::spawn(async move {
            let head = tokio::select! {
                head = tokio::time::timeout(head_timeout, counted.prefetch_head()) => head,
                _ = stopping.changed() => return,
            };
            match head {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "connection ended before its first request");
                    return;
                }
                Err(_) => {
                    metrics::counter!("onstage_http_header_timeouts_total").increment(1);
                    return;
                }
            }
            let connection = http
                .serve_connection(TokioIo::new(counted), TowerToHyperService::new(service))
                .with_upgrades();
            tokio::pin!(connection);
            let ended = tokio::select! {
                ended = connection.as_mut() => ended,
                _ = stopping.changed() => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    let _ = stop.send(true);
    // Every connection returns its slot when it closes.
    tokio::select! {
        _ = slots.acquire_many(max) => {}
        () = tokio::time::sleep(SHUTDOWN_GRACE) => {
            tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; stopping anyway");
        }
    }
    Ok(())
}

/// The most of a first request head read before hyper takes the connection: the
/// size of the buffer hyper would give it. A longer head goes to hyper as it is,
/// which answers or refuses it under its own limits.
const HEAD_PREFETCH_LIMIT: usize = 8 * 1024;

pin_project_lite::pin_project! {
    /// A TCP stream holding one of the server's connection slots until it closes,
    /// and the bytes read ahead of hyper ([`Counted::prefetch_head`]), which it
    /// serves before reading the socket again.
    struct Counted {
        #[pin]
        stream: TcpStream,
        _slot: OwnedSemaphorePermit,
        ahead: Vec<u8>,
        ahead_served: usize,
    }

    impl PinnedDrop for Counted {
        fn drop(_this: Pin<&mut Self>) {
            metrics::gauge!("onstage_http_connections").decrement(1.0);
        }
    }
}

impl Counted {
    fn new(stream: TcpStream, slot: OwnedSemaphorePermit) -> Self {
        metrics::gauge!("onstage_http_connections").increment(1.0);
        Counted {
            stream,
            _slot: slot,
            ahead: Vec::new(),
            ahead_served: 0,
        }
    }

    /// Reads until the first request head is complete (its blank line arrived), or
    /// [`HEAD_PREFETCH_LIMIT`] bytes arrived, keeping only what arrived. The caller
    /// bounds it in time.
    async fn prefetch_head(&mut self) -> std::io::Result<()> {
        loop {
            self.stream.readable().await?;
            let mut chunk = [0u8; 2048];
            let room = HEAD_PREFETCH_LIMIT - self.ahead.len();
            let want = room.min(chunk.len());
            match self.stream.try_read(&mut chunk[..want]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    // The blank line may straddle the previous read.
                    let from = self.ahead.len().saturating_sub(3);
                    self.ahead.extend_from_slice(&chunk[..n]);
                    let ended = self.ahead[from..].windows(4).any(|w| w == b"\r\n\r\n");
                    if ended || self.ahead.len() >= HEAD_PREFETCH_LIMIT {
                        return Ok(());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if *this.ahead_served < this.ahead.len() {
            let rest = &this.ahead[*this.ahead_served..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            *this.ahead_served += n;
            if *this.ahead_served == this.ahead.len() {
                *this.ahead = Vec::new();
                *this.ahead_served = 0;
            }
            return Poll::Ready(Ok(()));
        }
        this.stream.poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().stream.poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().stream.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    //! The limits against real sockets, on tokio's paused clock: a timeout passes
    //! as soon as nothing else can run, without waiting for it.
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use http::StatusCode;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn started(limits: HttpLimits) -> std::net::SocketAddr {
        let app = Router::new().route("/ok", get(|| async { "ok" })).route(
            "/body",
            post(|body: Body| async move {
                match axum::body::to_bytes(body, 1 << 20).await {
                    Ok(b) => (StatusCode::OK, b.len().to_string()),
                    Err(e) if is_deadline_error(&e) => (StatusCode::REQUEST_TIMEOUT, "late".into()),
                    Err(e) => (StatusCode::BAD_REQUEST, e.to_string()),
                }
            }),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, app, limits, std::future::pending()));
        addr
    }

    async fn read_all(stream: &mut TcpStream) -> String {
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_sent_header_is_cut_off() {
        let addr = started(HttpLimits::default()).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET /ok HTTP/1.1\r\nHo")
            .await
            .expect("write");
        let started = tokio::time::Instant::now();
        let answer = read_all(&mut slow).await;
        assert!(!answer.contains("200 OK"), "{answer}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(12),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_meets_its_deadline() {
        let addr = started(HttpLimits::default()).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
            .await
            .expect("write");
        let started = tokio::time::Instant::now();
        let answer = read_all(&mut slow).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(started.elapsed() >= Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn connections_beyond_the_cap_wait_for_a_slot() {
        let addr = started(HttpLimits {
            max_connections: 2,
            ..HttpLimits::default()
        })
        .await;
        let first = TcpStream::connect(addr).await.expect("connect");
        let _second = TcpStream::connect(addr).await.expect("connect");
        let mut third = TcpStream::connect(addr).await.expect("connect");
        third
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 64];
        let waited = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await;
        assert!(waited.is_err(), "answered beyond the cap");
        drop(first);
        let answer = read_all(&mut third).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
        let addr = started(HttpLimits::default()).await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let started = tokio::time::Instant::now();
        let answer = read_all(&mut idle).await;
        assert!(answer.is_empty(), "{answer}");
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_secs(10) && waited < Duration::from_secs(12),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_head_in_pieces_and_its_body_reach_the_handler_whole() {
        let addr = started(HttpLimits::default()).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        // The blank line ending the head is split across writes, and the body's
        // first bytes come with it: everything read ahead of hyper must reach it.
        for piece in [
            &b"POST /body HTTP/1.1\r\nHost: x\r"[..],
            b"\nContent-Length: 5\r\nConnection: close\r\n\r",
            b"\nab",
            b"cde",
        ] {
            client.write_all(piece).await.expect("write");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("\r\n\r\n5"), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_alive_connection_serves_its_next_request() {
        let addr = started(HttpLimits::default()).await;
        let mut client = TcpStream::connect(addr).await.expect("connect");
        client
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let mut buf = [0u8; 256];
        let n = client.read(&mut buf).await.expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        client
            .write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let answer = read_all(&mut client).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}
