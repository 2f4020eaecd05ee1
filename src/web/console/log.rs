//! The operation log page: filters, a date range in the viewer's time
//! zone, keyset paging, CSV export with a choice of columns, and one
//! entry's detail with a copy button.

use std::fmt::Write as _;

use axum::extract::Path;
use serde_json::Value;

use super::super::audit::{self, AuditParams, COLUMNS};
use super::super::error::ApiError;
use super::super::input::Query;
use super::{Page, PageResult, Viewer, badge, error_page, esc, link, render, time_ms};

/// Kinds offered in the filter.
const KINDS: &[&str] = &[
    "login",
    "key_probe",
    "device_up",
    "device_down",
    "register",
    "stream_open",
    "stream_close",
    "enroll",
    "key_add",
    "key_revoke",
    "invite_create",
    "invite_revoke",
    "device_disable",
    "device_enable",
    "labels_set",
    "system_add",
    "command",
    "public_port",
    "public_connection",
    "expose_add",
    "expose_rm",
    "console_login",
    "console_logout",
    "token_create",
    "token_revoke",
];

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Events (as the API's JSON lines) as a table.
pub fn table(rows: &[Value]) -> String {
    let mut out = String::from(
        "<table><tr><th>Time<th>Kind<th>Result<th>System<th>Key<th>Device<th>Target<th>Up<th>Down<th>Detail</tr>",
    );
    for e in rows {
        let _ = write!(
            out,
            "<tr><td>{}<td><a href=/log/{}>{}</a><td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td>{}<td class=wrap>{}</tr>",
            time_ms(e["time_ms"].as_u64().unwrap_or(0)),
            e["id"].as_i64().unwrap_or(0),
            esc(&text(&e["kind"])),
            badge(&text(&e["result"])),
            esc(&text(&e["system"])),
            esc(&text(&e["key"])),
            esc(&text(&e["device"])),
            esc(&text(&e["target"])),
            text(&e["bytes_up"]),
            text(&e["bytes_down"]),
            esc(&text(&e["detail"])),
        );
    }
    if rows.is_empty() {
        out.push_str("<tr><td colspan=10 class=mut>no events</tr>");
    }
    out.push_str("</table>");
    out
}

/// The log's filters: system, device, key, kind and a date range picked in
/// local time (the script sends it as RFC 3339 in `since`, `until`).
fn filter_form(filters: &[(&str, String)]) -> String {
    let mut body = String::from("<form class=\"bar range\" method=get action=/log>");
    for (k, v) in &filters[..3] {
        let _ = write!(
            body,
            "<label>{k}<input name={k} value=\"{}\" size=10></label>",
            esc(v)
        );
    }
    body.push_str("<label>kind<select name=kind><option value=\"\">any</option>");
    for k in KINDS {
        let sel = if filters[3].1 == *k { " selected" } else { "" };
        let _ = write!(body, "<option{sel}>{k}</option>");
    }
    let _ = write!(
        body,
        "</select></label><label>from (your time)<input type=datetime-local name=since_local></label>\
<label>to<input type=datetime-local name=until_local></label>\
<input type=hidden name=since value=\"{}\"><input type=hidden name=until value=\"{}\"><button>Apply</button> <a href=/log>reset</a></form>",
        esc(&filters[4].1),
        esc(&filters[5].1)
    );
    body
}

/// CSV export of the same filters, with a choice of columns.
fn export_form(filters: &[(&str, String)]) -> String {
    let mut body =
        String::from("<form class=\"bar export\"><span class=mut>Export CSV with columns:</span>");
    for c in COLUMNS {
        let on = if matches!(*c, "fingerprint" | "peer" | "reason") {
            ""
        } else {
            " checked"
        };
        let _ = write!(
            body,
            "<label style=\"flex-direction:row;gap:3px\"><input type=checkbox name=col value={c}{on}>{c}</label>"
        );
    }
    for (k, v) in filters {
        let _ = write!(body, "<input type=hidden name={k} value=\"{}\">", esc(v));
    }
    body.push_str("<button>Export</button></form>");
    body
}

/// Links to the newest page and the next older one (keyset cursor).
fn pager(filters: &[(&str, String)], first_page: bool, next: Option<&str>) -> String {
    let mut body = String::from("<div class=pager>");
    if !first_page {
        let _ = write!(
            body,
            "<a href=\"{}\">« newest</a>",
            esc(&link("/log", filters))
        );
    }
    if let Some(c) = next {
        let mut v = filters.to_vec();
        v.push(("cursor", c.to_string()));
        let _ = write!(body, " <a href=\"{}\">older ›</a>", esc(&link("/log", &v)));
    }
    body.push_str("</div>");
    body
}

pub async fn page(v: Viewer, q: Result<Query<AuditParams>, ApiError>) -> PageResult {
    let Viewer {
        web, p, headers, ..
    } = v;
    let Query(params) = q.map_err(error_page)?;
    let keep = |v: &Option<String>| v.clone().unwrap_or_default();
    let filters: Vec<(&str, String)> = vec![
        ("system", keep(&params.system)),
        ("device", keep(&params.device)),
        ("key", keep(&params.key)),
        ("kind", keep(&params.kind)),
        ("since", keep(&params.since)),
        ("until", keep(&params.until)),
    ];
    let first_page = params.cursor.is_none();
    let q = audit::query(&p, params, audit::DEFAULT_LIMIT).map_err(error_page)?;
    let page = audit::page(&web, q).await.map_err(error_page)?;
    let mut body = String::from("<h1>Operation log</h1>");
    body.push_str(&filter_form(&filters));
    body.push_str(&export_form(&filters));
    let rows: Vec<Value> = page
        .events
        .iter()
        .filter_map(|l| serde_json::to_value(l).ok())
        .collect();
    body.push_str(&table(&rows));
    body.push_str(&pager(&filters, first_page, page.next.as_deref()));
    Ok(render(
        &p,
        &headers,
        Page {
            title: "Operation log".into(),
            nav: "/log",
            live: first_page,
            body,
        },
    ))
}

/// One entry, all its fields, with a copy button.
pub async fn entry(v: Viewer, Path(id): Path<i64>) -> PageResult {
    let Viewer {
        web, p, headers, ..
    } = v;
    let q = crate::store::AuditQuery {
        system: p.system().map(String::from),
        before: Some(id.saturating_add(1)),
        limit: 1,
        ..Default::default()
    };
    let page = audit::page(&web, q).await.map_err(error_page)?;
    let Some(line) = page.events.into_iter().find(|l| l.event.id == id) else {
        return Err(error_page(ApiError::not_found(format!(
            "no log entry {id}"
        ))));
    };
    let pretty = serde_json::to_string_pretty(&line).unwrap_or_default();
    let body = format!(
        "<h1>Log entry {id}</h1><p>{} · {} {}</p><button data-copy=entry>Copy</button><pre id=entry>{}</pre><p><a href=/log>Back to the log</a></p>",
        time_ms(line.event.time_ms),
        esc(&line.event.kind),
        badge(&line.event.result),
        esc(&pretty)
    );
    Ok(render(
        &p,
        &headers,
        Page {
            title: format!("Log entry {id}"),
            nav: "/log",
            live: false,
            body,
        },
    ))
}
