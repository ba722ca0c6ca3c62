//! The client side of STUN Binding: building requests and reading responses, for
//! `turnpike nat-check` and the tests. Allocation-light and panic-free on any input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::fast::{finish_with_fingerprint, write_attr, write_header};
use crate::{Class, MAGIC_COOKIE, MessageView, TransactionId, attr, method};

/// Builds a Binding request with FINGERPRINT, and CHANGE-REQUEST when `change` is
/// `Some((change_ip, change_port))`.
pub fn binding_request(transaction_id: &[u8; 12], change: Option<(bool, bool)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(36);
    write_header(&mut out, method::BINDING, Class::Request, transaction_id);
    if let Some((ip, port)) = change {
        let flags = (u8::from(ip) << 2) | (u8::from(port) << 1);
        write_attr(&mut out, attr::CHANGE_REQUEST, &[0, 0, 0, flags]);
    }
    finish_with_fingerprint(&mut out, 0);
    out
}

/// What a Binding response says.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BindingResponse {
    /// XOR-MAPPED-ADDRESS (or MAPPED-ADDRESS if only that was sent).
    pub mapped: Option<SocketAddr>,
    /// OTHER-ADDRESS (RFC 5780), or CHANGED-ADDRESS from an older server.
    pub other_address: Option<SocketAddr>,
    /// RESPONSE-ORIGIN (RFC 5780), or SOURCE-ADDRESS from an older server.
    pub response_origin: Option<SocketAddr>,
    /// ERROR-CODE of an error response.
    pub error_code: Option<u16>,
}

/// A parsed STUN message as a client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A Binding success or error response.
    Response {
        /// Its transaction id.
        transaction_id: [u8; 12],
        /// Its contents.
        response: BindingResponse,
    },
    /// A Binding request (what a hairpinning test receives).
    Request {
        /// Its transaction id.
        transaction_id: [u8; 12],
    },
}

fn be16(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*b.first()?, *b.get(1)?]))
}

/// Decodes a (XOR-)MAPPED-ADDRESS-style value.
fn read_addr(value: &[u8], xor_tid: Option<&[u8; 12]>) -> Option<SocketAddr> {
    let family = *value.get(1)?;
    let mut port = be16(value.get(2..4)?)?;
    let cookie = MAGIC_COOKIE.to_be_bytes();
    match (family, value.len()) {
        (0x01, 8) => {
            let mut ip: [u8; 4] = value.get(4..8)?.try_into().ok()?;
            if xor_tid.is_some() {
                port ^= (MAGIC_COOKIE >> 16) as u16;
                for (b, k) in ip.iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port))
        }
        (0x02, 20) => {
            let mut ip: [u8; 16] = value.get(4..20)?.try_into().ok()?;
            if let Some(tid) = xor_tid {
                port ^= (MAGIC_COOKIE >> 16) as u16;
                let key = cookie.iter().chain(tid.iter());
                for (b, k) in ip.iter_mut().zip(key) {
                    *b ^= k;
                }
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port))
        }
        _ => None,
    }
}

/// Parses a datagram a STUN client received. `None` for anything that is not a valid RFC 8489
/// Binding response or request (wrong class, method, framing or FINGERPRINT).
pub fn parse(datagram: &[u8]) -> Option<Received> {
    let view = MessageView::parse(datagram).ok()?;
    let TransactionId::Modern(tid) = view.transaction_id else {
        return None;
    };
    if view.method != method::BINDING {
        return None;
    }
    match view.class {
        Class::Request => Some(Received::Request {
            transaction_id: tid,
        }),
        Class::Indication => None,
        Class::Success | Class::Error => {
            let mut r = BindingResponse::default();
            for (t, v) in view.attributes() {
                match t {
                    attr::XOR_MAPPED_ADDRESS => r.mapped = read_addr(v, Some(&tid)).or(r.mapped),
                    attr::MAPPED_ADDRESS if r.mapped.is_none() => r.mapped = read_addr(v, None),
                    attr::OTHER_ADDRESS => r.other_address = read_addr(v, None),
                    attr::CHANGED_ADDRESS if r.other_address.is_none() => {
                        r.other_address = read_addr(v, None)
                    }
                    attr::RESPONSE_ORIGIN => r.response_origin = read_addr(v, None),
                    attr::SOURCE_ADDRESS if r.response_origin.is_none() => {
                        r.response_origin = read_addr(v, None)
                    }
                    attr::ERROR_CODE if v.len() >= 4 => {
                        r.error_code = Some(u16::from(v[2] & 0x07) * 100 + u16::from(v[3]));
                    }
                    _ => {}
                }
            }
            if view.class == Class::Error && r.error_code.is_none() {
                r.error_code = Some(0);
            }
            Some(Received::Response {
                transaction_id: tid,
                response: r,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fast::BindingSuccess;

    #[test]
    fn round_trip_with_server_writer() {
        let tid = [5u8; 12];
        for mapped in ["192.0.2.7:4000", "[2001:db8::7]:4000"] {
            let mut out = Vec::new();
            BindingSuccess {
                transaction_id: &tid,
                mapped: mapped.parse().unwrap(),
                response_origin: Some("198.51.100.1:3478".parse().unwrap()),
                other_address: Some("198.51.100.2:3479".parse().unwrap()),
                software: None,
                padding: None,
                fingerprint: true,
            }
            .encode(&mut out);
            let Some(Received::Response {
                transaction_id,
                response,
            }) = parse(&out)
            else {
                panic!("parses")
            };
            assert_eq!(transaction_id, tid);
            assert_eq!(response.mapped, Some(mapped.parse().unwrap()));
            assert_eq!(
                response.other_address,
                Some("198.51.100.2:3479".parse().unwrap())
            );
            assert_eq!(
                response.response_origin,
                Some("198.51.100.1:3478".parse().unwrap())
            );
            assert_eq!(response.error_code, None);
        }
        let req = binding_request(&tid, Some((true, false)));
        assert_eq!(
            parse(&req),
            Some(Received::Request {
                transaction_id: tid
            })
        );
        let v = MessageView::parse(&req).unwrap();
        assert_eq!(
            v.change_request.map(|c| (c.ip, c.port)),
            Some((true, false))
        );
        assert!(parse(&[0u8; 10]).is_none());
    }
}
