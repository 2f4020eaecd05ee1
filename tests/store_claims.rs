//! Device claims written a batch per transaction (what a relay does with
//! queued registrations), on a real PostgreSQL server
//! (tests/common/postgres.rs) and on SQLite: each device of the batch is
//! claimed with its own epoch, the relay that held one hears it lost it,
//! the on-demand flags are stored, and later writes name the right epoch.

mod common;

use std::collections::BTreeSet;

use common::postgres::PgServer;
use warren::protocol::device_info::DeviceInfo;
use warren::store::{DeviceUp, Store};

fn up(name: &str, on_demand: bool) -> DeviceUp {
    DeviceUp {
        system: "tau".into(),
        name: name.into(),
        peer: "192.0.2.1:1".parse().unwrap(),
        ports: vec![22],
        info: DeviceInfo {
            on_demand,
            ..DeviceInfo::default()
        },
    }
}

#[test]
fn claims_written_in_one_batch_each_take_their_device_and_are_notified() {
    let pg = PgServer::start();
    let url = pg.database();
    let (a, b, mut lost) = common::postgres::two_relays(&url);
    a.devices_up(&[up("dev1", false)]).unwrap();
    let (_, first) = a
        .postgres()
        .unwrap()
        .device_holder("tau", "dev1")
        .unwrap()
        .unwrap();
    // B's batch: dev1 taken over, dev2 and dev3 new, dev3 on demand.
    b.devices_up(&[up("dev1", false), up("dev2", false), up("dev3", true)])
        .unwrap();
    let pgb = b.postgres().unwrap();
    assert_eq!(
        pgb.device_holder("tau", "dev1").unwrap(),
        Some(("relay-b".to_string(), first + 1))
    );
    for d in ["dev2", "dev3"] {
        assert_eq!(
            pgb.device_holder("tau", d).unwrap(),
            Some(("relay-b".to_string(), 1))
        );
    }
    let on_demand: Vec<String> = b
        .on_demand_devices(Some("tau"))
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(on_demand, vec!["dev3".to_string()]);
    // A hears of dev1 only (the one it held).
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt
        .block_on(async { tokio::time::timeout(common::WAIT, lost.recv()).await })
        .unwrap()
        .unwrap();
    assert_eq!(got, ("tau".to_string(), "dev1".to_string()));
    // B remembers each claim's epoch: its own later write applies.
    b.device_down("tau", "dev2").unwrap();
    let online: Vec<(String, bool)> = b
        .devices(Some("tau"))
        .unwrap()
        .into_iter()
        .map(|d| (d.name, d.online))
        .collect();
    assert_eq!(
        online,
        vec![
            ("dev1".to_string(), true),
            ("dev2".to_string(), false),
            ("dev3".to_string(), true)
        ]
    );
}

#[test]
fn a_batch_of_registrations_on_sqlite_is_each_device_online() {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    s.devices_up(&[up("dev1", true), up("dev2", false)])
        .unwrap();
    let online: Vec<(String, bool)> = s
        .devices(Some("tau"))
        .unwrap()
        .into_iter()
        .map(|d| (d.name, d.online))
        .collect();
    assert_eq!(
        online,
        vec![("dev1".to_string(), true), ("dev2".to_string(), true)]
    );
    let on_demand: Vec<String> = s
        .on_demand_devices(Some("tau"))
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(on_demand, vec!["dev1".to_string()]);
}

/// A batch names devices in any order, one of them twice: each is claimed
/// once, with its latest registration (rows are locked in device order, so
/// two relays batching the same devices cannot deadlock).
#[test]
fn a_batch_naming_a_device_twice_claims_it_once_with_the_latest() {
    let pg = PgServer::start();
    let url = pg.database();
    let (a, _b, _lost) = common::postgres::two_relays(&url);
    let mut again = up("dev2", false);
    again.ports = vec![2222];
    a.devices_up(&[up("dev2", false), up("dev1", false), again])
        .unwrap();
    let all = a.devices(Some("tau")).unwrap();
    let dev2 = all.iter().find(|d| d.name == "dev2").unwrap();
    assert!(dev2.online && dev2.ports == vec![2222], "{:?}", dev2.ports);
    assert!(all.iter().any(|d| d.name == "dev1" && d.online));
    let (_, epoch) = a
        .postgres()
        .unwrap()
        .device_holder("tau", "dev2")
        .unwrap()
        .unwrap();
    assert_eq!(epoch, 1, "claimed once");
}

/// Waits (on `store`'s change notifications, not a clock) until `done`.
fn until(store: &Store, why: &str, done: impl Fn() -> bool) {
    let notifier = store.postgres().unwrap().change_notifier();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        tokio::time::timeout(common::WAIT, async {
            loop {
                let changed = notifier.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if done() {
                    return;
                }
                changed.await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{why}"))
    })
}

/// Who holds `tau/NAME` by A's holder map alone: `None` if the map does not
/// say, `Some("")` held by A itself.
fn known(store: &Store, name: &str) -> Option<String> {
    let known = store.postgres().unwrap().holder_known("tau", name)?;
    Some(known.map(|r| r.id).unwrap_or_default())
}

/// The holder map of relay A follows B's claims, B's devices going offline
/// and B restarting, from notifications alone: A answers "who holds it"
/// without a query, and asks the store only when its map does not say.
#[test]
fn relay_a_knows_from_claims_alone_which_relay_holds_each_device() {
    let pg = PgServer::start();
    let url = pg.database();
    let (a, b, _lost) = common::postgres::two_relays(&url);
    let pga = a.postgres().unwrap();
    b.devices_up(&[up("dev1", false), up("dev2", false)])
        .unwrap();
    until(&a, "A hears B's claims", || {
        known(&a, "dev1").is_some() && known(&a, "dev2").is_some()
    });
    let queries = pga.holder_queries();
    let held = pga.holder("tau", "dev1").unwrap().unwrap();
    assert_eq!(
        (held.id.as_str(), held.address.as_deref()),
        ("relay-b", Some("127.0.0.1:2"))
    );
    assert_eq!(pga.holder_queries(), queries, "answered from the map");
    // A takes dev2 over: held here, no hop.
    a.devices_up(&[up("dev2", false)]).unwrap();
    until(&a, "A hears its own claim", || {
        known(&a, "dev2").as_deref() == Some("")
    });
    assert!(pga.holder("tau", "dev2").unwrap().is_none());
    // B's device leaves: A forgets it; then the store is asked, and agrees.
    b.device_down("tau", "dev1").unwrap();
    until(&a, "A hears dev1 leave B", || known(&a, "dev1").is_none());
    assert!(pga.holder("tau", "dev1").unwrap().is_none());
    assert_eq!(pga.holder_queries(), queries + 1, "dev1: asked the store");
    // B restarts: whatever it held is gone from A's map at once.
    b.devices_up(&[up("dev3", false)]).unwrap();
    until(&a, "A hears dev3", || known(&a, "dev3").is_some());
    b.all_devices_down().unwrap();
    until(&a, "A hears B restart", || known(&a, "dev3").is_none());
    // While A's listening connection is down, claims may be missed: the
    // map says nothing (the store is asked) until it is read afresh.
    assert_eq!(known(&a, "dev2").as_deref(), Some(""));
    pg.pg_stop();
    let started = std::time::Instant::now();
    while pga.listening() {
        assert!(started.elapsed() < common::WAIT, "A still listening");
        std::thread::yield_now();
    }
    assert_eq!(known(&a, "dev2"), None, "no answer from a map nobody feeds");
    pg.pg_start();
    common::postgres::listening(&a);
    until(&a, "A reads the map again", || {
        known(&a, "dev2").as_deref() == Some("")
    });
}

/// The per-minute touch writes last seen and stream counts in batches, only
/// for the devices this relay holds under its own claim.
#[test]
fn the_batched_touch_writes_only_the_devices_held_under_this_relays_claim() {
    let pg = PgServer::start();
    let url = pg.database();
    let (a, b, _lost) = common::postgres::two_relays(&url);
    let names: Vec<String> = (0..2500).map(|i| format!("d{i}")).collect();
    let ups: Vec<DeviceUp> = names.iter().map(|n| up(n, false)).collect();
    a.devices_up(&ups).unwrap();
    // B took d7 over since: A's late touch must not write it.
    b.devices_up(&[up("d7", false)]).unwrap();
    let touch: Vec<(String, String, u64)> = names
        .iter()
        .rev()
        .map(|n| ("tau".to_string(), n.clone(), 3))
        .collect();
    a.touch_devices(&touch).unwrap();
    let all = a.devices(Some("tau")).unwrap();
    assert_eq!(all.len(), 2500);
    for d in &all {
        let want = if d.name == "d7" { 0 } else { 3 };
        assert_eq!(d.streams, want, "{}", d.name);
    }
}

/// The statements one connection ran for a claim: the server log's entries
/// after byte `from` (`log_statement = all`) of the process that ran the
/// claim's `INSERT INTO devices`, each a simple query or an `execute`.
fn statements_of_claim(log: &str, from: usize) -> usize {
    // An entry starts "2026-… UTC [PID] LOG:  …"; a statement's further
    // lines follow as they are.
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in log[from..].lines() {
        let head = line
            .split_once(" [")
            .and_then(|(_, rest)| rest.split_once("] "))
            .filter(|(pid, _)| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()));
        match head {
            Some((pid, msg)) => entries.push((pid.to_string(), msg.to_string())),
            None => {
                if let Some(last) = entries.last_mut() {
                    last.1.push_str(line);
                }
            }
        }
    }
    let pid = &entries
        .iter()
        .find(|(_, m)| m.starts_with("LOG:") && m.contains("INSERT INTO devices"))
        .expect("the claim in the server log")
        .0;
    entries
        .iter()
        .filter(|(p, m)| {
            p == pid && (m.starts_with("LOG:  execute") || m.starts_with("LOG:  statement:"))
        })
        .count()
}

/// The next `n` devices `lost` names (each within the wait).
fn next_lost(
    lost: &mut tokio::sync::broadcast::Receiver<(String, String)>,
    n: usize,
) -> BTreeSet<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (0..n)
        .map(|_| {
            rt.block_on(async { tokio::time::timeout(common::WAIT, lost.recv()).await })
                .expect("a device lost")
                .unwrap()
                .1
        })
        .collect()
}

/// One relay claims hundreds of devices in one call, 50 of them held by
/// another relay before: each gets its epoch (the store's and the relay's
/// own, which its later writes name), every other relay's holder map learns
/// each claim from the notifications, the relay that held some hears it
/// lost them, on-demand flags are set and cleared, and the whole batch
/// costs the server the same statements as a batch of three.
#[test]
fn hundreds_of_claims_in_one_call_cost_a_constant_number_of_statements() {
    let pg = PgServer::start();
    let url = pg.database();
    let db = url.rsplit('/').next().unwrap();
    pg.psql(
        &url,
        &format!("ALTER DATABASE {db} SET log_statement = 'all'"),
    );
    let (a, b, _) = common::postgres::two_relays(&url);
    let c = Store::open_postgres(&url).unwrap();
    let pgc = c.postgres().unwrap();
    pgc.join("relay-c", Some("127.0.0.1:3"), "SHA256:c")
        .unwrap();
    common::postgres::listening(&b);
    common::postgres::listening(&c);
    let mut b_lost = b.postgres().unwrap().lost_devices();
    // B held d0..d49 first, the even ones on demand.
    let first: Vec<DeviceUp> = (0..50).map(|i| up(&format!("d{i}"), i % 2 == 0)).collect();
    b.devices_up(&first).unwrap();
    let small: Vec<DeviceUp> = (0..3).map(|i| up(&format!("s{i}"), i == 1)).collect();
    let from = pg.log().len();
    a.devices_up(&small).unwrap();
    let for_three = statements_of_claim(&pg.log(), from);
    // A's batch, in no particular order: every third device on demand.
    let mut batch: Vec<DeviceUp> = (0..400).map(|i| up(&format!("d{i}"), i % 3 == 0)).collect();
    batch.reverse();
    batch.swap(10, 300);
    let from = pg.log().len();
    a.devices_up(&batch).unwrap();
    let for_400 = statements_of_claim(&pg.log(), from);
    assert_eq!(
        (for_three, for_400),
        (4, 4),
        "begin, claims, on-demand flags, commit"
    );
    let pga = a.postgres().unwrap();
    for i in 0..400 {
        let want = if i < 50 { 2 } else { 1 };
        assert_eq!(
            pga.device_holder("tau", &format!("d{i}")).unwrap(),
            Some(("relay-a".to_string(), want)),
            "d{i}"
        );
    }
    // B and C learn every claim from the notifications alone.
    for (relay, store) in [("B", &b), ("C", &c)] {
        until(store, &format!("{relay} hears all 400 claims"), || {
            (0..400).all(|i| known(store, &format!("d{i}")).as_deref() == Some("relay-a"))
        });
    }
    // B hears it lost each of the 50 it held, and only those.
    let want: BTreeSet<String> = (0..50).map(|i| format!("d{i}")).collect();
    assert_eq!(next_lost(&mut b_lost, 50), want);
    // On demand: every third (B's even flags cleared where A's Up says no).
    let on_demand: BTreeSet<String> = a
        .on_demand_devices(Some("tau"))
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    let want: BTreeSet<String> = (0..400)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("d{i}"))
        .chain(["s1".to_string()])
        .collect();
    assert_eq!(on_demand, want);
    // A recorded each device's own epoch: its touch names it and applies.
    let touch: Vec<(String, String, u64)> = (0..400)
        .map(|i| ("tau".to_string(), format!("d{i}"), 5))
        .collect();
    a.touch_devices(&touch).unwrap();
    for d in a.devices(Some("tau")).unwrap() {
        let want = if d.name.starts_with('d') { 5 } else { 0 };
        assert_eq!(d.streams, want, "{}", d.name);
    }
}

/// Two relays claim the same 300 devices at once, again and again, one in
/// the opposite order of the other: rows are locked in one order whatever
/// the batch's, so neither transaction deadlocks, and each claim counts.
#[test]
fn two_relays_claiming_the_same_devices_at_once_in_opposite_orders_never_deadlock() {
    let pg = PgServer::start();
    let url = pg.database();
    let (a, b, _) = common::postgres::two_relays(&url);
    let forward: Vec<DeviceUp> = (0..300).map(|i| up(&format!("d{i}"), i % 2 == 0)).collect();
    let backward: Vec<DeviceUp> = forward.iter().rev().cloned().collect();
    const ROUNDS: i64 = 6;
    std::thread::scope(|s| {
        let ta = s.spawn(|| (0..ROUNDS).try_for_each(|_| a.devices_up(&forward)));
        let tb = s.spawn(|| (0..ROUNDS).try_for_each(|_| b.devices_up(&backward)));
        ta.join().unwrap().expect("relay A's claims");
        tb.join().unwrap().expect("relay B's claims");
    });
    let pga = a.postgres().unwrap();
    for i in 0..300 {
        let (_, epoch) = pga.device_holder("tau", &format!("d{i}")).unwrap().unwrap();
        assert_eq!(epoch, 2 * ROUNDS, "d{i}: every claim counted");
    }
}

/// A relay's per-minute touch locks its devices' rows in device order, as
/// claims do: touching its devices while another relay takes them over in
/// the opposite order never deadlocks (PostgreSQL would abort one side).
/// The touch states that order (`ORDER BY … FOR UPDATE`); before, it was
/// the planner's choice, which followed the arrays here too, so this
/// guards the behaviour rather than catching the older statement.
#[test]
fn a_touch_and_another_relays_takeover_at_once_never_deadlock() {
    let pg = PgServer::start();
    let url = pg.database();
    let (a, b, _) = common::postgres::two_relays(&url);
    let forward: Vec<DeviceUp> = (0..300).map(|i| up(&format!("d{i}"), false)).collect();
    let backward: Vec<DeviceUp> = forward.iter().rev().cloned().collect();
    let touch: Vec<(String, String, u64)> = (0..300)
        .map(|i| ("tau".to_string(), format!("d{i}"), 1))
        .collect();
    // The rows first written one by one in reverse: the table's physical
    // order is then not the device order a join might otherwise follow.
    for d in &backward {
        b.devices_up(std::slice::from_ref(d)).unwrap();
    }
    const ROUNDS: i64 = 6;
    std::thread::scope(|s| {
        let ta = s.spawn(|| {
            (0..ROUNDS).try_for_each(|_| {
                a.devices_up(&forward)?;
                (0..3).try_for_each(|_| a.touch_devices(&touch))
            })
        });
        let tb = s.spawn(|| (0..ROUNDS).try_for_each(|_| b.devices_up(&backward)));
        ta.join().unwrap().expect("relay A's claims and touches");
        tb.join().unwrap().expect("relay B's claims");
    });
    let pga = a.postgres().unwrap();
    for i in 0..300 {
        let (_, epoch) = pga.device_holder("tau", &format!("d{i}")).unwrap().unwrap();
        assert_eq!(epoch, 2 * ROUNDS + 1, "d{i}: every claim counted");
    }
}
