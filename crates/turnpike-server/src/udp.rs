//! UDP workers: one OS thread per worker, one `SO_REUSEPORT` socket per address per worker.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use turnpike_relay_core::{Action, DropReason, Incoming, StunConfig, StunServer, Transport};

use crate::Shared;
use crate::metrics::LocalCounters;
use crate::udp_batch::{RecvBatch, SendBatch, bind_udp, recv_batch, send_batch};

/// Datagrams received (and replies sent) per system call.
pub const BATCH: usize = 32;
/// Largest datagram accepted; larger ones are dropped as `oversize`.
pub const MAX_DATAGRAM: usize = 4096;
/// Largest reply: the amplification bound allows up to twice the request.
const MAX_REPLY: usize = 2 * MAX_DATAGRAM;

/// Sockets for all workers: `result[worker]` holds one socket per address, in address order.
pub type WorkerSockets = Vec<Vec<(SocketAddr, std::net::UdpSocket)>>;

/// Binds one socket per address for each of `workers` workers. A port of 0 is resolved by the
/// first worker's socket and reused by the others.
pub fn bind_all(addresses: &[SocketAddr], workers: usize) -> Result<WorkerSockets> {
    let workers = workers.max(1);
    let reuse_port = workers > 1;
    let mut all: WorkerSockets = (0..workers).map(|_| Vec::new()).collect();
    for &addr in addresses {
        let mut resolved = addr;
        for (w, sockets) in all.iter_mut().enumerate() {
            let sock = bind_udp(resolved, reuse_port)
                .map_err(|e| crate::bind_error(e, resolved, "STUN over UDP"))
                .with_context(|| format!("UDP worker {w}"))?;
            if w == 0 {
                resolved = sock.local_addr()?;
            }
            sockets.push((resolved, sock));
        }
    }
    Ok(all)
}

/// Starts one thread per worker.
pub fn spawn_workers(
    sockets: WorkerSockets,
    stun: &StunConfig,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) -> Result<Vec<std::thread::JoinHandle<()>>> {
    let mut handles = Vec::new();
    for (w, socks) in sockets.into_iter().enumerate() {
        let core = StunServer::new(stun.clone());
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let handle = std::thread::Builder::new()
            .name(format!("turnpike-udp-{w}"))
            .spawn(move || run_worker(w, socks, core, shared, shutdown))
            .context("cannot start a UDP worker thread")?;
        handles.push(handle);
    }
    Ok(handles)
}

fn run_worker(
    worker: usize,
    sockets: Vec<(SocketAddr, std::net::UdpSocket)>,
    core: StunServer,
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            shared.fail(format!(
                "UDP worker {worker} could not start its runtime: {e}"
            ));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let mut socks = Vec::new();
        for (addr, s) in sockets {
            match UdpSocket::from_std(s) {
                Ok(s) => socks.push((addr, s)),
                Err(e) => {
                    shared.fail(format!(
                        "UDP worker {worker} could not register {addr}: {e}"
                    ));
                    return;
                }
            }
        }
        let socks = Rc::new(socks);
        let mut tasks = Vec::new();
        for i in 0..socks.len() {
            tasks.push(tokio::task::spawn_local(serve_socket(
                i,
                socks.clone(),
                core.clone(),
                shared.clone(),
                shutdown.clone(),
            )));
        }
        for t in tasks {
            if let Err(e) = t.await {
                shared.fail(format!("UDP worker {worker} task failed: {e}"));
            }
        }
    });
}

async fn serve_socket(
    index: usize,
    socks: Rc<Vec<(SocketAddr, UdpSocket)>>,
    mut core: StunServer,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (bound, sock) = &socks[index];
    let bound = *bound;
    let wildcard = bound.ip().is_unspecified();
    let mut recv = RecvBatch::new(BATCH, MAX_DATAGRAM);
    let mut send = SendBatch::new(BATCH, MAX_REPLY);
    let mut out = Vec::with_capacity(MAX_REPLY);
    let mut counters = LocalCounters::default();
    loop {
        tokio::select! {
            biased;
            _ = crate::stopped(&mut shutdown) => break,
            r = sock.readable() => {
                if let Err(e) = r {
                    shared.fail(format!("UDP socket {bound} failed: {e}"));
                    break;
                }
            }
        }
        match sock.try_io(Interest::READABLE, || recv_batch(sock, &mut recv)) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                // ICMP errors surface here on some kernels; they concern one peer, not us.
                tracing::debug!(%bound, error = %e, "UDP receive error");
                continue;
            }
        }
        for (meta, data) in recv.iter() {
            if meta.truncated {
                counters.drop(Transport::Udp, DropReason::Oversize);
                continue;
            }
            let local = match (wildcard, meta.dst_ip) {
                (true, Some(ip)) => SocketAddr::new(ip, bound.port()),
                _ => bound,
            };
            out.clear();
            let outcome = core.handle(
                Incoming {
                    transport: Transport::Udp,
                    local,
                    remote: meta.src,
                    data,
                },
                &mut out,
            );
            counters.count(Transport::Udp, &outcome);
            let Action::Reply { from, to, .. } = outcome.action else {
                continue;
            };
            if from == local {
                if send.is_full() {
                    flush(sock, &mut send, &shared).await;
                }
                let src_ip = wildcard.then(|| local.ip());
                if !send.push(to, src_ip, &out) {
                    shared
                        .metrics
                        .udp_send_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            } else if let Some((_, other)) = socks.iter().find(|(a, _)| *a == from) {
                // RFC 5780 CHANGE-REQUEST: answer from another of our sockets (rare path).
                if other.try_send_to(&out, to).is_err() {
                    shared
                        .metrics
                        .udp_send_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            } else {
                // Unreachable by construction: the core only picks addresses of the AddressSet,
                // and every one of them is bound. Count it rather than log per packet.
                shared
                    .metrics
                    .udp_send_errors
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        flush(sock, &mut send, &shared).await;
        counters.flush(&shared.metrics);
    }
    flush(sock, &mut send, &shared).await;
    counters.flush(&shared.metrics);
}

async fn flush(sock: &UdpSocket, batch: &mut SendBatch, shared: &Shared) {
    let mut start = 0;
    while start < batch.len() {
        match sock.try_io(Interest::WRITABLE, || send_batch(sock, batch, start)) {
            Ok(p) => {
                if p.failed > 0 {
                    shared
                        .metrics
                        .udp_send_errors
                        .fetch_add(p.failed as u64, std::sync::atomic::Ordering::Relaxed);
                }
                start = p.next;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if sock.writable().await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "UDP send failed");
                shared.metrics.udp_send_errors.fetch_add(
                    (batch.len() - start) as u64,
                    std::sync::atomic::Ordering::Relaxed,
                );
                break;
            }
        }
    }
    batch.clear();
}
