//! Gateways in the store: the scope each announced, the networks an admin
//! associated with it, and the targets its listen forwards may reach.

use std::collections::HashMap;

use anyhow::{Result, bail};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{Store, now};
use crate::protocol::gateway::{Announce, ListenSpec};
use crate::protocol::{Cidr, Name, Target};

/// A gateway as stored: what its agent announced last, plus what admins set.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GatewayRecord {
    pub id: i64,
    pub system: String,
    pub name: String,
    pub scope: Vec<String>,
    pub ports: Vec<u16>,
    /// The owner's limit for associations; `None`: no limit.
    pub permit: Option<Vec<String>>,
    pub listens: Vec<ListenSpec>,
    pub associations: Vec<String>,
    /// Targets its listen forwards may reach (`NAME:PORT`).
    pub rules: Vec<String>,
    pub created: u64,
    pub updated: u64,
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_string(v)?)
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| anyhow::anyhow!("stored gateway {what} is corrupt: {e}"))
}

/// One `gateways` row as read: id, system, name, scope, ports, permit,
/// listens, created, updated.
type Row = (
    i64,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
    i64,
);

impl Store {
    /// Records what a gateway's agent announced; returns the networks
    /// associated with it.
    pub fn gateway_announce(&self, system: &str, name: &str, a: &Announce) -> Result<Vec<Cidr>> {
        if let Some(pg) = &self.pg {
            return pg.gateway_announce(system, name, a);
        }
        let t = now();
        {
            let conn = self.lock();
            conn.execute(
                "INSERT INTO gateways (system, name, scope, ports, permit, listens, created, updated)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT (system, name) DO UPDATE SET scope = ?3, ports = ?4, permit = ?5, listens = ?6,
                   updated = CASE WHEN scope = ?3 AND ports = ?4 AND permit IS ?5 AND listens = ?6
                                  THEN updated ELSE ?7 END",
                params![
                    system,
                    name,
                    to_json(&a.scope)?,
                    to_json(&a.ports)?,
                    a.permit.as_ref().map(to_json).transpose()?,
                    to_json(&a.listens)?,
                    t
                ],
            )?;
        }
        self.gateway_associations(system, name)
    }

    pub fn gateway_associations(&self, system: &str, name: &str) -> Result<Vec<Cidr>> {
        if let Some(pg) = &self.pg {
            return pg.gateway_associations(system, name);
        }
        let conn = self.read();
        let mut st = conn.prepare(
            "SELECT network FROM gateway_associations WHERE system = ?1 AND name = ?2 ORDER BY network",
        )?;
        let rows = st.query_map([system, name], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for r in rows {
            out.push(Cidr::parse(&r?).map_err(anyhow::Error::msg)?);
        }
        Ok(out)
    }

    /// Associations of every gateway, by (system, name).
    pub fn all_gateway_associations(&self) -> Result<HashMap<(String, String), Vec<Cidr>>> {
        if let Some(pg) = &self.pg {
            return pg.all_gateway_associations();
        }
        let conn = self.read();
        let mut st = conn.prepare(
            "SELECT system, name, network FROM gateway_associations ORDER BY system, name, network",
        )?;
        let rows = st.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out: HashMap<(String, String), Vec<Cidr>> = HashMap::new();
        for r in rows {
            let (s, n, net) = r?;
            out.entry((s, n))
                .or_default()
                .push(Cidr::parse(&net).map_err(anyhow::Error::msg)?);
        }
        Ok(out)
    }

    /// Makes sure `name` is a device of `system` and has a gateway row (so
    /// that an admin can set rules before the gateway first connects).
    fn gateway_row(&self, system: &Name, name: &Name) -> Result<()> {
        let conn = self.lock();
        let device: bool = conn
            .query_row(
                "SELECT 1 FROM keys WHERE system = ?1 AND name = ?2 AND role = 'device' AND revoked IS NULL",
                [system.as_str(), name.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        let known: bool = conn
            .query_row(
                "SELECT 1 FROM gateways WHERE system = ?1 AND name = ?2",
                [system.as_str(), name.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !device && !known {
            bail!(
                "no device {name} in system {system} (a gateway is a device: add its key with `warren admin key add --role device`)"
            );
        }
        let t = now();
        conn.execute(
            "INSERT INTO gateways (system, name, created, updated) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (system, name) DO UPDATE SET updated = ?3",
            params![system.as_str(), name.as_str(), t],
        )?;
        Ok(())
    }

    /// Routes `net` to gateway `name`. Errors if it is already associated.
    pub fn gateway_associate(&self, system: &Name, name: &Name, net: &Cidr) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.gateway_associate(system, name, net);
        }
        self.gateway_row(system, name)?;
        let n = self.lock().execute(
            "INSERT INTO gateway_associations (system, name, network, created) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
            params![system.as_str(), name.as_str(), net.to_string(), now()],
        )?;
        if n == 0 {
            bail!("{net} is already associated with gateway {name}");
        }
        Ok(())
    }

    pub fn gateway_dissociate(&self, system: &Name, name: &Name, net: &Cidr) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.gateway_dissociate(system, name, net);
        }
        let n = self.lock().execute(
            "DELETE FROM gateway_associations WHERE system = ?1 AND name = ?2 AND network = ?3",
            params![system.as_str(), name.as_str(), net.to_string()],
        )?;
        if n == 0 {
            bail!("{net} is not associated with gateway {name} in system {system}");
        }
        self.touch_gateway(system, name)
    }

    fn touch_gateway(&self, system: &Name, name: &Name) -> Result<()> {
        self.lock().execute(
            "UPDATE gateways SET updated = ?3 WHERE system = ?1 AND name = ?2",
            params![system.as_str(), name.as_str(), now()],
        )?;
        Ok(())
    }

    /// Lets gateway `name`'s listen forwards reach `target`.
    pub fn gateway_allow(&self, system: &Name, name: &Name, target: &Target) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.gateway_allow(system, name, target);
        }
        self.gateway_row(system, name)?;
        let n = self.lock().execute(
            "INSERT INTO gateway_rules (system, name, target, created) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT DO NOTHING",
            params![system.as_str(), name.as_str(), target.to_string(), now()],
        )?;
        if n == 0 {
            bail!("gateway {name} may already reach {target}");
        }
        Ok(())
    }

    pub fn gateway_deny(&self, system: &Name, name: &Name, target: &Target) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.gateway_deny(system, name, target);
        }
        let n = self.lock().execute(
            "DELETE FROM gateway_rules WHERE system = ?1 AND name = ?2 AND target = ?3",
            params![system.as_str(), name.as_str(), target.to_string()],
        )?;
        if n == 0 {
            bail!("gateway {name} in system {system} has no rule for {target}");
        }
        self.touch_gateway(system, name)
    }

    /// Whether gateway `name` may open a stream to `target`.
    pub fn gateway_rule_allows(&self, system: &str, name: &str, target: &str) -> Result<bool> {
        if let Some(pg) = &self.pg {
            return pg.gateway_rule_allows(system, name, target);
        }
        Ok(self
            .read()
            .query_row(
                "SELECT 1 FROM gateway_rules WHERE system = ?1 AND name = ?2 AND target = ?3",
                [system, name, target],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    fn gateway_rules(&self, system: &str, name: &str) -> Result<Vec<String>> {
        if let Some(pg) = &self.pg {
            return pg.gateway_rules(system, name);
        }
        let conn = self.read();
        let mut st = conn.prepare(
            "SELECT target FROM gateway_rules WHERE system = ?1 AND name = ?2 ORDER BY target",
        )?;
        let rows = st.query_map([system, name], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets a gateway: its record, associations and rules. Refused while
    /// it has rules, unless `force`.
    pub fn gateway_delete(&self, system: &Name, name: &Name, force: bool) -> Result<()> {
        let rules = self.gateway_rules(system.as_str(), name.as_str())?;
        if !rules.is_empty() && !force {
            bail!(
                "gateway {name} still has {} forwarding rule{} ({}); remove them with `gateway deny`, or delete with --force",
                rules.len(),
                if rules.len() == 1 { "" } else { "s" },
                rules.join(", ")
            );
        }
        if let Some(pg) = &self.pg {
            return pg.gateway_delete(system, name);
        }
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let n = tx.execute(
            "DELETE FROM gateways WHERE system = ?1 AND name = ?2",
            [system.as_str(), name.as_str()],
        )?;
        let a = tx.execute(
            "DELETE FROM gateway_associations WHERE system = ?1 AND name = ?2",
            [system.as_str(), name.as_str()],
        )?;
        let r = tx.execute(
            "DELETE FROM gateway_rules WHERE system = ?1 AND name = ?2",
            [system.as_str(), name.as_str()],
        )?;
        if n + a + r == 0 {
            bail!("no gateway {name} in system {system}");
        }
        tx.commit()?;
        Ok(())
    }

    /// Gateways of `system` (or all), with their associations and rules.
    pub fn gateways(&self, system: Option<&str>) -> Result<Vec<GatewayRecord>> {
        if let Some(pg) = &self.pg {
            return pg.gateways(system);
        }
        let rows: Vec<Row> = {
            let conn = self.read();
            let mut st = conn.prepare(
                "SELECT id, system, name, scope, ports, permit, listens, created, updated FROM gateways
                 WHERE ?1 IS NULL OR system = ?1 ORDER BY system, name",
            )?;
            let rows = st.query_map([system], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                    r.get(8)?,
                ))
            })?;
            rows.collect::<Result<_, _>>()?
        };
        let mut out = Vec::new();
        for (id, system, name, scope, ports, permit, listens, created, updated) in rows {
            let associations = self
                .gateway_associations(&system, &name)?
                .iter()
                .map(Cidr::to_string)
                .collect();
            let rules = self.gateway_rules(&system, &name)?;
            out.push(GatewayRecord {
                id,
                scope: from_json(&scope, "scope")?,
                ports: from_json(&ports, "ports")?,
                permit: permit.map(|p| from_json(&p, "permit")).transpose()?,
                listens: from_json(&listens, "listens")?,
                associations,
                rules,
                created: created as u64,
                updated: updated as u64,
                system,
                name,
            });
        }
        Ok(out)
    }

    /// The system of gateway (or device) `name`, when only one system has it.
    pub fn gateway_system(&self, name: &Name) -> Result<Name> {
        let systems: Vec<String> = match &self.pg {
            Some(pg) => pg.gateway_systems(name)?,
            None => {
                let conn = self.read();
                let mut st = conn.prepare(
                    "SELECT system FROM gateways WHERE name = ?1
                     UNION SELECT system FROM keys WHERE name = ?1 AND role = 'device' AND revoked IS NULL
                     ORDER BY 1",
                )?;
                st.query_map([name.as_str()], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            }
        };
        match systems.as_slice() {
            [] => bail!("no gateway or device named {name}"),
            [one] => Ok(Name::parse(one)?),
            many => bail!(
                "{name} exists in systems {}; say which with --system",
                many.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Role;
    use crate::ssh::keys::generate_ed25519;

    fn n(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    fn store_with_device() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.add_system(&n("tau")).unwrap();
        let k = generate_ed25519().unwrap();
        store
            .add_key(&n("tau"), Role::Device, &n("gw1"), k.public_key())
            .unwrap();
        (dir, store)
    }

    #[test]
    fn force_deletes_a_gateway_with_rules() {
        let (_dir, store) = store_with_device();
        let t = Target::parse("collector:9100").unwrap();
        store.gateway_allow(&n("tau"), &n("gw1"), &t).unwrap();
        store
            .gateway_associate(&n("tau"), &n("gw1"), &Cidr::parse("10.9.0.0/16").unwrap())
            .unwrap();
        store.gateway_delete(&n("tau"), &n("gw1"), true).unwrap();
        assert!(store.gateways(None).unwrap().is_empty());
        assert!(
            !store
                .gateway_rule_allows("tau", "gw1", "collector:9100")
                .unwrap()
        );
        assert!(store.all_gateway_associations().unwrap().is_empty());
    }
}
