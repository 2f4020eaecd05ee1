//! Network namespaces for tests: namespaces and veth links removed on drop,
//! processes inside them whose log lines can be waited for, and the relay
//! binary started in one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::WAIT;

pub const WARREN: &str = env!("CARGO_BIN_EXE_warren");

/// Namespaces of one test run, removed on drop (even on failure). Names
/// carry the process id and a counter, so parallel runs never collide.
pub struct Net {
    pub tag: String,
    made: Vec<String>,
    etc: Vec<std::path::PathBuf>,
}

impl Net {
    pub fn new(prefix: &str) -> Net {
        static N: AtomicU32 = AtomicU32::new(0);
        // Short: interface names are limited to 15 bytes.
        let tag = format!(
            "{prefix}{}{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        Net {
            tag,
            made: Vec::new(),
            etc: Vec::new(),
        }
    }

    pub fn add_ns(&mut self, role: &str) -> String {
        let ns = format!("{}-{role}", self.tag);
        ip(&["netns", "add", &ns]);
        self.made.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ns
    }

    /// A veth pair between two namespaces with an address on each end;
    /// returns the interface names.
    pub fn link(
        &self,
        a: &str,
        a_addr: &str,
        b: &str,
        b_addr: &str,
        suffix: &str,
    ) -> (String, String) {
        let (ia, ib) = (
            format!("{}{suffix}a", self.tag),
            format!("{}{suffix}b", self.tag),
        );
        ip(&[
            "link", "add", &ia, "netns", a, "type", "veth", "peer", "name", &ib, "netns", b,
        ]);
        ip(&["-n", a, "addr", "add", a_addr, "dev", &ia]);
        ip(&["-n", b, "addr", "add", b_addr, "dev", &ib]);
        ip(&["-n", a, "link", "set", &ia, "up"]);
        ip(&["-n", b, "link", "set", &ib, "up"]);
        (ia, ib)
    }

    /// Makes `ns` a MASQUERADE NAT router whose uplink is `wan`.
    pub fn nat(&self, ns: &str, wan: &str) {
        self.nat_with(ns, wan, Mapping::Masquerade);
    }

    /// Makes `ns` a NAT router whose uplink is `wan`, mapping UDP as
    /// `mapping` says. Like a home router, it drops unsolicited packets
    /// addressed to itself on its WAN side: otherwise a peer's first UDP
    /// packet, arriving before the LAN host's own, is taken by the box
    /// itself and its conntrack entry clashes with the mapping the LAN
    /// host needs next, so hole punching could never work in the lab.
    pub fn nat_with(&self, ns: &str, wan: &str, mapping: Mapping) {
        let ipt = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns, "iptables"];
            all.extend_from_slice(args);
            cmd_ok("ip", &all);
        };
        if mapping == Mapping::Symmetric {
            // A fresh random public port for every UDP flow: a port per
            // destination (endpoint-dependent mapping).
            ipt(&[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                wan,
                "-p",
                "udp",
                "-j",
                "MASQUERADE",
                "--random-fully",
            ]);
        }
        ipt(&[
            "-A",
            "INPUT",
            "-i",
            wan,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ]);
        ipt(&["-A", "INPUT", "-i", wan, "-j", "DROP"]);
        self.masquerade(ns, wan);
    }

    fn masquerade(&self, ns: &str, wan: &str) {
        cmd_ok(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        cmd_ok(
            "ip",
            &[
                "netns",
                "exec",
                ns,
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                wan,
                "-j",
                "MASQUERADE",
            ],
        );
    }
}

/// How a lab NAT maps UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// One public port per socket, whatever the destination (what most
    /// home routers do; hole punching works).
    Masquerade,
    /// A new public port per destination (`--random-fully`).
    Symmetric,
}

/// Drops (or, with `blocked` false, passes again) all UDP that NAT `ns`
/// forwards, both ways.
pub fn block_udp(ns: &str, blocked: bool) {
    let op = if blocked { "-I" } else { "-D" };
    cmd_ok(
        "ip",
        &[
            "netns", "exec", ns, "iptables", op, "FORWARD", "-p", "udp", "-j", "DROP",
        ],
    );
}

impl Net {
    /// Gives namespace `ns` its own /etc/hosts (`ip netns exec` mounts
    /// /etc/netns/NS/hosts over it), removed on drop.
    pub fn hosts(&mut self, ns: &str, text: &str) {
        let dir = Path::new("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hosts"), text).unwrap();
        self.etc.push(dir);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for dir in &self.etc {
            let _ = std::fs::remove_dir_all(dir);
        }
        for ns in self.made.iter().rev() {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// Routes everything from namespace `ns` that has no closer route via `gw`.
pub fn default_route(ns: &str, gw: &str) {
    ip(&["-n", ns, "route", "add", "default", "via", gw]);
}

pub fn ip(args: &[&str]) {
    cmd_ok("ip", args);
}

pub fn cmd_ok(prog: &str, args: &[&str]) {
    let out = std::process::Command::new(prog)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{prog} {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Can `ns` open a TCP connection to `addr`? (Bounded by a short timeout.)
pub async fn reachable(ns: &str, addr: &str) -> bool {
    let (host, port) = addr.rsplit_once(':').unwrap();
    let script = format!("exec 3<>/dev/tcp/{host}/{port}");
    super::openssh::run(
        in_ns(ns, "timeout").args(["3", "bash", "-c", &script]),
        WAIT,
    )
    .await
    .ok
}

/// A command run inside namespace `ns`.
pub fn in_ns(ns: &str, prog: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]);
    c
}

/// A long-running process whose stderr lines arrive on a channel; killed
/// on drop.
pub struct Watched {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    pub seen: Vec<String>,
}

impl Watched {
    pub fn start(cmd: &mut Command) -> Watched {
        let mut child = super::openssh::spawn(cmd.env("WARREN_LOG", "info"));
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut r = BufReader::new(stderr).lines();
            while let Ok(Some(l)) = r.next_line().await {
                if tx.send(l).is_err() {
                    return;
                }
            }
        });
        Watched {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing every one of `want`, at most `limit`.
    pub async fn line_with(&mut self, want: &[&str], limit: Duration) -> String {
        let found = tokio::time::timeout(limit, async {
            while let Some(l) = self.lines.recv().await {
                self.seen.push(l.clone());
                if want.iter().all(|w| l.contains(w)) {
                    return Some(l);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(l)) => l,
            _ => panic!(
                "no line with all of {want:?} within {limit:?}; saw:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    /// Waits for a line containing `want`, at most `limit`.
    pub async fn line(&mut self, want: &str, limit: Duration) -> String {
        let found = tokio::time::timeout(limit, async {
            while let Some(l) = self.lines.recv().await {
                self.seen.push(l.clone());
                if l.contains(want) {
                    return Some(l);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(l)) => l,
            _ => panic!(
                "no line with {want:?} within {limit:?}; saw:\n{}",
                self.seen.join("\n")
            ),
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }
}

impl Watched {
    /// Starts `warren agent --config CFG` inside `ns`.
    pub fn agent(ns: &str, cfg: &Path) -> Watched {
        Watched::start(in_ns(ns, WARREN).args(["agent", "--config"]).arg(cfg))
    }
}

/// Writes `dir/NAME.toml`: the config of an agent for device `NAME` of
/// system `tau`, its key at `dir/NAME`, reaching the relay at `relay`;
/// `extra` adds lines (allow, scope, keepalive_timeout; tables last).
pub fn agent_config(dir: &Path, name: &str, relay: &str, host_key: &str, extra: &str) -> PathBuf {
    super::write_file(
        dir,
        &format!("{name}.toml"),
        &format!(
            "relay = \"{relay}\"\nsystem = \"tau\"\nname = \"{name}\"\nkey = \"{name}\"\n\
             relay_host_key = \"{host_key}\"\n{extra}"
        ),
    )
}

/// Starts the relay binary in `ns` on `port` (0: any free one); returns it
/// and the port it listens on (read from its "relay listening" line).
pub async fn start_relay(ns: &str, data: &Path, port: u16) -> (Watched, u16) {
    let mut relay = Watched::start(
        in_ns(ns, WARREN)
            .args(["relay", "--listen", &format!("0.0.0.0:{port}"), "--data"])
            .arg(data),
    );
    let line = relay.line("relay listening", WAIT).await;
    (relay, wildcard_port(&line))
}

/// The port of the `0.0.0.0:PORT` address a relay's log line names.
pub fn wildcard_port(line: &str) -> u16 {
    line.split("0.0.0.0:")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"))
}

pub fn is_root() -> bool {
    let out = std::process::Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}
