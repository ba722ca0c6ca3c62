//! Allocation-free writers for the responses the server sends most: Binding success responses
//! (RFC 8489 + RFC 5780 attributes) and short error responses.
//!
//! The writers append to a caller-owned `Vec<u8>`; once the vector has grown to the largest
//! response (a few hundred bytes), no call allocates again.

use std::net::{IpAddr, SocketAddr};

use crate::{Class, HEADER_LEN, MAGIC_COOKIE, attr, message_type};

const FAMILY_V4: u8 = 0x01;
const FAMILY_V6: u8 = 0x02;

/// Appends a STUN header with a zero length; [`finish`] fills the length in.
#[inline]
pub fn write_header(out: &mut Vec<u8>, method: u16, class: Class, transaction_id: &[u8; 12]) {
    out.extend_from_slice(&message_type(method, class).to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(transaction_id);
}

/// Sets the header length field from the bytes after the header (starting at `start`).
#[inline]
fn set_len(out: &mut [u8], start: usize, extra: usize) {
    let body = out.len() - start - HEADER_LEN + extra;
    // Bodies are bounded far below 64 KiB by the callers; saturate rather than wrap.
    let body = u16::try_from(body).unwrap_or(u16::MAX);
    out[start + 2..start + 4].copy_from_slice(&body.to_be_bytes());
}

/// Appends an attribute with `value`, padded to a multiple of 4 with zeros.
#[inline]
pub fn write_attr(out: &mut Vec<u8>, t: u16, value: &[u8]) {
    let len = u16::try_from(value.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&t.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&value[..usize::from(len)]);
    pad(out, usize::from(len));
}

#[inline]
fn pad(out: &mut Vec<u8>, len: usize) {
    let n = (4 - len % 4) % 4;
    out.extend_from_slice(&[0u8; 3][..n]);
}

/// Appends a MAPPED-ADDRESS-style attribute (plain address: MAPPED-ADDRESS, RESPONSE-ORIGIN,
/// OTHER-ADDRESS, SOURCE-ADDRESS, CHANGED-ADDRESS, ALTERNATE-SERVER).
#[inline]
pub fn write_addr_attr(out: &mut Vec<u8>, t: u16, addr: SocketAddr) {
    out.extend_from_slice(&t.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.extend_from_slice(&8u16.to_be_bytes());
            out.extend_from_slice(&[0, FAMILY_V4]);
            out.extend_from_slice(&addr.port().to_be_bytes());
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.extend_from_slice(&20u16.to_be_bytes());
            out.extend_from_slice(&[0, FAMILY_V6]);
            out.extend_from_slice(&addr.port().to_be_bytes());
            out.extend_from_slice(&ip.octets());
        }
    }
}

/// Appends an XOR-MAPPED-ADDRESS-style attribute (RFC 8489 §14.2).
#[inline]
pub fn write_xor_addr_attr(out: &mut Vec<u8>, t: u16, addr: SocketAddr, transaction_id: &[u8; 12]) {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = addr.port() ^ (MAGIC_COOKIE >> 16) as u16;
    out.extend_from_slice(&t.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.extend_from_slice(&8u16.to_be_bytes());
            out.extend_from_slice(&[0, FAMILY_V4]);
            out.extend_from_slice(&port.to_be_bytes());
            let o = ip.octets();
            out.extend_from_slice(&[
                o[0] ^ cookie[0],
                o[1] ^ cookie[1],
                o[2] ^ cookie[2],
                o[3] ^ cookie[3],
            ]);
        }
        IpAddr::V6(ip) => {
            out.extend_from_slice(&20u16.to_be_bytes());
            out.extend_from_slice(&[0, FAMILY_V6]);
            out.extend_from_slice(&port.to_be_bytes());
            let o = ip.octets();
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&cookie);
            key[4..].copy_from_slice(transaction_id);
            let mut x = [0u8; 16];
            for i in 0..16 {
                x[i] = o[i] ^ key[i];
            }
            out.extend_from_slice(&x);
        }
    }
}

/// Appends FINGERPRINT over the message that starts at `start` and sets the final length.
#[inline]
pub fn finish_with_fingerprint(out: &mut Vec<u8>, start: usize) {
    set_len(out, start, 8);
    let crc = crate::fingerprint(&out[start..]);
    out.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
    out.extend_from_slice(&4u16.to_be_bytes());
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Sets the final length of the message that starts at `start` (no FINGERPRINT).
#[inline]
pub fn finish(out: &mut [u8], start: usize) {
    set_len(out, start, 0);
}

/// Size on the wire of an address attribute for `addr`.
pub const fn addr_attr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 12,
        SocketAddr::V6(_) => 24,
    }
}

/// Size on the wire of an attribute with a value of `len` bytes.
pub const fn attr_len(len: usize) -> usize {
    4 + ((len + 3) & !3)
}

/// A Binding success response, in the attribute order both paths use: XOR-MAPPED-ADDRESS,
/// RESPONSE-ORIGIN, OTHER-ADDRESS, SOFTWARE, PADDING, FINGERPRINT.
#[derive(Debug, Clone, Copy)]
pub struct BindingSuccess<'a> {
    /// Transaction id of the request.
    pub transaction_id: &'a [u8; 12],
    /// The client's reflexive transport address.
    pub mapped: SocketAddr,
    /// RESPONSE-ORIGIN: the address the response leaves from (RFC 5780).
    pub response_origin: Option<SocketAddr>,
    /// OTHER-ADDRESS: the server's alternate address (RFC 5780).
    pub other_address: Option<SocketAddr>,
    /// SOFTWARE text.
    pub software: Option<&'a str>,
    /// PADDING value length (zeros), if the request carried PADDING.
    pub padding: Option<u16>,
    /// Append FINGERPRINT (the request had one).
    pub fingerprint: bool,
}

impl BindingSuccess<'_> {
    /// The encoded size in bytes.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + addr_attr_len(&self.mapped)
            + self.response_origin.as_ref().map_or(0, addr_attr_len)
            + self.other_address.as_ref().map_or(0, addr_attr_len)
            + self.software.map_or(0, |s| attr_len(s.len()))
            + self.padding.map_or(0, |p| attr_len(usize::from(p)))
            + if self.fingerprint { 8 } else { 0 }
    }

    /// Appends the encoded response to `out`.
    #[inline]
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        write_header(
            out,
            crate::method::BINDING,
            Class::Success,
            self.transaction_id,
        );
        write_xor_addr_attr(
            out,
            attr::XOR_MAPPED_ADDRESS,
            self.mapped,
            self.transaction_id,
        );
        if let Some(a) = self.response_origin {
            write_addr_attr(out, attr::RESPONSE_ORIGIN, a);
        }
        if let Some(a) = self.other_address {
            write_addr_attr(out, attr::OTHER_ADDRESS, a);
        }
        if let Some(s) = self.software {
            write_attr(out, attr::SOFTWARE, s.as_bytes());
        }
        if let Some(p) = self.padding {
            let p = usize::from(p);
            out.extend_from_slice(&attr::PADDING.to_be_bytes());
            out.extend_from_slice(&(p as u16).to_be_bytes());
            out.resize(out.len() + ((p + 3) & !3), 0);
        }
        if self.fingerprint {
            finish_with_fingerprint(out, start);
        } else {
            finish(out, start);
        }
    }
}

/// An error response to a request.
#[derive(Debug, Clone, Copy)]
pub struct ErrorResponse<'a> {
    /// Method of the request.
    pub method: u16,
    /// Transaction id of the request.
    pub transaction_id: &'a [u8; 12],
    /// The error code (300–699).
    pub code: u16,
    /// Reason phrase; the standard one when `None`.
    pub reason: Option<&'a str>,
    /// UNKNOWN-ATTRIBUTES (for 420).
    pub unknown: &'a [u16],
    /// SOFTWARE text.
    pub software: Option<&'a str>,
    /// Append FINGERPRINT.
    pub fingerprint: bool,
}

impl ErrorResponse<'_> {
    fn reason(&self) -> &str {
        self.reason.unwrap_or_else(|| reason_phrase(self.code))
    }

    /// The encoded size in bytes.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + attr_len(4 + self.reason().len().min(763))
            + if self.unknown.is_empty() {
                0
            } else {
                attr_len(2 * self.unknown.len())
            }
            + self.software.map_or(0, |s| attr_len(s.len()))
            + if self.fingerprint { 8 } else { 0 }
    }

    /// Appends the encoded response to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        write_header(out, self.method, Class::Error, self.transaction_id);
        write_error_code(out, self.code, self.reason());
        if !self.unknown.is_empty() {
            write_unknown_attributes(out, self.unknown);
        }
        if let Some(s) = self.software {
            write_attr(out, attr::SOFTWARE, s.as_bytes());
        }
        if self.fingerprint {
            finish_with_fingerprint(out, start);
        } else {
            finish(out, start);
        }
    }
}

/// Standard reason phrases for the error codes the server sends.
pub const fn reason_phrase(code: u16) -> &'static str {
    match code {
        300 => "Try Alternate",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        420 => "Unknown Attribute",
        437 => "Allocation Mismatch",
        438 => "Stale Nonce",
        440 => "Address Family not Supported",
        441 => "Wrong Credentials",
        442 => "Unsupported Transport Protocol",
        443 => "Peer Address Family Mismatch",
        486 => "Allocation Quota Reached",
        500 => "Server Error",
        508 => "Insufficient Capacity",
        _ => "Error",
    }
}

/// Appends an ERROR-CODE attribute (RFC 8489 §14.8).
pub fn write_error_code(out: &mut Vec<u8>, code: u16, reason: &str) {
    let class = (code / 100) as u8;
    let number = (code % 100) as u8;
    let reason = &reason.as_bytes()[..reason.len().min(763)];
    let len = 4 + reason.len();
    out.extend_from_slice(&attr::ERROR_CODE.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, class & 0x07, number]);
    out.extend_from_slice(reason);
    pad(out, len);
}

/// Appends an UNKNOWN-ATTRIBUTES attribute listing `types`.
pub fn write_unknown_attributes(out: &mut Vec<u8>, types: &[u16]) {
    let len = types.len() * 2;
    out.extend_from_slice(&attr::UNKNOWN_ATTRIBUTES.to_be_bytes());
    out.extend_from_slice(&(len as u16).to_be_bytes());
    for t in types {
        out.extend_from_slice(&t.to_be_bytes());
    }
    pad(out, len);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MessageView;

    #[test]
    fn encoded_len_matches_encoding() {
        let tid = [7u8; 12];
        for mapped in ["192.0.2.1:32853", "[2001:db8::1]:40000"] {
            for extras in 0..4u8 {
                let msg = BindingSuccess {
                    transaction_id: &tid,
                    mapped: mapped.parse().unwrap(),
                    response_origin: (extras & 1 != 0)
                        .then(|| "198.51.100.1:3478".parse().unwrap()),
                    other_address: (extras & 2 != 0).then(|| "[2001:db8::2]:3479".parse().unwrap()),
                    software: (extras == 3).then_some("turnpike"),
                    padding: (extras == 2).then_some(5),
                    fingerprint: extras != 0,
                };
                let mut out = Vec::new();
                msg.encode(&mut out);
                assert_eq!(out.len(), msg.encoded_len());
                let v = MessageView::parse(&out).expect("our own output parses");
                assert_eq!(v.fingerprint, msg.fingerprint);
                assert_eq!(v.class, Class::Success);
            }
        }
    }
}
