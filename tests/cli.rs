//! The `warren` binary as people use it: admin commands, keygen, config
//! errors. Bad input gets a clear message, a non-zero exit, and changes nothing.

mod common;

use common::cli::blocking::{fails, ok, warren};
use common::cli::{WARREN, p};
use std::process::Command;

#[test]
fn admin_manages_systems_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = p(&data);
    // Only the relay makes the host key and the database; admin refuses a
    // directory without a database, host-key included.
    fails(&["admin", "--data", d, "host-key"], "no Warren database");
    assert!(!data.exists());
    fails(
        &["admin", "--data", d, "system", "ls"],
        "no Warren database",
    );
    // The relay creates the database on first start; so does opening the store.
    warren::store::Store::open(&data).unwrap();
    fails(&["admin", "--data", d, "host-key"], "no relay host key");
    warren::ssh::keys::load_or_create_host_key(&warren::relay::host_key_path(&data)).unwrap();
    let fp = ok(&["admin", "--data", d, "host-key"]);
    assert!(
        fp.trim().starts_with("SHA256:") && fp.trim().len() == 50,
        "{fp}"
    );
    // Stable: the host key is made once.
    assert_eq!(ok(&["admin", "--data", d, "host-key"]), fp);
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["admin", "--data", d, "host-key", "--json"])).unwrap();
    assert_eq!(json["fingerprint"], fp.trim());

    ok(&["admin", "--data", d, "system", "add", "tau"]);
    fails(
        &["admin", "--data", d, "system", "add", "tau"],
        "already exists",
    );
    fails(
        &["admin", "--data", d, "system", "add", "Tau!"],
        "character",
    );
    assert_eq!(ok(&["admin", "--data", d, "system", "ls"]), "tau\n");

    let key = dir.path().join("dev1");
    ok(&["keygen", p(&key)]);
    fails(&["keygen", p(&key)], "already exists");
    let public = format!("{}.pub", p(&key));
    let add = |role: &str, name: &str| {
        let mut a = vec![
            "admin", "--data", d, "key", "add", "--system", "tau", "--role", role, "--name", name,
            &public,
        ];
        a.push("--json");
        warren(&a.iter().map(|s| &**s).collect::<Vec<_>>())
    };
    assert!(add("device", "dev1").status.success());
    let again = add("controller", "alice");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already registered as device dev1"));
    fails(
        &[
            "admin", "--data", d, "key", "add", "--system", "nope", "--role", "device", "--name",
            "x", &public,
        ],
        "no system nope",
    );
    fails(
        &[
            "admin", "--data", d, "key", "add", "--system", "tau", "--role", "root", "--name", "x",
            &public,
        ],
        "invalid value 'root'",
    );
    let garbage = dir.path().join("garbage.pub");
    std::fs::write(&garbage, "ssh-ed25519 AAAAnotakey").unwrap();
    fails(
        &[
            "admin",
            "--data",
            d,
            "key",
            "add",
            "--system",
            "tau",
            "--role",
            "device",
            "--name",
            "dev2",
            p(&garbage),
        ],
        "not an OpenSSH public key",
    );

    let keys: serde_json::Value =
        serde_json::from_str(&ok(&["admin", "--data", d, "key", "ls", "--json"])).unwrap();
    let keys = keys.as_array().unwrap();
    assert_eq!(keys.len(), 1, "refused adds changed nothing");
    assert_eq!(keys[0]["role"], "device");
    assert_eq!(keys[0]["name"], "dev1");
    let fp = keys[0]["fingerprint"].as_str().unwrap().to_string();
    let table = ok(&["admin", "--data", d, "key", "ls"]);
    assert!(table.contains(&fp) && table.contains("active"), "{table}");

    ok(&["admin", "--data", d, "key", "revoke", &fp]);
    fails(
        &["admin", "--data", d, "key", "revoke", &fp],
        "already revoked",
    );
    fails(
        &["admin", "--data", d, "key", "revoke", "SHA256:nope"],
        "no key with fingerprint",
    );
    assert!(ok(&["admin", "--data", d, "key", "ls"]).contains("revoked"));
    let ls: serde_json::Value =
        serde_json::from_str(&ok(&["admin", "--data", d, "ls", "--json"])).unwrap();
    assert_eq!(ls, serde_json::json!([]));
}

#[test]
fn agent_config_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    fails(&["agent", "--config", p(&cfg)], "cannot read");
    std::fs::write(&cfg, "relay = \"r:2222\"\nsystem = \"tau\"\nname = \"dev1\"\nkey = \"k\"\nrelay_host_key = \"x\"\nport = 3\n").unwrap();
    fails(&["agent", "--config", p(&cfg)], "unknown field `port`");
    std::fs::write(&cfg, "relay = \"r:2222\"\nsystem = \"tau\"\nname = \"dev1\"\nkey = \"missing\"\nrelay_host_key = \"x\"\n").unwrap();
    fails(&["agent", "--config", p(&cfg)], "missing");
}

#[test]
fn proxy_without_settings_says_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(WARREN)
        .args(["proxy", "dev1", "22"])
        .env("XDG_CONFIG_HOME", dir.path())
        .env_remove("WARREN_RELAY")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no relay") && err.contains("WARREN_RELAY"),
        "{err}"
    );
}

/// The console URL a relay of the cluster at `url` stored when it started.
fn console_base(url: &str) -> String {
    warren::store::Store::open_postgres(url)
        .unwrap()
        .setting(warren::web::CONSOLE_URL_SETTING)
        .unwrap()
        .expect("the relay stored its console URL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_login_on_one_cluster_relay_holds_on_another_and_a_logout_ends_it_on_both() {
    use common::cli::{RelayProcess, warren_ok};
    let pg = common::postgres::PgServer::start();
    let url = pg.database();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let args = ["--database", url.as_str(), "--http", "127.0.0.1:0"];
    // Each relay stores its console URL before it listens: read it between
    // the starts to learn both addresses.
    let _a = RelayProcess::start(&[], 0, &args, da.path()).await;
    let base_a = console_base(&url);
    let _b = RelayProcess::start(&[], 0, &args, db.path()).await;
    let base_b = console_base(&url);
    assert_ne!(base_a, base_b);

    let link: serde_json::Value = serde_json::from_str(
        &warren_ok(&["admin", "--database", &url, "console-login", "--json"]).await,
    )
    .unwrap();
    let token = link["url"]
        .as_str()
        .unwrap()
        .rsplit("/login/")
        .next()
        .unwrap()
        .to_string();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let opened = http
        .get(format!("{base_a}login/{token}"))
        .send()
        .await
        .unwrap();
    assert!(opened.status().is_success(), "{}", opened.status());
    let cookie = opened.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    // The link was used on A: B refuses it too.
    let again = http
        .get(format!("{base_b}login/{token}"))
        .send()
        .await
        .unwrap();
    assert!(again.status().is_client_error(), "{}", again.status());

    let session = |base: String| {
        let (http, cookie) = (http.clone(), cookie.clone());
        async move {
            http.get(format!("{base}api/v1/session"))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
        }
    };
    let on_b = session(base_b.clone()).await;
    assert_eq!(on_b.status(), 200);
    let me: serde_json::Value = on_b.json().await.unwrap();
    assert_eq!(me["role"], "admin", "{me}");
    let csrf = me["csrf"].as_str().unwrap().to_string();
    // Logging out on B ends the session on A.
    let out = http
        .post(format!("{base_b}api/v1/logout"))
        .header("cookie", &cookie)
        .header("x-csrf-token", csrf)
        .send()
        .await
        .unwrap();
    assert!(out.status().is_success(), "{}", out.status());
    assert_eq!(session(base_a).await.status(), 401);
}

/// What a relay started with its stderr piped says until it listens.
fn said_until_listening(child: &mut std::process::Child) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let mut said = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        said.push(line.clone());
        if line.contains("relay listening") {
            break;
        }
    }
    said
}

/// Each device holds a descriptor on the relay, and many systems start
/// services with a soft open-file limit of 1,024: the relay raises its soft
/// limit to the hard one and says what it has; a low limit gets a warning
/// naming the fix.
#[test]
fn the_relay_raises_its_open_file_limit_and_warns_when_it_is_low() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    use std::os::unix::process::CommandExt;
    let hard = getrlimit(Resource::Nofile).maximum;
    let start = |soft: u64, max: Option<u64>| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(WARREN);
        cmd.args(["relay", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .env("WARREN_LOG", "info")
            .stderr(std::process::Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe; nothing else runs here.
        unsafe {
            cmd.pre_exec(move || {
                setrlimit(
                    Resource::Nofile,
                    Rlimit {
                        current: Some(soft),
                        maximum: max,
                    },
                )
                .map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().unwrap();
        let said = said_until_listening(&mut child);
        let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        (said, limits)
    };
    // A soft limit of 256 under the usual hard one: raised to the hard one.
    let (said, limits) = start(256, hard);
    let hard_n = hard.unwrap_or(u64::MAX);
    let want = hard.map_or("unlimited".to_string(), |h| h.to_string());
    let listening = said.last().unwrap();
    assert!(
        listening.contains(&format!("open_files={hard_n}")),
        "{said:?}"
    );
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(
        line.split_whitespace().nth(3),
        Some(want.as_str()),
        "soft limit not raised: {line}"
    );
    if hard_n >= 4096 {
        assert!(!said.iter().any(|l| l.contains("LimitNOFILE")), "{said:?}");
    }
    // A hard limit of 512: nothing to raise to; the relay says how many
    // devices that allows and how to raise it.
    let (said, _) = start(512, Some(512));
    assert!(
        said.iter()
            .any(|l| l.contains("about 448 devices") && l.contains("LimitNOFILE")),
        "{said:?}"
    );
    assert!(said.last().unwrap().contains("open_files=512"), "{said:?}");
}

/// The relay's runtime threads ask for short time slices (relay/slice.rs):
/// by default 0.1 ms, `--thread-slice` sets another, 0 keeps the kernel's
/// default. Read back from the kernel's own view of each thread.
#[test]
fn the_relays_threads_ask_for_the_time_slice_they_are_given() {
    let slices = |extra: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(WARREN)
            .args(["relay", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env("WARREN_LOG", "info")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let said = said_until_listening(&mut child);
        // (thread name, slice in ns) of the main thread and the workers.
        let mut threads = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap() {
            let path = task.unwrap().path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap();
            let comm = comm.trim().to_string();
            if comm != "warren" && !comm.starts_with("tokio-r") {
                continue;
            }
            let sched = std::fs::read_to_string(path.join("sched")).unwrap();
            let slice: u64 = sched
                .lines()
                .find(|l| l.starts_with("se.slice"))
                .expect("no se.slice: Linux 6.12 or later needed")
                .rsplit(':')
                .next()
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            threads.push((comm, slice));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        (said, threads)
    };
    let (said, threads) = slices(&[]);
    assert!(threads.len() >= 3, "main thread and workers: {threads:?}");
    assert!(threads.iter().all(|(_, s)| *s == 100_000), "{threads:?}");
    assert!(
        said.iter().any(|l| l.contains("ask for short time slices")),
        "{said:?}"
    );
    let (_, threads) = slices(&["--thread-slice", "2ms"]);
    assert!(threads.iter().all(|(_, s)| *s == 2_000_000), "{threads:?}");
    // With 0 the threads keep what they inherit: this thread's slice.
    let own: u64 = std::fs::read_to_string("/proc/thread-self/sched")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("se.slice"))
        .and_then(|l| l.rsplit(':').next()?.trim().parse().ok())
        .unwrap();
    let (said, threads) = slices(&["--thread-slice", "0"]);
    assert!(threads.iter().all(|(_, s)| *s == own), "{own} {threads:?}");
    assert!(!said.iter().any(|l| l.contains("time slices")), "{said:?}");
}

/// `--bulk-nice` (ssh/nice.rs): on by default with step 10, said at start,
/// every thread still at its own nice value; 0 turns it off; a step past
/// 19 is refused; where the relay could not set a thread back (no
/// CAP_SYS_NICE, RLIMIT_NICE 0) it says so and runs without.
#[test]
fn the_relay_says_whether_bulk_slices_run_nicer() {
    use std::os::unix::process::CommandExt;
    let start = |extra: &[&str], without_cap: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = if without_cap {
            let mut c = Command::new("setpriv");
            c.args(["--bounding-set=-sys_nice", "--", WARREN]);
            c
        } else {
            Command::new(WARREN)
        };
        cmd.args(["relay", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env("WARREN_LOG", "info")
            .stderr(std::process::Stdio::piped());
        // SAFETY: only an async-signal-safe system call between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                use rustix::process::{Resource, Rlimit, setrlimit};
                let zero = Rlimit {
                    current: Some(0),
                    maximum: Some(0),
                };
                setrlimit(Resource::Nice, zero).map_err(std::io::Error::from)
            });
        }
        let mut child = cmd.spawn().expect("setpriv (util-linux) and the relay");
        let said = said_until_listening(&mut child);
        let mut nice = Vec::new();
        for task in std::fs::read_dir(format!("/proc/{}/task", child.id())).unwrap() {
            let Ok(stat) = std::fs::read_to_string(task.unwrap().path().join("stat")) else {
                continue; // a thread that ended
            };
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            nice.push(rest.split(' ').nth(16).unwrap().parse::<i32>().unwrap());
        }
        child.kill().unwrap();
        child.wait().unwrap();
        (said, nice)
    };
    let (said, nice) = start(&[], false);
    assert!(
        said.iter()
            .any(|l| l.contains("bulk slices run nicer") && l.contains("step=10")),
        "{said:?}"
    );
    assert!(nice.iter().all(|&n| n == 0), "{nice:?}");
    let (said, _) = start(&["--bulk-nice", "0"], false);
    assert!(!said.iter().any(|l| l.contains("bulk slices")), "{said:?}");
    // Without the right to set a thread back: a warning naming the fix,
    // and the relay runs.
    let (said, nice) = start(&["--bulk-nice", "5"], true);
    assert!(
        said.iter()
            .any(|l| l.contains("bulk slices keep the relay's priority")
                && l.contains("CAP_SYS_NICE")),
        "{said:?}"
    );
    assert!(said.last().unwrap().contains("relay listening"), "{said:?}");
    assert!(nice.iter().all(|&n| n == 0), "{nice:?}");
    let out = Command::new(WARREN)
        .args(["relay", "--listen", "127.0.0.1:0", "--bulk-nice", "20"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--bulk-nice") && err.contains("0..=19"),
        "{err}"
    );
}

/// `--max-unauthenticated` and `--max-unauthenticated-per-address` (or the
/// config file's keys) set the caps on connections not yet logged in: past
/// the whole cap a connection waits unserved, past one address's cap it is
/// closed; bad values fail the start with the reason.
#[test]
fn the_caps_on_unauthenticated_connections_are_the_operators() {
    use std::io::Read;
    use std::net::{SocketAddr, TcpStream};
    use std::time::Duration;
    let start = |extra: &[&str], file: Option<&str>| {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(WARREN);
        cmd.args(["relay", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .args(extra)
            .env("WARREN_LOG", "info")
            .stderr(std::process::Stdio::piped());
        if let Some(text) = file {
            let path = dir.path().join("relay.toml");
            std::fs::write(&path, text).unwrap();
            cmd.arg("--config").arg(path);
        }
        let mut child = cmd.spawn().unwrap();
        let said = said_until_listening(&mut child);
        let line = said.last().unwrap().clone();
        let addr: SocketAddr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("no address in {line}"))
            .parse()
            .unwrap();
        (child, dir, line, addr)
    };
    // The relay's first bytes on a connection it serves: its banner.
    let banner = |s: &mut TcpStream, wait: Duration| -> std::io::Result<Vec<u8>> {
        s.set_read_timeout(Some(wait))?;
        let mut b = [0u8; 4];
        let n = s.read(&mut b)?;
        Ok(b[..n].to_vec())
    };
    // A connection from a loopback address of our choosing.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let from = |src: &str, to: SocketAddr| {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{src}:0").parse().unwrap()).unwrap();
        let s = rt.block_on(sock.connect(to)).unwrap().into_std().unwrap();
        s.set_nonblocking(false).unwrap();
        s
    };
    const WAIT: Duration = Duration::from_secs(20);

    // The whole cap: two are served, the third waits until one goes.
    let (mut child, _dir, line, addr) = start(&["--max-unauthenticated", "2"], None);
    assert!(
        line.contains("unauthenticated=2") && line.contains("unauthenticated_per_address=2"),
        "{line}"
    );
    let mut held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    for s in &mut held {
        assert_eq!(banner(s, WAIT).unwrap(), b"SSH-");
    }
    let mut third = TcpStream::connect(addr).unwrap();
    let waited = banner(&mut third, Duration::from_millis(300));
    assert!(
        waited
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock
                || e.kind() == std::io::ErrorKind::TimedOut),
        "the third connection was served or closed while the cap was full: {waited:?}"
    );
    drop(held);
    assert_eq!(banner(&mut third, WAIT).unwrap(), b"SSH-");
    child.kill().unwrap();
    child.wait().unwrap();

    // One address's cap, from the config file: its second connection is
    // closed, another address is still served. The relay's stderr is a pipe
    // nobody reads any more (`said_until_listening` dropped its end): the
    // warning it logs must not take it down.
    let (mut child, _dir, line, addr) = start(
        &[],
        Some("max_unauthenticated = 4\nmax_unauthenticated_per_address = 1\n"),
    );
    assert!(
        line.contains("unauthenticated=4") && line.contains("unauthenticated_per_address=1"),
        "{line}"
    );
    let mut first = from("127.0.0.1", addr);
    assert_eq!(banner(&mut first, WAIT).unwrap(), b"SSH-");
    let mut second = from("127.0.0.1", addr);
    match banner(&mut second, WAIT) {
        Ok(b) => assert!(b.is_empty(), "served past its address's cap: {b:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let mut other = from("127.0.0.2", addr);
    assert_eq!(banner(&mut other, WAIT).unwrap(), b"SSH-");
    assert!(child.try_wait().unwrap().is_none(), "the relay exited");
    child.kill().unwrap();
    child.wait().unwrap();

    // Bad values fail the start and say why.
    for (args, want) in [
        (
            &["--max-unauthenticated", "1"][..],
            "out of range: 2 to 100000",
        ),
        (
            &["--max-unauthenticated-per-address", "0"][..],
            "out of range: 1 to 100000",
        ),
        (
            &[
                "--max-unauthenticated",
                "4",
                "--max-unauthenticated-per-address",
                "8",
            ][..],
            "larger than max_unauthenticated 4",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(WARREN)
            .args(["relay", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.path().join("data"))
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} started");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
