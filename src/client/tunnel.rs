//! One SSH connection to the relay that carries every stream of a
//! long-running controller command (`warren socks`, `warren forward`), and
//! comes back by itself when it is lost, with the agent's backoff.
//!
//! A maintenance task owns the dial-and-wait loop and publishes the live
//! connection through a `watch`; [`Tunnel::open`] takes whatever connection is
//! live, waiting a bounded time for one while reconnecting.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::{CancellationToken, DropGuard};

use super::ClientSettings;
use super::direct::{DevicePath, Paths, State, Stream};
use crate::p2p::{Mode, PUNCH_BUDGET, SIGNAL_TIMEOUT};
use crate::protocol::Backoff;
use crate::protocol::limits::{BACKOFF_RESET_AFTER, HANDSHAKE_TIMEOUT, TUNNEL_LIVENESS_CHECK};
use crate::ssh::Channel;
use crate::ssh::IncomingChannel;
use crate::ssh::client::{ClientConnection, ForwardedHandler, StreamRefused};

/// How long `--p2p require` waits for a direct path to come up.
const REQUIRE_WAIT: std::time::Duration = SIGNAL_TIMEOUT.saturating_add(PUNCH_BUDGET);

/// State changes, for tests and the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelEvent {
    Connected,
    Disconnected { reason: String },
}

/// Why a stream could not be opened; callers map each to their own
/// vocabulary (a SOCKS reply code, a log line).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The relay (or the device) answered and said no; the text is theirs.
    #[error("{0}")]
    Refused(String),
    /// No connection to the relay right now.
    #[error("no connection to the relay: {0}")]
    NoRelay(String),
    /// The connection failed while opening.
    #[error("{0}")]
    Failed(String),
}

/// Drops a token when the SSH layer drops the connection's handler, which it
/// does when the connection ends: a disconnect signal without polling.
struct GoneSignal {
    _guard: DropGuard,
}

impl ForwardedHandler for GoneSignal {
    fn forwarded(&mut self, _address: &str, _port: u32, _channel: IncomingChannel) {
        // Controllers serve nothing; dropping the channel refuses it.
    }
}

type Conn = Arc<ClientConnection<GoneSignal>>;

/// A shared, self-healing connection to the relay.
pub struct Tunnel {
    live: watch::Receiver<Option<Conn>>,
    last_error: Arc<std::sync::Mutex<String>>,
    stop: CancellationToken,
    /// Direct paths (`--p2p`); off unless [`Tunnel::set_p2p`] says otherwise.
    mode: Mode,
    paths: Arc<Paths>,
    relay: String,
}

impl Tunnel {
    /// Starts connecting in the background; streams can be opened at once
    /// (they wait for the first connection).
    pub fn start(
        settings: ClientSettings,
        shutdown: CancellationToken,
        events: Option<mpsc::UnboundedSender<TunnelEvent>>,
    ) -> Tunnel {
        let (tx, live) = watch::channel(None);
        let last_error = Arc::new(std::sync::Mutex::new("not connected yet".to_string()));
        let stop = shutdown.child_token();
        let relay = settings.relay.clone();
        tokio::spawn(maintain(
            settings,
            tx,
            last_error.clone(),
            stop.clone(),
            events,
        ));
        Tunnel {
            live,
            last_error,
            stop,
            mode: Mode::Off,
            paths: Arc::default(),
            relay,
        }
    }

    /// Sets the direct-path mode (`--p2p`) before the first stream.
    pub fn set_p2p(&mut self, mode: Mode) {
        self.mode = mode;
    }

    /// The direct path to `device` (for status and tests).
    pub fn path(&self, device: &str) -> Arc<DevicePath> {
        self.paths.get(device)
    }

    /// Opens a stream to `host:port`: on the device's direct path when it
    /// is up, else through the relay (starting an upgrade in the
    /// background when one is due). `--p2p require` waits for the direct
    /// path and fails without it; `off` always relays.
    pub async fn open_stream(&self, host: &str, port: u16) -> Result<Stream, OpenError> {
        if self.mode == Mode::Off || crate::protocol::Name::parse(host).is_err() {
            return self.open(host, port).await.map(Stream::Relayed);
        }
        let path = self.paths.get(host);
        if path.claim_upgrade() {
            match self.conn().await {
                Ok(conn) => self.start_upgrade(path.clone(), conn, port),
                Err(e) => {
                    path.reset();
                    return Err(e);
                }
            }
        }
        let link = match self.mode {
            Mode::Require => path.wait_up(REQUIRE_WAIT).await,
            _ => path.link(),
        };
        if let Some(link) = link {
            match link.open(host, port).await {
                Ok(s) => return Ok(Stream::Direct(s)),
                Err(OpenError::Failed(why)) => {
                    tracing::info!(device = host, "direct stream failed ({why}); relaying it");
                }
                Err(e) => return Err(e),
            }
        }
        if self.mode == Mode::Require {
            let why = path.why_relayed().unwrap_or_else(|| "it failed".into());
            return Err(OpenError::Failed(format!(
                "no direct path to {host} (--p2p require): {why}"
            )));
        }
        self.open(host, port).await.map(Stream::Relayed)
    }

    /// Keeps a direct path to `device` coming up in the background, from
    /// the first relay connection on, and again [`crate::p2p::RETRY_AFTER`]
    /// after each failure (for `warren forward`, whose devices are known).
    pub fn keep_direct(self: &Arc<Self>, device: &str, port: u16) {
        if self.mode == Mode::Off {
            return;
        }
        let (tunnel, path) = (Arc::downgrade(self), self.paths.get(device));
        let stop = self.stop.clone();
        tokio::spawn(async move {
            let mut live = match tunnel.upgrade() {
                Some(t) => t.live.clone(),
                None => return,
            };
            loop {
                let wait = match path.state() {
                    State::Relayed { retry_at, .. } => {
                        retry_at.saturating_duration_since(std::time::Instant::now())
                    }
                    _ => crate::p2p::RETRY_AFTER,
                };
                let connected = live
                    .borrow_and_update()
                    .as_ref()
                    .is_some_and(|c| !c.is_closed());
                if connected {
                    let Some(t) = tunnel.upgrade() else { return };
                    let conn = live.borrow().clone().filter(|c| !c.is_closed());
                    if let Some(conn) = conn
                        && path.claim_upgrade()
                    {
                        t.start_upgrade(path.clone(), conn, port);
                    }
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = live.changed(), if !connected => {}
                    _ = tokio::time::sleep(wait), if connected => {}
                }
            }
        });
    }

    fn start_upgrade(&self, path: Arc<DevicePath>, conn: Conn, port: u16) {
        let (relay, stop) = (self.relay.clone(), self.stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = path.run(conn, relay, port) => {}
                _ = stop.cancelled() => {}
            }
        });
    }

    /// Opens a stream to `host:port`, waiting up to [`HANDSHAKE_TIMEOUT`]
    /// for a connection to the relay if there is none right now.
    pub async fn open(&self, host: &str, port: u16) -> Result<Channel, OpenError> {
        let conn = self.conn().await?;
        conn.open(host, u32::from(port))
            .await
            .map_err(|e| match e.downcast::<StreamRefused>() {
                Ok(refused) => OpenError::Refused(refused.refused.text),
                Err(e) => OpenError::Failed(format!("{e:#}")),
            })
    }

    /// The live relay connection, waiting up to [`HANDSHAKE_TIMEOUT`].
    async fn conn(&self) -> Result<Conn, OpenError> {
        let mut live = self.live.clone();
        let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                let current = live.borrow_and_update().clone();
                if let Some(c) = current.filter(|c| !c.is_closed()) {
                    return Some(c);
                }
                if live.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await
        .ok()
        .flatten();
        let Some(conn) = conn else {
            let why = self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            return Err(OpenError::NoRelay(why));
        };
        Ok(conn)
    }

    /// Whether a connection to the relay is up right now.
    pub fn is_connected(&self) -> bool {
        self.live.borrow().as_ref().is_some_and(|c| !c.is_closed())
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn maintain(
    settings: ClientSettings,
    live: watch::Sender<Option<Conn>>,
    last_error: Arc<std::sync::Mutex<String>>,
    stop: CancellationToken,
    events: Option<mpsc::UnboundedSender<TunnelEvent>>,
) {
    let emit = |e: TunnelEvent| {
        if let Some(tx) = &events {
            let _ = tx.send(e);
        }
    };
    let mut backoff = Backoff::new();
    loop {
        let started = Instant::now();
        let reason = tokio::select! {
            _ = stop.cancelled() => None,
            r = connection(&settings, &live, &emit) => Some(r),
        };
        if let Some(conn) = live.send_replace(None) {
            conn.disconnect().await;
        }
        let Some(reason) = reason else { return };
        *last_error.lock().unwrap_or_else(|p| p.into_inner()) = reason.clone();
        if started.elapsed() >= BACKOFF_RESET_AFTER {
            backoff = Backoff::new();
        }
        let delay = backoff.next_delay();
        tracing::warn!(relay = %settings.relay, retry_in = ?delay, "relay connection down: {reason}");
        emit(TunnelEvent::Disconnected { reason });
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Dials, publishes the connection, and returns when it is gone.
async fn connection(
    settings: &ClientSettings,
    live: &watch::Sender<Option<Conn>>,
    emit: &impl Fn(TunnelEvent),
) -> String {
    let gone = CancellationToken::new();
    let signal = GoneSignal {
        _guard: gone.clone().drop_guard(),
    };
    let conn = match super::connect_with(settings, signal).await {
        Ok(c) => Arc::new(c),
        Err(e) => return format!("{e:#}"),
    };
    tracing::info!(relay = %settings.relay, system = %settings.system, "connected to relay");
    live.send_replace(Some(conn.clone()));
    emit(TunnelEvent::Connected);
    // The handler's drop is the prompt signal; the check is a backstop in
    // case a connection layer keeps its handler after the end.
    let mut check = tokio::time::interval(TUNNEL_LIVENESS_CHECK);
    loop {
        tokio::select! {
            _ = gone.cancelled() => break,
            _ = check.tick() => if conn.is_closed() { break },
        }
    }
    "connection to the relay lost".to_string()
}
