//! Systems, keys and relay settings on PostgreSQL.

use anyhow::{Result, anyhow, bail};
use tokio_postgres::Transaction;

use super::Pg;
use crate::protocol::{Name, Role};
use crate::ssh::keys::{Fingerprint, PublicKey, fingerprint};
use crate::store::{Identity, KeyRecord, now};

/// The advisory lock that checked writes (a key, an invite, an enrollment,
/// a public port) hold for their transaction: they check, then write, as
/// SQLite's `BEGIN IMMEDIATE` makes them do one at a time.
const WRITE_LOCK: i64 = 0x7761_7272_656f;

pub(super) async fn serialize(tx: &Transaction<'_>) -> Result<()> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await?;
    Ok(())
}

pub(super) fn u(v: i64) -> u64 {
    v.max(0) as u64
}

pub(super) async fn system_exists(tx: &Transaction<'_>, system: &str) -> Result<bool> {
    Ok(tx
        .query_opt("SELECT 1 FROM systems WHERE name = $1", &[&system])
        .await?
        .is_some())
}

impl Pg {
    pub fn add_system(&self, name: &Name) -> Result<()> {
        self.block(async {
            let c = self.client().await?;
            let n = c
                .execute(
                    "INSERT INTO systems (name, created) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                    &[&name.as_str(), &(now() as i64)],
                )
                .await?;
            if n == 0 {
                bail!("system {name} already exists");
            }
            Ok(())
        })
    }

    pub fn systems(&self) -> Result<Vec<String>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query("SELECT name FROM systems ORDER BY name", &[])
                .await?;
            Ok(rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?)
        })
    }

    pub fn add_key(
        &self,
        system: &Name,
        role: Role,
        name: &Name,
        key: &PublicKey,
    ) -> Result<KeyRecord> {
        self.block(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            serialize(&tx).await?;
            let rec = insert_key(&tx, system, role, name, key, None).await?;
            tx.commit().await?;
            Ok(rec)
        })
    }

    pub fn keys(&self) -> Result<Vec<KeyRecord>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT fingerprint, system, role, name, public_key, created, revoked, enrolled_via FROM keys ORDER BY system, role, name",
                    &[],
                )
                .await?;
            let mut out = Vec::new();
            for r in rows {
                let public_key: String = r.try_get(4)?;
                let role: String = r.try_get(2)?;
                out.push(KeyRecord {
                    fingerprint: r.try_get(0)?,
                    system: r.try_get(1)?,
                    role: role.parse().map_err(anyhow::Error::msg)?,
                    name: r.try_get(3)?,
                    algorithm: public_key
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_string(),
                    created: u(r.try_get(5)?),
                    revoked: r.try_get::<_, Option<i64>>(6)?.map(u),
                    enrolled_via: r.try_get(7)?,
                });
            }
            Ok(out)
        })
    }

    pub fn revoke_key(&self, fp: &str) -> Result<KeyRecord> {
        let n = self.block(async {
            let c = self.client().await?;
            Ok(c.execute(
                "UPDATE keys SET revoked = $1 WHERE fingerprint = $2 AND revoked IS NULL",
                &[&(now() as i64), &fp],
            )
            .await?)
        })?;
        let rec = self.keys()?.into_iter().find(|k| k.fingerprint == fp);
        match (n, rec) {
            (_, None) => bail!("no key with fingerprint {fp} (see `warren admin key ls`)"),
            (0, Some(_)) => bail!("key {fp} is already revoked"),
            (_, Some(rec)) => Ok(rec),
        }
    }

    pub fn identity(&self, system: &str, key: &PublicKey) -> Result<Option<Identity>> {
        let fp = fingerprint(key);
        let row = self.block(async {
            let c = self.client().await?;
            Ok(c.query_opt(
                "SELECT role, name, public_key FROM keys WHERE fingerprint = $1 AND system = $2 AND revoked IS NULL",
                &[&fp, &system],
            )
            .await?)
        })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (role, name, stored): (String, String, String) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        let stored = PublicKey::from_openssh(&stored)
            .map_err(|e| anyhow!("stored key {fp} is corrupt: {e}"))?;
        if stored.key_data() != key.key_data() {
            return Ok(None);
        }
        Ok(Some(Identity {
            system: Name::parse(system)?,
            role: role.parse().map_err(anyhow::Error::msg)?,
            name: Name::parse(&name)?,
            fingerprint: fp,
        }))
    }

    /// The identity of the active key `fp` of `system`: a relay serving a
    /// hop checks again, with its own policy, who asked on the other relay.
    pub fn identity_by_fingerprint(
        &self,
        system: &str,
        fp: &Fingerprint,
    ) -> Result<Option<Identity>> {
        let row = self.block(async {
            let c = self.client().await?;
            Ok(c.query_opt(
                "SELECT role, name FROM keys WHERE fingerprint = $1 AND system = $2 AND revoked IS NULL",
                &[&fp, &system],
            )
            .await?)
        })?;
        let Some(row) = row else {
            return Ok(None);
        };
        let (role, name): (String, String) = (row.try_get(0)?, row.try_get(1)?);
        Ok(Some(Identity {
            system: Name::parse(system)?,
            role: role.parse().map_err(anyhow::Error::msg)?,
            name: Name::parse(&name)?,
            fingerprint: fp.clone(),
        }))
    }

    pub fn key_active(&self, fp: &str) -> Result<bool> {
        self.block(async {
            let c = self.client().await?;
            Ok(c.query_opt(
                "SELECT 1 FROM keys WHERE fingerprint = $1 AND revoked IS NULL",
                &[&fp],
            )
            .await?
            .is_some())
        })
    }

    /// Of `fps`, the fingerprints whose keys are active, in one query.
    pub fn active_keys(&self, fps: &[Fingerprint]) -> Result<Vec<bool>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT fingerprint FROM keys WHERE fingerprint = ANY($1) AND revoked IS NULL",
                    &[&fps],
                )
                .await?;
            let active: std::collections::HashSet<Fingerprint> = rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            Ok(fps.iter().map(|f| active.contains(f)).collect())
        })
    }

    pub fn setting(&self, name: &str) -> Result<Option<String>> {
        self.block(async {
            let c = self.client().await?;
            Ok(
                c.query_opt("SELECT value FROM relay_settings WHERE name = $1", &[&name])
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?,
            )
        })
    }

    pub fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        self.block(async {
            let c = self.client().await?;
            c.execute(
                "INSERT INTO relay_settings (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                &[&name, &value],
            )
            .await?;
            Ok(())
        })
    }
}

/// Adds a key inside `tx`, after the checks every path shares (as the
/// SQLite backend's `insert_key`).
pub(super) async fn insert_key(
    tx: &Transaction<'_>,
    system: &Name,
    role: Role,
    name: &Name,
    key: &PublicKey,
    enrolled_via: Option<&str>,
) -> Result<KeyRecord> {
    let fp = fingerprint(key);
    let openssh = key.to_openssh().map_err(|e| anyhow!("encoding key: {e}"))?;
    if !system_exists(tx, system.as_str()).await? {
        bail!("no system {system}; add it first with `warren admin system add {system}`");
    }
    if let Some(r) = tx
        .query_opt(
            "SELECT system, role, name FROM keys WHERE fingerprint = $1",
            &[&fp],
        )
        .await?
    {
        let (s, ro, n): (String, String, String) = (r.try_get(0)?, r.try_get(1)?, r.try_get(2)?);
        bail!("key {fp} is already registered as {ro} {n} in system {s}");
    }
    if role == Role::Device
        && let Some(r) = tx
            .query_opt(
                "SELECT fingerprint FROM keys WHERE system = $1 AND name = $2 AND role = 'device' AND revoked IS NULL",
                &[&system.as_str(), &name.as_str()],
            )
            .await?
    {
        let owner: String = r.try_get(0)?;
        bail!(
            "device name {name} in system {system} already belongs to key {owner}; revoke that key first"
        );
    }
    let created = now();
    tx.execute(
        "INSERT INTO keys (fingerprint, system, role, name, public_key, created, enrolled_via) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[&fp, &system.as_str(), &role.as_str(), &name.as_str(), &openssh, &(created as i64), &enrolled_via],
    )
    .await?;
    Ok(KeyRecord {
        fingerprint: fp,
        system: system.to_string(),
        role,
        name: name.to_string(),
        algorithm: key.algorithm().to_string(),
        created,
        revoked: None,
        enrolled_via: enrolled_via.map(str::to_string),
    })
}
