//! What a peer run is told to do, and the parsing of `--ice-server` URLs.

use std::path::PathBuf;
use std::time::Duration;

use crate::PeerError;

/// What to send over the data channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// `hello from <peer_id>`.
    Default,
    /// This text message.
    Message(String),
    /// This file, as a header and 16 KiB binary chunks.
    File(PathBuf),
}

/// One ICE server, as `RTCIceServer` has it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct IceServer {
    /// `stun:` / `turn:` / `turns:` URLs.
    #[serde(deserialize_with = "one_or_many")]
    pub urls: Vec<String>,
    /// TURN username.
    #[serde(default)]
    pub username: Option<String>,
    /// TURN password.
    #[serde(default)]
    pub credential: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(
        match <OneOrMany as serde::Deserialize<'de>>::deserialize(d)? {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        },
    )
}

impl IceServer {
    /// Parses a `--ice-server` value: `stun:HOST[:PORT]`, `turn:HOST[:PORT][?transport=udp]`
    /// or `turn:USER:PASS@HOST[:PORT][?transport=udp]` (likewise `turns:`). In the inline
    /// form the password is what follows the last `:` before the `@`, so usernames of the
    /// shared-secret form `EXPIRY:USER` work; `%XX` escapes are decoded in both parts. Inline
    /// credentials win over `username` / `credential` (the `--ice-username` and
    /// `--ice-credential` options), which apply to TURN URLs without them.
    pub fn parse(
        url: &str,
        username: Option<&str>,
        credential: Option<&str>,
    ) -> Result<IceServer, PeerError> {
        let bad = |why: &str| PeerError::Config(format!("--ice-server {url:?}: {why}"));
        let (scheme, rest) = url
            .split_once(':')
            .ok_or_else(|| bad("expected stun:, turn: or turns:"))?;
        let turn = match scheme {
            "stun" | "stuns" => false,
            "turn" | "turns" => true,
            _ => return Err(bad("expected stun:, turn: or turns:")),
        };
        let (inline, hostpart) = match rest.rsplit_once('@') {
            Some((creds, host)) => {
                let (user, pass) = creds
                    .rsplit_once(':')
                    .ok_or_else(|| bad("inline credentials must be USER:PASS@"))?;
                (
                    Some((
                        percent_decode(user).ok_or_else(|| bad("bad %-escape"))?,
                        percent_decode(pass).ok_or_else(|| bad("bad %-escape"))?,
                    )),
                    host,
                )
            }
            None => (None, rest),
        };
        if hostpart.is_empty() || hostpart.starts_with('?') {
            return Err(bad("no host"));
        }
        if !turn && inline.is_some() {
            return Err(bad("STUN URLs take no credentials"));
        }
        let (username, credential) = match inline {
            Some((u, p)) => (Some(u), Some(p)),
            None => (username.map(str::to_owned), credential.map(str::to_owned)),
        };
        if turn && (username.is_none() || credential.is_none()) {
            return Err(bad(
                "TURN needs credentials: turn:USER:PASS@HOST:PORT or --ice-username and --ice-credential",
            ));
        }
        Ok(IceServer {
            urls: vec![format!("{scheme}:{hostpart}")],
            username: if turn { username } else { None },
            credential: if turn { credential } else { None },
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(h, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Everything a peer run needs.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The hub's WebSocket URL, `ws://HOST:PORT/v1/ws`.
    pub signal_url: String,
    /// The room to join.
    pub room: String,
    /// ICE transport policy `relay`: gather and use relay candidates only.
    pub relay_only: bool,
    /// What to send.
    pub payload: Payload,
    /// The limit on the whole run, from connecting to the hub to the last answer.
    pub timeout: Duration,
    /// ICE servers to use instead of the ones in the hub's `welcome` (when not empty).
    pub ice_servers: Vec<IceServer>,
    /// Gather host candidates only on these network interfaces (all when empty).
    pub interfaces: Vec<String>,
}

impl PeerConfig {
    /// A configuration with the defaults: default message, 30 s timeout, the hub's ICE
    /// servers, every interface.
    pub fn new(signal_url: impl Into<String>, room: impl Into<String>) -> Self {
        PeerConfig {
            signal_url: signal_url.into(),
            room: room.into(),
            relay_only: false,
            payload: Payload::Default,
            timeout: Duration::from_secs(30),
            ice_servers: Vec::new(),
            interfaces: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_server_urls() {
        let s = IceServer::parse("stun:127.0.0.1:3478", None, None).unwrap();
        assert_eq!(
            (s.urls, s.username),
            (vec!["stun:127.0.0.1:3478".into()], None)
        );
        let t = IceServer::parse(
            "turn:1700000000:alice:c2VjcmV0@turn.example.com:3478?transport=udp",
            None,
            None,
        )
        .unwrap();
        assert_eq!(t.urls, vec!["turn:turn.example.com:3478?transport=udp"]);
        assert_eq!(t.username.as_deref(), Some("1700000000:alice"));
        assert_eq!(t.credential.as_deref(), Some("c2VjcmV0"));
        let t = IceServer::parse("turn:u%40x:p%3Aq@h:1", None, None).unwrap();
        assert_eq!(
            (t.username.as_deref(), t.credential.as_deref()),
            (Some("u@x"), Some("p:q"))
        );
        let t = IceServer::parse("turn:h:1", Some("u"), Some("p")).unwrap();
        assert_eq!(t.username.as_deref(), Some("u"));
        assert!(IceServer::parse("turn:h:1", None, None).is_err());
        assert!(IceServer::parse("http://h", None, None).is_err());
        assert!(IceServer::parse("stun:u:p@h", None, None).is_err());
    }

    #[test]
    fn hub_ice_servers_deserialize() {
        let v: Vec<IceServer> = serde_json::from_str(
            r#"[{"urls":"stun:h:1"},{"urls":["turn:h:1?transport=udp"],"username":"u","credential":"c"}]"#,
        )
        .unwrap();
        assert_eq!(v[0].urls, vec!["stun:h:1"]);
        assert_eq!(v[1].credential.as_deref(), Some("c"));
    }
}
