//! The hub as a cluster: two `turnpike serve --redis` nodes and a real `redis-server`, all on
//! loopback. Peers on different nodes signal as on one node; sessions resume on the other
//! node with nothing lost; a node killed with SIGKILL and a Redis restart are survived.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::hub::{Ws, connect, per_ip_limit_counts_forwarded_clients, recv, send};
use crate::redis::RedisServer;
use crate::server::{Server, free_port, http_get};

/// A node of the cluster on `redis`, with short timers so failures show quickly.
fn node(redis: &RedisServer, extra: &[&str]) -> Server {
    let p = free_port("127.0.0.1");
    let listen = format!("127.0.0.1:{p}");
    let url = redis.url();
    let mut args = vec![
        "--listen",
        &listen,
        "--redis",
        &url,
        "--redis-node-timeout",
        "3",
        "--hub-resume-window",
        "4",
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

async fn join(ws: &mut Ws, room: &str, peer: &str) -> Value {
    send(ws, json!({"type": "join", "room": room, "peer_id": peer})).await;
    let w = recv(ws).await;
    assert_eq!(w["type"], "welcome", "{w}");
    w
}

/// Two nodes on `redis`; Alice joins room `r` on node A, then Bob on node B, and Alice has
/// seen Bob join (seq 2).
struct Pair {
    a: Server,
    b: Server,
    alice: Ws,
    bob: Ws,
    /// Alice's session id.
    session: String,
}

async fn pair(redis: &RedisServer) -> Pair {
    let a = node(redis, &[]);
    let b = node(redis, &[]);
    let mut alice = connect(&a).await;
    let mut bob = connect(&b).await;
    let session = join(&mut alice, "r", "alice").await["session"]
        .as_str()
        .expect("session")
        .to_owned();
    join(&mut bob, "r", "bob").await;
    assert_eq!(recv(&mut alice).await["seq"], 2);
    Pair {
        a,
        b,
        alice,
        bob,
        session,
    }
}

/// Receives until a message of `ty` arrives, within `within`; returns it and the time taken.
async fn wait_for(ws: &mut Ws, ty: &str, within: Duration) -> (Value, Duration) {
    let start = Instant::now();
    loop {
        let left = within.saturating_sub(start.elapsed());
        let m = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no `{ty}` within {within:?}"))
            .expect("stream open")
            .expect("frame");
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(&t).expect("JSON");
            if v["type"] == ty {
                return (v, start.elapsed());
            }
        }
    }
}

/// Waits until `/readyz` of `srv` starts with `status`.
fn wait_ready(srv: &Server, status: &str, within: Duration) -> String {
    srv.wait_readyz(|r| r.starts_with(status), within)
}

/// Reads until the server closes `ws`; returns the close frame's code and reason.
async fn close_frame(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(Duration::from_secs(3), ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(f))))) => {
                return (u16::from(f.code), f.reason.to_string());
            }
            Ok(Some(Ok(Message::Close(None)))) => panic!("close without a frame"),
            Ok(Some(Ok(_))) => continue,
            other => panic!("socket not closed by the server: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_on_two_nodes_signal_as_on_one() {
    let redis = RedisServer::start();
    let a = node(
        &redis,
        &["--hub-max-peers-per-room", "2", "--hub-max-rooms", "2"],
    );
    let b = node(
        &redis,
        &["--hub-max-peers-per-room", "2", "--hub-max-rooms", "2"],
    );
    let mut alice = connect(&a).await;
    let mut bob = connect(&b).await;
    let w = join(&mut alice, "demo", "alice").await;
    assert_eq!((w["seq"].as_u64(), &w["peers"]), (Some(1), &json!([])));
    let w = join(&mut bob, "demo", "bob").await;
    assert_eq!(w["peers"], json!(["alice"]));
    assert_eq!(
        recv(&mut alice).await,
        json!({"type": "peer-joined", "peer_id": "bob", "seq": 2})
    );
    send(
        &mut bob,
        json!({"type": "offer", "to": "alice", "sdp": "v=0 o"}),
    )
    .await;
    assert_eq!(
        recv(&mut alice).await,
        json!({"type": "offer", "from": "bob", "sdp": "v=0 o", "seq": 3})
    );
    send(
        &mut alice,
        json!({"type": "answer", "to": "bob", "sdp": "v=0 a"}),
    )
    .await;
    assert_eq!(
        recv(&mut bob).await,
        json!({"type": "answer", "from": "alice", "sdp": "v=0 a", "seq": 2})
    );
    let cand = json!({"candidate": "candidate:1 1 udp 1 192.0.2.7 5000 typ host", "sdpMid": "0"});
    send(
        &mut alice,
        json!({"type": "candidate", "to": "bob", "candidate": cand}),
    )
    .await;
    let c = recv(&mut bob).await;
    assert_eq!((&c["candidate"], c["seq"].as_u64()), (&cand, Some(3)));
    // Errors and pongs are part of the session's stream, as on one node.
    send(
        &mut alice,
        json!({"type": "offer", "to": "carol", "sdp": "x"}),
    )
    .await;
    let e = recv(&mut alice).await;
    assert_eq!(
        (e["code"].as_str(), e["seq"].as_u64()),
        (Some("peer-not-found"), Some(4))
    );
    send(&mut alice, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut alice).await, json!({"type": "pong", "seq": 5}));

    // Limits hold across the cluster: the room (2 peers) is full on either node, a peer id
    // is taken on either node, and the second room fills the hub's 2 rooms.
    let mut carol = connect(&a).await;
    send(
        &mut carol,
        json!({"type": "join", "room": "demo", "peer_id": "carol"}),
    )
    .await;
    assert_eq!(recv(&mut carol).await["code"], "room-full");
    let mut dave = connect(&b).await;
    join(&mut dave, "second", "dave").await;
    let mut erin = connect(&a).await;
    send(
        &mut erin,
        json!({"type": "join", "room": "second", "peer_id": "dave"}),
    )
    .await;
    assert_eq!(recv(&mut erin).await["code"], "peer-id-taken");
    send(
        &mut erin,
        json!({"type": "join", "room": "third", "peer_id": "erin"}),
    )
    .await;
    assert_eq!(recv(&mut erin).await["code"], "too-many-rooms");

    // Leaving on one node tells the other at once.
    send(&mut bob, json!({"type": "leave"})).await;
    assert_eq!(
        recv(&mut alice).await,
        json!({"type": "peer-left", "peer_id": "bob", "seq": 6})
    );
    let m = http_get(a.metrics, "/metrics");
    for line in [
        "turnpike_hub_store_up 1",
        "turnpike_hub_resyncs_total 0",
        "turnpike_hub_messages_total{type=\"join\"} 4",
        "turnpike_hub_errors_total{code=\"room-full\"} 1",
        "turnpike_hub_errors_total{code=\"too-many-rooms\"} 1",
    ] {
        assert!(m.contains(line), "metrics of node A lack {line:?}:\n{m}");
    }
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_resumes_on_the_other_node_without_losing_messages() {
    let redis = RedisServer::start();
    let Pair {
        a,
        b,
        mut alice,
        mut bob,
        session,
    } = pair(&redis).await;
    // Alice's socket drops (no leave) while Bob keeps sending.
    alice.close(None).await.expect("close");
    drop(alice);
    for i in 0..5 {
        send(&mut bob, json!({"type": "candidate", "to": "alice", "candidate": {"candidate": format!("c{i}")}})).await;
    }
    // Sent while Alice is away: accepted, not an error.
    send(&mut bob, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut bob).await["type"], "pong");
    // Alice resumes on node B, having seen seq 2.
    let mut alice = connect(&b).await;
    send(
        &mut alice,
        json!({"type": "resume", "session": session, "last_seq": 2}),
    )
    .await;
    let r = recv(&mut alice).await;
    assert_eq!(
        (
            r["type"].as_str(),
            r["replay_complete"].as_bool(),
            &r["peers"]
        ),
        (Some("resumed"), Some(true), &json!(["bob"])),
        "{r}"
    );
    let resumed_seq = r["seq"].as_u64().unwrap();
    for i in 0..5u64 {
        let m = recv(&mut alice).await;
        assert_eq!(
            (m["candidate"]["candidate"].as_str(), m["seq"].as_u64()),
            (Some(format!("c{i}").as_str()), Some(3 + i)),
            "replay in order"
        );
    }
    assert_eq!(
        resumed_seq, 8,
        "resumed takes the next seq after the replayed 3..=7"
    );
    // Live again, across nodes, with the next seq.
    send(&mut bob, json!({"type": "bye", "to": "alice"})).await;
    assert_eq!(
        recv(&mut alice).await,
        json!({"type": "bye", "from": "bob", "seq": 9})
    );
    // Resuming the live session on node A takes it over: the socket on B is closed.
    let mut again = connect(&a).await;
    send(
        &mut again,
        json!({"type": "resume", "session": session, "last_seq": 9}),
    )
    .await;
    assert_eq!(recv(&mut again).await["type"], "resumed");
    assert_eq!(
        close_frame(&mut alice).await,
        (1000, "resumed elsewhere".to_owned())
    );
    send(
        &mut bob,
        json!({"type": "offer", "to": "alice", "sdp": "s"}),
    )
    .await;
    assert_eq!(recv(&mut again).await["seq"], 11, "10 was `resumed`");
    // Bob never saw Alice leave.
    send(&mut bob, json!({"type": "ping"})).await;
    assert_eq!(recv(&mut bob).await["type"], "pong");
    // An unknown session is refused on any node.
    let mut x = connect(&a).await;
    send(
        &mut x,
        json!({"type": "resume", "session": "0123456789abcdef", "last_seq": 0}),
    )
    .await;
    assert_eq!(recv(&mut x).await["code"], "session-not-found");
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_messages_across_nodes_arrive_complete_and_in_order() {
    let redis = RedisServer::start();
    let a = node(
        &redis,
        &[
            "--hub-messages-per-second",
            "10000",
            "--hub-message-burst",
            "10000",
        ],
    );
    let b = node(
        &redis,
        &[
            "--hub-messages-per-second",
            "10000",
            "--hub-message-burst",
            "10000",
        ],
    );
    let mut alice = connect(&a).await;
    let mut bob = connect(&b).await;
    join(&mut alice, "load", "alice").await;
    join(&mut bob, "load", "bob").await;
    assert_eq!(recv(&mut alice).await["seq"], 2);
    const N: u64 = 2000;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            send(&mut bob, json!({"type": "candidate", "to": "alice", "candidate": {"candidate": i.to_string()}})).await;
        }
        bob
    });
    for i in 0..N {
        let m = recv(&mut alice).await;
        assert_eq!(
            (m["candidate"]["candidate"].as_str(), m["seq"].as_u64()),
            (Some(i.to_string().as_str()), Some(3 + i))
        );
    }
    let _bob = sender.await.expect("sender");
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_sessions_resume_elsewhere_or_expire() {
    let redis = RedisServer::start();
    let a = node(&redis, &[]);
    let b = node(&redis, &[]);
    let mut alice = connect(&a).await;
    let mut carol = connect(&a).await;
    let mut bob = connect(&b).await;
    let session = join(&mut alice, "r", "alice").await["session"]
        .as_str()
        .unwrap()
        .to_owned();
    join(&mut carol, "r", "carol").await;
    join(&mut bob, "r", "bob").await;
    // Node A dies without a word.
    a.send_signal(9);
    let killed = Instant::now();
    let _ = a.wait_exit(Duration::from_secs(5));
    drop((alice, carol));
    // Bob's messages to Alice meanwhile are kept for her.
    send(
        &mut bob,
        json!({"type": "offer", "to": "alice", "sdp": "while-dead"}),
    )
    .await;
    // Alice resumes on B (she noticed the drop at once).
    let mut alice = connect(&b).await;
    send(
        &mut alice,
        json!({"type": "resume", "session": session, "last_seq": 3}),
    )
    .await;
    let r = recv(&mut alice).await;
    assert_eq!(r["type"], "resumed", "{r}");
    let m = recv(&mut alice).await;
    assert_eq!(
        (m["type"].as_str(), m["sdp"].as_str()),
        (Some("offer"), Some("while-dead"))
    );
    // Carol never comes back: when node A's heartbeat expires (3 s) and then her resume
    // window (4 s) ends, Bob and Alice see her leave — and not Alice.
    let (left, _) = wait_for(&mut bob, "peer-left", Duration::from_secs(15)).await;
    let after = killed.elapsed();
    assert_eq!(left["peer_id"], "carol");
    assert!(
        after >= Duration::from_secs(4) && after <= Duration::from_secs(3 + 4 + 3),
        "peer-left {after:?} after the kill (heartbeat 3 s + window 4 s)"
    );
    let (left, _) = wait_for(&mut alice, "peer-left", Duration::from_secs(3)).await;
    assert_eq!(left["peer_id"], "carol");
    send(
        &mut bob,
        json!({"type": "answer", "to": "alice", "sdp": "still here"}),
    )
    .await;
    assert_eq!(
        wait_for(&mut alice, "answer", Duration::from_secs(3))
            .await
            .0["sdp"],
        "still here"
    );
    let m = http_get(b.metrics, "/metrics");
    assert!(m.contains("turnpike_hub_dead_nodes_total 1"), "{m}");
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_survived_without_rejoining() {
    let mut redis = RedisServer::start();
    let Pair {
        a,
        b,
        mut alice,
        mut bob,
        ..
    } = pair(&redis).await;
    redis.kill();
    // Both nodes turn unready and say why; messages get a clear error, not silence.
    for n in [&a, &b] {
        let r = wait_ready(n, "HTTP/1.1 503", Duration::from_secs(5));
        assert!(r.contains("redis"), "{r}");
    }
    send(
        &mut bob,
        json!({"type": "offer", "to": "alice", "sdp": "lost?"}),
    )
    .await;
    let e = recv(&mut bob).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{e}"
    );
    // New sockets are refused while the store is away.
    let url = format!("ws://{}/v1/ws", a.http);
    assert!(tokio_tungstenite::connect_async(url).await.is_err());
    // Redis comes back empty: the nodes reconnect and restore their sessions.
    redis.restart();
    for n in [&a, &b] {
        wait_ready(n, "HTTP/1.1 200", Duration::from_secs(10));
    }
    send(
        &mut bob,
        json!({"type": "offer", "to": "alice", "sdp": "after"}),
    )
    .await;
    let m = recv(&mut alice).await;
    assert_eq!(
        (m["type"].as_str(), m["sdp"].as_str(), m["seq"].as_u64()),
        (Some("offer"), Some("after"), Some(3)),
        "the stream continues where it was: {m}"
    );
    // The restored room is whole: a newcomer sees both peers.
    let mut carol = connect(&b).await;
    let w = join(&mut carol, "r", "carol").await;
    assert_eq!(w["peers"], json!(["alice", "bob"]));
    let m = http_get(a.metrics, "/metrics");
    assert!(m.contains("turnpike_hub_store_reconnects_total 1"), "{m}");
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cleanly_stopped_node_hands_its_sessions_over_at_once() {
    let redis = RedisServer::start();
    let Pair {
        a,
        b,
        mut alice,
        mut bob,
        ..
    } = pair(&redis).await;
    let stopped = Instant::now();
    a.stop();
    // Alice is told to go elsewhere.
    assert_eq!(close_frame(&mut alice).await.0, 1001);
    // She does not come back: Bob sees her leave when the 4 s window ends, without waiting
    // for node A's heartbeat (3 s) to expire first.
    let (left, _) = wait_for(&mut bob, "peer-left", Duration::from_secs(10)).await;
    let after = stopped.elapsed();
    assert_eq!(left["peer_id"], "alice");
    assert!(
        after >= Duration::from_millis(3500) && after < Duration::from_millis(6500),
        "peer-left {after:?} after the stop (window 4 s)"
    );
    let m = http_get(b.metrics, "/metrics");
    assert!(m.contains("turnpike_hub_dead_nodes_total 0"), "{m}");
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_subscriptions_and_a_stale_counter_are_reconciled() {
    let redis = RedisServer::start();
    let Pair {
        a,
        b,
        mut alice,
        mut bob,
        session: sid,
    } = pair(&redis).await;
    // Redis's copy of Alice's stream goes back to before `peer-joined` (as after a restart
    // from a stale snapshot): seq 2 is no longer taken there.
    let key = format!("turnpike:s:{sid}");
    redis.cmd(&["DEL", &format!("turnpike:q:{sid}")]);
    redis.cmd(&["HSET", &key, "q", "2"]);
    // Both nodes lose their subscriptions and reconnect, reconciling their sessions.
    let killed = redis.cmd(&["CLIENT", "KILL", "TYPE", "pubsub"]).int();
    assert_eq!(killed, 2, "one subscription per node");
    for n in [&a, &b] {
        n.wait_metric("turnpike_hub_store_reconnects_total", 1);
        wait_ready(n, "HTTP/1.1 200", Duration::from_secs(5));
    }
    // The counter was raised to what Alice has seen: the next message is seq 3, not a
    // seq 2 her client would drop as a duplicate.
    for i in 0..3u64 {
        send(
            &mut bob,
            json!({"type": "offer", "to": "alice", "sdp": format!("m{i}")}),
        )
        .await;
    }
    for i in 0..3u64 {
        let m = recv(&mut alice).await;
        assert_eq!(
            (m["sdp"].as_str(), m["seq"].as_u64()),
            (Some(format!("m{i}").as_str()), Some(3 + i)),
            "{m}"
        );
    }
    assert_eq!(redis.cmd(&["HGET", &key, "q"]).as_str(), Some("6"));
    a.stop();
    b.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_node_behind_a_trusted_proxy_counts_forwarded_clients() {
    let redis = RedisServer::start();
    let n = node(
        &redis,
        &[
            "--trusted-proxy",
            "127.0.0.0/8",
            "--hub-max-connections-per-ip",
            "1",
        ],
    );
    per_ip_limit_counts_forwarded_clients(&n).await;
    n.stop();
}
