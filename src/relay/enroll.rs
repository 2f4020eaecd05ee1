//! The relay's side of enrollment: a machine logs in as user `enroll` with
//! the key it just made and runs `enroll TOKEN`. The store checks the invite
//! and adds the key in one transaction; the audit record is durable before
//! the machine hears "enrolled" (and writes its config).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::Relay;
use crate::audit::{self, Event, kind};
use crate::protocol::Role;
use crate::protocol::token::Invite;
use crate::ssh::PublicKey;
use crate::ssh::keys::{Fingerprint, fingerprint};
use crate::ssh::server::ExecOutput;

/// What the relay answers on success (one JSON object on stdout).
#[derive(Debug, Serialize, Deserialize)]
pub struct Enrolled {
    pub system: String,
    pub role: Role,
    pub name: String,
    pub fingerprint: Fingerprint,
}

pub(super) async fn run(
    relay: &Relay,
    key: &PublicKey,
    peer: SocketAddr,
    command: &str,
) -> ExecOutput {
    let words: Vec<&str> = command.split_whitespace().collect();
    let ["enroll", token] = words.as_slice() else {
        return ExecOutput::fail(
            2,
            "this connection can only enroll: run `warren enroll TOKEN` on the new machine\n",
        );
    };
    let fp = fingerprint(key);
    let mut event = Event::new(kind::ENROLL, audit::OK).peer(peer);
    event.fingerprint = Some(fp.to_string());
    let invite = Invite::decode(token);
    if let Ok(inv) = &invite {
        event = event
            .system(inv.system.as_str())
            .key(inv.name.as_str(), fp.as_str());
        if inv.role == Role::Device {
            event = event.device(inv.name.as_str());
        }
    }
    let result = match invite {
        Err(e) => Err(e),
        // A cluster's token pins every relay's key, comma-separated.
        Ok(inv) if !crate::ssh::keys::pinned(&inv.host_key, relay.host_key()) => {
            Err(anyhow::anyhow!(
                "invite token refused: it was made for another relay (host key {})",
                inv.host_key
            ))
        }
        Ok(inv) => {
            let k = key.clone();
            let id = inv.id.clone();
            event = event.detail(format!("invite {id}, role {}", inv.role));
            relay.store().call(move |s| s.enroll(&inv, &k)).await
        }
    };
    match result {
        Ok(rec) => {
            if let Err(e) = relay.audit().record_durable(vec![event]).await {
                return ExecOutput::fail(
                    1,
                    format!("enrolled, but the relay cannot write its audit log: {e:#}\n"),
                );
            }
            let reply = Enrolled {
                system: rec.system,
                role: rec.role,
                name: rec.name,
                fingerprint: rec.fingerprint,
            };
            let mut out = serde_json::to_string(&reply).unwrap_or_default();
            out.push('\n');
            ExecOutput::ok(out)
        }
        Err(e) => {
            let msg = format!("{e:#}");
            let mut refused = event.detail(msg.as_str());
            refused.result = audit::REFUSED.into();
            let _ = relay.audit().record_durable(vec![refused]).await;
            ExecOutput::fail(1, format!("{msg}\n"))
        }
    }
}
