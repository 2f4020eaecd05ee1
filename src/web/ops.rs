//! Runs an admin operation for an HTTP caller: a typed request, built by
//! the route from checked values, through the same `admin::run` and
//! `admin::commit` as `warren admin` and remote admin over SSH, with the
//! same audit records, stamped with who acted and through which session or
//! token.

use std::fmt::Display;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use serde_json::{Value, json};

use super::Web;
use super::auth::Principal;
use super::error::{ApiError, ApiResult};
use crate::admin::{self, Caller, Format, Reply, Request};
use crate::protocol::Name;
use crate::ssh::Fingerprint;
use crate::store::Identity;

/// Who calls a route and from where, with the handlers' shared state: what
/// every API route takes first.
pub struct Ctx {
    pub web: Web,
    pub p: Principal,
    pub peer: SocketAddr,
}

impl FromRequestParts<Web> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, ApiError> {
        let p = Principal::from_request_parts(parts, web).await?;
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0)
            .ok_or_else(|| ApiError::internal(&anyhow::anyhow!("no peer address")))?;
        Ok(Ctx {
            web: web.clone(),
            p,
            peer,
        })
    }
}

impl Ctx {
    /// [`read`] for this caller.
    pub async fn read(&self, request: Request) -> ApiResult<Value> {
        read(&self.web, &self.p, self.peer, request).await
    }

    /// [`change`] for this caller.
    pub async fn change(&self, request: Request) -> ApiResult<axum::Json<Value>> {
        change(&self.web, &self.p, self.peer, request).await
    }
}

/// A value taken from a request: trimmed, not empty, never a flag.
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

/// A value parsed into its type; a bad one is a 400 naming the field, with
/// the CLI's text for it.
pub fn parsed<T, E: Display>(
    field: &str,
    v: &str,
    parse: impl FnOnce(&str) -> Result<T, E>,
) -> ApiResult<T> {
    let v = value(field, v)?;
    parse(&v).map_err(|e| ApiError::bad("bad_value", format!("{field}: {e:#}")))
}

/// A name (system, device, key, gateway).
pub fn name(field: &str, v: &str) -> ApiResult<Name> {
    parsed(field, v, Name::parse)
}

/// Whether this operation changes state (only admins may) or only reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Change,
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

/// Runs a read and gives its reply as the JSON value its command prints
/// with `--json`, made from the typed reply.
pub async fn read(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    request: Request,
) -> ApiResult<Value> {
    let reply = request_for(web, p, peer, Access::Read, request).await?;
    admin::json_value(&reply).map_err(|e| ApiError::internal(&e))
}

/// Runs a change; its reply is what the CLI would have printed.
pub async fn change(
    web: &Web,
    p: &Principal,
    peer: SocketAddr,
    request: Request,
) -> ApiResult<axum::Json<Value>> {
    let reply = request_for(web, p, peer, Access::Change, request).await?;
    let text = admin::render(&reply, Format::Text).map_err(|e| ApiError::internal(&e))?;
    Ok(axum::Json(
        json!({ "ok": true, "message": text.out.trim_end() }),
    ))
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
