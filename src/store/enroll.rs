//! Invites and enrollment, device enable/disable, relay settings.
//!
//! Enrollment is one `BEGIN IMMEDIATE` transaction: check the invite, check
//! the name is free, add the key, mark the invite used. Two enrollments racing
//! (the same token twice, or two invites for one name) serialize on SQLite's
//! write lock, so exactly one wins and the loser changes nothing.

use anyhow::{Result, bail};
use rusqlite::{OptionalExtension, TransactionBehavior, params};
use serde::Serialize;

use super::{KeyRecord, Store, insert_key, now};
use crate::protocol::token::{Invite, same_hash};
use crate::protocol::{DeviceId, Name, Role};
use crate::ssh::keys::{PublicKey, fingerprint};

/// An invite as `invite ls` shows it (never its secret).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InviteRecord {
    pub id: String,
    pub system: String,
    pub role: Role,
    pub name: String,
    pub created: u64,
    pub expires: u64,
    /// `pending`, `used`, `expired` or `revoked`.
    pub status: String,
    pub used: Option<u64>,
    /// Fingerprint of the key enrolled with it.
    pub used_by: Option<String>,
}

/// What `invite` stores: the secret only as its hash.
pub struct NewInvite<'a> {
    pub id: &'a str,
    pub secret_hash: &'a str,
    pub system: &'a Name,
    pub role: Role,
    pub name: &'a Name,
    pub expires: u64,
}

/// The active key that owns `(system, role, name)`, if any.
fn owner(
    conn: &rusqlite::Connection,
    system: &Name,
    role: Role,
    name: &Name,
) -> Result<Option<String>> {
    Ok(conn
        .query_row(
            "SELECT fingerprint FROM keys WHERE system = ?1 AND role = ?2 AND name = ?3 AND revoked IS NULL",
            params![system.as_str(), role.as_str(), name.as_str()],
            |r| r.get(0),
        )
        .optional()?)
}

fn name_taken(system: &Name, role: Role, name: &Name, fp: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "{role} name {name} in system {system} already belongs to key {fp}; revoke that key first or choose another name"
    )
}

impl Store {
    pub fn create_invite(&self, inv: &NewInvite<'_>) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.create_invite(inv);
        }
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists = tx
            .query_row(
                "SELECT 1 FROM systems WHERE name = ?1",
                [inv.system.as_str()],
                |_| Ok(()),
            )
            .optional()?
            .is_some();
        if !exists {
            bail!(
                "no system {}; add it first with `system add {}`",
                inv.system,
                inv.system
            );
        }
        if let Some(fp) = owner(&tx, inv.system, inv.role, inv.name)? {
            return Err(name_taken(inv.system, inv.role, inv.name, &fp));
        }
        tx.execute(
            "INSERT INTO invites (id, secret_hash, system, role, name, created, expires) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                inv.id,
                inv.secret_hash,
                inv.system.as_str(),
                inv.role.as_str(),
                inv.name.as_str(),
                now(),
                inv.expires
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn invites(&self) -> Result<Vec<InviteRecord>> {
        if let Some(pg) = &self.pg {
            return pg.invites();
        }
        let conn = self.read();
        let mut st = conn.prepare(
            "SELECT id, system, role, name, created, expires, used, used_by, revoked FROM invites ORDER BY created DESC, id",
        )?;
        let t = now();
        let rows = st.query_map([], |r| {
            let used: Option<i64> = r.get(6)?;
            let revoked: Option<i64> = r.get(8)?;
            let expires = r.get::<_, i64>(5)?.max(0) as u64;
            let status = if used.is_some() {
                "used"
            } else if revoked.is_some() {
                "revoked"
            } else if expires <= t {
                "expired"
            } else {
                "pending"
            };
            Ok((
                InviteRecord {
                    id: r.get(0)?,
                    system: r.get(1)?,
                    role: Role::Device,
                    name: r.get(3)?,
                    created: r.get::<_, i64>(4)?.max(0) as u64,
                    expires,
                    status: status.into(),
                    used: used.map(|v| v.max(0) as u64),
                    used_by: r.get(7)?,
                },
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (mut rec, role) = row?;
            rec.role = role.parse().map_err(anyhow::Error::msg)?;
            out.push(rec);
        }
        Ok(out)
    }

    /// Revokes a pending invite; returns it.
    pub fn revoke_invite(&self, id: &str) -> Result<InviteRecord> {
        if let Some(pg) = &self.pg {
            return pg.revoke_invite(id);
        }
        let n = self.lock().execute(
            "UPDATE invites SET revoked = ?1 WHERE id = ?2 AND revoked IS NULL AND used IS NULL",
            params![now(), id],
        )?;
        let Some(rec) = self.invites()?.into_iter().find(|i| i.id == id) else {
            bail!("no invite {id} (see `invite ls`)");
        };
        if n == 0 {
            bail!("invite {id} is {} and cannot be revoked", rec.status);
        }
        Ok(rec)
    }

    /// Redeems `invite` for `key`. On any refusal nothing is written.
    pub fn enroll(&self, invite: &Invite, key: &PublicKey) -> Result<KeyRecord> {
        if let Some(pg) = &self.pg {
            return pg.enroll(invite, key);
        }
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let row = tx
            .query_row(
                "SELECT secret_hash, system, role, name, expires, used, revoked FROM invites WHERE id = ?1",
                [&invite.id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, i64>(4)?,
                        r.get::<_, Option<i64>>(5)?,
                        r.get::<_, Option<i64>>(6)?,
                    ))
                },
            )
            .optional()?;
        let Some((hash, system, role, name, expires, used, revoked)) = row else {
            bail!(
                "invite token refused: this relay made no such invite (forged, or for another relay)"
            );
        };
        // The secret first: without it, nothing else about the invite is told.
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
        if (expires.max(0) as u64) <= now() {
            bail!(
                "invite token refused: it expired at {}",
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + std::time::Duration::from_secs(expires.max(0) as u64)
                )
            );
        }
        if let Some(fp) = owner(&tx, &invite.system, invite.role, &invite.name)? {
            return Err(name_taken(&invite.system, invite.role, &invite.name, &fp));
        }
        let rec = insert_key(
            &tx,
            &invite.system,
            invite.role,
            &invite.name,
            key,
            Some(&invite.id),
        )?;
        let n = tx.execute(
            "UPDATE invites SET used = ?1, used_by = ?2 WHERE id = ?3 AND used IS NULL",
            params![now(), fingerprint(key), invite.id],
        )?;
        if n != 1 {
            bail!("invite token refused: it was already used (an invite works once)");
        }
        tx.commit()?;
        Ok(rec)
    }

    pub fn setting(&self, name: &str) -> Result<Option<String>> {
        if let Some(pg) = &self.pg {
            return pg.setting(name);
        }
        Ok(self
            .read()
            .query_row(
                "SELECT value FROM relay_settings WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()?)
    }

    pub fn set_setting(&self, name: &str, value: &str) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.set_setting(name, value);
        }
        self.lock().execute(
            "INSERT INTO relay_settings (name, value) VALUES (?1, ?2)
             ON CONFLICT (name) DO UPDATE SET value = ?2",
            params![name, value],
        )?;
        Ok(())
    }

    /// Disables (refuses streams to) or enables a device. The device must be
    /// known: it has a device key or has been online.
    pub fn set_device_disabled(&self, system: &Name, name: &Name, disabled: bool) -> Result<()> {
        if let Some(pg) = &self.pg {
            return pg.set_device_disabled(system, name, disabled);
        }
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let known = owner(&tx, system, Role::Device, name)?.is_some()
            || tx
                .query_row(
                    "SELECT 1 FROM devices WHERE system = ?1 AND name = ?2",
                    [system.as_str(), name.as_str()],
                    |_| Ok(()),
                )
                .optional()?
                .is_some();
        if !known {
            bail!("no device {name} in system {system}");
        }
        tx.execute(
            "INSERT INTO devices (system, name, disabled) VALUES (?1, ?2, ?3)
             ON CONFLICT (system, name) DO UPDATE SET disabled = ?3",
            params![system.as_str(), name.as_str(), i64::from(disabled)],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Every disabled device (rows whose names no longer parse are skipped:
    /// no such device can be online).
    pub fn disabled_devices(&self) -> Result<Vec<DeviceId>> {
        if let Some(pg) = &self.pg {
            return pg.disabled_devices();
        }
        let conn = self.read();
        let mut st = conn.prepare("SELECT system, name FROM devices WHERE disabled = 1")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let rows: Vec<(String, String)> = rows.collect::<Result<_, _>>()?;
        Ok(rows
            .into_iter()
            .filter_map(|(s, n)| Some(DeviceId::new(Name::parse(&s).ok()?, Name::parse(&n).ok()?)))
            .collect())
    }
}
