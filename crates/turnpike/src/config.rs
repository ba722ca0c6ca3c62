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
    /// Print the merged configuration as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
}

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
        if !(60..=86_400).contains(&self.ice_ttl) {
            bail!("--ice-ttl must be between 60 and 86400 seconds");
        }
        if self.hub_secret.as_ref().is_some_and(|s| s.len() < 16) {
            bail!("--hub-secret must be at least 16 characters (it signs join tokens)");
        }
        let primary = self.listen[0];
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
                    // The hub offers this server's STUN service; TURN URLs join when the
                    // relay exists.
                    stun_urls: vec![format!("stun:{{host}}:{}", primary.port())],
                    turn_urls: Vec::new(),
                    secret: None,
                    ttl_secs: self.ice_ttl,
                    default_host,
                },
                max_strikes: turnpike_signal::HubConfig::default().max_strikes,
            },
            allowed_origins: self.allowed_origin.clone(),
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
        })
    }
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
        assert_eq!(s.listen, vec!["127.0.0.1:2000".parse().unwrap()]);
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
    fn endpoint_parses_off_and_addresses() {
        assert_eq!("off".parse::<Endpoint>().unwrap(), Endpoint::Off);
        assert_eq!(
            "[::1]:80".parse::<Endpoint>().unwrap(),
            Endpoint::At("[::1]:80".parse().unwrap())
        );
        assert!("localhost:80".parse::<Endpoint>().is_err());
    }
}
