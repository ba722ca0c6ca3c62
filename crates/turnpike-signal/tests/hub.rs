//! The hub core on virtual time: presence, relay, resume, every limit and error, JWT.

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
