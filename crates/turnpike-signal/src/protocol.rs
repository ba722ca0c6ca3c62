//! The signaling protocol, version 1: JSON text messages tagged by `type` (see
//! docs/signaling.md).

use serde::{Deserialize, Serialize};

use crate::creds::IceServer;

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMsg {
    /// Join (or create) a room.
    Join {
        /// Room name.
        room: String,
        /// Wanted peer id; the hub assigns one when absent.
        #[serde(default)]
        peer_id: Option<String>,
        /// HS256 JWT, required when the hub has a secret.
        #[serde(default)]
        token: Option<String>,
    },
    /// SDP offer for peer `to`.
    Offer {
        /// Target peer id.
        to: String,
        /// The SDP.
        sdp: String,
    },
    /// SDP answer for peer `to`.
    Answer {
        /// Target peer id.
        to: String,
        /// The SDP.
        sdp: String,
    },
    /// A trickled ICE candidate for peer `to`; `null` ends the candidates.
    Candidate {
        /// Target peer id.
        to: String,
        /// `{"candidate","sdpMid","sdpMLineIndex","usernameFragment"}` or `null`.
        candidate: Option<serde_json::Map<String, serde_json::Value>>,
    },
    /// Hang up towards peer `to`.
    Bye {
        /// Target peer id.
        to: String,
    },
    /// Leave the room (ends the session; others see `peer-left` at once).
    Leave,
    /// Keepalive; answered with `pong`.
    Ping,
    /// Resume a session after a dropped socket.
    Resume {
        /// The `session` from `welcome`.
        session: String,
        /// The highest `seq` the client has seen.
        last_seq: u64,
    },
}

impl ClientMsg {
    /// The index of this message's type in [`CLIENT_TYPES`] (for counters).
    pub const fn type_index(&self) -> usize {
        match self {
            ClientMsg::Join { .. } => 0,
            ClientMsg::Offer { .. } => 1,
            ClientMsg::Answer { .. } => 2,
            ClientMsg::Candidate { .. } => 3,
            ClientMsg::Bye { .. } => 4,
            ClientMsg::Leave => 5,
            ClientMsg::Ping => 6,
            ClientMsg::Resume { .. } => 7,
        }
    }
}

/// The types a client may send (for `unknown-type` errors).
pub const CLIENT_TYPES: [&str; 8] = [
    "join",
    "offer",
    "answer",
    "candidate",
    "bye",
    "leave",
    "ping",
    "resume",
];

/// Stable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// Malformed JSON, a missing or ill-typed field, an invalid room or peer id.
    BadRequest,
    /// A `type` the hub does not know.
    UnknownType,
    /// The target peer is not in the room.
    PeerNotFound,
    /// The room has its maximum number of peers.
    RoomFull,
    /// The hub has its maximum number of rooms.
    TooManyRooms,
    /// Messages arrive faster than the per-connection rate.
    RateLimited,
    /// A token is missing, invalid, expired, or for another room or peer.
    Unauthorized,
    /// The message is larger than the limit.
    MessageTooLarge,
    /// `resume` names no live session.
    SessionNotFound,
    /// The message needs a joined room.
    NotJoined,
    /// `join` on a connection that is already in a room.
    AlreadyJoined,
    /// The wanted peer id is in use in the room.
    PeerIdTaken,
    /// The hub cannot reach its shared store (cluster mode): retry shortly.
    Unavailable,
}

impl ErrorCode {
    /// Every code, for metrics.
    pub const ALL: [ErrorCode; 13] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownType,
        ErrorCode::PeerNotFound,
        ErrorCode::RoomFull,
        ErrorCode::TooManyRooms,
        ErrorCode::RateLimited,
        ErrorCode::Unauthorized,
        ErrorCode::MessageTooLarge,
        ErrorCode::SessionNotFound,
        ErrorCode::NotJoined,
        ErrorCode::AlreadyJoined,
        ErrorCode::PeerIdTaken,
        ErrorCode::Unavailable,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad-request",
            ErrorCode::UnknownType => "unknown-type",
            ErrorCode::PeerNotFound => "peer-not-found",
            ErrorCode::RoomFull => "room-full",
            ErrorCode::TooManyRooms => "too-many-rooms",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::MessageTooLarge => "message-too-large",
            ErrorCode::SessionNotFound => "session-not-found",
            ErrorCode::NotJoined => "not-joined",
            ErrorCode::AlreadyJoined => "already-joined",
            ErrorCode::PeerIdTaken => "peer-id-taken",
            ErrorCode::Unavailable => "unavailable",
        }
    }
}

/// The fields `welcome` and `resumed` share.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionInfo {
    /// The peer id of this session.
    pub peer_id: String,
    /// The room.
    pub room: String,
    /// The other peers in the room, sorted.
    pub peers: Vec<String>,
    /// Ready for `new RTCPeerConnection({iceServers})`.
    pub ice_servers: Vec<IceServer>,
    /// The session id to `resume` with.
    pub session: String,
}

/// A message from the hub.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerMsg {
    /// Joined.
    Welcome(SessionInfo),
    /// Resumed; the replayed messages follow.
    Resumed {
        /// As in `welcome`.
        #[serde(flatten)]
        info: SessionInfo,
        /// False when messages the client had not seen were dropped because the replay
        /// buffer was full.
        replay_complete: bool,
    },
    /// A peer joined the room.
    PeerJoined {
        /// Its id.
        peer_id: String,
    },
    /// A peer left the room (or its resume window expired).
    PeerLeft {
        /// Its id.
        peer_id: String,
    },
    /// Relayed offer.
    Offer {
        /// Sender.
        from: String,
        /// SDP.
        sdp: String,
    },
    /// Relayed answer.
    Answer {
        /// Sender.
        from: String,
        /// SDP.
        sdp: String,
    },
    /// Relayed candidate (`null`: end of candidates).
    Candidate {
        /// Sender.
        from: String,
        /// The candidate object, as sent.
        candidate: Option<serde_json::Map<String, serde_json::Value>>,
    },
    /// Relayed hang-up.
    Bye {
        /// Sender.
        from: String,
    },
    /// An error; the connection stays open unless the client keeps misbehaving.
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Human-readable explanation.
        message: String,
    },
    /// Answer to `ping`.
    Pong,
}

/// A hub message with its sequence number (none before a join).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope<'a> {
    /// The message.
    #[serde(flatten)]
    pub msg: &'a ServerMsg,
    /// Position in the session's stream, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl ServerMsg {
    /// The JSON text, with `seq` when given.
    pub fn to_text(&self, seq: Option<u64>) -> String {
        // Serialising these plain structures cannot fail.
        serde_json::to_string(&Envelope { msg: self, seq }).unwrap_or_default()
    }

    /// The `type` name, for metrics.
    pub const fn type_name(&self) -> &'static str {
        match self {
            ServerMsg::Welcome(_) => "welcome",
            ServerMsg::Resumed { .. } => "resumed",
            ServerMsg::PeerJoined { .. } => "peer-joined",
            ServerMsg::PeerLeft { .. } => "peer-left",
            ServerMsg::Offer { .. } => "offer",
            ServerMsg::Answer { .. } => "answer",
            ServerMsg::Candidate { .. } => "candidate",
            ServerMsg::Bye { .. } => "bye",
            ServerMsg::Error { .. } => "error",
            ServerMsg::Pong => "pong",
        }
    }
}

/// Parses a client message, telling an unknown `type` from a malformed message.
pub fn parse(text: &str) -> Result<ClientMsg, (ErrorCode, String)> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| (ErrorCode::BadRequest, format!("invalid JSON: {e}")))?;
    let Some(ty) = value
        .get("type")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
    else {
        return Err((
            ErrorCode::BadRequest,
            "missing string field `type`".to_owned(),
        ));
    };
    let ty = ty.as_str();
    if !CLIENT_TYPES.contains(&ty) {
        return Err((
            ErrorCode::UnknownType,
            format!("unknown message type `{ty}`"),
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| (ErrorCode::BadRequest, format!("bad `{ty}` message: {e}")))
}
