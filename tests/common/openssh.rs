//! Real OpenSSH in tests: an `sshd` with its own config and keys in a temp
//! dir (the device's target), and helpers to run `ssh` with a config file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::WAIT;

pub const SSHD: &str = "/usr/sbin/sshd";

/// The user tests log in as on the device's sshd (whoever runs the tests).
pub fn login_user() -> String {
    let out = std::process::Command::new("id")
        .arg("-un")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Runs `ssh-keygen` to make a key pair at `path`.
pub fn ssh_keygen(path: &Path) {
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-N", "", "-t", "ed25519", "-C", "test", "-f"])
        .arg(path)
        .status()
        .unwrap()
        .success();
    assert!(ok, "ssh-keygen failed");
}

pub struct Sshd {
    pub port: u16,
    /// Key authorized to log in as [`login_user`].
    pub user_key: PathBuf,
    /// The sshd's host public key line.
    pub host_pub: String,
    _child: Child,
    _dir: tempfile::TempDir,
}

impl Sshd {
    pub async fn start() -> Sshd {
        Self::start_in(None).await
    }

    /// Starts sshd inside network namespace `netns` (its loopback must be up).
    pub async fn start_in(netns: Option<&str>) -> Sshd {
        Self::start_listening(netns, "127.0.0.1").await
    }

    /// Starts sshd inside `netns`, listening on `listen` (e.g. `0.0.0.0`
    /// for a host that others in its private network reach).
    pub async fn start_listening(netns: Option<&str>, listen: &str) -> Sshd {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: install openssh-server (scripts/test does this)"
        );
        // sshd refuses to start without its privilege-separation directory.
        let _ = std::fs::create_dir_all("/run/sshd");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ssh_keygen(&d.join("host"));
        ssh_keygen(&d.join("user"));
        std::fs::copy(d.join("user.pub"), d.join("authorized_keys")).unwrap();
        let port = super::closed_port().await;
        let config = format!(
            "Port {port}\nListenAddress {listen}\nHostKey {d}/host\nAuthorizedKeysFile {d}/authorized_keys\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             PidFile {d}/sshd.pid\nPermitRootLogin prohibit-password\nLogLevel INFO\n",
            d = d.display()
        );
        std::fs::write(d.join("sshd_config"), config).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, SSHD]);
                c
            }
            None => Command::new(SSHD),
        };
        let mut child = spawn(cmd.args(["-D", "-e", "-f"]).arg(d.join("sshd_config")));
        let stderr = child.stderr.take().unwrap();
        wait_for_line(stderr, "Server listening on", "sshd").await;
        let host_pub = std::fs::read_to_string(d.join("host.pub"))
            .unwrap()
            .trim()
            .to_string();
        Sshd {
            port,
            user_key: d.join("user"),
            host_pub,
            _child: child,
            _dir: dir,
        }
    }
}

/// Reads `stream` until a line contains `want` (at most [`WAIT`]), then
/// keeps draining it in the background so the writer never blocks.
pub async fn wait_for_line<R>(stream: R, want: &str, what: &str) -> Vec<String>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let mut lines = BufReader::new(stream).lines();
    let mut seen = Vec::new();
    let found = tokio::time::timeout(WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            let hit = line.contains(want);
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "{what} never printed {want:?}; it said:\n{}",
        seen.join("\n")
    );
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    seen
}

/// Output of a finished command.
pub struct Ran {
    pub ok: bool,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Ran {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs a command to completion (at most `limit`), killing it on timeout.
pub async fn run(cmd: &mut Command, limit: Duration) -> Ran {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd.spawn().expect("spawn");
    let out = tokio::time::timeout(limit, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{cmd:?} did not finish within {limit:?}"))
        .unwrap();
    Ran {
        ok: out.status.success(),
        stdout: out.stdout,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Starts a long-running command (ssh -N …) that is killed when dropped.
pub fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn")
}

/// Starts a long-running command whose output nobody reads; killed when dropped.
pub fn spawn_quiet(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn")
}

/// Runs `curl -sS ARGS…`, which gives up after 30 s (and is killed after 60 s).
pub async fn curl(args: &[&str]) -> Ran {
    run(
        Command::new("curl")
            .args(["-sS", "--max-time", "30"])
            .args(args),
        Duration::from_secs(60),
    )
    .await
}

/// Stock `ssh` with no config file and nothing of the user's own setup:
/// only the identity `key`, no prompts, host keys only from `known_hosts`.
pub fn stock_ssh(known_hosts: &Path, key: &Path) -> Command {
    let mut c = Command::new("ssh");
    c.args([
        "-F",
        "/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
    ])
    .arg("-o")
    .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
    .arg("-i")
    .arg(key);
    c
}

/// Starts stock `ssh` (the command given, with its options) as a controller
/// that carries `target` on its stdin and stdout: `-p PORT -W TARGET
/// tau@127.0.0.1`. Its stdin and stdout are piped for the caller (who may
/// never read); killed on drop.
pub fn ssh_w(ssh: &mut Command, port: u16, target: &str) -> Child {
    ssh.args(["-p", &port.to_string(), "-W", target, "tau@127.0.0.1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn ssh -W")
}
