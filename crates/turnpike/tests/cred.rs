//! `turnpike cred` through the real binary: the password matches the coturn formula computed
//! here independently, the expiry is now + ttl, and bad input fails with a clear message.

use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

fn cred(args: &[&str], env_secret: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_turnpike"));
    cmd.arg("cred")
        .args(args)
        .env_remove("TURNPIKE_AUTH_SECRET");
    if let Some(s) = env_secret {
        cmd.env("TURNPIKE_AUTH_SECRET", s);
    }
    cmd.output().expect("run turnpike")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn coturn_password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(stdout.lines().count(), 1, "exactly one line: {stdout:?}");
    serde_json::from_str(&stdout).expect("stdout is one JSON object")
}

#[test]
fn json_output_matches_the_coturn_formula() {
    let before = now();
    let out = cred(
        &[
            "--secret", "north", "--user", "alice", "--ttl", "600", "--json",
        ],
        None,
    );
    let after = now();
    let v = json(&out);
    let obj = v.as_object().unwrap();
    assert_eq!(
        obj.keys().collect::<Vec<_>>(),
        ["username", "password", "ttl", "uris"]
    );
    let username = v["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, "alice");
    let expiry: u64 = expiry.parse().unwrap();
    assert!(
        (before + 600..=after + 600).contains(&expiry),
        "expiry {expiry} not now+600"
    );
    assert_eq!(v["password"], coturn_password("north", username));
    assert_eq!(v["ttl"], 600);
    assert_eq!(
        v["uris"],
        serde_json::json!([
            "turn:localhost:3478?transport=udp",
            "turn:localhost:3478?transport=tcp"
        ])
    );
}

#[test]
fn secret_from_the_environment_and_uri_flags() {
    let out = cred(
        &[
            "--json",
            "--host",
            "2001:db8::1",
            "--port",
            "3479",
            "--tls-port",
            "443",
        ],
        Some("from env"),
    );
    let v = json(&out);
    let username = v["username"].as_str().unwrap();
    assert!(
        username.bytes().all(|b| b.is_ascii_digit()),
        "no --user: a bare expiry, got {username}"
    );
    let expiry: u64 = username.parse().unwrap();
    assert!(expiry.abs_diff(now() + 3600) <= 5, "default ttl is 3600");
    assert_eq!(v["password"], coturn_password("from env", username));
    assert_eq!(
        v["uris"],
        serde_json::json!([
            "turn:[2001:db8::1]:3479?transport=udp",
            "turn:[2001:db8::1]:3479?transport=tcp",
            "turns:[2001:db8::1]:443?transport=tcp"
        ])
    );

    let out = cred(
        &[
            "--json",
            "--uri",
            "turn:a.example:3478",
            "--uri",
            "turns:b.example:443",
        ],
        Some("s"),
    );
    assert_eq!(
        json(&out)["uris"],
        serde_json::json!(["turn:a.example:3478", "turns:b.example:443"])
    );
}

#[test]
fn human_output() {
    let out = cred(&["--user", "bob", "--ttl", "60"], Some("s3"));
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"))
            .to_owned()
    };
    let username = field("username");
    assert!(username.ends_with(":bob"));
    assert_eq!(field("password"), coturn_password("s3", &username));
    assert_eq!(field("ttl"), "60");
    let expires = field("expires");
    assert!(
        expires.len() == 20 && expires.ends_with('Z') && expires.as_bytes()[10] == b'T',
        "{expires}"
    );
    assert!(text.contains("uris:\n  turn:localhost:3478?transport=udp\n"));
}

#[test]
fn errors_are_clear() {
    let out = cred(&["--user", "alice"], None);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no shared secret") && err.contains("TURNPIKE_AUTH_SECRET"),
        "{err}"
    );

    let out = cred(&["--secret", ""], None);
    assert!(!out.status.success());

    for ttl in ["0", "31536001", "abc"] {
        let out = cred(&["--secret", "s", "--ttl", ttl], None);
        assert!(!out.status.success(), "--ttl {ttl} accepted");
        assert!(out.stdout.is_empty());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--ttl"), "{err}");
    }
    let out = cred(&["--secret", "s", "--ttl", "0"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1..=31536000"), "{err}");
}
