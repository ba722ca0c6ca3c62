//! Several TURN nodes sharing one `--auth-secret` (docs/turn.md, "Several TURN nodes, and
//! draining one"), against two or three real `turnpike serve` processes over loopback:
//! credentials from either node's hub or from `turnpike cred` allocate on every node, a nonce
//! one node issued is accepted by the other, and a draining node sends new clients to the
//! alternate node while its existing allocations keep relaying.
//!
//! Node A listens on 127.0.0.1 and node B on 127.0.0.2; relay sockets bind to the listen IP,
//! so the relayed address says which node made an allocation. Clients and peers are std UDP
//! sockets on 127.0.0.1; nothing leaves the machine.
//!
//! The single-node drain (300 with an alternate, Refresh while draining, exit when the last
//! allocation ends) is in `turn.rs`; here only what needs two nodes, plus the 508 answer and
//! the second signal, which `turn.rs` does not cover.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use turnpike_proto::attr;
use turnpike_proto::turn_client::{
    Allocate, Challenge, Credentials, Incoming, LongTermAuth, Request, Response, SendIndication,
    parse_incoming, parse_response,
};

use crate::server::{Server, free_port, http_get, run_to_exit};

const SECRET: &str = "loopback-fleet-secret";
const OTHER_SECRET: &str = "some-other-fleet-secret";
const RELAY_PORTS: &str = "61000-65535";
/// How long anything that must arrive may take.
const ARRIVE: Duration = Duration::from_secs(3);
const SIGTERM: i32 = 15;

// ------------------------------------------------------------------------------- nodes

/// One `turnpike serve` of the fleet.
struct Node {
    srv: Server,
    /// Its STUN/TURN address (UDP and TCP); relays bind to the same IP.
    udp: SocketAddr,
}

/// Starts a node on `ip` accepting `secrets` (the first one also signs its nonces and its
/// hub's credentials), with loopback peers allowed, plus `extra` flags.
fn node(ip: &str, secrets: &[&str], extra: &[&str]) -> Node {
    let udp: SocketAddr = format!("{ip}:{}", free_port(ip)).parse().unwrap();
    let udp_s = udp.to_string();
    let mut args = vec![
        "--listen",
        udp_s.as_str(),
        "--relay-ports",
        RELAY_PORTS,
        "--allow-peer",
        "127.0.0.0/8",
    ];
    for s in secrets {
        args.extend(["--auth-secret", s]);
    }
    args.extend_from_slice(extra);
    Node {
        srv: Server::start(&args),
        udp,
    }
}

impl Node {
    fn wait_metric(&self, series: &str, want: u64) {
        self.srv.wait_metric(series, want);
    }

    /// Polls `/readyz` until it answers 503 "not ready: draining".
    fn wait_draining(&self) {
        self.srv.wait_readyz(
            |r| r.starts_with("HTTP/1.1 503") && r.ends_with("\r\n\r\nnot ready: draining\n"),
            Duration::from_secs(5),
        );
    }

    /// The TURN entry (username, credential) of the hub's `GET /v1/ice-servers`; checks that
    /// its URLs name this node's port.
    fn hub_credentials(&self) -> Credentials {
        let r = http_get(self.srv.http, "/v1/ice-servers");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let body: Value = serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
        turn_entry(&body["iceServers"], self.udp.port())
    }

    /// The TURN entry of the `welcome` this node's hub sends on `/v1/ws` after a join.
    fn welcome_credentials(&self) -> Credentials {
        let url = format!("ws://{}/v1/ws", self.srv.http);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let welcome = rt.block_on(async {
            use futures_util::{SinkExt, StreamExt};
            use tokio_tungstenite::tungstenite::Message;
            let (mut ws, _) = tokio::time::timeout(ARRIVE, tokio_tungstenite::connect_async(url))
                .await
                .expect("WebSocket connect within 3 s")
                .expect("WebSocket connect");
            let join = r#"{"type":"join","room":"fleet"}"#;
            ws.send(Message::Text(join.into()))
                .await
                .expect("send join");
            let deadline = tokio::time::Instant::now() + ARRIVE;
            loop {
                let m = tokio::time::timeout_at(deadline, ws.next())
                    .await
                    .expect("welcome within 3 s")
                    .expect("stream open")
                    .expect("frame");
                if let Message::Text(t) = m {
                    let v: Value = serde_json::from_str(&t).expect("JSON");
                    let _ = ws.close(None).await;
                    break v;
                }
            }
        });
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        turn_entry(&welcome["ice_servers"], self.udp.port())
    }
}

/// The credentials of the `turn:` entry of an iceServers list whose URLs use `port`.
fn turn_entry(list: &Value, port: u16) -> Credentials {
    let entry = list
        .as_array()
        .expect("an iceServers array")
        .iter()
        .find(|s| {
            s["urls"][0]
                .as_str()
                .is_some_and(|u| u.starts_with("turn:"))
        })
        .unwrap_or_else(|| panic!("no TURN entry in {list}"));
    let udp_url = entry["urls"][0].as_str().unwrap();
    assert!(
        udp_url.ends_with(&format!(":{port}?transport=udp")),
        "{udp_url} names the node's port {port}"
    );
    Credentials::new(
        entry["username"].as_str().expect("username"),
        entry["credential"].as_str().expect("credential"),
    )
}

/// `turnpike cred --secret SECRET --user fleet --json`.
fn cred_tool(secret: &str) -> Credentials {
    let (ok, out) = run_to_exit(
        &["cred", "--secret", secret, "--user", "fleet", "--json"],
        &[],
    );
    assert!(ok, "turnpike cred failed: {out}");
    let v: Value = serde_json::from_str(out.trim()).expect("exactly one JSON object");
    let user = v["username"].as_str().expect("username");
    assert!(user.ends_with(":fleet"), "{v}");
    Credentials::new(user, v["password"].as_str().expect("password"))
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ------------------------------------------------------------------------------ client

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

/// A reply to one request, and whether the request was signed.
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

    /// ALTERNATE-SERVER, if it comes before MESSAGE-INTEGRITY(-SHA256) (after it, it would be
    /// unprotected and a client must ignore it).
    fn alternate_server(&self) -> Option<SocketAddr> {
        let r = self.response();
        r.view()
            .attributes()
            .take_while(|(t, _)| {
                *t != attr::MESSAGE_INTEGRITY && *t != attr::MESSAGE_INTEGRITY_SHA256
            })
            .find(|(t, _)| *t == attr::ALTERNATE_SERVER)
            .map(|(_, v)| plain_address(v))
    }
}

/// A MAPPED-ADDRESS-style value (not XORed), as ALTERNATE-SERVER carries.
fn plain_address(v: &[u8]) -> SocketAddr {
    assert!(v.len() >= 4, "address attribute too short: {v:02x?}");
    let port = u16::from_be_bytes([v[2], v[3]]);
    let ip: IpAddr = match (v[1], v.len()) {
        (0x01, 8) => Ipv4Addr::new(v[4], v[5], v[6], v[7]).into(),
        (0x02, 20) => Ipv6Addr::from(<[u8; 16]>::try_from(&v[4..20]).unwrap()).into(),
        _ => panic!("malformed address attribute {v:02x?}"),
    };
    SocketAddr::new(ip, port)
}

/// A blocking TURN client over UDP on the sans-IO `turn_client`.
struct Client {
    sock: UdpSocket,
    server: SocketAddr,
    auth: LongTermAuth,
    /// The error codes that made [`Client::transact`] retry (401, 438).
    challenges: Vec<u16>,
    /// Data indications that arrived while a transaction waited for its response.
    queue: VecDeque<Vec<u8>>,
}

impl Client {
    fn new(local_ip: &str, server: SocketAddr, creds: Credentials) -> Client {
        Client {
            sock: UdpSocket::bind(format!("{local_ip}:0")).expect("bind client socket"),
            server,
            auth: LongTermAuth::new(creds),
            challenges: Vec::new(),
            queue: VecDeque::new(),
        }
    }

    /// The next datagram from the server within `wait`.
    fn recv(&mut self, wait: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + wait;
        let mut buf = vec![0u8; 65_536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.sock.set_read_timeout(Some(left)).unwrap();
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) if from == self.server => return Some(buf[..n].to_vec()),
                // A late answer from a node this client used before.
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("UDP receive: {e}"),
            }
        }
    }

    /// Sends one request (signed once the client has been challenged) and waits for its
    /// response, retransmitting (RFC 8489 §6.2.1, shortened: 0.5 + 1 + 2 + 4 s at most).
    fn once(&mut self, req: Request<'_>) -> Reply {
        let mut out = Vec::new();
        let id = tid();
        let signed = req
            .encode(&mut out, &id, Some(&self.auth), true)
            .expect("request encodes");
        let mut wait = Duration::from_millis(500);
        for _ in 0..4 {
            self.sock.send_to(&out, self.server).expect("UDP send");
            let deadline = Instant::now() + wait;
            while let Some(d) = self.recv(deadline.saturating_duration_since(Instant::now())) {
                match parse_incoming(&d) {
                    Ok(Incoming::Response(r)) if r.transaction_id == id => {
                        return Reply { bytes: d, signed };
                    }
                    Ok(Incoming::Response(_)) => {}
                    Ok(_) => self.queue.push_back(d),
                    Err(e) => panic!("undecodable message from {}: {e}", self.server),
                }
            }
            wait *= 2;
        }
        panic!("no response from {} to {req:?}", self.server);
    }

    /// A request with the long-term mechanism: retried after a 401 challenge or a 438, and
    /// any other answer to a signed request checked for MESSAGE-INTEGRITY(-SHA256).
    fn transact(&mut self, req: Request<'_>) -> Reply {
        for _ in 0..3 {
            let reply = self.once(req);
            let code = reply.code();
            let r = reply.response();
            if !matches!(code, Some(400 | 401 | 420 | 438)) && reply.signed {
                self.auth
                    .verify(&r)
                    .expect("the reply is signed with our key");
            }
            match self.auth.handle_challenge(&r, reply.signed) {
                Challenge::Retry => self.challenges.push(code.unwrap()),
                _ => return reply,
            }
        }
        panic!("challenged three times in a row by {}", self.server);
    }

    /// Allocates; returns the relayed address.
    fn allocate(&mut self) -> SocketAddr {
        let reply = self.transact(Request::Allocate(Allocate::default()));
        let r = reply.response();
        assert!(
            r.is_success(),
            "Allocate on {} failed: {:?}",
            self.server,
            r.error
        );
        r.relayed_address().expect("XOR-RELAYED-ADDRESS")
    }

    /// A request that must succeed.
    fn ok(&mut self, req: Request<'_>) -> Reply {
        let reply = self.transact(req);
        assert_eq!(reply.code(), None, "{req:?} on {} failed", self.server);
        reply
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
        self.sock.send_to(&out, self.server).expect("UDP send");
    }

    /// The next Data indication: (peer, data).
    fn expect_data(&mut self) -> (SocketAddr, Vec<u8>) {
        let frame = match self.queue.pop_front() {
            Some(f) => f,
            None => self.recv(ARRIVE).unwrap_or_else(|| {
                panic!("no relayed data from {} within {ARRIVE:?}", self.server)
            }),
        };
        match parse_incoming(&frame).expect("decodable") {
            Incoming::Data(d) => (d.peer, d.data.to_vec()),
            other => panic!("expected a Data indication, got {other:?}"),
        }
    }
}

fn refresh(lifetime: u32) -> Request<'static> {
    Request::Refresh {
        lifetime,
        family: None,
    }
}

/// A UDP peer the test owns on 127.0.0.1.
struct Peer(UdpSocket);

impl Peer {
    fn new() -> Peer {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
        s.set_read_timeout(Some(ARRIVE)).unwrap();
        Peer(s)
    }

    fn addr(&self) -> SocketAddr {
        self.0.local_addr().unwrap()
    }

    fn expect(&self, from: SocketAddr, data: &[u8]) {
        let mut buf = [0u8; 2048];
        let (n, src) = self
            .0
            .recv_from(&mut buf)
            .unwrap_or_else(|e| panic!("peer got nothing from {from}: {e}"));
        assert_eq!((src, &buf[..n]), (from, data), "peer received");
    }
}

// -------------------------------------------------------------------------------- tests

#[test]
fn turn_fleet_credentials_from_either_hub_or_turnpike_cred_allocate_on_both_nodes() {
    let a = node("127.0.0.1", &[SECRET], &[]);
    let b = node("127.0.0.2", &[SECRET], &[]);
    let nodes = [&a, &b];

    let minted: Vec<(&str, Credentials)> = vec![
        ("A's /v1/ice-servers", a.hub_credentials()),
        ("A's welcome", a.welcome_credentials()),
        ("B's /v1/ice-servers", b.hub_credentials()),
        ("B's welcome", b.welcome_credentials()),
        ("turnpike cred", cred_tool(SECRET)),
    ];
    // Every credential allocates on both nodes; the relayed address is on the node asked.
    let mut clients = Vec::new();
    for (source, creds) in &minted {
        let expiry: u64 = creds
            .username()
            .split(':')
            .next()
            .unwrap()
            .parse()
            .unwrap_or_else(|_| panic!("{source}: EXPIRY:USER, got {}", creds.username()));
        assert!(expiry > unix_now(), "{source}: not expired");
        for n in nodes {
            let mut c = Client::new("127.0.0.1", n.udp, creds.clone());
            let reply = c.transact(Request::Allocate(Allocate::default()));
            let r = reply.response();
            assert!(
                r.is_success(),
                "{source} on {}: {:?} (challenges {:?})",
                n.udp,
                r.error,
                c.challenges
            );
            assert_eq!(c.challenges, vec![401], "{source} on {}", n.udp);
            let relay = r.relayed_address().expect("XOR-RELAYED-ADDRESS");
            assert_eq!(relay.ip(), n.udp.ip(), "{source}: relayed by {}", n.udp);
            clients.push(c);
        }
    }
    for n in nodes {
        n.wait_metric("turnpike_turn_allocations", minted.len() as u64);
    }

    // Signed with another secret, by the library or by `turnpike cred`: 401 on both nodes.
    let forged = [
        (
            "Credentials::rest",
            Credentials::rest(OTHER_SECRET.as_bytes(), unix_now() + 3600, "forger"),
        ),
        ("turnpike cred", cred_tool(OTHER_SECRET)),
    ];
    for (source, creds) in &forged {
        for n in nodes {
            let mut c = Client::new("127.0.0.1", n.udp, creds.clone());
            let reply = c.transact(Request::Allocate(Allocate::default()));
            assert_eq!(
                (c.challenges.as_slice(), reply.code()),
                (&[401u16][..], Some(401)),
                "{source} with another secret on {}",
                n.udp
            );
            assert!(!reply.response().integrity, "a 401 is not signed");
        }
    }
    for n in nodes {
        n.wait_metric(
            "turnpike_turn_auth_failures_total{reason=\"mismatch\"}",
            forged.len() as u64,
        );
        n.wait_metric("turnpike_turn_allocations", minted.len() as u64);
    }
    drop(clients);
    a.srv.stop();
    b.srv.stop();
}

#[test]
fn turn_fleet_nonce_issued_by_one_node_is_accepted_by_the_other() {
    let a = node("127.0.0.1", &[SECRET], &[]);
    let b = node("127.0.0.2", &[SECRET], &[]);
    // Accepts the same credentials, but its nonces derive from another first secret.
    let c = node("127.0.0.1", &[OTHER_SECRET, SECRET], &[]);
    let creds = Credentials::rest(SECRET.as_bytes(), unix_now() + 3600, "nonce");

    for (issuer, other) in [(&a, &b), (&b, &a)] {
        // Challenged by the issuer: the client now holds its REALM and NONCE.
        let mut first = Client::new("127.0.0.1", issuer.udp, creds.clone());
        first.allocate();
        assert_eq!(first.challenges, vec![401]);
        let nonce = first.auth.nonce().unwrap().to_owned();

        // The very first request to the other node is signed with that nonce, and succeeds.
        let mut moved = Client::new("127.0.0.1", other.udp, creds.clone());
        moved.auth = first.auth.clone();
        let reply = moved.once(Request::Allocate(Allocate::default()));
        let r = reply.response();
        assert!(reply.signed, "the request carried the issuer's nonce");
        assert_eq!(
            r.error_code(),
            None,
            "{} accepts the nonce of {}",
            other.udp,
            issuer.udp
        );
        moved.auth.verify(&r).expect("signed with our key");
        assert_eq!(r.relayed_address().unwrap().ip(), other.udp.ip());
        assert_eq!(moved.auth.nonce(), Some(nonce.as_str()));

        // The same nonce from another client IP is not valid anywhere: 438, then success.
        let mut elsewhere = Client::new("127.0.0.2", other.udp, creds.clone());
        elsewhere.auth = first.auth.clone();
        elsewhere.allocate();
        assert_eq!(
            elsewhere.challenges,
            vec![438],
            "a nonce is bound to its IP"
        );
        assert_ne!(elsewhere.auth.nonce(), Some(nonce.as_str()));
    }

    // Control: a node with another first secret takes the credentials but not the nonce.
    let mut fresh = Client::new("127.0.0.1", a.udp, creds.clone());
    fresh.allocate();
    let nonce = fresh.auth.nonce().unwrap().to_owned();
    let mut to_c = Client::new("127.0.0.1", c.udp, creds.clone());
    to_c.auth = fresh.auth.clone();
    to_c.allocate();
    assert_eq!(to_c.challenges, vec![438], "a foreign nonce is stale on C");
    assert_ne!(to_c.auth.nonce(), Some(nonce.as_str()));

    a.wait_metric("turnpike_turn_allocations", 4);
    b.wait_metric("turnpike_turn_allocations", 3);
    c.wait_metric("turnpike_turn_allocations", 1);
    for n in [&a, &b] {
        n.wait_metric("turnpike_turn_auth_failures_total{reason=\"bad-nonce\"}", 1);
    }
    c.wait_metric("turnpike_turn_auth_failures_total{reason=\"bad-nonce\"}", 1);
    a.srv.stop();
    b.srv.stop();
    c.srv.stop();
}

#[test]
fn turn_fleet_drain_sends_new_clients_to_the_alternate_node() {
    let b = node("127.0.0.2", &[SECRET], &[]);
    let b_addr = b.udp.to_string();
    let a = node(
        "127.0.0.1",
        &[SECRET],
        &[
            "--drain",
            "--drain-timeout",
            "30",
            "--alternate-server",
            &b_addr,
        ],
    );
    let creds = |user: &str| Credentials::rest(SECRET.as_bytes(), unix_now() + 3600, user);

    // X has an allocation on A, with a permission for a peer, before the drain.
    let peer = Peer::new();
    let mut x = Client::new("127.0.0.1", a.udp, creds("old"));
    let ra = x.allocate();
    assert_eq!(ra.ip(), a.udp.ip());
    x.ok(Request::CreatePermission(&[peer.addr()]));
    a.wait_metric("turnpike_turn_allocations", 1);

    a.srv.send_signal(SIGTERM);
    a.wait_draining();
    let ready_b = http_get(b.srv.http, "/readyz");
    assert!(
        ready_b.starts_with("HTTP/1.1 200"),
        "B stays ready: {ready_b}"
    );

    // A new client Y: A answers 300 Try Alternate, signed, with ALTERNATE-SERVER = B. (Y has
    // no nonce yet, so its first Allocate gets a 401 and only the signed retry meets the
    // drain check: the UDP worker notices the drain only after a poll returns, so a signed
    // Allocate in the first ~100 ms of a drain would still be granted.)
    let mut y = Client::new("127.0.0.1", a.udp, creds("new"));
    let reply = y.transact(Request::Allocate(Allocate::default()));
    assert_eq!(y.challenges, vec![401]);
    assert_eq!(reply.code(), Some(300), "Try Alternate while draining");
    assert!(
        reply.response().integrity_sha256,
        "the 300 is signed (checked)"
    );
    let alternate = reply.alternate_server();
    assert_eq!(
        alternate,
        Some(b.udp),
        "ALTERNATE-SERVER, inside the integrity"
    );
    a.wait_metric(
        "turnpike_turn_allocation_failures_total{reason=\"draining\"}",
        1,
    );

    // Y retries on B with the same credentials and A's nonce, from the same socket: no
    // challenge at all.
    y.server = alternate.unwrap();
    y.challenges.clear();
    let rb = y.allocate();
    assert_eq!(y.challenges, Vec::<u16>::new(), "B accepts A's nonce");
    assert_eq!(rb.ip(), b.udp.ip(), "allocated on B");
    b.wait_metric("turnpike_turn_allocations", 1);
    a.wait_metric("turnpike_turn_allocations", 1);

    // X's allocation on A still relays both ways, to the peer and to Y's relay on B.
    x.send_indication(peer.addr(), b"x to peer, draining");
    peer.expect(ra, b"x to peer, draining");
    peer.0.send_to(b"peer to x, draining", ra).unwrap();
    assert_eq!(
        x.expect_data(),
        (peer.addr(), b"peer to x, draining".to_vec())
    );
    x.ok(Request::CreatePermission(&[rb]));
    y.ok(Request::CreatePermission(&[ra]));
    x.send_indication(rb, b"A to B");
    assert_eq!(y.expect_data(), (ra, b"A to B".to_vec()));
    y.send_indication(ra, b"B to A");
    assert_eq!(x.expect_data(), (rb, b"B to A".to_vec()));
    // ... and is refreshed.
    let r = x.ok(refresh(600));
    assert_eq!(r.response().lifetime, Some(600));
    a.wait_draining();

    // Deleting X's allocation, the last one, stops A; B and Y carry on.
    let r = x.ok(refresh(0));
    assert_eq!(r.response().lifetime, Some(0));
    let t0 = Instant::now();
    let status = a.srv.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "A's exit status {status}");
    eprintln!(
        "node A stopped {:?} after its last allocation",
        t0.elapsed()
    );
    let r = y.ok(refresh(600));
    assert_eq!(r.response().lifetime, Some(600));
    b.wait_metric("turnpike_turn_allocations", 1);
    b.srv.stop();
}

#[test]
fn turn_fleet_draining_without_alternate_answers_508_until_a_second_signal() {
    let a = node(
        "127.0.0.1",
        &[SECRET],
        &["--drain", "--drain-timeout", "30"],
    );
    let creds = |user: &str| Credentials::rest(SECRET.as_bytes(), unix_now() + 3600, user);
    let mut x = Client::new("127.0.0.1", a.udp, creds("kept"));
    x.allocate();
    a.wait_metric("turnpike_turn_allocations", 1);
    a.srv.send_signal(SIGTERM);
    a.wait_draining();

    let mut y = Client::new("127.0.0.1", a.udp, creds("refused"));
    let reply = y.transact(Request::Allocate(Allocate::default()));
    assert_eq!(y.challenges, vec![401]);
    assert_eq!(
        reply.code(),
        Some(508),
        "Insufficient Capacity without an alternate"
    );
    assert!(reply.response().integrity_sha256, "signed (checked)");
    assert_eq!(reply.alternate_server(), None);
    assert!(
        !reply
            .response()
            .view()
            .attributes()
            .any(|(t, _)| t == attr::ALTERNATE_SERVER),
        "no ALTERNATE-SERVER anywhere"
    );
    a.wait_metric(
        "turnpike_turn_allocation_failures_total{reason=\"draining\"}",
        1,
    );
    a.wait_metric("turnpike_turn_allocations", 1);
    // Still draining with X's allocation alive; a second signal stops it at once, well
    // before --drain-timeout.
    a.wait_draining();
    let t0 = Instant::now();
    a.srv.send_signal(SIGTERM);
    let status = a.srv.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    eprintln!("second signal: stopped after {:?}", t0.elapsed());
}
