//! The web console: pages rendered by the relay from the same calls the
//! JSON API makes (`web::api`, `web::audit`), with a little JavaScript
//! (`console.js`) for local times, live refresh, confirmations and batch
//! actions. Everything is embedded in the binary.
//!
//! Live pages (`<main data-live>`) are fetched again every two seconds with
//! `X-Fragment: 1`, which returns only the page's main part.

mod gateways;
mod keys;
mod log;
mod pages;
mod rates;

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::Web;
use super::auth::Principal;
use super::error::ApiError;

const CSS: &str = include_str!("console.css");
const JS: &str = include_str!("console.js");

/// The console's pages.
pub fn routes() -> Router<Web> {
    Router::new()
        .route("/", get(pages::overview))
        .route("/devices", get(pages::devices))
        .route("/devices/{system}/{name}", get(pages::device))
        .route("/gateways", get(gateways::gateways))
        .route("/gateways/{system}/{name}", get(gateways::gateway))
        .route("/ports", get(gateways::ports))
        .route("/keys", get(keys::keys))
        .route("/enroll/{system}/{name}", get(keys::enroll))
        .route("/log", get(log::page))
        .route("/log/{id}", get(log::entry))
        .route(
            "/console.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], CSS) }),
        )
        .route(
            "/console.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], JS) }),
        )
}

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A time (Unix milliseconds), shown in the viewer's zone by the script,
/// with UTC on hover.
pub fn time_ms(ms: u64) -> String {
    let t = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string();
    format!("<time datetime=\"{t}\">{t}</time>")
}

/// A time in Unix seconds, or a dash.
pub fn time_s(secs: Option<u64>) -> String {
    match secs {
        Some(s) if s > 0 => time_ms(s * 1000),
        _ => "<span class=mut>-</span>".into(),
    }
}

/// A status badge.
pub fn badge(status: &str) -> String {
    format!("<span class=\"st {0}\">{0}</span>", esc(status))
}

/// A page: the console's frame around `body`, or only `body` for a live
/// refresh.
pub struct Page {
    pub title: String,
    /// The nav entry lit.
    pub nav: &'static str,
    pub live: bool,
    pub body: String,
}

const NAV: &[(&str, &str)] = &[
    ("/", "Overview"),
    ("/devices", "Devices"),
    ("/gateways", "Gateways"),
    ("/ports", "Public ports"),
    ("/keys", "Keys & invites"),
    ("/log", "Operation log"),
];

pub fn render(p: &Principal, headers: &HeaderMap, page: Page) -> Response {
    if headers.contains_key("x-fragment") {
        return Html(page.body).into_response();
    }
    let mut nav = String::new();
    for (href, label) in NAV {
        let on = if *href == page.nav { " class=on" } else { "" };
        let _ = write!(nav, "<a href=\"{href}\"{on}>{label}</a>");
    }
    let who = format!(
        "{} · {}{}",
        esc(&p.cred.who),
        p.cred.role,
        match p.system() {
            Some(s) => format!(" of {}", esc(s)),
            None => " · all systems".into(),
        }
    );
    let logout =
        "<button data-action=\"POST /api/v1/logout\" data-confirm=\"Log out?\">Log out</button>";
    let html = format!(
        "<!doctype html><html lang=en><meta charset=utf-8><meta name=viewport content=\"width=device-width\">\
<meta name=csrf content=\"{csrf}\"><title>{title} · Warren</title><link rel=stylesheet href=/console.css>\
<header><b>Warren</b><nav>{nav}</nav><span class=who>{who}</span>{logout}</header>\
<div style=\"padding:10px 18px 0\"><div id=flash></div></div>\
<main{live}>{body}</main><script src=/console.js></script></html>",
        csrf = esc(p.csrf.as_deref().unwrap_or("")),
        title = esc(&page.title),
        live = if page.live { " data-live" } else { "" },
        body = page.body,
    );
    Html(html).into_response()
}

/// What a page shows for an error: the login hint, or the API's error.
pub fn error_page(e: ApiError) -> Response {
    let hint = if e.status == StatusCode::UNAUTHORIZED {
        "<p>Open a one-time login URL: run <code>warren admin console-login</code> on the relay host, or <code>ssh -p 2222 SYSTEM@relay console-login</code>.</p>"
    } else {
        "<p><a href=\"/\">Back to the overview</a></p>"
    };
    let body = format!(
        "<!doctype html><meta charset=utf-8><title>Warren</title><link rel=stylesheet href=/console.css>\
<main><h1>{}</h1><p>{}</p>{hint}</main>",
        e.status,
        esc(&e.message)
    );
    (e.status, Html(body)).into_response()
}

/// A page handler's result.
pub type PageResult = Result<Response, Response>;

/// The caller, or the login page.
pub fn who(p: Result<Principal, ApiError>) -> Result<Principal, Response> {
    p.map_err(error_page)
}

/// Who views a console page, from where, with the handlers' shared state
/// and the request's headers (a live refresh asks for the fragment only).
/// Without a login, the page is the login hint.
pub struct Viewer {
    pub web: Web,
    pub p: Principal,
    pub peer: SocketAddr,
    pub headers: HeaderMap,
}

impl axum::extract::FromRequestParts<Web> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        web: &Web,
    ) -> Result<Self, Response> {
        let p = Principal::from_request_parts(parts, web)
            .await
            .map_err(error_page)?;
        let peer =
            parts.extensions.get::<Peer>().map(|c| c.0).ok_or_else(|| {
                error_page(ApiError::internal(&anyhow::anyhow!("no peer address")))
            })?;
        Ok(Viewer {
            web: web.clone(),
            p,
            peer,
            headers: parts.headers.clone(),
        })
    }
}

/// Peer of a console request.
pub type Peer = axum::extract::ConnectInfo<SocketAddr>;

/// A query-string link with `key=value` pairs (empty values left out).
pub fn link(path: &str, pairs: &[(&str, String)]) -> String {
    let q: Vec<(&str, &str)> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (*k, v.as_str()))
        .collect();
    match serde_urlencoded::to_string(&q) {
        Ok(s) if !s.is_empty() => format!("{path}?{s}"),
        _ => path.to_string(),
    }
}
