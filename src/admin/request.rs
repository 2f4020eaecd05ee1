//! Typed admin requests: what an admin operation is asked to do, with its
//! values already checked. The clap grammar ([`super::AdminCommand`]) turns
//! into one with `into_request`; the HTTP API builds them directly.

use std::path::PathBuf;
use std::time::Duration;

use crate::protocol::{Cidr, DeviceId, Name, Role, Target};
use crate::store::AuditQuery;

/// How a reply is rendered ([`super::render`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    /// Only `log` has a CSV form.
    Csv,
}

impl Format {
    /// `--json` or text.
    pub fn json_if(json: bool) -> Format {
        if json { Format::Json } else { Format::Text }
    }
}

/// One admin operation.
#[derive(Debug)]
pub enum Request {
    /// The relay's host-key fingerprint.
    HostKey,
    AddSystem {
        name: Name,
    },
    ListSystems,
    /// Register a key: read from a file on the relay host (local callers
    /// only: the file is read when the request runs), or given as text
    /// (the HTTP API's `POST /keys`).
    AddKey {
        system: Name,
        role: Role,
        name: Name,
        key: KeySource,
    },
    ListKeys,
    RevokeKey {
        /// Trimmed.
        fingerprint: String,
    },
    ListDevices {
        system: Option<String>,
        labels: Vec<(String, String)>,
    },
    CreateInvite {
        system: Name,
        role: Role,
        name: Name,
        ttl: Duration,
        /// A checked `HOST:PORT`; `None`: the relay's `--advertise`.
        relay: Option<String>,
    },
    ListInvites,
    RevokeInvite {
        /// Trimmed.
        id: String,
    },
    SetDisabled {
        device: DeviceId,
        disabled: bool,
    },
    /// Change a device's admin labels (set, hide or reset them).
    SetLabels {
        device: DeviceId,
        edit: crate::store::labels::LabelEdit,
    },
    /// A system's bandwidth limit (`device` `None`) or a device's; `None`
    /// clears it.
    SetRate {
        system: Name,
        device: Option<Name>,
        rate: Option<crate::protocol::rate::Rate>,
    },
    Gateway(GatewayRequest),
    Expose(ExposeRequest),
    /// One page of the audit log, `query.limit` events (and one more, if
    /// there is one, to say that another page follows).
    Log {
        query: AuditQuery,
    },
    /// Wake an on-demand device, or put it to sleep, through the running
    /// relay (which holds the broker's credentials).
    Wake {
        op: super::wake::WakeOp,
        /// `None`: the caller's own system.
        system: Option<String>,
        device: Name,
    },
    /// A one-time web console login link, for `system` only when given (a
    /// controller's is filled in with its own).
    ConsoleLogin {
        system: Option<String>,
    },
    /// End every console session and unused login link.
    ConsoleLogout,
    /// Bearer tokens for the HTTP API.
    Token(super::TokenRequest),
}

/// Where `key add` takes the public key from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file on the relay host (`-`: standard input).
    File(PathBuf),
    /// The key's OpenSSH text (`ssh-ed25519 AAAA… comment`).
    Text(String),
}

/// A gateway by name, with its system when given (otherwise the one system
/// that has a gateway of that name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRef {
    pub name: Name,
    pub system: Option<Name>,
}

#[derive(Debug)]
pub enum GatewayRequest {
    List { system: Option<String> },
    Show(GatewayRef),
    Rules(GatewayRef),
    Allow(GatewayRef, Target),
    Deny(GatewayRef, Target),
    Delete { gw: GatewayRef, force: bool },
    Associate(GatewayRef, Cidr),
    Dissociate(GatewayRef, Cidr),
}

impl GatewayRequest {
    /// Whether it changes the store (`ls`, `show` and `rules` only read).
    pub fn writes(&self) -> bool {
        !matches!(
            self,
            GatewayRequest::List { .. } | GatewayRequest::Show(_) | GatewayRequest::Rules(_)
        )
    }
}

#[derive(Debug)]
pub enum ExposeRequest {
    Add {
        device: DeviceId,
        device_port: u16,
        port: u16,
        /// Checked CIDRs or addresses, as given.
        allow_from: Vec<String>,
    },
    List,
    Remove {
        port: u16,
    },
}
