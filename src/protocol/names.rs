//! System and device names.
//!
//! A name travels as an SSH user name (systems) and as a host name in
//! `ssh -J`, `ssh -W`, SOCKS requests and `ssh -R NAME:PORT:…` (devices), so
//! it is restricted to what is safe in all of those: lower-case letters,
//! digits, `-`, `_` and `.`, starting with a letter or digit, at most 63
//! bytes, and never something that parses as an IP address (those mean a host
//! inside a private network, not a device).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::limits::MAX_NAME_LEN;

/// A validated system or device name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Name(String);

/// Why a string is not a name. Callers show it to people as it is.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("a name cannot be empty")]
    Empty,
    #[error("name {0:?} is longer than {MAX_NAME_LEN} bytes")]
    TooLong(String),
    #[error(
        "name {0:?} has a character other than a-z, 0-9, '-', '_', '.' (or does not start with a letter or digit)"
    )]
    BadChar(String),
    #[error("name {0:?} looks like an IP address; device names must not")]
    LooksLikeAddress(String),
}

impl Name {
    pub fn parse(s: &str) -> Result<Name, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            // Never echo a huge input back whole.
            let mut cut: String = s.chars().take(MAX_NAME_LEN).collect();
            cut.push('…');
            return Err(NameError::TooLong(cut));
        }
        let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c);
        let first_ok = s
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !first_ok || !s.chars().all(ok_char) {
            return Err(NameError::BadChar(s.to_string()));
        }
        if s.parse::<IpAddr>().is_ok() {
            return Err(NameError::LooksLikeAddress(s.to_string()));
        }
        Ok(Name(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Name {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Name::parse(s)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A device: its name within its system. Names are unique per system
/// only, so this pair is what identifies a device across the relay.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    pub system: Name,
    pub name: Name,
}

impl DeviceId {
    pub fn new(system: Name, name: Name) -> DeviceId {
        DeviceId { system, name }
    }
}

impl fmt::Display for DeviceId {
    /// `system/name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.system, self.name)
    }
}

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Registers its own name and serves streams; cannot open streams.
    Device,
    /// Reaches devices of its own system.
    Controller,
    /// Manages systems and keys (remote admin comes with enrollment); also a controller.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Controller => "controller",
            Role::Admin => "admin",
        }
    }

    /// Whether this role may open streams to devices.
    pub fn may_open_streams(self) -> bool {
        matches!(self, Role::Controller | Role::Admin)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "device" => Ok(Role::Device),
            "controller" => Ok(Role::Controller),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "unknown role {other:?} (expected device, controller or admin)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["dev1", "tau", "red001", "pi-4.lab_3", "0node", "a"] {
            assert_eq!(Name::parse(ok).map(|n| n.to_string()), Ok(ok.to_string()));
        }
    }

    #[test]
    fn rejects_bad_names_with_a_reason() {
        assert_eq!(Name::parse(""), Err(NameError::Empty));
        assert!(matches!(Name::parse("Dev1"), Err(NameError::BadChar(_))));
        assert!(matches!(Name::parse("-dev"), Err(NameError::BadChar(_))));
        assert!(matches!(Name::parse("dev 1"), Err(NameError::BadChar(_))));
        assert!(matches!(Name::parse("dev1;rm"), Err(NameError::BadChar(_))));
        assert!(matches!(Name::parse("dév"), Err(NameError::BadChar(_))));
        assert!(matches!(
            Name::parse("10.0.0.1"),
            Err(NameError::LooksLikeAddress(_))
        ));
        assert!(matches!(
            Name::parse(&"a".repeat(64)),
            Err(NameError::TooLong(_))
        ));
        assert!(Name::parse(&"a".repeat(63)).is_ok());
    }

    #[test]
    fn huge_input_is_not_echoed_whole() {
        let err = Name::parse(&"x".repeat(100_000)).unwrap_err().to_string();
        assert!(err.len() < 200, "{err}");
    }

    #[test]
    fn roles_parse_and_gate_streams() {
        assert_eq!("device".parse::<Role>(), Ok(Role::Device));
        assert!("root".parse::<Role>().is_err());
        assert!(!Role::Device.may_open_streams());
        assert!(Role::Controller.may_open_streams());
    }
}
