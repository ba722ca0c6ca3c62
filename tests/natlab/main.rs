//! The NAT lab: `turnpike nat-check` against real Linux NATs in network namespaces.
//!
//! Needs root and `ip netns` + nftables (tests/run.sh installs them); it fails loudly, never
//! skips, when they are missing. Each test builds its own lab with its own namespace prefix
//! through `tests/natlab/natlab.sh`, so the tests can run in parallel, and tears it down.
//! Only traffic inside those namespaces is involved.
//!
//! `webrtc` adds the WebRTC paths: two `turnpike peer`s, each behind its own NAT, meeting
//! through a `turnpike serve` on the public segment (directly, through the relay, or not at
//! all when TURN is unreachable).

mod webrtc;

use std::process::Command;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_turnpike");
const LAB: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/natlab/natlab.sh");
const SERVER: &str = "198.51.100.1";

/// Every lab type and the `nat_type` nat-check must report for it.
const MATRIX: [(&str, &str); 8] = [
    ("full-cone", "full-cone"),
    ("restricted-cone", "restricted-cone"),
    ("port-restricted-cone", "port-restricted-cone"),
    ("symmetric", "symmetric"),
    ("none", "open-internet"),
    ("firewall", "firewall"),
    ("blocked", "udp-blocked"),
    ("full-cone-hairpin", "full-cone"),
];

struct Lab {
    prefix: String,
}

fn lab_cmd(prefix: &str, args: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(LAB)
        .args(args)
        .env("NATLAB_PREFIX", prefix)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {LAB}: {e}"))
}

impl Lab {
    fn up(prefix: &str, ty: &str, loss: Option<u32>) -> Lab {
        let loss_s = loss.map(|l| l.to_string());
        let mut args = vec!["up", ty];
        if let Some(l) = &loss_s {
            args.extend(["--loss", l]);
        }
        let out = lab_cmd(prefix, &args);
        assert!(
            out.status.success(),
            "natlab up {ty} failed (the NAT lab needs root, ip netns and nftables; tests/run.sh installs them):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lab = Lab {
            prefix: prefix.to_owned(),
        };
        let out = lab_cmd(prefix, &["server", BIN]);
        assert!(
            out.status.success(),
            "natlab server failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    /// Runs `turnpike nat-check` in the client namespace; returns the parsed JSON and the exit
    /// code.
    fn nat_check(&self, extra: &[&str]) -> (serde_json::Value, i32) {
        let mut args = vec!["exec", "cli", "--", BIN, "nat-check", SERVER, "--json"];
        args.extend_from_slice(extra);
        let out = lab_cmd(&self.prefix, &args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "nat-check --json must print exactly one JSON object ({e}):\nstdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (v, out.status.code().unwrap_or(-1))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = lab_cmd(&self.prefix, &["down"]);
    }
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

#[test]
fn classification_matrix_10_runs_each() {
    let mut timings = Vec::new();
    for (ty, expected) in MATRIX {
        let lab = Lab::up("tpm", ty, None);
        let mut ms = Vec::new();
        for run in 0..10 {
            let (v, code) = lab.nat_check(&[]);
            assert_eq!(v["nat_type"], expected, "{ty} run {run}: {v}");
            assert_eq!(code, 0, "{ty}: a definite verdict exits 0");
            if ty == "blocked" {
                assert!(v["nat"].is_null() && v["public_address"].is_null(), "{v}");
            } else {
                assert!(v["public_address"].is_string(), "{v}");
                assert!(
                    !v["local_address"]
                        .as_str()
                        .unwrap_or("")
                        .starts_with("0.0.0.0"),
                    "{v}"
                );
            }
            ms.push(v["duration_ms"].as_u64().unwrap_or(u64::MAX));
        }
        timings.push((
            ty,
            median(ms.clone()),
            ms.iter().copied().max().unwrap_or(0),
        ));
        drop(lab);
    }
    println!("nat-check wall time without loss (median / max of 10 runs):");
    for (ty, med, max) in &timings {
        println!("  {ty:<22} {med:>5} ms / {max:>5} ms");
    }
    for (ty, med, _) in timings {
        assert!(med <= 1500, "{ty}: median {med} ms over the 1.5 s goal");
    }
}

#[test]
fn classification_under_20_percent_loss() {
    let mut timings = Vec::new();
    for (ty, expected) in MATRIX {
        let lab = Lab::up("tpl20", ty, Some(20));
        let mut right = 0;
        let mut ms = Vec::new();
        for run in 0..10 {
            let (v, code) = lab.nat_check(&[]);
            let got = v["nat_type"].as_str().unwrap_or("").to_owned();
            if got == expected {
                right += 1;
                assert_eq!(code, 0);
            } else {
                assert_eq!(got, "unknown", "{ty} run {run}: wrong with confidence: {v}");
                assert_eq!(code, 2, "unknown exits 2");
            }
            ms.push(v["duration_ms"].as_u64().unwrap_or(u64::MAX));
        }
        assert!(right >= 9, "{ty}: only {right}/10 right under 20 % loss");
        timings.push((ty, right, median(ms)));
        drop(lab);
    }
    println!("nat-check under 20 % loss each way (right of 10, median wall time):");
    for (ty, right, med) in timings {
        println!("  {ty:<22} {right:>2}/10 {med:>5} ms");
    }
}

#[test]
fn hairpinning_is_detected() {
    let lab = Lab::up("tph", "full-cone-hairpin", None);
    let (v, _) = lab.nat_check(&["--hairpin"]);
    assert_eq!(v["hairpinning"], true, "{v}");
    drop(lab);
    let lab = Lab::up("tph", "port-restricted-cone", None);
    let (v, _) = lab.nat_check(&["--hairpin"]);
    assert_eq!(v["hairpinning"], false, "{v}");
    assert_eq!(v["nat_type"], "port-restricted-cone", "{v}");
}

#[test]
fn human_output_and_repeat() {
    let lab = Lab::up("tpo", "symmetric", None);
    let out = lab_cmd(
        &lab.prefix,
        &[
            "exec",
            "cli",
            "--",
            BIN,
            "nat-check",
            SERVER,
            "--repeat",
            "2",
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for needle in [
        "public address",
        "mapping",
        "filtering",
        "NAT type",
        "symmetric",
        "TURN relay",
        "runs",
    ] {
        assert!(
            text.contains(needle),
            "human output lacks {needle:?}:\n{text}"
        );
    }
    let _ = Duration::from_secs(0);
}

/// Without a default route and with a wildcard `--listen`, there is no relay IP: the server
/// must say TURN is off (a warning logged while the configuration is validated), not keep
/// quiet. The namespace is the test's own, with only its loopback.
#[test]
fn turn_off_for_lack_of_a_relay_ip_is_logged() {
    let ns = format!("tp-noroute-{}", std::process::id());
    let run = |args: &[&str]| {
        Command::new("ip")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run ip (the NAT lab needs iproute2): {e}"))
    };
    let made = run(&["netns", "add", &ns]);
    assert!(
        made.status.success(),
        "ip netns add failed (the NAT lab needs root): {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let out = run(&[
        "netns",
        "exec",
        &ns,
        BIN,
        "serve",
        "--listen",
        "0.0.0.0:3478",
        "--print-config",
    ]);
    run(&["netns", "del", &ns]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "serve --print-config failed: {stderr}"
    );
    assert!(
        stderr.contains("TURN is off: no relay IP could be determined"),
        "the warning must be printed; stderr: {stderr}"
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("listen = [\"0.0.0.0:3478\"]"),
        "stdout stays the configuration alone"
    );
}
