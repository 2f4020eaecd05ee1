//! A real PostgreSQL server for a test: `initdb` and `pg_ctl` run as the
//! `postgres` user (tests run as root) in a temporary directory, listening
//! only on a unix socket in that directory (`listen_addresses = ''`), and
//! stopped (`pg_ctl stop -m immediate`) when the guard drops, even when the
//! test fails. Each test takes a database of its own ([`PgServer::database`]).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where Debian's `postgresql` package puts the server binaries.
const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PgServer {
    dir: tempfile::TempDir,
    next_db: AtomicUsize,
}

fn bin(name: &str) -> PathBuf {
    let path = Path::new(BIN).join(name);
    assert!(
        path.exists(),
        "{} missing: install Debian's postgresql (scripts/test does)",
        path.display()
    );
    path
}

/// Runs `args` as the postgres user; panics with its output on failure.
fn as_postgres(program: &Path, args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(args)
        .output()
        .expect("runuser");
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PgServer {
    /// Creates a cluster and starts it (waiting until it accepts connections).
    pub fn start() -> PgServer {
        let dir = tempfile::Builder::new()
            .prefix("wpg")
            .tempdir_in("/tmp")
            .unwrap();
        let status = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "chown postgres {}", dir.path().display());
        let server = PgServer {
            dir,
            next_db: AtomicUsize::new(0),
        };
        let data = server.data_dir();
        as_postgres(
            &bin("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        server.pg_start();
        server
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server (again), waiting until it accepts connections.
    pub fn pg_start(&self) {
        let opts = format!(
            "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off -c max_connections=200",
            self.socket_dir().display()
        );
        as_postgres(
            &bin("pg_ctl"),
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                self.dir.path().join("log").to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once, as a crash would.
    pub fn pg_stop(&self) {
        as_postgres(
            &bin("pg_ctl"),
            &[
                "-D",
                self.data_dir().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }

    /// The address of database `db` on this server.
    pub fn url(&self, db: &str) -> String {
        let socket = self.socket_dir().display().to_string().replace('/', "%2F");
        format!("postgres://postgres@{socket}/{db}")
    }

    /// Creates a fresh database and returns its address.
    pub fn database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let db = format!("t{n}");
        as_postgres(
            &bin("psql").with_file_name("psql"),
            &[
                "-h",
                self.socket_dir().to_str().unwrap(),
                "-d",
                "postgres",
                "-q",
                "-c",
                &format!("CREATE DATABASE {db}"),
            ],
        );
        self.url(&db)
    }

    /// Runs `sql` as the postgres user on the database at `url` (one of
    /// [`PgServer::database`]'s).
    pub fn psql(&self, url: &str, sql: &str) {
        let db = url.rsplit('/').next().unwrap();
        as_postgres(
            &bin("psql"),
            &[
                "-h",
                self.socket_dir().to_str().unwrap(),
                "-d",
                db,
                "-q",
                "-c",
                sql,
            ],
        );
    }

    /// The server's log so far (`log_statement` set on a database lists its
    /// statements there, one entry per `execute` or simple query).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(Path::new(BIN).join("pg_ctl"))
            .args(["-D", self.data_dir().to_str().unwrap_or_default()])
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// One relay per `options` on one new database of `pg`, each listening for
/// the others before the test begins.
pub async fn cluster_with(
    pg: &PgServer,
    options: Vec<warren::relay::RelayOptions>,
) -> Vec<super::TestRelay> {
    let url = pg.database();
    let mut relays = Vec::new();
    for o in options {
        relays.push(
            super::TestRelay::start_with(warren::relay::RelayOptions {
                database: Some(url.clone()),
                ..o
            })
            .await,
        );
    }
    for r in &relays {
        let pg = r.store().postgres().unwrap();
        tokio::time::timeout(super::WAIT, async {
            while !pg.listening() {
                pg.changed().await;
            }
        })
        .await
        .expect("relay listening to the database");
    }
    relays
}

/// Two relays of one cluster on `url` (`relay-a` and `relay-b`, joined),
/// and a receiver of the devices `relay-a` loses to another relay, taken
/// once its listening connection is up.
pub fn two_relays(
    url: &str,
) -> (
    warren::store::Store,
    warren::store::Store,
    tokio::sync::broadcast::Receiver<(String, String)>,
) {
    use warren::store::Store;
    let a = Store::open_postgres(url).unwrap();
    let b = Store::open_postgres(url).unwrap();
    a.postgres()
        .unwrap()
        .join("relay-a", Some("127.0.0.1:1"), "SHA256:a")
        .unwrap();
    b.postgres()
        .unwrap()
        .join("relay-b", Some("127.0.0.1:2"), "SHA256:b")
        .unwrap();
    let lost = a.postgres().unwrap().lost_devices();
    listening(&a);
    (a, b, lost)
}

/// Waits until `store`'s listening connection is up.
pub fn listening(store: &warren::store::Store) {
    let started = std::time::Instant::now();
    while !store.postgres().unwrap().listening() {
        assert!(started.elapsed() < super::WAIT, "not listening");
        std::thread::yield_now();
    }
}

/// A relay process on `url` and its host key's fingerprint (its cluster id).
pub async fn relay_process(url: &str, dir: &std::path::Path) -> (super::cli::RelayProcess, String) {
    let p = super::cli::RelayProcess::start(&[], 0, &["--database", url], dir).await;
    let key = warren::ssh::keys::read_private(&dir.join("host_key")).unwrap();
    (
        p,
        warren::ssh::keys::fingerprint(key.public_key()).to_string(),
    )
}

/// Waits (on A's database notifications) until A's claims say `relay`
/// holds `tau/dev1`.
pub async fn until_held_by(a: &super::TestRelay, relay: &str) {
    let pg = a.store().postgres().unwrap();
    let notifier = pg.change_notifier();
    tokio::time::timeout(super::WAIT, async {
        loop {
            let changed = notifier.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if let Some(Some(r)) = pg.holder_known("tau", "dev1")
                && r.id == relay
            {
                return;
            }
            changed.await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("A's claims never named {relay} for dev1"));
}

/// A cluster of three relays on one database: A in this process, and two
/// relay processes (the first and the second) whose ids a device `tau/dev1`
/// knows in that order; the device serves an echo server and is online on
/// the first, as A's claims say. A controller key `alice` is in `tau`.
pub struct ThreeRelays {
    pub pg: PgServer,
    pub url: String,
    pub a: super::TestRelay,
    pub first: (super::cli::RelayProcess, String),
    pub second: (super::cli::RelayProcess, String),
    pub alice: std::sync::Arc<super::PrivateKey>,
    pub port: u16,
    pub agent: super::TestAgent,
    /// The relay processes' data directories (kept while they run).
    pub dirs: Vec<tempfile::TempDir>,
}

impl ThreeRelays {
    pub async fn start() -> ThreeRelays {
        let pg = PgServer::start();
        let url = pg.database();
        let a = super::TestRelay::start_with(warren::relay::RelayOptions {
            database: Some(url.clone()),
            ..Default::default()
        })
        .await;
        listening(a.store());
        let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
        let first = relay_process(&url, dirs[0].path()).await;
        let second = relay_process(&url, dirs[1].path()).await;
        let store = a.store();
        store.add_system(&super::name("tau")).unwrap();
        let alice = super::add_key_to(store, "tau", warren::protocol::Role::Controller, "alice");
        let dev = super::add_key_to(store, "tau", warren::protocol::Role::Device, "dev1");
        let port = super::echo_server().await;
        // The agent knows both relay processes and starts on the first.
        let addrs = format!("127.0.0.1:{},127.0.0.1:{}", first.0.port, second.0.port);
        let mut agent = super::TestAgent::start(super::agent_settings(
            &addrs,
            &format!("{},{}", first.1, second.1),
            "tau",
            "dev1",
            dev,
            &[format!("127.0.0.1:{port}")],
        ));
        agent.online().await;
        until_held_by(&a, &first.1).await;
        ThreeRelays {
            pg,
            url,
            a,
            first,
            second,
            alice,
            port,
            agent,
            dirs,
        }
    }
}
