//! The TURN core on virtual time: every method, every error code, timers, quotas, the peer
//! policy and relay-to-relay delivery.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use turnpike_proto::{Class, MessageView, TransactionId, attr, fast, integrity, method};
use turnpike_relay_core::auth::Credentials;
use turnpike_relay_core::policy::{Cidr, PeerPolicy};
use turnpike_relay_core::turn::{
    AuthFailure, ClientAction, ClientKey, LocalLedger, Now, OpenError, Opened, PeerAction,
    PeerDrop, PortRequest, Quotas, RelayAddress, RelayId, RelaySockets, TurnConfig, TurnDrop,
    TurnServer,
};
use turnpike_relay_core::{Action, Incoming, StunConfig, Transport};

const REALM: &str = "example.org";
const SECRET: &str = "north-wind-secret";
const T0: u64 = 1_700_000_000;

// ------------------------------------------------------------------ harness

#[derive(Default)]
struct FakeSockets {
    open: BTreeMap<RelayId, (IpAddr, u16)>,
    next_port: u16,
    reserved: BTreeMap<u64, u16>,
    released: Vec<u64>,
    exhausted: bool,
    dont_fragment: BTreeSet<RelayId>,
}

impl RelaySockets for FakeSockets {
    fn open(
        &mut self,
        id: RelayId,
        ip: IpAddr,
        request: PortRequest,
        dont_fragment: bool,
    ) -> Result<Opened, OpenError> {
        if self.exhausted {
            return Err(OpenError::Exhausted);
        }
        if self.next_port == 0 {
            self.next_port = 50_000;
        }
        let (port, reservation) = match request {
            PortRequest::Any => {
                self.next_port += 2;
                (self.next_port + 1, None)
            }
            PortRequest::Even { reserve_next } => {
                self.next_port += 2;
                let p = self.next_port;
                let token = reserve_next.then(|| {
                    let t = 0xABCD_0000_0000_0000 | u64::from(p);
                    self.reserved.insert(t, p + 1);
                    t
                });
                (p, token)
            }
            PortRequest::Reserved(t) => (
                self.reserved.remove(&t).ok_or(OpenError::NoReservation)?,
                None,
            ),
        };
        if dont_fragment {
            self.dont_fragment.insert(id);
        }
        self.open.insert(id, (ip, port));
        Ok(Opened { port, reservation })
    }

    fn close(&mut self, id: RelayId) {
        self.open.remove(&id);
    }

    fn release_reservation(&mut self, token: u64) {
        self.reserved.remove(&token);
        self.released.push(token);
    }
}

struct H {
    core: TurnServer,
    sockets: FakeSockets,
    now: Now,
    tid: u8,
    out: Vec<u8>,
}

fn local() -> SocketAddr {
    "192.0.2.10:3478".parse().unwrap()
}

fn client(n: u8) -> SocketAddr {
    format!("198.51.100.{n}:40000").parse().unwrap()
}

fn relay_v4() -> RelayAddress {
    RelayAddress {
        bind: "203.0.113.5".parse().unwrap(),
        advertised: "203.0.113.5".parse().unwrap(),
    }
}

fn config() -> TurnConfig {
    let mut credentials = Credentials::new(REALM);
    credentials.add_user("alice", "wonderland");
    credentials.add_user("bob", "builder");
    credentials.add_secret(SECRET.as_bytes());
    TurnConfig {
        credentials,
        relay_v4: Some(relay_v4()),
        relay_v6: Some(RelayAddress {
            bind: "2001:db8::5".parse().unwrap(),
            advertised: "2001:db8::5".parse().unwrap(),
        }),
        own_ips: vec!["192.0.2.10".parse().unwrap()],
        max_permissions: 4,
        max_channels: 3,
        ..TurnConfig::default()
    }
}

impl H {
    fn new() -> H {
        H::with(config(), Quotas::default())
    }

    fn with(config: TurnConfig, quotas: Quotas) -> H {
        H {
            core: TurnServer::new(
                StunConfig::default(),
                config,
                [7; 32],
                Box::new(LocalLedger::new(quotas)),
            ),
            sockets: FakeSockets::default(),
            now: Now {
                millis: 1_000,
                unix: T0,
            },
            tid: 0,
            out: Vec::new(),
        }
    }

    fn advance(&mut self, secs: u64) {
        self.now.millis += secs * 1000;
        self.now.unix += secs;
        if self
            .core
            .poll_timeout()
            .is_some_and(|t| t <= self.now.millis)
        {
            self.core.handle_timeout(self.now, &mut self.sockets);
        }
    }

    fn next_tid(&mut self) -> [u8; 12] {
        self.tid += 1;
        [self.tid; 12]
    }

    fn send_from(&mut self, transport: Transport, from: SocketAddr, data: &[u8]) -> ClientAction {
        self.out.clear();
        self.core
            .handle_client(
                Incoming {
                    transport,
                    local: local(),
                    remote: from,
                    data,
                },
                self.now,
                &mut self.sockets,
                &mut self.out,
            )
            .action
    }

    /// Sends a request from client `n` and returns the parsed response.
    fn request(&mut self, n: u8, data: &[u8]) -> Resp {
        match self.send_from(Transport::Udp, client(n), data) {
            ClientAction::Stun(Action::Reply { to, .. }) => {
                assert_eq!(to, client(n));
                Resp::parse(&self.out)
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    /// Gets a nonce with an unauthenticated request.
    fn nonce(&mut self, n: u8) -> Vec<u8> {
        let tid = self.next_tid();
        let r = self.request(n, &build(method::ALLOCATE, &tid, &[transport_udp()], None));
        assert_eq!(r.error, Some(401));
        r.attr(attr::NONCE).expect("401 has a NONCE").to_vec()
    }

    fn auth(&mut self, n: u8, user: &str, pass: &str) -> Auth {
        Auth {
            user: user.into(),
            key: integrity::long_term_key(user, REALM, pass).to_vec(),
            nonce: self.nonce(n),
            sha256: false,
        }
    }

    /// Authenticated request; returns the response (MESSAGE-INTEGRITY checked on success).
    fn authed(&mut self, n: u8, m: u16, attrs: &[(u16, Vec<u8>)], auth: &Auth) -> Resp {
        let tid = self.next_tid();
        let r = self.request(n, &build(m, &tid, attrs, Some(auth)));
        if r.error.is_none() || !matches!(r.error, Some(401 | 438 | 400 | 420)) {
            let v = MessageView::parse(&self.out).unwrap();
            if auth.sha256 {
                integrity::verify_sha256(&v, &auth.key).expect("MI-SHA256 verifies");
            } else {
                integrity::verify(&v, &auth.key).expect("MESSAGE-INTEGRITY verifies");
            }
        }
        r
    }

    fn allocate(&mut self, n: u8, user: &str, pass: &str) -> (Auth, SocketAddr) {
        let auth = self.auth(n, user, pass);
        let r = self.authed(n, method::ALLOCATE, &[transport_udp()], &auth);
        assert_eq!(r.error, None, "allocate failed: {:?}", r.reason);
        let relayed = r.xor_addrs(attr::XOR_RELAYED_ADDRESS);
        assert_eq!(relayed.len(), 1);
        (auth, relayed[0])
    }

    fn key(&self, n: u8) -> ClientKey {
        ClientKey {
            transport: Transport::Udp,
            local: local(),
            remote: client(n),
        }
    }

    fn peer(&mut self, relay: SocketAddr, n: u8, from: SocketAddr, data: &[u8]) -> PeerAction {
        let id = self.relay_id(n, relay.is_ipv6());
        self.out.clear();
        self.core
            .handle_peer(id, from, data, self.now, &mut self.out)
    }

    fn relay_id(&self, n: u8, v6: bool) -> RelayId {
        // The fake sockets know which relay id holds which port.
        let want = self.core.relayed_addresses(&self.key(n));
        let port = want
            .iter()
            .find(|a| a.is_ipv6() == v6)
            .expect("a relay of that family")
            .port();
        *self
            .sockets
            .open
            .iter()
            .find(|(_, (_, p))| *p == port)
            .expect("an open socket")
            .0
    }
}

struct Auth {
    user: String,
    key: Vec<u8>,
    nonce: Vec<u8>,
    sha256: bool,
}

fn transport_udp() -> (u16, Vec<u8>) {
    (attr::REQUESTED_TRANSPORT, vec![17, 0, 0, 0])
}

fn lifetime(secs: u32) -> (u16, Vec<u8>) {
    (attr::LIFETIME, secs.to_be_bytes().to_vec())
}

fn xor_peer(addr: SocketAddr, tid: &[u8; 12]) -> (u16, Vec<u8>) {
    let mut v = Vec::new();
    fast::write_xor_addr_attr(&mut v, attr::XOR_PEER_ADDRESS, addr, tid);
    (attr::XOR_PEER_ADDRESS, v[4..].to_vec())
}

fn channel(n: u16) -> (u16, Vec<u8>) {
    let mut v = n.to_be_bytes().to_vec();
    v.extend_from_slice(&[0, 0]);
    (attr::CHANNEL_NUMBER, v)
}

/// Builds a message. XOR-PEER-ADDRESS values must be made with the same `tid`.
fn build(m: u16, tid: &[u8; 12], attrs: &[(u16, Vec<u8>)], auth: Option<&Auth>) -> Vec<u8> {
    build_class(m, Class::Request, tid, attrs, auth)
}

fn build_class(
    m: u16,
    class: Class,
    tid: &[u8; 12],
    attrs: &[(u16, Vec<u8>)],
    auth: Option<&Auth>,
) -> Vec<u8> {
    let mut out = Vec::new();
    fast::write_header(&mut out, m, class, tid);
    for (t, v) in attrs {
        fast::write_attr(&mut out, *t, v);
    }
    match auth {
        Some(a) => {
            fast::write_attr(&mut out, attr::USERNAME, a.user.as_bytes());
            fast::write_attr(&mut out, attr::REALM, REALM.as_bytes());
            fast::write_attr(&mut out, attr::NONCE, &a.nonce);
            if a.sha256 {
                fast::write_attr(&mut out, attr::PASSWORD_ALGORITHM, &[0, 2, 0, 0]);
                fast::write_attr(
                    &mut out,
                    attr::PASSWORD_ALGORITHMS,
                    &[0, 2, 0, 0, 0, 1, 0, 0],
                );
                integrity::append_sha256(&mut out, 0, &a.key);
            } else {
                integrity::append(&mut out, 0, &a.key);
            }
        }
        None => fast::finish(&mut out, 0),
    }
    out
}

/// A parsed response.
#[derive(Debug)]
struct Resp {
    method: u16,
    class: Class,
    tid: [u8; 12],
    error: Option<u16>,
    reason: Option<String>,
    attrs: Vec<(u16, Vec<u8>)>,
}

impl Resp {
    fn parse(b: &[u8]) -> Resp {
        let v = MessageView::parse(b).expect("the server's reply parses");
        let TransactionId::Modern(tid) = v.transaction_id else {
            panic!("classic reply")
        };
        let attrs: Vec<(u16, Vec<u8>)> = v.attributes().map(|(t, v)| (t, v.to_vec())).collect();
        let (error, reason) = match attrs.iter().find(|(t, _)| *t == attr::ERROR_CODE) {
            Some((_, e)) => (
                Some(u16::from(e[2]) * 100 + u16::from(e[3])),
                Some(String::from_utf8_lossy(&e[4..]).into_owned()),
            ),
            None => (None, None),
        };
        Resp {
            method: v.method,
            class: v.class,
            tid,
            error,
            reason,
            attrs,
        }
    }

    fn attr(&self, t: u16) -> Option<&[u8]> {
        self.attrs
            .iter()
            .find(|(a, _)| *a == t)
            .map(|(_, v)| v.as_slice())
    }

    fn has(&self, t: u16) -> bool {
        self.attr(t).is_some()
    }

    fn xor_addrs(&self, t: u16) -> Vec<SocketAddr> {
        self.attrs
            .iter()
            .filter(|(a, _)| *a == t)
            .map(|(_, v)| decode_xor(v, &self.tid))
            .collect()
    }

    fn lifetime(&self) -> u32 {
        u32::from_be_bytes(
            self.attr(attr::LIFETIME)
                .expect("LIFETIME")
                .try_into()
                .unwrap(),
        )
    }
}

fn decode_xor(v: &[u8], tid: &[u8; 12]) -> SocketAddr {
    let cookie = turnpike_proto::MAGIC_COOKIE.to_be_bytes();
    let port = u16::from_be_bytes([v[2], v[3]]) ^ 0x2112;
    let ip: IpAddr = if v[1] == 1 {
        let mut o = [0u8; 4];
        for i in 0..4 {
            o[i] = v[4 + i] ^ cookie[i];
        }
        o.into()
    } else {
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&cookie);
        key[4..].copy_from_slice(tid);
        let mut o = [0u8; 16];
        for i in 0..16 {
            o[i] = v[4 + i] ^ key[i];
        }
        o.into()
    };
    SocketAddr::new(ip, port)
}

fn peer_addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

// ------------------------------------------------------------------ authentication

#[test]
fn unauthenticated_allocate_is_challenged_without_creating_state() {
    let mut h = H::new();
    let tid = h.next_tid();
    let req = build(method::ALLOCATE, &tid, &[transport_udp()], None);
    let r = h.request(1, &req);
    assert_eq!(r.error, Some(401));
    assert_eq!(r.class, Class::Error);
    assert_eq!(r.method, method::ALLOCATE);
    assert_eq!(r.attr(attr::REALM), Some(REALM.as_bytes()));
    let nonce = r.attr(attr::NONCE).unwrap();
    assert!(nonce.starts_with(b"obMatJos2"), "RFC 8489 nonce cookie");
    assert_eq!(
        r.attr(attr::PASSWORD_ALGORITHMS),
        Some(&[0, 2, 0, 0, 0, 1, 0, 0][..])
    );
    assert!(!r.has(attr::MESSAGE_INTEGRITY));
    assert_eq!(h.core.allocations(), 0);
    assert!(h.sockets.open.is_empty());
    assert!(h.out.len() <= turnpike_relay_core::turn::UNAUTHENTICATED_REPLY_LIMIT);
    assert_eq!(
        h.core.stats().auth_failures[AuthFailure::Challenge as usize],
        1
    );
}

#[test]
fn allocate_succeeds_with_static_user() {
    let mut h = H::new();
    let (_, relayed) = h.allocate(1, "alice", "wonderland");
    assert_eq!(relayed.ip(), relay_v4().advertised);
    assert_eq!(h.core.allocations(), 1);
    let tid = h.next_tid();
    let auth = h.auth(1, "alice", "wonderland");
    // The success carried LIFETIME 600 and XOR-MAPPED-ADDRESS: check on a fresh client.
    let r = h.authed(2, method::ALLOCATE, &[transport_udp()], &auth);
    let _ = tid;
    // Client 2's nonce was issued to client 1's IP: not valid for it.
    assert_eq!(r.error, Some(438));
    let auth2 = h.auth(2, "alice", "wonderland");
    let r = h.authed(2, method::ALLOCATE, &[transport_udp()], &auth2);
    assert_eq!(r.error, None);
    assert_eq!(r.lifetime(), 600);
    assert_eq!(r.xor_addrs(attr::XOR_MAPPED_ADDRESS), vec![client(2)]);
    assert!(r.has(attr::MESSAGE_INTEGRITY));
}

#[test]
fn lifetime_is_clamped_between_default_and_maximum() {
    for (asked, granted) in [(30, 600), (1200, 1200), (100_000, 3600)] {
        let mut h = H::new();
        let auth = h.auth(1, "alice", "wonderland");
        let r = h.authed(
            1,
            method::ALLOCATE,
            &[transport_udp(), lifetime(asked)],
            &auth,
        );
        assert_eq!(r.lifetime(), granted, "asked {asked}");
    }
}

#[test]
fn wrong_password_unknown_user_and_missing_fields() {
    let mut h = H::new();
    let auth = h.auth(1, "alice", "not-the-password");
    let r = h.authed(1, method::ALLOCATE, &[transport_udp()], &auth);
    assert_eq!(r.error, Some(401));
    assert!(r.has(attr::NONCE) && r.has(attr::REALM));
    assert!(
        !r.has(attr::MESSAGE_INTEGRITY),
        "no MI with a key the client may not have"
    );
    let auth = h.auth(1, "mallory", "x");
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[transport_udp()], &auth)
            .error,
        Some(401)
    );
    // MESSAGE-INTEGRITY without USERNAME/REALM/NONCE: 400.
    let tid = h.next_tid();
    let mut m = Vec::new();
    fast::write_header(&mut m, method::ALLOCATE, Class::Request, &tid);
    fast::write_attr(&mut m, attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    integrity::append(&mut m, 0, b"key");
    assert_eq!(h.request(1, &m).error, Some(400));
    let st = h.core.stats();
    assert_eq!(st.auth_failures[AuthFailure::Mismatch as usize], 1);
    assert_eq!(st.auth_failures[AuthFailure::UnknownUser as usize], 1);
    assert_eq!(st.auth_failures[AuthFailure::BadRequest as usize], 1);
    assert_eq!(h.core.allocations(), 0);
}

#[test]
fn stale_and_forged_nonces_get_438() {
    let mut h = H::new();
    let mut auth = h.auth(1, "alice", "wonderland");
    h.advance(601);
    let r = h.authed(1, method::ALLOCATE, &[transport_udp()], &auth);
    assert_eq!(r.error, Some(438));
    let fresh = r.attr(attr::NONCE).unwrap().to_vec();
    assert_ne!(fresh, auth.nonce);
    auth.nonce = fresh;
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[transport_udp()], &auth)
            .error,
        None
    );
    let mut forged = h.auth(2, "alice", "wonderland");
    let last = forged.nonce.len() - 1;
    forged.nonce[last] ^= 1;
    assert_eq!(
        h.authed(2, method::ALLOCATE, &[transport_udp()], &forged)
            .error,
        Some(438)
    );
    let st = h.core.stats();
    assert_eq!(st.auth_failures[AuthFailure::StaleNonce as usize], 1);
    assert_eq!(st.auth_failures[AuthFailure::BadNonce as usize], 1);
}

#[test]
fn shared_secret_credentials_and_their_expiry() {
    let mut h = H::new();
    let username = turnpike_proto::credential::rest_username(T0 + 60, "carol");
    let password = turnpike_proto::credential::rest_password(SECRET.as_bytes(), &username);
    let auth = h.auth(1, &username, &password);
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[transport_udp()], &auth)
            .error,
        None
    );
    h.advance(61);
    let auth = h.auth(2, &username, &password);
    assert_eq!(
        h.authed(2, method::ALLOCATE, &[transport_udp()], &auth)
            .error,
        Some(401)
    );
    assert_eq!(
        h.core.stats().auth_failures[AuthFailure::Expired as usize],
        1
    );
}

#[test]
fn expired_shared_secret_credentials_keep_their_allocation_alive() {
    let mut h = H::new();
    let username = turnpike_proto::credential::rest_username(T0 + 60, "dave");
    let password = turnpike_proto::credential::rest_password(SECRET.as_bytes(), &username);
    let mut auth = h.auth(1, &username, &password);
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[transport_udp()], &auth)
            .error,
        None
    );
    h.advance(500);
    auth.nonce = h.nonce(1);
    // Past the credentials' expiry, the allocation they made can still be refreshed and
    // get permissions ...
    assert_eq!(h.authed(1, method::REFRESH, &[], &auth).error, None);
    let tid = h.next_tid();
    let req = build(
        method::CREATE_PERMISSION,
        &tid,
        &[xor_peer(peer_addr("8.8.8.8:1"), &tid)],
        Some(&auth),
    );
    assert_eq!(h.request(1, &req).error, None);
    // ... but a wrong password is still wrong, and no new allocation is made with them.
    let mut wrong = h.auth(1, &username, "not-it");
    wrong.nonce = auth.nonce.clone();
    assert_eq!(h.authed(1, method::REFRESH, &[], &wrong).error, Some(401));
    let mut other = h.auth(2, &username, &password);
    other.nonce = h.nonce(2);
    assert_eq!(
        h.authed(2, method::ALLOCATE, &[transport_udp()], &other)
            .error,
        Some(401)
    );
    assert_eq!(h.core.allocations(), 1);
}

#[test]
fn sha256_password_algorithm_and_message_integrity_sha256() {
    let mut h = H::new();
    let nonce = h.nonce(1);
    let auth = Auth {
        user: "alice".into(),
        key: integrity::long_term_key_sha256("alice", REALM, "wonderland").to_vec(),
        nonce,
        sha256: true,
    };
    let r = h.authed(1, method::ALLOCATE, &[transport_udp()], &auth);
    assert_eq!(r.error, None, "{:?}", r.reason);
    assert!(r.has(attr::MESSAGE_INTEGRITY_SHA256));
    assert!(!r.has(attr::MESSAGE_INTEGRITY));
    // PASSWORD-ALGORITHM without PASSWORD-ALGORITHMS is a 400.
    let nonce = h.nonce(2);
    let tid = h.next_tid();
    let mut m = Vec::new();
    fast::write_header(&mut m, method::ALLOCATE, Class::Request, &tid);
    fast::write_attr(&mut m, attr::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    fast::write_attr(&mut m, attr::USERNAME, b"alice");
    fast::write_attr(&mut m, attr::REALM, REALM.as_bytes());
    fast::write_attr(&mut m, attr::NONCE, &nonce);
    fast::write_attr(&mut m, attr::PASSWORD_ALGORITHM, &[0, 2, 0, 0]);
    integrity::append_sha256(&mut m, 0, &auth.key);
    assert_eq!(h.request(2, &m).error, Some(400));
}

// ------------------------------------------------------------------ Allocate

#[test]
fn allocate_errors() {
    let mut h = H::new();
    let auth = h.auth(1, "alice", "wonderland");
    // No REQUESTED-TRANSPORT.
    assert_eq!(h.authed(1, method::ALLOCATE, &[], &auth).error, Some(400));
    // TCP relaying is not offered.
    let tcp = (attr::REQUESTED_TRANSPORT, vec![6, 0, 0, 0]);
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[tcp], &auth).error,
        Some(442)
    );
    // Unknown family.
    let fam = (attr::REQUESTED_ADDRESS_FAMILY, vec![3, 0, 0, 0]);
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[transport_udp(), fam], &auth)
            .error,
        Some(440)
    );
    // RESERVATION-TOKEN with EVEN-PORT.
    let token = (attr::RESERVATION_TOKEN, vec![1; 8]);
    let even = (attr::EVEN_PORT, vec![0x80]);
    assert_eq!(
        h.authed(
            1,
            method::ALLOCATE,
            &[transport_udp(), token.clone(), even],
            &auth
        )
        .error,
        Some(400)
    );
    // An unknown reservation token.
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[transport_udp(), token], &auth)
            .error,
        Some(508)
    );
    // Both family attributes.
    let req6 = (attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]);
    let add6 = (attr::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0]);
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[transport_udp(), req6, add6], &auth)
            .error,
        Some(400)
    );
    // ADDITIONAL-ADDRESS-FAMILY must be IPv6.
    let add4 = (attr::ADDITIONAL_ADDRESS_FAMILY, vec![1, 0, 0, 0]);
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[transport_udp(), add4], &auth)
            .error,
        Some(400)
    );
    // Malformed LIFETIME.
    let bad = (attr::LIFETIME, vec![0, 0]);
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[transport_udp(), bad], &auth)
            .error,
        Some(400)
    );
    // An unknown comprehension-required attribute: 420 with UNKNOWN-ATTRIBUTES.
    let unknown = (0x7F01, vec![0; 4]);
    let r = h.authed(1, method::ALLOCATE, &[transport_udp(), unknown], &auth);
    assert_eq!(r.error, Some(420));
    assert_eq!(r.attr(attr::UNKNOWN_ATTRIBUTES), Some(&[0x7F, 0x01][..]));
    // Port range exhausted: 508.
    h.sockets.exhausted = true;
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[transport_udp()], &auth)
            .error,
        Some(508)
    );
    assert_eq!(h.core.allocations(), 0);
}

#[test]
fn draining_refuses_new_allocations_and_keeps_old_ones() {
    let mut c = config();
    c.alternate_server = Some("192.0.2.99:3478".parse().unwrap());
    let mut h = H::with(c, Quotas::default());
    let (auth, _) = h.allocate(1, "alice", "wonderland");
    h.core.set_draining(true);
    // A new client is sent elsewhere, with an authenticated 300 and ALTERNATE-SERVER.
    let other = h.auth(2, "bob", "builder");
    let r = h.authed(2, method::ALLOCATE, &[transport_udp()], &other);
    assert_eq!(r.error, Some(300));
    let alt = r.attr(attr::ALTERNATE_SERVER).expect("ALTERNATE-SERVER");
    assert_eq!(alt, &[0, 1, 0x0D, 0x96, 192, 0, 2, 99][..]);
    // The existing allocation still refreshes and relays.
    let mut auth = auth;
    auth.nonce = h.nonce(1);
    assert_eq!(h.authed(1, method::REFRESH, &[], &auth).error, None);
    assert_eq!(h.core.allocations(), 1);
    assert_eq!(
        h.core.stats().allocation_failures
            [turnpike_relay_core::turn::AllocFailure::Draining as usize],
        1
    );
    // Without an alternate server the answer is 508; draining can be switched off again.
    let mut h = H::new();
    h.core.set_draining(true);
    let a = h.auth(3, "bob", "builder");
    assert_eq!(
        h.authed(3, method::ALLOCATE, &[transport_udp()], &a).error,
        Some(508)
    );
    h.core.set_draining(false);
    let a = h.auth(3, "bob", "builder");
    assert_eq!(
        h.authed(3, method::ALLOCATE, &[transport_udp()], &a).error,
        None
    );
}

#[test]
fn retransmitted_allocate_gets_the_same_answer_and_another_is_437() {
    let mut h = H::new();
    let auth = h.auth(1, "alice", "wonderland");
    let tid = h.next_tid();
    let req = build(method::ALLOCATE, &tid, &[transport_udp()], Some(&auth));
    let first = h.request(1, &req);
    assert_eq!(first.error, None);
    let again = h.request(1, &req);
    assert_eq!(again.error, None);
    assert_eq!(
        again.xor_addrs(attr::XOR_RELAYED_ADDRESS),
        first.xor_addrs(attr::XOR_RELAYED_ADDRESS)
    );
    assert_eq!(h.core.allocations(), 1);
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[transport_udp()], &auth)
            .error,
        Some(437)
    );
}

#[test]
fn ipv6_and_dual_allocations() {
    let mut h = H::new();
    let auth = h.auth(1, "alice", "wonderland");
    let req6 = (attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]);
    let r = h.authed(1, method::ALLOCATE, &[transport_udp(), req6], &auth);
    let relayed = r.xor_addrs(attr::XOR_RELAYED_ADDRESS);
    assert_eq!(relayed.len(), 1);
    assert!(relayed[0].is_ipv6());

    let auth = h.auth(2, "alice", "wonderland");
    let add6 = (attr::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0]);
    let r = h.authed(2, method::ALLOCATE, &[transport_udp(), add6.clone()], &auth);
    let relayed = r.xor_addrs(attr::XOR_RELAYED_ADDRESS);
    assert_eq!(relayed.len(), 2);
    assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6());

    // Without an IPv6 relay the dual request gets IPv4 plus ADDRESS-ERROR-CODE 440.
    let mut c = config();
    c.relay_v6 = None;
    let mut h = H::with(c, Quotas::default());
    let auth = h.auth(1, "alice", "wonderland");
    let r = h.authed(1, method::ALLOCATE, &[transport_udp(), add6], &auth);
    assert_eq!(r.error, None);
    assert_eq!(r.xor_addrs(attr::XOR_RELAYED_ADDRESS).len(), 1);
    let e = r
        .attr(attr::ADDRESS_ERROR_CODE)
        .expect("ADDRESS-ERROR-CODE");
    assert_eq!((e[0], e[2], e[3]), (2, 4, 40));
    // And an IPv6-only request is refused.
    let auth = h.auth(2, "alice", "wonderland");
    let req6 = (attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]);
    assert_eq!(
        h.authed(2, method::ALLOCATE, &[transport_udp(), req6], &auth)
            .error,
        Some(440)
    );
}

#[test]
fn even_port_reservation_and_its_expiry() {
    let mut h = H::new();
    let auth = h.auth(1, "alice", "wonderland");
    let even = (attr::EVEN_PORT, vec![0x80]);
    let r = h.authed(1, method::ALLOCATE, &[transport_udp(), even], &auth);
    let port = r.xor_addrs(attr::XOR_RELAYED_ADDRESS)[0].port();
    assert_eq!(port % 2, 0);
    let token = r.attr(attr::RESERVATION_TOKEN).expect("a token").to_vec();
    let auth2 = h.auth(2, "alice", "wonderland");
    let r = h.authed(
        2,
        method::ALLOCATE,
        &[transport_udp(), (attr::RESERVATION_TOKEN, token.clone())],
        &auth2,
    );
    assert_eq!(r.error, None);
    assert_eq!(r.xor_addrs(attr::XOR_RELAYED_ADDRESS)[0].port(), port + 1);
    // A token is good once.
    let auth3 = h.auth(3, "alice", "wonderland");
    assert_eq!(
        h.authed(
            3,
            method::ALLOCATE,
            &[transport_udp(), (attr::RESERVATION_TOKEN, token)],
            &auth3
        )
        .error,
        Some(508)
    );
    // An unclaimed reservation is released after about 30 s.
    let auth4 = h.auth(4, "alice", "wonderland");
    let even = (attr::EVEN_PORT, vec![0x80]);
    let r = h.authed(4, method::ALLOCATE, &[transport_udp(), even], &auth4);
    let t = u64::from_be_bytes(r.attr(attr::RESERVATION_TOKEN).unwrap().try_into().unwrap());
    h.advance(31);
    assert!(h.sockets.released.contains(&t));
}

#[test]
fn dont_fragment_reaches_the_socket() {
    let mut h = H::new();
    let auth = h.auth(1, "alice", "wonderland");
    let df = (attr::DONT_FRAGMENT, vec![]);
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[transport_udp(), df], &auth)
            .error,
        None
    );
    assert_eq!(h.sockets.dont_fragment.len(), 1);
}

// ------------------------------------------------------------------ Refresh

#[test]
fn refresh_extends_deletes_and_checks_owner_and_family() {
    let mut h = H::new();
    let (auth, _) = h.allocate(1, "alice", "wonderland");
    let r = h.authed(1, method::REFRESH, &[lifetime(1800)], &auth);
    assert_eq!((r.error, r.lifetime()), (None, 1800));
    // Another user on the same 5-tuple: 441.
    let bob = h.auth(1, "bob", "builder");
    assert_eq!(h.authed(1, method::REFRESH, &[], &bob).error, Some(441));
    assert_eq!(
        h.core.stats().auth_failures[AuthFailure::WrongCredentials as usize],
        1
    );
    // A family the allocation does not have: 443.
    let fam6 = (attr::REQUESTED_ADDRESS_FAMILY, vec![2, 0, 0, 0]);
    assert_eq!(
        h.authed(1, method::REFRESH, &[fam6], &auth).error,
        Some(443)
    );
    // Lifetime 0 deletes it, closing the socket at once.
    let r = h.authed(1, method::REFRESH, &[lifetime(0)], &auth);
    assert_eq!((r.error, r.lifetime()), (None, 0));
    assert_eq!(h.core.allocations(), 0);
    assert!(h.sockets.open.is_empty());
    // And a Refresh without allocation is 437.
    assert_eq!(h.authed(1, method::REFRESH, &[], &auth).error, Some(437));
    assert_eq!(
        h.authed(1, method::CREATE_PERMISSION, &[], &auth).error,
        Some(437)
    );
}

#[test]
fn allocations_expire_on_virtual_time_unless_refreshed() {
    let mut h = H::new();
    let (auth, _) = h.allocate(1, "alice", "wonderland");
    h.allocate(2, "bob", "builder");
    h.advance(500);
    let mut auth = auth;
    auth.nonce = h.nonce(1);
    assert_eq!(h.authed(1, method::REFRESH, &[], &auth).error, None);
    h.advance(101);
    assert_eq!(
        h.core.allocations(),
        1,
        "bob's expired, alice's was refreshed"
    );
    assert_eq!(h.core.stats().allocations_expired, 1);
    assert_eq!(h.sockets.open.len(), 1);
    h.advance(600);
    assert_eq!(h.core.allocations(), 0);
    assert!(h.sockets.open.is_empty());
    assert_eq!(h.core.poll_timeout(), None);
}

// ------------------------------------------------------------------ permissions and data

#[test]
fn create_permission_policy_family_and_cap() {
    let mut h = H::new();
    let (auth, _) = h.allocate(1, "alice", "wonderland");
    let tid = [9u8; 12];
    let _ = tid;
    let p = |h: &mut H, peers: &[&str]| {
        let tid = h.next_tid();
        let attrs: Vec<_> = peers.iter().map(|p| xor_peer(peer_addr(p), &tid)).collect();
        let req = build(method::CREATE_PERMISSION, &tid, &attrs, Some(&auth));
        h.request(1, &req).error
    };
    assert_eq!(p(&mut h, &["8.8.8.8:1", "1.1.1.1:2"]), None);
    for denied in [
        "127.0.0.1:1",
        "10.1.2.3:1",
        "169.254.169.254:80",
        "100.64.0.1:1",
        "0.0.0.0:1",
        "224.0.0.1:1",
    ] {
        assert_eq!(p(&mut h, &[denied]), Some(403), "{denied}");
    }
    // IPv6 forms of denied IPv4 addresses: denied too (the allocation also has IPv6? no: 443
    // first), so use a dual allocation below.
    assert_eq!(p(&mut h, &["[2606:4700::1111]:1"]), Some(443));
    assert_eq!(p(&mut h, &[]), Some(400));
    // All or nothing: one bad peer refuses the lot.
    assert_eq!(p(&mut h, &["9.9.9.9:1", "10.0.0.1:1"]), Some(403));
    // Cap 4: two exist, two more fit, a fifth does not.
    assert_eq!(p(&mut h, &["9.9.9.9:1", "4.4.4.4:1"]), None);
    assert_eq!(p(&mut h, &["5.5.5.5:1"]), Some(508));
    // Refreshing an existing one is fine at the cap.
    assert_eq!(p(&mut h, &["8.8.8.8:9"]), None);
    assert!(h.core.stats().permission_denials.iter().sum::<u64>() >= 7);
}

#[test]
fn ipv6_bypass_forms_are_denied_on_dual_allocations() {
    let mut h = H::new();
    let auth = h.auth(1, "alice", "wonderland");
    let add6 = (attr::ADDITIONAL_ADDRESS_FAMILY, vec![2, 0, 0, 0]);
    assert_eq!(
        h.authed(1, method::ALLOCATE, &[transport_udp(), add6], &auth)
            .error,
        None
    );
    for peer in [
        "[::ffff:127.0.0.1]:1",
        "[::127.0.0.1]:1",
        "[2002:7f00:1::]:1",
        "[64:ff9b::a00:1]:1",
        "[::1]:1",
        "[fe80::1]:1",
        "[fd00::1]:1",
    ] {
        let tid = h.next_tid();
        let req = build(
            method::CREATE_PERMISSION,
            &tid,
            &[xor_peer(peer_addr(peer), &tid)],
            Some(&auth),
        );
        assert_eq!(h.request(1, &req).error, Some(403), "{peer}");
    }
    let tid = h.next_tid();
    let req = build(
        method::CREATE_PERMISSION,
        &tid,
        &[xor_peer(peer_addr("[2606:4700::1111]:1"), &tid)],
        Some(&auth),
    );
    assert_eq!(h.request(1, &req).error, None);
}

#[test]
fn allow_peer_wins_over_the_default_denials() {
    let mut c = config();
    c.policy = PeerPolicy::new(vec!["127.0.0.1/32".parse::<Cidr>().unwrap()], vec![]);
    let mut h = H::with(c, Quotas::default());
    let (auth, _) = h.allocate(1, "alice", "wonderland");
    let tid = h.next_tid();
    let req = build(
        method::CREATE_PERMISSION,
        &tid,
        &[xor_peer(peer_addr("127.0.0.1:5000"), &tid)],
        Some(&auth),
    );
    assert_eq!(h.request(1, &req).error, None);
    let tid = h.next_tid();
    let req = build(
        method::CREATE_PERMISSION,
        &tid,
        &[xor_peer(peer_addr("127.0.0.2:5000"), &tid)],
        Some(&auth),
    );
    assert_eq!(h.request(1, &req).error, Some(403));
}

#[test]
fn send_indication_and_data_indication() {
    let mut h = H::new();
    let (auth, relayed) = h.allocate(1, "alice", "wonderland");
    let peer = peer_addr("8.8.8.8:5000");
    // Without a permission: dropped both ways.
    let tid = h.next_tid();
    let send = build_class(
        method::SEND,
        Class::Indication,
        &tid,
        &[xor_peer(peer, &tid), (attr::DATA, b"hello".to_vec())],
        None,
    );
    assert_eq!(
        h.send_from(Transport::Udp, client(1), &send),
        ClientAction::Drop(TurnDrop::NoPermission)
    );
    assert_eq!(
        h.peer(relayed, 1, peer, b"x"),
        PeerAction::Drop(PeerDrop::NoPermission)
    );

    let tid = h.next_tid();
    let req = build(
        method::CREATE_PERMISSION,
        &tid,
        &[xor_peer(peer, &tid)],
        Some(&auth),
    );
    assert_eq!(h.request(1, &req).error, None);
    match h.send_from(Transport::Udp, client(1), &send) {
        ClientAction::ToPeer {
            peer: to, payload, ..
        } => {
            assert_eq!(to, peer);
            assert_eq!(&send[payload], b"hello");
        }
        other => panic!("{other:?}"),
    }
    // A peer datagram comes back as a Data indication with XOR-PEER-ADDRESS and DATA.
    match h.peer(relayed, 1, peer, b"world") {
        PeerAction::ToClient { client: c, channel } => {
            assert_eq!(c, h.key(1));
            assert!(!channel);
        }
        other => panic!("{other:?}"),
    }
    let r = Resp::parse(&h.out);
    assert_eq!((r.method, r.class), (method::DATA, Class::Indication));
    assert_eq!(r.xor_addrs(attr::XOR_PEER_ADDRESS), vec![peer]);
    assert_eq!(r.attr(attr::DATA), Some(&b"world"[..]));
    // Any port of a permitted IP is fine (permissions are per IP).
    assert!(matches!(
        h.peer(relayed, 1, peer_addr("8.8.8.8:6000"), b"!"),
        PeerAction::ToClient { .. }
    ));
    // A Send without DATA is dropped as malformed.
    let tid = h.next_tid();
    let bad = build_class(
        method::SEND,
        Class::Indication,
        &tid,
        &[xor_peer(peer, &tid)],
        None,
    );
    assert_eq!(
        h.send_from(Transport::Udp, client(1), &bad),
        ClientAction::Drop(TurnDrop::Malformed)
    );
    // From a client without an allocation.
    assert_eq!(
        h.send_from(Transport::Udp, client(9), &send),
        ClientAction::Drop(TurnDrop::NoAllocation)
    );
    // Permissions expire after 300 s.
    h.advance(301);
    assert_eq!(
        h.send_from(Transport::Udp, client(1), &send),
        ClientAction::Drop(TurnDrop::NoPermission)
    );
    assert_eq!(
        h.peer(relayed, 1, peer, b"x"),
        PeerAction::Drop(PeerDrop::NoPermission)
    );
}

#[test]
fn channel_bind_rules_and_channel_data_both_ways() {
    let mut h = H::new();
    let (auth, relayed) = h.allocate(1, "alice", "wonderland");
    let a = peer_addr("8.8.8.8:5000");
    let b = peer_addr("1.1.1.1:5000");
    let bind = |h: &mut H, n: u16, peer: SocketAddr| {
        let tid = h.next_tid();
        let req = build(
            method::CHANNEL_BIND,
            &tid,
            &[channel(n), xor_peer(peer, &tid)],
            Some(&auth),
        );
        h.request(1, &req).error
    };
    assert_eq!(bind(&mut h, 0x3FFF, a), Some(400));
    assert_eq!(bind(&mut h, 0x8000, a), Some(400));
    assert_eq!(bind(&mut h, 0xFFFF, a), Some(400));
    assert_eq!(bind(&mut h, 0x4000, peer_addr("10.0.0.1:1")), Some(403));
    assert_eq!(
        bind(&mut h, 0x4000, peer_addr("[2606:4700::1]:1")),
        Some(443)
    );
    assert_eq!(bind(&mut h, 0x4000, a), None);
    assert_eq!(
        bind(&mut h, 0x4000, a),
        None,
        "rebinding the same pair refreshes it"
    );
    assert_eq!(
        bind(&mut h, 0x4000, b),
        Some(400),
        "number already bound to another peer"
    );
    assert_eq!(
        bind(&mut h, 0x4001, a),
        Some(400),
        "peer already bound to another number"
    );
    // Missing attributes.
    let tid = h.next_tid();
    let req = build(method::CHANNEL_BIND, &tid, &[channel(0x4002)], Some(&auth));
    assert_eq!(h.request(1, &req).error, Some(400));

    // Client -> peer.
    let mut cd = vec![0x40, 0x00, 0x00, 0x03];
    cd.extend_from_slice(b"abc\0");
    match h.send_from(Transport::Udp, client(1), &cd) {
        ClientAction::ToPeer { peer, payload, .. } => {
            assert_eq!(peer, a);
            assert_eq!(&cd[payload], b"abc");
        }
        other => panic!("{other:?}"),
    }
    // Unbound channel, short or overlong ChannelData.
    assert_eq!(
        h.send_from(Transport::Udp, client(1), &[0x40, 0x01, 0, 1, 9]),
        ClientAction::Drop(TurnDrop::NoChannel)
    );
    assert_eq!(
        h.send_from(Transport::Udp, client(1), &[0x40, 0x00, 0, 9, 1]),
        ClientAction::Drop(TurnDrop::Malformed)
    );
    assert_eq!(
        h.send_from(Transport::Udp, client(1), &[0x40, 0x00]),
        ClientAction::Drop(TurnDrop::Malformed)
    );
    // Peer -> client as ChannelData (no padding on UDP).
    assert_eq!(
        h.peer(relayed, 1, a, b"hello"),
        PeerAction::ToClient {
            client: h.key(1),
            channel: true
        }
    );
    assert_eq!(
        h.out,
        [0x40, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o']
    );
    // Another port of the same IP has the permission but not the channel: Data indication.
    assert!(matches!(
        h.peer(relayed, 1, peer_addr("8.8.8.8:5001"), b"x"),
        PeerAction::ToClient { channel: false, .. }
    ));
    // The cap (3 channels).
    assert_eq!(bind(&mut h, 0x4001, b), None);
    assert_eq!(bind(&mut h, 0x4002, peer_addr("9.9.9.9:1")), None);
    assert_eq!(bind(&mut h, 0x4003, peer_addr("4.4.4.4:1")), Some(508));
    // Channels expire after 600 s (refresh the allocation and permission meanwhile).
    h.advance(290);
    let mut auth = auth;
    auth.nonce = h.nonce(1);
    let tid = h.next_tid();
    let req = build(
        method::CREATE_PERMISSION,
        &tid,
        &[xor_peer(a, &tid)],
        Some(&auth),
    );
    assert_eq!(h.request(1, &req).error, None);
    h.advance(290);
    auth.nonce = h.nonce(1);
    let tid = h.next_tid();
    let req = build(
        method::CREATE_PERMISSION,
        &tid,
        &[xor_peer(a, &tid)],
        Some(&auth),
    );
    assert_eq!(h.request(1, &req).error, None);
    let r = h.authed(1, method::REFRESH, &[], &auth);
    assert_eq!(r.error, None);
    h.advance(30);
    assert_eq!(
        h.send_from(Transport::Udp, client(1), &cd),
        ClientAction::Drop(TurnDrop::NoChannel)
    );
    // Within 5 minutes of expiry the number cannot go to another peer ...
    let tid = h.next_tid();
    let req = build(
        method::CHANNEL_BIND,
        &tid,
        &[channel(0x4000), xor_peer(b, &tid)],
        Some(&auth),
    );
    assert_eq!(h.request(1, &req).error, Some(400));
    // ... but can be bound again to the same one.
    let tid = h.next_tid();
    let req = build(
        method::CHANNEL_BIND,
        &tid,
        &[channel(0x4000), xor_peer(a, &tid)],
        Some(&auth),
    );
    assert_eq!(h.request(1, &req).error, None);
}

#[test]
fn channel_data_is_padded_on_streams() {
    let mut h = H::new();
    let auth = h.auth(1, "alice", "wonderland");
    let tid = h.next_tid();
    let req = build(method::ALLOCATE, &tid, &[transport_udp()], Some(&auth));
    let ClientAction::Stun(Action::Reply { .. }) = h.send_from(Transport::Tcp, client(1), &req)
    else {
        panic!("allocate over TCP")
    };
    let relayed = Resp::parse(&h.out).xor_addrs(attr::XOR_RELAYED_ADDRESS)[0];
    let peer = peer_addr("8.8.8.8:5000");
    let tid = h.next_tid();
    let req = build(
        method::CHANNEL_BIND,
        &tid,
        &[channel(0x4ABC), xor_peer(peer, &tid)],
        Some(&auth),
    );
    h.send_from(Transport::Tcp, client(1), &req);
    assert_eq!(Resp::parse(&h.out).error, None);
    let key = ClientKey {
        transport: Transport::Tcp,
        local: local(),
        remote: client(1),
    };
    let port = relayed.port();
    let id = *h
        .sockets
        .open
        .iter()
        .find(|(_, (_, p))| *p == port)
        .unwrap()
        .0;
    h.out.clear();
    let a = h.core.handle_peer(id, peer, b"hello", h.now, &mut h.out);
    assert_eq!(
        a,
        PeerAction::ToClient {
            client: key,
            channel: true
        }
    );
    assert_eq!(h.out.len(), 12, "4 + 5 bytes, padded to 12");
    // Closing the connection deletes the allocation.
    h.core.client_closed(key, &mut h.sockets);
    assert_eq!(h.core.allocations(), 0);
    assert!(h.sockets.open.is_empty());
}

// ------------------------------------------------------------------ quotas

#[test]
fn quotas_per_ip_per_user_and_total() {
    let mut h = H::with(
        config(),
        Quotas {
            total: 4,
            per_user: 2,
            per_ip: 2,
        },
    );
    h.allocate(1, "alice", "wonderland");
    // Another port of the same IP is another client but the same IP.
    let c2: SocketAddr = "198.51.100.1:40001".parse().unwrap();
    let nonce = h.nonce(1);
    let auth = Auth {
        user: "bob".into(),
        key: integrity::long_term_key("bob", REALM, "builder").to_vec(),
        nonce,
        sha256: false,
    };
    let tid = h.next_tid();
    let req = build(method::ALLOCATE, &tid, &[transport_udp()], Some(&auth));
    assert!(matches!(
        h.send_from(Transport::Udp, c2, &req),
        ClientAction::Stun(Action::Reply { error: None, .. })
    ));
    let c3: SocketAddr = "198.51.100.1:40002".parse().unwrap();
    let tid = h.next_tid();
    let req = build(method::ALLOCATE, &tid, &[transport_udp()], Some(&auth));
    assert!(
        matches!(
            h.send_from(Transport::Udp, c3, &req),
            ClientAction::Stun(Action::Reply {
                error: Some(486),
                ..
            })
        ),
        "per-IP"
    );
    h.allocate(2, "alice", "wonderland");
    let auth = h.auth(3, "alice", "wonderland");
    assert_eq!(
        h.authed(3, method::ALLOCATE, &[transport_udp()], &auth)
            .error,
        Some(486),
        "per-user"
    );
    let auth = h.auth(4, "bob", "builder");
    assert_eq!(
        h.authed(4, method::ALLOCATE, &[transport_udp()], &auth)
            .error,
        None
    );
    let username = turnpike_proto::credential::rest_username(T0 + 600, "carol");
    let password = turnpike_proto::credential::rest_password(SECRET.as_bytes(), &username);
    let auth = h.auth(5, &username, &password);
    assert_eq!(
        h.authed(5, method::ALLOCATE, &[transport_udp()], &auth)
            .error,
        Some(508),
        "total"
    );
    assert_eq!(h.core.allocations(), 4);
    let failures = &h.core.stats().allocation_failures;
    assert_eq!(
        failures[turnpike_relay_core::turn::AllocFailure::Quota as usize],
        2
    );
    assert_eq!(
        failures[turnpike_relay_core::turn::AllocFailure::Capacity as usize],
        1
    );
}

// ------------------------------------------------------------------ relay to relay

#[test]
fn relay_to_relay_reaches_only_live_relays() {
    let mut c = config();
    // Behind a 1:1 NAT: sockets bind to a private IP, clients see the public one. Both IPs
    // are in denied ranges (private, documentation), as on a laptop or a cloud VM.
    c.relay_v4 = Some(RelayAddress {
        bind: "10.0.0.5".parse().unwrap(),
        advertised: "203.0.113.5".parse().unwrap(),
    });
    let mut h = H::with(c, Quotas::default());
    let (auth_a, relay_a) = h.allocate(1, "alice", "wonderland");
    let (auth_b, relay_b) = h.allocate(2, "bob", "builder");
    assert_eq!(relay_a.ip(), "203.0.113.5".parse::<IpAddr>().unwrap());
    // A's permission for B's relayed address is granted although the IP is "denied" ...
    let tid = h.next_tid();
    let req = build(
        method::CREATE_PERMISSION,
        &tid,
        &[xor_peer(relay_b, &tid)],
        Some(&auth_a),
    );
    assert_eq!(h.request(1, &req).error, None);
    let tid = h.next_tid();
    let req = build(
        method::CREATE_PERMISSION,
        &tid,
        &[xor_peer(relay_a, &tid)],
        Some(&auth_b),
    );
    assert_eq!(h.request(2, &req).error, None);
    // ... and data goes to B's bound socket.
    let tid = h.next_tid();
    let send = build_class(
        method::SEND,
        Class::Indication,
        &tid,
        &[xor_peer(relay_b, &tid), (attr::DATA, b"hi".to_vec())],
        None,
    );
    match h.send_from(Transport::Udp, client(1), &send) {
        ClientAction::ToPeer { peer, .. } => {
            assert_eq!(
                peer,
                SocketAddr::new("10.0.0.5".parse().unwrap(), relay_b.port())
            )
        }
        other => panic!("{other:?}"),
    }
    // B receives it from A's bound address and sees A's advertised address.
    let from_a_bound = SocketAddr::new("10.0.0.5".parse().unwrap(), relay_a.port());
    assert!(matches!(
        h.peer(relay_b, 2, from_a_bound, b"hi"),
        PeerAction::ToClient { .. }
    ));
    let r = Resp::parse(&h.out);
    assert_eq!(r.xor_addrs(attr::XOR_PEER_ADDRESS), vec![relay_a]);
    // Any other port on the server's IPs is unreachable: the HTTP port, a closed relay port.
    for port in [8080u16, 9090, relay_b.port() + 100] {
        let tid = h.next_tid();
        let target = SocketAddr::new(relay_b.ip(), port);
        let send = build_class(
            method::SEND,
            Class::Indication,
            &tid,
            &[xor_peer(target, &tid), (attr::DATA, b"x".to_vec())],
            None,
        );
        assert_eq!(
            h.send_from(Transport::Udp, client(1), &send),
            ClientAction::Drop(TurnDrop::NotARelay),
            "port {port}"
        );
    }
    // The listening IP counts as the server's own too.
    let tid = h.next_tid();
    let req = build(
        method::CREATE_PERMISSION,
        &tid,
        &[xor_peer(local(), &tid)],
        Some(&auth_a),
    );
    assert_eq!(h.request(1, &req).error, None);
    let tid = h.next_tid();
    let send = build_class(
        method::SEND,
        Class::Indication,
        &tid,
        &[xor_peer(local(), &tid), (attr::DATA, b"x".to_vec())],
        None,
    );
    assert_eq!(
        h.send_from(Transport::Udp, client(1), &send),
        ClientAction::Drop(TurnDrop::NotARelay)
    );
    // Once B's allocation is gone, A's data to it is dropped.
    let r = h.authed(2, method::REFRESH, &[lifetime(0)], &auth_b);
    assert_eq!(r.error, None);
    let tid = h.next_tid();
    let send = build_class(
        method::SEND,
        Class::Indication,
        &tid,
        &[xor_peer(relay_b, &tid), (attr::DATA, b"x".to_vec())],
        None,
    );
    assert_eq!(
        h.send_from(Transport::Udp, client(1), &send),
        ClientAction::Drop(TurnDrop::NotARelay)
    );
}

// ------------------------------------------------------------------ robustness

#[test]
fn binding_still_works_and_other_classes_are_dropped() {
    let mut h = H::new();
    let req = turnpike_proto::client::binding_request(&[1; 12], None);
    let r = h.request(1, &req);
    assert_eq!((r.method, r.class), (method::BINDING, Class::Success));
    let tid = h.next_tid();
    let resp = build_class(method::ALLOCATE, Class::Success, &tid, &[], None);
    assert!(matches!(
        h.send_from(Transport::Udp, client(1), &resp),
        ClientAction::Stun(Action::Drop(_))
    ));
    let tid = h.next_tid();
    let data = build_class(method::DATA, Class::Indication, &tid, &[], None);
    assert!(matches!(
        h.send_from(Transport::Udp, client(1), &data),
        ClientAction::Stun(Action::Drop(_))
    ));
    // A Send request (not indication) is a 400.
    let tid = h.next_tid();
    let send = build(method::SEND, &tid, &[], None);
    assert_eq!(h.request(1, &send).error, Some(400));
}

#[test]
fn late_peer_datagrams_after_expiry_are_dropped() {
    let mut h = H::new();
    let (_, relayed) = h.allocate(1, "alice", "wonderland");
    let id = h.relay_id(1, false);
    let _ = relayed;
    h.advance(601);
    h.out.clear();
    assert_eq!(
        h.core
            .handle_peer(id, peer_addr("8.8.8.8:1"), b"x", h.now, &mut h.out),
        PeerAction::Drop(PeerDrop::NoAllocation)
    );
    assert_eq!(
        h.core.handle_peer(
            RelayId::from_index(999).unwrap(),
            peer_addr("8.8.8.8:1"),
            b"x",
            h.now,
            &mut h.out
        ),
        PeerAction::Drop(PeerDrop::NoAllocation)
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_client_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300), first in any::<u8>()) {
            let mut h = H::new();
            let (_, _) = h.allocate(1, "alice", "wonderland");
            let mut d = data;
            if let Some(b) = d.first_mut() { *b = first; }
            let _ = h.send_from(Transport::Udp, client(1), &d);
            let _ = h.send_from(Transport::Tcp, client(2), &d);
            // Bytes that look like STUN: a valid header with random attributes after it.
            let tid = h.next_tid();
            let mut m = Vec::new();
            fast::write_header(&mut m, method::ALLOCATE, Class::Request, &tid);
            let mut body = d.clone();
            body.truncate(body.len() / 4 * 4);
            m.extend_from_slice(&body);
            fast::finish(&mut m, 0);
            for meth in [method::ALLOCATE, method::REFRESH, method::CREATE_PERMISSION, method::CHANNEL_BIND, method::SEND] {
                let t = turnpike_proto::message_type(meth, if meth == method::SEND { Class::Indication } else { Class::Request });
                m[..2].copy_from_slice(&t.to_be_bytes());
                let out = h.send_from(Transport::Udp, client(1), &m);
                if let ClientAction::Stun(Action::Reply { .. }) = out {
                    prop_assert!(h.out.len() <= turnpike_relay_core::turn::UNAUTHENTICATED_REPLY_LIMIT.max(2 * m.len()));
                }
            }
            let id = h.relay_id(1, false);
            h.out.clear();
            let _ = h.core.handle_peer(id, peer_addr("8.8.8.8:1"), &d, h.now, &mut h.out);
        }
    }
}
