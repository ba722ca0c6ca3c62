//! Zero-copy, single-pass validation of a STUN message.
//!
//! [`MessageView::parse`] checks everything the server needs before it answers a request —
//! header, length, attribute framing, FINGERPRINT — and records what a Binding request asked
//! for, without allocating. Problems that make a datagram "not STUN" are a [`ParseError`] (the
//! server drops it); problems inside a well-framed request are recorded in the view so the
//! server can answer them with an error response.

use crate::{FINGERPRINT_XOR, HEADER_LEN, MAGIC_COOKIE, attr, split_message_type};

/// The class of a STUN message (RFC 8489 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Class {
    /// A request.
    Request = 0,
    /// An indication.
    Indication = 1,
    /// A success response.
    Success = 2,
    /// An error response.
    Error = 3,
}

impl Class {
    /// A short lowercase name, for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            Class::Request => "request",
            Class::Indication => "indication",
            Class::Success => "success",
            Class::Error => "error",
        }
    }
}

/// A transaction id: 96 bits after the magic cookie (RFC 8489), or the whole 128 bits of an
/// RFC 3489 message, which had no magic cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransactionId {
    /// RFC 5389/8489 transaction id.
    Modern([u8; 12]),
    /// RFC 3489 transaction id (bytes 4..20 of the header).
    Classic([u8; 16]),
}

/// Why a datagram is not a STUN message the server will look at. Each maps to a drop reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Fewer than 20 bytes.
    #[error("shorter than a STUN header")]
    TooShort,
    /// The first two bits are not zero: not STUN (maybe ChannelData, DTLS, RTP or garbage).
    #[error("not a STUN message")]
    NotStun,
    /// The length field is not a multiple of 4 or does not match the datagram.
    #[error("length field does not match the message")]
    BadLength,
    /// No magic cookie and not an RFC 3489 Binding request.
    #[error("wrong magic cookie")]
    BadMagicCookie,
    /// An attribute runs past the end of the message.
    #[error("attribute overruns the message")]
    Truncated,
    /// FINGERPRINT is present but wrong, malformed, or not the last attribute.
    #[error("bad FINGERPRINT")]
    BadFingerprint,
}

impl ParseError {
    /// A stable kebab-case name, used as the `reason` label of the drop metric.
    pub const fn as_str(self) -> &'static str {
        match self {
            ParseError::TooShort => "too-short",
            ParseError::NotStun => "not-stun",
            ParseError::BadLength => "bad-length",
            ParseError::BadMagicCookie => "bad-magic-cookie",
            ParseError::Truncated => "truncated",
            ParseError::BadFingerprint => "bad-fingerprint",
        }
    }
}

/// At most this many unknown comprehension-required attribute types are recorded (and listed in
/// a 420 response); a request carrying more still gets a 420, with the first eight listed.
pub const MAX_UNKNOWN: usize = 8;

/// The RFC 5780 CHANGE-REQUEST flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ChangeRequest {
    /// Answer from the other IP address.
    pub ip: bool,
    /// Answer from the other port.
    pub port: bool,
}

/// A validated STUN message, borrowed from the datagram.
#[derive(Debug, Clone)]
pub struct MessageView<'a> {
    buf: &'a [u8],
    /// Method number (12 bits).
    pub method: u16,
    /// Message class.
    pub class: Class,
    /// The transaction id.
    pub transaction_id: TransactionId,
    /// The message ended with a valid FINGERPRINT.
    pub fingerprint: bool,
    /// CHANGE-REQUEST, if present and well formed.
    pub change_request: Option<ChangeRequest>,
    /// RESPONSE-PORT, if present and well formed (2- or 4-byte value).
    pub response_port: Option<u16>,
    /// Length of the PADDING attribute value, if present.
    pub padding: Option<u16>,
    /// SOFTWARE was present.
    pub software: bool,
    /// MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256 was present.
    pub integrity: bool,
    /// The first attribute of a known type whose value is malformed (answer: 400).
    pub malformed: Option<u16>,
    unknown: [u16; MAX_UNKNOWN],
    unknown_len: u8,
    unknown_overflow: bool,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl<'a> MessageView<'a> {
    /// Validates `buf` as exactly one STUN message (a whole UDP datagram, or one frame cut from a
    /// TCP stream).
    ///
    /// Accepts RFC 5389/8489 messages of any class and method, and RFC 3489 Binding requests
    /// (no magic cookie). Everything after MESSAGE-INTEGRITY other than
    /// MESSAGE-INTEGRITY-SHA256 and FINGERPRINT is ignored, as RFC 8489 §14.5 requires.
    #[inline]
    pub fn parse(buf: &'a [u8]) -> Result<Self, ParseError> {
        if buf.len() < HEADER_LEN {
            return Err(ParseError::TooShort);
        }
        let msg_type = be16(buf, 0);
        if msg_type & 0xC000 != 0 {
            return Err(ParseError::NotStun);
        }
        let len = usize::from(be16(buf, 2));
        if len % 4 != 0 || HEADER_LEN + len != buf.len() {
            return Err(ParseError::BadLength);
        }
        let (method, class) = split_message_type(msg_type);
        let modern = be32(buf, 4) == MAGIC_COOKIE;
        let transaction_id = if modern {
            let mut id = [0u8; 12];
            id.copy_from_slice(&buf[8..20]);
            TransactionId::Modern(id)
        } else {
            // RFC 3489 only defined Binding (and Shared Secret, which nobody serves any more).
            if method != crate::method::BINDING || class != Class::Request {
                return Err(ParseError::BadMagicCookie);
            }
            let mut id = [0u8; 16];
            id.copy_from_slice(&buf[4..20]);
            TransactionId::Classic(id)
        };

        // The attribute summary is gathered in locals and the view assembled only at the end, so
        // it is written straight into the return slot instead of being built on the stack and
        // copied (a copy whose wide loads stall on the narrow stores that built it).
        let mut view = Summary::default();
        let mut at = HEADER_LEN;
        let mut after_integrity = false;
        while at < buf.len() {
            if buf.len() - at < 4 {
                return Err(ParseError::Truncated);
            }
            let t = be16(buf, at);
            let vlen = usize::from(be16(buf, at + 2));
            let padded = (vlen + 3) & !3;
            let value_at = at + 4;
            if buf.len() - value_at < padded {
                return Err(ParseError::Truncated);
            }
            let value = &buf[value_at..value_at + vlen];
            if modern && t == attr::FINGERPRINT {
                // FINGERPRINT must be last and must cover everything before it.
                if vlen != 4 || value_at + 4 != buf.len() {
                    return Err(ParseError::BadFingerprint);
                }
                let expected = crc32fast::hash(&buf[..at]) ^ FINGERPRINT_XOR;
                if be32(value, 0) != expected {
                    return Err(ParseError::BadFingerprint);
                }
                view.fingerprint = true;
            } else if after_integrity {
                // RFC 8489 §14.5: ignore everything after MESSAGE-INTEGRITY except
                // MESSAGE-INTEGRITY-SHA256 and FINGERPRINT.
            } else {
                view.record(t, value, modern);
                if t == attr::MESSAGE_INTEGRITY || t == attr::MESSAGE_INTEGRITY_SHA256 {
                    after_integrity = modern;
                }
            }
            at = value_at + padded;
        }
        Ok(MessageView {
            buf,
            method,
            class,
            transaction_id,
            fingerprint: view.fingerprint,
            change_request: view.change_request,
            response_port: view.response_port,
            padding: view.padding,
            software: view.software,
            integrity: view.integrity,
            malformed: view.malformed,
            unknown: view.unknown,
            unknown_len: view.unknown_len,
            unknown_overflow: view.unknown_overflow,
        })
    }
}

#[derive(Default)]
struct Summary {
    fingerprint: bool,
    change_request: Option<ChangeRequest>,
    response_port: Option<u16>,
    padding: Option<u16>,
    software: bool,
    integrity: bool,
    malformed: Option<u16>,
    unknown: [u16; MAX_UNKNOWN],
    unknown_len: u8,
    unknown_overflow: bool,
}

impl Summary {
    fn unknown(&self) -> &[u16] {
        &self.unknown[..usize::from(self.unknown_len)]
    }

    fn record(&mut self, t: u16, value: &[u8], modern: bool) {
        let vlen = value.len();
        match t {
            attr::CHANGE_REQUEST => {
                // Every instance must be well formed; only the first one counts.
                if vlen == 4 {
                    let flags = value[3];
                    self.change_request.get_or_insert(ChangeRequest {
                        ip: flags & 0x04 != 0,
                        port: flags & 0x02 != 0,
                    });
                } else {
                    self.note_malformed(t);
                }
            }
            attr::RESPONSE_PORT if modern => {
                // RFC 5780 §7.5 defines a 16-bit port followed by two bytes of padding inside
                // the value (length 4); some clients send just the 2-byte port.
                if vlen == 2 || vlen == 4 {
                    self.response_port.get_or_insert(be16(value, 0));
                } else {
                    self.note_malformed(t);
                }
            }
            attr::PADDING if modern => {
                // The value length is 16 bits, so this cannot truncate.
                self.padding.get_or_insert(vlen as u16);
            }
            attr::SOFTWARE => self.software = true,
            attr::MESSAGE_INTEGRITY => {
                if vlen == 20 {
                    self.integrity = true;
                } else {
                    self.note_malformed(t);
                }
            }
            attr::MESSAGE_INTEGRITY_SHA256 => {
                if (16..=32).contains(&vlen) && vlen % 4 == 0 {
                    self.integrity = true;
                } else {
                    self.note_malformed(t);
                }
            }
            _ => {
                let understood = if modern {
                    attr::is_understood(t)
                } else {
                    // RFC 3489 requests may also echo these back.
                    attr::is_understood(t)
                        || t == attr::SOURCE_ADDRESS
                        || t == attr::CHANGED_ADDRESS
                };
                if attr::is_comprehension_required(t) && !understood {
                    self.note_unknown(t);
                }
            }
        }
    }

    fn note_malformed(&mut self, t: u16) {
        if self.malformed.is_none() {
            self.malformed = Some(t);
        }
    }

    fn note_unknown(&mut self, t: u16) {
        if self.unknown().contains(&t) {
            return;
        }
        match self.unknown.get_mut(usize::from(self.unknown_len)) {
            Some(slot) => {
                *slot = t;
                self.unknown_len += 1;
            }
            None => self.unknown_overflow = true,
        }
    }
}

impl<'a> MessageView<'a> {
    /// The unknown comprehension-required attribute types, in order of appearance, without
    /// duplicates, at most [`MAX_UNKNOWN`].
    pub fn unknown(&self) -> &[u16] {
        &self.unknown[..usize::from(self.unknown_len)]
    }

    /// Whether more unknown comprehension-required types were seen than [`MAX_UNKNOWN`].
    pub fn unknown_overflowed(&self) -> bool {
        self.unknown_overflow
    }

    /// Whether this is an RFC 3489 message (no magic cookie).
    pub fn is_classic(&self) -> bool {
        matches!(self.transaction_id, TransactionId::Classic(_))
    }

    /// The whole message.
    pub fn bytes(&self) -> &'a [u8] {
        self.buf
    }

    /// Iterates over the attributes as (type, value), in order, including those after
    /// MESSAGE-INTEGRITY. The framing was validated by [`MessageView::parse`].
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes {
            buf: self.buf,
            at: HEADER_LEN,
        }
    }
}

/// Iterator over the (type, value) pairs of a parsed message.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = (u16, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.at..)?;
        if rest.len() < 4 {
            return None;
        }
        let t = be16(rest, 0);
        let vlen = usize::from(be16(rest, 2));
        let value = rest.get(4..4 + vlen)?;
        self.at += 4 + ((vlen + 3) & !3);
        Some((t, value))
    }
}

/// Returns the total length of the STUN message at the start of `stream` (header + body), or
/// `None` if fewer than 4 bytes are available. Used to frame STUN over TCP (RFC 8489 §6.2.2).
pub fn stream_frame_len(stream: &[u8]) -> Option<usize> {
    if stream.len() < 4 {
        return None;
    }
    Some(HEADER_LEN + usize::from(be16(stream, 2)))
}
