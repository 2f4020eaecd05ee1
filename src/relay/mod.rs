//! The relay: the public SSH server that devices register with and
//! controllers reach devices through.
//!
//! Flow: [`Server::serve`] accepts on a bound listener and spawns one task per
//! connection ([`connection`]); that task runs the SSH handshake under a
//! deadline and a cap on unauthenticated connections, authenticates the key
//! against the [`Store`], registers device names in the [`registry`], and routes
//! each controller stream to its device and splices the two.

mod background;
pub mod bandwidth;
mod cluster;
mod commands;
pub mod config;
mod connection;
mod enroll;
pub mod expose;
pub mod fair;
pub mod gateways;
pub mod hop;
mod hop_gateway;
pub mod listen;
mod live;
pub mod p2p;
pub mod ratelimit;
pub mod registry;
mod router;
pub mod slice;
mod stream;
pub mod udp;
pub mod wake;
mod wake_remote;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::audit::{self, Audit};
use crate::protocol::DeviceId;
use crate::protocol::device_info::DeviceInfo;
use crate::protocol::limits::{
    FAILED_LOGIN_BURST, FAILED_LOGIN_REFILL, HANDSHAKE_TIMEOUT, MAX_UNAUTHENTICATED,
    MAX_UNAUTHENTICATED_PER_ADDRESS, RATE_LIMIT_AUDIT_EVERY, SHUTDOWN_DRAIN, STORE_POLL_INTERVAL,
};
use crate::ssh::keys::{self, Fingerprint};
use crate::ssh::server::ServerConfig;
use crate::store::Store;
use registry::Registry;

pub use crate::store::datadir::{ADVERTISE_SETTING, HOST_KEY_FILE, host_key_path};

/// Tunables; the defaults are the production values (see `protocol::limits`).
#[derive(Debug, Clone)]
pub struct RelayOptions {
    pub handshake_timeout: Duration,
    pub max_unauthenticated: usize,
    /// Of those, how many one address may hold.
    pub max_unauthenticated_per_address: usize,
    pub store_poll: Duration,
    /// Audit events older than this are pruned (`--audit-retention`).
    pub audit_retention: Option<Duration>,
    /// `HOST:PORT` that new machines use to reach this relay, written into
    /// invite tokens (`--advertise`).
    pub advertise: Option<String>,
    /// Failed logins one address may make at once, and the period in which
    /// one more is allowed (`protocol::limits::FAILED_LOGIN_*`).
    pub failed_login_burst: u32,
    pub failed_login_refill: Duration,
    /// Enroll logins and key probes from one address are recorded once per
    /// this window, the rest counted (`protocol::limits::RATE_LIMIT_AUDIT_EVERY`).
    pub audit_flood_window: Duration,
    /// Relay ports admins may expose publicly (none by default).
    pub public_ports: config::PortRanges,
    /// Address public ports listen on; the SSH listener's address if None.
    pub public_bind: Option<std::net::IpAddr>,
    /// Ciphers and key exchanges offered, in order (`--ciphers`,
    /// `--kex-algorithms`).
    pub ciphers: crate::ssh::algorithms::Ciphers,
    pub kex_algorithms: crate::ssh::algorithms::KexAlgorithms,
    /// Refuse clients without strict key exchange (`--require-strict-kex`).
    pub require_strict_kex: bool,
    /// The MQTT broker that wakes on-demand devices (`--mqtt`), if any.
    pub wake: Option<wake::WakeOptions>,
    /// The PostgreSQL database of a cluster (`--database`); the SQLite
    /// database in the data directory if None.
    pub database: Option<String>,
    /// The UDP discovery port announced to direct-path signalling; `None`:
    /// no discovery, so no direct paths (`--udp off`).
    pub udp_port: Option<u16>,
    /// Systems whose streams never take direct paths (`--forbid-direct`).
    pub forbid_direct: Vec<crate::protocol::Name>,
    /// Bandwidth limits of systems and devices without one of their own
    /// (`--system-rate`, `--device-rate`); none by default.
    pub system_rate: Option<crate::protocol::rate::Rate>,
    pub device_rate: Option<crate::protocol::rate::Rate>,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            handshake_timeout: HANDSHAKE_TIMEOUT,
            max_unauthenticated: MAX_UNAUTHENTICATED,
            max_unauthenticated_per_address: MAX_UNAUTHENTICATED_PER_ADDRESS,
            store_poll: STORE_POLL_INTERVAL,
            audit_retention: None,
            advertise: None,
            failed_login_burst: FAILED_LOGIN_BURST,
            failed_login_refill: FAILED_LOGIN_REFILL,
            audit_flood_window: RATE_LIMIT_AUDIT_EVERY,
            public_ports: config::PortRanges::default(),
            public_bind: None,
            ciphers: Default::default(),
            kex_algorithms: Default::default(),
            require_strict_kex: false,
            wake: None,
            database: None,
            udp_port: None,
            forbid_direct: Vec::new(),
            system_rate: None,
            device_rate: None,
        }
    }
}

/// An opened relay, not yet serving: its shared state, and the writers'
/// ends that [`Server::serve`] alone runs.
pub struct Server {
    relay: Arc<Relay>,
    background: background::Background,
    /// The MQTT session's event loop, driven once serving starts.
    mqtt: Option<crate::mqtt::EventLoop>,
}

impl Server {
    pub fn relay(&self) -> &Arc<Relay> {
        &self.relay
    }

    /// Serves SSH on `listener` until `shutdown` is cancelled, then closes
    /// every connection and waits for them (at most [`SHUTDOWN_DRAIN`]).
    pub async fn serve(self, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
        serve(listener, self, shutdown).await
    }
}

/// The relay's shared state.
pub struct Relay {
    store: Store,
    registry: Registry,
    /// What each online gateway serves.
    gateways: gateways::Gateways,
    server_config: ServerConfig,
    host_key: Fingerprint,
    /// Connections to the other relays of a cluster, for hops.
    hops: hop::Hops,
    options: RelayOptions,
    unauthenticated: ratelimit::Unauthenticated,
    failed_logins: ratelimit::FailedLogins,
    floods: ratelimit::AuditFloods,
    next_conn: AtomicU64,
    status: mpsc::UnboundedSender<StatusChange>,
    /// Counts the status writes applied to the store.
    status_written: watch::Sender<u64>,
    /// Counts the store re-checks (`background::watch_store`) done.
    rechecks: watch::Sender<u64>,
    audit: Audit,
    /// Every task the relay starts (connections, their helpers, public
    /// ports, background work): shutdown waits for them.
    tasks: TaskTracker,
    /// Cancelled when shutdown begins; every connection and background task
    /// selects on it.
    shutting_down: CancellationToken,
    /// Woken after this relay itself changed keys or devices (remote admin),
    /// which `PRAGMA data_version` does not show to the same connection.
    store_changed: tokio::sync::Notify,
    /// `public_ports` in force (reloadable).
    public_ports: std::sync::RwLock<config::PortRanges>,
    /// Wakes the public-port manager (store changed, config reloaded).
    expose_wake: Notify,
    /// Public ports after the latest reconcile.
    exposed: watch::Sender<expose::Exposed>,
    /// Wakes on-demand devices over MQTT (`--mqtt`).
    waker: Option<Arc<wake::Waker>>,
    /// This relay, for work it starts from a borrowed `&Relay` (a wake
    /// asked for through [`crate::admin::LiveRelay`]).
    me: std::sync::Weak<Relay>,
    /// Direct paths per device, for `ls`.
    paths: p2p::Paths,
    /// Bandwidth limits in force, and the buckets of live streams.
    bandwidth: bandwidth::Bandwidth,
    /// Each system's fair share of the workers.
    shares: fair::Shares,
}

/// Device status writes, applied in order by one task so that a quick
/// reconnect can never leave the store saying "offline".
#[derive(Clone)]
enum StatusChange {
    Up {
        device: DeviceId,
        peer: SocketAddr,
        ports: Vec<u16>,
        info: DeviceInfo,
    },
    Down {
        device: DeviceId,
    },
    /// Last seen and live stream count of online devices.
    Touch(Vec<(DeviceId, u64)>),
}

/// Refuses a host key that others may read, as sshd does: whoever reads it
/// can pose as this relay to every agent that pinned it.
fn host_key_private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::metadata(path) else {
        // Not made yet: it is created 0600.
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        anyhow::bail!(
            "host key {} is accessible by group or others (mode {mode:04o}); fix it with `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    Ok(())
}

/// The SSH server's settings from the relay's options.
fn server_config(host: keys::PrivateKey, options: &RelayOptions) -> ServerConfig {
    let mut config = ServerConfig::new(host);
    config.handshake_timeout = options.handshake_timeout;
    config.set_login_grace(options.handshake_timeout);
    config.set_algorithms(
        &options.ciphers,
        &options.kex_algorithms,
        options.require_strict_kex,
    );
    config
}

/// What the store needs before the relay serves: no device counted online
/// from an earlier run, old audit events pruned, this relay's address.
fn store_at_start(store: &Store, options: &RelayOptions) -> Result<()> {
    store.all_devices_down()?;
    if let Some(keep) = options.audit_retention {
        let before = audit::now_ms().saturating_sub(keep.as_millis() as u64);
        let pruned = store.prune_audit(before)?;
        if pruned > 0 {
            tracing::info!(pruned, retention = ?keep, "pruned old audit events");
        }
    }
    // In a cluster each relay's address is its own registry row (set by
    // `join`); the shared settings would hold the last writer's.
    if let Some(addr) = &options.advertise
        && store.postgres().is_none()
    {
        store.set_setting(ADVERTISE_SETTING, addr)?;
    }
    Ok(())
}

impl Relay {
    /// Opens the data directory: host key (created on first start) and store.
    pub fn open(data: &Path, options: RelayOptions) -> Result<Server> {
        let store = Store::open_any(data, options.database.as_deref())?;
        host_key_private(&host_key_path(data))?;
        let host = keys::load_or_create_host_key(&host_key_path(data))
            .with_context(|| format!("loading host key in {}", data.display()))?;
        let host_key = keys::fingerprint(host.public_key());
        let hops = hop::Hops::new(Arc::new(host.clone()));
        if let Some(pg) = store.postgres() {
            // The relay's id in the cluster is its host key's fingerprint.
            pg.join(&host_key, options.advertise.as_deref(), &host_key)?;
        }
        let server_config = server_config(host, &options);
        store_at_start(&store, &options)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (audit, audit_writer) = audit::channel();
        let (waker, mqtt) = match &options.wake {
            Some(w) => {
                let (waker, eventloop) = wake::Waker::new(w)?;
                (Some(Arc::new(waker)), Some(eventloop))
            }
            None => (None, None),
        };
        let bandwidth = bandwidth::Bandwidth::new(options.system_rate, options.device_rate);
        let relay = Arc::new_cyclic(|me| Relay {
            me: me.clone(),
            waker,
            public_ports: std::sync::RwLock::new(options.public_ports.clone()),
            expose_wake: Notify::new(),
            exposed: watch::Sender::new(expose::Exposed::default()),
            store,
            registry: Registry::default(),
            gateways: gateways::Gateways::default(),
            server_config,
            host_key,
            hops,
            unauthenticated: ratelimit::Unauthenticated::new(
                options.max_unauthenticated,
                options.max_unauthenticated_per_address,
            ),
            failed_logins: ratelimit::FailedLogins::new(
                options.failed_login_burst,
                options.failed_login_refill,
            ),
            floods: ratelimit::AuditFloods::new(options.audit_flood_window),
            options,
            next_conn: AtomicU64::new(1),
            status: tx,
            status_written: watch::Sender::new(0),
            rechecks: watch::Sender::new(0),
            audit,
            tasks: TaskTracker::new(),
            shutting_down: CancellationToken::new(),
            store_changed: tokio::sync::Notify::new(),
            paths: p2p::Paths::default(),
            bandwidth,
            shares: fair::Shares::per_worker(),
        });
        Ok(Server {
            relay,
            background: background::Background::new(rx, audit_writer),
            mqtt,
        })
    }

    /// Runs `f` on the relay's one task tracker, which shutdown drains
    /// (within [`SHUTDOWN_DRAIN`]): a task that may wait long selects on
    /// [`Relay::shutting_down`].
    pub fn spawn(&self, f: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(f);
    }

    /// How long a new connection has for its handshakes.
    pub fn handshake_timeout(&self) -> Duration {
        self.options.handshake_timeout
    }

    /// The relay's one task tracker (see [`Relay::spawn`]), for accept
    /// loops of other ports (`front`).
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// Cancelled when the relay starts shutting down.
    pub fn shutting_down(&self) -> &CancellationToken {
        &self.shutting_down
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

    pub fn gateways(&self) -> &gateways::Gateways {
        &self.gateways
    }

    /// Direct paths per device (`ls` shows them).
    pub fn paths(&self) -> &p2p::Paths {
        &self.paths
    }

    /// Bandwidth limits in force.
    pub fn bandwidth(&self) -> &bandwidth::Bandwidth {
        &self.bandwidth
    }

    /// Each system's fair share of the workers.
    pub fn shares(&self) -> &fair::Shares {
        &self.shares
    }

    pub fn audit(&self) -> &Audit {
        &self.audit
    }

    /// The waker of on-demand devices, when the relay has a broker.
    pub fn waker(&self) -> Option<&Arc<wake::Waker>> {
        self.waker.as_ref()
    }

    /// Sees the count of device status writes applied to the store, for
    /// whoever waits on what the store says (status follows the registry).
    pub fn status_written(&self) -> watch::Receiver<u64> {
        self.status_written.subscribe()
    }

    /// Sees the count of store re-checks done (keys, disabled devices,
    /// gateways, public ports), for whoever waits until the relay has seen a
    /// change to the store.
    pub fn rechecks(&self) -> watch::Receiver<u64> {
        self.rechecks.subscribe()
    }

    /// Sees the number of connections holding an unauthenticated slot.
    pub fn unauthenticated(&self) -> watch::Receiver<usize> {
        self.unauthenticated.watch()
    }

    /// Tells the relay that its own store changed (keys revoked, devices
    /// disabled), so it acts at once rather than at the next poll.
    pub fn store_changed(&self) {
        self.store_changed.notify_one();
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

    /// Records an event that a peer can cause at will, at most once per
    /// address and window; the others are counted into the next record or a
    /// summary (see [`sweep_floods`]).
    fn record_flood(&self, ip: std::net::IpAddr, flood: ratelimit::Flood, mut event: audit::Event) {
        match self.floods.note(ip, flood, std::time::Instant::now()) {
            None => {
                self.audit.count(&event);
                tracing::debug!(%ip, ?flood, kind = %event.kind, "counted, not recorded");
            }
            Some(0) => self.audit.record(event),
            Some(n) => {
                let detail = event.detail.take().unwrap_or_default();
                event.detail = Some(format!(
                    "{detail}; {n} more like it from this address in the {:?} before, counted, not recorded one by one",
                    self.floods.window()
                ));
                self.audit.record(event);
            }
        }
    }

    fn status(&self, change: StatusChange) {
        // The receiver lives as long as `serve`; after it, nothing is lost
        // that matters: the next start marks every device offline anyway.
        let _ = self.status.send(change);
    }
}

/// A connection let in by [`Relay::admit`]: its id, and the slot it holds
/// among unauthenticated connections until it logs in.
pub struct Admission {
    id: registry::ConnId,
    permit: ratelimit::Slot,
}

impl Relay {
    /// Whether to serve a new connection from `peer`: not while its address
    /// is rate limited for failed logins, nor beyond the cap on
    /// unauthenticated connections (each TLS handshake counts too).
    pub fn admit(&self, peer: SocketAddr) -> Option<Admission> {
        self.admit_reserved(peer, None)
    }

    /// [`Relay::admit`] into a global slot the accept loop reserved.
    pub fn admit_reserved(
        &self,
        peer: SocketAddr,
        reserved: Option<ratelimit::Reserved>,
    ) -> Option<Admission> {
        if let ratelimit::Verdict::Limited { audit } = self
            .failed_logins
            .check(peer.ip(), std::time::Instant::now())
        {
            if let Some(refused) = audit {
                tracing::warn!(%peer, refused, "too many failed logins from this address; refusing its connections");
                self.audit.record(audit::login_refused(
                peer,
                "",
                audit::login_reason::RATE_LIMITED,
                &format!(
                    "rate limited: too many failed logins from {} ({refused} connection(s) refused)",
                    peer.ip()
                ),
            ));
            }
            return None;
        }
        let permit = match self.unauthenticated.take(peer.ip(), reserved) {
            Ok(p) => p,
            Err(full) => {
                // A peer can cause this at will: recorded once per address
                // and window, the rest counted (one log line, one row).
                // The whole cap full (the TLS port, WebSockets) is no one
                // address's doing: one key for all, so rotating addresses
                // cannot make a record each.
                let (cap, whose, key) = match full {
                    ratelimit::Full::Address => (
                        self.options.max_unauthenticated_per_address,
                        "from this address",
                        peer.ip(),
                    ),
                    ratelimit::Full::Global => (
                        self.options.max_unauthenticated,
                        "in all",
                        ratelimit::ANY_ADDRESS,
                    ),
                };
                self.record_flood(
                    key,
                    ratelimit::Flood::OverCap,
                    audit::login_refused(
                        peer,
                        "",
                        audit::login_reason::TOO_MANY_UNAUTHENTICATED,
                        &format!(
                            "closed before its handshake: {cap} unauthenticated connections {whose} already"
                        ),
                    ),
                );
                return None;
            }
        };
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        Some(Admission { id, permit })
    }

    /// Runs an admitted connection's SSH session to its end, on a TCP socket
    /// or on one that carries TLS or a WebSocket (`ssh::Socket::bridge`).
    pub fn serve_connection(
        self: &Arc<Self>,
        socket: impl Into<crate::ssh::Socket>,
        peer: SocketAddr,
        a: Admission,
    ) -> impl Future<Output = ()> + Send + 'static {
        connection::run(self.clone(), socket.into(), peer, a.id, a.permit)
    }
}

/// Serves SSH on `listener` until `shutdown` is cancelled, then shuts down
/// in order: stop accepting; tell every connection, in any state, "relay
/// shutting down"; wait for the relay's tasks (at most [`SHUTDOWN_DRAIN`]);
/// stop the status and audit writers, which first store what is queued.
async fn serve(listener: TcpListener, server: Server, shutdown: CancellationToken) -> Result<()> {
    let Server {
        relay,
        background,
        mqtt,
    } = server;
    let writers = background.start(&relay);
    if let (Some(waker), Some(eventloop)) = (relay.waker.clone(), mqtt) {
        relay.spawn(wake::run_broker(relay.clone(), waker, eventloop));
    }
    background::apply_disabled(&relay).await;
    background::apply_rates(&relay).await;
    relay.spawn(background::watch_store(relay.clone()));
    relay.spawn(background::flush_last_seen(relay.clone()));
    relay.spawn(cluster::close_lost(relay.clone()));
    relay.spawn(cluster::wake_on_change(relay.clone()));
    let public_ip = relay
        .options
        .public_bind
        .unwrap_or(listener.local_addr()?.ip());
    // Said before the public ports start, so that their log lines (a port
    // outside public_ports, say) always follow it.
    tracing::info!(
        addr = %listener.local_addr()?,
        host_key = %relay.host_key,
        open_files = listen::open_files_limit(),
        unauthenticated = relay.options.max_unauthenticated,
        unauthenticated_per_address = relay.options.max_unauthenticated_per_address,
        "relay listening"
    );
    relay.spawn(expose::run(relay.clone(), public_ip));

    let admit = |stream: TcpStream, peer: SocketAddr, reserved| {
        let admitted = relay.admit_reserved(peer, reserved)?;
        Some(relay.serve_connection(stream, peer, admitted))
    };
    // A full cap on unauthenticated connections stops accepting: the
    // kernel queues the rest (`cli::relay`'s backlog) until a handshake
    // ends. The slot waited for is reserved for the connection accepted.
    let gate = || relay.unauthenticated.reserve();
    listen::accept_loop_gated(listener, shutdown, relay.tasks.clone(), gate, admit).await;

    tracing::info!("relay shutting down");
    // Public ports stop accepting, and every connection task says goodbye.
    relay.shutting_down.cancel();
    relay.tasks.close();
    if tokio::time::timeout(SHUTDOWN_DRAIN, relay.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within {SHUTDOWN_DRAIN:?}");
    }
    writers.stop().await;
    Ok(())
}
