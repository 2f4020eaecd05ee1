//! A real MQTT broker (Debian's `mosquitto`) for the on-demand tests: its
//! config, password file and ACL in a temp dir, a loopback port of its own,
//! killed when dropped. `mosquitto_sub`/`mosquitto_pub` act as other MQTT
//! clients.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::WAIT;
use super::openssh::{Ran, run};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// The ACL the tests (and the README) use: the relay reads every state and
/// writes every command; a device (user name = device name, system tau)
/// reads only its own `cmd` topic and writes only its own `state` topic.
pub const ACL: &str = "\
user relay
topic read warren/+/+/state
topic write warren/+/+/cmd

user admin
topic readwrite warren/#

pattern read warren/tau/%u/cmd
pattern write warren/tau/%u/state
";

/// Users and passwords the tests log in with.
pub const USERS: &[(&str, &str)] = &[
    ("relay", "relay-pw"),
    ("admin", "admin-pw"),
    ("dev1", "dev1-pw"),
    ("dev2", "dev2-pw"),
];

/// TLS for the broker's listener: files in PEM.
pub struct BrokerTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `require_certificate true` and `use_identity_as_username true`.
    pub client_certs: bool,
}

pub struct Mosquitto {
    pub port: u16,
    pub dir: tempfile::TempDir,
    conf: PathBuf,
    child: Option<Child>,
    /// The network namespace it runs in (listening on every address there).
    netns: Option<String>,
}

fn free_port() -> u16 {
    // Bound and released at once; mosquitto binds it right after.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Mosquitto {
    /// A broker with a password file ([`USERS`]) and [`ACL`].
    pub async fn start() -> Mosquitto {
        Self::start_with(None).await
    }

    /// A broker on TLS only (`tls`), with the same ACL.
    pub async fn start_with(tls: Option<BrokerTls>) -> Mosquitto {
        Self::start_full(tls, None).await
    }

    /// A broker inside network namespace `ns`, on every address there.
    pub async fn start_in(ns: &str) -> Mosquitto {
        Self::start_full(None, Some(ns)).await
    }

    async fn start_full(tls: Option<BrokerTls>, netns: Option<&str>) -> Mosquitto {
        assert!(
            Path::new(MOSQUITTO).exists(),
            "{MOSQUITTO} is missing: install mosquitto and mosquitto-clients (scripts/test does this)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let pw = dir.path().join("passwd");
        for (i, (user, pass)) in USERS.iter().enumerate() {
            let mut c = std::process::Command::new("mosquitto_passwd");
            c.arg("-b");
            if i == 0 {
                c.arg("-c");
            }
            let ok = c.arg(&pw).arg(user).arg(pass).status().unwrap().success();
            assert!(ok, "mosquitto_passwd failed");
        }
        let acl = super::write_file(dir.path(), "acl", ACL);
        let listen = if netns.is_some() {
            "0.0.0.0"
        } else {
            "127.0.0.1"
        };
        let mut conf = format!(
            "listener {port} {listen}\nacl_file {}\nuser root\nlog_dest stderr\nlog_type all\npersistence false\n",
            acl.display(),
        );
        match &tls {
            None => conf.push_str(&format!(
                "allow_anonymous false\npassword_file {}\n",
                pw.display()
            )),
            Some(t) => {
                conf.push_str(&format!(
                    "cafile {}\ncertfile {}\nkeyfile {}\n",
                    t.ca.display(),
                    t.cert.display(),
                    t.key.display()
                ));
                if t.client_certs {
                    conf.push_str("require_certificate true\nuse_identity_as_username true\nallow_anonymous false\n");
                } else {
                    conf.push_str(&format!(
                        "allow_anonymous false\npassword_file {}\n",
                        pw.display()
                    ));
                }
            }
        }
        let conf = super::write_file(dir.path(), "mosquitto.conf", &conf);
        let mut m = Mosquitto {
            port,
            dir,
            conf,
            child: None,
            netns: netns.map(String::from),
        };
        m.run().await;
        m
    }

    /// Starts the broker process and waits until it says it is running.
    async fn run(&mut self) {
        let mut child = self
            .command(MOSQUITTO)
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mosquitto");
        let stderr = child.stderr.take().unwrap();
        let mut lines = BufReader::new(stderr).lines();
        let running = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains(" running") {
                    return;
                }
                assert!(!line.contains("Error"), "mosquitto: {line}");
            }
            panic!("mosquitto exited before it ran");
        };
        tokio::time::timeout(WAIT, running)
            .await
            .expect("mosquitto running in time");
        // Keep reading its log so it never blocks on a full pipe.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if std::env::var_os("WARREN_TEST_LOG").is_some() {
                    eprintln!("mosquitto: {line}");
                }
            }
        });
        self.child = Some(child);
    }

    /// Kills the broker (as a crash or an outage would).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    /// Starts it again on the same port, with the same config.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.run().await;
    }

    /// `prog` run where the broker runs (its namespace, if any).
    fn command(&self, prog: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, prog]);
                c
            }
            None => Command::new(prog),
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// A password file for `user` (for `--mqtt-password-file`).
    pub fn password_file(&self, user: &str) -> PathBuf {
        let pass = password(user);
        super::write_file(
            self.dir.path(),
            &format!("{user}.pass"),
            &format!("{pass}\n"),
        )
    }

    fn login(&self, c: &mut Command, user: &str) {
        c.args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-V", "5"])
            .args(["-u", user, "-P", password(user)]);
    }

    /// `mosquitto_pub` as `user`, QoS 1, with `extra` arguments.
    pub async fn publish(&self, user: &str, topic: &str, payload: &str, extra: &[&str]) -> Ran {
        let mut c = self.command("mosquitto_pub");
        self.login(&mut c, user);
        c.args(["-q", "1", "-t", topic, "-m", payload]).args(extra);
        run(&mut c, WAIT).await
    }

    /// `mosquitto_sub -v` as `user` on `topic`; lines are "TOPIC PAYLOAD".
    /// Returns once it is subscribed.
    pub async fn subscribe(&self, user: &str, topic: &str) -> Subscriber {
        // Line-buffered: its -d lines are how we know it has subscribed.
        let mut c = self.command("stdbuf");
        c.args(["-oL", "mosquitto_sub"]);
        self.login(&mut c, user);
        let mut child = c
            .args(["-q", "1", "-v", "-d", "-t", topic])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn mosquitto_sub");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        // With -d it says SUBACK on stdout once subscribed.
        let subscribed = async {
            while let Some(l) = lines.next_line().await.unwrap() {
                if l.contains("SUBACK") {
                    return;
                }
            }
            panic!("mosquitto_sub ended before it subscribed");
        };
        tokio::time::timeout(WAIT, subscribed)
            .await
            .expect("mosquitto_sub subscribed in time");
        Subscriber {
            lines,
            _child: child,
        }
    }
}

pub fn password(user: &str) -> &'static str {
    USERS
        .iter()
        .find(|(u, _)| *u == user)
        .map(|(_, p)| *p)
        .unwrap_or_else(|| panic!("no test user {user}"))
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// A running `mosquitto_sub`; killed when dropped.
pub struct Subscriber {
    lines: Lines<BufReader<ChildStdout>>,
    _child: Child,
}

impl Subscriber {
    /// The next message (topic, payload), skipping -d's protocol lines.
    pub async fn next(&mut self) -> (String, String) {
        let next = async {
            loop {
                let l = self
                    .lines
                    .next_line()
                    .await
                    .unwrap()
                    .expect("mosquitto_sub ended");
                if l.starts_with("Client ") || l.starts_with("Subscribed") {
                    continue;
                }
                if let Some((t, p)) = l.split_once(' ') {
                    return (t.to_string(), p.to_string());
                }
            }
        };
        tokio::time::timeout(WAIT, next)
            .await
            .expect("an MQTT message in time")
    }

    /// Reads messages until one's JSON `state` is `want`; returns the
    /// states seen on the way (and that one).
    pub async fn until_state(&mut self, want: &str) -> Vec<serde_json::Value> {
        let mut seen = Vec::new();
        loop {
            let (_, payload) = self.next().await;
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&payload) else {
                continue;
            };
            let done = v["state"] == want;
            seen.push(v);
            if done {
                return seen;
            }
        }
    }
}

/// Waits at most [`WAIT`] for `f`.
pub async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

/// How long a test lets a command sit in the broker so that its MQTT
/// message expiry (1 s) has passed.
pub const PAST_EXPIRY: Duration = Duration::from_millis(2100);
