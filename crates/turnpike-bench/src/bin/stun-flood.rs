//! `stun-flood`: a UDP STUN Binding load generator.
//!
//! One thread drives `--sockets` connected, non-blocking UDP sockets with
//! `sendmmsg`/`recvmmsg` and sleeps in `ppoll` when nothing is ready, so it
//! costs little CPU per request and can run pinned to a single core.
//!
//! * Closed loop (default): each socket keeps at most `--window` requests
//!   outstanding; every response (or loss) immediately frees a slot for the
//!   next request. This measures maximum throughput.
//! * Open loop (`--rate R`): requests go out at R/s in total, paced in small
//!   bursts round-robin over the sockets, whatever the server does. This
//!   measures latency at a given load.
//!
//! Every request carries a unique transaction id that encodes
//! (run nonce, socket, slot, generation); the slot holds the send time, so
//! each response yields one round-trip sample. Responses whose id does not
//! match an outstanding request (late, duplicated, foreign) are counted as
//! unmatched and otherwise ignored. A request with no answer after
//! `--timeout` (1 s) is counted as lost and its slot is freed.
//!
//! The run is always bounded: `--warmup` seconds (not measured), then
//! `--duration` seconds or `--max-requests` measured requests, whichever
//! comes first, then at most `--timeout` to collect the last responses.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use turnpike_bench::CoreTicks;
use turnpike_bench::hist::Histogram;
use turnpike_bench::sys::{self, MSG_DONTWAIT, MmsgBatch};
use turnpike_bench::{HEADER_LEN, ParseError, parse_binding_success, write_binding_request};

/// Requests per `sendmmsg`.
const SEND_BATCH: usize = 32;
/// Datagrams per `recvmmsg`.
const RECV_BATCH: usize = 64;
/// Receive buffer per datagram: Binding responses are small.
const RECV_SIZE: usize = 1500;
/// At most this many `recvmmsg` calls per socket per loop turn (fairness).
const RECV_ROUNDS: usize = 4;
/// How often outstanding requests are checked for expiry.
const EXPIRE_EVERY_NS: u64 = 1_000_000;
/// Slot indices are 24 bits in the transaction id.
const MAX_SLOTS: usize = 1 << 24;

/// UDP STUN Binding load generator (closed loop, or open loop with --rate).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// STUN server to load, e.g. 127.0.0.1:3478.
    #[arg(long)]
    server: SocketAddr,
    /// Number of client sockets (each bound to an ephemeral loopback port).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=256))]
    sockets: u16,
    /// Closed loop: maximum outstanding requests per socket.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=65536))]
    window: u32,
    /// Measured duration in seconds (after the warmup).
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Stop after this many measured requests (if reached before --duration).
    #[arg(long)]
    max_requests: Option<u64>,
    /// Open loop: total request rate per second (paced in small bursts).
    #[arg(long)]
    rate: Option<f64>,
    /// Open loop: pacing interval in microseconds (one burst per interval).
    #[arg(long, default_value_t = 50)]
    burst_us: u64,
    /// Warmup seconds before measuring (load is applied, nothing recorded).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Seconds without a response after which a request counts as lost.
    #[arg(long, default_value_t = 1.0)]
    timeout: f64,
    /// Local address to bind the client sockets to (port 0). Defaults to the
    /// loopback address of the server's family.
    #[arg(long)]
    bind: Option<IpAddr>,
    /// Allow a server address outside loopback (off by default: this tool
    /// floods its target).
    #[arg(long)]
    allow_non_loopback: bool,
    /// Closed loop: after a loop turn that received fewer than 32 responses,
    /// sleep this many microseconds before looking again, so that responses
    /// are handled in larger batches (fewer syscalls and wakeups per
    /// request). Round trips use kernel receive timestamps, so this does not
    /// inflate them. 0 = react to every datagram.
    #[arg(long, default_value_t = 50)]
    coalesce_us: u64,
    /// Pid of the server process: its CPU use during the measured period is
    /// reported (server_cpu_pct) and CPU time used by anything else
    /// (other_cpu_pct) can then be told apart.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Free-form label copied into the JSON output.
    #[arg(long)]
    label: Option<String>,
    /// Print one JSON object on stdout (the human summary goes to stderr).
    #[arg(long)]
    json: bool,
}

/// One outstanding-request slot.
#[derive(Clone, Copy, Default)]
struct Slot {
    sent_ns: u64,
    generation: u32,
    in_use: bool,
    measured: bool,
}

/// One client socket and its outstanding requests.
struct Conn {
    sock: Socket,
    fd: RawFd,
    slots: Vec<Slot>,
    free: Vec<u32>,
    inflight: usize,
    /// (slot, generation) in send order, for expiry; stale entries are
    /// skipped lazily.
    fifo: VecDeque<(u32, u32)>,
    ready: bool,
}

/// Counters and the RTT histogram.
#[derive(Default)]
struct Stats {
    sent: u64,
    received: u64,
    lost: u64,
    unmatched: u64,
    error_responses: u64,
    invalid: u64,
    refused: u64,
    send_errors: u64,
    recv_errors: u64,
    throttled: u64,
    warmup_sent: u64,
    poll_calls: u64,
    no_kernel_ts: u64,
    recv_calls: u64,
    recv_datagrams: u64,
    send_calls: u64,
    send_datagrams: u64,
    rtt: Histogram,
    last_recv_ns: u64,
    last_error: Option<String>,
}

/// The JSON result.
#[derive(Serialize)]
struct Report {
    label: Option<String>,
    server: String,
    mode: &'static str,
    sockets: u16,
    window: u32,
    rate: Option<f64>,
    warmup_s: f64,
    duration_s: f64,
    send_window_s: f64,
    sent: u64,
    received: u64,
    lost: u64,
    unmatched: u64,
    error_responses: u64,
    invalid: u64,
    refused: u64,
    send_errors: u64,
    recv_errors: u64,
    throttled: u64,
    offered_per_sec: f64,
    responses_per_sec: f64,
    rtt_min_us: f64,
    rtt_mean_us: f64,
    p50_us: f64,
    p90_us: f64,
    p99_us: f64,
    p999_us: f64,
    max_us: f64,
    client_cpu_pct: f64,
    /// CPU use of --server-pid during the measured period (% of one core).
    server_cpu_pct: Option<f64>,
    /// Busy time of all cores minus client and server (% of one core):
    /// other processes or interrupts competing with the benchmark.
    other_cpu_pct: Option<f64>,
    client_polls: u64,
    /// Busy percentage of each core during the measured period (all
    /// processes: server, client, and anything else running).
    core_busy_pct: Vec<f64>,
    rtt_without_kernel_ts: u64,
    client_avg_recv_batch: f64,
    client_avg_send_batch: f64,
    stopped_by: &'static str,
    last_error: Option<String>,
}

fn encode_tid(nonce: u32, sock: u16, slot: u32, generation: u32) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[0..4].copy_from_slice(&nonce.to_be_bytes());
    // 8 bits of socket index (sockets <= 256) and 24 bits of slot index.
    let s = (u32::from(sock as u8) << 24) | (slot & 0x00FF_FFFF);
    t[4..8].copy_from_slice(&s.to_be_bytes());
    t[8..12].copy_from_slice(&generation.to_be_bytes());
    t
}

fn decode_tid(t: &[u8; 12]) -> (u32, u8, u32, u32) {
    let nonce = u32::from_be_bytes([t[0], t[1], t[2], t[3]]);
    let s = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let generation = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
    (nonce, (s >> 24) as u8, s & 0x00FF_FFFF, generation)
}

fn run_nonce() -> u32 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let x = t ^ (u64::from(std::process::id()) << 32) ^ 0x9E37_79B9_7F4A_7C15;
    // splitmix64 finaliser
    let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (x ^ (x >> 31)) as u32
}

fn is_refused(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECONNREFUSED)
}

/// Core, client and server CPU counters at one instant.
#[derive(Default)]
struct CpuSnap {
    cores: CoreTicks,
    client: Option<u64>,
    server: Option<u64>,
}

impl CpuSnap {
    fn take(server_pid: Option<u32>) -> Self {
        CpuSnap {
            cores: CoreTicks::snapshot(),
            client: turnpike_bench::process_ticks(None),
            server: server_pid.and_then(|p| turnpike_bench::process_ticks(Some(p))),
        }
    }
}

/// CPU use between two snapshots, in percent of one core.
struct CpuUse {
    cores: Vec<f64>,
    client: Option<f64>,
    server: Option<f64>,
    other: Option<f64>,
}

fn cpu_use(a: &CpuSnap, b: &CpuSnap) -> CpuUse {
    let cores = turnpike_bench::core_busy_pct(&a.cores, &b.cores);
    // Elapsed ticks of one core (all cores advance together).
    let span = match (a.cores.cores.first(), b.cores.cores.first()) {
        (Some(x), Some(y)) if y.1 > x.1 => (y.1 - x.1) as f64 / 100.0,
        _ => 0.0,
    };
    let pct = |x: Option<u64>, y: Option<u64>| match (x, y) {
        (Some(x), Some(y)) if span > 0.0 => {
            Some((y.saturating_sub(x) as f64 / span * 10.0).round() / 10.0)
        }
        _ => None,
    };
    let client = pct(a.client, b.client);
    let server = pct(a.server, b.server);
    let other = match (client, server) {
        (Some(c), Some(s)) if !cores.is_empty() => {
            let total: f64 = cores.iter().sum();
            Some(((total - c - s).max(0.0) * 10.0).round() / 10.0)
        }
        _ => None,
    };
    CpuUse {
        cores,
        client,
        server,
        other,
    }
}

struct Flood {
    args: Args,
    nonce: u32,
    conns: Vec<Conn>,
    rx: MmsgBatch,
    tx: MmsgBatch,
    pending: Vec<u32>,
    stats: Stats,
    start: Instant,
    base_rt: u64,
    /// CPU counters at the start and the end of the measured period.
    ticks: (CpuSnap, CpuSnap),
    warmup_ns: u64,
    timeout_ns: u64,
}

impl Flood {
    /// Nanoseconds since the start of the run on CLOCK_REALTIME, the clock
    /// of the kernel receive timestamps (a clock step during a run would
    /// distort it; runs are seconds long).
    fn now_ns(&self) -> u64 {
        sys::realtime_ns().saturating_sub(self.base_rt)
    }

    fn record_error(&mut self, what: &str, e: &io::Error) {
        self.stats.last_error = Some(format!("{what}: {e}"));
    }

    /// Drains the ready sockets (bounded number of batches each) and returns
    /// how many datagrams were read.
    fn receive(&mut self) -> usize {
        let mut got = 0;
        for c in 0..self.conns.len() {
            if !self.conns[c].ready {
                continue;
            }
            for _ in 0..RECV_ROUNDS {
                let fd = self.conns[c].fd;
                match self.rx.recv(fd, MSG_DONTWAIT, false) {
                    Ok(n) => {
                        self.stats.recv_calls += 1;
                        self.stats.recv_datagrams += n as u64;
                        got += n;
                        let t = self.now_ns();
                        for i in 0..n {
                            let ti = match self.rx.rx_timestamp_ns(i) {
                                Some(ts) => ts.saturating_sub(self.base_rt).min(t),
                                None => {
                                    self.stats.no_kernel_ts += 1;
                                    t
                                }
                            };
                            self.on_datagram(c, i, ti);
                        }
                        if n < self.rx.capacity() {
                            self.conns[c].ready = false;
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.conns[c].ready = false;
                        break;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if is_refused(&e) => {
                        // Pending ICMP port unreachable; the error is now
                        // cleared, keep reading.
                        self.stats.refused += 1;
                        self.record_error("recvmmsg", &e);
                    }
                    Err(e) => {
                        self.stats.recv_errors += 1;
                        self.record_error("recvmmsg", &e);
                        self.conns[c].ready = false;
                        break;
                    }
                }
            }
        }
        got
    }

    fn on_datagram(&mut self, c: usize, i: usize, t: u64) {
        let tid = match parse_binding_success(self.rx.received(i)) {
            Ok(tid) => tid,
            Err(ParseError::WrongType(_)) => {
                self.stats.error_responses += 1;
                return;
            }
            Err(_) => {
                self.stats.invalid += 1;
                return;
            }
        };
        let (nonce, sock, slot, generation) = decode_tid(&tid);
        let conn = &mut self.conns[c];
        let ok = nonce == self.nonce
            && usize::from(sock) == c % 256
            && (slot as usize) < conn.slots.len()
            && conn.slots[slot as usize].in_use
            && conn.slots[slot as usize].generation == generation;
        if !ok {
            self.stats.unmatched += 1;
            return;
        }
        let s = &mut conn.slots[slot as usize];
        s.in_use = false;
        conn.free.push(slot);
        conn.inflight -= 1;
        if s.measured {
            self.stats.received += 1;
            self.stats.rtt.record(t.saturating_sub(s.sent_ns));
            self.stats.last_recv_ns = self.stats.last_recv_ns.max(t);
        }
    }

    /// Frees slots whose request has been outstanding for longer than the
    /// timeout, counting measured ones as lost.
    fn expire(&mut self, now: u64) {
        for conn in &mut self.conns {
            while let Some(&(slot, generation)) = conn.fifo.front() {
                let s = &mut conn.slots[slot as usize];
                if !s.in_use || s.generation != generation {
                    conn.fifo.pop_front();
                    continue;
                }
                if now.saturating_sub(s.sent_ns) < self.timeout_ns {
                    break;
                }
                s.in_use = false;
                if s.measured {
                    self.stats.lost += 1;
                }
                conn.free.push(slot);
                conn.inflight -= 1;
                conn.fifo.pop_front();
            }
        }
    }

    /// Sends up to `count` requests on socket `c` in batches. Returns how
    /// many were handed to the kernel; the others are counted (refused,
    /// send error or throttled) and their slots released.
    fn send_on(&mut self, c: usize, count: usize, measured_budget: &mut u64) -> usize {
        let mut total = 0;
        let mut left = count;
        while left > 0 {
            let now = self.now_ns();
            let measured = now >= self.warmup_ns;
            let mut k = left.min(SEND_BATCH);
            if measured {
                k = k.min((*measured_budget).min(usize::MAX as u64) as usize);
            }
            let conn = &mut self.conns[c];
            let available = k.min(conn.free.len());
            self.stats.throttled += (k - available) as u64;
            if available == 0 {
                break;
            }
            self.pending.clear();
            for j in 0..available {
                let slot = conn.free.pop().expect("free slot");
                let s = &mut conn.slots[slot as usize];
                s.generation = s.generation.wrapping_add(1);
                s.sent_ns = now;
                s.in_use = true;
                s.measured = measured;
                let tid = encode_tid(self.nonce, c as u16, slot, s.generation);
                write_binding_request(&tid, self.tx.buf_mut(j));
                self.tx.set_len(j, HEADER_LEN);
                self.pending.push(slot);
            }
            let res = self.tx.send(conn.fd, 0..available, 0);
            self.stats.send_calls += 1;
            if let Ok(m) = res {
                self.stats.send_datagrams += m as u64;
            }
            let accepted = match res {
                Ok(m) => m,
                Err(e) => {
                    if is_refused(&e) {
                        self.stats.refused += 1;
                    } else if e.kind() != io::ErrorKind::WouldBlock
                        && e.raw_os_error() != Some(libc::ENOBUFS)
                        && e.kind() != io::ErrorKind::Interrupted
                    {
                        self.stats.send_errors += 1;
                    }
                    self.stats.last_error = Some(format!("sendmmsg: {e}"));
                    0
                }
            };
            let conn = &mut self.conns[c];
            for (j, &slot) in self.pending.iter().enumerate() {
                if j < accepted {
                    conn.fifo
                        .push_back((slot, conn.slots[slot as usize].generation));
                } else {
                    conn.slots[slot as usize].in_use = false;
                    conn.free.push(slot);
                }
            }
            conn.inflight += accepted;
            if measured {
                self.stats.sent += accepted as u64;
                *measured_budget -= accepted as u64;
            } else {
                self.stats.warmup_sent += accepted as u64;
            }
            total += accepted;
            left -= available;
            if accepted < available {
                break;
            }
        }
        total
    }

    fn inflight(&self) -> usize {
        self.conns.iter().map(|c| c.inflight).sum()
    }

    fn run(&mut self) -> Result<(&'static str, u64)> {
        let end_ns = self.warmup_ns + (self.args.duration * 1e9) as u64;
        let mut budget = self.args.max_requests.unwrap_or(u64::MAX);
        let rate = self.args.rate;
        let burst_ns = self.args.burst_us.max(1) * 1000;
        let burst = rate.map(|r| ((r * burst_ns as f64 / 1e9).round() as u64).max(1));
        let mut attempted: u64 = 0; // open loop schedule position
        let mut rr = 0usize;
        let mut last_expire = 0u64;
        let mut stop: Option<(&'static str, u64)> = None;
        let mut pollfds: Vec<libc::pollfd> = self
            .conns
            .iter()
            .map(|c| libc::pollfd {
                fd: c.fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let n = self.conns.len();
        let window = self.args.window as usize;
        let coalesce_ns = self.args.coalesce_us * 1000;
        let mut measuring = false;
        loop {
            let now = self.now_ns();
            if stop.is_none() {
                let why = if sys::stop_requested() {
                    Some("signal")
                } else if now >= end_ns {
                    Some("duration")
                } else if budget == 0 {
                    Some("max-requests")
                } else {
                    None
                };
                if !measuring && (now >= self.warmup_ns || why.is_some()) {
                    measuring = true;
                    self.ticks.0 = CpuSnap::take(self.args.server_pid);
                }
                if let Some(why) = why {
                    stop = Some((why, now));
                    self.ticks.1 = CpuSnap::take(self.args.server_pid);
                }
            }
            if let Some((_, at)) = stop {
                let hard_stop = sys::stop_requested() && now >= at + 200_000_000;
                if self.inflight() == 0
                    || now >= at + self.timeout_ns + 2 * EXPIRE_EVERY_NS
                    || hard_stop
                {
                    self.expire(u64::MAX);
                    break;
                }
            }

            let got = self.receive();

            if now >= last_expire + EXPIRE_EVERY_NS {
                self.expire(now);
                last_expire = now;
            }

            let mut wait_ns = EXPIRE_EVERY_NS;
            if stop.is_none() {
                match (rate, burst) {
                    (Some(r), Some(burst)) => {
                        let target = (now as f64 * r / 1e9) as u64;
                        let due = target.saturating_sub(attempted);
                        if due >= burst {
                            let mut left = due;
                            let mut tries = 0;
                            while left > 0 && tries < n {
                                let k = left.min(SEND_BATCH as u64) as usize;
                                self.send_on(rr, k, &mut budget);
                                // Whatever was not sent is dropped from the
                                // schedule (counted as throttled/refused).
                                left -= k as u64;
                                attempted += k as u64;
                                rr = (rr + 1) % n;
                                tries += 1;
                            }
                            // Far behind (more than one batch per socket):
                            // skip ahead instead of bursting.
                            if left > 0 {
                                self.stats.throttled += left;
                                attempted += left;
                            }
                        }
                        let next = ((attempted + burst) as f64 * 1e9 / r) as u64;
                        wait_ns = wait_ns.min(next.saturating_sub(self.now_ns()));
                    }
                    _ => {
                        for c in 0..n {
                            let free = window - self.conns[c].inflight;
                            if free > 0 && budget > 0 {
                                self.send_on(c, free, &mut budget);
                            }
                        }
                    }
                }
            }

            if self.conns.iter().any(|c| c.ready) {
                continue;
            }
            if stop.is_none() {
                if rate.is_some() {
                    // Open loop: sleep until the next burst, then look at all
                    // sockets at once (kernel timestamps keep the round trips
                    // exact).
                    if wait_ns > 0 {
                        std::thread::sleep(Duration::from_nanos(wait_ns));
                    }
                    wait_ns = 0;
                } else if coalesce_ns > 0 && got < 32 {
                    // Closed loop with little traffic in this turn: let
                    // responses accumulate, then wait for at least one.
                    std::thread::sleep(Duration::from_nanos(coalesce_ns));
                }
            }
            for p in pollfds.iter_mut() {
                p.revents = 0;
            }
            self.stats.poll_calls += 1;
            let ready = sys::poll(&mut pollfds, Duration::from_nanos(wait_ns)).context("ppoll")?;
            if ready > 0 {
                for (c, p) in self.conns.iter_mut().zip(pollfds.iter()) {
                    if p.revents != 0 {
                        c.ready = true;
                    }
                }
            }
        }
        Ok(stop.unwrap_or(("duration", self.now_ns())))
    }
}

fn open_socket(bind: IpAddr, server: SocketAddr) -> Result<Socket> {
    let sock = Socket::new(
        Domain::for_address(server),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    let _ = sock.set_recv_buffer_size(1 << 20);
    let _ = sock.set_send_buffer_size(1 << 20);
    sock.bind(&SocketAddr::new(bind, 0).into())
        .with_context(|| format!("binding a client socket to {bind}:0"))?;
    // Connected: the kernel filters other sources and reports ICMP
    // port-unreachable as ECONNREFUSED.
    sock.connect(&server.into())
        .with_context(|| format!("connecting a client socket to {server}"))?;
    sock.set_nonblocking(true)?;
    sys::enable_rx_timestamps(sock.as_raw_fd()).context("enabling SO_TIMESTAMPNS")?;
    Ok(sock)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        (a as f64 / b as f64 * 10.0).round() / 10.0
    }
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("stun-flood: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main() -> Result<ExitCode> {
    let args = Args::parse();
    ensure!(
        args.duration.is_finite() && args.duration >= 0.0,
        "--duration must be >= 0"
    );
    ensure!(
        args.warmup.is_finite() && args.warmup >= 0.0,
        "--warmup must be >= 0"
    );
    ensure!(
        args.timeout.is_finite() && args.timeout > 0.0 && args.timeout <= 60.0,
        "--timeout must be in (0, 60]"
    );
    if let Some(r) = args.rate {
        ensure!(r.is_finite() && r > 0.0, "--rate must be positive");
    }
    if !args.allow_non_loopback && !args.server.ip().is_loopback() {
        bail!(
            "{} is not a loopback address; pass --allow-non-loopback to load a remote server",
            args.server
        );
    }
    let bind = args.bind.unwrap_or(match args.server {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    });
    sys::install_stop_signals().context("installing signal handlers")?;
    // Precise ppoll wakeups for pacing (best effort).
    let _ = sys::set_timer_slack(1_000);

    let nsock = usize::from(args.sockets);
    let timeout_ns = (args.timeout * 1e9) as u64;
    let slots_per_socket = match args.rate {
        None => args.window as usize,
        // Enough for everything sent during one timeout, plus headroom.
        Some(r) => {
            let need = r * args.timeout * 1.25 / nsock as f64;
            (need.ceil() as usize + SEND_BATCH).min(MAX_SLOTS)
        }
    };
    let mut conns = Vec::with_capacity(nsock);
    for _ in 0..nsock {
        let sock = open_socket(bind, args.server)?;
        let fd = sock.as_raw_fd();
        conns.push(Conn {
            sock,
            fd,
            slots: vec![Slot::default(); slots_per_socket],
            free: (0..slots_per_socket as u32).rev().collect(),
            inflight: 0,
            fifo: VecDeque::with_capacity(slots_per_socket),
            ready: true,
        });
    }

    let cpu0 = sys::process_cpu_time();
    let mut flood = Flood {
        nonce: run_nonce(),
        conns,
        rx: MmsgBatch::new(RECV_BATCH, RECV_SIZE).with_timestamps(),
        tx: MmsgBatch::new(SEND_BATCH, HEADER_LEN),
        pending: Vec::with_capacity(SEND_BATCH),
        stats: Stats::default(),
        start: Instant::now(),
        base_rt: sys::realtime_ns(),
        ticks: Default::default(),
        warmup_ns: (args.warmup * 1e9) as u64,
        timeout_ns,
        args,
    };
    let (stopped_by, stop_ns) = flood.run()?;
    let wall = flood.start.elapsed();
    let cpu = sys::process_cpu_time().saturating_sub(cpu0);
    // Sockets are closed here, before printing.
    for c in flood.conns.drain(..) {
        drop(c.sock);
    }

    let usage = cpu_use(&flood.ticks.0, &flood.ticks.1);
    let a = &flood.args;
    let st = &flood.stats;
    let send_window_ns = stop_ns.saturating_sub(flood.warmup_ns);
    let recv_window_ns = st.last_recv_ns.saturating_sub(flood.warmup_ns);
    let per_sec = |count: u64, ns: u64| {
        if ns == 0 {
            0.0
        } else {
            (count as f64 * 1e9 / ns as f64).round()
        }
    };
    let h = &st.rtt;
    let report = Report {
        label: a.label.clone(),
        server: a.server.to_string(),
        mode: if a.rate.is_some() { "open" } else { "closed" },
        sockets: a.sockets,
        window: a.window,
        rate: a.rate,
        warmup_s: a.warmup,
        duration_s: a.duration,
        send_window_s: send_window_ns as f64 / 1e9,
        sent: st.sent,
        received: st.received,
        lost: st.lost,
        unmatched: st.unmatched,
        error_responses: st.error_responses,
        invalid: st.invalid,
        refused: st.refused,
        send_errors: st.send_errors,
        recv_errors: st.recv_errors,
        throttled: st.throttled,
        offered_per_sec: per_sec(st.sent, send_window_ns),
        responses_per_sec: per_sec(st.received, recv_window_ns),
        rtt_min_us: us(h.min()),
        rtt_mean_us: us(h.mean() as u64),
        p50_us: us(h.quantile(0.50)),
        p90_us: us(h.quantile(0.90)),
        p99_us: us(h.quantile(0.99)),
        p999_us: us(h.quantile(0.999)),
        max_us: us(h.max()),
        client_cpu_pct: usage.client.unwrap_or_else(|| {
            (cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9) * 1000.0).round() / 10.0
        }),
        server_cpu_pct: usage.server,
        other_cpu_pct: usage.other,
        client_polls: st.poll_calls,
        core_busy_pct: usage.cores.clone(),
        rtt_without_kernel_ts: st.no_kernel_ts,
        client_avg_recv_batch: ratio(st.recv_datagrams, st.recv_calls),
        client_avg_send_batch: ratio(st.send_datagrams, st.send_calls),
        stopped_by,
        last_error: st.last_error.clone(),
    };

    let human = format!(
        "stun-flood {} ({} mode, {} sockets, {}) stopped by {}\n\
         sent {}  received {}  lost {}  unmatched {}  error-responses {}  invalid {}  \
         refused {}  send-errors {}  recv-errors {}  throttled {}\n\
         throughput {:.0} responses/s (offered {:.0}/s over {:.2} s)\n\
         rtt us: min {:.1}  mean {:.1}  p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}\n\
         client cpu {:.1}% of one core ({} polls, {:.1} datagrams per recvmmsg, {:.1} per sendmmsg)\n\
         core busy % during the run: {:?}; server cpu {}%; other load {}%",
        report.server,
        report.mode,
        report.sockets,
        match a.rate {
            Some(r) => format!("rate {r}/s"),
            None => format!("window {}", a.window),
        },
        report.stopped_by,
        report.sent,
        report.received,
        report.lost,
        report.unmatched,
        report.error_responses,
        report.invalid,
        report.refused,
        report.send_errors,
        report.recv_errors,
        report.throttled,
        report.responses_per_sec,
        report.offered_per_sec,
        report.send_window_s,
        report.rtt_min_us,
        report.rtt_mean_us,
        report.p50_us,
        report.p90_us,
        report.p99_us,
        report.p999_us,
        report.max_us,
        report.client_cpu_pct,
        report.client_polls,
        report.client_avg_recv_batch,
        report.client_avg_send_batch,
        report.core_busy_pct,
        report
            .server_cpu_pct
            .map_or("?".to_string(), |v| format!("{v:.1}")),
        report
            .other_cpu_pct
            .map_or("?".to_string(), |v| format!("{v:.1}")),
    );
    if a.json {
        eprintln!("{human}");
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{human}");
    }

    if report.received == 0 {
        let why = if report.refused > 0 {
            format!(
                "connection refused {} times: is a STUN server listening on {}?",
                report.refused, report.server
            )
        } else if report.sent == 0 {
            "no measured request was sent".to_string()
        } else {
            format!(
                "all {} requests lost: is a STUN server listening on {}?",
                report.sent, report.server
            )
        };
        eprintln!("stun-flood: error: no responses received ({why})");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tid_roundtrip() {
        let t = encode_tid(0xDEAD_BEEF, 255, 0x00AB_CDEF, 0x1234_5678);
        assert_eq!(decode_tid(&t), (0xDEAD_BEEF, 255, 0x00AB_CDEF, 0x1234_5678));
    }
}
