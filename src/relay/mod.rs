//! The relay: the public SSH server that devices register with and
//! controllers reach devices through.
//!
//! Flow: [`serve`] accepts on a bound listener and spawns one task per
//! connection ([`connection`]); that task runs the SSH handshake under a
//! deadline and a cap on unauthenticated connections, authenticates the key
//! against the [`Store`], registers device names in the [`registry`], and routes
//! each controller stream to its device and splices the two.

mod commands;
pub mod config;
mod connection;
pub mod expose;
pub mod registry;
pub mod status;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::protocol::limits::{
    HANDSHAKE_TIMEOUT, LAST_SEEN_FLUSH_INTERVAL, MAX_UNAUTHENTICATED, SHUTDOWN_DRAIN,
    STORE_POLL_INTERVAL,
};
use crate::ssh::keys::{self, Fingerprint};
use crate::ssh::server::ServerConfig;
use crate::store::Store;
use registry::Registry;

pub const HOST_KEY_FILE: &str = "host_key";

/// Tunables; the defaults are the production values (see `protocol::limits`).
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub handshake_timeout: Duration,
    pub max_unauthenticated: usize,
    pub store_poll: Duration,
    /// Relay ports admins may expose publicly (none by default).
    pub public_ports: config::PortRanges,
    /// Address public ports listen on; the SSH listener's address if None.
    pub public_bind: Option<std::net::IpAddr>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_unauthenticated: MAX_UNAUTHENTICATED,
            store_poll: STORE_POLL_INTERVAL,
            public_ports: config::PortRanges::default(),
            public_bind: None,
        }
    }
}

/// The relay's shared state.
pub struct Relay {
    store: Store,
    registry: Registry,
    server_config: ServerConfig,
    host_key: Fingerprint,
    options: RelayOptions,
    unauthenticated: Arc<Semaphore>,
    next_conn: AtomicU64,
    status: mpsc::UnboundedSender<StatusChange>,
    status_rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<StatusChange>>>,
    /// `public_ports` in force (reloadable).
    public_ports: std::sync::RwLock<config::PortRanges>,
    /// Wakes the public-port manager (store changed, config reloaded).
    expose_wake: Notify,
    /// Public ports after the latest reconcile.
    exposed: watch::Sender<expose::Exposed>,
}

/// Device status writes, applied in order by one task so that a quick
/// reconnect can never leave the store saying "offline".
enum StatusChange {
    Up {
        system: String,
        name: String,
        peer: SocketAddr,
        ports: Vec<u16>,
    },
    Down {
        system: String,
        name: String,
    },
    Touch(Vec<(String, String)>),
}

pub fn host_key_path(data: &Path) -> PathBuf {
    data.join(HOST_KEY_FILE)
}

impl Relay {
    /// Opens the data directory: host key (created on first start) and store.
    pub fn open(data: &Path, options: RelayOptions) -> Result<Arc<Relay>> {
        let store = Store::open(data)?;
        let host = keys::load_or_create_host_key(&host_key_path(data))
            .with_context(|| format!("loading host key in {}", data.display()))?;
        let host_key = keys::fingerprint(host.public_key());
        let mut server_config = ServerConfig::new(host);
        server_config.handshake_timeout = options.handshake_timeout;
        store.all_devices_down()?;
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(Arc::new(Relay {
            public_ports: std::sync::RwLock::new(options.public_ports.clone()),
            expose_wake: Notify::new(),
            exposed: watch::Sender::new(expose::Exposed::default()),
            store,
            registry: Registry::default(),
            server_config,
            host_key,
            unauthenticated: Arc::new(Semaphore::new(options.max_unauthenticated)),
            options,
            next_conn: AtomicU64::new(1),
            status: tx,
            status_rx: std::sync::Mutex::new(Some(rx)),
        }))
    }

    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The relay ports admins may expose now.
    pub fn public_ports(&self) -> config::PortRanges {
        self.public_ports
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Applies a reloaded `public_ports`: exposures outside it close, those
    /// now inside open. Live SSH connections are not touched.
    pub fn set_public_ports(&self, ranges: config::PortRanges) {
        *self.public_ports.write().unwrap_or_else(|p| p.into_inner()) = ranges;
        self.expose_wake.notify_one();
    }

    /// Sees the public ports after each reconcile with the store.
    pub fn exposed(&self) -> watch::Receiver<expose::Exposed> {
        self.exposed.subscribe()
    }

    fn status(&self, change: StatusChange) {
        // The receiver lives as long as `serve`; after it, nothing is lost
        // that matters: the next start marks every device offline anyway.
        let _ = self.status.send(change);
    }
}

/// Serves SSH on `listener` until `shutdown` is cancelled, then closes every
/// connection and waits for them (at most [`SHUTDOWN_DRAIN`]).
pub async fn serve(
    listener: TcpListener,
    relay: Arc<Relay>,
    shutdown: CancellationToken,
) -> Result<()> {
    let tasks = TaskTracker::new();
    let status_rx = relay
        .status_rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
        .context("relay is already serving")?;
    let background = CancellationToken::new();
    let status_task = tokio::spawn(write_status(
        relay.store.clone(),
        status_rx,
        background.clone(),
    ));
    tokio::spawn(watch_store(relay.clone(), background.clone()));
    tokio::spawn(flush_last_seen(relay.clone(), background.clone()));
    let public_ip = relay
        .options
        .public_bind
        .unwrap_or(listener.local_addr()?.ip());
    tokio::spawn(expose::run(
        relay.clone(),
        public_ip,
        tasks.clone(),
        shutdown.clone(),
    ));

    tracing::info!(addr = %listener.local_addr()?, host_key = %relay.host_key, "relay listening");
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: wait a little
                    // rather than spin, and keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = relay.unauthenticated.clone().try_acquire_owned() else {
            tracing::warn!(%peer, limit = relay.options.max_unauthenticated, "too many unauthenticated connections; closing new one");
            drop(stream);
            continue;
        };
        let conn_id = relay.next_conn.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(connection::run(
            relay.clone(),
            stream,
            peer,
            conn_id,
            permit,
            tasks.clone(),
        ));
    }

    tracing::info!("relay shutting down");
    for conn in relay.registry.conns() {
        conn.handle.disconnect("relay shutting down").await;
    }
    tasks.close();
    if tokio::time::timeout(SHUTDOWN_DRAIN, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within {SHUTDOWN_DRAIN:?}");
    }
    background.cancel();
    let _ = status_task.await;
    Ok(())
}

async fn write_status(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<StatusChange>,
    stop: CancellationToken,
) {
    loop {
        let change = tokio::select! {
            biased;
            change = rx.recv() => change,
            _ = stop.cancelled() => {
                // Connections are closed: apply what they queued, then stop.
                while let Ok(change) = rx.try_recv() {
                    apply_status(&store, change).await;
                }
                return;
            }
        };
        match change {
            Some(change) => apply_status(&store, change).await,
            None => return,
        }
    }
}

async fn apply_status(store: &Store, change: StatusChange) {
    let result = store
        .call(move |s| match change {
            StatusChange::Up {
                system,
                name,
                peer,
                ports,
            } => s.device_up(&system, &name, peer, &ports),
            StatusChange::Down { system, name } => s.device_down(&system, &name),
            StatusChange::Touch(list) => s.touch_devices(&list),
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %format!("{e:#}"), "writing device status");
    }
}

/// Notices key changes made by `warren admin` in another process, and closes
/// connections of keys that were revoked.
async fn watch_store(relay: Arc<Relay>, stop: CancellationToken) {
    let mut last = relay.store.data_version().ok();
    let mut tick = tokio::time::interval(relay.options.store_poll);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let version = match relay.store.call(|s| s.data_version()).await {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "reading store version");
                continue;
            }
        };
        if version == last {
            continue;
        }
        last = version;
        // `warren admin expose` may have changed public ports.
        relay.expose_wake.notify_one();
        let conns = relay.registry.conns();
        let fps: Vec<String> = conns.iter().map(|c| c.fingerprint.clone()).collect();
        let active = relay
            .store
            .call(move |s| {
                fps.iter()
                    .map(|fp| s.key_active(fp))
                    .collect::<Result<Vec<bool>>>()
            })
            .await;
        let Ok(active) = active else { continue };
        for (conn, ok) in conns.iter().zip(active) {
            if !ok {
                crate::audit::key_revoked_disconnect(
                    conn.system.as_str(),
                    conn.name.as_str(),
                    &conn.fingerprint,
                );
                conn.handle.disconnect("your key was revoked").await;
            }
        }
    }
}

async fn flush_last_seen(relay: Arc<Relay>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(LAST_SEEN_FLUSH_INTERVAL);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let online: Vec<(String, String)> = relay
            .registry
            .online(None)
            .into_iter()
            .map(|(s, n, _)| (s.to_string(), n.to_string()))
            .collect();
        if !online.is_empty() {
            relay.status(StatusChange::Touch(online));
        }
    }
}
