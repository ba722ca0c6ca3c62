//! `relay-forwarder`: the reference limit for the TURN relay path.
//!
//! A TURN-shaped forwarder with no authentication and no checks: one thread, one UDP listening
//! socket and one relay socket per client, epoll readiness (`mio`) and `recvmmsg`/`sendmmsg`
//! batches. It answers every STUN request with a minimal success response:
//!
//! * Allocate → a freshly bound relay socket for that client (the same one again for a
//!   retransmission): XOR-RELAYED-ADDRESS, XOR-MAPPED-ADDRESS, LIFETIME;
//! * Refresh → LIFETIME (0 deletes the allocation);
//! * ChannelBind → binds CHANNEL-NUMBER to XOR-PEER-ADDRESS; CreatePermission, Binding and
//!   anything else → an empty success.
//!
//! It never sends 401. ChannelData from a client leaves that client's relay socket for the
//! peer bound to the channel (Send indications too); a datagram arriving on a relay socket goes
//! back to the client as ChannelData on the peer's channel (as a Data indication without one).
//! No permissions, no lifetimes, no quotas: whatever a real TURN server does on top of this is
//! its cost.
//!
//! Bounded: exits after `--duration` seconds or on SIGINT/SIGTERM and prints one JSON line with
//! counters on stdout.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use turnpike_bench::sys::{self, MSG_DONTWAIT, MmsgBatch};
use turnpike_proto::fast::{finish, write_attr, write_header, write_xor_addr_attr};
use turnpike_proto::turn_client::{CHANNEL_DATA_HEADER_LEN, decode_xor_address};
use turnpike_proto::{Class, MessageView, TransactionId, attr, method};

/// Datagrams per `recvmmsg` / messages per `sendmmsg`.
const BATCH: usize = 64;
/// Receive buffer per datagram.
const RECV_SIZE: usize = 2048;
/// `recvmmsg` calls per socket per loop turn before other sockets get theirs.
const RECV_ROUNDS: usize = 8;
const LISTENER: Token = Token(0);

/// Minimal batched TURN relay (reference limit): no auth, no checks.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:3479.
    #[arg(long)]
    listen: SocketAddr,
    /// IP address relay sockets are bound to (default: the listening IP).
    #[arg(long)]
    relay_ip: Option<IpAddr>,
    /// LIFETIME granted (seconds); allocations never actually expire.
    #[arg(long, default_value_t = 600)]
    lifetime: u32,
    /// At most this many allocations at a time (486 beyond).
    #[arg(long, default_value_t = 20_000)]
    max_allocations: usize,
    /// Exit after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    duration: f64,
    /// SO_RCVBUF/SO_SNDBUF of the listening socket, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    socket_buffer: usize,
}

struct Client {
    addr: SocketAddr,
    relay: Socket,
    relay_fd: RawFd,
    relay_addr: SocketAddr,
    /// (channel, peer); a client binds few channels, so a vector beats a map.
    channels: Vec<(u16, SocketAddr)>,
}

/// Final counters, printed as one JSON line.
#[derive(Serialize, Default)]
struct Report {
    listen: String,
    elapsed_s: f64,
    allocations: u64,
    deallocations: u64,
    max_live_allocations: usize,
    channel_binds: u64,
    stun_requests: u64,
    channel_data_in: u64,
    to_peer: u64,
    from_peer: u64,
    channel_data_out: u64,
    data_indications_out: u64,
    dropped: u64,
    send_errors: u64,
    recv_calls: u64,
    avg_batch: f64,
    stopped_by: &'static str,
}

/// Messages for one socket, sent with `sendmmsg` when the batch is full or the turn ends.
struct Out {
    batch: MmsgBatch,
    len: usize,
}

impl Out {
    fn new() -> Self {
        Out {
            batch: MmsgBatch::new(BATCH, RECV_SIZE + 64),
            len: 0,
        }
    }

    fn flush(&mut self, fd: RawFd, rep: &mut Report) {
        let mut done = 0;
        while done < self.len {
            match self.batch.send(fd, done..self.len, 0) {
                Ok(k) => done += k.max(1),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    rep.send_errors += 1;
                    done += 1;
                }
            }
        }
        self.len = 0;
    }
}

struct Forwarder {
    args: Args,
    relay_ip: IpAddr,
    poll: Poll,
    listener: Socket,
    listen_fd: RawFd,
    /// Slab of clients; the mio token of a relay socket is its index + 1.
    clients: Vec<Option<Client>>,
    free: Vec<usize>,
    by_addr: HashMap<SocketAddr, usize>,
    /// Taken out while its datagrams are handled, always put back.
    rx: Option<MmsgBatch>,
    /// To clients, from the listening socket.
    to_clients: Out,
    /// To peers: one relay socket at a time (flushed when the socket changes).
    to_peers: Out,
    to_peers_fd: RawFd,
    scratch: Vec<u8>,
    ready: Vec<Token>,
    rep: Report,
}

impl Forwarder {
    fn live(&self) -> usize {
        self.by_addr.len()
    }

    /// Queues a datagram for a peer from relay socket `fd`.
    fn queue_to_peer(&mut self, fd: RawFd, peer: SocketAddr, data: &[u8]) {
        if self.to_peers_fd != fd || self.to_peers.len == BATCH {
            self.to_peers.flush(self.to_peers_fd, &mut self.rep);
            self.to_peers_fd = fd;
        }
        let i = self.to_peers.len;
        let n = data.len().min(RECV_SIZE);
        self.to_peers.batch.buf_mut(i)[..n].copy_from_slice(&data[..n]);
        self.to_peers.batch.set_len(i, n);
        self.to_peers.batch.set_dest(i, Some(peer));
        self.to_peers.len += 1;
        self.rep.to_peer += 1;
    }

    /// Queues a message for a client from the listening socket; `write` fills the buffer and
    /// returns the length.
    fn queue_to_client(&mut self, client: SocketAddr, write: impl FnOnce(&mut [u8]) -> usize) {
        if self.to_clients.len == BATCH {
            self.to_clients.flush(self.listen_fd, &mut self.rep);
        }
        let i = self.to_clients.len;
        let n = write(self.to_clients.batch.buf_mut(i));
        self.to_clients.batch.set_len(i, n);
        self.to_clients.batch.set_dest(i, Some(client));
        self.to_clients.len += 1;
    }

    fn flush(&mut self) {
        self.to_peers.flush(self.to_peers_fd, &mut self.rep);
        self.to_clients.flush(self.listen_fd, &mut self.rep);
    }

    fn respond(&mut self, client: SocketAddr) {
        let scratch = std::mem::take(&mut self.scratch);
        let n = scratch.len();
        self.queue_to_client(client, |buf| {
            buf[..n].copy_from_slice(&scratch);
            n
        });
        self.scratch = scratch;
    }

    /// Drains the listening socket; returns true if it may have more.
    fn on_listener(&mut self) -> bool {
        let Some(mut rx) = self.rx.take() else {
            return false;
        };
        let more = self.on_listener_with(&mut rx);
        self.rx = Some(rx);
        more
    }

    fn on_listener_with(&mut self, rx: &mut MmsgBatch) -> bool {
        for _ in 0..RECV_ROUNDS {
            let n = match rx.recv(self.listen_fd, MSG_DONTWAIT, true) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            self.rep.recv_calls += 1;
            for i in 0..n {
                let Some(src) = rx.source(i) else { continue };
                self.on_client_datagram(src, rx.received(i));
            }
            if n < rx.capacity() {
                return false;
            }
        }
        true
    }

    fn on_client_datagram(&mut self, src: SocketAddr, d: &[u8]) {
        match d.first().map(|b| b >> 6) {
            Some(0b01) if d.len() >= CHANNEL_DATA_HEADER_LEN => {
                self.rep.channel_data_in += 1;
                let ch = u16::from_be_bytes([d[0], d[1]]);
                let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
                let payload = &d[CHANNEL_DATA_HEADER_LEN..];
                let target = self
                    .by_addr
                    .get(&src)
                    .and_then(|&i| self.clients[i].as_ref())
                    .and_then(|c| {
                        let peer = c.channels.iter().find(|(n, _)| *n == ch)?.1;
                        Some((c.relay_fd, peer))
                    });
                match target {
                    Some((fd, peer)) if payload.len() >= len => {
                        self.queue_to_peer(fd, peer, &payload[..len]);
                    }
                    _ => self.rep.dropped += 1,
                }
            }
            Some(0b00) => self.on_stun(src, d),
            _ => self.rep.dropped += 1,
        }
    }

    fn on_stun(&mut self, src: SocketAddr, d: &[u8]) {
        let Ok(view) = MessageView::parse(d) else {
            self.rep.dropped += 1;
            return;
        };
        let TransactionId::Modern(tid) = view.transaction_id else {
            self.rep.dropped += 1;
            return;
        };
        if view.class == Class::Indication && view.method == method::SEND {
            let mut peer = None;
            let mut data = None;
            for (t, v) in view.attributes() {
                match t {
                    attr::XOR_PEER_ADDRESS => peer = decode_xor_address(v, &tid),
                    attr::DATA => data = Some(v),
                    _ => {}
                }
            }
            let fd = self
                .by_addr
                .get(&src)
                .and_then(|&i| self.clients[i].as_ref())
                .map(|c| c.relay_fd);
            match (fd, peer, data) {
                (Some(fd), Some(peer), Some(data)) => self.queue_to_peer(fd, peer, data),
                _ => self.rep.dropped += 1,
            }
            return;
        }
        if view.class != Class::Request {
            self.rep.dropped += 1;
            return;
        }
        self.rep.stun_requests += 1;
        let mut out = std::mem::take(&mut self.scratch);
        out.clear();
        match view.method {
            method::ALLOCATE => match self.allocate(src) {
                Ok(relay) => {
                    write_header(&mut out, method::ALLOCATE, Class::Success, &tid);
                    write_xor_addr_attr(&mut out, attr::XOR_RELAYED_ADDRESS, relay, &tid);
                    write_xor_addr_attr(&mut out, attr::XOR_MAPPED_ADDRESS, src, &tid);
                    write_attr(&mut out, attr::LIFETIME, &self.args.lifetime.to_be_bytes());
                }
                Err(code) => {
                    write_header(&mut out, method::ALLOCATE, Class::Error, &tid);
                    let reason = turnpike_proto::fast::reason_phrase(code);
                    turnpike_proto::fast::write_error_code(&mut out, code, reason);
                }
            },
            method::REFRESH => {
                let mut lifetime = self.args.lifetime;
                for (t, v) in view.attributes() {
                    if t == attr::LIFETIME && v == [0, 0, 0, 0] {
                        lifetime = 0;
                    }
                }
                if lifetime == 0 {
                    self.deallocate(src);
                }
                write_header(&mut out, method::REFRESH, Class::Success, &tid);
                write_attr(&mut out, attr::LIFETIME, &lifetime.to_be_bytes());
            }
            method::CHANNEL_BIND => {
                let mut channel = None;
                let mut peer = None;
                for (t, v) in view.attributes() {
                    match t {
                        attr::CHANNEL_NUMBER if v.len() == 4 => {
                            channel = Some(u16::from_be_bytes([v[0], v[1]]));
                        }
                        attr::XOR_PEER_ADDRESS => peer = decode_xor_address(v, &tid),
                        _ => {}
                    }
                }
                let client = self
                    .by_addr
                    .get(&src)
                    .and_then(|&i| self.clients[i].as_mut());
                match (client, channel, peer) {
                    (Some(c), Some(ch), Some(peer)) => {
                        c.channels.retain(|&(n, p)| n != ch && p != peer);
                        c.channels.push((ch, peer));
                        self.rep.channel_binds += 1;
                        write_header(&mut out, method::CHANNEL_BIND, Class::Success, &tid);
                    }
                    (None, _, _) => {
                        write_header(&mut out, method::CHANNEL_BIND, Class::Error, &tid);
                        turnpike_proto::fast::write_error_code(
                            &mut out,
                            437,
                            "Allocation Mismatch",
                        );
                    }
                    _ => {
                        write_header(&mut out, method::CHANNEL_BIND, Class::Error, &tid);
                        turnpike_proto::fast::write_error_code(&mut out, 400, "Bad Request");
                    }
                }
            }
            method::BINDING => {
                write_header(&mut out, method::BINDING, Class::Success, &tid);
                write_xor_addr_attr(&mut out, attr::XOR_MAPPED_ADDRESS, src, &tid);
            }
            m => write_header(&mut out, m, Class::Success, &tid),
        }
        finish(&mut out, 0);
        self.scratch = out;
        self.respond(src);
    }

    /// The relay address of `client`'s allocation, created if needed; an error code if not.
    fn allocate(&mut self, client: SocketAddr) -> Result<SocketAddr, u16> {
        if let Some(c) = self
            .by_addr
            .get(&client)
            .and_then(|&i| self.clients[i].as_ref())
        {
            return Ok(c.relay_addr);
        }
        if self.live() >= self.args.max_allocations {
            return Err(486);
        }
        let relay = open_udp(SocketAddr::new(self.relay_ip, 0), 256 << 10).map_err(|_| 508u16)?;
        let relay_fd = relay.as_raw_fd();
        let relay_addr = relay
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or(500u16)?;
        let i = self.free.pop().unwrap_or_else(|| {
            self.clients.push(None);
            self.clients.len() - 1
        });
        if self
            .poll
            .registry()
            .register(&mut SourceFd(&relay_fd), Token(i + 1), Interest::READABLE)
            .is_err()
        {
            self.free.push(i);
            return Err(508);
        }
        self.clients[i] = Some(Client {
            addr: client,
            relay,
            relay_fd,
            relay_addr,
            channels: Vec::new(),
        });
        self.by_addr.insert(client, i);
        self.rep.allocations += 1;
        self.rep.max_live_allocations = self.rep.max_live_allocations.max(self.live());
        Ok(relay_addr)
    }

    fn deallocate(&mut self, client: SocketAddr) {
        let Some(i) = self.by_addr.remove(&client) else {
            return;
        };
        if let Some(c) = self.clients[i].take() {
            // Flush anything queued for this socket before it closes.
            if self.to_peers_fd == c.relay_fd {
                self.to_peers.flush(self.to_peers_fd, &mut self.rep);
                self.to_peers_fd = -1;
            }
            let _ = self.poll.registry().deregister(&mut SourceFd(&c.relay_fd));
            drop(c.relay);
            self.rep.deallocations += 1;
        }
        self.free.push(i);
    }

    /// Drains relay socket `i`; returns true if it may have more.
    fn on_relay(&mut self, i: usize) -> bool {
        let Some(mut rx) = self.rx.take() else {
            return false;
        };
        let more = self.on_relay_with(i, &mut rx);
        self.rx = Some(rx);
        more
    }

    fn on_relay_with(&mut self, i: usize, rx: &mut MmsgBatch) -> bool {
        for _ in 0..RECV_ROUNDS {
            let Some(c) = self.clients.get(i).and_then(|c| c.as_ref()) else {
                return false;
            };
            let (fd, client) = (c.relay_fd, c.addr);
            let n = match rx.recv(fd, MSG_DONTWAIT, true) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            };
            self.rep.recv_calls += 1;
            for k in 0..n {
                let Some(peer) = rx.source(k) else { continue };
                let d = rx.received(k);
                self.rep.from_peer += 1;
                let channel = self.clients[i]
                    .as_ref()
                    .and_then(|c| c.channels.iter().find(|(_, p)| *p == peer))
                    .map(|&(n, _)| n);
                match channel {
                    Some(ch) => {
                        self.rep.channel_data_out += 1;
                        self.queue_to_client(client, |buf| {
                            let n = d.len().min(buf.len() - CHANNEL_DATA_HEADER_LEN);
                            buf[0..2].copy_from_slice(&ch.to_be_bytes());
                            buf[2..4].copy_from_slice(&(n as u16).to_be_bytes());
                            buf[4..4 + n].copy_from_slice(&d[..n]);
                            4 + n
                        });
                    }
                    None => {
                        self.rep.data_indications_out += 1;
                        let mut out = std::mem::take(&mut self.scratch);
                        out.clear();
                        // Data indications are not answered, so any transaction id will do.
                        let tid = [0x5Au8; 12];
                        write_header(&mut out, method::DATA, Class::Indication, &tid);
                        write_xor_addr_attr(&mut out, attr::XOR_PEER_ADDRESS, peer, &tid);
                        write_attr(&mut out, attr::DATA, d);
                        finish(&mut out, 0);
                        self.scratch = out;
                        self.respond(client);
                    }
                }
            }
            if n < rx.capacity() {
                return false;
            }
        }
        true
    }
}

fn open_udp(addr: SocketAddr, buffer: usize) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Best effort: a larger buffer only avoids drops under bursts.
    let _ = sock.set_recv_buffer_size(buffer);
    let _ = sock.set_send_buffer_size(buffer);
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    Ok(sock)
}

fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.duration.is_finite() && args.duration > 0.0 && args.duration <= 86_400.0,
        "--duration must be in (0, 86400] seconds"
    );
    sys::install_stop_signals().context("installing signal handlers")?;
    let listener = open_udp(args.listen, args.socket_buffer)
        .with_context(|| format!("binding {}", args.listen))?;
    let local = listener
        .local_addr()?
        .as_socket()
        .context("local address is not an IP address")?;
    let listen_fd = listener.as_raw_fd();
    let poll = Poll::new().context("creating epoll")?;
    poll.registry()
        .register(&mut SourceFd(&listen_fd), LISTENER, Interest::READABLE)?;
    eprintln!("relay-forwarder: listening on {local}");

    let mut f = Forwarder {
        relay_ip: args.relay_ip.unwrap_or(local.ip()),
        args,
        poll,
        listener,
        listen_fd,
        clients: Vec::new(),
        free: Vec::new(),
        by_addr: HashMap::new(),
        rx: Some(MmsgBatch::new(BATCH, RECV_SIZE)),
        to_clients: Out::new(),
        to_peers: Out::new(),
        to_peers_fd: -1,
        scratch: Vec::with_capacity(256),
        ready: Vec::new(),
        rep: Report {
            listen: local.to_string(),
            ..Report::default()
        },
    };
    let mut events = Events::with_capacity(1024);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(f.args.duration);
    f.rep.stopped_by = loop {
        if sys::stop_requested() {
            break "signal";
        }
        if Instant::now() >= deadline {
            break "duration";
        }
        let wait = if f.ready.is_empty() {
            Duration::from_millis(100)
        } else {
            Duration::ZERO
        };
        match f.poll.poll(&mut events, Some(wait)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).context("epoll"),
        }
        // A token may end up twice (carried over and reported again): the second drain
        // finds nothing and costs one empty recvmmsg.
        f.ready.extend(events.iter().map(|ev| ev.token()));
        let ready = std::mem::take(&mut f.ready);
        for t in ready {
            let more = if t == LISTENER {
                f.on_listener()
            } else {
                f.on_relay(t.0 - 1)
            };
            if more {
                f.ready.push(t);
            }
        }
        f.flush();
    };
    f.rep.elapsed_s = start.elapsed().as_secs_f64();
    f.rep.avg_batch = if f.rep.recv_calls > 0 {
        (f.rep.channel_data_in + f.rep.stun_requests + f.rep.from_peer) as f64
            / f.rep.recv_calls as f64
    } else {
        0.0
    };
    drop(f.listener);
    println!("{}", serde_json::to_string(&f.rep)?);
    Ok(())
}
