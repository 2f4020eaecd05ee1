//! Direct paths through NATs, in network namespaces. The device and the
//! controller each sit behind their own NAT (which, like a home router,
//! drops unsolicited packets to itself); only the relay has a reachable
//! address. `warren forward` in the controller's namespace carries a
//! download of a random file from a service on the device.
//!
//! ```text
//!  dev 192.168.50.2 ── natD 203.0.113.2 ──┐
//!                                        relay 203.0.113.1 / .5 (SSH + UDP discovery;
//!                                        also routes between the NATs: the internet)
//!  ctl 192.168.60.2 ── natC 203.0.113.6 ──┘
//! ```
//!
//! Needs root (namespaces, iptables) and ncat. It fails, never skips.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cli::{admin_tau, p};
use common::netns::{
    Mapping, Net, Watched, agent_config, block_udp, default_route, in_ns, is_root, start_relay,
};
use common::openssh::run;
use common::*;
use tokio::io::AsyncReadExt;
use warren::p2p::{DIRECT_IDLE_TIMEOUT, PROXY_BUDGET, RETRY_AFTER};

/// Size of the file downloaded in each case.
const BLOB: usize = 4 << 20;

struct Lab {
    _net: Net,
    dir: tempfile::TempDir,
    nat_d: String,
    nat_c: String,
    ctl_ns: String,
    relay: Watched,
    relay_at: String,
    host_key: String,
    _agent: Watched,
    _service: Watched,
    service_port: u16,
    blob_hash: String,
}

fn sha256(b: &[u8]) -> String {
    data_encoding::HEXLOWER
        .encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b).as_ref())
}

impl Lab {
    async fn new(dev_nat: Mapping, ctl_nat: Mapping) -> Lab {
        assert!(
            is_root(),
            "the direct-path tests need root (namespaces, iptables)"
        );
        let mut net = Net::new("p");
        let relay_ns = net.add_ns("relay");
        let nat_d = net.add_ns("natd");
        let nat_c = net.add_ns("natc");
        let dev_ns = net.add_ns("dev");
        let ctl_ns = net.add_ns("ctl");
        let (_, d_wan) = net.link(&relay_ns, "203.0.113.1/30", &nat_d, "203.0.113.2/30", "rd");
        let (_, c_wan) = net.link(&relay_ns, "203.0.113.5/30", &nat_c, "203.0.113.6/30", "rc");
        net.link(&nat_d, "192.168.50.1/24", &dev_ns, "192.168.50.2/24", "dl");
        net.link(&nat_c, "192.168.60.1/24", &ctl_ns, "192.168.60.2/24", "cl");
        net.nat_with(&nat_d, &d_wan, dev_nat);
        net.nat_with(&nat_c, &c_wan, ctl_nat);
        // The relay's namespace is also the internet between the NATs.
        common::netns::cmd_ok(
            "ip",
            &[
                "netns",
                "exec",
                &relay_ns,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        default_route(&nat_d, "203.0.113.1");
        default_route(&nat_c, "203.0.113.5");
        default_route(&dev_ns, "192.168.50.1");
        default_route(&ctl_ns, "192.168.60.1");

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let blob: Vec<u8> = {
            let mut b = vec![0u8; BLOB];
            aws_lc_rs::rand::fill(&mut b).unwrap();
            b
        };
        std::fs::write(d.join("blob"), &blob).unwrap();
        let service_port = closed_port().await;
        let mut service = Watched::start(in_ns(&dev_ns, "ncat").args([
            "-vlk",
            "127.0.0.1",
            &service_port.to_string(),
            "--sh-exec",
            &format!("cat {}", d.join("blob").display()),
        ]));
        service.line("Listening on", WAIT).await;

        let data = d.join("relay-data");
        let (relay, rport) = start_relay(&relay_ns, &data, 0).await;
        // UDP discovery starts before the SSH listener (by default on the
        // same port, on UDP).
        assert!(
            relay
                .seen
                .iter()
                .any(|l| l.contains("UDP discovery for direct paths")
                    && l.contains(&format!("0.0.0.0:{rport}"))),
            "{:?}",
            relay.seen
        );
        let host_key = admin_tau(&data, d, &[("device", "dev1"), ("controller", "alice")]).await;
        let cfg = agent_config(
            d,
            "dev1",
            &format!("203.0.113.1:{rport}"),
            &host_key,
            &format!("allow = [\"127.0.0.1:{service_port}\"]\nkeepalive_timeout = \"5s\"\n"),
        );
        let mut agent = Watched::agent(&dev_ns, &cfg);
        agent.line("online: registered", WAIT).await;
        Lab {
            _net: net,
            nat_d,
            nat_c,
            ctl_ns,
            relay,
            relay_at: format!("203.0.113.5:{rport}"),
            host_key,
            _agent: agent,
            _service: service,
            service_port,
            blob_hash: sha256(&blob),
            dir,
        }
    }

    fn client_flags(&self) -> Vec<String> {
        let key: PathBuf = self.dir.path().join("alice");
        vec![
            "--relay".into(),
            self.relay_at.clone(),
            "--system".into(),
            "tau".into(),
            "--key".into(),
            p(&key).into(),
            "--relay-host-key".into(),
            self.host_key.clone(),
        ]
    }

    /// `warren forward dev1:SERVICE=127.0.0.1:PORT` in the controller's
    /// namespace; the process and its local port.
    async fn forward(&self) -> (Watched, u16) {
        let local = closed_port().await;
        let spec = format!("dev1:{}=127.0.0.1:{local}", self.service_port);
        let f = Watched::start(
            in_ns(&self.ctl_ns, common::netns::WARREN)
                .arg("forward")
                .args(self.client_flags())
                .arg(spec),
        );
        (f, local)
    }

    /// Downloads the file through the forward; checks its hash.
    async fn fetch(&self, local: u16) -> Duration {
        let started = Instant::now();
        let script = format!("cat < /dev/tcp/127.0.0.1/{local}");
        let r = run(
            in_ns(&self.ctl_ns, "timeout").args(["60", "bash", "-c", &script]),
            Duration::from_secs(90),
        )
        .await;
        assert!(r.ok, "download through the forward: {}", r.stderr);
        assert_eq!(r.stdout.len(), BLOB, "download length");
        assert_eq!(sha256(&r.stdout), self.blob_hash, "download hash");
        started.elapsed()
    }

    /// `warren proxy --p2p MODE dev1 SERVICE` in the controller's
    /// namespace, reading the whole file; its output and how long it took.
    async fn proxy(&self, mode: &str) -> (std::process::Output, Duration) {
        let started = Instant::now();
        let mut child = in_ns(&self.ctl_ns, common::netns::WARREN)
            .arg("proxy")
            .args(self.client_flags())
            .args(["--p2p", mode, "dev1", &self.service_port.to_string()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Like ssh, close stdin once the whole file is in: the service
        // then sees EOF and the stream ends.
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().unwrap();
        let mut got = vec![0u8; BLOB];
        let read = tokio::time::timeout(WAIT, stdout.read_exact(&mut got)).await;
        drop(stdin);
        let mut out = tokio::time::timeout(WAIT, child.wait_with_output())
            .await
            .expect("warren proxy ends")
            .unwrap();
        if matches!(read, Ok(Ok(_))) {
            out.stdout = got;
        }
        (out, started.elapsed())
    }

    fn target(&self) -> String {
        format!("dev1:{}", self.service_port)
    }

    /// Waits for the relay's audit line closing a stream of `path`.
    async fn audited(&mut self, path: &str) -> String {
        let target = self.target();
        self.relay
            .line_with(&["stream_close", &target, &format!("path={path}")], WAIT)
            .await
    }
}

/// `bytes_down=N` of an audit line.
fn bytes_down(line: &str) -> u64 {
    line.split("bytes_down=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no bytes_down in {line}"))
}

#[tokio::test]
async fn both_nats_masquerade_the_path_is_direct_and_bytes_skip_the_relay() {
    let mut lab = Lab::new(Mapping::Masquerade, Mapping::Masquerade).await;
    let started = Instant::now();
    let (mut fwd, local) = lab.forward().await;
    fwd.line("direct path up", WAIT).await;
    let to_direct = started.elapsed();
    let took = lab.fetch(local).await;
    let line = lab.audited("direct").await;
    // The relay authorized and audited the stream, and carried none of it:
    // no relayed stream to the service was ever opened.
    assert_eq!(bytes_down(&line), BLOB as u64, "{line}");
    assert!(
        !lab.relay
            .seen
            .iter()
            .any(|l| l.contains("stream_open") && l.contains("path=relayed")),
        "a stream went through the relay"
    );

    // `warren proxy` takes a direct path that comes up within its budget.
    // (Tried a few times: the budget is short and this machine is shared.)
    let mut direct = false;
    for _ in 0..3 {
        let (out, took) = lab.proxy("prefer").await;
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(sha256(&out.stdout), lab.blob_hash);
        let target = lab.target();
        let line = lab.relay.line_with(&["stream_close", &target], WAIT).await;
        eprintln!(
            "warren proxy: {took:?}, {}",
            if line.contains("path=direct") {
                "direct"
            } else {
                "relayed"
            }
        );
        if line.contains("path=direct") {
            direct = true;
            break;
        }
    }
    assert!(
        direct,
        "warren proxy never took the direct path within its budget"
    );
    eprintln!("direct path up {to_direct:?} after warren forward started; 4 MiB in {took:?}");
}

#[tokio::test]
async fn a_symmetric_nat_is_relayed_with_the_reason() {
    let mut lab = Lab::new(Mapping::Symmetric, Mapping::Masquerade).await;
    let (mut fwd, local) = lab.forward().await;
    fwd.line_with(&["relayed", "symmetric NAT on device dev1's side"], WAIT)
        .await;
    lab.fetch(local).await;
    let line = lab.audited("relayed").await;
    assert_eq!(bytes_down(&line), BLOB as u64, "{line}");
    // `warren ls --json` shows the path to dev1 and why it is relayed.
    let ls = run(
        in_ns(&lab.ctl_ns, common::netns::WARREN)
            .arg("ls")
            .args(lab.client_flags())
            .arg("--json"),
        WAIT,
    )
    .await;
    let text = ls.stdout_str();
    assert!(ls.ok, "{}", ls.stderr);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let dev1 = &v[0];
    assert_eq!(dev1["name"], "dev1", "{text}");
    assert_eq!(dev1["path"], "relayed", "{text}");
    let why = dev1["path_why"].as_str().unwrap_or_default();
    assert!(
        why.contains("symmetric NAT on device dev1's side"),
        "{text}"
    );
}

#[tokio::test]
async fn udp_blocked_on_one_side_is_relayed_within_the_budget() {
    let mut lab = Lab::new(Mapping::Masquerade, Mapping::Masquerade).await;
    block_udp(&lab.nat_c, true);
    let (mut fwd, local) = lab.forward().await;
    fwd.line_with(&["relayed", "UDP blocked on the controller's side"], WAIT)
        .await;
    lab.fetch(local).await;
    lab.audited("relayed").await;

    // `warren proxy` waits at most its budget for a direct path.
    let (off, off_took) = lab.proxy("off").await;
    let (prefer, prefer_took) = lab.proxy("prefer").await;
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    assert!(
        off.status.success() && prefer.status.success(),
        "{} / {}",
        text(&off.stderr),
        text(&prefer.stderr)
    );
    assert_eq!(prefer.stdout.len(), BLOB, "proxy output length");
    assert_eq!(sha256(&prefer.stdout), lab.blob_hash);
    assert!(
        prefer_took < off_took + PROXY_BUDGET + Duration::from_secs(2),
        "proxy took {prefer_took:?} (relayed only: {off_took:?})"
    );
    lab.audited("relayed").await;
    let (req, _) = lab.proxy("require").await;
    assert!(
        !req.status.success(),
        "--p2p require must fail without a direct path"
    );
    assert!(
        text(&req.stderr).contains("--p2p require"),
        "{}",
        text(&req.stderr)
    );
}

#[tokio::test]
async fn a_path_that_dies_falls_back_and_comes_back() {
    let mut lab = Lab::new(Mapping::Masquerade, Mapping::Masquerade).await;
    let (mut fwd, local) = lab.forward().await;
    fwd.line("direct path up", WAIT).await;
    lab.fetch(local).await;
    lab.audited("direct").await;

    // UDP dies on the device's NAT: within the keepalive window the path
    // is given up, and new streams go through the relay. Either end may
    // notice first: this client's QUIC connection times out, or the
    // device's does and the relay ends the path's signalling.
    block_udp(&lab.nat_d, true);
    let cut = Instant::now();
    let window = DIRECT_IDLE_TIMEOUT + Duration::from_secs(3);
    let gave_up = fwd.line("direct path: relayed", window).await;
    assert!(
        gave_up.contains("direct path lost")
            || gave_up.contains("the relay closed the direct path's signalling"),
        "{gave_up}"
    );
    let noticed = cut.elapsed();
    lab.fetch(local).await;
    lab.audited("relayed").await;

    // UDP comes back: the next retry brings the direct path up again.
    block_udp(&lab.nat_d, false);
    fwd.line("direct path up", RETRY_AFTER * 2 + WAIT).await;
    lab.fetch(local).await;
    lab.audited("direct").await;
    eprintln!("direct path given up {noticed:?} after UDP was cut");
}
