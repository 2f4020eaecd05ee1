//! Channels: windows, packet sizes, EOF and exit status, slow readers.

use super::*;

#[tokio::test]
async fn a_slow_reader_stops_only_its_own_channel() {
    let srv = server(Settings::default()).await;
    let conn = srv.client(Settings::default()).await;
    // A channel that sends 64 MiB and is never read.
    let stuck = conn.open("source", 1).await.unwrap();
    // Wait until its window is used up.
    tokio::time::timeout(WAIT, mux::buffered_at_least(WINDOW as usize))
        .await
        .expect("the source fills its window");
    for i in 0..10 {
        let started = Instant::now();
        let back = echo(&conn, format!("ping {i}").as_bytes()).await;
        assert_eq!(back, format!("ping {i}").as_bytes());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "echo {i} took {:?}",
            started.elapsed()
        );
    }
    let buffered = mux::buffered_bytes();
    assert!(
        buffered <= WINDOW as usize + 64 * 1024,
        "{buffered} bytes buffered for a window of {WINDOW}"
    );
    // Reading the slow channel now gets everything, in order.
    let mut total = 0usize;
    let h = stuck.handle();
    while let Some(m) = tokio::time::timeout(WAIT, h.recv()).await.unwrap() {
        match m {
            In::Data(d) => total += d.len(),
            In::Eof => break,
            _ => {}
        }
    }
    assert_eq!(total, 64 * 1024 * 1024);
}

#[tokio::test]
async fn a_window_violation_ends_the_connection() {
    let mut srv = server(Settings::default()).await;
    let mut raw = Raw::connect(srv.addr, true, None).await;
    raw.login(&srv.user).await;
    let open = Writer::new(msg::CHANNEL_OPEN)
        .string("direct-tcpip")
        .u32(5)
        .u32(0) // we grant the server nothing, so nothing is echoed
        .u32(32768)
        .string("echo")
        .u32(1)
        .string("127.0.0.1")
        .u32(1)
        .finish();
    raw.send(&open).await;
    let conf = raw.recv().await.unwrap();
    assert_eq!(conf[0], msg::CHANNEL_OPEN_CONFIRMATION);
    let mut r = Reader::new(&conf[1..]);
    let (_, id, window) = (r.u32().unwrap(), r.u32().unwrap(), r.u32().unwrap());
    assert_eq!(window, WINDOW);
    let chunk = vec![1u8; 32768];
    let mut sent = 0u32;
    while sent <= window {
        raw.send(
            &Writer::new(msg::CHANNEL_DATA)
                .u32(id)
                .string(&chunk)
                .finish(),
        )
        .await;
        sent += chunk.len() as u32;
    }
    raw.hung_up().await;
    assert!(matches!(srv.ended().await, mux::Ended::Local(t) if t.contains("window")));
}

#[tokio::test]
async fn exec_output_larger_than_the_window_arrives_whole() {
    let srv = server(Settings::default()).await;
    let conn = srv.client(Settings::default()).await;
    let out = tokio::time::timeout(WAIT, conn.exec("big"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (out.stdout.len(), out.stderr.len(), out.status),
        (5 << 20, 3 << 20, 0)
    );
}

#[tokio::test]
async fn a_channel_opener_sets_the_packet_size_the_peer_sends() {
    // The relay opens a device's channel asking for packets no larger than
    // the controller takes, so that each one can be passed on whole.
    let mut srv = server(Settings::default()).await;
    let (tx, mut forwarded) = tokio::sync::mpsc::unbounded_channel();
    let s = TcpStream::connect(srv.addr).await.unwrap();
    let _conn = client::connect_with(s, &srv.options(), Capture(tx), Settings::default())
        .await
        .unwrap();
    let server_side = tokio::time::timeout(WAIT, srv.conns.recv())
        .await
        .unwrap()
        .unwrap();
    let extra = Writer::default()
        .string("127.0.0.1")
        .u32(22)
        .string("127.0.0.1")
        .u32(1)
        .finish();
    let opening = tokio::spawn(async move {
        server_side
            .open("forwarded-tcpip", extra, 20_000)
            .await
            .unwrap()
    });
    let incoming = tokio::time::timeout(WAIT, forwarded.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(incoming.peer_max_packet(), 20_000);
    let device = incoming.accept().await;
    let relay = tokio::time::timeout(WAIT, opening).await.unwrap().unwrap();
    let sent = vec![9u8; 100_000];
    let data = sent.clone();
    tokio::spawn(async move {
        device
            .handle()
            .send(Bytes::from(data), false)
            .await
            .unwrap();
        device.handle().eof();
        // Keep the channel open until the reader is done.
        std::future::pending::<()>().await;
    });
    let mut got = Vec::new();
    while got.len() < sent.len() {
        match tokio::time::timeout(WAIT, relay.recv()).await.unwrap() {
            Some(In::Data(d)) => {
                assert!(d.len() <= 20_000, "a {}-byte packet", d.len());
                got.extend_from_slice(&d);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(got, sent);
}

#[tokio::test]
async fn data_a_reader_leaves_waiting_lets_go_of_its_read_buffers() {
    let mut srv = server(Settings {
        unpin_after: Duration::from_secs(1),
        ..Settings::default()
    })
    .await;
    let conn = srv.client(Settings::default()).await;
    let server_tx = srv.conns.recv().await.unwrap();
    let mut rounds = server_tx.ctl.unpins.subscribe();
    // Channel `a` stays open; the client closes `b` once its data waits.
    let a: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 241) as u8).collect();
    let b: Vec<u8> = (0..192 * 1024u32).map(|i| (i % 239) as u8).collect();
    let mut ends = Vec::new();
    for data in [&a, &b] {
        let ch = conn.open("hold", 1).await.unwrap();
        let (mut near, far) = tokio::io::duplex(64 * 1024);
        let (fr, fw) = tokio::io::split(far);
        let splice = tokio::spawn(ch.splice_io(fr, fw));
        near.write_all(data).await.unwrap();
        ends.push((splice, near));
    }
    // Unpin rounds run while data waits; look after each one.
    let deadline = Instant::now() + WAIT;
    while held(a.len()).is_none() || held(b.len()).is_none() {
        assert!(Instant::now() < deadline, "the data never arrived");
        let _ = tokio::time::timeout(WAIT, rounds.changed()).await;
    }
    // The last packets arrived after the last round, so they still point
    // into the read buffers they came in.
    assert!(held(a.len()).is_some_and(|(pinned, _)| pinned > 0));
    assert!(held(b.len()).is_some_and(|(pinned, _)| pinned > 0));
    // Dropping the client's channel closes it; the server forgets the
    // channel while its data still waits for the reader.
    ends[1].0.abort();
    while held(a.len()) != Some((0, false)) || held(b.len()) != Some((0, true)) {
        assert!(
            Instant::now() < deadline,
            "queued data stayed pinned: open {:?}, closed {:?}",
            held(a.len()),
            held(b.len())
        );
        let _ = tokio::time::timeout(WAIT, rounds.changed()).await;
    }
    assert!(
        take_held(a.len()).await == a,
        "the copies hold the data sent"
    );
    assert!(
        take_held(b.len()).await == b,
        "the copies hold the data sent"
    );
}

#[tokio::test]
async fn a_second_eof_on_a_channel_ends_the_connection() {
    let mut srv = server(Settings::default()).await;
    let mut raw = Raw::connect(srv.addr, true, None).await;
    raw.login(&srv.user).await;
    let conf = raw_open(&mut raw, "session", "", 32768).await;
    assert_eq!(conf[0], msg::CHANNEL_OPEN_CONFIRMATION);
    let id = Reader::new(&conf[5..]).u32().unwrap();
    for _ in 0..2 {
        raw.send(&Writer::new(msg::CHANNEL_EOF).u32(id).finish())
            .await;
    }
    raw.hung_up().await;
    assert!(matches!(srv.ended().await, mux::Ended::Local(t) if t.contains("second CHANNEL_EOF")));
}

#[tokio::test]
async fn a_second_exit_status_ends_the_connection() {
    let mut srv = server(Settings::default()).await;
    let conn = srv.client(Settings::default()).await;
    let server_tx = tokio::time::timeout(WAIT, srv.conns.recv())
        .await
        .unwrap()
        .unwrap();
    let ch = conn.open("hold", 1).await.unwrap();
    let id = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(h) = HELD.lock().unwrap().last() {
                break h.id;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    // The server side says the exit status twice (a relay a client
    // should not trust could, as often as it likes).
    for status in [1, 2] {
        server_tx.send(mux::Cmd::ExitStatus { id, status });
    }
    assert!(
        matches!(srv.ended().await, mux::Ended::PeerSaid(t) if t.contains("second exit status"))
    );
    drop(ch);
}

#[tokio::test]
async fn data_is_checked_against_the_packet_size_announced_for_its_channel() {
    let mut srv = server(Settings::default()).await;
    let mut raw = Raw::connect(srv.addr, true, None).await;
    let (opened, id) = raw_accepts_forward(&mut srv, &mut raw, 20_000, 32768).await;
    let ch = opened.unwrap();
    let data = |n: usize| {
        Writer::new(msg::CHANNEL_DATA)
            .u32(id)
            .string(vec![1u8; n])
            .finish()
    };
    raw.send(&data(20_000)).await;
    match tokio::time::timeout(WAIT, ch.recv()).await.unwrap() {
        Some(In::Data(d)) => assert_eq!(d.len(), 20_000),
        other => panic!("expected data, got {other:?}"),
    }
    // Below the global limit (64 KiB), above this channel's.
    raw.send(&data(30_000)).await;
    raw.hung_up().await;
    let ended = srv.ended().await;
    assert!(
        matches!(&ended, mux::Ended::Local(t) if t.contains("20000 announced")),
        "{ended:?}"
    );
}

/// A peer's refusal reaches the opener with its reason code, so that a
/// Warren relay can tell "not here" (a private code) from any other answer.
#[tokio::test]
async fn a_refusal_reaches_the_opener_with_its_reason_code() {
    use crate::ssh::RefusalKind;
    use crate::ssh::proto::wire::open_failure;
    let mut srv = server(Settings::default()).await;
    let mut raw = Raw::connect(srv.addr, true, None).await;
    let (opening, id) = raw_receives_forward(&mut srv, &mut raw, 32768).await;
    raw.send(
        &Writer::new(msg::CHANNEL_OPEN_FAILURE)
            .u32(id)
            .u32(open_failure::NOT_HERE)
            .string("device dev1 is not connected to this relay")
            .string("")
            .finish(),
    )
    .await;
    let err = tokio::time::timeout(WAIT, opening)
        .await
        .unwrap()
        .unwrap()
        .err()
        .expect("refused");
    assert_eq!(err.code, Some(open_failure::NOT_HERE));
    assert_eq!(err.text, "device dev1 is not connected to this relay");
    assert_eq!(
        err.code.and_then(RefusalKind::from_code),
        Some(RefusalKind::NotHere)
    );
    assert_eq!(
        RefusalKind::from_code(open_failure::CONNECT_FAILED),
        Some(RefusalKind::ConnectFailed)
    );
    assert_eq!(RefusalKind::from_code(0xFE00_0002), None);
}

#[tokio::test]
async fn a_peer_announcing_packets_below_1_kib_is_refused() {
    let mut srv = server(Settings::default()).await;
    let mut raw = Raw::connect(srv.addr, true, None).await;
    let _first = srv.conns.recv().await.unwrap();
    raw.login(&srv.user).await;
    // Opening: refused, and nothing reaches the application.
    let reply = raw_open(&mut raw, "direct-tcpip", "echo", 100).await;
    assert_eq!(reply[0], msg::CHANNEL_OPEN_FAILURE);
    assert_eq!(srv.granted.opens.load(Ordering::SeqCst), 0);
    let reply = raw_open(&mut raw, "session", "", 0).await;
    assert_eq!(reply[0], msg::CHANNEL_OPEN_FAILURE);
    // 1 KiB is enough.
    let reply = raw_open(&mut raw, "direct-tcpip", "echo", 1024).await;
    assert_eq!(reply[0], msg::CHANNEL_OPEN_CONFIRMATION);

    // Confirming: the opener hears why, and the channel is closed.
    let mut raw = Raw::connect(srv.addr, true, None).await;
    let (opened, id) = raw_accepts_forward(&mut srv, &mut raw, 32768, 100).await;
    let err = opened.err().expect("a 100-byte packet size is refused");
    assert!(err.text.contains("maximum packet size"), "{err}");
    assert_eq!(err.code, None, "our own refusal, not the peer's");
    let close = raw.recv().await.unwrap();
    assert_eq!(close[0], msg::CHANNEL_CLOSE);
    assert_eq!(Reader::new(&close[1..]).u32().unwrap(), 7);
    let _ = id;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_spliced_to_tcp_keeps_every_byte_in_order() {
    let srv = server(Settings::default()).await;
    let conn = srv.client(Settings::default()).await;
    let ch = conn.open("echo", 1).await.unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // A small receive buffer, so that during the burst below the splice's
    // socket is often full: writes then take part of the data, or none,
    // and the rest waits in the queue.
    let near = tokio::net::TcpSocket::new_v4().unwrap();
    near.set_recv_buffer_size(4096).unwrap();
    let near = near.connect(listener.local_addr().unwrap()).await.unwrap();
    let (far, _) = listener.accept().await.unwrap();
    let splice = tokio::spawn(ch.splice_tcp(far));
    let (mut r, mut w) = near.into_split();
    // Round trips: each echo finds the splice waiting (the direct path).
    let mut total = 0;
    for i in 0..300usize {
        let msg = vec![(i % 251) as u8; 1 + i * 13 % 700];
        w.write_all(&msg).await.unwrap();
        let mut back = vec![0; msg.len()];
        tokio::time::timeout(WAIT, r.read_exact(&mut back))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(back, msg, "round trip {i}");
        total += msg.len();
    }
    // A burst, read back as it comes (the reader's small buffer lags).
    let burst: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 253) as u8).collect();
    total += burst.len();
    let sent = burst.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), r.read_to_end(&mut back))
        .await
        .expect("the burst came back, and then the end of the stream")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), burst.len());
    assert!(back == burst, "the burst came back out of order");
    let stats = tokio::time::timeout(WAIT, splice).await.unwrap().unwrap();
    assert_eq!((stats.sent, stats.received), (total as u64, total as u64));
    // The round trips' echoes found the splice waiting, so the connection
    // wrote them itself; the burst's bytes went both ways.
    assert!(stats.bypassed > 0, "the direct path was never taken");
    assert!(stats.bypassed < stats.sent, "the splice never wrote");
}
