//! The PostgreSQL backend of the [`Store`](super::Store): the same calls as
//! the SQLite backend, on a pooled `tokio-postgres` client, for several
//! relays that share one database (a cluster).
//!
//! Store calls block (the relay runs them through `Store::call`), so this
//! backend owns a small runtime of its own: the pool's connections and the
//! listening connection live on it, and each call waits for its future there
//! ([`Pg::block`]).
//!
//! Beyond the SQLite backend's state: which relay holds each device, with an
//! epoch that grows with every claim (a stale relay's late write names an
//! older epoch and changes nothing); the registry of relays with heartbeats;
//! and `LISTEN`/`NOTIFY`: revocations, disabled devices, gateway and public
//! port changes notify in the writing transaction (triggers), and a relay
//! resyncs fully whenever its listening connection comes back
//! ([`listen`]). Claims and devices going offline notify too, so each relay
//! knows in memory which relay holds every device ([`holders`]).

mod audit;
mod cluster;
mod copy;
mod credentials;
mod devices;
mod enroll;
mod gateways;
mod holders;
mod keys;
mod labels;
mod listen;
mod migrations;
mod on_demand;
mod rates;

use std::collections::HashMap;
use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::broadcast;
use tokio_postgres::NoTls;

use crate::protocol::limits::{DATABASE_CONNECT_TIMEOUT, DATABASE_POOL_SIZE, DATABASE_WAIT};
use crate::ssh::Fingerprint;

pub use cluster::{Claim, RelayRecord};
pub use copy::Copied;

/// The runtime the backend's connections live on; shut down without
/// waiting when the last store handle goes, from any thread (even an async one).
struct Rt(Option<tokio::runtime::Runtime>);

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// A store on PostgreSQL.
pub struct Pg {
    /// Kept for its drop (the runtime ends with the store).
    _rt: Rt,
    handle: tokio::runtime::Handle,
    pool: Pool,
    config: tokio_postgres::Config,
    /// Bumped by every notification but device claims, and every (re)connection of the
    /// listening connection: what `Store::data_version` returns.
    version: Arc<AtomicI64>,
    /// Whether the listening connection is up (the database is reachable).
    listening: Arc<AtomicBool>,
    /// Woken with every bump of `version` and every claim of another relay.
    changed: Arc<tokio::sync::Notify>,
    /// The relay this store serves, once it joined the cluster.
    relay: Arc<Mutex<Option<String>>>,
    /// The epoch of each device this relay holds, from its latest claim.
    epochs: Arc<Mutex<HashMap<(String, String), i64>>>,
    /// Devices this relay held and another relay claimed since.
    lost: broadcast::Sender<(String, String)>,
    /// Which relay holds each device of the cluster, from the claims.
    holders: Arc<holders::Holders>,
}

impl Pg {
    /// Connects to `url` (`postgres://…` or `key=value` form), migrates the
    /// schema (under an advisory lock: relays starting together take turns)
    /// and starts listening for changes.
    pub fn open(url: &str) -> Result<Pg> {
        let mut config = tokio_postgres::Config::from_str(url)
            .map_err(|e| anyhow!("bad database address {}: {e}", redact(url)))?;
        config.connect_timeout(DATABASE_CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("warren");
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("warren-postgres")
            .enable_all()
            .build()
            .context("starting the database runtime")?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(DATABASE_POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(DATABASE_WAIT))
            .create_timeout(Some(DATABASE_CONNECT_TIMEOUT))
            .build()
            .context("building the database pool")?;
        let (lost, _) = broadcast::channel(1024);
        let pg = Pg {
            handle: rt.handle().clone(),
            _rt: Rt(Some(rt)),
            pool,
            config,
            version: Arc::new(AtomicI64::new(0)),
            listening: Arc::new(AtomicBool::new(false)),
            changed: Arc::default(),
            relay: Arc::default(),
            epochs: Arc::default(),
            lost,
            holders: Arc::default(),
        };
        pg.block(async {
            let mut c = pg.client().await?;
            migrations::migrate(&mut c).await
        })
        .with_context(|| format!("opening database {}", redact(url)))?;
        pg.handle().spawn(listen::run(listen::Listener {
            config: pg.config.clone(),
            version: pg.version.clone(),
            changed: pg.changed.clone(),
            listening: pg.listening.clone(),
            relay: pg.relay.clone(),
            epochs: pg.epochs.clone(),
            lost: pg.lost.clone(),
            holders: pg.holders.clone(),
        }));
        Ok(pg)
    }

    fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `f` on the backend's runtime and waits for it. From a thread
    /// inside another runtime (the relay's blocking pool, or by mistake an
    /// async task) it waits on a scoped thread of its own, since a runtime
    /// cannot be entered from inside another.
    pub(crate) fn block<T: Send, F: Future<Output = Result<T>> + Send>(&self, f: F) -> Result<T> {
        let handle = self.handle();
        if tokio::runtime::Handle::try_current().is_err() {
            return handle.block_on(f);
        }
        std::thread::scope(|s| {
            s.spawn(|| handle.block_on(f))
                .join()
                .map_err(|_| anyhow!("a database call panicked"))?
        })
    }

    /// A pooled connection, or the reason there is none.
    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(|e| {
            anyhow!(
                "the database is unreachable ({e}); logins and changes are refused until it is back"
            )
        })
    }

    /// Whether the listening connection is up (so notifications arrive).
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }

    /// Wakes whoever waits when the version moves (a notification, or the
    /// listening connection back): the relay re-checks at once rather than
    /// at its next poll.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    /// What [`Pg::changed`] waits on, for a waiter that must not miss a
    /// change between its check and its wait (`Notified::enable`).
    pub fn change_notifier(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    pub fn data_version(&self) -> i64 {
        self.version.load(Ordering::Relaxed)
    }

    fn relay_id(&self) -> Option<String> {
        self.relay.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The database address without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl tokio_postgres::types::ToSql for Fingerprint {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        self.as_str().to_sql(ty, out)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::ToSql>::accepts(ty)
    }

    tokio_postgres::types::to_sql_checked!();
}

/// As in SQLite: the store holds only fingerprints made by `ssh::keys`.
impl<'a> tokio_postgres::types::FromSql<'a> for Fingerprint {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> std::result::Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        String::from_sql(ty, raw).map(Fingerprint::from_stored)
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <String as tokio_postgres::types::FromSql>::accepts(ty)
    }
}

/// Whether a store address names PostgreSQL.
pub fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show_in_messages() {
        assert_eq!(
            redact("postgres://warren:s3cret@db.example/warren"),
            "postgres://warren:***@db.example/warren"
        );
        assert_eq!(
            redact("postgres://warren@db.example/warren"),
            "postgres://warren@db.example/warren"
        );
        assert!(is_postgres_url("postgresql://x/y"));
        assert!(!is_postgres_url("/var/lib/warren"));
    }
}
