//! Bandwidth limits in a cluster's database: the same rows as SQLite's
//! `rates` table (see `store/rates.rs`); a trigger notifies every relay.

use anyhow::{Result, bail};

use super::Pg;
use crate::protocol::Name;
use crate::protocol::rate::Rate;
use crate::store::rates::{RateRecord, record};

impl Pg {
    pub fn set_rate(&self, system: &Name, device: Option<&Name>, rate: Option<Rate>) -> Result<()> {
        self.block(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let s = system.as_str();
            if tx
                .query_opt("SELECT 1 FROM systems WHERE name = $1", &[&s])
                .await?
                .is_none()
            {
                bail!("no system {system}");
            }
            if let Some(d) = device {
                let d = d.as_str();
                let key = tx
                    .query_opt(
                        "SELECT 1 FROM keys WHERE system = $1 AND role = 'device' AND name = $2 AND revoked IS NULL",
                        &[&s, &d],
                    )
                    .await?
                    .is_some();
                let seen = tx
                    .query_opt(
                        "SELECT 1 FROM devices WHERE system = $1 AND name = $2",
                        &[&s, &d],
                    )
                    .await?
                    .is_some();
                if !key && !seen {
                    bail!("no device {d} in system {system}");
                }
            }
            let dev = device.map(Name::as_str).unwrap_or("");
            match rate {
                Some(r) => {
                    let (bps, burst) = (r.bytes_per_second as i64, r.burst as i64);
                    tx.execute(
                        "INSERT INTO rates (system, device, bytes_per_second, burst, updated)
                         VALUES ($1, $2, $3, $4, $5)
                         ON CONFLICT (system, device) DO UPDATE SET
                           bytes_per_second = $3, burst = $4, updated = $5",
                        &[&s, &dev, &bps, &burst, &(crate::store::now() as i64)],
                    )
                    .await?
                }
                None => {
                    tx.execute(
                        "DELETE FROM rates WHERE system = $1 AND device = $2",
                        &[&s, &dev],
                    )
                    .await?
                }
            };
            tx.commit().await?;
            Ok(())
        })
    }

    pub fn rates(&self) -> Result<Vec<RateRecord>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT system, device, bytes_per_second, burst FROM rates ORDER BY system, device",
                    &[],
                )
                .await?;
            let mut out = Vec::new();
            for r in rows {
                if let Some(rec) = record(r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?) {
                    out.push(rec);
                }
            }
            Ok(out)
        })
    }
}
