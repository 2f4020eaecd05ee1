//! The live registry: which device names are online, on which connection,
//! and which connections are authenticated. Critical sections are short and
//! never await or touch the database.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::protocol::{DeviceId, Name};
use crate::ssh::Fingerprint;
use crate::ssh::server::ServerHandle;

pub type ConnId = u64;

/// An online device.
#[derive(Clone)]
pub struct DeviceEntry {
    pub conn: ConnId,
    pub handle: ServerHandle,
    pub ports: BTreeSet<u32>,
    pub since: u64,
    pub peer: SocketAddr,
}

/// An authenticated connection.
#[derive(Clone)]
pub struct LiveConn {
    pub fingerprint: Fingerprint,
    pub system: Name,
    pub name: Name,
    pub handle: ServerHandle,
}

/// The connection claiming a name.
pub struct Holder {
    pub conn: ConnId,
    pub handle: ServerHandle,
    pub peer: SocketAddr,
}

/// What a registration did.
pub struct Registered {
    /// The connection that held the name before, now to be closed.
    pub replaced: Option<ServerHandle>,
    /// All ports the name now serves.
    pub ports: Vec<u16>,
}

pub struct Registry {
    inner: Mutex<Inner>,
    /// Bumped after every change of online devices, for anyone who waits on
    /// one (tests, and later status streams).
    changed: watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            inner: Mutex::default(),
            changed: watch::Sender::new(0),
        }
    }
}

#[derive(Default)]
struct Inner {
    devices: HashMap<DeviceId, DeviceEntry>,
    conns: HashMap<ConnId, LiveConn>,
    /// Devices an admin disabled: no new streams.
    disabled: HashSet<DeviceId>,
    /// Live streams per device, each with the token that closes it.
    streams: HashMap<DeviceId, HashMap<u64, CancellationToken>>,
    next_stream: u64,
}

/// A live stream to a device, counted while this guard lives. `closed` fires
/// when the device is disabled.
pub struct StreamGuard<'a> {
    registry: &'a Registry,
    key: DeviceId,
    id: u64,
    pub closed: CancellationToken,
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        let mut inner = self.registry.lock();
        if let Some(m) = inner.streams.get_mut(&self.key) {
            m.remove(&self.id);
            if m.is_empty() {
                inner.streams.remove(&self.key);
            }
        }
    }
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every critical section leaves the maps consistent before it can
        // panic, so a poisoned lock is still safe to use.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A receiver that sees a new value after each change of online devices.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|v| *v += 1);
    }

    pub fn add_conn(&self, id: ConnId, conn: LiveConn) {
        self.lock().conns.insert(id, conn);
    }

    /// Forgets a connection; returns the device names it held (now offline).
    pub fn remove_conn(&self, id: ConnId) -> Vec<DeviceId> {
        let mut inner = self.lock();
        inner.conns.remove(&id);
        let gone: Vec<DeviceId> = inner
            .devices
            .iter()
            .filter(|(_, d)| d.conn == id)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            inner.devices.remove(k);
        }
        drop(inner);
        if !gone.is_empty() {
            self.bump();
        }
        gone
    }

    /// Registers `device:port` for connection `conn`. A different
    /// connection holding the name (the same key reconnecting) is replaced.
    pub fn register(&self, device: &DeviceId, port: u32, by: &Holder, now: u64) -> Registered {
        let Holder { conn, handle, peer } = by;
        let (conn, peer) = (*conn, *peer);
        let mut inner = self.lock();
        let key = device.clone();
        let mut replaced = None;
        let entry = inner.devices.entry(key).or_insert_with(|| DeviceEntry {
            conn,
            handle: handle.clone(),
            ports: BTreeSet::new(),
            since: now,
            peer,
        });
        if entry.conn != conn {
            replaced = Some(std::mem::replace(&mut entry.handle, handle.clone()));
            entry.conn = conn;
            entry.ports.clear();
            entry.since = now;
            entry.peer = peer;
        }
        entry.ports.insert(port);
        let ports = entry
            .ports
            .iter()
            .filter_map(|p| u16::try_from(*p).ok())
            .collect();
        drop(inner);
        self.bump();
        Registered { replaced, ports }
    }

    /// Cancels one port; returns whether the name is now gone entirely.
    pub fn unregister(&self, device: &DeviceId, port: u32, conn: ConnId) -> Option<bool> {
        let mut inner = self.lock();
        let entry = inner.devices.get_mut(device).filter(|d| d.conn == conn)?;
        entry.ports.remove(&port);
        let gone = entry.ports.is_empty();
        if gone {
            inner.devices.remove(device);
        }
        drop(inner);
        self.bump();
        Some(gone)
    }

    pub fn lookup(&self, system: &Name, name: &Name) -> Option<DeviceEntry> {
        self.lock()
            .devices
            .get(&DeviceId::new(system.clone(), name.clone()))
            .cloned()
    }

    /// Online devices of one system (or all).
    pub fn online(&self, system: Option<&Name>) -> Vec<(DeviceId, DeviceEntry)> {
        self.lock()
            .devices
            .iter()
            .filter(|(id, _)| system.is_none_or(|want| *want == id.system))
            .map(|(id, d)| (id.clone(), d.clone()))
            .collect()
    }

    pub fn conns(&self) -> Vec<LiveConn> {
        self.lock().conns.values().cloned().collect()
    }

    pub fn conn_count(&self) -> usize {
        self.lock().conns.len()
    }

    /// Starts a stream to `device`, unless it is disabled. The check and
    /// the count happen under one lock, so a stream can never slip past a
    /// concurrent disable.
    pub fn open_stream(&self, device: &DeviceId) -> Option<StreamGuard<'_>> {
        let mut inner = self.lock();
        let key = device.clone();
        if inner.disabled.contains(&key) {
            return None;
        }
        inner.next_stream += 1;
        let id = inner.next_stream;
        let closed = CancellationToken::new();
        inner
            .streams
            .entry(key.clone())
            .or_default()
            .insert(id, closed.clone());
        Some(StreamGuard {
            registry: self,
            key,
            id,
            closed,
        })
    }

    pub fn stream_count(&self, device: &DeviceId) -> usize {
        self.lock().streams.get(device).map_or(0, HashMap::len)
    }

    pub fn is_disabled(&self, system: &Name, name: &Name) -> bool {
        self.lock()
            .disabled
            .contains(&DeviceId::new(system.clone(), name.clone()))
    }

    /// Replaces the set of disabled devices and closes the live streams of
    /// every disabled one. Returns how many streams were told to close.
    pub fn set_disabled(&self, disabled: HashSet<DeviceId>) -> usize {
        let mut inner = self.lock();
        let mut closed = 0;
        for key in &disabled {
            if let Some(m) = inner.streams.get(key) {
                for token in m.values().filter(|t| !t.is_cancelled()) {
                    token.cancel();
                    closed += 1;
                }
            }
        }
        let changed = inner.disabled != disabled;
        inner.disabled = disabled;
        drop(inner);
        if changed {
            self.bump();
        }
        closed
    }
}
