//! Gateways (scopes, associations, rules) and public ports on PostgreSQL.

use std::collections::HashMap;

use anyhow::{Result, bail};
use serde::Serialize;

use super::Pg;
use super::keys::{serialize, system_exists, u};
use crate::protocol::gateway::Announce;
use crate::protocol::{Cidr, Name, Target};
use crate::store::{Exposure, GatewayRecord, now};

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    Ok(serde_json::to_string(v)?)
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str, what: &str) -> Result<T> {
    serde_json::from_str(s).map_err(|e| anyhow::anyhow!("stored gateway {what} is corrupt: {e}"))
}

fn cidr(s: &str) -> Result<Cidr> {
    Cidr::parse(s).map_err(anyhow::Error::msg)
}

impl Pg {
    pub fn gateway_announce(&self, system: &str, name: &str, a: &Announce) -> Result<Vec<Cidr>> {
        let t = now() as i64;
        let (scope, ports, listens) =
            (to_json(&a.scope)?, to_json(&a.ports)?, to_json(&a.listens)?);
        let permit = a.permit.as_ref().map(to_json).transpose()?;
        self.block(async {
            let c = self.client().await?;
            c.execute(
                "INSERT INTO gateways (system, name, scope, ports, permit, listens, created, updated)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7)
                 ON CONFLICT (system, name) DO UPDATE SET scope = $3, ports = $4, permit = $5, listens = $6,
                   updated = CASE WHEN gateways.scope = $3 AND gateways.ports = $4
                                   AND gateways.permit IS NOT DISTINCT FROM $5 AND gateways.listens = $6
                                  THEN gateways.updated ELSE $7 END",
                &[&system, &name, &scope, &ports, &permit, &listens, &t],
            )
            .await?;
            Ok(())
        })?;
        self.gateway_associations(system, name)
    }

    pub fn gateway_associations(&self, system: &str, name: &str) -> Result<Vec<Cidr>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT network FROM gateway_associations WHERE system = $1 AND name = $2 ORDER BY network",
                    &[&system, &name],
                )
                .await?;
            rows.iter().map(|r| cidr(r.try_get(0)?)).collect()
        })
    }

    pub fn all_gateway_associations(&self) -> Result<HashMap<(String, String), Vec<Cidr>>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT system, name, network FROM gateway_associations ORDER BY system, name, network",
                    &[],
                )
                .await?;
            let mut out: HashMap<(String, String), Vec<Cidr>> = HashMap::new();
            for r in rows {
                out.entry((r.try_get(0)?, r.try_get(1)?))
                    .or_default()
                    .push(cidr(r.try_get(2)?)?);
            }
            Ok(out)
        })
    }

    /// Makes sure `name` is a device of `system` with a gateway row, then
    /// runs `sql` (system, name, $3, now) and returns how many rows it changed.
    fn gateway_write(&self, system: &Name, name: &Name, sql: &str, arg: &str) -> Result<u64> {
        self.block(async {
            let c = self.client().await?;
            let (s, n) = (system.as_str(), name.as_str());
            let device = c
                .query_opt(
                    "SELECT 1 FROM keys WHERE system = $1 AND name = $2 AND role = 'device' AND revoked IS NULL",
                    &[&s, &n],
                )
                .await?
                .is_some();
            let known = c
                .query_opt("SELECT 1 FROM gateways WHERE system = $1 AND name = $2", &[&s, &n])
                .await?
                .is_some();
            if !device && !known {
                bail!(
                    "no device {name} in system {system} (a gateway is a device: add its key with `warren admin key add --role device`)"
                );
            }
            let t = now() as i64;
            c.execute(
                "INSERT INTO gateways (system, name, created, updated) VALUES ($1, $2, $3, $3)
                 ON CONFLICT (system, name) DO UPDATE SET updated = $3",
                &[&s, &n, &t],
            )
            .await?;
            Ok(c.execute(sql, &[&s, &n, &arg, &t]).await?)
        })
    }

    pub fn gateway_associate(&self, system: &Name, name: &Name, net: &Cidr) -> Result<()> {
        let n = self.gateway_write(
            system,
            name,
            "INSERT INTO gateway_associations (system, name, network, created) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &net.to_string(),
        )?;
        if n == 0 {
            bail!("{net} is already associated with gateway {name}");
        }
        Ok(())
    }

    pub fn gateway_allow(&self, system: &Name, name: &Name, target: &Target) -> Result<()> {
        let n = self.gateway_write(
            system,
            name,
            "INSERT INTO gateway_rules (system, name, target, created) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &target.to_string(),
        )?;
        if n == 0 {
            bail!("gateway {name} may already reach {target}");
        }
        Ok(())
    }

    /// Deletes one association or rule (`sql` with system, name, $3) and
    /// marks the gateway updated; returns how many rows went.
    fn gateway_remove(&self, system: &Name, name: &Name, sql: &str, arg: &str) -> Result<u64> {
        self.block(async {
            let c = self.client().await?;
            let (s, n) = (system.as_str(), name.as_str());
            let removed = c.execute(sql, &[&s, &n, &arg]).await?;
            if removed > 0 {
                c.execute(
                    "UPDATE gateways SET updated = $3 WHERE system = $1 AND name = $2",
                    &[&s, &n, &(now() as i64)],
                )
                .await?;
            }
            Ok(removed)
        })
    }

    pub fn gateway_dissociate(&self, system: &Name, name: &Name, net: &Cidr) -> Result<()> {
        let n = self.gateway_remove(
            system,
            name,
            "DELETE FROM gateway_associations WHERE system = $1 AND name = $2 AND network = $3",
            &net.to_string(),
        )?;
        if n == 0 {
            bail!("{net} is not associated with gateway {name} in system {system}");
        }
        Ok(())
    }

    pub fn gateway_deny(&self, system: &Name, name: &Name, target: &Target) -> Result<()> {
        let n = self.gateway_remove(
            system,
            name,
            "DELETE FROM gateway_rules WHERE system = $1 AND name = $2 AND target = $3",
            &target.to_string(),
        )?;
        if n == 0 {
            bail!("gateway {name} in system {system} has no rule for {target}");
        }
        Ok(())
    }

    pub fn gateway_rule_allows(&self, system: &str, name: &str, target: &str) -> Result<bool> {
        self.block(async {
            let c = self.client().await?;
            Ok(c.query_opt(
                "SELECT 1 FROM gateway_rules WHERE system = $1 AND name = $2 AND target = $3",
                &[&system, &name, &target],
            )
            .await?
            .is_some())
        })
    }

    pub fn gateway_rules(&self, system: &str, name: &str) -> Result<Vec<String>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT target FROM gateway_rules WHERE system = $1 AND name = $2 ORDER BY target",
                    &[&system, &name],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?)
        })
    }

    pub fn gateway_delete(&self, system: &Name, name: &Name) -> Result<()> {
        self.block(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let (s, n) = (system.as_str(), name.as_str());
            let mut total = 0;
            for table in ["gateways", "gateway_associations", "gateway_rules"] {
                total += tx
                    .execute(
                        &format!("DELETE FROM {table} WHERE system = $1 AND name = $2"),
                        &[&s, &n],
                    )
                    .await?;
            }
            if total == 0 {
                bail!("no gateway {name} in system {system}");
            }
            tx.commit().await?;
            Ok(())
        })
    }

    pub fn gateways(&self, system: Option<&str>) -> Result<Vec<GatewayRecord>> {
        let rows = self.block(async {
            let c = self.client().await?;
            Ok(c.query(
                "SELECT id, system, name, scope, ports, permit, listens, created, updated FROM gateways
                 WHERE $1::text IS NULL OR system = $1 ORDER BY system, name",
                &[&system],
            )
            .await?)
        })?;
        let mut out = Vec::new();
        for r in rows {
            let (system, name): (String, String) = (r.try_get(1)?, r.try_get(2)?);
            let associations = self
                .gateway_associations(&system, &name)?
                .iter()
                .map(Cidr::to_string)
                .collect();
            let rules = self.gateway_rules(&system, &name)?;
            let permit: Option<String> = r.try_get(5)?;
            out.push(GatewayRecord {
                id: r.try_get(0)?,
                scope: from_json(r.try_get(3)?, "scope")?,
                ports: from_json(r.try_get(4)?, "ports")?,
                permit: permit.map(|p| from_json(&p, "permit")).transpose()?,
                listens: from_json(r.try_get(6)?, "listens")?,
                associations,
                rules,
                created: u(r.try_get(7)?),
                updated: u(r.try_get(8)?),
                system,
                name,
            });
        }
        Ok(out)
    }

    pub fn gateway_systems(&self, name: &Name) -> Result<Vec<String>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT system FROM gateways WHERE name = $1
                     UNION SELECT system FROM keys WHERE name = $1 AND role = 'device' AND revoked IS NULL
                     ORDER BY 1",
                    &[&name.as_str()],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?)
        })
    }

    pub fn add_exposure(
        &self,
        port: u16,
        system: &Name,
        device: &Name,
        device_port: u16,
        allow_from: &[String],
    ) -> Result<Exposure> {
        let created = now();
        self.block(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            serialize(&tx).await?;
            if !system_exists(&tx, system.as_str()).await? {
                bail!("no system {system}");
            }
            if let Some(r) = tx
                .query_opt(
                    "SELECT system, device, device_port FROM exposures WHERE port = $1",
                    &[&i64::from(port)],
                )
                .await?
            {
                let (s, d, p): (String, String, i64) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
                bail!(
                    "relay port {port} already exposes {s}/{d}:{p}; remove it first (expose rm {port})"
                );
            }
            tx.execute(
                "INSERT INTO exposures (port, system, device, device_port, allow_from, created) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    &i64::from(port),
                    &system.as_str(),
                    &device.as_str(),
                    &i64::from(device_port),
                    &allow_from.join(","),
                    &(created as i64),
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })?;
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
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT port, system, device, device_port, allow_from, created FROM exposures ORDER BY port",
                    &[],
                )
                .await?;
            let mut out = Vec::new();
            for r in rows {
                let allow: String = r.try_get(4)?;
                out.push(Exposure {
                    port: u16::try_from(r.try_get::<_, i64>(0)?)?,
                    system: r.try_get(1)?,
                    device: r.try_get(2)?,
                    device_port: u16::try_from(r.try_get::<_, i64>(3)?)?,
                    allow_from: allow
                        .split(',')
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect(),
                    created: u(r.try_get(5)?),
                });
            }
            Ok(out)
        })
    }

    pub fn delete_exposure(&self, port: u16) -> Result<()> {
        self.block(async {
            let c = self.client().await?;
            c.execute("DELETE FROM exposures WHERE port = $1", &[&i64::from(port)])
                .await?;
            Ok(())
        })
    }
}
