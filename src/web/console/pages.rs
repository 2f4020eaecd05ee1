//! The console's pages over devices, gateways, public ports, keys and
//! invites. Data comes from the JSON API's functions (the same admin
//! operations); these only render it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use super::super::Web;
use super::super::api::{self, DeviceParams, status_of};
use super::super::auth::Principal;
use super::super::error::ApiError;
use super::super::input::Query;
use super::{Page, PageResult, Peer, badge, error_page, esc, link, render, time_ms, time_s, who};
use crate::admin::{ExposeRequest, GatewayRequest, Request};

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn json_attr(v: &Value) -> String {
    esc(&v.to_string())
}

pub async fn overview(
    State(web): State<Web>,
    p: Result<Principal, ApiError>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
) -> PageResult {
    let p = who(p)?;
    let all = api::device_list(
        &web,
        &p,
        peer,
        DeviceParams {
            limit: Some(api::DEVICE_PAGE_MAX),
            ..Default::default()
        },
    )
    .await
    .map_err(error_page)?;
    let mut per: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for d in all["devices"].as_array().into_iter().flatten() {
        let c = per.entry(s(&d["system"])).or_default();
        match status_of(d) {
            "online" => c[0] += 1,
            "offline" => c[1] += 1,
            _ => c[2] += 1,
        }
        c[3] += d["streams"].as_u64().unwrap_or(0);
    }
    let mut body = String::from("<h1>Overview</h1><div class=cards>");
    for (system, [on, off, dis, streams]) in &per {
        let _ = write!(
            body,
            "<div class=card><div class=mut>system {}</div><div class=n>{on} online</div>{off} offline · {dis} disabled · {streams} streams</div>",
            esc(system)
        );
    }
    if per.is_empty() {
        body.push_str("<div class=card>No devices yet: make an invite under <a href=/keys>Keys &amp; invites</a>.</div>");
    }
    body.push_str("</div><h2>Recent refusals</h2>");
    let q = crate::store::AuditQuery {
        system: p.system().map(String::from),
        limit: 300,
        ..Default::default()
    };
    let recent = crate::web::audit::page(&web, q).await.map_err(error_page)?;
    let refused: Vec<_> = recent
        .events
        .iter()
        .filter(|l| l.event.result == "refused")
        .take(12)
        .collect();
    body.push_str("<table><tr><th>Time<th>Kind<th>System<th>Key<th>Target<th>Detail</tr>");
    for l in &refused {
        let e = &l.event;
        let _ = write!(
            body,
            "<tr><td>{}<td><a href=/log/{}>{}</a><td>{}<td>{}<td>{}<td class=wrap>{}</tr>",
            time_ms(e.time_ms),
            e.id,
            esc(&e.kind),
            esc(e.system.as_deref().unwrap_or("")),
            esc(e.key.as_deref().unwrap_or("")),
            esc(e.target.as_deref().or(e.device.as_deref()).unwrap_or("")),
            esc(e.detail.as_deref().unwrap_or(""))
        );
    }
    if refused.is_empty() {
        body.push_str("<tr><td colspan=6 class=mut>none among the latest events</tr>");
    }
    body.push_str("</table>");
    Ok(render(
        &p,
        &headers,
        Page {
            title: "Overview".into(),
            nav: "/",
            live: true,
            body,
        },
    ))
}

pub async fn devices(
    State(web): State<Web>,
    p: Result<Principal, ApiError>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    q: Result<Query<DeviceParams>, ApiError>,
) -> PageResult {
    let p = who(p)?;
    let Query(q) = q.map_err(error_page)?;
    let keep = |k: &'static str, v: &Option<String>| (k, v.clone().unwrap_or_default());
    let filters = [
        keep("system", &q.system),
        keep("status", &q.status),
        keep("name", &q.name),
        keep("label", &q.label),
    ];
    let sort = q.sort.clone().unwrap_or_else(|| "name".into());
    let (offset, limit) = (q.offset.unwrap_or(0), q.limit.unwrap_or(api::DEVICE_PAGE));
    let list = api::device_list(&web, &p, peer, q)
        .await
        .map_err(error_page)?;
    let total = list["total"].as_u64().unwrap_or(0) as usize;
    let mut body = device_filters(&filters, &sort);
    body.push_str("<div class=bar style=\"margin-bottom:8px\"><button class=danger data-batch=\"POST /api/v1/devices/{item}/disable\" data-confirm=\"Disable these devices? Their live streams close.\">Disable selected</button> <button data-batch=\"POST /api/v1/devices/{item}/enable\" data-confirm=\"Enable these devices?\">Enable selected</button></div>");
    body.push_str("<table><tr><th><input type=checkbox class=pick-all>");
    let pairs = |extra: &[(&'static str, String)]| {
        let mut v: Vec<(&'static str, String)> = filters.to_vec();
        v.extend(extra.iter().cloned());
        v
    };
    for (col, label) in [
        ("name", "Name"),
        ("system", "System"),
        ("status", "Status"),
        ("since", "Since"),
        ("last_seen", "Last seen"),
        ("address", "Address"),
        ("streams", "Streams"),
        ("version", "Version"),
    ] {
        let next = if sort == col {
            format!("-{col}")
        } else {
            col.to_string()
        };
        let arrow = if sort == col {
            " ▲"
        } else if sort == format!("-{col}") {
            " ▼"
        } else {
            ""
        };
        let _ = write!(
            body,
            "<th><a href=\"{}\">{label}{arrow}</a>",
            esc(&link("/devices", &pairs(&[("sort", next)])))
        );
    }
    body.push_str("<th>Ports<th>Labels</tr>");
    for d in list["devices"].as_array().into_iter().flatten() {
        body.push_str(&device_row(d));
    }
    body.push_str("</table>");
    body.push_str(&pager(
        "/devices",
        &pairs(&[("sort", sort.clone())]),
        offset,
        limit,
        total,
    ));
    Ok(render(
        &p,
        &headers,
        Page {
            title: "Devices".into(),
            nav: "/devices",
            live: true,
            body,
        },
    ))
}

/// The devices page's filter form.
fn device_filters(filters: &[(&'static str, String)], sort: &str) -> String {
    let mut body = String::from("<h1>Devices</h1><form class=bar method=get action=/devices>");
    for (k, v) in filters {
        if *k == "status" {
            let opt = |o: &str| {
                format!(
                    "<option{}>{o}</option>",
                    if v == o { " selected" } else { "" }
                )
            };
            let _ = write!(
                body,
                "<label>status<select name=status><option value=\"\">any</option>{}{}{}</select></label>",
                opt("online"),
                opt("offline"),
                opt("disabled")
            );
        } else {
            let _ = write!(
                body,
                "<label>{k}<input name={k} value=\"{}\" size=12></label>",
                esc(v)
            );
        }
    }
    let _ = write!(
        body,
        "<input type=hidden name=sort value=\"{}\"><button>Filter</button></form>",
        esc(sort)
    );
    body
}
/// One row of the devices table.
fn device_row(d: &Value) -> String {
    let (sys, name) = (s(&d["system"]), s(&d["name"]));
    let labels: Vec<String> = d["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    let ports: Vec<String> = d["ports"].as_array().into_iter().flatten().map(s).collect();
    format!(
        "<tr><td><input type=checkbox class=pick value=\"{sys}/{name}\"><td><a href=\"/devices/{sys}/{name}\">{name}</a><td>{sys}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td class=wrap>{}</tr>",
        badge(status_of(d)),
        time_s(d["since"].as_u64()),
        time_s(d["last_seen"].as_u64()),
        esc(&s(&d["address"])),
        s(&d["streams"]),
        esc(&s(&d["version"])),
        esc(&ports.join(",")),
        esc(&labels.join(" ")),
        sys = esc(&sys),
        name = esc(&name),
    )
}

fn pager(
    path: &str,
    pairs: &[(&str, String)],
    offset: usize,
    limit: usize,
    total: usize,
) -> String {
    let mut out = format!(
        "<div class=pager>{}–{} of {total}",
        if total == 0 { 0 } else { offset + 1 },
        (offset + limit).min(total)
    );
    let at = |o: usize| {
        let mut v = pairs.to_vec();
        v.push(("offset", o.to_string()));
        v.push(("limit", limit.to_string()));
        esc(&link(path, &v))
    };
    if offset > 0 {
        let _ = write!(
            out,
            " <a href=\"{}\">‹ previous</a>",
            at(offset.saturating_sub(limit))
        );
    }
    if offset + limit < total {
        let _ = write!(out, " <a href=\"{}\">next ›</a>", at(offset + limit));
    }
    out.push_str("</div>");
    out
}

pub async fn device(
    State(web): State<Web>,
    p: Result<Principal, ApiError>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Path((system, name)): Path<(String, String)>,
) -> PageResult {
    let p = who(p)?;
    let v = api::device_detail(&web, &p, peer, &system, &name)
        .await
        .map_err(error_page)?;
    let d = &v["device"];
    let (sys, nm) = (esc(&system), esc(&name));
    let mut body = format!(
        "<h1>Device {nm} <span class=mut>in {sys}</span> {}</h1><table>",
        badge(status_of(d))
    );
    let labels: Vec<String> = d["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    let ports: Vec<String> = d["ports"].as_array().into_iter().flatten().map(s).collect();
    let scope: Vec<String> = d["scope"].as_array().into_iter().flatten().map(s).collect();
    for (k, val) in [
        ("Since", time_s(d["since"].as_u64())),
        ("Last seen", time_s(d["last_seen"].as_u64())),
        ("Address", esc(&s(&d["address"]))),
        ("Ports", esc(&ports.join(", "))),
        ("Live streams", s(&d["streams"])),
        ("Version", esc(&s(&d["version"]))),
        ("Labels", esc(&labels.join(" "))),
        ("Gateway scope", esc(&scope.join(", "))),
    ] {
        let _ = write!(body, "<tr><th style=\"width:140px\">{k}<td>{val}</tr>");
    }
    body.push_str("</table><p>");
    let action = if status_of(d) == "disabled" {
        "enable"
    } else {
        "disable"
    };
    let _ = write!(
        body,
        "<button class=danger data-action=\"POST /api/v1/devices/{sys}/{nm}/{action}\" data-confirm=\"{action} {nm}?\">{action}</button> \
<a href=\"{}\">Its operation log</a></p><h2>Recent history</h2>",
        esc(&link(
            "/log",
            &[("system", system.clone()), ("device", name.clone())]
        ))
    );
    body.push_str(&super::log::table(
        v["history"].as_array().map(Vec::as_slice).unwrap_or(&[]),
    ));
    Ok(render(
        &p,
        &headers,
        Page {
            title: format!("{name} ({system})"),
            nav: "/devices",
            live: true,
            body,
        },
    ))
}

pub async fn gateways(
    State(web): State<Web>,
    p: Result<Principal, ApiError>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
) -> PageResult {
    let p = who(p)?;
    let list = GatewayRequest::List {
        system: p.system().map(String::from),
    };
    let list = api::scoped_list(&web, &p, peer, Request::Gateway(list))
        .await
        .map_err(error_page)?;
    let mut body = String::from(
        "<h1>Gateways</h1><p class=mut>Devices that reach hosts of a private network. Add one: make a device invite under <a href=/keys>Keys &amp; invites</a>.</p>\
<div class=bar style=\"margin-bottom:8px\"><button class=danger data-batch=\"DELETE /api/v1/gateways/{item}\" data-confirm=\"Delete these gateways? Those with forwarding rules are refused.\">Delete selected</button></div>\
<table><tr><th><input type=checkbox class=pick-all><th>Name<th>System<th>Status<th>Scope<th>Associated networks<th>Rules<th>Updated</tr>",
    );
    for g in list.as_array().into_iter().flatten() {
        if p.system()
            .is_some_and(|own| g["system"].as_str() != Some(own))
        {
            continue;
        }
        let (sys, name) = (esc(&s(&g["system"])), esc(&s(&g["name"])));
        let join = |k: &str| {
            g[k].as_array()
                .into_iter()
                .flatten()
                .map(|x| {
                    if x.is_object() {
                        s(&x["network"])
                    } else {
                        s(x)
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let online = if g["online"].as_bool() == Some(true) {
            "online"
        } else {
            "offline"
        };
        let _ = write!(
            body,
            "<tr><td><input type=checkbox class=pick value=\"{sys}/{name}\"><td><a href=\"/gateways/{sys}/{name}\">{name}</a><td>{sys}<td>{}<td class=wrap>{}<td class=wrap>{}<td class=wrap>{}<td>{}</tr>",
            badge(online),
            esc(&join("scope")),
            esc(&join("associations")),
            esc(&join("rules")),
            time_s(g["updated"].as_u64())
        );
    }
    body.push_str("</table>");
    Ok(render(
        &p,
        &headers,
        Page {
            title: "Gateways".into(),
            nav: "/gateways",
            live: true,
            body,
        },
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tab {
    pub tab: Option<String>,
}

pub async fn gateway(
    State(web): State<Web>,
    p: Result<Principal, ApiError>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
    Path((system, name)): Path<(String, String)>,
    Query(t): Query<Tab>,
) -> PageResult {
    let p = who(p)?;
    let g = api::gateway_detail(&web, &p, peer, &system, &name)
        .await
        .map_err(error_page)?;
    let tab = t.tab.unwrap_or_else(|| "networks".into());
    let (sys, nm) = (esc(&system), esc(&name));
    let online = if g["online"].as_bool() == Some(true) {
        "online"
    } else {
        "offline"
    };
    let mut body = format!(
        "<h1>Gateway {nm} <span class=mut>in {sys}</span> {}</h1><div class=tabs>",
        badge(online)
    );
    for (k, label) in [
        ("networks", "Scope & networks"),
        ("rules", "Forwarding rules"),
        ("log", "Operation log"),
    ] {
        let on = if tab == k { " class=on" } else { "" };
        let _ = write!(
            body,
            "<a{on} href=\"/gateways/{sys}/{nm}?tab={k}\">{label}</a>"
        );
    }
    body.push_str("</div>");
    let base = format!("/api/v1/gateways/{sys}/{nm}");
    match tab.as_str() {
        "rules" => body.push_str(&rules_tab(&g, &base)),
        "log" => {
            let q = crate::store::AuditQuery {
                system: Some(system.clone()),
                device: Some(name.clone()),
                limit: 50,
                ..Default::default()
            };
            let page = crate::web::audit::page(&web, q).await.map_err(error_page)?;
            let rows: Vec<Value> = page
                .events
                .iter()
                .filter_map(|l| serde_json::to_value(l).ok())
                .collect();
            body.push_str(&super::log::table(&rows));
        }
        _ => body.push_str(&networks_tab(&g, &base)),
    }
    let _ = write!(
        body,
        "<h2>Danger</h2><button class=danger data-action=\"DELETE {base}\" data-confirm=\"Delete gateway {nm}? Refused while it has forwarding rules.\">Delete gateway</button>"
    );
    Ok(render(
        &p,
        &headers,
        Page {
            title: format!("Gateway {name}"),
            nav: "/gateways",
            live: tab != "rules" && tab != "networks",
            body,
        },
    ))
}

/// The gateway page's rules tab.
fn rules_tab(g: &Value, base: &str) -> String {
    let mut body = String::new();
    body.push_str("<table><tr><th>Target<th></tr>");
    for r in g["rules"].as_array().into_iter().flatten() {
        let t = esc(&s(r));
        let _ = write!(
            body,
            "<tr><td>{t}<td><button class=danger data-action=\"POST {base}/deny\" data-body=\"{}\" data-confirm=\"Remove the rule for {t}?\">remove</button></tr>",
            json_attr(&serde_json::json!({"target": s(r)}))
        );
    }
    let _ = write!(
        body,
        "</table><form class=bar data-api=\"POST {base}/allow\" style=\"margin-top:10px\"><label>target (NAME:PORT)<input name=target required></label><button>Allow</button></form>"
    );
    body
}

/// The gateway page's scope and networks tab, with batch dissociate.
fn networks_tab(g: &Value, base: &str) -> String {
    let mut body = String::new();
    let scope: Vec<String> = g["scope"].as_array().into_iter().flatten().map(s).collect();
    let _ = write!(
        body,
        "<p>Scope announced by the gateway: <b>{}</b>; address {}</p>",
        esc(&scope.join(", ")),
        esc(&s(&g["address"]))
    );
    let _ = write!(
        body,
        "<div class=bar style=\"margin-bottom:8px\"><button class=danger data-batch=\"POST {base}/dissociate\" data-batch-body='{{\"network\":\"{{item}}\"}}' data-confirm=\"Dissociate these networks?\">Dissociate selected</button></div>"
    );
    body.push_str("<table><tr><th><input type=checkbox class=pick-all><th>Associated network<th>Served<th></tr>");
    for a in g["associations"].as_array().into_iter().flatten() {
        let n = esc(&s(&a["network"]));
        let served = if a["served"].as_bool() == Some(true) {
            "yes"
        } else {
            "refused by the gateway's permit"
        };
        let _ = write!(
            body,
            "<tr><td><input type=checkbox class=pick value=\"{n}\"><td>{n}<td>{served}<td><button class=danger data-action=\"POST {base}/dissociate\" data-body=\"{}\" data-confirm=\"Dissociate {n}?\">dissociate</button></tr>",
            json_attr(&serde_json::json!({"network": s(&a["network"])}))
        );
    }
    let _ = write!(
        body,
        "</table><form class=bar data-api=\"POST {base}/associate\" style=\"margin-top:10px\"><label>network (CIDR)<input name=network required></label><button>Associate</button></form>"
    );
    body
}

pub async fn ports(
    State(web): State<Web>,
    p: Result<Principal, ApiError>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
) -> PageResult {
    let p = who(p)?;
    let list = api::scoped_list(&web, &p, peer, Request::Expose(ExposeRequest::List))
        .await
        .map_err(error_page)?;
    let mut body = String::from(
        "<h1>Public ports</h1><table><tr><th>Relay port<th>System<th>Device<th>Device port<th>Allow from<th>Created<th></tr>",
    );
    for x in list.as_array().into_iter().flatten() {
        if p.system()
            .is_some_and(|own| x["system"].as_str() != Some(own))
        {
            continue;
        }
        let port = s(&x["port"]);
        let allow: Vec<String> = x["allow_from"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        let _ = write!(
            body,
            "<tr><td>{port}<td>{}<td>{}<td>{}<td>{}<td>{}<td><button class=danger data-action=\"DELETE /api/v1/ports/{port}\" data-confirm=\"Close public port {port}?\">remove</button></tr>",
            esc(&s(&x["system"])),
            esc(&s(&x["device"])),
            esc(&s(&x["device_port"])),
            esc(&if allow.is_empty() {
                "anyone".into()
            } else {
                allow.join(", ")
            }),
            time_s(x["created"].as_u64())
        );
    }
    body.push_str("</table><h2>Expose a device port</h2><form class=bar data-api=\"POST /api/v1/ports\" data-confirm=\"Open this port to the internet?\"><label>system<input name=system required size=8></label><label>device:port<input name=target required placeholder=dev1:22></label><label>relay port<input name=port type=number required min=1 max=65535></label><button class=primary>Expose</button></form>");
    Ok(render(
        &p,
        &headers,
        Page {
            title: "Public ports".into(),
            nav: "/ports",
            live: false,
            body,
        },
    ))
}

pub async fn keys(
    State(web): State<Web>,
    p: Result<Principal, ApiError>,
    ConnectInfo(peer): Peer,
    headers: HeaderMap,
) -> PageResult {
    let p = who(p)?;
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
