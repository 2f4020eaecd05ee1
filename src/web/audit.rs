//! `GET /api/v1/audit` and `/api/v1/audit.csv`: the audit log filtered by
//! system, kind, device, key and an RFC 3339 time range, newest first.
//!
//! Pages are keyset pages: the cursor holds the last id shown and a hash of
//! the filters, so new events never shift a page, and a cursor used with
//! other filters is refused rather than silently mixing two queries. The CSV
//! export walks the same pages on a blocking thread and hands each one to
//! the response through a small bounded channel: memory stays constant
//! however many events match, and a slow reader slows the walk.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use data_encoding::BASE64URL_NOPAD;
use serde::{Deserialize, Serialize};

use super::Web;
use super::auth::Principal;
use super::error::{ApiError, ApiResult};
use super::input::Query;
use crate::audit::Event;
use crate::protocol::limits::AUDIT_PAGE_MAX;
use crate::store::AuditQuery;

/// Events per page when the caller gives no `limit`.
pub const DEFAULT_LIMIT: usize = 50;

/// Events the CSV export reads per store call: large enough that the
/// per-call cost vanishes, small enough to keep memory flat.
const CSV_PAGE: usize = 1000;

/// CSV chunks (one page each) waiting for the client: the export's memory.
const CSV_IN_FLIGHT: usize = 4;

/// The filters, as query parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditParams {
    pub system: Option<String>,
    pub device: Option<String>,
    /// Key name or fingerprint.
    pub key: Option<String>,
    pub kind: Option<String>,
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<usize>,
    /// CSV only: the columns, comma-separated, in order.
    pub columns: Option<String>,
}

/// Every CSV column, in the default order.
pub const COLUMNS: &[&str] = &[
    "id",
    "time",
    "kind",
    "result",
    "system",
    "key",
    "fingerprint",
    "device",
    "target",
    "bytes_up",
    "bytes_down",
    "duration_ms",
    "peer",
    "detail",
    "reason",
];

/// Unix milliseconds of an RFC 3339 time (`Z` or a `±HH:MM` offset).
pub fn parse_rfc3339(s: &str) -> Result<u64, ApiError> {
    let bad = || {
        ApiError::bad(
            "bad_time",
            format!(
                "time {s:?}: expected RFC 3339, like 2026-11-26T10:00:00Z or 2026-11-26T11:00:00+01:00"
            ),
        )
    };
    let (base, offset_secs): (String, i64) = if s.ends_with('Z') || s.ends_with('z') {
        (s.to_string(), 0)
    } else if s.len() > 6 && matches!(s.as_bytes()[s.len() - 6], b'+' | b'-') {
        let (base, off) = s.split_at(s.len() - 6);
        let (h, m) = off[1..].split_once(':').ok_or_else(bad)?;
        let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
        if h > 23 || m > 59 {
            return Err(bad());
        }
        let sign = if off.starts_with('-') { -1 } else { 1 };
        (format!("{base}Z"), sign * (h * 3600 + m * 60))
    } else {
        return Err(bad());
    };
    let t = humantime::parse_rfc3339(&base).map_err(|_| bad())?;
    let ms = t.duration_since(UNIX_EPOCH).map_err(|_| bad())?.as_millis() as i64;
    u64::try_from(ms - offset_secs * 1000).map_err(|_| bad())
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A short hash of the filters a cursor belongs to.
fn filter_hash(q: &AuditQuery) -> String {
    let text = format!(
        "{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        q.system, q.device, q.key, q.kind, q.since_ms, q.until_ms
    );
    crate::protocol::token::hash_secret(&text)[..12].to_string()
}

pub fn encode_cursor(q: &AuditQuery, last_id: i64) -> String {
    BASE64URL_NOPAD.encode(format!("{last_id}.{}", filter_hash(q)).as_bytes())
}

fn decode_cursor(q: &AuditQuery, cursor: &str) -> Result<i64, ApiError> {
    let bad = |why: &str| ApiError::bad("bad_cursor", format!("cursor {cursor:?}: {why}"));
    let raw = BASE64URL_NOPAD
        .decode(cursor.as_bytes())
        .map_err(|_| bad("not a cursor this API gave"))?;
    let text = String::from_utf8(raw).map_err(|_| bad("not a cursor this API gave"))?;
    let (id, hash) = text
        .split_once('.')
        .ok_or_else(|| bad("not a cursor this API gave"))?;
    let id: i64 = id.parse().map_err(|_| bad("not a cursor this API gave"))?;
    if hash != filter_hash(q) {
        return Err(bad(
            "it belongs to a query with other filters; start again without a cursor",
        ));
    }
    Ok(id)
}

/// The store query of `params`, limited to what `p` may see.
pub fn query(p: &Principal, params: AuditParams, default_limit: usize) -> ApiResult<AuditQuery> {
    let limit = params.limit.unwrap_or(default_limit);
    if limit == 0 || limit > AUDIT_PAGE_MAX {
        return Err(ApiError::bad(
            "bad_limit",
            format!("limit must be between 1 and {AUDIT_PAGE_MAX}"),
        ));
    }
    let mut q = AuditQuery {
        system: p.scope(params.system)?,
        device: params.device,
        key: params.key,
        kind: params.kind,
        since_ms: params.since.as_deref().map(parse_rfc3339).transpose()?,
        until_ms: params.until.as_deref().map(parse_rfc3339).transpose()?,
        before: None,
        limit,
    };
    if let Some(c) = params.cursor.as_deref() {
        q.before = Some(decode_cursor(&q, c)?);
    }
    Ok(q)
}

/// An event as the API shows it: its fields plus the time in RFC 3339.
#[derive(Serialize)]
pub struct Line {
    pub time: String,
    #[serde(flatten)]
    pub event: Event,
}

#[derive(Serialize)]
pub struct Page {
    pub events: Vec<Line>,
    /// Pass as `cursor` for the next (older) page; `null` on the last.
    pub next: Option<String>,
}

/// Reads one page of `q` (after flushing queued events, so whatever
/// happened before the request is on it).
pub async fn page(web: &Web, q: AuditQuery) -> ApiResult<Page> {
    let _ = web.relay.audit().flush().await;
    let q2 = q.clone();
    let mut events = web
        .relay
        .store()
        .call(move |s| s.audit(&q2))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let more = events.len() > q.limit;
    events.truncate(q.limit);
    let next = match events.last() {
        Some(last) if more => Some(encode_cursor(&q, last.id)),
        _ => None,
    };
    Ok(Page {
        events: events
            .into_iter()
            .map(|e| Line {
                time: rfc3339(e.time_ms),
                event: e,
            })
            .collect(),
        next,
    })
}

/// `GET /api/v1/audit`.
pub async fn list(
    State(web): State<Web>,
    p: Principal,
    Query(params): Query<AuditParams>,
) -> ApiResult<axum::Json<Page>> {
    if params.columns.is_some() {
        return Err(ApiError::bad(
            "bad_query",
            "columns is for /api/v1/audit.csv",
        ));
    }
    let q = query(&p, params, DEFAULT_LIMIT)?;
    Ok(axum::Json(page(&web, q).await?))
}

/// The chosen columns (all by default); an unknown one is refused.
pub fn columns(asked: Option<&str>) -> ApiResult<Vec<&'static str>> {
    let Some(asked) = asked.filter(|a| !a.trim().is_empty()) else {
        return Ok(COLUMNS.to_vec());
    };
    asked
        .split(',')
        .map(|c| {
            let c = c.trim();
            COLUMNS.iter().find(|k| **k == c).copied().ok_or_else(|| {
                ApiError::bad(
                    "bad_column",
                    format!("no column {c:?}; columns are {}", COLUMNS.join(",")),
                )
            })
        })
        .collect()
}

fn cell(e: &Event, column: &str) -> String {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    let n = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    match column {
        "id" => e.id.to_string(),
        "time" => rfc3339(e.time_ms),
        "kind" => e.kind.clone(),
        "result" => e.result.clone(),
        "system" => s(&e.system),
        "key" => s(&e.key),
        "fingerprint" => s(&e.fingerprint),
        "device" => s(&e.device),
        "target" => s(&e.target),
        "bytes_up" => n(e.bytes_up),
        "bytes_down" => n(e.bytes_down),
        "duration_ms" => n(e.duration_ms),
        "peer" => s(&e.peer),
        "detail" => s(&e.detail),
        "reason" => s(&e.reason),
        _ => String::new(),
    }
}

/// One CSV field, quoted when it must be (RFC 4180). A field that a
/// spreadsheet would run as a formula gets a leading `'`.
fn field(out: &mut String, s: &str) {
    let formula = s.starts_with(['=', '+', '-', '@']) && s.parse::<f64>().is_err();
    if formula || s.contains([',', '"', '\n', '\r']) {
        out.push('"');
        if formula {
            out.push('\'');
        }
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(s);
    }
}

/// Rows of `events` in `cols`, each ending in CRLF.
pub fn csv_rows(out: &mut String, events: &[Event], cols: &[&str]) {
    for e in events {
        for (i, c) in cols.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            field(out, &cell(e, c));
        }
        out.push_str("\r\n");
    }
}

/// `GET /api/v1/audit.csv`: every matching event (from `cursor` on, if
/// given), streamed.
pub async fn csv(
    State(web): State<Web>,
    p: Principal,
    Query(mut params): Query<AuditParams>,
) -> ApiResult<Response> {
    let cols = columns(params.columns.take().as_deref())?;
    let mut q = query(&p, params, CSV_PAGE)?;
    q.limit = CSV_PAGE;
    let _ = web.relay.audit().flush().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CSV_IN_FLIGHT);
    let store = web.relay.store().clone();
    tokio::task::spawn_blocking(move || {
        let mut head = cols.join(",");
        head.push_str("\r\n");
        if tx.blocking_send(Ok(Bytes::from(head))).is_err() {
            return;
        }
        loop {
            let mut events = match store.audit(&q) {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "audit CSV export");
                    let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            let more = events.len() > q.limit;
            events.truncate(q.limit);
            let mut chunk = String::with_capacity(events.len() * 160);
            csv_rows(&mut chunk, &events, &cols);
            // The client went away: stop reading.
            if tx.blocking_send(Ok(Bytes::from(chunk))).is_err() || !more {
                return;
            }
            q.before = events.last().map(|e| e.id);
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    });
    let mut resp = Body::from_stream(stream).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_DISPOSITION,
        header::HeaderValue::from_static("attachment; filename=\"warren-audit.csv\""),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_with_offsets() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:10Z").unwrap(), 10_000);
        assert_eq!(parse_rfc3339("1970-01-01T01:00:10+01:00").unwrap(), 10_000);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:10.250Z").unwrap(), 10_250);
        for bad in [
            "yesterday",
            "2026-13-01T00:00:00Z",
            "2026-01-01",
            "1h",
            "2026-01-01T00:00:00+25:00",
        ] {
            assert_eq!(parse_rfc3339(bad).unwrap_err().code, "bad_time", "{bad}");
        }
    }

    #[test]
    fn csv_quotes_and_defuses_formulas() {
        let mut e = Event::new("command", "ok").detail("a, \"b\"");
        e.key = Some("=HYPERLINK(1)".into());
        let mut out = String::new();
        csv_rows(&mut out, &[e], &["key", "detail", "bytes_up"]);
        assert_eq!(out, "\"'=HYPERLINK(1)\",\"a, \"\"b\"\"\",\r\n");
        assert_eq!(columns(Some("id, time")).unwrap(), vec!["id", "time"]);
        assert_eq!(columns(Some("id,colour")).unwrap_err().code, "bad_column");
    }

    #[test]
    fn a_cursor_is_bound_to_its_filters() {
        let q = AuditQuery {
            kind: Some("login".into()),
            ..Default::default()
        };
        let c = encode_cursor(&q, 42);
        assert_eq!(decode_cursor(&q, &c).unwrap(), 42);
        let other = AuditQuery::default();
        assert_eq!(decode_cursor(&other, &c).unwrap_err().code, "bad_cursor");
        assert_eq!(decode_cursor(&q, "!!").unwrap_err().code, "bad_cursor");
    }
}
