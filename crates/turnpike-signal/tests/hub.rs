//! The hub core on virtual time: presence, relay, resume, every limit and error, JWT.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use turnpike_signal::creds::IceConfig;
use turnpike_signal::{ConnId, ConnectError, Hub, HubConfig, Now, Output, jwt};

struct T {
    hub: Hub,
    start: Instant,
    now: Instant,
    unix: u64,
}

const IP: &str = "192.0.2.1";

/// Texts sent (as JSON, per connection) and connections closed (with their close code).
type Drained = (Vec<(ConnId, Value)>, Vec<(ConnId, u16)>);

impl T {
    fn new(config: HubConfig) -> T {
        let now = Instant::now();
        T {
            hub: Hub::new(config, 42),
            start: now,
            now,
            unix: 1_000_000,
        }
    }
    fn now(&self) -> Now {
        Now {
            mono: self.now,
            unix: self.unix,
        }
    }
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.unix += d.as_secs();
        let n = self.now();
        self.hub.handle_timeout(n);
    }
    fn connect(&mut self, id: u64) -> ConnId {
        let n = self.now();
        self.hub
            .handle_connect(n, ConnId(id), IP.parse().unwrap())
            .expect("connect");
        ConnId(id)
    }
    fn send(&mut self, c: ConnId, v: Value) {
        let n = self.now();
        self.hub.handle_message(n, c, &v.to_string());
    }
    fn send_raw(&mut self, c: ConnId, s: &str) {
        let n = self.now();
        self.hub.handle_message(n, c, s);
    }
    /// Drains outputs: (sends per connection as JSON, closes).
    fn drain(&mut self) -> Drained {
        let mut sends = Vec::new();
        let mut closes = Vec::new();
        while let Some(o) = self.hub.poll_output() {
            match o {
                Output::Send { conn, text } => {
                    sends.push((conn, serde_json::from_str(&text).expect("hub sends JSON")))
                }
                Output::Close { conn, code, .. } => closes.push((conn, code)),
            }
        }
        (sends, closes)
    }
    fn msgs(&mut self, c: ConnId) -> Vec<Value> {
        self.drain()
            .0
            .into_iter()
            .filter(|(k, _)| *k == c)
            .map(|(_, v)| v)
            .collect()
    }
    fn join(&mut self, c: ConnId, room: &str, peer: &str) -> Value {
        self.send(c, json!({"type": "join", "room": room, "peer_id": peer}));
        let all = self.drain().0;
        all.into_iter()
            .find(|(k, v)| *k == c && v["type"] == "welcome")
            .map(|(_, v)| v)
            .expect("welcome")
    }
}

/// alice (connection 1) and bob (connection 2) in room `r`, outputs drained; returns alice's
/// welcome.
fn alice_and_bob(config: HubConfig) -> (T, ConnId, ConnId, Value) {
    let mut t = T::new(config);
    let a = t.connect(1);
    let b = t.connect(2);
    let wa = t.join(a, "r", "alice");
    t.join(b, "r", "bob");
    t.drain();
    (t, a, b, wa)
}

fn cfg() -> HubConfig {
    HubConfig {
        ice: IceConfig {
            stun_urls: vec!["stun:turn.example:3478".into()],
            turn_urls: vec!["turn:turn.example:3478?transport=udp".into()],
            secret: Some(b"secret".to_vec()),
            ttl_secs: 300,
            default_host: String::new(),
        },
        ..HubConfig::default()
    }
}

#[test]
fn join_presence_and_welcome() {
    let mut t = T::new(cfg());
    let a = t.connect(1);
    let w = t.join(a, "room1", "alice");
    assert_eq!(w["seq"], 1);
    assert_eq!(w["peer_id"], "alice");
    assert_eq!(w["room"], "room1");
    assert_eq!(w["peers"], json!([]));
    assert!(
        w["session"].as_str().unwrap().len() >= 32,
        "unguessable session id"
    );
    assert_eq!(w["ice_servers"][0]["urls"][0], "stun:turn.example:3478");
    assert_eq!(
        w["ice_servers"][1]["username"],
        format!("{}:alice", 1_000_000 + 300)
    );
    let b = t.connect(2);
    t.send(b, json!({"type": "join", "room": "room1"}));
    let out = t.drain().0;
    let wb = &out.iter().find(|(c, _)| *c == b).unwrap().1;
    assert_eq!(wb["peers"], json!(["alice"]));
    let bid = wb["peer_id"].as_str().unwrap().to_owned();
    assert!(bid.starts_with("p-"), "assigned id {bid}");
    let pa = &out.iter().find(|(c, _)| *c == a).unwrap().1;
    assert_eq!(
        *pa,
        json!({"type": "peer-joined", "peer_id": bid, "seq": 2})
    );
    assert_eq!(t.hub.gauges(), (2, 1, 2));
}

#[test]
fn relay_sets_from_and_seq() {
    let (mut t, a, b, _) = alice_and_bob(cfg());
    t.send(
        a,
        json!({"type": "offer", "to": "bob", "sdp": "v=0", "from": "mallory"}),
    );
    let m = t.msgs(b);
    assert_eq!(
        m,
        vec![json!({"type": "offer", "from": "alice", "sdp": "v=0", "seq": 2})]
    );
    let cand = json!({"candidate": "candidate:1 1 udp 1 192.0.2.9 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "u"});
    t.send(
        a,
        json!({"type": "candidate", "to": "bob", "candidate": cand}),
    );
    t.send(
        a,
        json!({"type": "candidate", "to": "bob", "candidate": null}),
    );
    t.send(b, json!({"type": "answer", "to": "alice", "sdp": "v=0 a"}));
    t.send(b, json!({"type": "bye", "to": "alice"}));
    let out = t.drain().0;
    let to_b: Vec<&Value> = out
        .iter()
        .filter(|(c, _)| *c == b)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(to_b[0]["candidate"], cand);
    assert_eq!(to_b[0]["seq"], 3);
    assert!(to_b[1]["candidate"].is_null() && to_b[1]["seq"] == 4);
    let to_a: Vec<&Value> = out
        .iter()
        .filter(|(c, _)| *c == a)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(to_a[0]["type"], "answer");
    assert_eq!(to_a[1], &json!({"type": "bye", "from": "bob", "seq": 4}));
}

#[test]
fn errors_have_codes_and_seq_only_after_join() {
    let mut t = T::new(cfg());
    let a = t.connect(1);
    t.send_raw(a, "{not json");
    t.send(a, json!({"type": "dance"}));
    t.send(a, json!({"type": "offer", "to": "x"}));
    t.send(a, json!({"type": "offer", "to": "x", "sdp": "s"}));
    t.send(a, json!({"type": "ping"}));
    t.send(a, json!({"type": "join", "room": "bad room!"}));
    let m = t.msgs(a);
    let codes: Vec<&str> = m
        .iter()
        .map(|v| v["code"].as_str().unwrap_or(v["type"].as_str().unwrap()))
        .collect();
    assert_eq!(
        codes,
        [
            "bad-request",
            "unknown-type",
            "bad-request",
            "not-joined",
            "pong",
            "bad-request"
        ]
    );
    assert!(
        m.iter().all(|v| v.get("seq").is_none()),
        "no seq before a join: {m:?}"
    );
    t.join(a, "r", "alice");
    t.send(a, json!({"type": "offer", "to": "nobody", "sdp": "s"}));
    t.send(a, json!({"type": "ping"}));
    t.send(a, json!({"type": "join", "room": "r2"}));
    let m = t.msgs(a);
    assert_eq!(m[0]["code"], "peer-not-found");
    assert_eq!(m[0]["seq"], 2);
    assert_eq!(m[1], json!({"type": "pong", "seq": 3}));
    assert_eq!(
        (m[2]["code"].clone(), m[2]["seq"].clone()),
        (json!("already-joined"), json!(4))
    );
    // An offer to oneself is not a peer in the room either.
    t.send(a, json!({"type": "offer", "to": "alice", "sdp": "s"}));
    assert_eq!(t.msgs(a)[0]["code"], "peer-not-found");
}

#[test]
fn resume_replays_everything_missed() {
    let (mut t, a, b, wa) = alice_and_bob(cfg());
    let session = wa["session"].as_str().unwrap().to_owned();
    // alice has seen seq 1 (welcome) and 2 (peer-joined). Her socket drops.
    let n = t.now();
    t.hub.handle_disconnect(n, a);
    t.send(b, json!({"type": "offer", "to": "alice", "sdp": "o1"}));
    t.send(
        b,
        json!({"type": "candidate", "to": "alice", "candidate": null}),
    );
    let (sends, _) = t.drain();
    assert!(
        sends.is_empty(),
        "nothing is sent to a dropped socket, and bob sees no peer-left: {sends:?}"
    );
    t.advance(Duration::from_secs(20));
    let a2 = t.connect(3);
    t.send(
        a2,
        json!({"type": "resume", "session": session, "last_seq": 2}),
    );
    let m = t.msgs(a2);
    assert_eq!(m[0]["type"], "resumed");
    assert_eq!(m[0]["peer_id"], "alice");
    assert_eq!(m[0]["peers"], json!(["bob"]));
    assert_eq!(m[0]["replay_complete"], true);
    assert_eq!(
        m[0]["ice_servers"][1]["username"],
        format!("{}:alice", 1_000_020 + 300),
        "credentials renewed"
    );
    assert_eq!(
        m[1],
        json!({"type": "offer", "from": "bob", "sdp": "o1", "seq": 3})
    );
    assert_eq!(m[2]["seq"], 4);
    assert_eq!(m.len(), 3);
    // Live again: new messages flow to the new socket.
    t.send(b, json!({"type": "bye", "to": "alice"}));
    assert_eq!(t.msgs(a2)[0]["seq"], 6);
    // A stale or unknown session.
    let c = t.connect(4);
    t.send(
        c,
        json!({"type": "resume", "session": "nope", "last_seq": 0}),
    );
    assert_eq!(t.msgs(c)[0]["code"], "session-not-found");
    assert_eq!(t.hub.stats().resumes, 1);
}

#[test]
fn resume_window_expiry_tells_the_others() {
    let (mut t, a, b, wa) = alice_and_bob(cfg());
    let n = t.now();
    t.hub.handle_disconnect(n, a);
    assert_eq!(
        t.hub.poll_timeout(),
        Some(t.now + Duration::from_secs(30)),
        "the resume window is the next timer"
    );
    t.advance(Duration::from_secs(29));
    assert!(t.msgs(b).is_empty());
    t.advance(Duration::from_secs(1));
    assert_eq!(
        t.msgs(b),
        vec![json!({"type": "peer-left", "peer_id": "alice", "seq": 2})]
    );
    let a2 = t.connect(3);
    t.send(
        a2,
        json!({"type": "resume", "session": wa["session"], "last_seq": 2}),
    );
    assert_eq!(t.msgs(a2)[0]["code"], "session-not-found");
}

#[test]
fn replay_cap_is_reported() {
    let (mut t, a, b, wa) = alice_and_bob(HubConfig {
        replay_cap: 4,
        ..cfg()
    });
    let n = t.now();
    t.hub.handle_disconnect(n, a);
    for i in 0..6 {
        t.send(
            b,
            json!({"type": "offer", "to": "alice", "sdp": format!("o{i}")}),
        );
    }
    t.drain();
    let a2 = t.connect(3);
    t.send(
        a2,
        json!({"type": "resume", "session": wa["session"], "last_seq": 2}),
    );
    let m = t.msgs(a2);
    assert_eq!(m[0]["replay_complete"], false);
    let seqs: Vec<u64> = m[1..].iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, [5, 6, 7, 8], "what fits in the buffer, in order");
    assert_eq!(m[0]["seq"], 9, "resumed takes the next seq");
}

#[test]
fn leave_is_immediate_and_rooms_vanish() {
    let (mut t, a, b, _) = alice_and_bob(cfg());
    t.send(a, json!({"type": "leave"}));
    assert_eq!(
        t.msgs(b),
        vec![json!({"type": "peer-left", "peer_id": "alice", "seq": 2})]
    );
    t.send(b, json!({"type": "leave"}));
    t.drain();
    assert_eq!(
        t.hub.gauges(),
        (2, 0, 0),
        "empty room removed, connections stay open"
    );
    // Re-joining on the same connection works.
    let w = t.join(a, "r", "alice");
    assert_eq!(w["seq"], 1);
}

#[test]
fn limits() {
    let mut t = T::new(HubConfig {
        max_peers_per_room: 2,
        max_rooms: 2,
        max_message_bytes: 200,
        ..cfg()
    });
    let c: Vec<ConnId> = (1..=5).map(|i| t.connect(i)).collect();
    t.join(c[0], "r1", "a");
    t.join(c[1], "r1", "b");
    t.send(c[2], json!({"type": "join", "room": "r1", "peer_id": "c"}));
    assert_eq!(t.msgs(c[2])[0]["code"], "room-full");
    t.join(c[2], "r2", "a");
    t.send(c[3], json!({"type": "join", "room": "r3"}));
    assert_eq!(t.msgs(c[3])[0]["code"], "too-many-rooms");
    t.send(c[3], json!({"type": "join", "room": "r2", "peer_id": "a"}));
    assert_eq!(t.msgs(c[3])[0]["code"], "peer-id-taken");
    t.send_raw(
        c[4],
        &format!("{{\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(300)),
    );
    assert_eq!(t.msgs(c[4])[0]["code"], "message-too-large");
    // Other rooms keep working.
    t.send(c[0], json!({"type": "offer", "to": "b", "sdp": "s"}));
    assert_eq!(t.msgs(c[1])[0]["type"], "offer");
}

#[test]
fn rate_limit_and_strikes() {
    let mut t = T::new(HubConfig {
        messages_per_second: 10,
        message_burst: 5,
        max_strikes: 5,
        ..cfg()
    });
    let a = t.connect(1);
    for _ in 0..5 {
        t.send(a, json!({"type": "ping"}));
    }
    t.send(a, json!({"type": "ping"}));
    let (sends, closes) = t.drain();
    assert_eq!(sends.last().unwrap().1["code"], "rate-limited");
    assert!(closes.is_empty(), "one error does not close");
    t.advance(Duration::from_millis(500));
    t.send(a, json!({"type": "ping"}));
    assert_eq!(t.msgs(a)[0]["type"], "pong", "tokens refill");
    for _ in 0..5 {
        t.send_raw(a, "garbage");
    }
    let (_, closes) = t.drain();
    assert_eq!(
        closes,
        vec![(a, 1008)],
        "a client that keeps misbehaving is closed"
    );
}

#[test]
fn connection_limits_and_keepalive() {
    let mut t = T::new(HubConfig {
        max_connections: 3,
        max_connections_per_ip: 2,
        keepalive_timeout: Duration::from_secs(10),
        ..cfg()
    });
    let n = t.now();
    let ip: IpAddr = IP.parse().unwrap();
    let other: IpAddr = "198.51.100.7".parse().unwrap();
    assert!(t.hub.handle_connect(n, ConnId(1), ip).is_ok());
    assert!(t.hub.handle_connect(n, ConnId(2), ip).is_ok());
    assert_eq!(
        t.hub.handle_connect(n, ConnId(3), ip),
        Err(ConnectError::TooManyFromIp)
    );
    assert!(t.hub.handle_connect(n, ConnId(4), other).is_ok());
    assert_eq!(
        t.hub.handle_connect(n, ConnId(5), other),
        Err(ConnectError::TooManyConnections)
    );
    t.hub.handle_disconnect(n, ConnId(1));
    assert!(
        t.hub.handle_connect(n, ConnId(6), ip).is_ok(),
        "slots are freed"
    );
    t.advance(Duration::from_secs(5));
    t.send(ConnId(2), json!({"type": "ping"}));
    t.advance(Duration::from_secs(5));
    let (_, closes) = t.drain();
    let mut closed: Vec<u64> = closes.iter().map(|(c, _)| c.0).collect();
    closed.sort_unstable();
    assert_eq!(
        closed,
        [4, 6],
        "idle connections closed; the one that pinged stays"
    );
    let _ = t.start;
}

#[test]
fn jwt_join() {
    let secret = b"hub-secret".to_vec();
    let mut t = T::new(HubConfig {
        hub_secret: Some(secret.clone()),
        ..cfg()
    });
    let a = t.connect(1);
    t.send(a, json!({"type": "join", "room": "r"}));
    assert_eq!(t.msgs(a)[0]["code"], "unauthorized");
    let good = jwt::sign(
        &format!(r#"{{"exp":{},"room":"r","peer_id":"alice"}}"#, 1_000_100),
        &secret,
    );
    let expired = jwt::sign(r#"{"exp":999999,"room":"r"}"#, &secret);
    let other_room = jwt::sign(&format!(r#"{{"exp":{},"room":"x"}}"#, 1_000_100), &secret);
    let forged = jwt::sign(&format!(r#"{{"exp":{},"room":"r"}}"#, 1_000_100), b"wrong");
    for (tok, msg) in [
        (&expired, "expired"),
        (&other_room, "room"),
        (&forged, "signature"),
    ] {
        t.send(a, json!({"type": "join", "room": "r", "token": tok}));
        let m = t.msgs(a);
        assert_eq!(m[0]["code"], "unauthorized");
        assert!(m[0]["message"].as_str().unwrap().contains(msg), "{m:?}");
    }
    t.send(
        a,
        json!({"type": "join", "room": "r", "peer_id": "mallory", "token": good}),
    );
    assert!(
        t.msgs(a)[0]["message"]
            .as_str()
            .unwrap()
            .contains("peer id")
    );
    t.send(a, json!({"type": "join", "room": "r", "token": good}));
    let m = t.msgs(a);
    assert_eq!(
        (m[0]["type"].clone(), m[0]["peer_id"].clone()),
        (json!("welcome"), json!("alice")),
        "the token's peer id is used"
    );
}

// ---------------------------------------------------------------------------------------------
// Timers: a driver that jumps virtual time from one wake-up to the next, as the adapter does.

/// What [`drive`] saw: each output with the instant it was produced, and the wake-ups.
struct Driven {
    outputs: Vec<(Instant, Output)>,
    wakes: usize,
}

impl Driven {
    /// Connections closed for idleness, with the time since `start`.
    fn keepalive_closes(&self, start: Instant) -> Vec<(ConnId, Duration)> {
        self.outputs
            .iter()
            .filter_map(|(at, o)| match o {
                Output::Close {
                    conn, code: 1001, ..
                } => Some((*conn, *at - start)),
                _ => None,
            })
            .collect()
    }
}

/// Runs `t` up to `until`: at each instant `poll_timeout` names (if not later than `until`)
/// virtual time jumps there and `handle_timeout` runs; then time moves to `until`. Bounded:
/// fails after 1,000,000 wake-ups.
fn drive(t: &mut T, until: Instant) -> Driven {
    let mut d = Driven {
        outputs: Vec::new(),
        wakes: 0,
    };
    while let Some(wake) = t.hub.poll_timeout() {
        if wake > until {
            break;
        }
        assert!(wake >= t.now, "poll_timeout went back in time");
        assert!(d.wakes < 1_000_000, "the timer loop does not settle");
        d.wakes += 1;
        t.unix += (wake - t.now).as_secs();
        t.now = wake;
        let n = t.now();
        t.hub.handle_timeout(n);
        while let Some(o) = t.hub.poll_output() {
            d.outputs.push((wake, o));
        }
    }
    t.unix += (until - t.now).as_secs();
    t.now = until;
    d
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[test]
fn staggered_keepalives_expire_at_their_instants() {
    const N: u64 = 300;
    let mut t = T::new(HubConfig {
        keepalive_timeout: Duration::from_secs(10),
        max_connections_per_ip: 1000,
        ..cfg()
    });
    let start = t.now;
    for i in 0..N {
        t.connect(i);
    }
    // Connection i was last active at L(i) (0 for every seventh: connect only), with an
    // earlier message at L(i)/2 as well.
    let last = |i: u64| if i % 7 == 0 { 0 } else { (i * 23) % 7000 };
    let mut events: Vec<(u64, u64)> = (0..N)
        .filter(|&i| last(i) > 0)
        .flat_map(|i| [(last(i) / 2, i), (last(i), i)])
        .collect();
    events.sort_unstable();
    let mut closes = Vec::new();
    let mut wakes = 0;
    for (at, i) in events {
        let d = drive(&mut t, start + ms(at));
        closes.extend(d.keepalive_closes(start));
        wakes += d.wakes;
        t.send(ConnId(i), json!({"type": "ping"}));
        t.drain();
    }
    let d = drive(&mut t, start + Duration::from_secs(60));
    closes.extend(d.keepalive_closes(start));
    wakes += d.wakes;
    closes.sort_unstable();
    let want: Vec<(ConnId, Duration)> = (0..N)
        .map(|i| (ConnId(i), ms(last(i)) + Duration::from_secs(10)))
        .collect();
    assert_eq!(
        closes, want,
        "each connection closes exactly once, keepalive after its last message"
    );
    assert!(
        wakes <= 2 * N as usize,
        "at most one early wake-up per connection: {wakes}"
    );
    assert_eq!(t.hub.timer_entries(), 0);
    assert_eq!(t.hub.gauges(), (0, 0, 0));
    assert_eq!(t.hub.poll_timeout(), None);
}

#[test]
fn staggered_resume_windows_expire_at_their_instants() {
    const N: u64 = 40;
    let mut t = T::new(HubConfig {
        keepalive_timeout: Duration::from_secs(3600),
        max_peers_per_room: 64,
        ..cfg()
    });
    let start = t.now;
    let watcher = t.connect(1000);
    t.join(watcher, "r", "watcher");
    let mut sessions = Vec::new();
    for i in 0..N {
        let c = t.connect(i);
        let w = t.join(c, "r", &format!("p{i}"));
        sessions.push(w["session"].as_str().unwrap().to_owned());
    }
    t.drain();
    // Peer i drops at i * 250 ms; peer 5 resumes 10 s later on a new connection.
    let mut left = Vec::new();
    for i in 0..N {
        let d = drive(&mut t, start + ms(i * 250));
        left.extend(d.outputs);
        let n = t.now();
        t.hub.handle_disconnect(n, ConnId(i));
    }
    assert_eq!(t.hub.timer_entries(), 1 + N as usize, "watcher + detached");
    left.extend(drive(&mut t, start + ms(5 * 250 + 10_000)).outputs);
    let again = t.connect(2000);
    t.send(
        again,
        json!({"type": "resume", "session": sessions[5], "last_seq": 0}),
    );
    assert_eq!(t.msgs(again)[0]["type"], "resumed");
    assert_eq!(
        t.hub.timer_entries(),
        1 + N as usize,
        "one session reattached"
    );
    left.extend(drive(&mut t, start + Duration::from_secs(120)).outputs);
    let got: Vec<(String, Duration)> = left
        .into_iter()
        .filter_map(|(at, o)| match o {
            Output::Send { conn, text } if conn == watcher => {
                let v: Value = serde_json::from_str(&text).unwrap();
                (v["type"] == "peer-left")
                    .then(|| (v["peer_id"].as_str().unwrap().to_owned(), at - start))
            }
            _ => None,
        })
        .collect();
    let want: Vec<(String, Duration)> = (0..N)
        .filter(|&i| i != 5)
        .map(|i| (format!("p{i}"), ms(i * 250) + Duration::from_secs(30)))
        .collect();
    assert_eq!(
        got, want,
        "peer-left exactly a resume window after each drop"
    );
    assert_eq!(t.hub.stats().expired_sessions, N - 1);
    assert_eq!(
        t.hub.timer_entries(),
        2,
        "watcher and the resumed connection"
    );
}

#[test]
fn a_connection_that_keeps_sending_never_expires() {
    let mut t = T::new(HubConfig {
        keepalive_timeout: Duration::from_secs(10),
        ..cfg()
    });
    let start = t.now;
    let busy = t.connect(1);
    let idle = t.connect(2);
    let mut closes = Vec::new();
    let mut wakes = 0;
    // One ping every 9.9 s for an hour of virtual time.
    for k in 1..=363u64 {
        let d = drive(&mut t, start + ms(k * 9_900));
        closes.extend(d.keepalive_closes(start));
        wakes += d.wakes;
        t.send(busy, json!({"type": "ping"}));
        assert_eq!(t.msgs(busy)[0]["type"], "pong");
        assert_eq!(t.hub.timer_entries(), if k == 1 { 2 } else { 1 });
    }
    assert_eq!(closes, vec![(idle, Duration::from_secs(10))]);
    assert!(
        wakes <= 364,
        "about one wake-up per keepalive period: {wakes}"
    );
    // Once it stops, it expires one keepalive after its last message.
    let d = drive(&mut t, start + Duration::from_secs(4000));
    assert_eq!(
        d.keepalive_closes(start),
        vec![(busy, ms(363 * 9_900) + Duration::from_secs(10))]
    );
}

#[test]
fn timer_entries_stay_bounded_under_a_message_flood() {
    let (mut t, a, b, _) = alice_and_bob(HubConfig {
        messages_per_second: 10_000,
        message_burst: 10_000,
        keepalive_timeout: Duration::from_secs(5),
        ..cfg()
    });
    let start = t.now;
    assert_eq!(t.hub.timer_entries(), 2);
    // 20,000 candidates from alice, one every 500 µs (10 s, two keepalive periods), and a
    // ping from bob with every 1,000th.
    for k in 1..=20_000u32 {
        let d = drive(&mut t, start + Duration::from_micros(500) * k);
        assert!(d.outputs.is_empty(), "nobody is idle: {:?}", d.outputs);
        let cand = json!({"candidate": format!("candidate:{k}"), "sdpMid": "0"});
        t.send(
            a,
            json!({"type": "candidate", "to": "bob", "candidate": cand}),
        );
        if k % 1000 == 0 {
            t.send(b, json!({"type": "ping"}));
        }
        while t.hub.poll_output().is_some() {}
        assert_eq!(t.hub.timer_entries(), 2, "one entry per connection");
    }
    assert_eq!(t.hub.stats().messages[3], 20_000);
    // Churn: connections that join and drop add one entry per live session, no more.
    for i in 0..1000u64 {
        let c = t.connect(100 + i);
        t.join(c, &format!("room{i}"), "x");
        let n = t.now();
        t.hub.handle_disconnect(n, c);
        assert_eq!(t.hub.timer_entries(), 3 + i as usize);
    }
    let until = t.now + Duration::from_secs(31);
    let d = drive(&mut t, until);
    assert_eq!(d.keepalive_closes(start).len(), 2, "alice and bob go idle");
    assert_eq!(
        t.hub.timer_entries(),
        2,
        "alice's and bob's detached sessions"
    );
    let until = t.now + Duration::from_secs(31);
    drive(&mut t, until);
    assert_eq!(t.hub.timer_entries(), 0);
    assert_eq!(t.hub.gauges(), (0, 0, 0));
}

/// A small deterministic generator (xorshift64*), so the model test needs no RNG crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random connects, pings, joins, leaves, drops and resumes on virtual time, checked against a
/// naive model: every connection closes exactly at its last message plus the keepalive, every
/// detached session ends exactly at its drop plus the resume window, and the timer set holds
/// one entry per connection and per detached session.
#[test]
fn timers_match_a_naive_model() {
    const KEEPALIVE: Duration = Duration::from_secs(10);
    const WINDOW: Duration = Duration::from_secs(7);
    for seed in [1u64, 7, 1234, 99_991] {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut t = T::new(HubConfig {
            keepalive_timeout: KEEPALIVE,
            resume_window: WINDOW,
            max_connections_per_ip: 100_000,
            messages_per_second: 10_000,
            message_burst: 10_000,
            ..cfg()
        });
        // conn -> (last message, session if joined)
        let mut conns: BTreeMap<u64, (Instant, Option<String>)> = BTreeMap::new();
        // detached session -> when it was dropped
        let mut detached: BTreeMap<String, Instant> = BTreeMap::new();
        let mut next_id = 0u64;
        for step in 0..4000 {
            match rng.below(10) {
                0..=2 => {
                    let until = t.now + ms(rng.below(3000));
                    // Step the model through every hub wake-up.
                    let d = drive_checked(&mut t, until, &mut conns, &mut detached);
                    assert!(d <= 10_000);
                }
                3 => {
                    next_id += 1;
                    t.connect(next_id);
                    conns.insert(next_id, (t.now, None));
                }
                4 | 5 => {
                    if let Some(id) = pick(&mut rng, conns.keys().copied()) {
                        t.send(ConnId(id), json!({"type": "ping"}));
                        assert_eq!(t.msgs(ConnId(id))[0]["type"], "pong");
                        conns.get_mut(&id).unwrap().0 = t.now;
                    }
                }
                6 => {
                    let free = conns.iter().filter(|(_, c)| c.1.is_none()).map(|(k, _)| *k);
                    if let Some(id) = pick(&mut rng, free) {
                        let w = t.join(ConnId(id), &format!("r{id}"), "p");
                        let c = conns.get_mut(&id).unwrap();
                        *c = (t.now, Some(w["session"].as_str().unwrap().to_owned()));
                    }
                }
                7 => {
                    if let Some(id) = pick(&mut rng, conns.keys().copied()) {
                        let n = t.now();
                        t.hub.handle_disconnect(n, ConnId(id));
                        if let Some(sid) = conns.remove(&id).unwrap().1 {
                            detached.insert(sid, t.now);
                        }
                    }
                }
                8 => {
                    if let Some(sid) = pick(&mut rng, detached.keys().cloned()) {
                        next_id += 1;
                        let c = t.connect(next_id);
                        t.send(c, json!({"type": "resume", "session": sid, "last_seq": 0}));
                        assert_eq!(t.msgs(c)[0]["type"], "resumed");
                        detached.remove(&sid);
                        conns.insert(next_id, (t.now, Some(sid)));
                    }
                }
                _ => {
                    let joined = conns.iter().filter(|(_, c)| c.1.is_some()).map(|(k, _)| *k);
                    if let Some(id) = pick(&mut rng, joined) {
                        t.send(ConnId(id), json!({"type": "leave"}));
                        t.drain();
                        *conns.get_mut(&id).unwrap() = (t.now, None);
                    }
                }
            }
            let sessions = conns.values().filter(|c| c.1.is_some()).count() + detached.len();
            assert_eq!(
                (t.hub.gauges().0, t.hub.gauges().2),
                (conns.len(), sessions),
                "seed {seed} step {step}"
            );
            assert_eq!(
                t.hub.timer_entries(),
                conns.len() + detached.len(),
                "seed {seed} step {step}"
            );
        }
        let until = t.now + Duration::from_secs(60);
        drive_checked(&mut t, until, &mut conns, &mut detached);
        assert!(conns.is_empty() && detached.is_empty());
        assert_eq!(t.hub.timer_entries(), 0);
        let st = t.hub.stats();
        assert!(
            st.closed_by_hub > 50 && st.expired_sessions > 20 && st.resumes > 50,
            "the run exercises every timer path: {st:?}"
        );
    }

    /// [`drive`], checking each wake-up against the model; returns the wake-ups.
    fn drive_checked(
        t: &mut T,
        until: Instant,
        conns: &mut BTreeMap<u64, (Instant, Option<String>)>,
        detached: &mut BTreeMap<String, Instant>,
    ) -> usize {
        let d = drive(t, until);
        let mut by_wake: BTreeMap<Instant, Vec<u64>> = BTreeMap::new();
        for (at, o) in &d.outputs {
            if let Output::Close { conn, code, .. } = o {
                assert_eq!(*code, 1001);
                by_wake.entry(*at).or_default().push(conn.0);
            }
        }
        // Every model deadline up to `until`, in order, must have been a wake-up at which the
        // hub closed exactly the connections due then.
        loop {
            let next_conn = conns.values().map(|c| c.0 + KEEPALIVE).min();
            let next_sess = detached.values().map(|d| *d + WINDOW).min();
            let Some(at) = next_conn.into_iter().chain(next_sess).min() else {
                break;
            };
            if at > until {
                break;
            }
            let due: Vec<u64> = conns
                .iter()
                .filter(|(_, c)| c.0 + KEEPALIVE == at)
                .map(|(k, _)| *k)
                .collect();
            let mut closed = by_wake.remove(&at).unwrap_or_default();
            closed.sort_unstable();
            assert_eq!(closed, due, "closes at the deadline, not later");
            for id in due {
                if let Some(sid) = conns.remove(&id).unwrap().1 {
                    detached.insert(sid, at);
                }
            }
            detached.retain(|_, d| *d + WINDOW > at);
        }
        assert!(
            by_wake.is_empty(),
            "closes the model did not expect: {by_wake:?}"
        );
        d.wakes
    }

    fn pick<I: Iterator<Item = K>, K>(rng: &mut Rng, it: I) -> Option<K> {
        let v: Vec<K> = it.collect();
        (!v.is_empty()).then(|| {
            let i = rng.below(v.len() as u64) as usize;
            v.into_iter().nth(i).unwrap()
        })
    }
}
