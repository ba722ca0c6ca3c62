//! The signaling hub's WebSocket adapter: `GET /v1/ws` and `GET /v1/ice-servers`.
//!
//! All decisions are the sans-IO [`Hub`]'s. One task owns it (an actor): sockets send it
//! events over a bounded channel, it runs the hub's timer, and it hands each connection its
//! outgoing frames through a bounded per-connection queue. A connection whose queue is full
//! (a client that does not read) is closed rather than allowed to grow memory. Each socket
//! is split into a reader (frames → hub) and a writer (hub → frames), and both end together.
//!
//! The client address the connection limits count is the TCP peer's or, for a request from a
//! trusted reverse proxy (`--trusted-proxy`), the one in `X-Forwarded-For` ([`crate::proxy`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::{SinkExt, StreamExt};
use ipnet::IpNet;
use tokio::sync::{mpsc, oneshot, watch};
use turnpike_signal::creds::IceConfig;
use turnpike_signal::{ConnId, ConnectError, Hub, HubConfig, Now, Output};

/// Frames queued for one connection before it counts as not reading.
const CONN_QUEUE: usize = 256;
/// Events queued for the hub task.
const HUB_QUEUE: usize = 4096;

/// Hub settings that live outside the sans-IO core.
#[derive(Debug, Clone, Default)]
pub struct SignalConfig {
    /// The hub core's configuration.
    pub hub: HubConfig,
    /// Browser origins allowed to open `/v1/ws` (empty: any). Clients that send no `Origin`
    /// (not browsers) are always allowed.
    pub allowed_origins: Vec<String>,
    /// With Redis, the hub is one node of a cluster sharing rooms through it
    /// ([`crate::cluster`]); without, rooms live in this process.
    pub redis: Option<crate::cluster::RedisConfig>,
    /// Networks of HTTP reverse proxies (`--trusted-proxy`): for a request from one of them,
    /// the client's address comes from `X-Forwarded-For` ([`crate::proxy::client_ip`]).
    /// Empty: the header is ignored and the TCP peer is the client.
    pub trusted_proxies: Vec<IpNet>,
}

enum Event {
    Connect {
        conn: ConnId,
        ip: IpAddr,
        host: Option<String>,
        reply: oneshot::Sender<Result<mpsc::Receiver<Out>, ConnectError>>,
    },
    Text {
        conn: ConnId,
        text: String,
    },
    Binary {
        conn: ConnId,
    },
    Disconnect {
        conn: ConnId,
    },
}

/// A frame for a connection's writer.
pub(crate) enum Out {
    /// A text frame.
    Text(String),
    /// A close frame; the writer stops after it.
    Close(u16, &'static str),
}

/// 32 bytes from the OS's random source, to key session id generators (session ids are
/// bearer tokens for `resume`). Without a random source — which does not happen on a working
/// Linux — the server is marked failed (`/readyz` unready) and a clock-based key keeps it up.
pub(crate) fn random_key(shared: Option<&crate::Shared>) -> [u8; 32] {
    let mut k = [0u8; 32];
    if let Err(e) = getrandom::fill(&mut k) {
        static N: AtomicU64 = AtomicU64::new(0);
        if let Some(shared) = shared {
            shared.fail(format!("no random source for session ids: {e}"));
        }
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        k[..8].copy_from_slice(&t.to_le_bytes());
        k[8..16].copy_from_slice(&N.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    k
}

/// The current time, both ways.
pub(crate) fn now() -> Now {
    Now {
        mono: Instant::now(),
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// Where connections go: the in-process hub task, or a cluster node.
#[derive(Clone)]
enum Mode {
    Local(mpsc::Sender<Event>),
    Cluster(Arc<crate::cluster::Node>),
}

/// State shared by the HTTP handlers.
#[derive(Clone)]
pub struct SignalState {
    mode: Mode,
    next_conn: Arc<AtomicU64>,
    allowed_origins: Arc<Vec<String>>,
    ice: Arc<IceConfig>,
    max_message_bytes: usize,
    trusted_proxies: Arc<[IpNet]>,
    shared: Arc<crate::Shared>,
}

/// Starts the hub (a task, or a cluster node's Redis supervisor); it ends when `shutdown`
/// fires. Fails only on an invalid Redis URL.
pub fn spawn(
    config: SignalConfig,
    shared: Arc<crate::Shared>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SignalState, Option<tokio::task::JoinHandle<()>>)> {
    let shared_for_state = shared.clone();
    let state = |mode| SignalState {
        mode,
        next_conn: Arc::new(AtomicU64::new(1)),
        allowed_origins: Arc::new(config.allowed_origins.clone()),
        ice: Arc::new(config.hub.ice.clone()),
        max_message_bytes: config.hub.max_message_bytes,
        trusted_proxies: config.trusted_proxies.clone().into(),
        shared: shared_for_state.clone(),
    };
    if let Some(redis) = config.redis.clone() {
        let (node, task) = crate::cluster::spawn(config.hub.clone(), redis, shared, shutdown)?;
        return Ok((state(Mode::Cluster(node)), Some(task)));
    }
    let (tx, rx) = mpsc::channel::<Event>(HUB_QUEUE);
    let st = state(Mode::Local(tx));
    spawn_local(config.hub, shared, shutdown, rx);
    Ok((st, None))
}

/// The in-process hub: one task owns the [`Hub`].
fn spawn_local(
    config: HubConfig,
    shared: Arc<crate::Shared>,
    mut shutdown: watch::Receiver<bool>,
    mut rx: mpsc::Receiver<Event>,
) {
    let mut hub = Hub::with_key(config, random_key(Some(&shared)));
    tokio::spawn(async move {
        let mut conns: HashMap<ConnId, mpsc::Sender<Out>> = HashMap::new();
        loop {
            let wake = hub.poll_timeout();
            let timer = async {
                match wake {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = crate::stopped(&mut shutdown) => break,
                ev = rx.recv() => match ev {
                    None => break,
                    Some(Event::Connect { conn, ip, host, reply }) => {
                        match hub.handle_connect_from(now(), conn, ip, host) {
                            Ok(()) => {
                                let (otx, orx) = mpsc::channel(CONN_QUEUE);
                                conns.insert(conn, otx);
                                if reply.send(Ok(orx)).is_err() {
                                    conns.remove(&conn);
                                    hub.handle_disconnect(now(), conn);
                                }
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                    Some(Event::Text { conn, text }) => hub.handle_message(now(), conn, &text),
                    Some(Event::Binary { conn }) => hub.handle_binary(now(), conn),
                    Some(Event::Disconnect { conn }) => {
                        conns.remove(&conn);
                        hub.handle_disconnect(now(), conn);
                    }
                },
                () = timer => hub.handle_timeout(now()),
            }
            // Published before the frames go out too, so anyone who saw a frame sees numbers
            // at least as new as it.
            shared.metrics.hub.publish(&hub);
            while let Some(o) = hub.poll_output() {
                match o {
                    Output::Send { conn, text } => {
                        let full = conns
                            .get(&conn)
                            .is_some_and(|q| q.try_send(Out::Text(text)).is_err());
                        if full {
                            // A client that does not read its messages: drop it (its session
                            // keeps the messages for a resume).
                            if let Some(q) = conns.remove(&conn) {
                                let _ = q.try_send(Out::Close(1008, "not reading"));
                            }
                            shared
                                .metrics
                                .hub
                                .slow_closed
                                .fetch_add(1, Ordering::Relaxed);
                            hub.handle_disconnect(now(), conn);
                        }
                    }
                    Output::Close { conn, code, reason } => {
                        if let Some(q) = conns.remove(&conn) {
                            let _ = q.try_send(Out::Close(code, reason));
                        }
                        hub.handle_disconnect(now(), conn);
                    }
                }
            }
            shared.metrics.hub.publish(&hub);
        }
        // Shutdown: tell every client, so it can resume elsewhere.
        for (_, q) in conns.drain() {
            let _ = q.try_send(Out::Close(1001, "server shutting down"));
        }
    });
}

/// The host the client used, without port (for `{host}` in ICE URLs).
fn request_host(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let host = if let Some(rest) = host.strip_prefix('[') {
        // [IPv6]:port
        format!("[{}]", rest.split(']').next()?)
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h).to_owned()
    };
    (!host.is_empty() && host.len() <= 253).then_some(host)
}

/// `/v1/ws` and `/v1/ice-servers`.
pub fn routes(state: SignalState) -> Router {
    Router::new()
        .route("/v1/ws", get(ws))
        .route("/v1/ice-servers", get(ice_servers))
        .with_state(state)
}

async fn ice_servers(State(st): State<SignalState>, headers: HeaderMap) -> impl IntoResponse {
    let host = request_host(&headers);
    let user = format!("anon-{:x}", st.next_conn.fetch_add(1, Ordering::Relaxed));
    let servers = st.ice.ice_servers_for(&user, now().unix, host.as_deref());
    axum::Json(serde_json::json!({ "iceServers": servers, "ttl": st.ice.ttl_secs }))
}

async fn ws(
    State(st): State<SignalState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        if !st.allowed_origins.is_empty() && !st.allowed_origins.iter().any(|a| a == origin) {
            return (StatusCode::FORBIDDEN, "origin not allowed\n").into_response();
        }
    }
    // Frames somewhat over the limit still reach the hub, which answers message-too-large;
    // far larger ones are refused by the WebSocket layer.
    let max = st.max_message_bytes.saturating_mul(2).max(1024);
    // A 4 KiB read buffer instead of tungstenite's 128 KiB default: idle connections cost
    // about 10 KiB instead of 138 KiB (measured with hub-load), and signaling messages are
    // small; larger ones still arrive, in several reads.
    let upgrade = upgrade
        .read_buffer_size(4096)
        .max_message_size(max)
        .max_frame_size(max);
    let client = crate::proxy::client_ip(addr.ip(), &headers, &st.trusted_proxies);
    if client.malformed {
        st.shared
            .metrics
            .hub
            .forwarded_for_invalid
            .fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            peer = %addr,
            client = %client.ip,
            "X-Forwarded-For from a trusted proxy holds an entry that is not an IP address; \
             using the last good address to its right"
        );
    }
    let ip = client.ip;
    let tx = match &st.mode {
        Mode::Local(tx) => tx.clone(),
        Mode::Cluster(node) => {
            let node = node.clone();
            if !node.is_up() {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "signaling store unreachable; retry shortly\n",
                )
                    .into_response();
            }
            let conn = match node.admit(ip) {
                Ok(c) => c,
                Err(e) => return refused(e, ip, addr),
            };
            // Gives the admission back however the upgrade ends.
            let guard = crate::cluster::Admitted::new(node.clone(), ip);
            let host = request_host(&headers);
            return upgrade
                .on_upgrade(move |socket| crate::cluster::serve_socket(guard, socket, conn, host));
        }
    };
    let conn = ConnId(st.next_conn.fetch_add(1, Ordering::Relaxed));
    let (reply, answer) = oneshot::channel();
    let host = request_host(&headers);
    let event = Event::Connect {
        conn,
        ip,
        host,
        reply,
    };
    if tx.send(event).await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let rx = match answer.await {
        Ok(Ok(rx)) => rx,
        Ok(Err(e)) => return refused(e, ip, addr),
        Err(_) => return refused(ConnectError::TooManyConnections, ip, addr),
    };
    upgrade.on_upgrade(move |socket| serve_socket(socket, conn, rx, tx))
}

/// The HTTP answer to a connection the hub refused; `client` is the address the limits
/// counted, `peer` the TCP peer (a proxy's address when they differ).
fn refused(e: ConnectError, client: IpAddr, peer: SocketAddr) -> Response {
    tracing::debug!(%client, %peer, reason = %e, "signaling connection refused");
    match e {
        ConnectError::TooManyFromIp => (
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from this address\n",
        )
            .into_response(),
        ConnectError::TooManyConnections => {
            (StatusCode::SERVICE_UNAVAILABLE, "too many connections\n").into_response()
        }
    }
}

/// Sends a connection's frames until its queue closes or a close frame goes out.
pub(crate) async fn write_frames(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Out>,
) {
    while let Some(out) = rx.recv().await {
        match out {
            Out::Text(t) => {
                if sink.send(Message::Text(t.into())).await.is_err() {
                    break;
                }
            }
            Out::Close(code, reason) => {
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
                break;
            }
        }
    }
}

async fn serve_socket(
    socket: WebSocket,
    conn: ConnId,
    rx: mpsc::Receiver<Out>,
    tx: mpsc::Sender<Event>,
) {
    let (sink, mut stream) = socket.split();
    let writer = write_frames(sink, rx);
    let reader = {
        let tx = tx.clone();
        async move {
            while let Some(Ok(msg)) = stream.next().await {
                let ev = match msg {
                    Message::Text(t) => Event::Text {
                        conn,
                        text: t.to_string(),
                    },
                    Message::Binary(_) => Event::Binary { conn },
                    Message::Close(_) => break,
                    Message::Ping(_) | Message::Pong(_) => continue,
                };
                if tx.send(ev).await.is_err() {
                    break;
                }
            }
        }
    };
    // Either side ending ends the connection.
    tokio::select! {
        () = writer => {}
        () = reader => {}
    }
    let _ = tx.send(Event::Disconnect { conn }).await;
}
