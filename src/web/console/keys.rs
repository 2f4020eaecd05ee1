//! The console's keys and invites, and the "add a device or gateway"
//! flow: an invite, the one `warren enroll` command, then the machine
//! coming online.

use std::fmt::Write as _;

use axum::extract::Path;
use serde_json::Value;

use super::super::Web;
use super::super::auth::Principal;
use super::super::error::ApiError;
use super::super::{api, ops};
use super::pages::{json_attr, s};
use super::{Page, PageResult, Viewer, badge, error_page, esc, render, time_s};
use crate::admin::Request;

pub async fn keys(v: Viewer) -> PageResult {
    let Viewer {
        web,
        p,
        peer,
        headers,
    } = v;
    let rd = |r: Request| api::scoped_list(&web, &p, peer, r);
    let keys = rd(Request::ListKeys).await.map_err(error_page)?;
    let invites = rd(Request::ListInvites).await.map_err(error_page)?;
    let mine = |x: &Value| {
        p.system()
            .is_none_or(|own| x["system"].as_str() == Some(own))
    };
    let mut body = String::from(
        "<h1>Keys &amp; invites</h1><div class=row><div><h2>Add a device, gateway or person</h2><form class=bar data-api=\"POST /api/v1/invites\" data-enroll><label>system<input name=system required size=8></label><label>role<select name=role><option>device</option><option>controller</option><option>admin</option></select></label><label>name<input name=name required size=12></label><label>valid for<input name=ttl value=1h size=5></label><button class=primary>Make invite</button></form><p class=mut>The token is shown once, with the one <code>warren enroll</code> command to run on the machine.</p></div></div>",
    );
    body.push_str("<h2>Keys</h2><table><tr><th>System<th>Role<th>Name<th>Type<th>Fingerprint<th>Status<th>Enrolled<th></tr>");
    for k in keys.as_array().into_iter().flatten().filter(|k| mine(k)) {
        let fp = s(&k["fingerprint"]);
        let revoked = !k["revoked"].is_null();
        let action = if revoked {
            String::new()
        } else {
            format!(
                "<button class=danger data-action=\"POST /api/v1/keys/revoke\" data-body=\"{}\" data-confirm=\"Revoke key {} ({})? Its connections close.\">revoke</button>",
                json_attr(&serde_json::json!({"fingerprint": fp})),
                esc(&fp),
                esc(&s(&k["name"]))
            )
        };
        let _ = write!(
            body,
            "<tr><td>{}<td>{}<td>{}<td>{}<td><code>{}</code><td>{}<td>{}<td>{action}</tr>",
            esc(&s(&k["system"])),
            esc(&s(&k["role"])),
            esc(&s(&k["name"])),
            esc(&s(&k["algorithm"])),
            esc(&fp),
            if revoked {
                badge("revoked")
            } else {
                badge("ok")
            },
            esc(&s(&k["enrolled_via"]))
        );
    }
    body.push_str("</table><h2>Invites</h2><table><tr><th>ID<th>System<th>Role<th>Name<th>Status<th>Expires<th>Used by<th></tr>");
    for i in invites.as_array().into_iter().flatten().filter(|i| mine(i)) {
        let id = esc(&s(&i["id"]));
        let action = if s(&i["status"]) == "pending" {
            format!(
                "<button class=danger data-action=\"POST /api/v1/invites/{id}/revoke\" data-confirm=\"Revoke invite {id}?\">revoke</button>"
            )
        } else {
            String::new()
        };
        let _ = write!(
            body,
            "<tr><td>{id}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{action}</tr>",
            esc(&s(&i["system"])),
            esc(&s(&i["role"])),
            esc(&s(&i["name"])),
            esc(&s(&i["status"])),
            time_s(i["expires"].as_u64()),
            esc(&s(&i["used_by"]))
        );
    }
    body.push_str("</table>");
    Ok(render(
        &p,
        &headers,
        Page {
            title: "Keys & invites".into(),
            nav: "/keys",
            live: false,
            body,
        },
    ))
}

/// One line of the enrollment's checks: passed, failed, or still waiting.
struct Check {
    name: &'static str,
    state: &'static str,
    detail: String,
}

fn check(name: &'static str, state: &'static str, detail: impl Into<String>) -> Check {
    Check {
        name,
        state,
        detail: detail.into(),
    }
}

/// What the relay knows of a machine it invited, gathered for [`enroll`].
struct Known {
    invite: Option<Value>,
    key: Option<Value>,
    device: Option<Value>,
    gateway: Option<Value>,
    /// Events of the device or its key, newest first.
    events: Vec<crate::web::audit::Line>,
    host_key: String,
}

/// `/enroll/{system}/{name}`: a new machine's way in, refreshed live. The
/// page shows the one `warren enroll` command (the token is in the URL's
/// fragment, which browsers never send: the relay does not have it), then
/// what the relay sees as it happens: the invite used, the key registered,
/// SSH authentication, the connection, and for a gateway its scope.
///
/// `warren doctor` runs on the machine itself and its report stays there;
/// these are the relay's own checks of the same steps.
pub async fn enroll(v: Viewer, Path((system, name)): Path<(String, String)>) -> PageResult {
    let Viewer {
        web,
        p,
        peer,
        headers,
    } = v;
    let known = gather(&web, &p, peer, &system, &name)
        .await
        .map_err(error_page)?;
    let (sys, nm) = (esc(&system), esc(&name));
    let mut body = format!(
        "<h1>Adding {nm} <span class=mut>to {sys}</span></h1>\
<h2>1. Run this on the machine</h2><pre id=enroll-cmd data-enroll-cmd>The token was shown once, when the invite was made; make a new invite if it is lost.</pre>\
<button data-copy=enroll-cmd>Copy</button>\
<h2>2. What the relay sees</h2><table><tr><th style=\"width:180px\">Check<th>Status<th>Detail</tr>"
    );
    for c in checks(&known) {
        let _ = write!(
            body,
            "<tr><td>{}<td>{}<td class=wrap>{}</tr>",
            c.name,
            badge(c.state),
            esc(&c.detail)
        );
    }
    let _ = write!(
        body,
        "</table><p class=mut>These are the relay's checks. <code>warren doctor</code> on the machine checks the rest there (its config, the relay's address and host key, the clock); the relay does not receive its report.</p>\
<p><a href=\"/devices/{sys}/{nm}\">Device page</a> · <a href=\"/gateways/{sys}/{nm}\">Gateway page</a></p>"
    );
    Ok(render(
        &p,
        &headers,
        Page {
            title: format!("Adding {name}"),
            nav: "/keys",
            live: true,
            body,
        },
    ))
}

async fn gather(
    web: &Web,
    p: &Principal,
    peer: std::net::SocketAddr,
    system: &str,
    name: &str,
) -> Result<Known, ApiError> {
    let named = |v: &&Value| v["system"] == system && v["name"] == name;
    let newest = |list: Value| {
        list.as_array()
            .into_iter()
            .flatten()
            .filter(named)
            .max_by_key(|v| v["created"].as_u64())
            .cloned()
    };
    let invite = newest(api::scoped_list(web, p, peer, Request::ListInvites).await?);
    let key = newest(api::scoped_list(web, p, peer, Request::ListKeys).await?);
    let device = optional(api::device_detail(web, p, peer, system, name).await)?;
    // Not a gateway (yet): `gateway show` refuses; the page shows no scope.
    let gateway = api::gateway_detail(web, p, peer, system, name).await.ok();
    let host_key = ops::read(web, p, peer, Request::HostKey).await?;
    let mut events = Vec::new();
    for q in [
        crate::store::AuditQuery {
            system: Some(system.to_string()),
            device: Some(name.to_string()),
            limit: 20,
            ..Default::default()
        },
        crate::store::AuditQuery {
            system: Some(system.to_string()),
            key: Some(name.to_string()),
            limit: 20,
            ..Default::default()
        },
    ] {
        events.extend(crate::web::audit::page(web, q).await?.events);
    }
    events.sort_by_key(|l| std::cmp::Reverse(l.event.id));
    Ok(Known {
        invite,
        key,
        device: device.map(|d| d["device"].clone()),
        gateway,
        events,
        host_key: s(&host_key["fingerprint"]),
    })
}

/// A lookup that may find nothing yet (404): `None`.
fn optional(r: Result<Value, ApiError>) -> Result<Option<Value>, ApiError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => Ok(None),
        Err(e) => Err(e),
    }
}

/// The relay's checks of an enrollment, in the order they happen.
fn checks(k: &Known) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match &k.invite {
        None => check(
            "invite",
            "failed",
            "no invite for this name: make one under Keys & invites",
        ),
        Some(i) => match i["status"].as_str() {
            Some("used") => check("invite", "ok", format!("used by {}", s(&i["used_by"]))),
            Some("pending") => check("invite", "waiting", format!("{} not used yet", s(&i["id"]))),
            _ => check(
                "invite",
                "failed",
                format!("{} is {}: make a new one", s(&i["id"]), s(&i["status"])),
            ),
        },
    });
    out.push(check(
        "relay host key",
        "ok",
        format!(
            "the token pins {}; `warren doctor` on the machine checks the relay still shows it",
            k.host_key
        ),
    ));
    let active = k.key.as_ref().filter(|key| key["revoked"].is_null());
    out.push(match active {
        Some(key) => check(
            "key registered",
            "ok",
            format!("{} key {}", s(&key["role"]), s(&key["fingerprint"])),
        ),
        None => check(
            "key registered",
            "waiting",
            "no active key yet: the enroll command registers one",
        ),
    });
    out.push(authentication(k, active.is_some()));
    out.push(match &k.device {
        Some(d) if d["online"] == true => check(
            "connected",
            "online",
            format!("since {} from {}", since(&d["since"]), s(&d["address"])),
        ),
        Some(d) => check(
            "connected",
            "offline",
            format!("last seen {}", since(&d["last_seen"])),
        ),
        None => check("connected", "waiting", "not connected yet"),
    });
    if let Some(g) = &k.gateway {
        let scope: Vec<String> = g["scope"].as_array().into_iter().flatten().map(s).collect();
        out.push(check(
            "gateway scope",
            "ok",
            format!("announces {}", scope.join(", ")),
        ));
    }
    let last = k
        .events
        .iter()
        .find(|l| matches!(l.event.result.as_str(), "refused" | "failed"));
    out.push(match last {
        Some(l) => check(
            "last error",
            "refused",
            format!(
                "{} {}: {}",
                l.event.kind,
                rfc(l.event.time_ms),
                l.event.detail.as_deref().unwrap_or("")
            ),
        ),
        None => check("last error", "ok", "none recorded"),
    });
    out
}

/// SSH authentication as the relay saw it: available once the key logged
/// in, unavailable with the refusal's reason, or not yet tried.
fn authentication(k: &Known, key: bool) -> Check {
    const NAME: &str = "SSH authentication";
    if k.device.as_ref().is_some_and(|d| d["disabled"] == true) {
        return check(
            NAME,
            "failed",
            "unavailable: the device is disabled by an admin",
        );
    }
    let login = k
        .events
        .iter()
        .find(|l| matches!(l.event.kind.as_str(), "login" | "register" | "device_up"));
    match login {
        Some(l) if matches!(l.event.result.as_str(), "refused" | "failed") => check(
            NAME,
            "failed",
            format!(
                "unavailable: {}",
                l.event.detail.as_deref().unwrap_or("refused")
            ),
        ),
        Some(l) => check(
            NAME,
            "ok",
            format!("available: logged in {}", rfc(l.event.time_ms)),
        ),
        None if key => check(NAME, "waiting", "the key has not logged in yet"),
        None => check(NAME, "waiting", "unavailable until the key is registered"),
    }
}

fn rfc(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

fn since(secs: &Value) -> String {
    secs.as_u64().map_or_else(|| "-".into(), |t| rfc(t * 1000))
}
