//! The HTTP API, console login and metrics, against an in-process relay on
//! 127.0.0.1:0 with its API and metrics on ports of their own.

mod common;

use std::collections::HashSet;

use common::web::TestWeb;
use common::*;
use warren::admin::access;
use warren::audit::{Event, kind};
use warren::protocol::Role;
use warren::store::credentials::{CredKind, NewCredential};

#[tokio::test]
async fn a_login_url_works_once_and_sets_a_strict_cookie() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let w = TestWeb::start(r.relay.clone()).await;
    let url = w.login_url(Some("tau"), Role::Controller, "alice");
    let resp = w.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Max-Age=43200", "Path=/"] {
        assert!(set.contains(attr), "{attr} missing from {set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: no Secure flag: {set}");
    let cookie = set.split(';').next().unwrap().to_string();

    // Used twice: refused, with the stable code.
    let again = w.http.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 403);
    let body: serde_json::Value = again.json().await.unwrap();
    assert_eq!(body["code"], "login_link_invalid");

    let me: serde_json::Value = w
        .http
        .get(w.url("api/v1/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["who"], "alice");
    assert_eq!(me["role"], "controller");
    assert_eq!(me["system"], "tau");
    assert_eq!(me["csrf"].as_str().unwrap().len(), 32);

    // Stored hashed: neither the link's nor the session's secret is in the database.
    let secret = cookie.split_once('.').unwrap().1;
    let link_secret = url.rsplit_once('.').unwrap().1;
    let db = std::fs::read(r.dir.path().join("warren.db")).unwrap();
    let wal = std::fs::read(r.dir.path().join("warren.db-wal")).unwrap_or_default();
    for s in [secret, link_secret] {
        let needle = s.as_bytes();
        assert!(!db.windows(needle.len()).any(|w| w == needle));
        assert!(!wal.windows(needle.len()).any(|w| w == needle));
    }
    // The login is on record with who made it.
    let e = r
        .wait_audit(&audit_of(kind::CONSOLE_LOGIN, 10), |e| {
            e.result == "ok" && e.detail.as_deref().unwrap_or("").contains("session")
        })
        .await;
    assert_eq!(e.key.as_deref(), Some("alice"));
    assert_eq!(e.system.as_deref(), Some("tau"));
}

#[tokio::test]
async fn a_login_url_older_than_five_minutes_is_refused() {
    let r = TestRelay::start().await;
    let w = TestWeb::start(r.relay.clone()).await;
    let made = r
        .store()
        .issue_credential(&NewCredential {
            kind: CredKind::Login,
            system: None,
            role: Role::Admin,
            who: "root",
            now: warren::store::now() - 301,
            ttl_secs: access::LOGIN_TTL.as_secs(),
        })
        .unwrap();
    let resp = w
        .open_login(&w.url(&format!("login/{}", made.secret)))
        .await
        .unwrap_err();
    assert_eq!(resp.status(), 403);
    // And a link of the same age minus a few seconds still works.
    let fresh = r
        .store()
        .issue_credential(&NewCredential {
            kind: CredKind::Login,
            system: None,
            role: Role::Admin,
            who: "root",
            now: warren::store::now() - 290,
            ttl_secs: access::LOGIN_TTL.as_secs(),
        })
        .unwrap();
    assert!(
        w.open_login(&w.url(&format!("login/{}", fresh.secret)))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn logout_needs_the_csrf_token_and_ends_the_session() {
    let r = TestRelay::start().await;
    let w = TestWeb::start(r.relay.clone()).await;
    let s = w.session(None, Role::Admin, "root").await;
    let other = w.session(None, Role::Admin, "root").await;
    let logout = |csrf: Option<&str>| {
        let mut req = w
            .http
            .post(w.url("api/v1/logout"))
            .header("cookie", &s.cookie);
        if let Some(c) = csrf {
            req = req.header("x-csrf-token", c);
        }
        req.send()
    };
    let resp = logout(None).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["code"],
        "csrf"
    );
    // Another session's token is not this one's.
    let resp = logout(Some(&other.csrf)).await.unwrap();
    assert_eq!(resp.status(), 403);
    let resp = logout(Some(&s.csrf)).await.unwrap();
    assert_eq!(resp.status(), 204);
    let after = w
        .http
        .get(w.url("api/v1/session"))
        .header("cookie", &s.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 401);
    assert_eq!(
        after.json::<serde_json::Value>().await.unwrap()["code"],
        "unauthenticated"
    );

    // `console-logout --all` ends the other one too.
    let session_ok = |cookie: String| {
        let req = w.http.get(w.url("api/v1/session")).header("cookie", cookie);
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(session_ok(other.cookie.clone()).await, 200);
    access::console_logout(r.store()).unwrap();
    assert_eq!(session_ok(other.cookie.clone()).await, 401);
}

/// 10,000 events, one a second from t0, alternating systems and kinds.
fn ten_thousand(t0: u64) -> Vec<Event> {
    (0..10_000u64)
        .map(|i| {
            let mut e = Event::new(
                if i % 2 == 0 {
                    kind::STREAM_CLOSE
                } else {
                    kind::LOGIN
                },
                "ok",
            )
            .system(if i % 5 == 0 { "beta" } else { "tau" })
            .device(format!("dev{}", i % 7))
            .key_name("alice");
            e.time_ms = t0 + i * 1000;
            e
        })
        .collect()
}

fn rfc(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

#[tokio::test]
async fn audit_pages_through_a_date_range_with_a_cursor() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let w = TestWeb::start(r.relay.clone()).await;
    let t0 = 1_700_000_000_000;
    r.store().append_audit(&ten_thousand(t0)).unwrap();
    let token = w.token("tau", Role::Controller);
    // Events 2000..8000 of system tau.
    let (since, until) = (rfc(t0 + 2000 * 1000), rfc(t0 + 8000 * 1000));
    let want: HashSet<u64> = (2000..8000u64).filter(|i| i % 5 != 0).collect();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = format!("api/v1/audit?since={since}&until={until}&limit=700");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = w.get(&token, &path).await;
        assert_eq!(status, 200, "{page}");
        for e in page["events"].as_array().unwrap() {
            assert_eq!(e["system"], "tau");
            seen.push((
                e["id"].as_i64().unwrap(),
                (e["time_ms"].as_u64().unwrap() - t0) / 1000,
            ));
        }
        pages += 1;
        if pages == 2 {
            // New events arrive while paging: the next pages do not shift.
            r.store().append_audit(&ten_thousand(t0)[..100]).unwrap();
        }
        match page["next"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(pages, want.len().div_ceil(700));
    assert!(
        seen.windows(2).all(|p| p[0].0 > p[1].0),
        "newest first, no repeats"
    );
    let got: HashSet<u64> = seen.iter().map(|(_, i)| *i).collect();
    assert_eq!(got, want);
    assert_eq!(seen.len(), want.len());

    // The cursor is refused with other filters, and garbage is refused.
    let c = cursor_of(&w, &token, &format!("since={since}&limit=10")).await;
    let (status, body) = w
        .get(
            &token,
            &format!("api/v1/audit?kind=login&since={since}&cursor={c}"),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_cursor")));
    let (status, body) = w.get(&token, "api/v1/audit?cursor=zzzz").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_cursor")));
    // Bad times, unknown fields, limits.
    for (q, code) in [
        ("since=yesterday", "bad_time"),
        ("until=2026-02-30T00:00:00Z", "bad_time"),
        ("colour=red", "bad_query"),
        ("limit=0", "bad_limit"),
        ("limit=many", "bad_query"),
    ] {
        let (status, body) = w.get(&token, &format!("api/v1/audit?{q}")).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some(code)),
            "{q}: {body}"
        );
    }
    // A controller's token sees its own system only.
    let (status, body) = w.get(&token, "api/v1/audit?system=beta").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("other_system")));
    // Without credentials: nothing.
    let resp = w.http.get(w.url("api/v1/audit")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
}

async fn cursor_of(w: &TestWeb, token: &str, q: &str) -> String {
    let (status, page) = w.get(token, &format!("api/v1/audit?{q}")).await;
    assert_eq!(status, 200, "{page}");
    page["next"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn audit_csv_has_the_chosen_columns_and_filters() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let w = TestWeb::start(r.relay.clone()).await;
    let t0 = 1_700_000_000_000;
    r.store().append_audit(&ten_thousand(t0)[..50]).unwrap();
    let token = w.token("tau", Role::Admin);
    let resp = w
        .http
        .get(w.url(&format!(
            "api/v1/audit.csv?kind=login&until={}&columns=id,time,device",
            rfc(t0 + 20_000)
        )))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = resp.text().await.unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "id,time,device");
    // Logins are the odd ones; before 20 s, of system tau (the token's).
    let want = (0..20u64).filter(|i| i % 2 == 1 && i % 5 != 0).count();
    assert_eq!(lines.len() - 1, want, "{text}");
    // Newest first: event 19 (dev5).
    assert_eq!(
        lines[1].split(',').nth(1),
        Some(rfc(t0 + 19_000).as_str()),
        "{text}"
    );
    assert!(lines[1].ends_with(",dev5"), "{text}");
    let (status, body) = w.get(&token, "api/v1/audit.csv?columns=id,colour").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_column")));
}

#[tokio::test]
async fn metrics_pass_promtool_and_move_when_a_stream_runs() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let w = TestWeb::start(r.relay.clone()).await;
    let ctl = r.add_key("tau", Role::Controller, "alice");
    let (_agent, port) = r.echo_device("tau", "dev1").await;
    let before = w.scrape().await;
    promtool_check(&before).await;
    assert!(
        before.contains("warren_devices_connected{system=\"tau\"} 1"),
        "{before}"
    );
    assert!(before.contains("warren_build_info{version=\""), "{before}");

    let conn = r.controller("tau", ctl).await;
    let msg = vec![7u8; 10_000];
    assert_eq!(echo_through(&conn, "dev1", port, &msg).await.unwrap(), msg);
    // The stream's close is recorded once its audit event is written.
    r.wait_audit(&audit_of(kind::STREAM_CLOSE, 10), |_| true)
        .await;
    let after = w.scrape().await;
    promtool_check(&after).await;
    let ok = "warren_streams_total{reason=\"\",result=\"ok\"}";
    assert!(sample(&after, ok) >= sample(&before, ok) + 1.0, "{after}");
    let up = "warren_relayed_bytes_total{direction=\"up\",system=\"tau\"}";
    assert!(
        sample(&after, up) >= sample(&before, up) + 10_000.0,
        "{after}"
    );
    let setup = "warren_stream_setup_seconds_count";
    assert!(
        sample(&after, setup) >= sample(&before, setup) + 1.0,
        "{after}"
    );
    assert!(sample(&after, "warren_logins_total") >= 2.0, "{after}");
    assert!(
        sample(&after, "warren_store_call_seconds_count") > 0.0,
        "{after}"
    );
    for name in ["warren_streams_active", "warren_audit_queue_depth"] {
        assert!(
            after.contains(&format!("\n{name} ")),
            "{name} missing:\n{after}"
        );
    }
    // No series names a device.
    assert!(!after.contains("dev1"), "{after}");

    // OpenMetrics only for a scraper that asks for it (Prometheus's own
    // Accept header); the same samples, in its shape.
    let resp = w
        .http
        .get(&w.metrics)
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
        )
        .send()
        .await
        .unwrap();
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(
        ct,
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let om = resp.text().await.unwrap();
    assert!(om.ends_with("\n# EOF\n"), "{om}");
    assert_eq!(om.matches("# EOF").count(), 1, "{om}");
    for line in [
        "# TYPE warren_streams counter",
        "# TYPE warren_logins counter",
        "# TYPE warren_build info",
        "# TYPE warren_stream_setup_seconds histogram",
        "# TYPE warren_devices_connected gauge",
        "warren_devices_connected{system=\"tau\"} 1",
        "warren_stream_setup_seconds_bucket{le=\"1.0\"} ",
        "warren_stream_setup_seconds_bucket{le=\"+Inf\"} ",
    ] {
        assert!(om.contains(line), "{line} missing:\n{om}");
    }
    assert!(!om.contains("# TYPE warren_streams_total"), "{om}");
    assert!(sample(&om, ok) >= sample(&after, ok), "{om}");
    assert!(sample(&om, up) >= sample(&after, up), "{om}");
    // A browser's or curl's Accept gets the text format promtool checks.
    for accept in ["*/*", "text/plain", "text/html,application/xhtml+xml"] {
        let resp = w
            .http
            .get(&w.metrics)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(
            ct.starts_with("text/plain; version=0.0.4"),
            "{accept}: {ct}"
        );
        let text = resp.text().await.unwrap();
        assert!(!text.contains("# EOF"));
        promtool_check(&text).await;
    }
}

/// The value of the sample `series` (name and labels as printed); 0 if absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Debian's `promtool check metrics` on `text` (installed by scripts/test).
async fn promtool_check(text: &str) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("promtool (Debian package prometheus) is needed: scripts/test installs it");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(text.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn remote_console_login_gives_a_controller_its_own_system_read_only() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let w = TestWeb::start(r.relay.clone()).await;
    let ctl = r.add_key("tau", Role::Controller, "alice");
    let conn = r.controller("tau", ctl).await;
    let out = conn.exec("console-login --system beta").await.unwrap();
    assert_ne!(out.status, 0);
    assert!(String::from_utf8_lossy(&out.stderr).contains("only its own system (tau)"));
    let out = conn.exec("console-login --json").await.unwrap();
    assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let url = v["url"].as_str().unwrap();
    assert!(url.starts_with(&w.base), "{url}");
    let cookie = w.open_login(url).await.unwrap();
    let me: serde_json::Value = w
        .http
        .get(w.url("api/v1/session"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (
            me["who"].as_str(),
            me["role"].as_str(),
            me["system"].as_str()
        ),
        (Some("alice"), Some("controller"), Some("tau"))
    );
    // Controllers may not hand out tokens or end sessions.
    for cmd in [
        "token create --system tau --role admin",
        "console-logout --all",
    ] {
        let out = conn.exec(cmd).await.unwrap();
        assert_ne!(out.status, 0, "{cmd}");
    }
}

#[tokio::test]
async fn systems_are_added_by_unscoped_admins_only() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let w = TestWeb::start(r.relay.clone()).await;
    let s = w.session(None, Role::Admin, "root").await;
    let add = |cookie: &str, csrf: &str, name: &str| {
        w.http
            .post(w.url("api/v1/systems"))
            .header("cookie", cookie.to_string())
            .header("x-csrf-token", csrf.to_string())
            .json(&serde_json::json!({ "name": name }))
            .send()
    };
    let resp = add(&s.cookie, &s.csrf, "beta").await.unwrap();
    assert_eq!(resp.status(), 200);
    let scoped = w.session(Some("tau"), Role::Admin, "tauadmin").await;
    let resp = add(&scoped.cookie, &scoped.csrf, "gamma").await.unwrap();
    assert_eq!(resp.status(), 403);
    // A bad name is bad input (400), with the CLI's text for it.
    let resp = add(&s.cookie, &s.csrf, "Bad Name").await.unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "bad_value");
    assert!(
        body["error"].as_str().unwrap().starts_with("system name"),
        "{body}"
    );
    let token = w.token("tau", Role::Admin);
    let (_, systems) = w.get(&token, "api/v1/systems").await;
    assert_eq!(systems, serde_json::json!(["tau"]));
    assert_eq!(r.store().systems().unwrap(), ["beta", "tau"]);
}

#[tokio::test]
async fn behind_tls_the_session_cookie_is_secure() {
    let r = TestRelay::start().await;
    let w = TestWeb::start_with(r.relay.clone(), true).await;
    let url = w.login_url(None, Role::Admin, "root");
    let resp = w.http.get(&url).send().await.unwrap();
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("; Secure"), "{set}");
}
