//! `turnpike nat-check`: classify the local NAT against an RFC 5780 STUN server.

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::json;
use turnpike_natcheck::{LifetimeResult, NatType, Options, Report};

/// Arguments of `turnpike nat-check`.
#[derive(Debug, Clone, clap::Args)]
pub struct NatCheckArgs {
    /// RFC 5780 STUN server: HOST, HOST:PORT, IP, IP:PORT or [IPv6]:PORT (port 3478 by default).
    #[arg(value_name = "SERVER[:PORT]")]
    pub server: String,
    /// A second STUN server, used to test mapping when SERVER cannot do RFC 5780.
    #[arg(value_name = "SERVER2[:PORT]")]
    pub second_server: Option<String>,
    /// Print exactly one JSON object on stdout (nothing else).
    #[arg(long)]
    pub json: bool,
    /// Time limit in seconds for the whole check (each run, with --repeat).
    #[arg(long, default_value_t = 5.0, value_name = "SECS")]
    pub timeout: f64,
    /// Local address to test from (IP or IP:PORT); default: the address that routes to SERVER.
    #[arg(long, value_name = "IP[:PORT]")]
    pub bind: Option<String>,
    /// Also test hairpinning (can a host behind the NAT reach another via the public address?).
    #[arg(long)]
    pub hairpin: bool,
    /// Run the check N times; the verdict stands only if every run agrees.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub repeat: u32,
    /// Also measure how long the NAT keeps an idle UDP binding (takes up to --lifetime-max).
    #[arg(long)]
    pub lifetime: bool,
    /// Longest idle time the binding-lifetime search waits for, in seconds.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub lifetime_max: u64,
}

fn parse_bind(s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let ip: IpAddr = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .with_context(|| format!("--bind {s}: expected IP or IP:PORT"))?;
    Ok(SocketAddr::new(ip, 0))
}

/// One sentence on what the verdict means for WebRTC.
pub fn webrtc_meaning(t: NatType) -> &'static str {
    match t {
        NatType::OpenInternet => {
            "No NAT and no filtering: peers reach this host directly, and WebRTC connects without a relay."
        }
        NatType::Firewall => {
            "No NAT, but a firewall drops unsolicited UDP: ICE still connects directly with most peers, but a peer behind a symmetric NAT will need a TURN relay."
        }
        NatType::FullCone => {
            "The most permissive NAT: WebRTC connects directly with almost any peer."
        }
        NatType::RestrictedCone => {
            "ICE hole punching connects directly with most peers; only peers behind a symmetric NAT may need a TURN relay."
        }
        NatType::PortRestrictedCone => {
            "ICE hole punching connects directly with most peers, but peers behind a symmetric NAT will need a TURN relay."
        }
        NatType::Symmetric => {
            "Peers behind this NAT need a TURN relay when the other side is also symmetric or port-restricted."
        }
        NatType::UdpBlocked => {
            "UDP is blocked: WebRTC can only connect through a TURN relay over TCP or TLS (for example on port 443)."
        }
        NatType::Unknown => {
            "Not enough evidence for a verdict (see the notes); try again, or with a longer --timeout."
        }
    }
}

fn addr(a: Option<SocketAddr>) -> serde_json::Value {
    a.map_or(serde_json::Value::Null, |a| json!(a.to_string()))
}

fn lifetime_json(l: Option<&LifetimeResult>) -> serde_json::Value {
    match l {
        None => serde_json::Value::Null,
        Some(l) => json!({
            "at_least_s": l.at_least.map(|d| d.as_secs()),
            "at_most_s": l.at_most.map(|d| d.as_secs()),
        }),
    }
}

fn lifetime_text(l: &LifetimeResult) -> String {
    match (l.nat, l.at_least, l.at_most) {
        (Some(false), _, _) => "no NAT, nothing expires".to_owned(),
        (_, Some(a), Some(b)) => format!("between {} s and {} s", a.as_secs(), b.as_secs()),
        (_, None, Some(b)) => format!("less than {} s", b.as_secs()),
        (_, Some(a), None) => format!("at least {} s (the search limit)", a.as_secs()),
        _ => "unknown".to_owned(),
    }
}

fn to_json(
    r: &Report,
    runs: &[NatType],
    total: Duration,
    lifetime: Option<&LifetimeResult>,
) -> serde_json::Value {
    let mut v = json!({
        "server": r.server.to_string(),
        "local_address": r.local_address.to_string(),
        "public_address": addr(r.public_address),
        "nat": r.nat,
        "mapping": r.mapping.as_str(),
        "filtering": r.filtering.as_str(),
        "nat_type": r.nat_type.as_str(),
        "hairpinning": r.hairpinning,
        "duration_ms": total.as_millis() as u64,
        "other_address": addr(r.other_address),
        "rfc5780": r.rfc5780,
        "notes": r.notes,
        "binding_lifetime": lifetime_json(lifetime),
    });
    if runs.len() > 1 {
        v["runs"] = json!(runs.iter().map(|t| t.as_str()).collect::<Vec<_>>());
    }
    v
}

fn print_human(r: &Report, runs: &[NatType], total: Duration, lifetime: Option<&LifetimeResult>) {
    let yes_no = |b: Option<bool>, none: &str| match b {
        Some(true) => "yes".to_owned(),
        Some(false) => "no".to_owned(),
        None => none.to_owned(),
    };
    let rfc5780 = match (r.rfc5780, r.other_address) {
        (Some(true), Some(o)) => format!("RFC 5780: yes, other address {o}"),
        (Some(false), _) => "RFC 5780: no".to_owned(),
        _ => "RFC 5780: unknown".to_owned(),
    };
    println!("NAT check against {} ({rfc5780})", r.server);
    let rows = [
        ("local address", r.local_address.to_string()),
        (
            "public address",
            r.public_address
                .map_or("unknown".to_owned(), |a| a.to_string()),
        ),
        ("NAT", yes_no(r.nat, "unknown")),
        ("mapping", r.mapping.as_str().to_owned()),
        ("filtering", r.filtering.as_str().to_owned()),
        ("NAT type", r.nat_type.as_str().to_owned()),
        (
            "hairpinning",
            yes_no(r.hairpinning, "not tested (--hairpin)"),
        ),
        ("time", format!("{:.2} s", total.as_secs_f64())),
    ];
    for (k, v) in rows {
        println!("  {k:<17} {v}");
    }
    if let Some(l) = lifetime {
        println!("  {:<17} {}", "binding lifetime", lifetime_text(l));
    }
    if runs.len() > 1 {
        let list: Vec<&str> = runs.iter().map(|t| t.as_str()).collect();
        println!("  {:<17} {}", "runs", list.join(", "));
    }
    for n in &r.notes {
        println!("  note: {n}");
    }
    println!();
    println!("{}", webrtc_meaning(r.nat_type));
}

/// Runs `turnpike nat-check`; exit status 0 for a definite verdict, 2 otherwise.
pub fn run(args: NatCheckArgs) -> Result<ExitCode> {
    if !(args.timeout > 0.0 && args.timeout <= 600.0) {
        bail!("--timeout must be between 0 and 600 seconds");
    }
    if args.repeat == 0 || args.repeat > 100 {
        bail!("--repeat must be between 1 and 100");
    }
    if args.lifetime_max == 0 || args.lifetime_max > 3600 {
        bail!("--lifetime-max must be between 1 and 3600 seconds");
    }
    let opts = Options {
        server: args.server.clone(),
        second_server: args.second_server.clone(),
        bind: args.bind.as_deref().map(parse_bind).transpose()?,
        hairpin: args.hairpin,
        timeout: Duration::from_secs_f64(args.timeout),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let started = std::time::Instant::now();
    let mut reports = Vec::new();
    for _ in 0..args.repeat {
        let r = runtime
            .block_on(turnpike_natcheck::run(&opts))
            .context("nat-check failed")?;
        reports.push(r);
    }
    let lifetime = if args.lifetime {
        let l = runtime
            .block_on(turnpike_natcheck::run_lifetime(
                &opts,
                Duration::from_secs(args.lifetime_max),
            ))
            .context("binding-lifetime search failed")?;
        Some(l)
    } else {
        None
    };
    let total = started.elapsed();
    let runs: Vec<NatType> = reports.iter().map(|r| r.nat_type).collect();
    let mut report = reports.pop().context("at least one run")?;
    if let Some(l) = &lifetime {
        report.notes.extend(l.notes.iter().cloned());
    }
    if runs.iter().any(|t| *t != runs[0]) {
        report.nat_type = NatType::Unknown;
        report
            .notes
            .push("the runs disagree, so no verdict is given".to_owned());
    }
    if args.json {
        println!("{}", to_json(&report, &runs, total, lifetime.as_ref()));
    } else {
        print_human(&report, &runs, total, lifetime.as_ref());
    }
    if report.nat_type == NatType::Unknown {
        let why = report
            .notes
            .first()
            .map_or("not enough evidence", String::as_str);
        eprintln!("turnpike nat-check: no definite verdict: {why}");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}
