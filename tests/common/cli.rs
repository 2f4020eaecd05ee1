//! Running the `warren` binary the way a person would, with a time limit.

use std::path::Path;

use tokio::process::Command;

use super::WAIT;
use super::openssh::{Ran, run, spawn, ssh_keygen};

pub const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// Runs `warren ARGS` quietly, never inheriting a `WARREN_DATA` from outside.
pub async fn warren(args: &[&str]) -> Ran {
    run(
        Command::new(WARREN)
            .args(args)
            .env("WARREN_LOG", "error")
            .env_remove("WARREN_DATA"),
        WAIT,
    )
    .await
}

/// `warren admin --data DATA invite` for system tau, naming `relay` in the
/// token; returns the token.
pub async fn invite_token(data: &Path, role: &str, name: &str, relay: &str) -> String {
    let data = data.to_str().unwrap();
    let out = warren_ok(&[
        "admin", "--data", data, "invite", "--system", "tau", "--role", role, "--name", name,
        "--relay", relay,
    ])
    .await;
    let token = out.trim().to_string();
    assert!(token.starts_with("warren1."), "{out}");
    token
}

/// Runs `warren ARGS`, which must succeed; returns its stdout.
pub async fn warren_ok<S: AsRef<str>>(args: &[S]) -> String {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let r = warren(&args).await;
    assert!(r.ok, "warren {}: {}", args.join(" "), r.stderr);
    r.stdout_str()
}

/// Prepares the relay data directory `data` with the admin CLI, as an
/// operator would: system `tau`, and for each `(role, name)` a key pair at
/// `dir/NAME` (`warren keygen` for a device, `ssh-keygen` otherwise)
/// registered with that role. Returns the relay's host key.
pub async fn admin_tau(data: &Path, dir: &Path, keys: &[(&str, &str)]) -> String {
    let data = p(data);
    let host_key = warren_ok(&["admin", "--data", data, "host-key"])
        .await
        .trim()
        .to_string();
    warren_ok(&["admin", "--data", data, "system", "add", "tau"]).await;
    for &(role, key) in keys {
        let path = dir.join(key);
        if role == "device" {
            warren_ok(&["keygen", p(&path)]).await;
        } else {
            ssh_keygen(&path);
        }
        let public = dir.join(format!("{key}.pub"));
        let add = ["admin", "--data", data, "key", "add", "--system", "tau"];
        warren_ok(&[&add[..], &["--role", role, "--name", key, p(&public)]].concat()).await;
    }
    host_key
}

/// A `warren relay` process on 127.0.0.1, killed with SIGKILL when dropped.
pub struct RelayProcess {
    pub child: tokio::process::Child,
    pub port: u16,
    /// Its stderr, line by line.
    pub lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl RelayProcess {
    /// Starts `warren GLOBAL… relay --listen 127.0.0.1:PORT RELAY_ARGS… --data DATA`
    /// (port 0: one it picks) and waits until it listens.
    pub async fn start(
        global: &[&str],
        port: u16,
        relay_args: &[&str],
        data: &std::path::Path,
    ) -> RelayProcess {
        use tokio::io::{AsyncBufReadExt, BufReader};
        let mut child = spawn(
            Command::new(WARREN)
                .args(global)
                .args(["relay", "--listen", &format!("127.0.0.1:{port}")])
                .args(relay_args)
                .arg("--data")
                .arg(data)
                .env("WARREN_LOG", "info"),
        );
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let port = tokio::time::timeout(WAIT, async {
            while let Some(l) = lines.next_line().await.unwrap() {
                if l.contains("relay listening") {
                    let rest = l.split("127.0.0.1:").nth(1).unwrap();
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    return digits.parse::<u16>().unwrap();
                }
            }
            panic!("relay exited before listening");
        })
        .await
        .expect("relay listening");
        // Keep draining its log so it never blocks on a full pipe.
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(l)) = lines.next_line().await {
                let _ = tx.send(l);
            }
        });
        RelayProcess {
            child,
            port,
            lines: rx,
        }
    }

    /// Waits for a log line containing every string in `want`.
    pub async fn line(&mut self, want: &[&str]) -> String {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(l) = self.lines.recv().await {
                if want.iter().all(|w| l.contains(w)) {
                    return Some(l);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(l)) => l,
            _ => panic!("no log line with {want:?}"),
        }
    }

    pub async fn kill_9(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// Blocking runs of `warren` for commands that finish at once (admin,
/// keygen, config errors), from plain `#[test]`s.
pub mod blocking {
    use std::process::{Command, Output};

    use super::WARREN;

    pub fn warren(args: &[&str]) -> Output {
        Command::new(WARREN)
            .args(args)
            .env("WARREN_LOG", "error")
            .output()
            .unwrap()
    }

    /// Runs `warren ARGS`, which must succeed; returns its stdout.
    pub fn ok(args: &[&str]) -> String {
        let out = warren(args);
        assert!(
            out.status.success(),
            "warren {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `warren ARGS`, which must fail saying `says`.
    pub fn fails(args: &[&str], says: &str) {
        let out = warren(args);
        assert!(!out.status.success(), "warren {args:?} should fail");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(says),
            "warren {args:?}: expected {says:?} in: {err}"
        );
    }
}

/// A path as the `&str` an argument list wants.
pub fn p(path: &std::path::Path) -> &str {
    path.to_str().unwrap()
}
