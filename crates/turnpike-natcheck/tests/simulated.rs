//! The sequencer against the real STUN core behind simulated NATs, on virtual time.
//!
//! A small network simulator: the client's sockets sit behind a NAT model implementing each
//! RFC 4787 mapping/filtering combination; the server is `turnpike_relay_core::StunServer`
//! with RFC 5780 discovery; packets can be lost, delayed, reordered and duplicated. Time only
//! moves when the simulator jumps it to the next event, so every run is deterministic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use turnpike_natcheck::{Behaviour, Config, Locals, NatCheck, NatType, Report, SocketId, Timing};
use turnpike_relay_core::{Action, AddressSet, Incoming, StunConfig, StunServer, Transport};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nat {
    FullCone,
    FullConeHairpin,
    Restricted,
    PortRestricted,
    Symmetric,
    None,
    Firewall,
    Blocked,
}

const ALL: [Nat; 8] = [
    Nat::FullCone,
    Nat::FullConeHairpin,
    Nat::Restricted,
    Nat::PortRestricted,
    Nat::Symmetric,
    Nat::None,
    Nat::Firewall,
    Nat::Blocked,
];

fn expected(nat: Nat) -> NatType {
    match nat {
        Nat::FullCone | Nat::FullConeHairpin => NatType::FullCone,
        Nat::Restricted => NatType::RestrictedCone,
        Nat::PortRestricted => NatType::PortRestrictedCone,
        Nat::Symmetric => NatType::Symmetric,
        Nat::None => NatType::OpenInternet,
        Nat::Firewall => NatType::Firewall,
        Nat::Blocked => NatType::UdpBlocked,
    }
}

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const PUBLIC_IP: &str = "203.0.113.9";

#[derive(Debug, Clone)]
struct Packet {
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
    /// Delivered to the client side (true) or the server side (false).
    to_client: bool,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

struct Sim {
    nat: Nat,
    now: Instant,
    start: Instant,
    rng: Rng,
    loss_pct: u64,
    dup_pct: u64,
    jitter_ms: u64,
    server: StunServer,
    /// Server addresses that answer; a server without RFC 5780 has only the primary.
    queue: BTreeMap<(Instant, u64), Packet>,
    seq: u64,
    // NAT state
    mappings: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
    reverse: HashMap<u16, SocketAddr>,
    permissions: HashSet<(u16, SocketAddr)>,
    next_port: u16,
    locals: Locals,
    /// Inject a stray response with a random transaction id before every real one.
    strays: bool,
    /// The server answers CHANGE-REQUEST from its primary address (a broken server).
    broken_change: bool,
    /// A second server address (served by the same core), for the no-RFC-5780 fallback.
    second: Option<SocketAddr>,
}

impl Sim {
    fn new(nat: Nat, seed: u64, loss_pct: u64, discovery: bool) -> Sim {
        let now = Instant::now();
        let set = AddressSet {
            primary_ip: "198.51.100.1".parse().unwrap(),
            alternate_ip: "198.51.100.2".parse().unwrap(),
            primary_port: 3478,
            alternate_port: 3479,
        };
        let client_ip = if matches!(nat, Nat::None | Nat::Firewall) {
            PUBLIC_IP
        } else {
            "192.168.1.2"
        };
        let locals = Locals {
            mapping: a(&format!("{client_ip}:5000")),
            filter_ip: a(&format!("{client_ip}:5001")),
            filter_port: a(&format!("{client_ip}:5002")),
            hairpin: Some(a(&format!("{client_ip}:5003"))),
        };
        Sim {
            nat,
            now,
            start: now,
            rng: Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1),
            loss_pct,
            dup_pct: 0,
            jitter_ms: 0,
            server: StunServer::new(StunConfig {
                software: None,
                discovery_v4: discovery.then_some(set),
                discovery_v6: None,
            }),
            queue: BTreeMap::new(),
            seq: 0,
            mappings: HashMap::new(),
            reverse: HashMap::new(),
            permissions: HashSet::new(),
            next_port: 40000,
            locals,
            strays: false,
            broken_change: false,
            second: None,
        }
    }

    fn schedule(&mut self, p: Packet) {
        if self.rng.chance(self.loss_pct) {
            return;
        }
        let copies = if self.rng.chance(self.dup_pct) { 2 } else { 1 };
        for _ in 0..copies {
            let jitter = if self.jitter_ms > 0 {
                self.rng.next() % self.jitter_ms
            } else {
                0
            };
            let at = self.now + Duration::from_millis(5 + jitter);
            self.seq += 1;
            self.queue.insert((at, self.seq), p.clone());
        }
    }

    fn public(&self) -> IpAddr {
        PUBLIC_IP.parse().unwrap()
    }

    /// Client socket `local` sends to `dst`: apply the NAT outbound.
    fn outbound(&mut self, local: SocketAddr, dst: SocketAddr, data: Vec<u8>) {
        match self.nat {
            Nat::Blocked => {}
            Nat::None => self.schedule(Packet {
                from: local,
                to: dst,
                data,
                to_client: dst.ip() == local.ip(),
            }),
            Nat::Firewall => {
                self.permissions.insert((local.port(), dst));
                self.schedule(Packet {
                    from: local,
                    to: dst,
                    data,
                    to_client: dst.ip() == local.ip(),
                });
            }
            _ => {
                let key = if self.nat == Nat::Symmetric {
                    (local, Some(dst))
                } else {
                    (local, None)
                };
                let port = match self.mappings.get(&key) {
                    Some(p) => *p,
                    None => {
                        let p = self.next_port;
                        self.next_port += 7;
                        self.mappings.insert(key, p);
                        self.reverse.insert(p, local);
                        p
                    }
                };
                self.permissions.insert((port, dst));
                let from = SocketAddr::new(self.public(), port);
                if dst.ip() == self.public() {
                    // Hairpin: only the hairpin-capable NAT loops it back inside.
                    if self.nat == Nat::FullConeHairpin {
                        if let Some(&inner) = self.reverse.get(&dst.port()) {
                            self.schedule(Packet {
                                from,
                                to: inner,
                                data,
                                to_client: true,
                            });
                        }
                    }
                    return;
                }
                self.schedule(Packet {
                    from,
                    to: dst,
                    data,
                    to_client: false,
                });
            }
        }
    }

    /// A packet from the internet reaches the NAT's public side.
    fn inbound(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let target = match self.nat {
            Nat::Blocked => None,
            Nat::None => Some(to),
            Nat::Firewall => self.permissions.contains(&(to.port(), from)).then_some(to),
            _ => {
                let inner = self.reverse.get(&to.port()).copied();
                let allowed = match self.nat {
                    Nat::FullCone | Nat::FullConeHairpin => true,
                    Nat::Restricted => self
                        .permissions
                        .iter()
                        .any(|(p, r)| *p == to.port() && r.ip() == from.ip()),
                    _ => self.permissions.contains(&(to.port(), from)),
                };
                inner.filter(|_| allowed)
            }
        };
        if let Some(t) = target {
            self.schedule(Packet {
                from,
                to: t,
                data,
                to_client: true,
            });
        }
    }

    fn socket_of(&self, addr: SocketAddr) -> Option<SocketId> {
        let l = self.locals;
        [
            (l.mapping, SocketId::Mapping),
            (l.filter_ip, SocketId::FilterIp),
            (l.filter_port, SocketId::FilterPort),
        ]
        .into_iter()
        .chain(l.hairpin.map(|h| (h, SocketId::Hairpin)))
        .find(|(a, _)| *a == addr)
        .map(|(_, s)| s)
    }

    fn local_of(&self, s: SocketId) -> SocketAddr {
        match s {
            SocketId::Mapping => self.locals.mapping,
            SocketId::FilterIp => self.locals.filter_ip,
            SocketId::FilterPort => self.locals.filter_port,
            SocketId::Hairpin => self.locals.hairpin.unwrap(),
        }
    }

    fn run(&mut self, hairpin: bool, timing: Timing) -> Report {
        let mut locals = self.locals;
        if !hairpin {
            locals.hairpin = None;
        }
        let config = Config {
            server: a("198.51.100.1:3478"),
            second_server: self.second,
            timing,
        };
        let mut check = NatCheck::new(config, locals, self.now, self.rng.next());
        let mut out = Vec::new();
        loop {
            while let Some(t) = check.poll_transmit() {
                let local = self.local_of(t.socket);
                self.outbound(local, t.to, t.payload);
            }
            if let Some(r) = check.poll_report() {
                return r;
            }
            let timer = check.poll_timeout().expect("a timer while running");
            let next_packet = self.queue.keys().next().map(|k| k.0);
            match next_packet {
                Some(at) if at <= timer => {
                    let (_, p) = self.queue.pop_first().unwrap();
                    self.now = at;
                    if p.to_client {
                        let Some(sock) = self.socket_of(p.to) else {
                            continue;
                        };
                        if self.strays {
                            let mut stray = p.data.clone();
                            if stray.len() >= 20 {
                                stray[10] ^= 0xFF; // another transaction id (and a bad FINGERPRINT)
                            }
                            check.handle_datagram(self.now, sock, p.from, &stray);
                        }
                        check.handle_datagram(self.now, sock, p.from, &p.data);
                    } else {
                        out.clear();
                        let outcome = self.server.handle(
                            Incoming {
                                transport: Transport::Udp,
                                local: p.to,
                                remote: p.from,
                                data: &p.data,
                            },
                            &mut out,
                        );
                        if let Action::Reply { from, to, .. } = outcome.action {
                            let from = if self.broken_change { p.to } else { from };
                            let data = out.clone();
                            if matches!(self.nat, Nat::None) {
                                self.schedule(Packet {
                                    from,
                                    to,
                                    data,
                                    to_client: true,
                                });
                            } else {
                                self.inbound(from, to, data);
                            }
                        }
                    }
                }
                _ => {
                    assert!(timer >= self.now, "time never goes backwards");
                    self.now = timer;
                    check.handle_timeout(self.now);
                }
            }
            assert!(
                self.now - self.start < Duration::from_secs(60),
                "the check must end"
            );
        }
    }
}

fn check(nat: Nat, seed: u64, loss: u64) -> Report {
    Sim::new(nat, seed, loss, true).run(false, Timing::default())
}

#[test]
fn every_type_is_classified_exactly_without_loss() {
    for nat in ALL {
        for seed in 0..10 {
            let r = check(nat, seed, 0);
            assert_eq!(r.nat_type, expected(nat), "{nat:?} seed {seed}: {r:?}");
            assert!(
                r.duration <= Duration::from_millis(1200),
                "{nat:?} took {:?}",
                r.duration
            );
        }
    }
}

#[test]
fn mapping_and_filtering_fields() {
    let r = check(Nat::Restricted, 1, 0);
    assert_eq!(
        (r.mapping, r.filtering),
        (Behaviour::EndpointIndependent, Behaviour::AddressDependent)
    );
    assert_eq!(r.nat, Some(true));
    assert_eq!(
        r.public_address.map(|p| p.ip()),
        Some(PUBLIC_IP.parse().unwrap())
    );
    assert_eq!(r.other_address, Some(a("198.51.100.2:3479")));
    let r = check(Nat::Symmetric, 1, 0);
    assert_eq!(r.mapping, Behaviour::AddressAndPortDependent);
    let r = check(Nat::PortRestricted, 1, 0);
    assert_eq!(r.filtering, Behaviour::AddressAndPortDependent);
    let r = check(Nat::None, 1, 0);
    assert_eq!(
        (r.nat, r.filtering),
        (Some(false), Behaviour::EndpointIndependent)
    );
    let r = check(Nat::Blocked, 1, 0);
    assert_eq!((r.nat, r.public_address), (None, None));
    assert!(
        r.duration <= Duration::from_millis(1200),
        "blocked is reported quickly: {:?}",
        r.duration
    );
}

#[test]
fn under_20_percent_loss_right_or_unknown_never_wrong() {
    for nat in ALL {
        let mut right = 0;
        for seed in 0..50 {
            let r = check(nat, 1000 + seed, 20);
            if r.nat_type == expected(nat) {
                right += 1;
            } else {
                assert_eq!(
                    r.nat_type,
                    NatType::Unknown,
                    "{nat:?} seed {seed}: wrong with confidence: {r:?}"
                );
            }
        }
        eprintln!("{nat:?}: {right}/50 right under 20 % loss");
        assert!(
            right >= 45,
            "{nat:?}: only {right}/50 right under 20 % loss"
        );
    }
}

#[test]
fn reordering_duplicates_and_stray_transaction_ids() {
    for nat in ALL {
        let mut sim = Sim::new(nat, 7, 0, true);
        sim.jitter_ms = 80;
        sim.dup_pct = 30;
        sim.strays = true;
        let r = sim.run(false, Timing::default());
        assert_eq!(r.nat_type, expected(nat), "{nat:?}: {r:?}");
    }
}

#[test]
fn hairpinning() {
    let r = Sim::new(Nat::FullConeHairpin, 3, 0, true).run(true, Timing::default());
    assert_eq!((r.nat_type, r.hairpinning), (NatType::FullCone, Some(true)));
    let r = Sim::new(Nat::FullCone, 3, 0, true).run(true, Timing::default());
    assert_eq!(
        (r.nat_type, r.hairpinning),
        (NatType::FullCone, Some(false))
    );
    let r = Sim::new(Nat::FullCone, 3, 0, true).run(false, Timing::default());
    assert_eq!(r.hairpinning, None, "not tested unless asked");
}

#[test]
fn server_without_rfc5780_is_called_out() {
    let r = Sim::new(Nat::PortRestricted, 5, 0, false).run(false, Timing::default());
    assert_eq!(r.nat_type, NatType::Unknown);
    assert_eq!(r.filtering, Behaviour::Unknown);
    assert_eq!(r.rfc5780, Some(false));
    assert!(
        r.public_address.is_some(),
        "the mapped address is still reported"
    );
    assert!(
        r.notes.iter().any(|n| n.contains("RFC 5780")),
        "{:?}",
        r.notes
    );
}

#[test]
fn a_server_answering_from_the_wrong_address_is_not_believed() {
    let mut sim = Sim::new(Nat::FullCone, 9, 0, true);
    sim.broken_change = true;
    let r = sim.run(false, Timing::default());
    assert_eq!(r.filtering, Behaviour::Unknown, "{r:?}");
    assert_eq!(r.nat_type, NatType::Unknown);
    assert!(
        r.notes
            .iter()
            .any(|n| n.contains("does not honour CHANGE-REQUEST")),
        "{:?}",
        r.notes
    );
}

#[test]
fn the_deadline_bounds_the_run() {
    let timing = Timing {
        deadline: Duration::from_millis(400),
        ..Timing::default()
    };
    let r = Sim::new(Nat::PortRestricted, 11, 0, true).run(false, timing);
    assert!(r.duration <= Duration::from_millis(400));
    assert_eq!(
        r.filtering,
        Behaviour::Unknown,
        "not enough time to prove filtering"
    );
    assert!(r.notes.iter().any(|n| n.contains("time limit")));
}

#[test]
fn second_server_tests_mapping_without_rfc5780() {
    // Same IP, other port: a differing mapping proves address-and-port dependence.
    let mut sim = Sim::new(Nat::Symmetric, 21, 0, false);
    sim.second = Some(a("198.51.100.1:3479"));
    let r = sim.run(false, Timing::default());
    assert_eq!(
        (r.mapping, r.nat_type),
        (Behaviour::AddressAndPortDependent, NatType::Symmetric),
        "{r:?}"
    );
    // Another IP: not endpoint-independent, but which dependence cannot be told.
    let mut sim = Sim::new(Nat::Symmetric, 22, 0, false);
    sim.second = Some(a("198.51.100.9:3478"));
    let r = sim.run(false, Timing::default());
    assert_eq!(r.mapping, Behaviour::Unknown, "{r:?}");
    assert!(
        r.notes.iter().any(|n| n.contains("second server")),
        "{:?}",
        r.notes
    );
    // A cone NAT keeps its mapping towards both; filtering stays unknown without RFC 5780.
    let mut sim = Sim::new(Nat::PortRestricted, 23, 0, false);
    sim.second = Some(a("198.51.100.9:3478"));
    let r = sim.run(false, Timing::default());
    assert_eq!(
        (r.mapping, r.filtering, r.nat_type),
        (
            Behaviour::EndpointIndependent,
            Behaviour::Unknown,
            NatType::Unknown
        ),
        "{r:?}"
    );
}

#[test]
fn a_deadline_before_any_silence_is_proven_is_unknown_not_blocked() {
    let timing = Timing {
        deadline: Duration::from_millis(500),
        ..Timing::default()
    };
    let r = Sim::new(Nat::Blocked, 12, 0, true).run(false, timing);
    assert_eq!(r.nat_type, NatType::Unknown, "{r:?}");
    assert!(r.notes.iter().any(|n| n.contains("time limit")));
    // With enough time, the same path is reported blocked.
    let r = Sim::new(Nat::Blocked, 12, 0, true).run(false, Timing::default());
    assert_eq!(r.nat_type, NatType::UdpBlocked);
}
