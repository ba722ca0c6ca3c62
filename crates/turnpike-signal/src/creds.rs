//! Short-lived TURN credentials with the coturn "TURN REST API" formula, and the
//! `RTCIceServer` list handed to peers.
//!
//! `username = "<expiry unix time>:<user id>"`, `password = base64(HMAC-SHA1(secret, username))`.
//! Any TURN server configured with the same shared secret (this one, coturn's
//! `use-auth-secret`/`static-auth-secret`, eturnal) accepts them until the expiry.

use serde::Serialize;
use turnpike_proto::credential;

/// A username/password pair.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Credential {
    /// `EXPIRY:USERID`.
    pub username: String,
    /// base64(HMAC-SHA1(secret, username)).
    pub password: String,
}

/// Mints a credential for `user` valid until `unix_now + ttl_secs`.
pub fn mint(secret: &[u8], user: &str, unix_now: u64, ttl_secs: u64) -> Credential {
    let username = credential::rest_username(unix_now.saturating_add(ttl_secs), user);
    Credential {
        password: password(secret, &username),
        username,
    }
}

/// The password for `username` under `secret`.
pub fn password(secret: &[u8], username: &str) -> String {
    credential::rest_password(secret, username)
}

/// One entry of `RTCConfiguration.iceServers`, as browsers expect it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceServer {
    /// `stun:` / `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (absent for STUN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password (absent for STUN).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// What the hub hands out: STUN URLs, TURN URLs and the secret to sign credentials with.
///
/// A URL may contain `{host}`, replaced by the host name the client used to reach the hub (its
/// HTTP `Host`), so a hub behind a name hands out that name without configuration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IceConfig {
    /// `stun:HOST:PORT` URLs.
    pub stun_urls: Vec<String>,
    /// `turn:`/`turns:` URLs (with `?transport=` as needed).
    pub turn_urls: Vec<String>,
    /// What `{host}` becomes when the client's host is unknown.
    pub default_host: String,
    /// The shared secret TURN credentials are signed with; without one, only STUN is offered.
    pub secret: Option<Vec<u8>>,
    /// Credential lifetime in seconds.
    pub ttl_secs: u64,
}

impl IceConfig {
    /// The `iceServers` list for `user`, with credentials valid for `ttl_secs` from
    /// `unix_now`.
    pub fn ice_servers(&self, user: &str, unix_now: u64) -> Vec<IceServer> {
        self.ice_servers_for(user, unix_now, None)
    }

    /// Like [`IceConfig::ice_servers`], with `{host}` in the URLs replaced by `host` (or the
    /// default host).
    pub fn ice_servers_for(&self, user: &str, unix_now: u64, host: Option<&str>) -> Vec<IceServer> {
        let host = host.unwrap_or(&self.default_host);
        let fill = |urls: &[String]| -> Vec<String> {
            urls.iter().map(|u| u.replace("{host}", host)).collect()
        };
        let mut out = Vec::new();
        if !self.stun_urls.is_empty() {
            out.push(IceServer {
                urls: fill(&self.stun_urls),
                username: None,
                credential: None,
            });
        }
        if let (Some(secret), false) = (&self.secret, self.turn_urls.is_empty()) {
            let c = mint(secret, user, unix_now, self.ttl_secs);
            out.push(IceServer {
                urls: fill(&self.turn_urls),
                username: Some(c.username),
                credential: Some(c.password),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coturn_formula() {
        // Cross-checked with: echo -n "1700000000:alice" | openssl dgst -sha1 -hmac secret -binary | base64
        let c = mint(b"secret", "alice", 1_699_999_700, 300);
        assert_eq!(c.username, "1700000000:alice");
        assert_eq!(c.password, "d8soP47RbdIKLDUOpnJPVQyq5Ts=");
        assert_ne!(password(b"other", "1700000000:alice"), c.password);
    }

    #[test]
    fn ice_servers_shape() {
        let cfg = IceConfig {
            stun_urls: vec!["stun:example.net:3478".into()],
            turn_urls: vec!["turn:example.net:3478?transport=udp".into()],
            secret: Some(b"s".to_vec()),
            ttl_secs: 300,
            default_host: String::new(),
        };
        let v = serde_json::to_value(cfg.ice_servers("p1", 1000)).unwrap();
        assert_eq!(v[0], serde_json::json!({"urls": ["stun:example.net:3478"]}));
        assert_eq!(v[1]["username"], "1300:p1");
        assert!(v[1]["credential"].is_string());
        let no_secret = IceConfig {
            secret: None,
            ..cfg
        };
        assert_eq!(no_secret.ice_servers("p1", 1000).len(), 1);
        let templ = IceConfig {
            stun_urls: vec!["stun:{host}:3478".into()],
            default_host: "192.0.2.1".into(),
            ..IceConfig::default()
        };
        let urls = |h: Option<&str>| templ.ice_servers_for("p", 0, h)[0].urls.clone();
        assert_eq!(urls(Some("hub.example")), ["stun:hub.example:3478"]);
        assert_eq!(urls(None), ["stun:192.0.2.1:3478"]);
    }
}
