//! Runs an admin operation for an HTTP caller: a typed request (or the
//! same command grammar, turned into one) through the same `admin::run` and
//! `admin::commit` as `warren admin` and remote admin over SSH, with the
//! same audit records, stamped with who acted and through which session or
//! token.

use std::net::SocketAddr;

use clap::Parser;

use super::Web;
use super::auth::Principal;
use super::error::{ApiError, ApiResult};
use crate::admin::{self, AdminCommand, Caller, Reply, Request};
use crate::protocol::Name;
use crate::ssh::Fingerprint;
use crate::store::Identity;

/// An admin command line, as remote admin parses it.
#[derive(Debug, Parser)]
#[command(name = "api", no_binary_name = true, disable_version_flag = true)]
struct Words {
    #[command(subcommand)]
    command: AdminCommand,
}

/// A value taken from a request into a command line: never a flag.
pub fn value(field: &str, v: &str) -> ApiResult<String> {
    let v = v.trim();
    if v.is_empty() {
        return Err(ApiError::bad("bad_value", format!("{field} is empty")));
    }
    if v.starts_with('-') {
        return Err(ApiError::bad(
            "bad_value",
            format!("{field} {v:?} may not start with '-'"),
        ));
    }
    Ok(v.to_string())
}

/// Whether this operation changes state (only admins may) or only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Change,
}

/// Runs `words` (built by the route from checked values) for `p`; returns
/// what the command printed. A change is durable in the audit log and
/// signalled to the relay before this returns.
pub async fn run(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    access: Access,
    words: Vec<String>,
) -> ApiResult<String> {
    if access == Access::Change {
        p.must_be_admin()?;
    }
    let (request, format) = parse(&words)?;
    let reply = request_for(web, p, peer, access, request).await?;
    let text = admin::render(&reply, format).map_err(|e| ApiError::internal(&e))?;
    Ok(text.out)
}

/// Runs a typed request for `p` and gives back its typed reply (a change
/// is durable in the audit log and signalled to the relay first). The
/// route has checked the values and limited them to `p`'s system.
pub async fn request_for(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    access: Access,
    request: Request,
) -> ApiResult<Reply> {
    if access == Access::Change {
        p.must_be_admin()?;
    }
    let who = identity(p)?;
    let caller = Caller::Remote {
        live: web.relay.as_ref(),
        who: &who,
        peer,
    };
    let mut outcome = admin::run(web.relay.store(), &caller, request)
        .await
        .map_err(|e| ApiError::refused(&e))?;
    outcome.events = std::mem::take(&mut outcome.events)
        .into_iter()
        .map(|e| p.stamp_detail(e))
        .collect();
    admin::commit(web.relay.store(), &caller, &outcome)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(outcome.reply)
}

/// Runs a read (its `--json` command line) and gives its reply as the
/// JSON value the command prints, made from the typed reply.
pub async fn read_json(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    words: Vec<String>,
) -> ApiResult<serde_json::Value> {
    let (request, _) = parse(&words)?;
    let reply = request_for(web, p, peer, Access::Read, request).await?;
    admin::json_value(&reply).map_err(|e| ApiError::internal(&e))
}

/// A command line, as remote admin parses it, turned into a typed request.
fn parse(words: &[String]) -> ApiResult<(Request, admin::Format)> {
    let command = Words::try_parse_from(words)
        .map_err(|e| ApiError::bad("bad_request", e.render().to_string()))?
        .command;
    command.into_request().map_err(|e| ApiError::refused(&e))
}

/// The identity an HTTP caller acts as: its name, and `web:ID` (the session
/// or token) where an SSH caller has a key fingerprint.
fn identity(p: &Principal) -> ApiResult<Identity> {
    let name = |s: &str| {
        Name::parse(s).map_err(|e| ApiError::internal(&anyhow::anyhow!("caller name {s:?}: {e}")))
    };
    Ok(Identity {
        system: name(p.system().unwrap_or("relay"))?,
        role: p.role(),
        name: name(&p.cred.who)?,
        fingerprint: Fingerprint::web_credential(&p.cred.id),
    })
}
