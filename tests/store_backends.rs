//! The store's contract, run against both backends: SQLite in a temporary
//! directory, and a real PostgreSQL server (tests/common/postgres.rs) with a
//! database per check. Then what only the PostgreSQL backend does: relays
//! starting at once migrate safely, a change made through one handle is
//! notified to another, a stale relay cannot take a device back, and
//! `admin migrate` copies a SQLite database, checked and idempotent.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::postgres::PgServer;
use warren::protocol::device_info::DeviceInfo;
use warren::protocol::gateway::{Announce, ListenSpec};
use warren::protocol::rate::Rate;
use warren::protocol::token::Invite;
use warren::protocol::{Cidr, Name, Role, Target};
use warren::ssh::keys::{Fingerprint, generate_ed25519};
use warren::store::audit::{Event, OK, REFUSED, kind};
use warren::store::credentials::{CredKind, NewCredential};
use warren::store::labels::LabelEdit;
use warren::store::{AuditQuery, NewInvite, Store, now};

fn n(s: &str) -> Name {
    Name::parse(s).unwrap()
}

/// Opens another handle on the same database, as another process would.
type Open<'a> = &'a dyn Fn() -> Store;

fn keys_bind_to_system_role_and_name(open: Open) {
    let store = open();
    store.add_system(&n("tau")).unwrap();
    assert!(store.add_system(&n("tau")).is_err());
    assert!(store.add_system(&n("enroll")).is_err(), "reserved");
    let k = generate_ed25519().unwrap();
    let pk = k.public_key();
    assert!(
        store
            .add_key(&n("nope"), Role::Device, &n("dev1"), pk)
            .is_err()
    );
    store
        .add_key(&n("tau"), Role::Device, &n("dev1"), pk)
        .unwrap();
    assert!(
        store
            .add_key(&n("tau"), Role::Controller, &n("alice"), pk)
            .is_err()
    );
    let other = generate_ed25519().unwrap();
    let err = store
        .add_key(&n("tau"), Role::Device, &n("dev1"), other.public_key())
        .unwrap_err();
    assert!(err.to_string().contains("already belongs"), "{err}");
    let id = store.identity("tau", pk).unwrap().unwrap();
    assert_eq!((id.role, id.name.as_str()), (Role::Device, "dev1"));
    assert_eq!(store.identity("other", pk).unwrap(), None);
    assert_eq!(store.identity("tau", other.public_key()).unwrap(), None);
    let keys = store.keys().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].algorithm, "ssh-ed25519");
    assert_eq!(
        store
            .keys_active(&[
                id.fingerprint.clone(),
                Fingerprint::from_stored("SHA256:x".into())
            ])
            .unwrap(),
        vec![true, false]
    );

    store.revoke_key(&id.fingerprint).unwrap();
    assert_eq!(store.identity("tau", pk).unwrap(), None);
    assert!(!store.key_active(&id.fingerprint).unwrap());
    assert!(store.revoke_key(&id.fingerprint).is_err());
    assert!(store.revoke_key("SHA256:nosuch").is_err());
    store
        .add_key(&n("tau"), Role::Device, &n("dev1"), other.public_key())
        .unwrap();
    assert_eq!(open().systems().unwrap(), vec!["tau".to_string()]);
}

fn device_status_survives_reopen(open: Open) {
    {
        let store = open();
        let peer: SocketAddr = "192.0.2.7:5555".parse().unwrap();
        let mut info = DeviceInfo {
            version: Some("1.2.3".into()),
            ..Default::default()
        };
        info.labels.insert("site".into(), "lab".into());
        store
            .device_up("tau", "dev1", peer, &[22, 8080], &info)
            .unwrap();
        store
            .touch_devices(&[("tau".into(), "dev1".into(), 3)])
            .unwrap();
        let d = store.devices(Some("tau")).unwrap();
        assert_eq!(d.len(), 1);
        assert!(d[0].online);
        assert_eq!(d[0].ports, vec![22, 8080]);
        assert_eq!(d[0].streams, 3);
        assert_eq!(d[0].version.as_deref(), Some("1.2.3"));
        assert_eq!(d[0].labels["site"], "lab");
        assert!(store.devices(Some("other")).unwrap().is_empty());
    }
    let store = open();
    store.all_devices_down().unwrap();
    let d = store.devices(None).unwrap();
    assert!(!d[0].online);
    assert_eq!(d[0].streams, 0);
    assert_eq!(d[0].address.as_deref(), Some("192.0.2.7:5555"));
    assert!(d[0].last_seen.is_some());
    store
        .device_up(
            "tau",
            "dev2",
            "192.0.2.8:1".parse().unwrap(),
            &[22],
            &DeviceInfo::default(),
        )
        .unwrap();
    store.device_down("tau", "dev2").unwrap();
    let d = store.devices(Some("tau")).unwrap();
    assert!(!d.iter().find(|d| d.name == "dev2").unwrap().online);
}

fn invite(store: &Store, name: &str, ttl: i64) -> Invite {
    let (id, secret) = Invite::fresh_id_and_secret().unwrap();
    let inv = Invite {
        relay: "192.0.2.1:2222".into(), // documentation address: never dialled
        host_key: format!("SHA256:{}", "a".repeat(43)),
        system: n("tau"),
        role: Role::Device,
        name: n(name),
        id,
        expires: (now() as i64 + ttl) as u64,
        secret,
    };
    store
        .create_invite(&NewInvite {
            id: &inv.id,
            secret_hash: &inv.secret_hash(),
            system: &inv.system,
            role: inv.role,
            name: &inv.name,
            expires: inv.expires,
        })
        .unwrap();
    inv
}

fn an_invite_works_once_and_only_as_issued(open: Open) {
    let store = open();
    store.add_system(&n("tau")).unwrap();
    let inv = invite(&store, "dev1", 3600);
    let k = generate_ed25519().unwrap();
    let mut forged = inv.clone();
    forged.secret = Invite::fresh_id_and_secret().unwrap().1;
    let err = store.enroll(&forged, k.public_key()).unwrap_err();
    assert!(err.to_string().contains("secret does not match"), "{err}");
    let mut renamed = inv.clone();
    renamed.name = n("dev2");
    let err = store.enroll(&renamed, k.public_key()).unwrap_err();
    assert!(err.to_string().contains("altered"), "{err}");
    assert!(store.keys().unwrap().is_empty());
    let rec = store.enroll(&inv, k.public_key()).unwrap();
    assert_eq!(rec.enrolled_via.as_deref(), Some(inv.id.as_str()));
    let other = generate_ed25519().unwrap();
    let err = store.enroll(&inv, other.public_key()).unwrap_err();
    assert!(err.to_string().contains("already used"), "{err}");
    assert_eq!(store.invites().unwrap()[0].status, "used");
    let expired = invite(&store, "dev3", -1);
    let err = store.enroll(&expired, other.public_key()).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    let revoked = invite(&store, "dev4", 3600);
    store.revoke_invite(&revoked.id).unwrap();
    assert!(store.revoke_invite(&revoked.id).is_err());
    let err = store.enroll(&revoked, other.public_key()).unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
    assert_eq!(store.keys().unwrap().len(), 1);
    // Settings and disabling.
    store.set_setting("advertise", "a:1").unwrap();
    store.set_setting("advertise", "b:2").unwrap();
    assert_eq!(store.setting("advertise").unwrap().as_deref(), Some("b:2"));
    assert_eq!(store.setting("nothing").unwrap(), None);
    assert!(
        store
            .set_device_disabled(&n("tau"), &n("ghost"), true)
            .is_err()
    );
    store
        .set_device_disabled(&n("tau"), &n("dev1"), true)
        .unwrap();
    let disabled = store.disabled_devices().unwrap();
    assert_eq!(disabled.len(), 1);
    assert_eq!(disabled[0].name.as_str(), "dev1");
    store
        .set_device_disabled(&n("tau"), &n("dev1"), false)
        .unwrap();
    assert!(store.disabled_devices().unwrap().is_empty());
}

fn audit_pages_newest_first_with_filters(open: Open) {
    let store = open();
    let refused = Event::new(kind::STREAM_OPEN, REFUSED)
        .detail("device dev1 is disabled by an admin")
        .reason("disabled");
    store
        .append_audit(&[refused, Event::new(kind::LOGIN, OK)])
        .unwrap();
    let got = store
        .audit(&AuditQuery {
            limit: 10,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(got[0].reason, None);
    assert_eq!(got[1].reason.as_deref(), Some("disabled"));
    store.prune_audit(warren::audit::now_ms() + 60_000).unwrap();
    let events: Vec<Event> = (0..45)
        .map(|i| {
            let mut e = Event::new(kind::STREAM_CLOSE, "closed")
                .system(if i % 3 == 0 { "beta" } else { "tau" })
                .key_name("alice")
                .device(format!("dev{}", i % 5));
            e.time_ms = 1_000_000 + i * 1000;
            e.bytes_up = Some(i);
            e
        })
        .collect();
    store.append_audit(&events).unwrap();
    let mut q = AuditQuery {
        limit: 20,
        ..Default::default()
    };
    let p1 = store.audit(&q).unwrap();
    assert_eq!(p1.len(), 21);
    assert!(p1.windows(2).all(|w| w[0].id > w[1].id));
    assert_eq!(p1[0].bytes_up, Some(44));
    q.before = Some(p1[19].id);
    let p2 = store.audit(&q).unwrap();
    assert_eq!(p2[0].id, p1[19].id - 1);
    q.before = Some(p2[19].id);
    assert_eq!(store.audit(&q).unwrap().len(), 5);
    let q = AuditQuery {
        system: Some("tau".into()),
        device: Some("dev1".into()),
        limit: 100,
        ..Default::default()
    };
    let got = store.audit(&q).unwrap();
    assert!(!got.is_empty());
    assert!(
        got.iter()
            .all(|e| e.system.as_deref() == Some("tau") && e.device.as_deref() == Some("dev1"))
    );
    let q = AuditQuery {
        since_ms: Some(1_010_000),
        until_ms: Some(1_020_000),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(store.audit(&q).unwrap().len(), 10);
    let q = AuditQuery {
        key: Some("alice".into()),
        kind: Some(kind::STREAM_CLOSE.into()),
        limit: 100,
        ..Default::default()
    };
    assert_eq!(store.audit(&q).unwrap().len(), 45);
    assert_eq!(store.prune_audit(1_040_000).unwrap(), 40);
    assert_eq!(
        open()
            .audit(&AuditQuery {
                limit: 100,
                ..Default::default()
            })
            .unwrap()
            .len(),
        5
    );
}

fn exposures_are_added_listed_and_removed(open: Open) {
    let store = open();
    let (tau, dev1) = (n("tau"), n("dev1"));
    assert!(
        store.add_exposure(4040, &tau, &dev1, 22, &[]).is_err(),
        "no system yet"
    );
    store.add_system(&tau).unwrap();
    assert!(store.add_exposure(0, &tau, &dev1, 22, &[]).is_err());
    let e = store
        .add_exposure(4040, &tau, &dev1, 22, &["10.0.0.0/8".into()])
        .unwrap();
    assert_eq!(store.exposures().unwrap(), vec![e.clone()]);
    let err = store.add_exposure(4040, &tau, &dev1, 80, &[]).unwrap_err();
    assert!(
        err.to_string().contains("already exposes tau/dev1:22"),
        "{err}"
    );
    assert_eq!(store.remove_exposure(4040).unwrap(), e);
    assert!(store.exposures().unwrap().is_empty());
    assert!(store.remove_exposure(4040).is_err());
}

fn gateways_announce_associate_rules_and_delete(open: Open) {
    let store = open();
    store.add_system(&n("tau")).unwrap();
    let k = generate_ed25519().unwrap();
    store
        .add_key(&n("tau"), Role::Device, &n("gw1"), k.public_key())
        .unwrap();
    let a = Announce {
        scope: vec![Cidr::parse("10.0.1.0/24").unwrap()],
        ports: vec![22],
        permit: Some(vec![Cidr::parse("10.0.0.0/8").unwrap()]),
        listens: vec![ListenSpec {
            bind: "10.0.1.1:9100".into(),
            to: "collector:9100".into(),
        }],
    };
    assert_eq!(store.gateway_announce("tau", "gw1", &a).unwrap(), vec![]);
    let net = Cidr::parse("10.0.2.0/24").unwrap();
    store.gateway_associate(&n("tau"), &n("gw1"), &net).unwrap();
    assert!(store.gateway_associate(&n("tau"), &n("gw1"), &net).is_err());
    assert_eq!(store.gateway_announce("tau", "gw1", &a).unwrap(), vec![net]);
    let t = Target::parse("collector:9100").unwrap();
    store.gateway_allow(&n("tau"), &n("gw1"), &t).unwrap();
    assert!(store.gateway_allow(&n("tau"), &n("gw1"), &t).is_err());
    assert!(
        store
            .gateway_rule_allows("tau", "gw1", "collector:9100")
            .unwrap()
    );
    assert!(
        !store
            .gateway_rule_allows("tau", "gw1", "collector:9101")
            .unwrap()
    );
    let g = store.gateways(Some("tau")).unwrap();
    assert_eq!(g.len(), 1);
    assert_eq!(g[0].scope, vec!["10.0.1.0/24"]);
    assert_eq!(g[0].permit, Some(vec!["10.0.0.0/8".to_string()]));
    assert_eq!(g[0].associations, vec!["10.0.2.0/24"]);
    assert_eq!(g[0].rules, vec!["collector:9100"]);
    assert_eq!(g[0].listens[0].to, "collector:9100");
    assert_eq!(store.gateway_system(&n("gw1")).unwrap().as_str(), "tau");
    assert_eq!(store.all_gateway_associations().unwrap().len(), 1);
    let err = store
        .gateway_associate(&n("tau"), &n("nosuch"), &net)
        .unwrap_err();
    assert!(err.to_string().contains("no device nosuch"), "{err}");
    let err = store
        .gateway_delete(&n("tau"), &n("gw1"), false)
        .unwrap_err();
    assert!(err.to_string().contains("--force"), "{err}");
    store.gateway_deny(&n("tau"), &n("gw1"), &t).unwrap();
    assert!(store.gateway_deny(&n("tau"), &n("gw1"), &t).is_err());
    store
        .gateway_dissociate(&n("tau"), &n("gw1"), &net)
        .unwrap();
    assert!(
        store
            .gateway_dissociate(&n("tau"), &n("gw1"), &net)
            .is_err()
    );
    store.gateway_delete(&n("tau"), &n("gw1"), false).unwrap();
    assert!(store.gateways(None).unwrap().is_empty());
    assert!(store.gateway_delete(&n("tau"), &n("gw1"), false).is_err());
    store.gateway_allow(&n("tau"), &n("gw1"), &t).unwrap();
    store.gateway_delete(&n("tau"), &n("gw1"), true).unwrap();
    assert!(
        !store
            .gateway_rule_allows("tau", "gw1", "collector:9100")
            .unwrap()
    );
}

/// A check, by name.
type Check = (&'static str, fn(Open));

fn rates_are_set_replaced_and_cleared(open: Open) {
    let store = open();
    let r = |s: &str| Rate::parse(s, None).unwrap();
    let e = store.set_rate(&n("tau"), None, r("1M")).unwrap_err();
    assert_eq!(e.to_string(), "no system tau");
    store.add_system(&n("tau")).unwrap();
    let e = store
        .set_rate(&n("tau"), Some(&n("dev1")), r("1M"))
        .unwrap_err();
    assert_eq!(e.to_string(), "no device dev1 in system tau");
    let k = generate_ed25519().unwrap();
    store
        .add_key(&n("tau"), Role::Device, &n("dev1"), k.public_key())
        .unwrap();
    store.set_rate(&n("tau"), None, r("1M")).unwrap();
    store
        .set_rate(&n("tau"), Some(&n("dev1")), r("500K"))
        .unwrap();
    store.set_rate(&n("tau"), None, r("2M")).unwrap();
    let all = open().rates().unwrap();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        (all[0].device.as_deref(), Some(all[0].rate)),
        (None, r("2M"))
    );
    assert_eq!(
        (all[1].device.as_deref(), Some(all[1].rate)),
        (Some("dev1"), r("500K"))
    );
    store.set_rate(&n("tau"), None, None).unwrap();
    let all = open().rates().unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].device.as_deref(), Some("dev1"));
}

fn admin_labels_override_hide_and_survive_registration(open: Open) {
    let store = open();
    store.add_system(&n("tau")).unwrap();
    let set = |k: &str, v: &str| std::collections::BTreeMap::from([(k.into(), v.into())]);
    let edit = |s, rm: &[&str], reset: &[&str]| {
        let keys = |l: &[&str]| l.iter().map(|k| k.to_string()).collect();
        LabelEdit::new(s, keys(rm), keys(reset)).unwrap()
    };
    let e = store
        .set_labels(&n("tau"), &n("dev1"), &edit(set("site", "lab9"), &[], &[]))
        .unwrap_err();
    assert_eq!(e.to_string(), "no device dev1 in system tau");
    assert!(
        store.admin_labels(None).unwrap().is_empty(),
        "nothing changed"
    );
    let mut info = DeviceInfo {
        labels: set("site", "lab3"),
        ..Default::default()
    };
    info.labels.insert("gpu".into(), "a100".into());
    info.labels.insert("os".into(), "debian".into());
    let peer: SocketAddr = "192.0.2.7:5555".parse().unwrap();
    store.device_up("tau", "dev1", peer, &[22], &info).unwrap();
    let rows = store
        .set_labels(
            &n("tau"),
            &n("dev1"),
            &edit(set("site", "lab9"), &["gpu"], &[]),
        )
        .unwrap();
    assert_eq!(rows.len(), 2);
    // The agent registers again with its own labels: the admin's word stays.
    open().device_up("tau", "dev1", peer, &[22], &info).unwrap();
    let d = &open().devices(Some("tau")).unwrap()[0];
    let want = [("os", "debian"), ("site", "lab9")];
    let want: std::collections::BTreeMap<String, String> = want
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(d.labels, want);
    assert_eq!(
        (d.admin_labels.clone(), d.hidden_labels.clone()),
        (vec!["site".to_string()], vec!["gpu".to_string()])
    );
    // Reset forgets the admin's word: the agent's labels show again.
    store
        .set_labels(
            &n("tau"),
            &n("dev1"),
            &edit(Default::default(), &[], &["site", "gpu"]),
        )
        .unwrap();
    let d = &open().devices(None).unwrap()[0];
    assert_eq!(d.labels, info.labels);
    assert!(d.admin_labels.is_empty() && d.hidden_labels.is_empty());
    // At most MAX_LABELS admin labels on a device; a change over it changes nothing.
    let many = |from: usize| {
        (from..from + 20)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect()
    };
    store
        .set_labels(&n("tau"), &n("dev1"), &edit(many(0), &[], &[]))
        .unwrap();
    let e = store
        .set_labels(&n("tau"), &n("dev1"), &edit(many(20), &[], &[]))
        .unwrap_err();
    assert!(e.to_string().contains("more than 32 admin labels"), "{e}");
    assert_eq!(open().admin_labels(Some("tau")).unwrap().len(), 20);
    assert!(open().admin_labels(Some("other")).unwrap().is_empty());
}

fn console_credentials_work_once_expire_and_revoke(open: Open) {
    let store = open();
    let issue = |kind, system: Option<&str>, role, now, ttl_secs| {
        store
            .issue_credential(&NewCredential {
                kind,
                system,
                role,
                who: "alice",
                now,
                ttl_secs,
            })
            .unwrap()
    };
    assert!(
        store
            .issue_credential(&NewCredential {
                kind: CredKind::Token,
                system: Some("tau"),
                role: Role::Device,
                who: "dev1",
                now: 1000,
                ttl_secs: 60,
            })
            .is_err(),
        "a device key gets no console credential"
    );
    // A login link: once, before it expires, and only as a login link.
    let link = issue(CredKind::Login, Some("tau"), Role::Controller, 1000, 300);
    assert!(
        store
            .check_credential(CredKind::Session, &link.secret, 1001)
            .unwrap()
            .is_none()
    );
    let late = issue(CredKind::Login, Some("tau"), Role::Controller, 1000, 300);
    assert!(store.redeem_login(&late.secret, 1300).unwrap().is_none());
    // Another handle (another relay of a cluster) sees the same rows.
    let other = open();
    let got = other.redeem_login(&link.secret, 1299).unwrap().unwrap();
    assert_eq!(got, link.record);
    assert_eq!(got.system.as_deref(), Some("tau"));
    assert!(store.redeem_login(&link.secret, 1299).unwrap().is_none());
    let (id, _) = late.secret.split_once('.').unwrap();
    assert!(
        store
            .check_credential(CredKind::Login, &format!("{id}.wrong"), 1001)
            .unwrap()
            .is_none()
    );
    assert!(store.redeem_login("garbage", 1001).unwrap().is_none());
    let logins = other.credentials(CredKind::Login).unwrap();
    assert_eq!(logins.len(), 2);
    assert_eq!(logins.iter().filter(|c| c.used == Some(1299)).count(), 1);
    assert!(!format!("{logins:?}").contains(late.secret.split_once('.').unwrap().1));

    // Sessions end together; tokens are revoked one by one.
    let (s1, s2) = (
        issue(CredKind::Session, None, Role::Admin, 2000, 100),
        issue(CredKind::Session, Some("tau"), Role::Controller, 2000, 100),
    );
    let token = issue(CredKind::Token, Some("tau"), Role::Admin, 2000, 100);
    let seen = other
        .check_credential(CredKind::Session, &s1.secret, 2050)
        .unwrap()
        .unwrap();
    assert_eq!((seen.role, seen.system), (Role::Admin, None));
    assert!(
        other
            .check_credential(CredKind::Session, &s1.secret, 2100)
            .unwrap()
            .is_none(),
        "expired"
    );
    assert_eq!(other.revoke_sessions(2050).unwrap(), 2);
    for s in [&s1, &s2] {
        assert!(
            store
                .check_credential(CredKind::Session, &s.secret, 2051)
                .unwrap()
                .is_none()
        );
    }
    assert!(
        store
            .check_credential(CredKind::Token, &token.secret, 2051)
            .unwrap()
            .is_some()
    );
    let revoked = other
        .revoke_credential(CredKind::Token, &token.record.id, 2052)
        .unwrap();
    assert_eq!(revoked.revoked, Some(2052));
    assert!(
        store
            .check_credential(CredKind::Token, &token.secret, 2053)
            .unwrap()
            .is_none()
    );
    let err = store
        .revoke_credential(CredKind::Token, &token.record.id, 2054)
        .unwrap_err();
    assert!(err.to_string().contains("no active token"), "{err}");
    assert!(
        store
            .revoke_credential(CredKind::Session, &token.record.id, 2054)
            .is_err()
    );
    assert_eq!(store.credentials(CredKind::Token).unwrap(), vec![revoked]);
}

const CHECKS: &[Check] = &[
    ("rates", rates_are_set_replaced_and_cleared),
    (
        "admin labels",
        admin_labels_override_hide_and_survive_registration,
    ),
    ("keys", keys_bind_to_system_role_and_name),
    ("device status", device_status_survives_reopen),
    ("invites", an_invite_works_once_and_only_as_issued),
    ("audit", audit_pages_newest_first_with_filters),
    ("exposures", exposures_are_added_listed_and_removed),
    ("gateways", gateways_announce_associate_rules_and_delete),
    (
        "console credentials",
        console_credentials_work_once_expire_and_revoke,
    ),
];

#[test]
fn the_store_contract_holds_on_sqlite() {
    for (what, check) in CHECKS {
        eprintln!("sqlite: {what}");
        let dir = tempfile::tempdir().unwrap();
        check(&|| Store::open(dir.path()).unwrap());
    }
}

#[test]
fn the_store_contract_holds_on_postgres() {
    let pg = PgServer::start();
    for (what, check) in CHECKS {
        eprintln!("postgres: {what}");
        let url = pg.database();
        check(&|| Store::open_postgres(&url).unwrap());
    }
}

#[test]
fn eight_relays_migrating_one_new_database_at_once_all_succeed() {
    let pg = PgServer::start();
    let url = pg.database();
    let opened: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || Store::open_postgres(&url).map(|s| s.systems().unwrap()))
        })
        .collect();
    for t in opened {
        let systems = t.join().unwrap().unwrap();
        assert!(systems.is_empty());
    }
}

/// Waits until `store`'s version moves past `v`; returns how long it took.
fn version_moves(store: &Store, v: i64) -> Duration {
    let started = Instant::now();
    while store.data_version().unwrap() == v {
        assert!(started.elapsed() < common::WAIT, "no notification");
        std::thread::yield_now();
    }
    started.elapsed()
}

#[test]
fn a_revocation_through_one_relay_is_notified_to_another_within_a_second() {
    let pg = PgServer::start();
    let url = pg.database();
    let a = Store::open_postgres(&url).unwrap();
    let c = Store::open_postgres(&url).unwrap();
    a.add_system(&n("tau")).unwrap();
    let k = generate_ed25519().unwrap();
    let rec = a
        .add_key(&n("tau"), Role::Controller, &n("alice"), k.public_key())
        .unwrap();
    // C listens (its first connection is itself a resync).
    common::postgres::listening(&c);
    let v = c.data_version().unwrap();
    a.revoke_key(&rec.fingerprint).unwrap();
    let took = version_moves(&c, v);
    assert!(took < Duration::from_secs(1), "{took:?}");
    assert!(!c.key_active(&rec.fingerprint).unwrap());
    // A disabled device is notified too.
    let v = c.data_version().unwrap();
    a.device_up(
        "tau",
        "dev1",
        "192.0.2.1:1".parse().unwrap(),
        &[22],
        &DeviceInfo::default(),
    )
    .unwrap();
    a.set_device_disabled(&n("tau"), &n("dev1"), true).unwrap();
    version_moves(&c, v);
    assert_eq!(c.disabled_devices().unwrap().len(), 1);
    // So is a bandwidth limit.
    let v = c.data_version().unwrap();
    a.set_rate(&n("tau"), None, Rate::parse("10M", None).unwrap())
        .unwrap();
    version_moves(&c, v);
    assert_eq!(c.rates().unwrap().len(), 1);
}

#[test]
fn a_stale_relay_cannot_take_a_device_back() {
    let pg = PgServer::start();
    let url = pg.database();
    let (a, b, mut lost) = common::postgres::two_relays(&url);
    let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
    a.device_up("tau", "dev1", peer, &[22], &DeviceInfo::default())
        .unwrap();
    let (holder, first) = a
        .postgres()
        .unwrap()
        .device_holder("tau", "dev1")
        .unwrap()
        .unwrap();
    assert_eq!(holder, "relay-a");
    b.device_up("tau", "dev1", peer, &[22], &DeviceInfo::default())
        .unwrap();
    let (holder, second) = a
        .postgres()
        .unwrap()
        .device_holder("tau", "dev1")
        .unwrap()
        .unwrap();
    assert_eq!((holder.as_str(), second), ("relay-b", first + 1));
    // A hears that it lost the device.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let got = rt
        .block_on(async { tokio::time::timeout(common::WAIT, lost.recv()).await })
        .unwrap()
        .unwrap();
    assert_eq!(got, ("tau".to_string(), "dev1".to_string()));
    // A's late writes change nothing: the device stays online on B.
    a.touch_devices(&[("tau".into(), "dev1".into(), 9)])
        .unwrap();
    a.device_down("tau", "dev1").unwrap();
    a.all_devices_down().unwrap();
    let d = &b.devices(Some("tau")).unwrap()[0];
    assert!(d.online);
    assert_eq!(d.streams, 0);
    assert_eq!(
        a.postgres()
            .unwrap()
            .device_holder("tau", "dev1")
            .unwrap()
            .unwrap()
            .0,
        "relay-b"
    );
    let relays = a.postgres().unwrap().relays().unwrap();
    let ids: Vec<&str> = relays.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, vec!["relay-a", "relay-b"]);
    assert_eq!(relays[1].address.as_deref(), Some("127.0.0.1:2"));
    b.device_down("tau", "dev1").unwrap();
    assert!(!a.devices(Some("tau")).unwrap()[0].online);
}
