//! The relay's address as agents and controllers dial it.

use std::fmt;

use anyhow::{Result, bail};

use super::limits::DEFAULT_RELAY_PORT;

/// `HOST:PORT`, `[V6]:PORT`; parsed from `host`, `host:port`, a bare IPv6
/// address or `[v6]:port`, with the port defaulting to
/// [`DEFAULT_RELAY_PORT`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RelayAddress(String);

impl RelayAddress {
    pub fn parse(s: &str) -> Result<RelayAddress> {
        let s = s.trim();
        if s.is_empty() {
            bail!("relay address is empty (expected HOST:PORT)");
        }
        if s.starts_with('[') || s.rsplit_once(':').is_some_and(|(h, _)| !h.contains(':')) {
            let port = s.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                bail!("relay address {s:?}: bad port");
            }
            return Ok(RelayAddress(s.to_string()));
        }
        if s.contains(':') {
            // A bare IPv6 address.
            return Ok(RelayAddress(format!("[{s}]:{DEFAULT_RELAY_PORT}")));
        }
        Ok(RelayAddress(format!("{s}:{DEFAULT_RELAY_PORT}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for RelayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<String> {
        RelayAddress::parse(s).map(RelayAddress::into_string)
    }

    #[test]
    fn relay_addresses_get_a_default_port() {
        assert_eq!(parse("relay.example").unwrap(), "relay.example:2222");
        assert_eq!(parse("relay.example:22").unwrap(), "relay.example:22");
        assert_eq!(parse("::1").unwrap(), "[::1]:2222");
        assert_eq!(parse("[::1]:2200").unwrap(), "[::1]:2200");
        assert!(parse("").is_err());
        assert!(parse("relay:0").is_err());
        assert!(parse("relay:http").is_err());
    }
}
