//! The web console's and HTTP API's credentials in a cluster's database:
//! the same `web_credentials` rows as SQLite's (see `store/credentials.rs`,
//! which owns the checks and hashing; this file only reads and writes
//! rows). Every relay of a cluster then knows every login link, session
//! and token: a session made on one relay works on the others.

use anyhow::Result;
use tokio_postgres::Row;

use super::Pg;
use super::keys::u;
use crate::store::credentials::{COLUMNS, CredKind, Credential, role_from_column};

fn record_at(r: &Row, offset: usize) -> Result<Credential> {
    let opt =
        |i: usize| -> Result<Option<u64>> { Ok(r.try_get::<_, Option<i64>>(offset + i)?.map(u)) };
    Ok(Credential {
        id: r.try_get(offset)?,
        kind: CredKind::from_column(r.try_get(offset + 1)?),
        system: r.try_get(offset + 2)?,
        role: role_from_column(r.try_get(offset + 3)?),
        who: r.try_get(offset + 4)?,
        created: u(r.try_get(offset + 5)?),
        expires: u(r.try_get(offset + 6)?),
        used: opt(7)?,
        revoked: opt(8)?,
    })
}

impl Pg {
    pub fn insert_credential(&self, c: &Credential, secret_hash: &str) -> Result<()> {
        self.block(async {
            let client = self.client().await?;
            client
                .execute(
                    "INSERT INTO web_credentials (id, kind, secret_hash, system, role, who, created, expires)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    &[
                        &c.id,
                        &c.kind.as_str(),
                        &secret_hash,
                        &c.system,
                        &c.role.to_string(),
                        &c.who,
                        &(c.created as i64),
                        &(c.expires as i64),
                    ],
                )
                .await?;
            Ok(())
        })
    }

    /// The stored hash and record of credential `id` of `kind`.
    pub fn credential_with_hash(
        &self,
        id: &str,
        kind: CredKind,
    ) -> Result<Option<(String, Credential)>> {
        self.block(async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    &format!(
                        "SELECT secret_hash, {COLUMNS} FROM web_credentials WHERE id = $1 AND kind = $2"
                    ),
                    &[&id, &kind.as_str()],
                )
                .await?;
            row.map(|r| Ok((r.try_get(0)?, record_at(&r, 1)?)))
                .transpose()
        })
    }

    /// Marks a login link used; 1 if this call did, 0 if it was used already.
    pub fn mark_login_used(&self, id: &str, now: u64) -> Result<u64> {
        self.block(async {
            let c = self.client().await?;
            Ok(c.execute(
                "UPDATE web_credentials SET used = $2 WHERE id = $1 AND used IS NULL",
                &[&id, &(now as i64)],
            )
            .await?)
        })
    }

    pub fn credentials(&self, kind: CredKind) -> Result<Vec<Credential>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM web_credentials WHERE kind = $1 ORDER BY created DESC, id"
                    ),
                    &[&kind.as_str()],
                )
                .await?;
            rows.iter().map(|r| record_at(r, 0)).collect()
        })
    }

    /// Revokes credential `id` of `kind`; `None` if there is no active one.
    pub fn revoke_credential(
        &self,
        kind: CredKind,
        id: &str,
        now: u64,
    ) -> Result<Option<Credential>> {
        self.block(async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    &format!(
                        "UPDATE web_credentials SET revoked = $3
                         WHERE id = $1 AND kind = $2 AND revoked IS NULL RETURNING {COLUMNS}"
                    ),
                    &[&id, &kind.as_str(), &(now as i64)],
                )
                .await?;
            row.map(|r| record_at(&r, 0)).transpose()
        })
    }

    pub fn revoke_sessions(&self, now: u64) -> Result<usize> {
        self.block(async {
            let c = self.client().await?;
            Ok(c.execute(
                "UPDATE web_credentials SET revoked = $1
                 WHERE kind IN ('session', 'login') AND revoked IS NULL AND used IS NULL AND expires > $1",
                &[&(now as i64)],
            )
            .await? as usize)
        })
    }
}
