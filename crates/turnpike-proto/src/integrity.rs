//! MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5) and the long-term credential key.
//!
//! Verification hashes the message in place, with the header length patched to end at the
//! MESSAGE-INTEGRITY attribute, so it neither copies nor allocates. Comparison is constant-time.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

use crate::{HEADER_LEN, attr, view::MessageView};

type HmacSha1 = Hmac<Sha1>;

/// Why MESSAGE-INTEGRITY did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityError {
    /// The message has no MESSAGE-INTEGRITY attribute.
    #[error("no MESSAGE-INTEGRITY attribute")]
    Missing,
    /// The attribute is not 20 bytes long.
    #[error("malformed MESSAGE-INTEGRITY attribute")]
    Malformed,
    /// The HMAC does not match: wrong key or tampered message.
    #[error("MESSAGE-INTEGRITY mismatch")]
    Mismatch,
}

/// The long-term credential key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).
///
/// The inputs are expected to be already processed with OpaqueString (RFC 8265); ASCII
/// credentials, which is what every deployed TURN client sends, need no processing.
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// Verifies the MESSAGE-INTEGRITY attribute of a parsed message with `key` (the short-term
/// password, or the long-term key from [`long_term_key`]).
pub fn verify(view: &MessageView<'_>, key: &[u8]) -> Result<(), IntegrityError> {
    let buf = view.bytes();
    let mut at = HEADER_LEN;
    for (t, value) in view.attributes() {
        if t == attr::MESSAGE_INTEGRITY {
            if value.len() != 20 {
                return Err(IntegrityError::Malformed);
            }
            let mut mac = HmacSha1::new_from_slice(key).map_err(|_| IntegrityError::Malformed)?;
            // The length field must count up to and including MESSAGE-INTEGRITY.
            let len = u16::try_from(at + 24 - HEADER_LEN).map_err(|_| IntegrityError::Malformed)?;
            mac.update(&buf[..2]);
            mac.update(&len.to_be_bytes());
            mac.update(&buf[4..at]);
            return mac
                .verify_slice(value)
                .map_err(|_| IntegrityError::Mismatch);
        }
        at += 4 + ((value.len() + 3) & !3);
    }
    Err(IntegrityError::Missing)
}

/// Appends MESSAGE-INTEGRITY to the message that starts at `start` in `out`, setting the
/// header length to include it. Add FINGERPRINT (if wanted) afterwards.
pub fn append(out: &mut Vec<u8>, start: usize, key: &[u8]) {
    let body = out.len() - start - HEADER_LEN + 24;
    let body = u16::try_from(body).unwrap_or(u16::MAX);
    out[start + 2..start + 4].copy_from_slice(&body.to_be_bytes());
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha1::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(&out[start..]);
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(&attr::MESSAGE_INTEGRITY.to_be_bytes());
    out.extend_from_slice(&20u16.to_be_bytes());
    out.extend_from_slice(&tag);
}
