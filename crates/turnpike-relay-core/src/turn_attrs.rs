//! Reading the attributes of a TURN request or indication in one pass over a validated
//! [`MessageView`], without allocating.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;

use turnpike_proto::{MAGIC_COOKIE, MessageView, attr};

/// Most XOR-PEER-ADDRESS attributes read from one CreatePermission.
pub(crate) const MAX_PEERS: usize = 16;
/// Most unknown comprehension-required attribute types reported in a 420.
const MAX_UNKNOWN: usize = 8;

/// REQUESTED-ADDRESS-FAMILY / ADDITIONAL-ADDRESS-FAMILY values (RFC 8656 §18.1).
pub(crate) const FAMILY_V4: u8 = 0x01;
pub(crate) const FAMILY_V6: u8 = 0x02;

/// The attributes a TURN handler reads, as found before MESSAGE-INTEGRITY.
#[derive(Debug, Default)]
pub(crate) struct TurnAttrs<'a> {
    pub username: Option<&'a [u8]>,
    pub realm: Option<&'a [u8]>,
    pub nonce: Option<&'a [u8]>,
    pub password_algorithm: Option<u16>,
    pub password_algorithms: Option<&'a [u8]>,
    pub userhash: bool,
    pub message_integrity: bool,
    pub message_integrity_sha256: bool,
    pub lifetime: Option<u32>,
    pub requested_transport: Option<u8>,
    pub requested_family: Option<u8>,
    pub additional_family: Option<u8>,
    pub even_port: Option<bool>,
    pub reservation_token: Option<u64>,
    pub dont_fragment: bool,
    pub channel_number: Option<u16>,
    peers: [Option<SocketAddr>; MAX_PEERS],
    pub peer_count: usize,
    /// More XOR-PEER-ADDRESS attributes than [`MAX_PEERS`].
    pub too_many_peers: bool,
    /// DATA, as a byte range of the whole message.
    pub data: Option<Range<usize>>,
    /// The first known attribute whose value is malformed.
    pub malformed: Option<u16>,
    unknown: [u16; MAX_UNKNOWN],
    unknown_len: usize,
}

impl<'a> TurnAttrs<'a> {
    /// Reads the attributes of `view`. Attributes after MESSAGE-INTEGRITY are ignored, except
    /// that MESSAGE-INTEGRITY-SHA256 right after it is noted (RFC 8489 §14.5).
    pub fn read(view: &MessageView<'a>) -> Self {
        let mut a = TurnAttrs::default();
        let tid = match view.transaction_id {
            turnpike_proto::TransactionId::Modern(t) => t,
            turnpike_proto::TransactionId::Classic(_) => [0; 12],
        };
        let base = view.bytes().as_ptr() as usize;
        let mut after_integrity = false;
        for (t, value) in view.attributes() {
            if after_integrity {
                if t == attr::MESSAGE_INTEGRITY_SHA256 {
                    a.message_integrity_sha256 = true;
                }
                continue;
            }
            match t {
                attr::USERNAME => {
                    a.username.get_or_insert(value);
                }
                attr::REALM => {
                    a.realm.get_or_insert(value);
                }
                attr::NONCE => {
                    a.nonce.get_or_insert(value);
                }
                attr::USERHASH => a.userhash = true,
                attr::PASSWORD_ALGORITHM => {
                    // Algorithm (2 bytes) + parameters length (2 bytes) + parameters.
                    if value.len() >= 4 {
                        a.password_algorithm
                            .get_or_insert(u16::from_be_bytes([value[0], value[1]]));
                    } else {
                        a.note_malformed(t);
                    }
                }
                attr::PASSWORD_ALGORITHMS => {
                    a.password_algorithms.get_or_insert(value);
                }
                attr::MESSAGE_INTEGRITY => {
                    a.message_integrity = true;
                    after_integrity = true;
                }
                attr::MESSAGE_INTEGRITY_SHA256 => {
                    a.message_integrity_sha256 = true;
                    after_integrity = true;
                }
                attr::LIFETIME => match <[u8; 4]>::try_from(value) {
                    Ok(b) => {
                        a.lifetime.get_or_insert(u32::from_be_bytes(b));
                    }
                    Err(_) => a.note_malformed(t),
                },
                attr::REQUESTED_TRANSPORT => {
                    if value.len() == 4 {
                        a.requested_transport.get_or_insert(value[0]);
                    } else {
                        a.note_malformed(t);
                    }
                }
                attr::REQUESTED_ADDRESS_FAMILY => {
                    if value.len() == 4 {
                        a.requested_family.get_or_insert(value[0]);
                    } else {
                        a.note_malformed(t);
                    }
                }
                attr::ADDITIONAL_ADDRESS_FAMILY => {
                    if value.len() == 4 {
                        a.additional_family.get_or_insert(value[0]);
                    } else {
                        a.note_malformed(t);
                    }
                }
                attr::EVEN_PORT => {
                    if value.len() == 1 {
                        a.even_port.get_or_insert(value[0] & 0x80 != 0);
                    } else {
                        a.note_malformed(t);
                    }
                }
                attr::RESERVATION_TOKEN => match <[u8; 8]>::try_from(value) {
                    Ok(b) => {
                        a.reservation_token.get_or_insert(u64::from_be_bytes(b));
                    }
                    Err(_) => a.note_malformed(t),
                },
                attr::DONT_FRAGMENT => {
                    if value.is_empty() {
                        a.dont_fragment = true;
                    } else {
                        a.note_malformed(t);
                    }
                }
                attr::CHANNEL_NUMBER => {
                    if value.len() == 4 {
                        a.channel_number
                            .get_or_insert(u16::from_be_bytes([value[0], value[1]]));
                    } else {
                        a.note_malformed(t);
                    }
                }
                attr::XOR_PEER_ADDRESS => match decode_xor_addr(value, &tid) {
                    Some(addr) => {
                        if a.peer_count < MAX_PEERS {
                            a.peers[a.peer_count] = Some(addr);
                            a.peer_count += 1;
                        } else {
                            a.too_many_peers = true;
                        }
                    }
                    None => a.note_malformed(t),
                },
                attr::DATA => {
                    if a.data.is_none() {
                        let start = value.as_ptr() as usize - base;
                        a.data = Some(start..start + value.len());
                    }
                }
                _ => {
                    if attr::is_comprehension_required(t)
                        && !attr::is_understood(t)
                        && !attr::is_turn(t)
                    {
                        a.note_unknown(t);
                    }
                }
            }
        }
        a
    }

    fn note_malformed(&mut self, t: u16) {
        self.malformed.get_or_insert(t);
    }

    fn note_unknown(&mut self, t: u16) {
        if self.unknown().contains(&t) || self.unknown_len == MAX_UNKNOWN {
            return;
        }
        self.unknown[self.unknown_len] = t;
        self.unknown_len += 1;
    }

    /// Unknown comprehension-required attribute types (at most 8, no duplicates).
    pub fn unknown(&self) -> &[u16] {
        &self.unknown[..self.unknown_len]
    }

    /// The XOR-PEER-ADDRESS values, in order.
    pub fn peers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.peers[..self.peer_count].iter().flatten().copied()
    }

    /// The first XOR-PEER-ADDRESS.
    pub fn first_peer(&self) -> Option<SocketAddr> {
        self.peers[0]
    }
}

/// Decodes an XOR-*-ADDRESS value (RFC 8489 §14.2).
pub(crate) fn decode_xor_addr(value: &[u8], tid: &[u8; 12]) -> Option<SocketAddr> {
    if value.len() < 4 {
        return None;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
    match (value[1], value.len()) {
        (FAMILY_V4, 8) => {
            let mut o = [0u8; 4];
            for i in 0..4 {
                o[i] = value[4 + i] ^ cookie[i];
            }
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(o)), port))
        }
        (FAMILY_V6, 20) => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&cookie);
            key[4..].copy_from_slice(tid);
            let mut o = [0u8; 16];
            for i in 0..16 {
                o[i] = value[4 + i] ^ key[i];
            }
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(o)), port))
        }
        _ => None,
    }
}
