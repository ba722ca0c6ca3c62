//! HS256 JSON Web Tokens for `join` when the hub has a secret (`--hub-secret`).
//!
//! The token must be `HS256`, carry `exp` (unix seconds, in the future) and `room` (the room it
//! admits to), and may carry `peer_id` (then the joining peer gets exactly that id). Anything
//! else is refused with a [`JwtError`] that says what is wrong. Signature comparison is
//! constant-time.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three base64url parts, or undecodable JSON.
    #[error("malformed token")]
    Malformed,
    /// `alg` is not HS256.
    #[error("token algorithm must be HS256")]
    Algorithm,
    /// The signature does not verify with the hub secret.
    #[error("token signature is invalid")]
    Signature,
    /// `exp` is missing or in the past.
    #[error("token has expired")]
    Expired,
    /// The token names another room.
    #[error("token is not valid for this room")]
    WrongRoom,
    /// The token names another peer id.
    #[error("token is not valid for this peer id")]
    WrongPeer,
}

/// The claims the hub uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Claims {
    /// Expiry, unix seconds.
    pub exp: u64,
    /// The room the token admits to.
    pub room: String,
    /// The peer id the holder must use, if any.
    #[serde(default)]
    pub peer_id: Option<String>,
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

fn b64(s: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| JwtError::Malformed)
}

/// Verifies `token` with `secret` for joining `room` at `unix_now`; returns its claims.
pub fn verify(token: &str, secret: &[u8], room: &str, unix_now: u64) -> Result<Claims, JwtError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header: Header = serde_json::from_slice(&b64(h)?).map_err(|_| JwtError::Malformed)?;
    if header.alg != "HS256" {
        return Err(JwtError::Algorithm);
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|_| JwtError::Signature)?;
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    mac.verify_slice(&b64(sig)?)
        .map_err(|_| JwtError::Signature)?;
    let claims: Claims = serde_json::from_slice(&b64(p)?).map_err(|_| JwtError::Malformed)?;
    if claims.exp <= unix_now {
        return Err(JwtError::Expired);
    }
    if claims.room != room {
        return Err(JwtError::WrongRoom);
    }
    Ok(claims)
}

/// Signs claims into an HS256 token (for tests and for `turnpike` tooling).
pub fn sign(claims_json: &str, secret: &[u8]) -> String {
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let h = e.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let p = e.encode(claims_json.as_bytes());
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(h.as_bytes());
    mac.update(b".");
    mac.update(p.as_bytes());
    let sig = e.encode(mac.finalize().into_bytes());
    format!("{h}.{p}.{sig}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        let t = sign(r#"{"exp":2000,"room":"r1","peer_id":"alice"}"#, b"k");
        let c = verify(&t, b"k", "r1", 1000).unwrap();
        assert_eq!(c.peer_id.as_deref(), Some("alice"));
        assert_eq!(verify(&t, b"other", "r1", 1000), Err(JwtError::Signature));
        assert_eq!(verify(&t, b"k", "r2", 1000), Err(JwtError::WrongRoom));
        assert_eq!(verify(&t, b"k", "r1", 2000), Err(JwtError::Expired));
        assert_eq!(verify("a.b", b"k", "r1", 0), Err(JwtError::Malformed));
        assert_eq!(verify("a.b.c.d", b"k", "r1", 0), Err(JwtError::Malformed));
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":9999,"room":"r1"}"#)
        );
        assert_eq!(verify(&none, b"k", "r1", 0), Err(JwtError::Algorithm));
        let no_exp = sign(r#"{"room":"r1"}"#, b"k");
        assert_eq!(verify(&no_exp, b"k", "r1", 0), Err(JwtError::Malformed));
    }
}
