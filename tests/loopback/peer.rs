//! `turnpike peer`: two real peer processes meet in a room of a real `turnpike serve`, connect
//! over loopback (directly, or relay to relay through the server's TURN), and exchange a
//! message or a file over a WebRTC data channel.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::server::{Server, free_port, run_to_exit};

const BIN: &str = env!("CARGO_BIN_EXE_turnpike");
/// The peers' own --timeout; the test gives them a little more before it kills them.
const PEER_TIMEOUT: &str = "20";
const DEADLINE: Duration = Duration::from_secs(25);

struct Finished {
    ok: bool,
    json: Value,
    stderr: String,
}

fn spawn_peer(srv: &Server, room: &str, extra: &[&str]) -> Child {
    let url = format!("ws://{}/v1/ws", srv.http);
    let mut c = Command::new(BIN);
    c.args([
        "peer",
        "--signal",
        &url,
        "--room",
        room,
        "--json",
        "--timeout",
        PEER_TIMEOUT,
        // Host candidates on loopback only: the test's traffic stays on 127.0.0.1.
        "--interface",
        "lo",
    ]);
    c.args(extra);
    for (k, _) in std::env::vars() {
        if k.starts_with("TURNPIKE_") {
            c.env_remove(k);
        }
    }
    c.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start turnpike peer")
}

fn finish(mut child: Child, deadline: Instant) -> Finished {
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("turnpike peer did not exit in time:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    let mut err = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let json = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("stdout is one JSON object ({e}): {out:?}\n{err}"));
    Finished {
        ok: status.success(),
        json,
        stderr: err,
    }
}

/// Runs two peers in one room (the second starts a moment after the first, as people do).
fn pair(srv: &Server, room: &str, a: &[&str], b: &[&str]) -> (Finished, Finished) {
    let deadline = Instant::now() + DEADLINE;
    let first = spawn_peer(srv, room, a);
    std::thread::sleep(Duration::from_millis(200));
    let second = spawn_peer(srv, room, b);
    (finish(first, deadline), finish(second, deadline))
}

fn start() -> Server {
    let p = free_port("127.0.0.1");
    Server::start(&["--listen", &format!("127.0.0.1:{p}")])
}

fn assert_connected(f: &Finished, local: &str, remote: &str) {
    assert!(f.ok, "peer failed: {}\n{}", f.json, f.stderr);
    let j = &f.json;
    assert_eq!(j["connected"], true, "{j}");
    assert_eq!(j["local_candidate_type"], local, "{j}\n{}", f.stderr);
    assert_eq!(j["remote_candidate_type"], remote, "{j}\n{}", f.stderr);
    assert_eq!(j["local_protocol"], "udp", "{j}");
    assert_eq!(j["error"], Value::Null, "{j}");
    assert!(j["setup_ms"].as_u64().is_some(), "{j}");
    assert!(j["bytes_sent"].as_u64().unwrap() > 0, "{j}");
    assert!(j["bytes_received"].as_u64().unwrap() > 0, "{j}");
}

#[test]
fn two_peers_connect_directly_and_echo() {
    let srv = start();
    let (a, b) = pair(&srv, "direct", &[], &["--message", "ping from b"]);
    assert_connected(&a, "host", "host");
    assert_connected(&b, "host", "host");
    // Each side echoed the other's message and got its own echo back.
    assert!(
        a.stderr.contains("received \"ping from b\" (echoed)"),
        "{}",
        a.stderr
    );
    assert!(
        a.stderr.contains("our message was answered"),
        "{}",
        a.stderr
    );
    assert!(
        b.stderr.contains("received \"hello from p-"),
        "{}",
        b.stderr
    );
    assert!(
        b.stderr.contains("our message was answered"),
        "{}",
        b.stderr
    );
    assert!(b.json["rtt_ms"].as_f64().is_some(), "{}", b.json);
    srv.stop();
}

#[test]
fn relay_only_peers_meet_through_the_servers_turn() {
    let srv = start();
    let (a, b) = pair(&srv, "relayed", &["--relay-only"], &["--relay-only"]);
    assert_connected(&a, "relay", "relay");
    assert_connected(&b, "relay", "relay");
    srv.stop();
}

#[test]
fn a_file_arrives_with_its_checksum() {
    let dir = std::env::temp_dir().join(format!("turnpike-peer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("blob.bin");
    let data: Vec<u8> = (0..200 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let srv = start();
    let (a, b) = pair(&srv, "files", &["--send-file", file.to_str().unwrap()], &[]);
    assert_connected(&a, "host", "host");
    assert_connected(&b, "host", "host");
    assert!(
        a.json["bytes_sent"].as_u64().unwrap() >= 200 * 1024,
        "{}",
        a.json
    );
    assert!(a.json["transfer_ms"].as_u64().is_some(), "{}", a.json);
    assert!(
        b.stderr
            .contains("received file \"blob.bin\" (204800 bytes): checksum ok"),
        "{}",
        b.stderr
    );
    srv.stop();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unreachable_hub_and_full_room_are_clear_errors() {
    // Nothing listens on this port.
    let p = free_port("127.0.0.1");
    let url = format!("ws://127.0.0.1:{p}/v1/ws");
    let started = Instant::now();
    let (ok, out) = run_to_exit(
        &["peer", "--signal", &url, "--room", "r", "--timeout", "5"],
        &[],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("signaling hub unreachable"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(10));

    let p = free_port("127.0.0.1");
    let srv = Server::start(&[
        "--listen",
        &format!("127.0.0.1:{p}"),
        "--hub-max-peers-per-room",
        "2",
    ]);
    // Two peers hold the room (they wait for each other's ICE, which never starts).
    let hold = |id: &str| {
        let ws = format!("ws://{}/v1/ws", srv.http);
        let mut s = tungstenite_connect(&ws);
        s.send_text(&format!(
            r#"{{"type":"join","room":"full","peer_id":"{id}"}}"#
        ));
        s
    };
    let _a = hold("a");
    let _b = hold("b");
    let url = format!("ws://{}/v1/ws", srv.http);
    let (ok, out) = run_to_exit(
        &[
            "peer",
            "--signal",
            &url,
            "--room",
            "full",
            "--json",
            "--timeout",
            "5",
        ],
        &[],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("room \"full\" is full"), "{out}");
    assert!(out.contains("\"connected\":false"), "{out}");
    srv.stop();
}

/// A blocking WebSocket that joins and then just stays open.
struct HeldSocket {
    rt: tokio::runtime::Runtime,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl HeldSocket {
    fn send_text(&mut self, t: &str) {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let ws = &mut self.ws;
        self.rt.block_on(async {
            ws.send(Message::Text(t.to_owned().into())).await.unwrap();
            // The welcome.
            let m = tokio::time::timeout(Duration::from_secs(3), ws.next())
                .await
                .expect("welcome in time")
                .unwrap()
                .unwrap();
            assert!(m.to_text().unwrap().contains("welcome"), "{m:?}");
        });
    }
}

fn tungstenite_connect(url: &str) -> HeldSocket {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (ws, _) = rt
        .block_on(tokio_tungstenite::connect_async(url))
        .expect("connect");
    HeldSocket { rt, ws }
}
