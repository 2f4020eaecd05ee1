//! Key exchange, rekeys, ciphers and packets.

use super::*;

#[tokio::test]
async fn every_cipher_carries_data_across_rekeys_started_by_either_side() {
    for alg in CipherAlg::ALL {
        let server_settings = Settings {
            ciphers: vec![alg],
            rekey_bytes: 300_000,
            ..Settings::default()
        };
        let srv = server(server_settings).await;
        let conn = srv
            .client(Settings {
                ciphers: vec![alg],
                rekey_bytes: 500_000,
                ..Settings::default()
            })
            .await;
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let back = echo(&conn, &data).await;
        assert!(
            back == data,
            "{alg:?}: echo differs ({} of {} bytes)",
            back.len(),
            data.len()
        );
        let tx = srv.granted.tx.lock().unwrap().clone().unwrap();
        let kexes = *tx.ctl.kexes.borrow();
        assert!(
            kexes >= 5,
            "{alg:?}: only {kexes} key exchanges for 6 MB at a 300 kB limit"
        );
        let out = conn.exec("hello").await.unwrap();
        assert_eq!((out.stdout.as_slice(), out.status), (&b"ran hello"[..], 3));
    }
}

#[tokio::test]
async fn oversized_truncated_and_forged_packets_end_the_connection() {
    let mut srv = server(Settings::default()).await;
    // Oversized: a length far beyond the limit, in the clear before kex.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    conn::version_exchange(&mut s, false).await.unwrap();
    s.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
    s.write_all(&[0u8; 64]).await.unwrap();
    let mut sink = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut sink))
        .await
        .unwrap()
        .ok();
    assert!(matches!(srv.ended().await, mux::Ended::Local(t) if t.contains("length")));
    // Truncated: half a packet, then the socket closes.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    conn::version_exchange(&mut s, false).await.unwrap();
    let i_c = kex::our_kexinit(false, true, &kex::KexAlg::ALL, &CipherAlg::ALL);
    let mut out = Vec::new();
    Direction::plain().seal(0, &i_c[..1], &i_c[1..], &mut out);
    s.write_all(&out[..out.len() / 2]).await.unwrap();
    drop(s);
    let ended = srv.ended().await;
    assert!(
        matches!(&ended, mux::Ended::Closed)
            || matches!(&ended, mux::Ended::Local(t) if t.contains("socket")),
        "{ended:?}"
    );
    // Forged: a flipped bit after the keys are on.
    let mut raw = Raw::connect(srv.addr, true, None).await;
    let mut out = Vec::new();
    raw.seal.seal(
        raw.seq_out,
        &[msg::SERVICE_REQUEST],
        &Writer::default().string("ssh-userauth").finish(),
        &mut out,
    );
    let last = out.len() - 1;
    out[last] ^= 0x40;
    raw.s.write_all(&out).await.unwrap();
    raw.hung_up().await;
    assert!(
        matches!(srv.ended().await, mux::Ended::Local(t) if t.contains("authentication failed"))
    );
    assert!(srv.granted.nothing());
}

#[tokio::test]
async fn strict_kex_refuses_the_sequence_number_trick() {
    let mut srv = server(Settings::default()).await;
    // An IGNORE slipped into the initial key exchange (what the Terrapin
    // attack injects to shift sequence numbers) ends a strict connection.
    let mut raw = Raw::connect(
        srv.addr,
        true,
        Some(Writer::new(msg::IGNORE).string("").finish()),
    )
    .await;
    raw.hung_up().await;
    assert!(
        matches!(srv.ended().await, mux::Ended::Local(t) if t.contains("initial key exchange"))
    );
    // Without strict kex the same message is allowed (RFC 4253), and the
    // sequence numbers simply continue.
    let mut raw = Raw::connect(
        srv.addr,
        false,
        Some(Writer::new(msg::IGNORE).string("").finish()),
    )
    .await;
    raw.login(&srv.user).await;
    assert_eq!(srv.granted.auths.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_refuses_a_host_key_that_is_not_pinned() {
    let srv = server(Settings::default()).await;
    let mut opts = srv.options();
    opts.host_key = "SHA256:somethingelse".into();
    let s = TcpStream::connect(srv.addr).await.unwrap();
    let err = client::connect(s, &opts, NoForwards)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("host key mismatch"), "{err}");
    assert!(srv.granted.nothing());
    let _ = &srv.host;
}

#[tokio::test]
async fn openssh_follows_rekeys_the_server_starts_in_every_cipher() {
    let dir = tempfile::tempdir().unwrap();
    for alg in CipherAlg::ALL {
        let settings = Settings {
            rekey_bytes: 512 * 1024,
            ..Settings::default()
        };
        let srv = server(settings).await;
        let key_path = dir.path().join(format!("user-{}", alg.name()));
        crate::ssh::keys::write_pair(&srv.user, &key_path, "test").unwrap();
        let known = dir.path().join(format!("known-{}", alg.name()));
        std::fs::write(&known, format!("{}\n", known_line(&srv))).unwrap();
        let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
        let mut child = tokio::process::Command::new("ssh")
            .args([
                "-F",
                "/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "IdentitiesOnly=yes",
            ])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .arg("-o")
            .arg(format!("Ciphers={}", alg.name()))
            .arg("-i")
            .arg(&key_path)
            .args(["-W", "echo:1", "-p"])
            .arg(srv.addr.port().to_string())
            .arg("u@127.0.0.1")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            stdin.write_all(&sent).await.unwrap();
            // Keep stdin open: ssh -W would close the channel on EOF.
            stdin
        });
        let mut stdout = child.stdout.take().unwrap();
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(WAIT, stdout.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert!(back == data, "{alg:?}: echo differs");
        let tx = srv.granted.tx.lock().unwrap().clone().unwrap();
        let kexes = *tx.ctl.kexes.borrow();
        // 8 MB at 512 KiB would be 15 rekeys if none overlapped the data;
        // bytes that pass while a key exchange runs do not count toward the
        // next one, so a loaded machine sees fewer (7 seen under the full
        // suite): several, each followed by OpenSSH, is what this shows.
        assert!(
            kexes >= 4,
            "{alg:?}: only {kexes} key exchanges for 8 MB at 512 KiB"
        );
        drop(writer);
        let _ = child.kill().await;
    }
}

#[tokio::test]
async fn a_quiet_connection_rekeys_when_the_time_limit_passes() {
    let settings = Settings {
        rekey_time: Duration::from_millis(200),
        ..Settings::default()
    };
    let srv = server(settings).await;
    let conn = srv.client(Settings::default()).await;
    let tx = srv.granted.tx.lock().unwrap().clone().unwrap();
    let mut kexes = tx.ctl.kexes.subscribe();
    // Nothing is sent: only the timer can start these key exchanges.
    tokio::time::timeout(WAIT, kexes.wait_for(|n| *n >= 4))
        .await
        .expect("rekeys by time")
        .unwrap();
    let out = conn.exec("still").await.unwrap();
    assert_eq!(out.stdout, b"ran still");
}

#[tokio::test]
async fn warren_client_and_server_negotiate_mlkem768x25519_first() {
    let srv = server(Settings::default()).await;
    let conn = srv.client(Settings::default()).await;
    assert_eq!(echo(&conn, b"pq").await, b"pq");
    let tx = srv.granted.tx.lock().unwrap().clone().unwrap();
    assert_eq!(*tx.ctl.kex_alg.borrow(), Some("mlkem768x25519-sha256"));
    drop(conn);
    // A client that only knows curve25519-sha256 (older Warren) still works,
    // and a rekey under the hybrid works too.
    for (client_kex, want) in [
        (vec![KexAlg::Curve25519], "curve25519-sha256"),
        (
            vec![KexAlg::Curve25519Libssh],
            "curve25519-sha256@libssh.org",
        ),
        (vec![KexAlg::Mlkem768X25519], "mlkem768x25519-sha256"),
    ] {
        let srv = server(Settings::default()).await;
        let conn = srv
            .client(Settings {
                kex: client_kex,
                rekey_bytes: 200_000,
                ..Settings::default()
            })
            .await;
        let data = vec![7u8; 1_000_000];
        assert!(echo(&conn, &data).await == data, "{want}");
        let tx = srv.granted.tx.lock().unwrap().clone().unwrap();
        assert_eq!(*tx.ctl.kex_alg.borrow(), Some(want));
        assert!(*tx.ctl.kexes.borrow() >= 3, "{want}: rekeys happened");
    }
}

#[tokio::test]
async fn a_server_without_the_clients_kex_refuses_with_the_offer() {
    let mut srv = server(Settings {
        kex: vec![KexAlg::Mlkem768X25519],
        ..Settings::default()
    })
    .await;
    let ended = kexinit_then_end(&mut srv, &client_kexinit("curve25519-sha256", "none")).await;
    assert!(
        matches!(&ended, mux::Ended::Local(t) if t.contains("no common key exchange") && t.contains("curve25519-sha256")),
        "{ended:?}"
    );
}

#[tokio::test]
async fn a_peer_offering_only_compression_is_refused_by_name() {
    let mut srv = server(Settings::default()).await;
    let ended = kexinit_then_end(
        &mut srv,
        &client_kexinit("curve25519-sha256", "zlib@openssh.com"),
    )
    .await;
    assert!(
        matches!(&ended, mux::Ended::Local(t) if t.contains("compression") && t.contains("zlib@openssh.com")),
        "{ended:?}"
    );
    assert!(srv.granted.nothing());
}

#[tokio::test]
async fn strict_kex_can_be_required() {
    let mut srv = server(Settings {
        require_strict_kex: true,
        ..Settings::default()
    })
    .await;
    // No kex-strict-c-v00@openssh.com in the client's list.
    let ended = kexinit_then_end(&mut srv, &client_kexinit("curve25519-sha256", "none")).await;
    assert!(
        matches!(&ended, mux::Ended::Local(t) if t.contains("strict key exchange required")),
        "{ended:?}"
    );
    assert!(srv.granted.nothing());
    // A client that offers it logs in as usual.
    let mut raw = Raw::connect(srv.addr, true, None).await;
    raw.login(&srv.user).await;
    assert_eq!(srv.granted.auths.load(Ordering::SeqCst), 1);
    // And Warren's client, told to require it, refuses a server without it.
    let srv = server(Settings::default()).await;
    let s = TcpStream::connect(srv.addr).await.unwrap();
    let plain = client::connect_with(
        s,
        &srv.options(),
        NoForwards,
        Settings {
            require_strict_kex: true,
            ..Settings::default()
        },
    )
    .await;
    assert!(plain.is_ok(), "Warren's server offers strict kex");
}

#[tokio::test]
async fn replies_held_back_by_a_rekey_stop_reading_and_the_rekey_has_a_deadline() {
    let mut srv = server(Settings {
        rekey_bytes: 2000,
        kex_timeout: Duration::from_secs(5),
        ..Settings::default()
    })
    .await;
    let mut raw = Raw::connect(srv.addr, true, None).await;
    let server_tx = srv.conns.recv().await.unwrap();
    raw.login(&srv.user).await;
    // Sealed ahead (sealing is slow in a debug build, and the rekey's
    // deadline runs): past the byte limit, so the server starts a rekey,
    // which we never answer; then requests whose replies must wait for it.
    let ignore = Writer::new(msg::IGNORE).string([0u8; 2000]).finish();
    let request = Writer::new(msg::GLOBAL_REQUEST)
        .string("x")
        .bool(true)
        .finish();
    let mut first = Vec::new();
    raw.seal
        .seal(raw.seq_out, &ignore[..1], &ignore[1..], &mut first);
    raw.seq_out = raw.seq_out.wrapping_add(1);
    let mut out = Vec::new();
    for _ in 0..300_000 {
        raw.seal
            .seal(raw.seq_out, &request[..1], &request[1..], &mut out);
        raw.seq_out = raw.seq_out.wrapping_add(1);
    }
    raw.s.write_all(&first).await.unwrap();
    assert_eq!(raw.recv().await.unwrap()[0], msg::KEXINIT);
    let mut s = raw.s;
    let writer = tokio::spawn(async move {
        let _ = s.write_all(&out).await;
        s
    });
    let ended = srv.ended().await;
    assert!(
        matches!(&ended, mux::Ended::Local(t) if t.contains("key exchange not finished")),
        "{ended:?}"
    );
    // Reading stops at the limit; what one read had already brought in
    // (up to READ_MAX bytes of 36-byte requests, each reply held back as
    // 65 bytes) still gets handled. Without the limit: all 300,000.
    let peak = *server_tx.ctl.deferred_peak.borrow();
    assert!(
        peak <= conn::READ_STOP + 4 * conn::READ_MAX,
        "{peak} bytes of replies held back"
    );
    eprintln!("held back at most {peak} bytes");
    writer.abort();
}

#[tokio::test]
async fn a_sequence_number_never_wraps_under_one_key() {
    // A peer that sends more packets than one key may protect, without a
    // rekey, is cut off (the limit is lowered from 2^32 here).
    let mut srv = server(Settings {
        packets_per_key: 50,
        ..Settings::default()
    })
    .await;
    let mut raw = Raw::connect(srv.addr, true, None).await;
    raw.login(&srv.user).await;
    let ignore = Writer::new(msg::IGNORE).string("").finish();
    let mut out = Vec::new();
    for _ in 0..100 {
        raw.seal
            .seal(raw.seq_out, &ignore[..1], &ignore[1..], &mut out);
        raw.seq_out = raw.seq_out.wrapping_add(1);
    }
    let _ = raw.s.write_all(&out).await;
    raw.hung_up().await;
    let ended = srv.ended().await;
    assert!(
        matches!(&ended, mux::Ended::Local(t) if t.contains("would wrap")),
        "{ended:?}"
    );
    // Peers that rekey in time (at half the limit) go on indefinitely.
    let settings = Settings {
        packets_per_key: 60,
        ..Settings::default()
    };
    let srv = server(settings.clone()).await;
    let conn = srv.client(settings).await;
    for i in 0..30 {
        let out = conn.exec(&format!("n{i}")).await.unwrap();
        assert_eq!(out.stdout, format!("ran n{i}").into_bytes());
    }
    let tx = srv.granted.tx.lock().unwrap().clone().unwrap();
    assert!(*tx.ctl.kexes.borrow() >= 3);
}
