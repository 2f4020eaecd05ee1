//! `warren admin migrate --to postgres://…`: copies a single relay's SQLite
//! state into PostgreSQL. Every row goes in with `ON CONFLICT DO NOTHING`
//! under its own key, so a second run copies nothing and changes nothing;
//! afterwards every source row is looked up in PostgreSQL and compared,
//! column by column.

use anyhow::{Result, bail};
use rusqlite::types::Value;
use serde::Serialize;
use tokio_postgres::types::ToSql;

use super::Pg;
use crate::store::Store;

/// One table: its columns as SQLite selects them (`I` integer, `T` text),
/// and the key that identifies a row.
struct Table {
    name: &'static str,
    columns: &'static [(&'static str, char)],
    key: &'static [&'static str],
    /// An identity sequence to move past the copied ids.
    sequence: Option<&'static str>,
}

const TABLES: &[Table] = &[
    Table {
        name: "systems",
        columns: &[("name", 'T'), ("created", 'I')],
        key: &["name"],
        sequence: None,
    },
    Table {
        name: "keys",
        columns: &[
            ("fingerprint", 'T'),
            ("system", 'T'),
            ("role", 'T'),
            ("name", 'T'),
            ("public_key", 'T'),
            ("created", 'I'),
            ("revoked", 'I'),
            ("enrolled_via", 'T'),
        ],
        key: &["fingerprint"],
        sequence: None,
    },
    Table {
        name: "devices",
        columns: &[
            ("system", 'T'),
            ("name", 'T'),
            ("since", 'I'),
            ("last_seen", 'I'),
            ("address", 'T'),
            ("ports", 'T'),
            ("version", 'T'),
            ("labels", 'T'),
            ("disabled", 'I'),
        ],
        key: &["system", "name"],
        sequence: None,
    },
    Table {
        name: "gateways",
        columns: &[
            ("id", 'I'),
            ("system", 'T'),
            ("name", 'T'),
            ("scope", 'T'),
            ("ports", 'T'),
            ("permit", 'T'),
            ("listens", 'T'),
            ("created", 'I'),
            ("updated", 'I'),
        ],
        key: &["system", "name"],
        sequence: Some("gateways_id_seq"),
    },
    Table {
        name: "gateway_associations",
        columns: &[
            ("system", 'T'),
            ("name", 'T'),
            ("network", 'T'),
            ("created", 'I'),
        ],
        key: &["system", "name", "network"],
        sequence: None,
    },
    Table {
        name: "gateway_rules",
        columns: &[
            ("system", 'T'),
            ("name", 'T'),
            ("target", 'T'),
            ("created", 'I'),
        ],
        key: &["system", "name", "target"],
        sequence: None,
    },
    Table {
        name: "invites",
        columns: &[
            ("id", 'T'),
            ("secret_hash", 'T'),
            ("system", 'T'),
            ("role", 'T'),
            ("name", 'T'),
            ("created", 'I'),
            ("expires", 'I'),
            ("used", 'I'),
            ("used_by", 'T'),
            ("revoked", 'I'),
        ],
        key: &["id"],
        sequence: None,
    },
    Table {
        name: "audit",
        columns: &[
            ("id", 'I'),
            ("time_ms", 'I'),
            ("kind", 'T'),
            ("result", 'T'),
            ("system", 'T'),
            ("key", 'T'),
            ("fingerprint", 'T'),
            ("device", 'T'),
            ("target", 'T'),
            ("bytes_up", 'I'),
            ("bytes_down", 'I'),
            ("duration_ms", 'I'),
            ("peer", 'T'),
            ("detail", 'T'),
            ("reason", 'T'),
        ],
        key: &["id"],
        sequence: Some("audit_id_seq"),
    },
    Table {
        name: "relay_settings",
        columns: &[("name", 'T'), ("value", 'T')],
        key: &["name"],
        sequence: None,
    },
    Table {
        name: "exposures",
        columns: &[
            ("port", 'I'),
            ("system", 'T'),
            ("device", 'T'),
            ("device_port", 'I'),
            ("allow_from", 'T'),
            ("created", 'I'),
        ],
        key: &["port"],
        sequence: None,
    },
    Table {
        name: "on_demand",
        columns: &[
            ("system", 'T'),
            ("name", 'T'),
            ("state", 'T'),
            ("reason", 'T'),
            ("at", 'T'),
        ],
        key: &["system", "name"],
        sequence: None,
    },
    Table {
        name: "rates",
        columns: &[
            ("system", 'T'),
            ("device", 'T'),
            ("bytes_per_second", 'I'),
            ("burst", 'I'),
            ("updated", 'I'),
        ],
        key: &["system", "device"],
        sequence: None,
    },
    Table {
        name: "device_labels",
        columns: &[
            ("system", 'T'),
            ("name", 'T'),
            ("key", 'T'),
            ("value", 'T'),
            ("updated", 'I'),
        ],
        key: &["system", "name", "key"],
        sequence: None,
    },
    Table {
        name: "web_credentials",
        columns: &[
            ("id", 'T'),
            ("kind", 'T'),
            ("secret_hash", 'T'),
            ("system", 'T'),
            ("role", 'T'),
            ("who", 'T'),
            ("created", 'I'),
            ("expires", 'I'),
            ("used", 'I'),
            ("revoked", 'I'),
        ],
        key: &["id"],
        sequence: None,
    },
];

/// What one table's copy did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Copied {
    pub table: String,
    /// Rows in the SQLite database.
    pub rows: u64,
    /// Of those, rows this run wrote (the rest were there already).
    pub inserted: u64,
}

/// A column value, typed as PostgreSQL wants it.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Int(Option<i64>),
    Text(Option<String>),
}

impl Cell {
    fn param(&self) -> &(dyn ToSql + Sync) {
        match self {
            Cell::Int(v) => v,
            Cell::Text(v) => v,
        }
    }
}

fn cell(v: Value, kind: char, table: &str, column: &str) -> Result<Cell> {
    Ok(match (kind, v) {
        ('I', Value::Integer(i)) => Cell::Int(Some(i)),
        ('I', Value::Null) => Cell::Int(None),
        ('T', Value::Text(t)) => Cell::Text(Some(t)),
        ('T', Value::Null) => Cell::Text(None),
        (_, other) => bail!("{table}.{column} holds an unexpected value {other:?}"),
    })
}

fn read_table(src: &Store, t: &Table) -> Result<Vec<Vec<Cell>>> {
    let cols: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
    let conn = src.read();
    let mut st = conn.prepare(&format!("SELECT {} FROM {}", cols.join(", "), t.name))?;
    let mut rows = st.query([])?;
    let mut out = Vec::new();
    while let Some(r) = rows.next()? {
        let mut row = Vec::new();
        for (i, (c, kind)) in t.columns.iter().enumerate() {
            row.push(cell(r.get::<_, Value>(i)?, *kind, t.name, c)?);
        }
        out.push(row);
    }
    Ok(out)
}

impl Pg {
    /// Copies every table of `src` (a SQLite store) here, then checks that
    /// each source row is here with the same values.
    pub fn copy_from(&self, src: &Store) -> Result<Vec<Copied>> {
        if src.postgres().is_some() {
            bail!("the source of a migration is a relay's SQLite database (--data)");
        }
        let mut report = Vec::new();
        for t in TABLES {
            let rows = read_table(src, t)?;
            let inserted = self.block(insert_rows(self, t, &rows))?;
            self.block(check_rows(self, t, &rows))?;
            report.push(Copied {
                table: t.name.to_string(),
                rows: rows.len() as u64,
                inserted,
            });
        }
        Ok(report)
    }
}

async fn insert_rows(pg: &Pg, t: &Table, rows: &[Vec<Cell>]) -> Result<u64> {
    let mut c = pg.client().await?;
    let tx = c.transaction().await?;
    let cols: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
    let marks: Vec<String> = (1..=cols.len()).map(|i| format!("${i}")).collect();
    let st = tx
        .prepare(&format!(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
            t.name,
            cols.join(", "),
            marks.join(", ")
        ))
        .await?;
    let mut inserted = 0;
    for row in rows {
        let params: Vec<&(dyn ToSql + Sync)> = row.iter().map(Cell::param).collect();
        inserted += tx.execute(&st, &params).await?;
    }
    if let Some(seq) = t.sequence {
        tx.execute(
            &format!(
                "SELECT setval('{seq}', GREATEST((SELECT COALESCE(max(id), 0) FROM {}), 1))",
                t.name
            ),
            &[],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(inserted)
}

async fn check_rows(pg: &Pg, t: &Table, rows: &[Vec<Cell>]) -> Result<()> {
    let c = pg.client().await?;
    let cols: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
    let key_at: Vec<usize> = t
        .key
        .iter()
        .filter_map(|k| cols.iter().position(|c| c == k))
        .collect();
    let cond: Vec<String> = t
        .key
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} = ${}", i + 1))
        .collect();
    let st = c
        .prepare(&format!(
            "SELECT {} FROM {} WHERE {}",
            cols.join(", "),
            t.name,
            cond.join(" AND ")
        ))
        .await?;
    for row in rows {
        let params: Vec<&(dyn ToSql + Sync)> = key_at.iter().map(|&i| row[i].param()).collect();
        let Some(found) = c.query_opt(&st, &params).await? else {
            bail!(
                "check failed: a row of {} is missing after the copy",
                t.name
            );
        };
        for (i, (col, kind)) in t.columns.iter().enumerate() {
            let got = match kind {
                'I' => Cell::Int(found.try_get(i)?),
                _ => Cell::Text(found.try_get(i)?),
            };
            // Rows that were there before may have moved on (a cluster
            // already running): the key columns and every column of a row
            // written now must match.
            if got != row[i] && (t.key.contains(col) || t.name != "devices") {
                bail!(
                    "check failed: {}.{col} differs in PostgreSQL ({got:?}) from SQLite ({:?}); the database already holds other state for this row",
                    t.name,
                    row[i]
                );
            }
        }
    }
    Ok(())
}
