//! `turn-load`: a TURN (RFC 8656) load generator over UDP, for loopback benchmarks.
//!
//! Each allocation is one client UDP socket (TURN keys allocations by 5-tuple). One thread
//! drives every socket with `recvmmsg`/`sendmmsg`, sleeping in epoll (`mio`) when nothing is
//! ready; the protocol side (builders, long-term auth, parsers) is `turnpike_proto::turn_client`.
//!
//! Modes:
//!
//! * `relay` (default): every allocation does Allocate (answering the 401 challenge with
//!   long-term credentials), CreatePermission and ChannelBind for an echo peer that this tool
//!   runs on loopback, then keeps `--window` ChannelData messages in flight, each carrying a
//!   sequence slot and its send time. The echo peer returns every datagram to its source (the
//!   relayed address), the server turns it back into ChannelData, and the round trip goes into
//!   a histogram (kernel receive timestamps). Reports round trips/s, loss, latency, setup time.
//! * `alloc`: `--allocations` sockets each run Allocate + Refresh(LIFETIME 0) cycles as fast
//!   as the server answers, reusing the nonce (a 438 Stale Nonce is answered and counted).
//!   Reports allocations/s and errors by code.
//! * `hold`: sets up `--allocations` allocations, prints `ready` (and creates `--ready-file`),
//!   keeps them refreshed for `--duration` seconds or until SIGINT/SIGTERM, so a script can
//!   read the server's memory, then deletes them.
//!
//! A server that never challenges (a success to the unauthenticated Allocate) is fine.
//! Credentials: `--secret` (TURN REST API: user `EXPIRY:load-N`, password
//! base64(HMAC-SHA1(secret, user))) or `--user`/`--password`.
//!
//! Everything is bounded: setup by `--setup-timeout`, the measurement by `--duration` (at most
//! 120 s), the drain by `--timeout`, the final deletion by 2 s.

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use clap::{Parser, ValueEnum};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use turnpike_bench::hist::Histogram;
use turnpike_bench::sys::{self, MSG_DONTWAIT, MmsgBatch};
use turnpike_proto::turn_client::{
    Allocate, Challenge, ChannelNumber, Credentials, LongTermAuth, Request, channel_data,
    parse_channel_data, parse_response,
};

/// Hard cap on `--duration` (seconds).
const MAX_DURATION_S: f64 = 120.0;
/// Datagrams per `recvmmsg`.
const RECV_BATCH: usize = 64;
/// Messages per `sendmmsg`.
const SEND_BATCH: usize = 64;
/// `recvmmsg` calls per socket before other sockets get a turn.
const RECV_ROUNDS: usize = 8;
/// First retransmission timeout of a request; doubles up to [`RTO_MAX_NS`].
const RTO_NS: u64 = 300_000_000;
const RTO_MAX_NS: u64 = 2_000_000_000;
/// Sends of one request before the transaction fails (about 8 s in all).
const MAX_TRIES: u32 = 6;
/// Ports that alloc mode walks through (one per cycle) on each socket's own address.
const CYCLE_PORTS: std::ops::RangeInclusive<u16> = 20000..=60999;
/// New sockets tried by one allocation after 437 Allocation Mismatch during setup.
const MAX_REOPEN: u8 = 3;
/// Challenge rounds (401/438) answered for one request before giving up.
const MAX_AUTH_ROUNDS: u8 = 3;
/// How often requests are checked for retransmission and data slots for expiry.
const TIMER_EVERY_NS: u64 = 2_000_000;
/// Payload header: magic, allocation, slot, generation, send time.
const PAYLOAD_HEADER: usize = 24;
const PAYLOAD_MAGIC: u32 = 0x5450_4C31; // "TPL1"
/// The channel every allocation binds to the echo peer.
const CHANNEL: ChannelNumber = ChannelNumber::MIN;
/// Pause of a socket after an error response in alloc mode.
const ERROR_BACKOFF_NS: u64 = 10_000_000;
/// Time allowed for deleting the allocations at the end.
const CLEANUP_NS: u64 = 2_000_000_000;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// Relay ChannelData through the server to an echo peer and back.
    Relay,
    /// Allocate + Refresh(0) cycles as fast as possible.
    Alloc,
    /// Set up allocations and hold them (for memory measurements).
    Hold,
}

/// TURN load generator (relay round trips, allocation rate, or held allocations).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TURN server (UDP), e.g. 127.0.0.1:3478.
    #[arg(long)]
    server: SocketAddr,
    /// What to measure.
    #[arg(long, value_enum, default_value_t = Mode::Relay)]
    mode: Mode,
    /// Allocations (client sockets). In alloc mode: sockets cycling concurrently.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=60000))]
    allocations: u32,
    /// TURN REST API shared secret (coturn static-auth-secret, turnpike --auth-secret).
    #[arg(long, conflicts_with_all = ["user", "password"])]
    secret: Option<String>,
    /// Long-term credentials: username (with --password).
    #[arg(long, requires = "password")]
    user: Option<String>,
    /// Long-term credentials: password (with --user).
    #[arg(long, requires = "user")]
    password: Option<String>,
    /// Address of the echo peer this tool runs (relay mode); an unspecified IP means loopback.
    #[arg(long, default_value = "127.0.0.1:0")]
    peer_bind: SocketAddr,
    /// ChannelData payload size in bytes (relay mode).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(24..=8192))]
    payload: u16,
    /// Outstanding ChannelData messages per allocation (relay mode).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    window: u32,
    /// Measured seconds (relay, alloc), or seconds to hold (hold); at most 120.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring (relay, alloc).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds after which a ChannelData message without echo counts as lost; also the drain.
    #[arg(long, default_value_t = 1.0)]
    timeout: f64,
    /// Seconds allowed for setting up all allocations.
    #[arg(long, default_value_t = 60.0)]
    setup_timeout: f64,
    /// Allocations being set up at the same time.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    setup_window: u32,
    /// Lifetime of the REST API credentials, in seconds from now.
    #[arg(long, default_value_t = 86400)]
    credential_ttl: u64,
    /// Hold mode: create this file once every allocation is set up.
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
    /// Pid of the server: its CPU time during the measured period is reported.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Allow a server outside loopback (off by default: this tool floods its target).
    #[arg(long)]
    allow_non_loopback: bool,
    /// Free-form label copied into the JSON output.
    #[arg(long)]
    label: Option<String>,
    /// Print one JSON object on stdout (the human summary goes to stderr).
    #[arg(long)]
    json: bool,
}

/// What a transaction asks for; kept to rebuild the request after a challenge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Allocate,
    CreatePermission,
    ChannelBind,
    Refresh,
    Delete,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Allocate => "Allocate",
            Kind::CreatePermission => "CreatePermission",
            Kind::ChannelBind => "ChannelBind",
            Kind::Refresh => "Refresh",
            Kind::Delete => "Refresh(0)",
        }
    }
}

/// One outstanding request.
struct Txn {
    kind: Kind,
    tid: [u8; 12],
    bytes: Vec<u8>,
    signed: bool,
    first_sent_ns: u64,
    next_ns: u64,
    rto_ns: u64,
    tries: u32,
    auth_rounds: u8,
}

/// Where an allocation is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not started yet.
    Idle,
    /// A setup request is outstanding.
    Setup,
    /// Set up: relaying (relay), held (hold).
    Ready,
    /// Alloc mode: waiting after an error response.
    Backoff(u64),
    /// Deleted at the end.
    Deleted,
    /// Gave up (see the error list).
    Failed,
}

/// One ChannelData slot (relay mode).
#[derive(Clone, Copy, Default)]
struct Slot {
    sent_ns: u64,
    generation: u32,
    in_use: bool,
    measured: bool,
}

struct Alloc {
    sock: Socket,
    fd: RawFd,
    bind_ip: IpAddr,
    /// Sockets replaced after a 437 during setup.
    reopened: u8,
    /// Alloc mode: offset of the last port used in [`CYCLE_PORTS`].
    next_port: u32,
    auth: LongTermAuth,
    phase: Phase,
    txn: Option<Txn>,
    relayed: Option<SocketAddr>,
    lifetime_s: u32,
    refresh_at_ns: u64,
    setup_start_ns: u64,
    queued: bool,
    slots: Vec<Slot>,
    free: Vec<u32>,
    inflight: usize,
    fifo: VecDeque<(u32, u32)>,
    in_refill: bool,
}

#[derive(Default)]
struct Stats {
    // relay
    sent: u64,
    received: u64,
    lost: u64,
    late: u64,
    data_indications: u64,
    rtt: Histogram,
    // alloc
    allocations: u64,
    cycles: u64,
    alloc_rtt: Histogram,
    errors_by_code: BTreeMap<u16, u64>,
    // all
    challenges: u64,
    stale_nonce: u64,
    retransmits: u64,
    refreshes: u64,
    invalid: u64,
    unmatched: u64,
    refused: u64,
    send_errors: u64,
    recv_errors: u64,
    setup: Histogram,
}

/// A small non-cryptographic generator for transaction ids (splitmix64).
struct Rng(u64);

impl Rng {
    fn seeded() -> Self {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Rng(t ^ (u64::from(std::process::id()) << 32))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let x = self.0;
        let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    }

    fn tid(&mut self) -> [u8; 12] {
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&self.next().to_be_bytes());
        t[8..].copy_from_slice(&self.next().to_be_bytes()[..4]);
        t
    }
}

/// The echo peer: returns every datagram to its source.
struct Peer {
    /// Kept open for the whole run.
    _sock: Socket,
    fd: RawFd,
    addr: SocketAddr,
    rx: MmsgBatch,
    tx: MmsgBatch,
    echoed: u64,
}

struct Load {
    args: Args,
    have_credentials: bool,
    poll: Poll,
    events: Events,
    allocs: Vec<Alloc>,
    peer: Option<Peer>,
    /// Taken out while its datagrams are handled (see [`Load::drain_alloc`]).
    rx: Option<MmsgBatch>,
    tx: MmsgBatch,
    rng: Rng,
    stats: Stats,
    start: Instant,
    /// Error messages (first few words identical → one entry) with counts.
    errors: BTreeMap<String, u64>,
    /// A problem that ends the run (e.g. credentials rejected in alloc mode).
    fatal: Option<String>,
    ready_list: Vec<usize>,
    refill: Vec<usize>,
    next_unstarted: usize,
    active_setups: usize,
    last_timer_ns: u64,
    measuring: bool,
    sending: bool,
    timeout_ns: u64,
    /// The payload being written, and the ChannelData message around it.
    payload_buf: Vec<u8>,
    scratch: Vec<u8>,
}

fn is_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECONNREFUSED)
}

fn encode_payload(buf: &mut [u8], alloc: u32, slot: u32, generation: u32, sent_rt_ns: u64) {
    buf[0..4].copy_from_slice(&PAYLOAD_MAGIC.to_be_bytes());
    buf[4..8].copy_from_slice(&alloc.to_be_bytes());
    buf[8..12].copy_from_slice(&slot.to_be_bytes());
    buf[12..16].copy_from_slice(&generation.to_be_bytes());
    buf[16..24].copy_from_slice(&sent_rt_ns.to_be_bytes());
}

/// (allocation, slot, generation, send time) of a payload of ours.
fn decode_payload(p: &[u8]) -> Option<(u32, u32, u32, u64)> {
    let h = p.get(..PAYLOAD_HEADER)?;
    let be32 = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
    if be32(0) != PAYLOAD_MAGIC {
        return None;
    }
    let mut t = [0u8; 8];
    t.copy_from_slice(&h[16..24]);
    Some((be32(4), be32(8), be32(12), u64::from_be_bytes(t)))
}

impl Load {
    /// Monotonic nanoseconds since the start.
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn note_error(&mut self, msg: String) {
        *self.errors.entry(msg).or_insert(0) += 1;
    }

    fn fail(&mut self, a: usize, msg: String) {
        let al = &mut self.allocs[a];
        if al.phase == Phase::Setup {
            self.active_setups = self.active_setups.saturating_sub(1);
        }
        al.phase = Phase::Failed;
        al.txn = None;
        self.note_error(msg);
    }

    /// Builds and sends a new transaction of `kind` on allocation `a`.
    fn send_request(&mut self, a: usize, kind: Kind, auth_rounds: u8) {
        let now = self.now();
        let tid = self.rng.tid();
        let peer = self.peer.as_ref().map(|p| p.addr);
        let al = &mut self.allocs[a];
        let mut bytes = al.txn.take().map(|t| t.bytes).unwrap_or_default();
        bytes.clear();
        let peers;
        let req = match kind {
            Kind::Allocate => Request::Allocate(Allocate::default()),
            Kind::Refresh => Request::Refresh {
                lifetime: al.lifetime_s,
                family: None,
            },
            Kind::Delete => Request::Refresh {
                lifetime: 0,
                family: None,
            },
            Kind::CreatePermission => {
                // Relay mode always has a peer.
                peers = [peer.expect("relay mode runs an echo peer")];
                Request::CreatePermission(&peers)
            }
            Kind::ChannelBind => Request::ChannelBind {
                channel: CHANNEL,
                peer: peer.expect("relay mode runs an echo peer"),
            },
        };
        // Requests this small always fit.
        let signed = req
            .encode(&mut bytes, &tid, Some(&al.auth), true)
            .expect("a TURN request of this tool fits in a STUN message");
        let r = al.sock.send(&bytes);
        al.txn = Some(Txn {
            kind,
            tid,
            bytes,
            signed,
            first_sent_ns: now,
            next_ns: now + RTO_NS,
            rto_ns: RTO_NS,
            tries: 1,
            auth_rounds,
        });
        if let Err(e) = r {
            self.on_send_error(a, &e);
        }
    }

    fn on_send_error(&mut self, a: usize, e: &io::Error) {
        if is_refused(e) {
            self.stats.refused += 1;
            let msg = format!(
                "no TURN server at {}: connection refused (ICMP port unreachable)",
                self.args.server
            );
            self.fail(a, msg);
        } else if e.kind() != io::ErrorKind::WouldBlock {
            self.stats.send_errors += 1;
        }
    }

    /// Replaces allocation `a`'s socket by a new one (a new 5-tuple) bound to `bind`,
    /// registered under the same token.
    fn reopen(&mut self, a: usize, bind: SocketAddr) -> Result<()> {
        let sock = open_client(bind, self.args.server)?;
        let fd = sock.as_raw_fd();
        let al = &mut self.allocs[a];
        let registry = self.poll.registry();
        // Deregistering a socket that is about to be closed cannot meaningfully fail.
        let _ = registry.deregister(&mut SourceFd(&al.fd));
        registry
            .register(&mut SourceFd(&fd), Token(a + 1), Interest::READABLE)
            .context("registering a client socket with epoll")?;
        al.sock = sock;
        al.fd = fd;
        al.relayed = None;
        Ok(())
    }

    /// Alloc mode: the next cycle of socket `a`, from a new 5-tuple, because servers may keep
    /// a deleted allocation's 5-tuple for a while (coturn until its next 1 s timer tick).
    /// With an IPv4 loopback server each socket has its own source address (127.1.x.y) and
    /// walks through ports [`CYCLE_PORTS`] in order, so a 5-tuple repeats only after tens of
    /// thousands of cycles of that socket; the source IP stays the same, as it would for a
    /// real client. The nonce is kept, so a server whose nonces are bound to the 5-tuple
    /// answers 438 first (counted).
    fn next_cycle(&mut self, a: usize) {
        let r = if self.allocs[a].bind_ip.is_loopback() && self.allocs[a].bind_ip.is_ipv4() {
            self.reopen_next_port(a)
        } else {
            let ip = self.allocs[a].bind_ip;
            self.reopen(a, SocketAddr::new(ip, 0))
        };
        match r {
            Ok(()) => self.send_request(a, Kind::Allocate, 0),
            Err(e) => {
                let msg = format!("opening a client socket: {e:#}");
                self.fatal.get_or_insert(msg.clone());
                self.fail(a, msg);
            }
        }
    }

    /// Reopens socket `a` on the next free port of [`CYCLE_PORTS`] at its address.
    fn reopen_next_port(&mut self, a: usize) -> Result<()> {
        let span = u32::from(CYCLE_PORTS.end() - CYCLE_PORTS.start()) + 1;
        let mut last = None;
        for _ in 0..64 {
            let al = &mut self.allocs[a];
            al.next_port = (al.next_port + 1) % span;
            let port = CYCLE_PORTS.start() + al.next_port as u16;
            match self.reopen(a, SocketAddr::new(self.allocs[a].bind_ip, port)) {
                Ok(()) => return Ok(()),
                // Taken by something else: try the next one.
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no free port")))
    }

    /// Starts setting up allocations while fewer than `--setup-window` are in progress.
    fn start_pending(&mut self) {
        while self.active_setups < self.args.setup_window as usize
            && self.next_unstarted < self.allocs.len()
        {
            let a = self.next_unstarted;
            self.next_unstarted += 1;
            self.active_setups += 1;
            let now = self.now();
            self.allocs[a].phase = Phase::Setup;
            self.allocs[a].setup_start_ns = now;
            self.send_request(a, Kind::Allocate, 0);
        }
    }

    fn setup_done(&mut self, a: usize) {
        let now = self.now();
        let al = &mut self.allocs[a];
        al.phase = Phase::Ready;
        al.refresh_at_ns = now + u64::from(al.lifetime_s.max(2)) * 500_000_000;
        let took = now.saturating_sub(al.setup_start_ns);
        self.stats.setup.record(took);
        self.active_setups = self.active_setups.saturating_sub(1);
        if self.args.mode == Mode::Relay {
            self.queue_refill(a);
        }
    }

    fn queue_refill(&mut self, a: usize) {
        if !self.allocs[a].in_refill {
            self.allocs[a].in_refill = true;
            self.refill.push(a);
        }
    }

    /// A STUN message arrived on allocation `a`'s socket.
    fn on_stun(&mut self, a: usize, bytes: &[u8]) {
        let resp = match parse_response(bytes) {
            Ok(r) => r,
            Err(_) => {
                self.stats.invalid += 1;
                return;
            }
        };
        let matches = self.allocs[a]
            .txn
            .as_ref()
            .is_some_and(|t| t.tid == resp.transaction_id);
        if !matches {
            // A late answer to a retransmitted request, or foreign.
            self.stats.unmatched += 1;
            return;
        }
        let now = self.now();
        // Checked just above.
        let txn = self.allocs[a].txn.take().expect("matched transaction");
        let server = self.args.server;
        if resp.is_success() {
            if txn.signed {
                if let Err(e) = self.allocs[a].auth.verify(&resp) {
                    let msg = format!(
                        "MESSAGE-INTEGRITY of the {} response from {server} does not verify: {e}",
                        txn.kind.name()
                    );
                    self.fail(a, msg);
                    return;
                }
            }
            self.on_success(a, txn, resp.relayed_address(), resp.lifetime, now);
            return;
        }
        let code = resp.error_code().unwrap_or(0);
        let reason = resp.error.map_or("", |e| e.reason).to_owned();
        let user = self.allocs[a].auth.credentials().username().to_owned();
        match self.allocs[a].auth.handle_challenge(&resp, txn.signed) {
            Challenge::Retry if !self.have_credentials => {
                let msg = format!(
                    "{server} asks for credentials ({code} {reason}): pass --secret, or --user and --password"
                );
                self.fatal.get_or_insert(msg.clone());
                self.fail(a, msg);
            }
            Challenge::Retry => {
                // Alloc mode counts what happens in the measured period only.
                if self.measuring || self.args.mode != Mode::Alloc {
                    if code == 438 {
                        self.stats.stale_nonce += 1;
                    } else {
                        self.stats.challenges += 1;
                    }
                }
                if txn.auth_rounds >= MAX_AUTH_ROUNDS {
                    let msg = format!(
                        "{server} keeps challenging the {} ({code} {reason}) after {MAX_AUTH_ROUNDS} signed tries",
                        txn.kind.name()
                    );
                    self.fail(a, msg);
                } else {
                    let (kind, rounds) = (txn.kind, txn.auth_rounds);
                    // Hand the buffer back for reuse.
                    self.allocs[a].txn = Some(txn);
                    self.send_request(a, kind, rounds + 1);
                }
            }
            Challenge::Rejected => {
                let msg = format!(
                    "{server} rejected the credentials of user '{user}' ({code} {reason} to a signed {}): wrong --secret or --password?",
                    txn.kind.name()
                );
                self.fatal.get_or_insert(msg.clone());
                self.fail(a, msg);
            }
            Challenge::UnsupportedAlgorithm => {
                let msg = format!(
                    "{server} offers no password algorithm this client implements (MD5, SHA-256)"
                );
                self.fatal.get_or_insert(msg.clone());
                self.fail(a, msg);
            }
            Challenge::BadChallenge => {
                let msg = format!("{server} sent {code} without a usable REALM and NONCE");
                self.fail(a, msg);
            }
            Challenge::NotAChallenge => self.on_error(a, txn, code, &reason, now),
        }
    }

    fn on_success(
        &mut self,
        a: usize,
        txn: Txn,
        relayed: Option<SocketAddr>,
        lifetime: Option<u32>,
        now: u64,
    ) {
        let mode = self.args.mode;
        match txn.kind {
            Kind::Allocate => {
                let Some(relayed) = relayed else {
                    let msg = format!(
                        "Allocate success from {} without XOR-RELAYED-ADDRESS",
                        self.args.server
                    );
                    self.fail(a, msg);
                    return;
                };
                self.allocs[a].relayed = Some(relayed);
                self.allocs[a].lifetime_s = lifetime.unwrap_or(600);
                match mode {
                    Mode::Relay => self.send_request(a, Kind::CreatePermission, 0),
                    Mode::Hold => self.setup_done(a),
                    Mode::Alloc => {
                        if self.measuring {
                            self.stats.allocations += 1;
                            self.stats
                                .alloc_rtt
                                .record(now.saturating_sub(txn.first_sent_ns));
                        }
                        self.send_request(a, Kind::Delete, 0);
                    }
                }
            }
            Kind::CreatePermission => self.send_request(a, Kind::ChannelBind, 0),
            Kind::ChannelBind => self.setup_done(a),
            Kind::Refresh => {
                self.stats.refreshes += 1;
                let al = &mut self.allocs[a];
                al.lifetime_s = lifetime.unwrap_or(al.lifetime_s);
                al.refresh_at_ns = now + u64::from(al.lifetime_s.max(2)) * 500_000_000;
            }
            Kind::Delete => {
                self.allocs[a].relayed = None;
                match mode {
                    Mode::Alloc if self.sending => {
                        if self.measuring {
                            self.stats.cycles += 1;
                        }
                        self.next_cycle(a);
                    }
                    _ => self.allocs[a].phase = Phase::Deleted,
                }
            }
        }
    }

    fn on_error(&mut self, a: usize, txn: Txn, code: u16, reason: &str, now: u64) {
        let server = self.args.server;
        if self.args.mode == Mode::Alloc && self.sending {
            if self.measuring {
                *self.stats.errors_by_code.entry(code).or_insert(0) += 1;
            }
            match (txn.kind, code) {
                // The 5-tuple still has an allocation (a server may delete lazily): move on.
                (Kind::Allocate, 437) => self.next_cycle(a),
                // The allocation is already gone.
                (Kind::Delete, 437) => self.send_request(a, Kind::Allocate, 0),
                _ => self.allocs[a].phase = Phase::Backoff(now + ERROR_BACKOFF_NS),
            }
            return;
        }
        if txn.kind == Kind::Delete {
            // Deleting at the end: whatever the answer, it is over.
            self.allocs[a].phase = Phase::Deleted;
            return;
        }
        if txn.kind == Kind::Allocate && code == 437 && self.allocs[a].reopened < MAX_REOPEN {
            // This 5-tuple still has an allocation on the server, e.g. from an earlier run on
            // the same ephemeral port that the server has not deleted yet: use another port.
            self.allocs[a].reopened += 1;
            let bind = SocketAddr::new(self.allocs[a].bind_ip, 0);
            if let Err(e) = self.reopen(a, bind) {
                self.fail(a, format!("reopening a client socket: {e:#}"));
                return;
            }
            self.send_request(a, Kind::Allocate, 0);
            return;
        }
        let msg = format!("{} failed on {server}: {code} {reason}", txn.kind.name());
        self.fail(a, msg);
    }

    /// A ChannelData message (or Data indication) arrived on allocation `a`.
    fn on_channel_data(&mut self, a: usize, bytes: &[u8], t_rt: u64) {
        let Ok(cd) = parse_channel_data(bytes) else {
            self.stats.invalid += 1;
            return;
        };
        let Some((alloc, slot, generation, sent)) = decode_payload(cd.payload) else {
            self.stats.invalid += 1;
            return;
        };
        let al = &mut self.allocs[a];
        let ok = alloc as usize == a
            && (slot as usize) < al.slots.len()
            && al.slots[slot as usize].in_use
            && al.slots[slot as usize].generation == generation;
        if !ok {
            self.stats.late += 1;
            return;
        }
        let s = &mut al.slots[slot as usize];
        s.in_use = false;
        al.free.push(slot);
        al.inflight -= 1;
        if s.measured {
            self.stats.received += 1;
            self.stats.rtt.record(t_rt.saturating_sub(sent));
        }
        self.queue_refill(a);
    }

    /// Reads what is queued on allocation `a`; returns true if it may have more.
    fn drain_alloc(&mut self, a: usize) -> bool {
        // The batch is taken out so that its datagrams can be read while the handlers change
        // the rest of the state; it is always put back.
        let Some(mut rx) = self.rx.take() else {
            return false;
        };
        let more = self.drain_alloc_with(a, &mut rx);
        self.rx = Some(rx);
        more
    }

    fn drain_alloc_with(&mut self, a: usize, rx: &mut MmsgBatch) -> bool {
        for _ in 0..RECV_ROUNDS {
            let fd = self.allocs[a].fd;
            match rx.recv(fd, MSG_DONTWAIT, false) {
                Ok(n) => {
                    let now_rt = sys::realtime_ns();
                    for i in 0..n {
                        let t = rx.rx_timestamp_ns(i).unwrap_or(now_rt).min(now_rt);
                        let d = rx.received(i);
                        match d.first().map(|b| b >> 6) {
                            Some(0b01) => self.on_channel_data(a, d, t),
                            Some(0b00) if d.get(0..2) == Some(&[0x01, 0x17][..]) => {
                                // A Data indication: the server had no channel for the peer.
                                self.stats.data_indications += 1;
                            }
                            Some(0b00) => self.on_stun(a, d),
                            _ => self.stats.invalid += 1,
                        }
                    }
                    if n < rx.capacity() {
                        return false;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_refused(&e) => {
                    self.stats.refused += 1;
                    if self.allocs[a].txn.is_some() {
                        let msg = format!(
                            "no TURN server at {}: connection refused (ICMP port unreachable)",
                            self.args.server
                        );
                        self.fail(a, msg);
                    }
                }
                Err(_) => {
                    self.stats.recv_errors += 1;
                    return false;
                }
            }
        }
        true
    }

    /// Echoes what the peer socket received; returns true if it may have more.
    fn drain_peer(&mut self) -> bool {
        let Some(p) = self.peer.as_mut() else {
            return false;
        };
        for _ in 0..RECV_ROUNDS {
            let n = match p.rx.recv(p.fd, MSG_DONTWAIT, true) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            let mut out = 0;
            for i in 0..n {
                let Some(src) = p.rx.source(i) else { continue };
                let d = p.rx.received(i);
                let len = d.len();
                p.tx.buf_mut(out)[..len].copy_from_slice(d);
                p.tx.set_len(out, len);
                p.tx.set_dest(out, Some(src));
                out += 1;
            }
            let mut done = 0;
            while done < out {
                match p.tx.send(p.fd, done..out, 0) {
                    Ok(k) => done += k.max(1),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => done += 1,
                }
            }
            p.echoed += out as u64;
            if n < p.rx.capacity() {
                return false;
            }
        }
        true
    }

    /// Waits up to `wait` for readiness and handles everything that is ready.
    fn pump(&mut self, wait: Duration) -> Result<()> {
        let wait = if self.ready_list.is_empty() {
            wait
        } else {
            Duration::ZERO
        };
        match self.poll.poll(&mut self.events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("epoll"),
        }
        let mut peer_ready = false;
        for ev in self.events.iter() {
            let t = ev.token().0;
            if t == 0 {
                peer_ready = true;
            } else if let Some(al) = self.allocs.get_mut(t - 1) {
                if !al.queued {
                    al.queued = true;
                    self.ready_list.push(t - 1);
                }
            }
        }
        if peer_ready {
            while self.drain_peer() {}
        }
        let list = std::mem::take(&mut self.ready_list);
        for &a in &list {
            self.allocs[a].queued = false;
        }
        for a in list {
            if self.drain_alloc(a) && !self.allocs[a].queued {
                self.allocs[a].queued = true;
                self.ready_list.push(a);
            }
        }
        // The peer may have echoed more in the meantime; echo it now rather than after the
        // next wake-up (edge-triggered readiness already reported it).
        while self.drain_peer() {}
        let now = self.now();
        if now >= self.last_timer_ns + TIMER_EVERY_NS {
            self.last_timer_ns = now;
            self.timers(now);
        }
        Ok(())
    }

    /// Retransmissions, transaction failures, refreshes, backoffs and data-slot expiry.
    fn timers(&mut self, now: u64) {
        let server = self.args.server;
        let hold = self.args.mode == Mode::Hold;
        for a in 0..self.allocs.len() {
            let al = &mut self.allocs[a];
            if let Some(t) = al.txn.as_mut() {
                if now < t.next_ns {
                    continue;
                }
                if t.tries >= MAX_TRIES {
                    let secs = now.saturating_sub(t.first_sent_ns) as f64 / 1e9;
                    let msg = format!(
                        "no response from {server} to {} after {} tries in {secs:.1} s: is a TURN server listening there?",
                        t.kind.name(),
                        t.tries
                    );
                    self.fail(a, msg);
                    continue;
                }
                t.tries += 1;
                t.rto_ns = (t.rto_ns * 2).min(RTO_MAX_NS);
                t.next_ns = now + t.rto_ns;
                self.stats.retransmits += 1;
                if let Err(e) = al.sock.send(&t.bytes) {
                    self.on_send_error(a, &e);
                }
                continue;
            }
            match al.phase {
                Phase::Ready if hold && now >= al.refresh_at_ns => {
                    self.send_request(a, Kind::Refresh, 0);
                }
                Phase::Backoff(until) if now >= until => {
                    al.phase = Phase::Setup;
                    self.send_request(a, Kind::Allocate, 0);
                }
                _ => {}
            }
        }
        if self.args.mode == Mode::Relay {
            self.expire();
        }
    }

    /// Frees data slots outstanding for longer than the timeout (counted lost if measured).
    fn expire(&mut self) {
        let now_rt = sys::realtime_ns();
        for a in 0..self.allocs.len() {
            let al = &mut self.allocs[a];
            let mut freed = false;
            while let Some(&(slot, generation)) = al.fifo.front() {
                let s = &mut al.slots[slot as usize];
                if !s.in_use || s.generation != generation {
                    al.fifo.pop_front();
                    continue;
                }
                if now_rt.saturating_sub(s.sent_ns) < self.timeout_ns {
                    break;
                }
                s.in_use = false;
                if s.measured {
                    self.stats.lost += 1;
                }
                al.free.push(slot);
                al.inflight -= 1;
                al.fifo.pop_front();
                freed = true;
            }
            if freed {
                self.queue_refill(a);
            }
        }
    }

    /// Fills the free window slots of the allocations queued for refill (relay mode).
    fn send_data(&mut self) {
        if !self.sending {
            self.refill.clear();
            for al in &mut self.allocs {
                al.in_refill = false;
            }
            return;
        }
        let window = self.args.window as usize;
        let list = std::mem::take(&mut self.refill);
        for a in list {
            self.allocs[a].in_refill = false;
            if self.allocs[a].phase != Phase::Ready {
                continue;
            }
            loop {
                let al = &mut self.allocs[a];
                let free = window.saturating_sub(al.inflight).min(SEND_BATCH);
                if free == 0 {
                    break;
                }
                let mut k = 0;
                while k < free {
                    let Some(slot) = al.free.pop() else { break };
                    let s = &mut al.slots[slot as usize];
                    s.generation = s.generation.wrapping_add(1);
                    s.in_use = true;
                    s.measured = self.measuring;
                    let now_rt = sys::realtime_ns();
                    s.sent_ns = now_rt;
                    let generation = s.generation;
                    encode_payload(&mut self.payload_buf, a as u32, slot, generation, now_rt);
                    self.scratch.clear();
                    // The payload is at most 8192 bytes, far below the ChannelData limit.
                    channel_data(&mut self.scratch, CHANNEL, &self.payload_buf, false)
                        .expect("payload fits ChannelData");
                    let len = self.scratch.len();
                    self.tx.buf_mut(k)[..len].copy_from_slice(&self.scratch);
                    self.tx.set_len(k, len);
                    al.fifo.push_back((slot, generation));
                    k += 1;
                }
                let fd = al.fd;
                let mut done = 0;
                while done < k {
                    match self.tx.send(fd, done..k, 0) {
                        Ok(n) => done += n.max(1),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            // The slot stays in use and expires as lost.
                            if is_refused(&e) {
                                self.stats.refused += 1;
                            } else {
                                self.stats.send_errors += 1;
                            }
                            done += 1;
                        }
                    }
                }
                let al = &mut self.allocs[a];
                al.inflight += k;
                if self.measuring {
                    self.stats.sent += k as u64;
                }
                if k < free {
                    break;
                }
            }
        }
    }

    /// Sets up every allocation (relay and hold modes), bounded by `--setup-timeout`.
    fn run_setup(&mut self) -> Result<f64> {
        let t0 = self.now();
        let deadline = t0 + (self.args.setup_timeout * 1e9) as u64;
        loop {
            self.start_pending();
            let done = self
                .allocs
                .iter()
                .all(|a| matches!(a.phase, Phase::Ready | Phase::Failed));
            if done || self.fatal.is_some() || sys::stop_requested() {
                break;
            }
            if self.now() >= deadline {
                let n = self
                    .allocs
                    .iter()
                    .filter(|a| !matches!(a.phase, Phase::Ready | Phase::Failed))
                    .count();
                self.note_error(format!(
                    "{n} allocations not set up within --setup-timeout {} s",
                    self.args.setup_timeout
                ));
                for a in 0..self.allocs.len() {
                    if !matches!(self.allocs[a].phase, Phase::Ready | Phase::Failed) {
                        self.allocs[a].phase = Phase::Failed;
                        self.allocs[a].txn = None;
                    }
                }
                break;
            }
            self.pump(Duration::from_millis(2))?;
        }
        Ok((self.now() - t0) as f64 / 1e9)
    }

    fn ready_count(&self) -> usize {
        self.allocs
            .iter()
            .filter(|a| a.phase == Phase::Ready)
            .count()
    }

    fn inflight(&self) -> usize {
        self.allocs.iter().map(|a| a.inflight).sum()
    }

    /// Warmup, measured period and drain of relay or alloc mode. Returns the measured
    /// seconds, the server CPU ticks and this process's CPU time during them, and why it
    /// stopped.
    fn run_load(&mut self) -> Result<(f64, Option<u64>, Duration, &'static str)> {
        let warmup_ns = (self.args.warmup * 1e9) as u64;
        let measure_ns = (self.args.duration * 1e9) as u64;
        let t0 = self.now();
        self.sending = true;
        if self.args.mode == Mode::Alloc {
            for a in 0..self.allocs.len() {
                self.allocs[a].phase = Phase::Setup;
                self.send_request(a, Kind::Allocate, 0);
            }
        } else {
            for a in 0..self.allocs.len() {
                self.queue_refill(a);
            }
        }
        let mut ticks0 = None;
        let mut cpu0 = Duration::ZERO;
        let mut m0 = 0;
        let mut stopped_by = "duration";
        loop {
            let now = self.now();
            if !self.measuring && now >= t0 + warmup_ns {
                self.measuring = true;
                m0 = now;
                cpu0 = sys::process_cpu_time();
                ticks0 = self
                    .args
                    .server_pid
                    .and_then(|p| turnpike_bench::process_ticks(Some(p)));
            }
            if self.measuring && now >= m0 + measure_ns {
                break;
            }
            if sys::stop_requested() {
                stopped_by = "signal";
                break;
            }
            if self.fatal.is_some() {
                stopped_by = "error";
                break;
            }
            if self.args.mode == Mode::Alloc && self.allocs.iter().all(|a| a.phase == Phase::Failed)
            {
                stopped_by = "error";
                break;
            }
            self.send_data();
            self.pump(Duration::from_millis(1))?;
        }
        let m1 = self.now();
        let cpu = sys::process_cpu_time().saturating_sub(cpu0);
        let ticks1 = self
            .args
            .server_pid
            .and_then(|p| turnpike_bench::process_ticks(Some(p)));
        let server_ticks = match (ticks0, ticks1) {
            (Some(a), Some(b)) => Some(b.saturating_sub(a)),
            _ => None,
        };
        let was_measuring = self.measuring;
        self.sending = false;
        // Drain: wait for the echoes (or their timeout) and for outstanding requests.
        let drain_end = m1 + self.timeout_ns + 2 * TIMER_EVERY_NS;
        while self.now() < drain_end {
            let busy = self.inflight() > 0 || self.allocs.iter().any(|a| a.txn.is_some());
            if !busy {
                break;
            }
            self.pump(Duration::from_millis(1))?;
        }
        self.measuring = false;
        // Whatever is still outstanding is lost.
        if self.args.mode == Mode::Relay {
            self.timeout_ns = 0;
            self.expire();
        }
        let secs = if was_measuring {
            (m1 - m0) as f64 / 1e9
        } else {
            0.0
        };
        Ok((secs, server_ticks, cpu, stopped_by))
    }

    /// Holds the allocations (refreshing them) for `--duration` or until a signal; returns
    /// the seconds held, this process's CPU time meanwhile, and why it stopped.
    fn run_hold(&mut self) -> Result<(f64, Duration, &'static str)> {
        let t0 = self.now();
        let cpu0 = sys::process_cpu_time();
        let end = t0 + (self.args.duration * 1e9) as u64;
        let mut why = "duration";
        while self.now() < end {
            if sys::stop_requested() {
                why = "signal";
                break;
            }
            self.pump(Duration::from_millis(50))?;
        }
        let secs = (self.now() - t0) as f64 / 1e9;
        Ok((secs, sys::process_cpu_time().saturating_sub(cpu0), why))
    }

    /// Deletes every allocation (Refresh with LIFETIME 0), waiting at most 2 s.
    fn cleanup(&mut self) -> Result<usize> {
        self.sending = false;
        for a in 0..self.allocs.len() {
            let al = &self.allocs[a];
            if al.relayed.is_some() && matches!(al.phase, Phase::Ready | Phase::Setup) {
                self.allocs[a].phase = Phase::Setup;
                self.send_request(a, Kind::Delete, 0);
            } else {
                self.allocs[a].txn = None;
            }
        }
        let end = self.now() + CLEANUP_NS;
        while self.now() < end && self.allocs.iter().any(|a| a.txn.is_some()) {
            self.pump(Duration::from_millis(5))?;
        }
        Ok(self
            .allocs
            .iter()
            .filter(|a| a.phase == Phase::Deleted)
            .count())
    }
}

/// The JSON result (fields that do not apply to a mode are 0).
#[derive(Serialize)]
struct Report {
    label: Option<String>,
    server: String,
    mode: Mode,
    allocations: u32,
    ready: usize,
    setup_failed: usize,
    setup_s: f64,
    setup_p50_ms: f64,
    setup_max_ms: f64,
    payload: u16,
    window: u32,
    warmup_s: f64,
    measured_s: f64,
    sent: u64,
    received: u64,
    lost: u64,
    late: u64,
    data_indications: u64,
    round_trips_per_sec: f64,
    rtt_min_us: f64,
    rtt_mean_us: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
    allocations_ok: u64,
    cycles: u64,
    allocations_per_sec: f64,
    alloc_p50_us: f64,
    alloc_p99_us: f64,
    errors_by_code: BTreeMap<String, u64>,
    challenges: u64,
    stale_nonce_retries: u64,
    retransmits: u64,
    refreshes: u64,
    invalid: u64,
    unmatched: u64,
    refused: u64,
    send_errors: u64,
    recv_errors: u64,
    echoed: u64,
    deleted: usize,
    server_cpu_s: Option<f64>,
    server_cpu_pct: Option<f64>,
    /// Server CPU per round trip (relay) or per allocation (alloc), in microseconds.
    server_cpu_us_per_op: Option<f64>,
    /// This process's CPU use during the measured (or held) period, % of one core.
    client_cpu_pct: f64,
    stopped_by: &'static str,
    errors: BTreeMap<String, u64>,
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

fn ms(ns: u64) -> f64 {
    (ns as f64 / 10_000.0).round() / 100.0
}

fn per_sec(count: u64, secs: f64) -> f64 {
    if secs <= 0.0 {
        0.0
    } else {
        (count as f64 / secs).round()
    }
}

fn clock_ticks_per_sec() -> f64 {
    // Linux reports /proc/<pid>/stat times in USER_HZ, which is 100 on every architecture
    // Linux supports today.
    100.0
}

fn open_client(bind: SocketAddr, server: SocketAddr) -> Result<Socket> {
    let sock = Socket::new(
        Domain::for_address(server),
        Type::DGRAM,
        Some(Protocol::UDP),
    )
    .map_err(|e| {
        if e.raw_os_error() == Some(libc::EMFILE) || e.raw_os_error() == Some(libc::ENFILE) {
            anyhow::anyhow!("{e}: raise the open-file limit (ulimit -n) above --allocations + 16")
        } else {
            anyhow::Error::from(e).context("creating a client socket")
        }
    })?;
    let _ = sock.set_recv_buffer_size(256 << 10);
    let _ = sock.set_send_buffer_size(256 << 10);
    sock.bind(&bind.into())
        .with_context(|| format!("binding a client socket to {bind}"))?;
    // Connected: the kernel filters other sources and reports ICMP port unreachable.
    sock.connect(&server.into())
        .with_context(|| format!("connecting a client socket to {server}"))?;
    sock.set_nonblocking(true)?;
    sys::enable_rx_timestamps(sock.as_raw_fd()).context("enabling SO_TIMESTAMPNS")?;
    Ok(sock)
}

fn open_peer(bind: SocketAddr, payload: usize) -> Result<Peer> {
    let bind = if bind.ip().is_unspecified() {
        SocketAddr::new(
            match bind {
                SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            },
            bind.port(),
        )
    } else {
        bind
    };
    let sock = Socket::new(Domain::for_address(bind), Type::DGRAM, Some(Protocol::UDP))?;
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&bind.into())
        .with_context(|| format!("binding the echo peer to {bind}"))?;
    sock.set_nonblocking(true)?;
    let addr = sock
        .local_addr()?
        .as_socket()
        .context("echo peer address is not an IP address")?;
    let fd = sock.as_raw_fd();
    Ok(Peer {
        _sock: sock,
        fd,
        addr,
        rx: MmsgBatch::new(RECV_BATCH, payload + 64),
        tx: MmsgBatch::new(RECV_BATCH, payload + 64),
        echoed: 0,
    })
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("turn-load: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let args = Args::parse();
    ensure!(
        args.duration.is_finite() && args.duration >= 0.0 && args.duration <= MAX_DURATION_S,
        "--duration must be between 0 and {MAX_DURATION_S} seconds"
    );
    ensure!(
        args.warmup.is_finite() && (0.0..=60.0).contains(&args.warmup),
        "--warmup must be between 0 and 60 seconds"
    );
    ensure!(
        args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 10.0,
        "--timeout must be in (0, 10] seconds"
    );
    ensure!(
        args.setup_timeout.is_finite() && args.setup_timeout > 0.0 && args.setup_timeout <= 300.0,
        "--setup-timeout must be in (0, 300] seconds"
    );
    if !args.allow_non_loopback && !args.server.ip().is_loopback() {
        bail!(
            "{} is not a loopback address; pass --allow-non-loopback to load a remote server",
            args.server
        );
    }
    sys::install_stop_signals().context("installing signal handlers")?;

    let bind = match args.server {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    let expiry = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + args.credential_ttl;
    let credentials = |i: u32| match (&args.secret, &args.user, &args.password) {
        (Some(s), _, _) => Credentials::rest(s.as_bytes(), expiry, &format!("load-{i}")),
        (None, Some(u), Some(p)) => Credentials::new(u.clone(), p.clone()),
        _ => Credentials::new("turn-load", ""),
    };
    let have_credentials = args.secret.is_some() || args.user.is_some();

    let poll = Poll::new().context("creating epoll")?;
    let payload = usize::from(args.payload);
    let peer = if args.mode == Mode::Relay {
        let p = open_peer(args.peer_bind, payload)?;
        poll.registry()
            .register(&mut SourceFd(&p.fd), Token(0), Interest::READABLE)
            .context("registering the echo peer with epoll")?;
        Some(p)
    } else {
        None
    };
    let window = if args.mode == Mode::Relay {
        args.window as usize
    } else {
        0
    };
    let mut allocs = Vec::with_capacity(args.allocations as usize);
    let alloc_mode_v4 =
        args.mode == Mode::Alloc && matches!(args.server.ip(), IpAddr::V4(ip) if ip.is_loopback());
    for i in 0..args.allocations {
        // Alloc mode: one source address per socket (127.1.0.1, ...; all of 127/8 is
        // loopback on Linux) whose ports it walks through, see `Load::next_cycle`.
        let ip = if alloc_mode_v4 {
            let j = i + 1;
            IpAddr::V4(Ipv4Addr::new(
                127,
                1 + (j >> 16) as u8,
                (j >> 8) as u8,
                j as u8,
            ))
        } else {
            bind
        };
        let sock = open_client(SocketAddr::new(ip, 0), args.server)?;
        let fd = sock.as_raw_fd();
        poll.registry()
            .register(
                &mut SourceFd(&fd),
                Token(i as usize + 1),
                Interest::READABLE,
            )
            .context("registering a client socket with epoll")?;
        allocs.push(Alloc {
            sock,
            fd,
            bind_ip: ip,
            reopened: 0,
            next_port: i.wrapping_mul(7919) % u32::from(CYCLE_PORTS.end() - CYCLE_PORTS.start()),
            auth: LongTermAuth::new(credentials(i)),
            phase: Phase::Idle,
            txn: None,
            relayed: None,
            lifetime_s: 600,
            refresh_at_ns: u64::MAX,
            setup_start_ns: 0,
            queued: false,
            slots: vec![Slot::default(); window],
            free: (0..window as u32).rev().collect(),
            inflight: 0,
            fifo: VecDeque::with_capacity(window),
            in_refill: false,
        });
    }

    let timeout_ns = (args.timeout * 1e9) as u64;
    let mut load = Load {
        have_credentials,
        poll,
        events: Events::with_capacity(1024),
        allocs,
        peer,
        rx: Some(MmsgBatch::new(RECV_BATCH, payload + 64).with_timestamps()),
        tx: MmsgBatch::new(SEND_BATCH, payload + 8),
        rng: Rng::seeded(),
        stats: Stats::default(),
        start: Instant::now(),
        errors: BTreeMap::new(),
        fatal: None,
        ready_list: Vec::new(),
        refill: Vec::new(),
        next_unstarted: 0,
        active_setups: 0,
        last_timer_ns: 0,
        measuring: false,
        sending: false,
        timeout_ns,
        payload_buf: vec![0; payload],
        scratch: Vec::with_capacity(payload + 4),
        args,
    };

    let mode = load.args.mode;
    let mut setup_s = 0.0;
    if mode != Mode::Alloc {
        setup_s = load.run_setup()?;
        let ready = load.ready_count();
        let n = load.allocs.len();
        eprintln!(
            "turn-load: {ready} of {n} allocations set up on {} in {setup_s:.2} s",
            load.args.server
        );
        if ready == 0 {
            let why = load
                .fatal
                .clone()
                .or_else(|| load.errors.keys().next().cloned())
                .unwrap_or_else(|| "interrupted".to_owned());
            bail!("no allocation could be set up: {why}");
        }
    }
    let (measured_s, server_ticks, client_cpu, stopped_by) = match mode {
        Mode::Relay | Mode::Alloc => load.run_load()?,
        Mode::Hold => {
            eprintln!("turn-load: ready: {} allocations held", load.ready_count());
            if let Some(path) = &load.args.ready_file {
                std::fs::write(path, format!("{}\n", load.ready_count()))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let (secs, cpu, why) = load.run_hold()?;
            (secs, None, cpu, why)
        }
    };
    let deleted = load.cleanup()?;

    let st = &load.stats;
    let a = &load.args;
    let ready = if mode == Mode::Alloc {
        0
    } else {
        load.allocs
            .iter()
            .filter(|x| matches!(x.phase, Phase::Ready | Phase::Deleted))
            .count()
    };
    let setup_failed = if mode == Mode::Alloc {
        0
    } else {
        load.allocs.len() - ready
    };
    let ops = match mode {
        Mode::Relay => st.received,
        Mode::Alloc => st.allocations,
        Mode::Hold => 0,
    };
    let server_cpu_s = server_ticks.map(|t| t as f64 / clock_ticks_per_sec());
    let report = Report {
        label: a.label.clone(),
        server: a.server.to_string(),
        mode,
        allocations: a.allocations,
        ready,
        setup_failed,
        setup_s: (setup_s * 1000.0).round() / 1000.0,
        setup_p50_ms: ms(st.setup.quantile(0.5)),
        setup_max_ms: ms(st.setup.max()),
        payload: a.payload,
        window: a.window,
        warmup_s: a.warmup,
        measured_s: (measured_s * 1000.0).round() / 1000.0,
        sent: st.sent,
        received: st.received,
        lost: st.lost,
        late: st.late,
        data_indications: st.data_indications,
        round_trips_per_sec: per_sec(st.received, measured_s),
        rtt_min_us: us(st.rtt.min()),
        rtt_mean_us: us(st.rtt.mean() as u64),
        p50_us: us(st.rtt.quantile(0.5)),
        p90_us: us(st.rtt.quantile(0.9)),
        p99_us: us(st.rtt.quantile(0.99)),
        max_us: us(st.rtt.max()),
        allocations_ok: st.allocations,
        cycles: st.cycles,
        allocations_per_sec: per_sec(st.allocations, measured_s),
        alloc_p50_us: us(st.alloc_rtt.quantile(0.5)),
        alloc_p99_us: us(st.alloc_rtt.quantile(0.99)),
        errors_by_code: st
            .errors_by_code
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        challenges: st.challenges,
        stale_nonce_retries: st.stale_nonce,
        retransmits: st.retransmits,
        refreshes: st.refreshes,
        invalid: st.invalid,
        unmatched: st.unmatched,
        refused: st.refused,
        send_errors: st.send_errors,
        recv_errors: st.recv_errors,
        echoed: load.peer.as_ref().map_or(0, |p| p.echoed),
        deleted,
        server_cpu_s,
        server_cpu_pct: server_cpu_s
            .filter(|_| measured_s > 0.0)
            .map(|s| (s / measured_s * 1000.0).round() / 10.0),
        server_cpu_us_per_op: server_cpu_s
            .filter(|_| ops > 0)
            .map(|s| (s * 1e7 / ops as f64).round() / 10.0),
        client_cpu_pct: if measured_s > 0.0 {
            (client_cpu.as_secs_f64() / measured_s * 1000.0).round() / 10.0
        } else {
            0.0
        },
        stopped_by,
        errors: load.errors.clone(),
    };

    let mut human = format!(
        "turn-load {} mode={:?} allocations={} ready={} setup {:.2} s (p50 {} ms, max {} ms) stopped by {}\n",
        report.server,
        mode,
        report.allocations,
        report.ready,
        report.setup_s,
        report.setup_p50_ms,
        report.setup_max_ms,
        report.stopped_by
    );
    match mode {
        Mode::Relay => human.push_str(&format!(
            "relay: {} round trips/s over {:.2} s (payload {} B, window {}): sent {} received {} lost {} late {}\n\
             rtt us: min {} mean {} p50 {} p90 {} p99 {} max {}\n",
            report.round_trips_per_sec,
            report.measured_s,
            report.payload,
            report.window,
            report.sent,
            report.received,
            report.lost,
            report.late,
            report.rtt_min_us,
            report.rtt_mean_us,
            report.p50_us,
            report.p90_us,
            report.p99_us,
            report.max_us
        )),
        Mode::Alloc => human.push_str(&format!(
            "alloc: {} allocations/s over {:.2} s ({} allocations, {} cycles; Allocate p50 {} us, p99 {} us); \
             challenges {} stale-nonce retries {} errors by code {:?}\n",
            report.allocations_per_sec,
            report.measured_s,
            report.allocations_ok,
            report.cycles,
            report.alloc_p50_us,
            report.alloc_p99_us,
            report.challenges,
            report.stale_nonce_retries,
            report.errors_by_code
        )),
        Mode::Hold => human.push_str(&format!(
            "hold: {} allocations held for {:.1} s, {} refreshes\n",
            report.ready, report.measured_s, report.refreshes
        )),
    }
    human.push_str(&format!(
        "retransmits {} invalid {} unmatched {} refused {} deleted at exit {}; server cpu {} ({} us/op); client cpu {}%",
        report.retransmits,
        report.invalid,
        report.unmatched,
        report.refused,
        report.deleted,
        report.server_cpu_pct.map_or("?".to_owned(), |v| format!("{v}%")),
        report.server_cpu_us_per_op.map_or("?".to_owned(), |v| v.to_string()),
        report.client_cpu_pct
    ));
    for (e, n) in &report.errors {
        human.push_str(&format!("\nerror ({n}x): {e}"));
    }
    if load.args.json {
        eprintln!("{human}");
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{human}");
    }

    if let Some(f) = &load.fatal {
        eprintln!("turn-load: error: {f}");
        return Ok(ExitCode::from(1));
    }
    let nothing = match mode {
        Mode::Relay => (report.received == 0).then(|| {
            if report.sent == 0 {
                "no ChannelData was sent".to_owned()
            } else {
                format!(
                    "none of {} ChannelData messages came back: does the server relay to loopback peers (coturn: --allow-loopback-peers)?",
                    report.sent
                )
            }
        }),
        Mode::Alloc => (report.allocations_ok == 0 && report.measured_s > 0.0).then(|| {
            load.errors
                .keys()
                .next()
                .cloned()
                .unwrap_or_else(|| "no Allocate succeeded".to_owned())
        }),
        Mode::Hold => None,
    };
    if let Some(why) = nothing {
        eprintln!("turn-load: error: {why}");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let mut b = [0u8; 100];
        encode_payload(&mut b, 7, 3, 0xFFFF_FFFF, 123_456_789);
        assert_eq!(decode_payload(&b), Some((7, 3, 0xFFFF_FFFF, 123_456_789)));
        assert_eq!(decode_payload(&b[..23]), None);
        b[0] = 0;
        assert_eq!(decode_payload(&b), None);
    }

    #[test]
    fn tids_differ() {
        let mut r = Rng(1);
        assert_ne!(r.tid(), r.tid());
    }
}
