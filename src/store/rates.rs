//! Bandwidth limits an admin set (`warren admin system set --rate`,
//! `device set --rate`): one row per system (`device` empty) or device.
//! The relay reads them all after every store change and applies them to
//! live streams (`relay/bandwidth.rs`). Tested on both backends in
//! `tests/store_backends.rs`.

use anyhow::{Result, bail};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, now};
use crate::protocol::Name;
use crate::protocol::rate::Rate;

/// One stored limit.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RateRecord {
    pub system: String,
    /// `None`: the system's limit.
    pub device: Option<String>,
    pub rate: Rate,
}

/// A row as both backends store it: `device` empty for a system's limit.
pub(crate) fn record(system: String, device: String, bps: i64, burst: i64) -> Option<RateRecord> {
    let rate = Rate::with_burst(u64::try_from(bps).ok()?, u64::try_from(burst).ok()?).ok()?;
    Some(RateRecord {
        system,
        device: (!device.is_empty()).then_some(device),
        rate,
    })
}

impl Store {
    /// Sets (or with `None` clears) the limit of a system, or of one of its
    /// devices. The system must exist; a device must be known (a device key
    /// or a status row), as for `device disable`.
    pub fn set_rate(&self, system: &Name, device: Option<&Name>, rate: Option<Rate>) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.set_rate(system, device, rate);
        }
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let exists = |sql: &str, p: &[&str]| -> Result<bool> {
            Ok(tx
                .query_row(sql, rusqlite::params_from_iter(p), |_| Ok(()))
                .optional()?
                .is_some())
        };
        if !exists("SELECT 1 FROM systems WHERE name = ?1", &[system.as_str()])? {
            bail!("no system {system}");
        }
        if let Some(d) = device {
            let p = [system.as_str(), d.as_str()];
            let known = exists(
                "SELECT 1 FROM keys WHERE system = ?1 AND role = 'device' AND name = ?2 AND revoked IS NULL",
                &p,
            )? || exists("SELECT 1 FROM devices WHERE system = ?1 AND name = ?2", &p)?;
            if !known {
                bail!("no device {d} in system {system}");
            }
        }
        let dev = device.map(Name::as_str).unwrap_or("");
        match rate {
            Some(r) => tx.execute(
                "INSERT INTO rates (system, device, bytes_per_second, burst, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (system, device) DO UPDATE SET
                   bytes_per_second = ?3, burst = ?4, updated = ?5",
                params![
                    system.as_str(),
                    dev,
                    r.bytes_per_second as i64,
                    r.burst as i64,
                    now() as i64
                ],
            )?,
            None => tx.execute(
                "DELETE FROM rates WHERE system = ?1 AND device = ?2",
                params![system.as_str(), dev],
            )?,
        };
        tx.commit()?;
        Ok(())
    }

    /// Every stored limit (rows that no longer check are skipped).
    pub fn rates(&self) -> Result<Vec<RateRecord>> {
        if let Some(pg) = &self.pg {
            return pg.rates();
        }
        let conn = self.read();
        let mut st = conn.prepare(
            "SELECT system, device, bytes_per_second, burst FROM rates ORDER BY system, device",
        )?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        let rows: Vec<(String, String, i64, i64)> = rows.collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, d, b, u)| record(s, d, b, u))
            .collect())
    }
}
