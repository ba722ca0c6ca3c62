//! `mini-responder`: the reference upper bound for the STUN Binding path.
//!
//! One thread, one UDP socket: a blocking `recvmmsg` of up to 32 datagrams,
//! a Binding success response (one XOR-MAPPED-ADDRESS, nothing else) for
//! every datagram whose 20-byte header is a valid Binding request, and one
//! `sendmmsg` for the whole batch. No attribute parsing, no pktinfo, no
//! authentication: whatever a real server does on top of this is its cost.
//!
//! Bounded: exits after `--duration` seconds or on SIGINT/SIGTERM and prints
//! one JSON line with counters on stdout.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use turnpike_bench::sys::{self, MSG_WAITFORONE, MmsgBatch};
use turnpike_bench::{MAX_SUCCESS_LEN, parse_binding_request, write_binding_success};

/// Datagrams per `recvmmsg`/`sendmmsg`.
const BATCH: usize = 32;
/// Receive buffer size per message (longer datagrams are truncated and,
/// their STUN length no longer matching, ignored).
const RECV_SIZE: usize = 2048;

/// Minimal batched STUN Binding responder (reference upper bound).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to bind, e.g. 127.0.0.1:3479.
    #[arg(long)]
    listen: SocketAddr,
    /// Exit after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// SO_RCVBUF/SO_SNDBUF to request, in bytes (capped by net.core.*mem_max).
    #[arg(long, default_value_t = 4 << 20)]
    socket_buffer: usize,
}

/// Final counters, printed as one JSON line.
#[derive(Serialize, Default)]
struct Report {
    listen: String,
    elapsed_s: f64,
    datagrams: u64,
    requests: u64,
    ignored: u64,
    responses_sent: u64,
    send_errors: u64,
    recv_errors: u64,
    recv_calls: u64,
    avg_batch: f64,
    stopped_by: &'static str,
}

fn main() -> Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.duration.is_finite() && args.duration > 0.0,
        "--duration must be positive"
    );
    sys::install_stop_signals().context("installing signal handlers")?;

    let sock = Socket::new(
        Domain::for_address(args.listen),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    // Best effort: a larger buffer only avoids drops under bursts.
    let _ = sock.set_recv_buffer_size(args.socket_buffer);
    let _ = sock.set_send_buffer_size(args.socket_buffer);
    // Wake up regularly to check the deadline even when idle.
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    sock.bind(&args.listen.into())
        .with_context(|| format!("binding {}", args.listen))?;
    let local = sock
        .local_addr()?
        .as_socket()
        .context("local address is not an IP address")?;
    eprintln!("mini-responder: listening on {local}");
    let fd = sock.as_raw_fd();

    let mut rx = MmsgBatch::new(BATCH, RECV_SIZE);
    let mut tx = MmsgBatch::new(BATCH, MAX_SUCCESS_LEN);
    let mut rep = Report {
        listen: local.to_string(),
        ..Report::default()
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    rep.stopped_by = loop {
        if sys::stop_requested() {
            break "signal";
        }
        if Instant::now() >= deadline {
            break "duration";
        }
        let n = match rx.recv(fd, MSG_WAITFORONE, true) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                // E.g. a pending ICMP error on the socket: count and go on.
                eprintln!("mini-responder: recvmmsg: {e}");
                rep.recv_errors += 1;
                continue;
            }
        };
        rep.recv_calls += 1;
        rep.datagrams += n as u64;
        let mut out = 0;
        for i in 0..n {
            let (Some(tid), Some(src)) = (parse_binding_request(rx.received(i)), rx.source(i))
            else {
                rep.ignored += 1;
                continue;
            };
            let len = write_binding_success(&tid, src, tx.buf_mut(out));
            tx.set_len(out, len);
            tx.set_dest(out, Some(src));
            out += 1;
        }
        rep.requests += out as u64;
        let mut done = 0;
        while done < out {
            match tx.send(fd, done..out, 0) {
                Ok(k) => {
                    rep.responses_sent += k as u64;
                    done += k;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    // Drop the message that failed and go on with the rest.
                    rep.send_errors += 1;
                    done += 1;
                }
            }
        }
    };
    rep.elapsed_s = start.elapsed().as_secs_f64();
    rep.avg_batch = if rep.recv_calls > 0 {
        rep.datagrams as f64 / rep.recv_calls as f64
    } else {
        0.0
    };
    println!("{}", serde_json::to_string(&rep)?);
    Ok(())
}
