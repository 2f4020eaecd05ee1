//! Public ports (`warren admin expose`): which relay port carries to which
//! device port, and from which peer addresses.

use anyhow::{Result, bail};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, now};
use crate::protocol::Name;

/// One exposed port.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Exposure {
    /// The relay port that listens.
    pub port: u16,
    pub system: String,
    pub device: String,
    pub device_port: u16,
    /// CIDRs peers must come from; empty means anyone.
    pub allow_from: Vec<String>,
    pub created: u64,
}

impl Store {
    /// Adds an exposure. The relay port must be free of other exposures.
    pub fn add_exposure(
        &self,
        port: u16,
        system: &Name,
        device: &Name,
        device_port: u16,
        allow_from: &[String],
    ) -> Result<Exposure> {
        if port == 0 || device_port == 0 {
            bail!("port 0 is not a port");
        }
        if let Some(pg) = &self.pg {
            return pg.add_exposure(port, system, device, device_port, allow_from);
        }
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let system_exists = tx
            .query_row(
                "SELECT 1 FROM systems WHERE name = ?1",
                [system.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !system_exists {
            bail!("no system {system}");
        }
        let taken: Option<(String, String, i64)> = tx
            .query_row(
                "SELECT system, device, device_port FROM exposures WHERE port = ?1",
                [port],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((s, d, p)) = taken {
            bail!(
                "relay port {port} already exposes {s}/{d}:{p}; remove it first (expose rm {port})"
            );
        }
        let created = now();
        tx.execute(
            "INSERT INTO exposures (port, system, device, device_port, allow_from, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![port, system.as_str(), device.as_str(), device_port, allow_from.join(","), created],
        )?;
        tx.commit()?;
        Ok(Exposure {
            port,
            system: system.to_string(),
            device: device.to_string(),
            device_port,
            allow_from: allow_from.to_vec(),
            created,
        })
    }

    pub fn exposures(&self) -> Result<Vec<Exposure>> {
        if let Some(pg) = &self.pg {
            return pg.exposures();
        }
        let conn = self.read();
        let mut st = conn.prepare(
            "SELECT port, system, device, device_port, allow_from, created FROM exposures ORDER BY port",
        )?;
        let rows = st.query_map([], |r| {
            let allow: String = r.get(4)?;
            Ok(Exposure {
                port: r.get(0)?,
                system: r.get(1)?,
                device: r.get(2)?,
                device_port: r.get(3)?,
                allow_from: allow
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                created: r.get::<_, i64>(5)? as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Removes the exposure on relay port `port`; returns what it was.
    pub fn remove_exposure(&self, port: u16) -> Result<Exposure> {
        let Some(e) = self.exposures()?.into_iter().find(|e| e.port == port) else {
            bail!("no exposure on relay port {port} (see `expose ls`)");
        };
        match &self.pg {
            Some(pg) => pg.delete_exposure(port)?,
            None => {
                self.lock()
                    .execute("DELETE FROM exposures WHERE port = ?1", [port])?;
            }
        }
        Ok(e)
    }
}
