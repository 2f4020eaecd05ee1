//! Labels an admin set on a device (`warren admin device label`, `PUT
//! /api/v1/devices/{system}/{name}/labels`), in a table of their own beside
//! the labels the agent reports at each registration.
//!
//! The merge rule: an admin's label overrides the agent's label of the same
//! key; an admin may also hide an agent's label (a removal, stored as a row
//! without a value). The agent's other labels still show. The agent's
//! re-registration rewrites only its own labels, so the admin's word always
//! wins. `reset` forgets the admin's word on a key (the agent's shows again).
//! Tested on both backends in `tests/store_backends.rs`.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Result, bail};
use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::{DeviceStatus, Store, now};
use crate::protocol::Name;
use crate::protocol::device_info::{check_label_key, check_labels};
use crate::protocol::limits::MAX_LABELS;

/// One admin label as stored: `value` `None` hides the agent's label.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AdminLabel {
    pub system: String,
    pub name: String,
    pub key: String,
    pub value: Option<String>,
}

/// A checked change to a device's admin labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelEdit {
    /// Labels the admin sets (overriding the agent's of the same key).
    pub set: BTreeMap<String, String>,
    /// Keys the admin hides.
    pub remove: Vec<String>,
    /// Keys whose admin label or removal is forgotten.
    pub reset: Vec<String>,
}

impl LabelEdit {
    /// Checks keys and values by the agents' rule (and its limits), and
    /// that the change names each key once and changes something.
    pub fn new(
        set: BTreeMap<String, String>,
        remove: Vec<String>,
        reset: Vec<String>,
    ) -> Result<LabelEdit, String> {
        check_labels(&set)?;
        let mut seen: Vec<&str> = set.keys().map(String::as_str).collect();
        for k in remove.iter().chain(&reset) {
            check_label_key(k)?;
            if seen.contains(&k.as_str()) {
                return Err(format!("label key {k:?} is named twice"));
            }
            seen.push(k);
        }
        if seen.is_empty() {
            return Err("no label change: give KEY=VALUE, --remove KEY or --reset KEY".into());
        }
        if seen.len() > MAX_LABELS {
            return Err(format!("at most {MAX_LABELS} label changes at once"));
        }
        Ok(LabelEdit { set, remove, reset })
    }

    /// The rows to write: `(key, Some(value))` to set, `(key, None)` to hide.
    pub(crate) fn writes(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        let set = self.set.iter().map(|(k, v)| (k.as_str(), Some(v.as_str())));
        set.chain(self.remove.iter().map(|k| (k.as_str(), None)))
    }
}

/// The refusal when a device has too many admin labels after a change.
pub(crate) fn too_many(name: &Name, system: &Name) -> anyhow::Error {
    anyhow::anyhow!(
        "device {name} in system {system} would have more than {MAX_LABELS} admin labels (set or hidden); reset some first"
    )
}

/// Lays the admin's labels over each device's agent labels.
pub fn merge(devices: &mut [DeviceStatus], admin: Vec<AdminLabel>) {
    let index: HashMap<(&str, &str), usize> = devices
        .iter()
        .enumerate()
        .map(|(i, d)| ((d.system.as_str(), d.name.as_str()), i))
        .collect();
    let mut at = Vec::with_capacity(admin.len());
    for l in admin {
        if let Some(&i) = index.get(&(l.system.as_str(), l.name.as_str())) {
            at.push((i, l));
        }
    }
    drop(index);
    for (i, l) in at {
        let d = &mut devices[i];
        match l.value {
            Some(v) => {
                d.labels.insert(l.key.clone(), v);
                d.admin_labels.push(l.key);
            }
            None => {
                d.labels.remove(&l.key);
                d.hidden_labels.push(l.key);
            }
        }
    }
}

impl Store {
    /// Applies `edit` to a known device's admin labels (a device key or a
    /// status row, as for `device disable`); returns its admin labels after.
    pub fn set_labels(
        &self,
        system: &Name,
        name: &Name,
        edit: &LabelEdit,
    ) -> Result<Vec<AdminLabel>> {
        if let Some(pg) = &self.pg {
            return pg.set_labels(system, name, edit);
        }
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let p = [system.as_str(), name.as_str()];
        let exists = |sql: &str| -> Result<bool> {
            Ok(tx.query_row(sql, p, |_| Ok(())).optional()?.is_some())
        };
        let known = exists(
            "SELECT 1 FROM keys WHERE system = ?1 AND role = 'device' AND name = ?2 AND revoked IS NULL",
        )? || exists("SELECT 1 FROM devices WHERE system = ?1 AND name = ?2")?;
        if !known {
            bail!("no device {name} in system {system}");
        }
        let t = now() as i64;
        for (key, value) in edit.writes() {
            tx.execute(
                "INSERT INTO device_labels (system, name, key, value, updated) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (system, name, key) DO UPDATE SET value = ?4, updated = ?5",
                params![p[0], p[1], key, value, t],
            )?;
        }
        for key in &edit.reset {
            tx.execute(
                "DELETE FROM device_labels WHERE system = ?1 AND name = ?2 AND key = ?3",
                params![p[0], p[1], key],
            )?;
        }
        let rows = read_labels(&tx, p)?;
        if rows.len() > MAX_LABELS {
            // Dropping `tx` rolls the change back.
            return Err(too_many(name, system));
        }
        tx.commit()?;
        Ok(rows)
    }

    /// Every admin label (of `system`, when given), by system, name and key.
    pub fn admin_labels(&self, system: Option<&str>) -> Result<Vec<AdminLabel>> {
        if let Some(pg) = &self.pg {
            return pg.admin_labels(system);
        }
        let conn = self.read();
        let mut st = conn.prepare(
            "SELECT system, name, key, value FROM device_labels
             WHERE ?1 IS NULL OR system = ?1 ORDER BY system, name, key",
        )?;
        let rows = st.query_map([system], row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AdminLabel> {
    Ok(AdminLabel {
        system: r.get(0)?,
        name: r.get(1)?,
        key: r.get(2)?,
        value: r.get(3)?,
    })
}

/// One device's admin labels, inside a transaction.
fn read_labels(conn: &rusqlite::Connection, [s, n]: [&str; 2]) -> Result<Vec<AdminLabel>> {
    let mut st = conn.prepare(
        "SELECT system, name, key, value FROM device_labels WHERE system = ?1 AND name = ?2 ORDER BY key",
    )?;
    let rows = st.query_map([s, n], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(set: &[(&str, &str)], remove: &[&str], reset: &[&str]) -> Result<LabelEdit, String> {
        let s = |l: &[&str]| l.iter().map(|k| k.to_string()).collect();
        LabelEdit::new(
            set.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            s(remove),
            s(reset),
        )
    }

    #[test]
    fn edits_are_checked_by_the_agents_rule() {
        assert!(edit(&[("site", "lab9")], &["gpu"], &["room"]).is_ok());
        let e = edit(&[("bad key", "x")], &[], &[]).unwrap_err();
        assert!(e.starts_with("label key \"bad key\""), "{e}");
        let e = edit(&[("site", "has space")], &[], &[]).unwrap_err();
        assert!(e.contains("values use letters"), "{e}");
        let e = edit(&[], &["-x"], &[]).unwrap_err();
        assert!(e.starts_with("label key \"-x\""), "{e}");
        let e = edit(&[("site", "a")], &["site"], &[]).unwrap_err();
        assert_eq!(e, "label key \"site\" is named twice");
        assert!(
            edit(&[], &[], &[])
                .unwrap_err()
                .starts_with("no label change")
        );
    }

    #[test]
    fn the_admins_word_overrides_and_hides() {
        let mut d = DeviceStatus {
            labels: [("site", "lab3"), ("gpu", "a100"), ("os", "debian")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..DeviceStatus::offline("tau", "dev1")
        };
        let l = |k: &str, v: Option<&str>| AdminLabel {
            system: "tau".into(),
            name: "dev1".into(),
            key: k.into(),
            value: v.map(String::from),
        };
        let mut other = l("site", Some("x"));
        other.name = "dev2".into();
        merge(
            std::slice::from_mut(&mut d),
            vec![
                l("gpu", None),
                l("room", Some("b12")),
                l("site", Some("lab9")),
                other,
            ],
        );
        let want = [("os", "debian"), ("room", "b12"), ("site", "lab9")];
        let want: BTreeMap<String, String> = want
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(d.labels, want);
        assert_eq!(d.admin_labels, ["room", "site"]);
        assert_eq!(d.hidden_labels, ["gpu"]);
    }
}
