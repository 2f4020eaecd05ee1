//! The gateway side of the agent: its scope, the associations the relay
//! pushes, streams to hosts of its network, and listen forwards back out.
//!
//! The agent has the last word on what it dials: a stream to a host of its
//! network is admitted only if the address (after resolving a name inside
//! the network) lies in its scope, or in an association inside its
//! `permit`, and the port is one of its scope ports.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::protocol::cidr::{self, Cidr};
use crate::protocol::gateway::{
    Announce, Associations, DEFAULT_SCOPE_PORTS, GatewayScope, ListenSpec, MAX_CONTROL_MESSAGE,
    list,
};
use crate::protocol::limits::TARGET_CONNECT_TIMEOUT;
use crate::protocol::{Name, Target};
use crate::ssh::{IncomingChannel, Refusal};

/// Connections accepted on listen forwards and not yet carried. Past this
/// (the relay is unreachable for a while) new ones are closed at once
/// rather than queued without bound.
pub const LISTEN_BACKLOG: usize = 64;

/// A `[[listen]]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// Local address to listen on, inside the gateway's network.
    pub bind: String,
    /// `NAME:PORT` of a service elsewhere in the system.
    pub to: String,
}

/// A validated listen forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub bind: SocketAddr,
    pub to: Target,
}

/// A gateway's own configuration (all empty for a plain device).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayConfig {
    pub scope: Vec<Cidr>,
    pub ports: Vec<u16>,
    pub permit: Option<Vec<Cidr>>,
    pub listens: Vec<Listen>,
}

impl GatewayConfig {
    pub fn from_file(
        scope: Option<&[String]>,
        scope_ports: Option<&[u16]>,
        permit: Option<&[String]>,
        listens: &[ListenFile],
    ) -> Result<GatewayConfig> {
        let scope = cidr::parse_list(scope.unwrap_or(&[]))
            .map_err(anyhow::Error::msg)
            .context("scope")?;
        if scope_ports.is_some() && scope.is_empty() {
            bail!("scope_ports is set but scope is empty: list the networks this gateway serves");
        }
        let ports: Vec<u16> = scope_ports.unwrap_or(DEFAULT_SCOPE_PORTS).to_vec();
        if ports.is_empty() || ports.contains(&0) {
            bail!("scope_ports must list ports from 1 to 65535 (default [22])");
        }
        let permit = permit
            .map(cidr::parse_list)
            .transpose()
            .map_err(anyhow::Error::msg)
            .context("permit")?;
        let mut out: Vec<Listen> = Vec::new();
        for l in listens {
            let bind: SocketAddr = l.bind.trim().parse().with_context(|| {
                format!(
                    "listen bind {:?}: expected ADDRESS:PORT, e.g. \"10.0.1.1:9100\"",
                    l.bind
                )
            })?;
            if bind.port() == 0 {
                bail!("listen bind {bind}: port 0 is not a listen port");
            }
            if l.to.trim().parse::<u16>().is_ok() {
                bail!(
                    "listen to {:?}: name the service as NAME:PORT (e.g. \"collector:9100\")",
                    l.to
                );
            }
            let to = Target::parse(&l.to)
                .map_err(anyhow::Error::msg)
                .with_context(|| format!("listen to {:?} (expected NAME:PORT)", l.to))?;
            if out.iter().any(|o| o.bind == bind) {
                bail!("listen bind {bind} appears twice");
            }
            out.push(Listen { bind, to });
        }
        Ok(GatewayConfig {
            scope,
            ports,
            permit,
            listens: out,
        })
    }

    /// Whether this agent acts as a gateway (announces itself to the relay).
    pub fn is_gateway(&self) -> bool {
        !self.scope.is_empty() || self.permit.is_some() || !self.listens.is_empty()
    }

    pub fn announce(&self) -> Announce {
        Announce {
            scope: self.scope.clone(),
            ports: self.ports.clone(),
            permit: self.permit.clone(),
            listens: self
                .listens
                .iter()
                .map(|l| ListenSpec {
                    bind: l.bind.to_string(),
                    to: l.to.to_string(),
                })
                .collect(),
        }
    }
}

/// The live gateway state: configuration plus the associations the relay
/// pushed last.
pub struct GatewayState {
    pub name: Name,
    pub config: GatewayConfig,
    /// The last list applied, with its `seq` (0: none on this connection).
    associations: Mutex<(u64, Vec<Cidr>)>,
    events: Option<mpsc::UnboundedSender<super::AgentEvent>>,
}

impl GatewayState {
    pub fn new(
        name: Name,
        config: GatewayConfig,
        events: Option<mpsc::UnboundedSender<super::AgentEvent>>,
    ) -> GatewayState {
        GatewayState {
            name,
            config,
            associations: Mutex::new((0, Vec::new())),
            events,
        }
    }

    pub fn scope(&self) -> GatewayScope {
        GatewayScope {
            scope: self.config.scope.clone(),
            ports: self.config.ports.clone(),
            permit: self.config.permit.clone(),
            associations: self
                .associations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .1
                .clone(),
        }
    }

    /// A new connection: the relay numbers its lists afresh.
    pub fn new_connection(&self) {
        self.associations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0 = 0;
    }

    /// Takes the relay's list of associations unless a later one was
    /// applied already; logs what is served and what the permit refuses.
    pub fn set_associations(&self, a: Associations) {
        {
            let mut current = self.associations.lock().unwrap_or_else(|p| p.into_inner());
            if a.seq <= current.0 {
                tracing::debug!(
                    seq = a.seq,
                    applied = current.0,
                    "ignoring an older association list"
                );
                return;
            }
            *current = (a.seq, a.associations);
        }
        let scope = self.scope();
        let refused = scope.refused_associations();
        let served: Vec<Cidr> = scope
            .associations
            .iter()
            .filter(|a| scope.permits(a))
            .copied()
            .collect();
        tracing::info!(
            served = %list(&served),
            refused = %list(&refused),
            "associations updated: serving {}; refused by permit: {}",
            list(&served),
            list(&refused)
        );
        if let Some(tx) = &self.events {
            let strings = |l: &[Cidr]| l.iter().map(Cidr::to_string).collect();
            let _ = tx.send(super::AgentEvent::Associations {
                served: strings(&served),
                refused: strings(&refused),
            });
        }
    }
}

/// Serves a stream the relay opened for a host of this gateway's network.
pub(super) async fn serve_host(
    state: Arc<GatewayState>,
    host: String,
    port: u32,
    channel: IncomingChannel,
) {
    match admit_host(&state, &host, port).await {
        Ok(target) => super::serve_stream(target, channel).await,
        Err(refusal) => {
            tracing::warn!(asked = %host, port, "refused stream: {refusal}");
            channel.refuse(&refusal).await;
        }
    }
}

/// Resolves `host` (inside this network) and picks the first address the
/// scope admits.
async fn admit_host(state: &GatewayState, host: &str, port: u32) -> Result<Target, Refusal> {
    let name = state.name.as_str();
    let Ok(port) = u16::try_from(port) else {
        return Err(Refusal::prohibited(format!("{port} is not a port")));
    };
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let found = tokio::time::timeout(
                TARGET_CONNECT_TIMEOUT,
                tokio::net::lookup_host((host, port)),
            )
            .await;
            match found {
                Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
                Ok(Err(e)) => {
                    return Err(Refusal::connect_failed(format!(
                        "gateway {name} cannot resolve {host}: {e}"
                    )));
                }
                Err(_) => {
                    return Err(Refusal::connect_failed(format!(
                        "gateway {name} cannot resolve {host}: timed out"
                    )));
                }
            }
        }
    };
    let scope = state.scope();
    let mut first_error = None;
    for ip in addrs {
        match scope.check(name, ip, port) {
            Ok(()) => {
                return Ok(Target {
                    host: ip.to_string(),
                    port,
                });
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    Err(Refusal::prohibited(match first_error {
        Some(e) if host.parse::<IpAddr>().is_ok() => e,
        Some(e) => format!("{host}: {e}"),
        None => format!("gateway {name}: {host} has no address"),
    }))
}

/// Reads one association update the relay pushed on a control channel.
pub(super) async fn receive_associations(state: Arc<GatewayState>, channel: IncomingChannel) {
    let ch = channel.accept().await;
    let (mut mine, theirs) = tokio::io::duplex(16 * 1024);
    let (tr, tw) = tokio::io::split(theirs);
    let splice = tokio::spawn(ch.splice_io(tr, tw));
    // Nothing to say back: our EOF lets the relay finish as soon as it wrote.
    let _ = mine.shutdown().await;
    let mut text = Vec::new();
    let read = (&mut mine)
        .take(MAX_CONTROL_MESSAGE as u64 + 1)
        .read_to_end(&mut text)
        .await;
    drop(mine);
    let _ = splice.await;
    if read.is_err() || text.len() > MAX_CONTROL_MESSAGE {
        tracing::warn!("ignoring an unreadable or oversized association update");
        return;
    }
    match serde_json::from_slice::<Associations>(&text) {
        Ok(a) => state.set_associations(a),
        Err(e) => tracing::warn!(error = %e, "ignoring a malformed association update"),
    }
}

/// A connection accepted on a listen forward, to carry to `to`.
pub struct Accepted {
    pub tcp: TcpStream,
    pub to: Target,
    pub peer: SocketAddr,
}

/// Binds every listen forward and feeds accepted connections into the
/// returned channel until `shutdown`. A bind that fails is logged and
/// skipped (`warren doctor` reports it too); the others still work.
pub fn start_listens(listens: &[Listen], shutdown: &CancellationToken) -> mpsc::Receiver<Accepted> {
    let (tx, rx) = mpsc::channel(LISTEN_BACKLOG);
    for l in listens.iter().cloned() {
        let (tx, stop) = (tx.clone(), shutdown.clone());
        tokio::spawn(async move {
            let listener = match TcpListener::bind(l.bind).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(bind = %l.bind, to = %l.to, "cannot listen on {}: {e}", l.bind);
                    return;
                }
            };
            tracing::info!(bind = %l.bind, to = %l.to, "listening on {} for {}", l.bind, l.to);
            loop {
                let (tcp, peer) = tokio::select! {
                    _ = stop.cancelled() => return,
                    a = listener.accept() => match a {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(bind = %l.bind, error = %e, "accept failed");
                            continue;
                        }
                    },
                };
                let accepted = Accepted {
                    tcp,
                    to: l.to.clone(),
                    peer,
                };
                if tx.try_send(accepted).is_err() {
                    tracing::warn!(bind = %l.bind, %peer, "too many connections waiting for the relay; closed one");
                }
            }
        });
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(bind: &str, to: &str) -> ListenFile {
        ListenFile {
            bind: bind.into(),
            to: to.into(),
        }
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn scope_ports_default_to_ssh() {
        let scope = strings(&["10.0.1.0/24", "10.0.0.0/16"]);
        let g = GatewayConfig::from_file(Some(&scope), None, None, &[]).unwrap();
        assert_eq!(g.ports, vec![22]);
        assert_eq!(g.scope.len(), 2);
        assert!(g.is_gateway());
        let plain = GatewayConfig::from_file(None, None, None, &[]).unwrap();
        assert!(!plain.is_gateway());
        assert_eq!(plain.announce().scope, vec![]);
    }

    #[test]
    fn bad_gateway_settings_are_refused_with_a_reason() {
        let scope = strings(&["10.0.1.0/24"]);
        let err = |r: Result<GatewayConfig>| format!("{:#}", r.unwrap_err());
        let e = err(GatewayConfig::from_file(
            Some(&strings(&["10.0.1.7/24"])),
            None,
            None,
            &[],
        ));
        assert!(e.contains("scope") && e.contains("host bits"), "{e}");
        let e = err(GatewayConfig::from_file(None, Some(&[22]), None, &[]));
        assert!(e.contains("scope_ports"), "{e}");
        let e = err(GatewayConfig::from_file(Some(&scope), Some(&[]), None, &[]));
        assert!(e.contains("scope_ports"), "{e}");
        let e = err(GatewayConfig::from_file(
            Some(&scope),
            None,
            Some(&strings(&["nope"])),
            &[],
        ));
        assert!(e.contains("permit"), "{e}");
        let e = err(GatewayConfig::from_file(
            None,
            None,
            None,
            &[listen("10.0.1.1", "collector:9100")],
        ));
        assert!(e.contains("ADDRESS:PORT"), "{e}");
        for to in ["collector", "9100"] {
            let e = err(GatewayConfig::from_file(
                None,
                None,
                None,
                &[listen("10.0.1.1:9100", to)],
            ));
            assert!(e.contains("NAME:PORT"), "{e}");
        }
        let twice = [
            listen("10.0.1.1:9100", "a:1"),
            listen("10.0.1.1:9100", "b:1"),
        ];
        let e = err(GatewayConfig::from_file(None, None, None, &twice));
        assert!(e.contains("twice"), "{e}");
    }

    fn state(scope: &[&str], permit: Option<&[&str]>) -> GatewayState {
        let config = GatewayConfig::from_file(
            Some(&strings(scope)),
            Some(&[22, 9100]),
            permit.map(strings).as_deref(),
            &[],
        )
        .unwrap();
        GatewayState::new(Name::parse("gw1").unwrap(), config, None)
    }

    #[tokio::test]
    async fn the_agent_admits_only_its_scope_and_permitted_associations() {
        let s = state(&["10.0.1.0/24"], Some(&["10.0.0.0/8"]));
        assert_eq!(
            admit_host(&s, "10.0.1.7", 22).await.unwrap().to_string(),
            "10.0.1.7:22"
        );
        let r = admit_host(&s, "10.0.2.7", 22).await.unwrap_err();
        assert!(
            r.message.contains("outside the scope of gateway gw1"),
            "{r}"
        );
        let r = admit_host(&s, "10.0.1.7", 80).await.unwrap_err();
        assert!(r.message.contains("serves ports 22, 9100"), "{r}");
        // The relay associates a network inside the permit and one outside:
        // the agent serves the first and refuses the second on its own.
        s.set_associations(Associations {
            associations: vec![
                Cidr::parse("10.0.2.0/24").unwrap(),
                Cidr::parse("192.168.9.0/24").unwrap(),
            ],
            seq: 2,
        });
        assert!(admit_host(&s, "10.0.2.7", 9100).await.is_ok());
        let r = admit_host(&s, "192.168.9.4", 22).await.unwrap_err();
        assert!(r.message.contains("outside its permit"), "{r}");
        // Names are resolved first, then checked like addresses.
        assert!(admit_host(&s, "localhost", 22).await.is_err());
        // An older list that arrives late changes nothing.
        s.set_associations(Associations {
            associations: vec![],
            seq: 1,
        });
        assert!(admit_host(&s, "10.0.2.7", 9100).await.is_ok());
        s.set_associations(Associations {
            associations: vec![Cidr::parse("127.0.0.0/8").unwrap()],
            seq: 3,
        });
        let r = admit_host(&s, "localhost", 22).await.unwrap_err();
        assert!(r.message.starts_with("localhost: "), "{r}");
    }
}
