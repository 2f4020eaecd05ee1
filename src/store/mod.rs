//! The relay's state in one SQLite file: systems, keys, device status.
//!
//! Every write is a transaction with `synchronous = FULL` in WAL mode, so a
//! crash or `kill -9` loses nothing that was acknowledged. `warren admin`
//! writes from another process; the relay notices through
//! [`Store::data_version`] and never needs a restart.
//!
//! Writes go through one connection; reads have connections of their own
//! ([`STORE_READERS`]), so a read never waits behind a write that waits for
//! another process's lock. Calls block: async code runs them through
//! [`Store::call`], never on a connection's task.
//!
//! The data directory is created 0700 and the database (with its `-wal` and
//! `-shm` files, which SQLite creates with the database's mode) 0600: they
//! hold the audit log with peer addresses and invite hashes.

pub mod audit;
pub mod credentials;
pub mod datadir;
mod enroll;
mod exposures;
mod gateways;
pub mod labels;
mod migrations;
pub use migrations::schema_version;
mod on_demand;
pub mod postgres;
pub mod rates;
mod seen;

pub use audit::AuditQuery;
pub use enroll::{InviteRecord, NewInvite};
pub use exposures::Exposure;
pub use on_demand::{OnDemandInfo, OnDemandRecord};
pub use rates::RateRecord;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

pub use gateways::GatewayRecord;

use crate::protocol::device_info::DeviceInfo;
use crate::protocol::limits::{STORE_BUSY_TIMEOUT, STORE_READERS};
use crate::protocol::{Name, Role};
use crate::ssh::keys::{Fingerprint, PublicKey, fingerprint};

pub const DB_FILE: &str = "warren.db";

#[derive(Clone)]
pub struct Store {
    /// The one connection that writes (and reads `data_version`).
    conn: Arc<Mutex<Connection>>,
    /// Connections that only read (`query_only`), taken in turn.
    readers: Arc<[Mutex<Connection>]>,
    next_reader: Arc<AtomicUsize>,
    /// The PostgreSQL backend, when the store is a cluster's database:
    /// every method then answers from it first, and the SQLite handles
    /// above are an empty in-memory database that nothing reaches.
    pg: Option<Arc<postgres::Pg>>,
}

/// A registered key, as `key ls` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyRecord {
    pub fingerprint: Fingerprint,
    pub system: String,
    pub role: Role,
    pub name: String,
    pub algorithm: String,
    pub created: u64,
    pub revoked: Option<u64>,
    /// The invite a key was enrolled with; `None` for keys added by hand.
    pub enrolled_via: Option<String>,
}

/// Who a key belongs to, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub system: Name,
    pub role: Role,
    pub name: Name,
    pub fingerprint: Fingerprint,
}

/// One device as listed (`ls`, `ls --json`): its persisted status, and in
/// admin's listing the live registry's online state laid over it (the
/// registry is the truth about "now") and a gateway's networks.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct DeviceStatus {
    pub system: String,
    pub name: String,
    pub online: bool,
    /// Unix seconds: connected since (online) or went offline (offline).
    pub since: Option<u64>,
    pub last_seen: Option<u64>,
    /// Address the device connected from (last known when offline).
    pub address: Option<String>,
    pub ports: Vec<u16>,
    /// Agent version, as the agent reported it (stock ssh devices report none).
    pub version: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Live streams (as of the last status write, when read from the store).
    pub streams: u64,
    /// An admin disabled it: no streams.
    pub disabled: bool,
    /// A gateway's networks: its own scope and served associations (empty
    /// for a plain device, and as the store returns it).
    #[serde(default)]
    pub scope: Vec<String>,
    /// `online`, `offline`, `asleep` (an on-demand device, woken on use) or
    /// `waking` (a wake in progress).
    pub status: String,
    /// An on-demand device's last reported state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_demand: Option<OnDemandInfo>,
    /// Online devices, from a running relay: `direct` while a controller
    /// has a direct path to it, else `relayed` (never stored).
    #[serde(default)]
    pub path: Option<String>,
    /// Why the latest direct-path attempt left it relayed.
    #[serde(default)]
    pub path_why: Option<String>,
    /// The device's own bandwidth limit, if an admin set one.
    #[serde(default)]
    pub rate: Option<crate::protocol::rate::Rate>,
    /// Its system's bandwidth limit, if an admin set one.
    #[serde(default)]
    pub system_rate: Option<crate::protocol::rate::Rate>,
    /// Keys in `labels` whose value an admin set (`labels` is the merged
    /// set: the agent's, with the admin's word laid over; `store/labels.rs`).
    #[serde(default)]
    pub admin_labels: Vec<String>,
    /// Agent labels an admin hid: absent from `labels`.
    #[serde(default)]
    pub hidden_labels: Vec<String>,
}

impl DeviceStatus {
    /// A device known to the store and never seen online: no address,
    /// ports, labels or limits (fill in what a caller needs).
    pub fn offline(system: &str, name: &str) -> DeviceStatus {
        DeviceStatus {
            system: system.into(),
            name: name.into(),
            online: false,
            since: None,
            last_seen: None,
            address: None,
            ports: Vec::new(),
            version: None,
            labels: std::collections::BTreeMap::new(),
            streams: 0,
            disabled: false,
            scope: Vec::new(),
            status: "offline".into(),
            on_demand: None,
            path: None,
            path_why: None,
            rate: None,
            system_rate: None,
            admin_labels: Vec::new(),
            hidden_labels: Vec::new(),
        }
    }
}

impl rusqlite::ToSql for Fingerprint {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(self.as_str().into())
    }
}

/// Fingerprints in the store were all made by `ssh::keys`, so they are read
/// back without checking their form again.
impl rusqlite::types::FromSql for Fingerprint {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        String::column_result(v).map(Fingerprint::from_stored)
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

impl Store {
    /// Opens (creating if needed) the database in `dir` and migrates it.
    pub fn open(dir: &Path) -> Result<Store> {
        create_private_dir(dir)?;
        let path = dir.join(DB_FILE);
        create_private_file(&path)?;
        let mut conn = Connection::open(&path)
            .with_context(|| format!("cannot open database {}", path.display()))?;
        // Before the first statement: SQLite makes `-wal` and `-shm` with the
        // database's mode.
        private_files(&path)?;
        conn.busy_timeout(STORE_BUSY_TIMEOUT)?;
        wal_mode(&conn).with_context(|| format!("opening database {}", path.display()))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrations::migrate(&mut conn)
            .with_context(|| format!("migrating database {}", path.display()))?;
        let readers = (0..STORE_READERS)
            .map(|_| {
                let r = Connection::open(&path)
                    .with_context(|| format!("cannot open database {}", path.display()))?;
                r.busy_timeout(STORE_BUSY_TIMEOUT)?;
                r.pragma_update(None, "query_only", "ON")?;
                // One read now: it opens the connection's WAL handle and
                // reads the schema, so the relay's descriptors are all open
                // from its start.
                r.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(()))?;
                Ok(Mutex::new(r))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Store {
            conn: Arc::new(Mutex::new(conn)),
            readers: readers.into(),
            next_reader: Arc::new(AtomicUsize::new(0)),
            pg: None,
        })
    }

    /// Opens (migrating if needed) the PostgreSQL database at `url`.
    pub fn open_postgres(url: &str) -> Result<Store> {
        let pg = postgres::Pg::open(url)?;
        let idle = || Connection::open_in_memory().context("opening an in-memory handle");
        Ok(Store {
            conn: Arc::new(Mutex::new(idle()?)),
            readers: vec![Mutex::new(idle()?)].into(),
            next_reader: Arc::new(AtomicUsize::new(0)),
            pg: Some(Arc::new(pg)),
        })
    }

    /// Opens `database` (a `postgres://` address) if given, else the SQLite
    /// database in `data`.
    pub fn open_any(data: &Path, database: Option<&str>) -> Result<Store> {
        match database {
            Some(url) => {
                if !postgres::is_postgres_url(url) {
                    bail!(
                        "--database {url:?} is not a PostgreSQL address (postgres://USER@HOST/DB); the SQLite database lives in --data"
                    );
                }
                Store::open_postgres(url)
            }
            None => Store::open(data),
        }
    }

    /// The PostgreSQL backend, if this store is one.
    pub fn postgres(&self) -> Option<&postgres::Pg> {
        self.pg.as_deref()
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // rusqlite leaves the connection usable after a panic in another
        // holder: every statement is its own transaction or rolled back.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A reading connection: a free one if any, else the next in turn.
    fn read(&self) -> MutexGuard<'_, Connection> {
        let n = self.readers.len();
        let start = self.next_reader.fetch_add(1, Ordering::Relaxed);
        for i in 0..n {
            if let Ok(c) = self.readers[(start + i) % n].try_lock() {
                return c;
            }
        }
        self.readers[start % n]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Runs a blocking store call off the async threads.
    pub async fn call<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T> + Send + 'static,
    {
        let store = self.clone();
        let started = std::time::Instant::now();
        let result = tokio::task::spawn_blocking(move || f(&store))
            .await
            .context("store task failed");
        crate::metrics::global().store_call(started.elapsed());
        result?
    }

    /// Changes when another process commits (used to notice `warren admin`).
    pub fn data_version(&self) -> Result<i64> {
        if let Some(pg) = &self.pg {
            return Ok(pg.data_version());
        }
        Ok(self
            .lock()
            .query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    pub fn add_system(&self, name: &Name) -> Result<()> {
        if name.as_str() == crate::protocol::token::ENROLL_USER {
            bail!("{name:?} is reserved (new machines log in as user {name:?} to enroll)");
        }
        if let Some(pg) = &self.pg {
            return pg.add_system(name);
        }
        let n = self.lock().execute(
            "INSERT INTO systems (name, created) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            params![name.as_str(), now()],
        )?;
        if n == 0 {
            bail!("system {name} already exists");
        }
        Ok(())
    }

    pub fn systems(&self) -> Result<Vec<String>> {
        if let Some(pg) = &self.pg {
            return pg.systems();
        }
        let conn = self.read();
        let mut st = conn.prepare("SELECT name FROM systems ORDER BY name")?;
        let rows = st.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn add_key(
        &self,
        system: &Name,
        role: Role,
        name: &Name,
        key: &PublicKey,
    ) -> Result<KeyRecord> {
        if let Some(pg) = &self.pg {
            return pg.add_key(system, role, name, key);
        }
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let rec = insert_key(&tx, system, role, name, key, None)?;
        tx.commit()?;
        Ok(rec)
    }

    pub fn keys(&self) -> Result<Vec<KeyRecord>> {
        if let Some(pg) = &self.pg {
            return pg.keys();
        }
        let conn = self.read();
        let mut st = conn.prepare(
            "SELECT fingerprint, system, role, name, public_key, created, revoked, enrolled_via FROM keys ORDER BY system, role, name",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, i64>(5)?,
                r.get::<_, Option<i64>>(6)?,
                r.get::<_, Option<String>>(7)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (fingerprint, system, role, name, public_key, created, revoked, enrolled_via) =
                row?;
            let algorithm = public_key
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string();
            out.push(KeyRecord {
                fingerprint: Fingerprint::from_stored(fingerprint),
                system,
                role: role.parse().map_err(anyhow::Error::msg)?,
                name,
                algorithm,
                created: created as u64,
                revoked: revoked.map(|t| t as u64),
                enrolled_via,
            });
        }
        Ok(out)
    }

    /// Revokes a key by fingerprint. Returns the revoked record.
    pub fn revoke_key(&self, fp: &str) -> Result<KeyRecord> {
        if let Some(pg) = &self.pg {
            return pg.revoke_key(fp);
        }
        let n = self.lock().execute(
            "UPDATE keys SET revoked = ?1 WHERE fingerprint = ?2 AND revoked IS NULL",
            params![now(), fp],
        )?;
        let rec = self.keys()?.into_iter().find(|k| k.fingerprint == fp);
        match (n, rec) {
            (_, None) => bail!("no key with fingerprint {fp} (see `warren admin key ls`)"),
            (0, Some(_)) => bail!("key {fp} is already revoked"),
            (_, Some(rec)) => Ok(rec),
        }
    }

    /// The identity of an active (not revoked) key allowed to log in as `system`.
    pub fn identity(&self, system: &str, key: &PublicKey) -> Result<Option<Identity>> {
        if let Some(pg) = &self.pg {
            return pg.identity(system, key);
        }
        let fp = fingerprint(key);
        let row = self
            .read()
            .query_row(
                "SELECT role, name, public_key FROM keys WHERE fingerprint = ?1 AND system = ?2 AND revoked IS NULL",
                [&fp, system],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)),
            )
            .optional()?;
        let Some((role, name, stored)) = row else {
            return Ok(None);
        };
        // The fingerprint matched; compare the whole key too, so that even a
        // hash collision could not log anyone in.
        let stored = PublicKey::from_openssh(&stored)
            .map_err(|e| anyhow::anyhow!("stored key {fp} is corrupt: {e}"))?;
        if stored.key_data() != key.key_data() {
            return Ok(None);
        }
        Ok(Some(Identity {
            system: Name::parse(system)?,
            role: role.parse().map_err(anyhow::Error::msg)?,
            name: Name::parse(&name)?,
            fingerprint: fp,
        }))
    }

    /// Whether a key is revoked or gone (for closing live connections).
    pub fn key_active(&self, fp: &str) -> Result<bool> {
        if let Some(pg) = &self.pg {
            return pg.key_active(fp);
        }
        Ok(self
            .read()
            .query_row(
                "SELECT 1 FROM keys WHERE fingerprint = ?1 AND revoked IS NULL",
                [fp],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// [`Store::key_active`] of each fingerprint, in order (one query on
    /// PostgreSQL).
    pub fn keys_active(&self, fps: &[Fingerprint]) -> Result<Vec<bool>> {
        if let Some(pg) = &self.pg {
            return pg.active_keys(fps);
        }
        fps.iter().map(|fp| self.key_active(fp)).collect()
    }
}

/// A device that registered, for [`Store::devices_up`].
#[derive(Debug, Clone)]
pub struct DeviceUp {
    pub system: String,
    pub name: String,
    pub peer: SocketAddr,
    pub ports: Vec<u16>,
    pub info: DeviceInfo,
}

impl Store {
    pub fn device_up(
        &self,
        system: &str,
        name: &str,
        peer: SocketAddr,
        ports: &[u16],
        info: &DeviceInfo,
    ) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.device_up(system, name, peer, ports, info);
        }
        let t = now();
        let labels = serde_json::to_string(&info.labels)?;
        self.lock().execute(
            "INSERT INTO devices (system, name, online, since, last_seen, address, ports, version, labels) VALUES (?1, ?2, 1, ?3, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (system, name) DO UPDATE SET online = 1, since = ?3, last_seen = ?3, address = ?4, ports = ?5, version = ?6, labels = ?7",
            params![system, name, t, peer.to_string(), join_ports(ports), info.version, labels],
        )?;
        Ok(())
    }

    /// Devices that registered (in order): one transaction on PostgreSQL.
    pub fn devices_up(&self, ups: &[DeviceUp]) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.devices_up(ups);
        }
        for u in ups {
            self.device_up(&u.system, &u.name, u.peer, &u.ports, &u.info)?;
            self.set_on_demand(&u.system, &u.name, u.info.on_demand)?;
        }
        Ok(())
    }

    pub fn device_down(&self, system: &str, name: &str) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.device_down(system, name);
        }
        let t = now();
        self.lock().execute(
            "UPDATE devices SET online = 0, since = ?3, last_seen = ?3, streams = 0 WHERE system = ?1 AND name = ?2",
            params![system, name, t],
        )?;
        Ok(())
    }

    /// Marks every device offline (at relay start: nobody is connected yet).
    pub fn all_devices_down(&self) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.all_devices_down();
        }
        self.lock().execute(
            "UPDATE devices SET online = 0, since = last_seen, streams = 0 WHERE online = 1",
            [],
        )?;
        Ok(())
    }

    /// Writes last-seen and the live stream count of online devices.
    pub fn touch_devices(&self, devices: &[(String, String, u64)]) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.touch_devices(devices);
        }
        let t = now();
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (system, name, streams) in devices {
            tx.execute(
                "UPDATE devices SET last_seen = ?3, streams = ?4 WHERE system = ?1 AND name = ?2",
                params![system, name, t, *streams as i64],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Devices as stored, with the labels an admin set merged in.
    pub fn devices(&self, system: Option<&str>) -> Result<Vec<DeviceStatus>> {
        let mut devices = match &self.pg {
            Some(pg) => pg.devices(system)?,
            None => self.sqlite_devices(system)?,
        };
        labels::merge(&mut devices, self.admin_labels(system)?);
        Ok(devices)
    }

    fn sqlite_devices(&self, system: Option<&str>) -> Result<Vec<DeviceStatus>> {
        let conn = self.read();
        let mut st = conn.prepare(
            "SELECT system, name, online, since, last_seen, address, ports, version, labels, streams, disabled FROM devices
             WHERE ?1 IS NULL OR system = ?1 ORDER BY system, name",
        )?;
        let rows = st.query_map([system], |r| {
            let (system, name): (String, String) = (r.get(0)?, r.get(1)?);
            let online = r.get::<_, i64>(2)? != 0;
            Ok(DeviceStatus {
                online,
                since: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
                last_seen: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
                address: r.get(5)?,
                ports: split_ports(&r.get::<_, Option<String>>(6)?.unwrap_or_default()),
                version: r.get(7)?,
                labels: r
                    .get::<_, Option<String>>(8)?
                    .and_then(|l| serde_json::from_str(&l).ok())
                    .unwrap_or_default(),
                streams: r.get::<_, i64>(9)?.max(0) as u64,
                disabled: r.get::<_, i64>(10)? != 0,
                status: if online { "online" } else { "offline" }.into(),
                ..DeviceStatus::offline(&system, &name)
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Adds a key inside `tx`, after the checks every path shares: the system
/// exists, the key is not registered yet, a device name has one active key.
fn insert_key(
    tx: &rusqlite::Transaction<'_>,
    system: &Name,
    role: Role,
    name: &Name,
    key: &PublicKey,
    enrolled_via: Option<&str>,
) -> Result<KeyRecord> {
    let fp = fingerprint(key);
    let openssh = key
        .to_openssh()
        .map_err(|e| anyhow::anyhow!("encoding key: {e}"))?;
    let exists: bool = tx
        .query_row(
            "SELECT 1 FROM systems WHERE name = ?1",
            [system.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if !exists {
        bail!("no system {system}; add it first with `warren admin system add {system}`");
    }
    if let Some((s, r, n)) = tx
        .query_row(
            "SELECT system, role, name FROM keys WHERE fingerprint = ?1",
            [&fp],
            |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )
        .optional()?
    {
        bail!("key {fp} is already registered as {r} {n} in system {s}");
    }
    if role == Role::Device {
        let owner: Option<String> = tx
                .query_row(
                    "SELECT fingerprint FROM keys WHERE system = ?1 AND name = ?2 AND role = 'device' AND revoked IS NULL",
                    [system.as_str(), name.as_str()],
                    |r| r.get(0),
                )
                .optional()?;
        if let Some(owner) = owner {
            bail!(
                "device name {name} in system {system} already belongs to key {owner}; revoke that key first"
            );
        }
    }
    let created = now();
    tx.execute(
            "INSERT INTO keys (fingerprint, system, role, name, public_key, created, enrolled_via) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![fp, system.as_str(), role.as_str(), name.as_str(), openssh, created, enrolled_via],
        )?;
    Ok(KeyRecord {
        fingerprint: fp,
        system: system.to_string(),
        role,
        name: name.to_string(),
        algorithm: key.algorithm().to_string(),
        created,
        revoked: None,
        enrolled_via: enrolled_via.map(str::to_string),
    })
}

/// Switches a database to WAL mode (a no-op once it is). The switch needs
/// the database to itself, and SQLite answers "busy" at once rather than
/// waiting while another process has it open (a relay and `warren admin`
/// opening a new database together): retry for as long as the busy timeout.
fn wal_mode(conn: &Connection) -> Result<()> {
    let started = std::time::Instant::now();
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && started.elapsed() < STORE_BUSY_TIMEOUT =>
            {
                std::thread::sleep(WAL_SWITCH_RETRY);
            }
            other => return Ok(other?),
        }
    }
}

/// Pause between attempts to switch to WAL mode: short, since the switch is
/// one statement long.
const WAL_SWITCH_RETRY: Duration = Duration::from_millis(5);

/// Creates `dir` (and missing parents) readable by its owner only. An
/// existing directory keeps its mode: it may be the operator's choice.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))
}

/// Makes a new, empty database file 0600 before SQLite opens it (SQLite
/// would create it with the umask's mode, readable by others until
/// [`private_files`] runs; its `-wal` and `-shm` take the database's mode).
/// An empty file is an empty database. No descriptor is opened on a file
/// that exists: closing one would drop the locks this process holds on it.
fn create_private_file(db: &Path) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create database {}", db.display())),
    }
}

/// Takes group and other permissions off the database and its `-wal` and
/// `-shm` (SQLite creates a new database with the umask's mode, and an older
/// warren left them 0644). By path only: opening and closing a descriptor
/// on the database here would drop the locks this process's connections hold.
fn private_files(db: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = std::path::PathBuf::from(name);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o700))
                .with_context(|| {
                    format!(
                        "{} is readable by others and cannot be changed; fix it with `chmod 600 {}`",
                        path.display(),
                        path.display()
                    )
                })?;
        }
    }
    Ok(())
}

fn join_ports(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn split_ports(s: &str) -> Vec<u16> {
    s.split(',').filter_map(|p| p.parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn another_process_write_changes_data_version() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(dir.path()).unwrap();
        let b = Store::open(dir.path()).unwrap();
        let v1 = a.data_version().unwrap();
        b.add_system(&name("tau")).unwrap();
        assert_ne!(a.data_version().unwrap(), v1);
    }
}
