//! `log`: the audit log as a table, JSON lines or CSV, newest first, one
//! page at a time. Shared by `warren admin log`, `ssh relay log` and
//! `warren log`.

use std::fmt::Write as _;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::Serialize;

use super::{Format, Request};
use crate::audit::{Event, now_ms};
use crate::protocol::limits::{AUDIT_PAGE_MAX, AUDIT_PAGE_SIZE};
use crate::render::table;
use crate::store::AuditQuery;

#[derive(Debug, Clone, Default, Args)]
pub struct LogArgs {
    /// Only this system (a controller always sees only its own).
    #[arg(long)]
    pub system: Option<String>,
    /// Only this key (name or SHA256 fingerprint).
    #[arg(long)]
    pub key: Option<String>,
    #[command(flatten)]
    pub filter: LogFilter,
}

/// Everything `log` takes but the system and key (`warren log` has its own
/// `--system` and `--key`: the client's).
#[derive(Debug, Clone, Default, Args)]
pub struct LogFilter {
    /// Only this device.
    #[arg(long)]
    pub device: Option<String>,
    /// Only this kind: login, device_up, device_down, register, stream_open,
    /// stream_close, enroll, key_add, key_revoke, invite_create,
    /// invite_revoke, device_disable, device_enable, labels_set, system_add,
    /// command.
    #[arg(long)]
    pub kind: Option<String>,
    /// Events at or after this time: RFC 3339 ("2026-11-26T10:00:00Z") or an
    /// age ("90m", "2d").
    #[arg(long)]
    pub since: Option<String>,
    /// Events before this time (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// The next page: events older than this id (the last id shown).
    #[arg(long)]
    pub before: Option<i64>,
    /// Events per page.
    #[arg(long, default_value_t = AUDIT_PAGE_SIZE)]
    pub limit: usize,
    /// One JSON object per line.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// CSV with a header line, for spreadsheets.
    #[arg(long)]
    pub csv: bool,
}

/// A time given as RFC 3339 or as an age before now; Unix milliseconds.
pub fn parse_time(s: &str) -> Result<u64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis() as u64);
    }
    let age = humantime::parse_duration(s).with_context(|| {
        format!("time {s:?}: expected RFC 3339 (2026-11-26T10:00:00Z) or an age (90m, 2d)")
    })?;
    Ok(now_ms().saturating_sub(age.as_millis() as u64))
}

impl LogArgs {
    pub fn query(&self) -> Result<AuditQuery> {
        let mut q = self.filter.query()?;
        q.system = self.system.clone();
        q.key = self.key.clone();
        Ok(q)
    }

    /// The typed request, and how its reply is printed.
    pub fn into_request(self) -> Result<(Request, Format)> {
        let format = self.filter.format();
        Ok((
            Request::Log {
                query: self.query()?,
            },
            format,
        ))
    }
}

impl LogFilter {
    pub fn query(&self) -> Result<AuditQuery> {
        if self.limit == 0 || self.limit > AUDIT_PAGE_MAX {
            bail!("--limit must be between 1 and {AUDIT_PAGE_MAX}");
        }
        Ok(AuditQuery {
            system: None,
            device: self.device.clone(),
            key: None,
            kind: self.kind.clone(),
            since_ms: self.since.as_deref().map(parse_time).transpose()?,
            until_ms: self.until.as_deref().map(parse_time).transpose()?,
            before: self.before,
            limit: self.limit,
        })
    }

    /// The same arguments as words, to run `log` at the relay.
    pub fn to_words(&self) -> Vec<String> {
        let mut w = vec!["log".to_string()];
        for (flag, v) in [
            ("--device", &self.device),
            ("--kind", &self.kind),
            ("--since", &self.since),
            ("--until", &self.until),
        ] {
            if let Some(v) = v {
                w.push(flag.into());
                w.push(v.clone());
            }
        }
        if let Some(b) = self.before {
            w.push("--before".into());
            w.push(b.to_string());
        }
        w.push("--limit".into());
        w.push(self.limit.to_string());
        if self.json {
            w.push("--json".into());
        }
        if self.csv {
            w.push("--csv".into());
        }
        w
    }

    /// `--json`, `--csv` or a table.
    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else if self.csv {
            Format::Csv
        } else {
            Format::Text
        }
    }

    /// Renders one page (see [`render_page`]).
    pub fn render(&self, events: &[Event]) -> String {
        render_page(events, self.limit, self.format())
    }
}

/// Renders one page of `limit` events. `events` may hold one more: that one
/// is not shown, it only says another page follows.
pub fn render_page(events: &[Event], limit: usize, format: Format) -> String {
    let more = events.len() > limit;
    let events = &events[..events.len().min(limit)];
    match format {
        Format::Json => {
            let mut out = String::new();
            for e in events {
                out.push_str(&serde_json::to_string(&Line::from(e)).unwrap_or_default());
                out.push('\n');
            }
            out
        }
        Format::Csv => csv(events),
        Format::Text => {
            let mut rows = vec![
                [
                    "ID", "TIME", "KIND", "RESULT", "SYSTEM", "KEY", "DEVICE", "TARGET", "UP",
                    "DOWN", "MS", "PEER", "DETAIL",
                ]
                .map(String::from)
                .to_vec(),
            ];
            for e in events {
                rows.push(cells(e).into_iter().map(|c| or_dash(&c)).collect());
            }
            let mut out = table(&rows);
            if more && let Some(last) = events.last() {
                let _ = writeln!(out, "-- more: add --before {} --", last.id);
            }
            out
        }
    }
}

/// An event as a JSON line: its fields plus the time in RFC 3339.
#[derive(Serialize)]
struct Line<'a> {
    time: String,
    #[serde(flatten)]
    event: &'a Event,
}

impl<'a> From<&'a Event> for Line<'a> {
    fn from(event: &'a Event) -> Self {
        Line {
            time: rfc3339(event.time_ms),
            event,
        }
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

fn cells(e: &Event) -> Vec<String> {
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let num = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_default();
    vec![
        e.id.to_string(),
        rfc3339(e.time_ms),
        e.kind.clone(),
        e.result.clone(),
        opt(&e.system),
        opt(&e.key),
        opt(&e.device),
        opt(&e.target),
        num(e.bytes_up),
        num(e.bytes_down),
        num(e.duration_ms),
        opt(&e.peer),
        opt(&e.detail),
    ]
}

fn csv(events: &[Event]) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    let mut out = String::from(
        "id,time,kind,result,system,key,device,target,bytes_up,bytes_down,duration_ms,peer,detail,fingerprint\n",
    );
    for e in events {
        let mut c = cells(e);
        c.push(e.fingerprint.clone().unwrap_or_default());
        let line: Vec<String> = c.iter().map(|s| field(s)).collect();
        out.push_str(&line.join(","));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::kind;

    #[test]
    fn times_parse_as_rfc3339_or_age() {
        assert_eq!(parse_time("1970-01-01T00:00:10Z").unwrap(), 10_000);
        let an_hour_ago = parse_time("1h").unwrap();
        assert!(now_ms() - an_hour_ago >= 3_600_000);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn csv_quotes_and_table_says_more() {
        let mut e = Event::new(kind::STREAM_CLOSE, "closed").detail("a, \"b\"");
        e.id = 7;
        let args = LogFilter {
            csv: true,
            limit: 1,
            ..Default::default()
        };
        let out = args.render(&[e.clone()]);
        assert!(out.contains("\"a, \"\"b\"\"\""), "{out}");
        let args = LogFilter {
            limit: 1,
            ..Default::default()
        };
        let mut older = e.clone();
        older.id = 6;
        let out = args.render(&[e, older]);
        assert!(out.contains("-- more: add --before 7 --"), "{out}");
        assert_eq!(out.lines().count(), 3, "{out}");
    }
}
