//! Labels an admin sets on a device (issue 17): `warren admin device label`
//! and the same over remote admin, refusals that change nothing, the
//! merged labels in `ls`, the label filter and the audit log, and an agent
//! registering again without undoing the admin's word; the same through
//! `PUT /api/v1/devices/{system}/{name}/labels`.

mod common;

use std::collections::BTreeMap;

use common::cli::{warren, warren_ok};
use common::web::{Session, TestWeb};
use common::*;
use serde_json::json;
use warren::audit::kind;
use warren::protocol::Role;

fn labels(l: &[(&str, &str)]) -> BTreeMap<String, String> {
    l.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `warren admin --data DATA device label --system tau ARGS…`.
fn label_args(data: &str, args: &[&str]) -> Vec<String> {
    let mut all = vec![
        "admin", "--data", data, "device", "label", "--system", "tau",
    ];
    all.extend_from_slice(args);
    all.iter().map(|s| s.to_string()).collect()
}

/// Bad labels and an unknown device are refused with their reason, and
/// nothing is stored.
async fn refusals_change_nothing(r: &TestRelay, data: &str) {
    for (args, reason) in [
        (vec!["gpu1", "bad key=x"], "label key \"bad key\""),
        (vec!["gpu1", "site=has space"], "values use letters"),
        (vec!["gpu1", "site"], "expected KEY=VALUE"),
        (vec!["gpu1", "--remove=-x"], "label key \"-x\""),
        (vec!["gpu1"], "no label change"),
        (vec!["gpu1", "site=a", "--remove", "site"], "named twice"),
        (vec!["nosuch", "site=a"], "no device nosuch in system tau"),
    ] {
        let a = label_args(data, &args);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let ran = warren(&a).await;
        assert!(!ran.ok, "{args:?} was accepted");
        assert!(ran.stderr.contains(reason), "{args:?}: {}", ran.stderr);
    }
    assert!(r.store().admin_labels(None).unwrap().is_empty());
}

/// `ls`: merged, the admin's marked; the filter uses the merged set.
async fn ls_shows_the_merged_labels(data: &str) {
    let ls = |extra: &[&str]| {
        let mut a = vec!["admin", "--data", data, "ls"];
        a.extend_from_slice(extra);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let out = warren_ok(&ls(&[])).await;
    assert!(out.contains("os=debian,room=b12*,site=lab9*"), "{out}");
    let out = warren_ok(&ls(&["--label", "site=lab9", "--json"])).await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1, "{out}");
    assert_eq!(v[0]["admin_labels"], serde_json::json!(["room", "site"]));
    assert_eq!(v[0]["hidden_labels"], serde_json::json!(["gpu"]));
    for gone in ["site=lab3", "gpu=a100"] {
        let out = warren_ok(&ls(&["--label", gone, "--json"])).await;
        assert_eq!(out.trim(), "[]", "{gone}: {out}");
    }
}

#[tokio::test]
async fn an_admins_labels_override_hide_and_survive_the_agent_registering_again() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let port = echo_server().await;
    let allow = [format!("127.0.0.1:{port}")];
    let key = r.add_key("tau", Role::Device, "gpu1");
    let mut settings = r.agent_settings("tau", "gpu1", key.clone(), &allow);
    settings.labels = labels(&[("gpu", "a100"), ("site", "lab3"), ("os", "debian")]);
    let mut agent = TestAgent::start(settings.clone());
    agent.online().await;
    r.wait_status("tau", "gpu1", |d| d.labels.len() == 3).await;
    let data = r.dir.path().to_str().unwrap().to_string();
    let admin = |args: &[&str]| label_args(&data, args);
    refusals_change_nothing(&r, &data).await;

    // Set one (overriding the agent's), add one, hide one.
    let out = warren_ok(&admin(&[
        "gpu1",
        "site=lab9",
        "room=b12",
        "--remove",
        "gpu",
        "--json",
    ]))
    .await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["kind"], "labels_set", "{out}");
    assert_eq!(v["data"]["labels"]["site"], "lab9");
    assert_eq!(v["data"]["hidden"], serde_json::json!(["gpu"]));
    let want = labels(&[("os", "debian"), ("room", "b12"), ("site", "lab9")]);
    let d = r.wait_status("tau", "gpu1", |d| d.labels == want).await;
    assert_eq!(d.admin_labels, ["room", "site"]);

    ls_shows_the_merged_labels(&data).await;

    // The agent registers again, now with one more label: the admin's
    // word stays, its new label shows.
    drop(agent);
    r.wait_online("tau", "gpu1", false).await;
    settings.labels.insert("rack".into(), "r7".into());
    let mut agent = TestAgent::start(settings);
    agent.online().await;
    let d = r
        .wait_status("tau", "gpu1", |d| d.online && d.labels.contains_key("rack"))
        .await;
    let want = labels(&[
        ("os", "debian"),
        ("rack", "r7"),
        ("room", "b12"),
        ("site", "lab9"),
    ]);
    assert_eq!(d.labels, want);
    assert_eq!(d.hidden_labels, ["gpu"]);

    // Reset forgets the admin's word: the agent's labels show again.
    warren_ok(&admin(&["gpu1", "--reset", "site", "--reset", "gpu"])).await;
    let d = r
        .wait_status("tau", "gpu1", |d| {
            d.labels.get("site").map(String::as_str) == Some("lab3")
        })
        .await;
    assert_eq!(d.labels["gpu"], "a100");
    assert_eq!(d.admin_labels, ["room"]);

    // Every change is in the log, with who made it and what changed.
    let events = r.store().audit(&audit_of(kind::LABELS_SET, 10)).unwrap();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].key.as_deref(), Some("(local admin)"));
    assert_eq!(events[1].device.as_deref(), Some("gpu1"));
    assert_eq!(events[1].detail.as_deref(), Some("room=b12 site=lab9 -gpu"));
    assert_eq!(events[0].detail.as_deref(), Some("reset site reset gpu"));
}

#[tokio::test]
async fn remote_admin_sets_labels_and_a_controller_may_not() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    r.add_system("ops");
    let (_dev, _port) = r.echo_device("tau", "dev1").await;
    let root = r.add_key("ops", Role::Admin, "root");
    let ops = r.controller("ops", root).await;
    let ctl = r.add_key("tau", Role::Controller, "alice");
    let conn = r.controller("tau", ctl).await;

    let out = ops
        .exec("device label --system tau dev1 site=lab9 --remove os")
        .await
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        text,
        "device dev1 in system tau: admin labels site=lab9; agent labels hidden: os\n"
    );
    let d = r
        .wait_status("tau", "dev1", |d| !d.admin_labels.is_empty())
        .await;
    assert_eq!(d.labels["site"], "lab9");
    let e = r
        .wait_audit(&audit_of(kind::LABELS_SET, 10), |e| {
            e.device.as_deref() == Some("dev1")
        })
        .await;
    assert_eq!(e.key.as_deref(), Some("root"));

    // Refused with a clear reason, nothing changed.
    for (cmd, reason) in [
        ("device label --system tau dev1 site=lab1", "admin"),
        (
            "device label --system tau nosuch site=lab1",
            "no device nosuch",
        ),
        ("device label --system tau dev1 k=a,b", "values use letters"),
    ] {
        let who = if reason == "admin" { &conn } else { &ops };
        let out = who.exec(cmd).await.unwrap();
        assert_ne!(out.status, 0, "{cmd}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(reason), "{cmd}: {err}");
    }
    let rows = r.store().admin_labels(None).unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[1].value.as_deref(), Some("lab9"));
}

/// PUT with a bearer token, or a session's cookie (and its CSRF token when
/// `csrf`); the status and the JSON body.
async fn put(
    w: &TestWeb,
    auth: Result<&str, (&Session, bool)>,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut req = w.http.put(w.url(path)).json(&body);
    req = match auth {
        Ok(token) => req.bearer_auth(token),
        Err((s, csrf)) => {
            let req = req.header("cookie", &s.cookie);
            if csrf {
                req.header("x-csrf-token", &s.csrf)
            } else {
                req
            }
        }
    };
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// Bad labels and bodies, and an unknown device: the CLI's text and a
/// stable code.
async fn api_refusals(w: &TestWeb, admin: &str, path: &str) {
    let refusals = [
        (
            path,
            json!({"set": {"bad key": "x"}}),
            400,
            "bad_value",
            "label key \"bad key\"",
        ),
        (
            path,
            json!({"set": {"site": "a b"}}),
            400,
            "bad_value",
            "values use letters",
        ),
        (
            path,
            json!({"remove": ["-x"]}),
            400,
            "bad_value",
            "label key \"-x\"",
        ),
        (path, json!({}), 400, "bad_value", "no label change"),
        (
            path,
            json!({"set": {}, "drop": ["x"]}),
            400,
            "bad_body",
            "unknown field",
        ),
        (
            "api/v1/devices/tau/nosuch/labels",
            json!({"set": {"site": "x"}}),
            409,
            "refused",
            "no device nosuch in system tau",
        ),
    ];
    for (p, body, code, kind, text) in refusals {
        let (status, v) = put(w, Ok(admin), p, body.clone()).await;
        assert_eq!(
            (status, v["code"].as_str()),
            (code, Some(kind)),
            "{body}: {v}"
        );
        assert!(v["error"].as_str().unwrap().contains(text), "{body}: {v}");
    }
}

/// A console page, as the session `cookie` sees it.
async fn page(w: &TestWeb, cookie: &str, path: &str) -> String {
    let resp = w
        .http
        .get(w.url(path))
        .header("cookie", cookie)
        .send()
        .await;
    resp.unwrap().text().await.unwrap()
}

#[tokio::test]
async fn the_api_sets_and_removes_labels_and_refuses_as_the_cli_does() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    r.add_system("ops");
    let w = TestWeb::start(r.relay.clone()).await;
    let (_dev, _) = r.echo_device("tau", "dev1").await;
    let admin = w.token("tau", Role::Admin);
    let path = "api/v1/devices/tau/dev1/labels";

    let (status, v) = put(
        &w,
        Ok(&admin),
        path,
        json!({"set": {"site": "lab9", "room": "b12"}, "remove": ["os"]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["labels"], json!({"room": "b12", "site": "lab9"}));
    assert_eq!(v["data"]["hidden"], json!(["os"]));
    // The list and its label filter show the merged labels, the admin's named.
    let (_, list) = w.get(&admin, "api/v1/devices?label=site%3Dlab9").await;
    assert_eq!(list["total"], 1, "{list}");
    assert_eq!(list["devices"][0]["admin_labels"], json!(["room", "site"]));
    let (_, d) = w.get(&admin, "api/v1/devices/tau/dev1").await;
    assert_eq!(d["device"]["labels"]["room"], "b12", "{d}");
    let (status, v) = put(&w, Ok(&admin), path, json!({"reset": ["room"]})).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"]["labels"], json!({"site": "lab9"}));

    // Refusals: the CLI's text, a stable code, nothing changed.
    let before = r.store().admin_labels(None).unwrap();
    api_refusals(&w, &admin, path).await;
    // A controller may not; nor an admin token of another system.
    let ctl = w.token("tau", Role::Controller);
    let (status, v) = put(&w, Ok(&ctl), path, json!({"set": {"x": "y"}})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("read_only")),
        "{v}"
    );
    let other = w.token("ops", Role::Admin);
    let (status, v) = put(&w, Ok(&other), path, json!({"set": {"x": "y"}})).await;
    assert_eq!(
        (status, v["code"].as_str()),
        (403, Some("other_system")),
        "{v}"
    );
    // A session needs its CSRF token.
    let s = w.session(Some("tau"), Role::Admin, "carol").await;
    let (status, v) = put(&w, Err((&s, false)), path, json!({"set": {"x": "y"}})).await;
    assert_eq!((status, v["code"].as_str()), (403, Some("csrf")), "{v}");
    assert_eq!(r.store().admin_labels(None).unwrap(), before);
    let (status, v) = put(&w, Err((&s, true)), path, json!({"set": {"x": "y"}})).await;
    assert_eq!(status, 200, "{v}");
    let e = r
        .wait_audit(&audit_of(kind::LABELS_SET, 10), |e| {
            e.detail.as_deref().unwrap_or("").starts_with("x=y")
        })
        .await;
    assert_eq!(e.key.as_deref(), Some("carol"), "{e:?}");
    // The device page has the labels form for admins only, and marks
    // the admin's labels.
    let viewer = w.session(Some("tau"), Role::Controller, "dave").await;
    for (who, form) in [(&s, true), (&viewer, false)] {
        let page = page(&w, &who.cookie, "devices/tau/dev1").await;
        assert!(
            page.contains("title=\"set by an admin\">x=y</span>"),
            "{page}"
        );
        assert_eq!(
            page.contains("data-labels=\"PUT /api/v1/devices/tau/dev1/labels\""),
            form
        );
    }
    assert!(
        e.detail
            .as_deref()
            .unwrap()
            .contains("(via console session"),
        "{e:?}"
    );
}
