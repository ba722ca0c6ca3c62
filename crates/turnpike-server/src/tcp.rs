//! STUN and TURN over TCP and TLS: messages back to back on the stream (RFC 8489 §6.2.2),
//! ChannelData padded to four bytes (RFC 8656 §12.5).
//!
//! Binding requests are answered by the connection task itself; TURN requests, Send
//! indications and ChannelData go to the UDP shard that owns the connection's allocation
//! (chosen by hashing the 5-tuple), whose replies and relayed data come back through a bounded
//! queue. A connection with an allocation is kept while TURN traffic flows; when it closes,
//! its allocation is deleted (RFC 8656 §3.1).
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

use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use turnpike_relay_core::turn::ClientKey;
use turnpike_relay_core::{Action, DropReason, Incoming, StunServer, Transport};

use crate::metrics::LocalCounters;
use crate::udp::{Command, ShardHandle, shard_for};
use crate::{ServerConfig, Shared};

/// Largest STUN message or ChannelData frame accepted on a stream.
pub const MAX_MESSAGE: usize = 4096;
/// How long a TLS handshake may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Replies and relayed data queued for one stream client before more are dropped.
const CLIENT_QUEUE: usize = 256;

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
            .map_err(|e| crate::bind_error(e, addr, "STUN/TURN over TCP"))?;
        out.push(sock.into());
    }
    Ok(out)
}

/// What every connection task of one server shares.
#[derive(Clone)]
struct ConnContext {
    core: StunServer,
    shards: Arc<Vec<ShardHandle>>,
    turn: bool,
    idle: Duration,
    turn_idle: Duration,
    shared: Arc<Shared>,
    permits: Arc<Semaphore>,
    tls: Option<TlsAcceptor>,
}

/// Loads a PEM certificate chain and private key into a TLS acceptor (TLS 1.2 and 1.3).
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor> {
    let certs = {
        let pem = std::fs::read(cert)
            .with_context(|| format!("cannot read the certificate file {}", cert.display()))?;
        rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{} is not a PEM certificate chain", cert.display()))?
    };
    if certs.is_empty() {
        anyhow::bail!(
            "{} holds no certificate (expected PEM \"BEGIN CERTIFICATE\")",
            cert.display()
        );
    }
    let key = {
        let pem = std::fs::read(key)
            .with_context(|| format!("cannot read the private key file {}", key.display()))?;
        rustls_pemfile::private_key(&mut pem.as_slice())
            .with_context(|| format!("{} is not a PEM private key", key.display()))?
            .with_context(|| format!("{} holds no private key", key.display()))?
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS set-up failed")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and the private key do not match or are unsupported")?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Spawns the accept loops: plain TCP on `listeners`, TLS on `tls_listeners` with `acceptor`.
pub fn spawn(
    listeners: Vec<std::net::TcpListener>,
    tls_listeners: Vec<std::net::TcpListener>,
    acceptor: Option<TlsAcceptor>,
    config: &ServerConfig,
    shards: Arc<Vec<ShardHandle>>,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let turn_idle = config
        .turn
        .as_ref()
        .map(|t| Duration::from_secs(u64::from(t.config.max_lifetime) + 60))
        .unwrap_or_default()
        .max(config.tcp_idle_timeout);
    let base = ConnContext {
        core: StunServer::new(config.stun.clone()),
        shards,
        turn: config.turn.is_some(),
        idle: config.tcp_idle_timeout,
        turn_idle,
        shared,
        permits: Arc::new(Semaphore::new(config.tcp_max_connections.max(1))),
        tls: None,
    };
    let mut tasks = Vec::new();
    let all = listeners
        .into_iter()
        .map(|l| (l, None))
        .chain(tls_listeners.into_iter().map(|l| (l, acceptor.clone())));
    for (l, tls) in all {
        let listener = match TcpListener::from_std(l) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot register TCP listener");
                continue;
            }
        };
        let ctx = ConnContext {
            tls,
            ..base.clone()
        };
        tasks.push(tokio::spawn(accept_loop(listener, ctx, shutdown.clone())));
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

async fn accept_loop(listener: TcpListener, ctx: ConnContext, mut shutdown: watch::Receiver<bool>) {
    loop {
        let (stream, remote) = tokio::select! {
            _ = crate::stopped(&mut shutdown) => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Usually EMFILE: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Pending TLS handshakes hold a slot too, so a handshake flood is capped.
        let Ok(permit) = ctx.permits.clone().try_acquire_owned() else {
            ctx.shared.metrics.tcp_rejected.fetch_add(1, Relaxed);
            tracing::debug!("TCP connection cap reached; closing a new connection");
            drop(stream);
            continue;
        };
        ctx.shared.metrics.tcp_accepted.fetch_add(1, Relaxed);
        let guard = ActiveGuard::new(ctx.shared.clone(), permit);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let Ok(local) = stream.local_addr() else {
                return;
            };
            let _ = stream.set_nodelay(true);
            match ctx.tls.clone() {
                None => serve_connection(stream, local, remote, ctx, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(tls)) => serve_connection(tls, local, remote, ctx, shutdown).await,
                        Ok(Err(e)) => {
                            ctx.shared
                                .metrics
                                .tls_handshake_failures
                                .fetch_add(1, Relaxed);
                            tracing::debug!(error = %e, %remote, "TLS handshake failed");
                        }
                        Err(_) => {
                            ctx.shared
                                .metrics
                                .tls_handshake_failures
                                .fetch_add(1, Relaxed);
                            tracing::debug!(%remote, "TLS handshake timed out");
                        }
                    }
                }
            }
            drop(guard);
        });
    }
}

/// The length of the frame at the start of `pending`: a STUN message (header + body) or a
/// ChannelData message padded to four bytes. `None` until 4 bytes are there; `Err` for a first
/// byte that is neither.
fn frame_len(pending: &[u8]) -> Option<Result<usize, ()>> {
    if pending.len() < 4 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([pending[2], pending[3]]));
    Some(match pending[0] {
        0x00..=0x3F => Ok(turnpike_proto::HEADER_LEN + len),
        0x40..=0x7F => Ok(4 + len.next_multiple_of(4)),
        _ => Err(()),
    })
}

/// Whether a frame goes to the TURN shard: ChannelData and the TURN methods.
fn is_turn_frame(frame: &[u8]) -> bool {
    if frame[0] & 0xC0 == 0x40 {
        return true;
    }
    let (method, _) = turnpike_proto::split_message_type(u16::from_be_bytes([frame[0], frame[1]]));
    use turnpike_proto::method as m;
    matches!(
        method,
        m::ALLOCATE | m::REFRESH | m::SEND | m::CREATE_PERMISSION | m::CHANNEL_BIND
    )
}

async fn serve_connection<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    local: SocketAddr,
    remote: SocketAddr,
    mut ctx: ConnContext,
    mut shutdown: watch::Receiver<bool>,
) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let shared = ctx.shared.clone();
    let client = ClientKey {
        transport: Transport::Tcp,
        local,
        remote,
    };
    let shard = if ctx.turn {
        shard_for(&ctx.shards, &client).cloned()
    } else {
        None
    };
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(CLIENT_QUEUE);
    let mut used_turn = false;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut filled = 0;
    let mut out = Vec::with_capacity(2 * MAX_MESSAGE);
    let mut counters = LocalCounters::default();
    // The idle deadline moves only when a complete message arrives (or, once the client uses
    // TURN, relayed data leaves), so a peer that trickles bytes without ever finishing a
    // message (slowloris) is still closed on time.
    let mut deadline = tokio::time::Instant::now() + ctx.idle;
    'conn: loop {
        // Answer every complete message already buffered.
        let mut consumed = 0;
        // Set when the stream cannot continue (not STUN, or a message over the limit); the
        // replies already computed are still sent first.
        let mut close = false;
        out.clear();
        loop {
            let pending = &buf[consumed..filled];
            let len = match frame_len(pending) {
                None => break,
                Some(Err(())) => {
                    counters.drop(
                        Transport::Tcp,
                        DropReason::Parse(turnpike_proto::ParseError::NotStun),
                    );
                    close = true;
                    break;
                }
                Some(Ok(len)) => len,
            };
            if len > MAX_MESSAGE {
                counters.drop(Transport::Tcp, DropReason::Oversize);
                close = true;
                break;
            }
            if pending.len() < len {
                break;
            }
            let frame = &pending[..len];
            if let Some(shard) = shard.as_ref().filter(|_| is_turn_frame(frame)) {
                used_turn = true;
                let sent = shard.send(Command::Message {
                    client,
                    data: frame.to_vec(),
                    reply: tx.clone(),
                });
                if !sent {
                    shared.metrics.stream_command_drops.fetch_add(1, Relaxed);
                }
            } else {
                let reply_start = out.len();
                let outcome = ctx.core.handle(
                    Incoming {
                        transport: Transport::Tcp,
                        local,
                        remote,
                        data: frame,
                    },
                    &mut out,
                );
                counters.count(Transport::Tcp, &outcome);
                if !matches!(outcome.action, Action::Reply { .. }) {
                    out.truncate(reply_start);
                }
            }
            consumed += len;
        }
        counters.flush(&shared.metrics);
        let idle = if used_turn { ctx.turn_idle } else { ctx.idle };
        if consumed > 0 {
            deadline = tokio::time::Instant::now() + idle;
        }
        // A peer that stops reading must not pin the connection slot: writes share the deadline.
        if !out.is_empty() {
            match tokio::time::timeout_at(deadline, writer.write_all(&out)).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break 'conn,
                Err(_) => {
                    shared.metrics.tcp_idle_closed.fetch_add(1, Relaxed);
                    break 'conn;
                }
            }
        }
        if close {
            break 'conn;
        }
        buf.copy_within(consumed..filled, 0);
        filled -= consumed;

        loop {
            tokio::select! {
                _ = crate::stopped(&mut shutdown) => break 'conn,
                r = tokio::time::timeout_at(deadline, reader.read(&mut buf[filled..])) => match r {
                    Err(_) => {
                        shared.metrics.tcp_idle_closed.fetch_add(1, Relaxed);
                        tracing::debug!("TCP connection idle; closing");
                        break 'conn;
                    }
                    Ok(Ok(0)) | Ok(Err(_)) => break 'conn,
                    Ok(Ok(n)) => {
                        filled += n;
                        continue 'conn;
                    }
                },
                Some(bytes) = rx.recv() => {
                    deadline = tokio::time::Instant::now() + ctx.turn_idle;
                    match tokio::time::timeout_at(deadline, writer.write_all(&bytes)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => break 'conn,
                        Err(_) => {
                            shared.metrics.tcp_idle_closed.fetch_add(1, Relaxed);
                            break 'conn;
                        }
                    }
                }
            }
        }
    }
    let _ = writer.shutdown().await;
    if used_turn && let Some(shard) = shard {
        // Deletes the allocation at once; if the queue is full it expires with its lifetime.
        if !shard.send(Command::Closed { client }) {
            shared.metrics.stream_command_drops.fetch_add(1, Relaxed);
        }
    }
}
