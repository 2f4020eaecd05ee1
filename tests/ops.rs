//! Running Warren for the long term: systemd units (`warren service`),
//! public ports on the relay (`warren admin expose`), and SIGHUP config
//! reload for the agent and the relay.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::cli::blocking::{fails, ok};
use common::cli::{WARREN, p};
use common::openssh::{Sshd, curl, login_user, run};
use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use warren::protocol::Role;
use warren::relay::RelayOptions;
use warren::relay::config::PortRanges;
use warren::ssh::client::{ClientConnection, NoForwards};
use warren::ssh::keys;

const LIMIT: Duration = Duration::from_secs(60);

/// An agent config in `dir` for device `dev` with `allow`, pointing at `relay`.
fn agent_config(dir: &Path, relay: &TestRelay, dev: &str, key: &Path, allow: &[String]) -> PathBuf {
    let allow: Vec<String> = allow.iter().map(|a| format!("{a:?}")).collect();
    write_file(
        dir,
        "agent.toml",
        &format!(
            "relay = \"{}\"\nsystem = \"tau\"\nname = \"{dev}\"\nkey = \"{}\"\nrelay_host_key = \"{}\"\nallow = [{}]\n",
            relay.addr,
            key.display(),
            relay.host_key(),
            allow.join(", ")
        ),
    )
}

#[test]
fn service_print_shows_an_agent_unit_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = keys::generate_ed25519().unwrap();
    keys::write_pair(&key, &dir.path().join("key"), "t").unwrap();
    let cfg = write_file(
        dir.path(),
        "agent.toml",
        &format!(
            "relay = \"relay.example\"\nsystem = \"tau\"\nname = \"dev1\"\nkey = \"key\"\nrelay_host_key = \"SHA256:{}\"\n",
            "A".repeat(43)
        ),
    );
    let units = dir.path().join("units");
    let text = ok(&[
        "service",
        "install",
        "agent",
        "--config",
        p(&cfg),
        "--print",
        "--unit-dir",
        p(&units),
    ]);
    for line in [
        format!("ExecStart={WARREN} agent --config {}", cfg.display()),
        "Restart=always".into(),
        "Wants=network-online.target".into(),
        "After=network-online.target".into(),
        "ExecReload=/bin/kill -HUP $MAINPID".into(),
        "WantedBy=multi-user.target".into(),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line:?} missing in:\n{text}"
        );
    }
    assert!(!units.exists(), "--print must not write anything");
    // A config that would not start is refused at install time.
    std::fs::write(&cfg, "relay = \"x\"\n").unwrap();
    fails(
        &[
            "service",
            "install",
            "agent",
            "--config",
            p(&cfg),
            "--print",
        ],
        "invalid agent config",
    );
}

#[test]
fn service_install_writes_the_unit_and_enables_it() {
    let dir = tempfile::tempdir().unwrap();
    // A stand-in systemctl that records its arguments.
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("systemctl.log");
    let fake = write_file(
        &bin,
        "systemctl",
        &format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display()),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let units = dir.path().join("units");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = std::process::Command::new(WARREN)
        .args([
            "service",
            "install",
            "forward",
            "--name",
            "lab",
            "--unit-dir",
            p(&units),
            "--",
            "red00[1-3]:80",
            "--start-port",
            "8080",
            "--client-config",
            "/etc/warren/client.toml",
        ])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = units.join("warren-forward-lab.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains(&format!(
            "ExecStart={WARREN} forward red00[1-3]:80 --start-port 8080 --client-config /etc/warren/client.toml\n"
        )),
        "{text}"
    );
    assert!(text.contains("Restart=always\n") && text.contains("After=network-online.target\n"));
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls,
        format!("daemon-reload\nenable --now {}\n", unit.display())
    );

    // Bad forward arguments: clear error, nothing written.
    let out = std::process::Command::new(WARREN)
        .args([
            "service",
            "install",
            "forward",
            "--name",
            "bad",
            "--unit-dir",
            p(&units),
            "--no-enable",
            "--",
            "red00[1-3:80",
            "--start-port",
            "8080",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without ']'"));
    assert!(!units.join("warren-forward-bad.service").exists());
}

/// A child's stderr lines, readable as they come.
struct Lines(mpsc::UnboundedReceiver<String>);

/// Starts `warren ARGS` with its log (stderr) read line by line; killed
/// when dropped.
fn spawn_logged(args: &[&str]) -> (Child, Lines) {
    let mut child = Command::new(WARREN)
        .args(args)
        .env("WARREN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let lines = Lines::of(&mut child);
    (child, lines)
}

impl Lines {
    fn of(child: &mut Child) -> Lines {
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Lines(rx)
    }

    /// Waits for a line containing `want`; returns it.
    async fn wait(&mut self, want: &str) -> String {
        let mut seen = Vec::new();
        let found = tokio::time::timeout(WAIT, async {
            while let Some(l) = self.0.recv().await {
                if l.contains(want) {
                    return Some(l);
                }
                seen.push(l);
            }
            None
        })
        .await;
        match found {
            Ok(Some(l)) => l,
            _ => panic!("no line with {want:?}; saw:\n{}", seen.join("\n")),
        }
    }
}

fn hup(child: &Child) {
    let pid = child.id().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// Waits until the relay lists `dev` with `port`.
async fn wait_port(relay: &TestRelay, dev: &str, port: u32) {
    let registry = relay.relay.registry();
    let mut changes = registry.watch();
    let (s, d) = (name("tau"), name(dev));
    tokio::time::timeout(WAIT, async {
        while !registry
            .lookup(&s, &d)
            .is_some_and(|e| e.ports.contains(&port))
        {
            changes.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{dev} never served port {port}"));
}

#[tokio::test]
async fn agent_sighup_reloads_the_allowlist_and_keeps_live_streams() {
    let relay = TestRelay::start().await;
    relay.add_system("tau");
    let dir = tempfile::tempdir().unwrap();
    let dev_key = relay.add_key_file(dir.path(), "tau", Role::Device, "dev1");
    let (echo_a, echo_b) = (echo_server().await, echo_server().await);
    let cfg = agent_config(
        dir.path(),
        &relay,
        "dev1",
        &dev_key,
        &[format!("22=127.0.0.1:{echo_a}")],
    );
    let (agent, mut log) = spawn_logged(&["agent", "--config", p(&cfg)]);
    relay.wait_online("tau", "dev1", true).await;
    let alice = relay.add_key("tau", Role::Controller, "alice");
    let conn = relay.controller("tau", alice).await;

    // A live stream, open across both reloads.
    let mut live = LiveStream::open(&conn, "dev1", 22).await;
    live.roundtrip(b"before").await;
    assert!(echo_through(&conn, "dev1", 8080, b"x").await.is_err());

    agent_config(
        dir.path(),
        &relay,
        "dev1",
        &dev_key,
        &[
            format!("22=127.0.0.1:{echo_a}"),
            format!("8080=127.0.0.1:{echo_b}"),
        ],
    );
    hup(&agent);
    log.wait("config reloaded").await;
    wait_port(&relay, "dev1", 8080).await;
    assert_eq!(
        echo_through(&conn, "dev1", 8080, b"new port")
            .await
            .unwrap(),
        b"new port"
    );
    live.roundtrip(b"after reload").await;

    // An invalid file is refused with its reason; the old config stays.
    write_file(
        dir.path(),
        "agent.toml",
        "relay = \"x\"\nallow = [\"nohost\"]\n",
    );
    hup(&agent);
    let line = log.wait("config reload refused").await;
    assert!(line.contains("invalid agent config"), "{line}");
    live.roundtrip(b"after refusal").await;
    assert_eq!(
        echo_through(&conn, "dev1", 8080, b"still").await.unwrap(),
        b"still"
    );
}

/// A stream held open through a channel, to prove it outlives a reload.
struct LiveStream(tokio::io::DuplexStream);

impl LiveStream {
    async fn open(conn: &ClientConnection<NoForwards>, dev: &str, port: u16) -> LiveStream {
        let ch = conn.open(dev, u32::from(port)).await.unwrap();
        let (near, far) = tokio::io::duplex(4096);
        let (fr, fw) = tokio::io::split(far);
        tokio::spawn(ch.splice_io(fr, fw));
        LiveStream(near)
    }

    /// Sends `msg` to the echo target and reads it back.
    async fn roundtrip(&mut self, msg: &[u8]) {
        self.0.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        tokio::time::timeout(WAIT, self.0.read_exact(&mut back))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(back, msg);
    }
}

/// A relay on 127.0.0.1:0 that may expose any port on 127.0.0.1, with
/// device dev1 (sshd on 22, web on 8080).
async fn public_world() -> (TestRelay, Sshd, TestAgent) {
    logs();
    let relay = TestRelay::start_with(RelayOptions {
        store_poll: Duration::from_millis(100),
        public_ports: PortRanges::parse(&["1-65535"]).unwrap(),
        public_bind: Some("127.0.0.1".parse().unwrap()),
        ..Default::default()
    })
    .await;
    relay.add_system("tau");
    let sshd = Sshd::start().await;
    let web = http_server("hello from dev1").await;
    let agent = relay
        .device(
            "tau",
            "dev1",
            &[
                format!("22=127.0.0.1:{}", sshd.port),
                format!("8080=127.0.0.1:{web}"),
            ],
        )
        .await;
    (relay, sshd, agent)
}

/// Waits until the relay's latest reconcile saw `known` exposures; returns
/// the open ports.
async fn reconciled(relay: &TestRelay, known: usize) -> Vec<u16> {
    let mut rx = relay.relay.exposed();
    tokio::time::timeout(WAIT, async {
        loop {
            let now = rx.borrow_and_update().clone();
            if now.known == known {
                return now.open;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("relay never saw {known} exposures"))
}

/// `warren admin --data DATA expose TARGET --system tau --port PORT`, then `more`.
fn expose<'a>(data: &'a str, target: &'a str, port: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    let args = [
        "admin", "--data", data, "expose", target, "--system", "tau", "--port", port,
    ];
    [&args[..], more].concat()
}

#[tokio::test]
async fn admin_exposes_a_device_port_with_allow_from_ls_and_rm() {
    let (relay, sshd, _agent) = public_world().await;
    let data = relay.dir.path().to_path_buf();
    let d = p(&data);
    let (web, ssh, walled) = (
        closed_port().await,
        closed_port().await,
        closed_port().await,
    );
    let (web_s, ssh_s, walled_s) = (web.to_string(), ssh.to_string(), walled.to_string());
    ok(&expose(d, "dev1:8080", &web_s, &[]));
    ok(&expose(
        d,
        "dev1:22",
        &ssh_s,
        &["--allow-from", "127.0.0.0/8"],
    ));
    ok(&expose(
        d,
        "dev1:8080",
        &walled_s,
        &["--allow-from", "10.0.0.0/8"],
    ));
    let mut open = reconciled(&relay, 3).await;
    open.sort_unstable();
    let mut want = vec![web, ssh, walled];
    want.sort_unstable();
    assert_eq!(open, want);

    let r = curl(&[&format!("http://127.0.0.1:{web}/")]).await;
    assert!(r.ok, "{}", r.stderr);
    assert_eq!(r.stdout_str(), "hello from dev1");

    // Stock ssh to the device's sshd through the public port.
    let dir = tempfile::tempdir().unwrap();
    let known = write_file(
        dir.path(),
        "known_hosts",
        &format!("dev1 {}\n", sshd.host_pub),
    );
    let r = run(
        Command::new("ssh")
            .args([
                "-p",
                &ssh_s,
                "-i",
                p(&sshd.user_key),
                "-o",
                "IdentitiesOnly=yes",
            ])
            .args(["-o", "BatchMode=yes", "-o", "HostKeyAlias=dev1"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known.display()))
            .arg(format!("{}@127.0.0.1", login_user()))
            .arg("echo via-public-port"),
        LIMIT,
    )
    .await;
    assert!(r.ok, "ssh through the public port: {}", r.stderr);
    assert_eq!(r.stdout_str().trim(), "via-public-port");

    // 127.0.0.1 is not in 10.0.0.0/8: the connection is closed unanswered.
    let r = curl(&[&format!("http://127.0.0.1:{walled}/")]).await;
    assert!(!r.ok, "a peer outside allow_from must be refused");
    assert!(r.stdout.is_empty());
    // The refusal is audited with its reason code.
    let audited = tokio::time::timeout(LIMIT, async {
        loop {
            let log = ok(&[
                "admin",
                "--data",
                d,
                "log",
                "--json",
                "--kind",
                "public_connection",
            ]);
            if log.contains("\"reason\":\"not_in_allow_from\"") {
                break log;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(audited.is_ok(), "the refusal was not audited with its code");

    let listed: serde_json::Value =
        serde_json::from_str(&ok(&["admin", "--data", d, "expose", "ls", "--json"])).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 3);
    let walled_row = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["port"] == walled)
        .unwrap();
    assert_eq!(walled_row["allow_from"][0], "10.0.0.0/8");
    assert!(ok(&["admin", "--data", d, "expose", "ls"]).contains("dev1"));

    ok(&["admin", "--data", d, "expose", "rm", &web_s]);
    let open = reconciled(&relay, 2).await;
    assert!(!open.contains(&web));
    assert!(
        TcpStream::connect(("127.0.0.1", web)).await.is_err(),
        "removed port still listens"
    );
    fails(
        &["admin", "--data", d, "expose", "rm", &web_s],
        "no exposure",
    );
    fails(&expose(d, "dev1:22", &ssh_s, &[]), "already exposes");
    fails(
        &expose(d, "dev1:22", "1", &["--allow-from", "everyone"]),
        "not a CIDR",
    );
}

#[tokio::test]
async fn public_ports_are_off_by_default_and_not_for_controller_keys() {
    let relay = TestRelay::start().await;
    relay.add_system("tau");
    let web = http_server("hello").await;
    let _agent = relay
        .device("tau", "dev1", &[format!("8080=127.0.0.1:{web}")])
        .await;
    let port = closed_port().await;
    ok(&expose(
        p(relay.dir.path()),
        "dev1:8080",
        &port.to_string(),
        &[],
    ));
    // The relay saw it, and opened nothing: it has no public_ports.
    assert!(reconciled(&relay, 1).await.is_empty());
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());
    // Turning public_ports on (what a SIGHUP reload does) opens it.
    relay
        .relay
        .set_public_ports(PortRanges::parse(&[port.to_string()]).unwrap());
    tokio::time::timeout(WAIT, async {
        let mut rx = relay.relay.exposed();
        while !rx.borrow_and_update().open.contains(&port) {
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap();

    // A controller key cannot expose anything over the relay's SSH port.
    let alice = relay.add_key("tau", Role::Controller, "alice");
    let conn = relay.controller("tau", alice).await;
    let out = conn.exec("expose dev1:8080 --port 4040").await.unwrap();
    assert_ne!(out.status, 0);
    assert_eq!(relay.admin_store().exposures().unwrap().len(), 1);
}

#[tokio::test]
async fn relay_sighup_reloads_public_ports_and_refuses_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = p(&data);
    // A database with one exposure, before the relay starts.
    let store = warren::store::Store::open(&data).unwrap();
    keys::load_or_create_host_key(&warren::relay::host_key_path(&data)).unwrap();
    store.add_system(&name("tau")).unwrap();
    let dev = add_key_to(&store, "tau", Role::Device, "dev1");
    let alice = add_key_to(&store, "tau", Role::Controller, "alice");
    drop(store);
    let host_key = ok(&["admin", "--data", d, "host-key"]).trim().to_string();
    let port = closed_port().await;
    ok(&expose(d, "dev1:22", &port.to_string(), &[]));
    let cfg = write_file(
        dir.path(),
        "relay.toml",
        "listen = \"127.0.0.1:0\"\ndata = \"data\"\n",
    );
    let (mut child, mut log) = spawn_logged(&["relay", "--config", p(&cfg)]);
    let line = log.wait("relay listening").await;
    let relay_addr = format!(
        "127.0.0.1:{}",
        line.split("127.0.0.1:")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    );
    log.wait("outside public_ports").await;

    // A device and a controller stream, live across the reloads.
    let echo = echo_server().await;
    let mut agent = TestAgent::start(agent_settings(
        &relay_addr,
        &host_key,
        "tau",
        "dev1",
        dev,
        &[format!("22=127.0.0.1:{echo}")],
    ));
    agent.online().await;
    let conn = connect_to(&relay_addr, &host_key, "tau", alice)
        .await
        .unwrap();
    let mut live = LiveStream::open(&conn, "dev1", 22).await;
    live.roundtrip(b"before").await;

    write_file(
        dir.path(),
        "relay.toml",
        &format!("listen = \"127.0.0.1:0\"\ndata = \"data\"\npublic_ports = [\"{port}\"]\n"),
    );
    hup(&child);
    log.wait("config reloaded").await;
    log.wait("listening on 127.0.0.1").await;
    TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    live.roundtrip(b"after reload").await;

    write_file(
        dir.path(),
        "relay.toml",
        "listen = \"127.0.0.1:0\"\npublic_ports = [\"70000\"]\n",
    );
    hup(&child);
    let line = log.wait("config reload refused").await;
    assert!(line.contains("public_ports"), "{line}");
    // The old config stays in force.
    TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    assert!(
        child.try_wait().unwrap().is_none(),
        "relay must keep running"
    );
}
