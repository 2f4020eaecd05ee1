//! Numbered schema migrations for PostgreSQL. The pending ones run in one
//! transaction that first takes an advisory lock, so relays starting at once
//! take turns and each one after the first finds the schema current.
//! `warren_schema` records how far a database has come. Never edit a
//! released migration: add the next one.
//!
//! Migration 1 is the SQLite schema as of its migration 5 (integers as
//! `BIGINT`, flags as 0/1 like SQLite's) plus what a cluster shares beyond
//! it: which relay holds a device and its epoch, the relays, and triggers
//! that notify every relay of changes in the writing transaction.

use anyhow::{Result, bail};
use tokio_postgres::Client;

/// The advisory lock key migrations hold ("warren" in ASCII).
const MIGRATION_LOCK: i64 = 0x7761_7272_656e;

const MIGRATIONS: &[&str] = &[
    // 1: everything the SQLite schema holds, and the cluster.
    "CREATE TABLE systems (
        name    TEXT PRIMARY KEY,
        created BIGINT NOT NULL
    );
    CREATE TABLE keys (
        fingerprint  TEXT PRIMARY KEY,
        system       TEXT NOT NULL REFERENCES systems(name),
        role         TEXT NOT NULL CHECK (role IN ('device', 'controller', 'admin')),
        name         TEXT NOT NULL,
        public_key   TEXT NOT NULL,
        created      BIGINT NOT NULL,
        revoked      BIGINT,
        enrolled_via TEXT
    );
    CREATE UNIQUE INDEX keys_device_name ON keys (system, name)
        WHERE role = 'device' AND revoked IS NULL;
    CREATE TABLE devices (
        system    TEXT NOT NULL,
        name      TEXT NOT NULL,
        online    BIGINT NOT NULL DEFAULT 0,
        since     BIGINT,
        last_seen BIGINT,
        address   TEXT,
        ports     TEXT,
        version   TEXT,
        labels    TEXT,
        streams   BIGINT NOT NULL DEFAULT 0,
        disabled  BIGINT NOT NULL DEFAULT 0,
        relay     TEXT,
        epoch     BIGINT NOT NULL DEFAULT 0,
        PRIMARY KEY (system, name)
    );
    CREATE INDEX devices_relay ON devices (relay) WHERE online = 1;
    CREATE TABLE gateways (
        id       BIGSERIAL PRIMARY KEY,
        system   TEXT NOT NULL,
        name     TEXT NOT NULL,
        scope    TEXT NOT NULL DEFAULT '[]',
        ports    TEXT NOT NULL DEFAULT '[]',
        permit   TEXT,
        listens  TEXT NOT NULL DEFAULT '[]',
        created  BIGINT NOT NULL,
        updated  BIGINT NOT NULL,
        UNIQUE (system, name)
    );
    CREATE TABLE gateway_associations (
        system   TEXT NOT NULL,
        name     TEXT NOT NULL,
        network  TEXT NOT NULL,
        created  BIGINT NOT NULL,
        PRIMARY KEY (system, name, network)
    );
    CREATE TABLE gateway_rules (
        system   TEXT NOT NULL,
        name     TEXT NOT NULL,
        target   TEXT NOT NULL,
        created  BIGINT NOT NULL,
        PRIMARY KEY (system, name, target)
    );
    CREATE TABLE invites (
        id          TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        system      TEXT NOT NULL,
        role        TEXT NOT NULL CHECK (role IN ('device', 'controller', 'admin')),
        name        TEXT NOT NULL,
        created     BIGINT NOT NULL,
        expires     BIGINT NOT NULL,
        used        BIGINT,
        used_by     TEXT,
        revoked     BIGINT
    );
    CREATE TABLE audit (
        id          BIGSERIAL PRIMARY KEY,
        time_ms     BIGINT NOT NULL,
        kind        TEXT NOT NULL,
        result      TEXT NOT NULL,
        system      TEXT,
        key         TEXT,
        fingerprint TEXT,
        device      TEXT,
        target      TEXT,
        bytes_up    BIGINT,
        bytes_down  BIGINT,
        duration_ms BIGINT,
        peer        TEXT,
        detail      TEXT,
        reason      TEXT
    );
    CREATE INDEX audit_time ON audit (time_ms);
    CREATE INDEX audit_system ON audit (system, id);
    CREATE TABLE relay_settings (
        name  TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE exposures (
        port        BIGINT PRIMARY KEY CHECK (port BETWEEN 1 AND 65535),
        system      TEXT NOT NULL,
        device      TEXT NOT NULL,
        device_port BIGINT NOT NULL CHECK (device_port BETWEEN 1 AND 65535),
        allow_from  TEXT NOT NULL DEFAULT '',
        created     BIGINT NOT NULL
    );
    CREATE TABLE relays (
        id        TEXT PRIMARY KEY,
        address   TEXT,
        host_key  TEXT NOT NULL,
        started   BIGINT NOT NULL,
        heartbeat BIGINT NOT NULL
    );
    CREATE FUNCTION warren_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('warren', TG_TABLE_NAME);
        RETURN NULL;
    END $$;
    CREATE TRIGGER keys_changed AFTER INSERT OR UPDATE OR DELETE ON keys
        FOR EACH STATEMENT EXECUTE FUNCTION warren_changed();
    CREATE TRIGGER gateways_changed AFTER INSERT OR UPDATE OR DELETE ON gateways
        FOR EACH STATEMENT EXECUTE FUNCTION warren_changed();
    CREATE TRIGGER gateway_associations_changed AFTER INSERT OR UPDATE OR DELETE ON gateway_associations
        FOR EACH STATEMENT EXECUTE FUNCTION warren_changed();
    CREATE TRIGGER gateway_rules_changed AFTER INSERT OR UPDATE OR DELETE ON gateway_rules
        FOR EACH STATEMENT EXECUTE FUNCTION warren_changed();
    CREATE TRIGGER exposures_changed AFTER INSERT OR UPDATE OR DELETE ON exposures
        FOR EACH STATEMENT EXECUTE FUNCTION warren_changed();
    CREATE TRIGGER devices_disabled AFTER UPDATE OF disabled ON devices
        FOR EACH STATEMENT EXECUTE FUNCTION warren_changed();",
    // 2: on-demand devices and their last reported state (SQLite's 6).
    "CREATE TABLE on_demand (
        system  TEXT NOT NULL,
        name    TEXT NOT NULL,
        state   TEXT,
        reason  TEXT,
        at      TEXT,
        PRIMARY KEY (system, name)
    );",
    // 3: the web console's login links and sessions and the HTTP API's
    // tokens (SQLite's 7), so every relay of a cluster serves the console;
    // indexes for the audit API's device and kind filters.
    "CREATE TABLE web_credentials (
        id          TEXT PRIMARY KEY,
        kind        TEXT NOT NULL CHECK (kind IN ('login', 'session', 'token')),
        secret_hash TEXT NOT NULL,
        system      TEXT,
        role        TEXT NOT NULL CHECK (role IN ('controller', 'admin')),
        who         TEXT NOT NULL,
        created     BIGINT NOT NULL,
        expires     BIGINT NOT NULL,
        used        BIGINT,
        revoked     BIGINT
    );
    CREATE INDEX web_credentials_kind ON web_credentials (kind, created);
    CREATE INDEX audit_device ON audit (device, id);
    CREATE INDEX audit_kind ON audit (kind, id);",
    // 4: bandwidth limits (SQLite's 8); every relay of the cluster hears
    // of a change at once.
    "CREATE TABLE rates (
        system           TEXT NOT NULL,
        device           TEXT NOT NULL DEFAULT '',
        bytes_per_second BIGINT NOT NULL CHECK (bytes_per_second > 0),
        burst            BIGINT NOT NULL CHECK (burst > 0),
        updated          BIGINT NOT NULL,
        PRIMARY KEY (system, device)
    );
    CREATE TRIGGER rates_changed AFTER INSERT OR UPDATE OR DELETE ON rates
        FOR EACH STATEMENT EXECUTE FUNCTION warren_changed();",
    // 5: on-demand wakes in progress across the cluster: one relay claims a
    // device's wake and publishes the one `connect` (see relay/wake.rs).
    "CREATE TABLE wakes (
        system  TEXT NOT NULL,
        name    TEXT NOT NULL,
        relay   TEXT NOT NULL,
        sent    BIGINT NOT NULL,
        PRIMARY KEY (system, name)
    );",
    // 6: labels an admin set on a device (SQLite's 9; `value` NULL hides
    // the agent's label of that key).
    "CREATE TABLE device_labels (
        system  TEXT NOT NULL,
        name    TEXT NOT NULL,
        key     TEXT NOT NULL,
        value   TEXT,
        updated BIGINT NOT NULL,
        PRIMARY KEY (system, name, key)
    );",
];

pub async fn migrate(c: &mut Client) -> Result<()> {
    let tx = c.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS warren_schema (version BIGINT NOT NULL)")
        .await?;
    let current: Option<i64> = tx
        .query_one("SELECT max(version) FROM warren_schema", &[])
        .await?
        .try_get(0)?;
    let current = current.unwrap_or(0);
    let known = MIGRATIONS.len() as i64;
    if current > known {
        bail!(
            "database schema version {current} is newer than this warren knows ({known}); upgrade warren"
        );
    }
    if current == known {
        return Ok(());
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO warren_schema (version) VALUES ($1)",
            &[&(i as i64 + 1)],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
