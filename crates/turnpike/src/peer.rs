//! `turnpike peer`: the command-line face of `turnpike-peer`. Parses the options, prints the
//! progress lines and the summary (or one JSON object), and maps the outcome to an exit status.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use turnpike_peer::{Event, IceServer, Payload, PeerConfig};

/// Arguments of `turnpike peer`.
#[derive(Debug, Clone, clap::Args)]
pub struct PeerArgs {
    /// The hub's WebSocket URL.
    #[arg(long, value_name = "ws://HOST:PORT/v1/ws")]
    pub signal: String,
    /// The room to join; run the same command on the other side.
    #[arg(long, value_name = "ROOM")]
    pub room: String,
    /// Use relay candidates only (ICE transport policy "relay").
    #[arg(long)]
    pub relay_only: bool,
    /// The text to send (default: "hello from PEER_ID"); the other side echoes it.
    #[arg(long, value_name = "TEXT", conflicts_with = "send_file")]
    pub message: Option<String>,
    /// Send this file; the other side checks its SHA-256 and answers file-ok.
    #[arg(long, value_name = "PATH")]
    pub send_file: Option<PathBuf>,
    /// Give up after this many seconds (joining, waiting for the other peer, connecting,
    /// exchanging).
    #[arg(long, value_name = "SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub timeout: u64,
    /// Use this ICE server instead of the hub's (repeatable): stun:HOST:PORT,
    /// turn:HOST:PORT?transport=udp or turn:USER:PASS@HOST:PORT?transport=udp.
    #[arg(long = "ice-server", value_name = "URL")]
    pub ice_servers: Vec<String>,
    /// TURN username for --ice-server URLs without inline credentials.
    #[arg(long, value_name = "USER")]
    pub ice_username: Option<String>,
    /// TURN password for --ice-server URLs without inline credentials.
    #[arg(
        long,
        value_name = "PASS",
        env = "TURNPIKE_ICE_CREDENTIAL",
        hide_env_values = true
    )]
    pub ice_credential: Option<String>,
    /// Gather host candidates only on this network interface (repeatable; default: all).
    #[arg(long = "interface", value_name = "NAME")]
    pub interfaces: Vec<String>,
    /// Print exactly one JSON object on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
}

fn config(args: &PeerArgs) -> Result<PeerConfig> {
    let mut c = PeerConfig::new(args.signal.clone(), args.room.clone());
    c.relay_only = args.relay_only;
    c.timeout = Duration::from_secs(args.timeout);
    c.payload = match (&args.message, &args.send_file) {
        (Some(m), _) => Payload::Message(m.clone()),
        (None, Some(p)) => Payload::File(p.clone()),
        (None, None) => Payload::Default,
    };
    c.ice_servers = args
        .ice_servers
        .iter()
        .map(|u| {
            IceServer::parse(
                u,
                args.ice_username.as_deref(),
                args.ice_credential.as_deref(),
            )
        })
        .collect::<Result<_, _>>()?;
    c.interfaces = args.interfaces.clone();
    Ok(c)
}

/// Runs `turnpike peer`: exit status 0 when the payload went both ways, 1 otherwise.
pub fn run(args: PeerArgs) -> Result<ExitCode> {
    let config = config(&args)?;
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("turnpike-peer")
        .build()
        .context("cannot start the async runtime")?;
    let json = args.json;
    let started = std::time::Instant::now();
    let mut progress = move |e: Event| {
        let line = format!("peer {:>7.3}s: {e}", started.elapsed().as_secs_f64());
        if json {
            eprintln!("{line}");
        } else {
            println!("{line}");
            let _ = std::io::stdout().flush();
        }
    };
    let outcome = runtime.block_on(turnpike_peer::run(config, &mut progress));
    // The webrtc crate leaves background tasks behind; do not wait for them.
    runtime.shutdown_timeout(Duration::from_millis(200));
    let r = &outcome.report;
    if json {
        println!(
            "{}",
            serde_json::to_string(r).context("cannot encode the report")?
        );
    } else {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        println!("summary:");
        println!("  connected         {}", r.connected);
        if r.connected {
            println!(
                "  path              {} -> {} ({})",
                or_dash(&r.local_candidate_type),
                or_dash(&r.remote_candidate_type),
                or_dash(&r.local_protocol)
            );
        }
        if let Some(ms) = r.setup_ms {
            println!("  setup             {ms} ms");
        }
        if let Some(ms) = r.rtt_ms {
            println!("  round trip        {ms} ms");
        }
        if let Some(ms) = r.transfer_ms {
            println!("  file transfer     {ms} ms");
        }
        println!("  bytes sent        {}", r.bytes_sent);
        println!("  bytes received    {}", r.bytes_received);
    }
    match &outcome.error {
        None => Ok(ExitCode::SUCCESS),
        Some(e) => {
            eprintln!("turnpike peer: error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
