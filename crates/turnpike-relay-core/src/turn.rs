//! The sans-IO TURN server (RFC 8656, with RFC 6156 address families).
//!
//! [`TurnServer`] owns allocations, permissions and channel bindings. It is fed three kinds of
//! events, each with the current time passed in ([`Now`]):
//!
//! * a message from a client ([`TurnServer::handle_client`]): STUN requests and indications
//!   (Binding goes to the stateless [`StunServer`]) and ChannelData;
//! * a datagram a peer sent to a relayed address ([`TurnServer::handle_peer`]);
//! * the passage of time ([`TurnServer::poll_timeout`] / [`TurnServer::handle_timeout`]).
//!
//! It answers with what the driver must do: reply to the client, send a payload from a relay
//! socket to a peer, or send a ChannelData message / Data indication to a client. Relay sockets
//! are opened and closed through the narrow [`RelaySockets`] hook, and quotas plus the set of
//! live relayed addresses through [`Ledger`], so several cores (one per worker thread) can share
//! them. Nothing here reads a clock, draws OS randomness or touches a socket, so every test
//! runs on virtual time.
//!
//! # Order of checks for a request
//! Unknown comprehension-required attributes (420), malformed attributes (400), then
//! authentication (401, 438, 400 for incomplete credentials), then the method: allocation
//! lookup (437), ownership (441), attribute checks (400, 440, 442, 443), peer policy (403),
//! quotas and capacity (486, 508). Unauthenticated requests never create state: a 401 carries a
//! nonce that is verified statelessly ([`NonceKey`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use turnpike_proto::{Class, MessageView, TransactionId, attr, fast, integrity, method};

use crate::auth::{AuthError, Credentials, Key, NonceCheck, NonceKey, PasswordAlgorithm};
use crate::policy::{DenyReason, PeerPolicy, Verdict, normalize};
use crate::turn_attrs::{FAMILY_V4, FAMILY_V6, TurnAttrs};
use crate::{Action, DropReason, Incoming, Outcome, Path, StunConfig, StunServer, Transport};

/// The time as the driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// A monotonic clock in milliseconds (any origin).
    pub millis: u64,
    /// Wall-clock time in seconds since the Unix epoch (for credential expiry and nonces).
    pub unix: u64,
}

/// Identifies one relay socket: an allocation slot and an address family. The driver uses
/// [`RelayId::index`] to keep its sockets in a flat table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(u32);

impl RelayId {
    fn new(slot: u32, v6: bool) -> Self {
        RelayId(slot * 2 + u32::from(v6))
    }

    /// A dense index (allocation slot × 2 + family), for the driver's socket table.
    pub fn index(self) -> usize {
        self.0 as usize
    }

    /// The id for a dense index.
    pub fn from_index(index: usize) -> Option<Self> {
        u32::try_from(index).ok().map(RelayId)
    }

    fn slot(self) -> usize {
        (self.0 / 2) as usize
    }

    fn family(self) -> usize {
        (self.0 % 2) as usize
    }
}

/// The 5-tuple an allocation belongs to (the client side of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// Client transport.
    pub transport: Transport,
    /// The server address the client talks to.
    pub local: SocketAddr,
    /// The client's address as the server sees it.
    pub remote: SocketAddr,
}

impl ClientKey {
    /// The 5-tuple a message arrived on.
    pub fn of(msg: &Incoming<'_>) -> Self {
        ClientKey {
            transport: msg.transport,
            local: msg.local,
            remote: msg.remote,
        }
    }
}

/// Which port an Allocate asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRequest {
    /// Any port of the relay range.
    Any,
    /// An even port (EVEN-PORT); with `reserve_next`, the next port is held for a later
    /// Allocate that presents the returned reservation token.
    Even {
        /// Also reserve port + 1 (the R bit).
        reserve_next: bool,
    },
    /// The port held under this reservation token.
    Reserved(u64),
}

/// A relay socket the driver opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// The port it is bound to.
    pub port: u16,
    /// For [`PortRequest::Even`] with `reserve_next`: the token for the held next port.
    pub reservation: Option<u64>,
}

/// Why a relay socket could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No free port (of the requested kind) in the relay range.
    #[error("no free relay port")]
    Exhausted,
    /// The reservation token is unknown to the driver.
    #[error("unknown reservation")]
    NoReservation,
    /// Any other failure to bind.
    #[error("cannot open a relay socket")]
    Failed,
}

/// The driver's relay sockets, as the core sees them.
pub trait RelaySockets {
    /// Opens a UDP socket on `ip` for relay `id`.
    fn open(
        &mut self,
        id: RelayId,
        ip: IpAddr,
        request: PortRequest,
        dont_fragment: bool,
    ) -> Result<Opened, OpenError>;
    /// Closes the socket of relay `id`, freeing its port at once.
    fn close(&mut self, id: RelayId);
    /// Frees a port held under a reservation token that was never claimed.
    fn release_reservation(&mut self, token: u64);
}

/// Why an allocation was refused by the [`Ledger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaError {
    /// The server-wide allocation cap (508).
    Total,
    /// The per-user quota (486).
    User,
    /// The per-client-IP quota (486).
    Ip,
}

/// State shared by every core of a server: allocation counts for quotas and the set of live
/// relayed addresses (for relay-to-relay delivery). Implementations use interior mutability so
/// several cores on several threads can hold the same ledger.
pub trait Ledger: Send {
    /// Counts a new allocation for `username` from `client`, or refuses it.
    fn acquire(&self, username: &str, client: IpAddr) -> Result<(), QuotaError>;
    /// Uncounts an allocation.
    fn release(&self, username: &str, client: IpAddr);
    /// Records a relay socket bound to `addr`.
    fn relay_opened(&self, addr: SocketAddr);
    /// Forgets a relay socket.
    fn relay_closed(&self, addr: SocketAddr);
    /// Whether `addr` is a relay socket of this server (its bound, not advertised, address).
    fn is_live_relay(&self, addr: SocketAddr) -> bool;
}

/// Allocation quotas. Zero means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Allocations on the whole server.
    pub total: usize,
    /// Allocations per username.
    pub per_user: usize,
    /// Allocations per client IP address.
    pub per_ip: usize,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            total: 10_000,
            per_user: 0,
            per_ip: 64,
        }
    }
}

/// A single-threaded [`Ledger`] (one core, and tests).
#[derive(Debug, Default)]
pub struct LocalLedger {
    quotas: Quotas,
    state: std::cell::RefCell<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    total: usize,
    users: HashMap<Box<str>, usize>,
    ips: HashMap<IpAddr, usize>,
    relays: std::collections::HashSet<SocketAddr>,
}

impl LocalLedger {
    /// A ledger enforcing `quotas`.
    pub fn new(quotas: Quotas) -> Self {
        LocalLedger {
            quotas,
            state: Default::default(),
        }
    }
}

fn over(limit: usize, count: usize) -> bool {
    limit != 0 && count >= limit
}

impl Ledger for LocalLedger {
    fn acquire(&self, username: &str, client: IpAddr) -> Result<(), QuotaError> {
        let mut s = self.state.borrow_mut();
        if over(self.quotas.total, s.total) {
            return Err(QuotaError::Total);
        }
        if over(
            self.quotas.per_user,
            s.users.get(username).copied().unwrap_or(0),
        ) {
            return Err(QuotaError::User);
        }
        if over(self.quotas.per_ip, s.ips.get(&client).copied().unwrap_or(0)) {
            return Err(QuotaError::Ip);
        }
        s.total += 1;
        *s.users.entry(username.into()).or_default() += 1;
        *s.ips.entry(client).or_default() += 1;
        Ok(())
    }

    fn release(&self, username: &str, client: IpAddr) {
        let mut s = self.state.borrow_mut();
        s.total = s.total.saturating_sub(1);
        if let Some(n) = s.users.get_mut(username) {
            *n -= 1;
            if *n == 0 {
                s.users.remove(username);
            }
        }
        if let Some(n) = s.ips.get_mut(&client) {
            *n -= 1;
            if *n == 0 {
                s.ips.remove(&client);
            }
        }
    }

    fn relay_opened(&self, addr: SocketAddr) {
        self.state.borrow_mut().relays.insert(addr);
    }

    fn relay_closed(&self, addr: SocketAddr) {
        self.state.borrow_mut().relays.remove(&addr);
    }

    fn is_live_relay(&self, addr: SocketAddr) -> bool {
        self.state.borrow().relays.contains(&addr)
    }
}

/// The relay address of one family: where relay sockets are bound and what clients are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayAddress {
    /// The local IP relay sockets bind to.
    pub bind: IpAddr,
    /// The IP put in XOR-RELAYED-ADDRESS (the public IP behind a 1:1 NAT; else `bind`).
    pub advertised: IpAddr,
}

/// TURN settings.
#[derive(Debug, Clone)]
pub struct TurnConfig {
    /// Users, shared secrets and the realm.
    pub credentials: Credentials,
    /// Seconds a nonce stays valid.
    pub nonce_lifetime: u64,
    /// Allocation lifetime when the client asks for none or less (seconds).
    pub default_lifetime: u32,
    /// Longest allocation lifetime granted (seconds).
    pub max_lifetime: u32,
    /// Permission lifetime (seconds; RFC 8656: 300).
    pub permission_lifetime: u32,
    /// Channel binding lifetime (seconds; RFC 8656: 600).
    pub channel_lifetime: u32,
    /// IPv4 relay address, if IPv4 allocations are offered.
    pub relay_v4: Option<RelayAddress>,
    /// IPv6 relay address, if IPv6 allocations are offered.
    pub relay_v6: Option<RelayAddress>,
    /// Other IPs of this server (listening addresses): like relay IPs, peers there are only
    /// reachable when they are live relayed addresses.
    pub own_ips: Vec<IpAddr>,
    /// The peer-address policy.
    pub policy: PeerPolicy,
    /// Most permissions per allocation (508 beyond).
    pub max_permissions: usize,
    /// Most channel bindings per allocation (508 beyond).
    pub max_channels: usize,
    /// Seed of the generator for Data-indication transaction ids.
    pub seed: u64,
    /// Where to send new clients while draining (300 Try Alternate with ALTERNATE-SERVER);
    /// `None` answers them 508.
    pub alternate_server: Option<SocketAddr>,
}

impl Default for TurnConfig {
    fn default() -> Self {
        TurnConfig {
            credentials: Credentials::new("turnpike"),
            nonce_lifetime: 600,
            default_lifetime: 600,
            max_lifetime: 3600,
            permission_lifetime: 300,
            channel_lifetime: 600,
            relay_v4: None,
            relay_v6: None,
            own_ips: Vec::new(),
            policy: PeerPolicy::default(),
            max_permissions: 64,
            max_channels: 64,
            seed: 0x5EED,
            alternate_server: None,
        }
    }
}

/// Channel numbers a client may bind. RFC 8656 §12 narrowed the range to 0x4000–0x4FFF so
/// ChannelData can share a port with DTLS and RTP (RFC 7983), but RFC 5766 allowed up to
/// 0x7FFF and libwebrtc (every Chromium-based browser) and coturn's clients still pick numbers
/// from the whole old range; refusing them would break those clients, so the old range is
/// accepted, as coturn does.
pub const CHANNELS: std::ops::RangeInclusive<u16> = 0x4000..=0x7FFF;

/// How long an expired channel number (or peer) stays blocked from rebinding (RFC 8656 §12).
const CHANNEL_QUARANTINE_MS: u64 = 300_000;
/// How long an EVEN-PORT reservation is held (RFC 8656 §7.2: about 30 s).
const RESERVATION_MS: u64 = 30_000;
/// Upper bound on the size of a reply to an unauthenticated request (401, 438, 420, 400).
/// Small enough that the server is no useful amplifier, large enough for REALM + NONCE +
/// PASSWORD-ALGORITHMS with a realm of up to 64 characters.
pub const UNAUTHENTICATED_REPLY_LIMIT: usize = 200;

/// Why a client message was dropped by the TURN layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TurnDrop {
    /// Send indication or ChannelData without an allocation on that 5-tuple.
    NoAllocation,
    /// Send indication to a peer without a permission.
    NoPermission,
    /// ChannelData on a channel that is not bound (or has expired).
    NoChannel,
    /// A Send indication missing XOR-PEER-ADDRESS or DATA, or a ChannelData message with a bad
    /// header or length.
    Malformed,
    /// A peer of the other address family than the relay.
    FamilyMismatch,
    /// A peer the policy denies (checked again on Send).
    PeerDenied,
    /// A peer on one of this server's own IPs that is not a live relayed address.
    NotARelay,
}

impl TurnDrop {
    /// Every reason.
    pub const ALL: [TurnDrop; 7] = [
        TurnDrop::NoAllocation,
        TurnDrop::NoPermission,
        TurnDrop::NoChannel,
        TurnDrop::Malformed,
        TurnDrop::FamilyMismatch,
        TurnDrop::PeerDenied,
        TurnDrop::NotARelay,
    ];

    /// Stable kebab-case label.
    pub const fn as_str(self) -> &'static str {
        match self {
            TurnDrop::NoAllocation => "no-allocation",
            TurnDrop::NoPermission => "no-permission",
            TurnDrop::NoChannel => "no-channel",
            TurnDrop::Malformed => "malformed",
            TurnDrop::FamilyMismatch => "family-mismatch",
            TurnDrop::PeerDenied => "peer-denied",
            TurnDrop::NotARelay => "not-a-relay",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why a datagram from a peer was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum PeerDrop {
    /// The relay socket belongs to no live allocation (a late datagram after expiry).
    NoAllocation,
    /// No permission for the sender's IP.
    NoPermission,
}

impl PeerDrop {
    /// Every reason.
    pub const ALL: [PeerDrop; 2] = [PeerDrop::NoAllocation, PeerDrop::NoPermission];

    /// Stable kebab-case label.
    pub const fn as_str(self) -> &'static str {
        match self {
            PeerDrop::NoAllocation => "no-allocation",
            PeerDrop::NoPermission => "no-permission",
        }
    }
}

/// Why an authenticated TURN request failed authentication (metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthFailure {
    /// No MESSAGE-INTEGRITY: the normal first request of every client (the 401 challenge).
    Challenge,
    /// USERNAME, REALM or NONCE missing, or an unsupported USERHASH / PASSWORD-ALGORITHM use.
    BadRequest,
    /// A nonce that has expired (438).
    StaleNonce,
    /// A nonce this server did not issue, or issued to another client IP (438).
    BadNonce,
    /// Unknown user (or a shared-secret username without a timestamp).
    UnknownUser,
    /// A shared-secret username whose timestamp has passed.
    Expired,
    /// Wrong password (MESSAGE-INTEGRITY mismatch).
    Mismatch,
    /// A request by another user than the allocation's owner (441).
    WrongCredentials,
}

impl AuthFailure {
    /// Every reason.
    pub const ALL: [AuthFailure; 8] = [
        AuthFailure::Challenge,
        AuthFailure::BadRequest,
        AuthFailure::StaleNonce,
        AuthFailure::BadNonce,
        AuthFailure::UnknownUser,
        AuthFailure::Expired,
        AuthFailure::Mismatch,
        AuthFailure::WrongCredentials,
    ];

    /// Stable kebab-case label.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Challenge => "challenge",
            AuthFailure::BadRequest => "bad-request",
            AuthFailure::StaleNonce => "stale-nonce",
            AuthFailure::BadNonce => "bad-nonce",
            AuthFailure::UnknownUser => "unknown-user",
            AuthFailure::Expired => "expired",
            AuthFailure::Mismatch => "mismatch",
            AuthFailure::WrongCredentials => "wrong-credentials",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why an Allocate failed after authentication (metric labels).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AllocFailure {
    /// The 5-tuple already has an allocation (437).
    Mismatch,
    /// Bad or missing attributes (400).
    BadRequest,
    /// Transport other than UDP (442).
    Transport,
    /// Address family not offered (440).
    Family,
    /// User or client-IP quota (486).
    Quota,
    /// Server-wide cap, port range exhausted or bad reservation (508).
    Capacity,
    /// The server is draining: 300 Try Alternate, or 508 without an alternate server.
    Draining,
}

impl AllocFailure {
    /// Every reason.
    pub const ALL: [AllocFailure; 7] = [
        AllocFailure::Mismatch,
        AllocFailure::BadRequest,
        AllocFailure::Transport,
        AllocFailure::Family,
        AllocFailure::Quota,
        AllocFailure::Capacity,
        AllocFailure::Draining,
    ];

    /// Stable kebab-case label.
    pub const fn as_str(self) -> &'static str {
        match self {
            AllocFailure::Mismatch => "allocation-mismatch",
            AllocFailure::BadRequest => "bad-request",
            AllocFailure::Transport => "unsupported-transport",
            AllocFailure::Family => "address-family",
            AllocFailure::Quota => "quota",
            AllocFailure::Capacity => "capacity",
            AllocFailure::Draining => "draining",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Cumulative counters of one core. The driver publishes them as metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TurnStats {
    /// Allocations created.
    pub allocations_created: u64,
    /// Allocations that reached their expiry.
    pub allocations_expired: u64,
    /// Allocations deleted by the client (Refresh with LIFETIME 0) or a closed TCP connection.
    pub allocations_deleted: u64,
    /// Failed Allocates by [`AllocFailure`] (index = position in `AllocFailure::ALL`).
    pub allocation_failures: [u64; AllocFailure::ALL.len()],
    /// Authentication failures by [`AuthFailure`].
    pub auth_failures: [u64; AuthFailure::ALL.len()],
    /// Peers refused by the policy (403s and dropped Sends), by [`DenyReason`].
    pub permission_denials: [u64; DenyReason::ALL.len()],
    /// Client messages dropped, by [`TurnDrop`].
    pub client_drops: [u64; TurnDrop::ALL.len()],
    /// Peer datagrams dropped, by [`PeerDrop`].
    pub peer_drops: [u64; PeerDrop::ALL.len()],
    /// Datagrams relayed client → peer.
    pub to_peer_packets: u64,
    /// Payload bytes relayed client → peer.
    pub to_peer_bytes: u64,
    /// Datagrams relayed peer → client.
    pub to_client_packets: u64,
    /// Payload bytes relayed peer → client.
    pub to_client_bytes: u64,
}

/// What to do with a client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAction {
    /// A STUN reply (Binding or TURN) was appended to `out`: send it as [`Action::Reply`] says.
    Stun(Action),
    /// Send `data[payload]` (a slice of the received message) from relay socket `relay` to
    /// `peer`. Nothing was written to `out`.
    ToPeer {
        /// The relay socket to send from.
        relay: RelayId,
        /// The destination (a bound address, even for relay-to-relay traffic).
        peer: SocketAddr,
        /// The payload's position in the received message.
        payload: Range<usize>,
    },
    /// Dropped by the TURN layer (counted in [`TurnStats::client_drops`]).
    Drop(TurnDrop),
}

/// The result of handling a client message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOutcome {
    /// Method and class, when the message was STUN; `None` for ChannelData and garbage.
    pub message: Option<(u16, Class)>,
    /// What to do.
    pub action: ClientAction,
}

/// What to do with a peer datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAction {
    /// Send the bytes appended to `out` (ChannelData or a Data indication) to `client`.
    ToClient {
        /// The allocation's 5-tuple: send from `local` to `remote` on `transport`.
        client: ClientKey,
        /// Whether it is ChannelData (else a Data indication).
        channel: bool,
    },
    /// Dropped.
    Drop(PeerDrop),
}

#[derive(Debug, Clone, Copy)]
struct Relay {
    bound: SocketAddr,
    advertised: SocketAddr,
}

#[derive(Debug, Clone, Copy)]
struct Permission {
    ip: IpAddr,
    expires: u64,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    number: u16,
    /// The peer as the client named it (an advertised address for relay-to-relay).
    peer: SocketAddr,
    /// Where data goes: `peer`, or the bound address of a relay of this server.
    target: SocketAddr,
    expires: u64,
    /// The peer is one of this server's own IPs: deliver only to live relays.
    relay_only: bool,
}

#[derive(Debug)]
struct Allocation {
    client: ClientKey,
    username: Box<str>,
    expires: u64,
    generation: u32,
    relays: [Option<Relay>; 2],
    permissions: Vec<Permission>,
    channels: Vec<Channel>,
    /// The Allocate transaction, to answer a retransmission with the same success.
    allocate_tid: [u8; 12],
    reservation: Option<u64>,
    address_error: Option<u8>,
}

#[derive(Debug)]
struct Reservation {
    token: u64,
    expires: u64,
}

/// How a peer address may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerClass {
    /// An ordinary peer the policy allows.
    Open,
    /// One of this server's own IPs: only live relayed addresses are reachable.
    RelayOnly,
}

/// The credential state of an authenticated request.
struct Authed {
    key: Key,
    sha256: bool,
}

/// The sans-IO STUN/TURN server. See the [module docs](self).
pub struct TurnServer {
    stun: StunServer,
    config: TurnConfig,
    nonces: NonceKey,
    ledger: Box<dyn Ledger>,
    slots: Vec<Option<Allocation>>,
    free: Vec<u32>,
    generations: Vec<u32>,
    by_client: HashMap<ClientKey, u32>,
    timers: BinaryHeap<Reverse<(u64, u32, u32)>>,
    reservations: Vec<Reservation>,
    live: usize,
    rng: u64,
    stats: TurnStats,
    draining: bool,
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("allocations", &self.live)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn family_index(ip: IpAddr) -> usize {
    usize::from(ip.is_ipv6())
}

fn error_reason(code: u16) -> &'static str {
    fast::reason_phrase(code)
}

impl TurnServer {
    /// A server answering STUN with `stun` and TURN with `config`; nonces are signed with
    /// `nonce_secret`; quotas and relay addresses go through `ledger`.
    pub fn new(
        stun: StunConfig,
        config: TurnConfig,
        nonce_secret: [u8; 32],
        ledger: Box<dyn Ledger>,
    ) -> Self {
        let rng = config.seed | 1;
        TurnServer {
            stun: StunServer::new(stun),
            config,
            nonces: NonceKey::new(nonce_secret),
            ledger,
            slots: Vec::new(),
            free: Vec::new(),
            generations: Vec::new(),
            by_client: HashMap::new(),
            timers: BinaryHeap::new(),
            reservations: Vec::new(),
            live: 0,
            rng,
            stats: TurnStats::default(),
            draining: false,
        }
    }

    /// Starts (or stops) draining: new allocations are refused (300 Try Alternate with
    /// ALTERNATE-SERVER when one is configured, else 508); existing ones keep working and may
    /// be refreshed.
    pub fn set_draining(&mut self, on: bool) {
        self.draining = on;
    }

    /// The TURN configuration.
    pub fn config(&self) -> &TurnConfig {
        &self.config
    }

    /// Cumulative counters.
    pub fn stats(&self) -> &TurnStats {
        &self.stats
    }

    /// Live allocations.
    pub fn allocations(&self) -> usize {
        self.live
    }

    /// Whether `client` holds an allocation.
    pub fn has_allocation(&self, client: &ClientKey) -> bool {
        self.by_client.contains_key(client)
    }

    /// Whether TURN is offered at all (some relay address configured).
    pub fn relaying(&self) -> bool {
        self.config.relay_v4.is_some() || self.config.relay_v6.is_some()
    }

    fn next_random(&mut self) -> u64 {
        // splitmix64: transaction ids of Data indications only need to be unpredictable
        // enough not to collide, not secret.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    // ---------------------------------------------------------------- client messages

    /// Handles one message from a client: a STUN message (first byte 0x00–0x3F), or
    /// ChannelData (0x40–0x7F). Replies are appended to `out`.
    pub fn handle_client(
        &mut self,
        msg: Incoming<'_>,
        now: Now,
        sockets: &mut dyn RelaySockets,
        out: &mut Vec<u8>,
    ) -> ClientOutcome {
        if let Some(&first) = msg.data.first()
            && (0x40..=0x7F).contains(&first)
        {
            return ClientOutcome {
                message: None,
                action: self.client_channel_data(&msg, now),
            };
        }
        let view = match MessageView::parse(msg.data) {
            Ok(v) => v,
            Err(e) => {
                return ClientOutcome {
                    message: None,
                    action: ClientAction::Stun(Action::Drop(DropReason::Parse(e))),
                };
            }
        };
        let message = Some((view.method, view.class));
        let is_turn_method = matches!(
            view.method,
            method::ALLOCATE
                | method::REFRESH
                | method::CREATE_PERMISSION
                | method::CHANNEL_BIND
                | method::SEND
        );
        if view.method == method::BINDING || !is_turn_method || !self.relaying() {
            let Outcome { message, action } = self.stun.handle_parsed(msg, &view, out);
            return ClientOutcome {
                message,
                action: ClientAction::Stun(action),
            };
        }
        let TransactionId::Modern(tid) = view.transaction_id else {
            return ClientOutcome {
                message,
                action: ClientAction::Stun(Action::Drop(DropReason::Malformed)),
            };
        };
        let action = match (view.class, view.method) {
            (Class::Indication, method::SEND) => self.send_indication(&msg, &view, now),
            (Class::Request, method::SEND) => {
                ClientAction::Stun(self.error(&msg, &view, &tid, 400, None, None, out))
            }
            (Class::Request, _) => {
                ClientAction::Stun(self.request(&msg, &view, &tid, now, sockets, out))
            }
            (Class::Indication, _) => {
                ClientAction::Stun(Action::Drop(DropReason::UnsupportedIndication))
            }
            (Class::Success | Class::Error, _) => {
                ClientAction::Stun(Action::Drop(DropReason::UnexpectedResponse))
            }
        };
        ClientOutcome { message, action }
    }

    /// A TCP or TLS connection closed: its allocations are deleted (RFC 8656 §3.1).
    pub fn client_closed(&mut self, client: ClientKey, sockets: &mut dyn RelaySockets) {
        if let Some(&slot) = self.by_client.get(&client) {
            self.delete(slot, sockets);
            self.stats.allocations_deleted += 1;
        }
    }

    fn drop(&mut self, why: TurnDrop) -> ClientAction {
        self.stats.client_drops[why.index()] += 1;
        ClientAction::Drop(why)
    }

    fn client_channel_data(&mut self, msg: &Incoming<'_>, now: Now) -> ClientAction {
        let d = msg.data;
        if d.len() < 4 {
            return self.drop(TurnDrop::Malformed);
        }
        let number = u16::from_be_bytes([d[0], d[1]]);
        let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
        if !CHANNELS.contains(&number) || d.len() < 4 + len {
            return self.drop(TurnDrop::Malformed);
        }
        let key = ClientKey::of(msg);
        let Some(&slot) = self.by_client.get(&key) else {
            return self.drop(TurnDrop::NoAllocation);
        };
        let Some(alloc) = self.slots[slot as usize].as_ref() else {
            return self.drop(TurnDrop::NoAllocation);
        };
        let Some(ch) = alloc
            .channels
            .iter()
            .find(|c| c.number == number && c.expires > now.millis)
            .copied()
        else {
            return self.drop(TurnDrop::NoChannel);
        };
        if ch.relay_only && !self.ledger.is_live_relay(ch.target) {
            return self.drop(TurnDrop::NotARelay);
        }
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += len as u64;
        ClientAction::ToPeer {
            relay: RelayId::new(slot, ch.peer.is_ipv6()),
            peer: ch.target,
            payload: 4..4 + len,
        }
    }

    fn send_indication(
        &mut self,
        msg: &Incoming<'_>,
        view: &MessageView<'_>,
        now: Now,
    ) -> ClientAction {
        let key = ClientKey::of(msg);
        let Some(&slot) = self.by_client.get(&key) else {
            return self.drop(TurnDrop::NoAllocation);
        };
        let a = TurnAttrs::read(view);
        let (Some(peer), Some(data)) = (a.first_peer(), a.data.clone()) else {
            return self.drop(TurnDrop::Malformed);
        };
        if a.malformed.is_some() || !a.unknown().is_empty() {
            return self.drop(TurnDrop::Malformed);
        }
        let Some(alloc) = self.slots[slot as usize].as_ref() else {
            return self.drop(TurnDrop::NoAllocation);
        };
        if alloc.relays[family_index(peer.ip())].is_none() {
            return self.drop(TurnDrop::FamilyMismatch);
        }
        let class = match self.classify_peer(peer.ip()) {
            Ok(c) => c,
            Err(reason) => {
                self.stats.permission_denials[deny_index(reason)] += 1;
                return self.drop(TurnDrop::PeerDenied);
            }
        };
        let alloc = self.slots[slot as usize].as_ref().expect("checked above");
        if !alloc
            .permissions
            .iter()
            .any(|p| p.ip == peer.ip() && p.expires > now.millis)
        {
            return self.drop(TurnDrop::NoPermission);
        }
        let target = match class {
            PeerClass::Open => peer,
            PeerClass::RelayOnly => {
                let bound = self.bound_address(peer);
                if !self.ledger.is_live_relay(bound) {
                    return self.drop(TurnDrop::NotARelay);
                }
                bound
            }
        };
        self.stats.to_peer_packets += 1;
        self.stats.to_peer_bytes += data.len() as u64;
        ClientAction::ToPeer {
            relay: RelayId::new(slot, peer.is_ipv6()),
            peer: target,
            payload: data,
        }
    }

    /// Maps an advertised relay address of this server to the address its socket is bound to.
    fn bound_address(&self, peer: SocketAddr) -> SocketAddr {
        for r in [self.config.relay_v4, self.config.relay_v6]
            .into_iter()
            .flatten()
        {
            if r.advertised == peer.ip() {
                return SocketAddr::new(r.bind, peer.port());
            }
        }
        peer
    }

    /// Maps a relay socket's bound address back to the address clients know it by.
    fn advertised_address(&self, from: SocketAddr) -> SocketAddr {
        for r in [self.config.relay_v4, self.config.relay_v6]
            .into_iter()
            .flatten()
        {
            if r.bind == from.ip() && r.bind != r.advertised && self.ledger.is_live_relay(from) {
                return SocketAddr::new(r.advertised, from.port());
            }
        }
        from
    }

    /// Whether `ip` is one of this server's own addresses, exactly as written: an IPv6 form
    /// that embeds one of them (`::ffff:127.0.0.1`) is judged by the policy instead, which
    /// denies it like any other embedding of a denied address.
    fn is_own_ip(&self, ip: IpAddr) -> bool {
        [self.config.relay_v4, self.config.relay_v6]
            .into_iter()
            .flatten()
            .any(|r| r.bind == ip || r.advertised == ip)
            || self.config.own_ips.contains(&ip)
    }

    /// The one peer check every path uses. An explicit `--allow-peer` match makes a peer
    /// ordinary; this server's own IPs are reachable only at live relayed addresses; anything
    /// else goes through the policy.
    fn classify_peer(&self, ip: IpAddr) -> Result<PeerClass, DenyReason> {
        let explicitly_allowed = {
            let n = normalize(ip);
            self.config
                .policy
                .allow()
                .iter()
                .any(|c| c.contains(ip) || c.contains(n))
        };
        if explicitly_allowed {
            return Ok(PeerClass::Open);
        }
        if self.is_own_ip(ip) {
            return Ok(PeerClass::RelayOnly);
        }
        match self.config.policy.check(ip) {
            Verdict::Allowed => Ok(PeerClass::Open),
            Verdict::Denied(reason) => Err(reason),
        }
    }

    // ---------------------------------------------------------------- requests

    #[allow(clippy::too_many_arguments)]
    fn error(
        &mut self,
        msg: &Incoming<'_>,
        view: &MessageView<'_>,
        tid: &[u8; 12],
        code: u16,
        unknown: Option<&[u16]>,
        authed: Option<&Authed>,
        out: &mut Vec<u8>,
    ) -> Action {
        let start = out.len();
        fast::write_header(out, view.method, Class::Error, tid);
        fast::write_error_code(out, code, error_reason(code));
        if let Some(types) = unknown {
            fast::write_unknown_attributes(out, types);
        }
        self.finish(out, start, view, authed);
        match authed {
            Some(_) => reply_to(msg, Some(code)),
            None => bounded_reply(msg, out, start, code),
        }
    }

    /// Finishes the message at `start`: SOFTWARE, MESSAGE-INTEGRITY(-SHA256) when
    /// authenticated, FINGERPRINT when the request had one.
    fn finish(
        &self,
        out: &mut Vec<u8>,
        start: usize,
        view: &MessageView<'_>,
        authed: Option<&Authed>,
    ) {
        if let (Some(s), Some(_)) = (self.stun.config().software.as_deref(), authed) {
            fast::write_attr(out, attr::SOFTWARE, s.as_bytes());
        }
        if let Some(a) = authed {
            if a.sha256 {
                integrity::append_sha256(out, start, a.key.as_bytes());
            } else {
                integrity::append(out, start, a.key.as_bytes());
            }
        }
        if view.fingerprint {
            fast::finish_with_fingerprint(out, start);
        } else if authed.is_none() {
            fast::finish(out, start);
        }
    }

    /// A 401 or 438 challenge: REALM, a fresh NONCE, PASSWORD-ALGORITHMS.
    fn challenge(
        &mut self,
        msg: &Incoming<'_>,
        view: &MessageView<'_>,
        tid: &[u8; 12],
        code: u16,
        now: Now,
        out: &mut Vec<u8>,
    ) -> Action {
        let nonce = self
            .nonces
            .issue(now.unix, self.config.nonce_lifetime, msg.remote.ip(), true);
        let start = out.len();
        fast::write_header(out, view.method, Class::Error, tid);
        fast::write_error_code(out, code, error_reason(code));
        fast::write_attr(out, attr::REALM, self.config.credentials.realm().as_bytes());
        fast::write_attr(out, attr::NONCE, nonce.as_str().as_bytes());
        fast::write_attr(out, attr::PASSWORD_ALGORITHMS, &PASSWORD_ALGORITHMS);
        self.finish(out, start, view, None);
        bounded_reply(msg, out, start, code)
    }

    fn auth_failure(&mut self, why: AuthFailure) {
        self.stats.auth_failures[why.index()] += 1;
    }

    /// RFC 8489 §9.2.4. `Ok` carries the verified key; `Err` the reply already written.
    fn authenticate(
        &mut self,
        msg: &Incoming<'_>,
        view: &MessageView<'_>,
        a: &TurnAttrs<'_>,
        tid: &[u8; 12],
        now: Now,
        out: &mut Vec<u8>,
    ) -> Result<(Authed, Box<str>), Action> {
        if !a.message_integrity && !a.message_integrity_sha256 {
            self.auth_failure(AuthFailure::Challenge);
            return Err(self.challenge(msg, view, tid, 401, now, out));
        }
        let (Some(username), Some(_realm), Some(nonce)) = (a.username, a.realm, a.nonce) else {
            self.auth_failure(AuthFailure::BadRequest);
            return Err(self.error(msg, view, tid, 400, None, None, out));
        };
        let Ok(username) = std::str::from_utf8(username) else {
            self.auth_failure(AuthFailure::BadRequest);
            return Err(self.error(msg, view, tid, 400, None, None, out));
        };
        let features = match self.nonces.check(nonce, now.unix, msg.remote.ip()) {
            NonceCheck::Valid {
                password_algorithms,
            } => password_algorithms,
            NonceCheck::Stale => {
                self.auth_failure(AuthFailure::StaleNonce);
                return Err(self.challenge(msg, view, tid, 438, now, out));
            }
            NonceCheck::Invalid => {
                self.auth_failure(AuthFailure::BadNonce);
                return Err(self.challenge(msg, view, tid, 438, now, out));
            }
        };
        // PASSWORD-ALGORITHM and PASSWORD-ALGORITHMS come together, the list must be the one
        // this server sent, and the algorithm one of it (RFC 8489 §9.2.4).
        let algorithm = match (a.password_algorithm, a.password_algorithms) {
            (None, None) => PasswordAlgorithm::Md5,
            (Some(alg), Some(list)) if features && list == PASSWORD_ALGORITHMS => {
                match PasswordAlgorithm::from_wire(alg) {
                    Some(alg) => alg,
                    None => {
                        self.auth_failure(AuthFailure::BadRequest);
                        return Err(self.error(msg, view, tid, 400, None, None, out));
                    }
                }
            }
            _ => {
                self.auth_failure(AuthFailure::BadRequest);
                return Err(self.error(msg, view, tid, 400, None, None, out));
            }
        };
        let sha256 = a.message_integrity_sha256;
        let mut result = self
            .config
            .credentials
            .authenticate(view, username, algorithm, sha256, now.unix);
        if result == Err(AuthError::Expired) && view.method != method::ALLOCATE {
            // Shared-secret credentials expire for new allocations only: an allocation made
            // with them may still be refreshed (and get permissions and channels) with the
            // same credentials, so a call does not drop when its credentials' TTL passes.
            let client = ClientKey::of(msg);
            let owns = self
                .by_client
                .get(&client)
                .and_then(|&s| self.slots[s as usize].as_ref())
                .is_some_and(|al| *al.username == *username);
            if owns {
                result = self
                    .config
                    .credentials
                    .authenticate(view, username, algorithm, sha256, 0);
            }
        }
        match result {
            Ok(key) => Ok((Authed { key, sha256 }, username.into())),
            Err(e) => {
                self.auth_failure(match e {
                    AuthError::UnknownUser => AuthFailure::UnknownUser,
                    AuthError::Expired => AuthFailure::Expired,
                    AuthError::Mismatch => AuthFailure::Mismatch,
                    _ => AuthFailure::BadRequest,
                });
                Err(self.challenge(msg, view, tid, 401, now, out))
            }
        }
    }

    fn request(
        &mut self,
        msg: &Incoming<'_>,
        view: &MessageView<'_>,
        tid: &[u8; 12],
        now: Now,
        sockets: &mut dyn RelaySockets,
        out: &mut Vec<u8>,
    ) -> Action {
        let a = TurnAttrs::read(view);
        if !a.unknown().is_empty() {
            return self.error(msg, view, tid, 420, Some(a.unknown()), None, out);
        }
        if a.malformed.is_some() || view.malformed.is_some() || a.userhash {
            return self.error(msg, view, tid, 400, None, None, out);
        }
        let (authed, username) = match self.authenticate(msg, view, &a, tid, now, out) {
            Ok(x) => x,
            Err(action) => return action,
        };
        let client = ClientKey::of(msg);
        let slot = self.by_client.get(&client).copied();
        if view.method == method::ALLOCATE {
            return self.allocate(
                msg, view, tid, &a, &authed, username, slot, now, sockets, out,
            );
        }
        let Some(slot) = slot else {
            return self.error(msg, view, tid, 437, None, Some(&authed), out);
        };
        if self.slots[slot as usize]
            .as_ref()
            .is_some_and(|al| *al.username != *username)
        {
            self.auth_failure(AuthFailure::WrongCredentials);
            return self.error(msg, view, tid, 441, None, Some(&authed), out);
        }
        let result = match view.method {
            method::REFRESH => self.refresh(&a, slot, now, sockets),
            method::CREATE_PERMISSION => self.create_permission(&a, slot, now),
            method::CHANNEL_BIND => self.channel_bind(&a, slot, now),
            _ => Err(400),
        };
        match result {
            Ok(lifetime) => {
                let start = out.len();
                fast::write_header(out, view.method, Class::Success, tid);
                if let Some(l) = lifetime {
                    fast::write_attr(out, attr::LIFETIME, &l.to_be_bytes());
                }
                self.finish(out, start, view, Some(&authed));
                reply_to(msg, None)
            }
            Err(code) => self.error(msg, view, tid, code, None, Some(&authed), out),
        }
    }

    fn refresh(
        &mut self,
        a: &TurnAttrs<'_>,
        slot: u32,
        now: Now,
        sockets: &mut dyn RelaySockets,
    ) -> Result<Option<u32>, u16> {
        let alloc = self.slots[slot as usize].as_mut().ok_or(437u16)?;
        if let Some(f) = a.requested_family {
            let index = match f {
                FAMILY_V4 => 0,
                FAMILY_V6 => 1,
                _ => return Err(440),
            };
            if alloc.relays[index].is_none() {
                return Err(443);
            }
        }
        let desired = match a.lifetime {
            Some(l) => l.min(self.config.max_lifetime),
            None => self.config.default_lifetime,
        };
        if desired == 0 {
            self.delete(slot, sockets);
            self.stats.allocations_deleted += 1;
            return Ok(Some(0));
        }
        alloc.expires = now.millis + u64::from(desired) * 1000;
        Ok(Some(desired))
    }

    /// Checks a peer for CreatePermission / ChannelBind: family (443) and policy (403).
    fn check_peer(&mut self, slot: u32, peer: SocketAddr) -> Result<PeerClass, u16> {
        let alloc = self.slots[slot as usize].as_ref().ok_or(437u16)?;
        if alloc.relays[family_index(peer.ip())].is_none() {
            return Err(443);
        }
        match self.classify_peer(peer.ip()) {
            Ok(c) => Ok(c),
            Err(reason) => {
                self.stats.permission_denials[deny_index(reason)] += 1;
                Err(403)
            }
        }
    }

    fn create_permission(
        &mut self,
        a: &TurnAttrs<'_>,
        slot: u32,
        now: Now,
    ) -> Result<Option<u32>, u16> {
        if a.peer_count == 0 {
            return Err(400);
        }
        if a.too_many_peers {
            return Err(508);
        }
        for peer in a.peers() {
            self.check_peer(slot, peer)?;
        }
        let expires = now.millis + u64::from(self.config.permission_lifetime) * 1000;
        let cap = self.config.max_permissions;
        let alloc = self.slots[slot as usize].as_mut().ok_or(437u16)?;
        alloc.permissions.retain(|p| p.expires > now.millis);
        let new = a
            .peers()
            .filter(|peer| !alloc.permissions.iter().any(|p| p.ip == peer.ip()))
            .fold(Vec::<IpAddr>::new(), |mut v, p| {
                if !v.contains(&p.ip()) {
                    v.push(p.ip());
                }
                v
            });
        if alloc.permissions.len() + new.len() > cap {
            return Err(508);
        }
        for peer in a.peers() {
            install_permission(alloc, peer.ip(), expires);
        }
        Ok(None)
    }

    fn channel_bind(&mut self, a: &TurnAttrs<'_>, slot: u32, now: Now) -> Result<Option<u32>, u16> {
        let (Some(number), Some(peer)) = (a.channel_number, a.first_peer()) else {
            return Err(400);
        };
        if !CHANNELS.contains(&number) {
            return Err(400);
        }
        let class = self.check_peer(slot, peer)?;
        let (max_channels, max_permissions) =
            (self.config.max_channels, self.config.max_permissions);
        let channel_expires = now.millis + u64::from(self.config.channel_lifetime) * 1000;
        let permission_expires = now.millis + u64::from(self.config.permission_lifetime) * 1000;
        let alloc = self.slots[slot as usize].as_mut().ok_or(437u16)?;
        // Expired bindings stay for a quarantine period, blocking reuse with another peer.
        alloc
            .channels
            .retain(|c| c.expires + CHANNEL_QUARANTINE_MS > now.millis);
        alloc.permissions.retain(|p| p.expires > now.millis);
        let existing = alloc.channels.iter().position(|c| c.number == number);
        let peer_bound = alloc.channels.iter().position(|c| c.peer == peer);
        match (existing, peer_bound) {
            (Some(i), Some(j)) if i == j => {}
            (None, None) => {
                if alloc.channels.len() >= max_channels {
                    return Err(508);
                }
            }
            // The number is bound to another peer, or the peer to another number.
            _ => return Err(400),
        }
        if !alloc.permissions.iter().any(|p| p.ip == peer.ip())
            && alloc.permissions.len() >= max_permissions
        {
            return Err(508);
        }
        let relay_only = class == PeerClass::RelayOnly;
        match existing {
            Some(i) => alloc.channels[i].expires = channel_expires,
            None => alloc.channels.push(Channel {
                number,
                peer,
                target: peer,
                expires: channel_expires,
                relay_only,
            }),
        }
        install_permission(alloc, peer.ip(), permission_expires);
        if relay_only {
            // Data goes to the bound address of the relay; the channel keeps the address the
            // client named for matching incoming data and for the rebinding rules.
            let bound = self.bound_address(peer);
            if let Some(alloc) = self.slots[slot as usize].as_mut()
                && let Some(c) = alloc.channels.iter_mut().find(|c| c.number == number)
            {
                c.target = bound;
            }
        }
        Ok(None)
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &mut self,
        msg: &Incoming<'_>,
        view: &MessageView<'_>,
        tid: &[u8; 12],
        a: &TurnAttrs<'_>,
        authed: &Authed,
        username: Box<str>,
        existing: Option<u32>,
        now: Now,
        sockets: &mut dyn RelaySockets,
        out: &mut Vec<u8>,
    ) -> Action {
        if let Some(slot) = existing {
            // A retransmitted Allocate gets the same success again; anything else on a busy
            // 5-tuple is a mismatch.
            let same = self.slots[slot as usize]
                .as_ref()
                .is_some_and(|al| al.allocate_tid == *tid && *al.username == *username);
            if same {
                return self.allocate_success(msg, view, tid, slot, authed, now, out);
            }
            return self.allocate_failed(msg, view, tid, 437, AllocFailure::Mismatch, authed, out);
        }
        if self.draining {
            self.stats.allocation_failures[AllocFailure::Draining.index()] += 1;
            let start = out.len();
            let code = if self.config.alternate_server.is_some() {
                300
            } else {
                508
            };
            fast::write_header(out, view.method, Class::Error, tid);
            fast::write_error_code(out, code, error_reason(code));
            if let Some(alt) = self.config.alternate_server {
                fast::write_addr_attr(out, attr::ALTERNATE_SERVER, alt);
            }
            self.finish(out, start, view, Some(authed));
            return reply_to(msg, Some(code));
        }
        let fail = |code: u16| -> (u16, AllocFailure) {
            let why = match code {
                400 => AllocFailure::BadRequest,
                440 => AllocFailure::Family,
                442 => AllocFailure::Transport,
                486 => AllocFailure::Quota,
                _ => AllocFailure::Capacity,
            };
            (code, why)
        };
        let plan = match self.plan_allocation(a) {
            Ok(p) => p,
            Err(code) => {
                let (code, why) = fail(code);
                return self.allocate_failed(msg, view, tid, code, why, authed, out);
            }
        };
        if let Err(q) = self.ledger.acquire(&username, msg.remote.ip()) {
            let code = match q {
                QuotaError::Total => 508,
                QuotaError::User | QuotaError::Ip => 486,
            };
            let (code, why) = fail(code);
            return self.allocate_failed(msg, view, tid, code, why, authed, out);
        }
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let Ok(s) = u32::try_from(self.slots.len()) else {
                    self.ledger.release(&username, msg.remote.ip());
                    return self.allocate_failed(
                        msg,
                        view,
                        tid,
                        508,
                        AllocFailure::Capacity,
                        authed,
                        out,
                    );
                };
                self.slots.push(None);
                self.generations.push(0);
                s
            }
        };
        // Open the sockets; on failure close what was opened.
        let mut relays: [Option<Relay>; 2] = [None, None];
        let mut reservation = None;
        let mut address_error = None;
        let mut failed = None;
        for (index, request) in plan.families.iter().enumerate() {
            let Some(request) = *request else { continue };
            let Some(addr) = (if index == 0 {
                self.config.relay_v4
            } else {
                self.config.relay_v6
            }) else {
                if plan.additional {
                    address_error = Some(FAMILY_V6);
                    continue;
                }
                failed = Some(440);
                break;
            };
            let id = RelayId::new(slot, index == 1);
            match sockets.open(id, addr.bind, request, a.dont_fragment) {
                Ok(opened) => {
                    if opened.reservation.is_some() {
                        reservation = opened.reservation;
                    }
                    relays[index] = Some(Relay {
                        bound: SocketAddr::new(addr.bind, opened.port),
                        advertised: SocketAddr::new(addr.advertised, opened.port),
                    });
                }
                Err(_) if plan.additional && index == 1 => {
                    address_error = Some(FAMILY_V6);
                }
                Err(_) => {
                    failed = Some(508);
                    break;
                }
            }
        }
        if let Some(code) = failed {
            for (index, r) in relays.iter().enumerate() {
                if r.is_some() {
                    sockets.close(RelayId::new(slot, index == 1));
                }
            }
            if let Some(token) = reservation {
                sockets.release_reservation(token);
            }
            self.free.push(slot);
            self.ledger.release(&username, msg.remote.ip());
            let (code, why) = fail(code);
            return self.allocate_failed(msg, view, tid, code, why, authed, out);
        }
        if let PortRequest::Reserved(token) = plan.families[0].unwrap_or(PortRequest::Any) {
            self.reservations.retain(|r| r.token != token);
        }
        if let Some(token) = reservation {
            self.reservations.push(Reservation {
                token,
                expires: now.millis + RESERVATION_MS,
            });
            self.timers
                .push(Reverse((now.millis + RESERVATION_MS, u32::MAX, 0)));
        }
        for r in relays.iter().flatten() {
            self.ledger.relay_opened(r.bound);
        }
        let generation = self.generations[slot as usize];
        let expires = now.millis + u64::from(plan.lifetime) * 1000;
        let client = ClientKey::of(msg);
        self.slots[slot as usize] = Some(Allocation {
            client,
            username,
            expires,
            generation,
            relays,
            permissions: Vec::new(),
            channels: Vec::new(),
            allocate_tid: *tid,
            reservation,
            address_error,
        });
        self.by_client.insert(client, slot);
        self.timers.push(Reverse((expires, slot, generation)));
        self.live += 1;
        self.stats.allocations_created += 1;
        self.allocate_success(msg, view, tid, slot, authed, now, out)
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate_failed(
        &mut self,
        msg: &Incoming<'_>,
        view: &MessageView<'_>,
        tid: &[u8; 12],
        code: u16,
        why: AllocFailure,
        authed: &Authed,
        out: &mut Vec<u8>,
    ) -> Action {
        self.stats.allocation_failures[why.index()] += 1;
        self.error(msg, view, tid, code, None, Some(authed), out)
    }

    /// Validates an Allocate's attributes (RFC 8656 §7.2) and decides what to open.
    fn plan_allocation(&self, a: &TurnAttrs<'_>) -> Result<Plan, u16> {
        match a.requested_transport {
            None => return Err(400),
            Some(17) => {}
            Some(_) => return Err(442),
        }
        if a.reservation_token.is_some()
            && (a.even_port.is_some()
                || a.requested_family.is_some()
                || a.additional_family.is_some())
        {
            return Err(400);
        }
        if a.requested_family.is_some() && a.additional_family.is_some() {
            return Err(400);
        }
        if a.additional_family.is_some_and(|f| f != FAMILY_V6) {
            return Err(400);
        }
        if a.even_port.is_some() && a.additional_family.is_some() {
            return Err(400);
        }
        let lifetime = match a.lifetime {
            Some(l) => l
                .min(self.config.max_lifetime)
                .max(self.config.default_lifetime),
            None => self.config.default_lifetime,
        };
        let port = match (a.reservation_token, a.even_port) {
            // The driver holds reserved sockets (possibly for another core of the same
            // server) and refuses tokens it does not hold: 508 then.
            (Some(token), _) => PortRequest::Reserved(token),
            (None, Some(reserve_next)) => PortRequest::Even { reserve_next },
            (None, None) => PortRequest::Any,
        };
        let families = match (a.requested_family, a.additional_family) {
            (None | Some(FAMILY_V4), None) => {
                if self.config.relay_v4.is_none() {
                    return Err(440);
                }
                [Some(port), None]
            }
            (Some(FAMILY_V6), None) => {
                if self.config.relay_v6.is_none() {
                    return Err(440);
                }
                [None, Some(port)]
            }
            (None, Some(_)) => {
                if self.config.relay_v4.is_none() {
                    return Err(440);
                }
                [Some(PortRequest::Any), Some(PortRequest::Any)]
            }
            _ => return Err(440),
        };
        Ok(Plan {
            families,
            additional: a.additional_family.is_some(),
            lifetime,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn allocate_success(
        &mut self,
        msg: &Incoming<'_>,
        view: &MessageView<'_>,
        tid: &[u8; 12],
        slot: u32,
        authed: &Authed,
        now: Now,
        out: &mut Vec<u8>,
    ) -> Action {
        let Some(alloc) = self.slots[slot as usize].as_ref() else {
            return Action::Drop(DropReason::Malformed);
        };
        let start = out.len();
        fast::write_header(out, method::ALLOCATE, Class::Success, tid);
        for r in alloc.relays.iter().flatten() {
            fast::write_xor_addr_attr(out, attr::XOR_RELAYED_ADDRESS, r.advertised, tid);
        }
        let remaining = alloc.expires.saturating_sub(now.millis).div_ceil(1000);
        let remaining = u32::try_from(remaining).unwrap_or(u32::MAX);
        fast::write_attr(out, attr::LIFETIME, &remaining.to_be_bytes());
        if let Some(token) = alloc.reservation {
            fast::write_attr(out, attr::RESERVATION_TOKEN, &token.to_be_bytes());
        }
        if let Some(family) = alloc.address_error {
            // ADDRESS-ERROR-CODE: family, reserved, class, number, reason (RFC 8656 §18.13).
            let reason = error_reason(440).as_bytes();
            let mut value = Vec::with_capacity(4 + reason.len());
            value.extend_from_slice(&[family, 0, 4, 40]);
            value.extend_from_slice(reason);
            fast::write_attr(out, attr::ADDRESS_ERROR_CODE, &value);
        }
        fast::write_xor_addr_attr(out, attr::XOR_MAPPED_ADDRESS, msg.remote, tid);
        self.finish(out, start, view, Some(authed));
        reply_to(msg, None)
    }

    fn delete(&mut self, slot: u32, sockets: &mut dyn RelaySockets) {
        let Some(alloc) = self.slots.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        for (index, r) in alloc.relays.iter().enumerate() {
            if let Some(r) = r {
                sockets.close(RelayId::new(slot, index == 1));
                self.ledger.relay_closed(r.bound);
            }
        }
        self.ledger
            .release(&alloc.username, alloc.client.remote.ip());
        self.by_client.remove(&alloc.client);
        self.generations[slot as usize] = self.generations[slot as usize].wrapping_add(1);
        self.free.push(slot);
        self.live -= 1;
    }

    // ---------------------------------------------------------------- peer datagrams

    /// Handles a datagram that `from` sent to relay socket `relay`. On
    /// [`PeerAction::ToClient`], the ChannelData message or Data indication is appended to
    /// `out`.
    pub fn handle_peer(
        &mut self,
        relay: RelayId,
        from: SocketAddr,
        data: &[u8],
        now: Now,
        out: &mut Vec<u8>,
    ) -> PeerAction {
        let Some(Some(alloc)) = self.slots.get(relay.slot()) else {
            return self.peer_drop(PeerDrop::NoAllocation);
        };
        if alloc.relays[relay.family()].is_none() {
            return self.peer_drop(PeerDrop::NoAllocation);
        }
        // Relay-to-relay: the sender is another relay socket of this server, known to
        // clients by its advertised address.
        let seen = self.advertised_address(from);
        let alloc = self.slots[relay.slot()].as_ref().expect("checked above");
        if !alloc
            .permissions
            .iter()
            .any(|p| p.ip == seen.ip() && p.expires > now.millis)
        {
            return self.peer_drop(PeerDrop::NoPermission);
        }
        let client = alloc.client;
        let channel = alloc
            .channels
            .iter()
            .find(|c| c.peer == seen && c.expires > now.millis)
            .map(|c| c.number);
        self.stats.to_client_packets += 1;
        self.stats.to_client_bytes += data.len() as u64;
        match channel {
            Some(number) => {
                let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
                out.extend_from_slice(&number.to_be_bytes());
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&data[..usize::from(len)]);
                if client.transport == Transport::Tcp {
                    let pad = (4 - usize::from(len) % 4) % 4;
                    out.extend_from_slice(&[0u8; 3][..pad]);
                }
                PeerAction::ToClient {
                    client,
                    channel: true,
                }
            }
            None => {
                let r = self.next_random().to_be_bytes();
                let s = self.next_random().to_be_bytes();
                let mut tid = [0u8; 12];
                tid[..8].copy_from_slice(&r);
                tid[8..].copy_from_slice(&s[..4]);
                let start = out.len();
                fast::write_header(out, method::DATA, Class::Indication, &tid);
                fast::write_xor_addr_attr(out, attr::XOR_PEER_ADDRESS, seen, &tid);
                fast::write_attr(out, attr::DATA, data);
                fast::finish(out, start);
                PeerAction::ToClient {
                    client,
                    channel: false,
                }
            }
        }
    }

    fn peer_drop(&mut self, why: PeerDrop) -> PeerAction {
        self.stats.peer_drops[why as usize] += 1;
        PeerAction::Drop(why)
    }

    // ---------------------------------------------------------------- timers

    /// When [`TurnServer::handle_timeout`] should next be called (monotonic milliseconds).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.timers.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Expires allocations and reservations due at `now`.
    pub fn handle_timeout(&mut self, now: Now, sockets: &mut dyn RelaySockets) {
        while let Some(&Reverse((at, slot, generation))) = self.timers.peek() {
            if at > now.millis {
                break;
            }
            self.timers.pop();
            if slot == u32::MAX {
                let (expired, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.reservations)
                    .into_iter()
                    .partition(|r| r.expires <= now.millis);
                self.reservations = kept;
                for r in expired {
                    sockets.release_reservation(r.token);
                }
                continue;
            }
            let Some(Some(alloc)) = self.slots.get(slot as usize) else {
                continue;
            };
            if alloc.generation != generation {
                continue;
            }
            if alloc.expires <= now.millis {
                self.delete(slot, sockets);
                self.stats.allocations_expired += 1;
            } else {
                // Refreshed since this entry was queued: one entry per allocation at a time.
                self.timers.push(Reverse((alloc.expires, slot, generation)));
            }
        }
    }

    /// The relayed addresses (advertised) of the allocation on `client`, for tests and
    /// diagnostics.
    pub fn relayed_addresses(&self, client: &ClientKey) -> Vec<SocketAddr> {
        self.by_client
            .get(client)
            .and_then(|&s| self.slots[s as usize].as_ref())
            .map(|a| a.relays.iter().flatten().map(|r| r.advertised).collect())
            .unwrap_or_default()
    }
}

struct Plan {
    families: [Option<PortRequest>; 2],
    additional: bool,
    lifetime: u32,
}

fn install_permission(alloc: &mut Allocation, ip: IpAddr, expires: u64) {
    match alloc.permissions.iter_mut().find(|p| p.ip == ip) {
        Some(p) => p.expires = expires,
        None => alloc.permissions.push(Permission { ip, expires }),
    }
}

fn deny_index(reason: DenyReason) -> usize {
    DenyReason::ALL
        .iter()
        .position(|r| *r == reason)
        .unwrap_or(0)
}

/// PASSWORD-ALGORITHMS as this server offers them: SHA-256 first, then MD5 (RFC 8489 §14.11).
const PASSWORD_ALGORITHMS: [u8; 8] = [0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00];

/// A reply to the client that sent `msg`, from the address it used.
fn reply_to(msg: &Incoming<'_>, error: Option<u16>) -> Action {
    Action::Reply {
        from: msg.local,
        to: msg.remote,
        error,
        path: Path::Fast,
    }
}

/// The error reply to an unauthenticated request written at `out[start..]`, or a drop when it
/// is over the amplification bound.
fn bounded_reply(msg: &Incoming<'_>, out: &mut Vec<u8>, start: usize, code: u16) -> Action {
    if out.len() - start > unauthenticated_limit(msg.data.len()) {
        out.truncate(start);
        return Action::Drop(DropReason::Amplification);
    }
    reply_to(msg, Some(code))
}

fn unauthenticated_limit(request_len: usize) -> usize {
    crate::reply_limit(request_len).max(UNAUTHENTICATED_REPLY_LIMIT)
}
