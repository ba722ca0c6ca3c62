//! The hub's cluster mode: many nodes share rooms through a store (Redis), as pure state
//! machines.
//!
//! In cluster mode no node owns a room. Rooms, sessions, sequence numbers and the replay
//! buffers live in the store, which a node changes only through atomic [`Request`]s (one Lua
//! script each on Redis). A node keeps what is local to it: its WebSocket connections, each
//! with a [`ClusterConn`] (rate limit, size limit, parsing, token checks, strikes, keepalive,
//! and the session it is attached to), and a [`Sequencer`] per attached session that puts the
//! messages the store publishes to the node back in `seq` order.
//!
//! ```text
//! socket ─ text ─▶ ClusterConn::handle_message ─▶ Action::Request ─▶ store (atomic)
//!                                   ▲                                  │ publish
//!               ClusterConn::handle_reply ◀── Reply ◀─────────────────┘ to the owning node
//! node subscription ─ (sid, seq, text) ─▶ Sequencer ─▶ socket, in seq order
//! ```
//!
//! Every message to a session goes through the store, even between two peers on one node:
//! that is what gives one `seq` order per session and a replay buffer another node can
//! resume from. Replies that need no session (errors before a join, `unavailable`) go
//! straight to the socket without `seq`.
//!
//! A connection has at most one request in flight: the driver performs it and feeds the
//! [`Reply`] back before reading the next message, so a client's messages reach the store in
//! the order it sent them.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use crate::hub::{Bucket, HubConfig, Now, Stats, admit, check_join};
use crate::ids::IdGen;
use crate::protocol::{ClientMsg, ErrorCode, ServerMsg, SessionInfo};

/// An atomic change to the shared store, asked for by one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Create session `sid` for `peer_id` in `room` (creating the room), tell the others
    /// `peer-joined`, and take `seq` 1 for `welcome`.
    Join {
        /// The new session id.
        sid: String,
        /// Room name (checked).
        room: String,
        /// Peer id (checked; maybe generated).
        peer_id: String,
    },
    /// Append a message to the stream of peer `to`, in the room of session `sid`.
    Route {
        /// The sender's session.
        sid: String,
        /// Target peer id.
        to: String,
        /// The message as JSON without its closing brace; the store appends `,"seq":N}`.
        body: String,
    },
    /// Append a message to the sender's own stream (`pong`, `error`).
    Own {
        /// The session.
        sid: String,
        /// As in [`Request::Route`].
        body: String,
    },
    /// End session `sid` now (`leave`); the others get `peer-left`.
    Leave {
        /// The session.
        sid: String,
    },
    /// Attach session `sid` to this connection (taking it over from any other), take the
    /// next `seq` for `resumed`, and return the buffered messages after `last_seq`.
    Resume {
        /// The session.
        sid: String,
        /// The highest `seq` the client saw.
        last_seq: u64,
    },
}

/// The store's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Joined: `welcome` has `seq`; `peers` are the others in the room.
    Joined {
        /// The `seq` of `welcome`.
        seq: u64,
        /// The other peers, any order.
        peers: Vec<String>,
    },
    /// A join was refused: `room-full`, `too-many-rooms` or `peer-id-taken`.
    Refused(ErrorCode),
    /// A message was appended.
    Done,
    /// The target peer is not in the room.
    PeerNotFound,
    /// This connection's session no longer exists in the store (ended while this node was
    /// cut off, or taken over).
    SessionGone,
    /// Resumed.
    Resumed {
        /// Peer id of the session.
        peer_id: String,
        /// Its room.
        room: String,
        /// The `seq` of `resumed`.
        seq: u64,
        /// The other peers.
        peers: Vec<String>,
        /// Buffered messages after `last_seq`, in order, with their `seq`.
        replay: Vec<(u64, String)>,
        /// False if messages after `last_seq` had been dropped from the buffer.
        complete: bool,
    },
    /// `resume` named no live session.
    NoSession,
    /// The store could not be reached (or did not answer in time).
    Unavailable,
}

/// What the driver must do for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a text frame now (not part of a session stream: no `seq`).
    Send(String),
    /// Perform a request and feed its reply to [`ClusterConn::handle_reply`]. For `Join`
    /// and `Resume`, first start buffering deliveries for its session ([`Sequencer::new`]).
    Request(Request),
    /// The session is attached: send these (already sequenced) frames, then deliver the
    /// session's messages from `next_seq` on ([`Sequencer::start`]).
    Attach {
        /// The session.
        sid: String,
        /// Its peer id.
        peer_id: String,
        /// Its room.
        room: String,
        /// `welcome` or `resumed` plus the replay, in order.
        frames: Vec<String>,
        /// The first `seq` of the live stream.
        next_seq: u64,
    },
    /// Stop delivering this session's messages to this connection.
    Forget {
        /// The session.
        sid: String,
    },
    /// Close the connection.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Short reason.
        reason: &'static str,
    },
}

/// The session a connection is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Attached {
    sid: String,
    peer_id: String,
}

/// What a connection is waiting for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pending {
    None,
    /// A join; `generated` peer ids are retried on `peer-id-taken`.
    Join {
        sid: String,
        room: String,
        peer_id: String,
        generated: bool,
        tries: u8,
    },
    Resume {
        sid: String,
    },
    /// A message to peer `to`.
    Route {
        to: String,
    },
    /// An append to the own stream.
    Own,
    /// A leave.
    Leave,
}

/// One connection of a cluster node. See the module documentation.
#[derive(Debug)]
pub struct ClusterConn {
    host: Option<String>,
    bucket: Bucket,
    last_rx: Instant,
    strikes: u32,
    closed: bool,
    session: Option<Attached>,
    pending: Pending,
    ids: IdGen,
    out: VecDeque<Action>,
    stats: Stats,
}

/// The JSON of `msg` without its closing brace, for the store to append `seq` to.
pub fn body_of(msg: &ServerMsg) -> String {
    let mut t = msg.to_text(None);
    t.pop();
    t
}

impl ClusterConn {
    /// A new connection. `ids_key` keys its session and peer id generator (32 random bytes);
    /// `host` is the host name the client used (for `{host}` in ICE URLs).
    pub fn new(config: &HubConfig, now: Now, host: Option<String>, ids_key: [u8; 32]) -> Self {
        ClusterConn {
            host,
            bucket: Bucket::new(config, now.mono),
            last_rx: now.mono,
            strikes: 0,
            closed: false,
            session: None,
            pending: Pending::None,
            ids: IdGen::new(ids_key),
            out: VecDeque::new(),
            stats: Stats::default(),
        }
    }

    /// The attached session, if any (to detach it when the socket closes).
    pub fn session(&self) -> Option<&str> {
        self.session.as_ref().map(|a| a.sid.as_str())
    }

    /// Whether a request is in flight (the driver reads no message until it is answered).
    pub fn waiting(&self) -> bool {
        self.pending != Pending::None
    }

    /// The next action.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }

    /// Counters since the last call (the driver adds them to the node's).
    pub fn take_stats(&mut self) -> Stats {
        std::mem::take(&mut self.stats)
    }

    /// When the keepalive runs out.
    pub fn poll_timeout(&self, config: &HubConfig) -> Option<Instant> {
        self.last_rx.checked_add(config.keepalive_timeout)
    }

    /// Closes the connection if its keepalive ran out.
    pub fn handle_timeout(&mut self, config: &HubConfig, now: Now) {
        if !self.closed && self.poll_timeout(config).is_some_and(|t| t <= now.mono) {
            self.stats.closed_by_hub += 1;
            self.close(1001, "keepalive timeout");
        }
    }

    /// Another connection resumed session `sid`: if it is this one's, close without
    /// detaching it.
    pub fn taken_over(&mut self, sid: &str) {
        if self.session.as_ref().is_some_and(|a| a.sid == sid) {
            self.session = None;
            self.out.push_back(Action::Forget {
                sid: sid.to_owned(),
            });
            self.close(1000, "resumed elsewhere");
        }
    }

    /// Closes the connection (server shutting down, or messages were lost and the client
    /// must resume); the session stays resumable.
    pub fn shut(&mut self, code: u16, reason: &'static str) {
        self.close(code, reason);
    }

    /// The store no longer has this connection's session (its resume window ended while the
    /// node was cut off from the store): tell the client to join again.
    pub fn session_lost(&mut self, sid: &str) {
        if self.session.as_ref().is_some_and(|a| a.sid == sid) {
            self.session = None;
            self.out.push_back(Action::Forget {
                sid: sid.to_owned(),
            });
            let msg = ServerMsg::Error {
                code: ErrorCode::SessionNotFound,
                message: "your session ended while the hub was cut off from its store; join again"
                    .to_owned(),
            };
            self.count_error(ErrorCode::SessionNotFound);
            self.out.push_back(Action::Send(msg.to_text(None)));
        }
    }

    /// The driver could not deliver to this (slow) client: close, keeping the session for
    /// a resume.
    pub fn not_reading(&mut self) {
        self.close(1008, "not reading");
    }

    fn close(&mut self, code: u16, reason: &'static str) {
        if !self.closed {
            self.closed = true;
            self.out.push_back(Action::Close { code, reason });
        }
    }

    /// A binary frame: not part of the protocol.
    pub fn handle_binary(&mut self, config: &HubConfig, now: Now) {
        self.last_rx = now.mono;
        self.error(
            config,
            ErrorCode::BadRequest,
            "binary frames are not part of the protocol; send JSON text".to_owned(),
        );
    }

    /// A text message. Call only when [`ClusterConn::waiting`] is false.
    pub fn handle_message(
        &mut self,
        config: &HubConfig,
        now: Now,
        text: &str,
        random: &mut dyn FnMut() -> [u8; 32],
    ) {
        self.last_rx = now.mono;
        if self.closed {
            return;
        }
        let msg = match admit(config, &mut self.bucket, now.mono, text) {
            Ok(m) => m,
            Err((code, message)) => return self.error(config, code, message),
        };
        self.stats.messages[msg.type_index()] += 1;
        let attached = self.session.clone();
        match msg {
            ClientMsg::Join {
                room,
                peer_id,
                token,
            } => {
                if attached.is_some() {
                    return self.error(
                        config,
                        ErrorCode::AlreadyJoined,
                        "this connection is already in a room; leave first".to_owned(),
                    );
                }
                let peer_id = match check_join(config, now.unix, &room, peer_id, token) {
                    Ok(p) => p,
                    Err((code, message)) => return self.error(config, code, message),
                };
                // Fresh key material for each join: ids stay unguessable however long the
                // connection lives.
                self.ids = IdGen::new(random());
                let generated = peer_id.is_none();
                let peer_id = peer_id.unwrap_or_else(|| format!("p-{}", self.ids.hex(4)));
                let sid = self.ids.hex(16);
                self.request_join(sid, room, peer_id, generated, 0)
            }
            ClientMsg::Resume { session, last_seq } => {
                if attached.is_some() {
                    return self.error(
                        config,
                        ErrorCode::AlreadyJoined,
                        "this connection is already in a room".to_owned(),
                    );
                }
                // Session ids are hex; anything else cannot name one (and never reaches
                // the store's key space).
                if session.is_empty()
                    || session.len() > 64
                    || !session.bytes().all(|b| b.is_ascii_hexdigit())
                {
                    return self.error(
                        config,
                        ErrorCode::SessionNotFound,
                        "no such session (its resume window may have expired); join again"
                            .to_owned(),
                    );
                }
                self.pending = Pending::Resume {
                    sid: session.clone(),
                };
                self.out.push_back(Action::Request(Request::Resume {
                    sid: session,
                    last_seq,
                }));
            }
            ClientMsg::Ping => {
                // A well-formed message: ends a run of errors, as on a single node.
                self.strikes = 0;
                self.push_own(&ServerMsg::Pong)
            }
            ClientMsg::Leave => {
                let Some(a) = attached else {
                    return self.error(config, ErrorCode::NotJoined, "not in a room".to_owned());
                };
                self.pending = Pending::Leave;
                self.out
                    .push_back(Action::Request(Request::Leave { sid: a.sid }));
            }
            ClientMsg::Offer { to, sdp } => {
                self.route(config, to, |from| ServerMsg::Offer { from, sdp });
            }
            ClientMsg::Answer { to, sdp } => {
                self.route(config, to, |from| ServerMsg::Answer { from, sdp });
            }
            ClientMsg::Candidate { to, candidate } => {
                self.route(config, to, |from| ServerMsg::Candidate { from, candidate });
            }
            ClientMsg::Bye { to } => self.route(config, to, |from| ServerMsg::Bye { from }),
        }
    }

    /// Asks the store to append `make(own peer id)` to peer `to`'s stream.
    fn route(&mut self, config: &HubConfig, to: String, make: impl FnOnce(String) -> ServerMsg) {
        let Some(a) = self.session.clone() else {
            return self.error(config, ErrorCode::NotJoined, "join a room first".to_owned());
        };
        if to == a.peer_id {
            return self.error(
                config,
                ErrorCode::PeerNotFound,
                format!("no peer `{to}` in this room"),
            );
        }
        let body = body_of(&make(a.peer_id));
        self.pending = Pending::Route { to: to.clone() };
        self.out.push_back(Action::Request(Request::Route {
            sid: a.sid,
            to,
            body,
        }));
    }

    fn request_join(
        &mut self,
        sid: String,
        room: String,
        peer_id: String,
        generated: bool,
        tries: u8,
    ) {
        self.pending = Pending::Join {
            sid: sid.clone(),
            room: room.clone(),
            peer_id: peer_id.clone(),
            generated,
            tries,
        };
        self.out
            .push_back(Action::Request(Request::Join { sid, room, peer_id }));
    }

    /// The store's reply to the request in flight.
    pub fn handle_reply(&mut self, config: &HubConfig, now: Now, reply: Reply) {
        let pending = std::mem::replace(&mut self.pending, Pending::None);
        match (pending, reply) {
            (
                Pending::Join {
                    sid, room, peer_id, ..
                },
                Reply::Joined { seq, mut peers },
            ) => {
                peers.sort();
                peers.retain(|p| *p != peer_id);
                let info = SessionInfo {
                    ice_servers: config.ice.ice_servers_for(
                        &peer_id,
                        now.unix,
                        self.host.as_deref(),
                    ),
                    peer_id: peer_id.clone(),
                    room: room.clone(),
                    peers,
                    session: sid.clone(),
                };
                self.strikes = 0;
                self.session = Some(Attached {
                    sid: sid.clone(),
                    peer_id: peer_id.clone(),
                });
                self.out.push_back(Action::Attach {
                    sid,
                    peer_id,
                    room,
                    frames: vec![ServerMsg::Welcome(info).to_text(Some(seq))],
                    next_seq: seq + 1,
                });
            }
            (
                Pending::Join {
                    sid,
                    room,
                    generated: true,
                    tries,
                    ..
                },
                Reply::Refused(ErrorCode::PeerIdTaken),
            ) if tries < 4 => {
                // A generated id collided: try another.
                self.out.push_back(Action::Forget { sid });
                let peer_id = format!("p-{}", self.ids.hex(4));
                let sid = self.ids.hex(16);
                self.request_join(sid, room, peer_id, true, tries + 1);
            }
            (Pending::Join { sid, peer_id, .. }, other) => {
                self.out.push_back(Action::Forget { sid });
                let (code, message) = match other {
                    Reply::Refused(ErrorCode::RoomFull) => (
                        ErrorCode::RoomFull,
                        format!(
                            "the room has its maximum of {} peers",
                            config.max_peers_per_room
                        ),
                    ),
                    Reply::Refused(ErrorCode::TooManyRooms) => (
                        ErrorCode::TooManyRooms,
                        "the hub has its maximum number of rooms".to_owned(),
                    ),
                    Reply::Refused(ErrorCode::PeerIdTaken) => (
                        ErrorCode::PeerIdTaken,
                        format!("peer id `{peer_id}` is in use in this room"),
                    ),
                    _ => unavailable(),
                };
                self.error(config, code, message);
            }
            (
                Pending::Resume { sid },
                Reply::Resumed {
                    peer_id,
                    room,
                    seq,
                    mut peers,
                    replay,
                    complete,
                },
            ) => {
                peers.sort();
                peers.retain(|p| *p != peer_id);
                let info = SessionInfo {
                    ice_servers: config.ice.ice_servers_for(
                        &peer_id,
                        now.unix,
                        self.host.as_deref(),
                    ),
                    peer_id: peer_id.clone(),
                    room: room.clone(),
                    peers,
                    session: sid.clone(),
                };
                let mut frames = vec![
                    ServerMsg::Resumed {
                        info,
                        replay_complete: complete,
                    }
                    .to_text(Some(seq)),
                ];
                frames.extend(replay.into_iter().map(|(_, t)| t));
                self.stats.resumes += 1;
                self.strikes = 0;
                self.session = Some(Attached {
                    sid: sid.clone(),
                    peer_id: peer_id.clone(),
                });
                self.out.push_back(Action::Attach {
                    sid,
                    peer_id,
                    room,
                    frames,
                    next_seq: seq + 1,
                });
            }
            (Pending::Resume { sid }, other) => {
                self.out.push_back(Action::Forget { sid });
                let (code, message) = match other {
                    Reply::NoSession | Reply::SessionGone => (
                        ErrorCode::SessionNotFound,
                        "no such session (its resume window may have expired); join again"
                            .to_owned(),
                    ),
                    _ => unavailable(),
                };
                self.error(config, code, message);
            }
            (Pending::Leave, Reply::Done | Reply::SessionGone) => {
                self.strikes = 0;
                if let Some(a) = self.session.take() {
                    self.out.push_back(Action::Forget { sid: a.sid });
                }
            }
            (Pending::Route { .. }, Reply::Done) => self.strikes = 0,
            // An error or pong appended: the strikes were settled when it was asked for.
            (Pending::Own, Reply::Done) => {}
            (Pending::Route { to }, Reply::PeerNotFound) => {
                self.error(
                    config,
                    ErrorCode::PeerNotFound,
                    format!("no peer `{to}` in this room"),
                );
            }
            (Pending::Route { .. } | Pending::Own, Reply::SessionGone) => {
                if let Some(a) = self.session.take() {
                    self.out.push_back(Action::Forget { sid: a.sid });
                }
                self.error(
                    config,
                    ErrorCode::SessionNotFound,
                    "your session has ended (the hub lost it); join again".to_owned(),
                );
            }
            (Pending::Route { .. } | Pending::Own | Pending::Leave, _) => {
                let (code, message) = unavailable();
                self.error(config, code, message);
            }
            (Pending::None, _) => {}
        }
    }

    /// Appends `msg` to the session's stream, or sends it directly before a join.
    fn push_own(&mut self, msg: &ServerMsg) {
        match &self.session {
            Some(a) => {
                self.pending = Pending::Own;
                self.out.push_back(Action::Request(Request::Own {
                    sid: a.sid.clone(),
                    body: body_of(msg),
                }));
            }
            None => self.out.push_back(Action::Send(msg.to_text(None))),
        }
    }

    fn count_error(&mut self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.stats.errors[i] += 1;
        }
    }

    fn error(&mut self, config: &HubConfig, code: ErrorCode, message: String) {
        if self.closed {
            // Closing: nothing more is sent, so nothing more is counted.
            return;
        }
        self.count_error(code);
        let msg = ServerMsg::Error { code, message };
        if code == ErrorCode::Unavailable {
            // The store is what failed, not the client: answer directly, and no strike (a
            // client that keeps pinging through an outage must not be closed for it).
            self.out.push_back(Action::Send(msg.to_text(None)));
            return;
        }
        self.push_own(&msg);
        self.strikes += 1;
        if self.strikes >= config.max_strikes && !self.closed {
            self.stats.closed_by_hub += 1;
            self.close(1008, "too many errors");
        }
    }
}

fn unavailable() -> (ErrorCode, String) {
    (
        ErrorCode::Unavailable,
        "the hub cannot reach its shared store; retry in a few seconds".to_owned(),
    )
}

/// Puts one session's messages, as the store publishes them, back in `seq` order.
///
/// Until [`Sequencer::start`] it only buffers (a join or resume is in flight, and messages
/// may overtake its reply). Then it delivers `next_seq`, `next_seq + 1`, … and drops what is
/// older (already delivered, or replayed). A gap (a lost publication) is held for at most
/// `cap` messages; past that the sequencer gives up and the driver closes the connection,
/// so the client resumes and gets the missing messages from the replay buffer.
#[derive(Debug)]
pub struct Sequencer {
    next: Option<u64>,
    held: BTreeMap<u64, String>,
    cap: usize,
}

/// What [`Sequencer::offer`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Send these frames now, in order.
    Send(Vec<String>),
    /// Nothing to send yet (buffered, or a duplicate).
    Nothing,
    /// Too many messages are waiting behind a gap: close so the client resumes.
    Overflow,
}

impl Sequencer {
    /// Buffering, holding at most `cap` messages.
    pub fn new(cap: usize) -> Self {
        Sequencer {
            next: None,
            held: BTreeMap::new(),
            cap: cap.max(1),
        }
    }

    /// The next `seq` to deliver, once started.
    pub fn next_seq(&self) -> Option<u64> {
        self.next
    }

    /// Starts delivery at `next`: returns the held messages that follow on.
    pub fn start(&mut self, next: u64) -> Vec<String> {
        self.next = Some(next);
        self.held = self.held.split_off(&next);
        self.drain()
    }

    /// A published message.
    pub fn offer(&mut self, seq: u64, text: String) -> Delivery {
        match self.next {
            Some(n) if seq < n => Delivery::Nothing,
            Some(n) if seq == n => {
                self.next = Some(n + 1);
                let mut out = vec![text];
                out.extend(self.drain());
                Delivery::Send(out)
            }
            _ => {
                if self.held.contains_key(&seq) {
                    return Delivery::Nothing;
                }
                if self.held.len() >= self.cap {
                    return Delivery::Overflow;
                }
                self.held.insert(seq, text);
                Delivery::Nothing
            }
        }
    }

    fn drain(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(mut n) = self.next else {
            return out;
        };
        while let Some(t) = self.held.remove(&n) {
            out.push(t);
            n += 1;
        }
        self.next = Some(n);
        out
    }
}

/// Parses a publication on a node's channel.
///
/// `D <sid> <seq> <text>`: a message for session `sid`; `T <sid> <conn>`: session `sid` was
/// resumed elsewhere, close connection `conn` of this node if it still holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Publication<'a> {
    /// Deliver.
    Deliver {
        /// Session.
        sid: &'a str,
        /// Its `seq`.
        seq: u64,
        /// The frame.
        text: &'a str,
    },
    /// Taken over.
    TakeOver {
        /// Session.
        sid: &'a str,
        /// The connection that held it.
        conn: u64,
    },
}

impl<'a> Publication<'a> {
    /// Parses `payload`; `None` if malformed (counted and dropped by the driver).
    pub fn parse(payload: &'a str) -> Option<Self> {
        let (kind, rest) = payload.split_once(' ')?;
        let (sid, rest) = rest.split_once(' ')?;
        match kind {
            "D" => {
                let (seq, text) = rest.split_once(' ')?;
                Some(Publication::Deliver {
                    sid,
                    seq: seq.parse().ok()?,
                    text,
                })
            }
            "T" => Some(Publication::TakeOver {
                sid,
                conn: rest.parse().ok()?,
            }),
            _ => None,
        }
    }
}
