//! Unguessable ids (session ids are bearer tokens for `resume`).
//!
//! A keyed pseudo-random function: HMAC-SHA256 over a counter, keyed with 32 bytes the driver
//! takes from the operating system's random source. Knowing any number of outputs does not
//! reveal the key or the next output, unlike a xorshift generator whose state its outputs
//! give away. Tests pass a fixed key and get repeatable ids.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Generates hex ids from a secret key.
#[derive(Clone)]
pub struct IdGen {
    key: [u8; 32],
    counter: u64,
}

impl std::fmt::Debug for IdGen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("IdGen")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl IdGen {
    /// A generator keyed with `key` (pass 32 random bytes).
    pub fn new(key: [u8; 32]) -> Self {
        IdGen { key, counter: 0 }
    }

    /// A generator keyed from a 64-bit seed: for tests and for callers without a random source.
    pub fn from_seed(seed: u64) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        Self::new(key)
    }

    /// `bytes` (at most 32) fresh pseudo-random bytes as lowercase hex.
    pub fn hex(&mut self, bytes: usize) -> String {
        self.counter = self.counter.wrapping_add(1);
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        mac.update(&self.counter.to_le_bytes());
        let out = mac.finalize().into_bytes();
        let mut s = String::with_capacity(bytes.min(32) * 2);
        for b in out.iter().take(bytes.min(32)) {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::IdGen;

    #[test]
    fn ids_differ_are_hex_and_repeat_for_one_key() {
        let mut a = IdGen::new([7; 32]);
        let mut b = IdGen::new([7; 32]);
        let x = a.hex(16);
        assert_eq!(x.len(), 32);
        assert!(x.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(x, a.hex(16));
        assert_eq!(x, b.hex(16));
        assert_ne!(IdGen::new([8; 32]).hex(16), x);
        assert_eq!(a.hex(4).len(), 8);
        assert_eq!(a.hex(99).len(), 64);
    }
}
