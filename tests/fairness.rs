//! The fair share between systems on the relay (`ssh::fair`): while one
//! system moves bulk data over many connections, its connections take
//! turns in its share (as many as the relay's workers), and another
//! system's interactive connection never takes or waits for a turn; while
//! that system is active, the bulk system keeps one of its turns back. The
//! test counts turns; it times nothing.

mod common;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use warren::protocol::Role;
use warren::ssh::client::{ClientConnection, NoForwards};

/// A service that sends `len` bytes to whoever connects, then closes.
async fn source(len: usize) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let chunk = pseudo_random(64 * 1024);
                for _ in 0..len / chunk.len() {
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// System `tau` with a device serving `len` bytes to whoever connects, and
/// `n` controllers logged in.
struct Bulk {
    _dev1: TestAgent,
    port: u16,
    len: usize,
    controllers: Vec<ClientConnection<NoForwards>>,
}

impl Bulk {
    async fn start(r: &TestRelay, len: usize, n: usize) -> Bulk {
        r.add_system("tau");
        let port = source(len).await;
        let _dev1 = r
            .device("tau", "dev1", &[format!("127.0.0.1:{port}")])
            .await;
        let key = r.add_key("tau", Role::Controller, "alice");
        let mut controllers = Vec::new();
        for _ in 0..n {
            controllers.push(r.controller("tau", key.clone()).await);
        }
        Bulk {
            _dev1,
            port,
            len,
            controllers,
        }
    }

    /// Every controller downloads the device's bytes at once; each must
    /// get all of them in time.
    async fn download(&self) {
        let port = u32::from(self.port);
        let all = futures_util::future::join_all(self.controllers.iter().map(|c| async move {
            let ch = c.open("dev1", port).await.unwrap();
            let mut got = 0;
            while let Some(d) = ch.recv_data().await {
                got += d.len();
            }
            got
        }));
        let got = tokio::time::timeout(WAIT * 2, all)
            .await
            .expect("downloads in time");
        assert!(got.iter().all(|&g| g == self.len), "{got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_connections_take_turns_and_another_systems_messages_never_wait() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    r.add_system("rho");
    let len = 8 * 1024 * 1024;
    let port = source(len).await;
    let _dev1 = r
        .device("tau", "dev1", &[format!("127.0.0.1:{port}")])
        .await;
    let (_vdev, echo) = r.echo_device("rho", "vdev").await;
    let key = r.add_key("tau", Role::Controller, "alice");
    let mut bulk = Vec::new();
    for _ in 0..8 {
        bulk.push(r.controller("tau", key.clone()).await);
    }
    let carol = r
        .controller("rho", r.add_key("rho", Role::Controller, "carol"))
        .await;
    let tau = r.relay.shares().share(&name("tau"));
    let rho = r.relay.shares().share(&name("rho"));
    assert_eq!(tau.size(), 2, "a turn per worker of the relay's runtime");

    let downloads = bulk.iter().map(|c| async move {
        let ch = c.open("dev1", u32::from(port)).await.unwrap();
        let mut got = 0;
        while let Some(d) = ch.recv_data().await {
            got += d.len();
        }
        got
    });
    let downloads = futures_util::future::join_all(downloads);
    let pings = async {
        let ch = carol.open("vdev", u32::from(echo)).await.unwrap();
        let mut rounds = 0;
        for i in 0..200u8 {
            assert!(ch.send_data(vec![i; 64]).await);
            let mut back = 0;
            while back < 64 {
                back += ch.recv_data().await.expect("echo").len();
            }
            rounds += 1;
            assert!(tau.held() <= tau.size());
        }
        rounds
    };
    let (got, rounds) = tokio::time::timeout(WAIT * 2, async { tokio::join!(downloads, pings) })
        .await
        .expect("transfers in time");
    assert!(got.iter().all(|&g| g == len), "{got:?}");
    assert_eq!(rounds, 200);
    let (taken, waited) = tau.counts();
    assert!(taken > 0, "tau's bulk connections took no turns");
    eprintln!("tau: {taken} turns taken, {waited} of them waited");
    assert_eq!(rho.counts(), (0, 0), "rho's small messages took turns");
    // While rho was active, tau's bulk work kept one of its two turns back,
    // so one worker stayed free for rho's messages.
    assert!(tau.kept_back() > 0, "tau kept no turn back for rho");
    assert_eq!(rho.kept_back(), 0, "rho moved no bulk");
}

/// The threads of the test's own runtime (other tests of this binary may
/// run beside it under `cargo test`).
const THREADS: &str = "nice-test";

/// The nice value of every thread of the test's runtime, by thread id.
fn nice_values() -> Vec<(u32, i32)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue; // a thread that ended
        };
        if !stat.contains(&format!("({THREADS})")) {
            continue;
        }
        // After the command name (in parentheses): state is field 3, nice 19.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let nice = rest.split(' ').nth(16).unwrap().parse().unwrap();
        out.push((t.file_name().to_str().unwrap().parse().unwrap(), nice));
    }
    out
}

/// While another system is active, the threads doing a bulk system's
/// slices run nicer by the step (`warren relay --bulk-nice`), and every
/// thread is back at its own value once the work ends; with the other
/// system quiet, nothing runs nicer.
#[test]
fn bulk_slices_run_nicer_while_another_system_is_active_and_only_then() {
    const STEP: i32 = 7;
    warren::ssh::nice::set(STEP).expect("the tests run as root");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name(THREADS)
        .on_thread_start(warren::ssh::nice::on_thread_start)
        .build()
        .unwrap();
    // A thread that samples every thread's nice value until told to stop.
    let sample = || {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let seen = std::thread::spawn(move || {
            let mut most = 0;
            let mut samples = 0u64;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                most = nice_values().iter().map(|&(_, n)| n).fold(most, i32::max);
                samples += 1;
            }
            (most, samples)
        });
        (stop, seen)
    };
    rt.block_on(async {
        let r = TestRelay::start().await;
        let bulk = Bulk::start(&r, 16 * 1024 * 1024, 4).await;
        r.add_system("rho");

        // tau alone: rho has no connection yet, so nothing runs nicer.
        let (stop, seen) = sample();
        bulk.download().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (most, samples) = seen.join().unwrap();
        assert!(samples > 10, "{samples} samples");
        assert_eq!(most, 0, "a thread ran nicer while tau was alone");

        // tau's downloads while rho's messages go back and forth.
        let (_vdev, echo) = r.echo_device("rho", "vdev").await;
        let carol = r
            .controller("rho", r.add_key("rho", Role::Controller, "carol"))
            .await;
        let ch = carol.open("vdev", u32::from(echo)).await.unwrap();
        let (stop, seen) = sample();
        let pings = async {
            loop {
                assert!(ch.send_data(vec![7; 64]).await);
                let mut back = 0;
                while back < 64 {
                    back += ch.recv_data().await.expect("echo").len();
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
        };
        tokio::select! {
            () = bulk.download() => {}
            _ = pings => unreachable!(),
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let (most, _) = seen.join().unwrap();
        assert_eq!(
            most, STEP,
            "no thread ran tau's slices nicer while rho was active"
        );
        // Every thread is back at its own value (0) once the work ends.
        tokio::time::timeout(WAIT, async {
            while nice_values().iter().any(|&(_, n)| n != 0) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("threads left nicer: {:?}", nice_values()));
    });
    warren::ssh::nice::set(0).unwrap();
}

/// Only channel data makes a system active: while another system's
/// connections log in and open a channel but move nothing, the bulk system
/// keeps all its turns; once data crosses, it keeps one back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_that_moves_no_data_does_not_hold_back_the_bulk_one() {
    let r = TestRelay::start().await;
    let bulk = Bulk::start(&r, 8 * 1024 * 1024, 4).await;
    r.add_system("rho");
    let tau = r.relay.shares().share(&name("tau"));
    // rho: a device registered, a controller logged in and a channel open,
    // all just now, and not a byte of data.
    let (_vdev, echo) = r.echo_device("rho", "vdev").await;
    let carol = r
        .controller("rho", r.add_key("rho", Role::Controller, "carol"))
        .await;
    let ch = carol.open("vdev", u32::from(echo)).await.unwrap();
    bulk.download().await;
    assert!(tau.counts().0 > 0, "tau's bulk connections took no turns");
    assert_eq!(tau.kept_back(), 0, "rho moved no data, yet tau held back");
    // One message through rho's channel: now rho is active.
    assert!(ch.send_data(vec![1; 64]).await);
    let mut back = 0;
    while back < 64 {
        back += ch.recv_data().await.expect("echo").len();
    }
    bulk.download().await;
    assert!(tau.kept_back() > 0, "rho's data did not make tau hold back");
}
