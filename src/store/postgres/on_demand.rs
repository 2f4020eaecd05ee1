//! On-demand devices in a cluster's database: the same rows as SQLite's
//! `on_demand` table (see `store/on_demand.rs`).

use std::time::Duration;

use anyhow::Result;

use super::Pg;
use crate::store::OnDemandRecord;

const COLUMNS: &str = "SELECT system, name, state, reason, at FROM on_demand";

fn record(r: &tokio_postgres::Row) -> Result<OnDemandRecord> {
    Ok(OnDemandRecord {
        system: r.try_get(0)?,
        name: r.try_get(1)?,
        state: r.try_get(2)?,
        reason: r.try_get(3)?,
        at: r.try_get(4)?,
    })
}

impl Pg {
    /// Claims the wake of `system/name` for this relay, unless another
    /// relay claimed it less than `timeout` ago: the claim's time if this
    /// relay publishes the `connect`, `None` if another relay does.
    pub fn claim_wake(&self, system: &str, name: &str, timeout: Duration) -> Result<Option<i64>> {
        let relay = self.relay_id().unwrap_or_default();
        let now = crate::store::audit::now_ms() as i64;
        let stale = now - timeout.as_millis() as i64;
        self.block(async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "INSERT INTO wakes (system, name, relay, sent) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (system, name) DO UPDATE SET relay = $3, sent = $4
                       WHERE wakes.sent < $5
                     RETURNING sent",
                    &[&system, &name, &relay, &now, &stale],
                )
                .await?;
            Ok(row.map(|_| now))
        })
    }

    /// Ends this relay's wake claim made at `sent` (the next wake sends again).
    pub fn end_wake(&self, system: &str, name: &str, sent: i64) -> Result<()> {
        let relay = self.relay_id().unwrap_or_default();
        self.block(async {
            let c = self.client().await?;
            c.execute(
                "DELETE FROM wakes WHERE system = $1 AND name = $2 AND relay = $3 AND sent = $4",
                &[&system, &name, &relay, &sent],
            )
            .await?;
            Ok(())
        })
    }

    pub fn set_on_demand(&self, system: &str, name: &str, on_demand: bool) -> Result<()> {
        self.block(async {
            let c = self.client().await?;
            set_in(&c, system, name, on_demand).await
        })
    }

    pub fn report_state(
        &self,
        system: &str,
        name: &str,
        state: &str,
        reason: Option<&str>,
        at: &str,
    ) -> Result<bool> {
        self.block(async {
            let c = self.client().await?;
            let n = c
                .execute(
                    "UPDATE on_demand SET state = $3, reason = $4, at = $5 WHERE system = $1 AND name = $2",
                    &[&system, &name, &state, &reason, &at],
                )
                .await?;
            Ok(n > 0)
        })
    }

    pub fn on_demand_devices(&self, system: Option<&str>) -> Result<Vec<OnDemandRecord>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    &format!(
                        "{COLUMNS} WHERE $1::text IS NULL OR system = $1 ORDER BY system, name"
                    ),
                    &[&system],
                )
                .await?;
            rows.iter().map(record).collect()
        })
    }
}

/// Records whether `system/name` is on demand, on `c` (a client or a
/// transaction).
pub(super) async fn set_in(
    c: &impl deadpool_postgres::GenericClient,
    system: &str,
    name: &str,
    on_demand: bool,
) -> Result<()> {
    if on_demand {
        c.execute(
            "INSERT INTO on_demand (system, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[&system, &name],
        )
        .await?;
    } else {
        c.execute(
            "DELETE FROM on_demand WHERE system = $1 AND name = $2",
            &[&system, &name],
        )
        .await?;
    }
    Ok(())
}
