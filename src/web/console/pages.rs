//! The console's pages over devices, gateways, public ports, keys and
//! invites. Data comes from the JSON API's functions (the same admin
//! operations); these only render it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use axum::extract::Path;
use serde_json::Value;

use super::super::api::{self, DeviceParams, status_of};
use super::super::error::ApiError;
use super::super::input::Query;
use super::{Page, PageResult, Viewer, badge, error_page, esc, link, render, time_ms, time_s};

pub(super) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

pub(super) fn json_attr(v: &Value) -> String {
    esc(&v.to_string())
}

pub async fn overview(v: Viewer) -> PageResult {
    let Viewer {
        web,
        p,
        peer,
        headers,
    } = v;
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
    let mut body = String::from("<h1>Overview</h1>");
    body.push_str(&status_cards(&all["devices"]));
    let q = crate::store::AuditQuery {
        system: p.system().map(String::from),
        limit: 300,
        ..Default::default()
    };
    let recent = crate::web::audit::page(&web, q).await.map_err(error_page)?;
    body.push_str(&refusals(&recent.events));
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

/// Devices per system and status (online, offline, asleep, waking,
/// disabled: [`api::STATUSES`]), and their live streams, as cards.
fn status_cards(devices: &Value) -> String {
    let mut per: BTreeMap<String, ([u64; api::STATUSES.len()], u64)> = BTreeMap::new();
    for d in devices.as_array().into_iter().flatten() {
        let (counts, streams) = per.entry(s(&d["system"])).or_default();
        if let Some(i) = api::STATUSES.iter().position(|st| *st == status_of(d)) {
            counts[i] += 1;
        }
        *streams += d["streams"].as_u64().unwrap_or(0);
    }
    let limits = super::rates::per_system(devices);
    let mut body = String::from("<div class=cards>");
    for (system, (counts, streams)) in &per {
        let rest: Vec<String> = api::STATUSES
            .iter()
            .zip(counts)
            .skip(1)
            .map(|(st, n)| {
                let link = esc(&link(
                    "/devices",
                    &[("system", system.clone()), ("status", st.to_string())],
                ));
                format!("<a href=\"{link}\">{n} {st}</a>")
            })
            .collect();
        let _ = write!(
            body,
            "<div class=card><div class=mut>system {}</div><div class=n>{} online</div>{} · {streams} streams{}</div>",
            esc(system),
            counts[0],
            rest.join(" · "),
            limits
                .get(system)
                .map(|r| format!(" · limit {}", esc(r)))
                .unwrap_or_default()
        );
    }
    if per.is_empty() {
        body.push_str("<div class=card>No devices yet: make an invite under <a href=/keys>Keys &amp; invites</a>.</div>");
    }
    body.push_str("</div>");
    body
}

/// The latest refusals among `events` (newest first), as a table.
fn refusals(events: &[crate::web::audit::Line]) -> String {
    let refused: Vec<_> = events
        .iter()
        .filter(|l| l.event.result == "refused")
        .take(12)
        .collect();
    let mut body = String::from(
        "<h2>Recent refusals</h2><table><tr><th>Time<th>Kind<th>System<th>Key<th>Target<th>Detail</tr>",
    );
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
    body
}

pub async fn devices(v: Viewer, q: Result<Query<DeviceParams>, ApiError>) -> PageResult {
    let Viewer {
        web,
        p,
        peer,
        headers,
    } = v;
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
    let pairs = |extra: &[(&'static str, String)]| {
        let mut v: Vec<(&'static str, String)> = filters.to_vec();
        v.extend(extra.iter().cloned());
        v
    };
    body.push_str(&sort_headers(&filters, &sort));
    body.push_str("<th>Ports<th>Labels<th>Rate</tr>");
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

/// The device table's header: each column a link that sorts by it (again:
/// the other way round), the current sort marked.
fn sort_headers(filters: &[(&'static str, String)], sort: &str) -> String {
    let mut body = String::from("<table><tr><th><input type=checkbox class=pick-all>");
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
        let (next, arrow) = if sort == col {
            (format!("-{col}"), " ▲")
        } else if sort == format!("-{col}") {
            (col.to_string(), " ▼")
        } else {
            (col.to_string(), "")
        };
        let mut pairs = filters.to_vec();
        pairs.push(("sort", next));
        let _ = write!(
            body,
            "<th><a href=\"{}\">{label}{arrow}</a>",
            esc(&link("/devices", &pairs))
        );
    }
    body
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
            let opts: String = api::STATUSES.iter().map(|o| opt(o)).collect();
            let _ = write!(
                body,
                "<label>status<select name=status><option value=\"\">any</option>{opts}</select></label>"
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

/// A device's merged labels, escaped; the admin's marked (class `adm`).
fn labels_html(d: &Value) -> String {
    let admin: Vec<&str> = d["admin_labels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let one = |(k, v): (&String, &Value)| {
        let text = esc(&format!("{k}={}", s(v)));
        if admin.contains(&k.as_str()) {
            format!("<span class=adm title=\"set by an admin\">{text}</span>")
        } else {
            text
        }
    };
    let all: Vec<String> = d["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(one)
        .collect();
    all.join(" ")
}

/// One row of the devices table.
fn device_row(d: &Value) -> String {
    let (sys, name) = (s(&d["system"]), s(&d["name"]));
    let ports: Vec<String> = d["ports"].as_array().into_iter().flatten().map(s).collect();
    format!(
        "<tr><td><input type=checkbox class=pick value=\"{sys}/{name}\"><td><a href=\"/devices/{sys}/{name}\">{name}</a><td>{sys}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td class=wrap>{}<td>{}</tr>",
        badge(status_of(d)),
        time_s(d["since"].as_u64()),
        time_s(d["last_seen"].as_u64()),
        esc(&s(&d["address"])),
        s(&d["streams"]),
        esc(&s(&d["version"])),
        esc(&ports.join(",")),
        labels_html(d),
        super::rates::cell(d),
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

pub async fn device(v: Viewer, Path((system, name)): Path<(String, String)>) -> PageResult {
    let Viewer {
        web,
        p,
        peer,
        headers,
    } = v;
    let v = api::device_detail(&web, &p, peer, &system, &name)
        .await
        .map_err(error_page)?;
    let d = &v["device"];
    let (sys, nm) = (esc(&system), esc(&name));
    let mut body = format!(
        "<h1>Device {nm} <span class=mut>in {sys}</span> {}</h1><table>",
        badge(status_of(d))
    );
    let hidden: Vec<String> = d["hidden_labels"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
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
        ("Labels", labels_html(d)),
        ("Hidden labels", esc(&hidden.join(" "))),
        ("Gateway scope", esc(&scope.join(", "))),
        ("On demand", on_demand(&d["on_demand"])),
    ] {
        let _ = write!(body, "<tr><th style=\"width:140px\">{k}<td>{val}</tr>");
    }
    body.push_str("</table>");
    body.push_str(&super::rates::block(d));
    body.push_str("<p>");
    let action = if status_of(d) == "disabled" {
        "enable"
    } else {
        "disable"
    };
    let _ = write!(
        body,
        "<button class=danger data-action=\"POST /api/v1/devices/{sys}/{nm}/{action}\" data-confirm=\"{action} {nm}?\">{action}</button> \
<a href=\"{}\">Its operation log</a></p>",
        esc(&link(
            "/log",
            &[("system", system.clone()), ("device", name.clone())]
        ))
    );
    if p.role() == crate::protocol::Role::Admin {
        body.push_str(&label_form(&sys, &nm));
    }
    body.push_str("<h2>Recent history</h2>");
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

/// The labels form of the device page (admins only): `PUT …/labels`.
/// `sys` and `nm` come escaped.
fn label_form(sys: &str, nm: &str) -> String {
    format!(
        "<form class=bar data-labels=\"PUT /api/v1/devices/{sys}/{nm}/labels\" style=\"margin:10px 0\">\
<label>set (KEY=VALUE …)<input name=label_set size=24 placeholder=site=lab9></label>\
<label>hide the agent's (KEY …)<input name=label_remove size=12></label>\
<label>reset (KEY …)<input name=label_reset size=12></label>\
<button class=primary>Save labels</button></form>\
<p class=mut>An admin's label overrides the agent's of the same key (marked <span class=adm>like this</span>) \
and survives its re-registration; hiding removes an agent's label; reset gives the key back to the agent.</p>"
    )
}

/// An on-demand device's last reported state (issue 16: asleep until a
/// stream wakes it), or `no`.
fn on_demand(o: &Value) -> String {
    if !o.is_object() {
        return "no".into();
    }
    let mut out = format!("yes; last reported {}", badge(&s(&o["state"])));
    if !o["at"].is_null() {
        let _ = write!(out, " at {}", esc(&s(&o["at"])));
    }
    if !o["reason"].is_null() {
        let _ = write!(out, " ({})", esc(&s(&o["reason"])));
    }
    out
}
