//! The data-channel exchange, sans IO: what to answer to each message, and when our own
//! payload has been confirmed.
//!
//! The rules (the browser demo follows them too, see `docs/peer.md`):
//!
//! * A text message `T` is answered with `echo: T`. Text starting with `echo: ` is never
//!   echoed; neither are the file messages below.
//! * A file is a text header `file:NAME:SIZE:SHA256-HEX`, then binary messages of at most
//!   [`CHUNK`] bytes holding exactly `SIZE` bytes in all. The receiver answers
//!   `file-ok:SHA256-HEX` when the SHA-256 of what arrived matches the header, and
//!   `file-bad:REASON` otherwise.
//!
//! [`Exchange`] is fed every received message with [`Exchange::handle_text`] or
//! [`Exchange::handle_binary`] and returns a [`Step`]: the reply to send, if any, and what
//! happened. It does no I/O and reads no clock.

use sha2::{Digest, Sha256};

/// The largest binary message a file is cut into: 16 KiB, safe across browsers.
pub const CHUNK: usize = 16 * 1024;

/// Prefix of an echo.
pub const ECHO_PREFIX: &str = "echo: ";
/// Prefix of a file header.
pub const FILE_PREFIX: &str = "file:";
/// Prefix of a positive file answer.
pub const FILE_OK_PREFIX: &str = "file-ok:";
/// Prefix of a negative file answer.
pub const FILE_BAD_PREFIX: &str = "file-bad:";

/// What we send; decides which answer confirms it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// A text message, confirmed by `echo: TEXT`.
    Text(String),
    /// A file with this SHA-256 (lower-case hex), confirmed by `file-ok:HEX`.
    File {
        /// Lower-case hex SHA-256 of the file.
        sha256: String,
    },
}

/// The result of handling one received message.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
#[must_use]
pub struct Step {
    /// A text message to send back.
    pub reply: Option<String>,
    /// What the message meant.
    pub event: Option<ExchangeEvent>,
}

/// Something that happened in the exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExchangeEvent {
    /// The other peer's text message, which the reply echoes.
    Message(String),
    /// The echo of our message (or the `file-ok` of our file) arrived.
    Confirmed,
    /// The other peer answered our file with `file-bad:REASON`.
    Rejected(String),
    /// A file header arrived.
    FileStarted {
        /// The name in the header.
        name: String,
        /// The announced size in bytes.
        size: u64,
    },
    /// A whole file arrived; `ok` says whether its SHA-256 matched (the reply says the same).
    FileReceived {
        /// The name in the header.
        name: String,
        /// Bytes received.
        size: u64,
        /// Whether the checksum matched.
        ok: bool,
    },
    /// A message that needs no answer and is not ours to track (an unexpected echo, binary
    /// data outside a file).
    Ignored,
}

#[derive(Debug)]
struct Incoming {
    name: String,
    size: u64,
    sha256: String,
    received: u64,
    hasher: Sha256,
}

/// The state of one peer's side of the exchange.
#[derive(Debug)]
pub struct Exchange {
    sent: Option<Sent>,
    confirmed: bool,
    incoming: Option<Incoming>,
    answered: u32,
}

impl Exchange {
    /// A new exchange; `sent` is what we send (set it with [`Exchange::set_sent`] later if
    /// not known yet).
    pub fn new(sent: Option<Sent>) -> Self {
        Exchange {
            sent,
            confirmed: false,
            incoming: None,
            answered: 0,
        }
    }

    /// Records what we sent.
    pub fn set_sent(&mut self, sent: Sent) {
        self.sent = Some(sent);
    }

    /// Whether our message was echoed or our file acknowledged with a matching checksum.
    pub fn is_confirmed(&self) -> bool {
        self.confirmed
    }

    /// How many of the other peer's messages and files we have answered.
    pub fn answered(&self) -> u32 {
        self.answered
    }

    /// Whether a file from the other peer is half received.
    pub fn is_receiving_file(&self) -> bool {
        self.incoming.is_some()
    }

    /// Handles a received text message.
    pub fn handle_text(&mut self, text: &str) -> Step {
        if let Some(echoed) = text.strip_prefix(ECHO_PREFIX) {
            let ours = matches!(&self.sent, Some(Sent::Text(t)) if t == echoed);
            if ours {
                self.confirmed = true;
                return event(ExchangeEvent::Confirmed);
            }
            return event(ExchangeEvent::Ignored);
        }
        if let Some(hex) = text.strip_prefix(FILE_OK_PREFIX) {
            let ours = matches!(&self.sent, Some(Sent::File { sha256 }) if sha256.eq_ignore_ascii_case(hex));
            if ours {
                self.confirmed = true;
                return event(ExchangeEvent::Confirmed);
            }
            return event(ExchangeEvent::Rejected(format!(
                "acknowledged with another checksum: {hex}"
            )));
        }
        if let Some(reason) = text.strip_prefix(FILE_BAD_PREFIX) {
            return event(ExchangeEvent::Rejected(reason.to_owned()));
        }
        if let Some(header) = text.strip_prefix(FILE_PREFIX) {
            return self.start_file(header);
        }
        self.answered += 1;
        Step {
            reply: Some(format!("{ECHO_PREFIX}{text}")),
            event: Some(ExchangeEvent::Message(text.to_owned())),
        }
    }

    fn start_file(&mut self, header: &str) -> Step {
        let mut reply_prev = None;
        if let Some(prev) = self.incoming.take() {
            self.answered += 1;
            reply_prev = Some(format!(
                "{FILE_BAD_PREFIX}{} ended after {} of {} bytes",
                prev.name, prev.received, prev.size
            ));
        }
        // NAME may itself hold colons: split SIZE and SHA256 off the right.
        let mut parts = header.rsplitn(3, ':');
        let (sha, size, name) = (parts.next(), parts.next(), parts.next());
        let parsed = match (sha, size.and_then(|s| s.parse::<u64>().ok()), name) {
            (Some(sha), Some(size), Some(name))
                if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Some((name.to_owned(), size, sha.to_ascii_lowercase()))
            }
            _ => None,
        };
        let Some((name, size, sha256)) = parsed else {
            self.answered += 1;
            return Step {
                reply: Some(format!("{FILE_BAD_PREFIX}malformed header")),
                event: Some(ExchangeEvent::Ignored),
            };
        };
        // A second header while a file was pending: the old one is answered as bad, and the
        // new one starts. Only one reply fits a step, so the old answer wins if there is one.
        self.incoming = Some(Incoming {
            name: name.clone(),
            size,
            sha256,
            received: 0,
            hasher: Sha256::new(),
        });
        if size == 0 {
            return self.finish_file();
        }
        Step {
            reply: reply_prev,
            event: Some(ExchangeEvent::FileStarted { name, size }),
        }
    }

    /// Handles a received binary message.
    pub fn handle_binary(&mut self, data: &[u8]) -> Step {
        let Some(inc) = self.incoming.as_mut() else {
            return event(ExchangeEvent::Ignored);
        };
        inc.hasher.update(data);
        inc.received += data.len() as u64;
        if inc.received >= inc.size {
            return self.finish_file();
        }
        Step::default()
    }

    fn finish_file(&mut self) -> Step {
        // Only called right after `incoming` was set or updated.
        let Some(inc) = self.incoming.take() else {
            return Step::default();
        };
        self.answered += 1;
        let got = hex(&inc.hasher.finalize());
        let ok = inc.received == inc.size && got == inc.sha256;
        let reply = if ok {
            format!("{FILE_OK_PREFIX}{got}")
        } else if inc.received != inc.size {
            format!(
                "{FILE_BAD_PREFIX}size mismatch: {} bytes announced, {} received",
                inc.size, inc.received
            )
        } else {
            format!("{FILE_BAD_PREFIX}sha256 mismatch: got {got}")
        };
        Step {
            reply: Some(reply),
            event: Some(ExchangeEvent::FileReceived {
                name: inc.name,
                size: inc.received,
                ok,
            }),
        }
    }
}

fn event(e: ExchangeEvent) -> Step {
    Step {
        reply: None,
        event: Some(e),
    }
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The file header for `name`, `size` bytes with SHA-256 `sha256` (hex).
pub fn file_header(name: &str, size: u64, sha256: &str) -> String {
    format!("{FILE_PREFIX}{name}:{size}:{sha256}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_echoed_and_echoes_are_not() {
        let mut a = Exchange::new(Some(Sent::Text("hi".into())));
        let s = a.handle_text("hello");
        assert_eq!(s.reply.as_deref(), Some("echo: hello"));
        assert_eq!(a.answered(), 1);
        let s = a.handle_text("echo: other");
        assert_eq!((s.reply, s.event), (None, Some(ExchangeEvent::Ignored)));
        assert!(!a.is_confirmed());
        let s = a.handle_text("echo: hi");
        assert_eq!(s.event, Some(ExchangeEvent::Confirmed));
        assert!(a.is_confirmed());
        // Text that merely contains the prefix later on is echoed.
        assert_eq!(
            a.handle_text("say echo: x").reply.as_deref(),
            Some("echo: say echo: x")
        );
    }

    #[test]
    fn file_round_trip_in_chunks() {
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let sha = hex(&Sha256::digest(&data));
        let mut rx = Exchange::new(None);
        let s = rx.handle_text(&file_header("a:b.bin", data.len() as u64, &sha));
        assert_eq!(
            s.event,
            Some(ExchangeEvent::FileStarted {
                name: "a:b.bin".into(),
                size: 40_000
            })
        );
        assert!(rx.is_receiving_file());
        let mut last = Step::default();
        for c in data.chunks(CHUNK) {
            last = rx.handle_binary(c);
        }
        assert_eq!(last.reply, Some(format!("file-ok:{sha}")));
        let mut tx = Exchange::new(Some(Sent::File {
            sha256: sha.clone(),
        }));
        assert_eq!(
            tx.handle_text(&last.reply.unwrap()).event,
            Some(ExchangeEvent::Confirmed)
        );
        assert!(tx.is_confirmed());
    }

    #[test]
    fn corrupted_or_malformed_files_are_refused() {
        let mut rx = Exchange::new(None);
        let _ = rx.handle_text(&file_header("f", 3, &"0".repeat(64)));
        let s = rx.handle_binary(b"abc");
        assert!(s.reply.unwrap().starts_with("file-bad:sha256 mismatch"));
        assert_eq!(
            rx.handle_text("file:nonsense").reply.as_deref(),
            Some("file-bad:malformed header")
        );
        let mut tx = Exchange::new(Some(Sent::File {
            sha256: "ab".repeat(32),
        }));
        assert_eq!(
            tx.handle_text("file-bad:sha256 mismatch").event,
            Some(ExchangeEvent::Rejected("sha256 mismatch".into()))
        );
        // Binary data outside a file is ignored.
        assert_eq!(rx.handle_binary(b"zz").event, Some(ExchangeEvent::Ignored));
    }

    #[test]
    fn empty_file_is_answered_at_once() {
        let sha = hex(&Sha256::digest(b""));
        let mut rx = Exchange::new(None);
        let s = rx.handle_text(&file_header("empty", 0, &sha));
        assert_eq!(s.reply, Some(format!("file-ok:{sha}")));
    }
}
