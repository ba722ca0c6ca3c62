//! TURN (RFC 8656) against the real binary over loopback: UDP, TCP and TLS clients built on the
//! sans-IO `turnpike_proto::turn_client`, the peer policy, quotas, hostile input, and interop
//! with webrtc-rs's `turn` client and coturn's `turnutils_uclient`.
//!
//! Every server gets its own listening ports, below Linux's ephemeral range, and a relay range
//! above it (61000–65535), so neither collides with the client sockets of parallel tests.
//! Peers are std UDP sockets the test owns on 127.0.0.1 or ::1; nothing leaves the machine.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use turnpike_proto::credential::rest_password;
use turnpike_proto::fast::{
    finish_with_fingerprint, write_attr, write_header, write_xor_addr_attr,
};
use turnpike_proto::turn_client::{
    AddressFamily, Allocate, Challenge, ChannelNumber, Credentials, Incoming, LongTermAuth,
    Request, Response, SendIndication, channel_data, channel_data_frame_len, parse_incoming,
    parse_response,
};
use turnpike_proto::{Class, attr, integrity, method};

use crate::server::{Server, free_port, http_get};

const SECRET: &str = "loopback-turn-secret";
const RELAY_PORTS: &str = "61000-65535";
/// How long a peer or client waits for something that must arrive.
const ARRIVE: Duration = Duration::from_secs(3);
/// How long a test listens to be sure that something does not arrive.
const QUIET: Duration = Duration::from_millis(300);

// ------------------------------------------------------------------------------- server

/// A running server with the TURN flags every test uses.
struct Turn {
    srv: Server,
    /// The first listening address, UDP and TCP (127.0.0.1 unless `Opts::primary` says
    /// otherwise).
    udp: SocketAddr,
    /// A second listening address on ::1 (`Opts::v6`).
    udp6: Option<SocketAddr>,
    tls: Option<SocketAddr>,
    certs: Option<Certs>,
}

#[derive(Default)]
struct Opts<'a> {
    /// The IP of the first listening address, as `listen_port` takes it ("[::1]");
    /// default 127.0.0.1.
    primary: Option<&'a str>,
    v6: bool,
    tls: bool,
    secret: Option<&'a str>,
    extra: &'a [&'a str],
}

fn start(opts: Opts<'_>) -> Turn {
    let ip = opts.primary.unwrap_or("127.0.0.1");
    let udp: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().unwrap();
    let udp6: Option<SocketAddr> = opts
        .v6
        .then(|| format!("[::1]:{}", free_port("[::1]")).parse().unwrap());
    let certs = opts.tls.then(Certs::new);
    let tls: Option<SocketAddr> = opts.tls.then(|| {
        format!("127.0.0.1:{}", free_port("127.0.0.1"))
            .parse()
            .unwrap()
    });
    let mut args: Vec<String> = vec![
        "--listen".into(),
        udp.to_string(),
        "--auth-secret".into(),
        opts.secret.unwrap_or(SECRET).into(),
        "--relay-ports".into(),
        RELAY_PORTS.into(),
    ];
    if let Some(a) = udp6 {
        args.extend(["--listen".into(), a.to_string()]);
    }
    if let (Some(c), Some(t)) = (&certs, tls) {
        args.extend([
            "--cert".into(),
            c.cert.display().to_string(),
            "--key".into(),
            c.key.display().to_string(),
            "--tls-listen".into(),
            t.to_string(),
        ]);
    }
    args.extend(opts.extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Turn {
        srv: Server::start(&refs),
        udp,
        udp6,
        tls,
        certs,
    }
}

impl Turn {
    fn wait_metric(&self, series: &str, want: u64) {
        self.srv.wait_metric(series, want);
    }

    /// Waits until `series` is at least `min`.
    fn wait_at_least(&self, series: &str, min: u64) {
        self.srv
            .wait_metric_until(series, |v| v >= min, &format!("at least {min}"));
    }

    fn stop(self) {
        self.srv.stop();
    }
}

/// A self-signed certificate for "localhost" in PEM files of a temporary directory.
struct Certs {
    dir: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    der: rustls::pki_types::CertificateDer<'static>,
}

impl Certs {
    fn new() -> Certs {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "turnpike-turn-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .expect("self-signed certificate");
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        Certs {
            dir,
            cert,
            key,
            der: ck.cert.der().clone(),
        }
    }

    fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ------------------------------------------------------------------------------- client

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// TURN REST credentials valid for an hour.
fn rest(user: &str) -> Credentials {
    Credentials::rest(SECRET.as_bytes(), unix_now() + 3600, user)
}

/// A transaction id, unique in this process.
fn tid() -> [u8; 12] {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut id = [0u8; 12];
    id[..8].copy_from_slice(&t.to_be_bytes());
    id[8..].copy_from_slice(&(n as u32).to_be_bytes());
    id
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// How a client reaches the server.
enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream),
    Tls(Box<TlsStream>),
}

/// A reply to one request, with whether the request was signed.
struct Reply {
    bytes: Vec<u8>,
    signed: bool,
}

impl Reply {
    fn response(&self) -> Response<'_> {
        parse_response(&self.bytes).expect("a valid TURN response")
    }

    fn code(&self) -> Option<u16> {
        self.response().error_code()
    }
}

/// Data the server relayed to a client.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    /// A Data indication from `peer`.
    Data { peer: SocketAddr, data: Vec<u8> },
    /// A ChannelData message.
    Channel { channel: u16, data: Vec<u8> },
}

/// A blocking TURN client over UDP, TCP or TLS.
struct Client {
    link: Link,
    server: SocketAddr,
    auth: LongTermAuth,
    /// Stream bytes not yet framed.
    pending: Vec<u8>,
    /// Data messages that arrived while a transaction waited for its response.
    queue: VecDeque<Vec<u8>>,
    /// The error codes that made [`Client::transact`] retry (401, 438).
    challenges: Vec<u16>,
}

impl Client {
    fn new(link: Link, server: SocketAddr, creds: Credentials) -> Client {
        Client {
            link,
            server,
            auth: LongTermAuth::new(creds),
            pending: Vec::new(),
            queue: VecDeque::new(),
            challenges: Vec::new(),
        }
    }

    fn udp(local: &str, server: SocketAddr, creds: Credentials) -> Client {
        let s = UdpSocket::bind(local).expect("bind client socket");
        Client::new(Link::Udp(s), server, creds)
    }

    fn tcp(server: SocketAddr, creds: Credentials) -> Client {
        let s = TcpStream::connect(server).expect("TCP connect");
        s.set_nodelay(true).unwrap();
        Client::new(Link::Tcp(s), server, creds)
    }

    fn tls(server: SocketAddr, certs: &Certs, creds: Credentials) -> Client {
        let s = TcpStream::connect(server).expect("TCP connect for TLS");
        s.set_nodelay(true).unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let conn = rustls::ClientConnection::new(certs.client_config(), name).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, s);
        tls.sock.set_read_timeout(Some(ARRIVE)).unwrap();
        while tls.conn.is_handshaking() {
            tls.conn
                .complete_io(&mut tls.sock)
                .expect("TLS handshake with the server's certificate");
        }
        Client::new(Link::Tls(Box::new(tls)), server, creds)
    }

    fn is_stream(&self) -> bool {
        !matches!(self.link, Link::Udp(_))
    }

    /// The client's transport address, as the server should see it.
    fn local_addr(&self) -> SocketAddr {
        match &self.link {
            Link::Udp(s) => s.local_addr(),
            Link::Tcp(s) => s.local_addr(),
            Link::Tls(s) => s.sock.local_addr(),
        }
        .unwrap()
    }

    fn send(&mut self, bytes: &[u8]) {
        match &mut self.link {
            Link::Udp(s) => {
                s.send_to(bytes, self.server).expect("UDP send");
            }
            Link::Tcp(s) => s.write_all(bytes).expect("TCP write"),
            Link::Tls(s) => {
                s.write_all(bytes).expect("TLS write");
                s.flush().expect("TLS flush");
            }
        }
    }

    /// The next datagram, or stream frame, from the server within `wait`.
    fn recv_frame(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let Client {
            link,
            server,
            pending,
            ..
        } = self;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if let Link::Udp(s) = link {
                if left.is_zero() {
                    return None;
                }
                s.set_read_timeout(Some(left)).unwrap();
                match s.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        assert_eq!(from, *server, "datagrams come from the server");
                        return Some(buf[..n].to_vec());
                    }
                    Err(e) if is_timeout(&e) => return None,
                    Err(e) => panic!("UDP receive: {e}"),
                }
            }
            if let Some(n) = stream_frame_len(pending)
                && pending.len() >= n
            {
                return Some(pending.drain(..n).collect());
            }
            if left.is_zero() {
                return None;
            }
            let read = match link {
                Link::Tcp(s) => {
                    s.set_read_timeout(Some(left)).unwrap();
                    s.read(&mut buf)
                }
                Link::Tls(s) => {
                    s.sock.set_read_timeout(Some(left)).unwrap();
                    s.read(&mut buf)
                }
                Link::Udp(_) => unreachable!("handled above"),
            };
            match read {
                Ok(0) => panic!("the server closed the connection"),
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(e) if is_timeout(&e) => return None,
                Err(e) => panic!("stream read: {e}"),
            }
        }
    }

    /// Sends `msg` (a request with transaction id `id`) and waits for its response; over UDP
    /// retransmits (RFC 8489 §6.2.1, shortened). Data that arrives meanwhile is queued.
    fn roundtrip(&mut self, msg: &[u8], id: [u8; 12], signed: bool) -> Reply {
        let (tries, mut wait) = if self.is_stream() {
            (1, Duration::from_secs(5))
        } else {
            (4, Duration::from_millis(500))
        };
        for _ in 0..tries {
            self.send(msg);
            let deadline = Instant::now() + wait;
            while let Some(frame) =
                self.recv_frame(deadline.saturating_duration_since(Instant::now()))
            {
                match parse_incoming(&frame) {
                    Ok(Incoming::Response(r)) if r.transaction_id == id => {
                        return Reply {
                            bytes: frame,
                            signed,
                        };
                    }
                    // The answer to an earlier retransmission.
                    Ok(Incoming::Response(_)) => {}
                    Ok(_) => self.queue.push_back(frame),
                    Err(e) => panic!("undecodable message from the server: {e}"),
                }
            }
            wait *= 2;
        }
        panic!("no response from {} to a request", self.server);
    }

    /// Sends one request, signed once the client has been challenged.
    fn request(&mut self, req: Request<'_>) -> Reply {
        let mut out = Vec::new();
        let id = tid();
        let signed = req
            .encode(&mut out, &id, Some(&self.auth), true)
            .expect("request encodes");
        self.roundtrip(&out, id, signed)
    }

    /// Sends a request with hand-written attributes, signed like [`Client::request`]: for
    /// values the builders refuse to write.
    fn raw_request(
        &mut self,
        method: u16,
        attrs: &[(u16, &[u8])],
        peer: Option<SocketAddr>,
    ) -> Reply {
        let mut out = Vec::new();
        let id = tid();
        write_header(&mut out, method, Class::Request, &id);
        for (t, v) in attrs {
            write_attr(&mut out, *t, v);
        }
        if let Some(p) = peer {
            write_xor_addr_attr(&mut out, attr::XOR_PEER_ADDRESS, p, &id);
        }
        let signed = self.auth.sign(&mut out, 0);
        finish_with_fingerprint(&mut out, 0);
        self.roundtrip(&out, id, signed)
    }

    /// A request with the long-term mechanism: retried after a 401 challenge or a 438, and
    /// a success (or an error after authentication) checked for MESSAGE-INTEGRITY(-SHA256).
    fn transact(&mut self, req: Request<'_>) -> Reply {
        for _ in 0..3 {
            let reply = self.request(req);
            let code = reply.code();
            let challenge = {
                let r = reply.response();
                if !matches!(code, Some(400 | 401 | 420 | 438)) && reply.signed {
                    self.auth
                        .verify(&r)
                        .expect("the reply is signed with our key");
                }
                self.auth.handle_challenge(&r, reply.signed)
            };
            match challenge {
                Challenge::Retry => self.challenges.push(code.unwrap()),
                _ => return reply,
            }
        }
        panic!("challenged three times in a row");
    }

    /// Allocates; returns the relayed addresses.
    fn allocate(&mut self, a: Allocate) -> Vec<SocketAddr> {
        let reply = self.transact(Request::Allocate(a));
        let r = reply.response();
        assert!(r.is_success(), "Allocate failed: {:?}", r.error);
        r.relayed.iter().flatten().copied().collect()
    }

    /// A request that must succeed.
    fn ok(&mut self, req: Request<'_>) {
        let reply = self.transact(req);
        assert_eq!(reply.code(), None, "{req:?} failed");
    }

    /// The error code of a request that must fail.
    fn fails(&mut self, req: Request<'_>) -> u16 {
        self.transact(req)
            .code()
            .unwrap_or_else(|| panic!("{req:?} succeeded"))
    }

    fn send_indication(&mut self, peer: SocketAddr, data: &[u8]) {
        let mut out = Vec::new();
        SendIndication {
            peer,
            data,
            dont_fragment: false,
            fingerprint: true,
        }
        .encode(&mut out, &tid())
        .unwrap();
        self.send(&out);
    }

    fn send_channel(&mut self, channel: u16, data: &[u8]) {
        let mut out = Vec::new();
        let ch = ChannelNumber::new(channel).expect("valid channel number");
        channel_data(&mut out, ch, data, self.is_stream()).unwrap();
        self.send(&out);
    }

    /// The next relayed data within `wait`.
    fn recv_data(&mut self, wait: Duration) -> Option<Got> {
        let frame = match self.queue.pop_front() {
            Some(f) => f,
            None => self.recv_frame(wait)?,
        };
        match parse_incoming(&frame).expect("decodable") {
            Incoming::Data(d) => Some(Got::Data {
                peer: d.peer,
                data: d.data.to_vec(),
            }),
            Incoming::ChannelData(c) => Some(Got::Channel {
                channel: c.channel.get(),
                data: c.payload.to_vec(),
            }),
            Incoming::Response(r) => panic!("unexpected response {r:?}"),
        }
    }

    fn expect_data(&mut self, wait: Duration) -> Got {
        self.recv_data(wait)
            .unwrap_or_else(|| panic!("no relayed data within {wait:?}"))
    }

    fn expect_nothing(&mut self) {
        if let Some(got) = self.recv_data(QUIET) {
            panic!("unexpected relayed data {got:?}");
        }
    }

    /// Closes a TCP or TLS connection (TLS with close_notify).
    fn close(self) {
        match self.link {
            Link::Udp(_) => {}
            Link::Tcp(s) => drop(s),
            Link::Tls(mut s) => {
                s.conn.send_close_notify();
                let _ = s.conn.complete_io(&mut s.sock);
            }
        }
    }
}

/// The length of the frame at the start of a TURN stream (a STUN message, or ChannelData
/// padded to 4), once its header is there.
fn stream_frame_len(b: &[u8]) -> Option<usize> {
    if b.len() < 4 {
        return None;
    }
    match b[0] >> 6 {
        0 => Some(20 + usize::from(u16::from_be_bytes([b[2], b[3]]))),
        1 => channel_data_frame_len(b),
        _ => panic!(
            "the server sent neither STUN nor ChannelData: {:02x?}",
            &b[..4]
        ),
    }
}

/// A UDP peer the test owns.
struct Peer(UdpSocket);

impl Peer {
    fn bind(ip: &str) -> Peer {
        Peer(UdpSocket::bind(format!("{ip}:0")).expect("bind peer"))
    }

    fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }

    fn recv(&self, wait: Duration) -> Option<(Vec<u8>, SocketAddr)> {
        self.0.set_read_timeout(Some(wait)).unwrap();
        let mut buf = vec![0u8; 65_536];
        match self.0.recv_from(&mut buf) {
            Ok((n, from)) => Some((buf[..n].to_vec(), from)),
            Err(e) if is_timeout(&e) => None,
            Err(e) => panic!("peer receive: {e}"),
        }
    }

    fn expect(&self, from: SocketAddr, data: &[u8]) {
        let (got, src) = self
            .recv(ARRIVE)
            .unwrap_or_else(|| panic!("peer {} got nothing from {from}", self.addr()));
        assert_eq!((src, got.as_slice()), (from, data), "peer received");
    }

    fn expect_nothing(&self) {
        if let Some((got, from)) = self.recv(QUIET) {
            panic!(
                "peer {} unexpectedly received {} bytes from {from}",
                self.addr(),
                got.len()
            );
        }
    }

    fn send(&self, to: SocketAddr, data: &[u8]) {
        self.0.send_to(data, to).expect("peer send");
    }
}

/// `len` bytes starting with `tag`.
fn payload(tag: &str, len: usize) -> Vec<u8> {
    let filler = (0..).map(|i: usize| (i * 7 + 3) as u8);
    tag.bytes().chain(filler).take(len).collect()
}

/// Permission, Send indication and Data indication, then a channel both ways, between an
/// allocated client and an echo peer.
fn relay_both_ways(c: &mut Client, relay: SocketAddr, peer: &Peer) {
    let pa = peer.addr();
    c.ok(Request::CreatePermission(&[pa]));
    // Without a channel: Send indication out, Data indication back.
    for len in [5, 1200] {
        let out = payload("send", len);
        c.send_indication(pa, &out);
        peer.expect(relay, &out);
        let back = payload("data", len + 1);
        peer.send(relay, &back);
        assert_eq!(
            c.expect_data(ARRIVE),
            Got::Data {
                peer: pa,
                data: back
            },
            "Data indication with the peer's address"
        );
    }
    // A channel: ChannelData both ways, with lengths that need padding over streams.
    c.ok(Request::ChannelBind {
        channel: ChannelNumber::new(0x4001).unwrap(),
        peer: pa,
    });
    for len in [1, 2, 3, 4, 5, 333, 1200] {
        let out = payload("chan", len);
        c.send_channel(0x4001, &out);
        peer.expect(relay, &out);
    }
    for len in [1, 2, 3, 4, 5, 333, 1200] {
        let back = payload("back", len);
        peer.send(relay, &back);
        assert_eq!(
            c.expect_data(ARRIVE),
            Got::Channel {
                channel: 0x4001,
                data: back
            }
        );
    }
    // Back-to-back messages in both directions keep their order and framing.
    for i in 0..20u8 {
        c.send_channel(0x4001, &[i; 7]);
    }
    for i in 0..20u8 {
        peer.expect(relay, &[i; 7]);
    }
    for i in 0..20u8 {
        peer.send(relay, &[i; 6]);
    }
    for i in 0..20u8 {
        assert_eq!(
            c.expect_data(ARRIVE),
            Got::Channel {
                channel: 0x4001,
                data: vec![i; 6]
            }
        );
    }
}

/// Refresh with LIFETIME 0 deletes the allocation: then Send is dropped and Refresh gets 437.
fn delete_allocation(c: &mut Client, relay: SocketAddr, peer: &Peer) {
    let reply = c.transact(Request::Refresh {
        lifetime: 0,
        family: None,
    });
    let r = reply.response();
    assert!(r.is_success(), "{:?}", r.error);
    assert_eq!(r.lifetime, Some(0));
    c.send_indication(peer.addr(), b"after delete");
    c.send_channel(0x4001, b"after delete");
    peer.expect_nothing();
    // The relay port is closed: a peer's datagram reaches nobody.
    peer.send(relay, b"to a freed relay");
    c.expect_nothing();
    assert_eq!(
        c.fails(Request::Refresh {
            lifetime: 600,
            family: None,
        }),
        437
    );
}

fn relay_port_ok(a: SocketAddr) {
    assert!(
        (61000..=65535).contains(&a.port()),
        "relay port {} inside --relay-ports {RELAY_PORTS}",
        a.port()
    );
}

// -------------------------------------------------------------------------------- tests

#[test]
fn turn_udp_ipv4_and_ipv6_allocate_relay_and_delete() {
    let t = start(Opts {
        v6: true,
        extra: &["--allow-peer", "127.0.0.1/32", "--allow-peer", "::1/128"],
        ..Opts::default()
    });
    for (ip, server, family) in [
        ("127.0.0.1", t.udp, AddressFamily::V4),
        ("::1", t.udp6.unwrap(), AddressFamily::V6),
    ] {
        let local = SocketAddr::new(ip.parse().unwrap(), 0).to_string();
        let mut c = Client::udp(&local, server, rest("udp-user"));
        let reply = c.transact(Request::Allocate(Allocate {
            family: Some(family),
            ..Allocate::default()
        }));
        assert_eq!(c.challenges, vec![401], "one 401 challenge, then success");
        let r = reply.response();
        assert!(r.is_success(), "{:?}", r.error);
        let relay = r.relayed_address().expect("XOR-RELAYED-ADDRESS");
        assert_eq!(r.relayed[1], None, "one family asked, one relayed address");
        assert_eq!(
            relay.ip(),
            server.ip(),
            "relay IP defaults to the listen IP"
        );
        relay_port_ok(relay);
        assert_eq!(r.mapped, Some(c.local_addr()), "XOR-MAPPED-ADDRESS");
        assert_eq!(r.lifetime, Some(600));
        assert!(
            r.integrity_sha256 && c.auth.uses_sha256_integrity(),
            "an RFC 8489 client signs with MESSAGE-INTEGRITY-SHA256 and so does the reply"
        );
        assert_eq!(c.auth.realm(), Some("turnpike"));

        let peer = Peer::bind(ip);
        relay_both_ways(&mut c, relay, &peer);
        delete_allocation(&mut c, relay, &peer);
    }
    t.wait_metric("turnpike_turn_allocations", 0);
    t.wait_metric("turnpike_turn_allocations_created_total", 2);
    t.wait_metric("turnpike_turn_allocations_deleted_total", 2);
    t.wait_at_least(
        "turnpike_turn_relayed_packets_total{direction=\"to-peer\"}",
        2 * 29,
    );
    t.wait_at_least(
        "turnpike_turn_relayed_packets_total{direction=\"to-client\"}",
        2 * 29,
    );
    t.wait_at_least(
        "turnpike_turn_client_drops_total{reason=\"no-allocation\"}",
        4,
    );
    t.stop();
}

#[test]
fn turn_tcp_and_tls_relay_and_close_deletes_the_allocation() {
    let t = start(Opts {
        tls: true,
        extra: &["--allow-peer", "127.0.0.1/32"],
        ..Opts::default()
    });
    let certs = t.certs.as_ref().unwrap();
    let tls = t.tls.unwrap();
    for stream_kind in ["tcp", "tls"] {
        let mut c = match stream_kind {
            "tcp" => Client::tcp(t.udp, rest("tcp-user")),
            _ => Client::tls(tls, certs, rest("tls-user")),
        };
        let reply = c.transact(Request::Allocate(Allocate::default()));
        assert_eq!(c.challenges, vec![401], "{stream_kind}");
        let r = reply.response();
        assert!(r.is_success(), "{stream_kind}: {:?}", r.error);
        let relay = r.relayed_address().unwrap();
        assert_eq!(relay.ip(), t.udp.ip());
        relay_port_ok(relay);
        assert_eq!(r.mapped, Some(c.local_addr()), "{stream_kind}");
        let peer = Peer::bind("127.0.0.1");
        relay_both_ways(&mut c, relay, &peer);
        delete_allocation(&mut c, relay, &peer);
    }
    t.wait_metric("turnpike_turn_allocations", 0);

    // Closing the connection deletes its allocation, and frees its relay port.
    let mut tcp = Client::tcp(t.udp, rest("tcp-user"));
    let mut tls_client = Client::tls(tls, certs, rest("tls-user"));
    let relays: Vec<SocketAddr> = [&mut tcp, &mut tls_client]
        .into_iter()
        .map(|c| c.allocate(Allocate::default())[0])
        .collect();
    t.wait_metric("turnpike_turn_allocations", 2);
    let deleted = 2; // the two Refresh 0 above
    tcp.close();
    tls_client.close();
    t.wait_metric("turnpike_turn_allocations", 0);
    t.wait_metric("turnpike_turn_allocations_deleted_total", deleted + 2);
    for relay in relays {
        assert!(
            UdpSocket::bind(relay).is_ok(),
            "relay port {relay} is free again"
        );
    }
    t.stop();
}

#[test]
fn turn_long_term_auth_rejections_and_foreign_nonce() {
    let first = start(Opts {
        extra: &["--user", "alice:pw", "--realm", "loopback.test"],
        ..Opts::default()
    });
    // A static user.
    let mut alice = Client::udp("127.0.0.1:0", first.udp, Credentials::new("alice", "pw"));
    alice.allocate(Allocate::default());
    assert_eq!(alice.auth.realm(), Some("loopback.test"));

    // The classic signature (RFC 5389: MD5 key, MESSAGE-INTEGRITY, no PASSWORD-ALGORITHM)
    // is accepted too, and answered in kind.
    let key = integrity::long_term_key("alice", "loopback.test", "pw");
    let nonce = alice.auth.nonce().unwrap().to_owned();
    let mut out = Vec::new();
    let id = tid();
    Request::Refresh {
        lifetime: 600,
        family: None,
    }
    .encode(&mut out, &id, None, false)
    .unwrap();
    write_attr(&mut out, attr::USERNAME, b"alice");
    write_attr(&mut out, attr::REALM, b"loopback.test");
    write_attr(&mut out, attr::NONCE, nonce.as_bytes());
    integrity::append(&mut out, 0, &key);
    finish_with_fingerprint(&mut out, 0);
    let reply = alice.roundtrip(&out, id, true);
    let r = reply.response();
    assert!(r.is_success(), "{:?}", r.error);
    assert!(
        r.integrity && !r.integrity_sha256,
        "answered with MESSAGE-INTEGRITY"
    );
    integrity::verify(r.view(), &key).expect("signed with the MD5 key");

    // Wrong password, unknown user, expired REST username: 401 after the challenge.
    let expired = Credentials::rest(SECRET.as_bytes(), unix_now() - 60, "late");
    let wrong_secret = Credentials::rest(b"not-the-secret", unix_now() + 3600, "forger");
    for creds in [
        Credentials::new("alice", "wrong"),
        Credentials::new("mallory", "pw"),
        expired,
        wrong_secret,
    ] {
        let name = creds.username().to_owned();
        let mut c = Client::udp("127.0.0.1:0", first.udp, creds);
        let reply = c.transact(Request::Allocate(Allocate::default()));
        assert_eq!(c.challenges, vec![401], "{name}");
        assert_eq!(reply.code(), Some(401), "{name} is refused");
        assert!(!reply.response().integrity, "a 401 is not signed");
    }
    first.wait_metric("turnpike_turn_auth_failures_total{reason=\"mismatch\"}", 2);
    first.wait_metric(
        "turnpike_turn_auth_failures_total{reason=\"unknown-user\"}",
        1,
    );
    first.wait_metric("turnpike_turn_auth_failures_total{reason=\"expired\"}", 1);

    // A signed request without NONCE is a bad request (400), not a challenge.
    let mut c = Client::udp("127.0.0.1:0", first.udp, Credentials::new("alice", "pw"));
    let mut out = Vec::new();
    let id = tid();
    Request::Allocate(Allocate::default())
        .encode(&mut out, &id, None, false)
        .unwrap();
    write_attr(&mut out, attr::USERNAME, b"alice");
    write_attr(&mut out, attr::REALM, b"loopback.test");
    integrity::append(&mut out, 0, &key);
    finish_with_fingerprint(&mut out, 0);
    assert_eq!(c.roundtrip(&out, id, true).code(), Some(400));

    // A nonce from a previous server start with another secret is stale: 438, then the
    // client retries with the fresh nonce and succeeds.
    let mut carried = Client::udp("127.0.0.1:0", first.udp, Credentials::new("alice", "pw"));
    carried.allocate(Allocate::default());
    first.stop();
    let second = start(Opts {
        secret: Some("another-secret-entirely"),
        extra: &["--user", "alice:pw", "--realm", "loopback.test"],
        ..Opts::default()
    });
    carried.server = second.udp;
    carried.challenges.clear();
    carried.allocate(Allocate::default());
    assert_eq!(
        carried.challenges,
        vec![438],
        "the old nonce is refused with 438"
    );
    second.wait_metric("turnpike_turn_auth_failures_total{reason=\"bad-nonce\"}", 1);
    second.stop();
}

#[test]
fn turn_peer_policy_and_relay_to_relay() {
    let t = start(Opts {
        v6: true,
        ..Opts::default()
    });
    let mut a = Client::udp("127.0.0.1:0", t.udp, rest("policy-a"));
    let ra = a.allocate(Allocate::default())[0];
    let v: Vec<SocketAddr> = [
        "10.0.0.1:9",
        "169.254.169.254:80",
        "127.0.0.3:9",
        "0.0.0.0:9",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    for peer in &v {
        assert_eq!(a.fails(Request::CreatePermission(&[*peer])), 403, "{peer}");
        assert_eq!(
            a.fails(Request::ChannelBind {
                channel: ChannelNumber::MIN,
                peer: *peer,
            }),
            403,
            "{peer}"
        );
    }
    // All or nothing: one denied peer fails the whole request.
    let mut b = Client::udp("127.0.0.1:0", t.udp, rest("policy-b"));
    let rb = b.allocate(Allocate::default())[0];
    assert_eq!(a.fails(Request::CreatePermission(&[rb, v[0]])), 403);
    // A Send to a denied peer is dropped (and counted), even without a permission.
    a.send_indication(v[0], b"never");

    // IPv6 forms of denied IPv4 addresses are denied too, on an IPv6 allocation.
    let mut six = Client::udp("[::1]:0", t.udp6.unwrap(), rest("policy-6"));
    six.allocate(Allocate {
        family: Some(AddressFamily::V6),
        ..Allocate::default()
    });
    for peer in [
        "[::ffff:10.0.0.1]:9",
        "[::ffff:169.254.169.254]:80",
        "[::ffff:127.0.0.3]:9",
        "[64:ff9b::a00:1]:9",
        "[fe80::1]:9",
        "[::2]:9",
    ] {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(six.fails(Request::CreatePermission(&[peer])), 403, "{peer}");
    }
    assert_eq!(
        six.fails(Request::CreatePermission(&[ra])),
        443,
        "an IPv4 peer on an IPv6 allocation"
    );

    // Relay to relay: both relays are on 127.0.0.1, which is the server's own IP; they
    // reach each other without --allow-peer.
    a.ok(Request::CreatePermission(&[rb]));
    b.ok(Request::CreatePermission(&[ra]));
    a.send_indication(rb, b"a to b");
    assert_eq!(
        b.expect_data(ARRIVE),
        Got::Data {
            peer: ra,
            data: b"a to b".to_vec()
        }
    );
    b.ok(Request::ChannelBind {
        channel: ChannelNumber::new(0x7FFF).unwrap(),
        peer: ra,
    });
    b.send_channel(0x7FFF, b"b to a on a channel");
    assert_eq!(
        a.expect_data(ARRIVE),
        Got::Data {
            peer: rb,
            data: b"b to a on a channel".to_vec()
        }
    );
    a.send_indication(rb, b"a to b again");
    assert_eq!(
        b.expect_data(ARRIVE),
        Got::Channel {
            channel: 0x7FFF,
            data: b"a to b again".to_vec()
        }
    );

    // Any other port of the server's IPs is unreachable: a UDP socket of the test on
    // 127.0.0.1, the server's own STUN port (a Binding request would be answered back
    // through the relay), its metrics and HTTP ports.
    let sink = Peer::bind("127.0.0.1");
    let binding = crate::stun::binding_request(&[], true);
    let not_a_relay = "turnpike_turn_client_drops_total{reason=\"not-a-relay\"}";
    for target in [sink.addr(), t.udp, t.srv.metrics, t.srv.http] {
        a.send_indication(target, &binding);
    }
    a.ok(Request::ChannelBind {
        channel: ChannelNumber::new(0x4002).unwrap(),
        peer: sink.addr(),
    });
    a.send_channel(0x4002, b"over a channel");
    // An IPv6 form of the server's own IPv4 address is not one of its own addresses: the
    // policy judges it by the IPv4 address inside (loopback) and refuses it.
    let mapped = |port: u16| SocketAddr::new("::ffff:127.0.0.1".parse().unwrap(), port);
    assert_eq!(
        six.fails(Request::CreatePermission(&[mapped(sink.addr().port())])),
        403
    );
    for port in [sink.addr().port(), t.udp.port(), rb.port()] {
        six.send_indication(mapped(port), &binding);
    }
    sink.expect_nothing();
    a.expect_nothing();
    b.expect_nothing();
    six.expect_nothing();
    t.wait_metric(not_a_relay, 5);
    t.wait_at_least(
        "turnpike_turn_client_drops_total{reason=\"peer-denied\"}",
        3,
    );
    // A freed relay is no longer reachable either.
    b.ok(Request::Refresh {
        lifetime: 0,
        family: None,
    });
    a.send_indication(rb, b"to a freed relay");
    t.wait_metric(not_a_relay, 6);
    t.wait_at_least(
        "turnpike_turn_permission_denials_total{reason=\"private\"}",
        3,
    );
    t.wait_at_least(
        "turnpike_turn_permission_denials_total{reason=\"link-local\"}",
        4,
    );
    t.wait_at_least(
        "turnpike_turn_permission_denials_total{reason=\"loopback\"}",
        3,
    );
    t.stop();

    // On an IPv6-only server, ::ffff:127.0.0.1 is loopback and not the server's own IP: 403.
    let v6only = start(Opts {
        primary: Some("[::1]"),
        ..Opts::default()
    });
    let mut c = Client::udp("[::1]:0", v6only.udp, rest("v6only"));
    c.allocate(Allocate {
        family: Some(AddressFamily::V6),
        ..Allocate::default()
    });
    for peer in ["[::ffff:127.0.0.1]:9", "[::1]:9"] {
        let peer: SocketAddr = peer.parse().unwrap();
        let code = c.transact(Request::CreatePermission(&[peer])).code();
        // ::1 is the server's own IP: a relay-only permission; ::ffff:127.0.0.1 is not.
        let want = if peer.ip() == "::1".parse::<IpAddr>().unwrap() {
            None
        } else {
            Some(403)
        };
        assert_eq!(code, want, "{peer}");
    }
    v6only.stop();

    // With --allow-peer, the same loopback sink is an ordinary peer.
    let t = start(Opts {
        extra: &["--allow-peer", "127.0.0.1/32"],
        ..Opts::default()
    });
    let mut a = Client::udp("127.0.0.1:0", t.udp, rest("allowed"));
    let ra = a.allocate(Allocate::default())[0];
    a.ok(Request::CreatePermission(&[sink.addr()]));
    a.send_indication(sink.addr(), b"allowed now");
    sink.expect(ra, b"allowed now");
    // Only that /32: other loopback addresses and private ranges stay denied.
    for peer in ["127.0.0.3:9", "10.0.0.1:9"] {
        let peer: SocketAddr = peer.parse().unwrap();
        assert_eq!(a.fails(Request::CreatePermission(&[peer])), 403, "{peer}");
    }
    t.stop();
}

#[test]
fn turn_ip_quota_refuses_a_flood_from_one_ip() {
    let t = start(Opts {
        extra: &["--ip-quota", "5"],
        ..Opts::default()
    });
    // A flood of authenticated Allocates from one IP (20 sockets, 20 users): 5 succeed, the
    // rest get 486.
    let mut clients: Vec<Client> = (0..20)
        .map(|i| Client::udp("127.0.0.1:0", t.udp, rest(&format!("flood-{i}"))))
        .collect();
    let codes: Vec<Option<u16>> = clients
        .iter_mut()
        .map(|c| c.transact(Request::Allocate(Allocate::default())).code())
        .collect();
    assert_eq!(codes[..5], [None; 5], "{codes:?}");
    assert_eq!(codes[5..], [Some(486); 15], "{codes:?}");
    t.wait_metric(
        "turnpike_turn_allocation_failures_total{reason=\"quota\"}",
        15,
    );
    t.wait_metric("turnpike_turn_allocations", 5);
    // Another client IP is not affected, and a freed slot is usable again.
    let mut other = Client::udp("127.0.0.2:0", t.udp, rest("other-ip"));
    other.allocate(Allocate::default());
    clients[0].ok(Request::Refresh {
        lifetime: 0,
        family: None,
    });
    clients[5].allocate(Allocate::default());
    assert_eq!(
        clients[6]
            .transact(Request::Allocate(Allocate::default()))
            .code(),
        Some(486)
    );
    t.stop();
}

#[test]
fn turn_server_cap_and_user_quota() {
    // The server-wide cap: 508 for the fourth allocation, from any IP.
    let t = start(Opts {
        extra: &["--max-allocations", "3"],
        ..Opts::default()
    });
    // The clients stay alive to the end, so no later client reuses a 5-tuple.
    let mut clients = Vec::new();
    let ips = [
        "127.0.0.1",
        "127.0.0.2",
        "127.0.0.3",
        "127.0.0.1",
        "127.0.0.2",
    ];
    let codes: Vec<Option<u16>> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let mut c = Client::udp(&format!("{ip}:0"), t.udp, rest(&format!("cap-{i}")));
            let code = c.transact(Request::Allocate(Allocate::default())).code();
            clients.push(c);
            code
        })
        .collect();
    assert_eq!(codes, [None, None, None, Some(508), Some(508)]);
    t.wait_metric(
        "turnpike_turn_allocation_failures_total{reason=\"capacity\"}",
        2,
    );
    t.stop();

    // The per-user quota: the third allocation of one user gets 486, whatever its IP.
    let t = start(Opts {
        extra: &["--user-quota", "2"],
        ..Opts::default()
    });
    let creds = rest("one-user");
    let codes: Vec<Option<u16>> = ips
        .iter()
        .map(|ip| {
            let mut c = Client::udp(&format!("{ip}:0"), t.udp, creds.clone());
            let code = c.transact(Request::Allocate(Allocate::default())).code();
            clients.push(c);
            code
        })
        .collect();
    assert_eq!(codes, [None, None, Some(486), Some(486), Some(486)]);
    let mut other_user = Client::udp("127.0.0.1:0", t.udp, rest("another-user"));
    other_user.allocate(Allocate::default());
    t.stop();
}

#[test]
fn turn_permission_and_channel_limits() {
    let t = start(Opts {
        extra: &[
            "--max-permissions",
            "2",
            "--max-channels",
            "2",
            "--allow-peer",
            "127.0.0.0/8",
        ],
        ..Opts::default()
    });
    let mut c = Client::udp("127.0.0.1:0", t.udp, rest("limits"));
    c.allocate(Allocate::default());
    // Permissions per allocation (per peer IP): the third gets 508, all or nothing.
    let peer = |s: &str| -> SocketAddr { s.parse().unwrap() };
    c.ok(Request::CreatePermission(&[
        peer("127.0.0.5:1000"),
        peer("127.0.0.5:2000"),
    ]));
    c.ok(Request::CreatePermission(&[peer("127.0.0.6:1000")]));
    assert_eq!(
        c.fails(Request::CreatePermission(&[peer("127.0.0.7:1000")])),
        508
    );
    assert_eq!(
        c.fails(Request::CreatePermission(&[
            peer("127.0.0.5:1000"),
            peer("127.0.0.7:1000")
        ])),
        508
    );
    assert_eq!(
        c.fails(Request::ChannelBind {
            channel: ChannelNumber::MIN,
            peer: peer("127.0.0.7:1000"),
        }),
        508,
        "a channel would need a third permission"
    );
    // Refreshing existing permissions is fine.
    c.ok(Request::CreatePermission(&[
        peer("127.0.0.5:3000"),
        peer("127.0.0.6:3000"),
    ]));
    // Channels per allocation: the third gets 508.
    for (n, p) in [(0x4000, "127.0.0.5:1000"), (0x4001, "127.0.0.6:1000")] {
        c.ok(Request::ChannelBind {
            channel: ChannelNumber::new(n).unwrap(),
            peer: peer(p),
        });
    }
    assert_eq!(
        c.fails(Request::ChannelBind {
            channel: ChannelNumber::new(0x4002).unwrap(),
            peer: peer("127.0.0.5:2000"),
        }),
        508
    );
    // Rebinding a number to another peer, or a peer to another number: 400; refreshing a
    // binding: fine.
    for (n, p, want) in [
        (0x4000, "127.0.0.6:1000", Some(400)),
        (0x4003, "127.0.0.5:1000", Some(400)),
        (0x4000, "127.0.0.5:1000", None),
    ] {
        let code = c
            .transact(Request::ChannelBind {
                channel: ChannelNumber::new(n).unwrap(),
                peer: peer(p),
            })
            .code();
        assert_eq!(code, want, "{n:#06x} to {p}");
    }
    t.stop();
}

#[test]
fn turn_malformed_requests_get_the_right_error() {
    let t = start(Opts::default());
    let mut c = Client::udp("127.0.0.1:0", t.udp, rest("malformed"));
    // An unknown comprehension-required attribute: 420 with UNKNOWN-ATTRIBUTES, before
    // authentication (so also to an unsigned request).
    for signed in [false, true] {
        if signed {
            c.allocate(Allocate::default());
        }
        let reply = c.raw_request(
            method::ALLOCATE,
            &[
                (attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
                (0x7FAA, &[1, 2, 3, 4]),
            ],
            None,
        );
        assert_eq!((reply.signed, reply.code()), (signed, Some(420)));
        let unknown: Vec<u16> = reply
            .response()
            .view()
            .attributes()
            .filter(|(t, _)| *t == attr::UNKNOWN_ATTRIBUTES)
            .flat_map(|(_, v)| {
                v.chunks(2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]))
                    .collect::<Vec<_>>()
            })
            .collect();
        assert_eq!(unknown, vec![0x7FAA]);
    }
    // c has an allocation now; a second Allocate on its 5-tuple is a mismatch.
    let code = c
        .transact(Request::Allocate(Allocate {
            lifetime: Some(700),
            ..Allocate::default()
        }))
        .code();
    assert_eq!(code, Some(437));

    let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
    // (name, method, attributes, with XOR-PEER-ADDRESS, expected error)
    type Case = (
        &'static str,
        u16,
        &'static [(u16, &'static [u8])],
        bool,
        u16,
    );
    let cases: [Case; 8] = [
        (
            "channel 0x3FFF",
            method::CHANNEL_BIND,
            &[(attr::CHANNEL_NUMBER, &[0x3F, 0xFF, 0, 0])],
            true,
            400,
        ),
        (
            "channel 0x8000",
            method::CHANNEL_BIND,
            &[(attr::CHANNEL_NUMBER, &[0x80, 0, 0, 0])],
            true,
            400,
        ),
        (
            "channel without peer",
            method::CHANNEL_BIND,
            &[(attr::CHANNEL_NUMBER, &[0x40, 0, 0, 0])],
            false,
            400,
        ),
        (
            "3-byte LIFETIME",
            method::REFRESH,
            &[(attr::LIFETIME, &[0, 0, 1])],
            false,
            400,
        ),
        (
            "CreatePermission without peer",
            method::CREATE_PERMISSION,
            &[],
            false,
            400,
        ),
        (
            "REQUESTED-TRANSPORT TCP",
            method::ALLOCATE,
            &[(attr::REQUESTED_TRANSPORT, &[6, 0, 0, 0])],
            false,
            442,
        ),
        ("no REQUESTED-TRANSPORT", method::ALLOCATE, &[], false, 400),
        (
            "5-byte LIFETIME on Allocate",
            method::ALLOCATE,
            &[
                (attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]),
                (attr::LIFETIME, &[0; 5]),
            ],
            false,
            400,
        ),
    ];
    // A fresh client for the Allocate cases (its 5-tuple has no allocation).
    let mut fresh = Client::udp("127.0.0.1:0", t.udp, rest("malformed"));
    fresh.auth = c.auth.clone();
    for (name, m, attrs, with_peer, want) in cases {
        let who = if m == method::ALLOCATE {
            &mut fresh
        } else {
            &mut c
        };
        let reply = who.raw_request(m, attrs, with_peer.then_some(peer));
        assert_eq!(reply.code(), Some(want), "{name}");
    }
    // The bounds of the accepted range work.
    for n in [0x4000u16, 0x4FFF, 0x5000, 0x7FFF] {
        let b = n.to_be_bytes();
        let p: SocketAddr = format!("127.0.0.1:{}", n).parse().unwrap();
        let reply = c.raw_request(
            method::CHANNEL_BIND,
            &[(attr::CHANNEL_NUMBER, &[b[0], b[1], 0, 0])],
            Some(p),
        );
        assert_eq!(reply.code(), None, "channel {n:#06x}");
    }
    // A Send request (not indication) is a bad request; a Refresh from a 5-tuple without an
    // allocation is 437.
    assert_eq!(
        c.raw_request(method::SEND, &[], Some(peer)).code(),
        Some(400)
    );
    assert_eq!(
        fresh.fails(Request::Refresh {
            lifetime: 600,
            family: None
        }),
        437
    );
    t.wait_metric(
        "turnpike_turn_allocation_failures_total{reason=\"unsupported-transport\"}",
        1,
    );
    t.stop();
}

/// A xorshift generator for hostile input (seeded per run; failures print the seed).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }

    /// Random bytes shaped like what a TURN server parses: plain noise, STUN headers with
    /// the magic cookie and random attributes, ChannelData headers.
    fn datagram(&mut self) -> Vec<u8> {
        let len = (self.next() % 600) as usize;
        let mut d = self.bytes(len);
        match self.next() % 4 {
            0 => {}
            1 | 2 if d.len() >= 20 => {
                d[0] &= 0x3F;
                d[1] = [0x03, 0x04, 0x08, 0x09, 0x16, 0x01][(self.next() % 6) as usize];
                let body = ((d.len() - 20) & !3) as u16;
                d[2..4].copy_from_slice(&body.to_be_bytes());
                d[4..8].copy_from_slice(&0x2112_A442u32.to_be_bytes());
                d.truncate(20 + usize::from(body));
                // Attribute headers with plausible types and lengths.
                let mut at = 20;
                while at + 4 <= d.len() {
                    let t = [
                        0x0006u16, 0x0008, 0x000C, 0x000D, 0x0012, 0x0013, 0x0014, 0x0015, 0x0019,
                        0x001C, 0x8028, 0x8000,
                    ][(self.next() % 12) as usize];
                    let l = (self.next() % 40) as u16;
                    d[at..at + 2].copy_from_slice(&t.to_be_bytes());
                    d[at + 2..at + 4].copy_from_slice(&l.to_be_bytes());
                    at += 4 + usize::from(l).next_multiple_of(4);
                }
            }
            _ if d.len() >= 4 => {
                d[0] = 0x40 | (d[0] & 0x3F);
                let l = (self.next() % 700) as u16;
                d[2..4].copy_from_slice(&l.to_be_bytes());
            }
            _ => {}
        }
        d
    }
}

#[test]
fn turn_random_datagrams_do_not_hurt_the_server() {
    let t = start(Opts {
        extra: &["--allow-peer", "127.0.0.1/32"],
        ..Opts::default()
    });
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut rng = Rng(seed);
    let mut c = Client::udp("127.0.0.1:0", t.udp, rest("fuzz"));
    let relay = c.allocate(Allocate::default())[0];
    let peer = Peer::bind("127.0.0.1");
    let started = Instant::now();

    // 10,000 to the listener, from a socket without an allocation.
    let noise = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..10_000 {
        let _ = noise.send_to(&rng.datagram(), t.udp);
    }
    // 10,000 to the relayed address from a peer without a permission: all dropped.
    for _ in 0..10_000 {
        let _ = peer.0.send_to(&rng.datagram(), relay);
    }
    c.expect_nothing();
    // With a permission, noise from the peer is relayed as data, intact.
    c.ok(Request::CreatePermission(&[peer.addr()]));
    let sent: Vec<Vec<u8>> = (0..200).map(|_| rng.datagram()).collect();
    for d in &sent {
        peer.send(relay, d);
        std::thread::sleep(Duration::from_micros(200));
    }
    let mut got = 0;
    while let Some(g) = c.recv_data(QUIET) {
        match g {
            Got::Data { peer: p, data } => {
                assert_eq!(p, peer.addr());
                assert!(sent.contains(&data), "relayed unchanged (seed {seed})");
                got += 1;
            }
            other => panic!("unexpected {other:?} (seed {seed})"),
        }
    }
    assert!(got > 0, "noise with a permission is relayed (seed {seed})");
    // Random bytes on TCP connections: the server closes them.
    for _ in 0..20 {
        let mut s = TcpStream::connect(t.udp).unwrap();
        s.set_read_timeout(Some(ARRIVE)).unwrap();
        let _ = s.write_all(&rng.bytes(2000));
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + ARRIVE;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => assert!(Instant::now() < deadline, "closed (seed {seed})"),
            }
        }
    }
    assert!(started.elapsed() < Duration::from_secs(20), "bounded");

    // Still serving: the old allocation relays, and a new client allocates.
    c.send_indication(peer.addr(), b"still here");
    peer.expect(relay, b"still here");
    let mut fresh = Client::udp("127.0.0.1:0", t.udp, rest("after-fuzz"));
    fresh.allocate(Allocate::default());
    t.wait_at_least(
        "turnpike_turn_peer_drops_total{reason=\"no-permission\"}",
        1,
    );
    t.stop();
}

// ----------------------------------------------------------------------- webrtc-rs interop

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_webrtc_rs_client_interop() {
    use ::turn::client::{Client as WebrtcClient, ClientConfig};
    use webrtc_util::Conn;

    let t = start(Opts::default());
    let server = t.udp.to_string();
    let mut clients = Vec::new();
    let mut relays = Vec::new();
    for user in ["webrtc-a", "webrtc-b"] {
        let creds = rest(user);
        let conn = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let client = WebrtcClient::new(ClientConfig {
            stun_serv_addr: server.clone(),
            turn_serv_addr: server.clone(),
            username: creds.username().to_owned(),
            password: rest_password(SECRET.as_bytes(), creds.username()),
            realm: String::new(),
            software: String::new(),
            rto_in_ms: 0,
            conn: Arc::new(conn),
            vnet: None,
        })
        .await
        .expect("webrtc-rs client");
        client.listen().await.expect("listen");
        let relay = tokio::time::timeout(ARRIVE, client.allocate())
            .await
            .expect("Allocate within 3 s")
            .expect("webrtc-rs allocates on turnpike");
        clients.push(client);
        relays.push(relay);
    }
    let (a, b) = (&relays[0], &relays[1]);
    let (ra, rb) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    assert_eq!(ra.ip(), t.udp.ip());
    relay_port_ok(ra);
    relay_port_ok(rb);
    assert_eq!(
        clients[0].send_binding_request().await.unwrap().ip(),
        t.udp.ip(),
        "Binding through the same socket"
    );

    // B's send installs B's permission for A's relay IP; its datagram is dropped if A has no
    // permission yet, or arrives later (A skips it). Then A and B ping-pong: the first
    // packets go as Send/Data indications, later ones over the channels the client binds in
    // the background (two ChannelBinds reach the server).
    b.send_to(b"open", ra).await.unwrap();
    let mut buf = vec![0u8; 1500];
    for i in 0..30u32 {
        let ping = format!("ping {i}");
        a.send_to(ping.as_bytes(), rb).await.unwrap();
        let (n, from) = tokio::time::timeout(ARRIVE, b.recv_from(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("B got ping {i}"))
            .unwrap();
        assert_eq!((&buf[..n], from), (ping.as_bytes(), ra));
        let pong = format!("pong {i}");
        b.send_to(pong.as_bytes(), ra).await.unwrap();
        let (n, from) = loop {
            let (n, from) = tokio::time::timeout(ARRIVE, a.recv_from(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("A got pong {i}"))
                .unwrap();
            if &buf[..n] != b"open" {
                break (n, from);
            }
        };
        assert_eq!((&buf[..n], from), (pong.as_bytes(), rb));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.wait_at_least(
        "turnpike_turn_relayed_packets_total{direction=\"to-peer\"}",
        60,
    );
    // Closing a relay conn sends Refresh with LIFETIME 0.
    for r in &relays {
        r.close().await.unwrap();
    }
    for c in &clients {
        c.close().await.unwrap();
    }
    t.wait_metric("turnpike_turn_allocations", 0);
    t.stop();
}

// -------------------------------------------------------------------------- coturn interop

const UCLIENT: &str = "/usr/bin/turnutils_uclient";

/// Waits for a child with a deadline; returns its combined output.
fn wait_output(mut child: Child, limit: Duration, what: &str) -> (bool, String) {
    let deadline = Instant::now() + limit;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = r.read_to_string(&mut text);
            text
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut text = out.join().unwrap();
            text.push_str(&err.join().unwrap());
            return (status.success(), text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The numbers after `key=` on the line with `marker`.
fn uclient_count(out: &str, marker: &str, key: &str) -> Option<u64> {
    let line = out.lines().rev().find(|l| l.contains(marker))?;
    let rest = &line[line.find(key)? + key.len()..];
    rest.split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
fn turn_coturn_uclient_interop_udp_tcp_tls() {
    assert!(
        std::path::Path::new(UCLIENT).exists(),
        "{UCLIENT} is missing: install the Debian package `coturn` (apt-get install coturn; \
         tests/run.sh does it) to run the coturn interop test"
    );
    let t = start(Opts {
        tls: true,
        ..Opts::default()
    });
    let port = t.udp.port().to_string();
    let tls_port = t.tls.unwrap().port().to_string();
    let runs: [(&str, Vec<&str>); 3] = [
        ("udp", vec!["-p", &port]),
        ("tcp", vec!["-t", "-p", &port]),
        ("tls", vec!["-t", "-S", "-p", &tls_port]),
    ];
    // The three clients run at the same time, each in client-to-client mode (-y): two
    // allocations per client send to each other's relayed addresses.
    let children: Vec<(&str, Child)> = runs
        .iter()
        .map(|(name, args)| {
            let child = Command::new(UCLIENT)
                .args(["-W", SECRET, "-y", "-n", "50", "-m", "2", "-l", "200"])
                .args(args)
                .arg("127.0.0.1")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start turnutils_uclient");
            (*name, child)
        })
        .collect();
    let mut total = 0;
    for (name, child) in children {
        let (ok, out) = wait_output(child, Duration::from_secs(40), name);
        assert!(ok, "turnutils_uclient over {name} failed:\n{out}");
        assert!(
            out.contains("Total lost packets 0 "),
            "{name}: packets lost:\n{out}"
        );
        let sent = uclient_count(&out, "tot_send_msgs=", "tot_send_msgs=");
        let recv = uclient_count(&out, "tot_send_msgs=", "tot_recv_msgs=");
        assert!(
            sent.is_some_and(|s| s >= 100) && sent == recv,
            "{name}: sent {sent:?}, received {recv:?}:\n{out}"
        );
        total += sent.unwrap();
    }
    // (Allocations are not checked to be gone: over UDP, uclient abandons the first one it
    // makes without deleting it, as it would on coturn.)
    t.wait_at_least(
        "turnpike_turn_relayed_packets_total{direction=\"to-peer\"}",
        total,
    );
    t.stop();
}

#[test]
fn turn_drain_refuses_new_allocations_and_stops_when_the_last_one_ends() {
    let t = start(Opts {
        extra: &[
            "--drain",
            "--drain-timeout",
            "30",
            "--alternate-server",
            "127.0.0.9:3478",
            "--turn-url",
            "turn:turn1.example:3478?transport=udp",
        ],
        ..Opts::default()
    });
    // --turn-url: the hub hands out the fleet's URL, with credentials.
    let r = http_get(t.srv.http, "/v1/ice-servers");
    assert!(
        r.contains("turn:turn1.example:3478?transport=udp") && r.contains("credential"),
        "{r}"
    );
    let mut a = Client::udp("127.0.0.1:0", t.udp, rest("drain-a"));
    a.allocate(Allocate::default());
    t.wait_metric("turnpike_turn_allocations", 1);
    t.srv.send_signal(15);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = http_get(t.srv.http, "/readyz");
        if r.starts_with("HTTP/1.1 503") && r.contains("draining") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never said draining: {r}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A new client is sent to the alternate server; the existing allocation keeps working.
    let mut b = Client::udp("127.0.0.1:0", t.udp, rest("drain-b"));
    assert_eq!(b.fails(Request::Allocate(Allocate::default())), 300);
    a.ok(Request::Refresh {
        lifetime: 600,
        family: None,
    });
    t.wait_at_least(
        "turnpike_turn_allocation_failures_total{reason=\"draining\"}",
        1,
    );
    // When the last allocation ends, the server stops by itself.
    a.ok(Request::Refresh {
        lifetime: 0,
        family: None,
    });
    let status = t.srv.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
}
