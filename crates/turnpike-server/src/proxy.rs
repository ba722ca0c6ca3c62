//! The client's address behind trusted HTTP reverse proxies (`--trusted-proxy`).
//!
//! Behind an HTTP proxy every request arrives from the proxy's address. A proxy that appends
//! the address it received a request from to `X-Forwarded-For` lets the hub see the real
//! client again, but only a proxy may be believed: anyone else can write any address there.
//! [`client_ip`] therefore reads the header only when the TCP peer is inside a trusted
//! network, and walks it from the right (the end the proxies append to), skipping entries
//! that are trusted proxies themselves; the first untrusted entry is the client.
//!
//! The header is untrusted input: at most [`MAX_ENTRIES`] entries and [`MAX_HEADER_BYTES`]
//! bytes (from the right) are looked at, and nothing is allocated.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use axum::http::HeaderMap;
use axum::http::header::HeaderName;
use ipnet::IpNet;

/// `X-Forwarded-For` entries considered, counted from the right.
pub const MAX_ENTRIES: usize = 32;
/// Bytes of `X-Forwarded-For` considered, counted from the right over all its header lines
/// (each line boundary counts as one byte, like the comma that joins them).
pub const MAX_HEADER_BYTES: usize = 4096;

/// The header name.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Where a request came from, as [`client_ip`] resolved it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    /// The client's address: the TCP peer's, or one taken from `X-Forwarded-For`.
    pub ip: IpAddr,
    /// `X-Forwarded-For` from a trusted peer held an entry that is not an IP address; the
    /// walk stopped there and kept the last good address.
    pub malformed: bool,
}

/// Whether `ip` lies in one of the `trusted` networks (an IPv4-mapped IPv6 address counts as
/// its IPv4 address).
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let canonical = ip.to_canonical();
    trusted
        .iter()
        .any(|n| n.contains(&ip) || n.contains(&canonical))
}

/// The address of the client behind `peer`, the TCP peer of an HTTP request with `headers`.
///
/// * `peer` outside every `trusted` network: `peer`; `X-Forwarded-For` is ignored.
/// * Otherwise the `X-Forwarded-For` entries (several header lines are joined in order) are
///   walked from the right. Trusted entries are skipped; the first untrusted one is the
///   client. If every entry considered is trusted, the leftmost considered is used; without
///   the header (or with only empty entries), `peer`.
/// * An entry that is not an IP address stops the walk: the last good address found so far
///   (or `peer`) is used and [`ClientIp::malformed`] is set. Accepted forms: `192.0.2.1`,
///   `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]` and `[2001:db8::1]:4711`.
/// * Only the rightmost [`MAX_ENTRIES`] entries within [`MAX_HEADER_BYTES`] bytes count; the
///   walk ends quietly at either limit.
///
/// Addresses taken from the header are canonical (`::ffff:192.0.2.1` becomes `192.0.2.1`).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> ClientIp {
    // An IPv4 client on a dual-stack socket arrives as ::ffff:a.b.c.d: one client, one key.
    let peer = peer.to_canonical();
    let mut found = ClientIp {
        ip: peer,
        malformed: false,
    };
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return found;
    }
    let mut budget = MAX_HEADER_BYTES;
    let mut entries = 0;
    for line in headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        for entry in line.as_bytes().rsplit(|&b| b == b',') {
            // The entry and the comma (or line boundary) before it.
            let cost = entry.len() + 1;
            if cost > budget {
                return found;
            }
            budget -= cost;
            let entry = entry.trim_ascii();
            if entry.is_empty() {
                // HTTP lists may hold empty elements; they name nobody.
                continue;
            }
            if entries == MAX_ENTRIES {
                return found;
            }
            entries += 1;
            let Some(ip) = parse_entry(entry) else {
                found.malformed = true;
                return found;
            };
            found.ip = ip.to_canonical();
            if !is_trusted(ip, trusted) {
                return found;
            }
        }
    }
    found
}

/// One `X-Forwarded-For` entry: an IP address, IPv6 optionally in brackets, optionally with
/// a port (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn parse_entry(entry: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(entry).ok()?;
    if let Some(rest) = text.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        if !after.is_empty() {
            port(after.strip_prefix(':')?)?;
        }
        return inside.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    // IPv4 with a port; an IPv6 address with a port needs brackets.
    let (host, p) = text.rsplit_once(':')?;
    port(p)?;
    host.parse::<Ipv4Addr>().ok().map(IpAddr::V4)
}

/// A decimal port number.
fn port(text: &str) -> Option<u16> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(
                X_FORWARDED_FOR.clone(),
                HeaderValue::from_bytes(l.as_bytes()).unwrap(),
            );
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// The resolved address for a request from `peer` with `lines` of X-Forwarded-For,
    /// trusting `trusted`.
    fn resolve(peer: &str, lines: &[&str], trusted: &[&str]) -> ClientIp {
        client_ip(ip(peer), &headers(lines), &nets(trusted))
    }

    fn good(ip_: &str) -> ClientIp {
        ClientIp {
            ip: ip(ip_),
            malformed: false,
        }
    }

    fn bad(ip_: &str) -> ClientIp {
        ClientIp {
            ip: ip(ip_),
            malformed: true,
        }
    }

    const PROXIES: &[&str] = &["10.0.0.0/8"];

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_the_header_says() {
        assert_eq!(
            resolve("198.51.100.7", &["203.0.113.1"], PROXIES),
            good("198.51.100.7")
        );
        assert_eq!(
            resolve("198.51.100.7", &["not an address"], PROXIES),
            good("198.51.100.7"),
            "not even parsed"
        );
        // Nothing is trusted without --trusted-proxy, even a loopback peer.
        assert_eq!(
            resolve("127.0.0.1", &["203.0.113.1"], &[]),
            good("127.0.0.1")
        );
        // An IPv4 client on a dual-stack socket is counted as the IPv4 address it is, with
        // or without a header, trusted networks or not.
        assert_eq!(
            resolve("::ffff:198.51.100.7", &[], &[]),
            good("198.51.100.7")
        );
        assert_eq!(resolve("::ffff:10.0.0.1", &[], PROXIES), good("10.0.0.1"));
    }

    #[test]
    fn a_trusted_peer_names_the_rightmost_untrusted_entry() {
        assert_eq!(
            resolve("10.0.0.5", &["203.0.113.1"], PROXIES),
            good("203.0.113.1")
        );
        // Entries left of the first untrusted one may be forged by the client: ignored.
        assert_eq!(
            resolve("10.0.0.5", &["192.0.2.99, 203.0.113.1"], PROXIES),
            good("203.0.113.1")
        );
        // A chain of trusted proxies is skipped.
        assert_eq!(
            resolve(
                "10.0.0.5",
                &["192.0.2.99, 203.0.113.1, 10.1.1.1, 10.2.2.2"],
                PROXIES
            ),
            good("203.0.113.1")
        );
        // Several header lines are one list, in order.
        assert_eq!(
            resolve(
                "10.0.0.5",
                &["192.0.2.99", "203.0.113.1,10.1.1.1", "10.2.2.2"],
                PROXIES
            ),
            good("203.0.113.1")
        );
        // Bare addresses trust one host.
        assert_eq!(
            resolve("192.0.2.10", &["203.0.113.1"], &["192.0.2.10/32"]),
            good("203.0.113.1")
        );
        assert_eq!(
            resolve("192.0.2.11", &["203.0.113.1"], &["192.0.2.10/32"]),
            good("192.0.2.11")
        );
    }

    #[test]
    fn all_trusted_means_the_leftmost_and_no_header_means_the_peer() {
        assert_eq!(
            resolve("10.0.0.5", &["10.9.9.9, 10.1.1.1"], PROXIES),
            good("10.9.9.9")
        );
        assert_eq!(resolve("10.0.0.5", &[], PROXIES), good("10.0.0.5"));
        assert_eq!(resolve("10.0.0.5", &[""], PROXIES), good("10.0.0.5"));
        assert_eq!(resolve("10.0.0.5", &[" , ,"], PROXIES), good("10.0.0.5"));
        // Empty list elements are skipped, not taken for garbage.
        assert_eq!(
            resolve("10.0.0.5", &["203.0.113.1,, "], PROXIES),
            good("203.0.113.1")
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_good_address() {
        assert_eq!(
            resolve("10.0.0.5", &["unknown"], PROXIES),
            bad("10.0.0.5"),
            "nothing good yet: the peer"
        );
        assert_eq!(
            resolve("10.0.0.5", &["203.0.113.1, bogus, 10.1.1.1"], PROXIES),
            bad("10.1.1.1")
        );
        // Garbage left of the client is never reached.
        assert_eq!(
            resolve("10.0.0.5", &["bogus, 203.0.113.1"], PROXIES),
            good("203.0.113.1")
        );
        for junk in [
            "203.0.113.1:",
            "203.0.113.1:port",
            "203.0.113.1:70000",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "[2001:db8::1]:",
            "[203.0.113.1]",
            "fe80::1%eth0",
            "2001:db8::1 2001:db8::2",
            "_hidden",
        ] {
            assert_eq!(
                resolve("10.0.0.5", &[junk], PROXIES),
                bad("10.0.0.5"),
                "{junk}"
            );
        }
        // Bytes that are not UTF-8 (obs-text) are garbage too.
        let mut h = HeaderMap::new();
        h.insert(
            X_FORWARDED_FOR.clone(),
            HeaderValue::from_bytes(b"203.0.113.1, \xff\xfe").unwrap(),
        );
        assert_eq!(
            client_ip(ip("10.0.0.5"), &h, &nets(PROXIES)),
            bad("10.0.0.5")
        );
    }

    #[test]
    fn ports_brackets_and_ipv6() {
        for (entry, want) in [
            ("192.0.2.1:4711", "192.0.2.1"),
            (" 192.0.2.1 ", "192.0.2.1"),
            ("\t192.0.2.1", "192.0.2.1"),
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("::ffff:192.0.2.1", "192.0.2.1"),
            ("[::ffff:192.0.2.1]:80", "192.0.2.1"),
        ] {
            assert_eq!(
                resolve("10.0.0.5", &[entry], PROXIES),
                good(want),
                "{entry}"
            );
        }
        // IPv6 proxies, and a v4 proxy on a dual-stack listener (an IPv4-mapped peer).
        let v6 = &["2001:db8:ffff::/48"];
        assert_eq!(
            resolve(
                "2001:db8:ffff::1",
                &["2001:db8:1::5, [2001:db8:ffff::2]:443"],
                v6
            ),
            good("2001:db8:1::5")
        );
        assert_eq!(
            resolve("::ffff:10.0.0.5", &["203.0.113.1"], PROXIES),
            good("203.0.113.1")
        );
        // A trusted proxy written as an IPv4-mapped address is still skipped.
        assert_eq!(
            resolve("10.0.0.5", &["203.0.113.1, ::ffff:10.1.1.1"], PROXIES),
            good("203.0.113.1")
        );
    }

    #[test]
    fn many_entries_count_only_the_rightmost() {
        // 32 trusted entries: the walk ends at the 32nd, which is the result.
        let mut list: Vec<String> = vec!["203.0.113.1".into()];
        list.extend((1..=32).map(|i| format!("10.0.0.{i}")));
        assert_eq!(
            resolve("10.0.0.100", &[&list.join(",")], PROXIES),
            good("10.0.0.1"),
            "the 33rd entry from the right is not looked at"
        );
        // 31 trusted entries and the client: found.
        let mut list: Vec<String> = vec!["203.0.113.1".into()];
        list.extend((1..=31).map(|i| format!("10.0.0.{i}")));
        assert_eq!(
            resolve("10.0.0.100", &[&list.join(",")], PROXIES),
            good("203.0.113.1")
        );
        // A long list of client-supplied entries costs nothing: the walk stops at the client.
        let forged = vec!["192.0.2.1"; 5000].join(",");
        assert_eq!(
            resolve("10.0.0.5", &[&forged, "203.0.113.1"], PROXIES),
            good("203.0.113.1")
        );
    }

    #[test]
    fn bytes_past_the_cap_are_ignored() {
        // The rightmost entry alone is over the cap: nothing is read, not even as garbage.
        let huge = format!("{}1.1.1.1", " ".repeat(MAX_HEADER_BYTES));
        assert_eq!(resolve("10.0.0.5", &[&huge], PROXIES), good("10.0.0.5"));
        // A trusted entry within the cap, then a client entry beyond it: the walk ends at
        // the cap with the leftmost address it read.
        let padded = format!("203.0.113.1,{},10.1.1.1", " ".repeat(MAX_HEADER_BYTES));
        assert_eq!(resolve("10.0.0.5", &[&padded], PROXIES), good("10.1.1.1"));
        // Exactly at the cap still counts: entry + separator = MAX_HEADER_BYTES.
        let entry = format!("{}203.0.113.1", " ".repeat(MAX_HEADER_BYTES - 1 - 11));
        assert_eq!(resolve("10.0.0.5", &[&entry], PROXIES), good("203.0.113.1"));
        let entry = format!(" {entry}");
        assert_eq!(resolve("10.0.0.5", &[&entry], PROXIES), good("10.0.0.5"));
        // The cap spans header lines.
        let filler = " ".repeat(MAX_HEADER_BYTES / 2);
        assert_eq!(
            resolve(
                "10.0.0.5",
                &["203.0.113.1", &filler, &filler, "10.1.1.1"],
                PROXIES
            ),
            good("10.1.1.1")
        );
    }
}
