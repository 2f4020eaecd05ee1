//! Device claims written a batch per transaction (what a relay does with
//! queued registrations), on a real PostgreSQL server
//! (tests/common/postgres.rs) and on SQLite: each device of the batch is
//! claimed with its own epoch, the relay that held one hears it lost it,
//! the on-demand flags are stored, and later writes name the right epoch.

mod common;

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
