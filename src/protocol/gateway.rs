//! Gateways: devices that also reach other hosts of their private network.
//!
//! The wire contract between a gateway's agent and the relay, and the pure
//! rules both sides apply:
//!
//! - After registering its name, the agent runs `gateway-announce JSON`
//!   ([`Announce`]) on the relay: its scope, the ports it serves there, its
//!   `permit` limit and its listen forwards. The relay answers with the
//!   networks an admin associated with it ([`Associations`]).
//! - When an admin changes the associations, the relay opens a
//!   `forwarded-tcpip` channel to [`CONTROL_ADDRESS`] on the gateway's
//!   connection and writes the new [`Associations`] as JSON, then closes it.
//! - A stream to a host behind the gateway is a `forwarded-tcpip` channel
//!   whose address is the real target host (`10.0.1.7`, `db.internal`) and
//!   whose port is the target port; the agent checks it against
//!   [`GatewayScope`] before it dials.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::Name;
use super::cidr::Cidr;

/// The command a gateway's agent runs on the relay after registering.
pub const ANNOUNCE_COMMAND: &str = "gateway-announce";

/// The `forwarded-tcpip` address on which the relay pushes associations.
/// It has a ':' so that it can never be a device name, and is not an address.
pub const CONTROL_ADDRESS: &str = "warren:associations";

/// Largest announce or association message. A gateway with hundreds of
/// networks stays far below; this bounds what a peer can make us parse.
pub const MAX_CONTROL_MESSAGE: usize = 64 * 1024;

/// Ports a gateway serves on hosts of its scope when its config names none:
/// SSH, which is what a platform needs to manage those hosts.
pub const DEFAULT_SCOPE_PORTS: &[u16] = &[22];

/// A listen forward as the agent announces it (`bind` inside its network,
/// `to` a service elsewhere in the system).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenSpec {
    pub bind: String,
    pub to: String,
}

/// What a gateway tells the relay about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    pub scope: Vec<Cidr>,
    pub ports: Vec<u16>,
    /// The owner's hard limit for associations; `None`: no limit.
    pub permit: Option<Vec<Cidr>>,
    #[serde(default)]
    pub listens: Vec<ListenSpec>,
}

/// Networks an admin routed to a gateway from the relay side.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Associations {
    pub associations: Vec<Cidr>,
    /// Grows with every list the relay sends on one connection. Pushes
    /// travel on channels of their own and may overtake each other (or the
    /// announcement's answer), so the agent ignores a list older than the
    /// one it applied.
    #[serde(default)]
    pub seq: u64,
}

/// What a gateway may reach: its own scope, plus associations inside its
/// permit. Both the relay (to route and to refuse early) and the agent (the
/// last word) decide with this.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayScope {
    pub scope: Vec<Cidr>,
    pub ports: Vec<u16>,
    pub permit: Option<Vec<Cidr>>,
    pub associations: Vec<Cidr>,
}

impl GatewayScope {
    pub fn is_gateway(&self) -> bool {
        !self.scope.is_empty() || !self.associations.is_empty()
    }

    /// Whether the owner's permit lets association `net` through.
    pub fn permits(&self, net: &Cidr) -> bool {
        match &self.permit {
            None => true,
            Some(list) => list.iter().any(|p| p.covers(net)),
        }
    }

    /// Every network this gateway serves now.
    pub fn effective(&self) -> Vec<Cidr> {
        let mut out: BTreeSet<Cidr> = self.scope.iter().copied().collect();
        out.extend(self.associations.iter().filter(|a| self.permits(a)));
        out.into_iter().collect()
    }

    /// Associations the permit refuses (shown flagged in `gateway show`).
    pub fn refused_associations(&self) -> Vec<Cidr> {
        self.associations
            .iter()
            .filter(|a| !self.permits(a))
            .copied()
            .collect()
    }

    /// The most specific served network holding `ip`, if any.
    pub fn best_match(&self, ip: IpAddr) -> Option<Cidr> {
        self.effective()
            .into_iter()
            .filter(|n| n.contains(ip))
            .max_by_key(Cidr::prefix)
    }

    /// Why `ip:port` may not be reached through this gateway, if it may not.
    pub fn check(&self, name: &str, ip: IpAddr, port: u16) -> Result<(), String> {
        if self.best_match(ip).is_none() {
            let refused = self.refused_associations();
            if let Some(net) = refused.iter().find(|n| n.contains(ip)) {
                return Err(format!(
                    "{ip} is in network {net}, associated with gateway {name} but outside its permit"
                ));
            }
            return Err(format!(
                "{ip} is outside the scope of gateway {name} ({})",
                list(&self.effective())
            ));
        }
        if !self.ports.contains(&port) {
            return Err(format!(
                "gateway {name} serves port{} {} on its networks, not {port}",
                if self.ports.len() == 1 { "" } else { "s" },
                self.ports
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        Ok(())
    }
}

/// `10.0.1.0/24, 10.0.0.0/16`, or `nothing`.
pub fn list(nets: &[Cidr]) -> String {
    if nets.is_empty() {
        return "nothing".into();
    }
    nets.iter()
        .map(Cidr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why no single gateway was picked for an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pick {
    /// No gateway's scope holds the address.
    None,
    /// Several hold it equally specifically: each with its matching network.
    Ambiguous(Vec<(Name, Cidr)>),
}

/// Picks, among `gateways`, the one whose served networks hold `ip` most
/// specifically (a /24 before a /16). Equally specific matches are an
/// error naming all of them, never a coin toss.
pub fn pick<'a>(
    gateways: impl IntoIterator<Item = (&'a Name, &'a GatewayScope)>,
    ip: IpAddr,
) -> Result<(Name, Cidr), Pick> {
    let mut best: Vec<(Name, Cidr)> = Vec::new();
    for (name, gw) in gateways {
        let Some(net) = gw.best_match(ip) else {
            continue;
        };
        match best.first().map(|(_, b)| b.prefix()) {
            Some(p) if p > net.prefix() => {}
            Some(p) if p == net.prefix() => best.push((name.clone(), net)),
            _ => best = vec![(name.clone(), net)],
        }
    }
    best.sort();
    match best.len() {
        0 => Err(Pick::None),
        1 => Ok(best.remove(0)),
        _ => Err(Pick::Ambiguous(best)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<Cidr> {
        list.iter().map(|s| Cidr::parse(s).unwrap()).collect()
    }

    fn gw(scope: &[&str]) -> GatewayScope {
        GatewayScope {
            scope: nets(scope),
            ports: vec![22],
            permit: None,
            associations: vec![],
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn the_most_specific_network_wins() {
        let (vpc, subnet) = (n("vpc"), n("subnet"));
        let (a, b) = (gw(&["10.0.0.0/16"]), gw(&["10.0.1.0/24"]));
        let both = [(&vpc, &a), (&subnet, &b)];
        let (name, net) = pick(both, ip("10.0.1.7")).unwrap();
        assert_eq!(
            (name.as_str(), net.to_string().as_str()),
            ("subnet", "10.0.1.0/24")
        );
        // Order does not matter.
        let (name, _) = pick([(&subnet, &b), (&vpc, &a)], ip("10.0.1.7")).unwrap();
        assert_eq!(name.as_str(), "subnet");
        let (name, net) = pick(both, ip("10.0.9.1")).unwrap();
        assert_eq!(
            (name.as_str(), net.to_string().as_str()),
            ("vpc", "10.0.0.0/16")
        );
        assert_eq!(pick(both, ip("192.168.1.1")), Err(Pick::None));
    }

    #[test]
    fn equally_specific_gateways_are_ambiguous_and_named() {
        let (a, b, c) = (n("site-a"), n("site-b"), n("wide"));
        let (ga, gb, gc) = (
            gw(&["10.0.1.0/24"]),
            gw(&["10.0.1.0/24"]),
            gw(&["10.0.0.0/8"]),
        );
        let err = pick([(&b, &gb), (&c, &gc), (&a, &ga)], ip("10.0.1.7")).unwrap_err();
        let net = Cidr::parse("10.0.1.0/24").unwrap();
        assert_eq!(err, Pick::Ambiguous(vec![(a, net), (b, net)]));
        // A /25 on one side breaks the tie.
        let split = n("split");
        let gs = gw(&["10.0.1.0/25"]);
        let (name, _) = pick([(&c, &gc), (&split, &gs)], ip("10.0.1.7")).unwrap();
        assert_eq!(name.as_str(), "split");
    }

    #[test]
    fn a_single_host_scope_is_most_specific() {
        let (h, s) = (n("host"), n("subnet"));
        let (gh, gs) = (gw(&["10.0.1.7"]), gw(&["10.0.1.0/24"]));
        let (name, _) = pick([(&s, &gs), (&h, &gh)], ip("10.0.1.7")).unwrap();
        assert_eq!(name.as_str(), "host");
    }

    #[test]
    fn associations_count_only_inside_the_permit() {
        let mut g = gw(&["10.0.1.0/24"]);
        g.associations = nets(&["10.0.2.0/24", "172.16.0.0/16"]);
        // No permit: every association is served.
        assert!(g.check("gw", ip("172.16.3.4"), 22).is_ok());
        g.permit = Some(nets(&["10.0.0.0/8"]));
        assert_eq!(g.effective(), nets(&["10.0.1.0/24", "10.0.2.0/24"]));
        assert_eq!(g.refused_associations(), nets(&["172.16.0.0/16"]));
        assert!(g.check("gw", ip("10.0.2.9"), 22).is_ok());
        let err = g.check("gw", ip("172.16.3.4"), 22).unwrap_err();
        assert!(err.contains("outside its permit"), "{err}");
        let err = g.check("gw", ip("192.168.0.1"), 22).unwrap_err();
        assert!(err.contains("outside the scope of gateway gw"), "{err}");
        let err = g.check("gw", ip("10.0.1.7"), 80).unwrap_err();
        assert!(err.contains("serves port 22"), "{err}");
        // The permit never limits the gateway's own scope.
        g.permit = Some(vec![]);
        assert!(g.check("gw", ip("10.0.1.7"), 22).is_ok());
        assert!(g.check("gw", ip("10.0.2.9"), 22).is_err());
    }
}
