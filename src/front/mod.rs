//! The relay's one TLS port (`warren relay --tls ADDR`, usually 443), for
//! networks that let only web traffic out. Each connection is routed by
//! its first bytes, then by ALPN:
//!
//! - `SSH-…`: plain SSH, served exactly as on the SSH port.
//! - TLS (rustls, the certificate reloaded on SIGHUP, see
//!   `transport::tls::CertFiles`) with ALPN `warren-ssh`: the same SSH
//!   server, over the TLS stream.
//! - TLS with `h2`, `http/1.1` or no ALPN: HTTP ([`http`]): the console and
//!   API when `--http` is on, and `GET /ssh` with a WebSocket upgrade, which
//!   carries SSH for proxies that strip ALPN or terminate TLS themselves.
//!
//! It sits beside `web` over `relay`: the SSH sessions are the relay's
//! ([`Relay::admit`], [`Relay::serve_connection`]); the HTTP side is `web`'s
//! router.

pub mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::relay::{Admission, Relay};
use crate::transport::{ALPN_H2, ALPN_HTTP1, ALPN_SSH, tls::CertFiles};

/// How long to wait between looks at a connection that sent only part of
/// `SSH-` (a client writing its version line a byte at a time). Bounded
/// by the handshake timeout.
const PEEK_AGAIN: Duration = Duration::from_millis(5);

/// What the first bytes of a connection say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    /// An SSH version line.
    Ssh,
    /// A TLS handshake record (ClientHello).
    Tls,
    /// Neither: closed without a word.
    Other,
}

/// Classifies the first bytes; `None`: too few to tell yet.
pub fn classify(first: &[u8]) -> Option<First> {
    const TLS_HANDSHAKE: u8 = 0x16;
    match first.first() {
        None => None,
        Some(&TLS_HANDSHAKE) => Some(First::Tls),
        Some(_) if first.len() >= 4 => Some(if first.starts_with(b"SSH-") {
            First::Ssh
        } else {
            First::Other
        }),
        Some(_) if b"SSH-".starts_with(first) => None,
        Some(_) => Some(First::Other),
    }
}

/// Where a TLS connection goes, by the protocol ALPN settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Ssh,
    Http,
}

pub fn route(alpn: Option<&[u8]>) -> Route {
    match alpn {
        Some(p) if p == ALPN_SSH => Route::Ssh,
        // h2, http/1.1, or nothing (curl without ALPN, a TLS-terminating
        // proxy's own connection).
        _ => Route::Http,
    }
}

/// The TLS port's settings.
pub struct Front {
    pub certs: Arc<CertFiles>,
    /// The console and API (`--http` on); without it the port serves only
    /// `/ssh` over HTTP.
    pub web: Option<crate::web::Web>,
}

/// Accepts on `listener` until `stop`; every connection's task runs on the
/// relay's tracker, so shutdown drains them with the SSH port's.
pub async fn serve(
    relay: Arc<Relay>,
    listener: TcpListener,
    front: Front,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let config = front
        .certs
        .server_config(&[ALPN_SSH, ALPN_H2, ALPN_HTTP1])?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let router = http::router(&relay, front.web);
    tracing::info!(addr = %listener.local_addr()?, "TLS port listening (SSH, WebSocket, HTTPS)");
    let tasks = relay.tasks();
    let admit = |tcp: TcpStream, peer: SocketAddr| {
        let admitted = relay.admit(peer)?;
        Some(connection(
            relay.clone(),
            tcp,
            peer,
            admitted,
            acceptor.clone(),
            router.clone(),
        ))
    };
    crate::relay::listen::accept_loop(listener, stop, tasks, admit).await;
    Ok(())
}

/// One connection of the TLS port: classify, handshake, route; all under
/// the relay's handshake timeout until it is SSH or HTTP.
async fn connection(
    relay: Arc<Relay>,
    tcp: TcpStream,
    peer: SocketAddr,
    admitted: Admission,
    acceptor: TlsAcceptor,
    router: axum::Router,
) {
    let limit = relay.handshake_timeout();
    let first = match tokio::time::timeout(limit, peek(&tcp)).await {
        Ok(Ok(f)) => f,
        _ => return,
    };
    match first {
        First::Other => tracing::debug!(%peer, "TLS port: neither TLS nor SSH; closed"),
        First::Ssh => relay.serve_connection(tcp, peer, admitted).await,
        First::Tls => {
            let tls = match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            match route(tls.get_ref().1.alpn_protocol()) {
                Route::Ssh => match crate::ssh::Socket::bridge(tls) {
                    Ok(socket) => relay.serve_connection(socket, peer, admitted).await,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "no socket pair for a TLS connection")
                    }
                },
                Route::Http => {
                    // HTTP is not an SSH login: free the slot now; an
                    // upgrade to SSH on /ssh asks for one again.
                    drop(admitted);
                    http::serve_connection(&relay, tls, peer, router).await;
                }
            }
        }
    }
}

/// Looks at the first bytes without taking them.
async fn peek(tcp: &TcpStream) -> std::io::Result<First> {
    let mut buf = [0u8; 4];
    loop {
        let n = tcp.peek(&mut buf).await?;
        if n == 0 {
            return Ok(First::Other);
        }
        if let Some(f) = classify(&buf[..n]) {
            return Ok(f);
        }
        tokio::time::sleep(PEEK_AGAIN).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_pick_ssh_tls_or_nothing() {
        assert_eq!(classify(b"SSH-2.0-OpenSSH_9.6\r\n"), Some(First::Ssh));
        assert_eq!(classify(b"SSH-"), Some(First::Ssh));
        assert_eq!(classify(&[0x16, 0x03, 0x01]), Some(First::Tls));
        assert_eq!(classify(&[0x16]), Some(First::Tls));
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(First::Other));
        assert_eq!(classify(b"SSX-"), Some(First::Other));
        assert_eq!(classify(b"G"), Some(First::Other));
        assert_eq!(classify(b"SS"), None, "wait for more");
        assert_eq!(classify(b""), None);
    }

    #[test]
    fn alpn_routes_ssh_or_http() {
        assert_eq!(route(Some(b"warren-ssh")), Route::Ssh);
        assert_eq!(route(Some(b"h2")), Route::Http);
        assert_eq!(route(Some(b"http/1.1")), Route::Http);
        assert_eq!(route(None), Route::Http);
    }

    #[tokio::test]
    async fn peek_leaves_the_bytes_for_the_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (mut s, _) = l.accept().await.unwrap();
        c.write_all(b"SS").await.unwrap();
        let looking = tokio::spawn(async move {
            let f = peek(&s).await.unwrap();
            let mut line = [0u8; 8];
            s.read_exact(&mut line).await.unwrap();
            (f, line)
        });
        c.write_all(b"H-2.0-x\n").await.unwrap();
        let (f, line) = looking.await.unwrap();
        assert_eq!(f, First::Ssh);
        assert_eq!(&line, b"SSH-2.0-");
    }
}
