//! The "TURN REST API" credential formula that coturn made the de-facto standard for
//! short-lived TURN credentials (draft-uberti-behave-turn-rest).
//!
//! A web service and the TURN server share a secret. The service hands a client
//!
//! * `username = "EXPIRY:USERID"` (EXPIRY is a Unix time in seconds; USERID is optional), and
//! * `password = base64(HMAC-SHA1(secret, username))`,
//!
//! and the TURN server, which knows the secret, recomputes the password from the username alone
//! and accepts it until EXPIRY. No database and no call between the two is needed. The
//! password then feeds the ordinary long-term credential mechanism (RFC 8489 §9.2), so every
//! TURN client works unchanged.
//!
//! coturn also accepts `"USERID:EXPIRY"` and a bare `"EXPIRY"`; [`rest_expiry`] reads all three.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The length of a REST API password: base64 of a 20-byte HMAC-SHA1, padded.
pub const REST_PASSWORD_LEN: usize = 28;

/// The separator between the expiry and the user id (coturn's default `rest-api-separator`).
pub const REST_SEPARATOR: char = ':';

/// The REST API password for `username` under `secret`: base64(HMAC-SHA1(secret, username)),
/// standard alphabet, padded.
pub fn rest_password(secret: &[u8], username: &str) -> String {
    let mut out = String::with_capacity(REST_PASSWORD_LEN);
    out.push_str(RestPassword::new(secret, username).as_str());
    out
}

/// A REST API password on the stack, for servers that check one per request without
/// allocating. [`rest_password`] is the same value as a `String`.
#[derive(Clone, PartialEq, Eq)]
pub struct RestPassword {
    buf: [u8; REST_PASSWORD_LEN],
}

impl RestPassword {
    /// Computes base64(HMAC-SHA1(secret, username)).
    pub fn new(secret: &[u8], username: &str) -> Self {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha1>::new_from_slice(secret).expect("HMAC takes keys of any length");
        mac.update(username.as_bytes());
        let tag = mac.finalize().into_bytes();
        let mut buf = [0u8; REST_PASSWORD_LEN];
        // 20 bytes encode to exactly 28 characters, so the buffer is always large enough.
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(tag, &mut buf)
            .expect("28 bytes hold the base64 of 20");
        debug_assert_eq!(n, REST_PASSWORD_LEN);
        RestPassword { buf }
    }

    /// The password.
    pub fn as_str(&self) -> &str {
        // base64 output is ASCII, so this cannot fail.
        std::str::from_utf8(&self.buf).expect("base64 is ASCII")
    }
}

impl std::fmt::Debug for RestPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestPassword(..)")
    }
}

/// The REST API username for a credential that expires at `expiry_unix`: `"EXPIRY:USER"`, or
/// just `"EXPIRY"` when `user` is empty.
pub fn rest_username(expiry_unix: u64, user: &str) -> String {
    if user.is_empty() {
        expiry_unix.to_string()
    } else {
        format!("{expiry_unix}{REST_SEPARATOR}{user}")
    }
}

/// The expiry time (Unix seconds) in a REST API username, read the way coturn reads it.
///
/// The username is `"EXPIRY:USERID"`, `"USERID:EXPIRY"` or a bare `"EXPIRY"`; the timestamp
/// is the part that is all ASCII digits. When both are, the first one counts. A user id may
/// itself contain `:`: the timestamp is the part before the first or after the last separator.
/// `None` when no part is a timestamp (or it does not fit in a `u64`).
pub fn rest_expiry(username: &str) -> Option<u64> {
    fn timestamp(s: &str) -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    }
    match username.split_once(REST_SEPARATOR) {
        None => timestamp(username),
        Some((first, _)) => timestamp(first).or_else(|| {
            let (_, last) = username.rsplit_once(REST_SEPARATOR)?;
            timestamp(last)
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_matches_the_coturn_formula() {
        // echo -n "1700000000:alice" | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(
            rest_password(b"secret", "1700000000:alice"),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
        assert_eq!(
            RestPassword::new(b"secret", "1700000000:alice").as_str(),
            "d8soP47RbdIKLDUOpnJPVQyq5Ts="
        );
        assert_ne!(
            rest_password(b"other", "1700000000:alice"),
            rest_password(b"secret", "1700000000:alice")
        );
        assert_eq!(
            format!("{:?}", RestPassword::new(b"s", "u")),
            "RestPassword(..)"
        );
    }

    #[test]
    fn username_forms() {
        assert_eq!(rest_username(1_700_000_000, "alice"), "1700000000:alice");
        assert_eq!(rest_username(1_700_000_000, ""), "1700000000");
    }

    #[test]
    fn expiry_in_every_form() {
        assert_eq!(rest_expiry("1700000000:alice"), Some(1_700_000_000));
        assert_eq!(rest_expiry("alice:1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry("1700000000"), Some(1_700_000_000));
        assert_eq!(rest_expiry("1700000000:"), Some(1_700_000_000));
        // Both parts all digits: the first wins.
        assert_eq!(rest_expiry("1700000000:42"), Some(1_700_000_000));
        // User ids with the separator in them.
        assert_eq!(rest_expiry("1700000000:a:b"), Some(1_700_000_000));
        assert_eq!(rest_expiry("a:b:1700000000"), Some(1_700_000_000));
    }

    #[test]
    fn no_expiry() {
        for name in [
            "",
            "alice",
            ":",
            "alice:bob",
            "17000x0000:alice",
            "alice:-1",
            "+1700000000",
            " 1700000000",
            "99999999999999999999999",
            ":alice:bob",
        ] {
            assert_eq!(rest_expiry(name), None, "{name:?}");
        }
    }
}
