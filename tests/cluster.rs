//! Relays in a cluster on one real PostgreSQL database
//! (tests/common/postgres.rs): three relays with a device each, and stock
//! `ssh -J` through every relay reaches every device (one hop between
//! relays), byte-exact; a revocation through one relay closes the
//! key's connections on another within a second; two relays claiming one
//! device leave exactly one holding it; the database stopped and started
//! again: streams keep flowing, logins are refused with a reason and then
//! accepted, the outage's audit events are written afterwards; `admin
//! migrate` copies a relay's SQLite state, checked and idempotent.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::openssh::{Sshd, login_user, run};
use common::postgres::{PgServer, cluster_with};
use common::{
    TestAgent, TestRelay, WAIT, closed_port, connect_to, echo_server, echo_through, name,
    pseudo_random, write_file,
};
use warren::audit::kind;
use warren::protocol::Role;
use warren::relay::RelayOptions;
use warren::ssh::keys::fingerprint;
use warren::store::AuditQuery;

/// `n` relays on one new database of `pg`, with production timings.
async fn cluster(pg: &PgServer, n: usize) -> Vec<TestRelay> {
    cluster_with(pg, vec![RelayOptions::default(); n]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_ssh_jump_through_each_of_three_relays_reaches_every_device_byte_exact() {
    let pg = PgServer::start();
    let relays = cluster(&pg, 3).await;
    relays[0].add_system("tau");
    let sshd = Sshd::start().await;
    let echo = echo_server().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = relays[0].add_key_file(dir.path(), "tau", Role::Controller, "alice");
    // dev1 on the first relay, dev2 on the second, dev3 on the third.
    let mut agents = Vec::new();
    for (i, r) in relays.iter().enumerate() {
        let dev = format!("dev{}", i + 1);
        let key = r.add_key("tau", Role::Device, &dev);
        let allow = [
            format!("22=127.0.0.1:{}", sshd.port),
            format!("7=127.0.0.1:{echo}"),
        ];
        let mut agent = TestAgent::start(r.agent_settings("tau", &dev, key, &allow));
        agent.online().await;
        agents.push(agent);
    }
    let config = ssh_config(dir.path(), &relays, &alice, &sshd);
    let payload = pseudo_random(256 * 1024);
    let file = dir.path().join("payload");
    std::fs::write(&file, &payload).unwrap();
    for r in &relays {
        let jump = format!("tau@127.0.0.1:{}", r.addr.port());
        for dev in ["dev1", "dev2", "dev3"] {
            let ran = run(
                tokio::process::Command::new("ssh")
                    .arg("-F")
                    .arg(&config)
                    .arg("-J")
                    .arg(&jump)
                    .arg(dev)
                    .arg(format!("cat {}", file.display())),
                Duration::from_secs(60),
            )
            .await;
            assert!(ran.ok, "ssh -J {jump} {dev}: {}", ran.stderr);
            assert!(ran.stdout == payload, "{dev} through {jump}: bytes differ");
        }
        // And Warren's own client, each way.
        let conn = r.controller("tau", alice_key(&alice)).await;
        for dev in ["dev1", "dev2", "dev3"] {
            let back = echo_through(&conn, dev, 7, &payload).await.unwrap();
            assert!(back == payload, "{dev}: echo differs");
        }
    }
    // The relay where alice asked audits the stream, naming the hop.
    let q = AuditQuery {
        kind: Some(kind::STREAM_OPEN.into()),
        device: Some("dev2".into()),
        limit: 50,
        ..Default::default()
    };
    relays[0]
        .wait_audit(&q, |e| {
            e.result == "ok"
                && e.detail
                    .as_deref()
                    .is_some_and(|d| d.contains(&relays[1].host_key()))
        })
        .await;
}

/// An ssh config for stock `ssh -J` through any of `relays` (alice's key
/// for the relays, the sshd's user key for the devices).
fn ssh_config(
    dir: &std::path::Path,
    relays: &[TestRelay],
    alice: &std::path::Path,
    sshd: &Sshd,
) -> std::path::PathBuf {
    let user = login_user();
    let mut known = String::new();
    for r in relays {
        known.push_str(&r.known_hosts_line());
        known.push('\n');
    }
    known.push_str(&format!("dev1,dev2,dev3 {}\n", sshd.host_pub));
    let known = write_file(dir, "known_hosts", &known);
    write_file(
        dir,
        "ssh_config",
        &format!(
            "Host 127.0.0.1\n  IdentityFile {alice}\n\
             Host dev1 dev2 dev3\n  User {user}\n  IdentityFile {userkey}\n\
             Host *\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  \
             UserKnownHostsFile {known}\n  ConnectTimeout 20\n",
            alice = alice.display(),
            userkey = sshd.user_key.display(),
            known = known.display(),
        ),
    )
}

/// Alice's key as written by `add_key_file`, for Warren's own client.
fn alice_key(path: &std::path::Path) -> std::sync::Arc<warren::ssh::keys::PrivateKey> {
    std::sync::Arc::new(warren::ssh::keys::read_private(path).unwrap())
}

/// An invite token made in a cluster names every relay (`addrs`, the one
/// asked first) and pins every key (`pins`).
async fn token_names_every_relay(
    ops: &warren::ssh::client::ClientConnection<warren::ssh::client::NoForwards>,
    addrs: &[String],
    pins: &[String],
) {
    let out = ops
        .exec(&format!(
            "invite --system tau --role device --name dev9 --relay {} --json",
            addrs[0]
        ))
        .await
        .unwrap();
    assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
    let made: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = warren::protocol::token::Invite::decode(made["token"].as_str().unwrap()).unwrap();
    let mut in_token: Vec<&str> = token.relay.split(',').collect();
    let mut pinned: Vec<&str> = token.host_key.split(',').collect();
    assert_eq!(in_token[0], addrs[0]);
    in_token.sort();
    pinned.sort();
    let (mut want_addrs, mut want_pins) = (addrs.to_vec(), pins.to_vec());
    want_addrs.sort();
    want_pins.sort();
    assert_eq!(in_token, want_addrs);
    assert_eq!(pinned, want_pins);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_of_a_relay_brings_its_devices_back_through_another_within_60_s_losing_no_acknowledged_audit()
 {
    use common::cli::RelayProcess;
    let pg = PgServer::start();
    let url = pg.database();
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut procs = Vec::new();
    for d in &dirs {
        procs.push(RelayProcess::start(&[], 0, &["--database", &url], d.path()).await);
    }
    let pins: Vec<String> = dirs
        .iter()
        .map(|d| {
            let key = warren::ssh::keys::read_private(&d.path().join("host_key")).unwrap();
            fingerprint(key.public_key()).to_string()
        })
        .collect();
    let addrs: Vec<String> = procs
        .iter()
        .map(|p| format!("127.0.0.1:{}", p.port))
        .collect();
    let store = warren::store::Store::open_postgres(&url).unwrap();
    store.add_system(&name("tau")).unwrap();
    store.add_system(&name("ops")).unwrap();
    let admin = common::add_key_to(&store, "ops", Role::Admin, "root");
    let alice = common::add_key_to(&store, "tau", Role::Controller, "alice");
    let dev = common::add_key_to(&store, "tau", Role::Device, "dev1");
    let port = echo_server().await;
    // The agent knows every relay and pins every key; it starts on the first.
    let mut agent = TestAgent::start(common::agent_settings(
        &addrs.join(","),
        &pins.join(","),
        "tau",
        "dev1",
        dev,
        &[format!("127.0.0.1:{port}")],
    ));
    agent.online().await;
    // Acknowledged admin work through the relay about to die.
    let ops = connect_to(&addrs[0], &pins[0], "ops", admin).await.unwrap();
    let ids = common::acknowledged_invites(&ops, &addrs[0], 5).await;
    token_names_every_relay(&ops, &addrs, &pins).await;

    procs[0].kill_9().await;
    let killed = Instant::now();
    agent.offline().await;
    agent.online().await;
    // Reachable through the third relay (the agent is on the second now).
    let conn = connect_to(&addrs[2], &pins[2], "tau", alice).await.unwrap();
    let reached = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(back) = echo_through(&conn, "dev1", port, b"still here").await
                && back == b"still here"
            {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(reached.is_ok(), "dev1 not reachable within 60 s of kill -9");
    assert!(killed.elapsed() < Duration::from_secs(60));
    common::assert_invites_on_record(&store, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_revoked_through_relay_a_closes_its_connections_on_relay_c_within_a_second() {
    let pg = PgServer::start();
    let relays = cluster(&pg, 3).await;
    let (a, c) = (&relays[0], &relays[2]);
    a.add_system("tau");
    a.add_system("ops");
    let alice = a.add_key("tau", Role::Controller, "alice");
    let admin = a.add_key("ops", Role::Admin, "root");
    // Alice is logged in on C (the key was added through A).
    let mut on_c = c.controller("tau", alice.clone()).await;
    let ops = a.controller("ops", admin).await;
    let fp = fingerprint(alice.public_key());
    let revoked = Instant::now();
    let out = ops.exec(&format!("key revoke {fp}")).await.unwrap();
    assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
    let reason = tokio::time::timeout(WAIT, on_c.is_gone()).await.unwrap();
    let took = revoked.elapsed();
    assert!(reason.contains("revoked"), "{reason}");
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    // And the key logs in nowhere.
    for r in &relays {
        assert!(r.try_connect("tau", alice.clone()).await.is_err());
    }
    c.wait_audit(&common::audit_of(kind::KEY_REVOKED_DISCONNECT, 10), |e| {
        e.fingerprint.as_deref() == Some(fp.as_str())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_relays_claiming_one_device_at_once_leave_exactly_one_holding_it() {
    let pg = PgServer::start();
    let relays = cluster(&pg, 2).await;
    let (a, b) = (&relays[0], &relays[1]);
    a.add_system("tau");
    let dev = a.add_key("tau", Role::Device, "dev1");
    let (addr_a, key_a, addr_b, key_b) = (
        a.addr.to_string(),
        a.host_key(),
        b.addr.to_string(),
        b.host_key(),
    );
    let (mut on_a, mut on_b) = tokio::join!(
        connect_to(&addr_a, &key_a, "tau", dev.clone()),
        connect_to(&addr_b, &key_b, "tau", dev.clone()),
    );
    let (on_a, on_b) = (on_a.as_mut().unwrap(), on_b.as_mut().unwrap());
    let (ra, rb) = tokio::join!(on_a.register("dev1", 22), on_b.register("dev1", 22));
    ra.unwrap();
    rb.unwrap();
    // One of them is closed: the one whose claim came first.
    let (reason, winner, loser) = tokio::time::timeout(WAIT, async {
        tokio::select! {
            r = on_a.is_gone() => (r, b, a),
            r = on_b.is_gone() => (r, a, b),
        }
    })
    .await
    .expect("one connection closed");
    assert!(reason.contains("another relay"), "{reason}");
    loser.wait_online("tau", "dev1", false).await;
    let holder = winner
        .store()
        .postgres()
        .unwrap()
        .device_holder("tau", "dev1")
        .unwrap()
        .unwrap();
    assert_eq!(holder.0, winner.host_key());
    assert!(
        winner
            .relay
            .registry()
            .lookup(&name("tau"), &name("dev1"))
            .is_some()
    );
    assert!(!(on_a.is_closed() && on_b.is_closed()), "both closed");
    let d = &winner.store().devices(Some("tau")).unwrap()[0];
    assert!(d.online);
}

/// Sends `chunk` through `s` and reads it back (an echo service).
async fn echo(s: &mut (impl AsyncReadExt + AsyncWriteExt + Unpin), chunk: &[u8]) {
    s.write_all(chunk).await.unwrap();
    let mut back = vec![0; chunk.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .expect("echo within WAIT")
        .unwrap();
    assert_eq!(back, chunk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_database_away_for_twenty_seconds_keeps_streams_and_refuses_logins_with_a_reason() {
    let pg = PgServer::start();
    let relays = cluster(&pg, 1).await;
    let r = &relays[0];
    r.add_system("tau");
    let port = echo_server().await;
    let _dev = r
        .device("tau", "dev1", &[format!("127.0.0.1:{port}")])
        .await;
    let alice = r.add_key("tau", Role::Controller, "alice");
    let conn = r.controller("tau", alice.clone()).await;
    let ch = conn.open("dev1", u32::from(port)).await.unwrap();
    let (mut stream, far) = tokio::io::duplex(64 * 1024);
    let (fr, fw) = tokio::io::split(far);
    let _splice = tokio::spawn(ch.splice_io(fr, fw));
    echo(&mut stream, b"before").await;

    pg.pg_stop();
    let stopped = Instant::now();
    // A new login is refused, saying why.
    let err = match r.try_connect("tau", alice.clone()).await {
        Ok(_) => panic!("logged in without the database"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("database is unreachable"), "{err}");
    // The open stream keeps flowing for the whole outage.
    let mut n = 0u64;
    while stopped.elapsed() < Duration::from_secs(20) {
        echo(&mut stream, format!("during {n}").as_bytes()).await;
        n += 1;
    }
    pg.pg_start();

    // Logins are accepted again once the relay reaches the database.
    let back = tokio::time::timeout(WAIT, async {
        loop {
            if let Ok(c) = r.try_connect("tau", alice.clone()).await {
                return c;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("login accepted after the outage");
    drop(back);
    echo(&mut stream, b"after").await;
    // The refusal during the outage is in the audit log, in order before
    // the login after it.
    let q = AuditQuery {
        kind: Some(kind::LOGIN.into()),
        limit: 50,
        ..Default::default()
    };
    let events = r
        .wait_audit_for(&q, |events| {
            let refused = events
                .iter()
                .position(|e| e.reason.as_deref() == Some("store_unavailable"))?;
            let ok_after = events[..refused].iter().any(|e| e.result == "ok");
            ok_after.then_some(events)
        })
        .await;
    assert!(events.iter().any(|e| {
        e.detail
            .as_deref()
            .unwrap_or("")
            .contains("database is unreachable")
    }));
}

/// dev1 online with labels, one overridden by an admin and one hidden.
fn admin_labels_on_dev1(store: &warren::store::Store) {
    let mut info = warren::protocol::device_info::DeviceInfo::default();
    info.labels.insert("site".into(), "lab3".into());
    info.labels.insert("gpu".into(), "a100".into());
    let peer = "192.0.2.1:1".parse().unwrap();
    store.device_up("tau", "dev1", peer, &[22], &info).unwrap();
    let edit = warren::store::labels::LabelEdit::new(
        [("site".to_string(), "lab9".to_string())].into(),
        vec!["gpu".into()],
        Vec::new(),
    )
    .unwrap();
    let tau = warren::protocol::Name::parse("tau").unwrap();
    let dev1 = warren::protocol::Name::parse("dev1").unwrap();
    store.set_labels(&tau, &dev1, &edit).unwrap();
}

/// The admin labels of [`admin_labels_on_dev1`] are in `dst` as in `src`.
fn admin_labels_copied(src: &warren::store::Store, dst: &warren::store::Store) {
    assert_eq!(
        dst.admin_labels(None).unwrap(),
        src.admin_labels(None).unwrap()
    );
    let d = &dst.devices(Some("tau")).unwrap()[0];
    assert_eq!(d.labels, [("site".to_string(), "lab9".to_string())].into());
    assert_eq!(d.hidden_labels, ["gpu"]);
}

#[tokio::test]
async fn admin_migrate_copies_a_relay_into_postgres_checked_and_idempotent() {
    let pg = PgServer::start();
    let url = pg.database();
    // A single relay's state, as `warren admin` leaves it.
    let relay = TestRelay::start().await;
    relay.add_system("tau");
    let dev = relay.add_key("tau", Role::Device, "dev1");
    admin_labels_on_dev1(relay.store());
    relay
        .store()
        .append_audit(&[warren::audit::Event::new(kind::SYSTEM_ADD, "ok").system("tau")])
        .unwrap();
    let data = relay.dir.path().to_str().unwrap().to_string();
    let first =
        common::cli::warren_ok(&["admin", "--data", &data, "migrate", "--to", &url, "--json"])
            .await;
    let first: serde_json::Value = serde_json::from_str(&first).unwrap();
    let keys = first
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "keys")
        .unwrap();
    assert_eq!(
        (keys["rows"].as_u64(), keys["inserted"].as_u64()),
        (Some(1), Some(1))
    );
    // Again: nothing new, still checked.
    let again =
        common::cli::warren_ok(&["admin", "--data", &data, "migrate", "--to", &url, "--json"])
            .await;
    let again: serde_json::Value = serde_json::from_str(&again).unwrap();
    assert!(
        again.as_array().unwrap().iter().all(|t| t["inserted"] == 0),
        "{again}"
    );
    // The cluster's store has the key, and `admin --database` reads it.
    let store = warren::store::Store::open_postgres(&url).unwrap();
    assert!(store.identity("tau", dev.public_key()).unwrap().is_some());
    admin_labels_copied(relay.store(), &store);
    let out = common::cli::warren_ok(&["admin", "--database", &url, "key", "ls", "--json"]).await;
    assert!(
        out.contains(fingerprint(dev.public_key()).as_str()),
        "{out}"
    );
    // Bad addresses are refused clearly.
    let dir = tempfile::tempdir().unwrap();
    let relay_bad = common::cli::warren(&[
        "relay",
        "--listen",
        "127.0.0.1:0",
        "--data",
        dir.path().to_str().unwrap(),
        "--database",
        "mysql://db/warren",
    ])
    .await;
    assert!(!relay_bad.ok);
    assert!(
        relay_bad.stderr.contains("not a PostgreSQL address"),
        "{}",
        relay_bad.stderr
    );
    let away = common::cli::warren(&[
        "admin",
        "--database",
        &pg.url("no_such_database"),
        "key",
        "ls",
    ])
    .await;
    assert!(!away.ok);
    assert!(away.stderr.contains("no_such_database"), "{}", away.stderr);
    let bad = common::cli::warren(&["admin", "--data", &data, "migrate", "--to", "/tmp/x"]).await;
    assert!(!bad.ok);
    assert!(
        bad.stderr.contains("not a PostgreSQL address"),
        "{}",
        bad.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_relays_of_the_registry_may_open_hops_and_only_to_their_own_devices() {
    let pg = PgServer::start();
    let relays = cluster(&pg, 2).await;
    let (a, b) = (&relays[0], &relays[1]);
    a.add_system("tau");
    let (_dev1, port) = a.echo_device("tau", "dev1").await;
    let (_dev2, _) = b.echo_device("tau", "dev2").await;
    let hop_user = warren::relay::hop::HOP_USER;
    // A key outside the registry, even a registered controller key, is refused.
    let stranger = std::sync::Arc::new(warren::ssh::keys::generate_ed25519().unwrap());
    assert!(a.try_connect(hop_user, stranger).await.is_err());
    let alice = a.add_key("tau", Role::Controller, "alice");
    assert!(a.try_connect(hop_user, alice).await.is_err());
    // Relay B's host key is in the registry: A serves it its own device…
    let b_key = warren::ssh::keys::read_private(&b.dir.path().join("host_key")).unwrap();
    let from_b = a
        .try_connect(hop_user, std::sync::Arc::new(b_key))
        .await
        .unwrap();
    let back = echo_through(&from_b, "tau/dev1", port, b"one hop")
        .await
        .unwrap();
    assert_eq!(back, b"one hop");
    // …and never a second hop: dev2 is on B, not on A.
    let err = echo_through(&from_b, "tau/dev2", port, b"two hops")
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("not connected to this relay"),
        "{err:#}"
    );
    // Nor a plain name: a hop names SYSTEM/DEVICE.
    assert!(echo_through(&from_b, "dev1", port, b"x").await.is_err());
}

/// Starts gateway `gw` of system tau on `relay`, serving `scope` on `ports`,
/// and waits until `other` relay's store sees `relay` holding it.
async fn gateway_on(
    relay: &TestRelay,
    other: &TestRelay,
    gw: &str,
    scope: &str,
    ports: &[u16],
) -> (TestAgent, std::sync::Arc<warren::ssh::keys::PrivateKey>) {
    use warren::agent::gateway::GatewayConfig;
    let mut written = relay.relay.status_written();
    let key = relay.add_key("tau", Role::Device, gw);
    let mut s = relay.agent_settings("tau", gw, key.clone(), &["127.0.0.1:1".to_string()]);
    s.gateway =
        GatewayConfig::from_file(Some(&[scope.to_string()]), Some(ports), None, &[]).unwrap();
    let mut agent = TestAgent::start(s);
    agent.online().await;
    let pg = other.store().postgres().unwrap();
    tokio::time::timeout(WAIT, async {
        while pg.held_by_other("tau", gw).unwrap().is_none() {
            written.changed().await.unwrap();
        }
    })
    .await
    .expect("the other relay sees the gateway's claim");
    (agent, key)
}

/// An ssh config for stock `ssh -J` through relay `a` to the sshd as the
/// host `127.0.0.1.via.gw1` (its host key under the alias `behind-gw1`).
fn gateway_ssh_config(
    dir: &std::path::Path,
    a: &TestRelay,
    alice: &std::path::Path,
    sshd: &Sshd,
) -> std::path::PathBuf {
    let user = login_user();
    let known = write_file(
        dir,
        "known_hosts",
        &format!("{}\nbehind-gw1 {}\n", a.known_hosts_line(), sshd.host_pub),
    );
    write_file(
        dir,
        "ssh_config",
        &format!(
            "Host 127.0.0.1\n  IdentityFile {alice}\n\
             Host 127.0.0.1.via.gw1\n  User {user}\n  Port {port}\n  IdentityFile {userkey}\n  HostKeyAlias behind-gw1\n\
             Host *\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  \
             UserKnownHostsFile {known}\n  ConnectTimeout 20\n",
            alice = alice.display(),
            port = sshd.port,
            userkey = sshd.user_key.display(),
            known = known.display(),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_controller_on_relay_a_reaches_hosts_behind_a_gateway_on_relay_b_byte_exact() {
    let pg = PgServer::start();
    let relays = cluster(&pg, 2).await;
    let (a, b) = (&relays[0], &relays[1]);
    a.add_system("tau");
    let sshd = Sshd::start().await;
    let echo = echo_server().await;
    // gw1 on B serves loopback ("its network"): the sshd and the echo port.
    let _gw1 = gateway_on(b, a, "gw1", "127.0.0.0/8", &[sshd.port, echo]).await;
    let dir = tempfile::tempdir().unwrap();
    let alice = a.add_key_file(dir.path(), "tau", Role::Controller, "alice");
    // Stock `ssh -J` through A to a host named through gw1, byte-exact.
    let config = gateway_ssh_config(dir.path(), a, &alice, &sshd);
    let payload = pseudo_random(256 * 1024);
    let file = dir.path().join("payload");
    std::fs::write(&file, &payload).unwrap();
    let ran = run(
        tokio::process::Command::new("ssh")
            .arg("-F")
            .arg(&config)
            .arg("-J")
            .arg(format!("tau@127.0.0.1:{}", a.addr.port()))
            .arg("127.0.0.1.via.gw1")
            .arg(format!("cat {}", file.display())),
        Duration::from_secs(60),
    )
    .await;
    assert!(ran.ok, "ssh -J through A via gw1 on B: {}", ran.stderr);
    assert!(
        ran.stdout == payload,
        "bytes differ through the gateway hop"
    );
    // Warren's own client: routed by IP to the gateway that holds it, on B.
    let conn = a.controller("tau", alice_key(&alice)).await;
    let back = echo_through(&conn, "127.0.0.1", echo, &payload)
        .await
        .unwrap();
    assert!(back == payload, "echo by IP through gw1 on B differs");
    // A audited the stream, naming the gateway and the relay that carried it.
    let q = AuditQuery {
        kind: Some(kind::STREAM_OPEN.into()),
        device: Some("gw1".into()),
        limit: 50,
        ..Default::default()
    };
    a.wait_audit(&q, |e| {
        e.result == "ok"
            && e.detail
                .as_deref()
                .is_some_and(|d| d.contains(&b.host_key()))
    })
    .await;
    // B's own scope check still holds: a port gw1 does not serve is refused
    // on A with the typed text, before any hop.
    let err = echo_through(&conn, "127.0.0.1.via.gw1", 1, b"x")
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("gateway gw1 serves ports"),
        "{err:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_rules_are_applied_on_the_relay_asked_and_again_on_the_relay_holding_the_gateway() {
    use warren::policy::Refusal;
    use warren::protocol::Target;
    use warren::relay::hop::{HOP_USER, HopTarget};
    let pg = PgServer::start();
    let relays = cluster(&pg, 2).await;
    let (a, b) = (&relays[0], &relays[1]);
    a.add_system("tau");
    let echo = echo_server().await;
    let _gw1 = gateway_on(b, a, "gw1", "127.0.0.0/8", &[echo]).await;
    // robot: a gateway on A whose listen forwards may reach only what a rule allows.
    let (_robot_agent, robot_key) = gateway_on(a, b, "robot", "10.99.0.0/16", &[1]).await;
    let robot_fp = fingerprint(robot_key.public_key());
    let target = Target {
        host: "127.0.0.1.via.gw1".into(),
        port: echo,
    };
    a.store()
        .gateway_allow(&name("tau"), &name("robot"), &target)
        .unwrap();
    let robot_conn = a.controller("tau", robot_key).await;
    let back = echo_through(&robot_conn, &target.host, echo, b"allowed")
        .await
        .unwrap();
    assert_eq!(back, b"allowed");
    // B checks the rule again itself: a hop from A naming robot's key is
    // carried while the rule stands, refused with B's typed text once not.
    let a_key = warren::ssh::keys::read_private(&a.dir.path().join("host_key")).unwrap();
    let from_a = b
        .try_connect(HOP_USER, std::sync::Arc::new(a_key))
        .await
        .unwrap();
    let hop = HopTarget::Gateway {
        gateway: warren::protocol::DeviceId::new(name("tau"), name("gw1")),
        host: target.host.clone(),
        key: robot_fp.clone(),
    }
    .encode();
    assert_eq!(
        echo_through(&from_a, &hop, echo, b"hop").await.unwrap(),
        b"hop"
    );
    a.store()
        .gateway_deny(&name("tau"), &name("robot"), &target)
        .unwrap();
    let typed = Refusal::NoGatewayRule {
        device: name("robot"),
        target: target.to_string(),
    }
    .to_string();
    let err = echo_through(&from_a, &hop, echo, b"x").await.unwrap_err();
    assert!(format!("{err:#}").contains(&typed), "B: {err:#}");
    // On A the controller-side refusal is A's own, typed and audited.
    let err = echo_through(&robot_conn, &target.host, echo, b"x")
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains(&typed), "A: {err:#}");
    let q = AuditQuery {
        kind: Some(kind::STREAM_OPEN.into()),
        limit: 50,
        ..Default::default()
    };
    a.wait_audit(&q, |e| e.reason.as_deref() == Some("no_gateway_rule"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_public_port_bound_on_relay_a_carries_connections_to_a_device_on_relay_b() {
    let pg = PgServer::start();
    let url = pg.database();
    // Only A has public ports: the exposure is bound there.
    let a = TestRelay::start_with(RelayOptions {
        database: Some(url.clone()),
        public_ports: warren::relay::config::PortRanges::parse(&["1-65535"]).unwrap(),
        public_bind: Some("127.0.0.1".parse().unwrap()),
        ..Default::default()
    })
    .await;
    let b = TestRelay::start_with(RelayOptions {
        database: Some(url),
        ..Default::default()
    })
    .await;
    a.add_system("tau");
    let (_dev1, dev_port) = b.echo_device("tau", "dev1").await;
    let pg_a = a.store().postgres().unwrap();
    let mut written = b.relay.status_written();
    tokio::time::timeout(WAIT, async {
        while pg_a.held_by_other("tau", "dev1").unwrap().is_none() {
            written.changed().await.unwrap();
        }
    })
    .await
    .expect("A sees dev1 on B");
    let public = closed_port().await;
    a.store()
        .add_exposure(public, &name("tau"), &name("dev1"), dev_port, &[])
        .unwrap();
    let mut exposed = a.relay.exposed();
    tokio::time::timeout(WAIT, async {
        while !exposed.borrow_and_update().open.contains(&public) {
            exposed.changed().await.unwrap();
        }
    })
    .await
    .expect("A opens the public port");
    let payload = pseudo_random(64 * 1024);
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", public))
        .await
        .unwrap();
    tcp.write_all(&payload).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, tcp.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert!(
        back == payload,
        "public port on A to dev1 on B: bytes differ"
    );
}
