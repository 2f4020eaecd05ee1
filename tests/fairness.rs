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
