//! Client side of the SSH layer: connect to a relay with a pinned host key and
//! a public key, register names, open streams, run commands.

use std::borrow::Cow;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use russh::client::{Handle, Msg, Session};
use russh::keys::{HashAlg, PrivateKeyWithHashAlg};
use russh::{ChannelMsg, SshId};
use tokio::net::TcpStream;

use super::channel::{Channel, IncomingChannel};
use super::keys::{Fingerprint, PrivateKey, fingerprint};
use super::server::ExecOutput;
use crate::protocol::limits::{HANDSHAKE_TIMEOUT, MAX_PACKET_SIZE};

/// Who we are and whom we trust.
#[derive(Clone)]
pub struct ConnectOptions {
    /// The system name (the SSH user name at the relay).
    pub user: String,
    pub key: Arc<PrivateKey>,
    /// The relay's pinned host-key fingerprint (`SHA256:…`).
    pub host_key: Fingerprint,
    /// Drop the connection when the relay has been silent this long.
    pub dead_after: Duration,
}

/// Receives `forwarded-tcpip` channels the relay opens (device side).
pub trait ForwardedHandler: Send + 'static {
    fn forwarded(&mut self, address: &str, port: u32, channel: IncomingChannel);
}

/// For controllers: the relay has no reason to open channels to them.
pub struct NoForwards;

impl ForwardedHandler for NoForwards {
    fn forwarded(&mut self, _address: &str, _port: u32, _channel: IncomingChannel) {
        // Dropping the channel refuses it.
    }
}

/// What the connection learned that a caller may want to report.
#[derive(Default)]
struct Shared {
    /// Fingerprint the relay presented, for a clear mismatch message.
    seen_host_key: Option<Fingerprint>,
    /// Reason text of the last refused channel open (russh keeps only the code).
    last_refusal: Option<String>,
    /// Why the relay disconnected us, if it said.
    disconnect_reason: Option<String>,
}

/// An authenticated connection to the relay.
pub struct ClientConnection<H: ForwardedHandler> {
    handle: Handle<Adapter<H>>,
    shared: Arc<Mutex<Shared>>,
}

/// Connects, checks the relay's host key against the pin, and authenticates.
pub async fn connect<H: ForwardedHandler>(
    stream: TcpStream,
    opts: &ConnectOptions,
    handler: H,
) -> Result<ClientConnection<H>> {
    let _ = stream.set_nodelay(true);
    // Keepalive every third of the dead time; two unanswered → drop. A relay
    // that stops answering is detected after about `dead_after`.
    let interval = (opts.dead_after / 3).max(Duration::from_millis(100));
    let config = russh::client::Config {
        client_id: SshId::Standard(Cow::Borrowed(concat!(
            "SSH-2.0-warren_",
            env!("CARGO_PKG_VERSION")
        ))),
        keepalive_interval: Some(interval),
        keepalive_max: 2,
        // AES-GCM first: with AES instructions (any current x86 or ARM
        // server) it costs about half of chacha20-poly1305 per byte, and the
        // agent's leg carries every byte a device serves.
        preferred: russh::Preferred {
            cipher: Cow::Borrowed(&[russh::cipher::AES_256_GCM, russh::cipher::CHACHA20_POLY1305]),
            ..Default::default()
        },
        inactivity_timeout: None,
        maximum_packet_size: MAX_PACKET_SIZE,
        nodelay: true,
        ..Default::default()
    };
    let shared = Arc::new(Mutex::new(Shared::default()));
    let adapter = Adapter {
        handler,
        pinned: opts.host_key.clone(),
        shared: shared.clone(),
    };
    let connecting = russh::client::connect_stream(Arc::new(config), stream, adapter);
    let mut handle = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Err(_) => bail!("relay did not complete the SSH handshake within {HANDSHAKE_TIMEOUT:?}"),
        Ok(Err(e)) => {
            let seen = lock(&shared).seen_host_key.clone();
            if let Some(seen) = seen.filter(|s| *s != opts.host_key) {
                bail!(
                    "relay host key mismatch: pinned {}, relay presented {seen}; refusing to connect \
                     (if the relay's key really changed, update relay_host_key)",
                    opts.host_key
                );
            }
            return Err(anyhow!("SSH handshake with relay failed: {e}"));
        }
        Ok(Ok(h)) => h,
    };
    let hash = if opts.key.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await?
            .flatten()
            .or(Some(HashAlg::Sha256))
    } else {
        None
    };
    let auth = handle
        .authenticate_publickey(
            opts.user.clone(),
            PrivateKeyWithHashAlg::new(opts.key.clone(), hash),
        )
        .await?;
    if !auth.success() {
        bail!(
            "relay refused key {} for system {:?} (not registered there, revoked, or the system does not exist)",
            fingerprint(opts.key.public_key()),
            opts.user
        );
    }
    Ok(ClientConnection { handle, shared })
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    // A panic while holding this lock cannot leave Shared inconsistent
    // (plain field writes), so a poisoned lock is still usable.
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

impl<H: ForwardedHandler> ClientConnection<H> {
    /// Registers `name:port` (a `tcpip-forward` request, as `ssh -R` sends).
    pub async fn register(&self, name: &str, port: u32) -> Result<()> {
        match self.handle.tcpip_forward(name, port).await {
            Ok(_) => Ok(()),
            Err(russh::Error::RequestDenied) => bail!(
                "relay refused to register {name}:{port} (the name belongs to another key, or this key is not a device key for it)"
            ),
            Err(e) => Err(anyhow!("registering {name}:{port}: {e}")),
        }
    }

    /// Opens a stream to `host:port` through the relay.
    pub async fn open(&self, host: &str, port: u32) -> Result<Channel> {
        match self
            .handle
            .channel_open_direct_tcpip(host, port, "127.0.0.1", 0)
            .await
        {
            Ok(ch) => Ok(Channel::from_client(ch)),
            Err(russh::Error::ChannelOpenFailure(reason)) => {
                let text = lock(&self.shared)
                    .last_refusal
                    .take()
                    .unwrap_or_else(|| reason.description().to_string());
                bail!("relay refused {host}:{port}: {text}")
            }
            Err(e) => bail!("opening {host}:{port} through the relay: {e}"),
        }
    }

    /// Runs a command at the relay (`ls`, …) and collects its output.
    pub async fn exec(&self, command: &str) -> Result<ExecOutput> {
        let mut ch = self.handle.channel_open_session().await?;
        ch.exec(true, command).await?;
        let mut out = ExecOutput::default();
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => out.stderr.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => out.status = exit_status,
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        Ok(out)
    }

    pub fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    /// Waits until the connection ends, and says why.
    pub async fn is_gone(&mut self) -> String {
        let result = (&mut self.handle).await;
        let said = lock(&self.shared).disconnect_reason.take();
        match (said, result) {
            (Some(reason), _) => format!("relay closed the connection: {reason}"),
            (None, Ok(())) => "connection closed".to_string(),
            (None, Err(e)) => format!("connection lost: {e}"),
        }
    }

    pub async fn disconnect(&self) {
        let _ = self
            .handle
            .disconnect(russh::Disconnect::ByApplication, "bye", "")
            .await;
    }
}

struct Adapter<H> {
    handler: H,
    pinned: Fingerprint,
    shared: Arc<Mutex<Shared>>,
}

impl<H: ForwardedHandler> russh::client::Handler for Adapter<H> {
    type Error = russh::Error;

    fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> impl Future<Output = Result<bool, Self::Error>> + Send {
        let ok = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                let fp = fingerprint(key);
                let ok = fp == self.pinned;
                lock(&self.shared).seen_host_key = Some(fp);
                ok
            }
            // Host certificates are not part of the pinning model.
            russh::keys::PublicKeyOrCertificate::Certificate(_) => false,
        };
        async move { Ok(ok) }
    }

    async fn channel_open_failure(
        &mut self,
        _channel: russh::ChannelId,
        _reason: russh::ChannelOpenFailure,
        description: &str,
        _language: &str,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        lock(&self.shared).last_refusal = Some(description.to_string());
        Ok(())
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: russh::Channel<Msg>,
        connected_address: &str,
        connected_port: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: russh::client::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let incoming = IncomingChannel::client(channel, reply);
        self.handler
            .forwarded(connected_address, connected_port, incoming);
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: russh::client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        match reason {
            russh::client::DisconnectReason::ReceivedDisconnect(info) => {
                lock(&self.shared).disconnect_reason = Some(info.message);
                Ok(())
            }
            russh::client::DisconnectReason::Error(e) => Err(e),
        }
    }
}
