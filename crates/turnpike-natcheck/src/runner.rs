//! The UDP driver for [`NatCheck`]: sockets, clock, randomness.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;

use crate::probe::{Config, Locals, NatCheck, Report, SocketId, Timing};

/// What `turnpike nat-check` asked for.
#[derive(Debug, Clone)]
pub struct Options {
    /// `HOST[:PORT]` of an RFC 5780 STUN server (port 3478 by default).
    pub server: String,
    /// A second server, for the mapping test when the first cannot do RFC 5780.
    pub second_server: Option<String>,
    /// Local address for the mapping socket (`IP` or `IP:PORT`); the others use the same IP.
    pub bind: Option<SocketAddr>,
    /// Also test hairpinning.
    pub hairpin: bool,
    /// Time limit for the whole check.
    pub timeout: Duration,
}

/// Why the check could not run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatCheckError {
    /// The server name did not resolve.
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, String),
    /// No route to the server from this host.
    #[error("no local address can reach {0}: {1}")]
    NoRoute(SocketAddr, std::io::Error),
    /// A local socket could not be bound.
    #[error("cannot bind a UDP socket on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// `--bind` names an address of the other family than the server.
    #[error("--bind {0} is not of the same address family as the server {1}")]
    Family(SocketAddr, SocketAddr),
}

/// Resolves `HOST[:PORT]`, `IPv4[:PORT]` or `[IPv6][:PORT]` (default port 3478).
pub async fn resolve(spec: &str) -> Result<SocketAddr, NatCheckError> {
    if let Ok(a) = spec.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = spec
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 3478));
    }
    let with_port = if spec
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        spec.to_owned()
    } else {
        format!("{spec}:3478")
    };
    let mut addrs = tokio::net::lookup_host(&with_port)
        .await
        .map_err(|e| NatCheckError::Resolve(spec.to_owned(), e.to_string()))?;
    addrs
        .next()
        .ok_or_else(|| NatCheckError::Resolve(spec.to_owned(), "no address".to_owned()))
}

/// The local IP the kernel would use towards `server` (a connected UDP socket sends nothing).
fn route_ip(server: SocketAddr) -> Result<IpAddr, NatCheckError> {
    let any: SocketAddr = match server {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = std::net::UdpSocket::bind(any).map_err(|e| NatCheckError::Bind(any, e))?;
    s.connect(server)
        .map_err(|e| NatCheckError::NoRoute(server, e))?;
    let ip = s
        .local_addr()
        .map_err(|e| NatCheckError::NoRoute(server, e))?
        .ip();
    Ok(ip)
}

async fn bind(addr: SocketAddr) -> Result<(UdpSocket, SocketAddr), NatCheckError> {
    let s = UdpSocket::bind(addr)
        .await
        .map_err(|e| NatCheckError::Bind(addr, e))?;
    let local = s.local_addr().map_err(|e| NatCheckError::Bind(addr, e))?;
    Ok((s, local))
}

async fn recv(sock: Option<&UdpSocket>, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await.ok(),
        None => std::future::pending().await,
    }
}

/// Runs one check against `opts.server`.
pub async fn run(opts: &Options) -> Result<Report, NatCheckError> {
    let server = resolve(&opts.server).await?;
    let second = match &opts.second_server {
        Some(s) => Some(resolve(s).await?),
        None => None,
    };
    let ip = match opts.bind {
        Some(b) if b.is_ipv4() != server.is_ipv4() => return Err(NatCheckError::Family(b, server)),
        Some(b) if !b.ip().is_unspecified() => b.ip(),
        _ => route_ip(server)?,
    };
    let first = SocketAddr::new(ip, opts.bind.map_or(0, |b| b.port()));
    let (mapping, mapping_local) = bind(first).await?;
    let (filter_ip, filter_ip_local) = bind(SocketAddr::new(ip, 0)).await?;
    let (filter_port, filter_port_local) = bind(SocketAddr::new(ip, 0)).await?;
    let hairpin = match opts.hairpin {
        true => Some(bind(SocketAddr::new(ip, 0)).await?),
        false => None,
    };
    let locals = Locals {
        mapping: mapping_local,
        filter_ip: filter_ip_local,
        filter_port: filter_port_local,
        hairpin: hairpin.as_ref().map(|h| h.1),
    };
    let hairpin = hairpin.map(|h| h.0);
    let config = Config {
        server,
        second_server: second,
        timing: Timing {
            deadline: opts.timeout,
            ..Timing::default()
        },
    };
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id()).rotate_left(32);
    let mut check = NatCheck::new(config, locals, Instant::now(), seed);
    let mut bufs = [[0u8; 1500]; 4];
    loop {
        while let Some(t) = check.poll_transmit() {
            let sock = match t.socket {
                SocketId::Mapping => Some(&mapping),
                SocketId::FilterIp => Some(&filter_ip),
                SocketId::FilterPort => Some(&filter_port),
                SocketId::Hairpin => hairpin.as_ref(),
            };
            if let Some(s) = sock {
                // A failed send is indistinguishable from loss; the sequencer retransmits.
                let _ = s.send_to(&t.payload, t.to).await;
            }
        }
        if let Some(report) = check.poll_report() {
            return Ok(report);
        }
        let wake = check
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(10));
        let [b0, b1, b2, b3] = &mut bufs;
        tokio::select! {
            r = recv(Some(&mapping), b0) => if let Some((n, from)) = r {
                check.handle_datagram(Instant::now(), SocketId::Mapping, from, &b0[..n]);
            },
            r = recv(Some(&filter_ip), b1) => if let Some((n, from)) = r {
                check.handle_datagram(Instant::now(), SocketId::FilterIp, from, &b1[..n]);
            },
            r = recv(Some(&filter_port), b2) => if let Some((n, from)) = r {
                check.handle_datagram(Instant::now(), SocketId::FilterPort, from, &b2[..n]);
            },
            r = recv(hairpin.as_ref(), b3) => if let Some((n, from)) = r {
                check.handle_datagram(Instant::now(), SocketId::Hairpin, from, &b3[..n]);
            },
            _ = tokio::time::sleep_until(wake.into()) => check.handle_timeout(Instant::now()),
        }
    }
}

/// Runs the binding-lifetime search against `opts.server`, waiting at most `max` (plus the
/// silence window) before it answers.
pub async fn run_lifetime(
    opts: &Options,
    max: Duration,
) -> Result<crate::LifetimeResult, NatCheckError> {
    use crate::lifetime::LifetimeSearch;

    let server = resolve(&opts.server).await?;
    let ip = match opts.bind {
        Some(b) if b.is_ipv4() != server.is_ipv4() => return Err(NatCheckError::Family(b, server)),
        Some(b) if !b.ip().is_unspecified() => b.ip(),
        _ => route_ip(server)?,
    };
    let steps = crate::lifetime::steps_up_to(max);
    let mut sockets = Vec::new();
    for _ in 0..=steps.len() {
        let (s, local) = bind(SocketAddr::new(ip, 0)).await?;
        sockets.push((std::sync::Arc::new(s), local));
    }
    let held: Vec<SocketAddr> = sockets.iter().skip(1).map(|(_, l)| *l).collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(usize, SocketAddr, Vec<u8>)>(256);
    let mut readers = Vec::new();
    for (i, (s, _)) in sockets.iter().enumerate() {
        let (s, tx) = (s.clone(), tx.clone());
        readers.push(tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = s.recv_from(&mut buf).await {
                if tx.send((i, from, buf[..n].to_vec())).await.is_err() {
                    break;
                }
            }
        }));
    }
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        .rotate_left(17);
    let mut search = LifetimeSearch::new(
        server,
        &held,
        &steps,
        Timing::default(),
        Instant::now(),
        seed,
    );
    let result = loop {
        while let Some(t) = search.poll_transmit() {
            if let Some((s, _)) = sockets.get(t.socket) {
                let _ = s.send_to(&t.payload, t.to).await;
            }
        }
        if let Some(r) = search.poll_result() {
            break r;
        }
        let wake = search
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + Duration::from_millis(10));
        tokio::select! {
            m = rx.recv() => if let Some((i, from, data)) = m {
                search.handle_datagram(Instant::now(), i, from, &data);
            },
            _ = tokio::time::sleep_until(wake.into()) => search.handle_timeout(Instant::now()),
        }
    };
    for r in readers {
        r.abort();
    }
    Ok(result)
}
