//! MESSAGE-INTEGRITY (HMAC-SHA1, RFC 8489 §14.5), MESSAGE-INTEGRITY-SHA256 (HMAC-SHA256,
//! §14.6) and the long-term credential keys of both password algorithms (§9.2.2).
//!
//! Verification hashes the message in place, with the header length patched to end at the
//! integrity attribute, so it neither copies nor allocates. Comparison is constant-time.
//!
//! A message may carry both attributes: MESSAGE-INTEGRITY first, then
//! MESSAGE-INTEGRITY-SHA256, whose HMAC then covers the MESSAGE-INTEGRITY attribute too. Each
//! `verify` function checks its own attribute and ignores the other.

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;
use sha2::Sha256;

use crate::{HEADER_LEN, attr, view::MessageView};

type HmacSha1 = Hmac<Sha1>;
type HmacSha256 = Hmac<Sha256>;

/// Why MESSAGE-INTEGRITY did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntegrityError {
    /// The message has no MESSAGE-INTEGRITY (or, for [`verify_sha256`],
    /// MESSAGE-INTEGRITY-SHA256) attribute.
    #[error("no MESSAGE-INTEGRITY attribute")]
    Missing,
    /// The attribute has a wrong length: MESSAGE-INTEGRITY must be 20 bytes,
    /// MESSAGE-INTEGRITY-SHA256 16 to 32 bytes in steps of 4.
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

/// The long-term credential key for the SHA-256 password algorithm:
/// SHA-256(username ":" realm ":" password) (RFC 8489 §9.2.2, PASSWORD-ALGORITHM 0x0002).
///
/// The same preparation rules apply as for [`long_term_key`].
pub fn long_term_key_sha256(username: &str, realm: &str, password: &str) -> [u8; 32] {
    let mut h = Sha256::new();
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

/// Verifies the MESSAGE-INTEGRITY-SHA256 attribute of a parsed message with `key` (the
/// short-term password, or a long-term key from [`long_term_key`] or
/// [`long_term_key_sha256`]).
///
/// The HMAC covers the message up to the attribute, with the header length patched to end at
/// it; that includes a MESSAGE-INTEGRITY attribute in front of it. The value may be truncated
/// (RFC 8489 §14.6: 16 to 32 bytes, a multiple of 4); its bytes are compared, in constant time,
/// with the leading bytes of the HMAC.
pub fn verify_sha256(view: &MessageView<'_>, key: &[u8]) -> Result<(), IntegrityError> {
    let buf = view.bytes();
    let mut at = HEADER_LEN;
    for (t, value) in view.attributes() {
        if t == attr::MESSAGE_INTEGRITY_SHA256 {
            if !(16..=32).contains(&value.len()) || value.len() % 4 != 0 {
                return Err(IntegrityError::Malformed);
            }
            let mut mac = HmacSha256::new_from_slice(key).map_err(|_| IntegrityError::Malformed)?;
            // The length field must count up to and including MESSAGE-INTEGRITY-SHA256, as sent.
            let len = u16::try_from(at + 4 + value.len() - HEADER_LEN)
                .map_err(|_| IntegrityError::Malformed)?;
            mac.update(&buf[..2]);
            mac.update(&len.to_be_bytes());
            mac.update(&buf[4..at]);
            return mac
                .verify_truncated_left(value)
                .map_err(|_| IntegrityError::Mismatch);
        }
        at += 4 + ((value.len() + 3) & !3);
    }
    Err(IntegrityError::Missing)
}

/// Appends MESSAGE-INTEGRITY-SHA256 (the full 32-byte HMAC) to the message that starts at
/// `start` in `out`, setting the header length to include it. To send both integrity
/// attributes, call [`append`] first. Add FINGERPRINT (if wanted) afterwards.
pub fn append_sha256(out: &mut Vec<u8>, start: usize, key: &[u8]) {
    let body = out.len() - start - HEADER_LEN + 36;
    let body = u16::try_from(body).unwrap_or(u16::MAX);
    out[start + 2..start + 4].copy_from_slice(&body.to_be_bytes());
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(&out[start..]);
    let tag = mac.finalize().into_bytes();
    out.extend_from_slice(&attr::MESSAGE_INTEGRITY_SHA256.to_be_bytes());
    out.extend_from_slice(&32u16.to_be_bytes());
    out.extend_from_slice(&tag);
}
