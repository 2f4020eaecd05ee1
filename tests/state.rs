//! The relay's state and logs as an operator expects them: concurrent
//! processes opening a new database, a port that accepts only once the
//! store is ready, no identity made by `admin host-key`, private files,
//! plain logs on a pipe.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use common::cli::{RelayProcess, WARREN, p, warren};
use common::openssh::{spawn, spawn_quiet};
use common::{WAIT, closed_port};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Starts `warren relay` on `listen`; returns it once it logs that it
/// listens, or panics with its stderr if it exits first.
async fn relay_listening(data: &Path, listen: &str) -> Child {
    let mut child = spawn(
        Command::new(WARREN)
            .args(["relay", "--listen", listen, "--data", p(data)])
            .env("WARREN_LOG", "info")
            .env_remove("WARREN_DATA"),
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let listening = tokio::time::timeout(WAIT, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("relay listening") {
                return true;
            }
            seen.push(l);
        }
        false
    })
    .await
    .expect("relay listening in time");
    assert!(listening, "relay exited before listening: {seen:?}");
    // Keep draining its log so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    child
}

/// Eight processes (a relay and seven `warren admin` commands) open the same
/// new database at once, 50 times: each finds the schema made exactly once.
#[tokio::test]
async fn eight_processes_opening_a_new_database_at_once_all_succeed() {
    const ROUNDS: usize = 50;
    let dir = tempfile::tempdir().unwrap();
    for round in 0..ROUNDS {
        let data = dir.path().join(format!("data{round}"));
        std::fs::create_dir(&data).unwrap();
        // A new, empty database, as the relay leaves it the moment it
        // creates the file (admin commands refuse a directory without one).
        std::fs::File::create(data.join("warren.db")).unwrap();
        let d = p(&data);
        let admin = [
            vec!["admin", "--data", d, "system", "add", "tau"],
            vec!["admin", "--data", d, "system", "add", "beta"],
            vec!["admin", "--data", d, "system", "add", "gamma"],
            vec!["admin", "--data", d, "system", "ls"],
            vec!["admin", "--data", d, "key", "ls"],
            vec!["admin", "--data", d, "invite", "ls"],
            vec!["admin", "--data", d, "log"],
        ];
        let runs: Vec<_> = admin
            .iter()
            .map(|a| {
                let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
                tokio::spawn(async move {
                    let args: Vec<&str> = a.iter().map(String::as_str).collect();
                    (a.join(" "), warren(&args).await)
                })
            })
            .collect();
        let mut relay = relay_listening(&data, "127.0.0.1:0").await;
        for run in runs {
            let (a, r) = run.await.unwrap();
            assert!(r.ok, "round {round}: warren {a}: {}", r.stderr);
        }
        relay.start_kill().unwrap();
        relay.wait().await.unwrap();
        let db = rusqlite::Connection::open(data.join("warren.db")).unwrap();
        let version: i64 = db
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, warren::store::schema_version(), "round {round}");
        let systems: i64 = db
            .query_row("SELECT count(*) FROM systems", [], |r| r.get(0))
            .unwrap();
        assert_eq!(systems, 3, "round {round}");
    }
}

/// A script that waits for the relay's port and then runs `warren admin`
/// must find the database migrated: the port accepts only once it is.
#[tokio::test]
async fn the_relay_port_accepts_only_once_the_store_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let db_path = data.join("warren.db");
    // Another process holds the new database while the relay starts (a
    // backup, an admin command): the relay cannot migrate it yet.
    let holder = rusqlite::Connection::open(&db_path).unwrap();
    holder.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let port = closed_port().await;
    let addr = format!("127.0.0.1:{port}");
    let mut relay = spawn_quiet(
        Command::new(WARREN)
            .args(["relay", "--listen", &addr, "--data", p(&data)])
            .env("WARREN_LOG", "error")
            .env_remove("WARREN_DATA"),
    );
    // The relay starts in milliseconds; give it ample time to (wrongly)
    // accept while the store is held.
    let accepted_early = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .is_ok();
    assert!(
        !accepted_early,
        "the relay accepted connections before its store was open and migrated"
    );
    assert!(relay.try_wait().unwrap().is_none(), "the relay exited");
    holder.execute_batch("ROLLBACK").unwrap();
    drop(holder);
    tokio::time::timeout(WAIT, async {
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("relay accepts once the store is free");
    // The moment the port accepts, the schema is complete.
    let db = rusqlite::Connection::open(&db_path).unwrap();
    let version: i64 = db
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, warren::store::schema_version());
    let r = warren(&["admin", "--data", p(&data), "system", "add", "tau"]).await;
    assert!(r.ok, "{}", r.stderr);
    relay.start_kill().unwrap();
    relay.wait().await.unwrap();
}

/// `admin host-key` on a mistyped `--data` makes nothing: no directory, no
/// key, no fingerprint to pin; only the relay makes its identity.
#[tokio::test]
async fn admin_host_key_refuses_a_directory_without_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("dta");
    let r = warren(&["admin", "--data", p(&typo), "host-key"]).await;
    assert!(!r.ok);
    assert!(r.stdout.is_empty(), "{}", r.stdout_str());
    assert!(r.stderr.contains("no Warren database"), "{}", r.stderr);
    assert!(!typo.exists(), "admin host-key created {}", typo.display());

    // An existing directory without a database: the same.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let r = warren(&["admin", "--data", p(&empty), "host-key", "--json"]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("no Warren database"), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);

    // A database but no host key (never started): refused, not made.
    let data = dir.path().join("data");
    warren::store::Store::open(&data).unwrap();
    let r = warren(&["admin", "--data", p(&data), "host-key"]).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("no relay host key"), "{}", r.stderr);
    assert!(!data.join("host_key").exists());

    // Once the relay made it, admin prints the relay's fingerprint.
    let relay = RelayProcess::start(&[], 0, &[], &data).await;
    let r = warren(&["admin", "--data", p(&data), "host-key"]).await;
    assert!(r.ok, "{}", r.stderr);
    let fp = r.stdout_str();
    assert!(fp.trim().starts_with("SHA256:"), "{fp}");
    drop(relay);
}

/// The data directory is 0700 and the database with its `-wal` and `-shm`
/// 0600 when the relay creates them; files an older warren left 0644 are
/// tightened.
#[tokio::test]
async fn the_relay_creates_its_data_directory_and_database_private() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("var").join("warren");
    let mut relay = RelayProcess::start(&[], 0, &[], &data).await;
    let r = warren(&["admin", "--data", p(&data), "system", "add", "tau"]).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&dir.path().join("var")), 0o700);
    for f in ["warren.db", "warren.db-wal", "warren.db-shm", "host_key"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    relay.kill_9().await;

    // An existing database readable by others gets 0600 at the next open.
    for f in ["warren.db", "warren.db-wal", "warren.db-shm"] {
        let path = data.join(f);
        if path.exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let r = warren(&["admin", "--data", p(&data), "system", "ls"]).await;
    assert!(r.ok, "{}", r.stderr);
    for f in ["warren.db", "warren.db-wal", "warren.db-shm"] {
        let path = data.join(f);
        if path.exists() {
            assert_eq!(mode(&path), 0o600, "{f}");
        }
    }
}

/// A host key that others may read is refused at start, with the fix.
#[tokio::test]
async fn the_relay_refuses_a_host_key_others_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut relay = RelayProcess::start(&[], 0, &[], &data).await;
    relay.kill_9().await;
    let key = data.join("host_key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = warren(&["relay", "--listen", "127.0.0.1:0", "--data", p(&data)]).await;
    assert!(!r.ok, "the relay started with a host key mode 0644");
    let fix = format!("chmod 600 {}", key.display());
    assert!(r.stderr.contains(&fix), "{}", r.stderr);
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let relay = RelayProcess::start(&[], 0, &[], &data).await;
    drop(relay);
}

/// Logs to a pipe (or a file) are plain text, without terminal colour codes.
#[tokio::test]
async fn relay_logs_to_a_pipe_have_no_colour_codes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = spawn(
        Command::new(WARREN)
            .args(["relay", "--listen", "127.0.0.1:0", "--data", p(&data)])
            .env("WARREN_LOG", "debug")
            .env_remove("NO_COLOR")
            .env_remove("WARREN_DATA")
            .env_remove("WARREN_LOG_FORMAT"),
    );
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            let done = l.contains("relay listening");
            seen.push(l);
            if done {
                return;
            }
        }
        panic!("relay exited: {seen:?}");
    })
    .await
    .expect("relay listening");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let all = seen.join("\n");
    assert!(all.contains("INFO"), "{all}");
    assert!(!all.contains('\u{1b}'), "colour codes on a pipe: {all:?}");
}

/// Holds `BEGIN EXCLUSIVE` on the database in `data` from a connection of
/// its own (as another process would: a backup, a long `warren admin`)
/// until `release` fires or `limit` passes (below the store's busy
/// timeout, so that the relay's waiting writes succeed afterwards).
fn hold_write_lock(
    data: &Path,
    limit: Duration,
) -> (
    std::sync::mpsc::Sender<()>,
    std::thread::JoinHandle<()>,
    tokio::sync::oneshot::Receiver<()>,
) {
    let db = data.join("warren.db");
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (locked_tx, locked) = tokio::sync::oneshot::channel();
    let thread = std::thread::spawn(move || {
        let conn = rusqlite::Connection::open(db).unwrap();
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        conn.execute_batch("BEGIN EXCLUSIVE").unwrap();
        locked_tx.send(()).unwrap();
        let _ = released.recv_timeout(limit);
        conn.execute_batch("ROLLBACK").unwrap();
    });
    (release, thread, locked)
}

/// A stream through the relay to the echo service on `dev1`.
async fn echo_stream(
    conn: &warren::ssh::client::ClientConnection<warren::ssh::client::NoForwards>,
    port: u16,
) -> tokio::io::DuplexStream {
    let ch = conn.open("dev1", u32::from(port)).await.unwrap();
    let (near, far) = tokio::io::duplex(64 * 1024);
    let (fr, fw) = tokio::io::split(far);
    tokio::spawn(ch.splice_io(fr, fw));
    near
}

async fn round_trip(s: &mut tokio::io::DuplexStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"ping").await.unwrap();
    let mut back = [0u8; 4];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"ping");
}

/// A device that echoes every stream the relay opens to it.
struct Echo;

impl warren::ssh::client::ForwardedHandler for Echo {
    fn forwarded(&mut self, _address: &str, _port: u32, channel: warren::ssh::IncomingChannel) {
        tokio::spawn(async move {
            let ch = channel.accept().await;
            let (near, far) = tokio::io::duplex(64 * 1024);
            let (fr, fw) = tokio::io::split(far);
            tokio::spawn(ch.splice_io(fr, fw));
            let (mut r, mut w) = tokio::io::split(near);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

/// While another process holds the database's write lock, the relay's
/// writes wait (off every connection's task) but nothing else does: a
/// stream keeps flowing, a new stream opens on a connection whose `log`
/// command waits, and new logins succeed. Any of these that waited for the
/// lock would take about 4.5 s of the 5 s it is held.
#[tokio::test]
async fn a_write_lock_held_by_another_process_stalls_no_stream_and_no_login() {
    use common::TestRelay;
    use std::sync::Arc;
    use std::time::Instant;
    use warren::protocol::Role;

    // Bound for what must not wait for the lock; the lock is held 5 s.
    const PROMPT: Duration = Duration::from_secs(1);
    let r = TestRelay::start().await;
    r.add_system("tau");
    let (_dev, port) = r.echo_device("tau", "dev1").await;
    let alice = r.add_key("tau", Role::Controller, "alice");
    let conn = r.controller("tau", alice.clone()).await;
    let mut flowing = echo_stream(&conn, port).await;
    round_trip(&mut flowing).await;
    let bob = r.add_key("tau", Role::Controller, "bob");
    // A device connection that will announce itself as a gateway (a store
    // write) while the lock is held, and serves streams meanwhile.
    let gw_key = r.add_key("tau", Role::Device, "gw1");
    let gw = warren::ssh::client::connect(
        tokio::net::TcpStream::connect(r.addr).await.unwrap(),
        &warren::ssh::client::ConnectOptions {
            user: "tau".into(),
            key: gw_key,
            host_key: r.host_key(),
            dead_after: Duration::from_secs(10),
        },
        Echo,
    )
    .await
    .unwrap();
    gw.register("gw1", 7).await.unwrap();
    r.wait_online("tau", "gw1", true).await;
    let gw = Arc::new(gw);

    let (release, holder, locked) = hold_write_lock(r.dir.path(), Duration::from_secs(5));
    locked.await.unwrap();
    let held = Instant::now();
    // A login while the lock is held: its audit record makes the relay's
    // writer wait for the lock from here on.
    let first = r.controller("tau", bob.clone()).await;
    // `log` on the controller's connection waits for the audit log to be
    // written, so for the lock.
    let log = {
        let conn = Arc::new(conn);
        let c = conn.clone();
        (
            conn,
            tokio::spawn(async move { c.exec("log --json").await }),
        )
    };
    let (conn, log) = log;

    let t = Instant::now();
    round_trip(&mut flowing).await;
    let old_stream = t.elapsed();
    let t = Instant::now();
    let mut new = echo_stream(&conn, port).await;
    round_trip(&mut new).await;
    let new_stream = t.elapsed();
    let announce = {
        let gw = gw.clone();
        tokio::spawn(async move {
            gw.exec(r#"gateway-announce {"scope":["10.9.0.0/24"],"ports":[22],"permit":null,"listens":[]}"#)
                .await
        })
    };
    let t = Instant::now();
    let ch = conn.open("gw1", 7).await.unwrap();
    let (mut to_gw, far) = tokio::io::duplex(64 * 1024);
    let (fr, fw) = tokio::io::split(far);
    tokio::spawn(ch.splice_io(fr, fw));
    round_trip(&mut to_gw).await;
    let device_stream = t.elapsed();
    let t = Instant::now();
    let second = r.controller("tau", bob.clone()).await;
    let login = t.elapsed();
    let still_held = held.elapsed() < Duration::from_secs(5);
    // The lock did hold the relay's writes back: what writes still waits.
    let writes_waited = !log.is_finished() && !announce.is_finished();
    // Err: the holder already let go (the time limit passed).
    let _ = release.send(());
    holder.join().unwrap();

    eprintln!(
        "under a foreign write lock: open stream {old_stream:?}, new stream beside `log` {new_stream:?}, \
         stream to a device announcing a gateway {device_stream:?}, login {login:?}"
    );
    assert!(old_stream < PROMPT, "open stream stalled {old_stream:?}");
    assert!(
        new_stream < PROMPT,
        "a new stream beside a waiting `log` took {new_stream:?}"
    );
    assert!(
        device_stream < PROMPT,
        "a stream to a device whose gateway announcement waits took {device_stream:?}"
    );
    assert!(login < PROMPT, "a login took {login:?}");
    assert!(still_held, "measured after the lock was released");
    assert!(writes_waited, "the lock held no write back");
    let out = tokio::time::timeout(WAIT, announce)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
    // What waited for the lock completes once it is free.
    let out = tokio::time::timeout(WAIT, log)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
    let events = String::from_utf8(out.stdout).unwrap();
    assert!(events.contains("\"bob\""), "{events}");
    drop((first, second));
}

/// Commands run off the connection's task, but a connection may have only
/// a few running or waiting: with the store locked by another process,
/// `log` commands past the limit are refused at once instead of queueing
/// store work without bound, and those admitted finish once it is free.
#[tokio::test]
async fn commands_waiting_on_one_connection_are_capped() {
    use common::TestRelay;
    use std::sync::Arc;
    use warren::protocol::Role;
    use warren::protocol::limits::MAX_COMMANDS_IN_FLIGHT;

    const SENT: usize = 10;
    let r = TestRelay::start().await;
    r.add_system("tau");
    let alice = r.add_key("tau", Role::Controller, "alice");
    let bob = r.add_key("tau", Role::Controller, "bob");
    let conn = Arc::new(r.controller("tau", alice).await);
    let (release, holder, locked) = hold_write_lock(r.dir.path(), Duration::from_secs(10));
    locked.await.unwrap();
    // A login under the lock: its audit record keeps every `log` (which
    // flushes the audit log before it reads) waiting for the lock.
    let _bob = r.controller("tau", bob).await;
    let logs: Vec<_> = (0..SENT)
        .map(|_| {
            let c = conn.clone();
            tokio::spawn(async move { c.exec("log --json").await })
        })
        .collect();
    // Those past the limit answer while the lock is still held.
    let mut refused = 0;
    let mut waiting = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    for mut log in logs {
        match tokio::time::timeout_at(deadline, &mut log).await {
            Ok(out) => {
                let out = out.unwrap().unwrap();
                let err = String::from_utf8_lossy(&out.stderr).into_owned();
                assert_eq!(out.status, 1, "{err}");
                assert!(err.contains("commands waiting on this connection"), "{err}");
                refused += 1;
            }
            Err(_) => waiting.push(log),
        }
    }
    assert_eq!(refused, SENT - MAX_COMMANDS_IN_FLIGHT);
    assert_eq!(waiting.len(), MAX_COMMANDS_IN_FLIGHT);
    let _ = release.send(());
    holder.join().unwrap();
    for log in waiting {
        let out = tokio::time::timeout(WAIT, log)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
    }
    // The places are given back: the next command runs.
    let out = tokio::time::timeout(WAIT, conn.exec("log --json"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
}
