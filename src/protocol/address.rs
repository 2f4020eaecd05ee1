//! The relay's address as agents and controllers dial it.

use std::fmt;

use anyhow::{Result, bail};

use super::limits::DEFAULT_RELAY_PORT;

/// `HOST:PORT`, `[V6]:PORT`; parsed from `host`, `host:port`, a bare IPv6
/// address or `[v6]:port`, with the port defaulting to
/// [`DEFAULT_RELAY_PORT`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelayAddress(String);

impl RelayAddress {
    pub fn parse(s: &str) -> Result<RelayAddress> {
        let s = s.trim();
        if s.is_empty() {
            bail!("relay address is empty (expected HOST:PORT)");
        }
        if s.contains("://") {
            // tls://HOST:PORT or wss://HOST/PATH, written out in full.
            return Ok(RelayAddress(RelayEndpoint::parse(s)?.to_string()));
        }
        if s.starts_with('[') || s.rsplit_once(':').is_some_and(|(h, _)| !h.contains(':')) {
            let port = s.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                bail!("relay address {s:?}: bad port");
            }
            return Ok(RelayAddress(s.to_string()));
        }
        if s.contains(':') {
            // A bare IPv6 address.
            return Ok(RelayAddress(format!("[{s}]:{DEFAULT_RELAY_PORT}")));
        }
        Ok(RelayAddress(format!("{s}:{DEFAULT_RELAY_PORT}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for RelayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Port of `tls://HOST` and `wss://HOST/…` when none is given: HTTPS.
pub const DEFAULT_TLS_PORT: u16 = 443;

/// How a relay is reached, parsed from a relay address: `HOST:PORT`
/// (plain SSH), `tls://HOST[:PORT]` (SSH inside TLS, ALPN `warren-ssh`), or
/// `wss://HOST[:PORT]/PATH` (SSH inside a WebSocket inside TLS, for proxies
/// that strip ALPN or terminate TLS themselves).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEndpoint {
    Ssh {
        host: String,
        port: u16,
    },
    Tls {
        host: String,
        port: u16,
    },
    Wss {
        host: String,
        port: u16,
        path: String,
    },
}

impl RelayEndpoint {
    pub fn parse(s: &str) -> Result<RelayEndpoint> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("tls://") {
            let (host, port) = host_port(rest.trim_end_matches('/'), s)?;
            return Ok(RelayEndpoint::Tls { host, port });
        }
        if let Some(rest) = s.strip_prefix("wss://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/ssh"),
            };
            if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("relay address {s:?}: bad path");
            }
            let (host, port) = host_port(authority, s)?;
            return Ok(RelayEndpoint::Wss {
                host,
                port,
                path: path.to_string(),
            });
        }
        if let Some((scheme, _)) = s.split_once("://") {
            bail!(
                "relay address {s:?}: unknown scheme {scheme:?} (use HOST:PORT, tls://HOST:PORT or wss://HOST/ssh)"
            );
        }
        let plain = RelayAddress::parse(s)?;
        let (host, port) = plain
            .0
            .rsplit_once(':')
            .map(|(h, p)| (h.trim_matches(['[', ']']).to_string(), p))
            .ok_or_else(|| anyhow::anyhow!("relay address {s:?}: no port"))?;
        let port = port
            .parse()
            .map_err(|_| anyhow::anyhow!("relay address {s:?}: bad port"))?;
        Ok(RelayEndpoint::Ssh { host, port })
    }

    /// The host name (or IP address, without brackets) dialled and, for
    /// TLS, checked against the certificate.
    pub fn host(&self) -> &str {
        match self {
            RelayEndpoint::Ssh { host, .. }
            | RelayEndpoint::Tls { host, .. }
            | RelayEndpoint::Wss { host, .. } => host,
        }
    }

    pub fn port(&self) -> u16 {
        match self {
            RelayEndpoint::Ssh { port, .. }
            | RelayEndpoint::Tls { port, .. }
            | RelayEndpoint::Wss { port, .. } => *port,
        }
    }

    /// `HOST:PORT` as a socket address string (`[V6]:PORT` for IPv6).
    pub fn host_port(&self) -> String {
        if self.host().contains(':') {
            format!("[{}]:{}", self.host(), self.port())
        } else {
            format!("{}:{}", self.host(), self.port())
        }
    }

    /// The same relay over TLS: `HOST:PORT` becomes `tls://HOST:443`; TLS
    /// forms stay as they are.
    pub fn over_tls(self) -> RelayEndpoint {
        match self {
            RelayEndpoint::Ssh { host, .. } => RelayEndpoint::Tls {
                host,
                port: DEFAULT_TLS_PORT,
            },
            tls => tls,
        }
    }

    /// Whether the relay is reached over TLS (`tls://` or `wss://`).
    pub fn is_tls(&self) -> bool {
        !matches!(self, RelayEndpoint::Ssh { .. })
    }
}

impl fmt::Display for RelayEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RelayEndpoint::Ssh { .. } => f.write_str(&self.host_port()),
            RelayEndpoint::Tls { .. } => write!(f, "tls://{}", self.host_port()),
            RelayEndpoint::Wss { path, .. } => write!(f, "wss://{}{path}", self.host_port()),
        }
    }
}

/// `HOST[:PORT]` or `[V6][:PORT]` after a scheme; the port defaults to 443.
fn host_port(authority: &str, whole: &str) -> Result<(String, u16)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| anyhow::anyhow!("relay address {whole:?}: unclosed '['"))?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => bail!("relay address {whole:?}: bad port"),
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() || host.contains(['/', '@', ' ']) {
        bail!("relay address {whole:?}: no host name");
    }
    let port = match port {
        None => DEFAULT_TLS_PORT,
        Some(p) => match p.parse::<u16>() {
            Ok(0) | Err(_) => bail!("relay address {whole:?}: bad port"),
            Ok(n) => n,
        },
    };
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<String> {
        RelayAddress::parse(s).map(RelayAddress::into_string)
    }

    #[test]
    fn relay_addresses_get_a_default_port() {
        assert_eq!(parse("relay.example").unwrap(), "relay.example:2222");
        assert_eq!(parse("relay.example:22").unwrap(), "relay.example:22");
        assert_eq!(parse("::1").unwrap(), "[::1]:2222");
        assert_eq!(parse("[::1]:2200").unwrap(), "[::1]:2200");
        assert!(parse("").is_err());
        assert!(parse("relay:0").is_err());
        assert!(parse("relay:http").is_err());
        assert_eq!(
            parse("tls://relay.example").unwrap(),
            "tls://relay.example:443"
        );
        assert_eq!(
            parse("wss://relay.example").unwrap(),
            "wss://relay.example:443/ssh"
        );
    }

    #[test]
    fn endpoints_of_each_form() {
        let e = RelayEndpoint::parse;
        assert_eq!(
            e("relay.example:2200").unwrap(),
            RelayEndpoint::Ssh {
                host: "relay.example".into(),
                port: 2200
            }
        );
        assert_eq!(
            e("tls://relay.example:8443").unwrap(),
            RelayEndpoint::Tls {
                host: "relay.example".into(),
                port: 8443
            }
        );
        let w = e("wss://[::1]/warren/ssh").unwrap();
        assert_eq!(
            w,
            RelayEndpoint::Wss {
                host: "::1".into(),
                port: 443,
                path: "/warren/ssh".into()
            }
        );
        assert_eq!(w.host_port(), "[::1]:443");
        assert_eq!(w.to_string(), "wss://[::1]:443/warren/ssh");
        assert!(e("tls://relay:0").is_err());
        assert!(e("tls://").is_err());
        assert!(
            e("https://relay")
                .unwrap_err()
                .to_string()
                .contains("unknown scheme")
        );
        assert!(e("wss://user@relay/ssh").is_err());
        assert!(!e("relay").unwrap().is_tls() && e("tls://relay").unwrap().is_tls());
        assert_eq!(
            e("relay:2222").unwrap().over_tls().to_string(),
            "tls://relay:443"
        );
        assert_eq!(
            e("wss://r/ssh").unwrap().over_tls().to_string(),
            "wss://r:443/ssh"
        );
    }
}
