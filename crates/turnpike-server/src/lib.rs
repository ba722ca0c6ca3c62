//! The driver of Turnpike: sockets in, sockets out, the sans-IO core in between.
//!
//! [`Server::start`] binds every listener up front — so a port in use or a bad address fails
//! start-up with a clear error instead of half a server — then runs:
//!
//! * **UDP** ([`udp`]): `udp_workers` shards, each an OS thread running an event loop over its
//!   own `SO_REUSEPORT` socket per listening address and the relay sockets of its TURN
//!   allocations, with its own STUN/TURN core (no async runtime and no lock on this path). The
//!   kernel spreads clients across shards by 4-tuple hash. A shard receives with `recvmmsg`,
//!   answers a whole batch, and sends with `sendmmsg`; replies on wildcard sockets carry
//!   `IP_PKTINFO` so they leave from the address the request arrived at.
//! * **TCP and TLS** ([`tcp`]): STUN and TURN messages back to back on a stream (RFC 8489
//!   §6.2.2), with a connection cap, an idle timeout and a maximum message size; TURN frames
//!   go to the shard that owns the connection's allocation.
//! * **HTTP** ([`http`]): `/healthz` and `/readyz`, the browser demo at `/` ([`demo`]); and
//!   Prometheus `/metrics` on its own address ([`metrics`]).
//!
//! [`RunningServer::shutdown`] stops everything gracefully: `/readyz` turns unready, listeners
//! stop, workers finish their current batch.

pub mod cluster;
pub mod demo;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod proxy;
pub mod rlimit;
pub mod signal;
pub mod tcp;
pub mod udp;
pub mod udp_batch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::sync::watch;
use turnpike_relay_core::StunConfig;
use turnpike_relay_core::turn::{LocalLedger, Quotas, TurnConfig, TurnServer};

pub use metrics::Metrics;

/// Everything the driver needs, already validated (the CLI builds it from flags, file and
/// environment).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Primary STUN listening addresses (UDP and TCP on each).
    pub listen: Vec<SocketAddr>,
    /// The STUN core configuration, including the RFC 5780 address sets. Their addresses that
    /// are not in `listen` are bound as well.
    pub stun: StunConfig,
    /// HTTP address for health endpoints; `None` disables HTTP.
    pub http: Option<SocketAddr>,
    /// Prometheus metrics address; `None` disables it.
    pub metrics: Option<SocketAddr>,
    /// Number of UDP worker threads (at least 1).
    pub udp_workers: usize,
    /// Maximum simultaneous TCP connections (all listeners together).
    pub tcp_max_connections: usize,
    /// Close a TCP connection after this long without a complete message.
    pub tcp_idle_timeout: Duration,
    /// The signaling hub, served on the HTTP address.
    pub signal: signal::SignalConfig,
    /// TURN; `None` serves STUN only.
    pub turn: Option<TurnSettings>,
    /// TLS listeners (STUN and TURN over TLS); `None` for none.
    pub tls: Option<TlsSettings>,
}

/// TURN relay settings.
#[derive(Debug, Clone)]
pub struct TurnSettings {
    /// The core's configuration (credentials, relay addresses, policy, lifetimes, caps).
    pub config: TurnConfig,
    /// Relay port range, inclusive.
    pub ports: (u16, u16),
    /// Allocation quotas (server-wide, per user, per client IP).
    pub quotas: Quotas,
    /// Key that signs nonces (nodes that share it accept each other's nonces).
    pub nonce_secret: [u8; 32],
}

/// TLS listener settings.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// Addresses to accept TLS on.
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
}

impl ServerConfig {
    /// File descriptors the configured limits can use at once: a relay socket per allocation
    /// (two when both IPv4 and IPv6 relays are offered), a socket per TCP/TLS client, the
    /// `--http` listener's connections (1024 plus a WebSocket per hub connection), the
    /// `--metrics` listener's 1024, and 256 for listeners, Redis and the runtime.
    pub fn open_files_needed(&self) -> u64 {
        let relays = self.turn.as_ref().map_or(0, |t| {
            let per =
                u64::from(t.config.relay_v4.is_some()) + u64::from(t.config.relay_v6.is_some());
            t.quotas.total as u64 * per.max(1)
        });
        let http = self.http.map_or(0, |_| self.http_capacity() as u64);
        let metrics = self
            .metrics
            .map_or(0, |_| http::MAX_HTTP_CONNECTIONS as u64);
        relays + self.tcp_max_connections as u64 + http + metrics + 256
    }

    /// Connections the `--http` listener serves at once: its own 1024 plus a WebSocket per
    /// hub connection (an upgraded socket keeps its slot).
    pub fn http_capacity(&self) -> usize {
        http::MAX_HTTP_CONNECTIONS + self.signal.hub.max_connections
    }

    /// Every STUN address to bind: the `listen` addresses, then the extra RFC 5780 ones.
    pub fn stun_addresses(&self) -> Vec<SocketAddr> {
        let mut all = self.listen.clone();
        for set in [&self.stun.discovery_v4, &self.stun.discovery_v6]
            .into_iter()
            .flatten()
        {
            for a in set.addresses() {
                if !all.contains(&a) {
                    all.push(a);
                }
            }
        }
        all
    }
}

/// Shared state between the parts of a running server.
#[derive(Debug)]
pub struct Shared {
    /// Counters.
    pub metrics: Metrics,
    /// Whether the server accepts traffic (false once shutdown starts).
    pub ready: AtomicBool,
    /// Set when a part of the server stopped unexpectedly (a UDP worker or listener died);
    /// `/readyz` then reports unready with the reason.
    pub failure: std::sync::Mutex<Option<String>>,
    /// TURN is draining: no new allocations; `/readyz` reports it.
    pub draining: AtomicBool,
}

impl Shared {
    /// Records that a part of the server failed; `/readyz` turns unready.
    pub fn fail(&self, what: String) {
        tracing::error!(failure = %what, "server component failed");
        // A poisoned lock only means another thread panicked while holding it; the
        // Option inside is still valid.
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        f.get_or_insert(what);
    }

    /// The first recorded failure, if any.
    pub fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A started server.
pub struct RunningServer {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    udp_stop: Arc<AtomicBool>,
    udp: Vec<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    addresses: Vec<SocketAddr>,
    tls_addresses: Vec<SocketAddr>,
    http: Option<SocketAddr>,
    metrics: Option<SocketAddr>,
}

/// Entry point.
pub struct Server;

impl Server {
    /// Binds every listener and starts serving. Must be called inside a multi-threaded tokio
    /// runtime (TCP and HTTP run there; UDP workers get their own threads).
    pub async fn start(config: ServerConfig) -> Result<RunningServer> {
        let shared = Arc::new(Shared {
            metrics: Metrics::default(),
            ready: AtomicBool::new(false),
            failure: std::sync::Mutex::new(None),
            draining: AtomicBool::new(false),
        });
        let (tx, rx) = watch::channel(false);
        let addresses = config.stun_addresses();
        // Make room for every socket the limits allow, and say so when the host's limit is
        // too low.
        let needed = config.open_files_needed();
        match rlimit::raise_nofile() {
            Ok(n) if n < needed => tracing::warn!(
                open_files = n,
                needed,
                "the open-file limit is lower than the configured allocations and connections \
                 need; raise it (LimitNOFILE= under systemd, ulimit -n) or lower \
                 --max-allocations, --tcp-max-connections or --hub-max-connections"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read or raise the open-file limit"),
        }

        // Bind everything first, so any error stops start-up before anything runs.
        // TCP first: its bind has no SO_REUSEPORT, so another server on the same port is
        // caught before any UDP socket (which several workers share via SO_REUSEPORT) binds.
        let tcp_listeners = tcp::bind_all(&addresses)?;
        let (tls_listeners, acceptor) = match &config.tls {
            Some(t) => (
                tcp::bind_all(&t.listen)?,
                Some(tcp::tls_acceptor(&t.cert, &t.key)?),
            ),
            None => (Vec::new(), None),
        };
        let tls_addresses = tls_listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<std::io::Result<Vec<SocketAddr>>>()?;
        // Port 0 was resolved by the TCP listener; UDP takes the same port.
        let addresses = tcp_listeners
            .iter()
            .map(|l| l.local_addr())
            .collect::<std::io::Result<Vec<SocketAddr>>>()?;
        let udp_sockets = udp::bind_all(&addresses, config.udp_workers)?;
        let http_listener = match config.http {
            Some(a) => Some(bind_tcp(a, "HTTP (--http)").await?),
            None => None,
        };
        let metrics_listener = match config.metrics {
            Some(a) => Some(bind_tcp(a, "metrics (--metrics)").await?),
            None => None,
        };
        let http = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
        let metrics = metrics_listener
            .as_ref()
            .map(|l| l.local_addr())
            .transpose()?;

        let udp_stop = Arc::new(AtomicBool::new(false));
        let ledger =
            ledger::SharedLedger::new(config.turn.as_ref().map(|t| t.quotas).unwrap_or_default());
        let cores = (0..udp_sockets.len())
            .map(|i| make_core(&config, i, &ledger))
            .collect::<Vec<_>>();
        let (udp, shard_handles) =
            udp::spawn_shards(udp_sockets, cores, shared.clone(), udp_stop.clone())?;
        let mut tasks = tcp::spawn(
            tcp_listeners,
            tls_listeners,
            acceptor,
            &config,
            Arc::new(shard_handles),
            shared.clone(),
            rx.clone(),
        );
        if let Some(l) = http_listener {
            let (hub, hub_task) = signal::spawn(config.signal.clone(), shared.clone(), rx.clone())?;
            tasks.extend(hub_task);
            tasks.push(tokio::spawn(http::serve_health(
                l,
                shared.clone(),
                Some(hub),
                config.http_capacity(),
                http::PerIpCap {
                    max: config.signal.hub.max_connections_per_ip
                        + http::HTTP_EXTRA_CONNECTIONS_PER_IP,
                    exempt: config.signal.trusted_proxies.clone().into(),
                },
                rx.clone(),
            )));
        }
        if let Some(l) = metrics_listener {
            tasks.push(tokio::spawn(http::serve_metrics(
                l,
                shared.clone(),
                rx.clone(),
            )));
        }
        shared.ready.store(true, Ordering::SeqCst);
        tracing::info!(
            stun = ?addresses,
            tls = ?tls_addresses,
            turn = config.turn.is_some(),
            http = ?http,
            metrics = ?metrics,
            udp_workers = config.udp_workers,
            "turnpike ready"
        );
        Ok(RunningServer {
            shared,
            shutdown: tx,
            udp_stop,
            udp,
            tasks,
            addresses,
            tls_addresses,
            http,
            metrics,
        })
    }
}

/// The core of shard `index`. Every shard holds a handle on the same `ledger`.
fn make_core(
    config: &ServerConfig,
    index: usize,
    ledger: &Arc<ledger::SharedLedger>,
) -> udp::ShardTurn {
    match &config.turn {
        Some(t) => {
            let mut core = t.config.clone();
            // Distinct transaction-id streams per shard.
            core.seed = core
                .seed
                .wrapping_add(index as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15);
            udp::ShardTurn {
                core: TurnServer::new(
                    config.stun.clone(),
                    core,
                    t.nonce_secret,
                    Box::new(ledger::LedgerHandle(ledger.clone())),
                ),
                ports: t.ports,
            }
        }
        None => udp::ShardTurn {
            // No relay address: the core answers STUN only.
            core: TurnServer::new(
                config.stun.clone(),
                TurnConfig::default(),
                [0; 32],
                Box::new(LocalLedger::new(Quotas::default())),
            ),
            ports: (49152, 65535),
        },
    }
}

async fn bind_tcp(addr: SocketAddr, what: &str) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| bind_error(e, addr, what))
        .with_context(|| format!("cannot start the {what} listener"))
}

/// A bind error that says what to do about it.
pub(crate) fn bind_error(e: std::io::Error, addr: SocketAddr, what: &str) -> anyhow::Error {
    let hint = match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            "another process (another STUN/TURN server?) already uses this port; stop it or choose another address"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            "this IP address is not configured on any interface of this host"
        }
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need root or CAP_NET_BIND_SERVICE"
        }
        _ => "check the address",
    };
    anyhow::anyhow!("cannot bind {what} on {addr}: {e} ({hint})")
}

impl RunningServer {
    /// Shared state (metrics, readiness).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The STUN addresses served (UDP and TCP).
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// Starts draining: new TURN allocations are refused (300 Try Alternate or 508), existing
    /// ones keep working, and `/readyz` reports `draining` so load balancers stop sending new
    /// clients. Call [`RunningServer::shutdown`] when [`RunningServer::allocations`] reaches
    /// zero or a deadline passes.
    pub fn drain(&self) {
        self.shared.draining.store(true, Ordering::SeqCst);
    }

    /// Live TURN allocations on all shards (as last published, at most 100 ms old).
    pub fn allocations(&self) -> usize {
        self.shared
            .metrics
            .shards
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|s| s.allocations)
            .sum()
    }

    /// The TLS addresses served.
    pub fn tls_addresses(&self) -> &[SocketAddr] {
        &self.tls_addresses
    }

    /// The bound HTTP address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// Stops accepting traffic, lets workers finish their current batch, and waits (at most
    /// `grace`) for everything to end.
    pub async fn shutdown(self, grace: Duration) {
        self.shared.ready.store(false, Ordering::SeqCst);
        let _ = self.shutdown.send(true);
        self.udp_stop.store(true, Ordering::SeqCst);
        let tasks = async {
            for t in self.tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(grace, tasks).await.is_err() {
            tracing::warn!(
                ?grace,
                "some connections did not close in time; dropping them"
            );
        }
        let udp = self.udp;
        let _ = tokio::task::spawn_blocking(move || {
            for t in udp {
                let _ = t.join();
            }
        })
        .await;
        tracing::info!("turnpike stopped");
    }
}

/// Resolves once shutdown has been signalled (or the sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    // The guard returned by wait_for is dropped here, keeping callers' futures Send.
    let _ = rx.wait_for(|stop| *stop).await;
}
