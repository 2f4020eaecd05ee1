//! Faults in network namespaces, with the device behind a MASQUERADE NAT:
//! the device's link cut in the middle of a transfer, and the NAT rebinding
//! (its public address changes and its connection tracking is flushed).
//!
//! ```text
//!  dev 192.168.70.2 ── nat (MASQUERADE / SNAT) 203.0.113.2 (.3) ── relay 203.0.113.1
//! ```
//!
//! The controller is stock `ssh -W`, run next to the relay. Needs root; it
//! fails, never skips, without it.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::cli::{admin_tau, warren_ok};
use common::netns::{
    Net, Watched, agent_config, cmd_ok, default_route, in_ns, ip, is_root, start_relay,
};
use common::openssh::{spawn_quiet, ssh_w};
use common::*;
use tokio::io::AsyncReadExt;
use tokio::process::Child;
use warren::protocol::limits::RELAY_KEEPALIVE_INTERVAL;

const BACK_WITHIN: Duration = Duration::from_secs(60);
/// The agent's keepalive timeout in these tests.
const AGENT_DEAD_AFTER: Duration = Duration::from_secs(3);
/// A port inside the device's own namespace (nothing else lives there).
const TARGET_PORT: u16 = 9000;

struct World {
    net: Net,
    relay_ns: String,
    nat_ns: String,
    /// The relay's end of the link to the NAT.
    relay_if: String,
    nat_wan: String,
    _relay: Watched,
    rport: u16,
    agent: Watched,
    _target: Child,
    dir: tempfile::TempDir,
    data: PathBuf,
    ssh_config: PathBuf,
}

impl World {
    async fn start(prefix: &str) -> World {
        assert!(
            is_root(),
            "this test needs root (network namespaces, iptables)"
        );
        let mut net = Net::new(prefix);
        let relay_ns = net.add_ns("relay");
        let nat_ns = net.add_ns("nat");
        let dev_ns = net.add_ns("dev");
        let (relay_if, nat_wan) =
            net.link(&relay_ns, "203.0.113.1/29", &nat_ns, "203.0.113.2/29", "w");
        net.link(&nat_ns, "192.168.70.1/24", &dev_ns, "192.168.70.2/24", "l");
        default_route(&dev_ns, "192.168.70.1");
        net.nat(&nat_ns, &nat_wan);

        // The device's target: an endless stream of bytes.
        let target = spawn_quiet(
            in_ns(&dev_ns, "ncat")
                .args(["-l", "-k", "127.0.0.1", &TARGET_PORT.to_string()])
                .args(["--sh-exec", "cat /dev/zero"]),
        );

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data = d.join("data");
        let (relay, rport) = start_relay(&relay_ns, &data, 0).await;
        let host_key = admin_tau(&data, d, &[("device", "dev1"), ("controller", "alice")]).await;
        let agent_cfg = agent_config(
            d,
            "dev1",
            &format!("203.0.113.1:{rport}"),
            &host_key,
            &format!(
                "allow = [\"{TARGET_PORT}=127.0.0.1:{TARGET_PORT}\"]\nkeepalive_timeout = \"{}s\"\n",
                AGENT_DEAD_AFTER.as_secs()
            ),
        );
        let mut agent = Watched::agent(&dev_ns, &agent_cfg);
        agent.line("online: registered", WAIT).await;
        let relay_pub = std::fs::read_to_string(data.join("host_key.pub")).unwrap();
        let known = write_file(
            d,
            "known_hosts",
            &format!("[127.0.0.1]:{rport} {}\n", relay_pub.trim()),
        );
        let ssh_config = write_file(
            d,
            "ssh_config",
            &format!(
                "Host *\n  IdentityFile {}\n  IdentitiesOnly yes\n  BatchMode yes\n  \
                 StrictHostKeyChecking yes\n  UserKnownHostsFile {}\n  ConnectTimeout 10\n",
                d.join("alice").display(),
                known.display()
            ),
        );
        World {
            net,
            relay_ns,
            nat_ns,
            relay_if,
            nat_wan,
            _relay: relay,
            rport,
            agent,
            _target: target,
            dir,
            data,
            ssh_config,
        }
    }

    fn data(&self) -> &Path {
        &self.data
    }

    /// Stock `ssh -W dev1:TARGET_PORT` next to the relay; stdout piped.
    fn controller(&self) -> Child {
        ssh_w(
            in_ns(&self.relay_ns, "ssh").arg("-F").arg(&self.ssh_config),
            self.rport,
            &format!("dev1:{TARGET_PORT}"),
        )
    }

    /// `warren admin ls --json`, once dev1's row satisfies `want`. The
    /// relay writes status in its own task just after registering, and
    /// another process cannot be woken by it: look again until it shows.
    async fn ls_until(&self, want: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let data = self.data().to_str().unwrap().to_string();
        let found = tokio::time::timeout(WAIT, async {
            loop {
                let out = warren_ok(&["admin", "--data", &data, "ls", "--json"]).await;
                let v: serde_json::Value =
                    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
                if v.get(0).is_some_and(&want) {
                    return v;
                }
            }
        })
        .await;
        found.expect("device status as expected within WAIT")
    }
}

/// Reads from `r` until `n` bytes have arrived.
async fn read_at_least(r: &mut (impl AsyncReadExt + Unpin), n: usize) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < n {
        let k = r.read(&mut buf).await.unwrap();
        assert!(k > 0, "stream ended after {got} bytes");
        got += k;
    }
}

#[tokio::test]
async fn a_link_cut_mid_transfer_ends_the_stream_and_the_agent_comes_back() {
    let mut w = World::start("wc").await;
    let mut ctl = w.controller();
    let mut out = ctl.stdout.take().unwrap();
    tokio::time::timeout(WAIT, read_at_least(&mut out, 4 << 20))
        .await
        .expect("the transfer runs");

    ip(&["-n", &w.relay_ns, "link", "set", &w.relay_if, "down"]);
    let cut = Instant::now();
    // The controller keeps reading what is in flight, then its stream ends:
    // the relay drops the silent device within its keepalive window, which
    // starts at the first keepalive tick after the cut (up to one interval
    // later), plus a few seconds for the close to travel.
    let limit = relay_keepalive_window() + RELAY_KEEPALIVE_INTERVAL + Duration::from_secs(5);
    let ended = tokio::time::timeout(limit, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match out.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "controller's stream still open {limit:?} after the cut"
    );
    let stream_ended = cut.elapsed();
    let status = tokio::time::timeout(WAIT, ctl.wait())
        .await
        .unwrap()
        .unwrap();
    // The agent noticed on its side too.
    w.agent.line("offline:", WAIT).await;

    ip(&["-n", &w.relay_ns, "link", "set", &w.relay_if, "up"]);
    let restored = Instant::now();
    w.agent.line("online: registered", BACK_WITHIN).await;
    let back = restored.elapsed();
    // Reachable again: a new transfer runs.
    let mut again = w.controller();
    let mut out = again.stdout.take().unwrap();
    tokio::time::timeout(WAIT, read_at_least(&mut out, 1 << 20))
        .await
        .expect("a new transfer after the link returns");
    w.ls_until(|d| d["online"] == true).await;
    eprintln!(
        "link cut mid-transfer: controller's stream ended {stream_ended:?} after the cut ({status}); \
         agent back {back:?} after the link returned"
    );
    assert!(back < BACK_WITHIN);
}

#[tokio::test]
async fn a_nat_rebinding_is_detected_and_the_connection_replaced() {
    let mut w = World::start("wr").await;
    let first = w.ls_until(|d| d["online"] == true).await;
    let addr0 = first[0]["address"].as_str().unwrap_or_default().to_string();
    assert!(addr0.starts_with("203.0.113.2:"), "{first}");

    // The NAT's public address changes and its state is forgotten: the
    // device's packets now arrive from 203.0.113.3.
    ip(&[
        "-n",
        &w.nat_ns,
        "addr",
        "add",
        "203.0.113.3/29",
        "dev",
        &w.nat_wan,
    ]);
    let ns = w.nat_ns.clone();
    let ipt = |args: &[&str]| {
        cmd_ok(
            "ip",
            &[&["netns", "exec", &ns, "iptables", "-t", "nat"][..], args].concat(),
        );
    };
    ipt(&["-F", "POSTROUTING"]);
    ipt(&[
        "-A",
        "POSTROUTING",
        "-o",
        &w.nat_wan,
        "-j",
        "SNAT",
        "--to-source",
        "203.0.113.3",
    ]);
    cmd_ok("ip", &["netns", "exec", &ns, "conntrack", "-F"]);
    let rebound = Instant::now();

    // The agent's next keepalive meets a relay that knows no such
    // connection: the dead connection is detected and a new one made.
    w.agent
        .line("offline:", AGENT_DEAD_AFTER + Duration::from_secs(10))
        .await;
    let detected = rebound.elapsed();
    w.agent.line("online: registered", BACK_WITHIN).await;
    let replaced = rebound.elapsed();
    let now = w
        .ls_until(|d| {
            d["online"] == true
                && d["address"]
                    .as_str()
                    .unwrap_or("")
                    .starts_with("203.0.113.3:")
        })
        .await;
    let addr1 = now[0]["address"].as_str().unwrap_or_default();
    // Reachable through the new connection.
    let mut ctl = w.controller();
    let mut out = ctl.stdout.take().unwrap();
    tokio::time::timeout(WAIT, read_at_least(&mut out, 1 << 20))
        .await
        .expect("a transfer after the rebinding");
    eprintln!(
        "NAT rebinding {addr0} -> {addr1}: detected after {detected:?}, replaced after {replaced:?}"
    );
    assert!(detected < relay_keepalive_window());
    let _ = (&w.net, &w.dir);
}
