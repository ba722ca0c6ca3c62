//! The signaling hub of Turnpike (sans-IO core).
//!
//! Peers meet in rooms over a WebSocket, exchange SDP offers/answers and trickle ICE
//! candidates through the hub, and receive short-lived TURN credentials for this server.
//! Everything the hub decides lives in [`hub::Hub`], a pure state machine: connections,
//! sessions with sequence numbers and replay for `resume`, rooms and presence, routing with a
//! hub-set `from`, JWT checks, and every limit. The WebSocket adapter only upgrades, reads and
//! writes.
//!
//! ```text
//! adapter                                   Hub
//! upgrade  ───────────────────────────────▶ handle_connect(now, conn, ip)?
//! text frame ─────────────────────────────▶ handle_message(now, conn, text)
//! socket closed ──────────────────────────▶ handle_disconnect(now, conn)
//! timer (poll_timeout) ───────────────────▶ handle_timeout(now)
//! send / close  ◀───────────────────────── poll_output()
//! ```

pub mod cluster;
pub mod creds;
pub mod hub;
pub mod ids;
pub mod jwt;
pub mod protocol;

pub use hub::{ConnId, ConnectError, Hub, HubConfig, Now, Output};
