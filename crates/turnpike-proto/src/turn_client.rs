//! The client side of TURN (RFC 8656) over UDP, without I/O: request builders, long-term
//! authentication, and parsers for what a TURN server sends back.
//!
//! Used by the integration tests, the `turn-load` load tool and the demo peer. Nothing here
//! reads a clock, draws a random number or touches a socket: the caller supplies transaction
//! ids and moves the bytes.
//!
//! # Run loop
//!
//! ```text
//! let mut auth = LongTermAuth::new(Credentials::new("alice", "secret"));
//! let mut out = Vec::new();
//! loop {
//!     out.clear();
//!     let signed = Request::Allocate(Allocate::default())
//!         .encode(&mut out, &fresh_transaction_id(), Some(&auth), true)?;
//!     send(&out);
//!     let response = parse_response(&receive())?;            // match the transaction id
//!     if response.is_success() {
//!         if signed { auth.verify(&response)?; }           // MESSAGE-INTEGRITY(-SHA256)
//!         break response.relayed_address();
//!     }
//!     match auth.handle_challenge(&response, signed) {
//!         Challenge::Retry => continue,                    // 401 (first) or 438: resend signed
//!         other => return Err(other),                      // wrong credentials, other error
//!     }
//! }
//! ```
//!
//! Then bind a channel with [`Request::ChannelBind`] and exchange data with [`channel_data`] /
//! [`parse_channel_data`], or without a channel with [`SendIndication`] /
//! [`parse_data_indication`]. [`parse_incoming`] tells the three kinds of datagram a client
//! receives apart.
//!
//! # Writing
//!
//! Every builder appends to a caller-owned `Vec<u8>`: once it has grown to the largest message,
//! no call allocates. A message that would not fit the 16-bit STUN length is refused with
//! [`EncodeError::TooLong`] and `out` is left as it was.
//!
//! # Reading
//!
//! Framing and FINGERPRINT are validated by [`MessageView::parse`]; attributes after
//! MESSAGE-INTEGRITY other than MESSAGE-INTEGRITY-SHA256 are ignored (RFC 8489 §14.5). A
//! malformed value of an attribute this module reads is a [`DecodeError`], never a panic;
//! unknown attributes are ignored.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::credential;
use crate::fast::{finish, finish_with_fingerprint, write_attr, write_header, write_xor_addr_attr};
use crate::integrity::{self, IntegrityError};
use crate::{
    Class, HEADER_LEN, MAGIC_COOKIE, MessageView, ParseError, TransactionId, attr, method,
};

/// REQUESTED-TRANSPORT protocol number for UDP (the only transport RFC 8656 relays).
pub const TRANSPORT_UDP: u8 = 17;
/// PASSWORD-ALGORITHM number of MD5 (RFC 8489 §18.5).
pub const PASSWORD_ALGORITHM_MD5: u16 = 0x0001;
/// PASSWORD-ALGORITHM number of SHA-256 (RFC 8489 §18.5).
pub const PASSWORD_ALGORITHM_SHA256: u16 = 0x0002;
/// Size of the ChannelData header (channel number and length).
pub const CHANNEL_DATA_HEADER_LEN: usize = 4;
/// Largest STUN message body: the length field has 16 bits.
const MAX_BODY: usize = u16::MAX as usize;

/// A TURN channel number, 0x4000–0x7FFF.
///
/// RFC 8656 §12 narrowed the range to 0x4000–0x4FFF (pick from there: [`ChannelNumber::MIN`]
/// to [`ChannelNumber::RFC8656_MAX`]); RFC 5766 allowed up to 0x7FFF, which libwebrtc and
/// coturn clients still use and Turnpike's server accepts, so parsing takes the whole range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelNumber(u16);

impl ChannelNumber {
    /// The lowest channel number.
    pub const MIN: ChannelNumber = ChannelNumber(0x4000);
    /// The highest channel number of RFC 8656.
    pub const RFC8656_MAX: ChannelNumber = ChannelNumber(0x4FFF);
    /// The highest channel number (RFC 5766).
    pub const MAX: ChannelNumber = ChannelNumber(0x7FFF);

    /// The channel number `n`, or `None` outside 0x4000–0x7FFF.
    pub const fn new(n: u16) -> Option<Self> {
        if n >= Self::MIN.0 && n <= Self::MAX.0 {
            Some(ChannelNumber(n))
        } else {
            None
        }
    }

    /// The number.
    pub const fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for ChannelNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#06x}", self.0)
    }
}

/// An address family as REQUESTED-ADDRESS-FAMILY and its relatives encode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4 (0x01).
    V4,
    /// IPv6 (0x02).
    V6,
}

impl AddressFamily {
    /// The wire code.
    pub const fn code(self) -> u8 {
        match self {
            AddressFamily::V4 => 0x01,
            AddressFamily::V6 => 0x02,
        }
    }

    /// The family of a wire code.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            0x01 => Some(AddressFamily::V4),
            0x02 => Some(AddressFamily::V6),
            _ => None,
        }
    }

    /// The family of an address.
    pub const fn of(addr: &SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(_) => AddressFamily::V4,
            SocketAddr::V6(_) => AddressFamily::V6,
        }
    }
}

// ------------------------------------------------------------------------------------ errors

/// Why a message could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message (or ChannelData payload) would exceed 65,535 bytes after the header.
    #[error("message too long for the 16-bit length field")]
    TooLong,
}

/// Why a received datagram was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Not a valid STUN message (framing, cookie, FINGERPRINT).
    #[error("invalid STUN message: {0}")]
    Stun(#[from] ParseError),
    /// An RFC 3489 message (no magic cookie): no TURN server sends one.
    #[error("RFC 3489 message without magic cookie")]
    Classic,
    /// A STUN message of a class this parser does not take (e.g. a request where a response
    /// was expected).
    #[error("unexpected STUN class: {}", .0.as_str())]
    UnexpectedClass(Class),
    /// A STUN message of a method this parser does not take.
    #[error("unexpected STUN method {0:#05x}")]
    UnexpectedMethod(u16),
    /// A required attribute is absent.
    #[error("missing attribute {0:#06x}")]
    MissingAttribute(u16),
    /// An attribute's value is malformed.
    #[error("malformed attribute {0:#06x}")]
    MalformedAttribute(u16),
    /// Neither STUN nor ChannelData (the first two bits are 1x).
    #[error("neither STUN nor ChannelData")]
    NotTurn,
    /// A ChannelData message shorter than its length field, or with more than 3 trailing bytes.
    #[error("ChannelData length does not match the datagram")]
    ChannelDataLength,
}

// ------------------------------------------------------------------------------ credentials

/// A username and password for the long-term credential mechanism.
///
/// `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Credentials from a username and password (used as given: ASCII credentials need no
    /// OpaqueString processing).
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials {
            username: username.into(),
            password: password.into(),
        }
    }

    /// Time-limited credentials of the TURN REST API scheme that coturn's `use-auth-secret`
    /// and Turnpike's `--auth-secret` accept: username `"<expires_unix>:<user>"`, password
    /// `base64(HMAC-SHA1(secret, username))` (see [`crate::credential`]).
    pub fn rest(secret: &[u8], expires_unix: u64, user: &str) -> Self {
        let username = credential::rest_username(expires_unix, user);
        let password = credential::rest_password(secret, &username);
        Credentials { username, password }
    }

    /// The username.
    pub fn username(&self) -> &str {
        &self.username
    }
}

// ---------------------------------------------------------------------------- long-term auth

/// What to do after an error response, as decided by [`LongTermAuth::handle_challenge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// REALM and NONCE were recorded (a first 401, or 438 Stale Nonce): send the request again,
    /// signed, with a new transaction id.
    Retry,
    /// 401 to a signed request: the server does not accept these credentials.
    Rejected,
    /// The server offers only password algorithms this client does not implement.
    UnsupportedAlgorithm,
    /// A 401 or 438 without a usable REALM or NONCE.
    BadChallenge,
    /// Not an authentication error (success, or an error code other than 401 and 438).
    NotAChallenge,
}

/// A password algorithm (RFC 8489 §18.5): how the long-term key is derived from
/// username:realm:password.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PasswordAlgorithm {
    /// MD5, the only algorithm of RFC 5389 (and of servers that offer none).
    Md5,
    /// SHA-256 (RFC 8489).
    Sha256,
}

impl PasswordAlgorithm {
    /// The algorithm number on the wire.
    pub const fn number(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => PASSWORD_ALGORITHM_MD5,
            PasswordAlgorithm::Sha256 => PASSWORD_ALGORITHM_SHA256,
        }
    }
}

/// The long-term key of either password algorithm.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Key {
    Md5([u8; 16]),
    Sha256([u8; 32]),
}

impl Key {
    fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Md5(k) => k,
            Key::Sha256(k) => k,
        }
    }
}

/// The long-term credential mechanism (RFC 8489 §9.2) from the client's side.
///
/// Holds the credentials, and after a challenge the REALM, NONCE and key that sign every later
/// request: USERNAME, REALM, NONCE, then MESSAGE-INTEGRITY (HMAC-SHA1 keyed with
/// MD5(username:realm:password)), as RFC 5389 servers such as coturn expect.
///
/// When the challenge carries PASSWORD-ALGORITHMS (an RFC 8489 server), the client takes the
/// first algorithm of that list it implements (SHA-256 or MD5), echoes the list with
/// PASSWORD-ALGORITHMS, names its choice in PASSWORD-ALGORITHM, and signs with
/// MESSAGE-INTEGRITY-SHA256 instead (RFC 8489 §9.2.4).
///
/// Signing takes `&self`, so one holder can sign any number of requests; only a challenge
/// changes it.
#[derive(Clone)]
pub struct LongTermAuth {
    credentials: Credentials,
    realm: String,
    nonce: String,
    /// The raw PASSWORD-ALGORITHMS value offered by the server, echoed in signed requests.
    algorithms: Vec<u8>,
    algorithm: PasswordAlgorithm,
    key: Option<Key>,
}

impl fmt::Debug for LongTermAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LongTermAuth")
            .field("credentials", &self.credentials)
            .field("realm", &self.realm)
            .field("nonce", &self.nonce)
            .field("algorithm", &self.algorithm)
            .field("challenged", &self.key.is_some())
            .finish()
    }
}

impl LongTermAuth {
    /// A holder that has not been challenged yet: requests go out unsigned until the server
    /// answers one with 401.
    pub fn new(credentials: Credentials) -> Self {
        LongTermAuth {
            credentials,
            realm: String::new(),
            nonce: String::new(),
            algorithms: Vec::new(),
            algorithm: PasswordAlgorithm::Md5,
            key: None,
        }
    }

    /// The credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Whether a challenge was recorded, so that requests are signed.
    pub fn is_challenged(&self) -> bool {
        self.key.is_some()
    }

    /// The REALM of the last challenge.
    pub fn realm(&self) -> Option<&str> {
        self.key.map(|_| self.realm.as_str())
    }

    /// The NONCE of the last challenge.
    pub fn nonce(&self) -> Option<&str> {
        self.key.map(|_| self.nonce.as_str())
    }

    /// The password algorithm in use (MD5 unless the server offered PASSWORD-ALGORITHMS).
    pub fn password_algorithm(&self) -> PasswordAlgorithm {
        self.algorithm
    }

    /// Whether requests are signed with MESSAGE-INTEGRITY-SHA256 (the server offered
    /// PASSWORD-ALGORITHMS) rather than MESSAGE-INTEGRITY.
    pub fn uses_sha256_integrity(&self) -> bool {
        !self.algorithms.is_empty()
    }

    /// The long-term key (16 bytes for MD5, 32 for SHA-256), once challenged.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_ref().map(Key::as_bytes)
    }

    /// Reads an error response to a request that was sent `signed` (what
    /// [`Request::encode`] returned) and says what to do next. A 401 or 438 with REALM and NONCE
    /// updates the realm, nonce and key (also when the credentials were rejected, so a caller
    /// with other credentials can start over).
    pub fn handle_challenge(&mut self, response: &Response<'_>, signed: bool) -> Challenge {
        let code = match response.error {
            Some(ErrorCode {
                code: c @ (401 | 438),
                ..
            }) => c,
            _ => return Challenge::NotAChallenge,
        };
        let nonce = match response.nonce {
            Some(n) if !n.is_empty() => n,
            _ => return Challenge::BadChallenge,
        };
        // A 438 may omit REALM: the realm stays what it was.
        let realm = match (response.realm, self.key.is_some()) {
            (Some(r), _) => r,
            (None, true) if code == 438 => self.realm.as_str(),
            (None, _) => return Challenge::BadChallenge,
        }
        .to_owned();
        let algorithms = response.password_algorithms.unwrap_or(&[]);
        let algorithm = if algorithms.is_empty() {
            PasswordAlgorithm::Md5
        } else {
            match first_supported(algorithms) {
                Some(a) => a,
                None => return Challenge::UnsupportedAlgorithm,
            }
        };
        if self.key.is_none() || realm != self.realm || algorithm != self.algorithm {
            let c = &self.credentials;
            self.key = Some(match algorithm {
                PasswordAlgorithm::Md5 => {
                    Key::Md5(integrity::long_term_key(&c.username, &realm, &c.password))
                }
                PasswordAlgorithm::Sha256 => Key::Sha256(integrity::long_term_key_sha256(
                    &c.username,
                    &realm,
                    &c.password,
                )),
            });
            self.realm = realm;
            self.algorithm = algorithm;
        }
        self.nonce.clear();
        self.nonce.push_str(nonce);
        self.algorithms.clear();
        self.algorithms.extend_from_slice(algorithms);
        if code == 401 && signed {
            Challenge::Rejected
        } else {
            Challenge::Retry
        }
    }

    /// Verifies the integrity of a response with the long-term key: its
    /// MESSAGE-INTEGRITY-SHA256 if it has one, else its MESSAGE-INTEGRITY.
    /// `Err(IntegrityError::Missing)` when it has neither, or this holder was never challenged
    /// (there is no key to check it with).
    pub fn verify(&self, response: &Response<'_>) -> Result<(), IntegrityError> {
        match &self.key {
            Some(key) if response.integrity_sha256 => {
                integrity::verify_sha256(&response.view, key.as_bytes())
            }
            Some(key) => integrity::verify(&response.view, key.as_bytes()),
            None => Err(IntegrityError::Missing),
        }
    }

    /// Appends USERNAME, REALM, NONCE, the password-algorithm attributes and
    /// MESSAGE-INTEGRITY (or MESSAGE-INTEGRITY-SHA256) to the message that starts at `start` in
    /// `out`. Returns false (and writes nothing) before the first challenge.
    pub fn sign(&self, out: &mut Vec<u8>, start: usize) -> bool {
        let Some(key) = &self.key else {
            return false;
        };
        write_attr(out, attr::USERNAME, self.credentials.username.as_bytes());
        write_attr(out, attr::REALM, self.realm.as_bytes());
        write_attr(out, attr::NONCE, self.nonce.as_bytes());
        if self.algorithms.is_empty() {
            integrity::append(out, start, key.as_bytes());
        } else {
            write_attr(out, attr::PASSWORD_ALGORITHMS, &self.algorithms);
            let mut chosen = [0u8; 4];
            chosen[..2].copy_from_slice(&self.algorithm.number().to_be_bytes());
            write_attr(out, attr::PASSWORD_ALGORITHM, &chosen);
            integrity::append_sha256(out, start, key.as_bytes());
        }
        true
    }
}

/// The first algorithm of a PASSWORD-ALGORITHMS value that this client implements.
fn first_supported(mut list: &[u8]) -> Option<PasswordAlgorithm> {
    while list.len() >= 4 {
        let alg = u16::from_be_bytes([list[0], list[1]]);
        let len = usize::from(u16::from_be_bytes([list[2], list[3]]));
        match alg {
            PASSWORD_ALGORITHM_MD5 => return Some(PasswordAlgorithm::Md5),
            PASSWORD_ALGORITHM_SHA256 => return Some(PasswordAlgorithm::Sha256),
            _ => {}
        }
        list = list.get(4 + ((len + 3) & !3)..)?;
    }
    None
}

// ---------------------------------------------------------------------------------- builders

/// The options of an Allocate request. REQUESTED-TRANSPORT (UDP) is always sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Allocate {
    /// LIFETIME in seconds.
    pub lifetime: Option<u32>,
    /// REQUESTED-ADDRESS-FAMILY.
    pub family: Option<AddressFamily>,
    /// ADDITIONAL-ADDRESS-FAMILY (RFC 8656 §7.1: asks for a second relayed address; only
    /// [`AddressFamily::V6`] is meaningful).
    pub additional_family: Option<AddressFamily>,
    /// EVEN-PORT, with its R bit (also reserve the next port).
    pub even_port: Option<bool>,
    /// RESERVATION-TOKEN from an earlier Allocate with EVEN-PORT(R).
    pub reservation_token: Option<u64>,
    /// DONT-FRAGMENT.
    pub dont_fragment: bool,
}

/// A TURN request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request<'a> {
    /// Allocate a relayed transport address.
    Allocate(Allocate),
    /// Refresh the allocation; a `lifetime` of 0 deletes it.
    Refresh {
        /// LIFETIME in seconds.
        lifetime: u32,
        /// REQUESTED-ADDRESS-FAMILY (refresh or delete only one family of a dual allocation).
        family: Option<AddressFamily>,
    },
    /// Install or refresh permissions for the IP addresses of these peers (one
    /// XOR-PEER-ADDRESS each).
    CreatePermission(&'a [SocketAddr]),
    /// Bind a channel to a peer.
    ChannelBind {
        /// CHANNEL-NUMBER.
        channel: ChannelNumber,
        /// XOR-PEER-ADDRESS.
        peer: SocketAddr,
    },
}

impl Request<'_> {
    /// The STUN method.
    pub const fn method(&self) -> u16 {
        match self {
            Request::Allocate(_) => method::ALLOCATE,
            Request::Refresh { .. } => method::REFRESH,
            Request::CreatePermission(_) => method::CREATE_PERMISSION,
            Request::ChannelBind { .. } => method::CHANNEL_BIND,
        }
    }

    /// Appends the request to `out`, signed with `auth` when it is given and has been
    /// challenged, then FINGERPRINT if `fingerprint`. Returns whether the request was signed
    /// (pass that to [`LongTermAuth::handle_challenge`]).
    pub fn encode(
        &self,
        out: &mut Vec<u8>,
        transaction_id: &[u8; 12],
        auth: Option<&LongTermAuth>,
        fingerprint: bool,
    ) -> Result<bool, EncodeError> {
        let start = out.len();
        write_header(out, self.method(), Class::Request, transaction_id);
        match *self {
            Request::Allocate(a) => {
                write_attr(out, attr::REQUESTED_TRANSPORT, &[TRANSPORT_UDP, 0, 0, 0]);
                if let Some(l) = a.lifetime {
                    write_attr(out, attr::LIFETIME, &l.to_be_bytes());
                }
                if let Some(f) = a.family {
                    write_attr(out, attr::REQUESTED_ADDRESS_FAMILY, &[f.code(), 0, 0, 0]);
                }
                if let Some(f) = a.additional_family {
                    write_attr(out, attr::ADDITIONAL_ADDRESS_FAMILY, &[f.code(), 0, 0, 0]);
                }
                if let Some(r) = a.even_port {
                    write_attr(out, attr::EVEN_PORT, &[if r { 0x80 } else { 0 }]);
                }
                if let Some(t) = a.reservation_token {
                    write_attr(out, attr::RESERVATION_TOKEN, &t.to_be_bytes());
                }
                if a.dont_fragment {
                    write_attr(out, attr::DONT_FRAGMENT, &[]);
                }
            }
            Request::Refresh { lifetime, family } => {
                write_attr(out, attr::LIFETIME, &lifetime.to_be_bytes());
                if let Some(f) = family {
                    write_attr(out, attr::REQUESTED_ADDRESS_FAMILY, &[f.code(), 0, 0, 0]);
                }
            }
            Request::CreatePermission(peers) => {
                for p in peers {
                    if out.len() - start > MAX_BODY + HEADER_LEN {
                        break; // too long already; reported below
                    }
                    write_xor_addr_attr(out, attr::XOR_PEER_ADDRESS, *p, transaction_id);
                }
            }
            Request::ChannelBind { channel, peer } => {
                let c = channel.get().to_be_bytes();
                write_attr(out, attr::CHANNEL_NUMBER, &[c[0], c[1], 0, 0]);
                write_xor_addr_attr(out, attr::XOR_PEER_ADDRESS, peer, transaction_id);
            }
        }
        let signed = auth.is_some_and(|a| a.sign(out, start));
        close(out, start, fingerprint, signed)?;
        Ok(signed)
    }
}

/// Sets the final length (adding FINGERPRINT if asked), or undoes the message if it is too
/// long. `has_integrity`: MESSAGE-INTEGRITY was appended, which set the length already.
fn close(
    out: &mut Vec<u8>,
    start: usize,
    fingerprint: bool,
    has_integrity: bool,
) -> Result<(), EncodeError> {
    let body = out.len() - start - HEADER_LEN + if fingerprint { 8 } else { 0 };
    if body > MAX_BODY {
        out.truncate(start);
        return Err(EncodeError::TooLong);
    }
    if fingerprint {
        finish_with_fingerprint(out, start);
    } else if !has_integrity {
        finish(out, start);
    }
    Ok(())
}

/// A Send indication: data for a peer, without a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendIndication<'a> {
    /// XOR-PEER-ADDRESS.
    pub peer: SocketAddr,
    /// DATA.
    pub data: &'a [u8],
    /// DONT-FRAGMENT.
    pub dont_fragment: bool,
    /// Append FINGERPRINT.
    pub fingerprint: bool,
}

impl SendIndication<'_> {
    /// Appends the indication to `out`.
    pub fn encode(&self, out: &mut Vec<u8>, transaction_id: &[u8; 12]) -> Result<(), EncodeError> {
        let start = out.len();
        if self.data.len() > MAX_BODY {
            return Err(EncodeError::TooLong);
        }
        write_header(out, method::SEND, Class::Indication, transaction_id);
        write_xor_addr_attr(out, attr::XOR_PEER_ADDRESS, self.peer, transaction_id);
        if self.dont_fragment {
            write_attr(out, attr::DONT_FRAGMENT, &[]);
        }
        write_attr(out, attr::DATA, self.data);
        close(out, start, self.fingerprint, false)
    }
}

/// Appends a ChannelData message: the 4-byte header (channel, payload length) and the payload,
/// then zeros up to a multiple of 4 bytes if `pad` (required over TCP and TLS, RFC 8656 §12.5;
/// leave it off over UDP).
pub fn channel_data(
    out: &mut Vec<u8>,
    channel: ChannelNumber,
    payload: &[u8],
    pad: bool,
) -> Result<(), EncodeError> {
    let len = u16::try_from(payload.len()).map_err(|_| EncodeError::TooLong)?;
    out.extend_from_slice(&channel.get().to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
    if pad {
        let n = (4 - payload.len() % 4) % 4;
        out.extend_from_slice(&[0u8; 3][..n]);
    }
    Ok(())
}

// ----------------------------------------------------------------------------------- reading

/// ERROR-CODE of an error response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorCode<'a> {
    /// The code, 300–699.
    pub code: u16,
    /// The reason phrase (empty if it was not UTF-8).
    pub reason: &'a str,
}

/// ADDRESS-ERROR-CODE (RFC 8656 §18.13): why one family of a dual allocation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressError<'a> {
    /// The family that could not be allocated (`None` for an unknown code).
    pub family: Option<AddressFamily>,
    /// The error code, 300–699.
    pub code: u16,
    /// The reason phrase (empty if it was not UTF-8).
    pub reason: &'a str,
}

/// A TURN success or error response, borrowed from the datagram.
#[derive(Debug, Clone)]
pub struct Response<'a> {
    view: MessageView<'a>,
    /// The method.
    pub method: u16,
    /// [`Class::Success`] or [`Class::Error`].
    pub class: Class,
    /// The transaction id.
    pub transaction_id: [u8; 12],
    /// ERROR-CODE; always present in an error response.
    pub error: Option<ErrorCode<'a>>,
    /// REALM.
    pub realm: Option<&'a str>,
    /// NONCE.
    pub nonce: Option<&'a str>,
    /// PASSWORD-ALGORITHMS, the raw value.
    pub password_algorithms: Option<&'a [u8]>,
    /// XOR-RELAYED-ADDRESS, in order of appearance (a dual allocation has two).
    pub relayed: [Option<SocketAddr>; 2],
    /// XOR-MAPPED-ADDRESS.
    pub mapped: Option<SocketAddr>,
    /// LIFETIME in seconds.
    pub lifetime: Option<u32>,
    /// RESERVATION-TOKEN.
    pub reservation_token: Option<u64>,
    /// ADDRESS-ERROR-CODE.
    pub address_error: Option<AddressError<'a>>,
    /// SOFTWARE (`None` if absent or not UTF-8).
    pub software: Option<&'a str>,
    /// MESSAGE-INTEGRITY is present (check it with [`LongTermAuth::verify`]).
    pub integrity: bool,
    /// MESSAGE-INTEGRITY-SHA256 is present (check it with [`LongTermAuth::verify`]).
    pub integrity_sha256: bool,
    /// A valid FINGERPRINT ended the message.
    pub fingerprint: bool,
}

impl<'a> Response<'a> {
    /// Whether this is a success response.
    pub fn is_success(&self) -> bool {
        self.class == Class::Success
    }

    /// The error code of an error response.
    pub fn error_code(&self) -> Option<u16> {
        self.error.map(|e| e.code)
    }

    /// The first XOR-RELAYED-ADDRESS.
    pub fn relayed_address(&self) -> Option<SocketAddr> {
        self.relayed[0]
    }

    /// The XOR-RELAYED-ADDRESS of one family.
    pub fn relayed_address_of(&self, family: AddressFamily) -> Option<SocketAddr> {
        self.relayed
            .iter()
            .flatten()
            .copied()
            .find(|a| AddressFamily::of(a) == family)
    }

    /// The validated message underneath.
    pub fn view(&self) -> &MessageView<'a> {
        &self.view
    }
}

fn parse_stun(bytes: &[u8]) -> Result<(MessageView<'_>, [u8; 12]), DecodeError> {
    let view = MessageView::parse(bytes)?;
    match view.transaction_id {
        TransactionId::Modern(tid) => Ok((view, tid)),
        TransactionId::Classic(_) => Err(DecodeError::Classic),
    }
}

fn utf8(value: &[u8], t: u16) -> Result<&str, DecodeError> {
    std::str::from_utf8(value).map_err(|_| DecodeError::MalformedAttribute(t))
}

fn be32(value: &[u8], t: u16) -> Result<u32, DecodeError> {
    let b: [u8; 4] = value
        .try_into()
        .map_err(|_| DecodeError::MalformedAttribute(t))?;
    Ok(u32::from_be_bytes(b))
}

/// Decodes an (error class, number, reason) triple at `value[2..]`.
fn code_and_reason(value: &[u8], t: u16) -> Result<(u16, &str), DecodeError> {
    if value.len() < 4 {
        return Err(DecodeError::MalformedAttribute(t));
    }
    let class = u16::from(value[2] & 0x07);
    let number = u16::from(value[3]);
    if !(3..=6).contains(&class) || number > 99 {
        return Err(DecodeError::MalformedAttribute(t));
    }
    Ok((
        class * 100 + number,
        std::str::from_utf8(&value[4..]).unwrap_or(""),
    ))
}

/// Parses a TURN (or any STUN) success or error response.
///
/// Requests and indications are refused with [`DecodeError::UnexpectedClass`]; an error
/// response without ERROR-CODE with [`DecodeError::MissingAttribute`].
pub fn parse_response(bytes: &[u8]) -> Result<Response<'_>, DecodeError> {
    let (view, transaction_id) = parse_stun(bytes)?;
    if !matches!(view.class, Class::Success | Class::Error) {
        return Err(DecodeError::UnexpectedClass(view.class));
    }
    let mut r = Response {
        method: view.method,
        class: view.class,
        transaction_id,
        error: None,
        realm: None,
        nonce: None,
        password_algorithms: None,
        relayed: [None; 2],
        mapped: None,
        lifetime: None,
        reservation_token: None,
        address_error: None,
        software: None,
        integrity: false,
        integrity_sha256: false,
        fingerprint: view.fingerprint,
        view,
    };
    let mut after_integrity = false;
    for (t, v) in r.view.attributes() {
        // RFC 8489 §14.5: after MESSAGE-INTEGRITY only MESSAGE-INTEGRITY-SHA256 (and
        // FINGERPRINT) count.
        if after_integrity && t != attr::MESSAGE_INTEGRITY_SHA256 {
            continue;
        }
        match t {
            attr::ERROR_CODE => {
                let (code, reason) = code_and_reason(v, t)?;
                r.error.get_or_insert(ErrorCode { code, reason });
            }
            attr::REALM => r.realm = Some(utf8(v, t)?),
            attr::NONCE => r.nonce = Some(utf8(v, t)?),
            attr::PASSWORD_ALGORITHMS => r.password_algorithms = Some(v),
            attr::XOR_RELAYED_ADDRESS => {
                let a = decode_xor_address(v, &transaction_id)
                    .ok_or(DecodeError::MalformedAttribute(t))?;
                if let Some(slot) = r.relayed.iter_mut().find(|s| s.is_none()) {
                    *slot = Some(a);
                }
            }
            attr::XOR_MAPPED_ADDRESS => {
                r.mapped = Some(
                    decode_xor_address(v, &transaction_id)
                        .ok_or(DecodeError::MalformedAttribute(t))?,
                );
            }
            attr::LIFETIME => r.lifetime = Some(be32(v, t)?),
            attr::RESERVATION_TOKEN => {
                let b: [u8; 8] = v
                    .try_into()
                    .map_err(|_| DecodeError::MalformedAttribute(t))?;
                r.reservation_token = Some(u64::from_be_bytes(b));
            }
            attr::ADDRESS_ERROR_CODE => {
                let (code, reason) = code_and_reason(v, t)?;
                r.address_error = Some(AddressError {
                    family: AddressFamily::from_code(v[0]),
                    code,
                    reason,
                });
            }
            attr::SOFTWARE => r.software = std::str::from_utf8(v).ok(),
            attr::MESSAGE_INTEGRITY => {
                r.integrity = true;
                after_integrity = true;
            }
            attr::MESSAGE_INTEGRITY_SHA256 => {
                r.integrity_sha256 = true;
                break;
            }
            _ => {}
        }
    }
    if r.class == Class::Error && r.error.is_none() {
        return Err(DecodeError::MissingAttribute(attr::ERROR_CODE));
    }
    Ok(r)
}

/// A Data indication: data a peer sent, relayed without a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataIndication<'a> {
    /// The transaction id (meaningless, but unique per indication).
    pub transaction_id: [u8; 12],
    /// XOR-PEER-ADDRESS: who sent the data.
    pub peer: SocketAddr,
    /// DATA.
    pub data: &'a [u8],
}

/// Parses a Data indication.
pub fn parse_data_indication(bytes: &[u8]) -> Result<DataIndication<'_>, DecodeError> {
    let (view, transaction_id) = parse_stun(bytes)?;
    data_indication(&view, transaction_id)
}

fn data_indication<'a>(
    view: &MessageView<'a>,
    transaction_id: [u8; 12],
) -> Result<DataIndication<'a>, DecodeError> {
    if view.class != Class::Indication {
        return Err(DecodeError::UnexpectedClass(view.class));
    }
    if view.method != method::DATA {
        return Err(DecodeError::UnexpectedMethod(view.method));
    }
    let mut peer = None;
    let mut data = None;
    for (t, v) in view.attributes() {
        match t {
            attr::XOR_PEER_ADDRESS if peer.is_none() => {
                peer = Some(
                    decode_xor_address(v, &transaction_id)
                        .ok_or(DecodeError::MalformedAttribute(t))?,
                );
            }
            attr::DATA if data.is_none() => data = Some(v),
            attr::MESSAGE_INTEGRITY => break,
            _ => {}
        }
    }
    Ok(DataIndication {
        transaction_id,
        peer: peer.ok_or(DecodeError::MissingAttribute(attr::XOR_PEER_ADDRESS))?,
        data: data.ok_or(DecodeError::MissingAttribute(attr::DATA))?,
    })
}

/// A ChannelData message, borrowed from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// The channel.
    pub channel: ChannelNumber,
    /// The application data (without padding).
    pub payload: &'a [u8],
}

/// Parses a ChannelData message that fills a datagram, tolerating up to 3 bytes of padding
/// after the payload.
pub fn parse_channel_data(bytes: &[u8]) -> Result<ChannelData<'_>, DecodeError> {
    let Some(header) = bytes.get(..CHANNEL_DATA_HEADER_LEN) else {
        return Err(DecodeError::ChannelDataLength);
    };
    let n = u16::from_be_bytes([header[0], header[1]]);
    if n & 0xC000 != 0x4000 {
        return Err(DecodeError::NotTurn);
    }
    // The first two bits are 01, so the number is in 0x4000–0x7FFF.
    let channel = ChannelNumber::new(n).ok_or(DecodeError::NotTurn)?;
    let len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    let rest = &bytes[CHANNEL_DATA_HEADER_LEN..];
    if rest.len() < len || rest.len() - len > 3 {
        return Err(DecodeError::ChannelDataLength);
    }
    Ok(ChannelData {
        channel,
        payload: &rest[..len],
    })
}

/// The length of the ChannelData frame at the start of a TCP or TLS stream, padding included
/// (RFC 8656 §12.5), or `None` with fewer than 4 bytes.
pub fn channel_data_frame_len(stream: &[u8]) -> Option<usize> {
    let h = stream.get(..CHANNEL_DATA_HEADER_LEN)?;
    let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    Some(CHANNEL_DATA_HEADER_LEN + ((len + 3) & !3))
}

/// Anything a TURN client receives from its server.
// A parsed datagram lives briefly on the stack and is matched at once; boxing the response
// would cost an allocation per datagram for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum Incoming<'a> {
    /// A success or error response.
    Response(Response<'a>),
    /// A Data indication.
    Data(DataIndication<'a>),
    /// A ChannelData message.
    ChannelData(ChannelData<'a>),
}

/// Tells a response, a Data indication and a ChannelData message apart (by the first two bits
/// and the STUN class) and parses it.
pub fn parse_incoming(bytes: &[u8]) -> Result<Incoming<'_>, DecodeError> {
    match bytes.first().map(|b| b >> 6) {
        Some(0b01) => parse_channel_data(bytes).map(Incoming::ChannelData),
        Some(0b00) => {
            let (view, tid) = parse_stun(bytes)?;
            if view.class == Class::Indication {
                data_indication(&view, tid).map(Incoming::Data)
            } else {
                parse_response(bytes).map(Incoming::Response)
            }
        }
        Some(_) => Err(DecodeError::NotTurn),
        None => Err(DecodeError::Stun(ParseError::TooShort)),
    }
}

/// Decodes the value of an XOR-MAPPED-ADDRESS-style attribute (XOR-MAPPED-ADDRESS,
/// XOR-PEER-ADDRESS, XOR-RELAYED-ADDRESS; RFC 8489 §14.2): `None` unless it is a well-formed
/// IPv4 (8-byte) or IPv6 (20-byte) value.
pub fn decode_xor_address(value: &[u8], transaction_id: &[u8; 12]) -> Option<SocketAddr> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = u16::from_be_bytes([*value.get(2)?, *value.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    match (*value.get(1)?, value.len()) {
        (0x01, 8) => {
            let mut ip = [0u8; 4];
            for (i, b) in ip.iter_mut().enumerate() {
                *b = value[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 20) => {
            let mut ip = [0u8; 16];
            for (i, b) in ip.iter_mut().enumerate() {
                let k = if i < 4 {
                    cookie[i]
                } else {
                    transaction_id[i - 4]
                };
                *b = value[4 + i] ^ k;
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_supported_algorithm_in_server_order() {
        assert_eq!(
            first_supported(&[0, 2, 0, 0, 0, 1, 0, 0]),
            Some(PasswordAlgorithm::Sha256)
        );
        assert_eq!(
            first_supported(&[0, 9, 0, 2, 7, 7, 0, 0, 0, 1, 0, 0]),
            Some(PasswordAlgorithm::Md5)
        );
        assert_eq!(first_supported(&[0, 3, 0, 0]), None);
        assert_eq!(first_supported(&[0, 3, 0, 9, 1]), None);
        assert_eq!(first_supported(&[]), None);
    }
}
