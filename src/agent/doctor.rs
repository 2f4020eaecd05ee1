//! `warren doctor`: checks what usually goes wrong on a device or gateway,
//! each as a pass or a fail with a sentence saying what was seen.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::net::TcpStream;

use super::AgentSettings;
use crate::protocol::limits::{DOCTOR_CHECK_TIMEOUT, MAX_CLOCK_SKEW};
use crate::ssh::client::{self, ConnectOptions, NoForwards};

/// One check and what it found.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Check {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

/// All checks; `ok` when every one passed.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub checks: Vec<Check>,
}

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        check: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// Runs every check for the agent config at `path`.
pub async fn run(path: &Path) -> Report {
    let mut checks = Vec::new();
    let settings = match AgentSettings::load(path) {
        Ok(s) => {
            let role = if s.gateway.is_gateway() {
                format!(
                    ", gateway for {}",
                    crate::protocol::gateway::list(&s.gateway.scope)
                )
            } else {
                String::new()
            };
            checks.push(check(
                "config",
                true,
                format!("{}: device {}/{}{role}", path.display(), s.system, s.name),
            ));
            s
        }
        Err(e) => {
            checks.push(check("config", false, format!("{e:#}")));
            return Report { ok: false, checks };
        }
    };
    relay_checks(&settings, &mut checks).await;
    for net in &settings.gateway.scope {
        checks.push(routable(net.first_host(), &format!("scope {net} routable")));
    }
    for port in settings.allow.ports() {
        if let Some(t) = settings.allow.target_for(u32::from(port)) {
            checks.push(answering(&t.connect_string(), &format!("target {t} answering")).await);
        }
    }
    for l in &settings.gateway.listens {
        checks.push(can_listen(
            l.bind,
            &format!("listen {} (for {})", l.bind, l.to),
        ));
    }
    Report {
        ok: checks.iter().all(|c| c.ok),
        checks,
    }
}

/// Relay reachable, host key as pinned, key accepted, clock skew.
async fn relay_checks(s: &AgentSettings, checks: &mut Vec<Check>) {
    let started = Instant::now();
    // A cluster's list: the first relay (the agent moves on from it).
    let relay = s.relay.split(',').next().unwrap_or_default();
    let dial = crate::transport::DialOptions {
        ca: s.relay_ca.clone(),
        timeout: DOCTOR_CHECK_TIMEOUT,
        ..Default::default()
    };
    let tcp = match crate::transport::dial(relay, &dial).await {
        Ok(tcp) => tcp,
        Err(e) => {
            checks.push(check("relay reachable", false, e.to_string()));
            return;
        }
    };
    checks.push(check(
        "relay reachable",
        true,
        format!("{relay} answered in {} ms", started.elapsed().as_millis()),
    ));
    let opts = ConnectOptions {
        user: s.system.to_string(),
        key: s.key.clone(),
        host_key: s.relay_host_key.clone(),
        dead_after: DOCTOR_CHECK_TIMEOUT,
    };
    let conn = match client::connect(tcp, &opts, NoForwards).await {
        Ok(c) => c,
        Err(e) => {
            let e = format!("{e:#}");
            if e.contains("refused key") {
                checks.push(check(
                    "relay host key",
                    true,
                    format!("matches the pin {}", s.relay_host_key),
                ));
                checks.push(check("key accepted", false, e));
            } else {
                checks.push(check("relay host key", false, e));
            }
            return;
        }
    };
    checks.push(check(
        "relay host key",
        true,
        format!("matches the pin {}", s.relay_host_key),
    ));
    checks.push(check(
        "key accepted",
        true,
        format!("the relay accepts this key for system {}", s.system),
    ));
    checks.push(clock(&conn).await);
    conn.disconnect().await;
}

async fn clock(conn: &client::ClientConnection<NoForwards>) -> Check {
    let before = unix_now();
    let asked = tokio::time::timeout(DOCTOR_CHECK_TIMEOUT, conn.exec("time")).await;
    let after = unix_now();
    let relay_time = match asked {
        Ok(Ok(out)) if out.status == 0 => String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<f64>()
            .ok(),
        _ => None,
    };
    let Some(relay_time) = relay_time else {
        return check("clock skew", false, "the relay did not tell its time");
    };
    skew(relay_time, before, after)
}

/// The relay read its clock (whole seconds) somewhere between our two
/// readings `before` and `after`.
fn skew(relay_time: f64, before: f64, after: f64) -> Check {
    let local = (before + after) / 2.0;
    // +0.5: the relay's seconds are truncated.
    let skew = (relay_time + 0.5 - local).abs();
    let limit = MAX_CLOCK_SKEW.as_secs_f64();
    check(
        "clock skew",
        skew <= limit,
        format!("{skew:.0} s from the relay's clock (at most {limit:.0} s)"),
    )
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// Whether this host has a route to `ip` (asks the kernel through a UDP
/// connect, which sends nothing).
pub fn routable(ip: IpAddr, name: &str) -> Check {
    let bind: SocketAddr = match ip {
        IpAddr::V4(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        IpAddr::V6(_) => SocketAddr::from(([0u16; 8], 0)),
    };
    let probe = std::net::UdpSocket::bind(bind).and_then(|s| {
        s.connect(SocketAddr::new(ip, 9))?;
        s.local_addr()
    });
    match probe {
        Ok(local) => check(name, true, format!("{ip} is reached from {}", local.ip())),
        Err(e) => check(name, false, format!("no route to {ip}: {e}")),
    }
}

async fn answering(addr: &str, name: &str) -> Check {
    let started = Instant::now();
    match tokio::time::timeout(DOCTOR_CHECK_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(_)) => check(
            name,
            true,
            format!("answered in {} ms", started.elapsed().as_millis()),
        ),
        Ok(Err(e)) => check(name, false, e.to_string()),
        Err(_) => check(
            name,
            false,
            format!("no answer within {DOCTOR_CHECK_TIMEOUT:?}"),
        ),
    }
}

fn can_listen(bind: SocketAddr, name: &str) -> Check {
    match std::net::TcpListener::bind(bind) {
        Ok(_) => check(name, true, "this host can listen there"),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            check(name, true, "already in use (expected while the agent runs)")
        }
        Err(e) => check(name, false, e.to_string()),
    }
}

/// The report for people: one line per check, then a summary.
pub fn render(r: &Report) -> String {
    let width = r.checks.iter().map(|c| c.check.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in &r.checks {
        let mark = if c.ok { "PASS" } else { "FAIL" };
        out.push_str(&format!("{mark}  {:<width$}  {}\n", c.check, c.detail));
    }
    let failed = r.checks.iter().filter(|c| !c.ok).count();
    out.push_str(&format!(
        "{} passed, {failed} failed\n",
        r.checks.len() - failed
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_skew_passes_within_a_minute_and_fails_beyond() {
        let t = 1_800_000_000.0;
        assert!(skew(t, t + 0.2, t + 0.4).ok);
        assert!(skew(t - 50.0, t, t + 1.0).ok);
        let c = skew(t - 120.0, t, t + 1.0);
        assert!(!c.ok, "{c:?}");
        assert!(
            c.detail.starts_with("120 s from the relay's clock"),
            "{c:?}"
        );
        assert!(!skew(t + 90.0, t, t).ok);
    }

    #[test]
    fn loopback_is_routable_and_render_marks_failures() {
        let c = routable("127.0.0.1".parse().unwrap(), "lo");
        assert!(c.ok, "{c:?}");
        let r = Report {
            ok: false,
            checks: vec![check("a", true, "fine"), check("bbb", false, "broken")],
        };
        let text = render(&r);
        assert!(text.contains("PASS  a    fine"), "{text}");
        assert!(text.contains("FAIL  bbb  broken"), "{text}");
        assert!(text.ends_with("1 passed, 1 failed\n"), "{text}");
    }
}
