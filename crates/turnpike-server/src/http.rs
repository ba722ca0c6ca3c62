//! HTTP endpoints: `/healthz`, `/readyz` on the `--http` address, `/metrics` on `--metrics`.

use std::future::Future as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
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
/// A connection that sends nothing for this long is closed (an upgraded WebSocket included).
pub const HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// A request's head (request line and headers) must arrive within this time of the
/// connection being accepted, or the connection is closed: a client trickling header bytes
/// cannot hold a connection slot for long. An upgraded WebSocket is not affected.
pub const HTTP_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted (hyper's read buffer); a larger one gets 431. Bounds the
/// memory a connection can make the server hold while its headers arrive.
pub const HTTP_MAX_HEAD_BYTES: usize = 16 * 1024;

/// Connections one client address may hold on the `--http` listener on top of its hub
/// WebSockets (`--hub-max-connections-per-ip`): page loads, `/v1/ice-servers`, upgrades in
/// progress.
pub const HTTP_EXTRA_CONNECTIONS_PER_IP: usize = 32;

/// The answer to a connection over its address's share, written without waiting (the socket
/// is new, so its send buffer is empty) before it is closed.
const TOO_MANY_FROM_IP: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: text/plain\r\n\
content-length: 39\r\nconnection: close\r\n\r\ntoo many connections from this address\n";

/// A per-address share of a listener: without it one client could take every slot.
pub struct PerIpCap {
    /// Connections one address may hold.
    pub max: usize,
    /// Peers exempt from the share: trusted reverse proxies (`--trusted-proxy`), whose clients
    /// the hub counts by `X-Forwarded-For`.
    pub exempt: Arc<[ipnet::IpNet]>,
}

/// Live connections per address; at most one entry per open connection.
struct PerIp {
    cap: PerIpCap,
    /// Where refusals are counted.
    shared: Arc<Shared>,
    live: std::sync::Mutex<HashMap<IpAddr, usize>>,
}

impl PerIp {
    /// A slot for a connection from `ip`, or `None` when `ip` holds its share already.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let ip = ip.to_canonical();
        if crate::proxy::is_trusted(ip, &self.cap.exempt) {
            return Some(IpSlot(None));
        }
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        let n = live.entry(ip).or_insert(0);
        if *n >= self.cap.max {
            return None;
        }
        *n += 1;
        Some(IpSlot(Some((self.clone(), ip))))
    }
}

/// A connection's place in its address's share, given back when the connection ends.
struct IpSlot(Option<(Arc<PerIp>, IpAddr)>);

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some((per_ip, ip)) = self.0.take() {
            let mut live = per_ip.live.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = live.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    live.remove(&ip);
                }
            }
        }
    }
}

/// A TCP listener that serves a bounded number of connections at a time (optionally a
/// bounded number per client address) and closes connections idle for `HTTP_IDLE_TIMEOUT`,
/// so a public HTTP port cannot be used to exhaust the process's file descriptors or be
/// filled by one client.
pub struct CappedListener {
    inner: TcpListener,
    permits: Arc<Semaphore>,
    per_ip: Option<Arc<PerIp>>,
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
            per_ip: None,
        }
    }

    /// Limits the connections each client address holds at once; one over its share gets
    /// `429 Too Many Requests` and is closed.
    /// Refusals are counted in `shared`'s metrics.
    pub fn per_ip(mut self, cap: PerIpCap, shared: Arc<Shared>) -> Self {
        self.per_ip = Some(Arc::new(PerIp {
            cap,
            shared,
            live: std::sync::Mutex::new(HashMap::new()),
        }));
        self
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
                    let ip_slot = match &self.per_ip {
                        None => IpSlot(None),
                        Some(per_ip) => match per_ip.take(addr.ip()) {
                            Some(slot) => slot,
                            None => {
                                let _ = io.try_write(TOO_MANY_FROM_IP);
                                per_ip
                                    .shared
                                    .metrics
                                    .http_refused_per_ip
                                    .fetch_add(1, Ordering::Relaxed);
                                tracing::debug!(peer = %addr, "HTTP connection over its address's share refused");
                                continue;
                            }
                        },
                    };
                    // Signaling messages are small and latency-bound: no Nagle delay.
                    let _ = io.set_nodelay(true);
                    let sleep = Box::pin(tokio::time::sleep(HTTP_IDLE_TIMEOUT));
                    return (
                        CappedIo {
                            io,
                            _permit: permit,
                            _ip_slot: ip_slot,
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
    _ip_slot: IpSlot,
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

/// Serves `app` on `listener` until `rx` says stop, then lets the requests in flight finish
/// (idle connections close at once). HTTP/1.1 only, as the listeners need (WebSocket
/// upgrades included); each request carries axum's `ConnectInfo<SocketAddr>`.
///
/// This is `axum::serve` plus what it cannot be told: [`HTTP_HEADER_TIMEOUT`], which hyper
/// enforces only with a timer, and axum gives it none; [`HTTP_MAX_HEAD_BYTES`]; and no
/// keep-alive: each connection carries one request (or one WebSocket upgrade). hyper runs
/// the header timer on idle keep-alive connections too, so with keep-alive a load balancer
/// reusing a backend connection for longer than the timeout (60 s is common) would race the
/// server closing it and fail requests; the listeners serve few, small requests, so a new
/// connection per request costs nothing that matters.
async fn serve_app(mut listener: CappedListener, app: Router, mut rx: watch::Receiver<bool>) {
    use axum::serve::Listener as _;
    use tower::ServiceExt as _;

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HTTP_HEADER_TIMEOUT)
        .max_buf_size(HTTP_MAX_HEAD_BYTES);
    // Connections watch `stop`; each holds a clone of `live` until it ends.
    let (stop, _) = watch::channel(false);
    let (live_tx, live) = watch::channel(());
    loop {
        let (io, addr) = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = rx.wait_for(|stop| *stop) => break,
        };
        let app = app
            .clone()
            .map_request(move |mut req: axum::http::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(addr));
                req
            })
            // No keep-alive (see above): hyper closes a connection after a response that
            // says `connection: close`. Not a WebSocket upgrade: its 101 says `upgrade`.
            .map_response(|mut res: axum::response::Response| {
                if res.status() != StatusCode::SWITCHING_PROTOCOLS {
                    res.headers_mut().insert(
                        header::CONNECTION,
                        header::HeaderValue::from_static("close"),
                    );
                }
                res
            });
        let conn = http
            .serve_connection(
                hyper_util::rt::TokioIo::new(io),
                hyper_util::service::TowerToHyperService::new(app),
            )
            .with_upgrades();
        let mut stopping = stop.subscribe();
        let alive = live.clone();
        tokio::spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                _ = stopping.wait_for(|stop| *stop) => None,
            };
            let result = match ended {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(peer = %addr, error = %e, "HTTP connection ended with an error");
            }
            drop(alive);
        });
    }
    // New connections are refused from now on, not left waiting in the backlog.
    drop(listener);
    drop(live);
    let _ = stop.send(true);
    live_tx.closed().await;
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
    per_ip: PerIpCap,
    rx: watch::Receiver<bool>,
) {
    let mut app = health_router(shared.clone()).merge(crate::demo::routes());
    if let Some(state) = signal {
        app = app.merge(crate::signal::routes(state));
    }
    let listener = CappedListener::with_capacity(listener, capacity).per_ip(per_ip, shared);
    serve_app(listener, app, rx).await;
}

/// Serves `/metrics` until shutdown.
pub async fn serve_metrics(listener: TcpListener, shared: Arc<Shared>, rx: watch::Receiver<bool>) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(shared);
    serve_app(CappedListener::new(listener), app, rx).await;
}
