//! Gateways into private networks, in network namespaces, with the real
//! `ssh`, `sshd`, `curl` and `ncat`.
//!
//! Two sites use the same private range 10.0.1.0/24. In each, one machine
//! runs the agent as a gateway and a second host runs sshd and no agent. The
//! controller sits behind its own NAT; the relay has no route into either
//! site. A `collector` device (behind the controller's NAT) runs a metrics
//! service that site A's host reports to through a listen forward.
//!
//! ```text
//!  hosta 10.0.1.7, 10.0.2.7 ── gwa 10.0.1.1, 10.0.2.1 / 203.0.113.2 ──┐
//!                                                                    relay .1 / .5 / .9
//!  hostb 10.0.1.7 ── gwb 10.0.1.1 / 203.0.113.10 ────────────────────┤
//!  ctl 192.168.60.2 (controller, collector) ── natc 203.0.113.6 ─────┘
//! ```
//!
//! gwa serves 10.0.1.0/24 and 10.0.4.0/24 (permit 10.0.0.0/8, listen
//! 10.0.1.1:L → collector:9100); gwb serves 10.0.0.0/16 and 10.0.4.0/24. So
//! 10.0.1.7 goes to gwa (most specific), site B's 10.0.1.7 is reached only
//! as `10.0.1.7.via.gwb`, and 10.0.4.9 is ambiguous.
//!
//! Needs root (namespaces, iptables). It fails, never skips, without it.

mod common;

use std::path::PathBuf;

use common::cli::{admin_tau, warren};
use common::netns::{
    Net, WARREN, Watched, agent_config, default_route, in_ns, ip, is_root, start_relay,
};
use common::openssh::{Ran, Sshd, login_user, run, spawn, wait_for_line};
use common::*;
use tokio::process::Child;

struct World {
    ctl: String,
    hosta: String,
    gwa_ns: String,
    rport: u16,
    data: PathBuf,
    dir: tempfile::TempDir,
    ssh_config: PathBuf,
    /// Port of the listen forward on gwa (10.0.1.1).
    lport: u16,
    /// Port of site B's web service.
    web_b: u16,
    gwa_cfg: PathBuf,
    gwa: Watched,
    _gwb: Watched,
    _collector: Watched,
    _services: Vec<Child>,
    _sshd: (Sshd, Sshd),
    _relay: Watched,
    // Last: the namespaces go after every process inside them.
    _net: Net,
}

/// An ncat service in `ns` on `addr:port` that answers every connection
/// with an HTTP response carrying `body`.
async fn web(ns: &str, addr: &str, port: u16, body: &str) -> Child {
    let reply = format!(
        "printf 'HTTP/1.0 200 OK\\r\\nContent-Length: {}\\r\\n\\r\\n{body}'",
        body.len()
    );
    let mut child = spawn(in_ns(ns, "ncat").args([
        "-v",
        "-l",
        "-k",
        addr,
        &port.to_string(),
        "--sh-exec",
        &reply,
    ]));
    let stderr = child.stderr.take().unwrap();
    wait_for_line(stderr, "Listening on", "ncat").await;
    child
}

impl World {
    async fn start() -> World {
        assert!(
            is_root(),
            "the gateway test needs root (network namespaces, iptables); run the suite as root (CI does)"
        );
        let mut net = Net::new("g");
        let relay_ns = net.add_ns("relay");
        let natc = net.add_ns("natc");
        let ctl = net.add_ns("ctl");
        let gwa_ns = net.add_ns("gwa");
        let hosta = net.add_ns("hosta");
        let gwb_ns = net.add_ns("gwb");
        let hostb = net.add_ns("hostb");
        net.link(&relay_ns, "203.0.113.1/30", &gwa_ns, "203.0.113.2/30", "ra");
        let (_, natc_wan) = net.link(&relay_ns, "203.0.113.5/30", &natc, "203.0.113.6/30", "rc");
        net.link(
            &relay_ns,
            "203.0.113.9/30",
            &gwb_ns,
            "203.0.113.10/30",
            "rb",
        );
        net.link(&natc, "192.168.60.1/24", &ctl, "192.168.60.2/24", "cl");
        let (lan_a, host_a_if) = net.link(&gwa_ns, "10.0.1.1/24", &hosta, "10.0.1.7/24", "la");
        // Site A's second network, for associations: same wire, 10.0.2.0/24.
        ip(&["-n", &gwa_ns, "addr", "add", "10.0.2.1/24", "dev", &lan_a]);
        ip(&[
            "-n",
            &hosta,
            "addr",
            "add",
            "10.0.2.7/24",
            "dev",
            &host_a_if,
        ]);
        net.link(&gwb_ns, "10.0.1.1/24", &hostb, "10.0.1.7/24", "lb");
        // A name that only site B's network resolves.
        net.hosts(&gwb_ns, "127.0.0.1 localhost\n10.0.1.7 db.siteb\n");
        net.nat(&natc, &natc_wan);
        default_route(&natc, "203.0.113.5");
        default_route(&ctl, "192.168.60.1");
        default_route(&gwa_ns, "203.0.113.1");
        default_route(&gwb_ns, "203.0.113.9");

        // The private hosts: sshd on every address, and no agent.
        let sshd_a = Sshd::start_listening(Some(&hosta), "0.0.0.0").await;
        let sshd_b = Sshd::start_listening(Some(&hostb), "0.0.0.0").await;
        let web_b = closed_port().await;
        let metrics_port = closed_port().await;
        let services = vec![
            web(&hostb, "10.0.1.7", web_b, "site-b-web").await,
            web(&ctl, "127.0.0.1", metrics_port, "metrics-ok").await,
        ];

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let data = d.join("relay-data");
        let (relay, rport) = start_relay(&relay_ns, &data, 0).await;
        let host_key = admin_tau(
            &data,
            d,
            &[
                ("controller", "alice"),
                ("device", "gwa"),
                ("device", "gwb"),
                ("device", "collector"),
            ],
        )
        .await;
        let lport = closed_port().await;
        let agent_cfg = |name: &str, relay_ip: &str, extra: &str| {
            agent_config(
                d,
                name,
                &format!("{relay_ip}:{rport}"),
                &host_key,
                &format!("keepalive_timeout = \"5s\"\n{extra}"),
            )
        };
        let gwa_cfg = agent_cfg(
            "gwa",
            "203.0.113.1",
            &format!(
                "allow = [\"22=10.0.1.7:{a}\"]\nscope = [\"10.0.1.0/24\", \"10.0.4.0/24\"]\nscope_ports = [{a}]\n\
                 permit = [\"10.0.0.0/8\"]\n[[listen]]\nbind = \"10.0.1.1:{lport}\"\nto = \"collector:9100\"\n",
                a = sshd_a.port
            ),
        );
        let gwb_cfg = agent_cfg(
            "gwb",
            "203.0.113.9",
            &format!(
                "scope = [\"10.0.0.0/16\", \"10.0.4.0/24\"]\nscope_ports = [{}, {web_b}]\n",
                sshd_b.port
            ),
        );
        let collector_cfg = agent_cfg(
            "collector",
            "203.0.113.5",
            &format!("allow = [\"9100=127.0.0.1:{metrics_port}\"]\n"),
        );
        let mut gwa = Watched::agent(&gwa_ns, &gwa_cfg);
        let mut gwb = Watched::agent(&gwb_ns, &gwb_cfg);
        let mut collector = Watched::agent(&ctl, &collector_cfg);
        gwa.line("gateway: serving", WAIT).await;
        gwa.line("associations updated", WAIT).await;
        gwb.line("gateway: serving", WAIT).await;
        collector.line("online: registered", WAIT).await;

        let relay_pub = std::fs::read_to_string(data.join("host_key.pub")).unwrap();
        let known = write_file(
            d,
            "known_hosts",
            &format!(
                "[203.0.113.5]:{rport} {}\nhosta {}\nhostb {}\n",
                relay_pub.trim(),
                sshd_a.host_pub,
                sshd_b.host_pub
            ),
        );
        let user = login_user();
        let ssh_config = write_file(
            d,
            "ssh_config",
            &format!(
                "Host 203.0.113.5\n  IdentityFile {alice}\n\
                 Host 10.0.1.7 10.0.2.7 10.0.4.9 172.16.5.7 192.168.99.1\n  User {user}\n  Port {pa}\n  \
                 IdentityFile {ka}\n  HostKeyAlias hosta\n\
                 Host 10.0.1.7.via.gwb db.siteb.via.gwb\n  User {user}\n  Port {pb}\n  IdentityFile {kb}\n  HostKeyAlias hostb\n\
                 Host *\n  IdentitiesOnly yes\n  BatchMode yes\n  StrictHostKeyChecking yes\n  \
                 UserKnownHostsFile {known}\n  ConnectTimeout 10\n",
                alice = d.join("alice").display(),
                pa = sshd_a.port,
                ka = sshd_a.user_key.display(),
                pb = sshd_b.port,
                kb = sshd_b.user_key.display(),
                known = known.display(),
            ),
        );
        World {
            ctl,
            hosta,
            gwa_ns,
            rport,
            data,
            dir,
            ssh_config,
            lport,
            web_b,
            gwa_cfg,
            gwa,
            _gwb: gwb,
            _collector: collector,
            _services: services,
            _sshd: (sshd_a, sshd_b),
            _relay: relay,
            _net: net,
        }
    }

    fn relay(&self) -> String {
        format!("tau@203.0.113.5:{}", self.rport)
    }

    /// Stock `ssh -J` from the controller's namespace, running `command`.
    async fn ssh_j(&self, host: &str, command: &str) -> Ran {
        run(
            in_ns(&self.ctl, "ssh")
                .arg("-F")
                .arg(&self.ssh_config)
                .args(["-J", &self.relay(), host, command]),
            WAIT,
        )
        .await
    }

    async fn admin(&self, args: &[&str]) -> Ran {
        let data = self.data.to_str().unwrap();
        warren(&[&["admin", "--data", data][..], args].concat()).await
    }

    async fn admin_ok(&self, args: &[&str]) -> String {
        let r = self.admin(args).await;
        assert!(r.ok, "admin {}: {}", args.join(" "), r.stderr);
        r.stdout_str()
    }

    /// `curl` from site A's private host to the listen forward on gwa.
    async fn report_metrics(&self) -> Ran {
        let url = format!("http://10.0.1.1:{}/", self.lport);
        run(
            in_ns(&self.hosta, "curl").args(["-sS", "--max-time", "15", &url]),
            WAIT,
        )
        .await
    }
}

/// Which namespace answered: `ip netns identify` run over ssh on the host.
const WHO: &str = "ip netns identify";

#[tokio::test]
async fn stock_ssh_reaches_private_hosts_through_the_right_gateway() {
    let w = World::start().await;

    // Most specific: 10.0.1.7 is in gwa's /24 and gwb's /16; gwa wins.
    let r = w.ssh_j("10.0.1.7", WHO).await;
    assert!(r.ok, "ssh -J to 10.0.1.7: {}", r.stderr);
    assert_eq!(r.stdout_str().trim(), w.hosta, "reached site A's host");

    // The same address at site B, only by naming its gateway: -J, -W, -D.
    let r = w.ssh_j("10.0.1.7.via.gwb", WHO).await;
    assert!(r.ok, "ssh -J to 10.0.1.7.via.gwb: {}", r.stderr);
    assert!(
        r.stdout_str().trim().ends_with("-hostb"),
        "{}",
        r.stdout_str()
    );
    let proxy = format!(
        "ProxyCommand=ssh -F {} -p {} -W %h:%p tau@203.0.113.5",
        w.ssh_config.display(),
        w.rport
    );
    let r = run(
        in_ns(&w.ctl, "ssh").arg("-F").arg(&w.ssh_config).args([
            "-o",
            &proxy,
            "10.0.1.7.via.gwb",
            WHO,
        ]),
        WAIT,
    )
    .await;
    assert!(r.ok, "ssh -W to 10.0.1.7.via.gwb: {}", r.stderr);
    assert!(
        r.stdout_str().trim().ends_with("-hostb"),
        "{}",
        r.stdout_str()
    );
    let socks = closed_port().await;
    let mut fwd = spawn(in_ns(&w.ctl, "ssh").arg("-F").arg(&w.ssh_config).args([
        "-N",
        "-v",
        "-D",
        &format!("127.0.0.1:{socks}"),
        "-p",
        &w.rport.to_string(),
        "tau@203.0.113.5",
    ]));
    let stderr = fwd.stderr.take().unwrap();
    wait_for_line(stderr, "Local forwarding listening on 127.0.0.1", "ssh -D").await;
    let url = format!("http://10.0.1.7.via.gwb:{}/", w.web_b);
    let r = run(
        in_ns(&w.ctl, "curl").args([
            "-sS",
            "--max-time",
            "15",
            "--socks5-hostname",
            &format!("127.0.0.1:{socks}"),
            &url,
        ]),
        WAIT,
    )
    .await;
    assert!(r.ok, "curl through ssh -D: {}", r.stderr);
    assert_eq!(r.stdout_str(), "site-b-web");
    drop(fwd);

    // A name resolved inside site B's network, by the gateway.
    let r = w.ssh_j("db.siteb.via.gwb", WHO).await;
    assert!(r.ok, "ssh -J to db.siteb.via.gwb: {}", r.stderr);
    assert!(
        r.stdout_str().trim().ends_with("-hostb"),
        "{}",
        r.stdout_str()
    );
    // Without the gateway's name, the relay cannot know whose network
    // resolves it, and says how to name one.
    let r = w.ssh_j("db.siteb", WHO).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("no device named db.siteb in system tau")
            && r.stderr.contains("db.siteb.via.gwa (gateways: gwa, gwb)"),
        "{}",
        r.stderr
    );

    // Two gateways serve 10.0.4.0/24 equally specifically: an error naming both.
    let r = w.ssh_j("10.0.4.9", WHO).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("ambiguous")
            && r.stderr.contains("gwa (10.0.4.0/24)")
            && r.stderr.contains("gwb (10.0.4.0/24)"),
        "{}",
        r.stderr
    );
    // Outside every scope: refused, with what the gateways do serve.
    let r = w.ssh_j("192.168.99.1", WHO).await;
    assert!(!r.ok);
    assert!(
        r.stderr
            .contains("outside the scope of every gateway of system tau"),
        "{}",
        r.stderr
    );
    // A port the gateway does not serve there.
    let r = run(
        in_ns(&w.ctl, "ssh").arg("-F").arg(&w.ssh_config).args([
            "-J",
            &w.relay(),
            "-p",
            "2",
            "10.0.1.7",
            WHO,
        ]),
        WAIT,
    )
    .await;
    assert!(!r.ok);
    assert!(r.stderr.contains("gateway gwa serves port"), "{}", r.stderr);

    // `ls` through the relay and `gateway show` both show the scope.
    let r = run(
        in_ns(&w.ctl, "ssh").arg("-F").arg(&w.ssh_config).args([
            "-p",
            &w.rport.to_string(),
            "tau@203.0.113.5",
            "ls",
            "--json",
        ]),
        WAIT,
    )
    .await;
    assert!(r.ok, "{}", r.stderr);
    let ls: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    let gwa = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "gwa")
        .unwrap();
    assert_eq!(
        gwa["scope"],
        serde_json::json!(["10.0.1.0/24", "10.0.4.0/24"])
    );
    let ls: serde_json::Value = serde_json::from_str(&w.admin_ok(&["ls", "--json"]).await).unwrap();
    let gwb = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "gwb")
        .unwrap();
    assert_eq!(
        gwb["scope"],
        serde_json::json!(["10.0.0.0/16", "10.0.4.0/24"])
    );
    let text = w.admin_ok(&["ls"]).await;
    assert!(text.lines().next().unwrap().ends_with("SCOPE"), "{text}");
    let gws: serde_json::Value =
        serde_json::from_str(&w.admin_ok(&["gateway", "ls", "--json"]).await).unwrap();
    let names: Vec<&str> = gws
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["gwa", "gwb"]);
    assert_eq!(gws[0]["online"], true);
    let show = w.admin_ok(&["gateway", "show", "gwb"]).await;
    for want in [
        "name:         gwb",
        "system:       tau",
        "status:       online",
        "address:      203.0.113.10:",
        "scope:        10.0.0.0/16, 10.0.4.0/24",
        "created:",
        "updated:",
    ] {
        assert!(show.contains(want), "{want:?} not in:\n{show}");
    }
}

#[tokio::test]
async fn a_listen_forward_reports_out_only_where_an_admin_allows() {
    let w = World::start().await;
    // No rule yet: the relay refuses the gateway's stream, the host sees a close.
    let r = w.report_metrics().await;
    assert!(!r.ok, "must be refused without a rule: {}", r.stdout_str());
    let show = w.admin_ok(&["gateway", "show", "gwa"]).await;
    assert!(
        show.contains(&format!(
            "10.0.1.1:{} -> collector:9100 (NOT ALLOWED: no rule)",
            w.lport
        )),
        "{show}"
    );

    w.admin_ok(&["gateway", "allow", "gwa", "collector:9100"])
        .await;
    let r = w.report_metrics().await;
    assert!(r.ok, "metrics through the listen forward: {}", r.stderr);
    assert_eq!(r.stdout_str(), "metrics-ok");
    assert_eq!(
        w.admin_ok(&["gateway", "rules", "gwa"]).await,
        "collector:9100\n"
    );
    let rules: serde_json::Value =
        serde_json::from_str(&w.admin_ok(&["gateway", "rules", "gwa", "--json"]).await).unwrap();
    assert_eq!(rules, serde_json::json!(["collector:9100"]));
    // Only the allowed target: the same gateway cannot reach another port.
    w.admin_ok(&["gateway", "deny", "gwa", "collector:9100"])
        .await;
    let r = w.report_metrics().await;
    assert!(!r.ok, "denied again: {}", r.stdout_str());

    // Delete is refused while rules remain, and changes nothing.
    w.admin_ok(&["gateway", "allow", "gwa", "collector:9100"])
        .await;
    let r = w.admin(&["gateway", "delete", "gwa"]).await;
    assert!(!r.ok);
    assert!(
        r.stderr.contains("--force") && r.stderr.contains("collector:9100"),
        "{}",
        r.stderr
    );
    assert!(
        w.report_metrics().await.ok,
        "still allowed after a refused delete"
    );
    w.admin_ok(&["gateway", "delete", "gwa", "--force"]).await;
    let r = w.admin(&["gateway", "show", "gwa"]).await;
    assert!(!r.ok && r.stderr.contains("no gateway gwa"), "{}", r.stderr);
    assert!(!w.report_metrics().await.ok, "rules went with the gateway");
}

#[tokio::test]
async fn associations_apply_at_once_and_the_permit_has_the_last_word() {
    let mut w = World::start().await;
    // 10.0.2.7 (site A's second network) falls in gwb's /16, not site A.
    let r = w.ssh_j("10.0.2.7", WHO).await;
    assert!(!r.ok, "10.0.2.7 must not reach site A yet");
    assert!(r.stderr.contains("gateway gwb "), "{}", r.stderr);

    let started = std::time::Instant::now();
    w.admin_ok(&["gateway", "associate", "gwa", "10.0.2.0/24"])
        .await;
    w.gwa
        .line("associations updated: serving 10.0.2.0/24", WAIT)
        .await;
    eprintln!(
        "association effective at the gateway {:?} after `gateway associate` started",
        started.elapsed()
    );
    let r = w.ssh_j("10.0.2.7", WHO).await;
    assert!(
        r.ok,
        "after associate, without restarting the agent: {}",
        r.stderr
    );
    assert_eq!(r.stdout_str().trim(), w.hosta);

    // Outside the owner's permit (10.0.0.0/8): recorded, flagged, refused.
    let r = w
        .admin(&["gateway", "associate", "gwa", "172.16.5.0/24"])
        .await;
    assert!(r.ok, "{}", r.stderr);
    assert!(
        r.stderr.contains("outside gateway gwa's permit"),
        "{}",
        r.stderr
    );
    w.gwa.line("refused by permit: 172.16.5.0/24", WAIT).await;
    let r = w.ssh_j("172.16.5.7", WHO).await;
    assert!(!r.ok);
    assert!(r.stderr.contains("outside its permit"), "{}", r.stderr);
    let show = w.admin_ok(&["gateway", "show", "gwa"]).await;
    assert!(
        show.contains(
            "associations: 10.0.2.0/24, 172.16.5.0/24 (REFUSED: outside the gateway's permit)"
        ),
        "{show}"
    );
    assert!(show.contains("permit:       10.0.0.0/8"), "{show}");
    let json: serde_json::Value =
        serde_json::from_str(&w.admin_ok(&["gateway", "show", "gwa", "--json"]).await).unwrap();
    assert_eq!(
        json["associations"],
        serde_json::json!([
            {"network": "10.0.2.0/24", "served": true},
            {"network": "172.16.5.0/24", "served": false}
        ])
    );

    // Dissociating takes effect at once too.
    w.admin_ok(&["gateway", "dissociate", "gwa", "10.0.2.0/24"])
        .await;
    w.gwa
        .line("associations updated: serving nothing", WAIT)
        .await;
    let r = w.ssh_j("10.0.2.7", WHO).await;
    assert!(!r.ok, "dissociated: {}", r.stdout_str());
    assert!(r.stderr.contains("gateway gwb "), "{}", r.stderr);
    let r = w
        .admin(&["gateway", "associate", "gwa", "10.0.2.7/24"])
        .await;
    assert!(!r.ok && r.stderr.contains("host bits"), "{}", r.stderr);
}

#[tokio::test]
async fn doctor_passes_on_a_healthy_gateway_and_names_what_fails() {
    let w = World::start().await;
    let cfg = w.gwa_cfg.to_str().unwrap();
    let r = run(
        in_ns(&w.gwa_ns, WARREN).args(["doctor", "--config", cfg]),
        WAIT,
    )
    .await;
    let out = r.stdout_str();
    assert!(r.ok, "doctor on gwa:\n{out}{}", r.stderr);
    for want in [
        "PASS  relay reachable",
        "PASS  relay host key",
        "PASS  key accepted",
        "PASS  clock skew",
        "PASS  scope 10.0.1.0/24 routable",
        "PASS  scope 10.0.4.0/24 routable",
        "PASS  target 10.0.1.7:",
        "PASS  listen 10.0.1.1:",
        " 0 failed",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }

    // From site A's host (no route out), with a wrong pin: each failure named.
    let bad: String = std::fs::read_to_string(&w.gwa_cfg)
        .unwrap()
        .replace("10.0.4.0/24", "10.77.0.0/16")
        .lines()
        .map(|l| match l.starts_with("allow") {
            // Port 1: nothing answers there.
            true => "allow = [\"22=10.0.1.7:1\"]\n".to_string(),
            false => format!("{l}\n"),
        })
        .collect();
    let bad = write_file(w.dir.path(), "bad.toml", &bad);
    let r = run(
        in_ns(&w.hosta, WARREN).args(["doctor", "--config", bad.to_str().unwrap()]),
        WAIT,
    )
    .await;
    let out = r.stdout_str();
    assert!(!r.ok, "doctor must fail:\n{out}");
    assert!(out.contains("FAIL  relay reachable"), "{out}");
    assert!(out.contains("PASS  scope 10.0.1.0/24 routable"), "{out}");
    assert!(out.contains("FAIL  scope 10.77.0.0/16 routable"), "{out}");
    assert!(out.contains("FAIL  target 10.0.1.7:1 answering"), "{out}");
    let r = run(
        in_ns(&w.hosta, WARREN).args(["doctor", "--json", "--config", bad.to_str().unwrap()]),
        WAIT,
    )
    .await;
    assert!(!r.ok);
    let v: serde_json::Value = serde_json::from_slice(&r.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let relay = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "relay reachable")
        .unwrap();
    assert_eq!(relay["ok"], false);

    // A wrong host-key pin, seen from the gateway itself.
    let text = std::fs::read_to_string(&w.gwa_cfg).unwrap();
    let pin = text
        .lines()
        .find(|l| l.starts_with("relay_host_key"))
        .unwrap()
        .to_string();
    let wrong = text.replace(
        &pin,
        &format!("relay_host_key = \"SHA256:{}\"", "A".repeat(43)),
    );
    let wrong = write_file(w.dir.path(), "wrong.toml", &wrong);
    let r = run(
        in_ns(&w.gwa_ns, WARREN).args(["doctor", "--config", wrong.to_str().unwrap()]),
        WAIT,
    )
    .await;
    let out = r.stdout_str();
    assert!(!r.ok);
    assert!(out.contains("PASS  relay reachable"), "{out}");
    assert!(
        out.contains("FAIL  relay host key") && out.contains("mismatch"),
        "{out}"
    );
}
