//! The sans-IO RFC 5780 probe sequencer.
//!
//! [`NatCheck`] decides which STUN requests to send from which local socket and when, reads
//! the answers, and classifies the NAT. It never touches a socket or a clock: the driver feeds
//! it datagrams ([`NatCheck::handle_datagram`]) and the passage of time
//! ([`NatCheck::handle_timeout`]), and drains [`NatCheck::poll_transmit`] and
//! [`NatCheck::poll_timeout`] until [`NatCheck::poll_report`] returns the verdict.
//!
//! # Method
//! Four sockets, so that no test can open a NAT filter another test depends on:
//!
//! * **mapping** sends test I to the server, then (once OTHER-ADDRESS is known) test II to the
//!   alternate IP and primary port and test III to the alternate IP and port, in parallel.
//!   Mapping is endpoint-independent when I and II see the same mapped address,
//!   address-dependent when only II and III agree, and address-and-port-dependent otherwise.
//! * **filter-ip** and **filter-port** each send a CHANGE-REQUEST (change IP and port; change
//!   port only) to the primary address, interleaved with plain *control* requests on the same
//!   socket. A change answer that arrives proves the filter lets it in. A change request that
//!   stays unanswered while the control on the same socket *is* answered, for at least
//!   [`Timing::min_tries`] sends and [`Timing::silence`] (or four round trips, if longer),
//!   proves the filter blocks it; a lost packet cannot be mistaken for filtering. Without a
//!   control answer the verdict is `unknown`, never a guess.
//! * **hairpin** (optional) sends a request to the mapping socket's public address; if the
//!   mapping socket receives it, the NAT hairpins.
//!
//! No NAT is detected by comparing the mapped address with the socket's real local address
//! (the driver binds a concrete IP, never a wildcard). UDP is declared blocked when no request
//! on any socket is answered within the silence window.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;
use turnpike_proto::client::{self, BindingResponse, Received};

/// A transaction id from a xorshift64* generator; the state is seeded by the driver.
pub(crate) fn next_tid(rng: &mut u64) -> [u8; 12] {
    let mut tid = [0u8; 12];
    for chunk in tid.chunks_mut(4) {
        *rng ^= *rng >> 12;
        *rng ^= *rng << 25;
        *rng ^= *rng >> 27;
        let v = rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        chunk.copy_from_slice(&v.to_be_bytes()[..4]);
    }
    tid
}

/// The local sockets the sequencer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SocketId {
    /// Tests I, II, III (and the second-server test).
    Mapping = 0,
    /// Filtering test: CHANGE-REQUEST change IP and port, plus controls.
    FilterIp = 1,
    /// Filtering test: CHANGE-REQUEST change port, plus controls.
    FilterPort = 2,
    /// Hairpinning test.
    Hairpin = 3,
}

/// The real local addresses of the driver's sockets (concrete IPs, not wildcards).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Locals {
    /// The mapping socket.
    pub mapping: SocketAddr,
    /// The change-IP-and-port filtering socket.
    pub filter_ip: SocketAddr,
    /// The change-port filtering socket.
    pub filter_port: SocketAddr,
    /// The hairpin socket, if the hairpin test is wanted.
    pub hairpin: Option<SocketAddr>,
}

/// Retransmission and decision timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Interval between sends of an unanswered request.
    pub interval: Duration,
    /// Sends of an unanswered request before its silence may count as an answer.
    pub min_tries: u32,
    /// Minimum time from the first send before silence counts.
    pub silence: Duration,
    /// Give up on whatever is undecided after this long.
    pub deadline: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            interval: Duration::from_millis(100),
            min_tries: 9,
            silence: Duration::from_millis(900),
            deadline: Duration::from_secs(5),
        }
    }
}

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The STUN server (primary address).
    pub server: SocketAddr,
    /// A second STUN server, for the mapping test when the first cannot do RFC 5780.
    pub second_server: Option<SocketAddr>,
    /// Timing.
    pub timing: Timing,
}

/// RFC 4787 mapping or filtering behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Endpoint-independent.
    EndpointIndependent,
    /// Address-dependent.
    AddressDependent,
    /// Address-and-port-dependent.
    AddressAndPortDependent,
    /// Could not be determined.
    Unknown,
}

impl Behaviour {
    /// The JSON/CLI name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Behaviour::EndpointIndependent => "endpoint-independent",
            Behaviour::AddressDependent => "address-dependent",
            Behaviour::AddressAndPortDependent => "address-and-port-dependent",
            Behaviour::Unknown => "unknown",
        }
    }
}

/// The classic NAT names (RFC 3489 terms), derived from mapping and filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatType {
    /// No NAT, no filtering.
    OpenInternet,
    /// No NAT, but a stateful firewall filters inbound traffic.
    Firewall,
    /// Endpoint-independent mapping and filtering.
    FullCone,
    /// Endpoint-independent mapping, address-dependent filtering.
    RestrictedCone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    PortRestrictedCone,
    /// Mapping depends on the destination.
    Symmetric,
    /// No STUN answer at all.
    UdpBlocked,
    /// Not enough evidence.
    Unknown,
}

impl NatType {
    /// The JSON/CLI name.
    pub const fn as_str(self) -> &'static str {
        match self {
            NatType::OpenInternet => "open-internet",
            NatType::Firewall => "firewall",
            NatType::FullCone => "full-cone",
            NatType::RestrictedCone => "restricted-cone",
            NatType::PortRestrictedCone => "port-restricted-cone",
            NatType::Symmetric => "symmetric",
            NatType::UdpBlocked => "udp-blocked",
            NatType::Unknown => "unknown",
        }
    }

    /// Derives the classic name.
    pub fn classify(nat: Option<bool>, mapping: Behaviour, filtering: Behaviour) -> NatType {
        use Behaviour::*;
        match (nat, mapping, filtering) {
            (None, _, _) => NatType::UdpBlocked,
            (Some(false), _, EndpointIndependent) => NatType::OpenInternet,
            (Some(false), _, AddressDependent | AddressAndPortDependent) => NatType::Firewall,
            (Some(false), _, Unknown) => NatType::Unknown,
            (Some(true), AddressDependent | AddressAndPortDependent, _) => NatType::Symmetric,
            (Some(true), EndpointIndependent, EndpointIndependent) => NatType::FullCone,
            (Some(true), EndpointIndependent, AddressDependent) => NatType::RestrictedCone,
            (Some(true), EndpointIndependent, AddressAndPortDependent) => {
                NatType::PortRestrictedCone
            }
            (Some(true), _, _) => NatType::Unknown,
        }
    }
}

/// The verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The server probed.
    pub server: SocketAddr,
    /// The mapping socket's real local address.
    pub local_address: SocketAddr,
    /// The mapped (public) address of the mapping socket.
    pub public_address: Option<SocketAddr>,
    /// Whether there is a NAT; `None` when UDP is blocked.
    pub nat: Option<bool>,
    /// Mapping behaviour.
    pub mapping: Behaviour,
    /// Filtering behaviour.
    pub filtering: Behaviour,
    /// The classic name.
    pub nat_type: NatType,
    /// Hairpinning, when tested.
    pub hairpinning: Option<bool>,
    /// The server's OTHER-ADDRESS, when it gave a usable one.
    pub other_address: Option<SocketAddr>,
    /// Whether the server supports RFC 5780 discovery.
    pub rfc5780: Option<bool>,
    /// Explanations of anything unusual (why something is unknown, server problems).
    pub notes: Vec<String>,
    /// Time from start to verdict.
    pub duration: Duration,
}

/// One datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// From which socket.
    pub socket: SocketId,
    /// To where.
    pub to: SocketAddr,
    /// The STUN request.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Test1,
    Test2,
    Test3,
    ControlIp,
    ChangeIpPort,
    ControlPort,
    ChangePort,
    Second,
    Hairpin,
}

#[derive(Debug, Clone)]
struct Answer {
    from: SocketAddr,
    response: BindingResponse,
}

#[derive(Debug, Clone)]
struct Probe {
    kind: Kind,
    socket: SocketId,
    to: SocketAddr,
    tid: [u8; 12],
    payload: Vec<u8>,
    sent: u32,
    first_sent: Option<Instant>,
    next_send: Instant,
    answer: Option<Answer>,
}

/// The sequencer. See the module documentation for the method and the run loop.
#[derive(Debug)]
pub struct NatCheck {
    config: Config,
    locals: Locals,
    start: Instant,
    rng: u64,
    probes: Vec<Probe>,
    out: VecDeque<Transmit>,
    other: Option<SocketAddr>,
    rfc5780: Option<bool>,
    srtt: Option<Duration>,
    notes: Vec<String>,
    report: Option<Report>,
    ignored: u64,
}

impl NatCheck {
    /// A new check starting at `now`. `seed` feeds the transaction-id generator (any value;
    /// the driver passes a random one).
    pub fn new(config: Config, locals: Locals, now: Instant, seed: u64) -> Self {
        let mut c = NatCheck {
            config,
            locals,
            start: now,
            rng: seed | 1,
            probes: Vec::new(),
            out: VecDeque::new(),
            other: None,
            rfc5780: None,
            srtt: None,
            notes: Vec::new(),
            report: None,
            ignored: 0,
        };
        let server = c.config.server;
        c.add(Kind::Test1, SocketId::Mapping, server, None, now);
        c.add(Kind::ControlIp, SocketId::FilterIp, server, None, now);
        c.add(
            Kind::ChangeIpPort,
            SocketId::FilterIp,
            server,
            Some((true, true)),
            now,
        );
        c.add(Kind::ControlPort, SocketId::FilterPort, server, None, now);
        c.add(
            Kind::ChangePort,
            SocketId::FilterPort,
            server,
            Some((false, true)),
            now,
        );
        if let Some(second) = c.config.second_server {
            c.add(Kind::Second, SocketId::Mapping, second, None, now);
        }
        c.handle_timeout(now);
        c
    }

    fn next_tid(&mut self) -> [u8; 12] {
        next_tid(&mut self.rng)
    }

    fn add(
        &mut self,
        kind: Kind,
        socket: SocketId,
        to: SocketAddr,
        change: Option<(bool, bool)>,
        now: Instant,
    ) {
        let tid = self.next_tid();
        let payload = client::binding_request(&tid, change);
        self.probes.push(Probe {
            kind,
            socket,
            to,
            tid,
            payload,
            sent: 0,
            first_sent: None,
            next_send: now,
            answer: None,
        });
    }

    fn probe(&self, kind: Kind) -> Option<&Probe> {
        self.probes.iter().find(|p| p.kind == kind)
    }

    fn answer(&self, kind: Kind) -> Option<&Answer> {
        self.probe(kind).and_then(|p| p.answer.as_ref())
    }

    /// Whether an unanswered probe has been silent long enough to count as "no answer".
    fn silent(&self, kind: Kind, now: Instant) -> bool {
        let Some(p) = self.probe(kind) else {
            return false;
        };
        let Some(first) = p.first_sent else {
            return false;
        };
        let t = self.config.timing;
        let window = t.silence.max(self.srtt.map_or(Duration::ZERO, |r| r * 4));
        p.answer.is_none() && p.sent >= t.min_tries && now.duration_since(first) >= window
    }

    /// Feeds a datagram received on `socket` from `from`.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        socket: SocketId,
        from: SocketAddr,
        data: &[u8],
    ) {
        if self.report.is_some() {
            return;
        }
        match client::parse(data) {
            Some(Received::Response {
                transaction_id,
                response,
            }) => {
                let Some(p) = self
                    .probes
                    .iter_mut()
                    .find(|p| p.tid == transaction_id && p.socket == socket)
                else {
                    self.ignored += 1;
                    return;
                };
                if p.answer.is_none() {
                    if let Some(first) = p.first_sent {
                        let rtt = now.saturating_duration_since(first);
                        if p.sent == 1 {
                            self.srtt = Some(self.srtt.map_or(rtt, |s| (s * 7 + rtt) / 8));
                        }
                    }
                    p.answer = Some(Answer { from, response });
                }
            }
            Some(Received::Request { transaction_id }) if socket == SocketId::Mapping => {
                // The hairpin probe arriving back at the mapping socket.
                if let Some(p) = self
                    .probes
                    .iter_mut()
                    .find(|p| p.kind == Kind::Hairpin && p.tid == transaction_id)
                {
                    if p.answer.is_none() {
                        p.answer = Some(Answer {
                            from,
                            response: BindingResponse::default(),
                        });
                    }
                } else {
                    self.ignored += 1;
                }
            }
            _ => self.ignored += 1,
        }
        self.evaluate(now);
    }

    /// Advances time: retransmits due requests and takes decisions whose silence has elapsed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.report.is_some() {
            return;
        }
        self.evaluate(now);
        if self.report.is_some() {
            return;
        }
        let interval = self.config.timing.interval;
        for p in &mut self.probes {
            if p.answer.is_none() && p.next_send <= now {
                self.out.push_back(Transmit {
                    socket: p.socket,
                    to: p.to,
                    payload: p.payload.clone(),
                });
                p.sent += 1;
                p.first_sent.get_or_insert(now);
                p.next_send = now + interval;
            }
        }
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.out.pop_front()
    }

    /// When [`NatCheck::handle_timeout`] should next be called; `None` once finished.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.report.is_some() {
            return None;
        }
        let next = self
            .probes
            .iter()
            .filter(|p| p.answer.is_none())
            .map(|p| p.next_send)
            .min();
        let deadline = self.start + self.config.timing.deadline;
        Some(next.map_or(deadline, |n| n.min(deadline)))
    }

    /// The verdict, once reached.
    #[must_use]
    pub fn poll_report(&mut self) -> Option<Report> {
        self.report.clone()
    }

    /// Datagrams that matched nothing (wrong transaction id, wrong socket, not STUN).
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    fn note(&mut self, s: &str) {
        if !self.notes.iter().any(|n| n == s) {
            self.notes.push(s.to_owned());
        }
    }

    fn evaluate(&mut self, now: Instant) {
        let server = self.config.server;
        // RFC 5780 support, from the first answer that tells.
        if self.rfc5780.is_none() {
            let first = [Kind::Test1, Kind::ControlIp, Kind::ControlPort]
                .into_iter()
                .find_map(|k| self.answer(k).map(|a| a.response.clone()));
            if let Some(r) = first {
                match r.other_address {
                    Some(o)
                        if o.ip() != server.ip()
                            && o.port() != server.port()
                            && o.is_ipv4() == server.is_ipv4() =>
                    {
                        self.other = Some(o);
                        self.rfc5780 = Some(true);
                        self.add(
                            Kind::Test2,
                            SocketId::Mapping,
                            SocketAddr::new(o.ip(), server.port()),
                            None,
                            now,
                        );
                        self.add(Kind::Test3, SocketId::Mapping, o, None, now);
                    }
                    Some(o) => {
                        self.rfc5780 = Some(false);
                        self.note(&format!(
                            "the server's OTHER-ADDRESS {o} does not differ from {server} in both IP and port, so it cannot do RFC 5780 tests"
                        ));
                    }
                    None => {
                        self.rfc5780 = Some(false);
                        self.note("the server does not support RFC 5780 NAT-behaviour discovery (no OTHER-ADDRESS)");
                    }
                }
            }
        }
        for k in [Kind::ChangeIpPort, Kind::ChangePort] {
            if let Some(code) = self.answer(k).and_then(|a| a.response.error_code) {
                self.rfc5780 = Some(false);
                self.note(&format!("the server answered CHANGE-REQUEST with error {code}: it cannot do RFC 5780 filtering tests"));
            }
        }
        if self.locals.hairpin.is_some() && self.probe(Kind::Hairpin).is_none() {
            if let Some(m) = self.answer(Kind::Test1).and_then(|a| a.response.mapped) {
                self.add(Kind::Hairpin, SocketId::Hairpin, m, None, now);
            }
        }

        let public = self.answer(Kind::Test1).and_then(|a| a.response.mapped);
        let any_answer = [Kind::Test1, Kind::ControlIp, Kind::ControlPort]
            .into_iter()
            .any(|k| self.answer(k).is_some());
        let blocked = !any_answer
            && [Kind::Test1, Kind::ControlIp, Kind::ControlPort]
                .into_iter()
                .all(|k| self.silent(k, now));
        let past_deadline = now.duration_since(self.start) >= self.config.timing.deadline;

        if blocked {
            self.finish(
                now,
                true,
                None,
                None,
                Behaviour::Unknown,
                Behaviour::Unknown,
                None,
            );
            return;
        }
        let nat = public.map(|m| m != self.locals.mapping);

        let mapping = self.mapping(now, public);
        let filtering = self.filtering(now);
        let hairpin = match self.locals.hairpin {
            None => Some(None),
            Some(_) => match self.probe(Kind::Hairpin) {
                Some(p) if p.answer.is_some() => Some(Some(true)),
                Some(_) if self.silent(Kind::Hairpin, now) => Some(Some(false)),
                _ => None,
            },
        };
        let decided =
            nat.is_some() && mapping.is_some() && filtering.is_some() && hairpin.is_some();
        if decided || past_deadline {
            if past_deadline && !decided {
                self.note("no verdict on everything within the time limit (--timeout); the rest is unknown");
            }
            if public.is_none() && any_answer {
                self.note("the mapping test got no answer although other tests did: heavy loss?");
            }
            self.finish(
                now,
                false,
                public,
                nat,
                mapping.unwrap_or(Behaviour::Unknown),
                filtering.unwrap_or(Behaviour::Unknown),
                hairpin.flatten(),
            );
        }
    }

    /// `None` while undecided.
    fn mapping(&mut self, now: Instant, public: Option<SocketAddr>) -> Option<Behaviour> {
        let m1 = public?;
        if m1 == self.locals.mapping {
            return Some(Behaviour::EndpointIndependent);
        }
        match self.rfc5780? {
            true => {
                let m2 = match self.answer(Kind::Test2) {
                    Some(a) => a.response.mapped,
                    None if self.silent(Kind::Test2, now) => {
                        self.note("test II (to the alternate address) got no answer");
                        return Some(Behaviour::Unknown);
                    }
                    None => return None,
                };
                let Some(m2) = m2 else {
                    self.note("test II answer had no mapped address");
                    return Some(Behaviour::Unknown);
                };
                if m2 == m1 {
                    return Some(Behaviour::EndpointIndependent);
                }
                match self.answer(Kind::Test3).map(|a| a.response.mapped) {
                    Some(Some(m3)) if m3 == m2 => Some(Behaviour::AddressDependent),
                    Some(Some(_)) => Some(Behaviour::AddressAndPortDependent),
                    Some(None) => Some(Behaviour::Unknown),
                    None if self.silent(Kind::Test3, now) => {
                        self.note("test III (to the alternate address and port) got no answer");
                        Some(Behaviour::Unknown)
                    }
                    None => None,
                }
            }
            false => {
                let Some(second) = self.config.second_server else {
                    self.note("give a second STUN server (turnpike nat-check SERVER SERVER2) to test mapping without RFC 5780");
                    return Some(Behaviour::Unknown);
                };
                match self.answer(Kind::Second).map(|a| a.response.mapped) {
                    Some(Some(m)) if m == m1 => Some(Behaviour::EndpointIndependent),
                    Some(Some(_)) if second.ip() == self.config.server.ip() => {
                        Some(Behaviour::AddressAndPortDependent)
                    }
                    Some(Some(_)) => {
                        // Another IP and port: the mapping depends on the destination, but
                        // whether on its address alone or also its port cannot be told.
                        self.note("the mapping differs towards the second server (symmetric NAT); address- vs address-and-port-dependent cannot be told apart with two servers");
                        Some(Behaviour::Unknown)
                    }
                    Some(None) => Some(Behaviour::Unknown),
                    None if self.silent(Kind::Second, now) => {
                        self.note("the second server did not answer");
                        Some(Behaviour::Unknown)
                    }
                    None => None,
                }
            }
        }
    }

    /// `None` while undecided.
    fn filtering(&mut self, now: Instant) -> Option<Behaviour> {
        if self.rfc5780 == Some(false) {
            return Some(Behaviour::Unknown);
        }
        let other = self.other;
        let server = self.config.server;
        let change_ok = |a: &Answer, expect: Option<SocketAddr>| {
            a.response.error_code.is_none() && expect.is_some_and(|e| a.from == e)
        };
        // Change IP and port answered: endpoint-independent filtering.
        if let Some(a) = self.answer(Kind::ChangeIpPort).cloned() {
            if a.response.error_code.is_none() && other.is_none() {
                return None; // wait until OTHER-ADDRESS tells where it should come from
            }
            if change_ok(&a, other) {
                return Some(Behaviour::EndpointIndependent);
            }
            self.note(&format!(
                "the change-IP-and-port answer came from {}, not from the server's other address: the server does not honour CHANGE-REQUEST correctly",
                a.from
            ));
            return Some(Behaviour::Unknown);
        }
        if !self.silent(Kind::ChangeIpPort, now) {
            return None;
        }
        if self.answer(Kind::ControlIp).is_none() {
            if self.silent(Kind::ControlIp, now) {
                self.note("the filtering test's control request got no answer either, so silence proves nothing");
                return Some(Behaviour::Unknown);
            }
            return None;
        }
        // Change IP blocked; is change port alone let in?
        let expect_port = other.map(|o| SocketAddr::new(server.ip(), o.port()));
        if let Some(a) = self.answer(Kind::ChangePort).cloned() {
            if a.response.error_code.is_none() && other.is_none() {
                return None;
            }
            if change_ok(&a, expect_port) {
                return Some(Behaviour::AddressDependent);
            }
            self.note(&format!(
                "the change-port answer came from {}, not from {}: the server does not honour CHANGE-REQUEST correctly",
                a.from,
                expect_port.map_or_else(|| "the other port".to_owned(), |e| e.to_string())
            ));
            return Some(Behaviour::Unknown);
        }
        if !self.silent(Kind::ChangePort, now) {
            return None;
        }
        if self.answer(Kind::ControlPort).is_some() {
            Some(Behaviour::AddressAndPortDependent)
        } else if self.silent(Kind::ControlPort, now) {
            self.note("the change-port test's control request got no answer either, so silence proves nothing");
            Some(Behaviour::Unknown)
        } else {
            None
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        &mut self,
        now: Instant,
        blocked: bool,
        public: Option<SocketAddr>,
        nat: Option<bool>,
        mapping: Behaviour,
        filtering: Behaviour,
        hairpinning: Option<bool>,
    ) {
        let any_answer = [Kind::Test1, Kind::ControlIp, Kind::ControlPort]
            .into_iter()
            .any(|k| self.answer(k).is_some());
        let nat_type = if nat.is_none() && (any_answer || !blocked) {
            // Some answers but not the mapping test's, or the time limit came before silence
            // proved anything: not "blocked", just not enough evidence.
            NatType::Unknown
        } else {
            NatType::classify(nat, mapping, filtering)
        };
        let (mapping, filtering) = if nat_type == NatType::UdpBlocked {
            (Behaviour::Unknown, Behaviour::Unknown)
        } else {
            (mapping, filtering)
        };
        self.report = Some(Report {
            server: self.config.server,
            local_address: self.locals.mapping,
            public_address: public,
            nat,
            mapping,
            filtering,
            nat_type,
            hairpinning,
            other_address: self.other,
            rfc5780: self.rfc5780,
            notes: self.notes.clone(),
            duration: now.duration_since(self.start),
        });
    }
}
