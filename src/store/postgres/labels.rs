//! Admin labels in a cluster's database: the same rows as SQLite's
//! `device_labels` table (see `store/labels.rs`).

use anyhow::{Result, bail};

use super::Pg;
use crate::protocol::Name;
use crate::protocol::limits::MAX_LABELS;
use crate::store::labels::{AdminLabel, LabelEdit, too_many};

fn label(r: &tokio_postgres::Row) -> Result<AdminLabel> {
    Ok(AdminLabel {
        system: r.try_get(0)?,
        name: r.try_get(1)?,
        key: r.try_get(2)?,
        value: r.try_get(3)?,
    })
}

impl Pg {
    pub fn set_labels(
        &self,
        system: &Name,
        name: &Name,
        edit: &LabelEdit,
    ) -> Result<Vec<AdminLabel>> {
        self.block(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            super::keys::serialize(&tx).await?;
            let (s, n) = (system.as_str(), name.as_str());
            let key = tx
                .query_opt(
                    "SELECT 1 FROM keys WHERE system = $1 AND role = 'device' AND name = $2 AND revoked IS NULL",
                    &[&s, &n],
                )
                .await?
                .is_some();
            let seen = tx
                .query_opt(
                    "SELECT 1 FROM devices WHERE system = $1 AND name = $2",
                    &[&s, &n],
                )
                .await?
                .is_some();
            if !key && !seen {
                bail!("no device {name} in system {system}");
            }
            let t = crate::store::now() as i64;
            for (k, v) in edit.writes() {
                tx.execute(
                    "INSERT INTO device_labels (system, name, key, value, updated) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (system, name, key) DO UPDATE SET value = $4, updated = $5",
                    &[&s, &n, &k, &v, &t],
                )
                .await?;
            }
            for k in &edit.reset {
                tx.execute(
                    "DELETE FROM device_labels WHERE system = $1 AND name = $2 AND key = $3",
                    &[&s, &n, k],
                )
                .await?;
            }
            let rows = tx
                .query(
                    "SELECT system, name, key, value FROM device_labels WHERE system = $1 AND name = $2 ORDER BY key",
                    &[&s, &n],
                )
                .await?;
            let rows = rows.iter().map(label).collect::<Result<Vec<_>>>()?;
            if rows.len() > MAX_LABELS {
                return Err(too_many(name, system));
            }
            tx.commit().await?;
            Ok(rows)
        })
    }

    pub fn admin_labels(&self, system: Option<&str>) -> Result<Vec<AdminLabel>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT system, name, key, value FROM device_labels
                     WHERE $1::TEXT IS NULL OR system = $1 ORDER BY system, name, key",
                    &[&system],
                )
                .await?;
            rows.iter().map(label).collect()
        })
    }
}
