//! A client of the signaling hub (`/v1/ws`, protocol version 1): typed messages over a
//! tokio-tungstenite WebSocket.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio_tungstenite::tungstenite::Message;

use crate::{IceServer, PeerError};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A message to the hub.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientMessage {
    /// Join (or create) a room.
    Join {
        /// The room.
        room: String,
    },
    /// An SDP offer for peer `to`.
    Offer {
        /// The other peer.
        to: String,
        /// The SDP.
        sdp: String,
    },
    /// An SDP answer for peer `to`.
    Answer {
        /// The other peer.
        to: String,
        /// The SDP.
        sdp: String,
    },
    /// A trickled candidate for peer `to` (`None`: end of candidates, sent as `null`).
    Candidate {
        /// The other peer.
        to: String,
        /// `RTCIceCandidate.toJSON()`, or `null`.
        candidate: Option<serde_json::Value>,
    },
    /// Hang up on peer `to`.
    Bye {
        /// The other peer.
        to: String,
    },
    /// Leave the room.
    Leave,
    /// Keepalive.
    Ping,
}

/// A message from the hub (the fields this client uses).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum HubMessage {
    /// Joined.
    Welcome {
        /// Our peer id.
        peer_id: String,
        /// The room.
        room: String,
        /// The other peers, sorted.
        peers: Vec<String>,
        /// ICE servers with TURN credentials for this server.
        #[serde(default)]
        ice_servers: Vec<IceServer>,
    },
    /// A peer joined the room.
    PeerJoined {
        /// Its id.
        peer_id: String,
    },
    /// A peer left the room.
    PeerLeft {
        /// Its id.
        peer_id: String,
    },
    /// A relayed offer.
    Offer {
        /// The sender.
        from: String,
        /// The SDP.
        sdp: String,
    },
    /// A relayed answer.
    Answer {
        /// The sender.
        from: String,
        /// The SDP.
        sdp: String,
    },
    /// A relayed candidate (`None` for end of candidates).
    Candidate {
        /// The sender.
        from: String,
        /// The candidate object, or `null`.
        #[serde(default)]
        candidate: Option<serde_json::Value>,
    },
    /// The sender hangs up.
    Bye {
        /// The sender.
        from: String,
    },
    /// An error.
    Error {
        /// The error code.
        code: String,
        /// A message for people.
        #[serde(default)]
        message: String,
    },
    /// Answer to a ping.
    Pong,
    /// Any other message type (`resumed`, future ones): ignored.
    #[serde(other)]
    Other,
}

/// An open WebSocket to the hub.
pub struct SignalClient {
    ws: Ws,
}

impl std::fmt::Debug for SignalClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalClient").finish_non_exhaustive()
    }
}

impl SignalClient {
    /// Opens the WebSocket at `url` (`ws://HOST:PORT/v1/ws`), giving up after `limit`.
    pub async fn connect(url: &str, limit: Duration) -> Result<SignalClient, PeerError> {
        let unreachable = |reason: String| PeerError::HubUnreachable {
            url: url.to_owned(),
            reason,
        };
        if !url.starts_with("ws://") {
            return Err(PeerError::Config(format!(
                "--signal {url:?}: expected a ws://HOST:PORT/v1/ws URL (wss:// is not supported by this client; put a TLS proxy's plain side here)"
            )));
        }
        match tokio::time::timeout(limit, tokio_tungstenite::connect_async(url)).await {
            Err(_) => Err(unreachable(format!(
                "no WebSocket handshake within {} s",
                limit.as_secs()
            ))),
            Ok(Err(e)) => Err(unreachable(describe_ws_error(e))),
            Ok(Ok((ws, _))) => Ok(SignalClient { ws }),
        }
    }

    /// Sends one message.
    pub async fn send(&mut self, m: &ClientMessage) -> Result<(), PeerError> {
        // Serializing these plain structs cannot fail.
        let text = serde_json::to_string(m).unwrap_or_default();
        self.ws
            .send(Message::Text(text.into()))
            .await
            .map_err(|e| PeerError::HubClosed(e.to_string()))
    }

    /// Receives the next hub message; `Err(HubClosed)` when the socket ends.
    pub async fn recv(&mut self) -> Result<HubMessage, PeerError> {
        loop {
            let frame = match self.ws.next().await {
                None => return Err(PeerError::HubClosed("end of stream".into())),
                Some(Err(e)) => return Err(PeerError::HubClosed(e.to_string())),
                Some(Ok(f)) => f,
            };
            match frame {
                Message::Text(t) => {
                    return serde_json::from_str(&t)
                        .map_err(|e| PeerError::Protocol(format!("{e}: {t}")));
                }
                Message::Close(c) => {
                    let why = c
                        .map(|c| format!("close code {}: {}", u16::from(c.code), c.reason))
                        .unwrap_or_else(|| "closed".into());
                    return Err(PeerError::HubClosed(why));
                }
                _ => {}
            }
        }
    }

    /// Closes the socket politely (bounded to one second).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

fn describe_ws_error(e: tokio_tungstenite::tungstenite::Error) -> String {
    use tokio_tungstenite::tungstenite::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::Http(resp) => format!("HTTP {} (is this the hub's /v1/ws?)", resp.status()),
        E::Url(u) => format!("bad URL: {u}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_the_protocol() {
        let j = serde_json::to_value(ClientMessage::Candidate {
            to: "b".into(),
            candidate: None,
        })
        .unwrap();
        assert_eq!(
            j,
            serde_json::json!({"type": "candidate", "to": "b", "candidate": null})
        );
        assert_eq!(
            serde_json::to_value(ClientMessage::Join { room: "r".into() }).unwrap(),
            serde_json::json!({"type": "join", "room": "r"})
        );
        let m: HubMessage = serde_json::from_str(
            r#"{"type":"welcome","peer_id":"p","room":"r","peers":["q"],"ice_servers":[{"urls":["stun:h:1"]}],"session":"s","seq":1}"#,
        )
        .unwrap();
        assert!(matches!(m, HubMessage::Welcome { peers, .. } if peers == ["q"]));
        let m: HubMessage =
            serde_json::from_str(r#"{"type":"candidate","from":"q","candidate":null,"seq":4}"#)
                .unwrap();
        assert!(matches!(
            m,
            HubMessage::Candidate {
                candidate: None,
                ..
            }
        ));
        let m: HubMessage = serde_json::from_str(r#"{"type":"resumed","seq":9,"x":1}"#).unwrap();
        assert!(matches!(m, HubMessage::Other));
    }
}
