//! The signaling hub over real WebSockets (tokio-tungstenite) against the running binary.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::server::{Server, free_port, http_get, run_to_exit, try_http_get};

pub(crate) type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn connect(srv: &Server) -> Ws {
    let url = format!("ws://{}/v1/ws", srv.http);
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("WebSocket connect");
    ws
}

/// Opens `/v1/ws` with an `X-Forwarded-For: forwarded_for` header (none if empty), as a
/// reverse proxy would; `Err` holds the HTTP status of a refused upgrade.
pub(crate) async fn connect_forwarded(srv: &Server, forwarded_for: &str) -> Result<Ws, u16> {
    let mut req = format!("ws://{}/v1/ws", srv.http)
        .into_client_request()
        .unwrap();
    if !forwarded_for.is_empty() {
        req.headers_mut()
            .insert("X-Forwarded-For", forwarded_for.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("WebSocket connect: {e}"),
    }
}

/// With `--trusted-proxy 127.0.0.0/8 --hub-max-connections-per-ip 1` on `srv`: the per-IP
/// limit counts the addresses in X-Forwarded-For, not the proxy's (loopback) address.
pub(crate) async fn per_ip_limit_counts_forwarded_clients(srv: &Server) {
    let a = connect_forwarded(srv, "203.0.113.1")
        .await
        .expect("first client");
    let _b = connect_forwarded(srv, "203.0.113.2")
        .await
        .expect("another client through the same proxy");
    assert_eq!(
        connect_forwarded(srv, "203.0.113.1").await.err(),
        Some(429),
        "a second connection of the first client is over its limit"
    );
    // Entries left of the client are the client's own claims, and trusted proxies on the
    // right are skipped: this is 203.0.113.1 again.
    assert_eq!(
        connect_forwarded(srv, "198.51.100.9, 203.0.113.1, 127.0.0.9")
            .await
            .err(),
        Some(429)
    );
    let _c = connect_forwarded(srv, "203.0.113.1, 203.0.113.3, 127.0.0.9")
        .await
        .expect("203.0.113.3 is a new client");
    // Without the header, the proxy itself is the client, and it too has one slot.
    let _d = connect_forwarded(srv, "").await.expect("the proxy itself");
    assert_eq!(connect_forwarded(srv, "").await.err(), Some(429));
    // An entry that is not an address stops the walk at the last good one: here none, so
    // the proxy's own (occupied) slot; it is counted.
    assert_eq!(srv.metric("turnpike_hub_forwarded_for_invalid_total"), 0);
    assert_eq!(
        connect_forwarded(srv, "203.0.113.4, unknown").await.err(),
        Some(429)
    );
    assert_eq!(srv.metric("turnpike_hub_forwarded_for_invalid_total"), 1);
    // IPv6 clients and the forms proxies write with ports.
    let _e = connect_forwarded(srv, "[2001:db8::7]:4711")
        .await
        .expect("an IPv6 client");
    assert_eq!(connect_forwarded(srv, "2001:db8::7").await.err(), Some(429));
    // When the first client goes, its slot is free again.
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match connect_forwarded(srv, "203.0.113.1").await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(status, 429);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the slot of a closed connection was not given back"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pub(crate) async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

pub(crate) async fn recv(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(3), ws.next())
            .await
            .expect("a message within 3 s")
            .expect("stream open")
            .expect("frame");
        if let Message::Text(t) = m {
            return serde_json::from_str(&t).expect("JSON");
        }
    }
}

fn start() -> Server {
    let p = free_port("127.0.0.1");
    Server::start(&["--listen", &format!("127.0.0.1:{p}")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_peers_signal_through_the_hub() {
    let srv = start();
    let mut a = connect(&srv).await;
    let mut b = connect(&srv).await;
    send(
        &mut a,
        json!({"type": "join", "room": "demo", "peer_id": "alice"}),
    )
    .await;
    let wa = recv(&mut a).await;
    assert_eq!(
        (wa["type"].as_str(), wa["seq"].as_u64()),
        (Some("welcome"), Some(1))
    );
    let stun = wa["ice_servers"][0]["urls"][0].as_str().unwrap().to_owned();
    assert!(
        stun.starts_with("stun:127.0.0.1:"),
        "STUN URL uses the host the client used: {stun}"
    );
    send(
        &mut b,
        json!({"type": "join", "room": "demo", "peer_id": "bob"}),
    )
    .await;
    assert_eq!(recv(&mut b).await["peers"], json!(["alice"]));
    assert_eq!(
        recv(&mut a).await,
        json!({"type": "peer-joined", "peer_id": "bob", "seq": 2})
    );
    send(
        &mut b,
        json!({"type": "offer", "to": "alice", "sdp": "v=0 offer"}),
    )
    .await;
    assert_eq!(
        recv(&mut a).await,
        json!({"type": "offer", "from": "bob", "sdp": "v=0 offer", "seq": 3})
    );
    send(
        &mut a,
        json!({"type": "answer", "to": "bob", "sdp": "v=0 answer"}),
    )
    .await;
    assert_eq!(recv(&mut b).await["type"], "answer");
    let cand = json!({"candidate": "candidate:1 1 udp 2113937151 192.0.2.7 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd"});
    send(
        &mut a,
        json!({"type": "candidate", "to": "bob", "candidate": cand}),
    )
    .await;
    assert_eq!(recv(&mut b).await["candidate"], cand);
    send(&mut a, json!({"type": "offer", "to": "carol", "sdp": "x"})).await;
    assert_eq!(recv(&mut a).await["code"], "peer-not-found");
    send(&mut a, json!({"type": "leave"})).await;
    assert_eq!(recv(&mut b).await["type"], "peer-left");
    let m = http_get(srv.metrics, "/metrics");
    for line in [
        "turnpike_hub_connections 2",
        "turnpike_hub_rooms 1",
        "turnpike_hub_peers 1",
        "turnpike_hub_messages_total{type=\"join\"} 2",
        "turnpike_hub_messages_total{type=\"offer\"} 2",
        "turnpike_hub_errors_total{code=\"peer-not-found\"} 1",
    ] {
        assert!(m.contains(line), "metrics lack {line:?}:\n{m}");
    }
    srv.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_socket_resumes_without_losing_messages() {
    let srv = start();
    let mut a = connect(&srv).await;
    let mut b = connect(&srv).await;
    send(
        &mut a,
        json!({"type": "join", "room": "r", "peer_id": "alice"}),
    )
    .await;
    let session = recv(&mut a).await["session"].as_str().unwrap().to_owned();
    send(
        &mut b,
        json!({"type": "join", "room": "r", "peer_id": "bob"}),
    )
    .await;
    recv(&mut b).await;
    assert_eq!(recv(&mut a).await["seq"], 2);
    drop(a); // no leave: an unclean drop
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..3 {
        send(&mut b, json!({"type": "candidate", "to": "alice", "candidate": {"candidate": format!("c{i}"), "sdpMid": "0"}})).await;
    }
    // bob sees no error (alice is still in the room) and no peer-left.
    send(&mut b, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut b).await["type"], "pong");
    let mut a2 = connect(&srv).await;
    send(
        &mut a2,
        json!({"type": "resume", "session": session, "last_seq": 2}),
    )
    .await;
    let r = recv(&mut a2).await;
    assert_eq!(
        (r["type"].as_str(), r["replay_complete"].as_bool()),
        (Some("resumed"), Some(true))
    );
    for i in 0..3u64 {
        let m = recv(&mut a2).await;
        assert_eq!(
            (m["seq"].as_u64(), m["candidate"]["candidate"].as_str()),
            (Some(3 + i), Some(format!("c{i}").as_str()))
        );
    }
    srv.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_and_floods_are_refused_while_other_rooms_work() {
    let srv = start();
    let mut a = connect(&srv).await;
    let mut b = connect(&srv).await;
    let mut c = connect(&srv).await;
    send(
        &mut a,
        json!({"type": "join", "room": "noisy", "peer_id": "a"}),
    )
    .await;
    recv(&mut a).await;
    send(
        &mut b,
        json!({"type": "join", "room": "calm", "peer_id": "b"}),
    )
    .await;
    recv(&mut b).await;
    send(
        &mut c,
        json!({"type": "join", "room": "calm", "peer_id": "c"}),
    )
    .await;
    recv(&mut c).await;
    recv(&mut b).await; // peer-joined
    let big = "x".repeat(70 * 1024);
    send(&mut a, json!({"type": "offer", "to": "a", "sdp": big})).await;
    assert_eq!(recv(&mut a).await["code"], "message-too-large");
    for _ in 0..150 {
        send(&mut a, json!({"type": "ping"})).await;
    }
    let mut limited = false;
    for _ in 0..150 {
        let m = recv(&mut a).await;
        if m["code"] == "rate-limited" {
            limited = true;
            break;
        }
    }
    assert!(limited, "a flood is rate-limited");
    send(&mut c, json!({"type": "offer", "to": "b", "sdp": "fine"})).await;
    assert_eq!(recv(&mut b).await["sdp"], "fine");
    send(&mut b, json!({"type": "nonsense"})).await;
    assert_eq!(recv(&mut b).await["code"], "unknown-type");
    b.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(recv(&mut b).await["code"], "bad-request");
    srv.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ice_servers_endpoint_and_origin_policy() {
    let p = free_port("127.0.0.1");
    let srv = Server::start(&[
        "--listen",
        &format!("127.0.0.1:{p}"),
        "--allowed-origin",
        "https://good.example",
    ]);
    let r = http_get(srv.http, "/v1/ice-servers");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let body: Value = serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["ttl"], 300);
    assert_eq!(
        body["iceServers"][0]["urls"][0],
        format!("stun:test:{p}"),
        "host from the Host header"
    );
    let url = format!("ws://{}/v1/ws", srv.http);
    let mut req = url.clone().into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "https://evil.example".parse().unwrap());
    assert!(
        tokio_tungstenite::connect_async(req).await.is_err(),
        "foreign origin refused"
    );
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", "https://good.example".parse().unwrap());
    assert!(
        tokio_tungstenite::connect_async(req).await.is_ok(),
        "allowed origin accepted"
    );
    srv.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_limits_are_configurable() {
    let p = free_port("127.0.0.1");
    let srv = Server::start(&[
        "--listen",
        &format!("127.0.0.1:{p}"),
        "--hub-max-peers-per-room",
        "2",
    ]);
    let mut a = connect(&srv).await;
    let mut b = connect(&srv).await;
    let mut c = connect(&srv).await;
    for (ws, id) in [(&mut a, "a"), (&mut b, "b")] {
        send(ws, json!({"type": "join", "room": "small", "peer_id": id})).await;
        assert_eq!(recv(ws).await["type"], "welcome");
    }
    send(
        &mut c,
        json!({"type": "join", "room": "small", "peer_id": "c"}),
    )
    .await;
    let m = recv(&mut c).await;
    assert_eq!(m["code"], "room-full", "{m}");
    assert!(m["message"].as_str().unwrap().contains('2'));
    srv.stop();
}

/// Allocates on the TURN server at `url` (`turn:HOST:PORT?transport=udp`) with the given
/// credentials, over UDP from 127.0.0.1; returns the final response's error code (None = success).
fn turn_allocate(url: &str, port_of_url: u16, username: &str, password: &str) -> Option<u16> {
    use turnpike_proto::turn_client::{
        Allocate, Challenge, Credentials, LongTermAuth, Request, parse_response,
    };
    assert!(
        url.starts_with("turn:") && url.ends_with("?transport=udp"),
        "{url}"
    );
    let server: std::net::SocketAddr = format!("127.0.0.1:{port_of_url}").parse().unwrap();
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut auth = LongTermAuth::new(Credentials::new(username, password));
    let mut buf = [0u8; 2048];
    for attempt in 0u8..3 {
        let mut out = Vec::new();
        let signed = Request::Allocate(Allocate::default())
            .encode(&mut out, &[attempt + 1; 12], Some(&auth), true)
            .unwrap();
        sock.send_to(&out, server).unwrap();
        let n = sock.recv(&mut buf).expect("a TURN reply");
        let r = parse_response(&buf[..n]).expect("a TURN response");
        if r.is_success() {
            auth.verify(&r).expect("MESSAGE-INTEGRITY of the success");
            return None;
        }
        match auth.handle_challenge(&r, signed) {
            Challenge::Retry => continue,
            _ => return r.error_code(),
        }
    }
    panic!("no answer after three challenges")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_and_ice_servers_carry_working_turn_credentials() {
    let p = free_port("127.0.0.1");
    let srv = Server::start(&["--listen", &format!("127.0.0.1:{p}")]);
    let mut a = connect(&srv).await;
    send(&mut a, json!({"type": "join", "room": "turn-creds"})).await;
    let w = recv(&mut a).await;
    assert_eq!(w["type"], "welcome");
    let turn = &w["ice_servers"][1];
    let urls: Vec<&str> = turn["urls"]
        .as_array()
        .expect("a TURN entry")
        .iter()
        .map(|u| u.as_str().unwrap())
        .collect();
    assert_eq!(
        urls,
        [
            format!("turn:127.0.0.1:{p}?transport=udp"),
            format!("turn:127.0.0.1:{p}?transport=tcp")
        ]
    );
    let (user, pass) = (
        turn["username"].as_str().unwrap().to_owned(),
        turn["credential"].as_str().unwrap().to_owned(),
    );
    let expiry: u64 = user
        .split(':')
        .next()
        .unwrap()
        .parse()
        .expect("EXPIRY:USER");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!((now + 290..=now + 310).contains(&expiry), "ttl 300");
    let (u, pw, url) = (user.clone(), pass.clone(), urls[0].to_owned());
    let result = tokio::task::spawn_blocking(move || turn_allocate(&url, p, &u, &pw))
        .await
        .unwrap();
    assert_eq!(
        result, None,
        "the hub's credentials allocate on this server"
    );
    // A tampered password is refused with 401.
    let url = urls[0].to_owned();
    let bad = tokio::task::spawn_blocking(move || turn_allocate(&url, p, &user, "x"))
        .await
        .unwrap();
    assert_eq!(bad, Some(401));
    // /v1/ice-servers hands out credentials that work too.
    let r = http_get(srv.http, "/v1/ice-servers");
    let body: Value = serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    let t = &body["iceServers"][1];
    let (u, pw) = (
        t["username"].as_str().unwrap().to_owned(),
        t["credential"].as_str().unwrap().to_owned(),
    );
    let url = format!("turn:127.0.0.1:{p}?transport=udp");
    let result = tokio::task::spawn_blocking(move || turn_allocate(&url, p, &u, &pw))
        .await
        .unwrap();
    assert_eq!(result, None);
    srv.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stun_urls_replace_the_hubs_own() {
    let p = free_port("127.0.0.1");
    let listen = format!("127.0.0.1:{p}");
    let args = [
        "--listen",
        &listen,
        "--stun-url",
        "stun:{host}:19302",
        "--stun-url",
        "stun:stun2.example.org:3478",
    ];
    let srv = Server::start(&args);
    let stun_entry = |servers: &Value| -> Vec<String> {
        serde_json::from_value(servers[0]["urls"].clone()).expect("a list of URLs")
    };
    // {host} is the host the request named (http_get sends `Host: test`).
    let r = http_get(srv.http, "/v1/ice-servers");
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    let body: Value = serde_json::from_str(r.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(
        stun_entry(&body["iceServers"]),
        ["stun:test:19302", "stun:stun2.example.org:3478"]
    );
    assert!(
        body["iceServers"][0].get("username").is_none(),
        "STUN needs no credentials"
    );
    assert_eq!(
        body["iceServers"][1]["urls"][0],
        format!("turn:test:{p}?transport=udp"),
        "the TURN URLs are still this server's own"
    );
    // welcome and resumed carry the same list, filled with the WebSocket's Host.
    let mut a = connect(&srv).await;
    send(&mut a, json!({"type": "join", "room": "stun-urls"})).await;
    let w = recv(&mut a).await;
    assert_eq!(w["type"], "welcome", "{w}");
    let want = ["stun:127.0.0.1:19302", "stun:stun2.example.org:3478"];
    assert_eq!(stun_entry(&w["ice_servers"]), want);
    drop(a);
    let mut a2 = connect(&srv).await;
    send(
        &mut a2,
        json!({"type": "resume", "session": w["session"], "last_seq": 1}),
    )
    .await;
    let r = recv(&mut a2).await;
    assert_eq!(r["type"], "resumed", "{r}");
    assert_eq!(stun_entry(&r["ice_servers"]), want);
    srv.stop();

    // --print-config shows them; a URL of another scheme is refused at start.
    let mut print = vec!["serve"];
    print.extend_from_slice(&args);
    print.push("--print-config");
    let (ok, out) = run_to_exit(&print, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("stun_url = [\"stun:{host}:19302\", \"stun:stun2.example.org:3478\"]"),
        "{out}"
    );
    let (ok, out) = run_to_exit(
        &[
            "serve",
            "--stun-url",
            "turn:x.example:3478",
            "--print-config",
        ],
        &[],
    );
    assert!(
        !ok && out
            .contains("--stun-url turn:x.example:3478: a STUN URL starts with stun: or stuns:"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_per_ip_limit_counts_forwarded_clients() {
    let p = free_port("127.0.0.1");
    let srv = Server::start(&[
        "--listen",
        &format!("127.0.0.1:{p}"),
        "--trusted-proxy",
        "127.0.0.0/8",
        "--hub-max-connections-per-ip",
        "1",
    ]);
    per_ip_limit_counts_forwarded_clients(&srv).await;
    srv.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_trusted_proxies_x_forwarded_for_is_ignored() {
    let p = free_port("127.0.0.1");
    let srv = Server::start(&[
        "--listen",
        &format!("127.0.0.1:{p}"),
        "--hub-max-connections-per-ip",
        "1",
    ]);
    let _a = connect_forwarded(&srv, "203.0.113.1")
        .await
        .expect("first connection");
    for claim in ["203.0.113.2", "unknown", ""] {
        assert_eq!(
            connect_forwarded(&srv, claim).await.err(),
            Some(429),
            "X-Forwarded-For: {claim} from an untrusted peer changes nothing"
        );
    }
    assert_eq!(srv.metric("turnpike_hub_forwarded_for_invalid_total"), 0);
    srv.stop();

    // A trusted network must be a network.
    let (ok, out) = run_to_exit(
        &["serve", "--trusted-proxy", "10.0.0.0/33", "--print-config"],
        &[],
    );
    assert!(
        !ok && out.contains("--trusted-proxy 10.0.0.0/33: the prefix length"),
        "{out}"
    );
    let (ok, out) = run_to_exit(
        &["serve", "--print-config"],
        &[("TURNPIKE_TRUSTED_PROXY", "10.0.0.0/8,192.0.2.7")],
    );
    assert!(
        ok && out.contains("trusted_proxy = [\"10.0.0.0/8\", \"192.0.2.7\"]"),
        "{out}"
    );
}

/// A client that trickles its request headers is cut off at the header deadline (10 s from
/// when the server starts reading the request), although every byte it sends would reset the
/// 120 s idle timer; a WebSocket opened at the same time outlives that deadline, and the
/// listener keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_are_cut_off_but_websockets_live_on() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = start();
    let mut ws = connect(&srv).await;
    let mut slow = tokio::net::TcpStream::connect(srv.http).await.unwrap();
    let started = tokio::time::Instant::now();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let closed_after = loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "a trickling client still holds its connection after 20 s"
        );
        // One header byte a second: never idle, never done.
        match tokio::time::timeout(Duration::from_secs(1), slow.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break started.elapsed(),
            Ok(Ok(n)) => {
                let answer = String::from_utf8_lossy(&buf[..n]).into_owned();
                // hyper may answer 408 before closing.
                assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            }
            Err(_) => {
                if slow.write_all(b"X").await.is_err() {
                    break started.elapsed();
                }
            }
        }
    };
    assert!(
        closed_after >= Duration::from_secs(9),
        "closed after {closed_after:?}, before the 10 s header deadline"
    );
    // The WebSocket opened before the trickle is older than the deadline and still works.
    send(&mut ws, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut ws).await["type"], "pong");
    // One request per connection: a load balancer never reuses a connection the server is
    // about to close (hyper's header timer would run on idle keep-alive connections too).
    let mut fresh = tokio::net::TcpStream::connect(srv.http).await.unwrap();
    fresh
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), fresh.read_to_string(&mut answer))
        .await
        .expect("the server closes the connection after its one answer")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200")
            && answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // A request head over 16 KiB is refused, not buffered.
    let mut big = tokio::net::TcpStream::connect(srv.http).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let _ = big.write_all(head.as_bytes()).await;
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), big.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
}

/// One address cannot take every slot of the HTTP listener: with
/// `--hub-max-connections-per-ip 1` it may hold 1 + 32 connections; the next one gets 429 and
/// is closed (and counted), another address is still served, and a connection that ends
/// gives its slot back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_fill_the_http_listener() {
    use tokio::io::AsyncReadExt;
    let p = free_port("127.0.0.1");
    let srv = Server::start(&[
        "--listen",
        &format!("127.0.0.1:{p}"),
        "--hub-max-connections-per-ip",
        "1",
    ]);
    let mut held = Vec::new();
    for _ in 0..33 {
        held.push(tokio::net::TcpStream::connect(srv.http).await.unwrap());
    }
    let mut over = tokio::net::TcpStream::connect(srv.http).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), over.read_to_string(&mut answer))
        .await
        .expect("the connection over the share is answered and closed at once")
        .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 429")
            && answer.ends_with("too many connections from this address\n"),
        "{answer}"
    );
    assert_eq!(srv.metric("turnpike_http_connections_refused_total"), 1);
    // Another address has its own share.
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = other.connect(srv.http).await.unwrap();
    {
        use tokio::io::AsyncWriteExt;
        other
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
    }
    let mut ok = String::new();
    tokio::time::timeout(Duration::from_secs(5), other.read_to_string(&mut ok))
        .await
        .unwrap()
        .unwrap();
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    // A connection that ends gives its slot back.
    drop(held.pop());
    let http = srv.http;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let served = tokio::task::spawn_blocking(move || {
        loop {
            match try_http_get(http, "/healthz") {
                Some(r) if r.starts_with("HTTP/1.1 200") => return true,
                _ if std::time::Instant::now() > deadline => return false,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    })
    .await
    .unwrap();
    assert!(served, "a freed slot is reusable");
    drop(held);
}
