//! Prometheus counters for the STUN server, rendered in the text exposition format.
//!
//! Every label set is fixed and known up front, so counters are plain atomics in arrays: no
//! locks, no maps, no allocation when counting. UDP shards count into a [`LocalCounters`]
//! (plain integers) and [`LocalCounters::flush`] once per pass of their event loop, so the hot
//! path does not bounce cache lines between cores. TURN counters are cumulative per shard and
//! published as snapshots every 100 ms.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use turnpike_proto::Class;
use turnpike_relay_core::{Action, DropReason, Outcome, Transport};

/// Error codes with their own label; anything else counts as `other`.
pub const ERROR_CODES: [u16; 14] = [
    300, 400, 401, 403, 420, 437, 438, 440, 441, 442, 443, 486, 500, 508,
];
const N_CODES: usize = ERROR_CODES.len() + 1;
const N_DROPS: usize = DropReason::ALL.len();
const METHODS: [&str; 2] = ["binding", "other"];
const CLASSES: [Class; 4] = [
    Class::Request,
    Class::Indication,
    Class::Success,
    Class::Error,
];
const TRANSPORTS: [&str; 2] = ["udp", "tcp"];

fn transport_index(t: Transport) -> usize {
    match t {
        Transport::Udp => 0,
        Transport::Tcp => 1,
    }
}

fn code_index(code: u16) -> usize {
    ERROR_CODES
        .iter()
        .position(|&c| c == code)
        .unwrap_or(ERROR_CODES.len())
}

fn drop_index(reason: DropReason) -> usize {
    use turnpike_proto::ParseError as P;
    // The order matches `DropReason::ALL`; `drop_index_matches_all` checks every entry, so a
    // reason added to ALL but not here fails that test.
    match reason {
        DropReason::Parse(P::TooShort) => 0,
        DropReason::Parse(P::NotStun) => 1,
        DropReason::Parse(P::BadLength) => 2,
        DropReason::Parse(P::BadMagicCookie) => 3,
        DropReason::Parse(P::Truncated) => 4,
        DropReason::Parse(P::BadFingerprint) => 5,
        DropReason::Oversize => 6,
        DropReason::UnexpectedResponse => 7,
        DropReason::UnsupportedIndication => 8,
        DropReason::Malformed => 9,
        DropReason::Amplification => 10,
        // ParseError and DropReason are non_exhaustive across crates.
        _ => 9,
    }
}

/// Counters updated by one worker without synchronisation.
#[derive(Debug, Default, Clone)]
pub struct LocalCounters {
    messages: [[[u64; 4]; 2]; 2],
    responses: [[u64; 2]; 2],
    errors: [[u64; N_CODES]; 2],
    drops: [[u64; N_DROPS]; 2],
}

impl LocalCounters {
    /// Counts one handled message.
    pub fn count(&mut self, transport: Transport, outcome: &Outcome) {
        let t = transport_index(transport);
        if let Some((method, class)) = outcome.message {
            let m = usize::from(method != turnpike_proto::method::BINDING);
            self.messages[t][m][class as usize] += 1;
        }
        match outcome.action {
            Action::Reply { error: None, .. } => self.responses[t][0] += 1,
            Action::Reply {
                error: Some(code), ..
            } => {
                self.responses[t][1] += 1;
                self.errors[t][code_index(code)] += 1;
            }
            Action::Consumed => {}
            Action::Drop(reason) => self.drop(transport, reason),
        }
    }

    /// Counts a drop decided by the driver (e.g. an oversize datagram).
    pub fn drop(&mut self, transport: Transport, reason: DropReason) {
        self.drops[transport_index(transport)][drop_index(reason)] += 1;
    }

    /// Adds everything to `metrics` and resets to zero.
    pub fn flush(&mut self, metrics: &Metrics) {
        fn add<const N: usize>(dst: &[AtomicU64; N], src: &mut [u64; N]) {
            for (d, s) in dst.iter().zip(src.iter_mut()) {
                if *s != 0 {
                    d.fetch_add(*s, Relaxed);
                    *s = 0;
                }
            }
        }
        for t in 0..2 {
            for m in 0..2 {
                add(&metrics.messages[t][m], &mut self.messages[t][m]);
            }
            add(&metrics.responses[t], &mut self.responses[t]);
            add(&metrics.errors[t], &mut self.errors[t]);
            add(&metrics.drops[t], &mut self.drops[t]);
        }
    }
}

/// The process-wide counters.
#[derive(Debug, Default)]
pub struct Metrics {
    messages: [[[AtomicU64; 4]; 2]; 2],
    responses: [[AtomicU64; 2]; 2],
    errors: [[AtomicU64; N_CODES]; 2],
    drops: [[AtomicU64; N_DROPS]; 2],
    /// TCP connections accepted.
    pub tcp_accepted: AtomicU64,
    /// TCP connections refused because the connection cap was reached.
    pub tcp_rejected: AtomicU64,
    /// TCP connections closed for idleness.
    pub tcp_idle_closed: AtomicU64,
    /// TCP connections open now (TLS included).
    pub tcp_active: AtomicU64,
    /// TLS handshakes that failed or timed out.
    pub tls_handshake_failures: AtomicU64,
    /// UDP datagrams the kernel refused to send.
    pub udp_send_errors: AtomicU64,
    /// HTTP connections refused (429) because their address held its share of the `--http`
    /// listener.
    pub http_refused_per_ip: AtomicU64,
    /// The signaling hub's numbers, published by the hub task.
    pub hub: HubMetrics,
    /// TURN numbers of each UDP shard, published by the shard.
    pub shards: std::sync::Mutex<Vec<crate::udp::ShardSnapshot>>,
    /// Stream messages that could not be queued to a shard (queue full).
    pub stream_command_drops: AtomicU64,
}

/// The signaling hub's numbers: gauges and cumulative counters copied from the hub core.
#[derive(Debug, Default)]
pub struct HubMetrics {
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    /// Rooms.
    pub rooms: AtomicU64,
    /// Joined peers (connected or within their resume window).
    pub peers: AtomicU64,
    /// Client messages by type (`turnpike_signal::protocol::CLIENT_TYPES` order).
    pub messages: [AtomicU64; 8],
    /// Errors sent by code (`ErrorCode::ALL` order).
    pub errors: [AtomicU64; 13],
    /// Successful resumes.
    pub resumes: AtomicU64,
    /// Sessions whose resume window expired.
    pub expired: AtomicU64,
    /// Connections the hub closed (idle or misbehaving).
    pub closed: AtomicU64,
    /// Connections closed because they did not read their messages (counted by the adapter).
    pub slow_closed: AtomicU64,
    /// WebSocket requests from a trusted proxy (`--trusted-proxy`) whose `X-Forwarded-For`
    /// held an entry that is not an IP address (counted by the adapter).
    pub forwarded_for_invalid: AtomicU64,
    /// Cluster mode (`--redis`): the store metrics below are rendered.
    pub cluster: std::sync::atomic::AtomicBool,
    /// 1 while the node reaches Redis.
    pub store_up: AtomicU64,
    /// Redis operations that failed or timed out.
    pub store_errors: AtomicU64,
    /// Times the link to Redis came back after a loss.
    pub store_reconnects: AtomicU64,
    /// Nodes this node found dead (heartbeat expired) and whose sessions it detached.
    pub dead_nodes: AtomicU64,
    /// Connections closed because messages to them went missing (a gap in `seq` that did not
    /// fill within the replay cap), so their clients resume from the replay buffer.
    pub resyncs: AtomicU64,
}

impl HubMetrics {
    /// Copies the hub's current numbers.
    pub fn publish(&self, hub: &turnpike_signal::Hub) {
        let (conns, rooms, peers) = hub.gauges();
        self.connections.store(conns as u64, Relaxed);
        self.rooms.store(rooms as u64, Relaxed);
        self.peers.store(peers as u64, Relaxed);
        let st = hub.stats();
        for (a, v) in self.messages.iter().zip(st.messages) {
            a.store(v, Relaxed);
        }
        for (a, v) in self.errors.iter().zip(st.errors) {
            a.store(v, Relaxed);
        }
        self.resumes.store(st.resumes, Relaxed);
        self.expired.store(st.expired_sessions, Relaxed);
        self.closed.store(st.closed_by_hub, Relaxed);
    }

    /// Adds counts from one cluster connection (in cluster mode no single core holds them).
    pub fn add(&self, st: &turnpike_signal::hub::Stats) {
        // Called after every message: touch only the counters that moved (shared cache lines
        // between all connection tasks).
        let counters = self.messages.iter().zip(st.messages);
        let counters = counters.chain(self.errors.iter().zip(st.errors));
        let counters = counters.chain([
            (&self.resumes, st.resumes),
            (&self.closed, st.closed_by_hub),
        ]);
        for (a, v) in counters {
            if v > 0 {
                a.fetch_add(v, Relaxed);
            }
        }
    }

    fn render(&self, s: &mut String) {
        use turnpike_signal::protocol::{CLIENT_TYPES, ErrorCode};
        for (name, help, v) in [
            (
                "turnpike_hub_connections",
                "Open signaling WebSocket connections.",
                &self.connections,
            ),
            ("turnpike_hub_rooms", "Signaling rooms.", &self.rooms),
            (
                "turnpike_hub_peers",
                "Joined peers, connected or within their resume window (cluster mode: sessions attached to this node).",
                &self.peers,
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP turnpike_hub_messages_total Signaling messages received, by type.\n# TYPE turnpike_hub_messages_total counter"
        );
        for (t, v) in CLIENT_TYPES.iter().zip(&self.messages) {
            let _ = writeln!(
                s,
                "turnpike_hub_messages_total{{type=\"{t}\"}} {}",
                v.load(Relaxed)
            );
        }
        let _ = writeln!(
            s,
            "# HELP turnpike_hub_errors_total Signaling errors sent, by code.\n# TYPE turnpike_hub_errors_total counter"
        );
        for (c, v) in ErrorCode::ALL.iter().zip(&self.errors) {
            let _ = writeln!(
                s,
                "turnpike_hub_errors_total{{code=\"{}\"}} {}",
                c.as_str(),
                v.load(Relaxed)
            );
        }
        for (name, help, v) in [
            (
                "turnpike_hub_resumes_total",
                "Sessions resumed after a dropped socket.",
                &self.resumes,
            ),
            (
                "turnpike_hub_sessions_expired_total",
                "Sessions whose resume window expired.",
                &self.expired,
            ),
            (
                "turnpike_hub_connections_closed_total",
                "Connections the hub closed (idle or misbehaving).",
                &self.closed,
            ),
            (
                "turnpike_hub_slow_clients_closed_total",
                "Connections closed because they did not read their messages.",
                &self.slow_closed,
            ),
            (
                "turnpike_hub_forwarded_for_invalid_total",
                "WebSocket requests from a trusted proxy whose X-Forwarded-For held an entry that is not an IP address.",
                &self.forwarded_for_invalid,
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
        if !self.cluster.load(Relaxed) {
            return;
        }
        let _ = writeln!(
            s,
            "# HELP turnpike_hub_store_up 1 while this hub node reaches Redis.\n# TYPE turnpike_hub_store_up gauge\nturnpike_hub_store_up {}",
            self.store_up.load(Relaxed)
        );
        for (name, help, v) in [
            (
                "turnpike_hub_store_errors_total",
                "Redis operations that failed or timed out.",
                &self.store_errors,
            ),
            (
                "turnpike_hub_store_reconnects_total",
                "Times the link to Redis came back after a loss.",
                &self.store_reconnects,
            ),
            (
                "turnpike_hub_dead_nodes_total",
                "Hub nodes this node found silent, whose sessions it moved to the resume window.",
                &self.dead_nodes,
            ),
            (
                "turnpike_hub_resyncs_total",
                "Connections closed (1011) so the client resumes, because messages to them went missing.",
                &self.resyncs,
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                v.load(Relaxed)
            );
        }
    }
}

fn render_turn(s: &mut String, shards: &[crate::udp::ShardSnapshot], command_drops: u64) {
    use turnpike_relay_core::policy::DenyReason;
    use turnpike_relay_core::turn::{AllocFailure, AuthFailure, PeerDrop, TurnDrop, TurnStats};
    let mut t = TurnStats::default();
    let (mut allocations, mut send_errors, mut queue_drops, mut oversize) =
        (0usize, 0u64, 0u64, 0u64);
    for sh in shards {
        let st = &sh.stats;
        allocations += sh.allocations;
        send_errors += sh.peer_send_errors;
        queue_drops += sh.stream_queue_drops;
        oversize += sh.peer_oversize;
        t.allocations_created += st.allocations_created;
        t.allocations_expired += st.allocations_expired;
        t.allocations_deleted += st.allocations_deleted;
        t.to_peer_packets += st.to_peer_packets;
        t.to_peer_bytes += st.to_peer_bytes;
        t.to_client_packets += st.to_client_packets;
        t.to_client_bytes += st.to_client_bytes;
        fn add<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
        add(&mut t.allocation_failures, &st.allocation_failures);
        add(&mut t.auth_failures, &st.auth_failures);
        add(&mut t.permission_denials, &st.permission_denials);
        add(&mut t.client_drops, &st.client_drops);
        add(&mut t.peer_drops, &st.peer_drops);
    }
    let gauge = |s: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    };
    let counter = |s: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    };
    gauge(
        s,
        "turnpike_turn_allocations",
        "Live TURN allocations.",
        allocations as u64,
    );
    counter(
        s,
        "turnpike_turn_allocations_created_total",
        "TURN allocations created.",
        t.allocations_created,
    );
    counter(
        s,
        "turnpike_turn_allocations_expired_total",
        "TURN allocations that reached their lifetime.",
        t.allocations_expired,
    );
    counter(
        s,
        "turnpike_turn_allocations_deleted_total",
        "TURN allocations deleted by the client (Refresh 0) or a closed connection.",
        t.allocations_deleted,
    );
    let labelled = |s: &mut String,
                    name: &str,
                    help: &str,
                    label: &str,
                    rows: &mut dyn Iterator<Item = (&'static str, u64)>| {
        let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
        for (l, v) in rows {
            let _ = writeln!(s, "{name}{{{label}=\"{l}\"}} {v}");
        }
    };
    labelled(
        s,
        "turnpike_turn_allocation_failures_total",
        "Failed TURN Allocate requests after authentication, by reason.",
        "reason",
        &mut AllocFailure::ALL
            .iter()
            .map(|r| r.as_str())
            .zip(t.allocation_failures),
    );
    labelled(
        s,
        "turnpike_turn_auth_failures_total",
        "TURN requests that failed authentication, by reason (challenge = the normal first 401).",
        "reason",
        &mut AuthFailure::ALL
            .iter()
            .map(|r| r.as_str())
            .zip(t.auth_failures),
    );
    labelled(
        s,
        "turnpike_turn_permission_denials_total",
        "Peers refused by the peer policy, by range.",
        "reason",
        &mut DenyReason::ALL
            .iter()
            .map(|r| r.as_str())
            .zip(t.permission_denials),
    );
    labelled(
        s,
        "turnpike_turn_client_drops_total",
        "Client Send indications and ChannelData dropped, by reason.",
        "reason",
        &mut TurnDrop::ALL.iter().map(|r| r.as_str()).zip(t.client_drops),
    );
    labelled(
        s,
        "turnpike_turn_peer_drops_total",
        "Peer datagrams dropped, by reason.",
        "reason",
        &mut PeerDrop::ALL
            .iter()
            .map(|r| r.as_str())
            .chain(["oversize"])
            .zip(t.peer_drops.into_iter().chain([oversize])),
    );
    let _ = writeln!(
        s,
        "# HELP turnpike_turn_relayed_packets_total Datagrams relayed, by direction.\n# TYPE turnpike_turn_relayed_packets_total counter"
    );
    let _ = writeln!(
        s,
        "turnpike_turn_relayed_packets_total{{direction=\"to-peer\"}} {}",
        t.to_peer_packets
    );
    let _ = writeln!(
        s,
        "turnpike_turn_relayed_packets_total{{direction=\"to-client\"}} {}",
        t.to_client_packets
    );
    let _ = writeln!(
        s,
        "# HELP turnpike_turn_relayed_bytes_total Payload bytes relayed, by direction.\n# TYPE turnpike_turn_relayed_bytes_total counter"
    );
    let _ = writeln!(
        s,
        "turnpike_turn_relayed_bytes_total{{direction=\"to-peer\"}} {}",
        t.to_peer_bytes
    );
    let _ = writeln!(
        s,
        "turnpike_turn_relayed_bytes_total{{direction=\"to-client\"}} {}",
        t.to_client_bytes
    );
    counter(
        s,
        "turnpike_turn_peer_send_errors_total",
        "Datagrams a relay socket could not send to a peer.",
        send_errors,
    );
    counter(
        s,
        "turnpike_turn_stream_queue_drops_total",
        "Messages for TCP/TLS clients dropped because the client did not keep up.",
        queue_drops + command_drops,
    );
}

impl Metrics {
    /// Total messages counted with this method class (all transports), for tests.
    pub fn messages(&self, binding: bool, class: Class) -> u64 {
        let m = usize::from(!binding);
        (0..2)
            .map(|t| self.messages[t][m][class as usize].load(Relaxed))
            .sum()
    }

    /// Total drops for `reason` (all transports), for tests.
    pub fn drops(&self, reason: DropReason) -> u64 {
        (0..2)
            .map(|t| self.drops[t][drop_index(reason)].load(Relaxed))
            .sum()
    }

    /// Renders the Prometheus text format.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(8192);
        let _ = writeln!(
            s,
            "# HELP turnpike_build_info Build information.\n# TYPE turnpike_build_info gauge"
        );
        let _ = writeln!(
            s,
            "turnpike_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );

        let _ = writeln!(
            s,
            "# HELP turnpike_stun_messages_total STUN messages received, by transport, method and class."
        );
        let _ = writeln!(s, "# TYPE turnpike_stun_messages_total counter");
        for (t, tn) in TRANSPORTS.iter().enumerate() {
            for (m, mn) in METHODS.iter().enumerate() {
                for (c, cn) in CLASSES.iter().enumerate() {
                    let v = self.messages[t][m][c].load(Relaxed);
                    let _ = writeln!(
                        s,
                        "turnpike_stun_messages_total{{transport=\"{tn}\",method=\"{mn}\",class=\"{}\"}} {v}",
                        cn.as_str()
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            "# HELP turnpike_stun_responses_total STUN responses sent, by transport and class."
        );
        let _ = writeln!(s, "# TYPE turnpike_stun_responses_total counter");
        for (t, tn) in TRANSPORTS.iter().enumerate() {
            for (k, kn) in ["success", "error"].iter().enumerate() {
                let v = self.responses[t][k].load(Relaxed);
                let _ = writeln!(
                    s,
                    "turnpike_stun_responses_total{{transport=\"{tn}\",class=\"{kn}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP turnpike_stun_errors_total STUN error responses sent, by transport and error code."
        );
        let _ = writeln!(s, "# TYPE turnpike_stun_errors_total counter");
        for (t, tn) in TRANSPORTS.iter().enumerate() {
            for i in 0..N_CODES {
                let code = ERROR_CODES
                    .get(i)
                    .map_or_else(|| "other".to_owned(), u16::to_string);
                let v = self.errors[t][i].load(Relaxed);
                let _ = writeln!(
                    s,
                    "turnpike_stun_errors_total{{transport=\"{tn}\",code=\"{code}\"}} {v}"
                );
            }
        }
        let _ = writeln!(
            s,
            "# HELP turnpike_stun_drops_total Messages dropped without a reply, by transport and reason."
        );
        let _ = writeln!(s, "# TYPE turnpike_stun_drops_total counter");
        for (t, tn) in TRANSPORTS.iter().enumerate() {
            for (i, r) in DropReason::ALL.iter().enumerate() {
                let v = self.drops[t][i].load(Relaxed);
                let _ = writeln!(
                    s,
                    "turnpike_stun_drops_total{{transport=\"{tn}\",reason=\"{}\"}} {v}",
                    r.as_str()
                );
            }
        }
        for (name, help, kind, v) in [
            (
                "turnpike_tcp_connections_accepted_total",
                "TCP connections accepted.",
                "counter",
                &self.tcp_accepted,
            ),
            (
                "turnpike_tcp_connections_rejected_total",
                "TCP connections refused at the connection cap.",
                "counter",
                &self.tcp_rejected,
            ),
            (
                "turnpike_http_connections_refused_total",
                "HTTP connections refused (429) because their address held its share of the --http listener.",
                "counter",
                &self.http_refused_per_ip,
            ),
            (
                "turnpike_tcp_connections_idle_closed_total",
                "TCP connections closed after the idle timeout.",
                "counter",
                &self.tcp_idle_closed,
            ),
            (
                "turnpike_tcp_connections_active",
                "TCP connections open now.",
                "gauge",
                &self.tcp_active,
            ),
            (
                "turnpike_tls_handshake_failures_total",
                "TLS handshakes that failed or timed out.",
                "counter",
                &self.tls_handshake_failures,
            ),
            (
                "turnpike_udp_send_errors_total",
                "UDP datagrams the kernel refused to send.",
                "counter",
                &self.udp_send_errors,
            ),
        ] {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                v.load(Relaxed)
            );
        }
        {
            let shards = self.shards.lock().unwrap_or_else(|e| e.into_inner());
            render_turn(&mut s, &shards, self.stream_command_drops.load(Relaxed));
        }
        self.hub.render(&mut s);
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_index_matches_all() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(drop_index(*r), i, "{}", r.as_str());
        }
    }

    #[test]
    fn counts_and_renders() {
        let m = Metrics::default();
        let mut l = LocalCounters::default();
        let reply = |error| Outcome {
            message: Some((1, Class::Request)),
            action: Action::Reply {
                from: "127.0.0.1:1".parse().unwrap(),
                to: "127.0.0.1:2".parse().unwrap(),
                error,
                path: turnpike_relay_core::Path::Fast,
            },
        };
        l.count(Transport::Udp, &reply(None));
        l.count(Transport::Udp, &reply(Some(420)));
        l.count(Transport::Tcp, &reply(Some(599)));
        l.drop(Transport::Udp, DropReason::Oversize);
        l.flush(&m);
        l.flush(&m);
        assert_eq!(m.messages(true, Class::Request), 3);
        assert_eq!(m.drops(DropReason::Oversize), 1);
        let text = m.render();
        assert!(text.contains(
            "turnpike_stun_messages_total{transport=\"udp\",method=\"binding\",class=\"request\"} 2"
        ));
        assert!(text.contains("turnpike_stun_errors_total{transport=\"udp\",code=\"420\"} 1"));
        assert!(text.contains("turnpike_stun_errors_total{transport=\"tcp\",code=\"other\"} 1"));
        assert!(
            text.contains("turnpike_stun_drops_total{transport=\"udp\",reason=\"oversize\"} 1")
        );
        assert!(
            text.contains("turnpike_stun_responses_total{transport=\"udp\",class=\"success\"} 1")
        );
    }
}
