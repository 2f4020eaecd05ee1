//! Networks (`10.0.1.0/24`, `fd00::/64`) and the explicit gateway syntax
//! (`HOST.via.GATEWAY`), shared by the relay (routing) and the agent
//! (admission).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A network: an address and a prefix length, with the host bits zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Parses `A.B.C.D/N` or `V6/N`. Host bits must be zero (`10.0.1.7/24`
    /// is refused: it is almost always a typo for a host or a network).
    /// A bare address means a single host (`/32` or `/128`).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?} is not a network (expected e.g. 10.0.1.0/24)"))?;
        let max = max_prefix(addr);
        let prefix =
            match prefix {
                None => max,
                Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| {
                    format!("{s:?}: prefix length must be a number from 0 to {max}")
                })?,
            };
        let cidr = Cidr { addr, prefix };
        if cidr.network() != addr {
            return Err(format!(
                "{s:?} has host bits set; the network is {}",
                Cidr {
                    addr: cidr.network(),
                    prefix
                }
            ));
        }
        Ok(cidr)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network address (host bits cleared).
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4((u32::from(a) & mask32(self.prefix)).into()),
            IpAddr::V6(a) => IpAddr::V6((u128::from(a) & mask128(self.prefix)).into()),
        }
    }

    /// The first address after the network address (`10.0.1.1` for
    /// `10.0.1.0/24`): something to probe whether the network is routable.
    pub fn first_host(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) if self.prefix < 31 => IpAddr::V4((u32::from(a) + 1).into()),
            IpAddr::V6(a) if self.prefix < 127 => IpAddr::V6((u128::from(a) + 1).into()),
            other => other,
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix) == u128::from(n),
            _ => false,
        }
    }

    /// Whether all of `other` lies inside this network.
    pub fn covers(&self, other: &Cidr) -> bool {
        other.prefix >= self.prefix && self.contains(other.addr)
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn max_prefix(addr: IpAddr) -> u8 {
    if addr.is_ipv4() { 32 } else { 128 }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Cidr::parse(s)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses a list of networks, naming the bad entry.
pub fn parse_list<S: AsRef<str>>(list: &[S]) -> Result<Vec<Cidr>, String> {
    let mut out: Vec<Cidr> = Vec::new();
    for s in list {
        let c = Cidr::parse(s.as_ref())?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// The separator of the explicit gateway syntax: `10.0.1.7.via.site-b`
/// reaches `10.0.1.7` through gateway `site-b`. Chosen because it is a valid
/// host name everywhere a host name travels unchanged: `ssh -J`, `ssh -W
/// %h:%p`, SOCKS5 host names (`ssh -D`, `curl --socks5-hostname`) and URLs.
pub const VIA: &str = ".via.";

/// Splits `HOST.via.GATEWAY` at the last `.via.`; `None` if there is none.
pub fn split_via(host: &str) -> Option<(&str, &str)> {
    let i = host.rfind(VIA)?;
    let (inner, gateway) = (&host[..i], &host[i + VIA.len()..]);
    if inner.is_empty() || gateway.is_empty() {
        return None;
    }
    Some((inner, gateway))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_networks_and_refuses_typos() {
        assert_eq!(
            Cidr::parse("10.0.1.0/24").unwrap().to_string(),
            "10.0.1.0/24"
        );
        assert_eq!(Cidr::parse("10.0.1.7").unwrap().to_string(), "10.0.1.7/32");
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().prefix(), 0);
        assert_eq!(Cidr::parse("fd00::/8").unwrap().to_string(), "fd00::/8");
        let err = Cidr::parse("10.0.1.7/24").unwrap_err();
        assert!(err.contains("10.0.1.0/24"), "{err}");
        for bad in [
            "",
            "10.0.1/24",
            "10.0.1.0/33",
            "10.0.1.0/x",
            "host/24",
            "fd00::/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn containment() {
        let n = Cidr::parse("10.0.1.0/24").unwrap();
        assert!(n.contains(ip("10.0.1.7")));
        assert!(n.contains(ip("10.0.1.255")));
        assert!(!n.contains(ip("10.0.2.1")));
        assert!(!n.contains(ip("fd00::1")));
        assert!(n.contains(ip("::ffff:10.0.1.9")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        let wide = Cidr::parse("10.0.0.0/16").unwrap();
        assert!(wide.covers(&n));
        assert!(!n.covers(&wide));
        assert!(n.covers(&n));
        assert_eq!(n.first_host(), ip("10.0.1.1"));
        let v6 = Cidr::parse("fd00:1::/64").unwrap();
        assert!(v6.contains(ip("fd00:1::42")));
        assert!(!v6.contains(ip("fd00:2::42")));
    }

    #[test]
    fn via_syntax_splits_at_the_last_marker() {
        assert_eq!(
            split_via("10.0.1.7.via.site-b"),
            Some(("10.0.1.7", "site-b"))
        );
        assert_eq!(
            split_via("db.internal.via.gw1"),
            Some(("db.internal", "gw1"))
        );
        assert_eq!(split_via("a.via.b.via.c"), Some(("a.via.b", "c")));
        assert_eq!(split_via("dev1"), None);
        assert_eq!(split_via(".via.gw"), None);
        assert_eq!(split_via("x.via."), None);
    }
}
