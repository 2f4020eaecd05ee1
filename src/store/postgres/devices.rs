//! Device status and who holds each device, on PostgreSQL.
//!
//! A relay that registers a device claims it: the row names the relay and
//! its epoch grows by one, in the same transaction as a `warren_owner`
//! notification. The relay remembers the epoch of its claim; its later
//! writes for that device (down, last seen) only apply while the row still
//! names it and that epoch, so a relay that lost the device (it reconnected
//! elsewhere) cannot take it back with a late write.

use std::net::SocketAddr;

use anyhow::{Result, bail};

use super::Pg;
use super::keys::u;
use crate::protocol::device_info::DeviceInfo;
use crate::protocol::{DeviceId, Name};
use crate::store::{DeviceStatus, DeviceUp, join_ports, now, split_ports};

/// Devices whose last-seen time one statement writes.
const TOUCH_BATCH: usize = 1000;

impl Pg {
    pub fn device_up(
        &self,
        system: &str,
        name: &str,
        peer: SocketAddr,
        ports: &[u16],
        info: &DeviceInfo,
    ) -> Result<()> {
        self.devices_up(&[DeviceUp {
            system: system.to_string(),
            name: name.to_string(),
            peer,
            ports: ports.to_vec(),
            info: info.clone(),
        }])?;
        Ok(())
    }

    /// Claims every device of `ups` (and records whether each is on demand)
    /// in one transaction of two statements whatever the batch's size: a
    /// registration storm costs one commit and four round trips per batch
    /// (begin, the claims with their notifications, the on-demand flags,
    /// commit) rather than three round trips per device.
    pub fn devices_up(&self, ups: &[DeviceUp]) -> Result<()> {
        let t = now() as i64;
        let relay = self.relay_id();
        // Rows are locked in one order on every relay (by device, in the
        // order of the arrays), and each device is claimed once (its latest
        // Up): two relays batching the same devices in different orders
        // cannot deadlock each other.
        let mut latest = std::collections::BTreeMap::new();
        for u in ups {
            latest.insert((u.system.as_str(), u.name.as_str()), u);
        }
        let ups: Vec<&DeviceUp> = latest.into_values().collect();
        if ups.is_empty() {
            return Ok(());
        }
        let claimed = self.block(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            let claimed = claim_in(&tx, &ups, t, relay.as_deref()).await?;
            // After the claims: this transaction holds every device's row,
            // so another batch touching the same flags waits for it there.
            on_demand_in(&tx, &ups).await?;
            tx.commit().await?;
            Ok(claimed)
        })?;
        let mut held = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        for (system, name, epoch) in claimed {
            held.insert((system, name), epoch);
        }
        Ok(())
    }

    /// The epoch of this relay's claim on a device, if it holds it.
    fn held(&self, system: &str, name: &str) -> i64 {
        self.epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(system.to_string(), name.to_string()))
            .copied()
            .unwrap_or(-1)
    }

    pub fn device_down(&self, system: &str, name: &str) -> Result<()> {
        let t = now() as i64;
        let relay = self.relay_id();
        let epoch = self.held(system, name);
        // The other relays' holder maps forget the device with its claim.
        self.block(async {
            let c = self.client().await?;
            c.execute(
                "WITH down AS (
                   UPDATE devices SET online = 0, since = $3, last_seen = $3, streams = 0
                   WHERE system = $1 AND name = $2 AND relay IS NOT DISTINCT FROM $4 AND epoch = $5
                   RETURNING system, name, relay, epoch)
                 SELECT pg_notify('warren_owner', json_build_object('system', system, 'name', name,
                   'relay', relay, 'epoch', epoch, 'online', false)::text)
                 FROM down WHERE relay IS NOT NULL",
                &[&system, &name, &t, &relay, &epoch],
            )
            .await?;
            Ok(())
        })?;
        let mut epochs = self.epochs.lock().unwrap_or_else(|p| p.into_inner());
        if epochs.get(&(system.to_string(), name.to_string())) == Some(&epoch) {
            epochs.remove(&(system.to_string(), name.to_string()));
        }
        Ok(())
    }

    /// Marks offline the devices this relay (or, without a relay, nobody)
    /// held: at start, nobody is connected to it yet.
    pub fn all_devices_down(&self) -> Result<()> {
        let relay = self.relay_id();
        self.block(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            tx.execute(
                "UPDATE devices SET online = 0, since = last_seen, streams = 0
                 WHERE online = 1 AND relay IS NOT DISTINCT FROM $1",
                &[&relay],
            )
            .await?;
            if let Some(relay) = &relay {
                // Every relay's holder map forgets what this one held.
                let note = super::Claim {
                    system: String::new(),
                    name: String::new(),
                    relay: relay.clone(),
                    epoch: 0,
                    online: false,
                };
                tx.execute(
                    "SELECT pg_notify('warren_owner', $1)",
                    &[&serde_json::to_string(&note)?],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Last seen and stream counts of the devices this relay holds: one
    /// statement per [`TOUCH_BATCH`] devices (in device order, as claims
    /// lock them), each its own short transaction, so the per-minute touch
    /// of a full relay holds no connection or row lock for long.
    pub fn touch_devices(&self, devices: &[(String, String, u64)]) -> Result<()> {
        let t = now() as i64;
        let relay = self.relay_id();
        let mut rows: Vec<(&str, &str, i64, i64)> = devices
            .iter()
            .map(|(s, n, streams)| (s.as_str(), n.as_str(), *streams as i64, self.held(s, n)))
            .collect();
        rows.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        self.block(async {
            let c = self.client().await?;
            let st = c
                .prepare(
                    // The rows are locked first, in the arrays' (device)
                    // order: an UPDATE … FROM alone locks them in whatever
                    // order its join visits them, which could deadlock with
                    // another relay's batch of claims.
                    "WITH v AS (
                       SELECT * FROM unnest($2::text[], $3::text[], $4::bigint[], $5::bigint[])
                         WITH ORDINALITY AS v(system, name, streams, epoch, ord)),
                     locked AS (
                       SELECT d.system, d.name, v.streams FROM devices d
                       JOIN v ON d.system = v.system AND d.name = v.name
                       WHERE d.relay IS NOT DISTINCT FROM $6 AND d.epoch = v.epoch
                       ORDER BY v.ord FOR UPDATE OF d)
                     UPDATE devices d SET last_seen = $1, streams = l.streams
                     FROM locked l WHERE d.system = l.system AND d.name = l.name",
                )
                .await?;
            for chunk in rows.chunks(TOUCH_BATCH) {
                let systems: Vec<&str> = chunk.iter().map(|r| r.0).collect();
                let names: Vec<&str> = chunk.iter().map(|r| r.1).collect();
                let streams: Vec<i64> = chunk.iter().map(|r| r.2).collect();
                let epochs: Vec<i64> = chunk.iter().map(|r| r.3).collect();
                c.execute(&st, &[&t, &systems, &names, &streams, &epochs, &relay])
                    .await?;
            }
            Ok(())
        })
    }

    pub fn devices(&self, system: Option<&str>) -> Result<Vec<DeviceStatus>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query(
                    "SELECT system, name, online, since, last_seen, address, ports, version, labels, streams, disabled FROM devices
                     WHERE $1::text IS NULL OR system = $1 ORDER BY system, name",
                    &[&system],
                )
                .await?;
            let mut out = Vec::new();
            for r in rows {
                let (system, name): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                let online = r.try_get::<_, i64>(2)? != 0;
                out.push(DeviceStatus {
                    online,
                    since: r.try_get::<_, Option<i64>>(3)?.map(u),
                    last_seen: r.try_get::<_, Option<i64>>(4)?.map(u),
                    address: r.try_get(5)?,
                    ports: split_ports(&r.try_get::<_, Option<String>>(6)?.unwrap_or_default()),
                    version: r.try_get(7)?,
                    labels: r
                        .try_get::<_, Option<String>>(8)?
                        .and_then(|l| serde_json::from_str(&l).ok())
                        .unwrap_or_default(),
                    streams: u(r.try_get(9)?),
                    disabled: r.try_get::<_, i64>(10)? != 0,
                    status: if online { "online" } else { "offline" }.into(),
                    ..DeviceStatus::offline(&system, &name)
                });
            }
            Ok(out)
        })
    }

    /// A device's last sighting; `None`: no such device (`Store::last_seen`).
    pub fn last_seen(&self, system: &str, name: &str) -> Result<Option<Option<u64>>> {
        self.block(async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "SELECT last_seen FROM devices WHERE system = $1 AND name = $2",
                    &[&system, &name],
                )
                .await?;
            Ok(row
                .map(|r| r.try_get::<_, Option<i64>>(0).map(|t| t.map(u)))
                .transpose()?)
        })
    }

    /// Which relay holds a device now (per the store), if any.
    pub fn device_holder(&self, system: &str, name: &str) -> Result<Option<(String, i64)>> {
        self.block(async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "SELECT relay, epoch FROM devices WHERE system = $1 AND name = $2 AND online = 1 AND relay IS NOT NULL",
                    &[&system, &name],
                )
                .await?;
            Ok(row
                .map(|r| Ok::<_, tokio_postgres::Error>((r.try_get(0)?, r.try_get(1)?)))
                .transpose()?)
        })
    }

    pub fn set_device_disabled(&self, system: &Name, name: &Name, disabled: bool) -> Result<()> {
        self.block(async {
            let mut c = self.client().await?;
            let tx = c.transaction().await?;
            super::keys::serialize(&tx).await?;
            let key = tx
                .query_opt(
                    "SELECT 1 FROM keys WHERE system = $1 AND role = 'device' AND name = $2 AND revoked IS NULL",
                    &[&system.as_str(), &name.as_str()],
                )
                .await?
                .is_some();
            let seen = tx
                .query_opt(
                    "SELECT 1 FROM devices WHERE system = $1 AND name = $2",
                    &[&system.as_str(), &name.as_str()],
                )
                .await?
                .is_some();
            if !key && !seen {
                bail!("no device {name} in system {system}");
            }
            tx.execute(
                "INSERT INTO devices (system, name, disabled) VALUES ($1, $2, $3)
                 ON CONFLICT (system, name) DO UPDATE SET disabled = EXCLUDED.disabled",
                &[&system.as_str(), &name.as_str(), &i64::from(disabled)],
            )
            .await?;
            tx.execute("SELECT pg_notify('warren', 'devices')", &[])
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    pub fn disabled_devices(&self) -> Result<Vec<DeviceId>> {
        self.block(async {
            let c = self.client().await?;
            let rows = c
                .query("SELECT system, name FROM devices WHERE disabled = 1", &[])
                .await?;
            let mut out = Vec::new();
            for r in rows {
                let (s, n): (String, String) = (r.try_get(0)?, r.try_get(1)?);
                if let (Ok(s), Ok(n)) = (Name::parse(&s), Name::parse(&n)) {
                    out.push(DeviceId::new(s, n));
                }
            }
            Ok(out)
        })
    }
}

/// Claims `ups` (sorted by device, each once) for `relay` in one statement
/// that also sends each claim's `warren_owner` notification (the JSON of a
/// [`super::Claim`], one per device: far under PostgreSQL's 8,000 bytes);
/// returns each device's new epoch.
async fn claim_in(
    tx: &deadpool_postgres::Transaction<'_>,
    ups: &[&DeviceUp],
    t: i64,
    relay: Option<&str>,
) -> Result<Vec<(String, String, i64)>> {
    let mut labels = Vec::with_capacity(ups.len());
    for u in ups {
        labels.push(serde_json::to_string(&u.info.labels)?);
    }
    let systems: Vec<&str> = ups.iter().map(|u| u.system.as_str()).collect();
    let names: Vec<&str> = ups.iter().map(|u| u.name.as_str()).collect();
    let addresses: Vec<String> = ups.iter().map(|u| u.peer.to_string()).collect();
    let ports: Vec<String> = ups.iter().map(|u| join_ports(&u.ports)).collect();
    let versions: Vec<Option<&str>> = ups.iter().map(|u| u.info.version.as_deref()).collect();
    let st = tx
        .prepare_cached(
            "WITH claimed AS (
               INSERT INTO devices (system, name, online, since, last_seen, address, ports, version, labels, relay, epoch)
               SELECT v.system, v.name, 1, $7, $7, v.address, v.ports, v.version, v.labels, $8, 1
               FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
                 WITH ORDINALITY AS v(system, name, address, ports, version, labels, ord)
               ORDER BY v.ord
               ON CONFLICT (system, name) DO UPDATE SET online = 1, since = EXCLUDED.since,
                 last_seen = EXCLUDED.last_seen, address = EXCLUDED.address, ports = EXCLUDED.ports,
                 version = EXCLUDED.version, labels = EXCLUDED.labels, relay = EXCLUDED.relay,
                 epoch = devices.epoch + 1
               RETURNING system, name, epoch)
             SELECT system, name, epoch, pg_notify('warren_owner', json_build_object('system', system,
               'name', name, 'relay', coalesce($8::text, ''), 'epoch', epoch, 'online', true)::text)
             FROM claimed",
        )
        .await?;
    let rows = tx
        .query(
            &st,
            &[
                &systems, &names, &addresses, &ports, &versions, &labels, &t, &relay,
            ],
        )
        .await?;
    if rows.len() != ups.len() {
        bail!("claimed {} of {} devices", rows.len(), ups.len());
    }
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
    }
    Ok(out)
}

/// Records which devices of `ups` are on demand and which are not, in one
/// statement (the on-demand rows of those that are, none for the others).
async fn on_demand_in(tx: &deadpool_postgres::Transaction<'_>, ups: &[&DeviceUp]) -> Result<()> {
    let systems: Vec<&str> = ups.iter().map(|u| u.system.as_str()).collect();
    let names: Vec<&str> = ups.iter().map(|u| u.name.as_str()).collect();
    let flags: Vec<bool> = ups.iter().map(|u| u.info.on_demand).collect();
    let st = tx
        .prepare_cached(
            "WITH v AS (
               SELECT * FROM unnest($1::text[], $2::text[], $3::bool[]) WITH ORDINALITY
                 AS v(system, name, on_demand, ord)),
             added AS (
               INSERT INTO on_demand (system, name)
               SELECT system, name FROM v WHERE on_demand ORDER BY ord
               ON CONFLICT DO NOTHING)
             DELETE FROM on_demand o USING v
             WHERE NOT v.on_demand AND o.system = v.system AND o.name = v.name",
        )
        .await?;
    tx.execute(&st, &[&systems, &names, &flags]).await?;
    Ok(())
}
