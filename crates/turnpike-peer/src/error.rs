//! The ways a peer run can fail, each with a message meant for the person at the terminal.

/// Why a peer run did not carry its message both ways.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The configuration cannot work (a bad URL, a `--relay-only` run without TURN server, …).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The hub's WebSocket could not be opened.
    #[error("signaling hub unreachable at {url}: {reason}")]
    HubUnreachable {
        /// The URL that was tried.
        url: String,
        /// What went wrong (connection refused, HTTP status, …).
        reason: String,
    },
    /// The hub closed the WebSocket before the data channel was open.
    #[error("the signaling hub closed the connection: {0}")]
    HubClosed(String),
    /// The room already has its maximum number of peers (hub error `room-full`).
    #[error("room {room:?} is full: {message}")]
    RoomFull {
        /// The room asked for.
        room: String,
        /// The hub's own words.
        message: String,
    },
    /// Any other error the hub answered with.
    #[error("the signaling hub refused: {code}: {message}")]
    Hub {
        /// The hub's error code (see the signaling protocol).
        code: String,
        /// The hub's message.
        message: String,
    },
    /// The hub sent something this client cannot understand.
    #[error("unexpected message from the signaling hub: {0}")]
    Protocol(String),
    /// ICE found no working candidate pair.
    #[error("no route to the other peer: ICE failed ({0})")]
    NoRoute(Diagnosis),
    /// The run did not finish within `--timeout`.
    #[error("timed out after {secs} s while {stage}{}", diagnosis_suffix(.diagnosis))]
    Timeout {
        /// The timeout, in seconds.
        secs: u64,
        /// What the peer was doing when time ran out.
        stage: Stage,
        /// What ICE had found by then, when it had started.
        diagnosis: Option<Diagnosis>,
    },
    /// The other peer left the room (or closed the data channel) before the exchange ended.
    #[error("the other peer ({0}) left before the exchange was complete")]
    PeerLeft(String),
    /// The other peer answered the file with `file-bad:…`.
    #[error("the other peer rejected the file: {0}")]
    FileRejected(String),
    /// Reading the file to send failed.
    #[error("cannot read {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The WebRTC stack reported an error.
    #[error("WebRTC error: {0}")]
    WebRtc(#[from] webrtc::Error),
}

fn diagnosis_suffix(d: &Option<Diagnosis>) -> String {
    d.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
}

/// What a peer was doing; named in timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Stage {
    /// Opening the WebSocket and joining the room.
    Joining,
    /// Alone in the room, waiting for the other peer.
    WaitingForPeer,
    /// Negotiating SDP and running ICE and DTLS.
    Connecting,
    /// The data channel is open; waiting for the echo or the file answer.
    Exchanging,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Joining => "joining the room",
            Stage::WaitingForPeer => "waiting for the other peer to join",
            Stage::Connecting => "connecting to the other peer",
            Stage::Exchanging => "waiting for the other peer's answer on the data channel",
        })
    }
}

/// What ICE had to work with when it failed: the local candidate types gathered and, for each
/// TURN server, whether an allocation worked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnosis {
    /// Local candidate types gathered (`host`, `srflx`, `relay`), sorted, without repeats.
    pub gathered: Vec<String>,
    /// Remote candidate types received from the other peer, sorted, without repeats.
    pub remote: Vec<String>,
    /// One line per TURN URL probed after the failure: the URL and what the allocation gave.
    pub turn: Vec<String>,
}

impl std::fmt::Display for Diagnosis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_owned()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "local candidates gathered: {}; remote candidates received: {}",
            list(&self.gathered),
            list(&self.remote)
        )?;
        for t in &self.turn {
            write!(f, "; {t}")?;
        }
        Ok(())
    }
}
