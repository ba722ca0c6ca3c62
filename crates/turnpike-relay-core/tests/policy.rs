//! Tests of the TURN peer-address policy: every default range at its edges, every IPv6 form
//! that embeds an IPv4 address, allow and deny lists, CIDR parsing, and properties.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use proptest::prelude::*;
use turnpike_relay_core::policy::{
    Cidr, CidrError, DEFAULT_DENIED, DenyReason, PeerPolicy, Verdict, default_deny_reason,
    normalize,
};

use DenyReason::*;

const ALLOWED: Verdict = Verdict::Allowed;

fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad test address {s:?}: {e}"))
}

fn cidr(s: &str) -> Cidr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad test CIDR {s:?}: {e}"))
}

fn cidrs(list: &[&str]) -> Vec<Cidr> {
    list.iter().map(|s| cidr(s)).collect()
}

fn denied(reason: DenyReason) -> Verdict {
    Verdict::Denied(reason)
}

/// Checks every `(address, verdict)` against `policy`, reporting all mismatches at once.
fn assert_table(policy: &PeerPolicy, table: &[(&str, Verdict)]) {
    let failures: Vec<String> = table
        .iter()
        .filter_map(|&(addr, want)| {
            let got = policy.check(ip(addr));
            (got != want).then(|| format!("{addr}: want {want:?}, got {got:?}"))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every default range at its first and last address, and the addresses just outside.
#[test]
fn default_ranges_at_their_edges() {
    let table: &[(&str, Verdict)] = &[
        // 0.0.0.0/8: 0.0.0.0 is unspecified, the rest reserved.
        ("0.0.0.0", denied(Unspecified)),
        ("0.0.0.1", denied(Reserved)),
        ("0.255.255.255", denied(Reserved)),
        ("1.0.0.0", ALLOWED),
        // 10.0.0.0/8
        ("9.255.255.255", ALLOWED),
        ("10.0.0.0", denied(Private)),
        ("10.255.255.255", denied(Private)),
        ("11.0.0.0", ALLOWED),
        // 100.64.0.0/10
        ("100.63.255.255", ALLOWED),
        ("100.64.0.0", denied(SharedAddressSpace)),
        ("100.127.255.255", denied(SharedAddressSpace)),
        ("100.128.0.0", ALLOWED),
        // 127.0.0.0/8
        ("126.255.255.255", ALLOWED),
        ("127.0.0.0", denied(Loopback)),
        ("127.0.0.1", denied(Loopback)),
        ("127.255.255.255", denied(Loopback)),
        ("128.0.0.0", ALLOWED),
        // 169.254.0.0/16, with the cloud metadata address.
        ("169.253.255.255", ALLOWED),
        ("169.254.0.0", denied(LinkLocal)),
        ("169.254.169.254", denied(LinkLocal)),
        ("169.254.255.255", denied(LinkLocal)),
        ("169.255.0.0", ALLOWED),
        // 172.16.0.0/12
        ("172.15.255.255", ALLOWED),
        ("172.16.0.0", denied(Private)),
        ("172.31.255.255", denied(Private)),
        ("172.32.0.0", ALLOWED),
        // 192.0.0.0/24
        ("191.255.255.255", ALLOWED),
        ("192.0.0.0", denied(Reserved)),
        ("192.0.0.255", denied(Reserved)),
        ("192.0.1.0", ALLOWED),
        // 192.0.2.0/24
        ("192.0.1.255", ALLOWED),
        ("192.0.2.0", denied(Documentation)),
        ("192.0.2.255", denied(Documentation)),
        ("192.0.3.0", ALLOWED),
        // 192.168.0.0/16
        ("192.167.255.255", ALLOWED),
        ("192.168.0.0", denied(Private)),
        ("192.168.255.255", denied(Private)),
        ("192.169.0.0", ALLOWED),
        // 198.18.0.0/15
        ("198.17.255.255", ALLOWED),
        ("198.18.0.0", denied(Reserved)),
        ("198.19.255.255", denied(Reserved)),
        ("198.20.0.0", ALLOWED),
        // 198.51.100.0/24
        ("198.51.99.255", ALLOWED),
        ("198.51.100.0", denied(Documentation)),
        ("198.51.100.255", denied(Documentation)),
        ("198.51.101.0", ALLOWED),
        // 203.0.113.0/24
        ("203.0.112.255", ALLOWED),
        ("203.0.113.0", denied(Documentation)),
        ("203.0.113.255", denied(Documentation)),
        ("203.0.114.0", ALLOWED),
        // 224.0.0.0/4, then 240.0.0.0/4 right after it.
        ("223.255.255.255", ALLOWED),
        ("224.0.0.0", denied(Multicast)),
        ("239.255.255.255", denied(Multicast)),
        ("240.0.0.0", denied(Reserved)),
        ("255.255.255.254", denied(Reserved)),
        ("255.255.255.255", denied(Broadcast)),
        // ::/128 and ::1/128; ::2 is the IPv4-compatible form of 0.0.0.2.
        ("::", denied(Unspecified)),
        ("::1", denied(Loopback)),
        ("::2", denied(Reserved)),
        // 100::/64
        ("ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ALLOWED),
        ("100::", denied(Reserved)),
        ("100::ffff:ffff:ffff:ffff", denied(Reserved)),
        ("100:0:0:1::", ALLOWED),
        // 2001:db8::/32
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", ALLOWED),
        ("2001:db8::", denied(Documentation)),
        (
            "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff",
            denied(Documentation),
        ),
        ("2001:db9::", ALLOWED),
        // 3fff::/20
        ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ALLOWED),
        ("3fff::", denied(Documentation)),
        (
            "3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff",
            denied(Documentation),
        ),
        ("3fff:1000::", ALLOWED),
        // fc00::/7
        ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ALLOWED),
        ("fc00::", denied(UniqueLocal)),
        (
            "fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            denied(UniqueLocal),
        ),
        ("fe00::", ALLOWED),
        // fe80::/10, then fec0::/10, then ff00::/8 back to back.
        ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ALLOWED),
        ("fe80::", denied(LinkLocal)),
        ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", denied(LinkLocal)),
        ("fec0::", denied(Reserved)),
        ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", denied(Reserved)),
        ("ff00::", denied(Multicast)),
        ("ff02::1", denied(Multicast)),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", denied(Multicast)),
    ];
    assert_table(&PeerPolicy::default(), table);
}

#[test]
fn public_addresses_are_allowed() {
    assert_table(
        &PeerPolicy::default(),
        &[
            ("8.8.8.8", ALLOWED),
            ("1.1.1.1", ALLOWED),
            ("2606:4700::1111", ALLOWED),
            ("2001:4860:4860::8888", ALLOWED),
        ],
    );
}

/// Every IPv6 form that embeds `v4`, built by bit arithmetic, with its name.
fn embeddings(v4: Ipv4Addr) -> Vec<(&'static str, Ipv6Addr)> {
    let bits = u128::from(v4.to_bits());
    let teredo_server = 0x4136_e378_u128 << 64;
    let teredo_flags_port = 0x8000_63bf_u128 << 32;
    vec![
        ("IPv4-mapped", Ipv6Addr::from_bits(0xffff << 32 | bits)),
        ("IPv4-compatible", Ipv6Addr::from_bits(bits)),
        ("IPv4-translated", Ipv6Addr::from_bits(0xffff << 48 | bits)),
        ("6to4", Ipv6Addr::from_bits(0x2002 << 112 | bits << 80)),
        (
            "6to4 host",
            Ipv6Addr::from_bits(0x2002 << 112 | bits << 80 | 0x1_0000_0000_0001),
        ),
        ("NAT64", Ipv6Addr::from_bits(0x64_ff9b << 96 | bits)),
        (
            "NAT64 local-use",
            Ipv6Addr::from_bits(0x64_ff9b_0001 << 80 | bits),
        ),
        (
            "NAT64 local-use subnet",
            Ipv6Addr::from_bits(0x64_ff9b_0001_abcd << 64 | bits),
        ),
        (
            "Teredo",
            Ipv6Addr::from_bits(
                0x2001 << 112 | teredo_server | teredo_flags_port | (bits ^ 0xffff_ffff),
            ),
        ),
    ]
}

#[test]
fn embedded_internal_ipv4_is_denied_with_the_ipv4_reason() {
    let policy = PeerPolicy::default();
    for (v4, reason) in [
        (Ipv4Addr::new(127, 0, 0, 1), Loopback),
        (Ipv4Addr::new(10, 0, 0, 1), Private),
        (Ipv4Addr::new(169, 254, 169, 254), LinkLocal),
        (Ipv4Addr::new(192, 168, 1, 1), Private),
        (Ipv4Addr::new(100, 64, 0, 1), SharedAddressSpace),
    ] {
        for (form, v6) in embeddings(v4) {
            assert_eq!(normalize(IpAddr::V6(v6)), IpAddr::V4(v4), "{form} {v6}");
            assert_eq!(
                policy.check(IpAddr::V6(v6)),
                denied(reason),
                "{form} {v6} of {v4}"
            );
        }
    }
}

#[test]
fn embedded_forms_written_out() {
    // The same forms as literals, so a mistake in `embeddings` cannot hide one in normalize.
    let table: &[(&str, Verdict)] = &[
        ("::ffff:127.0.0.1", denied(Loopback)),
        ("::ffff:7f00:1", denied(Loopback)),
        ("::127.0.0.1", denied(Loopback)),
        ("::ffff:0:127.0.0.1", denied(Loopback)),
        ("2002:7f00:1::", denied(Loopback)),
        ("2002:7f00:1:1::1", denied(Loopback)),
        ("64:ff9b::7f00:1", denied(Loopback)),
        ("64:ff9b::127.0.0.1", denied(Loopback)),
        ("64:ff9b:1::7f00:1", denied(Loopback)),
        ("2001:0:4136:e378:8000:63bf:80ff:fffe", denied(Loopback)),
        ("::ffff:10.0.0.1", denied(Private)),
        ("::10.0.0.1", denied(Private)),
        ("::ffff:0:10.0.0.1", denied(Private)),
        ("2002:a00:1::", denied(Private)),
        ("64:ff9b::a00:1", denied(Private)),
        ("64:ff9b:1::a00:1", denied(Private)),
        ("2001:0:4136:e378:8000:63bf:f5ff:fffe", denied(Private)),
        ("::ffff:169.254.169.254", denied(LinkLocal)),
        ("::169.254.169.254", denied(LinkLocal)),
        ("::ffff:0:169.254.169.254", denied(LinkLocal)),
        ("2002:a9fe:a9fe::", denied(LinkLocal)),
        ("64:ff9b::a9fe:a9fe", denied(LinkLocal)),
        ("64:ff9b:1::a9fe:a9fe", denied(LinkLocal)),
        ("2001:0:4136:e378:8000:63bf:5601:5601", denied(LinkLocal)),
        ("::ffff:0.0.0.0", denied(Unspecified)),
        ("::ffff:255.255.255.255", denied(Broadcast)),
        ("64:ff9b::e000:1", denied(Multicast)),
        // A public IPv4 address in each form.
        ("::ffff:8.8.8.8", ALLOWED),
        ("::8.8.8.8", ALLOWED),
        ("::ffff:0:8.8.8.8", ALLOWED),
        ("2002:808:808::", ALLOWED),
        ("2002:808:808:1::1", ALLOWED),
        ("64:ff9b::808:808", ALLOWED),
        ("64:ff9b:1::808:808", ALLOWED),
        ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", ALLOWED),
    ];
    assert_table(&PeerPolicy::default(), table);
}

#[test]
fn public_ipv4_in_every_form_is_allowed() {
    let policy = PeerPolicy::default();
    for v4 in [Ipv4Addr::new(8, 8, 8, 8), Ipv4Addr::new(1, 1, 1, 1)] {
        for (form, v6) in embeddings(v4) {
            assert_eq!(normalize(IpAddr::V6(v6)), IpAddr::V4(v4), "{form} {v6}");
            assert_eq!(policy.check(IpAddr::V6(v6)), ALLOWED, "{form} {v6}");
        }
    }
}

#[test]
fn normalize_leaves_other_addresses_alone() {
    for addr in [
        "8.8.8.8",
        "127.0.0.1",
        "::",
        "::1",
        "2606:4700::1111",
        "fe80::1",
        // One segment away from each recognised prefix.
        "::fffe:7f00:1",
        "::1:0:0:7f00:1",
        "::fffe:0:7f00:1",
        "64:ff9b:0:0:0:1:7f00:1",
        "64:ff9b:2::7f00:1",
        "65:ff9b::7f00:1",
        "2003:7f00:1::",
        "2001:1::7f00:1",
    ] {
        assert_eq!(normalize(ip(addr)), ip(addr), "{addr}");
    }
}

#[test]
fn allow_wins_over_the_default_table() {
    let policy = PeerPolicy::new(cidrs(&["127.0.0.1/32"]), vec![]);
    assert_table(
        &policy,
        &[
            ("127.0.0.1", ALLOWED),
            ("::ffff:127.0.0.1", ALLOWED),
            ("64:ff9b::7f00:1", ALLOWED),
            ("127.0.0.2", denied(Loopback)),
            ("::ffff:127.0.0.2", denied(Loopback)),
            ("10.0.0.1", denied(Private)),
        ],
    );
    assert_eq!(policy.allow(), cidrs(&["127.0.0.1/32"]).as_slice());
    assert!(policy.deny().is_empty());
}

#[test]
fn allow_of_an_ipv6_form_matches_the_raw_address() {
    // An operator who allows a NAT64 prefix allows it whatever it embeds.
    let policy = PeerPolicy::new(cidrs(&["64:ff9b::/96"]), vec![]);
    assert_eq!(policy.check(ip("64:ff9b::7f00:1")), ALLOWED);
    assert_eq!(policy.check(ip("127.0.0.1")), denied(Loopback));
}

#[test]
fn allow_wins_over_the_deny_list() {
    let policy = PeerPolicy::new(cidrs(&["8.8.8.8/32"]), cidrs(&["8.8.8.0/24"]));
    assert_table(
        &policy,
        &[
            ("8.8.8.8", ALLOWED),
            ("8.8.8.7", denied(Configured)),
            ("8.8.8.9", denied(Configured)),
            ("::ffff:8.8.8.8", ALLOWED),
            ("::ffff:8.8.8.9", denied(Configured)),
            ("8.8.9.0", ALLOWED),
        ],
    );
    assert_eq!(policy.deny(), cidrs(&["8.8.8.0/24"]).as_slice());
}

#[test]
fn deny_list_adds_to_the_default_table() {
    let policy = PeerPolicy::new(vec![], cidrs(&["8.8.8.0/24", "2606:4700::/32"]));
    assert_table(
        &policy,
        &[
            ("8.8.8.8", denied(Configured)),
            ("8.8.8.0", denied(Configured)),
            ("8.8.8.255", denied(Configured)),
            ("8.8.7.255", ALLOWED),
            ("8.8.9.0", ALLOWED),
            // Every embedded form of a denied IPv4 address is denied too.
            ("::ffff:8.8.8.8", denied(Configured)),
            ("2002:808:808::", denied(Configured)),
            ("64:ff9b::808:808", denied(Configured)),
            ("2606:4700::1111", denied(Configured)),
            ("2606:4701::1", ALLOWED),
            // The configured reason is reported before the default one.
            ("1.1.1.1", ALLOWED),
            ("127.0.0.1", denied(Loopback)),
        ],
    );
    let overlapping = PeerPolicy::new(vec![], cidrs(&["10.0.0.0/8"]));
    assert_eq!(overlapping.check(ip("10.1.1.1")), denied(Configured));
}

#[test]
fn every_default_range_is_reachable_and_denies_its_edges() {
    // A range that sits inside an earlier one could never give its reason.
    for (j, later) in DEFAULT_DENIED.iter().enumerate() {
        for earlier in &DEFAULT_DENIED[..j] {
            let shadowed = earlier.cidr.contains(later.cidr.addr())
                && earlier.cidr.prefix() <= later.cidr.prefix();
            assert!(!shadowed, "{} is shadowed by {}", later.cidr, earlier.cidr);
        }
        assert!(!later.source.is_empty());
        assert_ne!(later.reason, Configured);
    }
    let policy = PeerPolicy::default();
    for range in DEFAULT_DENIED {
        let (first, last) = first_last(range.cidr);
        for addr in [first, last] {
            // The first or last address may belong to a more specific range listed earlier.
            let want = default_deny_reason(addr).expect("edge is in the table");
            assert!(matches!(policy.check(addr), Verdict::Denied(_)), "{addr}");
            assert_eq!(policy.check(addr), denied(want), "{addr}");
        }
        assert!(default_deny_reason(range.cidr.addr()).is_some());
    }
    assert_eq!(default_deny_reason(ip("0.0.0.0")), Some(Unspecified));
    assert_eq!(default_deny_reason(ip("255.255.255.255")), Some(Broadcast));
    // No normalisation in the raw lookup.
    assert_eq!(default_deny_reason(ip("::ffff:127.0.0.1")), None);
}

fn first_last(cidr: Cidr) -> (IpAddr, IpAddr) {
    match cidr.addr() {
        IpAddr::V4(a) => {
            let host = u32::MAX.checked_shr(u32::from(cidr.prefix())).unwrap_or(0);
            (
                IpAddr::V4(a),
                IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() | host)),
            )
        }
        IpAddr::V6(a) => {
            let host = u128::MAX.checked_shr(u32::from(cidr.prefix())).unwrap_or(0);
            (
                IpAddr::V6(a),
                IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() | host)),
            )
        }
    }
}

#[test]
fn deny_reason_labels_are_stable_and_unique() {
    let labels: Vec<&str> = DenyReason::ALL.iter().map(|r| r.as_str()).collect();
    assert_eq!(
        labels,
        [
            "unspecified",
            "loopback",
            "link-local",
            "private",
            "shared-address-space",
            "unique-local",
            "multicast",
            "broadcast",
            "documentation",
            "reserved",
            "configured",
        ]
    );
    assert_eq!(labels.iter().collect::<HashSet<_>>().len(), labels.len());
    assert_eq!(Loopback.to_string(), "loopback");
    // Every reason the table reports is in ALL.
    for range in DEFAULT_DENIED {
        assert!(DenyReason::ALL.contains(&range.reason));
    }
    assert!(ALLOWED.is_allowed());
    assert!(!denied(Loopback).is_allowed());
}

#[test]
fn cidr_parses_good_forms() {
    let cases: &[(&str, &str, u8)] = &[
        ("10.0.0.0/8", "10.0.0.0", 8),
        ("2001:db8::/32", "2001:db8::", 32),
        ("0.0.0.0/0", "0.0.0.0", 0),
        ("::/0", "::", 0),
        ("192.0.2.7", "192.0.2.7", 32),
        ("2001:db8::7", "2001:db8::7", 128),
        ("  172.16.0.0/12\n", "172.16.0.0", 12),
        ("\t::1 ", "::1", 128),
        // Host bits are masked off.
        ("10.1.2.3/8", "10.0.0.0", 8),
        ("192.168.77.200/25", "192.168.77.128", 25),
        ("2001:db8:1:2::3/32", "2001:db8::", 32),
        ("fe80::1:2:3:4/10", "fe80::", 10),
        ("255.255.255.255/1", "128.0.0.0", 1),
        ("ffff::/127", "ffff::", 127),
        ("::ffff:1.2.3.4/127", "::ffff:1.2.3.4", 127),
        ("10.0.0.0/008", "10.0.0.0", 8),
    ];
    for &(text, addr, prefix) in cases {
        let c = cidr(text);
        assert_eq!((c.addr(), c.prefix()), (ip(addr), prefix), "{text:?}");
    }
    assert_eq!(cidr("10.1.2.3/8"), cidr("10.0.0.0/8"));
    assert_eq!(
        Cidr::new(ip("10.1.2.3"), 8).expect("valid"),
        cidr("10.0.0.0/8")
    );
    assert_eq!(Cidr::new(ip("::1"), 0).expect("valid"), cidr("::/0"));
}

#[test]
fn cidr_contains() {
    let net = cidr("10.0.0.0/8");
    assert!(net.contains(ip("10.0.0.0")));
    assert!(net.contains(ip("10.255.255.255")));
    assert!(!net.contains(ip("11.0.0.0")));
    assert!(!net.contains(ip("9.255.255.255")));
    // No implicit mapping between the families.
    assert!(!net.contains(ip("::ffff:10.0.0.1")));
    assert!(!cidr("::/0").contains(ip("1.2.3.4")));
    assert!(!cidr("0.0.0.0/0").contains(ip("::")));
    assert!(cidr("0.0.0.0/0").contains(ip("255.255.255.255")));
    assert!(cidr("::/0").contains(ip("ffff::1")));
    let host = cidr("192.0.2.7");
    assert!(host.contains(ip("192.0.2.7")));
    assert!(!host.contains(ip("192.0.2.6")));
    assert!(!host.contains(ip("192.0.2.8")));
    let six = cidr("2001:db8::/127");
    assert!(six.contains(ip("2001:db8::1")));
    assert!(!six.contains(ip("2001:db8::2")));
}

#[test]
fn cidr_errors_name_the_bad_input() {
    let cases: &[(&str, CidrError, &str)] = &[
        ("", CidrError::Empty, "invalid CIDR \"\": empty"),
        ("   ", CidrError::Empty, "invalid CIDR \"\": empty"),
        (
            "10.0.0.0/33",
            CidrError::PrefixTooLong {
                input: "10.0.0.0/33".into(),
                prefix: "33".into(),
                max: 32,
            },
            "invalid CIDR \"10.0.0.0/33\": prefix length 33 exceeds 32",
        ),
        (
            " 2001:db8::/129 ",
            CidrError::PrefixTooLong {
                input: "2001:db8::/129".into(),
                prefix: "129".into(),
                max: 128,
            },
            "invalid CIDR \"2001:db8::/129\": prefix length 129 exceeds 128",
        ),
        (
            "10.0.0.0/99999999999999999999",
            CidrError::PrefixTooLong {
                input: "10.0.0.0/99999999999999999999".into(),
                prefix: "99999999999999999999".into(),
                max: 32,
            },
            "invalid CIDR \"10.0.0.0/99999999999999999999\": prefix length \
             99999999999999999999 exceeds 32",
        ),
        (
            "10.0.0.0/",
            CidrError::InvalidPrefix {
                input: "10.0.0.0/".into(),
                prefix: "".into(),
            },
            "invalid CIDR \"10.0.0.0/\": prefix length \"\" is not a number",
        ),
        (
            "10.0.0.0/x",
            CidrError::InvalidPrefix {
                input: "10.0.0.0/x".into(),
                prefix: "x".into(),
            },
            "invalid CIDR \"10.0.0.0/x\": prefix length \"x\" is not a number",
        ),
        (
            "10.0.0.0/+8",
            CidrError::InvalidPrefix {
                input: "10.0.0.0/+8".into(),
                prefix: "+8".into(),
            },
            "invalid CIDR \"10.0.0.0/+8\": prefix length \"+8\" is not a number",
        ),
        (
            "10.0.0.0/-1",
            CidrError::InvalidPrefix {
                input: "10.0.0.0/-1".into(),
                prefix: "-1".into(),
            },
            "invalid CIDR \"10.0.0.0/-1\": prefix length \"-1\" is not a number",
        ),
        (
            "10.0.0.0/8/9",
            CidrError::InvalidPrefix {
                input: "10.0.0.0/8/9".into(),
                prefix: "8/9".into(),
            },
            "invalid CIDR \"10.0.0.0/8/9\": prefix length \"8/9\" is not a number",
        ),
        (
            "10.0.0.0/ 8",
            CidrError::InvalidPrefix {
                input: "10.0.0.0/ 8".into(),
                prefix: " 8".into(),
            },
            "invalid CIDR \"10.0.0.0/ 8\": prefix length \" 8\" is not a number",
        ),
        (
            "10.0.0/8",
            CidrError::InvalidAddress {
                input: "10.0.0/8".into(),
                addr: "10.0.0".into(),
            },
            "invalid CIDR \"10.0.0/8\": \"10.0.0\" is not an IP address",
        ),
        (
            "/8",
            CidrError::InvalidAddress {
                input: "/8".into(),
                addr: "".into(),
            },
            "invalid CIDR \"/8\": \"\" is not an IP address",
        ),
        (
            "example.com/24",
            CidrError::InvalidAddress {
                input: "example.com/24".into(),
                addr: "example.com".into(),
            },
            "invalid CIDR \"example.com/24\": \"example.com\" is not an IP address",
        ),
        (
            "fe80::1%eth0/64",
            CidrError::InvalidAddress {
                input: "fe80::1%eth0/64".into(),
                addr: "fe80::1%eth0".into(),
            },
            "invalid CIDR \"fe80::1%eth0/64\": \"fe80::1%eth0\" is not an IP address",
        ),
        (
            "[::1]/128",
            CidrError::InvalidAddress {
                input: "[::1]/128".into(),
                addr: "[::1]".into(),
            },
            "invalid CIDR \"[::1]/128\": \"[::1]\" is not an IP address",
        ),
    ];
    for (text, want, message) in cases {
        let err = text.parse::<Cidr>().expect_err(text);
        assert_eq!(&err, want, "{text:?}");
        assert_eq!(err.to_string(), *message, "{text:?}");
    }
    let err = Cidr::new(ip("10.0.0.0"), 33).expect_err("prefix 33");
    assert_eq!(
        err.to_string(),
        "invalid CIDR \"10.0.0.0/33\": prefix length 33 exceeds 32"
    );
    let err = Cidr::new(ip("::"), 129).expect_err("prefix 129");
    assert_eq!(
        err.to_string(),
        "invalid CIDR \"::/129\": prefix length 129 exceeds 128"
    );
    assert!(Cidr::new(ip("10.0.0.0"), 32).is_ok());
    assert!(Cidr::new(ip("::"), 128).is_ok());
}

#[test]
fn cidr_display_round_trips() {
    for (text, shown) in [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8"),
        ("192.0.2.7", "192.0.2.7/32"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("2001:0db8:0000::1/128", "2001:db8::1/128"),
        ("::/0", "::/0"),
        ("::ffff:1.2.3.4/128", "::ffff:1.2.3.4/128"),
    ] {
        let c = cidr(text);
        assert_eq!(c.to_string(), shown, "{text:?}");
        assert_eq!(cidr(shown), c, "{shown:?}");
    }
}

/// Any address, with the IPv6 forms that embed an IPv4 address well represented.
fn any_ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<u128>().prop_map(|b| IpAddr::V6(Ipv6Addr::from_bits(b))),
        (any::<[u8; 4]>(), 0..9_usize).prop_map(|(b, form)| {
            let all = embeddings(Ipv4Addr::from(b));
            IpAddr::V6(all[form % all.len()].1)
        }),
        // Small values: ::, ::1 and their neighbours.
        (0..4_u128).prop_map(|b| IpAddr::V6(Ipv6Addr::from_bits(b))),
    ]
}

fn any_cidr() -> impl Strategy<Value = Cidr> {
    (any_ip(), any::<u8>()).prop_map(|(addr, prefix)| {
        let max = if addr.is_ipv4() { 33 } else { 129 };
        Cidr::new(addr, prefix % max).expect("prefix in range")
    })
}

proptest! {
    #[test]
    fn check_never_panics(
        addr in any_ip(),
        allow in proptest::collection::vec(any_cidr(), 0..4),
        deny in proptest::collection::vec(any_cidr(), 0..4),
    ) {
        let verdict = PeerPolicy::new(allow.clone(), deny.clone()).check(addr);
        let normalized = normalize(addr);
        let inside = |list: &[Cidr]| list.iter().any(|c| c.contains(addr) || c.contains(normalized));
        if inside(&allow) {
            prop_assert_eq!(verdict, Verdict::Allowed);
        } else if inside(&deny) {
            prop_assert_eq!(verdict, Verdict::Denied(Configured));
        } else {
            prop_assert_eq!(verdict, PeerPolicy::default().check(addr));
        }
    }

    #[test]
    fn normalize_is_idempotent(addr in any_ip()) {
        let once = normalize(addr);
        prop_assert_eq!(normalize(once), once);
        if once != addr {
            prop_assert!(once.is_ipv4() && addr.is_ipv6());
        }
    }

    #[test]
    fn every_embedding_gets_the_ipv4_verdict(b in any::<[u8; 4]>()) {
        let v4 = Ipv4Addr::from(b);
        let policy = PeerPolicy::default();
        let want = policy.check(IpAddr::V4(v4));
        for (form, v6) in embeddings(v4) {
            let got = policy.check(IpAddr::V6(v6));
            if form == "IPv4-compatible" && v4.to_bits() <= 1 {
                // :: and ::1 stay IPv6 (unspecified, loopback) and are denied as such.
                prop_assert!(matches!(got, Verdict::Denied(_)));
            } else {
                prop_assert_eq!(got, want, "{} {}", form, v6);
            }
        }
    }

    #[test]
    fn cidr_display_parses_back(c in any_cidr()) {
        prop_assert_eq!(c.to_string().parse::<Cidr>(), Ok(c));
        prop_assert!(c.contains(c.addr()));
    }

    #[test]
    fn cidr_new_contains_its_address(addr in any_ip(), prefix in any::<u8>()) {
        match Cidr::new(addr, prefix) {
            Ok(c) => prop_assert!(c.contains(addr)),
            Err(e) => {
                let max = if addr.is_ipv4() { 32 } else { 128 };
                prop_assert!(prefix > max);
                let is_too_long = matches!(e, CidrError::PrefixTooLong { .. });
                prop_assert!(is_too_long);
            }
        }
    }

    #[test]
    fn parsing_arbitrary_text_never_panics(s in "\\PC{0,40}") {
        let _ = s.parse::<Cidr>();
    }
}
