//! NAT-behaviour classification (RFC 5780, RFC 4787) for `turnpike nat-check`.
//!
//! * [`probe`]: the sans-IO sequencer. All protocol logic and every decision live here, with
//!   time and randomness passed in, so its tests run on virtual time (loss, reordering,
//!   duplicates, stray transaction ids, answers from unexpected addresses) without sockets.
//! * [`runner`]: a thin tokio driver that binds the sockets on a concrete local IP, moves
//!   datagrams, and feeds the clock.
//!
//! The run loop, as the runner implements it:
//!
//! ```text
//! let mut check = NatCheck::new(config, locals, now, seed);
//! loop {
//!     while let Some(t) = check.poll_transmit() { send(t.socket, t.to, t.payload) }
//!     if let Some(report) = check.poll_report() { return report }
//!     wait for a datagram or check.poll_timeout():
//!         datagram  => check.handle_datagram(now, socket, from, bytes),
//!         timeout   => check.handle_timeout(now),
//! }
//! ```

pub mod lifetime;
pub mod probe;
pub mod runner;

pub use lifetime::{LifetimeResult, LifetimeSearch};
pub use probe::{Behaviour, Config, Locals, NatCheck, NatType, Report, SocketId, Timing};
pub use runner::{NatCheckError, Options, run, run_lifetime};
