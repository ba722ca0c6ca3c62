//! Long-term credentials and nonces for the TURN server (RFC 8489 §9.2, RFC 8656 §5).
//!
//! Sans-IO like the rest of the core: the caller passes the time (`now_unix`, Unix seconds) and
//! the random nonce key; nothing here reads a clock, draws randomness or logs.
//!
//! # Credentials
//! [`Credentials`] holds the users and shared secrets of one realm:
//!
//! * **Static users** (`name` + password): only the derived long-term keys are kept,
//!   MD5(name:realm:password) and SHA-256(name:realm:password), never the password. A user may
//!   also be given as a pre-hashed MD5 key (coturn's `0x<hex>` form), which cannot serve the
//!   SHA-256 password algorithm.
//! * **Shared secrets** (coturn's "TURN REST API", see [`turnpike_proto::credential`]): the
//!   username carries its own expiry (`EXPIRY:USER`), and the password is
//!   base64(HMAC-SHA1(secret, username)), so a web service that knows the secret mints
//!   credentials that this server checks without any per-user state. Credentials are
//!   interchangeable with coturn's `use-auth-secret` / `static-auth-secret` and eturnal's.
//!   Several secrets may be configured at once to **rotate** one without a flag day: add the
//!   new secret, move the minting service to it, and remove the old one once the longest
//!   credential lifetime has passed. Each secret is tried in order; a static user of the same
//!   name wins over all of them.
//!
//! [`Credentials::authenticate`] returns the [`Key`] that verified, which the server then uses
//! to sign its response. MAC comparisons are constant-time, and the success path allocates
//! nothing.
//!
//! # Nonces
//! [`NonceKey`] issues **stateless** nonces: each carries its own expiry and an HMAC over it,
//! so an unauthenticated request (anyone on the Internet can send one, from any spoofed
//! address) never creates server state, and checking a nonce is one HMAC. A nonce is bound to:
//!
//! * its **expiry** (after which it is [`NonceCheck::Stale`]: the client gets a 438 and retries
//!   at once with a fresh nonce from that response);
//! * the **client IP address** (a nonce captured on one network is useless from another);
//! * the **STUN security feature bits** it advertises (RFC 8489 §9.2's nonce cookie), so a
//!   man in the middle cannot strip PASSWORD-ALGORITHMS from a challenge to force MD5 without
//!   the nonce failing.
//!
//! The HMAC-SHA256 is truncated to 96 bits. That is safe here: the tag only has to resist
//! forgery by someone who does not know the key, a forger gets one online guess per request
//! (2^-96 each), and a nonce lives for minutes. Truncation keeps the whole nonce at 35 bytes.
//!
//! The driver chooses the key: `turnpike serve` derives it from the first shared secret (or
//! the random secret it makes when none is configured), so nodes sharing a secret accept each
//! other's nonces. A key change costs each client at most one extra 438 round trip.
//!
//! A nonce is `"obMatJos2"` + 4 base64 characters of the 24 security feature bits + 22
//! base64url characters of `[expiry: u32 big-endian][HMAC-SHA256(key, label ‖ expiry ‖ client
//! IP ‖ feature bits), first 12 bytes]`. The feature bits follow RFC 8489 erratum 6290: bit 0
//! ("Password algorithms") is the least significant bit.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use turnpike_proto::credential::{RestPassword, rest_expiry};
use turnpike_proto::integrity::{self, IntegrityError};
use turnpike_proto::view::MessageView;

type HmacSha256 = Hmac<Sha256>;

/// A password algorithm of RFC 8489 §18.5 (PASSWORD-ALGORITHM and PASSWORD-ALGORITHMS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PasswordAlgorithm {
    /// MD5(username:realm:password): the 16-byte key every TURN client knows (0x0001).
    Md5,
    /// SHA-256(username:realm:password): the 32-byte key of RFC 8489 (0x0002).
    Sha256,
}

impl PasswordAlgorithm {
    /// Both algorithms, in the order a server offers them in PASSWORD-ALGORITHMS (strongest
    /// first).
    pub const ALL: [PasswordAlgorithm; 2] = [PasswordAlgorithm::Sha256, PasswordAlgorithm::Md5];

    /// The wire value in PASSWORD-ALGORITHM(S).
    pub const fn wire(self) -> u16 {
        match self {
            PasswordAlgorithm::Md5 => 0x0001,
            PasswordAlgorithm::Sha256 => 0x0002,
        }
    }

    /// The algorithm of a wire value; `None` for values this server does not support.
    pub const fn from_wire(v: u16) -> Option<Self> {
        match v {
            0x0001 => Some(PasswordAlgorithm::Md5),
            0x0002 => Some(PasswordAlgorithm::Sha256),
            _ => None,
        }
    }

    /// A short lowercase name, for metrics and logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            PasswordAlgorithm::Md5 => "md5",
            PasswordAlgorithm::Sha256 => "sha256",
        }
    }
}

/// A long-term credential key (RFC 8489 §9.2.2), the HMAC key of MESSAGE-INTEGRITY and
/// MESSAGE-INTEGRITY-SHA256. Its `Debug` output never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum Key {
    /// MD5(username:realm:password).
    Md5([u8; 16]),
    /// SHA-256(username:realm:password).
    Sha256([u8; 32]),
}

impl Key {
    /// Derives the long-term key of `algorithm` from a username, realm and password.
    pub fn derive(
        algorithm: PasswordAlgorithm,
        username: &str,
        realm: &str,
        password: &str,
    ) -> Self {
        match algorithm {
            PasswordAlgorithm::Md5 => Key::Md5(integrity::long_term_key(username, realm, password)),
            PasswordAlgorithm::Sha256 => {
                Key::Sha256(integrity::long_term_key_sha256(username, realm, password))
            }
        }
    }

    /// The key bytes, to sign a response with.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Md5(k) => k,
            Key::Sha256(k) => k,
        }
    }

    /// The password algorithm the key was derived with.
    pub const fn algorithm(&self) -> PasswordAlgorithm {
        match self {
            Key::Md5(_) => PasswordAlgorithm::Md5,
            Key::Sha256(_) => PasswordAlgorithm::Sha256,
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

/// Why a request did not authenticate. Each maps to a label of the auth-failure metric; all
/// of them are answered with 401 (or 400 for a malformed integrity attribute) by the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No static user of that name, and no shared secret or no timestamp in the username.
    #[error("unknown user")]
    UnknownUser,
    /// A REST API username whose expiry has passed.
    #[error("credential expired")]
    Expired,
    /// The HMAC does not match: wrong password, or a tampered message.
    #[error("integrity check failed")]
    Mismatch,
    /// The user has no key of the requested password algorithm (a pre-hashed MD5 user asked
    /// for SHA-256).
    #[error("unsupported password algorithm for this user")]
    UnsupportedAlgorithm,
    /// The message lacks the integrity attribute that was to be checked.
    #[error("no integrity attribute")]
    MissingIntegrity,
    /// The integrity attribute has a wrong length.
    #[error("malformed integrity attribute")]
    MalformedIntegrity,
}

impl AuthError {
    /// Every variant, in declaration order (to pre-register metric labels).
    pub const ALL: [AuthError; 6] = [
        AuthError::UnknownUser,
        AuthError::Expired,
        AuthError::Mismatch,
        AuthError::UnsupportedAlgorithm,
        AuthError::MissingIntegrity,
        AuthError::MalformedIntegrity,
    ];

    /// A stable kebab-case name, used as a metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthError::UnknownUser => "unknown-user",
            AuthError::Expired => "expired",
            AuthError::Mismatch => "mismatch",
            AuthError::UnsupportedAlgorithm => "unsupported-algorithm",
            AuthError::MissingIntegrity => "missing-integrity",
            AuthError::MalformedIntegrity => "malformed-integrity",
        }
    }
}

impl From<IntegrityError> for AuthError {
    fn from(e: IntegrityError) -> Self {
        match e {
            IntegrityError::Missing => AuthError::MissingIntegrity,
            IntegrityError::Malformed => AuthError::MalformedIntegrity,
            _ => AuthError::Mismatch,
        }
    }
}

/// The keys of one static user.
#[derive(Clone)]
struct UserKeys {
    md5: [u8; 16],
    /// `None` for a user configured with a pre-hashed MD5 key.
    sha256: Option<[u8; 32]>,
}

/// Static users and shared secrets of one realm.
///
/// `Debug` shows the realm and how many users and secrets there are, never a key or secret.
#[derive(Clone, Default)]
pub struct Credentials {
    realm: String,
    users: HashMap<String, UserKeys>,
    secrets: Vec<Vec<u8>>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .field("secrets", &self.secrets.len())
            .finish()
    }
}

impl Credentials {
    /// Empty credentials for `realm` (the REALM the server sends; part of every key).
    pub fn new(realm: impl Into<String>) -> Self {
        Credentials {
            realm: realm.into(),
            ..Credentials::default()
        }
    }

    /// The realm.
    pub fn realm(&self) -> &str {
        &self.realm
    }

    /// Adds (or replaces) a static user. Only the MD5 and SHA-256 long-term keys are stored.
    pub fn add_user(&mut self, name: &str, password: &str) {
        let keys = UserKeys {
            md5: integrity::long_term_key(name, &self.realm, password),
            sha256: Some(integrity::long_term_key_sha256(name, &self.realm, password)),
        };
        self.users.insert(name.to_owned(), keys);
    }

    /// Adds (or replaces) a static user by its pre-hashed key MD5(name:realm:password)
    /// (coturn's `user=name:0x<hex>` form). Such a user cannot use the SHA-256 password
    /// algorithm, as that key cannot be derived from the MD5 one.
    pub fn add_user_key(&mut self, name: &str, md5_key: [u8; 16]) {
        let keys = UserKeys {
            md5: md5_key,
            sha256: None,
        };
        self.users.insert(name.to_owned(), keys);
    }

    /// Adds a REST API shared secret. Several may be configured (for rotation); they are tried
    /// in the order they were added.
    pub fn add_secret(&mut self, secret: &[u8]) {
        self.secrets.push(secret.to_vec());
    }

    /// Whether any static user is configured.
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }

    /// Whether any shared secret is configured.
    pub fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Whether nothing is configured (then no request can authenticate).
    pub fn is_empty(&self) -> bool {
        !self.has_users() && !self.has_secrets()
    }

    /// Checks the MESSAGE-INTEGRITY (when `use_sha256_mi` is false) or the
    /// MESSAGE-INTEGRITY-SHA256 (when true) of `view` for `username`, with the long-term key
    /// of `algorithm` (the request's PASSWORD-ALGORITHM; [`PasswordAlgorithm::Md5`] when it
    /// has none), and returns the key that verified, which the server then uses to sign its
    /// response.
    ///
    /// A static user with that name wins over the shared secrets. Otherwise the username must
    /// carry a REST API expiry (see [`rest_expiry`]) no earlier than `now_unix`
    /// ([`AuthError::Expired`] otherwise; [`AuthError::UnknownUser`] when there are no secrets
    /// or the name has no timestamp), and each secret is tried in order.
    ///
    /// MAC comparison is constant-time; nothing is allocated.
    pub fn authenticate(
        &self,
        view: &MessageView<'_>,
        username: &str,
        algorithm: PasswordAlgorithm,
        use_sha256_mi: bool,
        now_unix: u64,
    ) -> Result<Key, AuthError> {
        if let Some(user) = self.users.get(username) {
            let key = match algorithm {
                PasswordAlgorithm::Md5 => Key::Md5(user.md5),
                PasswordAlgorithm::Sha256 => {
                    Key::Sha256(user.sha256.ok_or(AuthError::UnsupportedAlgorithm)?)
                }
            };
            check(view, &key, use_sha256_mi)?;
            return Ok(key);
        }
        if self.secrets.is_empty() {
            return Err(AuthError::UnknownUser);
        }
        let expiry = rest_expiry(username).ok_or(AuthError::UnknownUser)?;
        if expiry < now_unix {
            return Err(AuthError::Expired);
        }
        for secret in &self.secrets {
            let password = RestPassword::new(secret, username);
            let key = Key::derive(algorithm, username, &self.realm, password.as_str());
            match check(view, &key, use_sha256_mi) {
                Ok(()) => return Ok(key),
                Err(AuthError::Mismatch) => continue,
                // Missing or malformed: the same for every secret.
                Err(e) => return Err(e),
            }
        }
        Err(AuthError::Mismatch)
    }
}

fn check(view: &MessageView<'_>, key: &Key, use_sha256_mi: bool) -> Result<(), AuthError> {
    let r = if use_sha256_mi {
        integrity::verify_sha256(view, key.as_bytes())
    } else {
        integrity::verify(view, key.as_bytes())
    };
    r.map_err(AuthError::from)
}

/// The nonce cookie of RFC 8489 §9.2 that starts every nonce of a server that supports the
/// STUN security features.
pub const NONCE_COOKIE: &str = "obMatJos2";

/// The security feature bit "Password algorithms" (RFC 8489 §18.1; bit 0, the least
/// significant, per erratum 6290).
pub const FEATURE_PASSWORD_ALGORITHMS: u32 = 0x00_0001;

/// The security feature bit "Username anonymity" (bit 1). This server does not offer it.
pub const FEATURE_USERNAME_ANONYMITY: u32 = 0x00_0002;

/// The length of every nonce [`NonceKey::issue`] makes.
pub const NONCE_LEN: usize = NONCE_COOKIE.len() + FEATURES_B64_LEN + BODY_B64_LEN;

const FEATURES_B64_LEN: usize = 4;
/// base64url (no padding) of 16 bytes.
const BODY_B64_LEN: usize = 22;
const TAG_LEN: usize = 12;
const NONCE_CAP: usize = 40;
// Every nonce fits the stack buffer of `Nonce`, with room to spare.
const _: () = assert!(NONCE_LEN < NONCE_CAP);
/// Domain separation: this key signs nothing else, but a label makes that explicit.
const NONCE_LABEL: &[u8] = b"turnpike nonce v1";

/// Issues and checks stateless, HMAC-signed, time-limited nonces. `Debug` hides the key.
#[derive(Clone)]
pub struct NonceKey {
    key: [u8; 32],
}

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NonceKey(..)")
    }
}

/// A nonce, as sent in the NONCE attribute. Always ASCII and [`NONCE_LEN`] bytes long; kept on
/// the stack.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Nonce {
    buf: [u8; NONCE_CAP],
    len: u8,
}

impl Nonce {
    /// The nonce text.
    pub fn as_str(&self) -> &str {
        // Built from ASCII only (the cookie and base64 characters), so this cannot fail.
        std::str::from_utf8(self.as_bytes()).expect("nonces are ASCII")
    }

    /// The nonce bytes, for the NONCE attribute.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

impl fmt::Debug for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Nonce").field(&self.as_str()).finish()
    }
}

impl fmt::Display for Nonce {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`NonceKey::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[must_use]
pub enum NonceCheck {
    /// Ours, for this client, and not expired.
    Valid {
        /// The nonce advertised the "Password algorithms" security feature (the challenge
        /// carried PASSWORD-ALGORITHMS), so the request must echo them (RFC 8489 §9.2.4).
        password_algorithms: bool,
    },
    /// Ours and for this client, but expired: answer 438 (Stale Nonce) with a fresh nonce.
    Stale,
    /// Not a nonce of this key for this client (forged, tampered, another client IP,
    /// malformed): answer as to a request without credentials.
    Invalid,
}

impl NonceKey {
    /// A nonce key: 32 secret bytes chosen by the driver; nodes that should accept each
    /// other's nonces share the same bytes.
    pub fn new(secret: [u8; 32]) -> Self {
        NonceKey { key: secret }
    }

    /// Issues a nonce for `client`, valid for `lifetime_secs` from `now_unix` (inclusive), that
    /// advertises the "Password algorithms" security feature when `password_algorithms` is
    /// true (set it when the challenge carries PASSWORD-ALGORITHMS).
    ///
    /// Expiry times are 32-bit Unix seconds (until 2106) and saturate.
    pub fn issue(
        &self,
        now_unix: u64,
        lifetime_secs: u64,
        client: IpAddr,
        password_algorithms: bool,
    ) -> Nonce {
        let expiry = u32::try_from(now_unix.saturating_add(lifetime_secs)).unwrap_or(u32::MAX);
        let features: u32 = if password_algorithms {
            FEATURE_PASSWORD_ALGORITHMS
        } else {
            0
        };
        let features = feature_bytes(features);
        let tag = self.tag(expiry, client, &features);

        let mut body = [0u8; 4 + TAG_LEN];
        body[..4].copy_from_slice(&expiry.to_be_bytes());
        body[4..].copy_from_slice(&tag[..TAG_LEN]);

        let mut buf = [0u8; NONCE_CAP];
        let mut at = NONCE_COOKIE.len();
        buf[..at].copy_from_slice(NONCE_COOKIE.as_bytes());
        // Fixed input lengths that fit the 40-byte buffer (35 bytes in all), so neither
        // encoding can fail.
        at += base64::engine::general_purpose::STANDARD
            .encode_slice(features, &mut buf[at..])
            .expect("4 characters fit");
        at += base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode_slice(body, &mut buf[at..])
            .expect("22 characters fit");
        debug_assert_eq!(at, NONCE_LEN);
        Nonce { buf, len: at as u8 }
    }

    /// Checks a NONCE attribute value from `client` at `now_unix`. Never panics; constant-time
    /// in the MAC comparison.
    pub fn check(&self, nonce: &[u8], now_unix: u64, client: IpAddr) -> NonceCheck {
        if nonce.len() != NONCE_LEN || !nonce.starts_with(NONCE_COOKIE.as_bytes()) {
            return NonceCheck::Invalid;
        }
        let (features_b64, body_b64) = nonce[NONCE_COOKIE.len()..].split_at(FEATURES_B64_LEN);
        let mut features = [0u8; 3];
        match base64::engine::general_purpose::STANDARD.decode_slice(features_b64, &mut features) {
            Ok(3) => {}
            _ => return NonceCheck::Invalid,
        }
        // Room for the decoder's length estimate (18); a valid body is exactly 16 bytes.
        let mut body = [0u8; 18];
        match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(body_b64, &mut body) {
            Ok(16) => {}
            _ => return NonceCheck::Invalid,
        }
        let expiry = u32::from_be_bytes([body[0], body[1], body[2], body[3]]);
        if self
            .mac(expiry, client, &features)
            .verify_truncated_left(&body[4..16])
            .is_err()
        {
            return NonceCheck::Invalid;
        }
        if now_unix > u64::from(expiry) {
            return NonceCheck::Stale;
        }
        let bits = u32::from_be_bytes([0, features[0], features[1], features[2]]);
        NonceCheck::Valid {
            password_algorithms: bits & FEATURE_PASSWORD_ALGORITHMS != 0,
        }
    }

    fn mac(&self, expiry: u32, client: IpAddr, features: &[u8; 3]) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes keys of any length");
        mac.update(NONCE_LABEL);
        mac.update(&expiry.to_be_bytes());
        // An IPv4 client seen through a dual-stack socket (::ffff:a.b.c.d) is the same client.
        match client.to_canonical() {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.update(features);
        mac
    }

    fn tag(&self, expiry: u32, client: IpAddr, features: &[u8; 3]) -> [u8; 32] {
        self.mac(expiry, client, features)
            .finalize()
            .into_bytes()
            .into()
    }
}

/// The 24 security feature bits as 3 big-endian bytes.
fn feature_bytes(bits: u32) -> [u8; 3] {
    let b = bits.to_be_bytes();
    [b[1], b[2], b[3]]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_wire_values() {
        for a in PasswordAlgorithm::ALL {
            assert_eq!(PasswordAlgorithm::from_wire(a.wire()), Some(a));
        }
        assert_eq!(PasswordAlgorithm::Md5.wire(), 0x0001);
        assert_eq!(PasswordAlgorithm::Sha256.wire(), 0x0002);
        assert_eq!(PasswordAlgorithm::from_wire(0), None);
        assert_eq!(PasswordAlgorithm::from_wire(3), None);
    }

    #[test]
    fn error_labels_are_unique_kebab_case() {
        let mut seen = std::collections::HashSet::new();
        for e in AuthError::ALL {
            let s = e.as_str();
            assert!(seen.insert(s));
            assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b == b'-'));
        }
    }

    #[test]
    fn nonce_shape() {
        let k = NonceKey::new([9; 32]);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let n = k.issue(1_700_000_000, 600, ip, true);
        assert_eq!(n.as_bytes().len(), NONCE_LEN);
        assert!(n.as_str().starts_with("obMatJos2AAAB"), "{n}");
        let n = k.issue(1_700_000_000, 600, ip, false);
        assert!(n.as_str().starts_with("obMatJos2AAAA"), "{n}");
        assert_eq!(format!("{n:?}"), format!("Nonce({:?})", n.as_str()));
        assert_eq!(format!("{k:?}"), "NonceKey(..)");
    }

    #[test]
    fn mapped_ipv4_is_the_same_client() {
        let k = NonceKey::new([1; 32]);
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let n = k.issue(100, 10, v4, false);
        assert_eq!(
            k.check(n.as_bytes(), 100, mapped),
            NonceCheck::Valid {
                password_algorithms: false
            }
        );
    }
}
