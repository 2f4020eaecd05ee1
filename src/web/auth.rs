//! Who is calling: a console session (cookie `warren_session`, made by
//! opening a one-time login link) or a bearer token. Both are `ID.SECRET`
//! credentials in the store (`store::credentials`), bound to a role and,
//! for controllers, to one system.
//!
//! Changing requests (anything but GET and HEAD) made with a session cookie
//! must carry the session's CSRF token in `X-CSRF-Token` ([`csrf_guard`]);
//! the token is derived from the session secret, so it is never stored and
//! another site cannot learn it. Bearer tokens are not sent by browsers on
//! their own, so they need none.

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use serde::Serialize;

use super::Web;
use super::error::{ApiError, ApiResult};
use crate::audit::{self, Event, kind};
use crate::protocol::Role;
use crate::protocol::token::{hash_secret, same_hash};
use crate::store::credentials::{CredKind, Credential, NewCredential};

pub const COOKIE: &str = "warren_session";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub cred: Credential,
    /// The session's CSRF token (sessions only).
    pub csrf: Option<String>,
}

impl Principal {
    /// The system this caller is limited to (controllers); `None`: all.
    pub fn system(&self) -> Option<&str> {
        self.cred.system.as_deref()
    }

    pub fn role(&self) -> Role {
        self.cred.role
    }

    /// Refuses a controller: its sessions and tokens only read.
    pub fn must_be_admin(&self) -> ApiResult<()> {
        if self.cred.role == Role::Admin {
            return Ok(());
        }
        Err(ApiError::forbidden(
            "read_only",
            format!(
                "a controller's {} only reads its own system ({}); changes need an admin",
                self.via(),
                self.system().unwrap_or("-")
            ),
        ))
    }

    /// The system a request may see: the caller's own for controllers (an
    /// explicit other one is refused), or what was asked for.
    pub fn scope(&self, asked: Option<String>) -> ApiResult<Option<String>> {
        match (self.system(), asked) {
            (Some(own), Some(a)) if a != own => Err(ApiError::forbidden(
                "other_system",
                format!("a controller key sees only its own system ({own}), not {a}"),
            )),
            (Some(own), _) => Ok(Some(own.to_string())),
            (None, a) => Ok(a),
        }
    }

    fn via(&self) -> &'static str {
        match self.cred.kind {
            CredKind::Token => "token",
            _ => "console session",
        }
    }

    /// Fills in who acted, for an audit record of something done over HTTP.
    pub fn stamp(&self, e: Event) -> Event {
        let mut e = e.key_name(self.cred.who.as_str());
        e.fingerprint = Some(format!("web:{}", self.cred.id));
        self.stamp_detail(e)
    }

    /// Adds "(via console session ID)" or "(via token ID)" to the detail.
    pub fn stamp_detail(&self, mut e: Event) -> Event {
        let via = format!("(via {} {})", self.via(), self.cred.id);
        e.detail = Some(match e.detail.take() {
            Some(d) => format!("{d} {via}"),
            None => via,
        });
        e
    }
}

/// The CSRF token of a session whose cookie is `cookie`.
pub fn csrf_token(cookie: &str) -> String {
    let h = hash_secret(&format!("warren csrf {cookie}"));
    h[..32].to_string()
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == COOKIE).then(|| v.to_string())
        })
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(|t| t.trim().to_string())
}

impl FromRequestParts<Web> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, web: &Web) -> Result<Self, ApiError> {
        let now = crate::store::now();
        let (kind, text) = match (bearer(&parts.headers), cookie_value(&parts.headers)) {
            (Some(t), _) => (CredKind::Token, t),
            (None, Some(c)) => (CredKind::Session, c),
            (None, None) => return Err(ApiError::unauthenticated()),
        };
        let t = text.clone();
        let cred = web
            .relay
            .store()
            .call(move |s| s.check_credential(kind, &t, now))
            .await
            .map_err(|e| ApiError::internal(&e))?
            .ok_or_else(ApiError::unauthenticated)?;
        let csrf = (kind == CredKind::Session).then(|| csrf_token(&text));
        Ok(Principal { cred, csrf })
    }
}

/// Refuses a changing request made with a session cookie and without its
/// CSRF token.
pub async fn csrf_guard(req: Request, next: Next) -> Response {
    let safe = matches!(*req.method(), Method::GET | Method::HEAD);
    let headers = req.headers();
    if !safe
        && bearer(headers).is_none()
        && let Some(cookie) = cookie_value(headers)
    {
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same_hash(sent, &csrf_token(&cookie)) {
            return ApiError::forbidden(
                "csrf",
                "this change needs the session's CSRF token in the X-CSRF-Token header",
            )
            .into_response();
        }
    }
    next.run(req).await
}

/// `GET /login/ID.SECRET`: trades a one-time login link for a session.
pub async fn login(State(web): State<Web>, Path(token): Path<String>) -> ApiResult<Response> {
    let now = crate::store::now();
    let store = web.relay.store().clone();
    let made = store
        .call(move |s| {
            let Some(link) = s.redeem_login(&token, now)? else {
                return Ok(None);
            };
            let session = s.issue_credential(&NewCredential {
                kind: CredKind::Session,
                system: link.system.as_deref(),
                role: link.role,
                who: &link.who,
                now,
                ttl_secs: super::SESSION_TTL.as_secs(),
            })?;
            Ok(Some((link, session)))
        })
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let Some((link, session)) = made else {
        web.relay.audit().record(
            Event::new(kind::CONSOLE_LOGIN, audit::REFUSED)
                .detail("a login link that was used already, expired or unknown"),
        );
        return Err(ApiError::forbidden(
            "login_link_invalid",
            "this login link was used already, has expired (after 5 minutes) or is not one: run `warren admin console-login` again",
        ));
    };
    let mut e = Event::new(kind::CONSOLE_LOGIN, audit::OK)
        .key_name(link.who.as_str())
        .detail(format!(
            "{} session {} from login link {}",
            link.role, session.record.id, link.id
        ));
    e.system = link.system.clone();
    web.relay.audit().record(e);
    let cookie = format!(
        "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        session.secret,
        super::SESSION_TTL.as_secs(),
        if web.secure { "; Secure" } else { "" }
    );
    let page = Html(
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=\"0;url=/\"><title>Warren</title><p>Logged in. <a href=\"/\">Open the console</a>.",
    );
    let mut resp = page.into_response();
    let value = HeaderValue::from_str(&cookie).map_err(|e| ApiError::internal(&e.into()))?;
    resp.headers_mut().insert(header::SET_COOKIE, value);
    Ok(resp)
}

#[derive(Serialize)]
pub struct SessionInfo {
    pub who: String,
    pub role: Role,
    /// `null`: every system.
    pub system: Option<String>,
    pub via: CredKind,
    pub expires: u64,
    /// Send it back in `X-CSRF-Token` with changing requests (sessions only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub csrf: Option<String>,
}

/// `GET /api/v1/session`: who the caller is, and the CSRF token.
pub async fn session(p: Principal) -> axum::Json<SessionInfo> {
    axum::Json(SessionInfo {
        who: p.cred.who.clone(),
        role: p.cred.role,
        system: p.cred.system.clone(),
        via: p.cred.kind,
        expires: p.cred.expires,
        csrf: p.csrf.clone(),
    })
}

/// `POST /api/v1/logout`: ends the caller's session.
pub async fn logout(State(web): State<Web>, p: Principal) -> ApiResult<Response> {
    if p.cred.kind != CredKind::Session {
        return Err(ApiError::bad(
            "not_a_session",
            "logout ends console sessions; revoke a token with `warren admin token revoke ID`",
        ));
    }
    let id = p.cred.id.clone();
    let now = crate::store::now();
    web.relay
        .store()
        .call(move |s| s.revoke_credential(CredKind::Session, &id, now))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let mut e = p.stamp(Event::new(kind::CONSOLE_LOGOUT, audit::OK));
    e.system = p.cred.system.clone();
    web.relay.audit().record(e);
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("warren_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    Ok(resp)
}
