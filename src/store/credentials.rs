//! The web console's and HTTP API's credentials: one-time login links,
//! console sessions and bearer tokens. Each is `ID.SECRET`; the store keeps
//! the id and the SHA-256 of the secret, never the secret, and compares
//! hashes in constant time.

use anyhow::{Result, bail};
use rusqlite::{OptionalExtension, Row, params};
use serde::Serialize;

use super::Store;
use crate::protocol::Role;
use crate::protocol::token::{Invite, hash_secret, same_hash};

/// What a credential is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CredKind {
    /// A one-time login link (`console-login`), traded for a session.
    Login,
    /// A console session (the cookie).
    Session,
    /// A bearer token for programs (`token create`).
    Token,
}

impl CredKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CredKind::Login => "login",
            CredKind::Session => "session",
            CredKind::Token => "token",
        }
    }
}

/// A stored credential, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Credential {
    pub id: String,
    pub kind: CredKind,
    /// The one system it sees; `None`: every system (admins only).
    pub system: Option<String>,
    pub role: Role,
    /// Who it acts for, as the audit log names them.
    pub who: String,
    pub created: u64,
    pub expires: u64,
    pub used: Option<u64>,
    pub revoked: Option<u64>,
}

/// A new credential: its record and the `ID.SECRET` text, shown once.
pub struct Issued {
    pub record: Credential,
    pub secret: String,
}

/// What to issue.
pub struct NewCredential<'a> {
    pub kind: CredKind,
    pub system: Option<&'a str>,
    pub role: Role,
    pub who: &'a str,
    /// Unix seconds.
    pub now: u64,
    pub ttl_secs: u64,
}

pub(crate) const COLUMNS: &str = "id, kind, system, role, who, created, expires, used, revoked";

fn record(r: &Row<'_>) -> rusqlite::Result<Credential> {
    record_at(r, 0)
}

/// Splits `ID.SECRET`; `None` if it is not shaped so.
fn split(text: &str) -> Option<(&str, &str)> {
    let (id, secret) = text.trim().split_once('.')?;
    let ok = id.len() == 12 && id.bytes().all(|b| b.is_ascii_hexdigit()) && secret.len() <= 64;
    ok.then_some((id, secret))
}

impl Store {
    /// Stores a new credential; the secret is returned, never stored.
    pub fn issue_credential(&self, new: &NewCredential<'_>) -> Result<Issued> {
        if !matches!(new.role, Role::Admin | Role::Controller) {
            bail!("only controller and admin keys may use the console or the API");
        }
        let (id, secret) = Invite::fresh_id_and_secret()?;
        let record = Credential {
            id,
            kind: new.kind,
            system: new.system.map(String::from),
            role: new.role,
            who: new.who.to_string(),
            created: new.now,
            expires: new.now.saturating_add(new.ttl_secs),
            used: None,
            revoked: None,
        };
        let hash = hash_secret(&secret);
        if let Some(pg) = &self.pg {
            pg.insert_credential(&record, &hash)?;
        } else {
            self.lock().execute(
                "INSERT INTO web_credentials (id, kind, secret_hash, system, role, who, created, expires)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    record.id,
                    record.kind.as_str(),
                    hash,
                    record.system,
                    record.role.to_string(),
                    record.who,
                    record.created as i64,
                    record.expires as i64
                ],
            )?;
        }
        Ok(Issued {
            secret: format!("{}.{secret}", record.id),
            record,
        })
    }

    /// The live credential of `kind` that `text` (`ID.SECRET`) names: not
    /// expired at `now`, not revoked, and (a login link) not used.
    pub fn check_credential(
        &self,
        kind: CredKind,
        text: &str,
        now: u64,
    ) -> Result<Option<Credential>> {
        let Some((id, secret)) = split(text) else {
            return Ok(None);
        };
        let found = match &self.pg {
            Some(pg) => pg.credential_with_hash(id, kind)?,
            None => self
                .read()
                .query_row(
                    &format!(
                        "SELECT secret_hash, {COLUMNS} FROM web_credentials WHERE id = ?1 AND kind = ?2"
                    ),
                    params![id, kind.as_str()],
                    |r| Ok((r.get(0)?, record_at(r, 1)?)),
                )
                .optional()?,
        };
        Ok(found.and_then(|(hash, c)| {
            let live = c.expires > now && c.revoked.is_none() && c.used.is_none();
            (same_hash(&hash, &hash_secret(secret)) && live).then_some(c)
        }))
    }

    /// Uses a one-time login link: marks it used and returns it, if it was
    /// live; a second use, or one after it expired, finds nothing (also
    /// when two relays of a cluster are handed the same link at once).
    pub fn redeem_login(&self, text: &str, now: u64) -> Result<Option<Credential>> {
        let Some(c) = self.check_credential(CredKind::Login, text, now)? else {
            return Ok(None);
        };
        let changed = match &self.pg {
            Some(pg) => pg.mark_login_used(&c.id, now)?,
            None => self.lock().execute(
                "UPDATE web_credentials SET used = ?2 WHERE id = ?1 AND used IS NULL",
                params![c.id, now as i64],
            )? as u64,
        };
        Ok((changed == 1).then_some(c))
    }

    /// Credentials of `kind`, newest first.
    pub fn credentials(&self, kind: CredKind) -> Result<Vec<Credential>> {
        if let Some(pg) = &self.pg {
            return pg.credentials(kind);
        }
        let conn = self.read();
        let mut st = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM web_credentials WHERE kind = ?1 ORDER BY created DESC, id"
        ))?;
        let rows = st.query_map([kind.as_str()], record)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Revokes one credential of `kind` by id.
    pub fn revoke_credential(&self, kind: CredKind, id: &str, now: u64) -> Result<Credential> {
        let revoked = match &self.pg {
            Some(pg) => pg.revoke_credential(kind, id, now)?,
            None => {
                let changed = self.lock().execute(
                    "UPDATE web_credentials SET revoked = ?3 WHERE id = ?1 AND kind = ?2 AND revoked IS NULL",
                    params![id, kind.as_str(), now as i64],
                )?;
                match changed {
                    0 => None,
                    _ => Some(self.read().query_row(
                        &format!("SELECT {COLUMNS} FROM web_credentials WHERE id = ?1"),
                        [id],
                        record,
                    )?),
                }
            }
        };
        match revoked {
            Some(c) => Ok(c),
            None => bail!("no active {} with id {id:?}", kind.as_str()),
        }
    }

    /// Ends every console session (and unused login link); returns how many.
    pub fn revoke_sessions(&self, now: u64) -> Result<usize> {
        if let Some(pg) = &self.pg {
            return pg.revoke_sessions(now);
        }
        Ok(self.lock().execute(
            "UPDATE web_credentials SET revoked = ?1
             WHERE kind IN ('session', 'login') AND revoked IS NULL AND used IS NULL AND expires > ?1",
            [now as i64],
        )?)
    }
}

impl CredKind {
    /// The kind a stored `kind` column names.
    pub(crate) fn from_column(s: &str) -> CredKind {
        match s {
            "login" => CredKind::Login,
            "session" => CredKind::Session,
            _ => CredKind::Token,
        }
    }
}

/// The role a stored `role` column names (only these two are stored).
pub(crate) fn role_from_column(s: &str) -> Role {
    match s {
        "admin" => Role::Admin,
        _ => Role::Controller,
    }
}

fn record_at(r: &Row<'_>, offset: usize) -> rusqlite::Result<Credential> {
    let kind = CredKind::from_column(&r.get::<_, String>(offset + 1)?);
    let role = role_from_column(&r.get::<_, String>(offset + 3)?);
    let opt = |i: usize| -> rusqlite::Result<Option<u64>> {
        Ok(r.get::<_, Option<i64>>(offset + i)?
            .map(|v| v.max(0) as u64))
    };
    Ok(Credential {
        id: r.get(offset)?,
        kind,
        system: r.get(offset + 2)?,
        role,
        who: r.get(offset + 4)?,
        created: r.get::<_, i64>(offset + 5)?.max(0) as u64,
        expires: r.get::<_, i64>(offset + 6)?.max(0) as u64,
        used: opt(7)?,
        revoked: opt(8)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_link_works_once_and_only_before_it_expires() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let new = |now| NewCredential {
            kind: CredKind::Login,
            system: Some("tau"),
            role: Role::Controller,
            who: "alice",
            now,
            ttl_secs: 300,
        };
        let link = store.issue_credential(&new(1000)).unwrap();
        assert!(store.redeem_login(&link.secret, 1299).unwrap().is_some());
        assert!(store.redeem_login(&link.secret, 1299).unwrap().is_none());
        let late = store.issue_credential(&new(1000)).unwrap();
        assert!(store.redeem_login(&late.secret, 1300).unwrap().is_none());
        let wrong = store.issue_credential(&new(1000)).unwrap();
        let (id, _) = wrong.secret.split_once('.').unwrap();
        assert!(
            store
                .redeem_login(&format!("{id}.nope"), 1001)
                .unwrap()
                .is_none()
        );
        assert!(store.redeem_login("garbage", 1001).unwrap().is_none());
        // A session can not stand in for a login link, nor the reverse.
        assert!(
            store
                .check_credential(CredKind::Session, &wrong.secret, 1001)
                .unwrap()
                .is_none()
        );
        let rows = store.credentials(CredKind::Login).unwrap();
        assert_eq!(rows.len(), 3);
        assert!(!format!("{rows:?}").contains(wrong.secret.split_once('.').unwrap().1));
    }

    #[test]
    fn revoked_sessions_and_tokens_stop_working() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let issue = |kind| {
            store
                .issue_credential(&NewCredential {
                    kind,
                    system: None,
                    role: Role::Admin,
                    who: "root",
                    now: 10,
                    ttl_secs: 100,
                })
                .unwrap()
        };
        let (s1, s2, t) = (
            issue(CredKind::Session),
            issue(CredKind::Session),
            issue(CredKind::Token),
        );
        assert!(
            store
                .check_credential(CredKind::Session, &s1.secret, 20)
                .unwrap()
                .is_some()
        );
        assert_eq!(store.revoke_sessions(20).unwrap(), 2);
        assert!(
            store
                .check_credential(CredKind::Session, &s1.secret, 21)
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .check_credential(CredKind::Session, &s2.secret, 21)
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .check_credential(CredKind::Token, &t.secret, 21)
                .unwrap()
                .is_some()
        );
        store
            .revoke_credential(CredKind::Token, &t.record.id, 22)
            .unwrap();
        assert!(
            store
                .check_credential(CredKind::Token, &t.secret, 23)
                .unwrap()
                .is_none()
        );
        assert!(
            store
                .revoke_credential(CredKind::Token, &t.record.id, 24)
                .is_err()
        );
    }
}
