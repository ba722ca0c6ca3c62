//! The hub's cluster mode driver: many `turnpike serve` nodes share rooms through Redis.
//!
//! Decisions are made by the sans-IO [`turnpike_signal::cluster`] core (one
//! [`ClusterConn`] per socket) and by atomic Lua scripts in Redis (the files next to this
//! one; `prelude.lua` documents the keys). This module only moves bytes:
//!
//! * each WebSocket gets a task that feeds its frames to its [`ClusterConn`] and performs the
//!   [`Request`]s it asks for, one at a time, in order; a writer task sends its frames;
//! * one supervisor task per node holds the Redis link: it subscribes to the node's channel
//!   and hands each publication to the session's [`Sequencer`], beats the node's heartbeat,
//!   runs the sweep (dead nodes' sessions enter the resume window; ended windows send
//!   `peer-left`), and reconnects with backoff when Redis goes away. After a reconnect it
//!   reconciles every session it still serves: re-attaches it, delivers what it missed, or
//!   recreates it if Redis lost its data.
//!
//! While Redis is unreachable the node is unready (`/readyz` 503), requests are answered with
//! `unavailable` errors at once, and nothing is queued without bound.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use dashmap::DashMap;
use futures_util::StreamExt;
use redis::Script;
use redis::aio::MultiplexedConnection;
use tokio::sync::{mpsc, watch};
use turnpike_signal::HubConfig;
use turnpike_signal::cluster::{
    Action, ClusterConn, Delivery, Publication, Reply, Request, Sequencer,
};
use turnpike_signal::protocol::ErrorCode;

use crate::Shared;
use crate::signal::{Out, now, random_key, write_frames};

/// How long one Redis operation may take before the client gets `unavailable`.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames queued for one connection beyond a full replay.
const CONN_QUEUE: usize = 256;
/// Sessions reconciled at once after a reconnect.
const RECONCILE_BATCH: usize = 64;
/// Detaches remembered while Redis is unreachable (beyond this, sessions are left to the
/// node's heartbeat expiry).
const MAX_LOST_DETACHES: usize = 100_000;

/// Cluster settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` is refused: not built).
    pub url: String,
    /// Prefix of every key and channel, so clusters can share one Redis.
    pub prefix: String,
    /// A node whose heartbeat is older than this is dead: its sessions enter the resume
    /// window.
    pub node_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: String::new(),
            prefix: "turnpike:".to_owned(),
            node_timeout: Duration::from_secs(10),
        }
    }
}

struct Scripts {
    join: Script,
    route: Script,
    own: Script,
    leave: Script,
    detach: Script,
    resume: Script,
    heartbeat: Script,
    sweep: Script,
    reconcile: Script,
    retire: Script,
}

impl Scripts {
    fn new() -> Self {
        let with = |body: &str| Script::new(&format!("{}\n{body}", include_str!("prelude.lua")));
        Scripts {
            join: with(include_str!("join.lua")),
            route: with(include_str!("route.lua")),
            own: with(include_str!("own.lua")),
            leave: with(include_str!("leave.lua")),
            detach: with(include_str!("detach.lua")),
            resume: with(include_str!("resume.lua")),
            heartbeat: with(include_str!("heartbeat.lua")),
            sweep: with(include_str!("sweep.lua")),
            reconcile: with(include_str!("reconcile.lua")),
            retire: with(include_str!("retire.lua")),
        }
    }
}

/// What the supervisor or a delivery asks a connection task to do.
#[derive(Debug)]
enum Ctl {
    /// Session `sid` was resumed on another connection.
    TakenOver(String),
    /// The client does not read its frames.
    NotReading,
    /// Messages were lost on the way: close so the client resumes.
    Resync,
    /// The session ended while the node was cut off.
    Lost(String),
    /// The server is stopping.
    Shutdown,
}

struct ConnHandle {
    tx: mpsc::Sender<Out>,
    ctl: mpsc::Sender<Ctl>,
}

struct LocalSession {
    conn: u64,
    peer_id: String,
    room: String,
    seq: Sequencer,
}

/// Open connections of this node, in total and per client IP.
#[derive(Default)]
struct Admission {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// One node of a hub cluster.
pub struct Node {
    id: String,
    hub: HubConfig,
    redis: RedisConfig,
    scripts: Scripts,
    link: RwLock<Option<MultiplexedConnection>>,
    up: AtomicBool,
    conns: DashMap<u64, ConnHandle>,
    sessions: DashMap<String, LocalSession>,
    admission: Mutex<Admission>,
    open: AtomicU64,
    lost_detaches: Mutex<Vec<(String, u64)>>,
    shared: Arc<Shared>,
}

fn hex_id() -> String {
    random_key(None)[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Node {
    /// Whether the node can reach Redis.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
        self.shared
            .metrics
            .hub
            .store_up
            .store(u64::from(up), Ordering::Relaxed);
    }

    fn publish_gauges(&self) {
        let m = &self.shared.metrics.hub;
        m.connections
            .store(self.conns.len() as u64, Ordering::Relaxed);
        m.peers.store(self.sessions.len() as u64, Ordering::Relaxed);
    }

    /// Admits a new connection from `ip` (per-node limits), or says why not.
    pub fn admit(&self, ip: IpAddr) -> Result<u64, turnpike_signal::ConnectError> {
        use turnpike_signal::ConnectError;
        let mut adm = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        if adm.total >= self.hub.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        let n = adm.per_ip.get(&ip).copied().unwrap_or(0);
        if n >= self.hub.max_connections_per_ip {
            return Err(ConnectError::TooManyFromIp);
        }
        adm.per_ip.insert(ip, n + 1);
        adm.total += 1;
        Ok(self.open.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Gives back what [`Node::admit`] took.
    fn release(&self, ip: IpAddr) {
        let mut adm = self.admission.lock().unwrap_or_else(|e| e.into_inner());
        adm.total = adm.total.saturating_sub(1);
        if let Some(n) = adm.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                adm.per_ip.remove(&ip);
            }
        }
    }

    /// Runs `script` with the key prefix and `args`; the error says what failed (counted in
    /// `turnpike_hub_store_errors_total` when Redis was asked).
    async fn call<T: redis::FromRedisValue>(
        &self,
        script: &Script,
        args: &[&str],
    ) -> Result<T, String> {
        let mut link = self
            .link
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| "no link to redis".to_owned())?;
        let mut inv = script.prepare_invoke();
        inv.arg(&self.redis.prefix);
        for a in args {
            inv.arg(*a);
        }
        let result = match tokio::time::timeout(OP_TIMEOUT, inv.invoke_async(&mut link)).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err(format!("no answer within {OP_TIMEOUT:?}")),
        };
        if let Err(e) = &result {
            self.shared
                .metrics
                .hub
                .store_errors
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e, "redis operation failed");
        }
        result
    }

    async fn execute(&self, conn: u64, req: &Request) -> Reply {
        let conn = conn.to_string();
        let cap = self.hub.replay_cap.max(1).to_string();
        match req {
            Request::Join { sid, room, peer_id } => {
                let max_peers = self.hub.max_peers_per_room.to_string();
                let max_rooms = self.hub.max_rooms.to_string();
                let args = [
                    sid.as_str(),
                    room,
                    peer_id,
                    &self.id,
                    &conn,
                    &max_peers,
                    &max_rooms,
                    &cap,
                ];
                let Ok(r) = self.call::<Vec<String>>(&self.scripts.join, &args).await else {
                    return Reply::Unavailable;
                };
                match r.first().map(String::as_str) {
                    Some("ok") => Reply::Joined {
                        seq: 1,
                        peers: r[1..].to_vec(),
                    },
                    Some("too-many-rooms") => Reply::Refused(ErrorCode::TooManyRooms),
                    Some("room-full") => Reply::Refused(ErrorCode::RoomFull),
                    Some("peer-id-taken") => Reply::Refused(ErrorCode::PeerIdTaken),
                    _ => Reply::Unavailable,
                }
            }
            Request::Route { sid, to, body } => {
                let args = [sid.as_str(), to, body, &cap];
                match self
                    .call::<String>(&self.scripts.route, &args)
                    .await
                    .ok()
                    .as_deref()
                {
                    Some("ok") => Reply::Done,
                    Some("nf") => Reply::PeerNotFound,
                    Some("gone") => Reply::SessionGone,
                    _ => Reply::Unavailable,
                }
            }
            Request::Own { sid, body } => {
                let args = [sid.as_str(), body, &cap];
                match self
                    .call::<String>(&self.scripts.own, &args)
                    .await
                    .ok()
                    .as_deref()
                {
                    Some("ok") => Reply::Done,
                    Some("gone") => Reply::SessionGone,
                    _ => Reply::Unavailable,
                }
            }
            Request::Leave { sid } => {
                let args = [sid.as_str(), &self.id, &conn, &cap];
                match self
                    .call::<String>(&self.scripts.leave, &args)
                    .await
                    .ok()
                    .as_deref()
                {
                    Some("ok") => Reply::Done,
                    Some("gone") => Reply::SessionGone,
                    _ => Reply::Unavailable,
                }
            }
            Request::Resume { sid, last_seq } => {
                let last = last_seq.to_string();
                let args = [sid.as_str(), &self.id, &conn, &last];
                let Ok(r) = self.call::<Vec<String>>(&self.scripts.resume, &args).await else {
                    return Reply::Unavailable;
                };
                parse_resumed(&r, *last_seq).unwrap_or(Reply::NoSession)
            }
        }
    }

    /// Detaches a session whose socket closed; remembered for later if Redis is away.
    async fn detach(&self, sid: &str, conn: u64) {
        let c = conn.to_string();
        let window = self.hub.resume_window.as_millis().to_string();
        let ttl = self.key_ttl().as_millis().to_string();
        let args = [sid, &self.id, &c, &window, &ttl];
        if self.call::<i64>(&self.scripts.detach, &args).await.is_err() {
            self.detach_later(sid, conn);
        }
    }

    /// Remembers a detach to retry once Redis answers again (bounded).
    fn detach_later(&self, sid: &str, conn: u64) {
        let mut lost = self.lost_detaches.lock().unwrap_or_else(|e| e.into_inner());
        if lost.len() < MAX_LOST_DETACHES {
            lost.push((sid.to_owned(), conn));
        }
    }

    /// How long keys of a detached session live at most (a backstop: the sweep ends it).
    fn key_ttl(&self) -> Duration {
        self.hub.resume_window + self.redis.node_timeout + Duration::from_secs(60)
    }

    /// Hands a publication on this node's channel to its session.
    fn dispatch(&self, payload: &str) {
        match Publication::parse(payload) {
            Some(Publication::Deliver { sid, seq, text }) => self.dispatch_entry(sid, seq, text),
            Some(Publication::TakeOver { sid, conn }) => {
                self.control(conn, Ctl::TakenOver(sid.to_owned()));
            }
            None => {
                tracing::warn!(len = payload.len(), "malformed publication on node channel");
            }
        }
    }

    fn send_frames(&self, conn: u64, frames: Vec<String>) {
        let Some(h) = self.conns.get(&conn) else {
            return;
        };
        for f in frames {
            if h.tx.try_send(Out::Text(f)).is_err() {
                let _ = h.ctl.try_send(Ctl::NotReading);
                return;
            }
        }
    }

    fn control(&self, conn: u64, ctl: Ctl) {
        if let Some(h) = self.conns.get(&conn) {
            let _ = h.ctl.try_send(ctl);
        }
    }

    /// Re-attaches every session this node serves after its link came back.
    async fn reconcile(&self) {
        let lost: Vec<(String, u64)> =
            std::mem::take(&mut *self.lost_detaches.lock().unwrap_or_else(|e| e.into_inner()));
        for (sid, conn) in lost {
            self.detach(&sid, conn).await;
        }
        let snapshot: Vec<(String, u64, String, String, u64)> = self
            .sessions
            .iter()
            .filter_map(|e| {
                let s = e.value();
                let next = s.seq.next_seq()?;
                Some((
                    e.key().clone(),
                    s.conn,
                    s.peer_id.clone(),
                    s.room.clone(),
                    next,
                ))
            })
            .collect();
        let total = snapshot.len();
        let mut restored = 0usize;
        for chunk in snapshot.chunks(RECONCILE_BATCH) {
            let results = futures_util::future::join_all(chunk.iter().map(
                |(sid, conn, peer, room, next)| async move {
                    let c = conn.to_string();
                    let n = next.to_string();
                    let args = [sid.as_str(), &self.id, &c, peer, room, &n];
                    let r = self
                        .call::<Vec<String>>(&self.scripts.reconcile, &args)
                        .await
                        .ok();
                    (sid, *conn, *next, r)
                },
            ))
            .await;
            for (sid, conn, next, r) in results {
                let Some(r) = r else {
                    // Redis went away again; the next reconnect reconciles anew.
                    return;
                };
                match r.first().map(String::as_str) {
                    Some("ok") => {
                        let dropped: u64 = r.get(1).and_then(|d| d.parse().ok()).unwrap_or(0);
                        if dropped >= next {
                            self.control(conn, Ctl::Resync);
                            continue;
                        }
                        for e in &r[2..] {
                            if let Some((seq, text)) = e.split_once(' ') {
                                if let Ok(seq) = seq.parse() {
                                    self.dispatch_entry(sid, seq, text);
                                }
                            }
                        }
                    }
                    Some("restored") => restored += 1,
                    Some("moved") => self.control(conn, Ctl::TakenOver(sid.clone())),
                    _ => self.control(conn, Ctl::Lost(sid.clone())),
                }
            }
        }
        tracing::info!(
            sessions = total,
            restored,
            "hub sessions reconciled with redis"
        );
    }

    /// Offers message `seq` of session `sid` to its sequencer and sends what follows on.
    fn dispatch_entry(&self, sid: &str, seq: u64, text: &str) {
        let Some(mut s) = self.sessions.get_mut(sid) else {
            // The session left this node meanwhile; the message is in its replay buffer for
            // whoever resumes it.
            return;
        };
        let conn = s.conn;
        match s.seq.offer(seq, text.to_owned()) {
            Delivery::Send(frames) => self.send_frames(conn, frames),
            Delivery::Nothing => {}
            Delivery::Overflow => self.control(conn, Ctl::Resync),
        }
    }

    /// A clean stop: clients are told to resume elsewhere, and the node's sessions enter
    /// the resume window now rather than after its heartbeat expires.
    async fn retire(&self) {
        self.shutdown_all();
        // Give the sockets a moment to detach their sessions themselves.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        while !self.conns.is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let window = self.hub.resume_window.as_millis().to_string();
        let ttl = self.key_ttl().as_millis().to_string();
        let args = [self.id.as_str(), &window, &ttl];
        match self.call::<i64>(&self.scripts.retire, &args).await {
            Ok(n) => tracing::info!(node = %self.id, sessions = n, "hub node left the cluster"),
            Err(e) => {
                tracing::warn!(node = %self.id, error = %e, "could not leave the cluster cleanly; other nodes will after its heartbeat expires")
            }
        }
        self.set_up(false);
    }

    fn shutdown_all(&self) {
        for e in self.conns.iter() {
            let _ = e.value().ctl.try_send(Ctl::Shutdown);
        }
    }
}

fn parse_resumed(r: &[String], last_seq: u64) -> Option<Reply> {
    if r.first().map(String::as_str) != Some("ok") {
        return None;
    }
    let peer_id = r.get(1)?.clone();
    let room = r.get(2)?.clone();
    let seq: u64 = r.get(3)?.parse().ok()?;
    let dropped: u64 = r.get(4)?.parse().ok()?;
    let n: usize = r.get(5)?.parse().ok()?;
    let peers = r.get(6..6 + n)?.to_vec();
    let replay = r
        .get(6 + n..)?
        .iter()
        .filter_map(|e| {
            let (s, t) = e.split_once(' ')?;
            Some((s.parse().ok()?, t.to_owned()))
        })
        .collect();
    Some(Reply::Resumed {
        peer_id,
        room,
        seq,
        peers,
        replay,
        complete: last_seq >= dropped,
    })
}

/// Checks that `url` is a Redis URL the client accepts (without connecting). The error
/// never repeats the URL, which may hold a password.
pub fn check_url(url: &str) -> anyhow::Result<()> {
    client(url).map(|_| ())
}

fn client(url: &str) -> anyhow::Result<redis::Client> {
    redis::Client::open(url).map_err(|e| {
        anyhow::anyhow!(
            "invalid --redis URL ({:?}); expected redis://[USER:PASSWORD@]HOST:PORT[/DB]",
            e.kind()
        )
    })
}

/// Starts a cluster node: its Redis supervisor runs until `shutdown` fires, then retires
/// the node (its sessions enter the resume window at once); the handle ends after that.
pub fn spawn(
    hub: HubConfig,
    redis: RedisConfig,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(Arc<Node>, tokio::task::JoinHandle<()>)> {
    let client = client(&redis.url)?;
    let node = Arc::new(Node {
        id: hex_id(),
        hub,
        redis,
        scripts: Scripts::new(),
        link: RwLock::new(None),
        up: AtomicBool::new(false),
        conns: DashMap::new(),
        sessions: DashMap::new(),
        admission: Mutex::new(Admission::default()),
        open: AtomicU64::new(0),
        lost_detaches: Mutex::new(Vec::new()),
        shared: shared.clone(),
    });
    shared.metrics.hub.cluster.store(true, Ordering::Relaxed);
    shared.metrics.hub.store_up.store(0, Ordering::Relaxed);
    let task = tokio::spawn(supervise(node.clone(), client, shutdown));
    Ok((node, task))
}

/// How a link to Redis ended.
enum Outcome {
    /// The server is stopping.
    Stop,
    /// The link failed (`was_up`: after the node had served on it).
    Lost { reason: String, was_up: bool },
}

async fn supervise(node: Arc<Node>, client: redis::Client, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    let mut reconnect = false;
    loop {
        match serve_link(&node, &client, &mut shutdown, reconnect).await {
            Outcome::Stop => break,
            Outcome::Lost { reason, was_up } => {
                node.set_up(false);
                *node.link.write().unwrap_or_else(|e| e.into_inner()) = None;
                if was_up {
                    reconnect = true;
                    backoff = Duration::from_millis(100);
                    tracing::warn!(node = %node.id, %reason, "lost redis; signaling unavailable until it returns");
                } else {
                    tracing::warn!(node = %node.id, %reason, retry_in_ms = backoff.as_millis() as u64, "cannot reach redis");
                }
                tokio::select! {
                    _ = crate::stopped(&mut shutdown) => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                if !was_up {
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
    node.retire().await;
}

/// Connects, subscribes to the node's channel, and serves until the link fails or the
/// server stops. After a `reconnect`, reconciles the node's sessions before serving.
async fn serve_link(
    node: &Node,
    client: &redis::Client,
    shutdown: &mut watch::Receiver<bool>,
    reconnect: bool,
) -> Outcome {
    let lost = |reason: String, was_up| Outcome::Lost { reason, was_up };
    let channel = format!("{}n:{}", node.redis.prefix, node.id);
    let connect = async {
        let link = client.get_multiplexed_async_connection().await?;
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        Ok::<_, redis::RedisError>((link, pubsub))
    };
    let (link, pubsub) = tokio::select! {
        _ = crate::stopped(shutdown) => return Outcome::Stop,
        r = tokio::time::timeout(OP_TIMEOUT, connect) => match r {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return lost(e.to_string(), false),
            Err(_) => return lost(format!("no connection within {OP_TIMEOUT:?}"), false),
        },
    };
    *node.link.write().unwrap_or_else(|e| e.into_inner()) = Some(link);
    let mut stream = pubsub.into_on_message();
    // Register before serving: a first heartbeat that finds the node unknown is normal. A
    // failure here (an ACL without EVALSHA, say) is reported in Redis's words and retried
    // with backoff, not in a tight loop.
    if let Err(e) = heartbeat(node).await {
        return lost(format!("heartbeat failed: {e}"), false);
    }
    if reconnect {
        // Sessions may have been detached, ended or lost meanwhile: re-attach them.
        node.reconcile().await;
        node.shared
            .metrics
            .hub
            .store_reconnects
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(node = %node.id, "redis link restored");
    } else {
        tracing::info!(node = %node.id, "hub cluster node connected to redis");
    }
    node.set_up(true);
    let beat = (node.redis.node_timeout / 5).max(Duration::from_millis(200));
    let mut hb = tokio::time::interval(beat);
    hb.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    hb.tick().await;
    let mut sweep = tokio::time::interval(Duration::from_millis(500));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = crate::stopped(shutdown) => return Outcome::Stop,
            msg = stream.next() => match msg {
                Some(m) => {
                    if let Ok(p) = std::str::from_utf8(m.get_payload_bytes()) {
                        node.dispatch(p);
                    }
                }
                None => return lost("subscription closed".to_owned(), true),
            },
            _ = hb.tick() => match heartbeat(node).await {
                Err(e) => return lost(format!("heartbeat failed: {e}"), true),
                Ok(true) => {
                    // Another node swept this one as dead (or Redis lost its data).
                    tracing::warn!(node = %node.id, "node was unknown to redis; reconciling sessions");
                    node.reconcile().await;
                }
                Ok(false) => {}
            },
            _ = sweep.tick() => {
                if let Err(e) = run_sweep(node).await {
                    return lost(format!("sweep failed: {e}"), true);
                }
            }
        }
    }
}

/// Beats the node's heartbeat; `Ok(true)` if Redis did not know the node.
async fn heartbeat(node: &Node) -> Result<bool, String> {
    let r: Vec<i64> = node.call(&node.scripts.heartbeat, &[&node.id]).await?;
    let added = r.first().copied().unwrap_or(0) == 1;
    if let Some(rooms) = r.get(1) {
        node.shared
            .metrics
            .hub
            .rooms
            .store((*rooms).max(0) as u64, Ordering::Relaxed);
    }
    node.publish_gauges();
    Ok(added)
}

/// One sweep.
async fn run_sweep(node: &Node) -> Result<(), String> {
    let ttl = node.redis.node_timeout.as_millis().to_string();
    let window = node.hub.resume_window.as_millis().to_string();
    let key_ttl = node.key_ttl().as_millis().to_string();
    let cap = node.hub.replay_cap.max(1).to_string();
    let args = [ttl.as_str(), &window, &key_ttl, &cap, "500"];
    let r = node.call::<Vec<i64>>(&node.scripts.sweep, &args).await?;
    let m = &node.shared.metrics.hub;
    let (dead, detached, ended) = (
        r.first().copied().unwrap_or(0).max(0) as u64,
        r.get(1).copied().unwrap_or(0).max(0) as u64,
        r.get(2).copied().unwrap_or(0).max(0) as u64,
    );
    if dead > 0 {
        tracing::warn!(
            dead_nodes = dead,
            sessions = detached,
            "hub nodes stopped beating; their sessions entered the resume window"
        );
        m.dead_nodes.fetch_add(dead, Ordering::Relaxed);
    }
    m.expired.fetch_add(ended, Ordering::Relaxed);
    Ok(())
}

/// A connection admitted by [`Node::admit`]; dropping it gives the admission back.
pub(crate) struct Admitted {
    node: Arc<Node>,
    ip: IpAddr,
}

impl Admitted {
    /// Holds the admission of a connection from `ip`.
    pub(crate) fn new(node: Arc<Node>, ip: IpAddr) -> Self {
        Admitted { node, ip }
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.node.release(self.ip);
        self.node.publish_gauges();
    }
}

/// Serves one admitted WebSocket in cluster mode.
pub(crate) async fn serve_socket(
    admitted: Admitted,
    socket: WebSocket,
    conn: u64,
    host: Option<String>,
) {
    let node = admitted.node.clone();
    let (sink, mut stream) = socket.split();
    let (tx, rx) = mpsc::channel(CONN_QUEUE + node.hub.replay_cap);
    let (ctl_tx, mut ctl_rx) = mpsc::channel(8);
    node.conns.insert(
        conn,
        ConnHandle {
            tx: tx.clone(),
            ctl: ctl_tx,
        },
    );
    let mut writer = tokio::spawn(write_frames(sink, rx));
    node.publish_gauges();
    let hub = &node.hub;
    let mut random = || random_key(Some(&node.shared));
    let mut core = ClusterConn::new(hub, now(), host, random());
    'conn: loop {
        while let Some(action) = core.poll_action() {
            match action {
                Action::Send(t) => {
                    if tx.try_send(Out::Text(t)).is_err() {
                        core.not_reading();
                    }
                }
                Action::Request(req) => {
                    if let Request::Join { sid, .. } | Request::Resume { sid, .. } = &req {
                        node.sessions.insert(
                            sid.clone(),
                            LocalSession {
                                conn,
                                peer_id: String::new(),
                                room: String::new(),
                                seq: Sequencer::new(hub.replay_cap),
                            },
                        );
                    }
                    let reply = node.execute(conn, &req).await;
                    if reply == Reply::Unavailable {
                        if let Request::Join { sid, .. } | Request::Resume { sid, .. } = &req {
                            // It may have happened in Redis: undo it once Redis answers.
                            node.detach_later(sid, conn);
                        }
                    }
                    core.handle_reply(hub, now(), reply);
                }
                Action::Attach {
                    sid,
                    peer_id,
                    room,
                    frames,
                    next_seq,
                } => {
                    let mut ok = true;
                    if let Some(mut s) = node.sessions.get_mut(&sid) {
                        if s.conn == conn {
                            s.peer_id = peer_id;
                            s.room = room;
                            let rest = s.seq.start(next_seq);
                            for f in frames.into_iter().chain(rest) {
                                ok &= tx.try_send(Out::Text(f)).is_ok();
                            }
                        }
                    }
                    if !ok {
                        core.not_reading();
                    }
                }
                Action::Forget { sid } => {
                    node.sessions.remove_if(&sid, |_, s| s.conn == conn);
                }
                Action::Close { code, reason } => {
                    let _ = tx.try_send(Out::Close(code, reason));
                    break 'conn;
                }
            }
        }
        node.shared.metrics.hub.add(&core.take_stats());
        let deadline = core.poll_timeout(hub);
        let timer = async {
            match deadline {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            frame = stream.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    core.handle_message(hub, now(), t.as_str(), &mut random);
                }
                Some(Ok(Message::Binary(_))) => core.handle_binary(hub, now()),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break 'conn,
            },
            ctl = ctl_rx.recv() => match ctl {
                Some(Ctl::TakenOver(sid)) => core.taken_over(&sid),
                Some(Ctl::NotReading) => {
                    node.shared.metrics.hub.slow_closed.fetch_add(1, Ordering::Relaxed);
                    core.not_reading();
                }
                Some(Ctl::Resync) => {
                    node.shared.metrics.hub.resyncs.fetch_add(1, Ordering::Relaxed);
                    core.shut(1011, "messages lost; resume");
                }
                Some(Ctl::Lost(sid)) => core.session_lost(&sid),
                Some(Ctl::Shutdown) | None => core.shut(1001, "server shutting down"),
            },
            () = timer => core.handle_timeout(hub, now()),
            _ = &mut writer => break 'conn,
        }
    }
    node.shared.metrics.hub.add(&core.take_stats());
    node.conns.remove(&conn);
    drop(tx);
    if let Some(sid) = core.session().map(str::to_owned) {
        node.sessions.remove_if(&sid, |_, s| s.conn == conn);
        node.detach(&sid, conn).await;
    }
    drop(admitted);
    // Let the writer send what is queued (a close frame, say), briefly.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
}
