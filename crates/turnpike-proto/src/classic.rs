//! Responses to RFC 3489 ("classic STUN") Binding requests, which carry no magic cookie.
//!
//! RFC 8489 §12 asks a server to keep answering such clients with MAPPED-ADDRESS instead of
//! XOR-MAPPED-ADDRESS. When the server can do NAT-behaviour discovery it also sends
//! SOURCE-ADDRESS (where the response leaves from) and CHANGED-ADDRESS (the alternate IP and
//! port), which RFC 3489 test tools depend on. `stun_codec` rejects messages without the magic
//! cookie, so these are written here by hand.

use std::net::SocketAddr;

use crate::fast::{write_addr_attr, write_error_code};
use crate::{Class, HEADER_LEN, attr, message_type, method};

fn header(out: &mut Vec<u8>, class: Class, transaction_id: &[u8; 16]) -> usize {
    let start = out.len();
    out.extend_from_slice(&message_type(method::BINDING, class).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(transaction_id);
    start
}

fn finish(out: &mut [u8], start: usize) {
    let body = u16::try_from(out.len() - start - HEADER_LEN).unwrap_or(u16::MAX);
    out[start + 2..start + 4].copy_from_slice(&body.to_be_bytes());
}

/// Appends an RFC 3489 Binding success response.
pub fn binding_success(
    out: &mut Vec<u8>,
    transaction_id: &[u8; 16],
    mapped: SocketAddr,
    source: Option<SocketAddr>,
    changed: Option<SocketAddr>,
) {
    let start = header(out, Class::Success, transaction_id);
    write_addr_attr(out, attr::MAPPED_ADDRESS, mapped);
    if let Some(a) = source {
        write_addr_attr(out, attr::SOURCE_ADDRESS, a);
    }
    if let Some(a) = changed {
        write_addr_attr(out, attr::CHANGED_ADDRESS, a);
    }
    finish(out, start);
}

/// Appends an RFC 3489 Binding error response. RFC 3489 §11.2.10 wants an even number of
/// entries in UNKNOWN-ATTRIBUTES, repeating one if needed.
pub fn binding_error(
    out: &mut Vec<u8>,
    transaction_id: &[u8; 16],
    code: u16,
    reason: &str,
    unknown: &[u16],
) {
    let start = header(out, Class::Error, transaction_id);
    write_error_code(out, code, reason);
    if let Some(&last) = unknown.last() {
        let len = (unknown.len() + unknown.len() % 2) * 2;
        out.extend_from_slice(&attr::UNKNOWN_ATTRIBUTES.to_be_bytes());
        out.extend_from_slice(&(len as u16).to_be_bytes());
        for t in unknown {
            out.extend_from_slice(&t.to_be_bytes());
        }
        if unknown.len() % 2 == 1 {
            out.extend_from_slice(&last.to_be_bytes());
        }
    }
    finish(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{MessageView, TransactionId};

    #[test]
    fn classic_success_layout() {
        let tid = [9u8; 16];
        let mut out = Vec::new();
        binding_success(
            &mut out,
            &tid,
            "192.0.2.1:1000".parse().unwrap(),
            Some("198.51.100.1:3478".parse().unwrap()),
            Some("198.51.100.2:3479".parse().unwrap()),
        );
        assert_eq!(out.len(), 20 + 36);
        assert_eq!(&out[0..4], &[0x01, 0x01, 0x00, 36]);
        assert_eq!(&out[4..20], &tid);
        // MAPPED-ADDRESS, family 1, port 1000, 192.0.2.1
        assert_eq!(&out[20..32], &[0, 1, 0, 8, 0, 1, 0x03, 0xE8, 192, 0, 2, 1]);
        assert_eq!(&out[32..34], &[0, 4]);
        assert_eq!(&out[44..46], &[0, 5]);
    }

    #[test]
    fn classic_error_repeats_odd_unknown() {
        let tid = [1u8; 16];
        let mut out = Vec::new();
        binding_error(&mut out, &tid, 420, "Unknown Attribute", &[0x0002]);
        // ERROR-CODE: 4-byte header + 4 + 17 bytes padded = 28; UNKNOWN-ATTRIBUTES 4 + 4.
        assert_eq!(out.len(), 20 + 28 + 8);
        assert_eq!(&out[out.len() - 8..], &[0, 0x0A, 0, 4, 0, 2, 0, 2]);
        // Our parser does not accept classic responses (only classic Binding requests).
        assert!(MessageView::parse(&out).is_err());
        let _ = TransactionId::Classic(tid);
    }
}
