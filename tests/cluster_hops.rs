//! Hops between relays of a cluster on one real PostgreSQL database
//! (tests/common/postgres.rs), as the relay asked finds them: relay A (in
//! this process) knows from the claims it received which relay holds a
//! device, and opens the hop without asking the store; when that relay is
//! killed (`kill -9`, a process of its own) and the device registers on a
//! third relay, A follows the new claim and reaches the device there on the
//! first try. (`tests/cluster_stale.rs`: when A's claims are behind.)

mod common;

use common::postgres::{ThreeRelays, until_held_by};
use common::{connect_to, echo_through};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_a_hops_to_the_holder_without_a_query_and_follows_a_device_to_a_survivor_at_once() {
    let ThreeRelays {
        pg: _pg,
        url: _url,
        a,
        first: (mut b, _),
        second: (c, c_id),
        alice,
        port,
        mut agent,
        dirs: _dirs,
    } = ThreeRelays::start().await;
    let pga = a.store().postgres().unwrap();
    let queries = pga.holder_queries();
    let metrics = warren::metrics::global();
    let (lookups, _) = metrics.hop_phase_total("lookup");
    let conn = connect_to(&a.addr.to_string(), &a.host_key(), "tau", alice.clone())
        .await
        .unwrap();
    let back = echo_through(&conn, "dev1", port, b"through B")
        .await
        .unwrap();
    assert_eq!(back, b"through B");
    assert_eq!(pga.holder_queries(), queries, "A asked the store for B");
    assert_eq!(metrics.hop_phase_total("lookup").0, lookups + 1, "one hop");
    assert_eq!(metrics.hop_phase_total("open").0, lookups + 1, "timed open");

    b.kill_9().await;
    agent.offline().await;
    agent.online().await;
    // C's claim reaches A: the next stream goes through C, first try.
    until_held_by(&a, &c_id).await;
    let back = echo_through(&conn, "dev1", port, b"through C")
        .await
        .unwrap();
    assert_eq!(back, b"through C");
    assert_eq!(pga.holder_queries(), queries, "A asked the store for C");
    drop(c);
}
