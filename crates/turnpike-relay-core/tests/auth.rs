//! Long-term credentials (static users, pre-hashed keys, REST API shared secrets with rotation,
//! both password algorithms, both integrity attributes) and stateless nonces, on virtual time.

use std::net::IpAddr;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use turnpike_proto::credential::{rest_password, rest_username};
use turnpike_proto::integrity;
use turnpike_proto::{MAGIC_COOKIE, MessageView, attr};
use turnpike_relay_core::auth::{
    AuthError, Credentials, Key, NONCE_LEN, NonceCheck, NonceKey, PasswordAlgorithm,
};

const REALM: &str = "example.org";
const NOW: u64 = 1_700_000_000;

/// How a test request is signed.
#[derive(Clone, Copy)]
enum Sign<'a> {
    /// No integrity attribute.
    None,
    /// MESSAGE-INTEGRITY only.
    Mi(&'a [u8]),
    /// MESSAGE-INTEGRITY-SHA256 only.
    Sha256(&'a [u8]),
    /// Both, MESSAGE-INTEGRITY first.
    Both(&'a [u8]),
}

fn push_attr(m: &mut Vec<u8>, t: u16, value: &[u8]) {
    m.extend_from_slice(&t.to_be_bytes());
    m.extend_from_slice(&(value.len() as u16).to_be_bytes());
    m.extend_from_slice(value);
    while m.len() % 4 != 0 {
        m.push(0);
    }
}

/// An Allocate request with USERNAME, REALM, NONCE and REQUESTED-TRANSPORT, signed as asked.
fn request(username: &str, sign: Sign<'_>) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&0x0003u16.to_be_bytes());
    m.extend_from_slice(&0u16.to_be_bytes());
    m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    m.extend_from_slice(&[0x5A; 12]);
    push_attr(&mut m, attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    push_attr(&mut m, attr::USERNAME, username.as_bytes());
    push_attr(&mut m, attr::REALM, REALM.as_bytes());
    push_attr(&mut m, attr::NONCE, b"obMatJos2AAABnonce");
    let len = (m.len() - 20) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
    match sign {
        Sign::None => {}
        Sign::Mi(k) => integrity::append(&mut m, 0, k),
        Sign::Sha256(k) => integrity::append_sha256(&mut m, 0, k),
        Sign::Both(k) => {
            integrity::append(&mut m, 0, k);
            integrity::append_sha256(&mut m, 0, k);
        }
    }
    m
}

fn auth(
    creds: &Credentials,
    msg: &[u8],
    username: &str,
    algorithm: PasswordAlgorithm,
    sha256_mi: bool,
    now: u64,
) -> Result<Key, AuthError> {
    let view = MessageView::parse(msg).expect("test requests parse");
    creds.authenticate(&view, username, algorithm, sha256_mi, now)
}

fn md5_key(user: &str, pass: &str) -> Vec<u8> {
    integrity::long_term_key(user, REALM, pass).to_vec()
}

fn sha256_key(user: &str, pass: &str) -> Vec<u8> {
    integrity::long_term_key_sha256(user, REALM, pass).to_vec()
}

fn static_creds() -> Credentials {
    let mut c = Credentials::new(REALM);
    c.add_user("alice", "wonderland");
    c
}

#[test]
fn static_user() {
    let c = static_creds();
    assert_eq!(c.realm(), REALM);
    assert!(c.has_users() && !c.has_secrets() && !c.is_empty());

    let msg = request("alice", Sign::Mi(&md5_key("alice", "wonderland")));
    let key = auth(&c, &msg, "alice", PasswordAlgorithm::Md5, false, NOW).expect("verifies");
    assert_eq!(key.algorithm(), PasswordAlgorithm::Md5);
    assert_eq!(key.as_bytes(), md5_key("alice", "wonderland"));
    assert_eq!(
        key,
        Key::derive(PasswordAlgorithm::Md5, "alice", REALM, "wonderland")
    );

    let wrong = request("alice", Sign::Mi(&md5_key("alice", "looking-glass")));
    assert_eq!(
        auth(&c, &wrong, "alice", PasswordAlgorithm::Md5, false, NOW),
        Err(AuthError::Mismatch)
    );

    let bob = request("bob", Sign::Mi(&md5_key("bob", "wonderland")));
    assert_eq!(
        auth(&c, &bob, "bob", PasswordAlgorithm::Md5, false, NOW),
        Err(AuthError::UnknownUser)
    );
    assert_eq!(
        auth(
            &Credentials::new(REALM),
            &msg,
            "alice",
            PasswordAlgorithm::Md5,
            false,
            NOW
        ),
        Err(AuthError::UnknownUser)
    );
    assert!(Credentials::new(REALM).is_empty());
}

#[test]
fn static_user_sha256_paths() {
    let c = static_creds();
    let k256 = sha256_key("alice", "wonderland");
    let k5 = md5_key("alice", "wonderland");

    // PASSWORD-ALGORITHM SHA-256 with MESSAGE-INTEGRITY-SHA256.
    let msg = request("alice", Sign::Sha256(&k256));
    let key = auth(&c, &msg, "alice", PasswordAlgorithm::Sha256, true, NOW).unwrap();
    assert_eq!(key.algorithm(), PasswordAlgorithm::Sha256);
    assert_eq!(key.as_bytes(), k256);

    // PASSWORD-ALGORITHM SHA-256 with plain MESSAGE-INTEGRITY (HMAC-SHA1 keyed by the SHA-256
    // key).
    let msg = request("alice", Sign::Mi(&k256));
    let key = auth(&c, &msg, "alice", PasswordAlgorithm::Sha256, false, NOW).unwrap();
    assert_eq!(key.algorithm(), PasswordAlgorithm::Sha256);

    // MD5 key with MESSAGE-INTEGRITY-SHA256.
    let msg = request("alice", Sign::Sha256(&k5));
    let key = auth(&c, &msg, "alice", PasswordAlgorithm::Md5, true, NOW).unwrap();
    assert_eq!(key.algorithm(), PasswordAlgorithm::Md5);

    // Both attributes: either can be checked.
    let msg = request("alice", Sign::Both(&k256));
    auth(&c, &msg, "alice", PasswordAlgorithm::Sha256, true, NOW).unwrap();
    auth(&c, &msg, "alice", PasswordAlgorithm::Sha256, false, NOW).unwrap();

    // The wrong algorithm's key does not verify.
    let msg = request("alice", Sign::Sha256(&k256));
    assert_eq!(
        auth(&c, &msg, "alice", PasswordAlgorithm::Md5, true, NOW),
        Err(AuthError::Mismatch)
    );

    // Asking for the attribute that is not there.
    assert_eq!(
        auth(&c, &msg, "alice", PasswordAlgorithm::Sha256, false, NOW),
        Err(AuthError::MissingIntegrity)
    );
    let unsigned = request("alice", Sign::None);
    assert_eq!(
        auth(&c, &unsigned, "alice", PasswordAlgorithm::Md5, false, NOW),
        Err(AuthError::MissingIntegrity)
    );
}

#[test]
fn pre_hashed_user() {
    let mut c = Credentials::new(REALM);
    c.add_user_key("carol", integrity::long_term_key("carol", REALM, "s3cret"));
    let msg = request("carol", Sign::Mi(&md5_key("carol", "s3cret")));
    let key = auth(&c, &msg, "carol", PasswordAlgorithm::Md5, false, NOW).unwrap();
    assert_eq!(key.as_bytes(), md5_key("carol", "s3cret"));
    let msg = request("carol", Sign::Sha256(&sha256_key("carol", "s3cret")));
    assert_eq!(
        auth(&c, &msg, "carol", PasswordAlgorithm::Sha256, true, NOW),
        Err(AuthError::UnsupportedAlgorithm)
    );
}

/// A REST credential request for `username` under `secret`.
fn rest_request(secret: &[u8], username: &str, algorithm: PasswordAlgorithm) -> Vec<u8> {
    let password = rest_password(secret, username);
    let key = Key::derive(algorithm, username, REALM, &password);
    request(username, Sign::Mi(key.as_bytes()))
}

#[test]
fn rest_users_in_every_username_form() {
    let mut c = Credentials::new(REALM);
    c.add_secret(b"north");
    assert!(c.has_secrets() && !c.has_users());
    let expiry = NOW + 3600;
    for username in [
        rest_username(expiry, "alice"),
        format!("alice:{expiry}"),
        rest_username(expiry, ""),
    ] {
        for algorithm in PasswordAlgorithm::ALL {
            let msg = rest_request(b"north", &username, algorithm);
            let key = auth(&c, &msg, &username, algorithm, false, NOW)
                .unwrap_or_else(|e| panic!("{username} {algorithm:?}: {e}"));
            assert_eq!(key.algorithm(), algorithm);
        }
    }
}

#[test]
fn rest_expiry_is_enforced() {
    let mut c = Credentials::new(REALM);
    c.add_secret(b"north");
    let username = rest_username(NOW, "alice");
    let msg = rest_request(b"north", &username, PasswordAlgorithm::Md5);
    // Valid up to and including the expiry second.
    auth(
        &c,
        &msg,
        &username,
        PasswordAlgorithm::Md5,
        false,
        NOW - 100,
    )
    .unwrap();
    auth(&c, &msg, &username, PasswordAlgorithm::Md5, false, NOW).unwrap();
    assert_eq!(
        auth(&c, &msg, &username, PasswordAlgorithm::Md5, false, NOW + 1),
        Err(AuthError::Expired)
    );
    // No timestamp in the name.
    let msg = rest_request(b"north", "alice", PasswordAlgorithm::Md5);
    assert_eq!(
        auth(&c, &msg, "alice", PasswordAlgorithm::Md5, false, NOW),
        Err(AuthError::UnknownUser)
    );
}

#[test]
fn rest_secret_rotation() {
    let mut c = Credentials::new(REALM);
    c.add_secret(b"old secret");
    c.add_secret(b"new secret");
    let username = rest_username(NOW + 60, "alice");
    for secret in [&b"old secret"[..], b"new secret"] {
        let msg = rest_request(secret, &username, PasswordAlgorithm::Md5);
        auth(&c, &msg, &username, PasswordAlgorithm::Md5, false, NOW).unwrap();
        let msg = rest_request(secret, &username, PasswordAlgorithm::Sha256);
        auth(&c, &msg, &username, PasswordAlgorithm::Sha256, false, NOW).unwrap();
    }
    let msg = rest_request(b"unknown secret", &username, PasswordAlgorithm::Md5);
    assert_eq!(
        auth(&c, &msg, &username, PasswordAlgorithm::Md5, false, NOW),
        Err(AuthError::Mismatch)
    );
}

#[test]
fn static_user_wins_over_secrets() {
    let username = rest_username(NOW + 60, "alice");
    let mut c = Credentials::new(REALM);
    c.add_secret(b"north");
    c.add_user(&username, "static password");
    let rest = rest_request(b"north", &username, PasswordAlgorithm::Md5);
    assert_eq!(
        auth(&c, &rest, &username, PasswordAlgorithm::Md5, false, NOW),
        Err(AuthError::Mismatch)
    );
    let fixed = request(&username, Sign::Mi(&md5_key(&username, "static password")));
    // A static user does not expire.
    auth(
        &c,
        &fixed,
        &username,
        PasswordAlgorithm::Md5,
        false,
        NOW + 10_000,
    )
    .unwrap();
}

#[test]
fn coturn_compatibility_vector() {
    // base64(HMAC-SHA1("north", "1700000000:alice")), computed here without the crate.
    let mut mac = Hmac::<Sha1>::new_from_slice(b"north").unwrap();
    mac.update(b"1700000000:alice");
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(expected, "Cd/49soE35ICqcJF/bCTn8Z4OyE=");
    assert_eq!(rest_password(b"north", "1700000000:alice"), expected);
    assert_eq!(rest_username(1_700_000_000, "alice"), "1700000000:alice");

    // And a request signed the way a coturn client would sign it verifies.
    let mut c = Credentials::new(REALM);
    c.add_secret(b"north");
    let msg = request(
        "1700000000:alice",
        Sign::Mi(&md5_key("1700000000:alice", &expected)),
    );
    auth(
        &c,
        &msg,
        "1700000000:alice",
        PasswordAlgorithm::Md5,
        false,
        NOW,
    )
    .unwrap();
}

#[test]
fn debug_output_hides_secrets() {
    let mut c = Credentials::new(REALM);
    c.add_user("alice", "wonderland");
    c.add_secret(b"north-secret");
    let d = format!("{c:?}");
    assert!(
        !d.contains("wonderland") && !d.contains("north-secret"),
        "{d}"
    );
    assert!(d.contains(REALM) && d.contains("users: 1") && d.contains("secrets: 1"));
    let k = Key::derive(PasswordAlgorithm::Sha256, "alice", REALM, "wonderland");
    assert_eq!(format!("{k:?}"), "Key(..)");
    assert_eq!(format!("{:?}", NonceKey::new([7; 32])), "NonceKey(..)");
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn nonce_valid_then_stale() {
    let k = NonceKey::new([3; 32]);
    let client = ip("198.51.100.7");
    let n = k.issue(NOW, 600, client, true);
    assert_eq!(n.as_bytes().len(), NONCE_LEN);
    assert!(n.as_bytes().len() < 40);
    assert!(n.as_str().starts_with("obMatJos2"));
    let valid = NonceCheck::Valid {
        password_algorithms: true,
    };
    assert_eq!(k.check(n.as_bytes(), NOW, client), valid);
    assert_eq!(k.check(n.as_bytes(), NOW + 600, client), valid);
    assert_eq!(k.check(n.as_bytes(), NOW + 601, client), NonceCheck::Stale);
    assert_eq!(
        k.check(n.as_bytes(), NOW + 1_000_000, client),
        NonceCheck::Stale
    );
    // A key shared between nodes accepts the other node's nonces.
    assert_eq!(
        NonceKey::new([3; 32]).check(n.as_bytes(), NOW, client),
        valid
    );
}

#[test]
fn nonce_feature_bit_round_trips() {
    let k = NonceKey::new([4; 32]);
    let client = ip("2001:db8::1");
    for pa in [false, true] {
        let n = k.issue(NOW, 60, client, pa);
        assert_eq!(
            k.check(n.as_bytes(), NOW, client),
            NonceCheck::Valid {
                password_algorithms: pa
            }
        );
        let expected = if pa { "obMatJos2AAAB" } else { "obMatJos2AAAA" };
        assert!(n.as_str().starts_with(expected), "{n}");
    }
    // Stripping the bit (a bid-down attack) invalidates the nonce.
    let n = k.issue(NOW, 60, client, true);
    let mut stripped = n.as_bytes().to_vec();
    stripped[12] = b'A';
    assert_eq!(k.check(&stripped, NOW, client), NonceCheck::Invalid);
}

#[test]
fn nonce_invalid_cases() {
    let k = NonceKey::new([5; 32]);
    let client = ip("198.51.100.7");
    let n = k.issue(NOW, 600, client, true);
    let b = n.as_bytes();

    // Another client address (also after expiry: never Stale for someone else's nonce).
    assert_eq!(k.check(b, NOW, ip("198.51.100.8")), NonceCheck::Invalid);
    assert_eq!(
        k.check(b, NOW + 601, ip("198.51.100.8")),
        NonceCheck::Invalid
    );
    assert_eq!(k.check(b, NOW, ip("::1")), NonceCheck::Invalid);
    // Another key.
    assert_eq!(
        NonceKey::new([6; 32]).check(b, NOW, client),
        NonceCheck::Invalid
    );
    // Every single-bit change anywhere.
    for i in 0..b.len() {
        for bit in 0..8 {
            let mut t = b.to_vec();
            t[i] ^= 1 << bit;
            assert_eq!(
                k.check(&t, NOW, client),
                NonceCheck::Invalid,
                "byte {i} bit {bit}"
            );
        }
    }
    // Truncated, over-long, empty, garbage.
    assert_eq!(k.check(&b[..b.len() - 1], NOW, client), NonceCheck::Invalid);
    let mut long = b.to_vec();
    long.push(b'A');
    assert_eq!(k.check(&long, NOW, client), NonceCheck::Invalid);
    assert_eq!(k.check(&[b'x'; 4096], NOW, client), NonceCheck::Invalid);
    assert_eq!(k.check(b"", NOW, client), NonceCheck::Invalid);
    assert_eq!(k.check(b"obMatJos2", NOW, client), NonceCheck::Invalid);
    let mut garbage = [0xFFu8; NONCE_LEN];
    garbage[..13].copy_from_slice(b"obMatJos2AAAB");
    assert_eq!(k.check(&garbage, NOW, client), NonceCheck::Invalid);
    let mut same_len = b"obMatJos2AAAB".to_vec();
    same_len.resize(NONCE_LEN, b'A');
    assert_eq!(k.check(&same_len, NOW, client), NonceCheck::Invalid);
    // Someone else's nonce format.
    assert_eq!(
        k.check(b"obMatJos2AAACf//499k954d6OL34oL9FSTvy64sA", NOW, client),
        NonceCheck::Invalid
    );
}

#[test]
fn nonce_expiry_saturates() {
    let k = NonceKey::new([8; 32]);
    let client = ip("192.0.2.1");
    let n = k.issue(u64::MAX - 5, 600, client, false);
    assert_eq!(
        k.check(n.as_bytes(), u64::from(u32::MAX), client),
        NonceCheck::Valid {
            password_algorithms: false
        }
    );
    assert_eq!(
        k.check(n.as_bytes(), u64::from(u32::MAX) + 1, client),
        NonceCheck::Stale
    );
}
