//! STUN over TCP: messages back to back on the stream (RFC 8489 §6.2.2).
//!
//! Each connection reads into a bounded buffer, cuts complete messages by their length field
//! (partial reads just wait for more), answers them in order, and closes on a non-STUN byte, a
//! message over [`MAX_MESSAGE`] bytes, or [`ServerConfig::tcp_idle_timeout`] without a complete
//! message (trickled partial messages do not count as activity, and a peer that stops reading
//! our replies is closed at the same deadline). A semaphore caps connections across all listeners; connections over the cap are
//! closed at once and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::Result;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use turnpike_proto::view::stream_frame_len;
use turnpike_relay_core::{Action, DropReason, Incoming, StunServer, Transport};

use crate::metrics::LocalCounters;
use crate::{ServerConfig, Shared};

/// Largest STUN message accepted on a stream.
pub const MAX_MESSAGE: usize = 4096;

/// Binds a TCP listener on every address.
pub fn bind_all(addresses: &[SocketAddr]) -> Result<Vec<std::net::TcpListener>> {
    let mut out = Vec::new();
    for &addr in addresses {
        let domain = socket2::Domain::for_address(addr);
        let sock =
            socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        sock.set_reuse_address(true)?;
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())
            .and_then(|()| sock.listen(1024))
            .map_err(|e| crate::bind_error(e, addr, "STUN over TCP"))?;
        out.push(sock.into());
    }
    Ok(out)
}

/// Spawns the accept loops.
pub fn spawn(
    listeners: Vec<std::net::TcpListener>,
    config: &ServerConfig,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let permits = Arc::new(Semaphore::new(config.tcp_max_connections.max(1)));
    let mut tasks = Vec::new();
    for l in listeners {
        let listener = match TcpListener::from_std(l) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register TCP listener");
                continue;
            }
        };
        let core = StunServer::new(config.stun.clone());
        tasks.push(tokio::spawn(accept_loop(
            listener,
            core,
            permits.clone(),
            config.tcp_idle_timeout,
            shared.clone(),
            shutdown.clone(),
        )));
    }
    tasks
}

/// Holds a connection slot and the active-connections gauge; releases both on drop, even if
/// the connection task panics.
struct ActiveGuard {
    shared: Arc<Shared>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl ActiveGuard {
    fn new(shared: Arc<Shared>, permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        shared.metrics.tcp_active.fetch_add(1, Relaxed);
        ActiveGuard {
            shared,
            _permit: permit,
        }
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.shared.metrics.tcp_active.fetch_sub(1, Relaxed);
    }
}

async fn accept_loop(
    listener: TcpListener,
    core: StunServer,
    permits: Arc<Semaphore>,
    idle: std::time::Duration,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, remote) = tokio::select! {
            _ = crate::stopped(&mut shutdown) => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            shared.metrics.tcp_rejected.fetch_add(1, Relaxed);
            tracing::debug!("TCP connection cap reached; closing a new connection");
            drop(stream);
            continue;
        };
        shared.metrics.tcp_accepted.fetch_add(1, Relaxed);
        let guard = ActiveGuard::new(shared.clone(), permit);
        let core = core.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            serve_connection(stream, remote, core, idle, &guard.shared, shutdown).await;
            drop(guard);
        });
    }
}

async fn serve_connection(
    mut stream: TcpStream,
    remote: SocketAddr,
    mut core: StunServer,
    idle: std::time::Duration,
    shared: &Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut filled = 0;
    let mut out = Vec::with_capacity(2 * MAX_MESSAGE);
    let mut counters = LocalCounters::default();
    // The idle deadline moves only when a complete message arrives, so a peer that trickles
    // bytes without ever finishing a message (slowloris) is still closed on time.
    let mut deadline = tokio::time::Instant::now() + idle;
    loop {
        // Answer every complete message already buffered.
        let mut consumed = 0;
        // Set when the stream cannot continue (not STUN, or a message over the limit); the
        // replies already computed are still sent first.
        let mut close = false;
        out.clear();
        loop {
            let pending = &buf[consumed..filled];
            if let Some(&first) = pending.first() {
                if first & 0xC0 != 0 {
                    counters.drop(
                        Transport::Tcp,
                        DropReason::Parse(turnpike_proto::ParseError::NotStun),
                    );
                    close = true;
                    break;
                }
            }
            let Some(len) = stream_frame_len(pending) else {
                break;
            };
            if len > MAX_MESSAGE {
                counters.drop(Transport::Tcp, DropReason::Oversize);
                close = true;
                break;
            }
            if pending.len() < len {
                break;
            }
            let reply_start = out.len();
            let outcome = core.handle(
                Incoming {
                    transport: Transport::Tcp,
                    local,
                    remote,
                    data: &pending[..len],
                },
                &mut out,
            );
            counters.count(Transport::Tcp, &outcome);
            if !matches!(outcome.action, Action::Reply { .. }) {
                out.truncate(reply_start);
            }
            consumed += len;
        }
        counters.flush(&shared.metrics);
        if consumed > 0 {
            deadline = tokio::time::Instant::now() + idle;
        }
        // A peer that stops reading must not pin the connection slot: writes share the deadline.
        if !out.is_empty() {
            match tokio::time::timeout_at(deadline, stream.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    shared.metrics.tcp_idle_closed.fetch_add(1, Relaxed);
                    return;
                }
            }
        }
        if close {
            return;
        }
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;

        let read = tokio::select! {
            _ = crate::stopped(&mut shutdown) => return,
            r = tokio::time::timeout_at(deadline, stream.read(&mut buf[filled..])) => r,
        };
        match read {
            Err(_) => {
                shared.metrics.tcp_idle_closed.fetch_add(1, Relaxed);
                tracing::debug!("TCP connection idle; closing");
                return;
            }
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => filled += n,
        }
    }
}
