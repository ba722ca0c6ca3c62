//! The sans-IO STUN server core of Turnpike.
//!
//! No sockets, no clocks, no tokio: a driver hands each received message to
//! [`StunServer::handle`] together with the local address it arrived at and the remote address
//! it came from, and gets back an [`Outcome`] saying what to do — send the bytes written into
//! the caller's buffer from a given local address to a given remote address, or nothing — and
//! what happened, for metrics. The core never panics on input and never allocates on the fast
//! path.
//!
//! ```text
//!   driver                                   core
//!   ──────                                   ────
//!   recv(datagram, local, remote) ──────────▶ handle(Incoming { .. }, &mut out)
//!   send(out, from, to)           ◀────────── Outcome { action: Reply { from, to, .. }, .. }
//!   metrics.count(outcome)
//! ```
//!
//! # What it answers
//! * RFC 8489 Binding requests (XOR-MAPPED-ADDRESS; FINGERPRINT when the request had one;
//!   SOFTWARE when configured), and RFC 3489 Binding requests (MAPPED-ADDRESS, plus
//!   SOURCE-ADDRESS and CHANGED-ADDRESS with NAT-behaviour discovery on).
//! * RFC 5780 NAT-behaviour discovery when an [`AddressSet`] (two IPs × two ports) is
//!   configured for the address family: OTHER-ADDRESS, RESPONSE-ORIGIN, CHANGE-REQUEST (the
//!   reply leaves from another local address), RESPONSE-PORT and PADDING.
//! * Errors: 420 with UNKNOWN-ATTRIBUTES for unknown comprehension-required attributes
//!   (including a CHANGE-REQUEST that asks for a change when discovery is off, so a client
//!   never gets an answer from the wrong address), 400 for malformed attributes, unsupported
//!   combinations (PADDING with RESPONSE-PORT, RESPONSE-PORT 0, changes over TCP) and unknown
//!   methods. Error responses are written by the allocation-free writer.
//! * Binding indications are accepted silently; responses and other indications are dropped.
//!
//! # Amplification
//! No reply is larger than `max(2 × request, 100)` bytes: SOFTWARE is left out and PADDING is
//! shortened when a reply would otherwise exceed that bound.

use std::net::{IpAddr, SocketAddr};

pub mod turn;
mod turn_attrs;

use turnpike_proto::fast::{BindingSuccess, ErrorResponse};
use turnpike_proto::{
    Class, MessageView, ParseError, TransactionId, attr, classic, general, method,
};
pub mod auth;
pub mod policy;

/// The transport a message arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// UDP: one message per datagram.
    Udp,
    /// TCP (or TLS): messages back to back on a stream. The reply goes back on the same
    /// connection, so CHANGE-REQUEST and RESPONSE-PORT cannot be honoured.
    Tcp,
}

/// One received STUN message.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Transport it arrived on.
    pub transport: Transport,
    /// The local address it arrived at (the real destination IP, not a wildcard).
    pub local: SocketAddr,
    /// The address it came from.
    pub remote: SocketAddr,
    /// The message bytes (a whole datagram, or one frame from a stream).
    pub data: &'a [u8],
}

/// The four local transport addresses of RFC 5780 NAT-behaviour discovery for one address
/// family: two IPs, each listening on two ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressSet {
    /// The primary IP.
    pub primary_ip: IpAddr,
    /// The alternate IP (same family, different address).
    pub alternate_ip: IpAddr,
    /// The primary port.
    pub primary_port: u16,
    /// The alternate port (different from the primary port).
    pub alternate_port: u16,
}

impl AddressSet {
    /// Whether `local` is one of the four addresses.
    pub fn contains(&self, local: SocketAddr) -> bool {
        (local.ip() == self.primary_ip || local.ip() == self.alternate_ip)
            && (local.port() == self.primary_port || local.port() == self.alternate_port)
    }

    /// The four addresses, primary/primary first.
    pub fn addresses(&self) -> [SocketAddr; 4] {
        [
            SocketAddr::new(self.primary_ip, self.primary_port),
            SocketAddr::new(self.primary_ip, self.alternate_port),
            SocketAddr::new(self.alternate_ip, self.primary_port),
            SocketAddr::new(self.alternate_ip, self.alternate_port),
        ]
    }

    /// `local` with the IP and/or the port switched to the other one of the set.
    fn switch(&self, local: SocketAddr, ip: bool, port: bool) -> SocketAddr {
        let ip = match (ip, local.ip() == self.primary_ip) {
            (false, _) => local.ip(),
            (true, true) => self.alternate_ip,
            (true, false) => self.primary_ip,
        };
        let port = match (port, local.port() == self.primary_port) {
            (false, _) => local.port(),
            (true, true) => self.alternate_port,
            (true, false) => self.primary_port,
        };
        SocketAddr::new(ip, port)
    }
}

/// Configuration of the STUN core.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StunConfig {
    /// SOFTWARE attribute text (fewer than 128 characters); `None` sends none.
    pub software: Option<String>,
    /// RFC 5780 address set for IPv4, if a second IPv4 address is configured.
    pub discovery_v4: Option<AddressSet>,
    /// RFC 5780 address set for IPv6, if a second IPv6 address is configured.
    pub discovery_v6: Option<AddressSet>,
}

/// Why a message got no reply. `as_str` gives the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// Failed STUN validation ([`ParseError`]).
    Parse(ParseError),
    /// A datagram larger than the receive buffer (the driver reports these).
    Oversize,
    /// A success or error response: this server sends no requests.
    UnexpectedResponse,
    /// An indication of a method other than Binding.
    UnsupportedIndication,
    /// Passed the fast checks but the general decoder could not read it.
    Malformed,
    /// The reply would have exceeded the amplification bound even without optional parts.
    Amplification,
}

impl DropReason {
    /// Every reason, for pre-registering metric labels.
    pub const ALL: [DropReason; 11] = [
        DropReason::Parse(ParseError::TooShort),
        DropReason::Parse(ParseError::NotStun),
        DropReason::Parse(ParseError::BadLength),
        DropReason::Parse(ParseError::BadMagicCookie),
        DropReason::Parse(ParseError::Truncated),
        DropReason::Parse(ParseError::BadFingerprint),
        DropReason::Oversize,
        DropReason::UnexpectedResponse,
        DropReason::UnsupportedIndication,
        DropReason::Malformed,
        DropReason::Amplification,
    ];

    /// A stable kebab-case label.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Parse(e) => e.as_str(),
            DropReason::Oversize => "oversize",
            DropReason::UnexpectedResponse => "unexpected-response",
            DropReason::UnsupportedIndication => "unsupported-indication",
            DropReason::Malformed => "malformed",
            DropReason::Amplification => "amplification",
        }
    }
}

/// Which encoder wrote a reply (for tests and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Path {
    /// Zero-copy parser and allocation-free writer.
    Fast,
    /// `stun_codec` decode and encode.
    General,
    /// RFC 3489 writer.
    Classic,
}

/// What the driver must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the bytes appended to `out` from local address `from` to `to`.
    Reply {
        /// Local address to send from (may differ from where the request arrived: RFC 5780).
        from: SocketAddr,
        /// Destination.
        to: SocketAddr,
        /// Error code, if this is an error response.
        error: Option<u16>,
        /// Which encoder wrote it.
        path: Path,
    },
    /// A Binding indication: nothing to send.
    Consumed,
    /// Nothing to send; count the drop.
    Drop(DropReason),
}

/// The result of handling one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Method and class of the message, when it was valid STUN.
    pub message: Option<(u16, Class)>,
    /// What to do.
    pub action: Action,
}

/// The sans-IO STUN server.
#[derive(Debug, Clone)]
pub struct StunServer {
    config: StunConfig,
}

/// The amplification bound for a request of `request_len` bytes.
pub const fn reply_limit(request_len: usize) -> usize {
    let double = request_len.saturating_mul(2);
    if double > 100 { double } else { 100 }
}

/// Trims SOFTWARE, then PADDING, until `resp` fits in `limit` bytes.
fn fit_reply(resp: &mut BindingSuccess<'_>, limit: usize) -> Result<(), Action> {
    if resp.encoded_len() > limit {
        resp.software = None;
    }
    if let Some(p) = resp.padding {
        let excess = resp.encoded_len().saturating_sub(limit);
        let padded = (usize::from(p) + 3) & !3;
        resp.padding = if excess == 0 {
            Some(p)
        } else if excess.next_multiple_of(4) < padded {
            // Shorten PADDING to fit, keeping its length a multiple of 4.
            u16::try_from(padded - excess.next_multiple_of(4)).ok()
        } else {
            // Not even an empty PADDING fits: leave it out.
            None
        };
    }
    if resp.encoded_len() > limit {
        return Err(Action::Drop(DropReason::Amplification));
    }
    Ok(())
}

impl StunServer {
    /// A server with `config`.
    pub fn new(config: StunConfig) -> Self {
        StunServer { config }
    }

    /// The configuration.
    pub fn config(&self) -> &StunConfig {
        &self.config
    }

    fn discovery(&self, local: SocketAddr) -> Option<&AddressSet> {
        let set = match local {
            SocketAddr::V4(_) => self.config.discovery_v4.as_ref(),
            SocketAddr::V6(_) => self.config.discovery_v6.as_ref(),
        }?;
        set.contains(local).then_some(set)
    }

    /// Handles one message; on [`Action::Reply`] the reply has been appended to `out`.
    #[must_use]
    pub fn handle(&mut self, msg: Incoming<'_>, out: &mut Vec<u8>) -> Outcome {
        match MessageView::parse(msg.data) {
            Ok(view) => self.handle_parsed(msg, &view, out),
            Err(e) => Outcome {
                message: None,
                action: Action::Drop(DropReason::Parse(e)),
            },
        }
    }

    /// [`StunServer::handle`] for a message already parsed into `view` (from `msg.data`).
    #[must_use]
    pub fn handle_parsed(
        &mut self,
        msg: Incoming<'_>,
        view: &MessageView<'_>,
        out: &mut Vec<u8>,
    ) -> Outcome {
        let message = Some((view.method, view.class));
        let action = match (view.class, view.method) {
            (Class::Request, method::BINDING) => self.binding(&msg, view, out),
            (Class::Request, _) => match view.transaction_id {
                TransactionId::Modern(tid) => {
                    self.error(&msg, view, &tid, 400, Some("Unsupported method"), &[], out)
                }
                // parse() accepts classic messages only for Binding.
                TransactionId::Classic(_) => Action::Drop(DropReason::Malformed),
            },
            (Class::Indication, method::BINDING) => Action::Consumed,
            (Class::Indication, _) => Action::Drop(DropReason::UnsupportedIndication),
            (Class::Success | Class::Error, _) => Action::Drop(DropReason::UnexpectedResponse),
        };
        Outcome { message, action }
    }

    #[allow(clippy::too_many_arguments)]
    fn error(
        &self,
        msg: &Incoming<'_>,
        view: &MessageView<'_>,
        tid: &[u8; 12],
        code: u16,
        reason: Option<&str>,
        unknown: &[u16],
        out: &mut Vec<u8>,
    ) -> Action {
        let mut resp = ErrorResponse {
            method: view.method,
            transaction_id: tid,
            code,
            reason,
            unknown,
            software: self.config.software.as_deref(),
            fingerprint: view.fingerprint,
        };
        let limit = reply_limit(msg.data.len());
        if resp.encoded_len() > limit {
            resp.software = None;
        }
        if resp.encoded_len() > limit {
            resp.reason = Some("");
        }
        if resp.encoded_len() > limit {
            return Action::Drop(DropReason::Amplification);
        }
        resp.encode(out);
        Action::Reply {
            from: msg.local,
            to: msg.remote,
            error: Some(code),
            path: Path::Fast,
        }
    }

    fn binding(&self, msg: &Incoming<'_>, view: &MessageView<'_>, out: &mut Vec<u8>) -> Action {
        let tid = match view.transaction_id {
            TransactionId::Modern(tid) => tid,
            TransactionId::Classic(tid) => return self.classic_binding(msg, view, &tid, out),
        };
        if !view.unknown().is_empty() {
            return self.error(msg, view, &tid, 420, None, view.unknown(), out);
        }
        let set = self.discovery(msg.local).copied();
        let asks_change = view.change_request.is_some_and(|c| c.ip || c.port);
        if asks_change && set.is_none() {
            // Without a second address this server cannot do what CHANGE-REQUEST asks, so it
            // does not "understand" it (RFC 5780 §6.1): 420, never an answer from the wrong
            // address. A CHANGE-REQUEST with no flag set asks for nothing and is answered
            // normally (RFC 3489 tools send one in their first test).
            return self.error(msg, view, &tid, 420, None, &[attr::CHANGE_REQUEST], out);
        }
        if let Some(t) = view.malformed {
            let reason = match t {
                attr::CHANGE_REQUEST => "Malformed CHANGE-REQUEST",
                attr::RESPONSE_PORT => "Malformed RESPONSE-PORT",
                attr::MESSAGE_INTEGRITY | attr::MESSAGE_INTEGRITY_SHA256 => {
                    "Malformed MESSAGE-INTEGRITY"
                }
                _ => "Malformed attribute",
            };
            return self.error(msg, view, &tid, 400, Some(reason), &[], out);
        }

        // RFC 5780 requests are answered by the stun_codec-based general path. Their
        // parameters come from the view, which (unlike stun_codec) stops at
        // MESSAGE-INTEGRITY as RFC 8489 §14.5 requires and has already validated every
        // attribute Binding reads; the differential tests prove both decoders agree on them.
        let general_path =
            view.change_request.is_some() || view.response_port.is_some() || view.padding.is_some();
        let (change, response_port, padding) = (
            view.change_request,
            view.response_port,
            view.padding.map(usize::from),
        );

        if response_port == Some(0) {
            return self.error(msg, view, &tid, 400, Some("RESPONSE-PORT 0"), &[], out);
        }
        if response_port.is_some() && padding.is_some() {
            // RFC 5780 §7.5/§7.6: PADDING with RESPONSE-PORT is an error.
            return self.error(
                msg,
                view,
                &tid,
                400,
                Some("PADDING with RESPONSE-PORT"),
                &[],
                out,
            );
        }
        let change = change.filter(|c| c.ip || c.port);
        if msg.transport == Transport::Tcp && (change.is_some() || response_port.is_some()) {
            return self.error(
                msg,
                view,
                &tid,
                400,
                Some("CHANGE-REQUEST and RESPONSE-PORT need UDP"),
                &[],
                out,
            );
        }

        let from = match (set, change) {
            (Some(set), Some(c)) => set.switch(msg.local, c.ip, c.port),
            _ => msg.local,
        };
        let to = match response_port {
            Some(port) => SocketAddr::new(msg.remote.ip(), port),
            None => msg.remote,
        };
        let mut resp = BindingSuccess {
            transaction_id: &tid,
            mapped: msg.remote,
            response_origin: set.map(|_| from),
            other_address: set.map(|s| s.switch(msg.local, true, true)),
            software: self.config.software.as_deref(),
            padding: padding.map(|p| u16::try_from(p).unwrap_or(u16::MAX)),
            fingerprint: view.fingerprint,
        };
        // Without SOFTWARE and PADDING a reply is at most 100 bytes (header, three IPv6 address
        // attributes, FINGERPRINT), within the bound for any request: skip the arithmetic.
        if resp.software.is_some() || resp.padding.is_some() {
            if let Err(drop) = fit_reply(&mut resp, reply_limit(msg.data.len())) {
                return drop;
            }
        }
        debug_assert!(resp.encoded_len() <= reply_limit(msg.data.len()));
        if general_path {
            match general::binding_success(&resp).and_then(|m| general::encode(m, out)) {
                Ok(()) => {}
                Err(_) => return Action::Drop(DropReason::Malformed),
            }
        } else {
            resp.encode(out);
        }
        Action::Reply {
            from,
            to,
            error: None,
            path: if general_path {
                Path::General
            } else {
                Path::Fast
            },
        }
    }

    fn classic_binding(
        &self,
        msg: &Incoming<'_>,
        view: &MessageView<'_>,
        tid: &[u8; 16],
        out: &mut Vec<u8>,
    ) -> Action {
        let set = self.discovery(msg.local).copied();
        let reply = |out: &mut Vec<u8>, code: u16, reason: &str, unknown: &[u16]| {
            classic::binding_error(out, tid, code, reason, unknown);
            Action::Reply {
                from: msg.local,
                to: msg.remote,
                error: Some(code),
                path: Path::Classic,
            }
        };
        if !view.unknown().is_empty() {
            return reply(out, 420, "Unknown Attribute", view.unknown());
        }
        if view.change_request.is_some_and(|c| c.ip || c.port) && set.is_none() {
            return reply(out, 420, "Unknown Attribute", &[attr::CHANGE_REQUEST]);
        }
        if view.malformed.is_some() {
            return reply(out, 400, "Bad Request", &[]);
        }
        let change = view.change_request.filter(|c| c.ip || c.port);
        if msg.transport == Transport::Tcp && change.is_some() {
            return reply(out, 400, "Bad Request", &[]);
        }
        let from = match (set, change) {
            (Some(set), Some(c)) => set.switch(msg.local, c.ip, c.port),
            _ => msg.local,
        };
        classic::binding_success(
            out,
            tid,
            msg.remote,
            set.map(|_| from),
            set.map(|s| s.switch(msg.local, true, true)),
        );
        Action::Reply {
            from,
            to: msg.remote,
            error: None,
            path: Path::Classic,
        }
    }
}
