//! `turnpike serve` configuration: built-in defaults < TOML file (`--config`) < `TURNPIKE_*`
//! environment < command-line flags.
//!
//! clap handles the last two layers (a flag wins over its environment variable); this module
//! reads the file, merges, validates, and turns the result into the driver's
//! [`turnpike_server::ServerConfig`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use turnpike_relay_core::{AddressSet, StunConfig};
use turnpike_server::ServerConfig;

/// Prints a Redis URL with any password replaced by `***`.
fn serialize_redacted_url<S: serde::Serializer>(
    url: &Option<String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let shown = url.as_deref().map(redact_url);
    match shown {
        Some(u) => s.serialize_some(&u),
        None => s.serialize_none(),
    }
}

/// `redis://user:secret@host` → `redis://user:***@host`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or("", |(u, _)| u);
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

/// An address that can be switched off: `IP:PORT` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// Disabled.
    Off,
    /// Listen here.
    At(SocketAddr),
}

impl Endpoint {
    fn addr(self) -> Option<SocketAddr> {
        match self {
            Endpoint::Off => None,
            Endpoint::At(a) => Some(a),
        }
    }
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(Endpoint::Off);
        }
        s.parse()
            .map(Endpoint::At)
            .map_err(|_| format!("`{s}` is not IP:PORT or `off` (IPv6: [::1]:8080)"))
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Off => f.write_str("off"),
            Endpoint::At(a) => a.fmt(f),
        }
    }
}

impl Serialize for Endpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The file layer: every key optional, unknown keys rejected (with file line and column).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<Vec<SocketAddr>>,
    alternate_ip: Option<Vec<IpAddr>>,
    alternate_port: Option<u16>,
    http: Option<Endpoint>,
    metrics: Option<Endpoint>,
    software: Option<String>,
    log_format: Option<LogFormat>,
    udp_workers: Option<usize>,
    tcp_max_connections: Option<usize>,
    tcp_idle_timeout: Option<u64>,
    hub_secret: Option<String>,
    allowed_origin: Option<Vec<String>>,
    ice_ttl: Option<u64>,
    hub_max_message_bytes: Option<usize>,
    hub_messages_per_second: Option<u32>,
    hub_message_burst: Option<u32>,
    hub_max_peers_per_room: Option<usize>,
    hub_max_rooms: Option<usize>,
    hub_max_connections: Option<usize>,
    hub_max_connections_per_ip: Option<usize>,
    hub_keepalive_timeout: Option<u64>,
    hub_resume_window: Option<u64>,
    hub_replay_cap: Option<usize>,
    trusted_proxy: Option<Vec<String>>,
    redis: Option<String>,
    redis_prefix: Option<String>,
    redis_node_timeout: Option<u64>,
    realm: Option<String>,
    user: Option<Vec<String>>,
    auth_secret: Option<Vec<String>>,
    relay_ip: Option<Vec<IpAddr>>,
    relay_ports: Option<PortRange>,
    external_ip: Option<Vec<ExternalIp>>,
    tls_listen: Option<Vec<SocketAddr>>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    allow_peer: Option<Vec<Cidr>>,
    deny_peer: Option<Vec<Cidr>>,
    max_allocations: Option<usize>,
    user_quota: Option<usize>,
    ip_quota: Option<usize>,
    max_permissions: Option<usize>,
    max_channels: Option<usize>,
    turn_url: Option<Vec<String>>,
    stun_url: Option<Vec<String>>,
    drain: Option<bool>,
    drain_timeout: Option<u64>,
    alternate_server: Option<SocketAddr>,
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read configuration file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid configuration file {}", path.display()))
    }

    /// Parses TOML text.
    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// The flag/environment layer, as parsed by clap.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (see config/turnpike.toml for every key).
    #[arg(long, env = "TURNPIKE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// STUN listening address, UDP and TCP (repeatable) [default: 0.0.0.0:3478].
    #[arg(
        long,
        env = "TURNPIKE_LISTEN",
        value_name = "IP:PORT",
        value_delimiter = ','
    )]
    pub listen: Vec<SocketAddr>,
    /// Second IP for RFC 5780 NAT-behaviour discovery; at most one per address family, paired
    /// with the first --listen address of its family (repeatable).
    #[arg(
        long,
        env = "TURNPIKE_ALTERNATE_IP",
        value_name = "IP",
        value_delimiter = ','
    )]
    pub alternate_ip: Vec<IpAddr>,
    /// Second port for RFC 5780 [default: primary port + 1].
    #[arg(long, env = "TURNPIKE_ALTERNATE_PORT", value_name = "PORT")]
    pub alternate_port: Option<u16>,
    /// HTTP address for /healthz and /readyz, or `off` [default: 0.0.0.0:8080].
    #[arg(long, env = "TURNPIKE_HTTP", value_name = "IP:PORT|off")]
    pub http: Option<Endpoint>,
    /// Prometheus metrics address (/metrics), or `off` [default: 127.0.0.1:9090].
    #[arg(long, env = "TURNPIKE_METRICS", value_name = "IP:PORT|off")]
    pub metrics: Option<Endpoint>,
    /// SOFTWARE attribute to send in responses [default: none].
    #[arg(long, env = "TURNPIKE_SOFTWARE", value_name = "NAME")]
    pub software: Option<String>,
    /// Log format [default: pretty].
    #[arg(long, env = "TURNPIKE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// UDP worker threads, each with its own SO_REUSEPORT sockets; 0 = one per CPU [default: 0].
    #[arg(long, env = "TURNPIKE_UDP_WORKERS", value_name = "N")]
    pub udp_workers: Option<usize>,
    /// Maximum simultaneous STUN TCP connections [default: 10000].
    #[arg(long, env = "TURNPIKE_TCP_MAX_CONNECTIONS", value_name = "N")]
    pub tcp_max_connections: Option<usize>,
    /// Seconds a STUN TCP connection may go without sending a complete message before it is
    /// closed [default: 300].
    #[arg(long, env = "TURNPIKE_TCP_IDLE_TIMEOUT", value_name = "SECS")]
    pub tcp_idle_timeout: Option<u64>,
    /// Secret for the signaling hub: with it, `join` needs an HS256 JWT signed with it
    /// [default: none, the hub is open].
    #[arg(
        long,
        env = "TURNPIKE_HUB_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub hub_secret: Option<String>,
    /// Browser origin allowed to open the signaling WebSocket (repeatable) [default: any].
    #[arg(
        long,
        env = "TURNPIKE_ALLOWED_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origin: Vec<String>,
    /// Lifetime in seconds of the ICE credentials the hub hands out [default: 300].
    #[arg(long, env = "TURNPIKE_ICE_TTL", value_name = "SECS")]
    pub ice_ttl: Option<u64>,
    /// Largest signaling message in bytes [default: 65536].
    #[arg(long, env = "TURNPIKE_HUB_MAX_MESSAGE_BYTES", value_name = "N")]
    pub hub_max_message_bytes: Option<usize>,
    /// Sustained signaling messages per second per connection [default: 50].
    #[arg(long, env = "TURNPIKE_HUB_MESSAGES_PER_SECOND", value_name = "N")]
    pub hub_messages_per_second: Option<u32>,
    /// Signaling messages a connection may send in a burst [default: 100].
    #[arg(long, env = "TURNPIKE_HUB_MESSAGE_BURST", value_name = "N")]
    pub hub_message_burst: Option<u32>,
    /// Peers per signaling room [default: 16].
    #[arg(long, env = "TURNPIKE_HUB_MAX_PEERS_PER_ROOM", value_name = "N")]
    pub hub_max_peers_per_room: Option<usize>,
    /// Signaling rooms [default: 10000].
    #[arg(long, env = "TURNPIKE_HUB_MAX_ROOMS", value_name = "N")]
    pub hub_max_rooms: Option<usize>,
    /// Signaling WebSocket connections in total [default: 10000].
    #[arg(long, env = "TURNPIKE_HUB_MAX_CONNECTIONS", value_name = "N")]
    pub hub_max_connections: Option<usize>,
    /// Signaling WebSocket connections per client IP [default: 64].
    #[arg(long, env = "TURNPIKE_HUB_MAX_CONNECTIONS_PER_IP", value_name = "N")]
    pub hub_max_connections_per_ip: Option<usize>,
    /// Seconds a signaling connection may send nothing before it is closed [default: 60].
    #[arg(long, env = "TURNPIKE_HUB_KEEPALIVE_TIMEOUT", value_name = "N")]
    pub hub_keepalive_timeout: Option<u64>,
    /// Seconds a dropped signaling session is kept for resume [default: 30].
    #[arg(long, env = "TURNPIKE_HUB_RESUME_WINDOW", value_name = "N")]
    pub hub_resume_window: Option<u64>,
    /// Messages kept per signaling session for replay on resume [default: 256].
    #[arg(long, env = "TURNPIKE_HUB_REPLAY_CAP", value_name = "N")]
    pub hub_replay_cap: Option<usize>,
    /// Network of HTTP reverse proxies in front of the hub, `CIDR` or a bare IP (repeatable):
    /// for requests from them the client address comes from `X-Forwarded-For`, and the
    /// per-IP limit counts that address [default: none, the header is ignored].
    #[arg(
        long,
        env = "TURNPIKE_TRUSTED_PROXY",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<String>,
    /// Run the hub as one node of a cluster sharing rooms through this Redis
    /// (`redis://[USER:PASSWORD@]HOST:PORT[/DB]`) [default: none: rooms live in this process].
    #[arg(
        long,
        env = "TURNPIKE_REDIS",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis: Option<String>,
    /// Prefix of the hub's Redis keys and channels (clusters sharing one Redis need different
    /// prefixes) [default: turnpike:].
    #[arg(long, env = "TURNPIKE_REDIS_PREFIX", value_name = "PREFIX")]
    pub redis_prefix: Option<String>,
    /// Seconds without a heartbeat after which a hub node counts as dead and its sessions
    /// enter the resume window [default: 10].
    #[arg(long, env = "TURNPIKE_REDIS_NODE_TIMEOUT", value_name = "N")]
    pub redis_node_timeout: Option<u64>,
    /// TURN realm (REALM attribute; part of the long-term key) [default: turnpike].
    #[arg(long, env = "TURNPIKE_REALM", value_name = "REALM")]
    pub realm: Option<String>,
    /// Static TURN user `NAME:PASSWORD`, or `NAME:0xKEY` with the hex MD5 long-term key
    /// (coturn's pre-hashed form) (repeatable) [default: none].
    #[arg(
        long,
        env = "TURNPIKE_USER",
        value_name = "NAME:PASSWORD",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub user: Vec<String>,
    /// Shared secret of the coturn "TURN REST API" (use-auth-secret); repeatable for rotation
    /// [default: a random secret, shared with the hub].
    #[arg(
        long,
        env = "TURNPIKE_AUTH_SECRET",
        value_name = "SECRET",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub auth_secret: Vec<String>,
    /// IP that relay sockets bind to, at most one per address family (repeatable)
    /// [default: the first listening address of that family; for a wildcard, the address of
    /// the default route].
    #[arg(
        long,
        env = "TURNPIKE_RELAY_IP",
        value_name = "IP",
        value_delimiter = ','
    )]
    pub relay_ip: Vec<IpAddr>,
    /// Relay port range [default: 49152-65535].
    #[arg(long, env = "TURNPIKE_RELAY_PORTS", value_name = "MIN-MAX")]
    pub relay_ports: Option<PortRange>,
    /// Public IP to advertise for relayed addresses when behind a 1:1 NAT: `PUBLIC` or
    /// `PUBLIC/PRIVATE` (the relay IP it maps to); at most one per family (repeatable).
    #[arg(
        long,
        env = "TURNPIKE_EXTERNAL_IP",
        value_name = "PUBLIC[/PRIVATE]",
        value_delimiter = ','
    )]
    pub external_ip: Vec<ExternalIp>,
    /// TLS listening address for STUN/TURN over TLS (repeatable) [default: port 5349 on each
    /// --listen IP when --cert and --key are given].
    #[arg(
        long,
        env = "TURNPIKE_TLS_LISTEN",
        value_name = "IP:PORT",
        value_delimiter = ','
    )]
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for TLS.
    #[arg(long, env = "TURNPIKE_CERT", value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long, env = "TURNPIKE_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Peer network to allow even inside a denied range (repeatable; wins over denials).
    #[arg(
        long,
        env = "TURNPIKE_ALLOW_PEER",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub allow_peer: Vec<Cidr>,
    /// Peer network to deny in addition to the built-in ranges (repeatable).
    #[arg(
        long,
        env = "TURNPIKE_DENY_PEER",
        value_name = "CIDR",
        value_delimiter = ','
    )]
    pub deny_peer: Vec<Cidr>,
    /// TURN allocations on the whole server [default: 10000].
    #[arg(long, env = "TURNPIKE_MAX_ALLOCATIONS", value_name = "N")]
    pub max_allocations: Option<usize>,
    /// TURN allocations per user; 0 = unlimited [default: 0].
    #[arg(long, env = "TURNPIKE_USER_QUOTA", value_name = "N")]
    pub user_quota: Option<usize>,
    /// TURN allocations per client IP; 0 = unlimited [default: 64].
    #[arg(long, env = "TURNPIKE_IP_QUOTA", value_name = "N")]
    pub ip_quota: Option<usize>,
    /// Permissions per TURN allocation [default: 64].
    #[arg(long, env = "TURNPIKE_MAX_PERMISSIONS", value_name = "N")]
    pub max_permissions: Option<usize>,
    /// Channel bindings per TURN allocation [default: 64].
    #[arg(long, env = "TURNPIKE_MAX_CHANNELS", value_name = "N")]
    pub max_channels: Option<usize>,
    /// TURN URL the hub hands out instead of this server's own (repeatable; `{host}` is the
    /// host the client used), e.g. for a fleet of TURN nodes sharing --auth-secret.
    #[arg(
        long,
        env = "TURNPIKE_TURN_URL",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub turn_url: Vec<String>,
    /// STUN URL the hub hands out instead of this server's own (repeatable; `{host}` is the
    /// host the client used), e.g. when clients reach STUN under another name or port.
    #[arg(
        long,
        env = "TURNPIKE_STUN_URL",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub stun_url: Vec<String>,
    /// On SIGTERM/SIGINT, drain first: refuse new TURN allocations, report draining on
    /// /readyz, and stop when the last allocation ends or --drain-timeout passes.
    #[arg(long, env = "TURNPIKE_DRAIN")]
    pub drain: bool,
    /// Longest drain in seconds [default: 600].
    #[arg(long, env = "TURNPIKE_DRAIN_TIMEOUT", value_name = "SECS")]
    pub drain_timeout: Option<u64>,
    /// TURN server to send new clients to while draining (300 Try Alternate with
    /// ALTERNATE-SERVER) [default: none, they get 508].
    #[arg(long, env = "TURNPIKE_ALTERNATE_SERVER", value_name = "IP:PORT")]
    pub alternate_server: Option<SocketAddr>,
    /// Print the merged configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// A relay port range `MIN-MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange(pub u16, pub u16);

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a port range MIN-MAX (e.g. 49152-65535)");
        let (a, b) = s.trim().split_once('-').ok_or_else(bad)?;
        let (a, b): (u16, u16) = (
            a.trim().parse().map_err(|_| bad())?,
            b.trim().parse().map_err(|_| bad())?,
        );
        if a == 0 || a > b {
            return Err(format!(
                "relay port range `{s}`: MIN must be at least 1 and not above MAX"
            ));
        }
        Ok(PortRange(a, b))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0, self.1)
    }
}

/// `--external-ip PUBLIC[/PRIVATE]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExternalIp {
    /// The public address clients see.
    pub public: IpAddr,
    /// The local relay IP it maps to (`None`: the relay IP of the same family).
    pub private: Option<IpAddr>,
}

impl FromStr for ExternalIp {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not PUBLIC or PUBLIC/PRIVATE (IP addresses)");
        let (public, private) = match s.trim().split_once('/') {
            Some((a, b)) => (
                a.parse().map_err(|_| bad())?,
                Some(b.parse().map_err(|_| bad())?),
            ),
            None => (s.trim().parse().map_err(|_| bad())?, None),
        };
        let e = ExternalIp { public, private };
        if e.private
            .is_some_and(|p: IpAddr| p.is_ipv4() != public.is_ipv4())
        {
            return Err(format!(
                "--external-ip {s}: both addresses must be of the same family"
            ));
        }
        Ok(e)
    }
}

impl fmt::Display for ExternalIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.private {
            Some(p) => write!(f, "{}/{p}", self.public),
            None => write!(f, "{}", self.public),
        }
    }
}

macro_rules! serde_via_str {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
serde_via_str!(PortRange);
serde_via_str!(ExternalIp);

/// A peer network (`--allow-peer` / `--deny-peer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub turnpike_relay_core::policy::Cidr);

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.parse()
            .map(Cidr)
            .map_err(|e: turnpike_relay_core::policy::CidrError| e.to_string())
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
serde_via_str!(Cidr);

/// The merged configuration (what `--print-config` shows).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// STUN listening addresses.
    pub listen: Vec<SocketAddr>,
    /// RFC 5780 alternate IPs.
    pub alternate_ip: Vec<IpAddr>,
    /// RFC 5780 alternate port (`None`: primary + 1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternate_port: Option<u16>,
    /// HTTP endpoint.
    pub http: Endpoint,
    /// Metrics endpoint.
    pub metrics: Endpoint,
    /// SOFTWARE text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub software: Option<String>,
    /// Log format.
    pub log_format: LogFormat,
    /// UDP workers (0 = one per CPU).
    pub udp_workers: usize,
    /// TCP connection cap.
    pub tcp_max_connections: usize,
    /// TCP idle timeout, seconds.
    pub tcp_idle_timeout: u64,
    /// Hub secret (never printed).
    #[serde(skip_serializing)]
    pub hub_secret: Option<String>,
    /// Allowed browser origins for the signaling WebSocket.
    pub allowed_origin: Vec<String>,
    /// ICE credential lifetime, seconds.
    pub ice_ttl: u64,
    /// Largest signaling message in bytes.
    pub hub_max_message_bytes: usize,
    /// Sustained signaling messages per second per connection.
    pub hub_messages_per_second: u32,
    /// Signaling messages a connection may send in a burst.
    pub hub_message_burst: u32,
    /// Peers per signaling room.
    pub hub_max_peers_per_room: usize,
    /// Signaling rooms.
    pub hub_max_rooms: usize,
    /// Signaling WebSocket connections in total.
    pub hub_max_connections: usize,
    /// Signaling WebSocket connections per client IP.
    pub hub_max_connections_per_ip: usize,
    /// Seconds a signaling connection may send nothing before it is closed.
    pub hub_keepalive_timeout: u64,
    /// Seconds a dropped signaling session is kept for resume.
    pub hub_resume_window: u64,
    /// Messages kept per signaling session for replay on resume.
    pub hub_replay_cap: usize,
    /// Networks of trusted HTTP reverse proxies (client address from `X-Forwarded-For`).
    pub trusted_proxy: Vec<String>,
    /// Redis URL of the hub cluster (printed without its password).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_redacted_url"
    )]
    pub redis: Option<String>,
    /// Prefix of the hub's Redis keys.
    pub redis_prefix: String,
    /// Seconds without a heartbeat before a hub node counts as dead.
    pub redis_node_timeout: u64,
    /// TURN realm.
    pub realm: String,
    /// Static users (never printed: they hold passwords).
    #[serde(skip_serializing)]
    pub user: Vec<String>,
    /// REST API shared secrets (never printed).
    #[serde(skip_serializing)]
    pub auth_secret: Vec<String>,
    /// Relay IPs (empty: derived from `listen`).
    pub relay_ip: Vec<IpAddr>,
    /// Relay port range.
    pub relay_ports: PortRange,
    /// Advertised public IPs.
    pub external_ip: Vec<ExternalIp>,
    /// TLS listening addresses (empty: port 5349 on each listen IP when a certificate is set).
    pub tls_listen: Vec<SocketAddr>,
    /// TLS certificate chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// TLS private key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Peer networks allowed despite the built-in denials.
    pub allow_peer: Vec<Cidr>,
    /// Extra denied peer networks.
    pub deny_peer: Vec<Cidr>,
    /// Allocations on the whole server.
    pub max_allocations: usize,
    /// Allocations per user (0 = unlimited).
    pub user_quota: usize,
    /// Allocations per client IP (0 = unlimited).
    pub ip_quota: usize,
    /// Permissions per allocation.
    pub max_permissions: usize,
    /// Channel bindings per allocation.
    pub max_channels: usize,
    /// TURN URLs the hub hands out instead of this server's own.
    pub turn_url: Vec<String>,
    /// STUN URLs the hub hands out instead of this server's own.
    pub stun_url: Vec<String>,
    /// Drain before stopping.
    pub drain: bool,
    /// Longest drain, seconds.
    pub drain_timeout: u64,
    /// Where to send new clients while draining.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alternate_server: Option<SocketAddr>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 3478))],
            alternate_ip: Vec::new(),
            alternate_port: None,
            http: Endpoint::At(SocketAddr::from(([0, 0, 0, 0], 8080))),
            metrics: Endpoint::At(SocketAddr::from(([127, 0, 0, 1], 9090))),
            software: None,
            log_format: LogFormat::Pretty,
            udp_workers: 0,
            tcp_max_connections: 10_000,
            tcp_idle_timeout: 300,
            hub_secret: None,
            allowed_origin: Vec::new(),
            ice_ttl: 300,
            hub_max_message_bytes: 65536,
            hub_messages_per_second: 50,
            hub_message_burst: 100,
            hub_max_peers_per_room: 16,
            hub_max_rooms: 10000,
            hub_max_connections: 10000,
            hub_max_connections_per_ip: 64,
            hub_keepalive_timeout: 60,
            hub_resume_window: 30,
            hub_replay_cap: 256,
            trusted_proxy: Vec::new(),
            redis: None,
            redis_prefix: "turnpike:".to_owned(),
            redis_node_timeout: 10,
            realm: "turnpike".to_owned(),
            user: Vec::new(),
            auth_secret: Vec::new(),
            relay_ip: Vec::new(),
            relay_ports: PortRange(49152, 65535),
            external_ip: Vec::new(),
            tls_listen: Vec::new(),
            cert: None,
            key: None,
            allow_peer: Vec::new(),
            deny_peer: Vec::new(),
            max_allocations: 10_000,
            user_quota: 0,
            ip_quota: 64,
            max_permissions: 64,
            max_channels: 64,
            turn_url: Vec::new(),
            stun_url: Vec::new(),
            drain: false,
            drain_timeout: 600,
            alternate_server: None,
        }
    }
}

impl Settings {
    /// Merges defaults, the file named by `--config` (if any), and the flags/environment.
    pub fn load(args: &ServeArgs) -> Result<Self> {
        let file = match &args.config {
            Some(p) => FileConfig::load(p)?,
            None => FileConfig::default(),
        };
        Ok(Self::merge(file, args))
    }

    /// Merges the layers.
    pub fn merge(file: FileConfig, args: &ServeArgs) -> Self {
        let d = Settings::default();
        fn nonempty<T: Clone>(v: &[T]) -> Option<Vec<T>> {
            (!v.is_empty()).then(|| v.to_vec())
        }
        Settings {
            listen: nonempty(&args.listen).or(file.listen).unwrap_or(d.listen),
            alternate_ip: nonempty(&args.alternate_ip)
                .or(file.alternate_ip)
                .unwrap_or(d.alternate_ip),
            alternate_port: args.alternate_port.or(file.alternate_port),
            http: args.http.or(file.http).unwrap_or(d.http),
            metrics: args.metrics.or(file.metrics).unwrap_or(d.metrics),
            software: args
                .software
                .clone()
                .or(file.software)
                .filter(|s| !s.is_empty()),
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
            udp_workers: args
                .udp_workers
                .or(file.udp_workers)
                .unwrap_or(d.udp_workers),
            tcp_max_connections: args
                .tcp_max_connections
                .or(file.tcp_max_connections)
                .unwrap_or(d.tcp_max_connections),
            tcp_idle_timeout: args
                .tcp_idle_timeout
                .or(file.tcp_idle_timeout)
                .unwrap_or(d.tcp_idle_timeout),
            hub_secret: args
                .hub_secret
                .clone()
                .or(file.hub_secret)
                .filter(|s| !s.is_empty()),
            allowed_origin: nonempty(&args.allowed_origin)
                .or(file.allowed_origin)
                .unwrap_or(d.allowed_origin),
            ice_ttl: args.ice_ttl.or(file.ice_ttl).unwrap_or(d.ice_ttl),
            hub_max_message_bytes: args
                .hub_max_message_bytes
                .or(file.hub_max_message_bytes)
                .unwrap_or(d.hub_max_message_bytes),
            hub_messages_per_second: args
                .hub_messages_per_second
                .or(file.hub_messages_per_second)
                .unwrap_or(d.hub_messages_per_second),
            hub_message_burst: args
                .hub_message_burst
                .or(file.hub_message_burst)
                .unwrap_or(d.hub_message_burst),
            hub_max_peers_per_room: args
                .hub_max_peers_per_room
                .or(file.hub_max_peers_per_room)
                .unwrap_or(d.hub_max_peers_per_room),
            hub_max_rooms: args
                .hub_max_rooms
                .or(file.hub_max_rooms)
                .unwrap_or(d.hub_max_rooms),
            hub_max_connections: args
                .hub_max_connections
                .or(file.hub_max_connections)
                .unwrap_or(d.hub_max_connections),
            hub_max_connections_per_ip: args
                .hub_max_connections_per_ip
                .or(file.hub_max_connections_per_ip)
                .unwrap_or(d.hub_max_connections_per_ip),
            hub_keepalive_timeout: args
                .hub_keepalive_timeout
                .or(file.hub_keepalive_timeout)
                .unwrap_or(d.hub_keepalive_timeout),
            hub_resume_window: args
                .hub_resume_window
                .or(file.hub_resume_window)
                .unwrap_or(d.hub_resume_window),
            hub_replay_cap: args
                .hub_replay_cap
                .or(file.hub_replay_cap)
                .unwrap_or(d.hub_replay_cap),
            trusted_proxy: nonempty(&args.trusted_proxy)
                .or(file.trusted_proxy)
                .unwrap_or(d.trusted_proxy),
            redis: args.redis.clone().or(file.redis).filter(|s| !s.is_empty()),
            redis_prefix: args
                .redis_prefix
                .clone()
                .or(file.redis_prefix)
                .unwrap_or(d.redis_prefix),
            redis_node_timeout: args
                .redis_node_timeout
                .or(file.redis_node_timeout)
                .unwrap_or(d.redis_node_timeout),
            realm: args.realm.clone().or(file.realm).unwrap_or(d.realm),
            user: nonempty(&args.user).or(file.user).unwrap_or(d.user),
            auth_secret: nonempty(&args.auth_secret)
                .or(file.auth_secret)
                .unwrap_or(d.auth_secret),
            relay_ip: nonempty(&args.relay_ip)
                .or(file.relay_ip)
                .unwrap_or(d.relay_ip),
            relay_ports: args
                .relay_ports
                .or(file.relay_ports)
                .unwrap_or(d.relay_ports),
            external_ip: nonempty(&args.external_ip)
                .or(file.external_ip)
                .unwrap_or(d.external_ip),
            tls_listen: nonempty(&args.tls_listen)
                .or(file.tls_listen)
                .unwrap_or(d.tls_listen),
            cert: args.cert.clone().or(file.cert),
            key: args.key.clone().or(file.key),
            allow_peer: nonempty(&args.allow_peer)
                .or(file.allow_peer)
                .unwrap_or(d.allow_peer),
            deny_peer: nonempty(&args.deny_peer)
                .or(file.deny_peer)
                .unwrap_or(d.deny_peer),
            max_allocations: args
                .max_allocations
                .or(file.max_allocations)
                .unwrap_or(d.max_allocations),
            user_quota: args.user_quota.or(file.user_quota).unwrap_or(d.user_quota),
            ip_quota: args.ip_quota.or(file.ip_quota).unwrap_or(d.ip_quota),
            max_permissions: args
                .max_permissions
                .or(file.max_permissions)
                .unwrap_or(d.max_permissions),
            max_channels: args
                .max_channels
                .or(file.max_channels)
                .unwrap_or(d.max_channels),
            turn_url: nonempty(&args.turn_url)
                .or(file.turn_url)
                .unwrap_or(d.turn_url),
            stun_url: nonempty(&args.stun_url)
                .or(file.stun_url)
                .unwrap_or(d.stun_url),
            drain: args.drain || file.drain.unwrap_or(d.drain),
            drain_timeout: args
                .drain_timeout
                .or(file.drain_timeout)
                .unwrap_or(d.drain_timeout),
            alternate_server: args.alternate_server.or(file.alternate_server),
        }
    }

    /// The merged configuration as TOML.
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).context("cannot render the configuration as TOML")
    }

    /// Validates and builds the driver configuration.
    pub fn server_config(&self) -> Result<ServerConfig> {
        if self.listen.is_empty() {
            bail!("no STUN listening address: give at least one --listen IP:PORT");
        }
        for (i, a) in self.listen.iter().enumerate() {
            if self.listen[..i].contains(a) {
                bail!("--listen {a} is given twice");
            }
        }
        if let Some(s) = &self.software {
            if s.chars().count() >= 128 {
                bail!("--software must be shorter than 128 characters (RFC 8489 §14.14)");
            }
        }
        if self.tcp_max_connections == 0 {
            bail!("--tcp-max-connections must be at least 1");
        }
        if self.alternate_port.is_some() && self.alternate_ip.is_empty() {
            bail!("--alternate-port needs --alternate-ip (RFC 5780 uses two IPs and two ports)");
        }
        if !(1..=86_400).contains(&self.tcp_idle_timeout) {
            bail!("--tcp-idle-timeout must be between 1 and 86400 seconds");
        }
        if let (Endpoint::At(h), Endpoint::At(m)) = (self.http, self.metrics) {
            if h == m && h.port() != 0 {
                bail!("--http and --metrics cannot share {h}");
            }
        }
        let mut stun = StunConfig {
            software: self.software.clone(),
            ..StunConfig::default()
        };
        for &alt in &self.alternate_ip {
            let slot = if alt.is_ipv4() {
                &mut stun.discovery_v4
            } else {
                &mut stun.discovery_v6
            };
            let family = if alt.is_ipv4() { "IPv4" } else { "IPv6" };
            if slot.is_some() {
                bail!("--alternate-ip is given twice for {family}: at most one per address family");
            }
            let Some(primary) = self.listen.iter().find(|l| l.is_ipv4() == alt.is_ipv4()) else {
                bail!(
                    "--alternate-ip {alt} needs a --listen address of the same family ({family}) to pair with"
                );
            };
            if primary.ip().is_unspecified() {
                bail!(
                    "--alternate-ip {alt} pairs with --listen {primary}, which is a wildcard; RFC 5780 needs the \
                     specific primary address, e.g. --listen 192.0.2.1:{}",
                    primary.port()
                );
            }
            if primary.ip() == alt || alt.is_unspecified() {
                bail!(
                    "--alternate-ip {alt} must differ from the primary address {} and not be a wildcard",
                    primary.ip()
                );
            }
            if primary.port() == 0 {
                bail!("--listen {primary} uses port 0; RFC 5780 needs fixed ports");
            }
            let alternate_port = match self.alternate_port {
                Some(p) => p,
                None => primary
                    .port()
                    .checked_add(1)
                    .context("the primary port is 65535: set --alternate-port")?,
            };
            if alternate_port == primary.port() || alternate_port == 0 {
                bail!(
                    "--alternate-port {alternate_port} must be non-zero and differ from the primary port {}",
                    primary.port()
                );
            }
            *slot = Some(AddressSet {
                primary_ip: primary.ip(),
                alternate_ip: alt,
                primary_port: primary.port(),
                alternate_port,
            });
        }
        if !(256..=1048576).contains(&self.hub_max_message_bytes) {
            bail!("--hub-max-message-bytes must be between 256 and 1048576");
        }
        if !(1..=10000).contains(&self.hub_messages_per_second) {
            bail!("--hub-messages-per-second must be between 1 and 10000");
        }
        if !(1..=100000).contains(&self.hub_message_burst) {
            bail!("--hub-message-burst must be between 1 and 100000");
        }
        if !(2..=1000).contains(&self.hub_max_peers_per_room) {
            bail!("--hub-max-peers-per-room must be between 2 and 1000");
        }
        if !(1..=10000000).contains(&self.hub_max_rooms) {
            bail!("--hub-max-rooms must be between 1 and 10000000");
        }
        if !(1..=10000000).contains(&self.hub_max_connections) {
            bail!("--hub-max-connections must be between 1 and 10000000");
        }
        if !(1..=1000000).contains(&self.hub_max_connections_per_ip) {
            bail!("--hub-max-connections-per-ip must be between 1 and 1000000");
        }
        if !(5..=86400).contains(&self.hub_keepalive_timeout) {
            bail!("--hub-keepalive-timeout must be between 5 and 86400");
        }
        if !(1..=3600).contains(&self.hub_resume_window) {
            bail!("--hub-resume-window must be between 1 and 3600");
        }
        if !(1..=100000).contains(&self.hub_replay_cap) {
            bail!("--hub-replay-cap must be between 1 and 100000");
        }
        if let Some(url) = &self.redis {
            if !url.starts_with("redis://") {
                bail!(
                    "--redis must be a redis:// URL (redis://[USER:PASSWORD@]HOST:PORT[/DB]); \
                     TLS (rediss://) and Unix sockets are not supported"
                );
            }
            turnpike_server::cluster::check_url(url)?;
        }
        if self.redis.is_some() && self.http == Endpoint::Off {
            bail!("--redis needs the hub, which is served on --http; it is off");
        }
        if self.redis_prefix.is_empty()
            || self.redis_prefix.len() > 64
            || self
                .redis_prefix
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            bail!("--redis-prefix must be 1-64 bytes without spaces or control characters");
        }
        if !(2..=15).contains(&self.redis_node_timeout) {
            bail!("--redis-node-timeout must be between 2 and 15 seconds");
        }
        if !(60..=86_400).contains(&self.ice_ttl) {
            bail!("--ice-ttl must be between 60 and 86400 seconds");
        }
        if self.hub_secret.as_ref().is_some_and(|s| s.len() < 16) {
            bail!("--hub-secret must be at least 16 characters (it signs join tokens)");
        }
        let primary = self.listen[0];
        let (turn, tls) = self.turn_settings()?;
        let mut turn_urls = Vec::new();
        let mut hub_turn_secret = None;
        if !(1..=86_400).contains(&self.drain_timeout) {
            bail!("--drain-timeout must be between 1 and 86400 seconds");
        }
        for u in &self.turn_url {
            if !(u.starts_with("turn:") || u.starts_with("turns:")) {
                bail!("--turn-url {u}: a TURN URL starts with turn: or turns:");
            }
        }
        for u in &self.stun_url {
            let Some(rest) = u.strip_prefix("stun:").or_else(|| u.strip_prefix("stuns:")) else {
                bail!("--stun-url {u}: a STUN URL starts with stun: or stuns:");
            };
            // RFC 7064: stun:HOST[:PORT], no query; browsers refuse the whole ICE server list
            // over one malformed URL.
            if rest.is_empty()
                || rest.starts_with(':')
                || rest.contains(['?', '/', '@'])
                || rest.contains(|c: char| c.is_whitespace() || c.is_control())
            {
                bail!(
                    "--stun-url {u}: a STUN URL is stun:HOST or stun:HOST:PORT (no path, query or user)"
                );
            }
        }
        let trusted_proxies = self
            .trusted_proxy
            .iter()
            .map(|p| parse_trusted_proxy(p))
            .collect::<Result<Vec<_>>>()?;
        for net in trusted_proxies.iter().filter(|n| n.prefix_len() == 0) {
            tracing::warn!(
                network = %net,
                "--trusted-proxy trusts every address: any client can choose the address the \
                 per-IP limit counts by sending X-Forwarded-For"
            );
        }
        let stun_urls = if self.stun_url.is_empty() {
            vec![format!("stun:{{host}}:{}", primary.port())]
        } else {
            self.stun_url.clone()
        };
        if let Some(t) = &turn
            && !self.turn_url.is_empty()
        {
            turn_urls.clone_from(&self.turn_url);
            hub_turn_secret = Some(t.hub_secret.clone());
        } else if let Some(t) = &turn {
            turn_urls.push(format!("turn:{{host}}:{}?transport=udp", primary.port()));
            turn_urls.push(format!("turn:{{host}}:{}?transport=tcp", primary.port()));
            if let Some(tls) = &tls
                && let Some(a) = tls.listen.first()
            {
                turn_urls.push(format!("turns:{{host}}:{}?transport=tcp", a.port()));
            }
            hub_turn_secret = Some(t.hub_secret.clone());
        }
        let default_host = if primary.ip().is_unspecified() {
            "localhost".to_owned()
        } else if primary.is_ipv6() {
            format!("[{}]", primary.ip())
        } else {
            primary.ip().to_string()
        };
        let signal = turnpike_server::signal::SignalConfig {
            hub: turnpike_signal::HubConfig {
                max_message_bytes: self.hub_max_message_bytes,
                messages_per_second: self.hub_messages_per_second,
                message_burst: self.hub_message_burst,
                max_peers_per_room: self.hub_max_peers_per_room,
                max_rooms: self.hub_max_rooms,
                max_connections: self.hub_max_connections,
                max_connections_per_ip: self.hub_max_connections_per_ip,
                keepalive_timeout: Duration::from_secs(self.hub_keepalive_timeout),
                resume_window: Duration::from_secs(self.hub_resume_window),
                replay_cap: self.hub_replay_cap,
                hub_secret: self.hub_secret.as_ref().map(|s| s.as_bytes().to_vec()),
                ice: turnpike_signal::creds::IceConfig {
                    stun_urls,
                    turn_urls,
                    secret: hub_turn_secret,
                    ttl_secs: self.ice_ttl,
                    default_host,
                },
                max_strikes: turnpike_signal::HubConfig::default().max_strikes,
            },
            allowed_origins: self.allowed_origin.clone(),
            redis: self
                .redis
                .as_ref()
                .map(|url| turnpike_server::cluster::RedisConfig {
                    url: url.clone(),
                    prefix: self.redis_prefix.clone(),
                    node_timeout: Duration::from_secs(self.redis_node_timeout),
                }),
            trusted_proxies,
        };
        let udp_workers = match self.udp_workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(ServerConfig {
            listen: self.listen.clone(),
            stun,
            http: self.http.addr(),
            metrics: self.metrics.addr(),
            udp_workers,
            tcp_max_connections: self.tcp_max_connections.max(1),
            tcp_idle_timeout: Duration::from_secs(self.tcp_idle_timeout),
            signal,
            turn: turn.map(|t| t.server),
            tls,
        })
    }

    /// Validates the TURN and TLS settings and resolves the relay addresses.
    fn turn_settings(&self) -> Result<(Option<TurnParts>, Option<turnpike_server::TlsSettings>)> {
        use turnpike_relay_core::auth::Credentials;
        use turnpike_relay_core::turn::{Quotas, RelayAddress, TurnConfig};

        if self.realm.is_empty() || self.realm.len() > 64 || !self.realm.is_ascii() {
            bail!("--realm must be 1 to 64 ASCII characters");
        }
        let mut credentials = Credentials::new(self.realm.clone());
        for u in &self.user {
            let Some((name, pass)) = u.split_once(':') else {
                bail!("--user must be NAME:PASSWORD (or NAME:0xHEXKEY); got a value without ':'");
            };
            if name.is_empty() || pass.is_empty() {
                bail!("--user {name}:…: the name and the password must not be empty");
            }
            match pass.strip_prefix("0x") {
                Some(hex) if hex.len() == 32 => {
                    let mut key = [0u8; 16];
                    for (i, b) in key.iter_mut().enumerate() {
                        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).with_context(|| {
                            format!("--user {name}:0x…: the key must be 32 hex digits (MD5 of name:realm:password)")
                        })?;
                    }
                    credentials.add_user_key(name, key);
                }
                _ => credentials.add_user(name, pass),
            }
        }
        for secret in &self.auth_secret {
            if secret.len() < 8 {
                bail!("--auth-secret must be at least 8 characters");
            }
            credentials.add_secret(secret.as_bytes());
        }
        // With no shared secret, a random one lets the hub hand out working TURN credentials
        // (and makes the relay refuse everyone else): never an open relay.
        let hub_secret = match self.auth_secret.first() {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                let mut b = [0u8; 32];
                getrandom::fill(&mut b).context("no OS randomness for the TURN secret")?;
                let s = b
                    .iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<String>()
                    .into_bytes();
                credentials.add_secret(&s);
                s
            }
        };
        // Nodes that share a secret accept each other's nonces: the nonce key derives from it.
        let nonce_secret = {
            use hmac::{Hmac, Mac};
            let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(&hub_secret)
                .expect("HMAC takes keys of any length");
            mac.update(b"turnpike nonce key v1");
            let out: [u8; 32] = mac.finalize().into_bytes().into();
            out
        };

        let mut relay_v4 = None;
        let mut relay_v6 = None;
        for &ip in &self.relay_ip {
            if ip.is_unspecified() {
                bail!("--relay-ip {ip} is a wildcard: give the IP relay sockets bind to");
            }
            let slot = if ip.is_ipv4() {
                &mut relay_v4
            } else {
                &mut relay_v6
            };
            if slot.is_some() {
                bail!(
                    "--relay-ip is given twice for one address family: at most one IPv4 and one IPv6"
                );
            }
            *slot = Some(ip);
        }
        for v6 in [false, true] {
            let slot = if v6 { &mut relay_v6 } else { &mut relay_v4 };
            if slot.is_some() {
                continue;
            }
            if let Some(l) = self.listen.iter().find(|l| l.is_ipv6() == v6) {
                *slot = if l.ip().is_unspecified() {
                    default_route_ip(v6)
                } else {
                    Some(l.ip())
                };
                if slot.is_none() {
                    tracing::warn!(
                        family = if v6 { "IPv6" } else { "IPv4" },
                        "no relay IP: --listen is a wildcard and there is no default route; TURN for this family is off (set --relay-ip)"
                    );
                }
            }
        }
        let mut advertised: [Option<IpAddr>; 2] = [None, None];
        for e in &self.external_ip {
            let index = usize::from(e.public.is_ipv6());
            if advertised[index].is_some() {
                bail!("--external-ip is given twice for one address family");
            }
            let relay = if e.public.is_ipv6() {
                &mut relay_v6
            } else {
                &mut relay_v4
            };
            match (e.private, *relay) {
                (Some(p), Some(r)) if p != r => bail!(
                    "--external-ip {e}: the private address {p} is not the relay IP {r} (set --relay-ip {p})"
                ),
                (Some(p), None) => *relay = Some(p),
                (None, None) => bail!(
                    "--external-ip {e}: there is no relay IP of that family to map it to (set --relay-ip)"
                ),
                _ => {}
            }
            advertised[index] = Some(e.public);
        }
        let relay_address = |bind: Option<IpAddr>, index: usize| {
            bind.map(|b| RelayAddress {
                bind: b,
                advertised: advertised[index].unwrap_or(b),
            })
        };
        let (lo, hi) = (self.relay_ports.0, self.relay_ports.1);
        if lo < 1024 {
            bail!("--relay-ports {lo}-{hi}: relay ports must be 1024 or above");
        }
        for (name, v, lo_, hi_) in [
            ("--max-allocations", self.max_allocations, 1, 10_000_000),
            ("--max-permissions", self.max_permissions, 1, 10_000),
            ("--max-channels", self.max_channels, 1, 4096),
        ] {
            if !(lo_..=hi_).contains(&v) {
                bail!("{name} must be between {lo_} and {hi_}");
            }
        }
        let mut own_ips: Vec<IpAddr> = self
            .listen
            .iter()
            .map(|l| l.ip())
            .filter(|ip| !ip.is_unspecified())
            .collect();
        own_ips.extend(
            self.tls_listen
                .iter()
                .map(|l| l.ip())
                .filter(|ip| !ip.is_unspecified()),
        );
        own_ips.extend(self.alternate_ip.iter().copied());
        let config = TurnConfig {
            credentials,
            relay_v4: relay_address(relay_v4, 0),
            relay_v6: relay_address(relay_v6, 1),
            own_ips,
            policy: turnpike_relay_core::policy::PeerPolicy::new(
                self.allow_peer.iter().map(|c| c.0).collect(),
                self.deny_peer.iter().map(|c| c.0).collect(),
            ),
            max_permissions: self.max_permissions,
            max_channels: self.max_channels,
            alternate_server: self.alternate_server,
            ..TurnConfig::default()
        };

        let tls = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let listen = if self.tls_listen.is_empty() {
                    let mut v: Vec<SocketAddr> = Vec::new();
                    for l in &self.listen {
                        let a = SocketAddr::new(l.ip(), 5349);
                        if !v.contains(&a) {
                            v.push(a);
                        }
                    }
                    v
                } else {
                    self.tls_listen.clone()
                };
                Some(turnpike_server::TlsSettings {
                    listen,
                    cert: cert.clone(),
                    key: key.clone(),
                })
            }
            (None, None) if self.tls_listen.is_empty() => None,
            (None, None) => bail!("--tls-listen needs --cert and --key"),
            _ => bail!("TLS needs both --cert and --key"),
        };

        if config.relay_v4.is_none() && config.relay_v6.is_none() {
            tracing::warn!("TURN is off: no relay IP could be determined (set --relay-ip)");
            return Ok((None, tls));
        }
        let server = turnpike_server::TurnSettings {
            config,
            ports: (lo, hi),
            quotas: Quotas {
                total: self.max_allocations,
                per_user: self.user_quota,
                per_ip: self.ip_quota,
            },
            nonce_secret,
        };
        Ok((Some(TurnParts { server, hub_secret }), tls))
    }
}

/// A `--trusted-proxy` value: `IP/PREFIX` (host bits are masked off) or a bare IP (a /32 or
/// /128). `ipnet` parses; the errors say which half is wrong.
fn parse_trusted_proxy(s: &str) -> Result<ipnet::IpNet> {
    let text = s.trim();
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(ipnet::IpNet::from(ip));
    }
    let addr_text = text.split_once('/').map_or(text, |(a, _)| a);
    match addr_text.parse::<IpAddr>() {
        Ok(addr) => bail!(
            "--trusted-proxy {s}: the prefix length must be a number from 0 to {} for an {} \
             network",
            if addr.is_ipv4() { 32 } else { 128 },
            if addr.is_ipv4() { "IPv4" } else { "IPv6" }
        ),
        Err(_) => bail!(
            "--trusted-proxy {s}: `{addr_text}` is not an IP address (give a network such as \
             10.0.0.0/8 or 2001:db8::/32, or one address)"
        ),
    }
}

/// The TURN part of the driver configuration plus the secret the hub signs credentials with.
struct TurnParts {
    server: turnpike_server::TurnSettings,
    hub_secret: Vec<u8>,
}

/// The local address the kernel would use to reach the internet: a UDP `connect` to a
/// documentation address picks the route without sending anything.
fn default_route_ip(v6: bool) -> Option<IpAddr> {
    let (bind, probe): (SocketAddr, SocketAddr) = if v6 {
        ("[::]:0".parse().ok()?, "[2001:db8::1]:9".parse().ok()?)
    } else {
        ("0.0.0.0:0".parse().ok()?, "192.0.2.1:9".parse().ok()?)
    };
    let s = std::net::UdpSocket::bind(bind).ok()?;
    s.connect(probe).ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(f: impl FnOnce(&mut ServeArgs)) -> ServeArgs {
        let mut a = ServeArgs::default();
        f(&mut a);
        a
    }

    #[test]
    fn example_config_parses_and_matches_defaults() {
        let text = include_str!("../../../config/turnpike.toml");
        let file = FileConfig::parse(text).expect("config/turnpike.toml parses");
        let merged = Settings::merge(file, &ServeArgs::default());
        assert_eq!(
            merged,
            Settings::default(),
            "the example documents the defaults"
        );
        // Every key --print-config shows for the defaults is set in the example, not left to
        // its default by omission.
        let printed = Settings::default().to_toml().unwrap();
        for key in printed
            .lines()
            .filter_map(|l| l.split_once(" = ").map(|(k, _)| k))
        {
            assert!(
                text.lines().any(|l| l.starts_with(&format!("{key} = "))),
                "config/turnpike.toml does not set `{key}`"
            );
        }
    }

    #[test]
    fn redis_url_is_printed_without_its_password() {
        assert_eq!(
            redact_url("redis://app:s3cret@10.0.0.5:6379/2"),
            "redis://app:***@10.0.0.5:6379/2"
        );
        assert_eq!(redact_url("redis://:s3cret@r:6379"), "redis://:***@r:6379");
        assert_eq!(redact_url("redis://r:6379/"), "redis://r:6379/");
        let s = Settings::merge(
            FileConfig::default(),
            &args(|a| a.redis = Some("redis://:pw@127.0.0.1:6379/".into())),
        );
        let toml = s.to_toml().unwrap();
        assert!(
            toml.contains("redis = \"redis://:***@127.0.0.1:6379/\""),
            "{toml}"
        );
        assert!(!toml.contains("pw@"), "{toml}");
        let bad = Settings::merge(
            FileConfig::default(),
            &args(|a| a.redis = Some("rediss://r:6379".into())),
        );
        assert!(bad.server_config().is_err());
    }

    #[test]
    fn open_file_estimate_counts_every_limit() {
        let needed = |f: &dyn Fn(&mut ServeArgs)| {
            let a = args(|a| {
                a.listen = vec!["127.0.0.1:3478".parse().unwrap()];
                a.max_allocations = Some(1000);
                a.tcp_max_connections = Some(100);
                a.hub_max_connections = Some(50);
                f(a);
            });
            Settings::merge(FileConfig::default(), &a)
                .server_config()
                .unwrap()
                .open_files_needed()
        };
        // Relays, TCP clients, the HTTP listener (1024 + hub), the metrics listener (1024).
        assert_eq!(needed(&|_| {}), 1000 + 100 + (1024 + 50) + 1024 + 256);
        // Both relay families: two sockets per allocation.
        assert_eq!(
            needed(&|a| a.relay_ip = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()]),
            2000 + 100 + (1024 + 50) + 1024 + 256
        );
        // No HTTP, no hub WebSockets; no metrics listener.
        assert_eq!(
            needed(&|a| {
                a.http = Some(Endpoint::Off);
                a.metrics = Some(Endpoint::Off);
            }),
            1000 + 100 + 256
        );
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let err = FileConfig::parse("listen = [\"127.0.0.1:3478\"]\nlisten_port = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("listen_port"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn flags_win_over_file() {
        let file =
            FileConfig::parse("listen = [\"127.0.0.1:1000\"]\nsoftware = \"file\"\nhttp = \"off\"")
                .unwrap();
        let s = Settings::merge(
            file,
            &args(|a| {
                a.listen = vec!["127.0.0.1:2000".parse().unwrap()];
                a.software = Some("flag".into());
            }),
        );
        assert_eq!(
            s.listen,
            vec!["127.0.0.1:2000".parse::<std::net::SocketAddr>().unwrap()]
        );
        assert_eq!(s.software.as_deref(), Some("flag"));
        assert_eq!(
            s.http,
            Endpoint::Off,
            "file value kept where no flag was given"
        );
    }

    #[test]
    fn alternate_ip_pairs_with_first_listen_of_its_family() {
        let s = Settings {
            listen: vec![
                "[::1]:3478".parse().unwrap(),
                "127.0.0.1:4000".parse().unwrap(),
                "127.0.0.1:5000".parse().unwrap(),
            ],
            alternate_ip: vec!["127.0.0.2".parse().unwrap()],
            ..Settings::default()
        };
        let c = s.server_config().unwrap();
        let set = c.stun.discovery_v4.unwrap();
        assert_eq!(
            (set.primary_ip, set.primary_port, set.alternate_port),
            ("127.0.0.1".parse().unwrap(), 4000, 4001)
        );
        assert!(c.stun.discovery_v6.is_none());
        assert_eq!(c.stun_addresses().len(), 3 + 3);
    }

    #[test]
    fn clear_errors() {
        let bad = |f: fn(&mut Settings), needle: &str| {
            let mut s = Settings::default();
            f(&mut s);
            let e = s.server_config().unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should mention {needle}");
        };
        bad(
            |s| s.alternate_ip = vec!["10.0.0.2".parse().unwrap()],
            "wildcard",
        );
        bad(
            |s| s.alternate_ip = vec!["::2".parse().unwrap()],
            "same family",
        );
        bad(
            |s| {
                s.listen = vec!["10.0.0.1:3478".parse().unwrap()];
                s.alternate_ip = vec!["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()]
            },
            "at most one",
        );
        bad(
            |s| {
                s.listen = vec!["10.0.0.1:3478".parse().unwrap()];
                s.alternate_ip = vec!["10.0.0.2".parse().unwrap()];
                s.alternate_port = Some(3478)
            },
            "differ",
        );
        bad(|s| s.software = Some("x".repeat(200)), "128");
        bad(|s| s.listen = vec![], "--listen");
        bad(|s| s.alternate_port = Some(4000), "needs --alternate-ip");
        bad(|s| s.tcp_max_connections = 0, "at least 1");
        bad(
            |s| s.listen = vec!["10.0.0.1:1".parse().unwrap(), "10.0.0.1:1".parse().unwrap()],
            "twice",
        );
    }

    #[test]
    #[allow(clippy::field_reassign_with_default)] // each case changes a few fields of the defaults
    fn turn_settings_are_checked_and_resolved() {
        let bad = |f: fn(&mut Settings), needle: &str| {
            let mut s = Settings::default();
            s.listen = vec!["127.0.0.1:3478".parse().unwrap()];
            f(&mut s);
            let e = match s.server_config() {
                Ok(_) => panic!("accepted; expected an error mentioning {needle}"),
                Err(e) => e.to_string(),
            };
            assert!(e.contains(needle), "{e} should mention {needle}");
        };
        bad(|s| s.user = vec!["alice".into()], "NAME:PASSWORD");
        bad(|s| s.user = vec![":pw".into()], "must not be empty");
        bad(
            |s| s.user = vec!["bob:0xzz000000000000000000000000000000".into()],
            "32 hex digits",
        );
        bad(|s| s.auth_secret = vec!["short".into()], "at least 8");
        bad(|s| s.realm = String::new(), "--realm");
        bad(
            |s| s.relay_ip = vec!["0.0.0.0".parse().unwrap()],
            "wildcard",
        );
        bad(
            |s| s.relay_ip = vec!["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
            "at most one",
        );
        bad(|s| s.relay_ports = PortRange(80, 90), "1024");
        bad(|s| s.max_channels = 0, "--max-channels");
        bad(|s| s.cert = Some("c.pem".into()), "both --cert and --key");
        bad(
            |s| s.tls_listen = vec!["127.0.0.1:5349".parse().unwrap()],
            "needs --cert",
        );
        bad(
            |s| s.external_ip = vec!["203.0.113.1/10.9.9.9".parse().unwrap()],
            "not the relay IP",
        );
        bad(
            |s| s.external_ip = vec!["2001:db8::1".parse().unwrap()],
            "no relay IP of that family",
        );
        assert!("1-0".parse::<PortRange>().is_err());
        assert!("49152-65535".parse::<PortRange>().is_ok());
        assert!("1.2.3.4/::1".parse::<ExternalIp>().is_err());

        // Defaults: the relay binds to the listen IP; TURN URLs and a secret reach the hub.
        let mut s = Settings::default();
        s.listen = vec!["127.0.0.1:3478".parse().unwrap()];
        s.external_ip = vec!["203.0.113.9".parse().unwrap()];
        s.user = vec![
            "alice:pw".into(),
            "bob:0x0123456789abcdef0123456789abcdef".into(),
        ];
        let c = s.server_config().unwrap();
        let turn = c.turn.expect("TURN on");
        let r = turn.config.relay_v4.unwrap();
        assert_eq!(r.bind, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(r.advertised, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert!(turn.config.credentials.has_users());
        assert!(
            turn.config.credentials.has_secrets(),
            "a random secret for the hub"
        );
        assert_eq!(turn.ports, (49152, 65535));
        let ice = &c.signal.hub.ice;
        assert_eq!(
            ice.turn_urls,
            [
                "turn:{host}:3478?transport=udp",
                "turn:{host}:3478?transport=tcp"
            ]
        );
        assert!(ice.secret.is_some());
        assert!(c.tls.is_none());

        // TLS defaults to port 5349 on each listen IP and adds a turns: URL.
        let mut s = Settings::default();
        s.listen = vec!["127.0.0.1:3478".parse().unwrap()];
        s.cert = Some("c.pem".into());
        s.key = Some("k.pem".into());
        let c = s.server_config().unwrap();
        assert_eq!(
            c.tls.unwrap().listen,
            ["127.0.0.1:5349".parse::<SocketAddr>().unwrap()]
        );
        assert!(
            c.signal
                .hub
                .ice
                .turn_urls
                .contains(&"turns:{host}:5349?transport=tcp".to_owned())
        );
    }

    #[test]
    fn stun_urls_replace_the_servers_own() {
        let with = |urls: &[&str]| Settings {
            listen: vec!["127.0.0.1:3478".parse().unwrap()],
            stun_url: urls.iter().map(|u| (*u).to_owned()).collect(),
            ..Settings::default()
        };
        let c = with(&[]).server_config().unwrap();
        assert_eq!(c.signal.hub.ice.stun_urls, ["stun:{host}:3478"]);
        let urls = ["stun:{host}:19302", "stuns:stun.example.org:5349"];
        let c = with(&urls).server_config().unwrap();
        assert_eq!(c.signal.hub.ice.stun_urls, urls);
        for bad in [
            "turn:stun.example.org:3478",
            "stun.example.org:3478",
            "STUN:x",
            "",
        ] {
            let e = with(&[bad]).server_config().unwrap_err().to_string();
            assert!(
                e.contains(&format!("--stun-url {bad}:")) && e.contains("stun: or stuns:"),
                "{e}"
            );
        }
        for bad in [
            "stun:h:3478?transport=udp",
            "stun:",
            "stun::3478",
            "stun:user@h",
            "stun:h/path",
            "stun:h 3478",
        ] {
            let e = with(&[bad]).server_config().unwrap_err().to_string();
            assert!(e.contains("stun:HOST or stun:HOST:PORT"), "{bad}: {e}");
        }
        let file = FileConfig::parse("stun_url = [\"stun:a.example:3478\"]").unwrap();
        let s = Settings::merge(file, &ServeArgs::default());
        assert_eq!(s.stun_url, ["stun:a.example:3478"]);
        assert!(
            s.to_toml()
                .unwrap()
                .contains("stun_url = [\"stun:a.example:3478\"]")
        );
    }

    #[test]
    fn trusted_proxies_are_parsed_and_checked() {
        let with = |nets: &[&str]| Settings {
            listen: vec!["127.0.0.1:3478".parse().unwrap()],
            trusted_proxy: nets.iter().map(|n| (*n).to_owned()).collect(),
            ..Settings::default()
        };
        let c = with(&[]).server_config().unwrap();
        assert!(c.signal.trusted_proxies.is_empty());
        let c = with(&[
            "10.1.2.3/8",
            "192.0.2.7",
            "2001:db8::1/32",
            "::1",
            " 0.0.0.0/0 ",
        ])
        .server_config()
        .unwrap();
        let shown: Vec<String> = c
            .signal
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            shown,
            [
                "10.0.0.0/8",
                "192.0.2.7/32",
                "2001:db8::/32",
                "::1/128",
                "0.0.0.0/0"
            ],
            "host bits masked, bare addresses are single hosts"
        );
        for (bad, needle) in [
            ("10.0.0.0/33", "from 0 to 32 for an IPv4"),
            ("2001:db8::/129", "from 0 to 128 for an IPv6"),
            ("10.0.0.0/", "prefix length"),
            ("10.0.0.0/+8", "prefix length"),
            ("10.0.0.0/8/8", "prefix length"),
            ("proxy.example", "not an IP address"),
            ("10.0.0.0.1/8", "not an IP address"),
            ("", "not an IP address"),
        ] {
            let e = with(&[bad]).server_config().unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("--trusted-proxy {bad}: ")) && e.contains(needle),
                "{e} should mention {needle}"
            );
        }
        let file = FileConfig::parse("trusted_proxy = [\"10.0.0.0/8\"]").unwrap();
        let s = Settings::merge(
            file,
            &args(|a| a.trusted_proxy = vec!["192.0.2.0/24".into()]),
        );
        assert_eq!(s.trusted_proxy, ["192.0.2.0/24"], "the flag wins");
        assert!(
            s.to_toml()
                .unwrap()
                .contains("trusted_proxy = [\"192.0.2.0/24\"]")
        );
    }

    #[test]
    #[allow(clippy::field_reassign_with_default)] // each case changes a few fields of the defaults
    fn secrets_are_never_printed() {
        let mut s = Settings::default();
        s.user = vec!["alice:hunter22".into()];
        s.auth_secret = vec!["super-secret-value".into()];
        let text = s.to_toml().unwrap();
        assert!(!text.contains("hunter22") && !text.contains("super-secret-value"));
    }

    #[test]
    fn endpoint_parses_off_and_addresses() {
        assert_eq!("off".parse::<Endpoint>().unwrap(), Endpoint::Off);
        assert_eq!(
            "[::1]:80".parse::<Endpoint>().unwrap(),
            Endpoint::At("[::1]:80".parse().unwrap())
        );
        assert!("localhost:80".parse::<Endpoint>().is_err());
    }
}
