//! `turnpike-peer`: a demo WebRTC peer that joins a room on a Turnpike signaling hub, connects
//! to the other peer of the room over a data channel, and reports the path ICE chose.
//!
//! It is what `turnpike peer` runs, and it follows the same interop rules as the browser demo
//! (written down in `docs/peer.md`): the peer that joins second makes the offer (if offers
//! cross, the smaller peer id yields); the offerer opens one ordered data channel labelled
//! `turnpike`; text is answered with `echo: TEXT`; a file travels as a
//! `file:NAME:SIZE:SHA256-HEX` header and binary chunks of at most 16 KiB and is answered with
//! `file-ok:SHA256-HEX` or `file-bad:REASON`.
//!
//! # Design
//!
//! * [`signal`]: a typed client of the hub's WebSocket protocol (tokio-tungstenite).
//! * [`protocol`]: the data-channel exchange, sans IO: feed it each received message, send
//!   the reply it returns, ask it whether our payload was confirmed.
//! * [`run`]: one task and one `select!` loop over hub messages, events forwarded from the
//!   `webrtc` crate's callbacks through a bounded channel, and timers. It returns an
//!   [`Outcome`]: a [`Report`] (what `--json` prints) and the [`PeerError`] if it failed.
//!
//! ```no_run
//! # async fn demo() {
//! let config = turnpike_peer::PeerConfig::new("ws://127.0.0.1:8080/v1/ws", "demo");
//! let outcome = turnpike_peer::run(config, &mut |event| println!("{event}")).await;
//! println!("{}", serde_json::to_string(&outcome.report).unwrap());
//! # }
//! ```
//!
//! A run ends well when our payload was confirmed (echo or `file-ok`) and the other peer's
//! payload was answered, or it sent none within two seconds; then it says `bye` through the
//! hub, waits up to one second for the other's `bye`, and leaves.

mod config;
mod error;
pub mod protocol;
mod report;
mod session;
pub mod signal;

pub use config::{IceServer, Payload, PeerConfig};
pub use error::{Diagnosis, PeerError, Stage};
pub use protocol::ExchangeEvent;
pub use report::{Event, Report};
pub use session::{CHANNEL_LABEL, Outcome, run};
