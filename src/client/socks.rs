//! `warren socks`: a SOCKS5 server (RFC 1928, with RFC 1929 username and
//! password) that resolves names through the relay. A CONNECT to `dev1:8080`
//! becomes a stream to device `dev1` port 8080; names are never resolved
//! locally, so `curl --socks5-hostname` and browsers with remote DNS reach
//! devices by name.
//!
//! The accept loop only accepts and spawns; the greeting, authentication and
//! request run in the connection's task under [`SOCKS_HANDSHAKE_TIMEOUT`] and a
//! cap of [`MAX_SOCKS_HANDSHAKES`] connections in that phase.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Result, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::tunnel::{OpenError, Tunnel};
use crate::policy::{self, SocksClass};
use crate::protocol::limits::{
    MAX_SOCKS_CREDENTIAL, MAX_SOCKS_HANDSHAKES, SOCKS_HANDSHAKE_TIMEOUT,
};

const VERSION: u8 = 5;
const AUTH_VERSION: u8 = 1;
const METHOD_NONE: u8 = 0x00;
const METHOD_PASSWORD: u8 = 0x02;
const METHOD_UNACCEPTABLE: u8 = 0xff;
const CMD_CONNECT: u8 = 0x01;
const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// SOCKS5 reply codes (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// A username and password for the listener (RFC 1929). Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}:***)", self.user)
    }
}

impl Credentials {
    /// Parses `USER:PASSWORD` (the password may contain colons).
    pub fn parse(s: &str) -> Result<Credentials> {
        let Some((user, password)) = s.split_once(':') else {
            bail!("SOCKS credentials must be USER:PASSWORD");
        };
        if user.is_empty() || password.is_empty() {
            bail!("SOCKS credentials must be USER:PASSWORD, both non-empty");
        }
        if user.len() > MAX_SOCKS_CREDENTIAL || password.len() > MAX_SOCKS_CREDENTIAL {
            bail!("SOCKS user and password are at most {MAX_SOCKS_CREDENTIAL} bytes each");
        }
        Ok(Credentials {
            user: user.into(),
            password: password.into(),
        })
    }

    fn matches(&self, user: &[u8], password: &[u8]) -> bool {
        // Constant time whatever the first difference, so the time taken
        // says nothing about how much of a guess was right.
        use subtle::ConstantTimeEq;
        let u = self.user.as_bytes().ct_eq(user);
        let p = self.password.as_bytes().ct_eq(password);
        (u & p).into()
    }
}

/// Refuses to serve an open proxy: a listener that is not on loopback
/// needs credentials.
pub fn check_listen(addr: SocketAddr, auth: Option<&Credentials>) -> Result<()> {
    if !addr.ip().is_loopback() && auth.is_none() {
        bail!(
            "refusing to listen on {addr} without authentication: anyone who can reach it could use \
             your relay key; give --auth USER:PASSWORD (or socks_auth in client.toml), or listen on 127.0.0.1"
        );
    }
    Ok(())
}

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub host: String,
    pub port: u16,
}

/// Why a handshake ended without a request to carry out.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client broke the protocol or failed authentication; the reply (if
    /// any) was sent.
    #[error("{0}")]
    Protocol(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

fn protocol(msg: impl Into<String>) -> HandshakeError {
    HandshakeError::Protocol(msg.into())
}

/// Runs the greeting, authentication and request on `s`. On a request that
/// cannot be served (not CONNECT, bad address type) the failure reply is sent
/// here; on success the caller sends the final reply.
pub async fn handshake<S>(s: &mut S, auth: Option<&Credentials>) -> Result<Request, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let [version, n] = read_array::<2, _>(s).await?;
    if version != VERSION {
        return Err(protocol(format!("not SOCKS5 (version byte {version})")));
    }
    let mut methods = vec![0u8; usize::from(n)];
    s.read_exact(&mut methods).await?;
    let wanted = if auth.is_some() {
        METHOD_PASSWORD
    } else {
        METHOD_NONE
    };
    if !methods.contains(&wanted) {
        s.write_all(&[VERSION, METHOD_UNACCEPTABLE]).await?;
        return Err(protocol(if auth.is_some() {
            "client does not offer username/password authentication"
        } else {
            "client does not offer the no-authentication method"
        }));
    }
    s.write_all(&[VERSION, wanted]).await?;
    if let Some(creds) = auth {
        let [v, ulen] = read_array::<2, _>(s).await?;
        if v != AUTH_VERSION {
            return Err(protocol(format!("bad auth version {v}")));
        }
        let mut user = vec![0u8; usize::from(ulen)];
        s.read_exact(&mut user).await?;
        let [plen] = read_array::<1, _>(s).await?;
        let mut password = vec![0u8; usize::from(plen)];
        s.read_exact(&mut password).await?;
        if !creds.matches(&user, &password) {
            s.write_all(&[AUTH_VERSION, 1]).await?;
            return Err(protocol("wrong username or password"));
        }
        s.write_all(&[AUTH_VERSION, 0]).await?;
    }
    let [version, cmd, _reserved, atyp] = read_array::<4, _>(s).await?;
    if version != VERSION {
        return Err(protocol(format!("bad request version {version}")));
    }
    let host = match atyp {
        ATYP_DOMAIN => {
            let [len] = read_array::<1, _>(s).await?;
            let mut name = vec![0u8; usize::from(len)];
            s.read_exact(&mut name).await?;
            String::from_utf8(name).unwrap_or_default()
        }
        // Addresses go to the relay as text: it refuses them unless a
        // gateway covers them.
        ATYP_IPV4 => Ipv4Addr::from(read_array::<4, _>(s).await?).to_string(),
        ATYP_IPV6 => Ipv6Addr::from(read_array::<16, _>(s).await?).to_string(),
        other => {
            reply(s, Reply::AddressTypeNotSupported).await?;
            return Err(protocol(format!("address type {other} is not supported")));
        }
    };
    let port = u16::from_be_bytes(read_array::<2, _>(s).await?);
    if cmd != CMD_CONNECT {
        reply(s, Reply::CommandNotSupported).await?;
        return Err(protocol(format!(
            "command {cmd} is not supported (only CONNECT)"
        )));
    }
    if host.is_empty() {
        reply(s, Reply::HostUnreachable).await?;
        return Err(protocol("empty or non-UTF-8 host name"));
    }
    Ok(Request { host, port })
}

async fn read_array<const N: usize, S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<[u8; N]> {
    let mut b = [0u8; N];
    s.read_exact(&mut b).await?;
    Ok(b)
}

/// Sends a reply. The bound address is not meaningful through a relay and
/// is sent as 0.0.0.0:0, as clients expect some address.
pub async fn reply<S: AsyncWrite + Unpin>(s: &mut S, code: Reply) -> std::io::Result<()> {
    s.write_all(&[VERSION, code as u8, 0, ATYP_IPV4, 0, 0, 0, 0, 0, 0])
        .await?;
    s.flush().await
}

/// The SOCKS reply for a stream the relay could not open.
///
/// The relay's refusals are sentences (for people reading `ssh` output);
/// [`policy::classify`] knows the phrasings it and the agent use for each
/// case, next to the texts themselves.
pub fn reply_for(err: &OpenError) -> Reply {
    match err {
        OpenError::NoRelay(_) => Reply::NetworkUnreachable,
        OpenError::Failed(_) => Reply::GeneralFailure,
        OpenError::Refused(why) => match policy::classify(why) {
            Some(SocksClass::HostUnreachable) => Reply::HostUnreachable,
            Some(SocksClass::NotAllowed) => Reply::NotAllowed,
            Some(SocksClass::TtlExpired) => Reply::TtlExpired,
            Some(SocksClass::ConnectionRefused) => Reply::ConnectionRefused,
            None => Reply::GeneralFailure,
        },
    }
}

/// Serves SOCKS5 on `listener` until `shutdown`, carrying every stream over
/// `tunnel`.
pub async fn serve(
    listener: TcpListener,
    tunnel: Arc<Tunnel>,
    auth: Option<Credentials>,
    shutdown: CancellationToken,
) {
    let auth = Arc::new(auth);
    let pending = Arc::new(Semaphore::new(MAX_SOCKS_HANDSHAKES));
    let tasks = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = MAX_SOCKS_HANDSHAKES, "too many SOCKS handshakes in progress; closing new one");
            continue;
        };
        let span = tracing::info_span!("socks", %peer, target = tracing::field::Empty);
        let (tunnel, auth) = (tunnel.clone(), auth.clone());
        tasks.spawn(
            async move {
                let mut stream = stream;
                let _ = stream.set_nodelay(true);
                let request = tokio::time::timeout(
                    SOCKS_HANDSHAKE_TIMEOUT,
                    handshake(&mut stream, (*auth).as_ref()),
                )
                .await;
                drop(permit);
                let req = match request {
                    Err(_) => return tracing::info!("SOCKS handshake timed out"),
                    Ok(Err(e)) => return tracing::info!("SOCKS handshake refused: {e}"),
                    Ok(Ok(r)) => r,
                };
                let Some(channel) = open(&mut stream, &tunnel, &req).await else {
                    return;
                };
                let stats = channel.splice_tcp(stream).await;
                tracing::debug!(
                    sent = stats.sent,
                    received = stats.received,
                    "stream closed"
                );
            }
            .instrument(span),
        );
    }
    tasks.close();
}

/// Opens the stream the client asked for and answers it: success, or the
/// reply code for the refusal.
async fn open(
    stream: &mut TcpStream,
    tunnel: &Tunnel,
    req: &Request,
) -> Option<super::direct::Stream> {
    let target = format!("{}:{}", req.host, req.port);
    tracing::Span::current().record("target", target.as_str());
    match tunnel.open_stream(&req.host, req.port).await {
        Ok(channel) => {
            tracing::info!(path = channel.path().as_str(), "stream open");
            reply(stream, Reply::Succeeded).await.ok()?;
            Some(channel)
        }
        Err(e) => {
            let code = reply_for(&e);
            tracing::info!(reply = ?code, "stream refused: {e}");
            let _ = reply(stream, code).await;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the handshake against `client_bytes` over a tiny in-memory pipe
    /// and returns its result and what the server wrote.
    async fn run(
        client_bytes: &[u8],
        auth: Option<&Credentials>,
    ) -> (Result<Request, HandshakeError>, Vec<u8>) {
        let (mut near, mut far) = tokio::io::duplex(7);
        let bytes = client_bytes.to_vec();
        let client = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(&mut near);
            let write = async {
                let _ = w.write_all(&bytes).await;
                let _ = w.shutdown().await;
            };
            let mut got = Vec::new();
            let read = async {
                let mut buf = [0u8; 64];
                while let Ok(n) = r.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
            };
            tokio::join!(write, read);
            got
        });
        let result = handshake(&mut far, auth).await;
        drop(far);
        (result, client.await.unwrap())
    }

    fn connect_domain(name: &str, port: u16) -> Vec<u8> {
        let mut v = vec![5, 1, 0, 3, name.len() as u8];
        v.extend_from_slice(name.as_bytes());
        v.extend_from_slice(&port.to_be_bytes());
        v
    }

    #[tokio::test]
    async fn connect_by_name_without_auth() {
        let mut bytes = vec![5, 2, 0, 2];
        bytes.extend(connect_domain("dev1", 8080));
        let (r, wrote) = run(&bytes, None).await;
        assert_eq!(
            r.unwrap(),
            Request {
                host: "dev1".into(),
                port: 8080
            }
        );
        assert_eq!(wrote, vec![5, 0]);
    }

    #[tokio::test]
    async fn ip_addresses_are_passed_on_as_text() {
        let (r, _) = run(&[5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 7, 0, 22], None).await;
        assert_eq!(r.unwrap().host, "10.0.0.7");
        let mut v6 = vec![5, 1, 0, 5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0, 80]);
        let (r, _) = run(&v6, None).await;
        assert_eq!(r.unwrap().host, "::1");
    }

    #[tokio::test]
    async fn password_auth_checks_credentials() {
        let creds = Credentials::parse("alice:s3:cret").unwrap();
        let mut ok = vec![5, 1, 2, 1, 5];
        ok.extend_from_slice(b"alice");
        ok.push(7);
        ok.extend_from_slice(b"s3:cret");
        ok.extend(connect_domain("dev1", 22));
        let (r, wrote) = run(&ok, Some(&creds)).await;
        assert_eq!(r.unwrap().host, "dev1");
        assert_eq!(wrote, vec![5, 2, 1, 0]);

        let mut bad = vec![5, 1, 2, 1, 5];
        bad.extend_from_slice(b"alice");
        bad.push(6);
        bad.extend_from_slice(b"s3:cre");
        let (r, wrote) = run(&bad, Some(&creds)).await;
        assert!(r.unwrap_err().to_string().contains("wrong username"));
        assert_eq!(wrote, vec![5, 2, 1, 1]);

        // A client that only offers "no auth" gets 0xff when auth is required.
        let (r, wrote) = run(&[5, 1, 0], Some(&creds)).await;
        assert!(r.is_err());
        assert_eq!(wrote, vec![5, 0xff]);
    }

    #[tokio::test]
    async fn unsupported_commands_and_types_get_their_codes() {
        // BIND
        let mut bind = vec![5, 1, 0];
        bind.extend(connect_domain("dev1", 22));
        bind[4] = 2;
        let (r, wrote) = run(&bind, None).await;
        assert!(r.is_err());
        assert_eq!(wrote[2..4], [5, Reply::CommandNotSupported as u8]);
        // Unknown address type 9.
        let (r, wrote) = run(&[5, 1, 0, 5, 1, 0, 9, 1, 2], None).await;
        assert!(r.is_err());
        assert_eq!(wrote[2..4], [5, Reply::AddressTypeNotSupported as u8]);
        // SOCKS4
        let (r, wrote) = run(&[4, 1, 0, 22, 127, 0, 0, 1, 0], None).await;
        assert!(r.is_err());
        assert!(wrote.is_empty());
        // Truncated greeting.
        let (r, _) = run(&[5, 3, 0], None).await;
        assert!(matches!(r, Err(HandshakeError::Io(_))));
    }

    #[test]
    fn refusals_map_to_reply_codes() {
        let refused = |s: &str| reply_for(&OpenError::Refused(s.into()));
        assert_eq!(
            refused("no device named nosuch in system tau"),
            Reply::HostUnreachable
        );
        assert_eq!(
            refused("device dev1 is offline (last seen 3m ago)"),
            Reply::HostUnreachable
        );
        assert_eq!(
            refused("device dev1 does not serve port 81 (it serves 22)"),
            Reply::NotAllowed
        );
        assert_eq!(
            refused("device dev1 could not open port 8080: connect failed"),
            Reply::ConnectionRefused
        );
        assert_eq!(
            refused("device dev1 did not answer within 15s"),
            Reply::TtlExpired
        );
        assert_eq!(
            reply_for(&OpenError::NoRelay("x".into())),
            Reply::NetworkUnreachable
        );
        assert_eq!(
            reply_for(&OpenError::Failed("x".into())),
            Reply::GeneralFailure
        );
    }

    #[test]
    fn credentials_parse_and_never_print() {
        assert!(Credentials::parse("nopass").is_err());
        assert!(Credentials::parse(":x").is_err());
        assert!(Credentials::parse("u:").is_err());
        let c = Credentials::parse("u:p:q").unwrap();
        assert!(c.matches(b"u", b"p:q"));
        assert!(!c.matches(b"u", b"p:"));
        assert!(!format!("{c:?}").contains("p:q"));
    }

    #[test]
    fn non_loopback_needs_auth() {
        let lo: SocketAddr = "127.0.0.1:1080".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:1080".parse().unwrap();
        assert!(check_listen(lo, None).is_ok());
        let err = check_listen(any, None).unwrap_err().to_string();
        assert!(err.contains("without authentication"), "{err}");
        let c = Credentials::parse("u:p").unwrap();
        assert!(check_listen(any, Some(&c)).is_ok());
    }
}
