//! `render`: every reply as text and as JSON.

use std::collections::BTreeMap;

use super::*;
use crate::admin::gateway::{AssociationView, ListenView};

/// Old enough that "(… ago)" is in days, whatever the clock says.
const T: u64 = 1_000_000_000;

fn out(reply: &Reply, format: Format) -> String {
    let text = render(reply, format).unwrap();
    assert_eq!(text.err, "", "{reply:?}");
    text.out
}

fn json(reply: &Reply) -> serde_json::Value {
    let text = out(reply, Format::Json);
    assert!(text.ends_with("}\n") || text.ends_with("]\n"), "{text}");
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    // The HTTP API's form of it (no text round trip) is the same value.
    assert_eq!(json_value(reply).unwrap(), value, "{reply:?}");
    value
}

fn key(revoked: Option<u64>, via: Option<&str>) -> KeyRecord {
    KeyRecord {
        fingerprint: "SHA256:abc".into(),
        system: "tau".into(),
        role: Role::Device,
        name: "dev1".into(),
        algorithm: "ssh-ed25519".into(),
        created: T,
        revoked,
        enrolled_via: via.map(String::from),
    }
}

fn invite() -> InviteRecord {
    InviteRecord {
        id: "inv1".into(),
        system: "tau".into(),
        role: Role::Controller,
        name: "alice".into(),
        created: T,
        expires: T + 3600,
        status: "pending".into(),
        used: None,
        used_by: None,
    }
}

fn exposure(allow_from: &[&str]) -> Exposure {
    Exposure {
        port: 4040,
        system: "tau".into(),
        device: "dev1".into(),
        device_port: 22,
        allow_from: allow_from.iter().map(|s| s.to_string()).collect(),
        created: T,
    }
}

fn gateway_view() -> GatewayView {
    GatewayView {
        id: 3,
        name: "gw1".into(),
        system: "ops".into(),
        online: false,
        since: None,
        address: None,
        scope: vec!["10.0.0.0/24".into()],
        ports: vec![22, 9100],
        permit: None,
        associations: vec![
            AssociationView {
                network: "10.1.0.0/24".into(),
                served: true,
            },
            AssociationView {
                network: "10.9.0.0/24".into(),
                served: false,
            },
        ],
        listens: vec![ListenView {
            bind: "127.0.0.1:9100".into(),
            to: "collector:9100".into(),
            allowed: false,
        }],
        rules: vec!["collector:9100".into()],
        created: T,
        updated: T,
    }
}

#[test]
fn host_key_systems_and_keys() {
    let hk = Reply::HostKey {
        fingerprint: "SHA256:hk".into(),
    };
    assert_eq!(out(&hk, Format::Text), "SHA256:hk\n");
    assert_eq!(
        out(&hk, Format::Json),
        "{\n  \"fingerprint\": \"SHA256:hk\"\n}\n"
    );
    let added = Reply::SystemAdded { name: "tau".into() };
    assert_eq!(out(&added, Format::Text), "added system tau\n");
    assert_eq!(json(&added)["data"]["name"], "tau");
    let systems = Reply::Systems(vec!["ops".into(), "tau".into()]);
    assert_eq!(out(&systems, Format::Text), "ops\ntau\n");
    assert_eq!(json(&systems), serde_json::json!(["ops", "tau"]));

    let k = key(None, None);
    assert_eq!(
        out(&Reply::KeyAdded(k.clone()), Format::Text),
        "added device key SHA256:abc for dev1 in system tau\n"
    );
    assert_eq!(
        json(&Reply::KeyAdded(k.clone()))["fingerprint"],
        "SHA256:abc"
    );
    assert_eq!(
        out(&Reply::KeyRevoked(k.clone()), Format::Text),
        "revoked device key SHA256:abc (dev1 in system tau); its connections are being closed\n"
    );
    assert_eq!(json(&Reply::KeyRevoked(k.clone()))["kind"], "key_revoked");
    let keys = Reply::Keys(vec![k, key(Some(T), Some("inv1"))]);
    let t = out(&keys, Format::Text);
    let lines: Vec<&str> = t.lines().collect();
    // The STATUS column is as wide as "revoked … (N days ago)".
    assert!(
        lines[0].starts_with("SYSTEM  ROLE    NAME  TYPE         FINGERPRINT  STATUS  "),
        "{t}"
    );
    assert!(lines[0].ends_with("  ENROLLED"), "{t}");
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        cells,
        [
            "tau",
            "device",
            "dev1",
            "ssh-ed25519",
            "SHA256:abc",
            "active",
            "key",
            "add"
        ]
    );
    assert!(lines[2].contains("revoked 2001-09-09T01:46:40Z ("), "{t}");
    assert!(lines[2].ends_with("invite inv1"), "{t}");
    assert_eq!(json(&keys)[1]["enrolled_via"], "inv1");
}

#[test]
fn devices_and_invites() {
    let d = DeviceStatus {
        ports: vec![22],
        labels: BTreeMap::from([("gpu".into(), "a100".into())]),
        ..DeviceStatus::offline("tau", "dev1")
    };
    let mut all = Reply::Devices {
        devices: vec![d.clone()],
        all_systems: true,
    };
    assert!(out(&all, Format::Text).starts_with("SYSTEM  NAME"));
    assert_eq!(json(&all)[0]["labels"]["gpu"], "a100");
    if let Reply::Devices { all_systems, .. } = &mut all {
        *all_systems = false;
    }
    let t = out(&all, Format::Text);
    assert!(
        t.starts_with("NAME") && t.lines().nth(1).unwrap().starts_with("dev1  offline"),
        "{t}"
    );

    let made = Reply::InviteMade(InviteMade {
        token: "wrn1.tok".into(),
        id: "inv1".into(),
        system: "tau".into(),
        role: Role::Device,
        name: "dev3".into(),
        relay: "relay:2222".into(),
        expires: T,
    });
    assert_eq!(out(&made, Format::Text), "wrn1.tok\n");
    assert_eq!(
        json(&made),
        serde_json::json!({"token": "wrn1.tok", "id": "inv1", "system": "tau", "role": "device",
            "name": "dev3", "relay": "relay:2222", "expires": T})
    );
    let invites = Reply::Invites(vec![invite()]);
    assert_eq!(
        out(&invites, Format::Text),
        "ID    SYSTEM  ROLE        NAME   STATUS   EXPIRES               USED BY\n\
         inv1  tau     controller  alice  pending  2001-09-09T02:46:40Z  -\n"
    );
    assert_eq!(json(&invites)[0]["status"], "pending");
    let revoked = Reply::InviteRevoked(invite());
    assert_eq!(out(&revoked, Format::Text), "revoked invite inv1\n");
    assert_eq!(json(&revoked)["data"]["id"], "inv1");
}

#[test]
fn disabling_and_enabling() {
    let mut r = Reply::Disabled {
        system: "tau".into(),
        device: "dev1".into(),
        disabled: true,
    };
    assert_eq!(
        out(&r, Format::Text),
        "disabled device dev1 in system tau; its live streams are being closed\n"
    );
    assert_eq!(json(&r)["data"]["disabled"], true);
    if let Reply::Disabled { disabled, .. } = &mut r {
        *disabled = false;
    }
    assert_eq!(out(&r, Format::Text), "enabled device dev1 in system tau\n");
}

#[test]
fn gateways_and_their_changes() {
    let v = gateway_view();
    let list = Reply::Gateways(vec![v]);
    assert_eq!(
        out(&list, Format::Text),
        "SYSTEM  NAME  STATUS   SCOPE        ASSOCIATIONS             RULES\n\
         ops     gw1   offline  10.0.0.0/24  10.1.0.0/24,10.9.0.0/24  collector:9100\n"
    );
    assert_eq!(json(&list)[0]["associations"][1]["served"], false);
    let show = Reply::Gateway(gateway_view());
    let t = out(&show, Format::Text);
    assert!(t.starts_with("id:           3\nname:         gw1\n"), "{t}");
    assert!(t.contains("status:       offline since never\n"), "{t}");
    assert!(
        t.contains("ports:        22, 9100\npermit:       (no limit)\n"),
        "{t}"
    );
    assert!(
        t.contains("10.9.0.0/24 (REFUSED: outside the gateway's permit)"),
        "{t}"
    );
    assert!(
        t.contains("listens:      127.0.0.1:9100 -> collector:9100 (NOT ALLOWED: no rule)\n"),
        "{t}"
    );
    assert_eq!(json(&show)["listens"][0]["to"], "collector:9100");
    let rules = Reply::Rules(vec!["a:1".into(), "b:2".into()]);
    assert_eq!(out(&rules, Format::Text), "a:1\nb:2\n");
    assert_eq!(json(&rules), serde_json::json!(["a:1", "b:2"]));

    let rule = |allowed| Reply::RuleChanged {
        system: "ops".into(),
        gateway: "gw1".into(),
        target: "collector:9100".into(),
        allowed,
    };
    assert_eq!(
        out(&rule(true), Format::Text),
        "gateway gw1 (system ops) may now reach collector:9100\n"
    );
    assert_eq!(
        out(&rule(false), Format::Text),
        "gateway gw1 (system ops) may no longer reach collector:9100\n"
    );
    assert_eq!(json(&rule(false))["data"]["allowed"], false);
    let deleted = Reply::GatewayDeleted {
        system: "ops".into(),
        gateway: "gw1".into(),
    };
    assert_eq!(
        out(&deleted, Format::Text),
        "deleted gateway gw1 of system ops\n"
    );
    assert_eq!(json(&deleted)["kind"], "gateway_deleted");
    let gone = Reply::Dissociated {
        system: "ops".into(),
        gateway: "gw1".into(),
        network: "10.1.0.0/24".into(),
    };
    assert_eq!(
        out(&gone, Format::Text),
        "dissociated 10.1.0.0/24 from gateway gw1 (system ops)\n"
    );
    assert_eq!(json(&gone)["data"]["network"], "10.1.0.0/24");
}

#[test]
fn an_association_outside_the_permit_warns_on_stderr() {
    let mut r = Reply::Associated {
        system: "ops".into(),
        gateway: "gw1".into(),
        network: "10.9.0.0/24".into(),
        outside_permit: None,
    };
    let said = "associated 10.9.0.0/24 with gateway gw1 (system ops)\n";
    assert_eq!(out(&r, Format::Text), said);
    if let Reply::Associated { outside_permit, .. } = &mut r {
        *outside_permit = Some(vec!["10.0.0.0/16".into(), "10.1.0.0/16".into()]);
    }
    let text = render(&r, Format::Text).unwrap();
    assert_eq!(text.out, said);
    assert_eq!(
        text.err,
        "warning: 10.9.0.0/24 is outside gateway gw1's permit (10.0.0.0/16, 10.1.0.0/16); the gateway will refuse it (flagged in `gateway show`)\n"
    );
    assert_eq!(json(&r)["data"]["outside_permit"][1], "10.1.0.0/16");
}

#[test]
fn public_ports() {
    let open = Reply::Exposed(exposure(&[]));
    assert_eq!(
        out(&open, Format::Text),
        "relay port 4040 now carries to tau/dev1:22 (from anywhere); the relay's public_ports must include 4040\n"
    );
    let limited = Reply::Exposed(exposure(&["10.0.0.0/8", "192.0.2.1/32"]));
    assert!(out(&limited, Format::Text).contains("(from 10.0.0.0/8, 192.0.2.1/32)"));
    assert_eq!(json(&limited)["allow_from"][0], "10.0.0.0/8");
    let list = Reply::Exposures(vec![exposure(&["10.0.0.0/8", "192.0.2.1/32"])]);
    let t = out(&list, Format::Text);
    assert!(
        t.starts_with("PORT  SYSTEM  DEVICE  DEVICE PORT  ALLOW FROM               CREATED\n"),
        "{t}"
    );
    assert!(
        t.contains(
            "\n4040  tau     dev1    22           10.0.0.0/8,192.0.2.1/32  2001-09-09T01:46:40Z ("
        ),
        "{t}"
    );
    assert_eq!(json(&list)[0]["port"], 4040);
    let removed = Reply::ExposureRemoved(exposure(&[]));
    assert_eq!(
        out(&removed, Format::Text),
        "removed public port 4040 (tau/dev1:22)\n"
    );
    assert_eq!(json(&removed)["data"]["device_port"], 22);
}

#[test]
fn a_log_page_as_table_json_lines_and_csv() {
    let event = |id| {
        let mut e = Event::new("login", "ok").system("tau").detail("a, \"b\"");
        e.id = id;
        e.time_ms = T * 1000;
        e
    };
    let page = Reply::Log {
        events: vec![event(9), event(8)],
        limit: 1,
    };
    let t = out(&page, Format::Text);
    assert_eq!(t.lines().count(), 3, "{t}");
    assert!(
        t.lines()
            .nth(1)
            .unwrap()
            .starts_with("9   2001-09-09T01:46:40.000Z  login  ok"),
        "{t}"
    );
    assert!(t.ends_with("-- more: add --before 9 --\n"), "{t}");
    let lines = out(&page, Format::Json);
    assert_eq!(
        lines.lines().count(),
        1,
        "one JSON object per event: {lines}"
    );
    let line: serde_json::Value = serde_json::from_str(lines.trim_end()).unwrap();
    assert_eq!(line["time"], "2001-09-09T01:46:40.000Z");
    assert_eq!(line["id"], 9);
    let csv = out(&page, Format::Csv);
    assert!(csv.starts_with("id,time,kind,result,system,"), "{csv}");
    assert!(csv.contains("\"a, \"\"b\"\"\""), "{csv}");
    assert_eq!(csv.lines().count(), 2, "{csv}");
}

#[test]
fn csv_is_only_for_the_log() {
    let err = render(&Reply::Systems(vec![]), Format::Csv).unwrap_err();
    assert_eq!(err.to_string(), "only `log` has a CSV form");
}
