//! MESSAGE-INTEGRITY-SHA256 (RFC 8489 §14.6) and the SHA-256 long-term key: the RFC 8489
//! Appendix B.1 vector, round trips, tampering, truncated values, and both integrity attributes
//! in one message.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use turnpike_proto::integrity::{self, IntegrityError};
use turnpike_proto::{MAGIC_COOKIE, MessageView, attr};

/// RFC 8489 Appendix B.1 as printed: a Binding request with USERHASH, NONCE, REALM and
/// MESSAGE-INTEGRITY-SHA256. Username "マトリックス", password "TheMatrIX" (after
/// OpaqueString), realm "example.org".
///
/// As printed (erratum 6268) its length field is 0x9c, which counts the 20-byte header: the
/// message does not parse, and the HMAC was computed over that header as printed. The vector
/// still pins the SHA-256 long-term key and the HMAC-SHA256 computation.
const B1_AS_PRINTED: [u8; 156] = [
    0x00, 0x01, 0x00, 0x9c, 0x21, 0x12, 0xa4, 0x42, 0x78, 0xad, 0x34, 0x33, 0xc6, 0xad, 0x72, 0xc0,
    0x29, 0xda, 0x41, 0x2e, 0x00, 0x1e, 0x00, 0x20, 0x4a, 0x3c, 0xf3, 0x8f, 0xef, 0x69, 0x92, 0xbd,
    0xa9, 0x52, 0xc6, 0x78, 0x04, 0x17, 0xda, 0x0f, 0x24, 0x81, 0x94, 0x15, 0x56, 0x9e, 0x60, 0xb2,
    0x05, 0xc4, 0x6e, 0x41, 0x40, 0x7f, 0x17, 0x04, 0x00, 0x15, 0x00, 0x29, 0x6f, 0x62, 0x4d, 0x61,
    0x74, 0x4a, 0x6f, 0x73, 0x32, 0x41, 0x41, 0x41, 0x43, 0x66, 0x2f, 0x2f, 0x34, 0x39, 0x39, 0x6b,
    0x39, 0x35, 0x34, 0x64, 0x36, 0x4f, 0x4c, 0x33, 0x34, 0x6f, 0x4c, 0x39, 0x46, 0x53, 0x54, 0x76,
    0x79, 0x36, 0x34, 0x73, 0x41, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x0b, 0x65, 0x78, 0x61, 0x6d,
    0x70, 0x6c, 0x65, 0x2e, 0x6f, 0x72, 0x67, 0x00, 0x00, 0x1c, 0x00, 0x20, 0xe4, 0x68, 0x6c, 0x8f,
    0x0e, 0xde, 0xb5, 0x90, 0x13, 0xe0, 0x70, 0x90, 0x01, 0x0a, 0x93, 0xef, 0xcc, 0xbc, 0xcc, 0x54,
    0x4c, 0x0a, 0x45, 0xd9, 0xf8, 0x30, 0xaa, 0x6d, 0x6f, 0x73, 0x5a, 0x01,
];

const B1_USER: &str = "\u{30DE}\u{30C8}\u{30EA}\u{30C3}\u{30AF}\u{30B9}";

fn b1_key() -> [u8; 32] {
    integrity::long_term_key_sha256(B1_USER, "example.org", "TheMatrIX")
}

#[test]
fn rfc8489_b1_key_and_hmac() {
    // The printed HMAC, over everything before the attribute exactly as printed.
    let mut mac = Hmac::<Sha256>::new_from_slice(&b1_key()).unwrap();
    mac.update(&B1_AS_PRINTED[..120]);
    assert_eq!(
        mac.finalize().into_bytes().as_slice(),
        &B1_AS_PRINTED[124..]
    );

    // As printed it is not a valid message (the length counts the header).
    assert!(MessageView::parse(&B1_AS_PRINTED).is_err());

    // With the length corrected (0x88) it parses; the printed HMAC no longer matches a
    // correctly computed one, and re-signing it with the same key verifies.
    let mut fixed = B1_AS_PRINTED.to_vec();
    fixed[2..4].copy_from_slice(&0x88u16.to_be_bytes());
    let v = MessageView::parse(&fixed).expect("length-corrected vector parses");
    assert!(v.integrity);
    assert_eq!(
        integrity::verify_sha256(&v, &b1_key()),
        Err(IntegrityError::Mismatch)
    );
    fixed.truncate(120);
    integrity::append_sha256(&mut fixed, 0, &b1_key());
    assert_eq!(&fixed[2..4], &[0x00, 0x88]);
    let v = MessageView::parse(&fixed).unwrap();
    integrity::verify_sha256(&v, &b1_key()).expect("re-signed B.1 verifies");
    let wrong = integrity::long_term_key_sha256(B1_USER, "example.org", "thematrix");
    assert_eq!(
        integrity::verify_sha256(&v, &wrong),
        Err(IntegrityError::Mismatch)
    );
    // MESSAGE-INTEGRITY (SHA-1) is absent.
    assert_eq!(
        integrity::verify(&v, &b1_key()),
        Err(IntegrityError::Missing)
    );
}

#[test]
fn sha256_key_is_sha256_of_user_realm_password() {
    use sha2::Digest;
    let expected: [u8; 32] = Sha256::digest(b"alice:example.org:pw").into();
    assert_eq!(
        integrity::long_term_key_sha256("alice", "example.org", "pw"),
        expected
    );
    assert_ne!(
        integrity::long_term_key_sha256("alice", "example.org", "pw")[..16],
        integrity::long_term_key("alice", "example.org", "pw")
    );
}

/// A Binding request with a USERNAME and a SOFTWARE attribute, no integrity yet.
fn request() -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&0x0001u16.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m.extend_from_slice(&[7; 12]);
    push_attr(&mut m, attr::USERNAME, b"alice");
    push_attr(&mut m, attr::SOFTWARE, b"test");
    set_len(&mut m);
    m
}

fn push_attr(m: &mut Vec<u8>, t: u16, value: &[u8]) {
    m.extend_from_slice(&t.to_be_bytes());
    m.extend_from_slice(&(value.len() as u16).to_be_bytes());
    m.extend_from_slice(value);
    while m.len() % 4 != 0 {
        m.push(0);
    }
}

fn set_len(m: &mut [u8]) {
    let len = (m.len() - 20) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
}

fn append_fingerprint(m: &mut Vec<u8>) {
    let len = (m.len() - 20 + 8) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    let fp = turnpike_proto::fingerprint(m);
    push_attr(m, attr::FINGERPRINT, &fp.to_be_bytes());
}

#[test]
fn round_trip_and_tamper_detection() {
    let key = integrity::long_term_key_sha256("alice", "example.org", "pw");
    let mut m = request();
    integrity::append_sha256(&mut m, 0, &key);
    let v = MessageView::parse(&m).unwrap();
    assert!(v.integrity && v.malformed.is_none());
    integrity::verify_sha256(&v, &key).expect("verifies");
    assert_eq!(
        integrity::verify_sha256(&v, b"other key"),
        Err(IntegrityError::Mismatch)
    );

    // Any changed byte before the attribute, or in the HMAC itself, breaks it.
    for i in (0..m.len()).filter(|&i| !(2..4).contains(&i)) {
        let mut t = m.clone();
        t[i] ^= 0x01;
        let Ok(v) = MessageView::parse(&t) else {
            continue;
        };
        assert_ne!(integrity::verify_sha256(&v, &key), Ok(()), "byte {i}");
    }

    // FINGERPRINT after it is fine.
    append_fingerprint(&mut m);
    let v = MessageView::parse(&m).unwrap();
    assert!(v.fingerprint);
    integrity::verify_sha256(&v, &key).expect("verifies with FINGERPRINT after it");
}

#[test]
fn missing_and_malformed() {
    let m = request();
    let v = MessageView::parse(&m).unwrap();
    assert_eq!(
        integrity::verify_sha256(&v, b"k"),
        Err(IntegrityError::Missing)
    );
    for len in [0usize, 4, 12, 18, 20 + 2, 36, 64] {
        let mut m = request();
        push_attr(&mut m, attr::MESSAGE_INTEGRITY_SHA256, &vec![0xAB; len]);
        set_len(&mut m);
        let v = MessageView::parse(&m).unwrap();
        let expected = if (16..=32).contains(&len) && len % 4 == 0 {
            IntegrityError::Mismatch
        } else {
            IntegrityError::Malformed
        };
        assert_eq!(integrity::verify_sha256(&v, b"k"), Err(expected), "{len}");
    }
}

/// Signs `m` with a MESSAGE-INTEGRITY-SHA256 truncated to `n` bytes, as a sender would: the
/// length field counts the truncated attribute.
fn append_truncated(m: &mut Vec<u8>, key: &[u8], n: usize) {
    let len = (m.len() - 20 + 4 + n) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(m);
    let tag = mac.finalize().into_bytes();
    push_attr(m, attr::MESSAGE_INTEGRITY_SHA256, &tag[..n]);
}

#[test]
fn truncated_values() {
    let key = b"short-term password";
    for n in [16, 20, 24, 28, 32] {
        let mut m = request();
        append_truncated(&mut m, key, n);
        let v = MessageView::parse(&m).unwrap();
        assert!(v.malformed.is_none());
        integrity::verify_sha256(&v, key).unwrap_or_else(|e| panic!("{n} bytes: {e}"));
        assert_eq!(
            integrity::verify_sha256(&v, b"wrong"),
            Err(IntegrityError::Mismatch),
            "{n} bytes"
        );
        // The last byte of the truncated value matters.
        let last = m.len() - 1;
        m[last] ^= 0x80;
        let v = MessageView::parse(&m).unwrap();
        assert_eq!(
            integrity::verify_sha256(&v, key),
            Err(IntegrityError::Mismatch),
            "{n} bytes"
        );
    }
    // A truncated HMAC computed with the full length in the header does not verify: the length
    // field is part of what is signed.
    let mut m = request();
    let len = (m.len() - 20 + 36) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(&m);
    let tag = mac.finalize().into_bytes();
    push_attr(&mut m, attr::MESSAGE_INTEGRITY_SHA256, &tag[..16]);
    set_len(&mut m);
    let v = MessageView::parse(&m).unwrap();
    assert_eq!(
        integrity::verify_sha256(&v, key),
        Err(IntegrityError::Mismatch)
    );
}

#[test]
fn both_integrity_attributes() {
    let key = integrity::long_term_key("alice", "example.org", "pw");
    let mut m = request();
    integrity::append(&mut m, 0, &key);
    let mi_end = m.len();
    integrity::append_sha256(&mut m, 0, &key);
    append_fingerprint(&mut m);
    let v = MessageView::parse(&m).unwrap();
    assert!(v.fingerprint && v.integrity && v.malformed.is_none());
    assert!(v.unknown().is_empty());
    integrity::verify(&v, &key).expect("MESSAGE-INTEGRITY verifies");
    integrity::verify_sha256(&v, &key).expect("MESSAGE-INTEGRITY-SHA256 verifies");

    // The SHA-256 HMAC covers the MESSAGE-INTEGRITY attribute.
    let mut t = m.clone();
    t[mi_end - 1] ^= 0x01;
    append_fingerprint_again(&mut t);
    let v = MessageView::parse(&t).unwrap();
    assert_eq!(integrity::verify(&v, &key), Err(IntegrityError::Mismatch));
    assert_eq!(
        integrity::verify_sha256(&v, &key),
        Err(IntegrityError::Mismatch)
    );

    // The SHA-1 HMAC does not cover MESSAGE-INTEGRITY-SHA256.
    let mut t = m.clone();
    t[mi_end + 4] ^= 0x01;
    append_fingerprint_again(&mut t);
    let v = MessageView::parse(&t).unwrap();
    integrity::verify(&v, &key).expect("MESSAGE-INTEGRITY still verifies");
    assert_eq!(
        integrity::verify_sha256(&v, &key),
        Err(IntegrityError::Mismatch)
    );

    // With the SHA-256 key both verify too.
    let key256 = integrity::long_term_key_sha256("alice", "example.org", "pw");
    let mut m = request();
    integrity::append(&mut m, 0, &key256);
    integrity::append_sha256(&mut m, 0, &key256);
    let v = MessageView::parse(&m).unwrap();
    integrity::verify(&v, &key256).unwrap();
    integrity::verify_sha256(&v, &key256).unwrap();
    assert_eq!(
        integrity::verify_sha256(&v, &key),
        Err(IntegrityError::Mismatch)
    );
}

/// Replaces the trailing FINGERPRINT of `m` after an edit.
fn append_fingerprint_again(m: &mut Vec<u8>) {
    m.truncate(m.len() - 8);
    append_fingerprint(m);
}
