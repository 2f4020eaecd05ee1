//! One SSH server connection. The russh `Handler` here is a thin adapter: it
//! turns callbacks into calls on a [`ServerSession`], which owns the state.

use std::borrow::Cow;
use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use russh::server::{Auth, Msg, Session};
use russh::{ChannelId, MethodKind, MethodSet, Pty, SshId};
use tokio::net::TcpStream;

use super::channel::{Channel, IncomingChannel};
use super::keys::{PrivateKey, PublicKey};
use crate::protocol::limits::{
    HANDSHAKE_TIMEOUT, MAX_AUTH_ATTEMPTS, MAX_PACKET_SIZE, RELAY_KEEPALIVE_INTERVAL,
    RELAY_KEEPALIVE_MAX,
};

/// Server settings shared by all connections.
#[derive(Clone)]
pub struct ServerConfig {
    inner: Arc<russh::server::Config>,
    /// Bound on the SSH version exchange.
    pub handshake_timeout: Duration,
}

impl ServerConfig {
    pub fn new(host_key: PrivateKey) -> ServerConfig {
        let config = russh::server::Config {
            server_id: SshId::Standard(Cow::Borrowed(concat!(
                "SSH-2.0-warren_",
                env!("CARGO_PKG_VERSION")
            ))),
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            // Rejecting an offered public key reveals nothing secret (public
            // keys are public), and OpenSSH clients offer several keys in
            // turn: a long delay per rejection makes every login slow.
            auth_rejection_time: std::time::Duration::from_millis(10),
            // OpenSSH starts with a "none" probe; answering it at once saves a
            // whole rejection time per login.
            auth_rejection_time_initial: Some(std::time::Duration::ZERO),
            keys: vec![host_key],
            max_auth_attempts: MAX_AUTH_ATTEMPTS,
            // Idle devices are normal: liveness comes from keepalives instead.
            inactivity_timeout: None,
            keepalive_interval: Some(RELAY_KEEPALIVE_INTERVAL),
            keepalive_max: RELAY_KEEPALIVE_MAX,
            maximum_packet_size: MAX_PACKET_SIZE,
            nodelay: true,
            ..Default::default()
        };
        ServerConfig {
            inner: Arc::new(config),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

/// Output of a command run over `ssh relay COMMAND`.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub status: u32,
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

    /// A command (`ssh relay ls`); an empty command is a shell request.
    fn exec(&mut self, command: &str) -> impl Future<Output = ExecOutput> + Send;
}

/// Reaches a live server connection from other tasks.
#[derive(Clone)]
pub struct ServerHandle(russh::server::Handle);

impl ServerHandle {
    /// Opens a `forwarded-tcpip` channel, as sshd does for an `ssh -R`
    /// connection. `address` and `port` must be exactly what the peer registered.
    pub async fn open_forwarded(
        &self,
        address: &str,
        port: u32,
        originator: SocketAddr,
    ) -> Result<Channel, russh::Error> {
        let ch = self
            .0
            .channel_open_forwarded_tcpip(
                address,
                port,
                originator.ip().to_string(),
                u32::from(originator.port()),
            )
            .await?;
        Ok(Channel::from_server(ch))
    }

    /// Closes the connection, telling the peer why.
    pub async fn disconnect(&self, reason: &str) {
        let _ = self
            .0
            .disconnect(russh::Disconnect::ByApplication, reason.into(), "".into())
            .await;
    }
}

/// A server connection past the version exchange, running in its own task.
pub struct ServerConnection<S: ServerSession> {
    running: russh::server::RunningSession<Adapter<S>>,
}

impl<S: ServerSession> ServerConnection<S> {
    pub fn handle(&self) -> ServerHandle {
        ServerHandle(self.running.handle())
    }

    /// Waits until the connection ends.
    pub async fn finished(self) -> Result<()> {
        self.running.await?;
        Ok(())
    }
}

/// Starts the SSH protocol on an accepted socket. The version exchange is
/// bounded by [`ServerConfig::handshake_timeout`]; the caller bounds authentication.
pub async fn start<S: ServerSession>(
    config: &ServerConfig,
    stream: TcpStream,
    session: S,
) -> Result<ServerConnection<S>> {
    let adapter = Adapter {
        session,
        sessions: HashSet::new(),
    };
    let limit = config.handshake_timeout;
    let running = tokio::time::timeout(
        limit,
        russh::server::run_stream(config.inner.clone(), stream, adapter),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no SSH version exchange within {limit:?}"))??;
    Ok(ServerConnection { running })
}

struct Adapter<S> {
    session: S,
    /// Session channels (for `exec`), as opposed to stream channels.
    sessions: HashSet<ChannelId>,
}

impl<S: ServerSession> Adapter<S> {
    async fn run_command(&mut self, channel: ChannelId, command: &str, session: &mut Session) {
        let out = self.session.exec(command).await;
        let _ = session.channel_success(channel);
        if !out.stdout.is_empty() {
            let _ = session.data(channel, out.stdout);
        }
        if !out.stderr.is_empty() {
            let _ = session.extended_data(channel, 1, out.stderr);
        }
        let _ = session.exit_status_request(channel, out.status);
        let _ = session.eof(channel);
        let _ = session.close(channel);
    }
}

impl<S: ServerSession> russh::server::Handler for Adapter<S> {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(
            if self.session.check_key(user, offer.public_key, false).await {
                Auth::Accept
            } else {
                Auth::reject()
            },
        )
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(
            if self.session.check_key(user, key.public_key, true).await {
                Auth::Accept
            } else {
                Auth::reject()
            },
        )
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        self.session.authenticated(ServerHandle(session.handle()));
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: russh::Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sessions.insert(channel.id());
        reply.accept().await;
        // The command comes as a request on the channel; its data is not read.
        drop(channel);
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: russh::Channel<Msg>,
        host_to_connect: &str,
        port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let incoming = IncomingChannel::server(channel, reply);
        self.session
            .direct_tcpip(host_to_connect, port_to_connect, incoming);
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.sessions.remove(&channel);
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Accepted so that a plain `ssh relay` shows the help text rather
        // than a pty error; no shell ever runs.
        let _ = session.channel_success(channel);
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = session.channel_failure(channel);
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.sessions.contains(&channel) {
            self.run_command(channel, "", session).await;
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if self.sessions.contains(&channel) {
            let command = String::from_utf8_lossy(data).into_owned();
            self.run_command(channel, &command, session).await;
        }
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        _name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let _ = session.channel_failure(channel);
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.session.tcpip_forward(address, *port).await)
    }

    async fn cancel_tcpip_forward(
        &mut self,
        address: &str,
        port: u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        Ok(self.session.cancel_tcpip_forward(address, port).await)
    }
}
