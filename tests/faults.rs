//! Faults: a killed agent, a killed relay with 100 devices and streams
//! running, a device's target that is down, and a controller that stops
//! reading while a device sends a large file. Every wait is on an event with
//! a deadline; every process started is killed on drop.
//!
//! Link cuts and NAT rebinding need network namespaces: see tests/nat_faults.rs.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::process::Command;

use common::cli::{RelayProcess, WARREN};
use common::openssh::{run, spawn_quiet, ssh_w, stock_ssh};
use common::*;
use warren::agent::AgentEvent;
use warren::protocol::Role;
use warren::ssh::keys;
use warren::store::Store;

const BACK_WITHIN: Duration = Duration::from_secs(60);

#[tokio::test]
async fn relay_kill_9_with_100_devices_and_streams_running_every_device_is_back() {
    const DEVICES: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let store = Store::open(&data).unwrap();
    store.add_system(&name("tau")).unwrap();
    store.add_system(&name("ops")).unwrap();
    let devs: Vec<_> = (0..DEVICES)
        .map(|i| add_key_to(&store, "tau", Role::Device, &format!("d{i}")))
        .collect();
    let alice = add_key_to(&store, "tau", Role::Controller, "alice");
    let root = add_key_to(&store, "ops", Role::Admin, "root");
    let mut relay = RelayProcess::start(&[], 0, &[], &data).await;
    let addr = format!("127.0.0.1:{}", relay.port);
    let host_key = keys::fingerprint(
        keys::load_or_create_host_key(&warren::relay::host_key_path(&data))
            .unwrap()
            .public_key(),
    );

    let port = echo_server().await;
    let mut agents: Vec<TestAgent> = devs
        .iter()
        .enumerate()
        .map(|(i, k)| {
            TestAgent::start(agent_settings(
                &addr,
                &host_key,
                "tau",
                &format!("d{i}"),
                k.clone(),
                &[format!("127.0.0.1:{port}")],
            ))
        })
        .collect();
    for a in &mut agents {
        a.online().await;
    }
    let conn = Arc::new(
        connect_to(&addr, &host_key, "tau", alice.clone())
            .await
            .unwrap(),
    );
    let ops = connect_to(&addr, &host_key, "ops", root).await.unwrap();

    // Streams to many devices keep running until the kill.
    let mut streams = tokio::task::JoinSet::new();
    for i in 0..20 {
        let conn = conn.clone();
        streams.spawn(async move {
            let mut done = 0u32;
            let dev = format!("d{}", i * 5);
            while echo_through(&conn, &dev, port, &vec![b'x'; 10_000])
                .await
                .is_ok_and(|b| b.len() == 10_000)
            {
                done += 1;
            }
            done
        });
    }
    // Acknowledged audit events: admin invites, each durable before "ok".
    let acknowledged = acknowledged_invites(&ops, &addr, 10).await;
    relay.kill_9().await;
    let mut done = 0;
    while let Some(n) = streams.join_next().await {
        done += n.unwrap();
    }
    assert!(done > 0, "streams were running");

    // The database is intact and holds every acknowledged event.
    assert_database_intact(&data);
    assert_invites_on_record(&Store::open(&data).unwrap(), &acknowledged);

    // Restart on the same port: every agent notices and comes back.
    let restarted = Instant::now();
    let _relay = RelayProcess::start(&[], relay.port, &[], &data).await;
    let mut slowest = Duration::ZERO;
    for (i, a) in agents.iter_mut().enumerate() {
        let back = tokio::time::timeout(BACK_WITHIN, async {
            loop {
                if let Some(AgentEvent::Online) = a.events.recv().await {
                    return;
                }
            }
        })
        .await;
        assert!(back.is_ok(), "d{i} not back within {BACK_WITHIN:?}");
        slowest = slowest.max(restarted.elapsed());
    }
    assert!(slowest < BACK_WITHIN);
    let conn = connect_to(&addr, &host_key, "tau", alice).await.unwrap();
    for i in [0, 37, 99] {
        assert_eq!(
            echo_through(&conn, &format!("d{i}"), port, b"back")
                .await
                .unwrap(),
            b"back"
        );
    }
    eprintln!(
        "relay kill -9 with {DEVICES} devices and {done} streams done: all back {slowest:?} after the restart"
    );
    let out = run(
        Command::new(WARREN).args(["admin", "--data", d, "ls", "--json"]),
        WAIT,
    )
    .await;
    assert!(out.ok, "{}", out.stderr);
    assert_eq!(
        out.stdout_str().matches("\"online\": true").count(),
        DEVICES
    );
}

#[tokio::test]
async fn an_agent_killed_with_sigkill_shows_offline_with_last_seen() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let dir = tempfile::tempdir().unwrap();
    let key = r.add_key_file(dir.path(), "tau", Role::Device, "dev1");
    let port = echo_server().await;
    let cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "relay = \"{}\"\nsystem = \"tau\"\nname = \"dev1\"\nkey = \"{}\"\n\
             relay_host_key = \"{}\"\nallow = [\"127.0.0.1:{port}\"]\n",
            r.addr,
            key.display(),
            r.host_key()
        ),
    );
    let mut agent = spawn_quiet(
        Command::new(WARREN)
            .args(["agent", "--config"])
            .arg(&cfg)
            .env("WARREN_LOG", "error"),
    );
    r.wait_online("tau", "dev1", true).await;
    let before = warren::audit::now_ms();
    agent.start_kill().unwrap();
    agent.wait().await.unwrap();
    let killed = Instant::now();
    r.wait_online("tau", "dev1", false).await;
    let noticed = killed.elapsed();
    assert!(
        noticed < relay_keepalive_window(),
        "offline after {noticed:?}"
    );
    // The store says offline, with a last-seen no older than the kill.
    let seen = r.wait_status("tau", "dev1", |d| !d.online).await;
    let last_seen = seen.last_seen.expect("last seen");
    // Seconds, no older than the kill.
    assert!(last_seen + 1 >= before / 1000, "{last_seen} vs {before} ms");
    let conn = r
        .controller("tau", r.add_key("tau", Role::Controller, "alice"))
        .await;
    let err = echo_through(&conn, "dev1", port, b"x")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("device dev1 is offline (last seen"), "{err}");
    eprintln!("agent kill -9: relay showed dev1 offline after {noticed:?}");
}

#[tokio::test]
async fn a_target_that_is_down_is_refused_at_once() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let down = closed_port().await;
    let _a = r
        .device("tau", "dev1", &[format!("127.0.0.1:{down}")])
        .await;
    let conn = r
        .controller("tau", r.add_key("tau", Role::Controller, "alice"))
        .await;
    let t = Instant::now();
    let err = tokio::time::timeout(WAIT, conn.open("dev1", u32::from(down)))
        .await
        .expect("a refusal, not a hang")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("could not open port"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    eprintln!("target down: refused after {:?}: {err}", t.elapsed());
}

/// Resident memory of this process (relay and agent run in it), in KiB:
/// (current, peak).
fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A stock `ssh -W` controller whose stdout nobody reads, while the device
/// sends 1 GiB: the sender must be held back (bounded memory in relay and
/// agent), and other streams of the device keep flowing.
#[tokio::test]
async fn a_controller_that_stops_reading_holds_the_sender_back() {
    const FILE: u64 = 1 << 30;
    let r = TestRelay::start().await;
    r.add_system("tau");
    let sent = Arc::new(AtomicU64::new(0));
    let big = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let big_port = big.local_addr().unwrap().port();
    let started = Arc::new(tokio::sync::Notify::new());
    let (counter, first) = (sent.clone(), started.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = big.accept().await {
            let (counter, first) = (counter.clone(), first.clone());
            tokio::spawn(async move {
                let chunk = vec![b'z'; 64 * 1024];
                while counter.load(Ordering::Relaxed) < FILE {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                    if counter.fetch_add(chunk.len() as u64, Ordering::Relaxed) == 0 {
                        first.notify_one();
                    }
                }
            });
        }
    });
    let echo = echo_server().await;
    let _a = r
        .device(
            "tau",
            "dev1",
            &[format!("127.0.0.1:{big_port}"), format!("127.0.0.1:{echo}")],
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let alice = r.add_key_file(dir.path(), "tau", Role::Controller, "alice");
    let known = write_file(dir.path(), "known_hosts", &r.known_hosts_line());
    let (rss_start, _) = rss_kib();
    // stdout is a pipe that this test never reads.
    let mut ssh = ssh_w(
        &mut stock_ssh(&known, &alice),
        r.addr.port(),
        &format!("dev1:{big_port}"),
    );
    // The stream is open once the target starts sending.
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the device starts sending");
    // Other streams of the device keep flowing meanwhile, for 10 s.
    let conn = r
        .controller("tau", r.add_key("tau", Role::Controller, "bob"))
        .await;
    let until = Instant::now() + Duration::from_secs(10);
    let mut echoes = 0;
    while Instant::now() < until {
        let t = Instant::now();
        let back = tokio::time::timeout(
            Duration::from_secs(5),
            echo_through(&conn, "dev1", echo, b"ping"),
        )
        .await;
        let Ok(back) = back else {
            let (rss, peak) = rss_kib();
            panic!(
                "another stream of the device stalled for 5 s after {echoes} echoes; device had sent {} MiB; \
                 RSS {} -> {} MiB, peak {} MiB",
                sent.load(Ordering::Relaxed) >> 20,
                rss_start >> 10,
                rss >> 10,
                peak >> 10
            );
        };
        let back = back.unwrap();
        assert_eq!(back, b"ping");
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "echo took {:?}",
            t.elapsed()
        );
        echoes += 1;
    }
    let held = sent.load(Ordering::Relaxed);
    let (rss_end, rss_peak) = rss_kib();
    eprintln!(
        "slow consumer: device sent {} MiB in 10 s while the controller read nothing; \
         {echoes} echoes meanwhile; RSS {} -> {} MiB, peak {} MiB",
        held >> 20,
        rss_start >> 10,
        rss_end >> 10,
        rss_peak >> 10
    );
    assert!(
        held < 64 << 20,
        "sender not held back: {} MiB sent",
        held >> 20
    );
    assert!(
        rss_peak < rss_start + (128 << 10),
        "memory grew from {rss_start} KiB to a peak of {rss_peak} KiB"
    );
    let _ = ssh.kill().await;
    let mut rest = Vec::new();
    let _ = ssh.stdout.take().unwrap().read_to_end(&mut rest).await;
}
