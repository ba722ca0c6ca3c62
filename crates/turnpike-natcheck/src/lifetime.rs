//! The sans-IO binding-lifetime search (RFC 5780 §4.6), for `turnpike nat-check --lifetime`.
//!
//! How long does the NAT keep an idle UDP mapping? Several *held* sockets each create a
//! mapping with one Binding request and then stay silent, held socket `i` for `steps[i]`.
//! When its time is up, a separate *probe* socket asks the server, with RESPONSE-PORT set to
//! the held socket's mapped port, to answer to that port instead. If the held socket receives
//! the answer, its mapping was still alive after `steps[i]`; if it stays silent while a
//! control request from the probe socket is answered, the mapping had expired. All steps run
//! in parallel, so the search takes about as long as the lifetime itself (or the largest step),
//! and it stops as soon as a step has expired.
//!
//! The run loop is the same as [`crate::NatCheck`]'s: feed datagrams and timeouts, drain
//! transmits, until [`LifetimeSearch::poll_result`] answers. Socket 0 is the probe socket;
//! socket `i + 1` is held socket `i`.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use turnpike_proto::attr;
use turnpike_proto::client::{self, Received};
use turnpike_proto::fast::{finish_with_fingerprint, write_attr, write_header};

use crate::probe::Timing;

/// The default waiting times, in seconds; those above the search limit are left out and the
/// limit itself is added as the last step.
pub const DEFAULT_STEPS: [u64; 8] = [1, 2, 4, 8, 16, 32, 60, 120];

/// The steps for a search limited to `max`: the default steps below `max`, then `max`.
pub fn steps_up_to(max: Duration) -> Vec<Duration> {
    let max = max.max(Duration::from_secs(1));
    let mut steps: Vec<Duration> = DEFAULT_STEPS
        .iter()
        .map(|s| Duration::from_secs(*s))
        .filter(|s| *s < max)
        .collect();
    steps.push(max);
    steps
}

/// The outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifetimeResult {
    /// Whether there is a NAT at all (without one there is no binding to expire).
    pub nat: Option<bool>,
    /// The longest wait after which the binding was still alive.
    pub at_least: Option<Duration>,
    /// The shortest wait after which it had expired (`None`: alive at every step).
    pub at_most: Option<Duration>,
    /// Explanations of anything inconclusive.
    pub notes: Vec<String>,
}

/// One datagram to send: from socket `socket` (0 = probe, i + 1 = held i) to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifetimeTransmit {
    /// Socket index.
    pub socket: usize,
    /// Destination.
    pub to: SocketAddr,
    /// The request.
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pending,
    Alive,
    Expired,
    Unknown,
}

#[derive(Debug, Clone)]
struct Request {
    tid: [u8; 12],
    payload: Vec<u8>,
    sent: u32,
    first_sent: Option<Instant>,
    next_send: Instant,
    answered: bool,
}

impl Request {
    fn new(tid: [u8; 12], payload: Vec<u8>, at: Instant) -> Self {
        Request {
            tid,
            payload,
            sent: 0,
            first_sent: None,
            next_send: at,
            answered: false,
        }
    }
}

#[derive(Debug, Clone)]
struct Held {
    local: SocketAddr,
    step: Duration,
    bind: Request,
    mapped: Option<SocketAddr>,
    /// Test (RESPONSE-PORT) and control requests, from the probe socket, once the wait is over.
    test: Option<(Request, Request)>,
    verdict: Verdict,
}

/// The search. See the module documentation.
#[derive(Debug)]
pub struct LifetimeSearch {
    server: SocketAddr,
    timing: Timing,
    held: Vec<Held>,
    out: VecDeque<LifetimeTransmit>,
    rng: u64,
    result: Option<LifetimeResult>,
    notes: Vec<String>,
    start: Instant,
    limit: Duration,
}

impl LifetimeSearch {
    /// A search against `server`: held socket `i` (local address `held[i]`) waits `steps[i]`.
    /// `timing.deadline` is ignored; the search ends at the largest step plus the silence
    /// window.
    pub fn new(
        server: SocketAddr,
        held: &[SocketAddr],
        steps: &[Duration],
        timing: Timing,
        now: Instant,
        seed: u64,
    ) -> Self {
        let mut s = LifetimeSearch {
            server,
            timing,
            held: Vec::new(),
            out: VecDeque::new(),
            rng: seed | 1,
            result: None,
            notes: Vec::new(),
            start: now,
            limit: Duration::ZERO,
        };
        for (&local, &step) in held.iter().zip(steps) {
            let tid = s.next_tid();
            let bind = Request::new(tid, client::binding_request(&tid, None), now);
            s.held.push(Held {
                local,
                step,
                bind,
                mapped: None,
                test: None,
                verdict: Verdict::Pending,
            });
        }
        // Generous: binding may take a few retransmissions, the test a silence window.
        s.limit = steps.iter().copied().max().unwrap_or_default()
            + timing.silence.max(timing.interval * timing.min_tries) * 3;
        s.handle_timeout(now);
        s
    }

    fn next_tid(&mut self) -> [u8; 12] {
        crate::probe::next_tid(&mut self.rng)
    }

    fn silent(&self, r: &Request, now: Instant) -> bool {
        !r.answered
            && r.sent >= self.timing.min_tries
            && r.first_sent
                .is_some_and(|f| now.duration_since(f) >= self.timing.silence)
    }

    /// Feeds a datagram received on socket `socket`.
    pub fn handle_datagram(&mut self, now: Instant, socket: usize, _from: SocketAddr, data: &[u8]) {
        let Some(Received::Response {
            transaction_id,
            response,
        }) = client::parse(data)
        else {
            return;
        };
        for (i, h) in self.held.iter_mut().enumerate() {
            if socket == i + 1 && h.bind.tid == transaction_id && !h.bind.answered {
                // The wait starts now: the mapping was last refreshed by this exchange.
                h.bind.answered = true;
                h.mapped = response.mapped;
            }
            if let Some((test, control)) = &mut h.test {
                if socket == i + 1 && test.tid == transaction_id {
                    test.answered = true;
                }
                if socket == 0 && test.tid == transaction_id && h.verdict == Verdict::Pending {
                    // The answer came back to the socket that asked: the server ignored
                    // RESPONSE-PORT (or refused it with an error). Silence at the held socket
                    // would prove nothing.
                    h.verdict = Verdict::Unknown;
                    let what = match response.error_code {
                        Some(code) => format!("refused RESPONSE-PORT with error {code}"),
                        None => "ignored RESPONSE-PORT".to_owned(),
                    };
                    self.notes.push(format!(
                        "the server {what}, so the binding lifetime cannot be measured with it"
                    ));
                }
                if socket == 0 && control.tid == transaction_id {
                    control.answered = true;
                }
            }
        }
        // Schedule the tests of newly bound sockets (needs fresh ids, so outside the loop).
        for i in 0..self.held.len() {
            if self.held[i].bind.answered
                && self.held[i].test.is_none()
                && self.held[i].verdict == Verdict::Pending
            {
                let Some(m) = self.held[i].mapped else {
                    self.held[i].verdict = Verdict::Unknown;
                    continue;
                };
                let at = now + self.held[i].step;
                let tid_t = self.next_tid();
                let tid_c = self.next_tid();
                let test = Request::new(tid_t, response_port_request(&tid_t, m.port()), at);
                let control = Request::new(tid_c, client::binding_request(&tid_c, None), at);
                self.held[i].test = Some((test, control));
            }
        }
        self.evaluate(now);
    }

    /// Advances time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.result.is_some() {
            return;
        }
        self.evaluate(now);
        if self.result.is_some() {
            return;
        }
        let (server, interval) = (self.server, self.timing.interval);
        for (i, h) in self.held.iter_mut().enumerate() {
            if h.verdict != Verdict::Pending {
                continue;
            }
            let mut due: Vec<(usize, &mut Request)> = Vec::new();
            if !h.bind.answered {
                due.push((i + 1, &mut h.bind));
            }
            if let Some((test, control)) = &mut h.test {
                if !test.answered {
                    due.push((0, test));
                }
                if !control.answered {
                    due.push((0, control));
                }
            }
            for (socket, r) in due {
                if r.next_send <= now {
                    self.out.push_back(LifetimeTransmit {
                        socket,
                        to: server,
                        payload: r.payload.clone(),
                    });
                    r.sent += 1;
                    r.first_sent.get_or_insert(now);
                    r.next_send = now + interval;
                }
            }
        }
    }

    /// The next datagram to send.
    #[must_use]
    pub fn poll_transmit(&mut self) -> Option<LifetimeTransmit> {
        self.out.pop_front()
    }

    /// When to call [`LifetimeSearch::handle_timeout`] next; `None` once finished.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.result.is_some() {
            return None;
        }
        let mut next = self.start + self.limit;
        for h in self.held.iter().filter(|h| h.verdict == Verdict::Pending) {
            if !h.bind.answered {
                next = next.min(h.bind.next_send);
            }
            if let Some((t, c)) = &h.test {
                if !t.answered {
                    next = next.min(t.next_send);
                }
                if !c.answered {
                    next = next.min(c.next_send);
                }
            }
        }
        Some(next)
    }

    /// The result, once reached.
    #[must_use]
    pub fn poll_result(&self) -> Option<LifetimeResult> {
        self.result.clone()
    }

    fn note(&mut self, s: &str) {
        if !self.notes.iter().any(|n| n == s) {
            self.notes.push(s.to_owned());
        }
    }

    fn evaluate(&mut self, now: Instant) {
        if self.result.is_some() {
            return;
        }
        // No NAT: the mapped address is the local one, nothing can expire.
        if self
            .held
            .iter()
            .any(|h| h.mapped.is_some_and(|m| m == h.local))
        {
            self.result = Some(LifetimeResult {
                nat: Some(false),
                at_least: None,
                at_most: None,
                notes: vec!["no NAT: there is no binding to expire".to_owned()],
            });
            return;
        }
        for i in 0..self.held.len() {
            let h = &self.held[i];
            if h.verdict != Verdict::Pending {
                continue;
            }
            let verdict = if !h.bind.answered {
                if self.silent(&h.bind, now) {
                    Verdict::Unknown
                } else {
                    Verdict::Pending
                }
            } else if let Some((test, control)) = &h.test {
                if test.answered {
                    Verdict::Alive
                } else if self.silent(test, now) {
                    if control.answered {
                        Verdict::Expired
                    } else if self.silent(control, now) {
                        Verdict::Unknown
                    } else {
                        Verdict::Pending
                    }
                } else {
                    Verdict::Pending
                }
            } else {
                Verdict::Pending
            };
            self.held[i].verdict = verdict;
        }
        let alive = self
            .held
            .iter()
            .filter(|h| h.verdict == Verdict::Alive)
            .map(|h| h.step)
            .max();
        let expired = self
            .held
            .iter()
            .filter(|h| h.verdict == Verdict::Expired)
            .map(|h| h.step)
            .min();
        // Done when every step is decided, or when an expired step makes the longer ones moot
        // and every shorter one is decided.
        let undecided = self
            .held
            .iter()
            .any(|h| h.verdict == Verdict::Pending && expired.is_none_or(|l| h.step < l));
        let past_limit = now.duration_since(self.start) >= self.limit;
        if !undecided || past_limit {
            if self.held.iter().any(|h| h.verdict == Verdict::Unknown) {
                self.note(
                    "some lifetime probes got no answer at all (loss?); the bounds use the others",
                );
            }
            if past_limit && undecided {
                self.note("the search hit its time limit before every step was decided");
            }
            let (at_least, at_most) = match (alive, expired) {
                // Contradictory evidence (alive after a longer wait than one that expired):
                // the NAT does not behave like a timer; report no bounds.
                (Some(a), Some(e)) if a >= e => {
                    self.note("a mapping outlived a shorter-lived one: the NAT's timeouts are not consistent");
                    (None, None)
                }
                other => other,
            };
            let mut notes = self.notes.clone();
            notes.dedup();
            self.result = Some(LifetimeResult {
                nat: Some(true),
                at_least,
                at_most,
                notes,
            });
        }
    }
}

/// A Binding request with RESPONSE-PORT (4-byte form) and FINGERPRINT.
fn response_port_request(tid: &[u8; 12], port: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(36);
    write_header(
        &mut out,
        turnpike_proto::method::BINDING,
        turnpike_proto::Class::Request,
        tid,
    );
    let [a, b] = port.to_be_bytes();
    write_attr(&mut out, attr::RESPONSE_PORT, &[a, b, 0, 0]);
    finish_with_fingerprint(&mut out, 0);
    out
}
