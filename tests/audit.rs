//! The audit log and device status: stream records with exact byte counts,
//! `log` pages and filters (a controller sees only its system), remote admin
//! with stock ssh (refused for controller keys), labels, disable/enable,
//! retention, and a relay `kill -9` during a burst of streams.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::cli::{RelayProcess, warren, warren_ok};
use common::openssh::{run, stock_ssh};
use common::*;
use warren::audit::{Event, kind};
use warren::protocol::Role;
use warren::relay::{Relay, RelayOptions};
use warren::store::{AuditQuery, Store};

/// A service that reads everything, then answers three times as many bytes.
async fn triple_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut got = Vec::new();
                if s.read_to_end(&mut got).await.is_err() {
                    return;
                }
                let _ = s.write_all(&vec![b'x'; got.len() * 3]).await;
            });
        }
    });
    port
}

fn q(kind: &str) -> AuditQuery {
    audit_of(kind, 100)
}

/// Runs a command at the relay over an open connection.
async fn exec(
    conn: &warren::ssh::client::ClientConnection<warren::ssh::client::NoForwards>,
    cmd: &str,
) -> (u32, String, String) {
    let out = conn.exec(cmd).await.unwrap();
    (
        out.status,
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[tokio::test]
async fn a_stream_record_has_exact_bytes_each_way() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let port = triple_server().await;
    let _dev = r
        .device("tau", "dev1", &[format!("127.0.0.1:{port}")])
        .await;
    let ctl = r.add_key("tau", Role::Controller, "alice");
    let conn = r.controller("tau", ctl).await;
    let sent = vec![7u8; 100_000];
    let back = echo_through(&conn, "dev1", port, &sent).await.unwrap();
    assert_eq!(back.len(), 300_000);

    let closed = r.wait_audit(&q(kind::STREAM_CLOSE), |_| true).await;
    assert_eq!(closed.bytes_up, Some(100_000), "{closed:?}");
    assert_eq!(closed.bytes_down, Some(300_000), "{closed:?}");
    assert_eq!(closed.system.as_deref(), Some("tau"));
    assert_eq!(closed.key.as_deref(), Some("alice"));
    assert_eq!(closed.device.as_deref(), Some("dev1"));
    assert_eq!(closed.target, Some(format!("dev1:{port}")));
    assert!(closed.duration_ms.is_some());
    assert!(closed.peer.as_deref().unwrap().starts_with("127.0.0.1:"));
    let opened = r.wait_audit(&q(kind::STREAM_OPEN), |_| true).await;
    assert_eq!(opened.result, "ok");
    assert!(opened.id < closed.id);
    // Logins and the device coming up are on record too.
    r.wait_audit(&q(kind::LOGIN), |e| e.key.as_deref() == Some("alice"))
        .await;
    r.wait_audit(&q(kind::DEVICE_UP), |e| e.device.as_deref() == Some("dev1"))
        .await;

    // A refused stream and a refused login say why, and from where.
    assert!(conn.open("nosuch", 22).await.is_err());
    let refused = r
        .wait_audit(&q(kind::STREAM_OPEN), |e| e.result == "refused")
        .await;
    assert_eq!(refused.reason.as_deref(), Some("no_device"), "{refused:?}");
    assert!(refused.detail.unwrap().contains("no device named nosuch"));
    // `log --json` shows the code of a refusal, and no `reason` otherwise.
    let data = r.dir.path().to_str().unwrap();
    let json = warren_ok(&[
        "admin",
        "--data",
        data,
        "log",
        "--json",
        "--kind",
        "stream_open",
    ])
    .await;
    let rows: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        rows.iter()
            .any(|e| e["result"] == "refused" && e["reason"] == "no_device"),
        "{json}"
    );
    assert!(
        rows.iter()
            .all(|e| e["result"] != "ok" || e.get("reason").is_none()),
        "{json}"
    );
    let stranger = Arc::new(warren::ssh::keys::generate_ed25519().unwrap());
    assert!(r.try_connect("tau", stranger).await.is_err());
    let login = r
        .wait_audit(&q(kind::LOGIN), |e| e.result == "refused")
        .await;
    assert!(login.detail.unwrap().contains("no registered key"));
    assert!(login.peer.is_some());
}

#[tokio::test]
async fn log_pages_newest_first_and_filters() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    r.add_system("beta");
    let base = warren::audit::now_ms() - 3_600_000;
    let events: Vec<Event> = (0..50u64)
        .map(|i| {
            let mut e = Event::new(
                if i % 2 == 0 {
                    kind::STREAM_CLOSE
                } else {
                    kind::STREAM_OPEN
                },
                "ok",
            )
            .system(if i % 5 == 0 { "beta" } else { "tau" })
            .key_name(if i % 3 == 0 { "bob" } else { "alice" })
            .device(format!("dev{}", i % 4));
            e.time_ms = base + i * 60_000;
            e
        })
        .collect();
    r.store().append_audit(&events).unwrap();
    let alice = r.add_key("tau", Role::Controller, "alice");
    let conn = r.controller("tau", alice).await;

    // A controller sees only its own system, 20 per page, newest first.
    let (st, page1, _) = exec(&conn, "log --json").await;
    assert_eq!(st, 0);
    let rows: Vec<serde_json::Value> = page1
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 20);
    assert!(rows.iter().all(|e| e["system"] == "tau"), "{page1}");
    let ids: Vec<i64> = rows.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]));
    // The newest is this controller's own login.
    assert_eq!(rows[0]["kind"], "login");
    let last = *ids.last().unwrap();
    let (_, page2, _) = exec(&conn, &format!("log --json --before {last}")).await;
    let ids2: Vec<i64> = page2
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect();
    assert_eq!(ids2.len(), 20);
    assert!(ids2[0] < last);
    let (st, _, err) = exec(&conn, "log --system beta").await;
    assert_eq!(st, 1);
    assert!(err.contains("only its own system"), "{err}");
    let (_, table, _) = exec(&conn, "log").await;
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains("-- more: add --before"), "{table}");
    assert_eq!(table.lines().count(), 22, "{table}");

    // Filters: device, key, kind, time range.
    let (_, out, _) = exec(
        &conn,
        "log --json --device dev1 --kind stream_open --key alice --limit 100",
    )
    .await;
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let want = (0..50u64)
        .filter(|i| i % 5 != 0 && i % 4 == 1 && i % 2 == 1 && i % 3 != 0)
        .count();
    assert_eq!(rows.len(), want, "{out}");
    assert!(
        rows.iter()
            .all(|e| e["device"] == "dev1" && e["kind"] == "stream_open" && e["key"] == "alice")
    );
    let since = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(base + 10 * 60_000),
    );
    let until = humantime::format_rfc3339_millis(
        std::time::UNIX_EPOCH + Duration::from_millis(base + 20 * 60_000),
    );
    let (_, out, _) = exec(
        &conn,
        &format!("log --json --kind stream_close --since {since} --until {until}"),
    )
    .await;
    // Events 10..20 of tau (not multiples of 5), even ones: 12, 14, 16, 18.
    assert_eq!(out.lines().count(), 4, "{out}");

    // An admin, from the relay host, sees every system; CSV for export.
    let data = r.dir.path().to_str().unwrap();
    let csv = warren_ok(&[
        "admin", "--data", data, "log", "--csv", "--system", "beta", "--limit", "100",
    ])
    .await;
    let mut lines = csv.lines();
    assert!(
        lines
            .next()
            .unwrap()
            .starts_with("id,time,kind,result,system,key,device")
    );
    assert_eq!(lines.count(), 10, "{csv}");
    let all = warren_ok(&["admin", "--data", data, "log", "--json", "--limit", "1000"]).await;
    assert!(all.lines().count() > 50);
    let bad = warren(&["admin", "--data", data, "log", "--since", "last tuesday"]).await;
    assert!(!bad.ok && bad.stderr.contains("RFC 3339"), "{}", bad.stderr);
}

#[tokio::test]
async fn remote_admin_works_with_stock_ssh_for_admin_keys_only() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    r.add_system("ops");
    let dir = tempfile::tempdir().unwrap();
    let admin = r.add_key_file(dir.path(), "ops", Role::Admin, "root");
    let alice = r.add_key_file(dir.path(), "tau", Role::Controller, "alice");
    let known = write_file(
        dir.path(),
        "known_hosts",
        &format!("{}\n", r.known_hosts_line()),
    );
    let port = r.addr.port().to_string();
    let ssh = |key: &Path, user: &str, args: &[&str]| {
        let mut c = stock_ssh(&known, key);
        c.args(["-p", &port])
            .arg(format!("{user}@127.0.0.1"))
            .args(args);
        c
    };
    let relay = r.addr.to_string();
    let invite = [
        "invite", "--system", "tau", "--role", "device", "--name", "dev7", "--relay", &relay,
    ];

    // The admin key makes an invite from anywhere, no shell on the relay host.
    let out = run(&mut ssh(&admin, "ops", &invite), WAIT).await;
    assert!(out.ok, "{}", out.stderr);
    let token = out.stdout_str().trim().to_string();
    let inv = warren::protocol::token::Invite::decode(&token).unwrap();
    assert_eq!(inv.host_key, r.host_key());
    let out = run(&mut ssh(&admin, "ops", &["invite", "ls", "--json"]), WAIT).await;
    assert!(out.stdout_str().contains(&inv.id), "{}", out.stdout_str());
    let out = run(
        &mut ssh(&admin, "ops", &["log", "--kind", "invite_create", "--json"]),
        WAIT,
    )
    .await;
    let e: serde_json::Value =
        serde_json::from_str(out.stdout_str().lines().next().unwrap()).unwrap();
    assert_eq!(e["key"], "root");
    assert_eq!(e["system"], "tau");
    // Parse errors are clear.
    let out = run(
        &mut ssh(&admin, "ops", &["invite", "--system", "tau"]),
        WAIT,
    )
    .await;
    assert!(
        !out.ok && out.stderr.contains("needs --system, --role and --name"),
        "{}",
        out.stderr
    );

    // A controller key is refused, the refusal audited, nothing made.
    let before = r.store().invites().unwrap().len();
    let out = run(&mut ssh(&alice, "tau", &invite), WAIT).await;
    assert!(!out.ok);
    assert!(out.stderr.contains("needs an admin key"), "{}", out.stderr);
    assert_eq!(r.store().invites().unwrap().len(), before);
    let refused = r
        .wait_audit(&q(kind::COMMAND), |e| e.result == "refused")
        .await;
    assert_eq!(refused.key.as_deref(), Some("alice"));
    assert_eq!(refused.reason.as_deref(), Some("needs_admin"));
    assert!(refused.detail.unwrap().contains("invite"));
    // ...and it still reads its own system's status and log.
    let out = run(&mut ssh(&alice, "tau", &["log", "--json"]), WAIT).await;
    assert!(out.ok, "{}", out.stderr);
    assert!(
        out.stdout_str()
            .lines()
            .all(|l| l.contains("\"system\":\"tau\"")),
        "{}",
        out.stdout_str()
    );
}

#[tokio::test]
async fn labels_filter_ls_and_status_shows_version_and_streams() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let port = echo_server().await;
    let allow = [format!("127.0.0.1:{port}")];
    let k1 = r.add_key("tau", Role::Device, "gpu1");
    let mut s1 = r.agent_settings("tau", "gpu1", k1, &allow);
    s1.labels = [
        ("gpu".to_string(), "a100".to_string()),
        ("site".into(), "lab3".into()),
    ]
    .into();
    let mut a1 = TestAgent::start(s1);
    a1.online().await;
    let k2 = r.add_key("tau", Role::Device, "cpu1");
    let mut s2 = r.agent_settings("tau", "cpu1", k2, &allow);
    s2.labels = [("site".to_string(), "lab3".to_string())].into();
    let mut a2 = TestAgent::start(s2);
    a2.online().await;
    let ctl = r.add_key("tau", Role::Controller, "alice");
    let conn = r.controller("tau", ctl).await;

    let (_, out, _) = exec(&conn, "ls --label gpu=a100 --json").await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(v[0]["name"], "gpu1");
    let (_, out, _) = exec(&conn, "ls --label site=lab3 --json").await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let (st, _, err) = exec(&conn, "ls --label nonsense").await;
    assert_eq!(st, 1);
    assert!(err.contains("KEY=VALUE"), "{err}");

    // A live stream shows in the count.
    let ch = conn.open("gpu1", u32::from(port)).await.unwrap();
    let (_, out, _) = exec(&conn, "ls --json").await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let gpu1 = v
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "gpu1")
        .unwrap();
    assert_eq!(gpu1["streams"], 1, "{out}");
    assert_eq!(gpu1["version"], env!("CARGO_PKG_VERSION"));
    drop(ch);

    // Offline devices stay listed, with labels, from the store alone.
    drop(a2);
    r.wait_online("tau", "cpu1", false).await;
    let data = r.dir.path().to_str().unwrap();
    let out = warren_ok(&["admin", "--data", data, "ls", "--label", "site=lab3"]).await;
    assert!(out.lines().next().unwrap().contains("LABELS"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("gpu1") && l.contains("online")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.contains("cpu1") && l.contains("site=lab3")),
        "{out}"
    );
    let out = warren_ok(&[
        "admin", "--data", data, "ls", "--label", "gpu=a100", "--json",
    ])
    .await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{out}");
}

#[tokio::test]
async fn disabling_a_device_closes_its_streams_and_refuses_new_ones() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    r.add_system("ops");
    let (_dev, port) = r.echo_device("tau", "dev1").await;
    let ctl = r.add_key("tau", Role::Controller, "alice");
    let conn = r.controller("tau", ctl).await;
    let admin = r.add_key("ops", Role::Admin, "root");
    let ops = r.controller("ops", admin).await;

    // A live stream, echoing.
    let ch = conn.open("dev1", u32::from(port)).await.unwrap();
    let (mut near, far) = tokio::io::duplex(64 * 1024);
    let (fr, fw) = tokio::io::split(far);
    let splice = tokio::spawn(ch.splice_io(fr, fw));
    near.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    near.read_exact(&mut buf).await.unwrap();

    // Remote disable: the live stream ends, new ones are refused.
    let (st, out, err) = exec(&ops, "device disable --system tau dev1").await;
    assert_eq!(st, 0, "{err}");
    assert!(out.contains("disabled device dev1"), "{out}");
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, near.read_to_end(&mut rest))
        .await
        .expect("the live stream is closed")
        .unwrap();
    tokio::time::timeout(WAIT, splice).await.unwrap().unwrap();
    let err = echo_through(&conn, "dev1", port, b"x").await.unwrap_err();
    assert!(format!("{err:#}").contains("disabled"), "{err:#}");
    r.wait_audit(&q(kind::STREAM_OPEN), |e| {
        e.result == "refused" && e.reason.as_deref() == Some("disabled")
    })
    .await;
    let closed = r.wait_audit(&q(kind::STREAM_CLOSE), |_| true).await;
    assert!(closed.detail.unwrap().contains("disabled"));
    assert_eq!(closed.bytes_up, Some(4));
    r.wait_audit(&q(kind::DEVICE_DISABLE), |e| {
        e.key.as_deref() == Some("root")
    })
    .await;
    let (_, out, _) = exec(&conn, "ls --json").await;
    assert!(out.contains("\"disabled\": true"), "{out}");

    // Enable from the relay host (another process): streams work again.
    let data = r.dir.path().to_str().unwrap();
    warren_ok(&[
        "admin", "--data", data, "device", "enable", "--system", "tau", "dev1",
    ])
    .await;
    let mut reg = r.relay.registry().watch();
    let wait = async {
        while r.relay.registry().is_disabled(&name("tau"), &name("dev1")) {
            reg.changed().await.unwrap();
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("relay saw the enable");
    assert_eq!(
        echo_through(&conn, "dev1", port, b"back").await.unwrap(),
        b"back"
    );
    // And from the relay host, a disable closes too (the relay notices the
    // other process's write at its next store poll).
    let ch = conn.open("dev1", u32::from(port)).await.unwrap();
    let (mut near, far) = tokio::io::duplex(1024);
    let (fr, fw) = tokio::io::split(far);
    let splice = tokio::spawn(ch.splice_io(fr, fw));
    warren_ok(&[
        "admin", "--data", data, "device", "disable", "--system", "tau", "dev1",
    ])
    .await;
    let mut rest = Vec::new();
    tokio::time::timeout(WAIT, near.read_to_end(&mut rest))
        .await
        .expect("closed")
        .unwrap();
    tokio::time::timeout(WAIT, splice).await.unwrap().unwrap();
    let out = warren(&[
        "admin", "--data", data, "device", "disable", "--system", "tau", "nosuch",
    ])
    .await;
    assert!(
        !out.ok && out.stderr.contains("no device nosuch"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn old_audit_events_are_pruned_at_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let mut old = Event::new(kind::LOGIN, "ok").detail("old");
        old.time_ms = warren::audit::now_ms() - 10 * 86_400_000;
        let recent = Event::new(kind::LOGIN, "ok").detail("recent");
        store.append_audit(&[old, recent]).unwrap();
    }
    let server = Relay::open(
        dir.path(),
        RelayOptions {
            audit_retention: Some(Duration::from_secs(86_400)),
            ..Default::default()
        },
    )
    .unwrap();
    let left = server
        .relay()
        .store()
        .audit(&AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].detail.as_deref(), Some("recent"));
}

async fn start_relay(data: &Path) -> RelayProcess {
    RelayProcess::start(
        &["--log-format", "json"],
        0,
        &["--audit-retention", "90d"],
        data,
    )
    .await
}

#[tokio::test]
async fn relay_kill_9_during_a_burst_keeps_every_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    Store::open(&data).unwrap();
    warren::ssh::keys::load_or_create_host_key(&warren::relay::host_key_path(&data)).unwrap();
    warren_ok(&["admin", "--data", d, "system", "add", "tau"]).await;
    warren_ok(&["admin", "--data", d, "system", "add", "ops"]).await;
    let store = Store::open(&data).unwrap();
    let (dev, alice, root) = (
        add_key_to(&store, "tau", Role::Device, "dev1"),
        add_key_to(&store, "tau", Role::Controller, "alice"),
        add_key_to(&store, "ops", Role::Admin, "root"),
    );
    let host_key = warren_ok(&["admin", "--data", d, "host-key"])
        .await
        .trim()
        .to_string();
    let mut relay = start_relay(&data).await;
    let addr = format!("127.0.0.1:{}", relay.port);

    let port = echo_server().await;
    let mut agent = TestAgent::start(agent_settings(
        &addr,
        &host_key,
        "tau",
        "dev1",
        dev,
        &[format!("127.0.0.1:{port}")],
    ));
    agent.online().await;
    let conn = Arc::new(connect_to(&addr, &host_key, "tau", alice).await.unwrap());
    let ops = connect_to(&addr, &host_key, "ops", root).await.unwrap();

    // A burst of streams that keeps going until the kill...
    let mut burst = tokio::task::JoinSet::new();
    for i in 0..16 {
        let conn = conn.clone();
        burst.spawn(async move {
            let mut done = 0u32;
            while echo_through(&conn, "dev1", port, format!("stream {i}").as_bytes())
                .await
                .is_ok()
            {
                done += 1;
            }
            done
        });
    }
    // ...while an admin makes invites; each acknowledged one must survive.
    let acknowledged = acknowledged_invites(&ops, &addr, 12).await;
    // Streams have been closing all along; see some on record, then kill.
    let seen_before = tokio::time::timeout(WAIT, async {
        loop {
            let n = store
                .audit(&AuditQuery {
                    kind: Some(kind::STREAM_CLOSE.into()),
                    limit: 10_000,
                    ..Default::default()
                })
                .unwrap();
            if n.len() >= 20 {
                return n.into_iter().map(|e| e.id).collect::<Vec<_>>();
            }
            let _ = ops.exec("log --limit 1").await;
        }
    })
    .await
    .expect("stream records while the burst runs");
    // Each event is also a structured log line.
    let line: serde_json::Value =
        serde_json::from_str(&relay.line(&["\"target\":\"audit\"", "stream_close"]).await).unwrap();
    assert_eq!(line["fields"]["event"], "stream_close");
    assert_eq!(line["fields"]["device"], "dev1");
    assert!(line["fields"]["bytes_up"].as_u64().unwrap() > 0);
    relay.child.start_kill().unwrap();
    relay.child.wait().await.unwrap();
    let mut streams_done = 0;
    while let Some(n) = burst.join_next().await {
        streams_done += n.unwrap();
    }
    assert!(streams_done >= 20, "{streams_done}");
    drop(agent);

    // The database opens cleanly, passes the integrity check, and holds
    // every acknowledged event and every event seen before the kill.
    assert_database_intact(&data);
    let store = Store::open(&data).unwrap();
    assert_invites_on_record(&store, &acknowledged);
    assert_eq!(store.invites().unwrap().len(), acknowledged.len());
    let closes: Vec<i64> = store
        .audit(&AuditQuery {
            kind: Some(kind::STREAM_CLOSE.into()),
            limit: 10_000,
            ..Default::default()
        })
        .unwrap()
        .into_iter()
        .map(|e| e.id)
        .collect();
    assert!(seen_before.iter().all(|id| closes.contains(id)));
    // A new relay starts on it and serves.
    let relay = start_relay(&data).await;
    let out = warren_ok(&["admin", "--data", d, "ls", "--json"]).await;
    assert!(out.contains("\"online\": false"), "{out}");
    drop(relay);
}

#[tokio::test]
async fn gateway_admin_commands_run_remotely_and_are_audited() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    r.add_system("ops");
    let key = r.add_key("tau", Role::Device, "gw1");
    let mut s = r.agent_settings("tau", "gw1", key, &["127.0.0.1:1".to_string()]);
    s.gateway = warren::agent::gateway::GatewayConfig::from_file(
        Some(&["127.0.0.1/32".to_string()]),
        Some(&[22]),
        Some(&["127.0.0.0/24".to_string()]),
        &[],
    )
    .unwrap();
    let mut gw = TestAgent::start(s);
    gw.online().await;
    let ops = r
        .controller("ops", r.add_key("ops", Role::Admin, "root"))
        .await;
    let alice = r
        .controller("tau", r.add_key("tau", Role::Controller, "alice"))
        .await;

    let (st, out, err) = exec(&ops, "gateway associate --system tau gw1 127.0.0.2/32").await;
    assert_eq!(st, 0, "{err}");
    assert!(out.contains("associated 127.0.0.2/32"), "{out}");
    let (st, out, _) = exec(&ops, "gateway show --system tau gw1 --json").await;
    assert_eq!(st, 0);
    assert!(out.contains("127.0.0.2/32"), "{out}");
    let e = r.wait_audit(&q("gateway_associate"), |_| true).await;
    assert_eq!(e.key.as_deref(), Some("root"));
    assert_eq!(e.system.as_deref(), Some("tau"));

    // From the relay host too, and a controller may not.
    let data = r.dir.path().to_str().unwrap();
    warren_ok(&[
        "admin",
        "--data",
        data,
        "gateway",
        "dissociate",
        "--system",
        "tau",
        "gw1",
        "127.0.0.2/32",
    ])
    .await;
    let stored = r.admin_store().audit(&q("gateway_dissociate")).unwrap();
    assert_eq!(stored.len(), 1);
    let (st, _, err) = exec(&alice, "gateway ls").await;
    assert_eq!(st, 1);
    assert!(err.contains("needs an admin key"), "{err}");
}

/// How many events of a flood a record stands for: itself plus what it says
/// was counted before it, or (a summary) just what it counted.
fn stands_for(e: &Event) -> u64 {
    let detail = e.detail.as_deref().unwrap_or("");
    let leading =
        |s: &str| -> Option<u64> { s.split_whitespace().next().and_then(|w| w.parse().ok()) };
    if let Some(n) = leading(detail) {
        return n;
    }
    match detail.split_once("; ") {
        Some((_, rest)) => 1 + leading(rest).unwrap_or(0),
        None => 1,
    }
}

/// Logins as `enroll` (completed or not) and registered keys asked about
/// without a signature are on record, and a flood of them from one address
/// is recorded once per window with a count, not row by row.
#[tokio::test]
async fn enroll_logins_and_key_probes_are_audited_and_floods_aggregated() {
    let r = TestRelay::start_with(RelayOptions {
        store_poll: Duration::from_millis(100),
        audit_flood_window: Duration::from_secs(3),
        ..Default::default()
    })
    .await;
    r.add_system("tau");
    let dir = tempfile::tempdir().unwrap();
    let known = write_file(
        dir.path(),
        "known_hosts",
        &format!("{}\n", r.known_hosts_line()),
    );
    let port = r.addr.port().to_string();
    // Stock ssh with only a public key: it asks whether the key may log in
    // (a `publickey` query without signature), hears yes, and cannot sign.
    let probe = |public: &Path, user: &str| {
        let mut c = stock_ssh(&known, public);
        c.args(["-o", "IdentityAgent=none", "-p", &port])
            .arg(format!("{user}@127.0.0.1"))
            .arg("ls");
        c
    };
    let public_only = |key: &Path| {
        let public = dir.path().join(format!(
            "{}-public-only.pub",
            key.file_name().unwrap().to_str().unwrap()
        ));
        std::fs::copy(key.with_extension("pub"), &public).unwrap();
        public
    };
    let fp_of = |public: &Path| {
        let k = warren::ssh::keys::read_public(public).unwrap();
        warren::ssh::keys::fingerprint(&k)
    };

    // A completed enroll login.
    let new_key = Arc::new(warren::ssh::keys::generate_ed25519().unwrap());
    let new_fp = warren::ssh::keys::fingerprint(new_key.public_key());
    let c = r.try_connect("enroll", new_key.clone()).await.unwrap();
    drop(c);
    let ok = r
        .wait_audit(&q(kind::LOGIN), |e| {
            e.fingerprint.as_deref() == Some(new_fp.as_str())
        })
        .await;
    assert_eq!(ok.result, "ok");
    assert_eq!(ok.system.as_deref(), Some("enroll"));
    assert!(ok.peer.as_deref().unwrap().starts_with("127.0.0.1:"));

    // An enroll login begun and never completed.
    let stranger = dir.path().join("stranger");
    warren::ssh::keys::write_pair(
        &warren::ssh::keys::generate_ed25519().unwrap(),
        &stranger,
        "stranger",
    )
    .unwrap();
    let stranger_pub = public_only(&stranger);
    let out = run(&mut probe(&stranger_pub, "enroll"), WAIT).await;
    assert!(!out.ok);
    let stranger_fp = fp_of(&stranger_pub);
    let refused = r
        .wait_audit(&q(kind::LOGIN), |e| {
            e.fingerprint.as_deref() == Some(stranger_fp.as_str())
        })
        .await;
    assert_eq!(refused.result, "refused");
    assert_eq!(refused.system.as_deref(), Some("enroll"));

    // A registered key asked about, never signed with.
    let alice = r.add_key_file(dir.path(), "tau", Role::Controller, "alice");
    let alice_pub = public_only(&alice);
    let out = run(&mut probe(&alice_pub, "tau"), WAIT).await;
    assert!(!out.ok, "logged in without the private key?");
    let alice_fp = fp_of(&alice_pub);
    let probed = r.wait_audit(&q(kind::KEY_PROBE), |_| true).await;
    assert_eq!(probed.result, "refused");
    assert_eq!(probed.system.as_deref(), Some("tau"));
    assert!(probed.detail.unwrap().contains(alice_fp.as_str()));
    // A normal login (which asks, then signs) is no probe.
    let ctl = r.add_key("tau", Role::Controller, "bob");
    drop(r.controller("tau", ctl).await);

    // A flood of enroll logins from one address: fewer rows than logins,
    // and the rows account for every one.
    const FLOOD: u64 = 12;
    for _ in 0..FLOOD {
        let k = Arc::new(warren::ssh::keys::generate_ed25519().unwrap());
        drop(r.try_connect("enroll", k).await.unwrap());
    }
    let enroll_ok = AuditQuery {
        kind: Some(kind::LOGIN.into()),
        system: Some("enroll".into()),
        limit: 1000,
        ..Default::default()
    };
    // The completed enroll login above, and the flood.
    let total = FLOOD + 1;
    let rows = r
        .wait_audit_for(&enroll_ok, |events| {
            let rows: Vec<Event> = events.into_iter().filter(|e| e.result == "ok").collect();
            (rows.iter().map(stands_for).sum::<u64>() >= total).then_some(rows)
        })
        .await;
    assert_eq!(
        rows.iter().map(stands_for).sum::<u64>(),
        FLOOD + 1,
        "{rows:#?}"
    );
    assert!(
        rows.len() < FLOOD as usize,
        "{} rows for {} logins",
        rows.len(),
        FLOOD + 1
    );
    // Exactly one key probe was recorded (the normal login added none).
    r.relay.audit().flush().await.unwrap();
    assert_eq!(r.store().audit(&q(kind::KEY_PROBE)).unwrap().len(), 1);
}
