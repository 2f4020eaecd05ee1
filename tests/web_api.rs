//! The HTTP API's admin routes: each runs the admin operation the CLI runs,
//! with the same text on refusal, audited with who acted; controllers only
//! read; bad input changes nothing.

mod common;

use common::web::{Session, TestWeb};
use common::*;
use serde_json::{Value, json};
use warren::audit::kind;
use warren::protocol::Role;
use warren::protocol::gateway::Announce;

impl TestWeb {
    async fn send(
        &self,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn send_as(&self, s: &Session, csrf: bool, path: &str, body: Value) -> (u16, Value) {
        let mut req = self
            .http
            .post(self.url(path))
            .header("cookie", &s.cookie)
            .json(&body);
        if csrf {
            req = req.header("x-csrf-token", &s.csrf);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn gateway_with_rule(r: &TestRelay) {
    r.store()
        .gateway_announce(
            "tau",
            "gw1",
            &Announce {
                scope: vec!["10.1.0.0/16".parse().unwrap()],
                ports: vec![22],
                permit: None,
                listens: Vec::new(),
            },
        )
        .unwrap();
}

#[tokio::test]
async fn devices_list_filter_sort_detail_and_disable() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let w = TestWeb::start(r.relay.clone()).await;
    let (_a, _) = r.echo_device("tau", "dev1").await;
    let (gone, _) = r.echo_device("tau", "dev2").await;
    drop(gone);
    r.wait_status("tau", "dev2", |d| !d.online).await;
    let admin = w.token("tau", Role::Admin);

    let (status, list) = w.get(&admin, "api/v1/devices?status=online").await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> = list["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dev1"]);
    let (_, list) = w.get(&admin, "api/v1/devices?sort=-name&limit=1").await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["devices"][0]["name"], "dev2");
    let (_, list) = w.get(&admin, "api/v1/devices?name=v2").await;
    assert_eq!(list["devices"][0]["name"], "dev2");
    // The echo devices have no labels: a label filter leaves none.
    let (status, list) = w.get(&admin, "api/v1/devices?label=site%3Dlab").await;
    assert_eq!((status, list["total"].as_u64()), (200, Some(0)), "{list}");
    for (q, code) in [
        ("sort=colour", "bad_query"),
        ("status=asleepish", "bad_query"),
        ("limit=0", "bad_limit"),
        ("shape=round", "bad_query"),
        ("label=nokey", "bad_value"),
        ("label=-x%3Dy", "bad_value"),
    ] {
        let (status, body) = w.get(&admin, &format!("api/v1/devices?{q}")).await;
        assert_eq!((status, body["code"].as_str()), (400, Some(code)), "{q}");
    }

    let (status, d) = w.get(&admin, "api/v1/devices/tau/dev1").await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["device"]["online"], true);
    assert!(
        d["device"]["address"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1")
    );
    assert!(
        d["history"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "device_up"),
        "{d}"
    );
    let (status, _) = w.get(&admin, "api/v1/devices/tau/nope").await;
    assert_eq!(status, 404);

    let mut rechecks = r.relay.rechecks();
    let (status, body) = w
        .send(&admin, "POST", "api/v1/devices/tau/dev1/disable", None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["message"],
        "disabled device dev1 in system tau; its live streams are being closed"
    );
    // The relay applies it at its next re-check of the store, woken now.
    let disabled = async {
        loop {
            let (_, list) = w.get(&admin, "api/v1/devices?status=disabled").await;
            if list["devices"][0]["name"] == "dev1" {
                return;
            }
            rechecks.changed().await.unwrap();
        }
    };
    tokio::time::timeout(WAIT, disabled)
        .await
        .expect("dev1 shown disabled");
    // On record, durable before the reply, with who and through what.
    let e = r
        .store()
        .audit(&audit_of(kind::DEVICE_DISABLE, 5))
        .unwrap()
        .remove(0);
    assert_eq!(e.key.as_deref(), Some("robot"));
    assert!(
        e.fingerprint.as_deref().unwrap().starts_with("web:"),
        "{e:?}"
    );
    assert!(e.detail.as_deref().unwrap().contains("via token"), "{e:?}");
    let (status, _) = w
        .send(&admin, "POST", "api/v1/devices/tau/dev1/enable", None)
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_controller_reads_its_own_system_and_changes_nothing() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    r.add_system("beta");
    let w = TestWeb::start(r.relay.clone()).await;
    r.add_key("beta", Role::Device, "other");
    let (_a, _) = r.echo_device("tau", "dev1").await;
    let ctl = w.token("tau", Role::Controller);
    let (_, systems) = w.get(&ctl, "api/v1/systems").await;
    assert_eq!(systems, json!(["tau"]));
    let (_, keys) = w.get(&ctl, "api/v1/keys").await;
    assert!(
        keys.as_array()
            .unwrap()
            .iter()
            .all(|k| k["system"] == "tau"),
        "{keys}"
    );
    let (status, body) = w.get(&ctl, "api/v1/devices?system=beta").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("other_system")));
    let before = r
        .store()
        .audit(&audit_of(kind::DEVICE_DISABLE, 5))
        .unwrap()
        .len();
    let (status, body) = w
        .send(&ctl, "POST", "api/v1/devices/tau/dev1/disable", None)
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("read_only")),
        "{body}"
    );
    let (_, list) = w.get(&ctl, "api/v1/devices?status=online").await;
    assert_eq!(list["devices"][0]["name"], "dev1", "still enabled");
    assert_eq!(
        r.store()
            .audit(&audit_of(kind::DEVICE_DISABLE, 5))
            .unwrap()
            .len(),
        before
    );

    // The same for a controller's console session, with its CSRF token.
    let s = w.session(Some("tau"), Role::Controller, "alice").await;
    let (status, body) = w
        .send_as(&s, true, "api/v1/devices/tau/dev1/disable", json!({}))
        .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("read_only")));
    // An admin session without its CSRF token changes nothing either.
    let admin = w.session(None, Role::Admin, "root").await;
    let (status, body) = w
        .send_as(&admin, false, "api/v1/devices/tau/dev1/disable", json!({}))
        .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("csrf")));
    let (status, _) = w
        .send_as(&admin, true, "api/v1/devices/tau/dev1/disable", json!({}))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn gateways_invites_keys_and_ports_through_the_api() {
    let r = TestRelay::start_with(warren::relay::RelayOptions {
        advertise: Some("relay.example:2222".into()),
        ..Default::default()
    })
    .await;
    r.add_system("tau");
    let w = TestWeb::start(r.relay.clone()).await;
    gateway_with_rule(&r);
    let admin = w.token("tau", Role::Admin);

    let (status, body) = w
        .send(
            &admin,
            "POST",
            "api/v1/gateways/tau/gw1/associate",
            Some(json!({"network": "10.2.0.0/16"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = w
        .send(
            &admin,
            "POST",
            "api/v1/gateways/tau/gw1/allow",
            Some(json!({"target": "db:5432"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, gw) = w.get(&admin, "api/v1/gateways/tau/gw1").await;
    assert_eq!(gw["rules"], json!(["db:5432"]));
    assert_eq!(gw["associations"][0]["network"], "10.2.0.0/16");
    // Delete is refused while rules exist, with the CLI's text, and changes nothing.
    let (status, body) = w
        .send(&admin, "DELETE", "api/v1/gateways/tau/gw1", None)
        .await;
    assert_eq!((status, body["code"].as_str()), (409, Some("refused")));
    assert_eq!(
        body["error"],
        "gateway gw1 still has 1 forwarding rule (db:5432); remove them with `gateway deny`, or delete with --force"
    );
    let (_, list) = w.get(&admin, "api/v1/gateways").await;
    assert_eq!(list.as_array().unwrap().len(), 1);
    // Bad bodies: unknown field, wrong field, a flag smuggled in, too large.
    for body in [
        json!({"network": "10.3.0.0/16", "force": true}),
        json!({"target": "db:1"}),
        json!({"network": "--force"}),
        json!({"network": "x".repeat(70_000)}),
    ] {
        let (status, got) = w
            .send(
                &admin,
                "POST",
                "api/v1/gateways/tau/gw1/associate",
                Some(body),
            )
            .await;
        assert_eq!(status, 400, "{got}");
    }
    let (_, gw) = w.get(&admin, "api/v1/gateways/tau/gw1").await;
    assert_eq!(
        gw["associations"].as_array().unwrap().len(),
        1,
        "nothing changed"
    );
    let (status, _) = w
        .send(
            &admin,
            "POST",
            "api/v1/gateways/tau/gw1/deny",
            Some(json!({"target": "db:5432"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = w
        .send(
            &admin,
            "POST",
            "api/v1/gateways/tau/gw1/dissociate",
            Some(json!({"network": "10.2.0.0/16"})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = w
        .send(&admin, "DELETE", "api/v1/gateways/tau/gw1", None)
        .await;
    assert_eq!(status, 200, "{body}");

    // Invites: the token once, then listed without it, then revoked.
    let (status, inv) = w
        .send(
            &admin,
            "POST",
            "api/v1/invites",
            Some(json!({"system": "tau", "role": "device", "name": "dev9", "ttl": "1h"})),
        )
        .await;
    assert_eq!(status, 200, "{inv}");
    assert!(
        inv["token"].as_str().unwrap().starts_with("warren1."),
        "{inv}"
    );
    let (_, invites) = w.get(&admin, "api/v1/invites").await;
    assert!(!invites.to_string().contains(inv["token"].as_str().unwrap()));
    let id = inv["id"].as_str().unwrap();
    let (status, _) = w
        .send(&admin, "POST", &format!("api/v1/invites/{id}/revoke"), None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = w
        .send(
            &admin,
            "POST",
            "api/v1/invites",
            Some(json!({"system": "beta", "role": "device", "name": "x"})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("other_system")));

    // Keys: revoke by fingerprint.
    r.add_key("tau", Role::Controller, "bob");
    let (_, keys) = w.get(&admin, "api/v1/keys").await;
    let fp = keys[0]["fingerprint"].as_str().unwrap().to_string();
    let (status, body) = w
        .send(
            &admin,
            "POST",
            "api/v1/keys/revoke",
            Some(json!({"fingerprint": fp})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = w
        .send(
            &admin,
            "POST",
            "api/v1/keys/revoke",
            Some(json!({"fingerprint": "SHA256:nope"})),
        )
        .await;
    assert_eq!(status, 404);

    // Public ports.
    let (status, body) = w
        .send(
            &admin,
            "POST",
            "api/v1/ports",
            Some(json!({"system": "tau", "target": "dev1:22", "port": 4040})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, ports) = w.get(&admin, "api/v1/ports").await;
    assert_eq!(ports[0]["port"], 4040);
    let (status, _) = w.send(&admin, "DELETE", "api/v1/ports/4040", None).await;
    assert_eq!(status, 200);
    let (status, body) = w.get(&admin, "api/v1/nothing-here").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn a_key_added_through_the_api_logs_in_and_bad_keys_change_nothing() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    r.add_system("beta");
    let w = TestWeb::start(r.relay.clone()).await;
    let admin = w.token("tau", Role::Admin);
    let key = warren::ssh::keys::generate_ed25519().unwrap();
    let text = key.public_key().to_openssh().unwrap();
    let body = |system: &str, role: &str, name: &str, public_key: &str| {
        Some(json!({"system": system, "role": role, "name": name, "public_key": public_key}))
    };
    let keys_now = || r.store().keys().unwrap().len();
    // Refusals first: none of them adds a key.
    for (b, status, code) in [
        (
            body("tau", "controller", "bob", "ssh-ed25519 AAAAnope"),
            400,
            "bad_value",
        ),
        (body("tau", "owner", "bob", &text), 400, "bad_value"),
        (body("tau", "controller", "-bob", &text), 400, "bad_value"),
        (body("tau", "controller", "bob b", &text), 400, "bad_value"),
        (
            body("beta", "controller", "bob", &text),
            403,
            "other_system",
        ),
    ] {
        let (got, reply) = w.send(&admin, "POST", "api/v1/keys", b).await;
        assert_eq!(
            (got, reply["code"].as_str()),
            (status, Some(code)),
            "{reply}"
        );
    }
    let (got, reply) = w
        .send(
            &admin,
            "POST",
            "api/v1/keys",
            Some(json!({"system": "tau", "role": "controller", "name": "bob", "public_key": text, "x": 1})),
        )
        .await;
    assert_eq!(got, 400, "{reply}");
    let ctl = w.token("tau", Role::Controller);
    let (got, reply) = w
        .send(
            &ctl,
            "POST",
            "api/v1/keys",
            body("tau", "controller", "bob", &text),
        )
        .await;
    assert_eq!((got, reply["code"].as_str()), (403, Some("read_only")));
    assert_eq!(keys_now(), 0);

    let (got, reply) = w
        .send(
            &admin,
            "POST",
            "api/v1/keys",
            body("tau", "controller", "bob", &text),
        )
        .await;
    assert_eq!(got, 200, "{reply}");
    let fp = warren::ssh::keys::fingerprint(key.public_key());
    assert!(
        reply["message"].as_str().unwrap().contains(fp.as_str()),
        "{reply}"
    );
    let (_, keys) = w.get(&admin, "api/v1/keys").await;
    assert_eq!(keys[0]["fingerprint"], fp.as_str());
    assert_eq!(keys[0]["role"], "controller");
    // The same key again: the store's refusal, with the CLI's text.
    let (got, reply) = w
        .send(
            &admin,
            "POST",
            "api/v1/keys",
            body("tau", "device", "dev7", &text),
        )
        .await;
    assert_eq!(
        (got, reply["code"].as_str()),
        (409, Some("refused")),
        "{reply}"
    );
    assert!(
        reply["error"]
            .as_str()
            .unwrap()
            .contains("is already registered as controller bob"),
        "{reply}"
    );
    // On record with who acted, and the key logs in.
    let e = r
        .store()
        .audit(&audit_of(kind::KEY_ADD, 5))
        .unwrap()
        .remove(0);
    assert_eq!(e.key.as_deref(), Some("robot"));
    assert!(e.detail.as_deref().unwrap().contains("via token"), "{e:?}");
    let id = r
        .store()
        .identity("tau", key.public_key())
        .unwrap()
        .unwrap();
    assert_eq!((id.role, id.name.as_str()), (Role::Controller, "bob"));
}

impl TestWeb {
    /// A console page as a session sees it: status and HTML.
    async fn page(&self, s: &Session, path: &str) -> (u16, String) {
        let resp = self
            .http
            .get(self.url(path))
            .header("cookie", &s.cookie)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }
}

#[tokio::test]
async fn the_console_shows_asleep_devices_and_a_new_machine_coming_online() {
    let r = TestRelay::start_with(warren::relay::RelayOptions {
        advertise: Some("relay.example:2222".into()),
        ..Default::default()
    })
    .await;
    r.add_system("tau");
    let w = TestWeb::start(r.relay.clone()).await;
    let admin = w.token("tau", Role::Admin);
    let s = w.session(None, Role::Admin, "root").await;
    // An on-demand device that went to sleep: asleep, not offline.
    let (gone, _) = r.echo_device("tau", "dev1").await;
    drop(gone);
    r.wait_status("tau", "dev1", |d| !d.online).await;
    r.store().set_on_demand("tau", "dev1", true).unwrap();
    r.store()
        .report_state(
            "tau",
            "dev1",
            "asleep",
            Some("idle"),
            "2026-01-02T03:04:05Z",
        )
        .unwrap();
    let (_, list) = w.get(&admin, "api/v1/devices?status=asleep").await;
    assert_eq!(list["devices"][0]["name"], "dev1", "{list}");
    let (_, list) = w.get(&admin, "api/v1/devices?status=offline").await;
    assert_eq!(list["total"], 0, "{list}");
    let (status, html) = w.page(&s, "devices").await;
    assert_eq!(status, 200);
    assert!(
        html.contains("<span class=\"st asleep\">asleep</span>"),
        "{html}"
    );
    // The filter offers every status.
    assert!(html.contains("<option>waking</option>"), "{html}");
    let (_, html) = w.page(&s, "").await;
    assert!(html.contains("1 asleep</a>"), "{html}");
    let (_, html) = w.page(&s, "devices/tau/dev1").await;
    assert!(html.contains("yes; last reported <span class=\"st asleep\">asleep</span> at 2026-01-02T03:04:05Z (idle)"), "{html}");

    // "Add a gateway": the invite, then the machine as the relay sees it.
    let (status, inv) = w
        .send(
            &admin,
            "POST",
            "api/v1/invites",
            Some(json!({"system": "tau", "role": "device", "name": "gw9"})),
        )
        .await;
    assert_eq!(status, 200, "{inv}");
    let token = inv["token"].as_str().unwrap();
    let row = |html: &str, check: &str| -> String {
        let at = html
            .find(&format!("<tr><td>{check}<td>"))
            .unwrap_or_else(|| panic!("{check} missing:\n{html}"));
        html[at..].split("</tr>").next().unwrap().to_string()
    };
    let (status, html) = w.page(&s, "enroll/tau/gw9").await;
    assert_eq!(status, 200, "{html}");
    assert!(!html.contains(token), "the page never holds the token");
    assert!(row(&html, "invite").contains("st waiting"), "{html}");
    assert!(
        row(&html, "connected").contains("not connected yet"),
        "{html}"
    );
    assert!(row(&html, "SSH authentication").contains("unavailable until the key is registered"));
    let fp = r.relay.host_key().to_string();
    assert!(row(&html, "relay host key").contains(&fp), "{html}");
    let (_gw, _) = r.echo_device("tau", "gw9").await;
    let (_, html) = w.page(&s, "enroll/tau/gw9").await;
    assert!(row(&html, "connected").contains("st online"), "{html}");
    assert!(row(&html, "key registered").contains("st ok"), "{html}");
    assert!(
        row(&html, "SSH authentication").contains("available: logged in"),
        "{html}"
    );
    // Disabled by an admin: unavailable, and why.
    let (status, _) = w
        .send(&admin, "POST", "api/v1/devices/tau/gw9/disable", None)
        .await;
    assert_eq!(status, 200);
    let (_, html) = w.page(&s, "enroll/tau/gw9").await;
    assert!(
        row(&html, "SSH authentication")
            .contains("unavailable: the device is disabled by an admin"),
        "{html}"
    );
}

/// Bandwidth limits (issue 21): the API's device JSON carries the device's
/// limit and its system's; the console shows both on the device list and
/// page, and the system's on the overview's card.
#[tokio::test]
async fn the_api_and_console_show_device_and_system_limits() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let w = TestWeb::start(r.relay.clone()).await;
    let (_a, _) = r.echo_device("tau", "dev1").await;
    let rate = |bps| warren::protocol::rate::Rate::new(bps).unwrap();
    let store = r.store();
    store
        .set_rate(&name("tau"), None, Some(rate(10_000_000)))
        .unwrap();
    store
        .set_rate(&name("tau"), Some(&name("dev1")), Some(rate(2_000_000)))
        .unwrap();
    let admin = w.token("tau", Role::Admin);
    let (status, d) = w.get(&admin, "api/v1/devices/tau/dev1").await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["device"]["rate"]["bytes_per_second"], 2_000_000, "{d}");
    assert_eq!(d["device"]["system_rate"]["bytes_per_second"], 10_000_000);
    let (_, list) = w.get(&admin, "api/v1/devices").await;
    assert_eq!(list["devices"][0]["rate"]["bytes_per_second"], 2_000_000);

    let s = w.session(None, Role::Admin, "root").await;
    let (_, html) = w.page(&s, "devices").await;
    assert!(html.contains("<td>2M/s · system 10M/s</tr>"), "{html}");
    let (_, html) = w.page(&s, "devices/tau/dev1").await;
    assert!(html.contains("Device limit<td>2M/s</tr>"), "{html}");
    assert!(html.contains("System limit<td>10M/s</tr>"), "{html}");
    let (_, html) = w.page(&s, "").await;
    assert!(html.contains("streams · limit 10M/s</div>"), "{html}");
}
