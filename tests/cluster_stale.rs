//! A hop when the claims relay A received are behind the store (one real
//! PostgreSQL database, tests/common/postgres.rs): they still name a relay
//! that was killed after the device's new relay claimed it. The stream
//! still goes through on the first try; the failed hop costs A one store
//! lookup. (A process of its own: `tests/cluster_hops.rs` counts the
//! process's hop metrics.)

mod common;

use common::postgres::{ThreeRelays, until_held_by};
use common::{connect_to, echo_through};

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
    let ThreeRelays {
        pg,
        url,
        a,
        first: (mut d, d_id),
        second: (c, c_id),
        alice,
        port,
        mut agent,
        dirs: _dirs,
    } = ThreeRelays::start().await;
    let conn = connect_to(&a.addr.to_string(), &a.host_key(), "tau", alice.clone())
        .await
        .unwrap();
    let back = echo_through(&conn, "dev1", port, b"through D")
        .await
        .unwrap();
    assert_eq!(back, b"through D");

    d.kill_9().await;
    // Killed a moment ago: the registry says D beats for a while yet.
    pg.psql(
        &url,
        &format!(
            "UPDATE relays SET heartbeat = extract(epoch FROM now())::bigint + 60 WHERE id = '{d_id}'"
        ),
    );
    agent.offline().await;
    agent.online().await;
    until_held_by(&a, &c_id).await;
    // A's claims fall behind the store: they name D again, at C's epoch.
    pg.psql(
        &url,
        &format!(
            "SELECT pg_notify('warren_owner', json_build_object('system', system, 'name', name,
               'relay', '{d_id}', 'epoch', epoch, 'online', true)::text)
             FROM devices WHERE system = 'tau' AND name = 'dev1' AND relay = '{c_id}'"
        ),
    );
    until_held_by(&a, &d_id).await;
    let pga = a.store().postgres().unwrap();
    let queries = pga.holder_queries();
    let back = echo_through(&conn, "dev1", port, b"through C")
        .await
        .expect("A's stream follows the store to C on the first try");
    assert_eq!(back, b"through C");
    assert_eq!(pga.holder_queries(), queries + 1, "one store lookup");
    // The map follows the store: the next stream goes to C straight away.
    assert_eq!(
        pga.holder_known("tau", "dev1").flatten().map(|r| r.id),
        Some(c_id.clone())
    );
    let back = echo_through(&conn, "dev1", port, b"again").await.unwrap();
    assert_eq!(back, b"again");
    assert_eq!(pga.holder_queries(), queries + 1, "no second lookup");
    // A port the device does not serve is C's answer, not a stale map: the
    // stream fails with it and costs no lookup (a retry loop cannot make
    // one query per stream).
    for _ in 0..3 {
        let err = echo_through(&conn, "dev1", port ^ 1, b"no")
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("does not serve port"),
            "{err:#}"
        );
    }
    assert_eq!(
        pga.holder_queries(),
        queries + 1,
        "a refused port asks the store"
    );
    drop(c);
}

/// A's claims name relay C, which is up but does not hold the device (D
/// does): again a notification lagging behind the store, simulated. C
/// refuses the hop with the reason code Warren relays keep for "not here"
/// (`RefusalKind::NotHere`), so A asks the store once, finds D and
/// reaches the device through it on the first try.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hop_to_a_relay_that_is_up_but_does_not_hold_the_device_follows_the_store() {
    let ThreeRelays {
        pg,
        url,
        a,
        first: (d, d_id),
        second: (c, c_id),
        alice,
        port,
        agent: _agent,
        dirs: _dirs,
    } = ThreeRelays::start().await;
    let conn = connect_to(&a.addr.to_string(), &a.host_key(), "tau", alice.clone())
        .await
        .unwrap();
    let back = echo_through(&conn, "dev1", port, b"through D")
        .await
        .unwrap();
    assert_eq!(back, b"through D");
    pg.psql(
        &url,
        &format!(
            "SELECT pg_notify('warren_owner', json_build_object('system', system, 'name', name,
               'relay', '{c_id}', 'epoch', epoch, 'online', true)::text)
             FROM devices WHERE system = 'tau' AND name = 'dev1' AND relay = '{d_id}'"
        ),
    );
    until_held_by(&a, &c_id).await;
    let pga = a.store().postgres().unwrap();
    let queries = pga.holder_queries();
    let back = echo_through(&conn, "dev1", port, b"back to D")
        .await
        .expect("C says the device is not here; A follows the store to D");
    assert_eq!(back, b"back to D");
    assert_eq!(pga.holder_queries(), queries + 1, "one store lookup");
    assert_eq!(
        pga.holder_known("tau", "dev1").flatten().map(|r| r.id),
        Some(d_id.clone())
    );
    drop((c, d));
}
