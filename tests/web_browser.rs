//! The web console in a real browser: Debian's Chromium, headless, driven
//! through chromedriver (started here on a port of its own, killed on
//! drop). Screenshots of each page go to target/console-screenshots/.

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::web::TestWeb;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use tokio::io::{AsyncBufReadExt, BufReader};
use warren::audit::{Event, kind};
use warren::protocol::Role;
use warren::protocol::gateway::Announce;

/// chromedriver on a port of its own; killed when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let mut child = tokio::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            // Local times in the page are UTC: the range typed below is UTC.
            .env("TZ", "UTC")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "chromedriver (Debian package chromium-driver) is needed: scripts/test installs it",
            );
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let started = async {
            while let Some(l) = lines.next_line().await.unwrap() {
                if l.contains("started successfully") {
                    return;
                }
            }
            panic!("chromedriver exited");
        };
        tokio::time::timeout(WAIT, started)
            .await
            .expect("chromedriver started");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _profile: tempfile::tempdir().unwrap(),
        }
    }

    async fn browser(&self) -> Client {
        let profile = self._profile.path().display().to_string();
        let caps = serde_json::json!({
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--window-size=1400,900", format!("--user-data-dir={profile}"),
                ]
            }
        });
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&self.url)
            .await
            .unwrap()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn shot(c: &Client, name: &str) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = c.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// Waits until the element at `xpath` contains `text` (the browser's own
/// wait, which checks again every 100 ms); returns its text. The console
/// redraws live: an element found just before a redraw is stale when its
/// text is read, and is found again.
async fn wait_text(c: &Client, xpath: &str, text: &str) -> String {
    let at = format!("{xpath}[contains(., \"{text}\")]");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = c
            .wait()
            .at_most(WAIT)
            .every(std::time::Duration::from_millis(100))
            .for_element(Locator::XPath(&at))
            .await
            .unwrap_or_else(|e| panic!("{text:?} not shown at {xpath} within {WAIT:?}: {e}"));
        match found.text().await {
            Ok(t) => return t,
            Err(e) if e.is_stale_element_reference() && std::time::Instant::now() < deadline => {}
            Err(e) => panic!("reading {xpath}: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_chromium() {
    let r = TestRelay::start().await;
    r.add_system("tau");
    let w = TestWeb::start(r.relay.clone()).await;
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
    let rule = warren::protocol::Target::parse("db:5432").unwrap();
    r.store()
        .gateway_allow(&name("tau"), &name("gw1"), &rule)
        .unwrap();
    // Events on 2026-01-10, one an hour.
    let t0 = 1_768_003_200_000u64;
    let events: Vec<Event> = (0..24u64)
        .map(|h| {
            let mut e = Event::new(kind::STREAM_CLOSE, "closed")
                .system("tau")
                .device("old1")
                .key_name("alice");
            e.time_ms = t0 + h * 3_600_000;
            e
        })
        .collect();
    r.store().append_audit(&events).unwrap();

    let driver = Driver::start().await;
    let c = driver.browser().await;
    // Log in through the one-time URL: the page forwards to the overview.
    c.goto(&w.login_url(None, Role::Admin, "root"))
        .await
        .unwrap();
    wait_text(&c, "//header/span[@class='who']", "root").await;
    shot(&c, "overview").await;

    // A device comes online while the devices page is open: no reload.
    c.goto(&w.url("devices")).await.unwrap();
    wait_text(&c, "//main/h1", "Devices").await;
    let (_agent, _) = r.echo_device("tau", "dev1").await;
    let row = wait_text(&c, "//main//table", "dev1").await;
    assert!(row.contains("online"), "{row}");
    shot(&c, "devices").await;
    c.goto(&w.url("devices/tau/dev1")).await.unwrap();
    wait_text(&c, "//main/h1", "dev1").await;
    shot(&c, "device").await;
    // Edit a label there; the list shows it, marked as the admin's.
    c.find(Locator::Css("form[data-labels] input[name=label_set]"))
        .await
        .unwrap()
        .send_keys("site=lab9")
        .await
        .unwrap();
    c.find(Locator::Css("form[data-labels] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "//div[@id='flash']/div[@class='ok']", "site=lab9").await;
    shot(&c, "device-labels").await;
    c.goto(&w.url("devices")).await.unwrap();
    wait_text(&c, "//main//table//span[@class='adm']", "site=lab9").await;
    let stored = r.store().admin_labels(Some("tau")).unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0].value.as_deref(), Some("lab9"));

    // Filter the log to a date range (typed in local time, UTC here).
    c.goto(&w.url("log")).await.unwrap();
    let set = "document.querySelector('[name=since_local]').value='2026-01-10T05:00';\
               document.querySelector('[name=until_local]').value='2026-01-10T08:00';";
    c.execute(set, vec![]).await.unwrap();
    c.find(Locator::Css("form.range button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "//main//table", "old1").await;
    let url = c.current_url().await.unwrap().to_string();
    assert!(url.contains("since=2026-01-10T05%3A00%3A00.000Z"), "{url}");
    let rows = c
        .find_all(Locator::Css("main table tr"))
        .await
        .unwrap()
        .len();
    assert_eq!(
        rows,
        1 + 3,
        "a header and the events of 05:00, 06:00, 07:00"
    );
    shot(&c, "log").await;
    // Export that range with two columns, as the export button does.
    let csv = c
        .execute_async(
            "const done = arguments[arguments.length - 1];\
             const f = document.querySelector('form.export');\
             for (const b of f.querySelectorAll('input[name=col]')) b.checked = ['id','time'].includes(b.value);\
             fetch(exportUrl(f)).then(r => r.text()).then(done);",
            vec![],
        )
        .await
        .unwrap();
    let csv = csv.as_str().unwrap().to_string();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "id,time");
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[1].ends_with("2026-01-10T07:00:00.000Z"), "{csv}");
    c.find(Locator::Css("main table a"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_text(&c, "//main/h1", "Log entry").await;
    shot(&c, "log-entry").await;

    // Deleting a gateway that has rules is refused, and the page says why.
    c.goto(&w.url("gateways/tau/gw1?tab=rules")).await.unwrap();
    wait_text(&c, "//main", "db:5432").await;
    c.find(Locator::XPath("//button[text()='Delete gateway']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    c.accept_alert().await.unwrap();
    let refusal = wait_text(
        &c,
        "//div[@id='flash']/div[@class='bad']",
        "forwarding rule",
    )
    .await;
    assert!(
        refusal.contains("gateway gw1 still has 1 forwarding rule"),
        "{refusal}"
    );
    shot(&c, "gateway-refused").await;
    assert_eq!(
        r.store().gateways(Some("tau")).unwrap().len(),
        1,
        "still there"
    );

    for page in ["gateways", "ports", "keys"] {
        c.goto(&w.url(page)).await.unwrap();
        wait_text(&c, "//header/span[@class='who']", "root").await;
        shot(&c, page).await;
    }
    c.close().await.unwrap();
}
