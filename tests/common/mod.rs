//! Shared test fixtures: an in-process relay on 127.0.0.1:0, keys, agents,
//! small TCP services. Everything stops when its handle is dropped.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use warren::agent::{self, AgentEvent, AgentSettings};
use warren::audit::{Event, kind};
use warren::protocol::limits::{RELAY_KEEPALIVE_INTERVAL, RELAY_KEEPALIVE_MAX};
use warren::protocol::{AllowList, Name, Role};
use warren::relay::{Relay, RelayOptions};
use warren::ssh::client::{self, ClientConnection, ConnectOptions, NoForwards};
use warren::ssh::keys::{self, PrivateKey};
use warren::store::{AuditQuery, DeviceStatus, Store};

/// Upper bound for anything a test waits on. Generous: CI is a noisy 2-core box.
pub const WAIT: Duration = Duration::from_secs(30);

/// Logs in to the relay at `addr` (host key pinned) as `user` with `key`.
pub async fn connect_to(
    addr: &str,
    host_key: &str,
    user: &str,
    key: Arc<PrivateKey>,
) -> anyhow::Result<ClientConnection<NoForwards>> {
    let tcp = TcpStream::connect(addr).await?;
    let opts = ConnectOptions {
        user: user.into(),
        key,
        host_key: host_key.to_string(),
        dead_after: Duration::from_secs(10),
    };
    client::connect(tcp, &opts, NoForwards).await
}

/// Has the admin connection `ops` create `n` invites over exec; returns
/// their ids. Each is durable in the audit log before its reply.
pub async fn acknowledged_invites(
    ops: &ClientConnection<NoForwards>,
    relay_addr: &str,
    n: usize,
) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..n {
        let cmd =
            format!("invite --system tau --role device --name new{i} --relay {relay_addr} --json");
        let out = ops.exec(&cmd).await.unwrap();
        assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    ids
}

/// Asserts that the audit log in `store` holds the `invite_create` event of
/// every invite id in `acknowledged` (see [`acknowledged_invites`]).
pub fn assert_invites_on_record(store: &Store, acknowledged: &[String]) {
    let events = store
        .audit(&AuditQuery {
            kind: Some(kind::INVITE_CREATE.into()),
            limit: 10_000,
            ..Default::default()
        })
        .unwrap();
    for id in acknowledged {
        assert!(
            events
                .iter()
                .any(|e| e.detail.as_deref().unwrap_or("").contains(id.as_str())),
            "acknowledged invite {id} lost"
        );
    }
}

/// The audit events of `kind`, newest first, at most `limit`.
pub fn audit_of(kind: &str, limit: usize) -> AuditQuery {
    AuditQuery {
        kind: Some(kind.into()),
        limit,
        ..Default::default()
    }
}

/// How long the relay may take to notice a silent peer.
pub fn relay_keepalive_window() -> Duration {
    RELAY_KEEPALIVE_INTERVAL * (RELAY_KEEPALIVE_MAX as u32 + 1)
}

/// Makes a new key and registers it in `store`.
pub fn add_key_to(store: &Store, system: &str, role: Role, key_name: &str) -> Arc<PrivateKey> {
    let key = keys::generate_ed25519().unwrap();
    store
        .add_key(&name(system), role, &name(key_name), key.public_key())
        .unwrap();
    Arc::new(key)
}

/// Settings for an agent of device `system/dev` that reaches the relay at
/// `relay` and serves `allow`.
pub fn agent_settings(
    relay: &str,
    host_key: &str,
    system: &str,
    dev: &str,
    key: Arc<PrivateKey>,
    allow: &[String],
) -> AgentSettings {
    AgentSettings {
        relay: relay.to_string(),
        system: name(system),
        name: name(dev),
        key,
        relay_host_key: host_key.to_string(),
        allow: AllowList::parse(allow).unwrap(),
        dead_after: Duration::from_secs(5),
        labels: Default::default(),
        gateway: Default::default(),
        on_demand: None,
        p2p: true,
        relay_ca: None,
    }
}

/// SQLite's own check of the relay database in `data`.
pub fn assert_database_intact(data: &Path) {
    let db = rusqlite::Connection::open(data.join("warren.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}

pub fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

pub struct TestRelay {
    pub addr: SocketAddr,
    pub relay: Arc<Relay>,
    pub dir: tempfile::TempDir,
    pub stop: CancellationToken,
    /// The cluster's PostgreSQL database, if the relay runs on one.
    pub database: Option<String>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl TestRelay {
    pub async fn start() -> TestRelay {
        Self::start_with(RelayOptions {
            store_poll: Duration::from_millis(100),
            ..Default::default()
        })
        .await
    }

    pub async fn start_with(options: RelayOptions) -> TestRelay {
        logs();
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve_on(dir, listener, options)
    }

    fn serve_on(
        dir: tempfile::TempDir,
        listener: TcpListener,
        mut options: RelayOptions,
    ) -> TestRelay {
        let database = options.database.clone();
        if database.is_some() && options.advertise.is_none() {
            // Other relays of the cluster reach this one here.
            options.advertise = Some(listener.local_addr().unwrap().to_string());
        }
        let server = Relay::open(dir.path(), options).unwrap();
        let relay = server.relay().clone();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(server.serve(listener, stop.clone()));
        TestRelay {
            addr,
            relay,
            dir,
            stop,
            database,
            task: Some(task),
        }
    }

    /// Shuts the relay down and waits until `serve` returns.
    pub async fn shut_down(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
    }

    /// Stops the relay (closing every connection) and starts a new one on the
    /// same address and data directory, as after a restart.
    pub async fn restart(mut self) -> TestRelay {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            t.await.unwrap().unwrap();
        }
        let listener = TcpListener::bind(self.addr).await.unwrap();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        Self::serve_on(
            dir,
            listener,
            RelayOptions {
                store_poll: Duration::from_millis(100),
                database: self.database.clone(),
                ..Default::default()
            },
        )
    }

    pub fn host_key(&self) -> String {
        self.relay.host_key().to_string()
    }

    pub fn store(&self) -> &Store {
        self.relay.store()
    }

    /// Another handle on the database, as `warren admin` would open it.
    pub fn admin_store(&self) -> Store {
        Store::open_any(self.dir.path(), self.database.as_deref()).unwrap()
    }

    pub fn add_system(&self, system: &str) {
        self.store().add_system(&name(system)).unwrap();
    }

    /// Registers a new key and returns it (also written to the data dir, for
    /// tests that hand it to OpenSSH).
    pub fn add_key(&self, system: &str, role: Role, key_name: &str) -> Arc<PrivateKey> {
        add_key_to(self.store(), system, role, key_name)
    }

    pub fn agent_settings(
        &self,
        system: &str,
        dev: &str,
        key: Arc<PrivateKey>,
        allow: &[String],
    ) -> AgentSettings {
        agent_settings(
            &self.addr.to_string(),
            &self.host_key(),
            system,
            dev,
            key,
            allow,
        )
    }

    /// Adds a device key, starts its agent with `allow`, waits until it is online.
    pub async fn device(&self, system: &str, dev: &str, allow: &[String]) -> TestAgent {
        let key = self.add_key(system, Role::Device, dev);
        let mut agent = TestAgent::start(self.agent_settings(system, dev, key, allow));
        agent.online().await;
        agent
    }

    /// Starts an echo service and device `system/dev` serving it (as
    /// `127.0.0.1:PORT`); returns the device's agent and the port.
    pub async fn echo_device(&self, system: &str, dev: &str) -> (TestAgent, u16) {
        let port = echo_server().await;
        let agent = self
            .device(system, dev, &[format!("127.0.0.1:{port}")])
            .await;
        (agent, port)
    }

    pub async fn controller(
        &self,
        system: &str,
        key: Arc<PrivateKey>,
    ) -> ClientConnection<NoForwards> {
        self.try_connect(system, key).await.unwrap()
    }

    pub async fn try_connect(
        &self,
        system: &str,
        key: Arc<PrivateKey>,
    ) -> anyhow::Result<ClientConnection<NoForwards>> {
        connect_to(&self.addr.to_string(), &self.host_key(), system, key).await
    }

    /// Waits until the live registry shows (or stops showing) `system/dev`.
    pub async fn wait_online(&self, system: &str, dev: &str, online: bool) {
        let (s, d) = (name(system), name(dev));
        let registry = self.relay.registry();
        let mut changes = registry.watch();
        let wait = async {
            while (registry.lookup(&s, &d).is_some()) != online {
                changes.changed().await.unwrap();
            }
        };
        tokio::time::timeout(WAIT, wait).await.unwrap_or_else(|_| {
            panic!("{system}/{dev} online={online} not reached within {WAIT:?}")
        });
    }

    /// Waits until the store, read as `warren admin` would, has a status
    /// row for `system/dev` that satisfies `want`. The relay writes status
    /// in its own task, after the live registry has changed.
    pub async fn wait_status(
        &self,
        system: &str,
        dev: &str,
        want: impl Fn(&DeviceStatus) -> bool,
    ) -> DeviceStatus {
        let store = self.admin_store();
        let mut written = self.relay.status_written();
        let find = async {
            loop {
                let devices = store.devices(Some(system)).unwrap();
                if let Some(d) = devices.into_iter().find(|d| d.name == dev && want(d)) {
                    return d;
                }
                written.changed().await.unwrap();
            }
        };
        tokio::time::timeout(WAIT, find)
            .await
            .unwrap_or_else(|_| panic!("no status of {system}/{dev} as expected within {WAIT:?}"))
    }

    /// Waits until `found` picks its answer out of the audit events that
    /// match `q`; they are read again after every audit write.
    pub async fn wait_audit_for<T>(
        &self,
        q: &AuditQuery,
        found: impl Fn(Vec<Event>) -> Option<T>,
    ) -> T {
        let mut written = self.relay.audit().watch();
        let find = async {
            loop {
                if let Some(t) = found(self.store().audit(q).unwrap()) {
                    return t;
                }
                written.changed().await.unwrap();
            }
        };
        tokio::time::timeout(WAIT, find)
            .await
            .unwrap_or_else(|_| panic!("no audit events for {q:?} as expected within {WAIT:?}"))
    }

    /// Waits until the store holds an audit event matching `q` and `pred`.
    pub async fn wait_audit(&self, q: &AuditQuery, pred: impl Fn(&Event) -> bool) -> Event {
        self.wait_audit_for(q, |events| events.into_iter().find(|e| pred(e)))
            .await
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A running agent; stops when dropped.
pub struct TestAgent {
    pub events: mpsc::UnboundedReceiver<AgentEvent>,
    stop: CancellationToken,
}

impl TestAgent {
    pub fn start(settings: AgentSettings) -> TestAgent {
        let (tx, events) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        tokio::spawn(agent::run(settings, stop.clone(), Some(tx)));
        TestAgent { events, stop }
    }

    /// Waits for the next event.
    pub async fn next(&mut self) -> AgentEvent {
        tokio::time::timeout(WAIT, self.events.recv())
            .await
            .expect("agent event in time")
            .expect("agent running")
    }

    pub async fn online(&mut self) {
        loop {
            if self.next().await == AgentEvent::Online {
                return;
            }
        }
    }

    pub async fn offline(&mut self) -> String {
        loop {
            if let AgentEvent::Offline { reason } = self.next().await {
                return reason;
            }
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// An echo service on 127.0.0.1:0; returns its port.
pub async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

/// A one-line HTTP service on 127.0.0.1:0 answering `body`; returns its port.
pub async fn http_server(body: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    port
}

/// A port that nothing listens on (bound, then released).
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

/// Sends `msg` over a channel and reads the echo back.
pub async fn echo_through(
    conn: &ClientConnection<NoForwards>,
    host: &str,
    port: u16,
    msg: &[u8],
) -> anyhow::Result<Vec<u8>> {
    let ch = conn.open(host, u32::from(port)).await?;
    let (mut near, far) = tokio::io::duplex(64 * 1024);
    let (fr, fw) = tokio::io::split(far);
    let splice = tokio::spawn(ch.splice_io(fr, fw));
    near.write_all(msg).await?;
    near.shutdown().await?;
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, near.read_to_end(&mut back)).await??;
    drop(near);
    let _ = tokio::time::timeout(WAIT, splice).await;
    Ok(back)
}

pub fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

/// `len` pseudo-random, incompressible bytes (xorshift), the same each run.
pub fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect()
}

pub fn write_file(dir: &Path, file: &str, text: &str) -> PathBuf {
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p
}

/// Logs to stderr when `WARREN_TEST_LOG` is set (e.g. `debug`), for debugging a test.
pub fn logs() {
    if let Ok(filter) = std::env::var("WARREN_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

pub mod cli;
pub mod mosquitto;
pub mod netns;
pub mod openssh;
pub mod postgres;
pub mod tls;

impl TestRelay {
    /// Like [`TestRelay::add_key`], also writing the private key to a file
    /// in `dir` for OpenSSH to use.
    pub fn add_key_file(&self, dir: &Path, system: &str, role: Role, key_name: &str) -> PathBuf {
        let key = self.add_key(system, role, key_name);
        let path = dir.join(format!("{system}-{key_name}"));
        keys::write_pair(&key, &path, key_name).unwrap();
        path
    }

    /// The relay's host key as a known_hosts line.
    pub fn known_hosts_line(&self) -> String {
        let public = std::fs::read_to_string(self.dir.path().join("host_key.pub")).unwrap();
        format!("[127.0.0.1]:{} {}", self.addr.port(), public.trim())
    }
}
pub mod web;
