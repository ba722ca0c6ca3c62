//! `hub-load`: a load generator for the signaling hub (`GET /v1/ws` of `turnpike serve`), over
//! real WebSockets.
//!
//! It opens `--connections` WebSockets in rooms of two (pairs `a`/`b`, one room per pair),
//! joins them, and then measures in two phases:
//!
//! * **idle**: the server's resident memory (`VmRSS` of `--server-pid`) before the first
//!   connection and once every connection is joined and idle, giving the memory cost of an
//!   idle joined connection (KiB per connection, MiB per 1,000);
//! * **load**: each `a` sends an `offer` to its `b`, which answers, and then both send
//!   `candidate` messages to each other through the hub, either at `--rate` messages/s per
//!   connection (open loop) or with `--window` messages in flight per connection (closed loop:
//!   a message is in flight until the partner has received it). Every candidate string
//!   carries its sender, a sequence number and its send time, so the partner (in this same
//!   process, on the same clock) measures the one-way latency send → hub → receive. After a
//!   warm-up, `--duration` seconds are measured: relayed messages/s (received by partners),
//!   latency p50/p90/p99/max, errors sent by the hub (by code) and connections it closed.
//!
//! Several hub nodes sharing rooms (`turnpike serve --redis`) are measured by repeating
//! `--url`: with `--spread peers` (the default) connection `i` goes to URL `i mod N`, so the two
//! peers of every room are on different nodes and every relayed message crosses nodes; with
//! `--spread rooms` room `r` goes to URL `r mod N` whole, so no message crosses nodes. The
//! report adds a breakdown by URL (`nodes`). `--server-pid` can be repeated too (every node,
//! and redis-server): the server's memory and CPU are then the sum, with each process's share
//! in `server_processes`.
//!
//! One thread (a current-thread tokio runtime) drives every connection, so the tool can be
//! pinned to one core (`taskset`) apart from the server. Each WebSocket uses 4 KiB buffers to
//! keep the client small. Connections can come from several source addresses of
//! 127.0.0.0/8 (`--source-ips`), because the hub caps connections per client IP.
//!
//! Everything is bounded: each connection's setup by `--connect-timeout`, the whole setup by
//! `--setup-timeout`, the measurement by `--duration` (at most 120 s), the drain by `--drain`,
//! and the closing handshake by 2 s. The exit status is 0 after a run that relayed messages,
//! 1 if none was relayed, 2 if the run could not be set up (the reason, with the hub's HTTP
//! status or error code, goes to stderr).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Interval, MissedTickBehavior};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::client::Request;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use turnpike_bench::hist::Histogram;
use turnpike_bench::{CoreTicks, core_busy_pct, process_ticks};

/// Hard cap on `--duration` (seconds).
const MAX_DURATION_S: f64 = 120.0;
/// Read and write buffer of each client WebSocket (tungstenite's default is 128 KiB each).
const WS_BUFFER: usize = 4096;
/// Time allowed for the closing handshakes at the end.
const CLOSE_S: f64 = 2.0;
/// How often the drain checks whether every message arrived.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// Setup progress is reported every this many connections.
const PROGRESS_EVERY: usize = 1000;
/// Period of the probe that measures how late this tool's own event loop runs.
const LAG_PROBE: Duration = Duration::from_millis(1);

/// Signaling hub load generator: idle memory per connection, relay rate and latency.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// The hub's WebSocket URL (plain `ws://`). Repeat it to spread the connections over
    /// several hub nodes of one cluster (see --spread).
    #[arg(
        long = "url",
        value_name = "URL",
        default_value = "ws://127.0.0.1:8080/v1/ws"
    )]
    urls: Vec<String>,
    /// With several --url: `peers` puts connection i on URL i mod N, so the two peers of every
    /// room are on different nodes (every relayed message crosses nodes); `rooms` puts room r
    /// whole on URL r mod N (no message crosses nodes).
    #[arg(long, value_enum, default_value_t = Spread::Peers)]
    spread: Spread,
    /// WebSocket connections to open (pairs in rooms of two, so an even number).
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(u32).range(2..=60000))]
    connections: u32,
    /// Measured seconds of load (at most 120).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Open loop: `candidate` messages per second sent by each connection.
    #[arg(long, default_value_t = 5.0, conflicts_with = "window")]
    rate: f64,
    /// Closed loop instead of --rate: messages in flight per connection (sent, not yet
    /// received by the partner).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    window: Option<u32>,
    /// PID of the server, for its memory (VmRSS) and CPU time. Repeatable (e.g. each hub node
    /// and redis-server): the report sums them and lists each in `server_processes`.
    #[arg(long = "server-pid", value_name = "SERVER_PID")]
    server_pids: Vec<u32>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Spread connections over source addresses 127.0.0.1 .. 127.0.0.N (loopback URLs only;
    /// 1: let the kernel choose).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
    source_ips: u8,
    /// Connections being set up (TCP, WebSocket handshake, join) at the same time.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=4096))]
    connect_window: u32,
    /// Seconds allowed for one connection's setup.
    #[arg(long, default_value_t = 10.0)]
    connect_timeout: f64,
    /// Seconds allowed for setting up every connection.
    #[arg(long, default_value_t = 120.0)]
    setup_timeout: f64,
    /// Seconds to wait, once every connection is joined, before reading the idle memory.
    #[arg(long, default_value_t = 2.0)]
    idle_settle: f64,
    /// Seconds after the measurement for messages still in flight to arrive.
    #[arg(long, default_value_t = 1.0)]
    drain: f64,
    /// Seconds between keepalive `ping`s of a connection that is not sending load.
    #[arg(long, default_value_t = 20.0)]
    ping_interval: f64,
}

/// How connections are spread over several `--url`s.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq)]
enum Spread {
    /// Connection `i` on URL `i mod N`: the peers of a room on different nodes.
    Peers,
    /// Room `r` on URL `r mod N`: each room on one node.
    Rooms,
}

impl Spread {
    fn name(self) -> &'static str {
        match self {
            Spread::Peers => "peers",
            Spread::Rooms => "rooms",
        }
    }

    /// The URL index of connection `i` among `nodes`.
    fn node(self, i: usize, nodes: usize) -> usize {
        match self {
            Spread::Peers => i % nodes,
            Spread::Rooms => (i / 2) % nodes,
        }
    }
}

/// What every connection task is doing; set by the main task.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// Joined; only keepalive pings.
    Idle,
    /// Sending load. Times are nanoseconds since [`Shared::base`].
    Load {
        /// When sending starts (connections are staggered over the first period).
        start_ns: u64,
    },
    /// No new messages; waiting for the ones in flight.
    Drain,
    /// Close the WebSocket and end.
    Close,
}

/// Counters shared by every connection task (one thread, so the locks are uncontended).
#[derive(Default)]
struct Counters {
    /// Candidates sent, in all.
    sent: AtomicU64,
    /// Candidates received by partners, in all.
    received: AtomicU64,
    /// Candidates sent with a send time inside the measurement window.
    sent_in_window: AtomicU64,
    /// Candidates received with a receive time inside the measurement window.
    received_in_window: AtomicU64,
    /// Offers and answers received.
    offers: AtomicU64,
    answers: AtomicU64,
    /// `peer-left` notices (a partner's session ended: unexpected during a run).
    peer_left: AtomicU64,
    /// Messages that did not parse as hub messages.
    bad_messages: AtomicU64,
    /// Connection tasks still running.
    alive: AtomicUsize,
}

/// The counters of one `--url`: candidates sent by its connections, and received (with
/// their latency) by its connections.
struct NodeCounters {
    connections: AtomicUsize,
    sent: AtomicU64,
    received: AtomicU64,
    received_in_window: AtomicU64,
    /// Connections of this URL closed before the end.
    closed_early: AtomicU64,
    latency: Mutex<Histogram>,
}

impl NodeCounters {
    fn new() -> Self {
        NodeCounters {
            connections: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            received_in_window: AtomicU64::new(0),
            closed_early: AtomicU64::new(0),
            latency: Mutex::new(Histogram::new()),
        }
    }
}

struct Shared {
    /// The clock every timestamp is measured on.
    base: Instant,
    /// Measurement window, nanoseconds since `base` (set before the load starts).
    window_from_ns: AtomicU64,
    window_to_ns: AtomicU64,
    /// Closed loop: one semaphore per connection, its free window slots.
    slots: Vec<Semaphore>,
    window: Option<u32>,
    rate: f64,
    ping_every: Duration,
    counters: Counters,
    /// How connections map to URLs, and the counters of each URL.
    spread: Spread,
    nodes: Vec<NodeCounters>,
    /// Latency (ns) of candidates sent inside the measurement window.
    latency: Mutex<Histogram>,
    /// How late (ns) a 1 ms sleep of this tool wakes up during the measurement window: when
    /// this is large, the client (not the hub) adds latency.
    loop_lag: Mutex<Histogram>,
    /// Errors sent by the hub, by code.
    errors: Mutex<BTreeMap<String, u64>>,
    /// The first error message of each code, for the report.
    error_examples: Mutex<BTreeMap<String, String>>,
    /// Connections closed by the server (or by a socket error) before the end, by reason.
    closed: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in a connection task ends the run anyway; keep the numbers readable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }
    fn count_close(&self, i: usize, why: String) {
        *lock(&self.closed).entry(why).or_default() += 1;
        self.node(i).closed_early.fetch_add(1, Ordering::Relaxed);
    }
    /// The counters of connection `i`'s URL.
    fn node(&self, i: usize) -> &NodeCounters {
        &self.nodes[self.spread.node(i, self.nodes.len())]
    }
}

/// The part of a hub message this tool reads.
#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type", borrow)]
    ty: &'a str,
    #[serde(default, borrow)]
    candidate: Option<CandidateIn<'a>>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct CandidateIn<'a> {
    #[serde(borrow)]
    candidate: &'a str,
}

type Ws = WebSocketStream<TcpStream>;

/// Why one connection could not be set up.
#[derive(Debug)]
enum SetupError {
    /// TCP connect failed.
    Connect(std::io::Error),
    /// The server answered the upgrade with an HTTP error.
    Http(u16, String),
    /// Another WebSocket handshake failure.
    Handshake(tungstenite::Error),
    /// The hub answered `join` with an error.
    Join(String, String),
    /// The socket closed or failed during the join.
    Closed(String),
    /// The TCP connect did not complete in time.
    ConnectTimeout,
    /// TCP connected, but the server did not answer the WebSocket upgrade in time.
    UpgradeTimeout,
    /// The hub did not answer `join` in time.
    JoinTimeout,
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::Connect(e) => match (e.kind(), e.raw_os_error()) {
                (std::io::ErrorKind::ConnectionRefused, _) => write!(
                    f,
                    "connection refused: nothing listens there (is `turnpike serve --http ADDR` running?)"
                ),
                (_, Some(24)) => write!(
                    f,
                    "out of file descriptors ({e}): raise the limit, e.g. `ulimit -n 65536`"
                ),
                (_, Some(99)) => write!(
                    f,
                    "out of local ports ({e}): spread connections with --source-ips"
                ),
                _ => write!(f, "TCP connect failed: {e}"),
            },
            SetupError::Http(status, body) => {
                write!(f, "the server refused the WebSocket with HTTP {status}")?;
                if !body.is_empty() {
                    write!(f, ": {body}")?;
                }
                match status {
                    429 => write!(
                        f,
                        " (per-IP cap: raise --hub-max-connections-per-ip or use more --source-ips)"
                    ),
                    503 if body.contains("too many") => {
                        write!(f, " (total cap: raise --hub-max-connections)")
                    }
                    _ => Ok(()),
                }
            }
            SetupError::Handshake(e) => write!(f, "WebSocket handshake failed: {e}"),
            SetupError::Join(code, message) => {
                write!(f, "the hub refused `join` with error `{code}`: {message}")
            }
            SetupError::Closed(why) => write!(f, "the connection closed during `join`: {why}"),
            SetupError::ConnectTimeout => {
                write!(
                    f,
                    "the TCP connect did not complete in time (--connect-timeout)"
                )
            }
            SetupError::UpgradeTimeout => write!(
                f,
                "TCP connected, but the WebSocket upgrade got no answer in time \
                 (--connect-timeout): the server accepts no more HTTP connections at once, \
                 or is overloaded"
            ),
            SetupError::JoinTimeout => {
                write!(
                    f,
                    "the hub did not answer `join` in time (--connect-timeout)"
                )
            }
        }
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// TCP connect (from `src` if given), WebSocket handshake, `join` and `welcome`, all before
/// `deadline`.
async fn open(
    addr: SocketAddr,
    src: Option<IpAddr>,
    request: Request,
    room: String,
    peer: &'static str,
    deadline: tokio::time::Instant,
) -> Result<Ws, SetupError> {
    let sock = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(SetupError::Connect)?;
    if let Some(ip) = src {
        sock.bind(SocketAddr::new(ip, 0))
            .map_err(SetupError::Connect)?;
    }
    let stream = tokio::time::timeout_at(deadline, sock.connect(addr))
        .await
        .map_err(|_| SetupError::ConnectTimeout)?
        .map_err(SetupError::Connect)?;
    stream.set_nodelay(true).map_err(SetupError::Connect)?;
    let handshake = tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config()));
    let (mut ws, _) = tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| SetupError::UpgradeTimeout)?
        .map_err(|e| match e {
            tungstenite::Error::Http(resp) => {
                let body = resp
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(b).trim().to_owned())
                    .unwrap_or_default();
                SetupError::Http(resp.status().as_u16(), body)
            }
            e => SetupError::Handshake(e),
        })?;
    let join = serde_json::json!({"type": "join", "room": room, "peer_id": peer}).to_string();
    tokio::time::timeout_at(deadline, ws.send(Message::Text(join.into())))
        .await
        .map_err(|_| SetupError::JoinTimeout)?
        .map_err(|e| SetupError::Closed(e.to_string()))?;
    // Bounded by `deadline`; the hub answers a join with welcome or error first.
    loop {
        let next = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| SetupError::JoinTimeout)?;
        match next {
            Some(Ok(Message::Text(t))) => {
                let Ok(m) = serde_json::from_str::<Incoming<'_>>(&t) else {
                    return Err(SetupError::Closed(format!("unexpected message {t}")));
                };
                match m.ty {
                    "welcome" => return Ok(ws),
                    "error" => {
                        return Err(SetupError::Join(
                            m.code.unwrap_or_default(),
                            m.message.unwrap_or_default(),
                        ));
                    }
                    _ => {}
                }
            }
            Some(Ok(Message::Close(frame))) => {
                return Err(SetupError::Closed(match frame {
                    Some(f) => format!("close code {} {}", u16::from(f.code), f.reason),
                    None => "closed without a code".to_owned(),
                }));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(SetupError::Closed(e.to_string())),
            None => return Err(SetupError::Closed("end of stream".to_owned())),
        }
    }
}

/// Waits for the next tick of `t`, or forever without one.
async fn tick(t: &mut Option<Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Waits for a free window slot in `sem` (and takes it), or forever without one.
async fn slot(sem: Option<&Semaphore>) {
    match sem {
        Some(s) => match s.acquire().await {
            Ok(p) => p.forget(),
            // Never closed; wait forever rather than spin.
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// One connection: keepalive pings while idle, load while loading, and the partner's side of
/// every measurement.
async fn run_conn(i: usize, ws: Ws, sh: Arc<Shared>, mut phase_rx: watch::Receiver<Phase>) {
    let (mut sink, mut stream) = ws.split();
    let is_a = i % 2 == 0;
    let partner = i ^ 1;
    let to = if is_a { "b" } else { "a" };
    let mut phase = *phase_rx.borrow_and_update();
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + sh.ping_every, sh.ping_every);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ticker: Option<Interval> = None;
    let mut sending = false;
    let mut seq = 0u64;
    // Every iteration handles one event; the loop ends with the Close phase or the socket.
    loop {
        let in_window = sending && sh.window.is_some();
        let out: Option<String> = tokio::select! {
            changed = phase_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                phase = *phase_rx.borrow_and_update();
                match phase {
                    Phase::Idle => None,
                    Phase::Load { start_ns } => {
                        sending = true;
                        if let Some(w) = sh.window {
                            sh.slots[i].add_permits(w as usize);
                        } else {
                            let period = Duration::from_secs_f64(1.0 / sh.rate);
                            // Stagger the connections over one period.
                            let offset = period.mul_f64(i as f64 / sh.slots.len().max(1) as f64);
                            let start = sh.base + Duration::from_nanos(start_ns) + offset;
                            let mut t = tokio::time::interval_at(start.into(), period);
                            t.set_missed_tick_behavior(MissedTickBehavior::Delay);
                            ticker = Some(t);
                        }
                        is_a.then(|| {
                            format!(r#"{{"type":"offer","to":"{to}","sdp":"v=0 hub-load {i}"}}"#)
                        })
                    }
                    Phase::Drain => {
                        sending = false;
                        ticker = None;
                        None
                    }
                    Phase::Close => break,
                }
            }
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => on_text(i, partner, to, &t, &sh),
                Some(Ok(Message::Close(frame))) => {
                    sh.count_close(i, match frame {
                        Some(f) => format!("closed by server: {} {}", u16::from(f.code), f.reason),
                        None => "closed by server".to_owned(),
                    });
                    break;
                }
                Some(Ok(_)) => None,
                Some(Err(e)) => {
                    sh.count_close(i, format!("socket error: {e}"));
                    break;
                }
                None => {
                    sh.count_close(i, "socket closed".to_owned());
                    break;
                }
            },
            // No new message once the phase has moved on (it is handled next time round).
            () = tick(&mut ticker), if sending => (!phase_rx.has_changed().unwrap_or(true))
                .then(|| candidate(i, &mut seq, to, &sh)),
            () = slot(in_window.then(|| &sh.slots[i])) => (!phase_rx.has_changed().unwrap_or(true))
                .then(|| candidate(i, &mut seq, to, &sh)),
            _ = ping.tick(), if !sending => Some(r#"{"type":"ping"}"#.to_owned()),
        };
        if let Some(text) = out {
            if let Err(e) = sink.send(Message::Text(text.into())).await {
                sh.count_close(i, format!("send failed: {e}"));
                break;
            }
        }
    }
    if phase == Phase::Close {
        let _ = tokio::time::timeout(Duration::from_secs_f64(CLOSE_S), sink.close()).await;
    }
    sh.counters.alive.fetch_sub(1, Ordering::Relaxed);
}

/// Sleeps [`LAG_PROBE`] over and over until the phase leaves `Load`, recording how late each
/// wake-up is within the measurement window (bounded by the phase change).
async fn lag_probe(sh: Arc<Shared>, mut phase_rx: watch::Receiver<Phase>) {
    loop {
        if !matches!(*phase_rx.borrow_and_update(), Phase::Load { .. }) {
            break;
        }
        let before = sh.now_ns();
        tokio::time::sleep(LAG_PROBE).await;
        let after = sh.now_ns();
        let from = sh.window_from_ns.load(Ordering::Relaxed);
        let until = sh.window_to_ns.load(Ordering::Relaxed);
        if (from..until).contains(&before) {
            let late = (after - before).saturating_sub(LAG_PROBE.as_nanos() as u64);
            lock(&sh.loop_lag).record(late);
        }
    }
}

/// A `candidate` for the partner, stamped with sender, sequence and send time.
fn candidate(i: usize, seq: &mut u64, to: &str, sh: &Shared) -> String {
    *seq += 1;
    let t = sh.now_ns();
    let c = &sh.counters;
    c.sent.fetch_add(1, Ordering::Relaxed);
    sh.node(i).sent.fetch_add(1, Ordering::Relaxed);
    let from = sh.window_from_ns.load(Ordering::Relaxed);
    let until = sh.window_to_ns.load(Ordering::Relaxed);
    if (from..until).contains(&t) {
        c.sent_in_window.fetch_add(1, Ordering::Relaxed);
    }
    format!(
        r#"{{"type":"candidate","to":"{to}","candidate":{{"candidate":"candidate:hl {i} {seq} {t}","sdpMid":"0","sdpMLineIndex":0}}}}"#,
        seq = *seq
    )
}

/// Handles a text frame from the hub; returns a reply to send, if any.
fn on_text(i: usize, partner: usize, to: &str, text: &str, sh: &Shared) -> Option<String> {
    let now = sh.now_ns();
    let c = &sh.counters;
    let Ok(m) = serde_json::from_str::<Incoming<'_>>(text) else {
        c.bad_messages.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    match m.ty {
        "candidate" => {
            // "candidate:hl SENDER SEQ SENT_NS"
            let sent = m
                .candidate
                .and_then(|c| c.candidate.split_ascii_whitespace().nth(3))
                .and_then(|t| t.parse::<u64>().ok());
            let Some(sent) = sent else {
                c.bad_messages.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            c.received.fetch_add(1, Ordering::Relaxed);
            let node = sh.node(i);
            node.received.fetch_add(1, Ordering::Relaxed);
            let from = sh.window_from_ns.load(Ordering::Relaxed);
            let until = sh.window_to_ns.load(Ordering::Relaxed);
            if (from..until).contains(&now) {
                c.received_in_window.fetch_add(1, Ordering::Relaxed);
                node.received_in_window.fetch_add(1, Ordering::Relaxed);
            }
            if (from..until).contains(&sent) {
                lock(&sh.latency).record(now.saturating_sub(sent));
                lock(&node.latency).record(now.saturating_sub(sent));
            }
            if sh.window.is_some() {
                sh.slots[partner].add_permits(1);
            }
            None
        }
        "offer" => {
            c.offers.fetch_add(1, Ordering::Relaxed);
            Some(format!(
                r#"{{"type":"answer","to":"{to}","sdp":"v=0 hub-load answer {i}"}}"#
            ))
        }
        "answer" => {
            c.answers.fetch_add(1, Ordering::Relaxed);
            None
        }
        "error" => {
            let code = m.code.unwrap_or_else(|| "?".to_owned());
            *lock(&sh.errors).entry(code.clone()).or_default() += 1;
            lock(&sh.error_examples)
                .entry(code)
                .or_insert_with(|| m.message.unwrap_or_default());
            None
        }
        "peer-left" => {
            c.peer_left.fetch_add(1, Ordering::Relaxed);
            None
        }
        _ => None,
    }
}

/// `VmRSS` of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_ascii_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
fn open_file_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    s.lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_ascii_whitespace().nth(3))
        .and_then(|v| v.parse().ok())
}

/// The summed `VmRSS` of `pids` in KiB (`None` without pids or if one is unreadable), and
/// each one's.
fn rss_all(pids: &[u32]) -> (Option<u64>, Vec<Option<u64>>) {
    let each: Vec<Option<u64>> = pids.iter().map(|&p| rss_kib(p)).collect();
    let sum = if each.is_empty() {
        None
    } else {
        each.iter().copied().sum()
    };
    (sum, each)
}

/// Core, client and server CPU counters at one instant.
struct CpuSnap {
    cores: CoreTicks,
    client: Option<u64>,
    /// One per `--server-pid`.
    servers: Vec<Option<u64>>,
}

impl CpuSnap {
    fn take(server_pids: &[u32]) -> Self {
        CpuSnap {
            cores: CoreTicks::snapshot(),
            client: process_ticks(None),
            servers: server_pids
                .iter()
                .map(|&p| process_ticks(Some(p)))
                .collect(),
        }
    }
}

/// CPU use between two snapshots, in percent of one core.
struct CpuUse {
    cores: Vec<f64>,
    client: Option<f64>,
    /// Every server process together (`None` without one, or if one is unreadable).
    server: Option<f64>,
    /// Each server process.
    servers: Vec<Option<f64>>,
    other: Option<f64>,
}

fn cpu_use(a: &CpuSnap, b: &CpuSnap) -> CpuUse {
    let cores = core_busy_pct(&a.cores, &b.cores);
    // Elapsed ticks of one core (all cores advance together), at 100 ticks per second.
    let span = match (a.cores.cores.first(), b.cores.cores.first()) {
        (Some(x), Some(y)) if y.1 > x.1 => (y.1 - x.1) as f64 / 100.0,
        _ => 0.0,
    };
    let pct = |x: Option<u64>, y: Option<u64>| match (x, y) {
        (Some(x), Some(y)) if span > 0.0 => {
            Some((y.saturating_sub(x) as f64 / span * 10.0).round() / 10.0)
        }
        _ => None,
    };
    let client = pct(a.client, b.client);
    let servers: Vec<Option<f64>> = a
        .servers
        .iter()
        .zip(&b.servers)
        .map(|(&x, &y)| pct(x, y))
        .collect();
    let server = if servers.is_empty() {
        None
    } else {
        servers
            .iter()
            .copied()
            .sum::<Option<f64>>()
            .map(|s| (s * 10.0).round() / 10.0)
    };
    let other = match (client, server) {
        (Some(c), Some(s)) if !cores.is_empty() => {
            let total: f64 = cores.iter().sum();
            Some(((total - c - s).max(0.0) * 10.0).round() / 10.0)
        }
        _ => None,
    };
    CpuUse {
        cores,
        client,
        server,
        servers,
        other,
    }
}

/// Latency summary in microseconds.
#[derive(Serialize)]
struct Latency {
    samples: u64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    mean_us: f64,
}

impl Latency {
    fn of(h: &Histogram) -> Self {
        let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
        Latency {
            samples: h.count(),
            p50_us: us(h.quantile(0.5)),
            p90_us: us(h.quantile(0.9)),
            p99_us: us(h.quantile(0.99)),
            p999_us: us(h.quantile(0.999)),
            max_us: us(h.max()),
            mean_us: us(h.mean() as u64),
        }
    }
}

/// The share of one `--url`.
#[derive(Serialize)]
struct NodeReport {
    url: String,
    /// Connections to this URL.
    connections: usize,
    /// Candidates sent by its connections.
    sent: u64,
    /// Candidates received by its connections.
    received: u64,
    /// Candidates/s received by its connections in the measurement window.
    relayed_per_s: f64,
    /// Latency of the candidates its connections received.
    latency: Latency,
    /// Its connections closed before the end.
    closed_early: u64,
}

/// One `--server-pid`.
#[derive(Serialize)]
struct ServerProcess {
    pid: u32,
    rss_before_kib: Option<u64>,
    rss_idle_kib: Option<u64>,
    rss_after_load_kib: Option<u64>,
    cpu_pct: Option<f64>,
}

/// The whole result, printed as text or JSON.
#[derive(Serialize)]
struct Report {
    /// The first `--url` (the only one without a cluster); all are in `urls`.
    url: String,
    connections: u32,
    source_ips: u8,
    setup_s: f64,
    server_rss_before_kib: Option<u64>,
    server_rss_idle_kib: Option<u64>,
    server_rss_after_load_kib: Option<u64>,
    idle_kib_per_connection: Option<f64>,
    idle_mib_per_1000_connections: Option<f64>,
    mode: &'static str,
    rate_per_connection: Option<f64>,
    window: Option<u32>,
    warmup_s: f64,
    duration_s: f64,
    sent: u64,
    received: u64,
    lost: u64,
    sent_per_s: f64,
    relayed_per_s: f64,
    offers: u64,
    answers: u64,
    latency: Latency,
    /// How late this tool's own 1 ms timer woke up (p99, max): the client's share of latency.
    client_loop_lag_p99_us: f64,
    client_loop_lag_max_us: f64,
    hub_errors: BTreeMap<String, u64>,
    hub_error_examples: BTreeMap<String, String>,
    closed_early: BTreeMap<String, u64>,
    peer_left: u64,
    bad_messages: u64,
    server_cpu_pct: Option<f64>,
    client_cpu_pct: Option<f64>,
    other_cpu_pct: Option<f64>,
    core_busy_pct: Vec<f64>,
    /// Every `--url`, and how connections were spread over them.
    urls: Vec<String>,
    spread: &'static str,
    /// The share of each URL, in `urls` order.
    nodes: Vec<NodeReport>,
    /// Each `--server-pid`; the `server_*` fields above are their sums.
    server_processes: Vec<ServerProcess>,
}

/// The upgrade request and the address of one `--url`.
async fn resolve(url: &str) -> Result<(Request, SocketAddr)> {
    let request = url
        .into_client_request()
        .with_context(|| format!("invalid --url {url}"))?;
    let uri = request.uri().clone();
    ensure!(
        uri.scheme_str() == Some("ws"),
        "--url must be a plain ws:// URL, got {url}"
    );
    let host = uri
        .host()
        .ok_or_else(|| anyhow!("--url {url} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .ok_or_else(|| anyhow!("{host} resolves to no address"))?;
    Ok((request, addr))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("hub-load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hub-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<ExitCode> {
    ensure!(
        args.connections % 2 == 0,
        "--connections must be even (pairs)"
    );
    ensure!(
        args.duration > 0.0 && args.duration <= MAX_DURATION_S,
        "--duration must be in (0, {MAX_DURATION_S}]"
    );
    ensure!(
        (0.0..=60.0).contains(&args.warmup),
        "--warmup must be in [0, 60]"
    );
    ensure!(
        args.rate > 0.0 && args.rate <= 10_000.0,
        "--rate must be in (0, 10000]"
    );
    for (name, v, max) in [
        ("--connect-timeout", args.connect_timeout, 600.0),
        ("--setup-timeout", args.setup_timeout, 3600.0),
        ("--idle-settle", args.idle_settle, 600.0),
        ("--drain", args.drain, 60.0),
        ("--ping-interval", args.ping_interval, 3600.0),
    ] {
        ensure!(v >= 0.0 && v <= max, "{name} must be in [0, {max}]");
    }
    ensure!(
        args.ping_interval >= 1.0,
        "--ping-interval must be at least 1"
    );
    let n = args.connections as usize;
    if let Some(limit) = open_file_limit() {
        ensure!(
            limit >= n as u64 + 64,
            "{n} connections need {} open files but the limit is {limit}: raise it first, \
             e.g. `ulimit -n 65536`",
            n + 64
        );
    }
    for &pid in &args.server_pids {
        ensure!(
            rss_kib(pid).is_some(),
            "no process {pid} (--server-pid), or its /proc/{pid}/status is not readable"
        );
    }

    // Where to connect: one request and address per --url.
    ensure!(!args.urls.is_empty(), "no --url");
    let mut targets: Vec<(Request, SocketAddr)> = Vec::with_capacity(args.urls.len());
    for url in &args.urls {
        targets.push(resolve(url).await?);
    }
    let sources: Vec<Option<IpAddr>> = if args.source_ips > 1 {
        for ((_, addr), url) in targets.iter().zip(&args.urls) {
            ensure!(
                addr.ip().is_loopback() && addr.is_ipv4(),
                "--source-ips needs IPv4 loopback URLs (127.0.0.0/8), not {addr} ({url})"
            );
        }
        (1..=args.source_ips)
            .map(|k| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, k))))
            .collect()
    } else {
        vec![None]
    };
    // A clear error before thousands of failures.
    for ((_, addr), url) in targets.iter().zip(&args.urls) {
        match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(*addr)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!(
                "cannot reach the hub at {addr} ({url}): {}",
                SetupError::Connect(e)
            ),
            Err(_) => bail!("cannot reach the hub at {addr} ({url}): no answer in 3 s"),
        }
    }

    let (phase_tx, phase_rx) = watch::channel(Phase::Idle);
    let sh = Arc::new(Shared {
        base: Instant::now(),
        window_from_ns: AtomicU64::new(u64::MAX),
        window_to_ns: AtomicU64::new(u64::MAX),
        slots: (0..n).map(|_| Semaphore::new(0)).collect(),
        window: args.window,
        rate: args.rate,
        ping_every: Duration::from_secs_f64(args.ping_interval),
        counters: Counters::default(),
        spread: args.spread,
        nodes: args.urls.iter().map(|_| NodeCounters::new()).collect(),
        latency: Mutex::new(Histogram::new()),
        loop_lag: Mutex::new(Histogram::new()),
        errors: Mutex::new(BTreeMap::new()),
        error_examples: Mutex::new(BTreeMap::new()),
        closed: Mutex::new(BTreeMap::new()),
    });

    // ------------------------------------------------------------------ setup
    let (rss_before, rss_before_each) = rss_all(&args.server_pids);
    let run_id = format!("hl{:x}", std::process::id());
    let setup_start = Instant::now();
    let setup_deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.setup_timeout);
    let connect_timeout = Duration::from_secs_f64(args.connect_timeout);
    let mut tasks = JoinSet::new();
    let mut pending = JoinSet::new();
    let mut next = 0usize;
    let mut done = 0usize;
    let failure: Option<String> = loop {
        while next < n && pending.len() < args.connect_window as usize {
            let i = next;
            next += 1;
            let src = sources[i % sources.len()];
            let (req, addr) = targets[args.spread.node(i, targets.len())].clone();
            let room = format!("{run_id}-{}", i / 2);
            let peer = if i % 2 == 0 { "a" } else { "b" };
            pending.spawn(async move {
                let deadline = tokio::time::Instant::now() + connect_timeout;
                (i, src, open(addr, src, req, room, peer, deadline).await)
            });
        }
        if done == n {
            break None;
        }
        let joined = tokio::time::timeout_at(setup_deadline, pending.join_next()).await;
        match joined {
            Err(_) => {
                break Some(format!(
                    "only {done} of {n} connections were set up in {} s (--setup-timeout)",
                    args.setup_timeout
                ));
            }
            Ok(None) => break Some("internal: no setup in progress".to_owned()),
            Ok(Some(Err(e))) => break Some(format!("a setup task failed: {e}")),
            Ok(Some(Ok((i, src, Err(e))))) => {
                let from = src.map(|s| format!(" from {s}")).unwrap_or_default();
                break Some(format!(
                    "connection {} of {n}{from} to {}: {e}",
                    i + 1,
                    args.urls[args.spread.node(i, args.urls.len())]
                ));
            }
            Ok(Some(Ok((i, _, Ok(ws))))) => {
                done += 1;
                sh.counters.alive.fetch_add(1, Ordering::Relaxed);
                sh.node(i).connections.fetch_add(1, Ordering::Relaxed);
                tasks.spawn(run_conn(i, ws, sh.clone(), phase_rx.clone()));
                if done % PROGRESS_EVERY == 0 && done < n {
                    eprintln!(
                        "hub-load: {done}/{n} connections joined ({:.1} s)",
                        setup_start.elapsed().as_secs_f64()
                    );
                }
            }
        }
    };
    pending.abort_all();
    if let Some(why) = failure {
        let _ = phase_tx.send(Phase::Close);
        let _ = tokio::time::timeout(Duration::from_secs_f64(CLOSE_S), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
        bail!("{why}");
    }
    let setup_s = setup_start.elapsed().as_secs_f64();
    eprintln!("hub-load: {n} connections joined in {setup_s:.1} s; idle");

    // ------------------------------------------------------------------ idle
    tokio::time::sleep(Duration::from_secs_f64(args.idle_settle)).await;
    let (rss_idle, rss_idle_each) = rss_all(&args.server_pids);
    let alive = sh.counters.alive.load(Ordering::Relaxed);
    ensure!(
        alive == n,
        "{} of {n} connections closed while idle: {:?}",
        n - alive,
        lock(&sh.closed)
    );

    // ------------------------------------------------------------------ load
    let start_ns = sh.now_ns();
    let from_ns = start_ns + (args.warmup * 1e9) as u64;
    let to_ns = from_ns + (args.duration * 1e9) as u64;
    sh.window_from_ns.store(from_ns, Ordering::Relaxed);
    sh.window_to_ns.store(to_ns, Ordering::Relaxed);
    let _ = phase_tx.send(Phase::Load { start_ns });
    let probe = tokio::spawn(lag_probe(sh.clone(), phase_rx.clone()));
    tokio::time::sleep_until((sh.base + Duration::from_nanos(from_ns)).into()).await;
    let cpu0 = CpuSnap::take(&args.server_pids);
    tokio::time::sleep_until((sh.base + Duration::from_nanos(to_ns)).into()).await;
    let cpu1 = CpuSnap::take(&args.server_pids);
    let _ = phase_tx.send(Phase::Drain);
    let drain_until = tokio::time::Instant::now() + Duration::from_secs_f64(args.drain);
    // Let every task see the phase change before comparing the counters.
    tokio::time::sleep(DRAIN_POLL).await;
    while tokio::time::Instant::now() < drain_until {
        let c = &sh.counters;
        if c.received.load(Ordering::Relaxed) >= c.sent.load(Ordering::Relaxed) {
            break;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    let (rss_after, rss_after_each) = rss_all(&args.server_pids);
    let _ = phase_tx.send(Phase::Close);
    probe.abort();
    let closed_in_time = tokio::time::timeout(Duration::from_secs_f64(CLOSE_S + 1.0), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !closed_in_time {
        tasks.abort_all();
    }

    // ------------------------------------------------------------------ report
    let c = &sh.counters;
    let cpu = cpu_use(&cpu0, &cpu1);
    let h = lock(&sh.latency).clone();
    let lag = lock(&sh.loop_lag).clone();
    let us = |ns: u64| (ns as f64 / 100.0).round() / 10.0;
    let sent = c.sent.load(Ordering::Relaxed);
    let received = c.received.load(Ordering::Relaxed);
    let per_conn = match (rss_before, rss_idle) {
        (Some(b), Some(a)) => Some((a as f64 - b as f64) / n as f64),
        _ => None,
    };
    let nodes = args
        .urls
        .iter()
        .zip(&sh.nodes)
        .map(|(url, c)| NodeReport {
            url: url.clone(),
            connections: c.connections.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            received: c.received.load(Ordering::Relaxed),
            relayed_per_s: (c.received_in_window.load(Ordering::Relaxed) as f64 / args.duration)
                .round(),
            latency: Latency::of(&lock(&c.latency)),
            closed_early: c.closed_early.load(Ordering::Relaxed),
        })
        .collect();
    let server_processes = args
        .server_pids
        .iter()
        .enumerate()
        .map(|(k, &pid)| ServerProcess {
            pid,
            rss_before_kib: rss_before_each[k],
            rss_idle_kib: rss_idle_each[k],
            rss_after_load_kib: rss_after_each[k],
            cpu_pct: cpu.servers[k],
        })
        .collect();
    let report = Report {
        url: args.urls[0].clone(),
        connections: args.connections,
        source_ips: args.source_ips,
        setup_s: (setup_s * 100.0).round() / 100.0,
        server_rss_before_kib: rss_before,
        server_rss_idle_kib: rss_idle,
        server_rss_after_load_kib: rss_after,
        idle_kib_per_connection: per_conn.map(|k| (k * 100.0).round() / 100.0),
        idle_mib_per_1000_connections: per_conn
            .map(|k| (k * 1000.0 / 1024.0 * 100.0).round() / 100.0),
        mode: if args.window.is_some() {
            "closed-loop"
        } else {
            "open-loop"
        },
        rate_per_connection: args.window.is_none().then_some(args.rate),
        window: args.window,
        warmup_s: args.warmup,
        duration_s: args.duration,
        sent,
        received,
        lost: sent.saturating_sub(received),
        sent_per_s: (c.sent_in_window.load(Ordering::Relaxed) as f64 / args.duration).round(),
        relayed_per_s: (c.received_in_window.load(Ordering::Relaxed) as f64 / args.duration)
            .round(),
        offers: c.offers.load(Ordering::Relaxed),
        answers: c.answers.load(Ordering::Relaxed),
        latency: Latency::of(&h),
        client_loop_lag_p99_us: us(lag.quantile(0.99)),
        client_loop_lag_max_us: us(lag.max()),
        hub_errors: lock(&sh.errors).clone(),
        hub_error_examples: lock(&sh.error_examples).clone(),
        closed_early: lock(&sh.closed).clone(),
        peer_left: c.peer_left.load(Ordering::Relaxed),
        bad_messages: c.bad_messages.load(Ordering::Relaxed),
        server_cpu_pct: cpu.server,
        client_cpu_pct: cpu.client,
        other_cpu_pct: cpu.other,
        core_busy_pct: cpu.cores,
        urls: args.urls.clone(),
        spread: args.spread.name(),
        nodes,
        server_processes,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report);
    }
    Ok(if report.received > 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!("hub-load: no message was relayed");
        ExitCode::from(1)
    })
}

fn print_text(r: &Report) {
    let opt = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v}"));
    let kib = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} KiB"));
    let to = if r.urls.len() > 1 {
        format!("{} (spread by {})", r.urls.join(", "), r.spread)
    } else {
        r.url.clone()
    };
    println!(
        "hub-load: {} connections to {to} ({} source IPs), set up in {:.1} s",
        r.connections, r.source_ips, r.setup_s
    );
    println!(
        "idle:  server RSS {} before, {} joined and idle: {} KiB per connection, {} MiB per 1,000",
        kib(r.server_rss_before_kib),
        kib(r.server_rss_idle_kib),
        opt(r.idle_kib_per_connection),
        opt(r.idle_mib_per_1000_connections)
    );
    let mode = match (r.window, r.rate_per_connection) {
        (Some(w), _) => format!("closed loop, window {w} per connection"),
        (None, Some(rate)) => format!("open loop, {rate} msg/s per connection"),
        _ => String::new(),
    };
    println!(
        "load:  {mode}, {} s measured after {} s warm-up",
        r.duration_s, r.warmup_s
    );
    println!(
        "       relayed {:.0} msg/s (sent {:.0}/s); sent {} received {} lost {}; offers {} answers {}",
        r.relayed_per_s, r.sent_per_s, r.sent, r.received, r.lost, r.offers, r.answers
    );
    let l = &r.latency;
    println!(
        "       latency send -> partner: p50 {} us, p90 {} us, p99 {} us, p99.9 {} us, max {} us ({} samples)",
        l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.samples
    );
    println!(
        "       this tool's event loop ran late by p99 {} us, max {} us (its share of the latency)",
        r.client_loop_lag_p99_us, r.client_loop_lag_max_us
    );
    println!(
        "       hub errors {:?}; closed early {:?}; peer-left {}; unparsable {}",
        r.hub_errors, r.closed_early, r.peer_left, r.bad_messages
    );
    println!(
        "       CPU % of a core: server {}, client {}, other {}; cores busy {:?}; server RSS after load {}",
        opt(r.server_cpu_pct),
        opt(r.client_cpu_pct),
        opt(r.other_cpu_pct),
        r.core_busy_pct,
        kib(r.server_rss_after_load_kib)
    );
    if r.nodes.len() > 1 {
        for n in &r.nodes {
            let l = &n.latency;
            println!(
                "       {}: {} connections; received {:.0} msg/s, p50 {} us, p99 {} us; sent {} received {}; closed early {}",
                n.url,
                n.connections,
                n.relayed_per_s,
                l.p50_us,
                l.p99_us,
                n.sent,
                n.received,
                n.closed_early
            );
        }
    }
    if r.server_processes.len() > 1 {
        for p in &r.server_processes {
            println!(
                "       server pid {}: CPU {} %; RSS {} before, {} idle, {} after load",
                p.pid,
                opt(p.cpu_pct),
                kib(p.rss_before_kib),
                kib(p.rss_idle_kib),
                kib(p.rss_after_load_kib)
            );
        }
    }
}
