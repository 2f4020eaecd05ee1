//! In-process tests of the relay's rules: relay, agents and controllers in
//! one process on 127.0.0.1:0.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren::protocol::Role;
use warren::relay::RelayOptions;

#[tokio::test]
async fn controller_reaches_a_device_by_name() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let ctl = r.add_key("tau", Role::Controller, "alice");
    let (_agent, port) = r.echo_device("tau", "dev1").await;

    let conn = r.controller("tau", ctl).await;
    let msg: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo_through(&conn, "dev1", port, &msg).await.unwrap(), msg);
    // Several streams over one controller connection at once.
    let (a, b) = tokio::join!(
        echo_through(&conn, "dev1", port, b"first"),
        echo_through(&conn, "dev1", port, b"second")
    );
    assert_eq!(
        (a.unwrap(), b.unwrap()),
        (b"first".to_vec(), b"second".to_vec())
    );
}

#[tokio::test]
async fn nothing_crosses_systems() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    r.add_system("other");
    let other_ctl = r.add_key("other", Role::Controller, "bob");
    let tau_port = http_server("tau's dev1").await;
    let other_port = echo_server().await;
    let _a1 = r
        .device("tau", "dev1", &[format!("7000=127.0.0.1:{tau_port}")])
        .await;
    let _a2 = r
        .device("other", "dev1", &[format!("7000=127.0.0.1:{other_port}")])
        .await;
    let _a3 = r
        .device("tau", "secret", &[format!("7000=127.0.0.1:{tau_port}")])
        .await;

    let conn = r.controller("other", other_ctl.clone()).await;
    // The same name in another system is a different device: bob's dev1 echoes.
    assert_eq!(
        echo_through(&conn, "dev1", 7000, b"ping").await.unwrap(),
        b"ping"
    );
    let err = echo_through(&conn, "secret", 7000, b"x")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no device named secret in system other"),
        "{err}"
    );
    // A controller key cannot log in to another system at all.
    let err = r
        .try_connect("tau", other_ctl)
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("refused key"), "{err}");
}

#[tokio::test]
async fn device_keys_cannot_open_streams() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let dev2 = r.add_key("tau", Role::Device, "dev2");
    let (_a, port) = r.echo_device("tau", "dev1").await;
    let conn = r.controller("tau", dev2).await;
    let err = echo_through(&conn, "dev1", port, b"x")
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("device keys cannot open streams"), "{err}");
    let out = conn.exec("ls").await.unwrap();
    assert_ne!(out.status, 0, "device keys cannot list devices either");
}

#[tokio::test]
async fn a_name_belongs_to_its_key() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let dev2 = r.add_key("tau", Role::Device, "dev2");
    let ctl = r.add_key("tau", Role::Controller, "alice");
    let (mut owner, port) = r.echo_device("tau", "dev1").await;

    // dev2's key asks for dev1: refused, and dev1 stays with its owner.
    let mut thief =
        TestAgent::start(r.agent_settings("tau", "dev1", dev2, &[format!("127.0.0.1:{port}")]));
    let reason = thief.offline().await;
    assert!(reason.contains("refused to register dev1"), "{reason}");
    // A controller key cannot register names either.
    let conn = r.controller("tau", ctl.clone()).await;
    assert!(conn.register("dev1", 22).await.is_err());
    let conn = r.controller("tau", ctl).await;
    assert_eq!(
        echo_through(&conn, "dev1", port, b"still mine")
            .await
            .unwrap(),
        b"still mine"
    );
    assert!(
        owner.events.try_recv().is_err(),
        "the owner was not disturbed"
    );
}

#[tokio::test]
async fn the_same_key_reconnecting_takes_over_at_once() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let dev = r.add_key("tau", Role::Device, "dev1");
    let ctl = r.add_key("tau", Role::Controller, "alice");
    let old_port = http_server("old").await;
    let new_port = http_server("new").await;
    let mut old = TestAgent::start(r.agent_settings(
        "tau",
        "dev1",
        dev.clone(),
        &[format!("8080=127.0.0.1:{old_port}")],
    ));
    old.online().await;
    let mut new = TestAgent::start(r.agent_settings(
        "tau",
        "dev1",
        dev,
        &[format!("8080=127.0.0.1:{new_port}")],
    ));
    new.online().await;
    // The old connection is closed by the relay, with the reason.
    let reason = old.offline().await;
    assert!(reason.contains("replaced by a new connection"), "{reason}");
    // Stop the old agent before it comes back and takes the name again.
    drop(old);
    let conn = r.controller("tau", ctl).await;
    let reply = echo_through(&conn, "dev1", 8080, b"GET / HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&reply).ends_with("new"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
}

#[tokio::test]
async fn refusals_are_readable_and_never_hang() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let dev = r.add_key("tau", Role::Device, "dev1");
    let gone = r.add_key("tau", Role::Device, "gone");
    let ctl = r.add_key("tau", Role::Controller, "alice");
    let port = echo_server().await;
    let down = closed_port().await;
    let mut a = TestAgent::start(r.agent_settings(
        "tau",
        "dev1",
        dev,
        &[
            format!("127.0.0.1:{port}"),
            format!("9999=127.0.0.1:{down}"),
        ],
    ));
    a.online().await;
    let g = TestAgent::start(r.agent_settings("tau", "gone", gone, &[format!("127.0.0.1:{port}")]));
    r.wait_online("tau", "gone", true).await;
    drop(g);
    r.wait_online("tau", "gone", false).await;
    // Its row in the store ("last seen") is written after the registry
    // changes; the refusal below reads it.
    r.wait_status("tau", "gone", |d| !d.online).await;

    let conn = r.controller("tau", ctl).await;
    let cases = [
        ("nosuch", port, "no device named nosuch in system tau"),
        ("gone", port, "device gone is offline (last seen"),
        ("dev1", 2, "device dev1 does not serve port 2 (it serves"),
        ("Bad_Name", port, "no device named \"Bad_Name\""),
        ("dev1", 9999, "could not open port 9999"),
    ];
    for (host, p, want) in cases {
        let err = tokio::time::timeout(WAIT, echo_through(&conn, host, p, b"x"))
            .await
            .expect("a refusal, not a hang")
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{host}:{p}: {err}");
    }
}

#[tokio::test]
async fn ls_shows_online_and_offline_devices() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let ctl = r.add_key("tau", Role::Controller, "alice");
    let (_a, port) = r.echo_device("tau", "dev1").await;
    let b = r
        .device("tau", "dev2", &[format!("127.0.0.1:{port}")])
        .await;
    drop(b);
    r.wait_online("tau", "dev2", false).await;

    let conn = r.controller("tau", ctl).await;
    let out = conn.exec("ls --json").await.unwrap();
    assert_eq!(out.status, 0);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "dev1");
    assert_eq!(list[0]["online"], true);
    assert_eq!(list[0]["ports"][0], port);
    assert!(
        list[0]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert_eq!(list[1]["name"], "dev2");
    assert_eq!(list[1]["online"], false);
    assert!(list[1]["last_seen"].as_u64().is_some());
    let table = String::from_utf8(conn.exec("ls").await.unwrap().stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("dev1") && l.contains("online")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("dev2") && l.contains("offline")),
        "{table}"
    );
    let bad = conn.exec("rm -rf /").await.unwrap();
    assert_eq!(bad.status, 2);
}

#[tokio::test]
async fn revoking_a_key_closes_its_connections_at_once() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let dev = r.add_key("tau", Role::Device, "dev1");
    let fp = warren::ssh::keys::fingerprint(dev.public_key());
    let port = echo_server().await;
    let mut a =
        TestAgent::start(r.agent_settings("tau", "dev1", dev, &[format!("127.0.0.1:{port}")]));
    a.online().await;
    // Revoked from another process's handle on the database, like `warren admin`.
    r.admin_store().revoke_key(&fp).unwrap();
    let reason = a.offline().await;
    assert!(reason.contains("revoked"), "{reason}");
    r.wait_online("tau", "dev1", false).await;
    // And it cannot come back.
    let reason = a.offline().await;
    assert!(reason.contains("refused key"), "{reason}");
}

#[tokio::test]
async fn keys_added_by_admin_work_without_restart() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let key = warren::ssh::keys::generate_ed25519().unwrap();
    let key = std::sync::Arc::new(key);
    assert!(r.try_connect("tau", key.clone()).await.is_err());
    r.admin_store()
        .add_key(
            &name("tau"),
            Role::Controller,
            &name("late"),
            key.public_key(),
        )
        .unwrap();
    r.try_connect("tau", key).await.unwrap();
}

#[tokio::test]
async fn pinned_host_key_mismatch_is_refused_clearly() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let dev = r.add_key("tau", Role::Device, "dev1");
    let mut s = r.agent_settings("tau", "dev1", dev, &["127.0.0.1:22".into()]);
    s.relay_host_key = format!("SHA256:{}", "A".repeat(43));
    let mut a = TestAgent::start(s);
    let reason = a.offline().await;
    assert!(reason.contains("host key mismatch"), "{reason}");
    assert!(
        reason.contains(&r.host_key()),
        "names what the relay presented: {reason}"
    );
}

#[tokio::test]
async fn silent_connections_are_dropped_after_the_handshake_timeout() {
    let r = TestRelay::start_with(RelayOptions {
        handshake_timeout: Duration::from_millis(500),
        ..Default::default()
    })
    .await;
    // Never says anything.
    let mut silent = TcpStream::connect(r.addr).await.unwrap();
    // Says its version, then nothing.
    let mut slow = TcpStream::connect(r.addr).await.unwrap();
    slow.write_all(b"SSH-2.0-slowpoke\r\n").await.unwrap();
    for s in [&mut silent, &mut slow] {
        let mut buf = Vec::new();
        let closed = tokio::time::timeout(WAIT, s.read_to_end(&mut buf)).await;
        assert!(
            closed.is_ok(),
            "relay must close an unauthenticated connection"
        );
    }
}

#[tokio::test]
async fn an_unauthenticated_connection_is_told_at_shutdown() {
    // A handshake deadline far beyond the test's patience: shutdown, not
    // the deadline, must end the connection.
    let mut r = TestRelay::start_with(RelayOptions {
        handshake_timeout: Duration::from_secs(60),
        ..Default::default()
    })
    .await;
    let mut raw = TcpStream::connect(r.addr).await.unwrap();
    raw.write_all(b"SSH-2.0-raw\r\n").await.unwrap();
    // The relay's version line: the connection is past the version exchange.
    let mut b = [0u8; 4];
    raw.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"SSH-");
    let started = std::time::Instant::now();
    r.shut_down().await;
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut buf))
        .await
        .expect("an unauthenticated connection is closed at shutdown")
        .unwrap();
    // Told why: the DISCONNECT goes out before any keys, so in the clear.
    let text = String::from_utf8_lossy(&buf);
    assert!(text.contains("relay shutting down"), "{text:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} for an unauthenticated connection",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_enrolling_connection_is_closed_at_shutdown() {
    let mut r = TestRelay::start().await;
    let newcomer = std::sync::Arc::new(warren::ssh::keys::generate_ed25519().unwrap());
    let mut enrolling = r.try_connect("enroll", newcomer).await.unwrap();
    let started = std::time::Instant::now();
    r.shut_down().await;
    let why = tokio::time::timeout(WAIT, enrolling.is_gone())
        .await
        .expect("an enrolling connection is closed at shutdown");
    assert!(why.contains("relay shutting down"), "{why}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown waited {:?} for an enrolling connection",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_relay_rechecks_the_store_when_told_it_changed() {
    // No poll during the test: only `store_changed` can cause a re-check.
    let r = TestRelay::start_with(RelayOptions {
        store_poll: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    let mut rechecks = r.relay.rechecks();
    let before = *rechecks.borrow_and_update();
    r.relay.store_changed();
    tokio::time::timeout(WAIT, rechecks.wait_for(|n| *n > before))
        .await
        .expect("a re-check after store_changed")
        .unwrap();
}

#[tokio::test]
async fn a_read_only_remote_command_does_not_recheck_live_keys() {
    // No poll during the test: only a command that tells the relay its store
    // changed causes a re-check.
    let r = TestRelay::start_with(RelayOptions {
        store_poll: Duration::from_secs(3600),
        ..Default::default()
    })
    .await;
    r.add_system("tau");
    r.add_key("tau", Role::Device, "dev1");
    let announce = warren::protocol::gateway::Announce {
        scope: vec!["10.9.0.0/24".parse().unwrap()],
        ports: vec![22],
        permit: None,
        listens: vec![],
    };
    r.store().gateway_announce("tau", "gw1", &announce).unwrap();
    let admin = r
        .controller("tau", r.add_key("tau", Role::Admin, "root"))
        .await;
    let mut rechecks = r.relay.rechecks();
    let before = *rechecks.borrow_and_update();

    for cmd in ["gateway ls", "gateway show gw1", "ls", "log"] {
        let out = admin.exec(cmd).await.unwrap();
        assert_eq!(
            out.status,
            0,
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            *rechecks.borrow(),
            before,
            "`{cmd}` made the relay re-check"
        );
    }
    let out = admin
        .exec("device disable --system tau dev1")
        .await
        .unwrap();
    assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
    // The write's re-check is the one that applies the disable; had a read
    // asked for a re-check too, the count would be past `before + 1`.
    let (tau, dev1) = (
        warren::protocol::Name::parse("tau").unwrap(),
        warren::protocol::Name::parse("dev1").unwrap(),
    );
    let registry = r.relay.registry();
    tokio::time::timeout(
        WAIT,
        rechecks.wait_for(|n| *n > before && registry.is_disabled(&tau, &dev1)),
    )
    .await
    .expect("the relay re-checks after `device disable`")
    .unwrap();
    assert_eq!(*rechecks.borrow(), before + 1);
}

#[tokio::test]
async fn unauthenticated_connections_are_capped() {
    let r = TestRelay::start_with(RelayOptions {
        max_unauthenticated: 2,
        ..Default::default()
    })
    .await;
    r.add_system("tau");
    let ctl = r.add_key("tau", Role::Controller, "alice");
    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(r.addr).await.unwrap();
        // Wait for the banner: the relay has taken this connection.
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"SSH-");
        idle.push(s);
    }
    // The third is not accepted while both slots are held: it waits in the
    // kernel's accept queue, with no banner (and is not closed).
    let mut third = TcpStream::connect(r.addr).await.unwrap();
    let mut b = [0u8; 4];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.read_exact(&mut b))
            .await
            .is_err(),
        "the third connection was served (or closed) while the cap was full"
    );
    // Slots free up when the idle ones go away: the relay notices the
    // dropped sockets as soon as it reads EOF, and takes the waiting one.
    drop(idle);
    tokio::time::timeout(WAIT, third.read_exact(&mut b))
        .await
        .expect("the waiting connection is accepted once a slot frees")
        .unwrap();
    assert_eq!(&b, b"SSH-");
    drop(third);
    let mut held = r.relay.unauthenticated();
    tokio::time::timeout(WAIT, held.wait_for(|n| *n < 2))
        .await
        .expect("a slot frees up")
        .unwrap();
    r.try_connect("tau", ctl).await.unwrap();
}

#[tokio::test]
async fn agent_comes_back_after_a_relay_restart() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let ctl = r.add_key("tau", Role::Controller, "alice");
    let (mut a, port) = r.echo_device("tau", "dev1").await;
    let r = r.restart().await;
    let reason = a.offline().await;
    assert!(!reason.is_empty());
    a.online().await;
    let conn = r.controller("tau", ctl).await;
    assert_eq!(
        echo_through(&conn, "dev1", port, b"back").await.unwrap(),
        b"back"
    );
}

/// A TCP forwarder that can be frozen: it keeps both sockets open but stops
/// moving bytes, like a link that died without a FIN or RST.
async fn freezable_proxy(
    to: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = l.accept().await {
            let outbound = TcpStream::connect(to).await.unwrap();
            let (ir, iw) = inbound.into_split();
            let (or, ow) = outbound.into_split();
            for (mut r, mut w) in [(ir, ow), (or, iw)] {
                let mut frozen = rx.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        let n = tokio::select! {
                            _ = frozen.wait_for(|f| *f) => None,
                            n = r.read(&mut buf) => Some(n),
                        };
                        let Some(n) = n else {
                            // Hold the sockets open forever, moving nothing.
                            let _keep = (r, w);
                            std::future::pending::<()>().await;
                            return;
                        };
                        match n {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if w.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        }
    });
    (addr, tx)
}

#[tokio::test]
async fn agent_drops_a_relay_that_stops_answering() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let dev = r.add_key("tau", Role::Device, "dev1");
    let (via, freeze) = freezable_proxy(r.addr).await;
    let mut s = r.agent_settings("tau", "dev1", dev, &["127.0.0.1:22".into()]);
    s.relay = via.to_string();
    // Keepalives go out every dead_after/3 and two unanswered ones end the
    // connection: it must end between 2/3 and all of dead_after after the freeze.
    s.dead_after = Duration::from_secs(3);
    let mut a = TestAgent::start(s);
    a.online().await;
    let frozen_at = tokio::time::Instant::now();
    freeze.send(true).unwrap();
    let reason = a.offline().await;
    let took = frozen_at.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "gave up too early: {took:?} ({reason})"
    );
    assert!(
        took <= Duration::from_secs(8),
        "took {took:?} to notice a dead relay ({reason})"
    );
}

/// Regression: a controller that sent EOF and then closed its channel while
/// the device was still sending left the relay waiting forever for window
/// on the closed channel; the device's queue filled and its whole
/// connection stalled (found by the benchmark with `iperf3 -R`).
#[tokio::test]
async fn a_stream_closed_after_eof_does_not_stall_the_device() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let ctl = r.add_key("tau", Role::Controller, "alice");
    // Reads until EOF, then sends without end (like an iperf3 -R server).
    let firehose = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fire_port = firehose.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = firehose.accept().await {
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
                let chunk = vec![7u8; 64 * 1024];
                while s.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    let echo = echo_server().await;
    let _a = r
        .device(
            "tau",
            "dev1",
            &[
                format!("127.0.0.1:{fire_port}"),
                format!("127.0.0.1:{echo}"),
            ],
        )
        .await;
    let conn = r.controller("tau", ctl).await;
    for _ in 0..3 {
        let ch = conn.open("dev1", u32::from(fire_port)).await.unwrap();
        let (mut near, far) = tokio::io::duplex(64 * 1024);
        let (fr, fw) = tokio::io::split(far);
        let splice = tokio::spawn(ch.splice_io(fr, fw));
        near.write_all(b"go").await.unwrap();
        near.shutdown().await.unwrap();
        let mut some = vec![0u8; 1024 * 1024];
        tokio::time::timeout(WAIT, near.read_exact(&mut some))
            .await
            .expect("device data flows")
            .unwrap();
        // Close the stream while the device is still sending.
        drop(near);
        tokio::time::timeout(WAIT, splice)
            .await
            .expect("stream ends")
            .unwrap();
    }
    // The device's connection still carries new streams.
    let back = tokio::time::timeout(WAIT, echo_through(&conn, "dev1", echo, b"alive"))
        .await
        .expect("device connection must not stall");
    assert_eq!(back.unwrap(), b"alive");
}
