//! Audit events as stored (the [`Event`] record and its kinds), and the audit
//! table: append in batches, query newest first with a cursor, prune.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use rusqlite::{Row, params};
use serde::{Deserialize, Serialize};

use super::Store;
use crate::ssh::SpliceStats;

/// Event kinds, as stored and as `--kind` filters on.
pub mod kind {
    pub const LOGIN: &str = "login";
    /// Registered keys asked about without a signature (`publickey` queries)
    /// and never used to log in: someone testing which keys the relay knows.
    pub const KEY_PROBE: &str = "key_probe";
    pub const DEVICE_UP: &str = "device_up";
    pub const DEVICE_DOWN: &str = "device_down";
    pub const REGISTER: &str = "register";
    pub const STREAM_OPEN: &str = "stream_open";
    pub const STREAM_CLOSE: &str = "stream_close";
    pub const ENROLL: &str = "enroll";
    pub const KEY_ADD: &str = "key_add";
    pub const KEY_REVOKE: &str = "key_revoke";
    pub const KEY_REVOKED_DISCONNECT: &str = "key_revoked_disconnect";
    pub const INVITE_CREATE: &str = "invite_create";
    pub const INVITE_REVOKE: &str = "invite_revoke";
    pub const DEVICE_DISABLE: &str = "device_disable";
    pub const DEVICE_ENABLE: &str = "device_enable";
    /// A system's or a device's bandwidth limit set or cleared.
    pub const RATE_SET: &str = "rate_set";
    /// A device's admin labels set, hidden or reset.
    pub const LABELS_SET: &str = "labels_set";
    pub const SYSTEM_ADD: &str = "system_add";
    pub const COMMAND: &str = "command";
    pub const PUBLIC_PORT: &str = "public_port";
    pub const PUBLIC_CONNECTION: &str = "public_connection";
    pub const EXPOSE_ADD: &str = "expose_add";
    pub const EXPOSE_RM: &str = "expose_rm";
    /// A console login link made, or traded for a session (or refused).
    pub const CONSOLE_LOGIN: &str = "console_login";
    /// Console sessions ended (one by logout, or all by an admin).
    pub const CONSOLE_LOGOUT: &str = "console_logout";
    pub const TOKEN_CREATE: &str = "token_create";
    pub const TOKEN_REVOKE: &str = "token_revoke";
}

pub const OK: &str = "ok";
pub const REFUSED: &str = "refused";

/// One audit event. Fields that do not apply to a kind stay empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Row id once stored (newest is highest); 0 before.
    pub id: i64,
    /// Unix milliseconds.
    pub time_ms: u64,
    pub kind: String,
    /// `ok`, `refused`, `closed`, `failed`.
    pub result: String,
    pub system: Option<String>,
    /// Name of the key that acted (controller, device, admin).
    pub key: Option<String>,
    pub fingerprint: Option<String>,
    pub device: Option<String>,
    /// `host:port` of a stream.
    pub target: Option<String>,
    /// Bytes from the controller to the device.
    pub bytes_up: Option<u64>,
    /// Bytes from the device to the controller.
    pub bytes_down: Option<u64>,
    pub duration_ms: Option<u64>,
    pub peer: Option<String>,
    pub detail: Option<String>,
    /// A refusal's stable code (`Refusal::code`), beside its text in
    /// `detail`; absent from older rows and from events that are no refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

impl Event {
    pub fn new(kind: &str, result: &str) -> Event {
        Event {
            time_ms: now_ms(),
            kind: kind.to_string(),
            result: result.to_string(),
            ..Event::default()
        }
    }

    pub fn system(mut self, s: impl Into<String>) -> Event {
        self.system = Some(s.into());
        self
    }

    pub fn key(mut self, name: impl Into<String>, fingerprint: impl Into<String>) -> Event {
        self.key = Some(name.into());
        self.fingerprint = Some(fingerprint.into());
        self
    }

    pub fn key_name(mut self, name: impl Into<String>) -> Event {
        self.key = Some(name.into());
        self
    }

    pub fn device(mut self, d: impl Into<String>) -> Event {
        self.device = Some(d.into());
        self
    }

    pub fn target(mut self, t: impl Into<String>) -> Event {
        self.target = Some(t.into());
        self
    }

    pub fn peer(mut self, p: SocketAddr) -> Event {
        self.peer = Some(p.to_string());
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Event {
        self.detail = Some(d.into());
        self
    }

    pub fn reason(mut self, code: &str) -> Event {
        self.reason = Some(code.to_string());
        self
    }

    pub fn transfer(mut self, stats: SpliceStats, took: Duration) -> Event {
        self.bytes_up = Some(stats.sent);
        self.bytes_down = Some(stats.received);
        self.duration_ms = Some(took.as_millis() as u64);
        self
    }

    /// The structured log line for this event.
    pub fn log(&self) {
        let e = self;
        macro_rules! line {
            ($level:ident) => {
                tracing::$level!(
                    target: "audit",
                    event = %e.kind,
                    result = %e.result,
                    system = e.system.as_deref(),
                    key = e.key.as_deref(),
                    fingerprint = e.fingerprint.as_deref(),
                    device = e.device.as_deref(),
                    target_addr = e.target.as_deref(),
                    bytes_up = e.bytes_up,
                    bytes_down = e.bytes_down,
                    duration_ms = e.duration_ms,
                    peer = e.peer.as_deref(),
                    detail = e.detail.as_deref(),
                    reason = e.reason.as_deref(),
                )
            };
        }
        if self.result == REFUSED || self.result == "failed" {
            line!(warn);
        } else {
            line!(info);
        }
    }
}

/// What `log` asks for. Every filter is optional; `before` is the cursor:
/// only events with a smaller id (the next page).
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    pub system: Option<String>,
    pub device: Option<String>,
    /// Key name or fingerprint.
    pub key: Option<String>,
    pub kind: Option<String>,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub before: Option<i64>,
    pub limit: usize,
}

pub(crate) const COLUMNS: &str = "id, time_ms, kind, result, system, key, fingerprint, device, target, bytes_up, bytes_down, duration_ms, peer, detail, reason";

/// A value bound to the statement [`AuditQuery::sql`] builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
}

impl AuditQuery {
    /// The statement for this query, with a condition for each filter
    /// given and none for those left out, so that the database can use
    /// the index of a filter (device, kind, system, time) rather than scan
    /// every row through `(? IS NULL OR …)`; and its values in order.
    /// `mark(n)` writes the n-th placeholder (`?n` for SQLite, `$n` for
    /// PostgreSQL).
    pub(crate) fn sql(&self, mark: fn(usize) -> String) -> (String, Vec<Arg>) {
        let mut conds = Vec::new();
        let mut args = Vec::new();
        let mut add = |cond: &str, arg: Arg| {
            args.push(arg);
            conds.push(cond.replace('@', &mark(args.len())));
        };
        let text = |v: &Option<String>| v.clone().map(Arg::Text);
        let int = |v: Option<u64>| v.map(|v| Arg::Int(v as i64));
        let filters = [
            ("system = @", text(&self.system)),
            ("device = @", text(&self.device)),
            ("(key = @ OR fingerprint = @)", text(&self.key)),
            ("kind = @", text(&self.kind)),
            ("time_ms >= @", int(self.since_ms)),
            ("time_ms < @", int(self.until_ms)),
            ("id < @", self.before.map(Arg::Int)),
        ];
        for (cond, arg) in filters {
            if let Some(arg) = arg {
                add(cond, arg);
            }
        }
        let mut sql = format!("SELECT {COLUMNS} FROM audit");
        if !conds.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&conds.join(" AND "));
        }
        args.push(Arg::Int((self.limit + 1) as i64));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {}", mark(args.len())));
        (sql, args)
    }
}

fn event(r: &Row<'_>) -> rusqlite::Result<Event> {
    let opt_u64 = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(i)?.map(|v| v.max(0) as u64))
    };
    Ok(Event {
        id: r.get(0)?,
        time_ms: r.get::<_, i64>(1)?.max(0) as u64,
        kind: r.get(2)?,
        result: r.get(3)?,
        system: r.get(4)?,
        key: r.get(5)?,
        fingerprint: r.get(6)?,
        device: r.get(7)?,
        target: r.get(8)?,
        bytes_up: opt_u64(9)?,
        bytes_down: opt_u64(10)?,
        duration_ms: opt_u64(11)?,
        peer: r.get(12)?,
        detail: r.get(13)?,
        reason: r.get(14)?,
    })
}

impl Store {
    /// Appends events in one transaction (durable when this returns).
    pub fn append_audit(&self, events: &[Event]) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.append_audit(events);
        }
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut st = tx.prepare_cached(
                "INSERT INTO audit (time_ms, kind, result, system, key, fingerprint, device, target, bytes_up, bytes_down, duration_ms, peer, detail, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            )?;
            for e in events {
                st.execute(params![
                    e.time_ms as i64,
                    e.kind,
                    e.result,
                    e.system,
                    e.key,
                    e.fingerprint,
                    e.device,
                    e.target,
                    e.bytes_up.map(|v| v as i64),
                    e.bytes_down.map(|v| v as i64),
                    e.duration_ms.map(|v| v as i64),
                    e.peer,
                    e.detail,
                    e.reason,
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Events matching `q`, newest first, at most `q.limit + 1` (one more
    /// than a page, so the caller knows whether another page follows).
    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<Event>> {
        if let Some(pg) = &self.pg {
            return pg.audit(q);
        }
        let (sql, args) = q.sql(|n| format!("?{n}"));
        let conn = self.read();
        let mut st = conn.prepare_cached(&sql)?;
        let values = args.into_iter().map(|a| match a {
            Arg::Text(t) => rusqlite::types::Value::Text(t),
            Arg::Int(i) => rusqlite::types::Value::Integer(i),
        });
        let rows = st.query_map(rusqlite::params_from_iter(values), event)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes events older than `before_ms`; returns how many.
    pub fn prune_audit(&self, before_ms: u64) -> Result<usize> {
        if let Some(pg) = &self.pg {
            return pg.prune_audit(before_ms);
        }
        Ok(self
            .lock()
            .execute("DELETE FROM audit WHERE time_ms < ?1", [before_ms as i64])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_code_is_stored_and_shown_in_json_only_when_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let refused = Event::new(kind::STREAM_OPEN, REFUSED)
            .detail("device dev1 is disabled by an admin")
            .reason("disabled");
        let plain = Event::new(kind::LOGIN, OK);
        store.append_audit(&[refused, plain]).unwrap();
        let got = store
            .audit(&AuditQuery {
                limit: 10,
                ..AuditQuery::default()
            })
            .unwrap();
        assert_eq!(got[0].reason, None);
        assert_eq!(got[1].reason.as_deref(), Some("disabled"));
        let json = serde_json::to_string(&got[1]).unwrap();
        assert!(json.contains(r#""reason":"disabled""#), "{json}");
        let json = serde_json::to_string(&got[0]).unwrap();
        assert!(!json.contains("reason"), "{json}");
    }

    #[test]
    fn the_statement_holds_only_the_filters_given() {
        let q = AuditQuery {
            device: Some("dev1".into()),
            key: Some("alice".into()),
            since_ms: Some(5),
            limit: 10,
            ..Default::default()
        };
        let (sql, args) = q.sql(|n| format!("${n}"));
        assert_eq!(
            sql,
            format!(
                "SELECT {COLUMNS} FROM audit WHERE device = $1 AND (key = $2 OR fingerprint = $2) AND time_ms >= $3 ORDER BY id DESC LIMIT $4"
            )
        );
        assert_eq!(
            args,
            [
                Arg::Text("dev1".into()),
                Arg::Text("alice".into()),
                Arg::Int(5),
                Arg::Int(11)
            ]
        );
        let (sql, args) = AuditQuery::default().sql(|n| format!("?{n}"));
        assert_eq!(
            sql,
            format!("SELECT {COLUMNS} FROM audit ORDER BY id DESC LIMIT ?1")
        );
        assert_eq!(args, [Arg::Int(1)]);
    }

    #[test]
    fn a_device_range_uses_an_index_not_a_scan() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let q = AuditQuery {
            system: Some("tau".into()),
            device: Some("dev1".into()),
            since_ms: Some(1),
            until_ms: Some(2),
            limit: 100,
            ..Default::default()
        };
        let (sql, args) = q.sql(|n| format!("?{n}"));
        let conn = store.read();
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let values = args.into_iter().map(|a| match a {
            Arg::Text(t) => rusqlite::types::Value::Text(t),
            Arg::Int(i) => rusqlite::types::Value::Integer(i),
        });
        let plan: Vec<String> = st
            .query_map(rusqlite::params_from_iter(values), |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let plan = plan.join("; ");
        assert!(plan.contains("USING INDEX"), "{plan}");
    }
}
