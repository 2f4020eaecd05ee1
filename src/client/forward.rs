//! `warren forward`: many local ports, each carried to a device port, over
//! one self-healing relay connection ([`Tunnel`]). Listeners stay up while the
//! relay is away; connections made then wait for it (bounded) or are closed.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::hostlist;
use super::tunnel::Tunnel;
use crate::protocol::Name;

/// One forward: `listen` on this machine to `device:port` through the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Forward {
    pub listen: SocketAddr,
    pub device: String,
    pub port: u16,
}

/// One spec as written: `HOSTS:PORT` or `HOSTS:PORT=[ADDR:]LOCALPORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    hosts: Vec<Name>,
    port: u16,
    local: Option<(Option<IpAddr>, u16)>,
}

fn parse_spec(s: &str) -> Result<Spec> {
    let (remote, local) = match s.split_once('=') {
        Some((r, l)) => (r, Some(l)),
        None => (s, None),
    };
    let hint = "write DEVICE:PORT[=[ADDR:]LOCALPORT], e.g. dev1:80=127.0.0.1:8080 or red00[1-3]:80";
    let Some((pattern, port)) = remote.rsplit_once(':') else {
        bail!("forward {s:?} has no device port; {hint}");
    };
    let port = parse_port(port).with_context(|| format!("forward {s:?}: device port"))?;
    if port == 0 {
        bail!("forward {s:?}: device port 0 is not a port");
    }
    let hosts = hostlist::expand(pattern)
        .with_context(|| format!("forward {s:?}"))?
        .iter()
        .map(|h| Name::parse(h).with_context(|| format!("forward {s:?}: device name {h:?}")))
        .collect::<Result<Vec<_>>>()?;
    let local = match local {
        None => None,
        Some(l) => Some(parse_local(l).with_context(|| format!("forward {s:?}: {hint}"))?),
    };
    Ok(Spec { hosts, port, local })
}

fn parse_port(s: &str) -> Result<u16> {
    s.parse::<u16>()
        .map_err(|_| anyhow::anyhow!("{s:?} is not a port number (0-65535)"))
}

/// `PORT`, `ADDR:PORT` or `[V6]:PORT`.
fn parse_local(s: &str) -> Result<(Option<IpAddr>, u16)> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok((Some(addr.ip()), addr.port()));
    }
    if !s.contains(':') {
        return Ok((None, parse_port(s)?));
    }
    bail!("local address {s:?} is not PORT or ADDR:PORT")
}

/// Expands specs into forwards. Ports of a range count up from the first
/// (`=8080` or `--start-port`); port 0 means "any free port" for every one.
pub fn plan(specs: &[String], start_port: Option<u16>, bind: IpAddr) -> Result<Vec<Forward>> {
    if specs.is_empty() {
        bail!("no forwards given; e.g. warren forward dev1:80=127.0.0.1:8080");
    }
    let mut next_start = start_port.map(u32::from);
    let mut out = Vec::new();
    for s in specs {
        let spec = parse_spec(s)?;
        let (ip, first) = match (spec.local, next_start) {
            (Some((ip, p)), _) => (ip.unwrap_or(bind), u32::from(p)),
            (None, Some(p)) => (bind, p),
            (None, None) => {
                bail!("forward {s:?} has no local port: add =LOCALPORT or give --start-port")
            }
        };
        let mut local = first;
        for host in spec.hosts {
            let port = u16::try_from(local)
                .map_err(|_| anyhow::anyhow!("forward {s:?}: local ports run past 65535"))?;
            out.push(Forward {
                listen: SocketAddr::new(ip, port),
                device: host.to_string(),
                port: spec.port,
            });
            if first != 0 {
                local += 1;
            }
        }
        if spec.local.is_none() && first != 0 {
            next_start = Some(local);
        }
    }
    let mut seen = HashSet::new();
    for f in out.iter().filter(|f| f.listen.port() != 0) {
        if !seen.insert(f.listen) {
            bail!("local address {} is used by two forwards", f.listen);
        }
    }
    Ok(out)
}

/// Binds every forward's listener (all or nothing, so a taken port is a
/// clear error before anything runs). Returns the forwards with the ports
/// actually bound.
pub async fn bind(forwards: &[Forward]) -> Result<Vec<(Forward, TcpListener)>> {
    let mut out = Vec::new();
    for f in forwards {
        let l = TcpListener::bind(f.listen).await.with_context(|| {
            format!(
                "cannot listen on {} (for {}:{})",
                f.listen, f.device, f.port
            )
        })?;
        let mut f = f.clone();
        f.listen = l.local_addr()?;
        out.push((f, l));
    }
    Ok(out)
}

/// The table `warren forward` prints.
pub fn render(forwards: &[Forward]) -> String {
    let mut rows = vec![vec!["LISTEN".to_string(), "DEVICE".into(), "PORT".into()]];
    for f in forwards {
        rows.push(vec![
            f.listen.to_string(),
            f.device.clone(),
            f.port.to_string(),
        ]);
    }
    crate::render::table(&rows)
}

/// Serves every listener until `shutdown`.
pub async fn serve(
    listeners: Vec<(Forward, TcpListener)>,
    tunnel: Arc<Tunnel>,
    shutdown: CancellationToken,
) {
    let tasks = TaskTracker::new();
    for (f, l) in listeners {
        tasks.spawn(accept_loop(f, l, tunnel.clone(), shutdown.clone()));
    }
    tasks.close();
    tasks.wait().await;
}

async fn accept_loop(f: Forward, l: TcpListener, tunnel: Arc<Tunnel>, shutdown: CancellationToken) {
    let streams = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = l.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(listen = %f.listen, error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let span = tracing::info_span!("forward", listen = %f.listen, %peer, device = %f.device, port = f.port);
        let (tunnel, device, port) = (tunnel.clone(), f.device.clone(), f.port);
        let stop = shutdown.clone();
        streams.spawn(
            async move {
                let _ = tcp.set_nodelay(true);
                let channel = match tunnel.open_stream(&device, port).await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!("cannot open {device}:{port}: {e}");
                        return;
                    }
                };
                tracing::info!(path = channel.path().as_str(), "stream open");
                tokio::select! {
                    _ = stop.cancelled() => {}
                    stats = channel.splice_tcp(tcp) => {
                        tracing::debug!(sent = stats.sent, received = stats.received, "stream closed");
                    }
                }
            }
            .instrument(span),
        );
    }
    streams.close();
}

#[cfg(test)]
mod tests {
    use super::*;

    const LO: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn specs(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| x.to_string()).collect()
    }

    fn table(fs: &[Forward]) -> Vec<String> {
        fs.iter()
            .map(|f| format!("{}>{}:{}", f.listen, f.device, f.port))
            .collect()
    }

    #[test]
    fn explicit_and_ranged_forwards() {
        let fs = plan(&specs(&["dev1:80=127.0.0.1:8080"]), None, LO).unwrap();
        assert_eq!(table(&fs), vec!["127.0.0.1:8080>dev1:80"]);
        let fs = plan(&specs(&["red00[1-3]:80"]), Some(8080), LO).unwrap();
        assert_eq!(
            table(&fs),
            vec![
                "127.0.0.1:8080>red001:80",
                "127.0.0.1:8081>red002:80",
                "127.0.0.1:8082>red003:80"
            ]
        );
        // --start-port keeps counting across specs; explicit ports stand apart.
        let fs = plan(
            &specs(&[
                "a[1-2]:22",
                "web:80=9000",
                "b[7,9]:22",
                "c[1-2]:5=[::1]:7000",
            ]),
            Some(2200),
            "0.0.0.0".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(
            table(&fs),
            vec![
                "0.0.0.0:2200>a1:22",
                "0.0.0.0:2201>a2:22",
                "0.0.0.0:9000>web:80",
                "0.0.0.0:2202>b7:22",
                "0.0.0.0:2203>b9:22",
                "[::1]:7000>c1:5",
                "[::1]:7001>c2:5"
            ]
        );
        // Port 0: any free port, for each one.
        let fs = plan(&specs(&["n[01-02]:22=127.0.0.1:0"]), None, LO).unwrap();
        assert_eq!(table(&fs), vec!["127.0.0.1:0>n01:22", "127.0.0.1:0>n02:22"]);
    }

    #[test]
    fn bad_forwards_are_clear_errors() {
        for (bad, start, says) in [
            ("dev1", None, "no device port"),
            ("dev1:http", None, "not a port number"),
            ("dev1:0=80", None, "port 0"),
            ("dev1:80", None, "no local port"),
            ("dev1:80=host:80", None, "not PORT or ADDR:PORT"),
            ("node[1-3:80", Some(1), "without ']'"),
            ("Dev_1:80", Some(1), "device name"),
            ("n[1-3]:80", Some(65534), "past 65535"),
        ] {
            let err = format!("{:#}", plan(&specs(&[bad]), start, LO).unwrap_err());
            assert!(err.contains(says), "{bad}: {err}");
        }
        let err = plan(&specs(&["a:1=8080", "b:1=8080"]), None, LO)
            .unwrap_err()
            .to_string();
        assert!(err.contains("used by two forwards"), "{err}");
        assert!(plan(&[], None, LO).is_err());
    }
}
