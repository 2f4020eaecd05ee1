//! The cluster's registry of relays (id, address for other relays, host
//! key, heartbeat) and the claims relays make on devices.

use anyhow::Result;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use super::Pg;
use super::holders::Known;
use super::keys::u;
use crate::protocol::limits::RELAY_HEARTBEAT_INTERVAL as HEARTBEAT_INTERVAL;
use crate::store::now;

/// A relay's claim on a device, as `warren_owner` notifications carry it;
/// `online: false`: the device left that relay (the claim of that epoch
/// ends); an empty `name`: the relay started and holds nothing so far.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claim {
    pub system: String,
    pub name: String,
    pub relay: String,
    pub epoch: i64,
    #[serde(default = "online")]
    pub online: bool,
}

fn online() -> bool {
    true
}

/// A relay of the cluster, as the registry holds it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RelayRecord {
    pub id: String,
    pub address: Option<String>,
    pub host_key: String,
    pub started: u64,
    pub heartbeat: u64,
}

impl Pg {
    /// Enters this relay in the registry (or renews its row) and starts its
    /// heartbeat; from now on device claims name it.
    pub fn join(&self, id: &str, address: Option<&str>, host_key: &str) -> Result<()> {
        let t = now() as i64;
        self.block(async {
            let c = self.client().await?;
            c.execute(
                "INSERT INTO relays (id, address, host_key, started, heartbeat) VALUES ($1, $2, $3, $4, $4)
                 ON CONFLICT (id) DO UPDATE SET address = $2, host_key = $3, started = $4, heartbeat = $4",
                &[&id, &address, &host_key, &t],
            )
            .await?;
            Ok(())
        })?;
        *self.relay.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.to_string());
        let pool = self.pool.clone();
        let holders = self.holders.clone();
        let id = id.to_string();
        self.handle().spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            loop {
                tick.tick().await;
                let Ok(c) = pool.get().await else { continue };
                let t = now() as i64;
                let _ = c
                    .execute("UPDATE relays SET heartbeat = $2 WHERE id = $1", &[&id, &t])
                    .await;
                // Which relays beat: whose claims a hop may follow.
                if let Ok(relays) = read_relays(&c).await {
                    holders.set_relays(relays, t as u64);
                }
                let dead = t - 3 * HEARTBEAT_INTERVAL.as_secs() as i64;
                let _ = sweep_dead(&c, dead).await;
            }
        });
        Ok(())
    }

    pub fn relays(&self) -> Result<Vec<RelayRecord>> {
        self.block(async {
            let c = self.client().await?;
            read_relays(&c).await
        })
    }

    /// The relay that holds `system/name` now, if another relay of the
    /// registry does, from the claims received ([`super::holders`]); the
    /// store is asked only when they do not say (no claim seen, or the
    /// holder's heartbeat stopped).
    pub fn holder(&self, system: &str, name: &str) -> Result<Option<RelayRecord>> {
        if let Some(known) = self.holder_known(system, name) {
            return Ok(known);
        }
        self.holders.queried();
        self.held_by_other(system, name)
    }

    /// What the claims received say of `system/name` without asking the
    /// store: `Some(None)` held here, `Some(Some(r))` held by relay `r`;
    /// `None`: they do not say ([`Pg::holder`] asks the store), which is
    /// also the answer while the listening connection is down (claims made
    /// meanwhile have not arrived; the map is read afresh when it is back).
    pub fn holder_known(&self, system: &str, name: &str) -> Option<Option<RelayRecord>> {
        if !self.listening() {
            return None;
        }
        let me = self.relay_id();
        match self.holders.known(system, name, me.as_deref()) {
            Known::Here => Some(None),
            Known::By(r) => Some(Some(r)),
            Known::Unknown | Known::Stale => None,
        }
    }

    /// Holder lookups ([`Pg::holder`]) that had to ask the store.
    pub fn holder_queries(&self) -> u64 {
        self.holders
            .queries
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The relay that holds `system/name` now, if another relay of the
    /// registry does (and its heartbeat is recent: a relay that died holds
    /// nothing).
    pub fn held_by_other(&self, system: &str, name: &str) -> Result<Option<RelayRecord>> {
        Ok(self.held_by_other_claim(system, name)?.map(|(r, _)| r))
    }

    /// After a hop to relay `failed` for `system/name` did not open: where
    /// the store says the device is now (a query, counted with
    /// [`Pg::holder_queries`]), which also corrects the claims received
    /// ([`super::holders`]). `unreachable`: `failed` could not be reached
    /// at all (dialing or logging in to it failed), so what it holds asks
    /// the store too until it beats again. `None`: no relay but `failed` (or
    /// none but this one) holds the device: the hop fails as it did.
    pub fn holder_after_failed_hop(
        &self,
        system: &str,
        name: &str,
        failed: &str,
        unreachable: bool,
    ) -> Result<Option<RelayRecord>> {
        if unreachable {
            self.holders.unreachable(failed);
        }
        self.holders.queried();
        let Some((relay, epoch)) = self.held_by_other_claim(system, name)? else {
            return Ok(None);
        };
        self.holders.correct(&Claim {
            system: system.to_string(),
            name: name.to_string(),
            relay: relay.id.clone(),
            epoch,
            online: true,
        });
        Ok((relay.id != failed).then_some(relay))
    }

    /// [`Pg::held_by_other`] with the epoch of that relay's claim.
    fn held_by_other_claim(&self, system: &str, name: &str) -> Result<Option<(RelayRecord, i64)>> {
        let me = self.relay_id();
        let fresh = now().saturating_sub(3 * HEARTBEAT_INTERVAL.as_secs()) as i64;
        self.block(async {
            let c = self.client().await?;
            let row = c
                .query_opt(
                    "SELECT r.id, r.address, r.host_key, r.started, r.heartbeat, d.epoch FROM devices d JOIN relays r ON r.id = d.relay
                     WHERE d.system = $1 AND d.name = $2 AND d.online = 1 AND r.heartbeat >= $3
                       AND r.id IS DISTINCT FROM $4",
                    &[&system, &name, &fresh, &me],
                )
                .await?;
            Ok(match row {
                Some(r) => Some((
                    RelayRecord {
                        id: r.try_get(0)?,
                        address: r.try_get(1)?,
                        host_key: r.try_get(2)?,
                        started: u(r.try_get(3)?),
                        heartbeat: u(r.try_get(4)?),
                    },
                    r.try_get(5)?,
                )),
                None => None,
            })
        })
    }

    /// The id of the registry's relay whose host key is `fp`, if any: only
    /// those may open hops to this relay.
    pub fn relay_with_key(&self, fp: &str) -> Result<Option<String>> {
        self.block(async {
            let c = self.client().await?;
            Ok(
                c.query_opt("SELECT id FROM relays WHERE host_key = $1", &[&fp])
                    .await?
                    .map(|r| r.try_get(0))
                    .transpose()?,
            )
        })
    }

    /// Devices this relay held that another relay claimed since (each
    /// once): the relay closes its stale connection.
    pub fn lost_devices(&self) -> broadcast::Receiver<(String, String)> {
        self.lost.subscribe()
    }
}

/// Devices of a relay that stopped beating (before `dead`) are offline:
/// their agents are moving to other relays, which claim them anew. Every
/// relay sweeps, every heartbeat, while those claims are being written: the
/// rows are locked in device order (as claims lock them) and rows another
/// transaction holds (a claim in flight, another relay's sweep) are
/// skipped, so a sweep never waits on a claim nor deadlocks with one (an
/// `UPDATE … WHERE relay IN …` alone locked them in whatever order it met
/// them, and held up the claims of a survivor's registration storm).
async fn sweep_dead(c: &tokio_postgres::Client, dead: i64) -> Result<()> {
    let gone: Vec<String> = c
        .query("SELECT id FROM relays WHERE heartbeat < $1", &[&dead])
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
    if gone.is_empty() {
        return Ok(());
    }
    c.execute(
        "WITH gone AS (
           SELECT system, name FROM devices
           WHERE online = 1 AND relay = ANY($1::text[])
           ORDER BY system, name FOR UPDATE SKIP LOCKED)
         UPDATE devices d SET online = 0, since = d.last_seen, streams = 0
         FROM gone g WHERE d.system = g.system AND d.name = g.name",
        &[&gone],
    )
    .await?;
    Ok(())
}

pub(super) async fn read_relays(c: &tokio_postgres::Client) -> Result<Vec<RelayRecord>> {
    let rows = c
        .query(
            "SELECT id, address, host_key, started, heartbeat FROM relays ORDER BY id",
            &[],
        )
        .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push(RelayRecord {
            id: r.try_get(0)?,
            address: r.try_get(1)?,
            host_key: r.try_get(2)?,
            started: u(r.try_get(3)?),
            heartbeat: u(r.try_get(4)?),
        });
    }
    Ok(out)
}
