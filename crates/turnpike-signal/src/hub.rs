//! The hub core: connections, sessions, rooms, routing and limits, as a pure state machine.
//!
//! The WebSocket adapter calls [`Hub::handle_connect`], [`Hub::handle_message`],
//! [`Hub::handle_disconnect`] and [`Hub::handle_timeout`], and performs what
//! [`Hub::poll_output`] returns (send a text frame, close a socket). Time comes in as
//! [`Now`] (monotonic for windows, unix seconds for tokens and credentials); randomness as a
//! seed. Every map and queue is bounded by [`HubConfig`].
//!
//! # Timers
//!
//! Two kinds of deadline exist: the keepalive of each connection (its last received message
//! plus [`HubConfig::keepalive_timeout`]) and the resume window of each detached session (the
//! drop plus [`HubConfig::resume_window`]). They live in one ordered set of
//! `(deadline, key)`, so [`Hub::poll_timeout`] is its first entry and [`Hub::handle_timeout`]
//! only visits entries that are due: O(log n) per timer event, however many connections are
//! open.
//!
//! A message does not touch the set (it only records `last_rx`), so a busy connection costs
//! nothing per message. Its entry keeps the deadline it was given and, when it comes due, is
//! moved to the real deadline if the connection was active in the meantime — the way a timer
//! wheel re-arms. Each connection and each detached session therefore owns exactly one entry
//! ([`Hub::timer_entries`]); entries are removed when their connection closes or their
//! session resumes or ends. The price is that [`Hub::poll_timeout`] may be earlier than the
//! next real expiry (never later): calling [`Hub::handle_timeout`] then only re-arms.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::creds::IceConfig;
use crate::ids::IdGen;
use crate::jwt;
use crate::protocol::{self, ClientMsg, ErrorCode, ServerMsg, SessionInfo};

/// A connection, numbered by the adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// The current time, both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for windows and rates.
    pub mono: Instant,
    /// Unix seconds, for token expiry and TURN credentials.
    pub unix: u64,
}

/// Limits and policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Largest message in bytes.
    pub max_message_bytes: usize,
    /// Sustained messages per second per connection.
    pub messages_per_second: u32,
    /// Burst above the sustained rate.
    pub message_burst: u32,
    /// Peers per room.
    pub max_peers_per_room: usize,
    /// Rooms.
    pub max_rooms: usize,
    /// Open connections in total.
    pub max_connections: usize,
    /// Open connections per client IP.
    pub max_connections_per_ip: usize,
    /// Close a connection that sends nothing for this long.
    pub keepalive_timeout: Duration,
    /// Keep a dropped session this long for `resume`.
    pub resume_window: Duration,
    /// Messages kept per session for replay.
    pub replay_cap: usize,
    /// Consecutive errors after which a connection is closed.
    pub max_strikes: u32,
    /// With a secret, `join` needs an HS256 JWT signed with it.
    pub hub_secret: Option<Vec<u8>>,
    /// What `welcome` hands out.
    pub ice: IceConfig,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_message_bytes: 64 * 1024,
            messages_per_second: 50,
            message_burst: 100,
            max_peers_per_room: 16,
            max_rooms: 10_000,
            max_connections: 10_000,
            max_connections_per_ip: 64,
            keepalive_timeout: Duration::from_secs(60),
            resume_window: Duration::from_secs(30),
            replay_cap: 256,
            max_strikes: 20,
            hub_secret: None,
            ice: IceConfig {
                ttl_secs: 300,
                ..IceConfig::default()
            },
        }
    }
}

/// What the adapter must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a text frame.
    Send {
        /// To which connection.
        conn: ConnId,
        /// The JSON text.
        text: String,
    },
    /// Close the connection with a WebSocket close code.
    Close {
        /// Which connection.
        conn: ConnId,
        /// 1000 normal, 1008 policy violation, 1001 going away.
        code: u16,
        /// Short reason.
        reason: &'static str,
    },
}

/// Why a new connection is refused (before the WebSocket upgrade).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The total connection limit is reached.
    #[error("too many connections")]
    TooManyConnections,
    /// This IP has its maximum number of connections.
    #[error("too many connections from this address")]
    TooManyFromIp,
}

/// Counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Client messages by type (index into [`protocol::CLIENT_TYPES`]).
    pub messages: [u64; 8],
    /// Errors sent, by code (index into [`ErrorCode::ALL`]).
    pub errors: [u64; 13],
    /// Successful resumes.
    pub resumes: u64,
    /// Sessions whose resume window expired.
    pub expired_sessions: u64,
    /// Connections closed for misbehaviour or idleness.
    pub closed_by_hub: u64,
}

/// A per-connection token bucket for the message rate.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket.
    pub(crate) fn new(config: &HubConfig, now: Instant) -> Self {
        Bucket {
            tokens: f64::from(config.message_burst.max(1)),
            at: now,
        }
    }

    /// Takes a token if one is left.
    pub(crate) fn take(&mut self, config: &HubConfig, now: Instant) -> bool {
        let rate = f64::from(config.messages_per_second.max(1));
        let burst = f64::from(config.message_burst.max(1));
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

/// Checks a `join`'s room, peer id and token; returns the peer id to use (the token may bind
/// one), or the error to send.
pub(crate) fn check_join(
    config: &HubConfig,
    unix: u64,
    room: &str,
    peer_id: Option<String>,
    token: Option<String>,
) -> Result<Option<String>, (ErrorCode, String)> {
    if !valid_id(room) {
        return Err((
            ErrorCode::BadRequest,
            "room names are 1-64 characters of A-Z a-z 0-9 - _ .".to_owned(),
        ));
    }
    if peer_id.as_deref().is_some_and(|p| !valid_id(p)) {
        return Err((
            ErrorCode::BadRequest,
            "peer ids are 1-64 characters of A-Z a-z 0-9 - _ .".to_owned(),
        ));
    }
    let Some(secret) = &config.hub_secret else {
        return Ok(peer_id);
    };
    let Some(token) = token else {
        return Err((
            ErrorCode::Unauthorized,
            "this hub needs a token to join".to_owned(),
        ));
    };
    match jwt::verify(&token, secret, room, unix) {
        Ok(claims) => match (claims.peer_id, peer_id) {
            (Some(bound), Some(asked)) if bound != asked => Err((
                ErrorCode::Unauthorized,
                jwt::JwtError::WrongPeer.to_string(),
            )),
            (Some(bound), _) => Ok(Some(bound)),
            (None, asked) => Ok(asked),
        },
        Err(e) => Err((ErrorCode::Unauthorized, e.to_string())),
    }
}

struct Conn {
    /// The deadline of this connection's entry in [`Hub::timers`] (at or before
    /// `last_rx + keepalive_timeout`); `None` if it has none (a timeout too large to
    /// represent).
    timer_at: Option<Instant>,
    ip: IpAddr,
    /// The host name the client used to reach the hub (for `{host}` in ICE URLs).
    host: Option<String>,
    session: Option<String>,
    bucket: Bucket,
    last_rx: Instant,
    strikes: u32,
}

struct Session {
    peer_id: String,
    room: String,
    conn: Option<ConnId>,
    detached_at: Option<Instant>,
    next_seq: u64,
    replay: VecDeque<(u64, String)>,
    /// The highest seq dropped from the replay buffer.
    dropped_up_to: u64,
}

/// What a timer entry is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKey {
    /// The keepalive of a connection.
    Conn(ConnId),
    /// The resume window of a detached session (by session id).
    Session(String),
}

/// The hub. See the module documentation.
pub struct Hub {
    config: HubConfig,
    /// Every pending deadline, earliest first: one entry per connection (keepalive, possibly
    /// stale-early) and one per detached session (resume window).
    timers: BTreeSet<(Instant, TimerKey)>,
    conns: HashMap<ConnId, Conn>,
    per_ip: HashMap<IpAddr, usize>,
    sessions: HashMap<String, Session>,
    /// room -> peer id -> session id (sorted, so presence lists are stable).
    rooms: HashMap<String, BTreeMap<String, String>>,
    out: VecDeque<Output>,
    ids: IdGen,
    stats: Stats,
}

/// The rate, size and syntax checks every client message passes first.
pub(crate) fn admit(
    config: &HubConfig,
    bucket: &mut Bucket,
    now: Instant,
    text: &str,
) -> Result<ClientMsg, (ErrorCode, String)> {
    if !bucket.take(config, now) {
        return Err((
            ErrorCode::RateLimited,
            "too many messages; slow down".to_owned(),
        ));
    }
    if text.len() > config.max_message_bytes {
        let max = config.max_message_bytes;
        return Err((
            ErrorCode::MessageTooLarge,
            format!("messages are limited to {max} bytes"),
        ));
    }
    protocol::parse(text)
}

fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Hub {
    /// A hub with `config`; `seed` keys session and peer id generation. For tests: a server
    /// uses [`Hub::with_key`] with 32 random bytes, since session ids must be unguessable.
    pub fn new(config: HubConfig, seed: u64) -> Self {
        Self::with_ids(config, IdGen::from_seed(seed))
    }

    /// A hub whose session and peer ids come from a generator keyed with `key` (pass 32
    /// bytes from the operating system's random source).
    pub fn with_key(config: HubConfig, key: [u8; 32]) -> Self {
        Self::with_ids(config, IdGen::new(key))
    }

    fn with_ids(config: HubConfig, ids: IdGen) -> Self {
        Hub {
            config,
            timers: BTreeSet::new(),
            conns: HashMap::new(),
            per_ip: HashMap::new(),
            sessions: HashMap::new(),
            rooms: HashMap::new(),
            out: VecDeque::new(),
            ids,
            stats: Stats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Open connections, rooms, and sessions (joined peers, connected or within their
    /// resume window).
    pub fn gauges(&self) -> (usize, usize, usize) {
        (self.conns.len(), self.rooms.len(), self.sessions.len())
    }

    /// Pending timer entries: one per open connection and one per detached session, however
    /// many messages arrive (see the module documentation).
    pub fn timer_entries(&self) -> usize {
        self.timers.len()
    }

    /// When the resume window of a session detached at `at` ends.
    fn session_deadline(&self, at: Instant) -> Option<Instant> {
        at.checked_add(self.config.resume_window)
    }

    /// A new connection from `ip`. On error the adapter refuses it (HTTP 503/429).
    pub fn handle_connect(
        &mut self,
        now: Now,
        conn: ConnId,
        ip: IpAddr,
    ) -> Result<(), ConnectError> {
        self.handle_connect_from(now, conn, ip, None)
    }

    /// Like [`Hub::handle_connect`], remembering the host name the client used (its HTTP
    /// `Host`, without port), which replaces `{host}` in the ICE URLs it is given.
    pub fn handle_connect_from(
        &mut self,
        now: Now,
        conn: ConnId,
        ip: IpAddr,
        host: Option<String>,
    ) -> Result<(), ConnectError> {
        if self.conns.len() >= self.config.max_connections {
            return Err(ConnectError::TooManyConnections);
        }
        let n = self.per_ip.get(&ip).copied().unwrap_or(0);
        if n >= self.config.max_connections_per_ip {
            return Err(ConnectError::TooManyFromIp);
        }
        self.per_ip.insert(ip, n + 1);
        let timer_at = now.mono.checked_add(self.config.keepalive_timeout);
        if let Some(at) = timer_at {
            self.timers.insert((at, TimerKey::Conn(conn)));
        }
        let old = self.conns.insert(
            conn,
            Conn {
                timer_at,
                ip,
                host,
                session: None,
                bucket: Bucket::new(&self.config, now.mono),
                last_rx: now.mono,
                strikes: 0,
            },
        );
        // An adapter that reuses a live id replaces that connection; drop its timer entry
        // unless it is the one just inserted.
        if let Some(at) = old.and_then(|o| o.timer_at) {
            if Some(at) != timer_at {
                self.timers.remove(&(at, TimerKey::Conn(conn)));
            }
        }
        Ok(())
    }

    /// The socket closed (or the adapter gave up on it). Without a `leave`, a joined session
    /// enters its resume window.
    pub fn handle_disconnect(&mut self, now: Now, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Some(at) = c.timer_at {
            self.timers.remove(&(at, TimerKey::Conn(conn)));
        }
        if let Some(n) = self.per_ip.get_mut(&c.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&c.ip);
            }
        }
        if let Some(sid) = c.session {
            let deadline = self.session_deadline(now.mono);
            if let Some(s) = self.sessions.get_mut(&sid) {
                if s.conn == Some(conn) {
                    s.conn = None;
                    s.detached_at = Some(now.mono);
                    if let Some(at) = deadline {
                        self.timers.insert((at, TimerKey::Session(sid)));
                    }
                }
            }
        }
    }

    /// A text message from `conn`.
    pub fn handle_message(&mut self, now: Now, conn: ConnId, text: &str) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_rx = now.mono;
        let msg = match admit(&self.config, &mut c.bucket, now.mono, text) {
            Ok(m) => m,
            Err((code, message)) => return self.error(conn, code, message),
        };
        self.stats.messages[msg.type_index()] += 1;
        let ok = match msg {
            ClientMsg::Join {
                room,
                peer_id,
                token,
            } => self.join(now, conn, room, peer_id, token),
            ClientMsg::Offer { to, sdp } => {
                self.relay(conn, &to, |from| ServerMsg::Offer { from, sdp })
            }
            ClientMsg::Answer { to, sdp } => {
                self.relay(conn, &to, |from| ServerMsg::Answer { from, sdp })
            }
            ClientMsg::Candidate { to, candidate } => {
                self.relay(conn, &to, |from| ServerMsg::Candidate { from, candidate })
            }
            ClientMsg::Bye { to } => self.relay(conn, &to, |from| ServerMsg::Bye { from }),
            ClientMsg::Leave => self.leave(conn),
            ClientMsg::Ping => {
                self.reply(conn, ServerMsg::Pong);
                true
            }
            ClientMsg::Resume { session, last_seq } => self.resume(now, conn, &session, last_seq),
        };
        if ok {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.strikes = 0;
            }
        }
    }

    /// A frame the protocol does not use arrived (binary data): answered with `bad-request`.
    pub fn handle_binary(&mut self, now: Now, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.last_rx = now.mono;
        self.error(
            conn,
            ErrorCode::BadRequest,
            "binary frames are not part of the protocol; send JSON text".to_owned(),
        );
    }

    /// Expires resume windows and idle connections whose deadline is at or before `now`.
    ///
    /// Visits only the due entries of the timer set, in deadline order (ties by connection,
    /// then session id); an entry made stale by later activity is re-armed at the real
    /// deadline. Each entry is visited at most once per call, since re-armed ones are due
    /// after `now`.
    pub fn handle_timeout(&mut self, now: Now) {
        while let Some((at, _)) = self.timers.first() {
            if *at > now.mono {
                break;
            }
            // A `first` entry exists, so `pop_first` returns it.
            let Some((_, key)) = self.timers.pop_first() else {
                break;
            };
            match key {
                TimerKey::Conn(conn) => {
                    let keepalive = self.config.keepalive_timeout;
                    let Some(c) = self.conns.get_mut(&conn) else {
                        continue;
                    };
                    c.timer_at = None;
                    match c.last_rx.checked_add(keepalive) {
                        Some(due) if due <= now.mono => {
                            self.stats.closed_by_hub += 1;
                            self.out.push_back(Output::Close {
                                conn,
                                code: 1001,
                                reason: "keepalive timeout",
                            });
                            self.handle_disconnect(now, conn);
                        }
                        Some(due) => {
                            // Active since the entry was made: re-arm at the real deadline.
                            c.timer_at = Some(due);
                            self.timers.insert((due, TimerKey::Conn(conn)));
                        }
                        None => {}
                    }
                }
                TimerKey::Session(sid) => {
                    let due = self
                        .sessions
                        .get(&sid)
                        .and_then(|s| s.detached_at)
                        .and_then(|d| self.session_deadline(d));
                    if due.is_some_and(|d| d <= now.mono) {
                        self.stats.expired_sessions += 1;
                        self.end_session(&sid);
                    }
                }
            }
        }
    }

    /// The next thing to do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Hub::handle_timeout`] should next run: the earliest timer entry, O(log n).
    ///
    /// Never later than the next expiry, but possibly earlier (a connection that was active
    /// since its entry was made); running [`Hub::handle_timeout`] then only re-arms entries.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Sends `msg` to the session of `conn` (with seq) or, before a join, directly.
    fn reply(&mut self, conn: ConnId, msg: ServerMsg) {
        match self.conns.get(&conn).and_then(|c| c.session.clone()) {
            Some(sid) => self.send_session(&sid, &msg),
            None => self.out.push_back(Output::Send {
                conn,
                text: msg.to_text(None),
            }),
        }
    }

    fn error(&mut self, conn: ConnId, code: ErrorCode, message: String) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.stats.errors[i] += 1;
        }
        self.reply(conn, ServerMsg::Error { code, message });
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.strikes += 1;
        if c.strikes >= self.config.max_strikes {
            self.stats.closed_by_hub += 1;
            self.out.push_back(Output::Close {
                conn,
                code: 1008,
                reason: "too many errors",
            });
        }
    }

    /// Appends to the session's stream: next seq, replay buffer, and the socket if attached.
    fn send_session(&mut self, sid: &str, msg: &ServerMsg) {
        let cap = self.config.replay_cap.max(1);
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        let seq = s.next_seq;
        s.next_seq += 1;
        let text = msg.to_text(Some(seq));
        // `welcome` and `resumed` are not replayed: a resume answers with a fresh `resumed`.
        if !matches!(msg, ServerMsg::Welcome(_) | ServerMsg::Resumed { .. }) {
            if s.replay.len() >= cap {
                if let Some((dropped, _)) = s.replay.pop_front() {
                    s.dropped_up_to = dropped;
                }
            }
            s.replay.push_back((seq, text.clone()));
        }
        if let Some(conn) = s.conn {
            self.out.push_back(Output::Send { conn, text });
        }
    }

    fn session_info(&self, sid: &str, unix: u64) -> Option<SessionInfo> {
        let s = self.sessions.get(sid)?;
        let peers = self
            .rooms
            .get(&s.room)
            .map(|r| r.keys().filter(|p| **p != s.peer_id).cloned().collect())
            .unwrap_or_default();
        Some(SessionInfo {
            peer_id: s.peer_id.clone(),
            room: s.room.clone(),
            peers,
            ice_servers: self.config.ice.ice_servers_for(
                &s.peer_id,
                unix,
                s.conn
                    .and_then(|c| self.conns.get(&c))
                    .and_then(|c| c.host.as_deref()),
            ),
            session: sid.to_owned(),
        })
    }

    fn join(
        &mut self,
        now: Now,
        conn: ConnId,
        room: String,
        peer_id: Option<String>,
        token: Option<String>,
    ) -> bool {
        if self.conns.get(&conn).is_some_and(|c| c.session.is_some()) {
            self.error(
                conn,
                ErrorCode::AlreadyJoined,
                "this connection is already in a room; leave first".to_owned(),
            );
            return false;
        }
        let peer_id = match check_join(&self.config, now.unix, &room, peer_id, token) {
            Ok(p) => p,
            Err((code, message)) => {
                self.error(conn, code, message);
                return false;
            }
        };
        let room_peers = self.rooms.get(&room).map_or(0, BTreeMap::len);
        if room_peers == 0 && self.rooms.len() >= self.config.max_rooms {
            self.error(
                conn,
                ErrorCode::TooManyRooms,
                "the hub has its maximum number of rooms".to_owned(),
            );
            return false;
        }
        if room_peers >= self.config.max_peers_per_room {
            let max = self.config.max_peers_per_room;
            self.error(
                conn,
                ErrorCode::RoomFull,
                format!("the room has its maximum of {max} peers"),
            );
            return false;
        }
        let peer_id = match peer_id {
            Some(p) => {
                if self.rooms.get(&room).is_some_and(|r| r.contains_key(&p)) {
                    self.error(
                        conn,
                        ErrorCode::PeerIdTaken,
                        format!("peer id `{p}` is in use in this room"),
                    );
                    return false;
                }
                p
            }
            None => loop {
                let p = format!("p-{}", self.ids.hex(4));
                if !self.rooms.get(&room).is_some_and(|r| r.contains_key(&p)) {
                    break p;
                }
            },
        };
        let sid = self.ids.hex(16);
        self.sessions.insert(
            sid.clone(),
            Session {
                peer_id: peer_id.clone(),
                room: room.clone(),
                conn: Some(conn),
                detached_at: None,
                next_seq: 1,
                replay: VecDeque::new(),
                dropped_up_to: 0,
            },
        );
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(sid.clone());
        }
        let others: Vec<String> = self
            .rooms
            .get(&room)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default();
        self.rooms
            .entry(room)
            .or_default()
            .insert(peer_id.clone(), sid.clone());
        if let Some(info) = self.session_info(&sid, now.unix) {
            self.send_session(&sid, &ServerMsg::Welcome(info));
        }
        for other in others {
            self.send_session(
                &other,
                &ServerMsg::PeerJoined {
                    peer_id: peer_id.clone(),
                },
            );
        }
        true
    }

    fn relay(&mut self, conn: ConnId, to: &str, make: impl FnOnce(String) -> ServerMsg) -> bool {
        let Some(sid) = self.conns.get(&conn).and_then(|c| c.session.clone()) else {
            self.error(conn, ErrorCode::NotJoined, "join a room first".to_owned());
            return false;
        };
        let Some((from, room)) = self
            .sessions
            .get(&sid)
            .map(|s| (s.peer_id.clone(), s.room.clone()))
        else {
            return false;
        };
        let target = self.rooms.get(&room).and_then(|r| r.get(to)).cloned();
        match target {
            Some(t) if t != sid => {
                self.send_session(&t, &make(from));
                true
            }
            _ => {
                self.error(
                    conn,
                    ErrorCode::PeerNotFound,
                    format!("no peer `{to}` in this room"),
                );
                false
            }
        }
    }

    fn leave(&mut self, conn: ConnId) -> bool {
        let Some(sid) = self.conns.get_mut(&conn).and_then(|c| c.session.take()) else {
            self.error(conn, ErrorCode::NotJoined, "not in a room".to_owned());
            return false;
        };
        self.end_session(&sid);
        true
    }

    /// Removes a session from its room and tells the others.
    fn end_session(&mut self, sid: &str) {
        let Some(s) = self.sessions.remove(sid) else {
            return;
        };
        if let Some(at) = s.detached_at.and_then(|d| self.session_deadline(d)) {
            self.timers.remove(&(at, TimerKey::Session(sid.to_owned())));
        }
        if let Some(c) = s.conn.and_then(|c| self.conns.get_mut(&c)) {
            c.session = None;
        }
        let mut others = Vec::new();
        if let Some(r) = self.rooms.get_mut(&s.room) {
            r.remove(&s.peer_id);
            others = r.values().cloned().collect();
            if r.is_empty() {
                self.rooms.remove(&s.room);
            }
        }
        for o in others {
            self.send_session(
                &o,
                &ServerMsg::PeerLeft {
                    peer_id: s.peer_id.clone(),
                },
            );
        }
    }

    fn resume(&mut self, now: Now, conn: ConnId, session: &str, last_seq: u64) -> bool {
        if self.conns.get(&conn).is_some_and(|c| c.session.is_some()) {
            self.error(
                conn,
                ErrorCode::AlreadyJoined,
                "this connection is already in a room".to_owned(),
            );
            return false;
        }
        let Some(s) = self.sessions.get_mut(session) else {
            self.error(
                conn,
                ErrorCode::SessionNotFound,
                "no such session (its resume window may have expired); join again".to_owned(),
            );
            return false;
        };
        // Take over from an old socket that has not noticed it is dead yet.
        if let Some(old) = s.conn.replace(conn) {
            if old != conn {
                self.out.push_back(Output::Close {
                    conn: old,
                    code: 1000,
                    reason: "resumed elsewhere",
                });
                if let Some(c) = self.conns.get_mut(&old) {
                    c.session = None;
                }
            }
        }
        let detached = s.detached_at.take();
        let complete = last_seq >= s.dropped_up_to;
        let replay: Vec<String> = s
            .replay
            .iter()
            .filter(|(seq, _)| *seq > last_seq)
            .map(|(_, t)| t.clone())
            .collect();
        if let Some(at) = detached.and_then(|d| self.session_deadline(d)) {
            self.timers
                .remove(&(at, TimerKey::Session(session.to_owned())));
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.session = Some(session.to_owned());
        }
        self.stats.resumes += 1;
        if let Some(info) = self.session_info(session, now.unix) {
            self.send_session(
                session,
                &ServerMsg::Resumed {
                    info,
                    replay_complete: complete,
                },
            );
        }
        for text in replay {
            self.out.push_back(Output::Send { conn, text });
        }
        true
    }
}
