//! The audit table on PostgreSQL: append in batches, query newest first
//! with a cursor, prune.

use anyhow::Result;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::Pg;
use super::keys::u;
use crate::store::AuditQuery;
use crate::store::audit::{Arg, Event};

fn event(r: &Row) -> Result<Event> {
    let opt = |i: usize| -> Result<Option<u64>> { Ok(r.try_get::<_, Option<i64>>(i)?.map(u)) };
    Ok(Event {
        id: r.try_get(0)?,
        time_ms: u(r.try_get(1)?),
        kind: r.try_get(2)?,
        result: r.try_get(3)?,
        system: r.try_get(4)?,
        key: r.try_get(5)?,
        fingerprint: r.try_get(6)?,
        device: r.try_get(7)?,
        target: r.try_get(8)?,
        bytes_up: opt(9)?,
        bytes_down: opt(10)?,
        duration_ms: opt(11)?,
        peer: r.try_get(12)?,
        detail: r.try_get(13)?,
        reason: r.try_get(14)?,
    })
}

fn i(v: Option<u64>) -> Option<i64> {
    v.map(|v| v as i64)
}

impl Pg {
    pub fn append_audit(&self, events: &[Event]) -> Result<()> {
        self.block(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let st = tx
                .prepare(
                    "INSERT INTO audit (time_ms, kind, result, system, key, fingerprint, device, target, bytes_up, bytes_down, duration_ms, peer, detail, reason)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                )
                .await?;
            for e in events {
                tx.execute(
                    &st,
                    &[
                        &(e.time_ms as i64),
                        &e.kind,
                        &e.result,
                        &e.system,
                        &e.key,
                        &e.fingerprint,
                        &e.device,
                        &e.target,
                        &i(e.bytes_up),
                        &i(e.bytes_down),
                        &i(e.duration_ms),
                        &e.peer,
                        &e.detail,
                        &e.reason,
                    ],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    pub fn audit(&self, q: &AuditQuery) -> Result<Vec<Event>> {
        let (sql, args) = q.sql(|n| format!("${n}"));
        let values: Vec<Box<dyn ToSql + Sync + Send>> = args
            .into_iter()
            .map(|a| -> Box<dyn ToSql + Sync + Send> {
                match a {
                    Arg::Text(t) => Box::new(t),
                    Arg::Int(i) => Box::new(i),
                }
            })
            .collect();
        self.block(async {
            let c = self.client().await?;
            let params: Vec<&(dyn ToSql + Sync)> = values
                .iter()
                .map(|v| v.as_ref() as &(dyn ToSql + Sync))
                .collect();
            let rows = c.query(&sql, &params).await?;
            rows.iter().map(event).collect()
        })
    }

    pub fn prune_audit(&self, before_ms: u64) -> Result<usize> {
        self.block(async {
            let c = self.client().await?;
            Ok(c.execute(
                "DELETE FROM audit WHERE time_ms < $1",
                &[&(before_ms as i64)],
            )
            .await? as usize)
        })
    }
}
