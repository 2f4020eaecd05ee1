//! On-demand devices: which devices sleep on an MQTT broker between uses
//! (their agent says so when it registers), and the state each last
//! reported on its `state` topic.

use anyhow::Result;
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::Store;

/// An on-demand device and its last reported state.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OnDemandRecord {
    pub system: String,
    pub name: String,
    /// `asleep`, `connecting`, `online`, `error` or `offline`; `None`
    /// until the device reports one.
    pub state: Option<String>,
    pub reason: Option<String>,
    /// When the device reported it (RFC 3339, the device's clock).
    pub at: Option<String>,
}

/// What an on-demand device last reported on its MQTT state topic, as `ls` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OnDemandInfo {
    /// `asleep`, `connecting`, `online`, `error` or `offline`.
    pub state: Option<String>,
    pub reason: Option<String>,
    /// RFC 3339, as the device reported it.
    pub at: Option<String>,
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<OnDemandRecord> {
    Ok(OnDemandRecord {
        system: r.get(0)?,
        name: r.get(1)?,
        state: r.get(2)?,
        reason: r.get(3)?,
        at: r.get(4)?,
    })
}

impl Store {
    /// Records whether a device is on demand (as its agent said at
    /// registration); a device that stops being on demand loses its row.
    pub fn set_on_demand(&self, system: &str, name: &str, on_demand: bool) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.set_on_demand(system, name, on_demand);
        }
        let conn = self.lock();
        if on_demand {
            conn.execute(
                "INSERT INTO on_demand (system, name) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![system, name],
            )?;
        } else {
            conn.execute(
                "DELETE FROM on_demand WHERE system = ?1 AND name = ?2",
                params![system, name],
            )?;
        }
        Ok(())
    }

    /// Stores a reported state for a known on-demand device; returns
    /// whether the device is one (reports about others are not stored).
    pub fn report_state(
        &self,
        system: &str,
        name: &str,
        state: &str,
        reason: Option<&str>,
        at: &str,
    ) -> Result<bool> {
        if let Some(pg) = &self.pg {
            return pg.report_state(system, name, state, reason, at);
        }
        let n = self.lock().execute(
            "UPDATE on_demand SET state = ?3, reason = ?4, at = ?5 WHERE system = ?1 AND name = ?2",
            params![system, name, state, reason, at],
        )?;
        Ok(n > 0)
    }

    /// One on-demand device, if it is one.
    pub fn on_demand_device(&self, system: &str, name: &str) -> Result<Option<OnDemandRecord>> {
        if self.pg.is_some() {
            let all = self.on_demand_devices(Some(system))?;
            return Ok(all.into_iter().find(|r| r.name == name));
        }
        Ok(self
            .read()
            .query_row(
                "SELECT system, name, state, reason, at FROM on_demand WHERE system = ?1 AND name = ?2",
                params![system, name],
                record,
            )
            .optional()?)
    }

    /// The on-demand devices of `system` (or all).
    pub fn on_demand_devices(&self, system: Option<&str>) -> Result<Vec<OnDemandRecord>> {
        if let Some(pg) = &self.pg {
            return pg.on_demand_devices(system);
        }
        let conn = self.read();
        let mut st = conn.prepare(
            "SELECT system, name, state, reason, at FROM on_demand
             WHERE ?1 IS NULL OR system = ?1 ORDER BY system, name",
        )?;
        let rows = st.query_map([system], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_demand_rows_follow_registration_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert!(
            !store
                .report_state("tau", "dev1", "asleep", None, "2026-01-01T00:00:00Z")
                .unwrap(),
            "a report for an unknown device is not stored"
        );
        store.set_on_demand("tau", "dev1", true).unwrap();
        store.set_on_demand("tau", "dev1", true).unwrap();
        let r = store.on_demand_device("tau", "dev1").unwrap().unwrap();
        assert_eq!(r.state, None);
        assert!(
            store
                .report_state(
                    "tau",
                    "dev1",
                    "error",
                    Some("key refused"),
                    "2026-01-01T00:00:00Z"
                )
                .unwrap()
        );
        let all = store.on_demand_devices(Some("tau")).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].state.as_deref(), Some("error"));
        assert_eq!(all[0].reason.as_deref(), Some("key refused"));
        assert!(store.on_demand_devices(Some("other")).unwrap().is_empty());
        store.set_on_demand("tau", "dev1", false).unwrap();
        assert!(store.on_demand_device("tau", "dev1").unwrap().is_none());
    }
}
