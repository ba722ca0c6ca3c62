//! What a run reports: progress events while it runs, and a summary at the end.

use serde::Serialize;

use crate::ExchangeEvent;

/// The summary of a run; `--json` prints it as one object.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// Whether the data channel opened.
    pub connected: bool,
    /// Type of the local candidate of the selected pair: `host`, `srflx`, `prflx` or `relay`.
    pub local_candidate_type: Option<String>,
    /// Type of the remote candidate of the selected pair.
    pub remote_candidate_type: Option<String>,
    /// Transport of the local candidate (`udp`).
    pub local_protocol: Option<String>,
    /// Milliseconds from the moment the other peer was known to the data channel's opening.
    pub setup_ms: Option<u64>,
    /// Milliseconds from sending our text message to receiving its echo (`null` for a file).
    pub rtt_ms: Option<f64>,
    /// Application bytes sent on the data channel (text and binary messages).
    pub bytes_sent: u64,
    /// Application bytes received on the data channel.
    pub bytes_received: u64,
    /// Milliseconds from sending a file's header to receiving its `file-ok` (`null` for text).
    pub transfer_ms: Option<u64>,
    /// Our peer id in the room.
    pub peer_id: Option<String>,
    /// The other peer's id.
    pub remote_peer_id: Option<String>,
    /// The room.
    pub room: String,
    /// Why the run failed (`null` on success).
    pub error: Option<String>,
}

/// Progress of a run, in the order it happens.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The hub welcomed us.
    Joined {
        /// Our peer id.
        peer_id: String,
        /// The room.
        room: String,
        /// How many other peers were already there.
        others: usize,
        /// How many ICE servers we will use, and whether one is TURN.
        ice_servers: usize,
    },
    /// Alone in the room: waiting for the other peer.
    Waiting,
    /// The other peer is known.
    PeerFound {
        /// Its id.
        peer_id: String,
        /// Whether we make the offer.
        offerer: bool,
    },
    /// We yielded in an offer collision and answer the other peer's offer instead.
    Yielded,
    /// A local candidate of this type was gathered.
    Gathered(String),
    /// The ICE connection state changed (`checking`, `connected`, `failed`, …).
    IceState(String),
    /// The peer connection state changed.
    ConnectionState(String),
    /// The data channel opened over this path.
    Connected {
        /// Local candidate type.
        local: String,
        /// Remote candidate type.
        remote: String,
        /// The selected pair, as `ADDR:PORT -> ADDR:PORT`.
        pair: String,
        /// Milliseconds since the other peer was known.
        setup_ms: u64,
    },
    /// We sent our message or file (a short description).
    Sent(String),
    /// Something arrived on the data channel.
    Received(ExchangeEvent),
    /// The run ended well; the connection is being closed.
    Done,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Joined {
                peer_id,
                room,
                others,
                ice_servers,
            } => write!(
                f,
                "joined room {room} as {peer_id} ({others} other peer(s), {ice_servers} ICE server(s))"
            ),
            Event::Waiting => f.write_str("waiting for the other peer"),
            Event::PeerFound { peer_id, offerer } => write!(
                f,
                "peer found: {peer_id} ({})",
                if *offerer {
                    "we make the offer"
                } else {
                    "it makes the offer"
                }
            ),
            Event::Yielded => f.write_str("offers crossed: we yield and answer"),
            Event::Gathered(t) => write!(f, "gathered a {t} candidate"),
            Event::IceState(s) => write!(f, "ICE {s}"),
            Event::ConnectionState(s) => write!(f, "connection {s}"),
            Event::Connected {
                local,
                remote,
                pair,
                setup_ms,
            } => write!(
                f,
                "connected: {local} -> {remote} ({pair}), data channel open after {setup_ms} ms"
            ),
            Event::Sent(what) => write!(f, "sent {what}"),
            Event::Received(e) => match e {
                ExchangeEvent::Message(t) => write!(f, "received {t:?} (echoed)"),
                ExchangeEvent::Confirmed => f.write_str("our message was answered"),
                ExchangeEvent::Rejected(r) => write!(f, "our file was refused: {r}"),
                ExchangeEvent::FileStarted { name, size } => {
                    write!(f, "receiving file {name:?} ({size} bytes)")
                }
                ExchangeEvent::FileReceived { name, size, ok } => write!(
                    f,
                    "received file {name:?} ({size} bytes): {}",
                    if *ok {
                        "checksum ok"
                    } else {
                        "checksum mismatch"
                    }
                ),
                ExchangeEvent::Ignored => f.write_str("ignored a message"),
            },
            Event::Done => f.write_str("done"),
        }
    }
}
