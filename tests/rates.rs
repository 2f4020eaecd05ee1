//! Bandwidth limits per system and per device: a limited system's streams
//! get its rate each way (within 5%), a device's limit holds inside its
//! system's, clearing a limit speeds up live streams at once, and bad rates
//! are refused clearly. Rates are measured over megabytes, never timed with
//! sleeps: the relay paces, the test only reads a clock.

mod common;

use std::time::Instant;

use common::cli::{p, warren};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use warren::protocol::rate::Rate;
use warren::protocol::{DeviceId, Role};
use warren::ssh::client::{ClientConnection, NoForwards};

/// Allowed error of a measured rate against its limit.
const TOLERANCE: f64 = 0.05;

/// A service that sends `len` bytes to whoever connects, then closes.
async fn source(len: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let chunk = pseudo_random(64 * 1024);
                let mut left = len;
                while left > 0 {
                    let n = left.min(chunk.len());
                    if s.write_all(&chunk[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// A service that reads until EOF and answers `BYTES SECONDS`: the bytes
/// it got and the time from the first to the last.
async fn sink() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 256 * 1024];
                let (mut got, mut first, mut last) = (0u64, None, Instant::now());
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            first.get_or_insert_with(Instant::now);
                            last = Instant::now();
                            got += n as u64;
                        }
                    }
                }
                let secs = first.map_or(0.0, |f| (last - f).as_secs_f64());
                let _ = s.write_all(format!("{got} {secs}").as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// Bytes per second of a transfer: what came after the first packet, over
/// the time from the first packet to the last.
fn rate_of(bytes: u64, first_packet: u64, secs: f64) -> f64 {
    assert!(secs > 0.0, "the transfer took no time");
    (bytes - first_packet) as f64 / secs
}

/// Downloads everything `dev:port` sends: (bytes, bytes per second).
async fn download(conn: &ClientConnection<NoForwards>, dev: &str, port: u16) -> (u64, f64) {
    let ch = conn.open(dev, u32::from(port)).await.unwrap();
    let (mut got, mut first, mut first_len, mut last) = (0u64, None, 0u64, Instant::now());
    let read_all = async {
        while let Some(d) = ch.recv_data().await {
            if first.is_none() {
                first = Some(Instant::now());
                first_len = d.len() as u64;
            }
            last = Instant::now();
            got += d.len() as u64;
        }
    };
    tokio::time::timeout(WAIT, read_all)
        .await
        .expect("download within the time limit");
    let secs = (last - first.expect("some data")).as_secs_f64();
    (got, rate_of(got, first_len, secs))
}

/// Uploads `len` bytes to the sink at `dev:port`: the sink's bytes per
/// second.
async fn upload(conn: &ClientConnection<NoForwards>, dev: &str, port: u16, len: usize) -> f64 {
    let ch = conn.open(dev, u32::from(port)).await.unwrap();
    let (mut near, far) = tokio::io::duplex(256 * 1024);
    let (fr, fw) = tokio::io::split(far);
    let splice = tokio::spawn(ch.splice_io(fr, fw));
    let transfer = async {
        let chunk = pseudo_random(32 * 1024);
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            near.write_all(&chunk[..n]).await.unwrap();
            left -= n;
        }
        near.shutdown().await.unwrap();
        let mut answer = String::new();
        near.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(WAIT, transfer)
        .await
        .expect("upload within the time limit");
    let _ = tokio::time::timeout(WAIT, splice).await;
    let (bytes, secs) = answer.split_once(' ').expect("BYTES SECONDS");
    let bytes: u64 = bytes.parse().unwrap();
    assert_eq!(bytes, len as u64, "every byte arrived");
    // The sink reads in pieces of up to 256 KiB; the first one is at most
    // one SSH packet (32 KiB) when the stream is paced.
    rate_of(bytes, 32 * 1024, secs.parse().unwrap())
}

fn assert_near(what: &str, got: f64, limit: u64) {
    let err = (got - limit as f64).abs() / limit as f64;
    assert!(
        err <= TOLERANCE,
        "{what}: {got:.0} B/s against a limit of {limit} B/s ({:.1}% off)",
        err * 100.0
    );
}

fn rate(bps: u64) -> Rate {
    // The smallest burst: the measurement then sees the rate, not the burst.
    Rate::with_burst(bps, 64 * 1024).unwrap()
}

/// Sets a limit as `warren admin --data` does (another process's write),
/// and waits until the running relay applies it.
async fn set_and_wait(r: &TestRelay, system: &str, device: Option<&str>, rate: Option<Rate>) {
    let store = r.admin_store();
    let (s, d) = (name(system), device.map(name));
    store.set_rate(&s, d.as_ref(), rate).unwrap();
    let bw = r.relay.bandwidth();
    let applied = || match &d {
        None => bw.system_rate(&s) == rate,
        Some(d) => bw.device_rate(&DeviceId::new(s.clone(), d.clone())) == rate,
    };
    let mut rechecks = r.relay.rechecks();
    tokio::time::timeout(WAIT, async {
        while !applied() {
            rechecks.changed().await.unwrap();
        }
    })
    .await
    .expect("the relay applies a stored limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_system_gets_its_rate_each_way() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let (down, up) = (source(4_000_000).await, sink().await);
    let allow = [format!("127.0.0.1:{down}"), format!("127.0.0.1:{up}")];
    let _dev1 = r.device("tau", "dev1", &allow).await;
    let alice = r
        .controller("tau", r.add_key("tau", Role::Controller, "alice"))
        .await;

    let limit = 2_000_000;
    set_and_wait(&r, "tau", None, Some(rate(limit))).await;
    let (bytes, got) = download(&alice, "dev1", down).await;
    assert_eq!(bytes, 4_000_000);
    assert_near("device to controller", got, limit);
    let got = upload(&alice, "dev1", up, 4_000_000).await;
    assert_near("controller to device", got, limit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_limit_holds_inside_its_system_limit() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let port = source(3_000_000).await;
    let allow = [format!("127.0.0.1:{port}")];
    let _dev1 = r.device("tau", "dev1", &allow).await;
    let _dev2 = r.device("tau", "dev2", &allow).await;
    let alice = r
        .controller("tau", r.add_key("tau", Role::Controller, "alice"))
        .await;

    set_and_wait(&r, "tau", None, Some(rate(2_000_000))).await;
    set_and_wait(&r, "tau", Some("dev1"), Some(rate(1_000_000))).await;
    // Reached by name: the route goes to that device's connection.
    let (_, slow) = download(&alice, "dev1", port).await;
    assert_near("dev1, limited to 1M in a 2M system", slow, 1_000_000);
    let (_, fast) = download(&alice, "dev2", port).await;
    assert_near("dev2, under its system's 2M", fast, 2_000_000);
    // A device limit above its system's does not lift the system's.
    set_and_wait(&r, "tau", Some("dev1"), Some(rate(8_000_000))).await;
    let (_, capped) = download(&alice, "dev1", port).await;
    assert_near("dev1, limited to 8M in a 2M system", capped, 2_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_a_limit_speeds_up_live_streams_at_once() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let total: u64 = 40_000_000;
    let port = source(total as usize).await;
    let _dev1 = r
        .device("tau", "dev1", &[format!("127.0.0.1:{port}")])
        .await;
    let alice = r
        .controller("tau", r.add_key("tau", Role::Controller, "alice"))
        .await;
    let admin = r
        .controller("tau", r.add_key("tau", Role::Admin, "root"))
        .await;

    let limit = 1_000_000;
    set_and_wait(&r, "tau", None, Some(rate(limit))).await;
    let ch = alice.open("dev1", u32::from(port)).await.unwrap();
    let mut got = 0u64;
    let mut first = None;
    // The limited part: one megabyte and a half, at the limit.
    while got < 1_500_000 {
        let d = tokio::time::timeout(WAIT, ch.recv_data())
            .await
            .unwrap()
            .unwrap();
        first.get_or_insert((Instant::now(), d.len() as u64));
        got += d.len() as u64;
    }
    let (t0, first_len) = first.unwrap();
    assert_near(
        "before clearing",
        rate_of(got, first_len, t0.elapsed().as_secs_f64()),
        limit,
    );
    // Cleared by an admin over SSH, on the same stream that is running.
    let out = admin.exec("system set tau --rate none").await.unwrap();
    assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
    let cleared = Instant::now();
    let before = got;
    while let Some(d) = tokio::time::timeout(WAIT, ch.recv_data()).await.unwrap() {
        got += d.len() as u64;
    }
    assert_eq!(got, total);
    let after = (got - before) as f64 / cleared.elapsed().as_secs_f64();
    assert!(
        after > 3.0 * limit as f64,
        "after clearing: {after:.0} B/s, hardly above the old limit of {limit}"
    );
    let e = r
        .wait_audit(&audit_of("rate_set", 10), |e| {
            e.detail.as_deref() == Some("limit cleared")
        })
        .await;
    assert_eq!(
        (e.system.as_deref(), e.key.as_deref()),
        (Some("tau"), Some("root"))
    );
}

/// A public port (`warren admin expose`) carries a relayed stream of its
/// device: the device's and its system's limits hold there too, each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_port_is_paced_by_its_device_limit() {
    let r = TestRelay::start_with(warren::relay::RelayOptions {
        public_ports: warren::relay::config::PortRanges::parse(&["1-65535"]).unwrap(),
        public_bind: Some("127.0.0.1".parse().unwrap()),
        ..Default::default()
    })
    .await;
    r.add_system("tau");
    let (down, up) = (source(3_000_000).await, sink().await);
    let allow = [format!("80=127.0.0.1:{down}"), format!("81=127.0.0.1:{up}")];
    let _dev1 = r.device("tau", "dev1", &allow).await;
    let limit = 1_500_000;
    set_and_wait(&r, "tau", Some("dev1"), Some(rate(limit))).await;
    let (pdown, pup) = (closed_port().await, closed_port().await);
    let data = r.dir.path();
    for (target, port) in [("dev1:80", pdown), ("dev1:81", pup)] {
        let port = port.to_string();
        let args = [
            "admin",
            "--data",
            p(data),
            "expose",
            target,
            "--system",
            "tau",
            "--port",
            &port,
        ];
        common::cli::warren_ok(&args.map(String::from)).await;
    }
    let mut exposed = r.relay.exposed();
    tokio::time::timeout(WAIT, async {
        while exposed.borrow_and_update().open.len() < 2 {
            exposed.changed().await.unwrap();
        }
    })
    .await
    .expect("both ports open");

    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", pdown))
        .await
        .unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let (mut got, mut first, mut last) = (0u64, None, Instant::now());
    let read_all = async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            first.get_or_insert((Instant::now(), n as u64));
            last = Instant::now();
            got += n as u64;
        }
    };
    tokio::time::timeout(WAIT, read_all)
        .await
        .expect("download in time");
    assert_eq!(got, 3_000_000);
    let (t0, first_len) = first.unwrap();
    assert_near(
        "public port, device to outside",
        rate_of(got, first_len, (last - t0).as_secs_f64()),
        limit,
    );

    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", pup))
        .await
        .unwrap();
    let chunk = pseudo_random(32 * 1024);
    let send = async {
        for _ in 0..(3_000_000 / chunk.len()) {
            s.write_all(&chunk).await.unwrap();
        }
        s.shutdown().await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let answer = tokio::time::timeout(WAIT, send)
        .await
        .expect("upload in time");
    let (bytes, secs) = answer.split_once(' ').expect("BYTES SECONDS");
    let bytes: u64 = bytes.parse().unwrap();
    assert_eq!(bytes, (3_000_000 / chunk.len() * chunk.len()) as u64);
    assert_near(
        "public port, outside to device",
        rate_of(bytes, 64 * 1024, secs.parse().unwrap()),
        limit,
    );
}

#[tokio::test]
async fn limits_are_set_listed_audited_and_bad_ones_refused() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let _dev1 = r.device("tau", "dev1", &["127.0.0.1:22".to_string()]).await;
    r.wait_status("tau", "dev1", |d| d.online).await;
    let data = r.dir.path();
    let admin = |args: &[&str]| {
        let mut all = vec!["admin", "--data", p(data)];
        all.extend_from_slice(args);
        all.into_iter().map(String::from).collect::<Vec<_>>()
    };
    for (args, says) in [
        (
            &["system", "set", "tau", "--rate", "fast"][..],
            "unknown unit",
        ),
        (&["system", "set", "tau", "--rate", "0"], "out of range"),
        (
            &["system", "set", "tau", "--rate", "500"],
            "between 1K and 100G",
        ),
        (
            &["system", "set", "tau", "--rate", "10M", "--burst", "1K"],
            "a burst must be",
        ),
        (
            &["system", "set", "nosuch", "--rate", "10M"],
            "no system nosuch",
        ),
        (
            &["device", "set", "--system", "tau", "dev9", "--rate", "1M"],
            "no device dev9 in system tau",
        ),
        (
            &["system", "set", "Bad Name", "--rate", "10M"],
            "system name",
        ),
    ] {
        let args = admin(args);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let ran = warren(&args).await;
        assert!(!ran.ok, "{args:?} succeeded");
        assert!(ran.stderr.contains(says), "{args:?}: {}", ran.stderr);
    }
    assert!(
        r.store().rates().unwrap().is_empty(),
        "a refusal changed nothing"
    );

    let out = common::cli::warren_ok(&admin(&["system", "set", "tau", "--rate", "10M"])).await;
    assert_eq!(
        out,
        "system tau: limited to 10M/s each way, live streams included\n"
    );
    common::cli::warren_ok(&admin(&[
        "device", "set", "--system", "tau", "dev1", "--rate", "512Ki", "--burst", "128Ki",
    ]))
    .await;
    let ls = common::cli::warren_ok(&admin(&["ls", "--json"])).await;
    let ls: serde_json::Value = serde_json::from_str(&ls).unwrap();
    let dev1 = &ls[0];
    assert_eq!(dev1["name"], "dev1");
    assert_eq!(dev1["rate"]["bytes_per_second"], 524_288);
    assert_eq!(dev1["rate"]["burst"], 131_072);
    assert_eq!(dev1["system_rate"]["bytes_per_second"], 10_000_000);
    let text = common::cli::warren_ok(&admin(&["ls"])).await;
    assert!(
        text.contains("512Ki/s (burst 128Ki) (system 10M/s)"),
        "{text}"
    );
    let events = r.store().audit(&audit_of("rate_set", 10)).unwrap();
    let details: Vec<_> = events.iter().map(|e| e.detail.clone().unwrap()).collect();
    assert_eq!(
        details,
        ["limit 512Ki/s (burst 128Ki)", "limit 10M/s"],
        "newest first"
    );
    assert_eq!(events[0].device.as_deref(), Some("dev1"));
    common::cli::warren_ok(&admin(&[
        "device", "set", "--system", "tau", "dev1", "--rate", "none",
    ]))
    .await;
    let rates = r.store().rates().unwrap();
    assert_eq!(rates.len(), 1, "{rates:?}");
    assert_eq!(rates[0].device, None);
}
