//! HTTP endpoints: `/healthz`, `/readyz` on the `--http` address, `/metrics` on `--metrics`.

use std::future::Future as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::Shared;

/// Plain HTTP connections one listener serves at once; more wait in the kernel's accept queue.
/// The HTTP listener of the signaling hub has room for the hub's WebSocket connections on top
/// (an upgraded socket keeps its slot; the hub refuses those over its own cap with 503).
pub const MAX_HTTP_CONNECTIONS: usize = 1024;
/// A connection that sends nothing for this long is closed (idle keep-alive, slow headers).
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// A TCP listener that serves a bounded number of connections at a time and closes
/// connections idle for `HTTP_IDLE_TIMEOUT`, so a public HTTP port cannot be used to exhaust
/// the process's file descriptors.
pub struct CappedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
}

impl CappedListener {
    /// Wraps `inner` with room for [`MAX_HTTP_CONNECTIONS`].
    pub fn new(inner: TcpListener) -> Self {
        Self::with_capacity(inner, MAX_HTTP_CONNECTIONS)
    }

    /// Wraps `inner` with room for `capacity` connections.
    pub fn with_capacity(inner: TcpListener, capacity: usize) -> Self {
        CappedListener {
            inner,
            permits: Arc::new(Semaphore::new(capacity.max(1))),
        }
    }
}

impl axum::serve::Listener for CappedListener {
    type Io = CappedIo;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            // Closed never happens (the semaphore lives as long as the listener).
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                continue;
            };
            match self.inner.accept().await {
                Ok((io, addr)) => {
                    // Signaling messages are small and latency-bound: no Nagle delay.
                    let _ = io.set_nodelay(true);
                    let sleep = Box::pin(tokio::time::sleep(HTTP_IDLE_TIMEOUT));
                    return (
                        CappedIo {
                            io,
                            _permit: permit,
                            sleep,
                        },
                        addr,
                    );
                }
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// An accepted HTTP connection: holds its slot and an idle deadline reset by every read.
pub struct CappedIo {
    io: TcpStream,
    _permit: OwnedSemaphorePermit,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl AsyncRead for CappedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.sleep
                        .as_mut()
                        .reset(tokio::time::Instant::now() + HTTP_IDLE_TIMEOUT);
                }
                Poll::Ready(r)
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "HTTP connection idle",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for CappedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if let Some(failure) = shared.failure() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {failure}\n"),
        )
    } else if shared.metrics.hub.cluster.load(Ordering::Relaxed)
        && shared.metrics.hub.store_up.load(Ordering::Relaxed) == 0
    {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: signaling store (redis) unreachable\n".to_owned(),
        )
    } else if shared.draining.load(Ordering::SeqCst) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: draining\n".to_owned(),
        )
    } else if shared.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: shutting down\n".to_owned(),
        )
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        shared.metrics.render(),
    )
}

async fn until_shutdown(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The router of the `--http` listener.
pub fn health_router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(shared)
}

/// Serves `/healthz`, `/readyz`, the web demo at `/` and, with a hub, `/v1/ws` and
/// `/v1/ice-servers` until shutdown.
pub async fn serve_health(
    listener: TcpListener,
    shared: Arc<Shared>,
    signal: Option<crate::signal::SignalState>,
    capacity: usize,
    rx: watch::Receiver<bool>,
) {
    use axum::serve::ListenerExt as _;
    let mut app = health_router(shared).merge(crate::demo::routes());
    if let Some(state) = signal {
        app = app.merge(crate::signal::routes(state));
    }
    // tap_io is a no-op here; it makes axum's SocketAddr connect-info apply to our listener.
    let listener = CappedListener::with_capacity(listener, capacity).tap_io(|_io| {});
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(until_shutdown(rx))
        .await
    {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

/// Serves `/metrics` until shutdown.
pub async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>, rx: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(shared);
    if let Err(e) = axum::serve(CappedListener::new(listener), app)
        .with_graceful_shutdown(until_shutdown(rx))
        .await
    {
        tracing::error!(error = %e, "metrics server failed");
    }
}
