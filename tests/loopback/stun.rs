//! A tiny STUN client for the tests, independent of the server's own encoder.

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};

use turnpike_proto::attr;

pub const COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];

fn push_attrs(out: &mut Vec<u8>, attrs: &[(u16, &[u8])]) {
    for (t, v) in attrs {
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
        out.extend_from_slice(v);
        out.resize(out.len() + (4 - v.len() % 4) % 4, 0);
    }
}

fn set_len(out: &mut [u8]) {
    let len = (out.len() - 20) as u16;
    out[2..4].copy_from_slice(&len.to_be_bytes());
}

/// Recomputes the trailing FINGERPRINT after the header was edited.
pub fn refingerprint(m: &mut [u8]) {
    let n = m.len();
    let crc = crc32fast::hash(&m[..n - 8]) ^ 0x5354_554E;
    m[n - 4..].copy_from_slice(&crc.to_be_bytes());
}

/// A Binding request with a random transaction id.
pub fn binding_request(attrs: &[(u16, &[u8])], fingerprint: bool) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0, 0];
    m.extend_from_slice(&COOKIE);
    let tid: [u8; 12] = std::array::from_fn(|_| fastrand());
    m.extend_from_slice(&tid);
    push_attrs(&mut m, attrs);
    if fingerprint {
        m.extend_from_slice(&[0x80, 0x28, 0, 4, 0, 0, 0, 0]);
        set_len(&mut m);
        refingerprint(&mut m);
    } else {
        set_len(&mut m);
    }
    m
}

/// An RFC 3489 Binding request (no magic cookie).
pub fn classic_request(attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = vec![0x00, 0x01, 0, 0];
    let tid: [u8; 16] = std::array::from_fn(|_| fastrand());
    m.extend_from_slice(&tid);
    m[4] = 0x5A; // surely not the cookie
    push_attrs(&mut m, attrs);
    set_len(&mut m);
    m
}

fn fastrand() -> u8 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut s = STATE.load(Ordering::Relaxed);
    if s == 0 {
        s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
            | 1;
    }
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    STATE.store(s, Ordering::Relaxed);
    (s >> 24) as u8
}

/// What the tests look at in a response.
#[derive(Debug, Default)]
pub struct Response {
    pub class: u16,
    pub transaction_id: Vec<u8>,
    pub xor_mapped: Option<SocketAddr>,
    pub other_address: Option<SocketAddr>,
    pub response_origin: Option<SocketAddr>,
    pub software: Option<String>,
    pub error_code: Option<u16>,
    pub unknown_attributes: Vec<u16>,
    pub fingerprint: bool,
    attrs: Vec<(u16, Vec<u8>)>,
}

impl Response {
    pub fn has(&self, t: u16) -> bool {
        self.attrs.iter().any(|(a, _)| *a == t)
    }
    pub fn attr_len(&self, t: u16) -> Option<usize> {
        self.attrs
            .iter()
            .find(|(a, _)| *a == t)
            .map(|(_, v)| v.len())
    }
}

fn addr(v: &[u8], xor: Option<&[u8]>) -> SocketAddr {
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    let mut ip = v[4..].to_vec();
    if let Some(key) = xor {
        port ^= 0x2112;
        for (b, k) in ip.iter_mut().zip(key) {
            *b ^= k;
        }
    }
    let ip = match v[1] {
        1 => IpAddr::from(<[u8; 4]>::try_from(&ip[..4]).unwrap()),
        _ => IpAddr::from(<[u8; 16]>::try_from(&ip[..16]).unwrap()),
    };
    SocketAddr::new(ip, port)
}

fn walk(m: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 20;
    while at + 4 <= m.len() {
        let t = u16::from_be_bytes([m[at], m[at + 1]]);
        let l = u16::from_be_bytes([m[at + 2], m[at + 3]]) as usize;
        out.push((t, m[at + 4..at + 4 + l].to_vec()));
        at += 4 + l.div_ceil(4) * 4;
    }
    out
}

/// Parses an RFC 8489 response, checking framing and FINGERPRINT.
pub fn parse_response(m: &[u8]) -> Response {
    assert!(m.len() >= 20 && m[4..8] == COOKIE, "STUN response");
    assert_eq!(
        u16::from_be_bytes([m[2], m[3]]) as usize + 20,
        m.len(),
        "length field"
    );
    let mut key = COOKIE.to_vec();
    key.extend_from_slice(&m[8..20]);
    let mut r = Response {
        class: u16::from_be_bytes([m[0], m[1]]),
        transaction_id: m[8..20].to_vec(),
        ..Response::default()
    };
    let mut at = 20;
    for (t, v) in walk(m) {
        match t {
            attr::XOR_MAPPED_ADDRESS => r.xor_mapped = Some(addr(&v, Some(&key))),
            attr::OTHER_ADDRESS => r.other_address = Some(addr(&v, None)),
            attr::RESPONSE_ORIGIN => r.response_origin = Some(addr(&v, None)),
            attr::SOFTWARE => r.software = Some(String::from_utf8(v.clone()).unwrap()),
            attr::ERROR_CODE => r.error_code = Some(u16::from(v[2]) * 100 + u16::from(v[3])),
            attr::UNKNOWN_ATTRIBUTES => {
                r.unknown_attributes = v
                    .chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect()
            }
            attr::FINGERPRINT => {
                let crc = crc32fast::hash(&m[..at]) ^ 0x5354_554E;
                assert_eq!(v, crc.to_be_bytes(), "FINGERPRINT verifies");
                r.fingerprint = true;
            }
            _ => {}
        }
        at += 4 + v.len().div_ceil(4) * 4;
        r.attrs.push((t, v));
    }
    r
}

/// An RFC 3489 response.
#[derive(Debug, Default)]
pub struct Classic {
    pub mapped: Option<SocketAddr>,
    pub source: Option<SocketAddr>,
    pub changed: Option<SocketAddr>,
}

pub fn parse_classic(m: &[u8]) -> Classic {
    assert_eq!(&m[0..2], &[0x01, 0x01]);
    let mut c = Classic::default();
    for (t, v) in walk(m) {
        match t {
            attr::MAPPED_ADDRESS => c.mapped = Some(addr(&v, None)),
            attr::SOURCE_ADDRESS => c.source = Some(addr(&v, None)),
            attr::CHANGED_ADDRESS => c.changed = Some(addr(&v, None)),
            _ => {}
        }
    }
    c
}

/// Reads one STUN message from a stream.
pub fn read_tcp_response(s: &mut TcpStream) -> Response {
    let mut head = [0u8; 20];
    s.read_exact(&mut head).expect("response header");
    let len = u16::from_be_bytes([head[2], head[3]]) as usize;
    let mut m = head.to_vec();
    m.resize(20 + len, 0);
    s.read_exact(&mut m[20..]).expect("response body");
    parse_response(&m)
}
