//! Shared helpers for the Turnpike benchmark tools.
//!
//! This crate contains the load tools and reference servers of
//! `tests/bench/`: `stun-flood` (a UDP STUN Binding load generator) and
//! `mini-responder` (a minimal batched reference responder); `turn-load` (TURN
//! allocations relaying ChannelData through an echo peer, Allocate cycles, held
//! allocations) and `relay-forwarder` (a minimal batched TURN-shaped forwarder,
//! the reference limit); and `hub-load` (WebSocket signaling load). This library
//! holds the small amount of code they share:
//!
//! * STUN Binding encoding/decoding just sufficient for benchmarking
//!   ([`build_binding_request`], [`parse_binding_request`],
//!   [`write_binding_success`], [`parse_binding_success`]),
//! * a bounded-memory log-bucket latency histogram ([`hist::Histogram`]),
//! * thin `recvmmsg`/`sendmmsg`/`ppoll`/signal wrappers ([`sys`]).
//!
//! None of this is a general STUN implementation: it deliberately checks only
//! what a benchmark needs to trust a response.

pub mod hist;
pub mod sys;

use std::net::{IpAddr, SocketAddr};

/// STUN magic cookie (RFC 8489 §5).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// Message type of a Binding request.
pub const BINDING_REQUEST: u16 = 0x0001;
/// Message type of a Binding success response.
pub const BINDING_SUCCESS: u16 = 0x0101;
/// Size of the fixed STUN header.
pub const HEADER_LEN: usize = 20;
/// Attribute type of XOR-MAPPED-ADDRESS.
pub const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
/// Largest Binding success response [`write_binding_success`] can produce
/// (header + IPv6 XOR-MAPPED-ADDRESS).
pub const MAX_SUCCESS_LEN: usize = HEADER_LEN + 4 + 20;

/// A 96-bit STUN transaction id.
pub type TransactionId = [u8; 12];

/// Why a datagram was not accepted as a Binding success response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Shorter than a STUN header.
    TooShort,
    /// Top two bits not zero, wrong magic cookie or inconsistent length.
    NotStun,
    /// A well-formed STUN message of another type (e.g. an error response).
    WrongType(u16),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::TooShort => write!(f, "datagram shorter than a STUN header"),
            ParseError::NotStun => write!(f, "not a STUN message"),
            ParseError::WrongType(t) => write!(f, "unexpected STUN message type {t:#06x}"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Builds a 20-byte Binding request (no attributes) with transaction id `tid`.
pub fn build_binding_request(tid: &TransactionId) -> [u8; HEADER_LEN] {
    let mut out = [0u8; HEADER_LEN];
    write_binding_request(tid, &mut out);
    out
}

/// Writes a 20-byte Binding request with transaction id `tid` into the first
/// [`HEADER_LEN`] bytes of `out`.
///
/// # Panics
/// If `out` is shorter than [`HEADER_LEN`].
pub fn write_binding_request(tid: &TransactionId, out: &mut [u8]) {
    let out = &mut out[..HEADER_LEN];
    out[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    out[2..4].copy_from_slice(&0u16.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(tid);
}

/// Checks the STUN header of `msg` (first two bits zero, magic cookie,
/// attribute length a multiple of 4 that matches the datagram) and returns
/// the message type and transaction id.
pub fn parse_header(msg: &[u8]) -> Result<(u16, TransactionId), ParseError> {
    if msg.len() < HEADER_LEN {
        return Err(ParseError::TooShort);
    }
    let ty = u16::from_be_bytes([msg[0], msg[1]]);
    let len = usize::from(u16::from_be_bytes([msg[2], msg[3]]));
    let cookie = u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]);
    if ty & 0xC000 != 0 || cookie != MAGIC_COOKIE || len % 4 != 0 || HEADER_LEN + len != msg.len() {
        return Err(ParseError::NotStun);
    }
    let mut tid = [0u8; 12];
    tid.copy_from_slice(&msg[8..20]);
    Ok((ty, tid))
}

/// Accepts `msg` if it is a Binding request with a valid header (attributes
/// are not inspected) and returns its transaction id.
pub fn parse_binding_request(msg: &[u8]) -> Option<TransactionId> {
    match parse_header(msg) {
        Ok((BINDING_REQUEST, tid)) => Some(tid),
        _ => None,
    }
}

/// Accepts `msg` if it is a Binding success response with a valid header and
/// returns its transaction id. Attributes are not inspected.
pub fn parse_binding_success(msg: &[u8]) -> Result<TransactionId, ParseError> {
    match parse_header(msg)? {
        (BINDING_SUCCESS, tid) => Ok(tid),
        (ty, _) => Err(ParseError::WrongType(ty)),
    }
}

/// Writes a Binding success response for transaction `tid` that carries one
/// XOR-MAPPED-ADDRESS attribute for `mapped`, and returns its length
/// (32 bytes for IPv4, 44 for IPv6).
///
/// # Panics
/// If `out` is shorter than the response (at most [`MAX_SUCCESS_LEN`]).
pub fn write_binding_success(tid: &TransactionId, mapped: SocketAddr, out: &mut [u8]) -> usize {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let (family, addr_len): (u8, usize) = match mapped.ip() {
        IpAddr::V4(_) => (0x01, 4),
        IpAddr::V6(_) => (0x02, 16),
    };
    let attr_len = 4 + addr_len;
    let total = HEADER_LEN + 4 + attr_len;
    let out = &mut out[..total];
    out[0..2].copy_from_slice(&BINDING_SUCCESS.to_be_bytes());
    out[2..4].copy_from_slice(&((4 + attr_len) as u16).to_be_bytes());
    out[4..8].copy_from_slice(&cookie);
    out[8..20].copy_from_slice(tid);
    let a = &mut out[HEADER_LEN..];
    a[0..2].copy_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
    a[2..4].copy_from_slice(&(attr_len as u16).to_be_bytes());
    a[4] = 0;
    a[5] = family;
    let xport = mapped.port() ^ (MAGIC_COOKIE >> 16) as u16;
    a[6..8].copy_from_slice(&xport.to_be_bytes());
    match mapped.ip() {
        IpAddr::V4(ip) => {
            for (i, b) in ip.octets().iter().enumerate() {
                a[8 + i] = b ^ cookie[i];
            }
        }
        IpAddr::V6(ip) => {
            // XOR key: magic cookie followed by the transaction id.
            for (i, b) in ip.octets().iter().enumerate() {
                let k = if i < 4 { cookie[i] } else { tid[i - 4] };
                a[8 + i] = b ^ k;
            }
        }
    }
    total
}

/// Decodes the first XOR-MAPPED-ADDRESS attribute of a STUN message whose
/// header was already validated. Returns `None` if there is none or it is
/// malformed. Used by tests and sanity checks, not on the hot path.
pub fn xor_mapped_address(msg: &[u8]) -> Option<SocketAddr> {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let tid = msg.get(8..20)?;
    let mut rest = msg.get(HEADER_LEN..)?;
    while rest.len() >= 4 {
        let ty = u16::from_be_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_be_bytes([rest[2], rest[3]]));
        let val = rest.get(4..4 + len)?;
        if ty == ATTR_XOR_MAPPED_ADDRESS {
            if len < 4 {
                return None;
            }
            let port = u16::from_be_bytes([val[2], val[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
            return match (val[1], len) {
                (0x01, 8) => {
                    let mut o = [0u8; 4];
                    for i in 0..4 {
                        o[i] = val[4 + i] ^ cookie[i];
                    }
                    Some(SocketAddr::new(IpAddr::from(o), port))
                }
                (0x02, 20) => {
                    let mut o = [0u8; 16];
                    for i in 0..16 {
                        let k = if i < 4 { cookie[i] } else { tid[i - 4] };
                        o[i] = val[4 + i] ^ k;
                    }
                    Some(SocketAddr::new(IpAddr::from(o), port))
                }
                _ => None,
            };
        }
        let padded = (len + 3) & !3;
        rest = rest.get(4 + padded..)?;
    }
    None
}

/// Per-core CPU tick counters from `/proc/stat`, to tell how busy each core
/// was between two snapshots (see [`core_busy_pct`]).
#[derive(Debug, Clone, Default)]
pub struct CoreTicks {
    /// `(busy, total)` ticks per core, in core order; idle and iowait count
    /// as not busy.
    pub cores: Vec<(u64, u64)>,
}

impl CoreTicks {
    /// Reads `/proc/stat`; empty if it cannot be read.
    pub fn snapshot() -> Self {
        let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        Self::parse(&text)
    }

    /// Parses the `cpuN` lines of a `/proc/stat` text.
    pub fn parse(text: &str) -> Self {
        let mut cores = Vec::new();
        for line in text.lines() {
            let mut it = line.split_ascii_whitespace();
            match it.next() {
                Some(name) if name.starts_with("cpu") && name.len() > 3 => {}
                _ => continue,
            }
            let v: Vec<u64> = it.map(|x| x.parse().unwrap_or(0)).collect();
            if v.len() < 4 {
                continue;
            }
            // user nice system idle iowait irq softirq steal (guest* are
            // already included in user/nice).
            let total: u64 = v.iter().take(8).sum();
            let idle = v[3] + v.get(4).copied().unwrap_or(0);
            cores.push((total - idle.min(total), total));
        }
        CoreTicks { cores }
    }
}

/// CPU time (user + system, in `/proc/stat` ticks) used so far by process
/// `pid` (all its threads), or by this process if `pid` is `None`. `None` if
/// `/proc/<pid>/stat` cannot be read.
pub fn process_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    parse_process_ticks(&std::fs::read_to_string(path).ok()?)
}

/// Parses utime + stime out of a `/proc/<pid>/stat` line.
pub fn parse_process_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    // f[0] is field 3 (state); utime and stime are fields 14 and 15.
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Percentage of time each core was busy between two snapshots (one decimal).
pub fn core_busy_pct(before: &CoreTicks, after: &CoreTicks) -> Vec<f64> {
    before
        .cores
        .iter()
        .zip(after.cores.iter())
        .map(|(&(b0, t0), &(b1, t1))| {
            let dt = t1.saturating_sub(t0);
            if dt == 0 {
                0.0
            } else {
                (b1.saturating_sub(b0) as f64 * 1000.0 / dt as f64).round() / 10.0
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: TransactionId = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn request_roundtrip() {
        let req = build_binding_request(&TID);
        assert_eq!(&req[..8], &[0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42]);
        assert_eq!(parse_binding_request(&req), Some(TID));
        assert_eq!(
            parse_binding_success(&req),
            Err(ParseError::WrongType(BINDING_REQUEST))
        );
    }

    #[test]
    fn success_roundtrip_v4_v6() {
        for addr in ["127.0.0.1:54321", "[::1]:3478", "[2001:db8::7]:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut buf = [0u8; MAX_SUCCESS_LEN];
            let n = write_binding_success(&TID, addr, &mut buf);
            assert_eq!(n, if addr.is_ipv4() { 32 } else { 44 });
            assert_eq!(parse_binding_success(&buf[..n]), Ok(TID));
            assert_eq!(xor_mapped_address(&buf[..n]), Some(addr));
        }
    }

    #[test]
    fn rfc5769_ipv4_response_vector() {
        // RFC 5769 §2.2 sample IPv4 response: header + SOFTWARE +
        // XOR-MAPPED-ADDRESS + MESSAGE-INTEGRITY + FINGERPRINT.
        let msg: [u8; 80] = [
            0x01, 0x01, 0x00, 0x3c, 0x21, 0x12, 0xa4, 0x42, 0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34,
            0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae, 0x80, 0x22, 0x00, 0x0b, 0x74, 0x65, 0x73, 0x74,
            0x20, 0x76, 0x65, 0x63, 0x74, 0x6f, 0x72, 0x20, 0x00, 0x20, 0x00, 0x08, 0x00, 0x01,
            0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43, 0x00, 0x08, 0x00, 0x14, 0x2b, 0x91, 0xf5, 0x99,
            0xfd, 0x9e, 0x90, 0xc3, 0x8c, 0x74, 0x89, 0xf9, 0x2a, 0xf9, 0xba, 0x53, 0xf0, 0x6b,
            0xe7, 0xd7, 0x80, 0x28, 0x00, 0x04, 0xc0, 0x7d, 0x4c, 0x96,
        ];
        let tid = parse_binding_success(&msg).unwrap();
        assert_eq!(tid, msg[8..20]);
        assert_eq!(
            xor_mapped_address(&msg),
            Some("192.0.2.1:32853".parse().unwrap())
        );
    }

    #[test]
    fn proc_stat_parsing() {
        let a = CoreTicks::parse(
            "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 10 0 10 70 10 0 0 0 0 0\ncpu1 0 0 0 100 0 0 0 0 0 0\nintr 5\n",
        );
        let b = CoreTicks::parse(
            "cpu  1 2 3 4 5 6 7 8 0 0\ncpu0 40 0 30 100 10 0 0 0 0 0\ncpu1 0 0 0 200 0 0 0 0 0 0\n",
        );
        assert_eq!(a.cores, vec![(20, 100), (0, 100)]);
        assert_eq!(core_busy_pct(&a, &b), vec![62.5, 0.0]);
    }

    #[test]
    fn proc_pid_stat_parsing() {
        let line = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 70 0 0 20 0 3 0";
        assert_eq!(parse_process_ticks(line), Some(320));
        assert_eq!(parse_process_ticks("garbage"), None);
        assert!(process_ticks(None).is_some());
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(parse_binding_success(&[0u8; 10]), Err(ParseError::TooShort));
        let mut req = build_binding_request(&TID);
        req[4] = 0;
        assert_eq!(parse_binding_request(&req), None);
        let mut buf = [0u8; MAX_SUCCESS_LEN];
        let n = write_binding_success(&TID, "127.0.0.1:1".parse().unwrap(), &mut buf);
        // Length field not matching the datagram size.
        assert_eq!(
            parse_binding_success(&buf[..n - 4]),
            Err(ParseError::NotStun)
        );
    }
}
