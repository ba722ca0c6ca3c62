//! The TURN peer-address policy: which peers a relay may talk to.
//!
//! # What it is for
//! A TURN server relays traffic from anyone holding credentials to any *peer* address the
//! client names in CreatePermission, ChannelBind or Send. Without a policy, that makes the
//! server an open proxy into the network it runs in: a client could reach the loopback admin
//! and metrics ports of the host (`127.0.0.1:9090`), the cloud metadata service
//! (`169.254.169.254`, which hands out instance credentials), or RFC 1918 hosts behind the
//! operator's firewall. [`PeerPolicy::check`] is the one check every TURN path calls before it
//! installs a permission or relays a byte; its answer is a [`Verdict`].
//!
//! # Order: allow wins
//! 1. If the address, or its [normalised](normalize) form, is inside any *allow* CIDR
//!    (`--allow-peer`), it is [`Verdict::Allowed`]. Operators use this to open a specific
//!    private range, e.g. a media server on `10.0.5.0/24`.
//! 2. Otherwise, if either form is inside any *deny* CIDR (`--deny-peer`), it is
//!    [`Verdict::Denied`] with [`DenyReason::Configured`].
//! 3. Otherwise, the built-in [`DEFAULT_DENIED`] table is applied to the normalised form and
//!    to the raw form; a match is denied with that range's [`DenyReason`].
//! 4. Otherwise the address is allowed.
//!
//! # Why normalisation matters
//! An IPv6 address can carry an IPv4 address inside it, and the host kernel (IPv4-mapped
//! addresses on a dual-stack socket), a 6to4 or Teredo relay, or a NAT64 gateway will route a
//! packet sent to such an address to the embedded IPv4 address. If the policy only looked at
//! the IPv6 form, `::ffff:127.0.0.1`, `2002:7f00:1::` or `64:ff9b::a9fe:a9fe` would walk
//! straight past a rule that denies `127.0.0.0/8` or `169.254.0.0/16`. [`normalize`] maps
//! every well-known embedding back to its IPv4 address, and the policy checks both forms.
//!
//! NAT64 prefixes an operator chose for themselves (a network-specific prefix, or a prefix
//! shorter than /96 inside `64:ff9b:1::/48`, where RFC 6052 puts the IPv4 address elsewhere
//! than in the last 32 bits) cannot be recognised from the address alone; deny them with
//! `--deny-peer` if the relay's network routes them.
//!
//! # Cost
//! [`PeerPolicy::check`] does not allocate and never panics: it scans the allow list, the
//! deny list and the default table, which are slices.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP network in CIDR notation: a network address with its host bits cleared, and a
/// prefix length (at most 32 for IPv4, 128 for IPv6).
///
/// Parse one with [`str::parse`] (`"10.0.0.0/8"`, `"2001:db8::/32"`, or a bare address for a
/// single host) or build one with [`Cidr::new`]. Host bits are masked off on construction, so
/// two `Cidr`s that describe the same network compare equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The network address; its host bits are zero.
    addr: IpAddr,
    /// The prefix length; at most [`max_prefix`] of `addr`'s family.
    prefix: u8,
}

impl Cidr {
    /// The network of `addr` with a `prefix`-bit prefix; host bits in `addr` are masked off.
    ///
    /// # Errors
    /// [`CidrError::PrefixTooLong`] if `prefix` exceeds 32 (IPv4) or 128 (IPv6).
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(CidrError::PrefixTooLong {
                input: format!("{addr}/{prefix}"),
                prefix: prefix.to_string(),
                max,
            });
        }
        Ok(Cidr::masked(addr, prefix))
    }

    /// Builds a `Cidr` with host bits masked off. `prefix` must not exceed the family's
    /// maximum; in a const context a violation is a compile error.
    const fn masked(addr: IpAddr, prefix: u8) -> Cidr {
        let addr = match addr {
            IpAddr::V4(a) => {
                assert!(prefix <= 32, "IPv4 prefix length exceeds 32");
                IpAddr::V4(Ipv4Addr::from_bits(mask_v4(a.to_bits(), prefix)))
            }
            IpAddr::V6(a) => {
                assert!(prefix <= 128, "IPv6 prefix length exceeds 128");
                IpAddr::V6(Ipv6Addr::from_bits(mask_v6(a.to_bits(), prefix)))
            }
        };
        Cidr { addr, prefix }
    }

    /// A const IPv4 network for the built-in table.
    const fn v4(addr: [u8; 4], prefix: u8) -> Cidr {
        Cidr::masked(
            IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
            prefix,
        )
    }

    /// A const IPv6 network for the built-in table.
    const fn v6(addr: [u16; 8], prefix: u8) -> Cidr {
        let [a, b, c, d, e, f, g, h] = addr;
        Cidr::masked(IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), prefix)
    }

    /// Whether `ip` is inside this network. An address of the other family is never inside:
    /// no IPv4/IPv6 mapping happens here (that is [`normalize`]'s job).
    #[must_use]
    pub const fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask_v4(ip.to_bits(), self.prefix) == net.to_bits()
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask_v6(ip.to_bits(), self.prefix) == net.to_bits()
            }
            _ => false,
        }
    }

    /// The network address (host bits zero).
    #[must_use]
    pub const fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    #[must_use]
    pub const fn prefix(&self) -> u8 {
        self.prefix
    }
}

/// The longest prefix of `addr`'s family: 32 or 128.
const fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// `bits` with all but the first `prefix` bits cleared (`prefix <= 32`).
const fn mask_v4(bits: u32, prefix: u8) -> u32 {
    // `checked_shl` is `None` only for a shift of 32, i.e. prefix 0: nothing is kept.
    match u32::MAX.checked_shl(32u32.saturating_sub(prefix as u32)) {
        Some(mask) => bits & mask,
        None => 0,
    }
}

/// `bits` with all but the first `prefix` bits cleared (`prefix <= 128`).
const fn mask_v6(bits: u128, prefix: u8) -> u128 {
    // `checked_shl` is `None` only for a shift of 128, i.e. prefix 0: nothing is kept.
    match u128::MAX.checked_shl(128u32.saturating_sub(prefix as u32)) {
        Some(mask) => bits & mask,
        None => 0,
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `"10.0.0.0/8"`, `"2001:db8::/32"`, or a bare address (a /32 or /128). Leading
    /// and trailing whitespace is ignored; host bits (`"10.1.2.3/8"`) are masked off.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let input = s.trim();
        if input.is_empty() {
            return Err(CidrError::Empty);
        }
        let (addr_text, prefix_text) = match input.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (input, None),
        };
        let addr: IpAddr = addr_text.parse().map_err(|_| CidrError::InvalidAddress {
            input: input.to_owned(),
            addr: addr_text.to_owned(),
        })?;
        let max = max_prefix(addr);
        let Some(prefix_text) = prefix_text else {
            return Ok(Cidr::masked(addr, max));
        };
        if prefix_text.is_empty() || !prefix_text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CidrError::InvalidPrefix {
                input: input.to_owned(),
                prefix: prefix_text.to_owned(),
            });
        }
        // All digits: the parse fails only on overflow, which is too long as well.
        match prefix_text.parse::<u8>() {
            Ok(prefix) if prefix <= max => Ok(Cidr::masked(addr, prefix)),
            _ => Err(CidrError::PrefixTooLong {
                input: input.to_owned(),
                prefix: prefix_text.to_owned(),
                max,
            }),
        }
    }
}

impl fmt::Display for Cidr {
    /// Formats as `"10.0.0.0/8"` or `"2001:db8::/32"`; the output parses back to the same
    /// `Cidr`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Why a string is not a valid [`Cidr`]. Every message names the offending input.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CidrError {
    /// The input was empty (or only whitespace).
    #[error("invalid CIDR \"\": empty")]
    Empty,
    /// The part before the `/` is not an IPv4 or IPv6 address.
    #[error("invalid CIDR \"{input}\": \"{addr}\" is not an IP address")]
    InvalidAddress {
        /// The whole input, trimmed.
        input: String,
        /// The address part.
        addr: String,
    },
    /// The part after the `/` is not a decimal number.
    #[error("invalid CIDR \"{input}\": prefix length \"{prefix}\" is not a number")]
    InvalidPrefix {
        /// The whole input, trimmed.
        input: String,
        /// The prefix-length part.
        prefix: String,
    },
    /// The prefix length exceeds 32 (IPv4) or 128 (IPv6).
    #[error("invalid CIDR \"{input}\": prefix length {prefix} exceeds {max}")]
    PrefixTooLong {
        /// The whole input, trimmed.
        input: String,
        /// The prefix length as written.
        prefix: String,
        /// The longest prefix of the address family: 32 or 128.
        max: u8,
    },
}

/// Maps an IPv6 address that embeds an IPv4 address back to that IPv4 address; returns every
/// other address unchanged.
///
/// The forms recognised:
/// * IPv4-mapped `::ffff:a.b.c.d` (RFC 4291 §2.5.5.2),
/// * IPv4-compatible `::a.b.c.d` (RFC 4291 §2.5.5.1, deprecated), but not `::` and `::1`,
///   which stay IPv6 (unspecified and loopback),
/// * IPv4-translated `::ffff:0:a.b.c.d` (RFC 2765 §2.1),
/// * 6to4 `2002:AABB:CCDD::/48`, IPv4 `AA.BB.CC.DD` (RFC 3056),
/// * the NAT64 well-known prefix `64:ff9b::/96` (RFC 6052) and the local-use prefix
///   `64:ff9b:1::/48` (RFC 8215), IPv4 in the last 32 bits,
/// * Teredo `2001:0::/32`, client IPv4 = last 32 bits XOR `0xffffffff` (RFC 4380 §4).
///
/// The result is never itself an embedding, so `normalize(normalize(ip)) == normalize(ip)`.
#[must_use]
pub const fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
    }
}

/// The IPv4 address embedded in `ip` by one of the forms [`normalize`] lists.
const fn embedded_ipv4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = ((s[6] as u32) << 16) | s[7] as u32;
    let v4 = match s {
        // IPv4-mapped.
        [0, 0, 0, 0, 0, 0xffff, _, _] => low,
        // IPv4-compatible; `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, _, _] if low > 1 => low,
        // IPv4-translated.
        [0, 0, 0, 0, 0xffff, 0, _, _] => low,
        // NAT64 well-known prefix.
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => low,
        // NAT64 local-use prefix.
        [0x64, 0xff9b, 1, _, _, _, _, _] => low,
        // 6to4: the IPv4 address follows the 16-bit prefix.
        [0x2002, hi, lo, _, _, _, _, _] => ((hi as u32) << 16) | lo as u32,
        // Teredo: the client's public address, obfuscated.
        [0x2001, 0, _, _, _, _, _, _] => !low,
        _ => return None,
    };
    Some(Ipv4Addr::from_bits(v4))
}

/// Why the policy denied a peer address. Each reason has a stable metric label
/// ([`DenyReason::as_str`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenyReason {
    /// The unspecified address, `0.0.0.0` or `::`.
    Unspecified,
    /// Loopback: `127.0.0.0/8`, `::1`.
    Loopback,
    /// Link-local: `169.254.0.0/16` (including the cloud metadata service at
    /// `169.254.169.254`), `fe80::/10`.
    LinkLocal,
    /// RFC 1918 private networks: `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`.
    Private,
    /// Carrier-grade NAT shared address space, `100.64.0.0/10` (RFC 6598).
    SharedAddressSpace,
    /// IPv6 unique local addresses, `fc00::/7` (RFC 4193).
    UniqueLocal,
    /// Multicast: `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// The limited broadcast address, `255.255.255.255`.
    Broadcast,
    /// Ranges reserved for documentation and examples.
    Documentation,
    /// Other special-purpose ranges: `0.0.0.0/8`, `240.0.0.0/4`, `192.0.0.0/24`,
    /// `198.18.0.0/15`, `100::/64`, `fec0::/10`.
    Reserved,
    /// The address matched an operator-configured deny CIDR (`--deny-peer`).
    Configured,
}

impl DenyReason {
    /// Every reason, in declaration order (for pre-registering metric labels).
    pub const ALL: [DenyReason; 11] = [
        DenyReason::Unspecified,
        DenyReason::Loopback,
        DenyReason::LinkLocal,
        DenyReason::Private,
        DenyReason::SharedAddressSpace,
        DenyReason::UniqueLocal,
        DenyReason::Multicast,
        DenyReason::Broadcast,
        DenyReason::Documentation,
        DenyReason::Reserved,
        DenyReason::Configured,
    ];

    /// A stable kebab-case label for metrics and logs, e.g. `"loopback"`,
    /// `"shared-address-space"`, `"configured"`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            DenyReason::Unspecified => "unspecified",
            DenyReason::Loopback => "loopback",
            DenyReason::LinkLocal => "link-local",
            DenyReason::Private => "private",
            DenyReason::SharedAddressSpace => "shared-address-space",
            DenyReason::UniqueLocal => "unique-local",
            DenyReason::Multicast => "multicast",
            DenyReason::Broadcast => "broadcast",
            DenyReason::Documentation => "documentation",
            DenyReason::Reserved => "reserved",
            DenyReason::Configured => "configured",
        }
    }
}

impl fmt::Display for DenyReason {
    /// Writes [`DenyReason::as_str`].
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The answer of [`PeerPolicy::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The relay may talk to this peer.
    Allowed,
    /// The relay must not talk to this peer (TURN answers 403 Forbidden).
    Denied(DenyReason),
}

impl Verdict {
    /// Whether this is [`Verdict::Allowed`].
    #[must_use]
    pub const fn is_allowed(self) -> bool {
        matches!(self, Verdict::Allowed)
    }
}

/// One range of the built-in default deny table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeniedRange {
    /// The range.
    pub cidr: Cidr,
    /// The reason reported for an address inside it.
    pub reason: DenyReason,
    /// Where the range is defined, e.g. `"RFC 1918"`.
    pub source: &'static str,
}

/// A table row for an IPv4 range; keeps [`DEFAULT_DENIED`] readable.
const fn v4(addr: [u8; 4], prefix: u8, reason: DenyReason, source: &'static str) -> DeniedRange {
    DeniedRange {
        cidr: Cidr::v4(addr, prefix),
        reason,
        source,
    }
}

/// A table row for an IPv6 range; keeps [`DEFAULT_DENIED`] readable.
const fn v6(addr: [u16; 8], prefix: u8, reason: DenyReason, source: &'static str) -> DeniedRange {
    DeniedRange {
        cidr: Cidr::v6(addr, prefix),
        reason,
        source,
    }
}

/// The built-in table of peer ranges denied by default, checked in order; the first range
/// containing the address gives the reason, so a more specific range comes before the range
/// that encloses it (`0.0.0.0/32` before `0.0.0.0/8`, `255.255.255.255/32` before
/// `240.0.0.0/4`). An allow CIDR overrides any of them.
///
/// The ranges come from the IANA IPv4 and IPv6 Special-Purpose Address Registries
/// (RFC 6890); each row names the RFC that defines its range.
#[rustfmt::skip]
pub const DEFAULT_DENIED: &[DeniedRange] = &[
    v4([0, 0, 0, 0],         32, DenyReason::Unspecified,        "RFC 1122 §3.2.1.3"),
    v4([0, 0, 0, 0],          8, DenyReason::Reserved,           "RFC 1122 §3.2.1.3"),
    v4([10, 0, 0, 0],         8, DenyReason::Private,            "RFC 1918"),
    v4([100, 64, 0, 0],      10, DenyReason::SharedAddressSpace, "RFC 6598"),
    v4([127, 0, 0, 0],        8, DenyReason::Loopback,           "RFC 1122 §3.2.1.3"),
    v4([169, 254, 0, 0],     16, DenyReason::LinkLocal,          "RFC 3927"),
    v4([172, 16, 0, 0],      12, DenyReason::Private,            "RFC 1918"),
    v4([192, 0, 0, 0],       24, DenyReason::Reserved,           "RFC 6890 §2.1"),
    v4([192, 0, 2, 0],       24, DenyReason::Documentation,      "RFC 5737"),
    v4([192, 168, 0, 0],     16, DenyReason::Private,            "RFC 1918"),
    v4([198, 18, 0, 0],      15, DenyReason::Reserved,           "RFC 2544"),
    v4([198, 51, 100, 0],    24, DenyReason::Documentation,      "RFC 5737"),
    v4([203, 0, 113, 0],     24, DenyReason::Documentation,      "RFC 5737"),
    v4([224, 0, 0, 0],        4, DenyReason::Multicast,          "RFC 5771"),
    v4([255, 255, 255, 255], 32, DenyReason::Broadcast,          "RFC 919"),
    v4([240, 0, 0, 0],        4, DenyReason::Reserved,           "RFC 1112 §4"),
    v6([0, 0, 0, 0, 0, 0, 0, 0],          128, DenyReason::Unspecified,   "RFC 4291 §2.5.2"),
    v6([0, 0, 0, 0, 0, 0, 0, 1],          128, DenyReason::Loopback,      "RFC 4291 §2.5.3"),
    v6([0x100, 0, 0, 0, 0, 0, 0, 0],       64, DenyReason::Reserved,      "RFC 6666"),
    v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],  32, DenyReason::Documentation, "RFC 3849"),
    v6([0x3fff, 0, 0, 0, 0, 0, 0, 0],      20, DenyReason::Documentation, "RFC 9637"),
    v6([0xfc00, 0, 0, 0, 0, 0, 0, 0],       7, DenyReason::UniqueLocal,   "RFC 4193"),
    v6([0xfe80, 0, 0, 0, 0, 0, 0, 0],      10, DenyReason::LinkLocal,     "RFC 4291 §2.5.6"),
    v6([0xfec0, 0, 0, 0, 0, 0, 0, 0],      10, DenyReason::Reserved,      "RFC 3879"),
    v6([0xff00, 0, 0, 0, 0, 0, 0, 0],       8, DenyReason::Multicast,     "RFC 4291 §2.7"),
];

/// The reason the built-in [`DEFAULT_DENIED`] table denies exactly this address, with no
/// normalisation and no allow or deny list; `None` if no default range contains it.
/// [`PeerPolicy::check`] is the check to use on the relay paths.
#[must_use]
pub fn default_deny_reason(ip: IpAddr) -> Option<DenyReason> {
    DEFAULT_DENIED
        .iter()
        .find(|range| range.cidr.contains(ip))
        .map(|range| range.reason)
}

/// The peer-address policy: one check used on every TURN path (CreatePermission,
/// ChannelBind, Send). See the [module docs](self) for the order of the rules.
///
/// The default policy (empty lists) denies exactly the [`DEFAULT_DENIED`] ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerPolicy {
    /// CIDRs always allowed (`--allow-peer`), even inside a default-denied range.
    allow: Vec<Cidr>,
    /// CIDRs denied in addition to the default table (`--deny-peer`).
    deny: Vec<Cidr>,
}

impl PeerPolicy {
    /// A policy with these allow CIDRs (which win over everything) and deny CIDRs (which add
    /// to the built-in table).
    #[must_use]
    pub fn new(allow: Vec<Cidr>, deny: Vec<Cidr>) -> Self {
        PeerPolicy { allow, deny }
    }

    /// The allow CIDRs.
    #[must_use]
    pub fn allow(&self) -> &[Cidr] {
        &self.allow
    }

    /// The deny CIDRs.
    #[must_use]
    pub fn deny(&self) -> &[Cidr] {
        &self.deny
    }

    /// Whether the relay may talk to peer `ip`.
    ///
    /// Order: (1) if the address or its [normalised](normalize) form is inside any allow
    /// CIDR, [`Verdict::Allowed`] (allow wins); (2) if either form is inside any deny CIDR,
    /// [`DenyReason::Configured`]; (3) if the normalised form, or else the raw form, is in
    /// the [`DEFAULT_DENIED`] table, that range's reason; (4) otherwise allowed.
    ///
    /// Does not allocate and never panics.
    #[must_use]
    pub fn check(&self, ip: IpAddr) -> Verdict {
        let normalized = normalize(ip);
        let inside_any = |list: &[Cidr]| {
            list.iter()
                .any(|cidr| cidr.contains(ip) || cidr.contains(normalized))
        };
        if inside_any(&self.allow) {
            return Verdict::Allowed;
        }
        if inside_any(&self.deny) {
            return Verdict::Denied(DenyReason::Configured);
        }
        let reason = match default_deny_reason(normalized) {
            Some(reason) => Some(reason),
            None if normalized != ip => default_deny_reason(ip),
            None => None,
        };
        match reason {
            Some(reason) => Verdict::Denied(reason),
            None => Verdict::Allowed,
        }
    }
}
