//! One SSH server connection: [`start`] runs Warren's SSH protocol
//! ([`super::proto`]) on an accepted socket and calls a [`ServerSession`],
//! which owns the state.

use std::future::Future;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use tokio::task::JoinHandle;

use super::algorithms::{Ciphers, KexAlgorithms};
use super::channel::{Channel, IncomingChannel};
use super::keys::{PrivateKey, PublicKey};
use super::proto::conn::{self, Conn, Events, Incoming, Settings, Side};
use super::proto::kex::HostKey;
use super::proto::mux::{ConnTx, Ended, OpenRequest};
use super::proto::wire::{Reader, Writer, open_failure};
use super::socket::Socket;
use crate::protocol::limits::MAX_PACKET_SIZE;
use crate::protocol::limits::{
    HANDSHAKE_TIMEOUT, MAX_AUTH_ATTEMPTS, RELAY_KEEPALIVE_INTERVAL, RELAY_KEEPALIVE_MAX,
};

pub use super::proto::conn::{ExecOutput, ExecTask};

/// The answers a command gives (the type lives with the connection, which
/// sends it; these are for the relay's command handlers).
impl ExecOutput {
    /// Success: `stdout`, exit status 0.
    pub fn ok(stdout: impl Into<String>) -> ExecOutput {
        ExecOutput::with_status(stdout, 0)
    }

    /// `stdout` and exit status `status`, nothing on stderr.
    pub fn with_status(stdout: impl Into<String>, status: u32) -> ExecOutput {
        ExecOutput {
            stdout: stdout.into().into_bytes(),
            stderr: Vec::new(),
            status,
        }
    }

    /// Failure: `stderr` and exit status `status`, nothing on stdout.
    pub fn fail(status: u32, stderr: impl Into<String>) -> ExecOutput {
        ExecOutput {
            stdout: Vec::new(),
            stderr: stderr.into().into_bytes(),
            status,
        }
    }
}

/// How a command runs: answered at once, or by a task of its own while the
/// connection keeps serving its other channels.
pub enum Exec {
    Done(ExecOutput),
    Task(ExecTask),
}

/// Server settings shared by all connections.
#[derive(Clone)]
pub struct ServerConfig {
    host_key: Result<Arc<HostKey>, String>,
    settings: Settings,
    /// Bound on the SSH version exchange.
    pub handshake_timeout: Duration,
}

impl ServerConfig {
    pub fn new(host_key: PrivateKey) -> ServerConfig {
        let host_key = match host_key.key_data().ed25519() {
            Some(pair) => {
                HostKey::from_seed(&zeroize::Zeroizing::new(pair.private.to_bytes())).map(Arc::new)
            }
            None => Err(format!(
                "the relay's host key is {}; Warren serves ssh-ed25519 host keys only",
                host_key.algorithm()
            )),
        };
        ServerConfig {
            host_key,
            settings: Settings {
                // Idle devices are normal: liveness comes from keepalives.
                keepalive: Some((RELAY_KEEPALIVE_INTERVAL, RELAY_KEEPALIVE_MAX)),
                ..Settings::default()
            },
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }

    /// Offers these ciphers and key exchanges, in this order, and refuses
    /// peers without strict key exchange when `require_strict_kex`.
    pub fn set_algorithms(
        &mut self,
        ciphers: &Ciphers,
        kex: &KexAlgorithms,
        require_strict_kex: bool,
    ) {
        self.settings.ciphers = ciphers.0.clone();
        self.settings.kex = kex.0.clone();
        self.settings.require_strict_kex = require_strict_kex;
    }

    /// Starts a key re-exchange after this many bytes (either way) or this
    /// much time, whichever comes first (defaults: 1 GiB, 1 hour).
    pub fn set_rekey_limits(&mut self, bytes: u64, time: Duration) {
        self.settings.rekey_bytes = bytes;
        self.settings.rekey_time = time;
    }

    /// Ends a connection whose peer has not logged in within `grace` of the
    /// version exchange, with DISCONNECT "authentication timeout"; a key
    /// check still running then is abandoned. Default: no limit here.
    pub fn set_login_grace(&mut self, grace: Duration) {
        self.settings.login_grace = Some(grace);
    }
}

/// What the relay does with one connection. Callbacks run inside the
/// connection's loop: they must return quickly and spawn anything long.
pub trait ServerSession: Send + 'static {
    /// Whether `key` may log in as `user`. Called when the key is offered and
    /// again, with `verified`, once its signature checked out.
    fn check_key(
        &mut self,
        user: &str,
        key: &PublicKey,
        verified: bool,
    ) -> impl Future<Output = bool> + Send;

    /// After `check_key` said no: a reason to end the connection with
    /// instead of a plain failure (no key can log in now).
    fn login_refusal(&mut self) -> Option<String> {
        None
    }

    /// Authentication succeeded; `handle` reaches this connection from elsewhere.
    fn authenticated(&mut self, handle: ServerHandle);

    /// `tcpip-forward` (what `ssh -R NAME:PORT:…` sends).
    fn tcpip_forward(&mut self, address: &str, port: u32) -> impl Future<Output = bool> + Send;

    fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
    ) -> impl Future<Output = bool> + Send;

    /// `direct-tcpip` (what `ssh -W`, `-J`, `-L` and `-D` send).
    fn direct_tcpip(&mut self, host: &str, port: u32, channel: IncomingChannel);

    /// `p2p@warren`: a controller asks for a direct path to device `host`
    /// (routed as a stream to `host:port`). Refused unless implemented.
    fn p2p(&mut self, host: &str, port: u32, channel: IncomingChannel) {
        let _ = (host, port);
        drop(channel);
    }

    /// A command (`ssh relay ls`); an empty command is a shell request.
    /// Anything that waits (a store call) belongs in [`Exec::Task`].
    fn exec(&mut self, command: &str) -> Exec;
}

/// Why a channel could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct OpenError(String);

/// Smallest packet size a device is asked for: a controller that takes
/// only tinier packets gets them cut by the relay, not by the device.
const MIN_ASKED_PACKET: u32 = 4096;

/// Reaches a live server connection from other tasks.
#[derive(Clone)]
pub struct ServerHandle(ConnTx);

impl ServerHandle {
    /// Opens a `forwarded-tcpip` channel, as sshd does for an `ssh -R`
    /// connection. `address` and `port` must be exactly what the peer registered.
    pub async fn open_forwarded(
        &self,
        address: &str,
        port: u32,
        originator: SocketAddr,
    ) -> Result<Channel, OpenError> {
        self.open_forwarded_for(address, port, originator, MAX_PACKET_SIZE)
            .await
    }

    /// Like [`ServerHandle::open_forwarded`], for a stream that will be
    /// spliced to a channel whose peer takes packets of at most
    /// `max_packet` data bytes: the device is asked to send packets no
    /// larger, so that the relay can pass each one on whole (sealed in
    /// place) instead of cutting and copying it.
    pub async fn open_forwarded_for(
        &self,
        address: &str,
        port: u32,
        originator: SocketAddr,
        max_packet: u32,
    ) -> Result<Channel, OpenError> {
        let extra = Writer::default()
            .string(address)
            .u32(port)
            .string(originator.ip().to_string())
            .u32(u32::from(originator.port()))
            .finish();
        self.0
            .open(
                "forwarded-tcpip",
                extra,
                max_packet.clamp(MIN_ASKED_PACKET, MAX_PACKET_SIZE),
            )
            .await
            .map(Channel::new)
            .map_err(|refused| OpenError(refused.text))
    }

    /// Opens a `p2p@warren` channel (signalling for a direct path) for the
    /// controller key `controller`, routed as a stream to `port`.
    pub async fn open_p2p(&self, controller: &str, port: u32) -> Result<Channel, OpenError> {
        let extra = Writer::default().string(controller).u32(port).finish();
        self.0
            .open(crate::ssh::P2P_CHANNEL, extra, MAX_PACKET_SIZE)
            .await
            .map(Channel::new)
            .map_err(|refused| OpenError(refused.text))
    }

    /// Closes the connection, telling the peer why.
    pub async fn disconnect(&self, reason: &str) {
        self.0.ctl.disconnect(reason).await;
    }

    /// Puts the connection's bulk work into `share`'s turns (its tenant's
    /// fair share of the workers); the first share set stays.
    pub fn share_with(&self, share: crate::ssh::fair::Share) {
        let _ = self.0.ctl.share.set(share);
    }
}

/// A server connection past the version exchange, running in its own task.
pub struct ServerConnection<S: ServerSession> {
    tx: ConnTx,
    task: JoinHandle<Ended>,
    _session: PhantomData<fn() -> S>,
}

impl<S: ServerSession> ServerConnection<S> {
    pub fn handle(&self) -> ServerHandle {
        ServerHandle(self.tx.clone())
    }

    /// Waits until the connection ends.
    pub async fn finished(self) -> Result<()> {
        let ended = self.task.await?;
        tracing::debug!(?ended, "SSH connection ended");
        Ok(())
    }
}

/// Starts the SSH protocol on an accepted socket. The version exchange is
/// bounded by [`ServerConfig::handshake_timeout`], authentication by
/// [`ServerConfig::set_login_grace`] when set (else by the caller).
pub async fn start<S: ServerSession>(
    config: &ServerConfig,
    stream: impl Into<Socket>,
    session: S,
) -> Result<ServerConnection<S>> {
    let host_key = config.host_key.clone().map_err(|e| anyhow::anyhow!(e))?;
    let mut stream: Socket = stream.into();
    let _ = stream.set_nodelay(true);
    let limit = config.handshake_timeout;
    let peer = tokio::time::timeout(limit, conn::version_exchange(&mut stream, true))
        .await
        .map_err(|_| anyhow::anyhow!("no SSH version exchange within {limit:?}"))?
        .map_err(|e| anyhow::anyhow!(e))?;
    let side = Side::Server {
        host_key,
        max_auth_attempts: MAX_AUTH_ATTEMPTS,
    };
    let (c, tx) = Conn::new(
        stream,
        peer,
        side,
        config.settings.clone(),
        Adapter { session },
    );
    let task = tokio::spawn(c.run());
    Ok(ServerConnection {
        tx,
        task,
        _session: PhantomData,
    })
}

struct Adapter<S> {
    session: S,
}

impl<S: ServerSession> Events for Adapter<S> {
    fn check_key(
        &mut self,
        user: &str,
        key: &PublicKey,
        verified: bool,
    ) -> impl Future<Output = bool> + Send {
        self.session.check_key(user, key, verified)
    }

    fn login_refusal(&mut self) -> Option<String> {
        self.session.login_refusal()
    }

    fn authenticated(&mut self, tx: ConnTx) {
        self.session.authenticated(ServerHandle(tx));
    }

    async fn global_request(&mut self, name: &str, data: &[u8]) -> bool {
        let mut r = Reader::new(data);
        let (Ok(address), Ok(port)) = (r.utf8(), r.u32()) else {
            return false;
        };
        match name {
            "tcpip-forward" => self.session.tcpip_forward(address, port).await,
            "cancel-tcpip-forward" => self.session.cancel_tcpip_forward(address, port).await,
            _ => false,
        }
    }

    fn channel_open(&mut self, open: OpenRequest, incoming: Incoming) {
        match open {
            OpenRequest::DirectTcpip { host, port } => {
                self.session
                    .direct_tcpip(&host, port, IncomingChannel::new(incoming));
            }
            OpenRequest::P2p { host, port } => {
                self.session
                    .p2p(&host, port, IncomingChannel::new(incoming));
            }
            OpenRequest::ForwardedTcpip { .. } => incoming.refuse(
                open_failure::ADMINISTRATIVELY_PROHIBITED,
                "not accepted here",
            ),
        }
    }

    fn exec(&mut self, command: &str) -> impl Future<Output = ExecOutput> + Send {
        let exec = self.session.exec(command);
        async move {
            match exec {
                Exec::Done(out) => out,
                Exec::Task(task) => task.await,
            }
        }
    }

    fn exec_task(&mut self, command: &str) -> Option<ExecTask> {
        Some(match self.session.exec(command) {
            Exec::Done(out) => Box::pin(std::future::ready(out)),
            Exec::Task(task) => task,
        })
    }
}
