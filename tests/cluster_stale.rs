//! A hop when the claims relay A received are behind the store (one real
//! PostgreSQL database, tests/common/postgres.rs): they still name a relay
//! that was killed after the device's new relay claimed it. The stream
//! still goes through on the first try; the failed hop costs A one store
//! lookup. (A process of its own: `tests/cluster_hops.rs` counts the
//! process's hop metrics.)

mod common;

use common::postgres::{PgServer, ThreeRelays, until_held_by};
use common::{TestRelay, connect_to, echo_through};
use warren::ssh::client::{ClientConnection, NoForwards};

/// Alice's connection to relay A, whose first stream reaches dev1 through D.
async fn alice_on_a(r: &ThreeRelays) -> ClientConnection<NoForwards> {
    let conn = connect_to(
        &r.a.addr.to_string(),
        &r.a.host_key(),
        "tau",
        r.alice.clone(),
    )
    .await
    .unwrap();
    let back = echo_through(&conn, "dev1", r.port, b"through D")
        .await
        .unwrap();
    assert_eq!(back, b"through D");
    conn
}

/// Sends every relay a claim of dev1 by `relay`, at the epoch of the row
/// that `holder` holds: what a notification lagging behind the store would
/// leave in A's map (the one thing these tests simulate).
fn lagging_claim(pg: &PgServer, url: &str, relay: &str, holder: &str) {
    pg.psql(
        url,
        &format!(
            "SELECT pg_notify('warren_owner', json_build_object('system', system, 'name', name,
               'relay', '{relay}', 'epoch', epoch, 'online', true)::text)
             FROM devices WHERE system = 'tau' AND name = 'dev1' AND relay = '{holder}'"
        ),
    );
}

/// A stream from `conn` reaches dev1 on the first try at one store lookup,
/// and A's map then names `now`.
async fn reaches_with_one_lookup(
    a: &TestRelay,
    conn: &ClientConnection<NoForwards>,
    port: u16,
    now: &str,
) {
    let pga = a.store().postgres().unwrap();
    let queries = pga.holder_queries();
    let back = echo_through(conn, "dev1", port, b"first try")
        .await
        .expect("A's stream follows the store on the first try");
    assert_eq!(back, b"first try");
    assert_eq!(pga.holder_queries(), queries + 1, "one store lookup");
    assert_eq!(
        pga.holder_known("tau", "dev1").flatten().map(|r| r.id),
        Some(now.to_string())
    );
}

/// A device moves from relay D (killed) to relay C, and C's claim is in the
/// store; A's claims still name D (D was killed a moment ago: the registry
/// says it beats). The claim notification that would have told A is the
/// one thing simulated: the test sends A a claim of D at the store's epoch,
/// as a notification lagging behind C's would leave A's map. A stream from
/// A reaches the device through C on the first try, at the cost of one
/// store lookup, and the next one finds C without asking the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_through_relay_a_whose_claims_still_name_the_killed_relay_follows_the_store_at_once()
 {
    let mut r = ThreeRelays::start().await;
    let conn = alice_on_a(&r).await;
    let (d_id, c_id) = (r.first.1.clone(), r.second.1.clone());
    r.first.0.kill_9().await;
    // Killed a moment ago: the registry says D beats for a while yet.
    r.pg.psql(
        &r.url,
        &format!(
            "UPDATE relays SET heartbeat = extract(epoch FROM now())::bigint + 60 WHERE id = '{d_id}'"
        ),
    );
    r.agent.offline().await;
    r.agent.online().await;
    until_held_by(&r.a, &c_id).await;
    // A's claims fall behind the store: they name D again, at C's epoch.
    lagging_claim(&r.pg, &r.url, &d_id, &c_id);
    until_held_by(&r.a, &d_id).await;
    reaches_with_one_lookup(&r.a, &conn, r.port, &c_id).await;
    // The map follows the store: the next stream goes to C straight away.
    let pga = r.a.store().postgres().unwrap();
    let queries = pga.holder_queries();
    let back = echo_through(&conn, "dev1", r.port, b"again").await.unwrap();
    assert_eq!(back, b"again");
    assert_eq!(pga.holder_queries(), queries, "no second lookup");
    // A port the device does not serve is C's answer, not a stale map: the
    // stream fails with it and costs no lookup (a retry loop cannot make
    // one query per stream).
    for _ in 0..3 {
        let err = echo_through(&conn, "dev1", r.port ^ 1, b"no")
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("does not serve port"),
            "{err:#}"
        );
    }
    assert_eq!(
        pga.holder_queries(),
        queries,
        "a refused port asks the store"
    );
}

/// A's claims name relay C, which is up but does not hold the device (D
/// does): again a notification lagging behind the store, simulated. C
/// refuses the hop with the reason code Warren relays keep for "not here"
/// (`RefusalKind::NotHere`), so A asks the store once, finds D and
/// reaches the device through it on the first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hop_to_a_relay_that_is_up_but_does_not_hold_the_device_follows_the_store() {
    let r = ThreeRelays::start().await;
    let conn = alice_on_a(&r).await;
    let (d_id, c_id) = (&r.first.1, &r.second.1);
    lagging_claim(&r.pg, &r.url, c_id, d_id);
    until_held_by(&r.a, c_id).await;
    // C says the device is not here; A follows the store to D.
    reaches_with_one_lookup(&r.a, &conn, r.port, d_id).await;
}
