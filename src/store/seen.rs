//! One device's last sighting, as routing asks for it (a stream to a name
//! not online here): one row read, not the system's whole device list.

use anyhow::Result;
use rusqlite::OptionalExtension;

use super::Store;

impl Store {
    /// `None`: no such device; `Some(t)`: known, last seen at `t` (`None`
    /// if never online).
    pub fn last_seen(&self, system: &str, name: &str) -> Result<Option<Option<u64>>> {
        if let Some(pg) = &self.pg {
            return pg.last_seen(system, name);
        }
        let conn = self.read();
        Ok(conn
            .query_row(
                "SELECT last_seen FROM devices WHERE system = ?1 AND name = ?2",
                [system, name],
                |r| r.get::<_, Option<i64>>(0),
            )
            .optional()?
            .map(|t| t.map(|t| t.max(0) as u64)))
    }
}
