//! UDP shards: each worker thread owns an event loop, its `SO_REUSEPORT` listening sockets,
//! its copy of the STUN/TURN core and the relay sockets of the allocations it holds.
//!
//! The kernel spreads clients across shards by 4-tuple hash, so every datagram of a client
//! reaches the shard that holds its allocation; peer datagrams arrive on the relay socket,
//! which belongs to the same shard. Nothing is locked on the data path: a shard receives a
//! batch with `recvmmsg`, runs it through its core, sends payloads to peers straight from the
//! receive buffer, and sends replies and relayed data to clients with one `sendmmsg` per
//! listening socket. TCP and TLS clients reach a shard through a bounded command queue (their
//! connection tasks run on tokio), and get their replies through a bounded queue back.
//!
//! One loop per shard, no task per allocation: relay sockets are registered with the shard's
//! `epoll` (via `mio`) and drained in batches when readable.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use turnpike_relay_core::turn::{
    ClientAction, ClientKey, Now, OpenError, Opened, PeerAction, PortRequest, RelayId,
    RelaySockets, TurnServer, TurnStats,
};
use turnpike_relay_core::{Action, DropReason, Incoming, Outcome, Transport};

use crate::Shared;
use crate::metrics::LocalCounters;
use crate::udp_batch::{RecvBatch, SendBatch, bind_udp, recv_batch, send_batch};

/// Datagrams received (and replies sent) per system call.
pub const BATCH: usize = 32;
/// Largest datagram accepted from a client; larger ones are dropped as `oversize`.
pub const MAX_DATAGRAM: usize = 4096;
/// Largest datagram accepted from a peer (ChannelData adds 4 bytes, a Data indication 36).
const MAX_PEER_DATAGRAM: usize = MAX_DATAGRAM - 64;
/// Largest reply: the amplification bound allows up to twice the request.
const MAX_REPLY: usize = 2 * MAX_DATAGRAM;
/// How often an idle shard looks at the shutdown flag and publishes its counters.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Batches taken from one socket before the loop serves the others.
const FAIR_BATCHES: usize = 8;
/// Commands a shard queues from TCP/TLS connections before refusing more.
pub const COMMAND_QUEUE: usize = 4096;
/// Commands served per wake-up of a shard.
const COMMAND_BATCH: usize = 256;

const WAKER: Token = Token(usize::MAX - 1);
/// Tokens below this are listening sockets; relay sockets are `RELAY_BASE + RelayId::index`.
const RELAY_BASE: usize = 1 << 20;

/// Sockets for all shards: `result[shard]` holds one socket per address, in address order.
pub type WorkerSockets = Vec<Vec<(SocketAddr, std::net::UdpSocket)>>;

/// Binds one socket per address for each of `workers` shards.
pub fn bind_all(addresses: &[SocketAddr], workers: usize) -> Result<WorkerSockets> {
    let workers = workers.max(1);
    let reuse_port = workers > 1;
    let mut all: WorkerSockets = (0..workers).map(|_| Vec::new()).collect();
    for &addr in addresses {
        for (w, sockets) in all.iter_mut().enumerate() {
            let sock = bind_udp(addr, reuse_port)
                .map_err(|e| crate::bind_error(e, addr, "STUN/TURN over UDP"))
                .with_context(|| format!("UDP worker {w}"))?;
            sockets.push((addr, sock));
        }
    }
    Ok(all)
}

/// A message from a TCP/TLS connection task to a shard.
#[derive(Debug)]
pub enum Command {
    /// A STUN or ChannelData message from a stream client. `reply` receives what the shard
    /// sends back to the client (replies, ChannelData, Data indications).
    Message {
        /// The connection's 5-tuple.
        client: ClientKey,
        /// One framed message.
        data: Vec<u8>,
        /// Where to send the answers.
        reply: tokio::sync::mpsc::Sender<Vec<u8>>,
    },
    /// The connection closed: delete its allocation.
    Closed {
        /// The connection's 5-tuple.
        client: ClientKey,
    },
}

/// A handle to send commands to a shard.
#[derive(Debug, Clone)]
pub struct ShardHandle {
    tx: SyncSender<Command>,
    waker: Arc<Waker>,
}

impl ShardHandle {
    /// Queues a command and wakes the shard. Returns false when the queue is full or the
    /// shard has stopped (the command is dropped).
    pub fn send(&self, cmd: Command) -> bool {
        match self.tx.try_send(cmd) {
            Ok(()) => {
                let _ = self.waker.wake();
                true
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }
}

/// Picks the shard for a stream client (stable for the connection's lifetime).
pub fn shard_for<'a>(handles: &'a [ShardHandle], client: &ClientKey) -> Option<&'a ShardHandle> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    client.remote.hash(&mut h);
    client.local.hash(&mut h);
    let n = handles.len();
    if n == 0 {
        return None;
    }
    handles.get((h.finish() as usize) % n)
}

/// The TURN part of a shard's set-up.
pub struct ShardTurn {
    /// The core, already configured (relay addresses, credentials, policy).
    pub core: TurnServer,
    /// Relay port range (inclusive).
    pub ports: (u16, u16),
}

/// Per-shard counters published for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct ShardSnapshot {
    /// The core's cumulative TURN counters.
    pub stats: TurnStats,
    /// Live allocations.
    pub allocations: usize,
    /// Datagrams that could not be sent to a peer.
    pub peer_send_errors: u64,
    /// Messages for stream clients dropped because their queue was full.
    pub stream_queue_drops: u64,
    /// Peer datagrams too large to relay.
    pub peer_oversize: u64,
}

/// Starts one thread per shard. Threads stop within [`POLL_INTERVAL`] of `stop` being set.
pub fn spawn_shards(
    sockets: WorkerSockets,
    mut cores: Vec<ShardTurn>,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
) -> Result<(Vec<std::thread::JoinHandle<()>>, Vec<ShardHandle>)> {
    let mut threads = Vec::new();
    let mut handles = Vec::new();
    let reservations = Reservations::default();
    {
        let mut snaps = shared
            .metrics
            .shards
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *snaps = vec![ShardSnapshot::default(); sockets.len()];
    }
    for (w, socks) in sockets.into_iter().enumerate() {
        let turn = cores.remove(0);
        let poll = Poll::new().context("cannot create an event loop")?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = std::sync::mpsc::sync_channel(COMMAND_QUEUE);
        handles.push(ShardHandle {
            tx,
            waker: waker.clone(),
        });
        let mut listeners = Vec::new();
        for (i, (addr, sock)) in socks.into_iter().enumerate() {
            sock.set_nonblocking(true)?;
            let mut sock = UdpSocket::from_std(sock);
            poll.registry()
                .register(&mut sock, Token(i), Interest::READABLE)?;
            listeners.push(Listener {
                addr,
                wildcard: addr.ip().is_unspecified(),
                sock,
                send: SendBatch::new(BATCH, MAX_REPLY),
            });
        }
        let registry = poll.registry().try_clone()?;
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).context("no OS randomness")?;
        let shard = Shard {
            index: w,
            core: turn.core,
            listeners,
            relays: RelayTable {
                to_peers: SendBatch::new(BATCH, MAX_DATAGRAM),
                to_peers_relay: None,
                send_errors: 0,
                registry,
                sockets: Vec::new(),
                reservations: reservations.clone(),
                ports: turn.ports,
                rng: u64::from_le_bytes(seed) | 1,
            },
            rx,
            poll,
            start: Instant::now(),
            counters: LocalCounters::default(),
            shared: shared.clone(),
            stop: stop.clone(),
            snapshot: ShardSnapshot::default(),
            streams: HashMap::new(),
            waker,
        };
        let handle = std::thread::Builder::new()
            .name(format!("turnpike-udp-{w}"))
            .spawn(move || shard.run())
            .context("cannot start a UDP worker thread")?;
        threads.push(handle);
    }
    Ok((threads, handles))
}

struct Listener {
    addr: SocketAddr,
    wildcard: bool,
    sock: UdpSocket,
    send: SendBatch,
}

struct Shard {
    index: usize,
    core: TurnServer,
    listeners: Vec<Listener>,
    relays: RelayTable,
    rx: Receiver<Command>,
    poll: Poll,
    start: Instant,
    counters: LocalCounters,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    snapshot: ShardSnapshot,
    streams: HashMap<ClientKey, tokio::sync::mpsc::Sender<Vec<u8>>>,
    waker: Arc<Waker>,
}

/// Sockets held for EVEN-PORT reservations, shared by all shards: the Allocate that claims a
/// token may arrive on another shard than the one that reserved it.
type Reservations = Arc<std::sync::Mutex<HashMap<u64, std::net::UdpSocket>>>;

fn lock(r: &Reservations) -> std::sync::MutexGuard<'_, HashMap<u64, std::net::UdpSocket>> {
    // A poisoned lock only means a shard panicked while holding it; the map is still valid.
    r.lock().unwrap_or_else(|e| e.into_inner())
}

struct RelayTable {
    /// Payloads for peers from one relay socket, sent together (see [`RelayTable::queue`]).
    to_peers: SendBatch,
    to_peers_relay: Option<RelayId>,
    send_errors: u64,
    registry: mio::Registry,
    sockets: Vec<Option<UdpSocket>>,
    reservations: Reservations,
    ports: (u16, u16),
    rng: u64,
}

impl RelayTable {
    /// Queues a payload for a peer. Consecutive payloads from the same relay socket (a client
    /// sending several datagrams in a row, the common case under load) leave with one
    /// `sendmmsg`; the queue is flushed when the relay socket changes, when it is full, before
    /// a relay socket closes, and at the end of every pass of the event loop.
    fn queue(&mut self, relay: RelayId, peer: SocketAddr, payload: &[u8]) {
        if self.to_peers_relay != Some(relay) || self.to_peers.is_full() {
            self.flush();
            self.to_peers_relay = Some(relay);
        }
        if !self.to_peers.push(peer, None, payload) {
            self.send_errors += 1;
        }
    }

    /// Sends what [`RelayTable::queue`] holds.
    fn flush(&mut self) {
        let Some(relay) = self.to_peers_relay.take() else {
            return;
        };
        let mut start = 0;
        if let Some(Some(sock)) = self.sockets.get(relay.index()) {
            while start < self.to_peers.len() {
                match send_batch(sock, &self.to_peers, start) {
                    Ok(p) => {
                        self.send_errors += p.failed as u64;
                        start = p.next;
                    }
                    // A full socket buffer or a dead socket: the rest is lost (counted).
                    Err(_) => break,
                }
            }
        }
        self.send_errors += (self.to_peers.len() - start) as u64;
        self.to_peers.clear();
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn bind(ip: IpAddr, port: u16) -> io::Result<std::net::UdpSocket> {
        let sock = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
        sock.set_nonblocking(true)?;
        Ok(sock)
    }

    /// A port of the range, starting at a random point; `step` 2 keeps even ports even.
    fn pick(&mut self, ip: IpAddr, even: bool) -> Option<(std::net::UdpSocket, u16)> {
        let (lo, hi) = self.ports;
        let span = u32::from(hi - lo) + 1;
        // A few random tries spread allocations over the range (ports are not predictable);
        // then a bounded linear scan finds the last free ones.
        let start = (self.random() % u64::from(span)) as u32;
        let tries = span.min(64);
        for k in 0..span {
            let offset = if k < tries {
                (self.random() % u64::from(span)) as u32
            } else {
                (start + k) % span
            };
            let mut port = lo as u32 + offset;
            if even && port % 2 == 1 {
                port -= 1;
                if port < lo as u32 {
                    continue;
                }
            }
            let port = port as u16;
            if let Ok(s) = Self::bind(ip, port) {
                return Some((s, port));
            }
        }
        None
    }

    fn register(&mut self, id: RelayId, sock: std::net::UdpSocket) -> Result<(), OpenError> {
        let mut sock = UdpSocket::from_std(sock);
        self.registry
            .register(
                &mut sock,
                Token(RELAY_BASE + id.index()),
                Interest::READABLE,
            )
            .map_err(|_| OpenError::Failed)?;
        let i = id.index();
        if self.sockets.len() <= i {
            self.sockets.resize_with(i + 1, || None);
        }
        self.sockets[i] = Some(sock);
        Ok(())
    }
}

impl RelaySockets for RelayTable {
    fn open(
        &mut self,
        id: RelayId,
        ip: IpAddr,
        request: PortRequest,
        dont_fragment: bool,
    ) -> Result<Opened, OpenError> {
        let (sock, port, reservation) = match request {
            PortRequest::Any => {
                let (s, p) = self.pick(ip, false).ok_or(OpenError::Exhausted)?;
                (s, p, None)
            }
            PortRequest::Even { reserve_next } => {
                let mut found = None;
                for _ in 0..32 {
                    let (s, p) = self.pick(ip, true).ok_or(OpenError::Exhausted)?;
                    if !reserve_next {
                        found = Some((s, p, None));
                        break;
                    }
                    if p < self.ports.1
                        && let Ok(next) = Self::bind(ip, p + 1)
                    {
                        let token = self.random();
                        lock(&self.reservations).insert(token, next);
                        found = Some((s, p, Some(token)));
                        break;
                    }
                }
                found.ok_or(OpenError::Exhausted)?
            }
            PortRequest::Reserved(token) => {
                let s = lock(&self.reservations)
                    .remove(&token)
                    .ok_or(OpenError::NoReservation)?;
                let p = s.local_addr().map_err(|_| OpenError::Failed)?.port();
                (s, p, None)
            }
        };
        if dont_fragment {
            // Best effort: DONT-FRAGMENT asks for DF on relayed packets.
            let _ = crate::udp_batch::set_dont_fragment(&sock, ip.is_ipv6());
        }
        self.register(id, sock)?;
        Ok(Opened { port, reservation })
    }

    fn close(&mut self, id: RelayId) {
        if self.to_peers_relay == Some(id) {
            self.flush();
        }
        if let Some(slot) = self.sockets.get_mut(id.index())
            && let Some(mut sock) = slot.take()
        {
            let _ = self.registry.deregister(&mut sock);
        }
    }

    fn release_reservation(&mut self, token: u64) {
        lock(&self.reservations).remove(&token);
    }
}

fn now(start: Instant) -> Now {
    Now {
        millis: start.elapsed().as_millis() as u64,
        unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    }
}

/// Flushes one listener's send batch; a full socket buffer drops the rest (counted).
fn flush(listener: &mut Listener, shared: &Shared) {
    let mut start = 0;
    while start < listener.send.len() {
        match send_batch(&listener.sock, &listener.send, start) {
            Ok(p) => {
                if p.failed > 0 {
                    shared
                        .metrics
                        .udp_send_errors
                        .fetch_add(p.failed as u64, Ordering::Relaxed);
                }
                start = p.next;
            }
            Err(e) => {
                tracing::debug!(error = %e, "UDP send failed");
                shared
                    .metrics
                    .udp_send_errors
                    .fetch_add((listener.send.len() - start) as u64, Ordering::Relaxed);
                break;
            }
        }
    }
    listener.send.clear();
}

impl Shard {
    fn run(mut self) {
        let _guard = ExitGuard {
            index: self.index,
            shared: self.shared.clone(),
            stop: self.stop.clone(),
        };
        let mut events = Events::with_capacity(256);
        let mut recv = RecvBatch::new(BATCH, MAX_DATAGRAM);
        let mut out = Vec::with_capacity(MAX_REPLY);
        // Sockets that still had data after their fair share: served again before blocking.
        let mut again: Vec<Token> = Vec::new();
        let mut next: Vec<Token> = Vec::new();
        let mut tokens: Vec<Token> = Vec::new();
        let mut last_publish = Instant::now();
        let mut draining = false;
        while !self.stop.load(Ordering::Relaxed) {
            let now_t = now(self.start);
            let timeout = if again.is_empty() {
                let mut t = POLL_INTERVAL;
                if let Some(at) = self.core.poll_timeout() {
                    t = t.min(Duration::from_millis(at.saturating_sub(now_t.millis)));
                }
                t
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(error = %e, "event loop failed");
                    return;
                }
                continue;
            }
            // Read after the wait, so the datagrams that ended it already see a drain that
            // began meanwhile (read before, an Allocate could slip in up to a poll interval
            // after /readyz said draining).
            let d = self.shared.draining.load(Ordering::Relaxed);
            if d != draining {
                draining = d;
                self.core.set_draining(d);
            }
            let now_t = now(self.start);
            next.clear();
            // `tokens` is reused across passes: no allocation per pass.
            tokens.clear();
            tokens.extend(events.iter().map(|e| e.token()));
            tokens.append(&mut again);
            for &token in &tokens {
                let more = match token {
                    WAKER => {
                        self.commands(now_t, &mut out);
                        false
                    }
                    Token(i) if i < RELAY_BASE => {
                        self.drain_listener(i, now_t, &mut recv, &mut out)
                    }
                    Token(i) => match RelayId::from_index(i - RELAY_BASE) {
                        Some(id) => self.drain_relay(id, now_t, &mut recv, &mut out),
                        None => false,
                    },
                };
                if more && !next.contains(&token) {
                    next.push(token);
                }
            }
            std::mem::swap(&mut again, &mut next);
            if self
                .core
                .poll_timeout()
                .is_some_and(|at| at <= now_t.millis)
            {
                self.core.handle_timeout(now_t, &mut self.relays);
            }
            // Counters first: a client that reads /metrics right after its reply sees it counted.
            self.counters.flush(&self.shared.metrics);
            for l in &mut self.listeners {
                if !l.send.is_empty() {
                    flush(l, &self.shared);
                }
            }
            self.relays.flush();
            if last_publish.elapsed() >= POLL_INTERVAL {
                self.publish();
                last_publish = Instant::now();
            }
        }
        self.counters.flush(&self.shared.metrics);
        self.publish();
    }

    fn publish(&mut self) {
        self.snapshot.stats = self.core.stats().clone();
        self.snapshot.peer_send_errors = self.relays.send_errors;
        self.snapshot.allocations = self.core.allocations();
        let mut snaps = self
            .shared
            .metrics
            .shards
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(s) = snaps.get_mut(self.index) {
            *s = self.snapshot.clone();
        }
    }

    /// Which listener sends to a client that talks to `local`.
    fn listener_for(&self, local: SocketAddr) -> Option<usize> {
        self.listeners
            .iter()
            .position(|l| l.addr == local)
            .or_else(|| {
                self.listeners.iter().position(|l| {
                    l.wildcard
                        && l.addr.port() == local.port()
                        && l.addr.is_ipv6() == local.is_ipv6()
                })
            })
    }

    fn send_to_client(&mut self, client: ClientKey, bytes: &[u8]) {
        let Some(i) = self.listener_for(client.local) else {
            self.shared
                .metrics
                .udp_send_errors
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let l = &mut self.listeners[i];
        if l.send.is_full() {
            flush(l, &self.shared);
        }
        let src = l.wildcard.then(|| client.local.ip());
        if !l.send.push(client.remote, src, bytes) {
            self.shared
                .metrics
                .udp_send_errors
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a Send indication (or dropped TURN message) in the STUN message metrics, the
    /// same on every transport; ChannelData (no STUN method) is counted by the core only.
    fn count_indication(
        &mut self,
        transport: Transport,
        message: Option<(u16, turnpike_proto::Class)>,
    ) {
        if message.is_some() {
            self.counters.count(
                transport,
                &Outcome {
                    message,
                    action: Action::Consumed,
                },
            );
        }
    }

    fn send_to_peer(&mut self, relay: RelayId, peer: SocketAddr, payload: &[u8]) {
        self.relays.queue(relay, peer, payload);
    }

    fn drain_listener(
        &mut self,
        index: usize,
        now_t: Now,
        recv: &mut RecvBatch,
        out: &mut Vec<u8>,
    ) -> bool {
        for _ in 0..FAIR_BATCHES {
            let Some(l) = self.listeners.get(index) else {
                return false;
            };
            let (bound, wildcard) = (l.addr, l.wildcard);
            match recv_batch(&l.sock, recv) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors surface here on some kernels; they concern one peer.
                    tracing::debug!(error = %e, "UDP receive error");
                    return false;
                }
            }
            let full = recv.len() == recv.capacity();
            for (meta, data) in recv.iter() {
                if meta.truncated {
                    self.counters.drop(Transport::Udp, DropReason::Oversize);
                    continue;
                }
                let local = match (wildcard, meta.dst_ip) {
                    (true, Some(ip)) => SocketAddr::new(ip, bound.port()),
                    _ => bound,
                };
                out.clear();
                let outcome = self.core.handle_client(
                    Incoming {
                        transport: Transport::Udp,
                        local,
                        remote: meta.src,
                        data,
                    },
                    now_t,
                    &mut self.relays,
                    out,
                );
                match outcome.action {
                    ClientAction::Stun(action) => {
                        self.counters.count(
                            Transport::Udp,
                            &Outcome {
                                message: outcome.message,
                                action,
                            },
                        );
                        if let Action::Reply { from, to, .. } = action {
                            if from == local {
                                self.send_to_client(
                                    ClientKey {
                                        transport: Transport::Udp,
                                        local,
                                        remote: to,
                                    },
                                    out,
                                );
                            } else {
                                self.send_from_sibling(from, to, out);
                            }
                        }
                    }
                    ClientAction::ToPeer {
                        relay,
                        peer,
                        payload,
                    } => {
                        self.count_indication(Transport::Udp, outcome.message);
                        if let Some(p) = data.get(payload) {
                            self.send_to_peer(relay, peer, p);
                        }
                    }
                    ClientAction::Drop(_) => self.count_indication(Transport::Udp, outcome.message),
                }
            }
            if !full {
                return false;
            }
        }
        true
    }

    /// RFC 5780 CHANGE-REQUEST: answer from a sibling socket (rare path).
    fn send_from_sibling(&mut self, from: SocketAddr, to: SocketAddr, bytes: &[u8]) {
        let ok = self
            .listeners
            .iter()
            .find(|l| l.addr == from)
            .is_some_and(|l| l.sock.send_to(bytes, to).is_ok());
        if !ok {
            self.shared
                .metrics
                .udp_send_errors
                .fetch_add(1, Ordering::Relaxed);
        }
    }

    fn drain_relay(
        &mut self,
        id: RelayId,
        now_t: Now,
        recv: &mut RecvBatch,
        out: &mut Vec<u8>,
    ) -> bool {
        for _ in 0..FAIR_BATCHES {
            let Some(Some(sock)) = self.relays.sockets.get(id.index()) else {
                return false;
            };
            match recv_batch(sock, recv) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "relay receive error");
                    return false;
                }
            }
            let full = recv.len() == recv.capacity();
            for (meta, data) in recv.iter() {
                if meta.truncated || data.len() > MAX_PEER_DATAGRAM {
                    // Too large to relay in one client datagram.
                    self.snapshot.peer_oversize += 1;
                    continue;
                }
                out.clear();
                match self.core.handle_peer(id, meta.src, data, now_t, out) {
                    PeerAction::ToClient { client, .. } => match client.transport {
                        Transport::Udp => self.send_to_client(client, out),
                        Transport::Tcp => self.send_to_stream(client, out),
                    },
                    PeerAction::Drop(_) => {}
                }
            }
            if !full {
                return false;
            }
        }
        true
    }

    fn send_to_stream(&mut self, client: ClientKey, bytes: &[u8]) {
        if let Some(tx) = self.streams.get(&client)
            && tx.try_send(bytes.to_vec()).is_err()
        {
            self.snapshot.stream_queue_drops += 1;
        }
    }

    /// Serves the messages of TCP/TLS clients, at most [`COMMAND_BATCH`] per wake-up so UDP
    /// traffic is not starved.
    fn commands(&mut self, now_t: Now, out: &mut Vec<u8>) {
        for _ in 0..COMMAND_BATCH {
            let cmd = match self.rx.try_recv() {
                Ok(c) => c,
                Err(_) => return,
            };
            match cmd {
                Command::Message {
                    client,
                    data,
                    reply,
                } => {
                    out.clear();
                    let outcome = self.core.handle_client(
                        Incoming {
                            transport: client.transport,
                            local: client.local,
                            remote: client.remote,
                            data: &data,
                        },
                        now_t,
                        &mut self.relays,
                        out,
                    );
                    match outcome.action {
                        ClientAction::Stun(action) => {
                            self.counters.count(
                                client.transport,
                                &Outcome {
                                    message: outcome.message,
                                    action,
                                },
                            );
                            if matches!(action, Action::Reply { .. })
                                && reply.try_send(out.clone()).is_err()
                            {
                                self.snapshot.stream_queue_drops += 1;
                            }
                        }
                        ClientAction::ToPeer {
                            relay,
                            peer,
                            payload,
                        } => {
                            self.count_indication(client.transport, outcome.message);
                            if let Some(p) = data.get(payload) {
                                self.send_to_peer(relay, peer, p);
                            }
                        }
                        ClientAction::Drop(_) => {
                            self.count_indication(client.transport, outcome.message)
                        }
                    }
                    if self.core.has_allocation(&client) {
                        if self.streams.len() < MAX_STREAM_CLIENTS
                            || self.streams.contains_key(&client)
                        {
                            self.streams.entry(client).or_insert(reply);
                        }
                    } else {
                        self.streams.remove(&client);
                    }
                }
                Command::Closed { client } => {
                    self.streams.remove(&client);
                    self.core.client_closed(client, &mut self.relays);
                }
            }
        }
        // The batch was full, so more may be queued: make sure the loop comes back to them
        // after serving the sockets.
        let _ = self.waker.wake();
    }
}

/// Most stream clients with allocations a shard tracks (the allocation quota bounds it first).
const MAX_STREAM_CLIENTS: usize = 1 << 20;

struct ExitGuard {
    index: usize,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if !self.stop.load(Ordering::Relaxed) {
            let why = if std::thread::panicking() {
                "panicked"
            } else {
                "stopped"
            };
            self.shared.fail(format!("UDP worker {} {why}", self.index));
        }
    }
}
