//! The console's gateway pages (the list with batch delete; a gateway's
//! tabs for its scope and networks, its rules and its own log) and the
//! public ports.

use std::fmt::Write as _;

use axum::extract::Path;
use serde::Deserialize;
use serde_json::Value;

use super::super::api;
use super::super::input::Query;
use super::pages::{json_attr, s};
use super::{Page, PageResult, Viewer, badge, error_page, esc, render, time_s};
use crate::admin::{ExposeRequest, GatewayRequest, Request};

pub async fn gateways(v: Viewer) -> PageResult {
    let Viewer {
        web,
        p,
        peer,
        headers,
    } = v;
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
    v: Viewer,
    Path((system, name)): Path<(String, String)>,
    Query(t): Query<Tab>,
) -> PageResult {
    let Viewer {
        web,
        p,
        peer,
        headers,
    } = v;
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

pub async fn ports(v: Viewer) -> PageResult {
    let Viewer {
        web,
        p,
        peer,
        headers,
    } = v;
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
