//! Client side of the SSH layer: connect to a relay with a pinned host key and
//! a public key, register names, open streams, run commands.

use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use super::channel::{Channel, IncomingChannel, RefusalKind};
use super::keys::{Fingerprint, PrivateKey, PublicKey, fingerprint};
use super::proto::conn::{self, Conn, Events, ExecOutput, Incoming, Settings, Side};
use super::proto::mux::OpenRefused;
use super::proto::mux::{ConnTx, Ended, In, OpenRequest};
use super::proto::wire::{Writer, open_failure};
use super::socket::Socket;
use crate::protocol::limits::{HANDSHAKE_TIMEOUT, MAX_PACKET_SIZE};

/// Who we are and whom we trust.
#[derive(Clone)]
pub struct ConnectOptions {
    /// The system name (the SSH user name at the relay).
    pub user: String,
    pub key: Arc<PrivateKey>,
    /// The relay's pinned host-key fingerprints (`SHA256:…`), comma-separated
    /// when any relay of a cluster may answer.
    pub host_key: String,
    /// Drop the connection when the relay has been silent this long.
    pub dead_after: Duration,
}

/// Receives `forwarded-tcpip` channels the relay opens (device side).
pub trait ForwardedHandler: Send + 'static {
    fn forwarded(&mut self, address: &str, port: u32, channel: IncomingChannel);

    /// `p2p@warren` from the relay: controller `from` wants a direct path
    /// (`crate::p2p`). Refused (dropped) unless implemented.
    fn p2p(&mut self, from: &str, port: u32, channel: IncomingChannel) {
        let _ = (from, port);
        drop(channel);
    }
}

/// For controllers: the relay has no reason to open channels to them.
pub struct NoForwards;

impl ForwardedHandler for NoForwards {
    fn forwarded(&mut self, _address: &str, _port: u32, _channel: IncomingChannel) {
        // Dropping the channel refuses it.
    }
}

/// The relay showed a host key other than the pinned one (the SSH layer of
/// a dial: TCP, proxy, TLS and WebSocket are `transport::DialError`).
#[derive(Debug, thiserror::Error)]
#[error(
    "SSH: relay host key mismatch: pinned {pinned}, relay presented {presented}; refusing to \
     connect (if the relay's key really changed, update relay_host_key)"
)]
pub struct HostKeyMismatch {
    pub pinned: String,
    pub presented: String,
}

/// The relay refused a stream ([`ClientConnection::open`]).
#[derive(Debug, thiserror::Error)]
#[error("relay refused {host}:{port}: {refused}")]
pub struct StreamRefused {
    pub host: String,
    pub port: u32,
    pub refused: OpenRefused,
}

impl StreamRefused {
    /// What kind of refusal the relay's reason code says, if it is one of ours.
    pub fn kind(&self) -> Option<RefusalKind> {
        self.refused.code.and_then(RefusalKind::from_code)
    }
}

/// An authenticated connection to the relay. Dropping it closes the connection.
pub struct ClientConnection<H: ForwardedHandler> {
    tx: ConnTx,
    _handler: PhantomData<fn() -> H>,
}

/// Opens the TCP connection to the relay at `addr`, giving up after
/// `timeout`. The error reads "cannot reach relay ADDR: why".
pub async fn dial(addr: &str, timeout: Duration) -> Result<TcpStream> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(anyhow!("cannot reach relay {addr}: {e}")),
        Err(_) => Err(anyhow!("cannot reach relay {addr}: timed out")),
    }
}

/// Connects, checks the relay's host key against the pin, and authenticates.
pub async fn connect<H: ForwardedHandler>(
    stream: impl Into<Socket>,
    opts: &ConnectOptions,
    handler: H,
) -> Result<ClientConnection<H>> {
    connect_with(stream, opts, handler, Settings::default()).await
}

pub(crate) async fn connect_with<H: ForwardedHandler>(
    stream: impl Into<Socket>,
    opts: &ConnectOptions,
    handler: H,
    mut settings: Settings,
) -> Result<ClientConnection<H>> {
    let mut stream: Socket = stream.into();
    let _ = stream.set_nodelay(true);
    // Keepalive every third of the dead time; two unanswered → drop. A relay
    // that stops answering is detected after about `dead_after`.
    let interval = (opts.dead_after / 3).max(Duration::from_millis(100));
    settings.keepalive = Some((interval, 2));
    // The cipher order is `CipherAlg::preferred` (the default settings):
    // AES-GCM first where the CPU has AES instructions, where it costs about
    // half of chacha20-poly1305 per byte; the agent's leg carries every byte
    // a device serves.
    let seen: Arc<Mutex<Option<Fingerprint>>> = Arc::default();
    let pinned = opts.host_key.clone();
    let seen_in = seen.clone();
    let check_host = Box::new(move |blob: &[u8]| {
        let Ok(key) = PublicKey::from_bytes(blob) else {
            return false;
        };
        let fp = fingerprint(&key);
        // A cluster's agents pin every relay's key (comma-separated).
        let ok = crate::ssh::keys::pinned(&pinned, &fp);
        *seen_in.lock().unwrap_or_else(|p| p.into_inner()) = Some(fp);
        ok
    });
    let (done_tx, done_rx) = oneshot::channel();
    let handshake = async {
        let peer = conn::version_exchange(&mut stream, false)
            .await
            .map_err(|e| anyhow!(e))?;
        Ok::<_, anyhow::Error>(peer)
    };
    let peer = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Err(_) => bail!("relay did not complete the SSH handshake within {HANDSHAKE_TIMEOUT:?}"),
        Ok(Err(e)) => bail!("SSH handshake with relay failed: {e:#}"),
        Ok(Ok(p)) => p,
    };
    let side = Side::Client {
        user: opts.user.clone(),
        key: opts.key.clone(),
        check_host,
        done: Some(done_tx),
    };
    let (c, tx) = Conn::new(stream, peer, side, settings, Adapter { handler });
    let task = tokio::spawn(c.run());
    let failed = match tokio::time::timeout(HANDSHAKE_TIMEOUT, done_rx).await {
        Ok(Ok(Ok(()))) => {
            return Ok(ClientConnection {
                tx,
                _handler: PhantomData,
            });
        }
        Err(_) => format!("relay did not complete the SSH handshake within {HANDSHAKE_TIMEOUT:?}"),
        Ok(Err(_)) => "connection closed during the handshake".to_string(),
        Ok(Ok(Err(e))) => e,
    };
    task.abort();
    let seen = seen.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(seen) = seen.filter(|s| !crate::ssh::keys::pinned(&opts.host_key, s)) {
        return Err(HostKeyMismatch {
            pinned: opts.host_key.clone(),
            presented: seen.into(),
        }
        .into());
    }
    if failed == "key refused" {
        bail!(
            "relay refused key {} for system {:?} (not registered there, revoked, or the system does not exist)",
            fingerprint(opts.key.public_key()),
            opts.user
        );
    }
    Err(anyhow!("SSH handshake with relay failed: {failed}"))
}

impl<H: ForwardedHandler> ClientConnection<H> {
    /// Registers `name:port` (a `tcpip-forward` request, as `ssh -R` sends).
    pub async fn register(&self, name: &str, port: u32) -> Result<()> {
        let data = Writer::default().string(name).u32(port).finish();
        match self.tx.global("tcpip-forward", data).await {
            Some(true) => Ok(()),
            Some(false) => bail!(
                "relay refused to register {name}:{port} (the name belongs to another key, or this key is not a device key for it)"
            ),
            None => bail!("registering {name}:{port}: connection closed"),
        }
    }

    /// Opens a stream to `host:port` through the relay.
    pub async fn open(&self, host: &str, port: u32) -> Result<Channel> {
        let extra = Writer::default()
            .string(host)
            .u32(port)
            .string("127.0.0.1")
            .u32(0)
            .finish();
        match self.tx.open("direct-tcpip", extra, MAX_PACKET_SIZE).await {
            Ok(h) => Ok(Channel::new(h)),
            Err(refused) => Err(StreamRefused {
                host: host.to_string(),
                port,
                refused,
            }
            .into()),
        }
    }

    /// Opens the signalling channel for a direct path to `device`, which
    /// the relay routes as a stream to `device:port`.
    pub async fn open_p2p(&self, device: &str, port: u32) -> Result<Channel> {
        let extra = Writer::default().string(device).u32(port).finish();
        match self
            .tx
            .open(crate::ssh::P2P_CHANNEL, extra, MAX_PACKET_SIZE)
            .await
        {
            Ok(h) => Ok(Channel::new(h)),
            Err(refused) => Err(refused.into()),
        }
    }

    /// Runs a command at the relay (`ls`, …) and collects its output.
    pub async fn exec(&self, command: &str) -> Result<ExecOutput> {
        let ch = self
            .tx
            .open("session", Vec::new(), MAX_PACKET_SIZE)
            .await
            .map_err(|e| anyhow!("opening a session at the relay: {e}"))?;
        let ch = Channel::new(ch);
        let h = ch.handle();
        h.exec(command);
        let mut out = ExecOutput::default();
        let mut status = None;
        while let Some(m) = h.recv().await {
            match m {
                In::Data(d) => out.stdout.extend_from_slice(&d),
                In::Ext(d) => out.stderr.extend_from_slice(&d),
                In::ExitStatus(s) => status = Some(s),
                In::Eof => {}
            }
        }
        // A session that ends without an exit status did not run the
        // command (the connection closed, or the relay refused it): never
        // report that as success.
        let Some(s) = status else {
            if self.is_closed() {
                return Err(anyhow!("connection closed before the command finished"));
            }
            return Err(anyhow!(
                "the relay ended the command without an exit status"
            ));
        };
        out.status = s;
        Ok(out)
    }

    /// The key exchange agreed with the relay (`mlkem768x25519-sha256`
    /// when both ends have it).
    pub fn key_exchange(&self) -> Option<&'static str> {
        *self.tx.ctl.kex_alg.borrow()
    }

    pub fn is_closed(&self) -> bool {
        self.tx.ctl.is_ended()
    }

    /// Waits until the connection ends, and says why.
    pub async fn is_gone(&mut self) -> String {
        match self.tx.ctl.wait_ended().await {
            Ended::PeerSaid(reason) => format!("relay closed the connection: {reason}"),
            Ended::Closed => "connection closed".to_string(),
            Ended::Local(e) => format!("connection lost: {e}"),
        }
    }

    pub async fn disconnect(&self) {
        self.tx.ctl.disconnect("bye").await;
    }
}

impl<H: ForwardedHandler> Drop for ClientConnection<H> {
    fn drop(&mut self) {
        self.tx.ctl.request_disconnect("bye");
    }
}

struct Adapter<H> {
    handler: H,
}

impl<H: ForwardedHandler> Events for Adapter<H> {
    fn check_key(
        &mut self,
        _user: &str,
        _key: &PublicKey,
        _verified: bool,
    ) -> impl Future<Output = bool> + Send {
        std::future::ready(false)
    }

    fn authenticated(&mut self, _tx: ConnTx) {}

    fn global_request(&mut self, _name: &str, _data: &[u8]) -> impl Future<Output = bool> + Send {
        std::future::ready(false)
    }

    fn channel_open(&mut self, open: OpenRequest, incoming: Incoming) {
        match open {
            OpenRequest::ForwardedTcpip { address, port } => {
                self.handler
                    .forwarded(&address, port, IncomingChannel::new(incoming));
            }
            OpenRequest::P2p { host, port } => {
                self.handler
                    .p2p(&host, port, IncomingChannel::new(incoming));
            }
            OpenRequest::DirectTcpip { .. } => incoming.refuse(
                open_failure::ADMINISTRATIVELY_PROHIBITED,
                "not accepted here",
            ),
        }
    }

    fn exec(&mut self, _command: &str) -> impl Future<Output = ExecOutput> + Send {
        std::future::ready(ExecOutput::default())
    }
}
