//! Reaching the relay: the byte stream an agent or a client command runs
//! SSH on, for each form of relay address ([`RelayEndpoint`]):
//!
//! - `HOST:PORT`: plain TCP to the relay's SSH port.
//! - `tls://HOST[:PORT]`: TLS with ALPN `warren-ssh` to the relay's `--tls`
//!   port, which hands the connection to the same SSH server.
//! - `wss://HOST[:PORT]/ssh`: a WebSocket over TLS (ALPN `http/1.1`), for
//!   proxies that strip ALPN or terminate TLS themselves.
//!
//! The certificate is checked against the system's roots or a given CA
//! ([`tls`]); `HTTPS_PROXY` (minus `NO_PROXY`) sends TLS connections
//! through an HTTP proxy with `CONNECT` ([`proxy`]). The relay's SSH host
//! key stays pinned by the SSH layer above, whatever the path. Every
//! failure is a [`DialError`] that names its layer.

pub mod proxy;
pub mod tls;
pub mod ws;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpStream;

use crate::protocol::RelayEndpoint;
use crate::ssh::socket::Socket;

/// ALPN protocol of SSH inside TLS.
pub const ALPN_SSH: &[u8] = b"warren-ssh";
/// ALPN protocols of HTTP (the console, the API, and `/ssh` WebSockets).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";
pub const ALPN_H2: &[u8] = b"h2";

/// How to dial; `Default` is what the agent and the clients use.
#[derive(Debug, Clone)]
pub struct DialOptions {
    /// A CA (PEM) that signs the relay's certificate, instead of the
    /// system's roots (`--ca`, `relay_ca`).
    pub ca: Option<PathBuf>,
    /// Each layer (TCP, proxy, TLS, WebSocket) gets this long.
    pub timeout: Duration,
    /// The HTTP proxy for TLS connections; `None`: from the environment.
    pub proxy: ProxyChoice,
}

/// Where the HTTP proxy comes from.
#[derive(Debug, Clone, Default)]
pub enum ProxyChoice {
    /// `HTTPS_PROXY`/`https_proxy`, minus `NO_PROXY`/`no_proxy`.
    #[default]
    Environment,
    /// This proxy, whatever the environment says.
    Use(proxy::ProxyUrl),
    /// No proxy.
    Direct,
}

impl Default for DialOptions {
    fn default() -> Self {
        DialOptions {
            ca: None,
            timeout: crate::protocol::limits::HANDSHAKE_TIMEOUT,
            proxy: ProxyChoice::Environment,
        }
    }
}

/// Why the relay could not be reached, by layer. The text is what a person
/// reads; tests match the variant.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("{0}")]
    Address(String),
    #[error("TCP: connection to {addr} refused (nothing listens there, or a firewall rejects it)")]
    TcpRefused { addr: String },
    #[error(
        "TCP: connecting to {addr} timed out after {after:?} (a firewall that drops the port?)"
    )]
    TcpTimedOut { addr: String, after: Duration },
    #[error("TCP: cannot reach {addr}: {error}")]
    Tcp { addr: String, error: io::Error },
    #[error("HTTP proxy {proxy}: refused CONNECT to {target}: {status}")]
    ProxyRefused {
        proxy: String,
        target: String,
        status: String,
    },
    #[error("HTTP proxy {proxy}: {why}")]
    Proxy { proxy: String, why: String },
    #[error(
        "TLS: the certificate of {host} is not trusted ({reason}); subject {subject}, issuer {issuer} \
         (give the CA that signed it with --ca or relay_ca)"
    )]
    CertUntrusted {
        host: String,
        reason: String,
        subject: String,
        issuer: String,
    },
    #[error(
        "TLS: {host} did not offer ALPN {wanted} (not a Warren relay's --tls port, or a proxy \
         strips ALPN; wss://{host}/ssh goes through such proxies)"
    )]
    AlpnNotOffered { host: String, wanted: String },
    #[error("TLS: handshake with {host} failed: {why}")]
    Tls { host: String, why: String },
    #[error("TLS: cannot check the relay's certificate: {0}")]
    Roots(String),
    #[error("WebSocket: upgrade at {url} refused: HTTP {status}")]
    WebSocketRefused { url: String, status: String },
    #[error("WebSocket: {url}: {why}")]
    WebSocket { url: String, why: String },
    #[error("{layer}: no answer from {addr} within {after:?}")]
    TimedOut {
        layer: &'static str,
        addr: String,
        after: Duration,
    },
}

impl DialError {
    /// A stable code for the layer that failed (`--json`, logs).
    pub fn code(&self) -> &'static str {
        match self {
            DialError::Address(_) => "address",
            DialError::TcpRefused { .. } => "tcp_refused",
            DialError::TcpTimedOut { .. } => "tcp_timed_out",
            DialError::Tcp { .. } => "tcp",
            DialError::ProxyRefused { .. } => "proxy_refused",
            DialError::Proxy { .. } => "proxy",
            DialError::CertUntrusted { .. } => "certificate_untrusted",
            DialError::AlpnNotOffered { .. } => "alpn_not_offered",
            DialError::Tls { .. } => "tls",
            DialError::Roots(_) => "tls_roots",
            DialError::WebSocketRefused { .. } => "websocket_refused",
            DialError::WebSocket { .. } => "websocket",
            DialError::TimedOut { .. } => "timed_out",
        }
    }
}

/// Dials `relay` (any address form) and returns the socket the SSH
/// connection runs on.
pub async fn dial(relay: &str, o: &DialOptions) -> Result<Socket, DialError> {
    let ep = RelayEndpoint::parse(relay).map_err(|e| DialError::Address(format!("{e:#}")))?;
    let tcp = tcp_or_proxy(&ep, o).await?;
    match &ep {
        RelayEndpoint::Ssh { .. } => Ok(Socket::Tcp(tcp)),
        RelayEndpoint::Tls { host, .. } => {
            let config = tls::client_config(o.ca.as_deref(), &[ALPN_SSH])?;
            let stream = timed("TLS", &ep, o, tls::connect(config, host, tcp)).await?;
            let offered = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
            if offered.as_deref() != Some(ALPN_SSH) {
                return Err(DialError::AlpnNotOffered {
                    host: host.clone(),
                    wanted: "warren-ssh".into(),
                });
            }
            Socket::bridge(stream).map_err(|e| DialError::Tls {
                host: host.clone(),
                why: e.to_string(),
            })
        }
        RelayEndpoint::Wss { host, .. } => {
            let config = tls::client_config(o.ca.as_deref(), &[ALPN_HTTP1])?;
            let stream = timed("TLS", &ep, o, tls::connect(config, host, tcp)).await?;
            let url = ep.to_string();
            let ws = timed("WebSocket", &ep, o, ws::client(&url, stream)).await?;
            ws::bridge(ws).map_err(|e| DialError::WebSocket {
                url,
                why: e.to_string(),
            })
        }
    }
}

async fn timed<T>(
    layer: &'static str,
    ep: &RelayEndpoint,
    o: &DialOptions,
    f: impl Future<Output = Result<T, DialError>>,
) -> Result<T, DialError> {
    match tokio::time::timeout(o.timeout, f).await {
        Ok(r) => r,
        Err(_) => Err(DialError::TimedOut {
            layer,
            addr: ep.host_port(),
            after: o.timeout,
        }),
    }
}

/// TCP to the relay, or to the proxy and through it with `CONNECT` (TLS
/// forms only: a proxy for HTTPS carries HTTPS ports).
async fn tcp_or_proxy(ep: &RelayEndpoint, o: &DialOptions) -> Result<TcpStream, DialError> {
    let target = ep.host_port();
    let proxy = match (&o.proxy, ep.is_tls()) {
        (_, false) | (ProxyChoice::Direct, _) => None,
        (ProxyChoice::Use(p), true) => Some(p.clone()),
        (ProxyChoice::Environment, true) => {
            proxy::from_environment(ep.host()).map_err(|why| DialError::Proxy {
                proxy: "from HTTPS_PROXY".into(),
                why,
            })?
        }
    };
    match proxy {
        None => tcp(&target, o.timeout).await,
        Some(p) => {
            let mut s = tcp(&p.host_port(), o.timeout).await?;
            timed("HTTP proxy", ep, o, proxy::connect(&mut s, &p, &target)).await?;
            Ok(s)
        }
    }
}

async fn tcp(addr: &str, timeout: Duration) -> Result<TcpStream, DialError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Err(DialError::TcpRefused {
            addr: addr.to_string(),
        }),
        Ok(Err(e)) if e.kind() == io::ErrorKind::TimedOut => Err(DialError::TcpTimedOut {
            addr: addr.to_string(),
            after: timeout,
        }),
        Ok(Err(error)) => Err(DialError::Tcp {
            addr: addr.to_string(),
            error,
        }),
        Err(_) => Err(DialError::TcpTimedOut {
            addr: addr.to_string(),
            after: timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_refused_at_the_tcp_layer() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = dial(&addr.to_string(), &DialOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, DialError::TcpRefused { .. }), "{e}");
        assert!(e.to_string().starts_with("TCP: connection to"), "{e}");
        assert_eq!(e.code(), "tcp_refused");
    }

    #[test]
    fn every_layer_is_named_in_its_message() {
        let cases = [
            (
                DialError::CertUntrusted {
                    host: "r".into(),
                    reason: "expired".into(),
                    subject: "CN=r".into(),
                    issuer: "CN=ca".into(),
                },
                "TLS: the certificate of r is not trusted (expired); subject CN=r, issuer CN=ca",
            ),
            (
                DialError::AlpnNotOffered {
                    host: "r".into(),
                    wanted: "warren-ssh".into(),
                },
                "TLS: r did not offer ALPN warren-ssh",
            ),
            (
                DialError::WebSocketRefused {
                    url: "wss://r:443/ssh".into(),
                    status: "403 Forbidden".into(),
                },
                "WebSocket: upgrade at wss://r:443/ssh refused: HTTP 403 Forbidden",
            ),
            (
                DialError::TcpTimedOut {
                    addr: "r:443".into(),
                    after: Duration::from_secs(20),
                },
                "TCP: connecting to r:443 timed out after 20s",
            ),
        ];
        for (e, start) in cases {
            assert!(e.to_string().starts_with(start), "{e}");
        }
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let ca = std::path::Path::new("/nonexistent/ca.pem");
        let e = tls::client_config(Some(ca), &[ALPN_SSH]).unwrap_err();
        assert!(matches!(e, DialError::Roots(_)), "{e}");
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }

    #[tokio::test]
    async fn a_bad_address_says_which_forms_exist() {
        let e = dial("ftp://relay", &DialOptions::default())
            .await
            .unwrap_err();
        assert!(matches!(e, DialError::Address(_)));
        assert!(e.to_string().contains("tls://HOST:PORT"), "{e}");
    }
}
