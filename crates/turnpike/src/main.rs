//! `turnpike`: STUN/TURN relay, WebRTC signaling hub and NAT diagnosis in one binary.

mod config;
mod cred;
mod natcheck;
mod peer;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use config::{LogFormat, ServeArgs, Settings};

/// Turnpike: a WebRTC connectivity server (STUN/TURN, signaling, NAT diagnosis).
#[derive(Debug, Parser)]
#[command(name = "turnpike", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: STUN and TURN on UDP, TCP and TLS, the signaling hub and web demo, health and metrics endpoints.
    Serve(Box<ServeArgs>),
    /// Classify this host's NAT (mapping, filtering, classic type) against an RFC 5780 server.
    NatCheck(natcheck::NatCheckArgs),
    /// Mint a short-lived TURN credential (coturn "TURN REST API" formula) from a shared secret.
    Cred(cred::CredArgs),
    /// Join a room on a signaling hub, connect to the other peer over WebRTC, report the path.
    Peer(Box<peer::PeerArgs>),
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// SIGTERM and SIGINT, listened to from start-up on: a signal that arrives while the server
/// is busy between two waits (say, starting a drain) is kept for the next wait, not lost.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

fn serve(args: ServeArgs) -> Result<()> {
    let settings = Settings::load(&args)?;
    // Logs go to stderr and start before validation: its warnings (say, TURN off for lack of a
    // relay IP) must reach the operator, with --print-config too.
    init_logging(settings.log_format);
    // Validate before printing, so --print-config never shows a configuration serve rejects.
    let config = settings.server_config()?;
    if args.print_config {
        print!("{}", settings.to_toml()?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("turnpike")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let mut signals = Signals::new()?;
        let server = turnpike_server::Server::start(config).await?;
        let signal = signals.next().await;
        if settings.drain {
            // Drain: no new allocations, /readyz unready; stop when the last allocation is
            // gone, at the deadline, or on a second signal. Workers publish their allocation
            // counts every 100 ms: wait for a count that includes every Allocate granted
            // before the drain began, or an allocation made just before the signal would be
            // cut off.
            server.drain();
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        if settings.drain && server.allocations() > 0 {
            let deadline = Duration::from_secs(settings.drain_timeout);
            tracing::info!(
                signal,
                allocations = server.allocations(),
                deadline_secs = settings.drain_timeout,
                "draining: refusing new allocations until the existing ones end"
            );
            let until_empty = async {
                while server.allocations() > 0 {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            };
            tokio::select! {
                _ = until_empty => tracing::info!("drained: no allocations left"),
                _ = tokio::time::sleep(deadline) => tracing::warn!(
                    allocations = server.allocations(),
                    "drain deadline passed; stopping with allocations left"
                ),
                s = signals.next() => tracing::info!(signal = s, "second signal: stopping now"),
            }
        }
        tracing::info!(signal, "shutting down");
        server.shutdown(Duration::from_secs(5)).await;
        Ok(())
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match serve(*args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("turnpike: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::NatCheck(args) => match natcheck::run(args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("turnpike nat-check: error: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Cred(args) => match cred::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("turnpike cred: error: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Peer(args) => match peer::run(*args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("turnpike peer: error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}
