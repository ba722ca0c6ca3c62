//! The binding-lifetime search against the real STUN core behind a NAT whose mappings expire,
//! on virtual time.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use turnpike_natcheck::{LifetimeResult, LifetimeSearch, Timing};
use turnpike_relay_core::{Action, Incoming, StunConfig, StunServer, Transport};

fn a(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// (from, to, bytes, towards the client).
type InFlight = (SocketAddr, SocketAddr, Vec<u8>, bool);

struct Net {
    now: Instant,
    /// Mapping lifetime without outbound traffic; `None` = no NAT.
    lifetime: Option<Duration>,
    loss_pct: u64,
    rng: u64,
    server: StunServer,
    queue: BTreeMap<(Instant, u64), InFlight>,
    seq: u64,
    /// local -> (public port, last outbound)
    map: HashMap<SocketAddr, (u16, Instant)>,
    next_port: u16,
    /// The server answers to the request's source, ignoring RESPONSE-PORT.
    ignore_response_port: bool,
}

const PUBLIC: &str = "203.0.113.9";

impl Net {
    fn lose(&mut self) -> bool {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % 100 < self.loss_pct
    }

    fn push(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>, to_client: bool) {
        if self.lose() {
            return;
        }
        self.seq += 1;
        self.queue.insert(
            (self.now + Duration::from_millis(5), self.seq),
            (from, to, data, to_client),
        );
    }

    fn outbound(&mut self, local: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let Some(life) = self.lifetime else {
            return self.push(local, to, data, false);
        };
        let now = self.now;
        let port = match self.map.get(&local) {
            Some((p, last)) if now.duration_since(*last) <= life => *p,
            _ => {
                self.next_port += 1;
                self.next_port
            }
        };
        self.map.insert(local, (port, now));
        self.push(
            SocketAddr::new(PUBLIC.parse().unwrap(), port),
            to,
            data,
            false,
        );
    }

    fn inbound(&mut self, from: SocketAddr, to: SocketAddr, data: Vec<u8>) {
        let Some(life) = self.lifetime else {
            return self.push(from, to, data, true);
        };
        let now = self.now;
        let target = self
            .map
            .iter()
            .find(|(_, (p, last))| *p == to.port() && now.duration_since(*last) <= life)
            .map(|(l, _)| *l);
        if let Some(t) = target {
            self.push(from, t, data, true);
        }
    }
}

fn search(
    lifetime: Option<Duration>,
    max_step: u64,
    loss_pct: u64,
    seed: u64,
) -> (LifetimeResult, Duration) {
    search_with(lifetime, max_step, loss_pct, seed, false)
}

fn search_with(
    lifetime: Option<Duration>,
    max_step: u64,
    loss_pct: u64,
    seed: u64,
    ignore_response_port: bool,
) -> (LifetimeResult, Duration) {
    let now = Instant::now();
    let client_ip = if lifetime.is_some() {
        "192.168.1.2"
    } else {
        PUBLIC
    };
    let steps = turnpike_natcheck::lifetime::steps_up_to(Duration::from_secs(max_step));
    let probe = a(&format!("{client_ip}:6000"));
    let held: Vec<SocketAddr> = (0..steps.len())
        .map(|i| a(&format!("{client_ip}:{}", 6001 + i)))
        .collect();
    let mut net = Net {
        now,
        lifetime,
        loss_pct,
        rng: seed | 1,
        server: StunServer::new(StunConfig::default()),
        queue: BTreeMap::new(),
        seq: 0,
        map: HashMap::new(),
        next_port: 30000,
        ignore_response_port,
    };
    let server = a("198.51.100.1:3478");
    let mut s = LifetimeSearch::new(server, &held, &steps, Timing::default(), now, seed);
    let sockets: Vec<SocketAddr> = std::iter::once(probe).chain(held.iter().copied()).collect();
    let mut out = Vec::new();
    loop {
        while let Some(t) = s.poll_transmit() {
            net.outbound(sockets[t.socket], t.to, t.payload);
        }
        if let Some(r) = s.poll_result() {
            return (r, net.now - now);
        }
        let timer = s.poll_timeout().expect("running");
        match net.queue.keys().next().map(|k| k.0) {
            Some(at) if at <= timer => {
                let (_, (from, to, data, to_client)) = net.queue.pop_first().unwrap();
                net.now = at;
                if to_client {
                    if let Some(i) = sockets.iter().position(|l| *l == to) {
                        s.handle_datagram(net.now, i, from, &data);
                    }
                } else {
                    out.clear();
                    let o = net.server.handle(
                        Incoming {
                            transport: Transport::Udp,
                            local: to,
                            remote: from,
                            data: &data,
                        },
                        &mut out,
                    );
                    if let Action::Reply {
                        from: src, to: dst, ..
                    } = o.action
                    {
                        let reply = out.clone();
                        let dst = if net.ignore_response_port { from } else { dst };
                        net.inbound(src, dst, reply);
                    }
                }
            }
            _ => {
                net.now = timer;
                s.handle_timeout(net.now);
            }
        }
        assert!(net.now - now < Duration::from_secs(300), "bounded");
    }
}

#[test]
fn brackets_the_lifetime() {
    let (r, took) = search(Some(Duration::from_secs(10)), 60, 0, 1);
    assert_eq!(r.nat, Some(true));
    assert_eq!(
        (r.at_least, r.at_most),
        (Some(Duration::from_secs(8)), Some(Duration::from_secs(16))),
        "{r:?}"
    );
    assert!(
        took < Duration::from_secs(19),
        "stops once a step expired: {took:?}"
    );
}

#[test]
fn longer_than_the_search_limit() {
    let (r, took) = search(Some(Duration::from_secs(100)), 32, 0, 2);
    assert_eq!(
        (r.at_least, r.at_most),
        (Some(Duration::from_secs(32)), None),
        "{r:?}"
    );
    assert!(
        took < Duration::from_secs(36),
        "bounded by the largest step: {took:?}"
    );
}

#[test]
fn no_nat_means_nothing_to_expire() {
    let (r, took) = search(None, 60, 0, 3);
    assert_eq!(r.nat, Some(false));
    assert!(took < Duration::from_secs(1));
}

#[test]
fn loss_never_gives_wrong_bounds() {
    let life = Duration::from_secs(10);
    let mut bracketed = 0;
    for seed in 0..20 {
        let (r, _) = search(Some(life), 32, 20, 100 + seed);
        if r.at_least.is_some() && r.at_most.is_some() {
            bracketed += 1;
        }
        if let Some(l) = r.at_least {
            assert!(l <= life, "seed {seed}: {r:?}");
        }
        if let Some(m) = r.at_most {
            assert!(m > life, "seed {seed}: {r:?}");
        }
    }
    assert!(
        bracketed >= 15,
        "only {bracketed}/20 runs gave both bounds under 20 % loss"
    );
}

#[test]
fn a_server_ignoring_response_port_gives_no_bounds() {
    let (r, _) = search_with(Some(Duration::from_secs(10)), 16, 0, 5, true);
    assert_eq!((r.at_least, r.at_most), (None, None), "{r:?}");
    assert!(
        r.notes.iter().any(|n| n.contains("RESPONSE-PORT")),
        "{:?}",
        r.notes
    );
}

#[test]
fn steps_include_the_limit() {
    use turnpike_natcheck::lifetime::steps_up_to;
    let secs = |m| {
        steps_up_to(Duration::from_secs(m))
            .iter()
            .map(|d| d.as_secs())
            .collect::<Vec<_>>()
    };
    assert_eq!(secs(60), [1, 2, 4, 8, 16, 32, 60]);
    assert_eq!(secs(300), [1, 2, 4, 8, 16, 32, 60, 120, 300]);
    assert_eq!(secs(5), [1, 2, 4, 5]);
}
