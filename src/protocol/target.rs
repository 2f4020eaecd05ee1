//! Targets: `host:port` pairs, and the agent's allowlist of local targets.

use std::collections::BTreeMap;
use std::fmt;

/// A `host:port` the agent may connect to. The host is kept as written
/// (an IP address or a host name resolved by the agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    /// Parses `host:port`, `[v6]:port`, or a bare port (meaning `127.0.0.1:port`).
    pub fn parse(s: &str) -> Result<Target, String> {
        let s = s.trim();
        if let Ok(port) = s.parse::<u16>() {
            return Target::new("127.0.0.1", port);
        }
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (h, p) = rest
                .split_once("]:")
                .ok_or_else(|| format!("{s:?}: expected [ipv6]:port"))?;
            (h, p)
        } else {
            s.rsplit_once(':')
                .ok_or_else(|| format!("{s:?}: expected host:port"))?
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?}: port must be a number from 1 to 65535"))?;
        Target::new(host, port)
    }

    fn new(host: &str, port: u16) -> Result<Target, String> {
        if port == 0 {
            return Err("port 0 is not a target".into());
        }
        let host_ok = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
        if !host_ok {
            return Err(format!("{host:?} is not a host name or address"));
        }
        Ok(Target {
            host: host.to_string(),
            port,
        })
    }

    /// The string to hand to `TcpStream::connect`.
    pub fn connect_string(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.connect_string())
    }
}

/// The agent's allowlist: which port of the device name leads to which local
/// target. A controller asking for `dev1:PORT` reaches the entry for `PORT`;
/// anything else is refused. Each port may appear once.
///
/// Entries are `HOST:PORT` (device port = target port), a bare `PORT`
/// (`127.0.0.1:PORT`), or `DEVICE_PORT=HOST:PORT` to publish a target under
/// another port (`22=127.0.0.1:2201`: `dev1:22` reaches a sshd on 2201).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    by_port: BTreeMap<u16, Target>,
}

impl AllowList {
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<AllowList, String> {
        let mut by_port = BTreeMap::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            let (port, t) = match entry.split_once('=') {
                Some((port, target)) => {
                    let port = port
                        .trim()
                        .parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| {
                            format!("{entry:?}: device port must be a number from 1 to 65535")
                        })?;
                    (port, Target::parse(target)?)
                }
                None => {
                    let t = Target::parse(entry)?;
                    (t.port, t)
                }
            };
            if let Some(prev) = by_port.get(&port) {
                return Err(format!(
                    "device port {port} is allowed twice ({prev} and {t}); a device port must lead to one target"
                ));
            }
            by_port.insert(port, t);
        }
        if by_port.is_empty() {
            return Err("the allowlist is empty: the device would serve nothing".into());
        }
        Ok(AllowList { by_port })
    }

    /// The device ports this agent registers with the relay.
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.by_port.keys().copied()
    }

    /// The local target for a device port, if allowed.
    pub fn target_for(&self, port: u32) -> Option<&Target> {
        let port = u16::try_from(port).ok()?;
        self.by_port.get(&port)
    }
}

impl Default for AllowList {
    /// The device's own sshd, and nothing else.
    fn default() -> Self {
        let mut by_port = BTreeMap::new();
        by_port.insert(
            22,
            Target {
                host: "127.0.0.1".into(),
                port: 22,
            },
        );
        AllowList { by_port }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(
            Target::parse("127.0.0.1:22").unwrap().connect_string(),
            "127.0.0.1:22"
        );
        assert_eq!(
            Target::parse("[::1]:22").unwrap().connect_string(),
            "[::1]:22"
        );
        assert_eq!(Target::parse("localhost:8080").unwrap().port, 8080);
        assert_eq!(
            Target::parse("8080").unwrap().connect_string(),
            "127.0.0.1:8080"
        );
        for bad in [
            "",
            "host",
            "host:",
            "host:0",
            "host:99999",
            "a b:22",
            "[::1:22",
            "h:-1",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn allowlist_maps_ports_and_refuses_the_rest() {
        let a = AllowList::parse(&["127.0.0.1:22", "127.0.0.1:8080"]).unwrap();
        assert_eq!(a.ports().collect::<Vec<_>>(), vec![22, 8080]);
        assert_eq!(a.target_for(8080).unwrap().to_string(), "127.0.0.1:8080");
        assert!(a.target_for(8081).is_none());
        assert!(a.target_for(70000).is_none());
    }

    #[test]
    fn allowlist_publishes_a_target_under_another_port() {
        let a = AllowList::parse(&["22=127.0.0.1:2201", "80=[::1]:8080"]).unwrap();
        assert_eq!(a.ports().collect::<Vec<_>>(), vec![22, 80]);
        assert_eq!(a.target_for(22).unwrap().to_string(), "127.0.0.1:2201");
        assert_eq!(a.target_for(80).unwrap().to_string(), "[::1]:8080");
        assert!(a.target_for(2201).is_none());
        for bad in ["0=127.0.0.1:22", "x=127.0.0.1:22", "22=", "22=host"] {
            assert!(AllowList::parse(&[bad]).is_err(), "{bad:?}");
        }
        assert!(AllowList::parse(&["22=127.0.0.1:2201", "127.0.0.1:22"]).is_err());
    }

    #[test]
    fn allowlist_rejects_duplicate_ports_and_emptiness() {
        assert!(AllowList::parse(&["127.0.0.1:22", "10.0.0.1:22"]).is_err());
        assert!(AllowList::parse::<&str>(&[]).is_err());
    }

    #[test]
    fn default_allows_only_own_sshd() {
        let a = AllowList::default();
        assert_eq!(a.ports().collect::<Vec<_>>(), vec![22]);
    }
}
