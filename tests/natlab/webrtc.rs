//! WebRTC paths through two NATs: one `turnpike peer` behind each router of the pair lab
//! (`natlab.sh pair-up TYPE_A TYPE_B`), and `turnpike serve` (STUN, TURN and the signaling hub)
//! on the public segment at 198.51.100.1. The peers find the hub at
//! `ws://198.51.100.1:8080/v1/ws`, and take its STUN and TURN URLs from the hub's `welcome`
//! (`{host}` becomes 198.51.100.1, the Host they connected to).
//!
//! The two LANs are different subnets and neither router routes to the other's, so host
//! candidates can never reach each other: every path crosses both NATs or goes through the
//! relay. Each peer gathers host candidates on `eth0` only (`--interface eth0`, no loopback).
//!
//! What the report proves: the JSON gives the types of the selected pair's candidates, and the
//! `connected:` progress line on stderr gives their addresses (`LOCAL -> REMOTE`). A relayed
//! path is one whose local or remote candidate is the server's relayed address; the tests
//! check both the type and that the address is on the server, and that the two peers agree
//! (one side's relayed local address is the other side's remote address).
//!
//! Every run is bounded (`--timeout` for the peers, a deadline after which the test kills
//! them); each test has its own namespace prefix (tpwp, tpwf, tpws, tpwn) and tears its lab
//! down, also when it fails. On failure the message holds both peers' exit status, JSON and
//! stderr, the server's log and `natlab.sh show`.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{BIN, LAB, SERVER, median};

const SIGNAL: &str = "ws://198.51.100.1:8080/v1/ws";
/// rtra's and rtrb's public addresses: the peers' server-reflexive (and peer-reflexive)
/// addresses.
const WAN_A: &str = "198.51.100.10";
const WAN_B: &str = "198.51.100.20";
/// The lab's public segment is TEST-NET-2 (198.51.100.0/24), a documentation range that the
/// relay's default peer policy denies (docs/turn.md, "Peer policy"). The peers'
/// server-reflexive addresses live there, so without this the relay could reach only other
/// relayed addresses of the server itself; on the internet those addresses are public ones,
/// which the policy allows. Allowing the segment makes the lab behave like the internet.
const ALLOW_PUBLIC_SEGMENT: [&str; 2] = ["--allow-peer", "198.51.100.0/24"];
/// How many connections each connecting case makes (each in a fresh room).
const RUNS: usize = 3;
/// The peers' own --timeout when a connection is expected, and the test's deadline.
const CONNECT_TIMEOUT: &str = "20";
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);
/// ICE in the `webrtc` crate declares failure 30 s after checking starts (disconnected
/// timeout 5 s + failed timeout 25 s); the peers' --timeout must be longer, or the run would
/// end in a timeout instead of the "no route" error.
const FAIL_TIMEOUT: &str = "60";
const FAIL_DEADLINE: Duration = Duration::from_secs(75);

/// Runs `natlab.sh ARGS` with the lab's prefix, without any TURNPIKE_* variable of ours
/// leaking into the server or the peers.
fn natlab(prefix: &str, args: &[&str]) -> Command {
    let mut c = Command::new("bash");
    c.arg(LAB).args(args).env("NATLAB_PREFIX", prefix);
    for (k, _) in std::env::vars() {
        if k.starts_with("TURNPIKE_") {
            c.env_remove(k);
        }
    }
    c
}

fn output(prefix: &str, args: &[&str]) -> (bool, String) {
    let out = natlab(prefix, args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {LAB}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A pair lab with the server running; torn down on drop.
struct PairLab {
    prefix: &'static str,
    types: String,
}

impl PairLab {
    fn up(prefix: &'static str, type_a: &str, type_b: &str) -> PairLab {
        let (ok, out) = output(prefix, &["pair-up", type_a, type_b]);
        assert!(
            ok,
            "natlab pair-up {type_a} {type_b} failed (the NAT lab needs root, ip netns and nftables; tests/run.sh installs them):\n{out}"
        );
        let lab = PairLab {
            prefix,
            types: format!("{type_a} <-> {type_b}"),
        };
        let mut args = vec!["pair-server", BIN];
        args.extend(ALLOW_PUBLIC_SEGMENT);
        let (ok, out) = output(prefix, &args);
        assert!(ok, "natlab pair-server failed:\n{out}");
        lab
    }

    /// Two peers in one room: A in clia, B in clib a moment later (B makes the offer).
    fn run_pair(&self, room: &str, timeout: &str, deadline: Duration) -> (PeerRun, PeerRun) {
        let until = Instant::now() + deadline;
        let a = self.spawn_peer("clia", room, timeout);
        std::thread::sleep(Duration::from_millis(200));
        let b = self.spawn_peer("clib", room, timeout);
        (finish("A (clia)", a, until), finish("B (clib)", b, until))
    }

    fn spawn_peer(&self, ns: &str, room: &str, timeout: &str) -> (Child, Instant) {
        let child = natlab(
            self.prefix,
            &[
                "exec",
                ns,
                "--",
                BIN,
                "peer",
                "--signal",
                SIGNAL,
                "--room",
                room,
                "--json",
                "--timeout",
                timeout,
                "--interface",
                "eth0",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start turnpike peer in {ns}: {e}"));
        (child, Instant::now())
    }

    /// Everything needed to understand a failure: both peers, the server log, the lab.
    fn context(&self, a: &PeerRun, b: &PeerRun) -> String {
        let (_, log) = output(self.prefix, &["server-log"]);
        let (_, show) = output(self.prefix, &["show"]);
        format!(
            "lab {} ({}), server {SERVER}\n{a}\n{b}\n--- server log ---\n{log}\n--- natlab.sh show ---\n{show}",
            self.prefix, self.types
        )
    }
}

impl Drop for PairLab {
    fn drop(&mut self) {
        let _ = output(self.prefix, &["down"]);
    }
}

/// One `turnpike peer` run.
struct PeerRun {
    side: &'static str,
    code: Option<i32>,
    json: Value,
    stdout: String,
    stderr: String,
    elapsed: Duration,
    killed: bool,
}

impl std::fmt::Display for PeerRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "--- peer {}: exit {:?}{}, {:.1} s ---",
            self.side,
            self.code,
            if self.killed {
                " (killed at the test's deadline)"
            } else {
                ""
            },
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "stdout: {}", self.stdout.trim())?;
        write!(f, "stderr:\n{}", self.stderr.trim_end())
    }
}

impl PeerRun {
    fn ok(&self) -> bool {
        self.code == Some(0)
    }

    fn field(&self, key: &str) -> &str {
        self.json[key].as_str().unwrap_or("")
    }

    /// The selected pair's addresses, from the `connected: TYPE -> TYPE (LOCAL -> REMOTE), …`
    /// progress line.
    fn pair(&self) -> Option<(String, String)> {
        let line = self.stderr.lines().find(|l| l.contains(": connected: "))?;
        let start = line.find(" (")? + 2;
        let end = line.find("), data channel")?;
        let (local, remote) = line.get(start..end)?.split_once(" -> ")?;
        Some((local.to_owned(), remote.to_owned()))
    }
}

fn finish(side: &'static str, (mut child, started): (Child, Instant), until: Instant) -> PeerRun {
    let mut killed = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for turnpike peer") {
            break Some(s);
        }
        if Instant::now() > until {
            let _ = child.kill();
            killed = true;
            break child.wait().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = started.elapsed();
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    PeerRun {
        side,
        code: status.and_then(|s| s.code()),
        json: serde_json::from_str(stdout.trim()).unwrap_or(Value::Null),
        stdout,
        stderr,
        elapsed,
        killed,
    }
}

fn ip_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(ip, _)| ip)
}

/// Both peers carried their message both ways.
fn assert_connected(lab: &PairLab, a: &PeerRun, b: &PeerRun) {
    for p in [a, b] {
        let good = p.ok()
            && p.json["connected"] == true
            && p.json["error"].is_null()
            && p.json["setup_ms"].is_u64()
            && p.pair().is_some();
        assert!(
            good,
            "peer {} did not connect (exit 0, \"connected\":true, a selected pair expected)\n{}",
            p.side,
            lab.context(a, b)
        );
    }
}

/// A direct path: no relay anywhere, and each side's remote candidate is the other NAT's public
/// address (server-reflexive or peer-reflexive), so the packets crossed both NATs.
fn assert_direct(lab: &PairLab, a: &PeerRun, b: &PeerRun) {
    assert_connected(lab, a, b);
    for (p, other_wan) in [(a, WAN_B), (b, WAN_A)] {
        let local = p.field("local_candidate_type");
        let remote = p.field("remote_candidate_type");
        let (_, remote_addr) = p.pair().unwrap_or_default();
        assert!(
            ["host", "srflx", "prflx"].contains(&local)
                && ["srflx", "prflx"].contains(&remote)
                && ip_of(&remote_addr) == other_wan,
            "peer {}: expected a direct path without relay (local host/srflx/prflx, remote \
             srflx/prflx at the other NAT's address {other_wan}), got {local} -> {remote} \
             ({remote_addr})\n{}",
            p.side,
            lab.context(a, b)
        );
    }
}

/// A relayed path: on each side the local or the remote candidate is a relay candidate on
/// the server, and the peers agree: one side's relayed local address is the other side's
/// remote address.
fn assert_relayed(lab: &PairLab, a: &PeerRun, b: &PeerRun) {
    assert_connected(lab, a, b);
    for (p, q) in [(a, b), (b, a)] {
        let local = p.field("local_candidate_type");
        let remote = p.field("remote_candidate_type");
        let (p_local, p_remote) = p.pair().unwrap_or_default();
        let (q_local, _) = q.pair().unwrap_or_default();
        assert!(
            local == "relay" || remote == "relay",
            "peer {}: expected the relay in the selected pair, got {local} -> {remote}\n{}",
            p.side,
            lab.context(a, b)
        );
        if local == "relay" {
            assert!(
                ip_of(&p_local) == SERVER
                    && q.field("remote_candidate_type") == "relay"
                    && q.pair().unwrap_or_default().1 == p_local,
                "peer {}'s relayed address {p_local} must be on the server ({SERVER}) and be \
                 peer {}'s remote relay candidate\n{}",
                p.side,
                q.side,
                lab.context(a, b)
            );
        }
        if remote == "relay" {
            assert!(
                ip_of(&p_remote) == SERVER
                    && q.field("local_candidate_type") == "relay"
                    && q_local == p_remote,
                "peer {}'s remote relay candidate {p_remote} must be peer {}'s relayed \
                 address on the server ({SERVER})\n{}",
                p.side,
                q.side,
                lab.context(a, b)
            );
        }
    }
}

/// Connects RUNS times with `check`, returns the setup_ms of both sides and the pair types.
fn connect_runs(lab: &PairLab, check: fn(&PairLab, &PeerRun, &PeerRun)) -> (Vec<u64>, Vec<String>) {
    let mut ms = Vec::new();
    let mut paths = Vec::new();
    for run in 0..RUNS {
        let (a, b) = lab.run_pair(&format!("run{run}"), CONNECT_TIMEOUT, CONNECT_DEADLINE);
        check(lab, &a, &b);
        for p in [&a, &b] {
            ms.push(p.json["setup_ms"].as_u64().unwrap_or(u64::MAX));
            let path = format!(
                "{} -> {}",
                p.field("local_candidate_type"),
                p.field("remote_candidate_type")
            );
            if !paths.contains(&path) {
                paths.push(path);
            }
        }
    }
    (ms, paths)
}

fn print_setup(lab: &PairLab, ms: &[u64], paths: &[String]) {
    println!(
        "WebRTC path {} ({} runs, both peers): {}; setup_ms min {} / median {} / max {}; setup_ms {:?}",
        lab.types,
        RUNS,
        paths.join(", "),
        ms.iter().min().copied().unwrap_or(0),
        median(ms.to_vec()),
        ms.iter().max().copied().unwrap_or(0),
        ms
    );
}

#[test]
fn webrtc_port_restricted_pair_connects_without_relay() {
    let lab = PairLab::up("tpwp", "port-restricted-cone", "port-restricted-cone");
    let (ms, paths) = connect_runs(&lab, assert_direct);
    print_setup(&lab, &ms, &paths);
}

#[test]
fn webrtc_full_cone_to_symmetric_connects_without_relay() {
    let lab = PairLab::up("tpwf", "full-cone", "symmetric");
    let (ms, paths) = connect_runs(&lab, assert_direct);
    print_setup(&lab, &ms, &paths);
}

#[test]
fn webrtc_symmetric_pair_connects_only_through_relay() {
    let lab = PairLab::up("tpws", "symmetric", "symmetric");
    let (ms, paths) = connect_runs(&lab, assert_relayed);
    print_setup(&lab, &ms, &paths);
}

#[test]
fn webrtc_symmetric_pair_without_turn_fails_with_no_route() {
    let lab = PairLab::up("tpwn", "symmetric", "symmetric");
    // TURN unreachable: srv drops every TURN Allocate request; STUN Binding and the hub keep
    // working, so the peers still gather server-reflexive candidates.
    let (ok, out) = output(lab.prefix, &["block-turn"]);
    assert!(ok, "natlab block-turn failed:\n{out}");
    let (a, b) = lab.run_pair("no-turn", FAIL_TIMEOUT, FAIL_DEADLINE);
    for p in [&a, &b] {
        let error = p.field("error");
        let good = p.code == Some(1)
            && p.json["connected"] == false
            && error.starts_with("no route to the other peer: ICE failed (")
            && error.contains("local candidates gathered: host, srflx;")
            && error.contains("remote candidates received: host, srflx;")
            && error.contains("TURN turn:198.51.100.1:3478?transport=udp: no answer")
            && p.stderr
                .contains("turnpike peer: error: no route to the other peer: ICE failed");
        assert!(
            good,
            "peer {}: expected exit 1 with \"no route to the other peer: ICE failed (local \
             candidates gathered: host, srflx; remote candidates received: host, srflx; TURN \
             turn:198.51.100.1:3478?transport=udp: no answer …)\"\n{}",
            p.side,
            lab.context(&a, &b)
        );
    }
    // The Allocate requests did reach the server's namespace and were dropped there.
    let (_, rules) = output(
        lab.prefix,
        &[
            "exec",
            "srv",
            "--",
            "nft",
            "list",
            "table",
            "ip",
            "natlab_srv",
        ],
    );
    let dropped = rules
        .split("counter packets ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        dropped > 0,
        "no TURN Allocate request was dropped in srv:\n{rules}"
    );
    println!(
        "WebRTC path {} without TURN: both peers failed with \"no route\" after {:.1} s / {:.1} s ({dropped} Allocate requests dropped): {}",
        lab.types,
        a.elapsed.as_secs_f64(),
        b.elapsed.as_secs_f64(),
        a.field("error")
    );
}
