//! Invites and enrollment on PostgreSQL: one transaction under the write
//! lock (check the invite, check the name is free, add the key, mark the
//! invite used), so two enrollments racing on any relay serialize and
//! exactly one wins.

use anyhow::{Result, anyhow, bail};
use tokio_postgres::Transaction;

use super::Pg;
use super::keys::{insert_key, serialize, system_exists, u};
use crate::protocol::token::{Invite, same_hash};
use crate::protocol::{Name, Role};
use crate::ssh::keys::{PublicKey, fingerprint};
use crate::store::{InviteRecord, KeyRecord, NewInvite, now};

async fn owner(
    tx: &Transaction<'_>,
    system: &Name,
    role: Role,
    name: &Name,
) -> Result<Option<String>> {
    Ok(tx
        .query_opt(
            "SELECT fingerprint FROM keys WHERE system = $1 AND role = $2 AND name = $3 AND revoked IS NULL",
            &[&system.as_str(), &role.as_str(), &name.as_str()],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
}

fn name_taken(system: &Name, role: Role, name: &Name, fp: &str) -> anyhow::Error {
    anyhow!(
        "{role} name {name} in system {system} already belongs to key {fp}; revoke that key first or choose another name"
    )
}

impl Pg {
    pub fn create_invite(&self, inv: &NewInvite<'_>) -> Result<()> {
        self.block(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            serialize(&tx).await?;
            if !system_exists(&tx, inv.system.as_str()).await? {
                bail!(
                    "no system {}; add it first with `system add {}`",
                    inv.system,
                    inv.system
                );
            }
            if let Some(fp) = owner(&tx, inv.system, inv.role, inv.name).await? {
                return Err(name_taken(inv.system, inv.role, inv.name, &fp));
            }
            tx.execute(
                "INSERT INTO invites (id, secret_hash, system, role, name, created, expires) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &inv.id,
                    &inv.secret_hash,
                    &inv.system.as_str(),
                    &inv.role.as_str(),
                    &inv.name.as_str(),
                    &(now() as i64),
                    &(inv.expires as i64),
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub fn invites(&self) -> Result<Vec<InviteRecord>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT id, system, role, name, created, expires, used, used_by, revoked FROM invites ORDER BY created DESC, id",
                    &[],
                )
                .await?;
            let t = now();
            let mut out = Vec::new();
            for r in rows {
                let used: Option<i64> = r.try_get(6)?;
                let revoked: Option<i64> = r.try_get(8)?;
                let expires = u(r.try_get(5)?);
                let status = if used.is_some() {
                    "used"
                } else if revoked.is_some() {
                    "revoked"
                } else if expires <= t {
                    "expired"
                } else {
                    "pending"
                };
                let role: String = r.try_get(2)?;
                out.push(InviteRecord {
                    id: r.try_get(0)?,
                    system: r.try_get(1)?,
                    role: role.parse().map_err(anyhow::Error::msg)?,
                    name: r.try_get(3)?,
                    created: u(r.try_get(4)?),
                    expires,
                    status: status.into(),
                    used: used.map(u),
                    used_by: r.try_get(7)?,
                });
            }
            Ok(out)
        })
    }

    pub fn revoke_invite(&self, id: &str) -> Result<InviteRecord> {
        let n = self.block(async {
            let c = self.client().await?;
            Ok(c.execute(
                "UPDATE invites SET revoked = $1 WHERE id = $2 AND revoked IS NULL AND used IS NULL",
                &[&(now() as i64), &id],
            )
            .await?)
        })?;
        let Some(rec) = self.invites()?.into_iter().find(|i| i.id == id) else {
            bail!("no invite {id} (see `invite ls`)");
        };
        if n == 0 {
            bail!("invite {id} is {} and cannot be revoked", rec.status);
        }
        Ok(rec)
    }

    pub fn enroll(&self, invite: &Invite, key: &PublicKey) -> Result<KeyRecord> {
        self.block(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            serialize(&tx).await?;
            let row = tx
                .query_opt(
                    "SELECT secret_hash, system, role, name, expires, used, revoked FROM invites WHERE id = $1",
                    &[&invite.id],
                )
                .await?;
            let Some(row) = row else {
                bail!(
                    "invite token refused: this relay made no such invite (forged, or for another relay)"
                );
            };
            let hash: String = row.try_get(0)?;
            let (system, role, name): (String, String, String) =
                (row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
            let expires: i64 = row.try_get(4)?;
            let used: Option<i64> = row.try_get(5)?;
            let revoked: Option<i64> = row.try_get(6)?;
            if !same_hash(&hash, &invite.secret_hash()) {
                bail!("invite token refused: its secret does not match (forged or altered)");
            }
            if system != invite.system.as_str()
                || role != invite.role.as_str()
                || name != invite.name.as_str()
            {
                bail!("invite token refused: its system, role or name was altered");
            }
            if used.is_some() {
                bail!("invite token refused: it was already used (an invite works once)");
            }
            if revoked.is_some() {
                bail!("invite token refused: the invite was revoked");
            }
            if u(expires) <= now() {
                bail!(
                    "invite token refused: it expired at {}",
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u(expires))
                    )
                );
            }
            if let Some(fp) = owner(&tx, &invite.system, invite.role, &invite.name).await? {
                return Err(name_taken(&invite.system, invite.role, &invite.name, &fp));
            }
            let rec = insert_key(
                &tx,
                &invite.system,
                invite.role,
                &invite.name,
                key,
                Some(&invite.id),
            )
            .await?;
            let n = tx
                .execute(
                    "UPDATE invites SET used = $1, used_by = $2 WHERE id = $3 AND used IS NULL",
                    &[&(now() as i64), &fingerprint(key), &invite.id],
                )
                .await?;
            if n != 1 {
                bail!("invite token refused: it was already used (an invite works once)");
            }
            tx.commit().await?;
            Ok(rec)
        })
    }
}
