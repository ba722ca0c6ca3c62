//! `turnpike cred`: mint a short-lived TURN credential with the coturn "TURN REST API" formula.
//!
//! `username = "EXPIRY:USER"` (just `"EXPIRY"` without a user), `password =
//! base64(HMAC-SHA1(secret, username))`. Any TURN server sharing the secret (turnpike, coturn
//! with `use-auth-secret`, eturnal) accepts it until EXPIRY.

use std::net::Ipv6Addr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::json;
use turnpike_proto::credential::{rest_password, rest_username};

/// The longest credential lifetime `--ttl` accepts: one year.
pub const MAX_TTL_SECS: u64 = 31_536_000;

/// Arguments of `turnpike cred`.
#[derive(Debug, Clone, clap::Args)]
pub struct CredArgs {
    /// The shared secret (prefer the environment variable: a flag shows up in `ps`).
    #[arg(
        long,
        env = "TURNPIKE_AUTH_SECRET",
        hide_env_values = true,
        value_name = "SECRET"
    )]
    pub secret: Option<String>,
    /// User id put in the username after the expiry; empty for a bare "EXPIRY" username.
    #[arg(long, default_value = "", value_name = "USER")]
    pub user: String,
    /// Lifetime of the credential in seconds (1 to 31536000).
    #[arg(long, default_value_t = 3600, value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..=MAX_TTL_SECS))]
    pub ttl: u64,
    /// Print exactly one JSON object on stdout: {"username","password","ttl","uris"}.
    #[arg(long)]
    pub json: bool,
    /// Host name or IP of the TURN server, for the URIs.
    #[arg(long, default_value = "localhost", value_name = "HOST")]
    pub host: String,
    /// TURN port (UDP and TCP), for the URIs.
    #[arg(long, default_value_t = 3478, value_name = "PORT")]
    pub port: u16,
    /// TURN-over-TLS port: adds a `turns:` URI.
    #[arg(long, value_name = "PORT")]
    pub tls_port: Option<u16>,
    /// Use these URIs instead of building them from --host/--port/--tls-port (repeatable).
    #[arg(long = "uri", value_name = "URL")]
    pub uris: Vec<String>,
}

/// A minted credential, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Minted {
    /// `EXPIRY:USER` or `EXPIRY`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
    /// Lifetime in seconds.
    pub ttl: u64,
    /// Expiry, Unix seconds.
    pub expires: u64,
    /// TURN URIs.
    pub uris: Vec<String>,
}

/// Mints the credential of `args` at `now_unix` with `secret`.
pub fn mint(args: &CredArgs, secret: &[u8], now_unix: u64) -> Minted {
    let expires = now_unix.saturating_add(args.ttl);
    let username = rest_username(expires, &args.user);
    let uris = if args.uris.is_empty() {
        build_uris(&args.host, args.port, args.tls_port)
    } else {
        args.uris.clone()
    };
    Minted {
        password: rest_password(secret, &username),
        username,
        ttl: args.ttl,
        expires,
        uris,
    }
}

/// `turn:` URIs for UDP and TCP on `port`, and a `turns:` URI on `tls_port` if given. IPv6
/// literals are bracketed.
pub fn build_uris(host: &str, port: u16, tls_port: Option<u16>) -> Vec<String> {
    let host = uri_host(host);
    let mut uris = vec![
        format!("turn:{host}:{port}?transport=udp"),
        format!("turn:{host}:{port}?transport=tcp"),
    ];
    if let Some(tls) = tls_port {
        uris.push(format!("turns:{host}:{tls}?transport=tcp"));
    }
    uris
}

fn uri_host(host: &str) -> String {
    if host.parse::<Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// RFC 3339 UTC time (`YYYY-MM-DDTHH:MM:SSZ`) of a Unix time.
pub fn rfc3339_utc(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (after Howard
/// Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097; // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

/// The human-readable output.
pub fn human(m: &Minted) -> String {
    let mut s = format!(
        "username: {}\npassword: {}\nttl: {}\nexpires: {}\nuris:\n",
        m.username,
        m.password,
        m.ttl,
        rfc3339_utc(m.expires)
    );
    for u in &m.uris {
        s.push_str("  ");
        s.push_str(u);
        s.push('\n');
    }
    s
}

/// The `--json` output: one object, no trailing newline.
pub fn to_json(m: &Minted) -> String {
    json!({
        "username": m.username,
        "password": m.password,
        "ttl": m.ttl,
        "uris": m.uris,
    })
    .to_string()
}

/// Runs `turnpike cred`.
pub fn run(args: CredArgs) -> Result<()> {
    let secret = args.secret.as_deref().filter(|s| !s.is_empty()).context(
        "no shared secret: pass --secret SECRET or set TURNPIKE_AUTH_SECRET (preferred: \
         a flag is visible to other users in `ps`)",
    )?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("the system clock is before 1970")?
        .as_secs();
    let minted = mint(&args, secret.as_bytes(), now);
    if args.json {
        println!("{}", to_json(&minted));
    } else {
        print!("{}", human(&minted));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: CredArgs,
    }

    fn args(v: &[&str]) -> CredArgs {
        let mut all = vec!["cred"];
        all.extend_from_slice(v);
        Cli::try_parse_from(all).expect("valid arguments").args
    }

    #[test]
    fn time_formatting() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339_utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339_utc(951_868_799), "2000-02-29T23:59:59Z");
        assert_eq!(rfc3339_utc(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339_utc(4_102_444_800), "2100-01-01T00:00:00Z");
        assert_eq!(rfc3339_utc(4_107_542_400), "2100-03-01T00:00:00Z");
        assert_eq!(rfc3339_utc(253_402_300_799), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn time_formatting_agrees_with_day_counting() {
        // Walk day by day from 1970 and check the date advances like a calendar does.
        let mut prev = (1970u64, 1u64, 1u64);
        for day in 1..200_000u64 {
            let cur = civil_from_days(day);
            let leap = |y: u64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let month_len = match prev.1 {
                2 if leap(prev.0) => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let expected = if prev.2 < month_len {
                (prev.0, prev.1, prev.2 + 1)
            } else if prev.1 < 12 {
                (prev.0, prev.1 + 1, 1)
            } else {
                (prev.0 + 1, 1, 1)
            };
            assert_eq!(cur, expected, "day {day}");
            prev = cur;
        }
    }

    #[test]
    fn uri_building() {
        assert_eq!(
            build_uris("turn.example.net", 3478, None),
            [
                "turn:turn.example.net:3478?transport=udp",
                "turn:turn.example.net:3478?transport=tcp"
            ]
        );
        assert_eq!(
            build_uris("192.0.2.1", 3479, Some(5349)),
            [
                "turn:192.0.2.1:3479?transport=udp",
                "turn:192.0.2.1:3479?transport=tcp",
                "turns:192.0.2.1:5349?transport=tcp"
            ]
        );
        assert_eq!(
            build_uris("2001:db8::1", 3478, Some(443))[2],
            "turns:[2001:db8::1]:443?transport=tcp"
        );
        assert_eq!(
            build_uris("2001:db8::1", 3478, None)[0],
            "turn:[2001:db8::1]:3478?transport=udp"
        );
    }

    #[test]
    fn minting_and_output() {
        let a = args(&["--user", "alice", "--ttl", "300"]);
        let m = mint(&a, b"secret", 1_699_999_700);
        assert_eq!(m.username, "1700000000:alice");
        // echo -n "1700000000:alice" | openssl dgst -sha1 -hmac secret -binary | base64
        assert_eq!(m.password, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
        assert_eq!(m.expires, 1_700_000_000);
        assert_eq!(
            human(&m),
            "username: 1700000000:alice\n\
             password: d8soP47RbdIKLDUOpnJPVQyq5Ts=\n\
             ttl: 300\n\
             expires: 2023-11-14T22:13:20Z\n\
             uris:\n\
             \x20 turn:localhost:3478?transport=udp\n\
             \x20 turn:localhost:3478?transport=tcp\n"
        );
        assert_eq!(
            to_json(&m),
            r#"{"username":"1700000000:alice","password":"d8soP47RbdIKLDUOpnJPVQyq5Ts=","ttl":300,"uris":["turn:localhost:3478?transport=udp","turn:localhost:3478?transport=tcp"]}"#
        );

        // No user: a bare expiry.
        let m = mint(&args(&[]), b"secret", 1_000);
        assert_eq!(m.username, "4600");
        assert_eq!(m.ttl, 3600);

        // Explicit URIs replace the built ones.
        let a = args(&[
            "--uri",
            "turns:a.example:443",
            "--uri",
            "turn:b.example",
            "--host",
            "x",
        ]);
        assert_eq!(
            mint(&a, b"s", 0).uris,
            ["turns:a.example:443", "turn:b.example"]
        );
    }

    #[test]
    fn ttl_range() {
        let bad = |v: &str| Cli::try_parse_from(["cred", "--ttl", v]).is_err();
        assert!(bad("0"));
        assert!(bad("31536001"));
        assert!(bad("-5"));
        assert!(bad("soon"));
        assert!(!bad("1"));
        assert!(!bad("31536000"));
    }
}
